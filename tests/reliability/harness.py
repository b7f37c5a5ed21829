"""The ingest service as a real process (so it can be SIGKILLed), devices that behave like
terminals (send, wait for the ACK, resend on timeout, reconnect), and the ledger that
compares what they saw acknowledged with what the database holds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from avl.embedded import LocalPostgres, free_port, port_in_use
from avl.records import Position
from ingest.protocols import gl200, gt06, teltonika

AVL = Path(sys.executable).with_name("avl")


def raise_nofile(wanted: int) -> int:
    """Raises this process's open-file limit (children inherit it); returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_kib(pid: int) -> int:
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError, IndexError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                    found.append(int(entry.name))
    return found


class IngestProcess:
    """`avl ingest` in a subprocess, on fixed ports that survive its restarts."""

    def __init__(self, database_url: str, data_dir: Path, protocols: list[str], *, mqtt_url: str | None = None,
                 env: dict[str, str] | None = None, log_path: Path | None = None) -> None:
        self.database_url = database_url
        self.data_dir = data_dir
        self.protocols = protocols
        self.mqtt_url = mqtt_url or f"mqtt://127.0.0.1:{free_port()}"  # nothing listens there: MQTT input idles
        self.extra_env = env or {}
        self.ports = {name: free_port() for name in protocols}
        self.metrics_port = free_port()
        self.log_path = log_path or data_dir.parent / f"ingest-{data_dir.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.client_id = f"avl-ingest-test-{uuid.uuid4().hex[:8]}"
        self.starts = 0

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AVL_")}
        env.update({
            "AVL_DATABASE_URL": self.database_url,
            "AVL_DATA_DIR": str(self.data_dir),
            "AVL_PROTOCOLS": ",".join(self.protocols),
            "AVL_PORTS": json.dumps(self.ports),
            "AVL_INGEST_HOST": "127.0.0.1",
            "AVL_API_HOST": "127.0.0.1",
            "AVL_METRICS_PORT": str(self.metrics_port),
            "AVL_MQTT_URL": self.mqtt_url,
            "AVL_MQTT_CLIENT_ID": self.client_id,
            "AVL_MQTT_GROUP": self.client_id,
            "AVL_UDP": "false",
            "AVL_LOG_LEVEL": "WARNING",
        })
        env.update(self.extra_env)
        return env

    def start(self, timeout_s: float = 60.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        log.write(f"--- start {self.starts + 1} at {datetime.now(UTC).isoformat()}\n".encode())
        log.flush()
        self.proc = subprocess.Popen([str(AVL), "ingest"], env=self.env(), stdout=log, stderr=log,
                                     start_new_session=True)
        log.close()
        self.starts += 1
        deadline = time.monotonic() + timeout_s
        pending = set(self.ports.values()) | {self.metrics_port}
        while pending:
            if self.proc.poll() is not None:
                raise RuntimeError(f"avl ingest exited with {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"avl ingest did not listen within {timeout_s} s: {self.log_tail()}")
            for port in list(pending):
                with socket.socket() as s:
                    s.settimeout(0.2)
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        pending.discard(port)
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pids(self) -> list[int]:
        """The supervisor and its worker processes (`avl ingest` runs ``AVL_INGEST_PROCESSES``)."""
        return [self.pid, *_children(self.pid)]

    def signal_all(self, sig: int) -> None:
        """``sig`` to `avl ingest` and its workers (its own process group: ``start_new_session``)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL to every ingest process: no shutdown, no flushing, no goodbye."""
        if self.running():
            assert self.proc is not None
            self.signal_all(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def rss_kib(self) -> int:
        return sum(rss_kib(pid) for pid in self.pids())

    def metrics(self) -> dict[str, float]:
        """The Prometheus samples, keyed by ``name{labels}`` as exposed."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[key] = float(value)
        return out

    def metric(self, prefix: str) -> float:
        """Sum of the samples whose key starts with ``prefix``."""
        return sum(v for k, v in self.metrics().items() if k.startswith(prefix))

    def log_tail(self, lines: int = 15) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


@contextlib.contextmanager
def killable_postgres(root: Path) -> Iterator[LocalPostgres]:
    """A PostgreSQL cluster of its own, which a test may kill and restart."""
    pg = LocalPostgres(root / f"killable-{os.getpid()}-{time.monotonic_ns()}", free_port(), durable=False)
    pg.start()
    try:
        yield pg
    finally:
        pg.stop("immediate")


def restart_postgres(pg: LocalPostgres, attempts: int = 20) -> None:
    """Starts a killed cluster again (its backends may take a moment to notice and exit)."""
    for attempt in range(attempts):
        try:
            pg.start()
            return
        except Exception:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)


# Devices -------------------------------------------------------------------------------


class Refused(Exception):
    """The server answered, but not with the ACK for this frame."""


@dataclass
class Ledger:
    """What the fleet sent and saw acknowledged, per device."""

    frames_sent: int = 0  # transmissions, resends included
    reports_sent: int = 0  # reports in those transmissions
    acked: dict[str, list[datetime]] = field(default_factory=dict)
    pending: dict[str, list[Position]] = field(default_factory=dict)  # held, not (yet) acknowledged
    latencies: list[float] = field(default_factory=list)
    next_index: dict[str, int] = field(default_factory=dict)  # a restarted device goes on where it was
    starts: dict[str, datetime] = field(default_factory=dict)
    connects: int = 0
    errors: int = 0

    @property
    def acked_count(self) -> int:
        return sum(map(len, self.acked.values()))

    def acked_since(self, mark: int) -> int:
        return self.acked_count - mark


class Adapter:
    """How one protocol's terminal logs in, frames a batch of reports and reads its ACK."""

    protocol = ""
    batch = 1

    def login(self, ident: str) -> tuple[bytes, int] | None:
        return None

    def frame(self, batch: list[Position], seq: int) -> bytes:
        raise NotImplementedError

    async def read_ack(self, reader: asyncio.StreamReader, batch: list[Position], seq: int) -> None:
        raise NotImplementedError


class Teltonika(Adapter):
    protocol = "teltonika"
    batch = 5

    def login(self, ident: str) -> tuple[bytes, int]:
        return teltonika.encode_login(ident), 1

    def frame(self, batch: list[Position], seq: int) -> bytes:
        return teltonika.encode_batch(batch)

    async def read_ack(self, reader: asyncio.StreamReader, batch: list[Position], seq: int) -> None:
        if int.from_bytes(await reader.readexactly(4), "big") != len(batch):
            raise Refused("teltonika: wrong count")


class Gt06(Adapter):
    protocol = "gt06"

    def login(self, ident: str) -> tuple[bytes, int]:
        return gt06.encode_login(ident) or b"", 10

    def frame(self, batch: list[Position], seq: int) -> bytes:
        return gt06.encode_position(batch[0], seq & 0xFFFF)

    async def read_ack(self, reader: asyncio.StreamReader, batch: list[Position], seq: int) -> None:
        reply = await reader.readexactly(10)
        if reply[3] != 0x22 or int.from_bytes(reply[4:6], "big") != seq & 0xFFFF:
            raise Refused(f"gt06: unexpected reply {reply.hex()}")


class Gl200(Adapter):
    protocol = "gl200"

    def frame(self, batch: list[Position], seq: int) -> bytes:
        return gl200.encode_position(batch[0], seq)

    async def read_ack(self, reader: asyncio.StreamReader, batch: list[Position], seq: int) -> None:
        reply = await reader.readexactly(11)
        if reply != f"+SACK:{seq & 0xFFFF:04X}$".encode():
            raise Refused(f"gl200: unexpected reply {reply!r}")


ADAPTERS: dict[str, Callable[[], Adapter]] = {"teltonika": Teltonika, "gt06": Gt06, "gl200": Gl200}


def imei(n: int, prefix: str = "35") -> str:
    return f"{prefix}{n:013d}"


def report(device: str, when: datetime, i: int) -> Position:
    """The ``i``-th report of a vehicle driving 1000 steps (about 55 m each) out and then back,
    over and over: a track ingest's jump check trusts. (Wrapping back to the start instead
    would be a 55 km jump in one second, which ingest quarantines as ``implausible_jump``.)"""
    step = i % 2000 if i % 2000 <= 1000 else 2000 - i % 2000
    return Position(device=device, fix_time=when, valid=True, latitude=10.48 + step * 0.0004,
                    longitude=-66.90 + step * 0.0003, speed_kmh=36.0 + i % 5, course=float((i * 7) % 360),
                    altitude_m=900.0, satellites=9, ignition=True, power_mv=12600)


async def device(adapter: Adapter, port: int, ident: str, stop: asyncio.Event, ledger: Ledger, *,
                 start: datetime | None = None, ack_timeout_s: float = 3.0, give_up: asyncio.Event | None = None,
                 pause_s: float = 0.0, host: str = "127.0.0.1") -> None:
    """A terminal: reports in order; a report is kept and resent until it is acknowledged.
    After ``stop`` it finishes (gets acknowledged) what it holds, unless ``give_up`` is set."""
    start = ledger.starts.setdefault(ident, start or datetime.now(UTC).replace(microsecond=0) - timedelta(hours=12))
    ledger.acked.setdefault(ident, [])
    held: list[Position] = list(ledger.pending.get(ident, []))
    i = ledger.next_index.get(ident, 0)
    seq = i
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    try:
        while True:
            if not held:
                if stop.is_set():
                    return
                held = [report(ident, start + timedelta(seconds=i + k), i + k) for k in range(adapter.batch)]
                i += adapter.batch
                ledger.next_index[ident] = i
                seq += 1
                ledger.pending[ident] = held
            if give_up is not None and give_up.is_set():
                return
            try:
                if writer is None:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), ack_timeout_s)
                    ledger.connects += 1
                    hello = adapter.login(ident)
                    if hello:
                        writer.write(hello[0])
                        await asyncio.wait_for(reader.readexactly(hello[1]), ack_timeout_s)
                assert reader is not None
                sent_at = time.monotonic()
                writer.write(adapter.frame(held, seq))
                ledger.frames_sent += 1
                ledger.reports_sent += len(held)
                await asyncio.wait_for(adapter.read_ack(reader, held, seq), ack_timeout_s)
                ledger.latencies.append(time.monotonic() - sent_at)
                ledger.acked[ident].extend(p.fix_time for p in held)
                ledger.pending.pop(ident, None)
                held = []
                if pause_s:
                    await asyncio.sleep(pause_s)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, Refused):
                # No ACK: keep the reports, start over on a new connection (the old one may
                # still deliver a late ACK that would be taken for the next frame's).
                ledger.errors += 1
                if writer is not None:
                    writer.close()
                reader = writer = None
                await asyncio.sleep(0.2)
    finally:
        if writer is not None:
            writer.close()


