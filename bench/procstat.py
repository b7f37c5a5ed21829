"""What /proc says about the processes under test: memory (VmRSS, VmHWM) and CPU time."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of ``pid`` in KiB; empty once the process is gone."""
    found: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    found[key] = int(value.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return found


def tree_memory_kib(root: int) -> dict[str, int]:
    """``memory_kib`` summed over ``root`` and its children (`avl ingest` and its worker processes)."""
    total = memory_kib(root)
    for pid in children(root):
        for key, value in memory_kib(pid).items():
            total[key] = total.get(key, 0) + value
    return total


def children(root: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None and st[0] == root:
            found.append(int(entry.name))
    return found


def _stat(pid: int) -> tuple[int, list[int]] | None:
    """(ppid, [utime, stime, cutime, cstime]) in ticks."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = data[data.rindex(")") + 2:].split()
    return int(fields[1]), [int(x) for x in fields[11:15]]


def cpu_seconds(pid: int, *, with_reaped_children: bool = False) -> float:
    """CPU time (user + system, every thread) of ``pid`` so far."""
    st = _stat(pid)
    if st is None:
        return 0.0
    ticks = st[1][0] + st[1][1] + (st[1][2] + st[1][3] if with_reaped_children else 0)
    return ticks / _TICK


def tree_cpu_seconds(root: int) -> float:
    """CPU time of ``root``, of its live children, and of its children that have exited
    (PostgreSQL: the postmaster, its backends and background processes)."""
    return cpu_seconds(root, with_reaped_children=True) + sum(cpu_seconds(pid) for pid in children(root))


@dataclass
class MachineCpu:
    busy: float  # seconds, all CPUs
    idle: float
    iowait: float


def machine_cpu() -> MachineCpu:
    with open("/proc/stat") as f:
        values = [int(x) / _TICK for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (values + [0.0] * 8)[:8]
    return MachineCpu(busy=user + nice + system + irq + softirq + steal, idle=idle, iowait=iowait)
