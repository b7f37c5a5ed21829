"""``python -m bench.ingest``: durable end-to-end ingest throughput, with its references.

One run, on one throwaway PostgreSQL cluster with durable settings (fsync on):

1. the ingest service runs as ``avl ingest`` in its own process; simulated Teltonika and
   GT06 terminals (``bench.loadgen``, in one or more other processes) send over real TCP
   and wait for their ACKs as devices do. Reported: positions ACKed per second in the
   measurement window (an ACK means committed), send->ACK latency, the ingest process's
   memory (VmRSS, VmHWM) and the CPU each side used; then ``count(*)`` of ``positions``
   is checked against the number of positions ACKed over the whole run;
2. the ceiling: a bare binary COPY of as many prebuilt rows (the very rows stored in 1)
   into a fresh table shaped like a positions partition, in one transaction;
3. the naive path: one INSERT per position, each committed, into another fresh table.

See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from array import array
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from avl.admin import DeviceSpec, add_account, add_device
from avl.db import policies
from avl.db.migrate import migrate
from avl.embedded import LocalBroker, LocalPostgres, free_port, wait_for_port
from bench import procstat
from bench.loadgen import GT06, PROTOCOLS, TELTONIKA, SimDevice, worker_main
from ingest.pipeline import Batch
from ingest.spool import Spool
from ingest.writer import POSITION_COLUMNS, POSITION_TYPES, Writer

ACCOUNT = "Bench Fleet"
TARGET_POSITIONS_S = 50_000
_COLS = ", ".join(POSITION_COLUMNS)
_T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[bench {time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--connections", type=int, default=200, help="simulated devices, one TCP connection each, "
                   "spread evenly over the protocols")
    p.add_argument("--duration", type=float, default=20.0, help="measurement window, seconds")
    p.add_argument("--warmup", type=float, default=3.0, help="load before the window opens, seconds")
    p.add_argument("--protocols", default="teltonika,gt06", help="comma-separated, of: " + ", ".join(PROTOCOLS))
    p.add_argument("--batch", type=int, default=50, help="Teltonika records per data frame (1-255)")
    p.add_argument("--window", type=int, default=10, help="GT06 location frames in flight per connection "
                   "(1 = one at a time)")
    p.add_argument("--workers", type=int, default=1, help="load-generator processes")
    p.add_argument("--rate", type=float, default=0.0, help="fixed-rate mode: positions/s offered by all the "
                   "connections together, evenly (0: each connection sends again as soon as it is ACKed, i.e. "
                   "saturation); for send->ACK latency at a chosen load, e.g. half the saturated rate")
    p.add_argument("--naive-rows", type=int, default=5000, help="rows for the one-INSERT-per-commit reference")
    p.add_argument("--copy-rows-max", type=int, default=2_000_000, help="cap on the rows of the bare COPY reference")
    p.add_argument("--drain", type=float, default=15.0, help="seconds to wait for the last ACKs after the window")
    p.add_argument("--server-env", action="append", default=[], metavar="AVL_KEY=VALUE",
                   help="extra environment for `avl ingest` (repeatable), e.g. AVL_BATCH_MAX_ROWS=10000")
    p.add_argument("--server-command", help="command that runs the ingest service, instead of `avl ingest` "
                   "(e.g. a wrapper trying a change); it gets the same AVL_* environment")
    p.add_argument("--profile", type=Path, help="py-spy record the ingest process during the window into this file "
                   "(.svg flame graph, .json speedscope, else collapsed stacks); needs py-spy")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (database, logs)")
    args = p.parse_args(argv)
    args.protocols = [x.strip() for x in args.protocols.split(",") if x.strip()]
    unknown = [x for x in args.protocols if x not in PROTOCOLS]
    if unknown or not args.protocols:
        p.error(f"--protocols: unknown {', '.join(unknown) or '(none given)'}; known: {', '.join(PROTOCOLS)}")
    if not 1 <= args.batch <= 255:
        p.error("--batch: 1 to 255 records (a Teltonika frame's limit)")
    if args.rate < 0:
        p.error("--rate: positions/s, 0 or more")
    if args.connections < len(args.protocols) or args.duration <= 0 or args.window < 1 or args.workers < 1:
        p.error("--connections (at least one per protocol), --duration, --window and --workers must be positive")
    for item in args.server_env:
        if "=" not in item or not item.startswith("AVL_"):
            p.error(f"--server-env: expected AVL_KEY=VALUE, got {item!r}")
    return args


# The simulated fleet -----------------------------------------------------------------------


def fleet(connections: int, protocols: list[str]) -> list[SimDevice]:
    """Devices spread evenly over the protocols; each starts at its own point of the drive."""
    devices = []
    for i in range(connections):
        protocol = protocols[i % len(protocols)]
        if protocol == TELTONIKA:
            devices.append(SimDevice(protocol, f"3520930{i:08d}", offset=(i * 13) % 97))
        else:
            devices.append(SimDevice(protocol, f"8680001{i:08d}", offset=(i * 389) % 3600))
    return devices


def register(conn: psycopg.Connection, devices: list[SimDevice]) -> None:
    add_account(conn, ACCOUNT)
    for d in devices:
        add_device(conn, DeviceSpec(identifier=d.imei, protocol=d.protocol, account=ACCOUNT))
    conn.commit()


# The ingest process --------------------------------------------------------------------------


def avl_command() -> list[str]:
    script = Path(sys.executable).parent / "avl"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; sys.argv[0] = 'avl'; from avl.cli import main; main()"]


def spawn_ingest(log_path: Path, settings: dict[str, str], extra: list[str],
                 command: str | None = None) -> subprocess.Popen[bytes]:
    """`avl ingest` (or ``command``) in its own session, configured by ``settings`` and then the
    ``KEY=VALUE`` items of ``extra`` only (no AVL_* from this environment), its output in ``log_path``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVL_")}
    env.update(settings)
    for item in extra:
        key, _, value = item.partition("=")
        env[key] = value
    log_file = open(log_path, "ab")  # noqa: SIM115 - handed to the child
    cmd = shlex.split(command) if command else [*avl_command(), "ingest"]
    proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    log_file.close()
    return proc