# The database's side ---------------------------------------------------------------------


@dataclass
class Stored:
    rows: dict[str, list[datetime]]
    total: int
    distinct: int

    @property
    def duplicates(self) -> int:
        return self.total - self.distinct


def stored_by_device(database_url: str, idents: list[str]) -> Stored:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT d.identifier, p.fix_time FROM positions p JOIN devices d ON d.id = p.device_id"
            " WHERE d.identifier = ANY(%s) ORDER BY d.identifier, p.fix_time", (idents,)).fetchall()
        total, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT (p.device_id, p.fix_time)) FROM positions p"
            " JOIN devices d ON d.id = p.device_id WHERE d.identifier = ANY(%s)", (idents,)).fetchone() or (0, 0)
    out: dict[str, list[datetime]] = {i: [] for i in idents}
    for ident, fix_time in rows:
        out[ident].append(fix_time)
    return Stored(out, total, distinct)


def quarantined(database_url: str, lost: dict[str, list[datetime]]) -> str:
    """For the message of a failed no-loss check: how many of the reports missing from
    positions ingest quarantined instead, by reason ('760 of them quarantined: implausible_jump 760')."""
    wanted = {(ident, t) for ident, times in lost.items() for t in times}
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT d.identifier, q.fix_time, q.reason FROM positions_quarantine q JOIN devices d ON d.id = q.device_id"
            " WHERE d.identifier = ANY(%s)", (list(lost),)).fetchall()
    reasons = Counter(reason for ident, fix_time, reason in rows if (ident, fix_time) in wanted)
    return (f"{sum(reasons.values())} of them quarantined:"
            f" {', '.join(f'{reason} {n}' for reason, n in reasons.most_common()) or 'none'}")


