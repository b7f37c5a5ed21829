"""`avl ingest` on several cores: one supervisor and ``AVL_INGEST_PROCESSES`` worker processes.

Each worker is a whole ingest service (``IngestService``) on the same device ports (``SO_REUSEPORT``:
the kernel spreads new TCP connections and UDP sources over them), with its own writer, database
connection and spool (``spool.log`` for the first, ``spool-<n>.log`` for the n-th), so decoding, row
encoding and the database client work use every core, and each spool replays in order what its own
process acknowledged. A worker that dies is started again on its own spool (it replays what was
spooled and not yet written); what it had not acknowledged the devices resend. Spools of workers
that no longer exist (fewer processes than last time) are taken over by the first spool at start.

The supervisor serves the workers' metrics together (prometheus_client's multiprocess mode) and
counts connections per source address for all of them (``SharedSourceCounts``). ``avl serve`` does
not come here: it runs one ingest service inside its own process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import zlib
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from avl.config import ConfigError, Settings
from avl.db import first_line
from ingest.spool import Spool
from ingest.writer import Writer

log = logging.getLogger("avl.ingest")

SOURCE_BUCKETS = 4096
RESTART_BACKOFF_S = 1.0
STOP_TIMEOUT_S = 60.0
REPLAY_WAIT_S = 120.0  # the longest a worker waits for the spools' replay before listening anyway


def process_count(setting: int) -> int:
    """``setting`` if positive; 0: one per CPU this command may use (affinity, then the cgroup's quota)."""
    if setting > 0:
        return setting
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, math.ceil(int(quota) / int(period)))
    return max(1, cpus)


def spool_name(index: int) -> str:
    return "spool" if index == 0 else f"spool-{index}"


class SharedSourceCounts:
    """Open connections per (protocol, source address), counted in shared memory by every worker.

    Each worker has its own row of counters (so a dead worker's connections are forgotten by zeroing
    its row); a (protocol, source) pair hashes to one bucket, and the limit applies to the sum of that
    bucket over the rows. Two sources sharing a bucket count together: the limit is then reached
    sooner, never later."""

    def __init__(self, workers: int, ctx: Any) -> None:
        self.workers = workers
        self._lock = ctx.Lock()
        self._counts = ctx.RawArray("i", workers * SOURCE_BUCKETS)
        self.row = 0  # this worker's (set in the worker)

    @staticmethod
    def _bucket(key: str, source: str) -> int:
        return zlib.crc32(f"{key}\0{source}".encode()) % SOURCE_BUCKETS

    def admit(self, key: str, source: str, limit: int) -> bool:
        b = self._bucket(key, source)
        with self._lock:
            if sum(self._counts[r * SOURCE_BUCKETS + b] for r in range(self.workers)) >= limit:
                return False
            self._counts[self.row * SOURCE_BUCKETS + b] += 1
            return True

    def leave(self, key: str, source: str) -> None:
        i = self.row * SOURCE_BUCKETS + self._bucket(key, source)
        with self._lock:
            if self._counts[i] > 0:
                self._counts[i] -= 1

    def forget(self, row: int) -> None:
        """The worker of ``row`` has ended: its connections are closed."""
        with self._lock:
            for i in range(row * SOURCE_BUCKETS, (row + 1) * SOURCE_BUCKETS):
                self._counts[i] = 0


def absorb_spools(directory: Path, processes: int) -> None:
    """Spools of worker numbers this run does not have go into the first one, in order."""
    if not directory.is_dir():
        return
    extra = sorted(int(p.stem.removeprefix("spool-")) for p in directory.glob("spool-*.log")
                   if p.stem.removeprefix("spool-").isdigit())
    extra = [n for n in extra if n >= processes]
    if not extra:
        return
    first = Spool(directory, name=spool_name(0))
    try:
        for n in extra:
            other = Spool(directory, name=spool_name(n))
            try:
                taken = first.absorb(other)
            finally:
                other.close()
            if taken:
                log.info("spool of ingest process %d: %d records taken over by process 0", n, taken)
            for suffix in (".log", ".offset"):
                (directory / f"{spool_name(n)}{suffix}").unlink(missing_ok=True)
    finally:
        first.close()