def start_ingest(tmp: Path, url: str, mqtt_url: str, ports: dict[str, int], metrics_port: int,
                 connections: int, extra: list[str], command: str | None = None) -> subprocess.Popen[bytes]:
    proc = spawn_ingest(tmp / "ingest.log", {
        "AVL_DATABASE_URL": url,
        "AVL_DATA_DIR": str(tmp / "ingest"),
        "AVL_MQTT_URL": mqtt_url,
        "AVL_PROTOCOLS": ",".join(ports),
        "AVL_PORTS": json.dumps(ports),
        "AVL_UDP": "false",
        "AVL_INGEST_HOST": "127.0.0.1",
        "AVL_METRICS_PORT": str(metrics_port),
        "AVL_MAX_CONNECTIONS_PER_SOURCE": str(max(256, connections + 16)),
        "AVL_LOG_LEVEL": "WARNING",
    }, extra, command)
    for name, port in ports.items():
        if not wait_for_port(port, 60, proc):
            stop_process(proc)
            raise RuntimeError(f"`avl ingest` did not listen for {name} on {port}:\n{log_tail(tmp / 'ingest.log')}")
    return proc


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def scrape(port: int) -> dict[str, float]:
    """The ingest service's Prometheus metrics, summed over labels."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return {}
    out: dict[str, float] = defaultdict(float)
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name_labels, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name_labels.split("{", 1)[0]] += float(value)
    return out


def py_spy() -> str | None:
    found = shutil.which("py-spy")
    venv = Path(sys.executable).parent / "py-spy"
    return found or (str(venv) if venv.exists() else None)


# Measuring -------------------------------------------------------------------------------------


class Snapshot:
    def __init__(self, ingest_pid: int, postmaster_pid: int, worker_pids: list[int], metrics_port: int) -> None:
        self.at = time.monotonic()
        self.ingest = procstat.tree_cpu_seconds(ingest_pid)  # with its worker processes
        self.postgres = procstat.tree_cpu_seconds(postmaster_pid)
        self.workers = sum(procstat.cpu_seconds(pid) for pid in worker_pids)
        self.bench = procstat.cpu_seconds(os.getpid())
        self.machine = procstat.machine_cpu()
        self.metrics = scrape(metrics_port)


def cpu_share(a: Snapshot, b: Snapshot) -> dict[str, float]:
    wall = b.at - a.at
    total = (b.machine.busy + b.machine.idle + b.machine.iowait) - (a.machine.busy + a.machine.idle + a.machine.iowait)
    cpus = os.cpu_count() or 1
    busy_pct = 100 * (b.machine.busy - a.machine.busy) / total if total else 0.0
    ours = (b.ingest - a.ingest) + (b.postgres - a.postgres) + (b.workers - a.workers) + (b.bench - a.bench)
    return {
        "ingest_core_pct": 100 * (b.ingest - a.ingest) / wall,
        "postgres_core_pct": 100 * (b.postgres - a.postgres) / wall,
        "loadgen_core_pct": 100 * (b.workers - a.workers) / wall,
        "machine_busy_pct": busy_pct,
        "machine_iowait_pct": 100 * (b.machine.iowait - a.machine.iowait) / total if total else 0.0,
        # everything else on the machine (other jobs, the kernel's share of loopback TCP, the broker)
        "other_core_pct": max(0.0, busy_pct * cpus - 100 * ours / wall),
        "cpus": cpus,
    }


def writer_figures(a: Snapshot, b: Snapshot) -> dict[str, float]:
    def delta(name: str) -> float:
        return b.metrics.get(name, 0.0) - a.metrics.get(name, 0.0)

    batches = delta("avl_batch_rows_count")
    wall = b.at - a.at
    return {
        "batches": batches,
        "mean_rows_per_batch": delta("avl_batch_rows_sum") / batches if batches else 0.0,
        "mean_batch_ms": 1000 * delta("avl_batch_seconds_sum") / batches if batches else 0.0,
        "writer_busy_pct": 100 * delta("avl_batch_seconds_sum") / wall,
        "frames": delta("avl_frames_total"),
        "refused_frames": delta("avl_refused_frames_total"),
    }


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


def latency_ms(samples: array[float]) -> dict[str, float]:
    values = sorted(samples)
    return {"frames": len(values), "p50_ms": 1000 * percentile(values, 50), "p99_ms": 1000 * percentile(values, 99),
            "max_ms": 1000 * values[-1] if values else 0.0}


def run_load(args: argparse.Namespace, devices: list[SimDevice], ports: dict[str, int], ingest: subprocess.Popen[bytes],
             postmaster_pid: int, metrics_port: int, track_start: datetime, tmp: Path) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    total_s = args.warmup + args.duration
    options = {
        "track_start": track_start.isoformat(), "batch": args.batch, "window": args.window, "drain_s": args.drain,
        "rate_per_connection": args.rate / len(devices),
        # frames encoded before the run (per device: well above what one device sends at these rates)
        "prebuild_frames": {TELTONIKA: 100 + int(10 * total_s), GT06: 1000 + int(400 * total_s)},
    }
    shares = [devices[i::args.workers] for i in range(args.workers)]
    pipes, procs = [], []
    for share in shares:
        if not share:
            continue
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=worker_main, args=(child, share, ports, options), daemon=True,
                           name="bench-loadgen")
        proc.start()
        child.close()
        pipes.append(parent)
        procs.append(proc)
    try:
        connected = 0
        for pipe in pipes:
            if not pipe.poll(120):
                raise RuntimeError("a load generator did not connect its devices within 120 s")
            kind, value = pipe.recv()
            if kind != "ready":
                raise RuntimeError(f"load generator failed: {value}")
            connected += value
        log(f"{connected} devices connected and logged in; load for {args.warmup:g} s warm-up"
            f" + {args.duration:g} s measured")
        pids = [p.pid for p in procs if p.pid is not None]
        mem_before = procstat.tree_memory_kib(ingest.pid)
        start = time.monotonic() + 0.3
        clock = (start, start + args.warmup, start + total_s)
        for pipe in pipes:
            pipe.send(clock)

        rss_samples: list[tuple[float, int]] = []
        queue_samples: list[float] = []
        at_window: Snapshot | None = None
        at_end: Snapshot | None = None
        profiler: subprocess.Popen[bytes] | None = None
        next_scrape = 0.0
        while at_end is None:
            now = time.monotonic()
            if ingest.poll() is not None:
                raise RuntimeError(f"`avl ingest` exited ({ingest.returncode}) under load:\n"
                                   f"{log_tail(tmp / 'ingest.log')}")
            if at_window is None and now >= clock[1]:
                at_window = Snapshot(ingest.pid, postmaster_pid, pids, metrics_port)
                profiler = start_profiler(args, ingest.pid)
            elif at_window is not None and now >= clock[2]:
                at_end = Snapshot(ingest.pid, postmaster_pid, pids, metrics_port)
                break
            mem = procstat.tree_memory_kib(ingest.pid)
            if "VmRSS" in mem:
                rss_samples.append((now - start, mem["VmRSS"]))
            if now >= next_scrape and now >= clock[0]:
                queue_samples.append(scrape(metrics_port).get("avl_writer_queue_rows", 0.0))
                next_scrape = now + 1.0
            time.sleep(max(0.0, min(0.25, (clock[1] if at_window is None else clock[2]) - time.monotonic())))
        mem_end_of_window = procstat.tree_memory_kib(ingest.pid)

        results: list[dict[str, Any]] = []
        deadline = time.monotonic() + args.drain + 60
        for pipe in pipes:
            if not pipe.poll(max(0.1, deadline - time.monotonic())):
                raise RuntimeError("a load generator did not report after the run")
            kind, value = pipe.recv()
            if kind != "result":
                raise RuntimeError(f"load generator failed: {value}")
            results.append(value)
        mem_after = procstat.tree_memory_kib(ingest.pid)
        if profiler is not None:
            try:
                profiler.wait(60)
            except subprocess.TimeoutExpired:
                profiler.kill()
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)

    assert at_window is not None and at_end is not None
    per_protocol: dict[str, dict[str, Any]] = {}
    all_latencies = array("d")
    per_second: Counter[int] = Counter()
    errors: list[str] = []
    for protocol in args.protocols:
        lat = array("d")
        merged: dict[str, Any] = defaultdict(int)
        for result in results:
            r = result[protocol]
            for key in ("connections", "connect_errors", "frames_sent", "frames_acked", "positions_acked",
                        "window_positions", "window_frames", "unacked_frames"):
                merged[key] += r[key]
            lat.frombytes(r["latencies"])
            per_second.update({int(k): v for k, v in r["per_second"].items()})
            errors.extend(r["errors"])
        all_latencies.extend(lat)
        merged["positions_per_s"] = merged["window_positions"] / args.duration
        merged["latency"] = latency_ms(lat)
        per_protocol[protocol] = dict(merged)
    window_positions = sum(p["window_positions"] for p in per_protocol.values())
    in_flight = sum(p["connections"] * (args.batch if name == TELTONIKA else args.window)
                    for name, p in per_protocol.items())
    seconds = [per_second.get(s, 0) for s in range(int(args.duration))]
    hwm = max(mem_before.get("VmHWM", 0), mem_after.get("VmHWM", 0))
    return {
        "connections": sum(p["connections"] for p in per_protocol.values()),
        "positions_per_s": window_positions / args.duration,
        "max_in_flight": in_flight,
        "window_positions": window_positions,
        "positions_acked": sum(p["positions_acked"] for p in per_protocol.values()),
        "unacked_frames": sum(p["unacked_frames"] for p in per_protocol.values()),
        "latency": latency_ms(all_latencies),
        "per_second": {"min": min(seconds, default=0), "median": statistics.median(seconds) if seconds else 0,
                       "max": max(seconds, default=0)},
        "protocols": per_protocol,
        "errors": errors[:20],
        "cpu": cpu_share(at_window, at_end),
        "writer": writer_figures(at_window, at_end),
        "writer_queue_rows": {"max": max(queue_samples, default=0.0),
                              "mean": statistics.fmean(queue_samples) if queue_samples else 0.0},
        "ingest_memory_mib": {
            "rss_before_load": mem_before.get("VmRSS", 0) / 1024,
            "rss_max_sampled": max((kib for _, kib in rss_samples), default=0) / 1024,
            "rss_end_of_window": mem_end_of_window.get("VmRSS", 0) / 1024,
            "rss_after_drain": mem_after.get("VmRSS", 0) / 1024,
            "hwm": hwm / 1024,
            "rss_timeline": [(round(t, 1), round(kib / 1024, 1)) for t, kib in rss_samples[::8]],
        },
    }


def start_profiler(args: argparse.Namespace, pid: int) -> subprocess.Popen[bytes] | None:
    if args.profile is None:
        return None
    exe = py_spy()
    if exe is None:
        log("--profile: py-spy not found (.venv/bin/pip install py-spy); not profiling")
        return None
    suffix = args.profile.suffix.lower()
    fmt = "flamegraph" if suffix == ".svg" else "speedscope" if suffix == ".json" else "raw"
    cmd = [exe, "record", "--pid", str(pid), "--duration", str(max(1, int(args.duration))), "--rate", "250", "--subprocesses",
           "--nonblocking", "--format", fmt, "--output", str(args.profile)]
    log(f"profiling the ingest process: {' '.join(cmd)}")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# The references on the same database -------------------------------------------------------------


def fetch_rows(url: str, limit: int) -> list[tuple[Any, ...]]:
    """The stored positions as the writer's rows: ``attributes`` as JSON text, as the pipeline
    serialises it."""
    raw = POSITION_COLUMNS.index("raw")
    attributes = POSITION_COLUMNS.index("attributes")
    shared: dict[bytes, bytes] = {}  # one object per distinct frame: a frame's records share it
    rows = []
    with psycopg.connect(url) as conn, conn.cursor(name="bench_rows", binary=True) as cur:
        cur.execute(f"SELECT {_COLS} FROM positions LIMIT %s", (limit,))
        while chunk := cur.fetchmany(20_000):
            for row in chunk:
                value = row[raw]
                if value is not None:
                    row = (*row[:raw], shared.setdefault(value, value), *row[raw + 1:])
                row = (*row[:attributes], json.dumps(row[attributes]), *row[attributes + 1:])
                rows.append(row)
    return rows


def fresh_table(conn: psycopg.Connection, name: str) -> None:
    """A plain table with a partition's shape: the columns, defaults and primary key of positions."""
    conn.execute(f"DROP TABLE IF EXISTS {name}")
    conn.execute(f"CREATE TABLE {name} (LIKE positions INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)")
    conn.commit()
    conn.execute("CHECKPOINT")  # start each reference from the same clean state
    conn.commit()


