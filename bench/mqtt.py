"""``python -m bench.mqtt``: durable MQTT ingest through Mosquitto, QoS 1, PUBACK after commit.

One command, on its own throwaway PostgreSQL (durable: fsync on) and its own Mosquitto
(``LocalBroker``). For each count of ``--processes`` (default 1, then 2): that many ``avl ingest``
processes (one: the default plain persistent subscription ``avl/in/#``; more: the shared
subscription ``$share/bench/avl/in/#``, each with its own ``AVL_MQTT_CLIENT_ID``), fed by a
pipelined publisher in its own process: JSON reports (``avl/in/json/<device>``) at QoS 1, up to
``--inflight`` of them waiting for the broker's PUBACK and at most ``--backlog`` PUBACKed but not
yet committed by ingest (so the broker's queue stays bounded and the rate measured is what ingest
makes durable, not what the broker can buffer). The publisher is a minimal MQTT 3.1.1 client of
its own: paho-mqtt published about 8,000 QoS 1 messages/s with a whole core on this machine,
below the target.

Reported per run: messages made durable per second in the window (rows committed by ingest),
PUBACK latency at the publisher (publish -> the broker has it) and publish -> arrival in ingest
(``received_at`` - the report's own ``time``, which is the publish time), the CPU of every
process, what limits the rate, and PUBACKs = rows stored after the drain (they must match).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import socket
import statistics
import struct
import sys
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Callable, Coroutine
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any, cast

import psycopg

from avl.admin import add_account
from avl.db import policies
from avl.db.migrate import migrate
from avl.embedded import LocalBroker, LocalPostgres, free_port
from bench import procstat
from bench.ingest import log_tail, percentile, report, scrape, spawn_ingest, stop_process

ACCOUNT = "Bench MQTT fleet"
TARGET_MSG_S = 20_000
GROUP = "bench"
_T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[bench.mqtt {time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.mqtt", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--processes", default="1,2", help="ingest process counts to run, one after the other")
    p.add_argument("--devices", type=int, default=1000, help="devices publishing (topics avl/in/json/<id>)")
    p.add_argument("--duration", type=float, default=15.0, help="measurement window, seconds")
    p.add_argument("--warmup", type=float, default=3.0, help="load before the window opens, seconds")
    p.add_argument("--inflight", type=int, default=2000, help="QoS 1 messages waiting for the broker's PUBACK")
    p.add_argument("--backlog", type=int, default=30000,
                   help="messages PUBACKed by the broker but not yet committed by ingest, at most")
    p.add_argument("--drain", type=float, default=60.0, help="seconds to wait for the last messages to be stored")
    p.add_argument("--server-env", action="append", default=[], metavar="AVL_KEY=VALUE",
                   help="extra environment for `avl ingest` (repeatable)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (database, logs)")
    args = p.parse_args(argv)
    try:
        args.processes = [int(x) for x in args.processes.split(",") if x.strip()]
    except ValueError:
        p.error("--processes: comma-separated counts, e.g. 1,2")
    if not args.processes or min(args.processes) < 1:
        p.error("--processes: at least one count, each 1 or more")
    if args.devices < 1 or args.duration <= 0 or args.inflight < 1 or args.backlog < 1:
        p.error("--devices, --duration, --inflight and --backlog must be positive")
    if args.inflight > 30_000:
        p.error("--inflight: at most 30,000 (MQTT packet ids are 16 bits)")
    for item in args.server_env:
        if "=" not in item or not item.startswith("AVL_"):
            p.error(f"--server-env: expected AVL_KEY=VALUE, got {item!r}")
    return args


def identifiers(devices: int) -> list[str]:
    return [f"mqtt-bench-{i:06d}" for i in range(devices)]


# The publisher: a minimal MQTT 3.1.1 client (CONNECT, PUBLISH QoS 1, PUBACK) ----------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def connect_packet(client_id: str, *, clean: bool = True, keepalive_s: int = 60) -> bytes:
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04" + bytes([0x02 if clean else 0]) + struct.pack(">HH", keepalive_s, len(cid)) + cid
    return b"\x10" + _varint(len(body)) + body


class Publisher(asyncio.Protocol):
    """Publishes QoS 1 reports round-robin over the devices, ``inflight`` waiting for PUBACKs at most,
    and no more than ``backlog`` ahead of what ingest has committed (``committed``, set by the parent)."""

    def __init__(self, devices: list[str], inflight: int, backlog: int, committed: Synchronized[int]) -> None:
        self.topics = [(f"avl/in/json/{d}").encode() for d in devices]
        self.positions = [(10.40 + (i % 97) * 1e-3, -66.95 + (i % 89) * 1e-3) for i in range(len(devices))]
        self.last_time = [0.0] * len(devices)
        self.inflight_max, self.backlog_max, self.committed = inflight, backlog, committed
        self.sent_at = array("d", bytes(8 * 65536))
        self.next_id = 1
        self.device = 0
        self.published = self.acked = self.inflight = 0
        self.window = (float("inf"), float("inf"))
        self.window_acks = 0
        self.latencies = array("d")
        self.per_second: Counter[int] = Counter()
        self.buffer = b""
        self.connected = asyncio.get_running_loop().create_future()
        self.room = asyncio.Event()
        self.drained = asyncio.Event()  # nothing awaits a PUBACK (or the connection is gone)
        self.writable = asyncio.Event()
        self.writable.set()
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport instances
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionError("the broker closed the connection")
        self.room.set()
        self.drained.set()
        if not self.connected.done():
            self.connected.set_exception(self.lost)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data
        now = time.perf_counter()
        at, end = 0, len(buf)
        while end - at >= 2:
            kind, length = buf[at], buf[at + 1]  # every packet the broker sends here is shorter than 128 bytes
            if end - at < 2 + length:
                break
            if kind == 0x40:  # PUBACK
                packet_id = (buf[at + 2] << 8) | buf[at + 3]
                self.acked += 1
                self.inflight -= 1
                if self.window[0] <= now < self.window[1]:
                    self.window_acks += 1
                    self.latencies.append(now - self.sent_at[packet_id])
                    self.per_second[int(now - self.window[0])] += 1
            elif kind == 0x20 and not self.connected.done():  # CONNACK
                if buf[at + 3] != 0:
                    self.connected.set_exception(ConnectionError(f"broker refused the connection (code {buf[at + 3]})"))
                else:
                    self.connected.set_result(None)
            at += 2 + length
        self.buffer = buf[at:]
        self.room.set()
        if self.inflight == 0:
            self.drained.set()

    def _room(self) -> int:
        return min(self.inflight_max - self.inflight, self.backlog_max - (self.acked - self.committed.value))

    async def run(self, until: float) -> None:
        assert self.transport is not None
        transport, topics, positions, last_time = self.transport, self.topics, self.positions, self.last_time
        sent_at, n = self.sent_at, len(topics)
        while time.perf_counter() < until:
            if self.lost is not None:
                raise self.lost
            room = self._room()
            if room <= 0:
                self.room.clear()
                # PUBACKs wake this up; ingest's progress (the parent's counter) is looked at every few ms.
                try:
                    await asyncio.wait_for(self.room.wait(), 0.005)
                except TimeoutError:
                    pass
                continue
            parts = []
            for _ in range(min(room, 256)):
                d = self.device
                self.device = d + 1 if d + 1 < n else 0
                t = time.time()
                if t <= last_time[d]:
                    t = last_time[d] + 1e-5  # each report of a device has its own time (the stored key)
                last_time[d] = t
                lat, lon = positions[d]
                payload = b'{"time":%.6f,"lat":%.6f,"lon":%.6f,"speed_kmh":0,"ignition":false}' % (t, lat, lon)
                topic = topics[d]
                packet_id = self.next_id
                self.next_id = packet_id + 1 if packet_id < 65535 else 1
                parts.append(b"\x32" + _varint(4 + len(topic) + len(payload)) + struct.pack(">H", len(topic)) + topic
                             + struct.pack(">H", packet_id) + payload)
                sent_at[packet_id] = time.perf_counter()
            self.inflight += len(parts)
            self.drained.clear()
            self.published += len(parts)
            transport.write(b"".join(parts))
            if not self.writable.is_set():
                await self.writable.wait()
            else:
                await asyncio.sleep(0)


async def _publish(conn: Connection, port: int, devices: list[str], options: dict[str, Any],
                   committed: Synchronized[int]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    transport, pub = await loop.create_connection(
        lambda: Publisher(devices, options["inflight"], options["backlog"], committed), "127.0.0.1", port)
    transport.write(connect_packet(f"bench-publisher-{os.getpid()}"))
    await asyncio.wait_for(pub.connected, 10)
    conn.send(("ready", None))
    start, window_start, end = await loop.run_in_executor(None, conn.recv)
    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    pub.window = (window_start, end)
    await pub.run(end)
    try:
        await asyncio.wait_for(pub.drained.wait(), options["drain_s"])
    except TimeoutError:
        pass  # reported as unacked
    transport.write(b"\xe0\x00")  # DISCONNECT
    transport.close()
    return {"published": pub.published, "acked": pub.acked, "window_acks": pub.window_acks,
            "unacked": pub.inflight, "latencies": pub.latencies.tobytes(), "per_second": dict(pub.per_second)}


def _loop_runner() -> Callable[[Coroutine[Any, Any, dict[str, Any]]], dict[str, Any]]:
    """uvloop's runner where it is installed (uvicorn[standard] brings it): the publisher should cost little
    CPU per packet; else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def publisher_main(conn: Connection, port: int, devices: list[str], options: dict[str, Any],
                   committed: Synchronized[int]) -> None:
    """The publisher process: ``ready`` -> parent, (start, window start, end) <- parent, results -> parent."""
    try:
        conn.send(("result", _loop_runner()(_publish(conn, port, devices, options, committed))))
    except BaseException as exc:  # reported to the parent, which prints it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        conn.close()