def _worker(index: int, settings: Settings, database_url: str, mqtt_url: str | None, slots: SharedSourceCounts,
            ready: Any, errors: Any, replaying: Any) -> None:
    """A worker process's body: one ingest service until SIGTERM/SIGINT, then drained."""
    logging.basicConfig(level=settings.log_level, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s %(name)s[{index}]: %(message)s")
    slots.row = index
    try:
        asyncio.run(_serve_worker(index, settings, database_url, mqtt_url, slots, ready, replaying))
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # a port in use, a database that refuses: one line
        message = str(exc) if isinstance(exc, ConfigError) else first_line(exc)
        if ready.is_set():
            log.error("ingest process %d: %s", index, message)
        else:  # the supervisor says it, once, and stops
            errors.put(message)
        sys.exit(2)


async def _serve_worker(index: int, settings: Settings, database_url: str, mqtt_url: str | None,
                        slots: SharedSourceCounts, ready: Any, replaying: Any) -> None:
    from ingest.service import SWITCH_INTERVAL_S, IngestService

    sys.setswitchinterval(SWITCH_INTERVAL_S)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # The MQTT input: the first process alone, or all of them on a shared subscription when AVL_MQTT_GROUP
    # names one (ingest.transports.mqtt.subscriber).

    async def spools_replayed(writer: Writer) -> None:
        """A device that moves to another process must not have its new reports committed before the
        ones this process spooled: the listeners open once every process starting together has
        replayed its spool (or found the database away: then the spools take everything, each in order)."""
        deadline = loop.time() + REPLAY_WAIT_S
        await _polled(lambda: not (writer.spool.pending and writer.database_up), deadline)
        replaying[index] = 0
        await _polled(lambda: not any(replaying[:]), deadline)

    service = IngestService(settings, database_url, mqtt_url, spool_name=spool_name(index),
                            upkeep=index == 0, slots=slots, process=(index, slots.workers),
                            before_listening=spools_replayed)
    await service.start()  # as ``ingest.service.run``: a failed start is not closed (the process ends)
    ready.set()
    orphaned = asyncio.create_task(_parent_gone(os.getppid(), stop))
    try:
        await stop.wait()
        orphaned.cancel()
    finally:
        await service.close()


async def _polled(condition: Callable[[], bool], deadline: float, every_s: float = 0.05) -> None:
    """Returns once ``condition()`` holds or the loop's clock passes ``deadline``."""
    loop = asyncio.get_running_loop()
    while True:
        if condition() or loop.time() >= deadline:
            return
        await asyncio.sleep(every_s)


async def _parent_gone(parent: int, stop: asyncio.Event, every_s: float = 1.0) -> None:
    """Stops this worker when the supervisor is gone (killed outright): no orphan keeps the ports."""
    while True:
        await asyncio.sleep(every_s)
        if os.getppid() != parent:
            break
    log.warning("ingest supervisor (pid %d) gone; stopping", parent)
    stop.set()


async def run_processes(settings: Settings, database_url: str, mqtt_url: str | None, processes: int,
                        ready: asyncio.Event | None = None) -> None:
    """Runs ``processes`` ingest workers until cancelled; then stops them (each drains its writer)."""
    ctx = multiprocessing.get_context("spawn")  # no inherited event loop, threads or connections
    absorb_spools(settings.data_dir / "spool", processes)
    metrics_dir = _serve_metrics(settings)
    slots = SharedSourceCounts(processes, ctx)
    errors = ctx.SimpleQueue()  # why a worker could not start
    replaying = ctx.RawArray("b", processes)  # 1: that worker has not replayed its spool since it started
    workers: list[BaseProcess | None] = [None] * processes
    ups: list[Any] = [None] * processes  # kept: a child rebuilds its event from it while starting
    loop = asyncio.get_running_loop()

    def start(index: int) -> tuple[BaseProcess, Any]:
        replaying[index] = 1
        up = ctx.Event()
        p = ctx.Process(target=_worker, name=f"avl-ingest-{index}", daemon=False,
                        args=(index, settings, database_url, mqtt_url, slots, up, errors, replaying))
        p.start()
        workers[index], ups[index] = p, up
        return p, up

    def ended(index: int, p: BaseProcess) -> None:
        slots.forget(index)
        if metrics_dir is not None and p.pid is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(p.pid, str(metrics_dir))  # type: ignore[no-untyped-call]

    try:
        started = [start(i) for i in range(processes)]
        # Every worker listening before this returns to the caller (which then announces the service).
        while not all(up.is_set() for _, up in started):
            for i, (p, up) in enumerate(started):
                if not up.is_set() and not p.is_alive():
                    raise ConfigError(errors.get() if not errors.empty()
                                      else f"ingest process {i} did not start (exit code {p.exitcode})")
            await asyncio.sleep(0.05)
        log.info("ingest: %d processes on the shared ports (pids %s)", processes,
                 ", ".join(str(p.pid) for p, _ in started))
        if ready is not None:
            ready.set()
        since = [loop.time()] * processes
        while True:
            await asyncio.sleep(0.25)
            for i, worker in enumerate(workers):
                assert worker is not None
                p = worker
                if p.is_alive():
                    continue
                ended(i, p)
                log.warning("ingest process %d (pid %s) ended with exit code %s; starting it again", i, p.pid,
                            p.exitcode)
                if loop.time() - since[i] < RESTART_BACKOFF_S:
                    await asyncio.sleep(RESTART_BACKOFF_S)
                start(i)
                since[i] = loop.time()
    finally:
        await asyncio.shield(asyncio.to_thread(_stop_all, [p for p in workers if p is not None]))
        if metrics_dir is not None:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _stop_all(workers: list[BaseProcess]) -> None:
    for p in workers:
        if p.is_alive() and p.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
    for p in workers:
        p.join(STOP_TIMEOUT_S)
        if p.is_alive():
            log.error("ingest process %s did not stop within %.0f s; killed", p.name, STOP_TIMEOUT_S)
            p.kill()
            p.join()


def _serve_metrics(settings: Settings) -> Path | None:
    """The workers' metrics on AVL_METRICS_PORT, summed (or, for gauges, as each says)."""
    if not settings.metrics_port:
        return None
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    path = Path(tempfile.mkdtemp(prefix="avl-ingest-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)  # read by the workers' prometheus_client at import
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(path))  # type: ignore[no-untyped-call]
    try:
        start_http_server(settings.metrics_port, addr=settings.metrics_host, registry=registry)
    except OSError as exc:
        shutil.rmtree(path, ignore_errors=True)
        raise ConfigError(f"AVL_METRICS_PORT: cannot listen on {settings.metrics_host}:{settings.metrics_port}"
                          f" ({exc.strerror})") from None
    log.info("metrics of every ingest process on http://%s:%s/metrics", settings.metrics_host, settings.metrics_port)
    return path