def bare_copy(url: str, rows: list[tuple[Any, ...]]) -> dict[str, float]:
    attributes = POSITION_COLUMNS.index("attributes")
    types = list(POSITION_TYPES)
    types[attributes] = "jsonb"
    prebuilt = [(*row[:attributes], Jsonb(json.loads(row[attributes])), *row[attributes + 1:]) for row in rows]
    with psycopg.connect(url) as conn:
        fresh_table(conn, "bench_copy")
        started = time.perf_counter()
        with conn.cursor() as cur, cur.copy(f"COPY bench_copy ({_COLS}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(types)
            for row in prebuilt:
                copy.write_row(row)
        conn.commit()
        elapsed = time.perf_counter() - started
        stored = conn.execute("SELECT count(*) FROM bench_copy").fetchone()[0]  # type: ignore[index]
    return {"rows": stored, "seconds": elapsed, "rows_per_s": stored / elapsed if elapsed else 0.0}


def writer_alone(url: str, rows: list[tuple[Any, ...]], spool_dir: Path, frame_rows: int) -> dict[str, float]:
    """The service's own Writer (same batching, SQL and commit) fed prebuilt rows as fast as it
    takes them, in frame-sized submissions: the database side of the end-to-end path without
    sockets, decoding or the pipeline. ``positions`` and ``latest_positions`` are emptied first."""
    with psycopg.connect(url) as conn:
        conn.execute("TRUNCATE positions, latest_positions")
        conn.commit()
        conn.execute("CHECKPOINT")
        conn.commit()

    async def feed() -> tuple[float, int]:
        writer = Writer(url, Spool(spool_dir))
        await writer.start()
        try:
            started = time.perf_counter()
            await asyncio.gather(*(writer.submit(Batch(positions=rows[i:i + frame_rows]))
                                   for i in range(0, len(rows), frame_rows)))
            return time.perf_counter() - started, writer.stats.batches
        finally:
            await writer.close()
            writer.spool.close()

    elapsed, batches = asyncio.run(feed())
    with psycopg.connect(url) as conn:
        stored = conn.execute("SELECT count(*) FROM positions").fetchone()[0]  # type: ignore[index]
    return {"rows": stored, "seconds": elapsed, "rows_per_s": stored / elapsed if elapsed else 0.0,
            "batches": batches}


def naive_inserts(url: str, rows: list[tuple[Any, ...]]) -> dict[str, float]:
    sql = f"INSERT INTO bench_naive ({_COLS}) VALUES ({', '.join(['%s'] * len(POSITION_COLUMNS))})"
    with psycopg.connect(url) as conn:
        fresh_table(conn, "bench_naive")
        attributes = POSITION_COLUMNS.index("attributes")
        prebuilt = [(*row[:attributes], Jsonb(json.loads(row[attributes])), *row[attributes + 1:]) for row in rows]
        conn.autocommit = True  # one transaction, so one WAL flush, per position
        started = time.perf_counter()
        with conn.cursor() as cur:
            for row in prebuilt:
                cur.execute(sql, row)
        elapsed = time.perf_counter() - started
        stored = conn.execute("SELECT count(*) FROM bench_naive").fetchone()[0]  # type: ignore[index]
    return {"rows": stored, "seconds": elapsed, "rows_per_s": stored / elapsed if elapsed else 0.0}


# The whole run ---------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="avl-bench-"))
    os.chmod(tmp, 0o755)  # as root, PostgreSQL runs as 'postgres' and must reach its data directory
    pg: LocalPostgres | None = None
    broker: LocalBroker | None = None
    ingest: subprocess.Popen[bytes] | None = None
    try:
        pg = LocalPostgres(tmp / "db", free_port(), durable=True)
        log(f"starting PostgreSQL (durable: fsync on) in {tmp}")
        url = pg.start()
        devices = fleet(args.connections, args.protocols)
        with psycopg.connect(url) as conn:
            migrate(conn)
            conn.commit()
            policies.apply(conn, retention_days=400, compress_after_days=7, partitions_ahead_days=7)
            register(conn, devices)
            server = {name: conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
                      for name in ("server_version", "fsync", "synchronous_commit", "full_page_writes",
                                   "wal_level", "shared_buffers")}
        log(f"PostgreSQL {server['server_version']}: {len(devices)} devices registered")
        broker = LocalBroker(tmp / "broker", free_port())
        mqtt_url = broker.start()
        ports = {p: free_port() for p in args.protocols}
        metrics_port = free_port()
        ingest = start_ingest(tmp, url, mqtt_url, ports, metrics_port, args.connections, args.server_env,
                              args.server_command)
        log(f"`avl ingest` running (pid {ingest.pid}) on {', '.join(f'{k} :{v}' for k, v in ports.items())}")
        postmaster_pid = int((pg.pgdata / "postmaster.pid").read_text().splitlines()[0])
        # Fix times: one per second from three days ago (older than any device in this run reaches now).
        track_start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=3)
        load = run_load(args, devices, ports, ingest, postmaster_pid, metrics_port, track_start, tmp)
        code = stop_process(ingest)
        log(f"`avl ingest` stopped (exit {code})")
        with psycopg.connect(url) as conn:
            stored = conn.execute("SELECT count(*) FROM positions").fetchone()[0]  # type: ignore[index]
            quarantined = conn.execute("SELECT count(*) FROM positions_quarantine").fetchone()[0]  # type: ignore[index]
        load["positions_stored"] = stored
        load["positions_quarantined"] = quarantined
        load["ingest_exit_code"] = code

        log(f"bare COPY reference: fetching {min(stored, args.copy_rows_max)} stored rows")
        rows = fetch_rows(url, min(stored, args.copy_rows_max))
        log(f"bare COPY of {len(rows)} prebuilt rows")
        copy = bare_copy(url, rows)
        log(f"writer alone: the service's Writer fed the same {len(rows)} rows")
        alone = writer_alone(url, rows, tmp / "writer-spool", args.batch)
        naive_count = min(args.naive_rows, len(rows))
        log(f"naive path: {naive_count} INSERTs, each committed")
        naive = naive_inserts(url, rows[:naive_count])
        del rows
    finally:
        if ingest is not None:
            stop_process(ingest)
        if broker is not None:
            broker.stop()
        if pg is not None:
            pg.stop("fast")
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    e2e = load["positions_per_s"]
    return {
        "config": {"connections": args.connections, "protocols": args.protocols, "batch": args.batch,
                   "gt06_window": args.window, "duration_s": args.duration, "warmup_s": args.warmup,
                   "workers": args.workers, "rate": args.rate, "server_env": args.server_env, "server_command": args.server_command},
        "machine": {"cpus": os.cpu_count(), "postgres": server},
        "end_to_end": load,
        "bare_copy": copy,
        "writer_alone": alone,
        "naive": naive,
        "ratios": {"end_to_end_over_bare_copy": e2e / copy["rows_per_s"] if copy["rows_per_s"] else 0.0,
                   "end_to_end_over_naive": e2e / naive["rows_per_s"] if naive["rows_per_s"] else 0.0},
        "ok": load["positions_stored"] == load["positions_acked"] and load["unacked_frames"] == 0
        and not load["errors"] and load["positions_acked"] > 0,
    }