def forget_session(port: int, client_id: str) -> None:
    """Ends a persistent session (a CONNECT with clean session), so that the broker stops queueing for it."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(connect_packet(client_id, clean=True))
        s.recv(4)  # CONNACK
        s.sendall(b"\xe0\x00")


# The ingest processes -------------------------------------------------------------------------------


def start_ingest(tmp: Path, url: str, mqtt_url: str, *, name: str, group: str, extra: list[str]) -> tuple[
        Any, int]:
    metrics_port = free_port()
    proc = spawn_ingest(tmp / f"{name}.log", {
        "AVL_DATABASE_URL": url,
        "AVL_DATA_DIR": str(tmp / name),
        "AVL_MQTT_URL": mqtt_url,
        "AVL_MQTT_GROUP": group,
        "AVL_MQTT_CLIENT_ID": name,
        "AVL_INGEST_PROCESSES": "1",  # each process is started here (the shared subscription is what is measured)
        "AVL_PROTOCOLS": "osmand",  # MQTT only: one protocol, its listener off (port 0)
        "AVL_PORTS": json.dumps({"osmand": 0}),
        "AVL_UDP": "false",
        "AVL_INGEST_HOST": "127.0.0.1",
        "AVL_METRICS_PORT": str(metrics_port),
        "AVL_LOG_LEVEL": "WARNING",
    }, extra)
    return proc, metrics_port


def wait_subscribed(url: str, procs: list[Any], since: float, tmp: Path, names: list[str], timeout_s: float = 60) -> None:
    """Until every ingest process has told the database (its heartbeat) that it is subscribed."""
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            for proc, name in zip(procs, names, strict=True):
                if proc.poll() is not None:
                    raise RuntimeError(f"`avl ingest` ({name}) exited ({proc.returncode}):\n{log_tail(tmp / f'{name}.log')}")
            row = conn.execute("SELECT count(*) FROM platform_status WHERE component = 'ingest'"
                               " AND updated_at > to_timestamp(%s) AND details->>'mqtt_connected' = 'true'",
                               (since,)).fetchone()
            if row and row[0] >= len(procs):
                return
            time.sleep(0.2)
    raise RuntimeError(f"the ingest processes did not subscribe within {timeout_s:.0f} s")


class Snapshot:
    def __init__(self, ingest_pids: list[int], broker_pid: int, postmaster_pid: int, publisher_pid: int,
                 metrics_ports: list[int]) -> None:
        self.at = time.monotonic()
        self.ingest = [procstat.tree_cpu_seconds(pid) for pid in ingest_pids]
        self.broker = procstat.cpu_seconds(broker_pid)
        self.postgres = procstat.tree_cpu_seconds(postmaster_pid)
        self.publisher = procstat.cpu_seconds(publisher_pid)
        self.bench = procstat.cpu_seconds(os.getpid())
        self.machine = procstat.machine_cpu()
        self.metrics = [scrape(port) for port in metrics_ports]


def committed_rows(metrics_ports: list[int]) -> float:
    return sum(scrape(port).get("avl_batch_rows_sum", 0.0) for port in metrics_ports)


def window_figures(a: Snapshot, b: Snapshot) -> dict[str, Any]:
    wall = b.at - a.at
    total = (b.machine.busy + b.machine.idle + b.machine.iowait) - (a.machine.busy + a.machine.idle + a.machine.iowait)
    cpus = os.cpu_count() or 1
    busy_pct = 100 * (b.machine.busy - a.machine.busy) / total if total else 0.0
    ingest = [100 * (y - x) / wall for x, y in zip(a.ingest, b.ingest, strict=True)]
    ours = sum(y - x for x, y in zip(a.ingest, b.ingest, strict=True)) + (b.broker - a.broker) + (
        b.postgres - a.postgres) + (b.publisher - a.publisher) + (b.bench - a.bench)
    writers = []
    for ma, mb in zip(a.metrics, b.metrics, strict=True):
        batches = mb.get("avl_batch_rows_count", 0.0) - ma.get("avl_batch_rows_count", 0.0)
        seconds = mb.get("avl_batch_seconds_sum", 0.0) - ma.get("avl_batch_seconds_sum", 0.0)
        rows = mb.get("avl_batch_rows_sum", 0.0) - ma.get("avl_batch_rows_sum", 0.0)
        writers.append({"rows": rows, "batches": batches, "mean_rows_per_batch": rows / batches if batches else 0.0,
                        "mean_batch_ms": 1000 * seconds / batches if batches else 0.0,
                        "writer_busy_pct": 100 * seconds / wall})
    return {
        "seconds": wall,
        "rows_committed": sum(w["rows"] for w in writers),
        "cpu": {"ingest_core_pct": ingest, "broker_core_pct": 100 * (b.broker - a.broker) / wall,
                "postgres_core_pct": 100 * (b.postgres - a.postgres) / wall,
                "publisher_core_pct": 100 * (b.publisher - a.publisher) / wall,
                "machine_busy_pct": busy_pct, "cpus": cpus,
                "other_core_pct": max(0.0, busy_pct * cpus - 100 * ours / wall)},
        "writers": writers,
    }


def limit(fig: dict[str, Any], inflight: int, backlog: int) -> str:
    """What the figures say holds the rate back."""
    cpu = fig["cpu"]
    busiest = max(range(len(cpu["ingest_core_pct"])), key=lambda i: cpu["ingest_core_pct"][i])
    ingest_pct = cpu["ingest_core_pct"][busiest]
    writer = fig["writers"][busiest]
    if cpu["machine_busy_pct"] >= 90:
        parts = ", ".join(f"{k.split('_core')[0]} {v:.0f}%" for k, v in cpu.items()
                          if k.endswith("_core_pct") and not isinstance(v, list))
        return (f"the machine's {cpu['cpus']} CPUs ({cpu['machine_busy_pct']:.0f}% busy: ingest "
                + " + ".join(f"{p:.0f}%" for p in cpu["ingest_core_pct"]) + f", {parts} of one core)")
    if ingest_pct >= 85:
        return (f"ingest process {busiest + 1} at {ingest_pct:.0f}% of one core (one Python interpreter: decoding,"
                f" the pipeline and acks); its writer was busy {writer['writer_busy_pct']:.0f}% of the window")
    if writer["writer_busy_pct"] >= 85:
        return f"the database: ingest process {busiest + 1}'s writer committed {writer['writer_busy_pct']:.0f}% of the window"
    for name in ("broker", "publisher", "postgres"):
        if cpu[f"{name}_core_pct"] >= 85:
            return f"the {name} at {cpu[f'{name}_core_pct']:.0f}% of one core"
    return (f"no process saturated: the in-flight windows (publisher {inflight:,} unPUBACKed, {backlog:,} uncommitted;"
            " the broker sends each ingest process at most 1,000 unacknowledged) and commit latency")


def run_one(args: argparse.Namespace, tmp: Path, url: str, broker: LocalBroker, postmaster_pid: int,
            processes: int, devices: list[str]) -> dict[str, Any]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE positions, latest_positions, positions_quarantine")
    names = [f"bench-ingest-{processes}p-{i + 1}" for i in range(processes)]
    group = "" if processes == 1 else GROUP
    since = time.time() - 1
    started = [start_ingest(tmp, url, broker.url, name=name, group=group, extra=args.server_env) for name in names]
    procs, metrics_ports = [p for p, _ in started], [m for _, m in started]
    ctx = multiprocessing.get_context("spawn")
    committed = ctx.Value("q", 0, lock=False)
    publisher = None
    try:
        wait_subscribed(url, procs, since, tmp, names)
        log(f"{processes} ingest process(es) subscribed ({'shared: $share/' + GROUP + '/avl/in/#' if group else 'avl/in/#'})")
        baseline = committed_rows(metrics_ports)
        parent, child = ctx.Pipe()
        options = {"inflight": args.inflight, "backlog": args.backlog, "drain_s": args.drain}
        publisher = ctx.Process(target=publisher_main, args=(child, broker.port, devices, options, committed),
                                daemon=True, name="bench-mqtt-publisher")
        publisher.start()
        child.close()
        if not parent.poll(60):
            raise RuntimeError("the publisher did not connect within 60 s")
        kind, value = parent.recv()
        if kind != "ready":
            raise RuntimeError(f"publisher failed: {value}")
        assert publisher.pid is not None
        start = time.perf_counter() + 0.3
        clock = (start, start + args.warmup, start + args.warmup + args.duration)
        parent.send(clock)
        pids = [p.pid for p in procs]
        at_window: Snapshot | None = None
        at_end: Snapshot | None = None
        while at_end is None:
            now = time.perf_counter()
            for proc, name in zip(procs, names, strict=True):
                if proc.poll() is not None:
                    raise RuntimeError(f"`avl ingest` ({name}) exited ({proc.returncode}) under load:\n"
                                       f"{log_tail(tmp / f'{name}.log')}")
            if at_window is None and now >= clock[1]:
                at_window = Snapshot(pids, broker.proc.pid if broker.proc else 0, postmaster_pid, publisher.pid,
                                     metrics_ports)
                window_wall = (time.time(), 0.0)
            elif at_window is not None and now >= clock[2]:
                at_end = Snapshot(pids, broker.proc.pid if broker.proc else 0, postmaster_pid, publisher.pid,
                                  metrics_ports)
                window_wall = (window_wall[0], time.time())
                break
            committed.value = int(committed_rows(metrics_ports) - baseline)
            time.sleep(0.02)
        # Drained: the publisher has every PUBACK (or gave up), then ingest commits what the broker holds.
        deadline = time.monotonic() + args.drain + 30
        while not parent.poll(0.05):
            committed.value = int(committed_rows(metrics_ports) - baseline)
            if time.monotonic() > deadline:
                raise RuntimeError("the publisher did not report after the run")
        kind, result = parent.recv()
        if kind != "result":
            raise RuntimeError(f"publisher failed: {result}")
        deadline = time.monotonic() + args.drain
        with psycopg.connect(url, autocommit=True) as conn:
            stored = 0
            while time.monotonic() < deadline:
                stored = conn.execute("SELECT count(*) FROM positions").fetchone()[0]  # type: ignore[index]
                if stored >= result["acked"]:
                    break
                time.sleep(0.2)
            time.sleep(0.5)  # anything beyond would show as more stored than acknowledged
            stored = conn.execute("SELECT count(*) FROM positions").fetchone()[0]  # type: ignore[index]
            quarantined = conn.execute("SELECT count(*) FROM positions_quarantine").fetchone()[0]  # type: ignore[index]
            arrival = conn.execute(
                "SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM received_at - fix_time))"
                " FROM positions WHERE fix_time >= to_timestamp(%s) AND fix_time < to_timestamp(%s)",
                window_wall).fetchone()
    finally:
        if publisher is not None:
            publisher.join(10)
            if publisher.is_alive():
                publisher.terminate()
                publisher.join(5)
        codes = [stop_process(p) for p in procs]
        for name in names:
            try:
                forget_session(broker.port, name)
            except OSError as exc:
                log(f"session {name} not ended: {exc}")
    assert at_window is not None and at_end is not None
    fig = window_figures(at_window, at_end)
    latencies = sorted(array("d", result["latencies"]))
    seconds = [result["per_second"].get(s, 0) for s in range(int(args.duration))]
    p50, p99 = (arrival or (None, None))[0] or (0.0, 0.0)
    return {
        "processes": processes,
        "subscription": f"$share/{GROUP}/avl/in/#" if group else "avl/in/#",
        "messages_per_s": fig["rows_committed"] / fig["seconds"],
        "published_per_s": result["window_acks"] / args.duration,
        "published": result["published"], "pubacks": result["acked"], "unacked": result["unacked"],
        "stored": stored, "quarantined": quarantined,
        "puback_latency": {"p50_ms": 1000 * percentile(latencies, 50), "p99_ms": 1000 * percentile(latencies, 99),
                           "max_ms": 1000 * latencies[-1] if latencies else 0.0, "messages": len(latencies)},
        "arrival_latency": {"p50_ms": 1000 * float(p50 or 0.0), "p99_ms": 1000 * float(p99 or 0.0)},
        "pubacks_per_second": {"min": min(seconds, default=0), "median": statistics.median(seconds) if seconds else 0,
                               "max": max(seconds, default=0)},
        "window": fig,
        "limit": limit(fig, args.inflight, args.backlog),
        "ingest_exit_codes": codes,
        "ok": stored == result["acked"] and result["unacked"] == 0 and quarantined == 0 and result["acked"] > 0,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="avl-bench-mqtt-"))
    os.chmod(tmp, 0o755)  # the cluster runs as 'postgres' when the benchmark runs as root
    pg: LocalPostgres | None = None
    broker: LocalBroker | None = None
    runs = []
    load = os.getloadavg()[0]
    try:
        pg = LocalPostgres(tmp / "db", free_port(), durable=True)
        log(f"starting PostgreSQL (durable: fsync on) in {tmp}")
        url = pg.start()
        devices = identifiers(args.devices)
        with psycopg.connect(url) as conn:
            migrate(conn)
            conn.commit()
            policies.apply(conn, retention_days=400, compress_after_days=7, partitions_ahead_days=7)
            account = add_account(conn, ACCOUNT)["id"]
            conn.execute("INSERT INTO devices (identifier, protocol, account_id) SELECT unnest(%s::text[]), 'json', %s",
                         (devices, account))
            conn.commit()
            server = {name: conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
                      for name in ("server_version", "fsync", "synchronous_commit")}
        broker = LocalBroker(tmp / "broker", free_port())
        broker.start()
        log(f"PostgreSQL {server['server_version']}, {broker.kind} on :{broker.port}, {len(devices)} devices")
        postmaster_pid = int((pg.pgdata / "postmaster.pid").read_text().splitlines()[0])
        for processes in args.processes:
            log(f"run: {processes} ingest process(es), {args.warmup:g} s warm-up + {args.duration:g} s measured")
            runs.append(run_one(args, tmp, url, broker, postmaster_pid, processes, devices))
    finally:
        if broker is not None:
            broker.stop()
        if pg is not None:
            pg.stop("fast")
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return {"config": {"devices": args.devices, "duration_s": args.duration, "warmup_s": args.warmup,
                       "inflight": args.inflight, "backlog": args.backlog, "server_env": args.server_env},
            "machine": {"cpus": os.cpu_count(), "load_average_before": load, "postgres": server,
                        "broker": broker.kind if broker else None},
            "runs": runs, "ok": all(r["ok"] for r in runs)}


def summary(r: dict[str, Any]) -> str:
    c = r["config"]
    lines = ["", f"AVL MQTT ingest benchmark: {c['devices']:,} devices publishing JSON reports at QoS 1 through"
             f" {r['machine']['broker']}, {c['duration_s']:g} s measured after {c['warmup_s']:g} s warm-up;"
             f" publisher window {c['inflight']:,} awaiting PUBACK, {c['backlog']:,} awaiting commit",
             f"machine: {r['machine']['cpus']} CPUs, load average {r['machine']['load_average_before']:.2f} before the"
             f" run; PostgreSQL {r['machine']['postgres']['server_version']}"
             f" (fsync={r['machine']['postgres']['fsync']})", ""]
    for run_ in r["runs"]:
        w, cpu = run_["window"], run_["window"]["cpu"]
        lines += [
            f"{run_['processes']} ingest process(es), {run_['subscription']}:",
            f"  durable messages/s            {run_['messages_per_s']:>10,.0f}  committed by ingest in the window;"
            f" target {TARGET_MSG_S:,}",
            f"  PUBACKed by the broker/s      {run_['published_per_s']:>10,.0f}  per second min / median / max"
            f" {run_['pubacks_per_second']['min']:,} / {run_['pubacks_per_second']['median']:,.0f} /"
            f" {run_['pubacks_per_second']['max']:,}",
            f"  PUBACK latency p50 / p99      {run_['puback_latency']['p50_ms']:>6.1f} / {run_['puback_latency']['p99_ms']:.1f} ms"
            "  publish -> the broker has it",
            f"  publish -> ingest p50 / p99   {run_['arrival_latency']['p50_ms']:>6.1f} / {run_['arrival_latency']['p99_ms']:.1f} ms"
            "  received_at - the report's time (includes the broker's queue)",
            f"  PUBACKs / stored              {run_['pubacks']:,} / {run_['stored']:,}  "
            + ("OK" if run_["ok"] else "MISMATCH") + f"; unacked {run_['unacked']}, quarantined {run_['quarantined']}",
            "  CPU in the window, % of a core  ingest " + " + ".join(f"{p:.0f}" for p in cpu["ingest_core_pct"])
            + f", broker {cpu['broker_core_pct']:.0f}, postgres {cpu['postgres_core_pct']:.0f},"
            f" publisher {cpu['publisher_core_pct']:.0f}, other {cpu['other_core_pct']:.0f};"
            f" machine {cpu['machine_busy_pct']:.0f}% busy of {cpu['cpus']}",
            "  writer per process            " + "; ".join(
                f"{x['batches']:,.0f} batches of {x['mean_rows_per_batch']:.0f} rows, {x['mean_batch_ms']:.1f} ms,"
                f" busy {x['writer_busy_pct']:.0f}%" for x in w["writers"]),
            f"  limit: {run_['limit']}",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    results = run(args)
    return report(args, results, summary(results))


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