def missing_acknowledged(ledger: Ledger, stored: Stored) -> dict[str, list[datetime]]:
    """Reports some device saw acknowledged that the database does not hold."""
    out = {}
    for ident, acked in ledger.acked.items():
        have = set(stored.rows.get(ident, []))
        lost = [t for t in acked if t not in have]
        if lost:
            out[ident] = lost
    return out


def out_of_order(database_url: str, idents: list[str]) -> list[str]:
    """Devices whose reports were committed out of their sending order (by transaction id)."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT d.identifier, p.fix_time, p.xmin::text::bigint FROM positions p JOIN devices d ON d.id = p.device_id"
            " WHERE d.identifier = ANY(%s) ORDER BY d.identifier, p.fix_time", (idents,)).fetchall()
    bad: set[str] = set()
    last: dict[str, int] = {}
    for ident, _fix, xid in rows:
        if ident in last and xid < last[ident]:
            bad.add(ident)
        last[ident] = xid
    return sorted(bad)


async def wait_for(predicate: Callable[[], Any], timeout_s: float, every_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await asyncio.to_thread(predicate):
            return True
        await asyncio.sleep(every_s)
    return bool(await asyncio.to_thread(predicate))


def _spool_files(data_dir: Path) -> list[Path]:
    """Every ingest process's spool: ``spool.log``, ``spool-1.log``, ..."""
    return sorted((data_dir / "spool").glob("spool*.log"))