# Report ------------------------------------------------------------------------------------------


def _n(value: float) -> str:
    return f"{value:,.0f}"


def summary(r: dict[str, Any]) -> str:
    c, e, copy, naive = r["config"], r["end_to_end"], r["bare_copy"], r["naive"]
    pg = r["machine"]["postgres"]
    lines = [
        "",
        f"AVL ingest benchmark: {e['connections']} connections ("
        + ", ".join(f"{p['connections']} {name}" for name, p in e["protocols"].items())
        + f"; Teltonika {c['batch']} records/frame, GT06 window {c['gt06_window']} frames), "
        f"{c['duration_s']:g} s measured after {c['warmup_s']:g} s warm-up, {c['workers']} load-generator process(es);"
        f" at most {e['max_in_flight']:,} positions in flight (sent, not yet ACKed)"
        + (f"; fixed rate: {c['rate']:,.0f} positions/s offered" if c.get("rate") else ""),
        f"machine: {r['machine']['cpus']} CPUs; PostgreSQL {pg['server_version']} (fsync={pg['fsync']}, "
        f"synchronous_commit={pg['synchronous_commit']}, full_page_writes={pg['full_page_writes']}, "
        f"shared_buffers={pg['shared_buffers']})",
        "",
    ]
    rows: list[tuple[str, str, str]] = [
        ("end-to-end durable positions/s", _n(e["positions_per_s"]),
         f"ACKed in the window; target {_n(TARGET_POSITIONS_S)}"),
    ]
    for name, p in e["protocols"].items():
        rows.append((f"  {name}", _n(p["positions_per_s"]),
                     f"{p['window_frames']:,} frames; send->ACK p50 {p['latency']['p50_ms']:.1f} ms,"
                     f" p99 {p['latency']['p99_ms']:.1f} ms"))
    ps = e["per_second"]
    rows += [
        ("  per second: min / median / max", f"{_n(ps['min'])} / {_n(ps['median'])} / {_n(ps['max'])}", ""),
        ("send->ACK latency p50 / p99", f"{e['latency']['p50_ms']:.1f} / {e['latency']['p99_ms']:.1f} ms",
         f"every frame ACKed in the window (max {e['latency']['max_ms']:.0f} ms)"),
        ("positions ACKed / stored", f"{e['positions_acked']:,} / {e['positions_stored']:,}",
         ("OK" if e["positions_acked"] == e["positions_stored"] else "MISMATCH")
         + f"; whole run; unacked frames {e['unacked_frames']}, quarantined {e['positions_quarantined']}"),
        ("bare binary COPY rows/s (ceiling)", _n(copy["rows_per_s"]),
         f"{copy['rows']:,} prebuilt rows, one COPY + commit, {copy['seconds']:.2f} s"),
        ("writer alone rows/s", _n(r["writer_alone"]["rows_per_s"]),
         f"the service's Writer fed the same rows (no sockets, no decoding), {r['writer_alone']['batches']:,} batches"),
        ("naive INSERT+commit rows/s", _n(naive["rows_per_s"]),
         f"{naive['rows']:,} rows, one transaction each, {naive['seconds']:.2f} s"),
        ("end-to-end / bare COPY", f"{r['ratios']['end_to_end_over_bare_copy']:.2f}", "aim: 0.50"),
        ("end-to-end / naive", f"{r['ratios']['end_to_end_over_naive']:.1f}x", ""),
    ]
    m = e["ingest_memory_mib"]
    rows.append(("ingest RSS: before / max / after, MiB",
                 f"{m['rss_before_load']:.0f} / {m['rss_max_sampled']:.0f} / {m['rss_after_drain']:.0f}",
                 f"VmHWM {m['hwm']:.0f} MiB; writer queue max {e['writer_queue_rows']['max']:,.0f} rows"))
    cpu = e["cpu"]
    rows.append(("CPU in the window, % of one core", f"ingest {cpu['ingest_core_pct']:.0f}",
                 f"postgres {cpu['postgres_core_pct']:.0f}, load generator {cpu['loadgen_core_pct']:.0f};"
                 f" anything else {cpu['other_core_pct']:.0f}; machine {cpu['machine_busy_pct']:.0f}% busy"
                 f" of {cpu['cpus']} CPUs, iowait {cpu['machine_iowait_pct']:.0f}%"))
    w = e["writer"]
    if w["batches"]:
        rows.append(("writer batches in the window", f"{w['batches']:,.0f}",
                     f"mean {w['mean_rows_per_batch']:.0f} rows, {w['mean_batch_ms']:.1f} ms each;"
                     f" writer busy {w['writer_busy_pct']:.0f}% of the window"))
    width = max(len(a) for a, _, _ in rows)
    vwidth = max(len(b) for _, b, _ in rows)
    lines += [f"  {a:<{width}}  {b:>{vwidth}}  {note}".rstrip() for a, b, note in rows]
    if e["errors"]:
        lines += ["", "errors (first ones):", *(f"  {x}" for x in e["errors"][:10])]
    if e["cpu"]["loadgen_core_pct"] > 85:
        lines.append("note: the load generator used most of a core; try --workers 2")
    if e["cpu"]["other_core_pct"] > 25:
        lines.append(f"note: other work used {e['cpu']['other_core_pct']:.0f}% of a core during the window;"
                     " the figures are lower than on an idle machine")
    lines.append("")
    return "\n".join(lines)


def report(args: argparse.Namespace, results: dict[str, Any], text: str) -> dict[str, Any]:
    """Prints a benchmark's summary and writes its figures to ``--json`` when asked."""
    print(text, flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"results written to {args.json}", file=sys.stderr, flush=True)
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    results = run(args)
    return report(args, results, summary(results))


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