def spool_bytes(data_dir: Path) -> int:
    total = 0
    for path in _spool_files(data_dir):
        with contextlib.suppress(FileNotFoundError):
            total += path.stat().st_size
    return total


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


__all__ = ["IngestProcess", "Ledger", "ADAPTERS", "device", "killable_postgres", "restart_postgres", "port_in_use"]


async def drain(tasks: list[asyncio.Task[None]], stop: asyncio.Event, give_up: asyncio.Event,
                timeout_s: float) -> bool:
    """Tells the fleet to stop once what it holds is acknowledged; True if it all was in time."""
    stop.set()
    done, pending = await asyncio.wait(tasks, timeout=timeout_s)
    give_up.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return not pending


def read_spool(data_dir: Path) -> tuple[list[tuple[int, datetime]], int, bool]:
    """The (device id, fix time) of every position in the spool files (one per ingest process),
    read-only (a live ingest process may be appending: a torn last record is where reading of its
    file stops), the replay offsets summed, and whether a torn record was seen."""
    out: list[tuple[int, datetime]] = []
    offsets, torn = 0, False
    for path in _spool_files(data_dir):
        rows, offset, cut = _read_spool_file(path)
        out += rows
        offsets += offset
        torn = torn or cut
    return out, offsets, torn


def _read_spool_file(path: Path) -> tuple[list[tuple[int, datetime]], int, bool]:
    import struct
    import zlib

    from ingest.spool import decode

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], 0, False
    try:
        offset = int(path.with_suffix(".offset").read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        offset = 0
    out: list[tuple[int, datetime]] = []
    pos = 0
    torn = False
    while pos + 8 <= len(data):
        length, crc = struct.unpack(">II", data[pos:pos + 8])
        payload = data[pos + 8:pos + 8 + length]
        if len(payload) != length or zlib.crc32(payload) != crc:
            torn = True
            break
        if pos >= offset:
            out.extend((row[0], row[1]) for row in decode(payload).positions)
        pos += 8 + length
    if pos < len(data):
        torn = True
    return out, offset, torn


def gaps(ledger: Ledger, lost: dict[str, list[datetime]]) -> str:
    """The missing reports of each device as ranges of its sending order: '0: 120-245 of 0-399'."""
    parts = []
    for ident, times in sorted(lost.items())[:5]:
        order = {t: n for n, t in enumerate(ledger.acked[ident])}
        idx = sorted(order[t] for t in times if t in order)
        ranges, first, prev = [], idx[0], idx[0]
        for n in idx[1:] + [None]:
            if n is None or n != prev + 1:
                ranges.append(f"{first}-{prev}" if first != prev else f"{first}")
                if n is not None:
                    first = n
            if n is not None:
                prev = n
        parts.append(f"{ident}: missing #{', #'.join(ranges)} of #0-#{len(ledger.acked[ident]) - 1}")
    return "; ".join(parts)
