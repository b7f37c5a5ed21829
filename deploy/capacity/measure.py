"""Measures what the capacity plan (deploy/README.md) needs besides the throughput benchmarks:

- memory per open device connection in an `avl ingest` process (VmRSS) and in the kernel
  (slab, /proc/meminfo), with N connections logged in and idle;
- bytes per stored position in PostgreSQL (heap, indexes, TOAST of the positions partitions,
  rows written through the real ingest path: decode, pipeline, writer), and WAL bytes per
  position (what a streaming replica receives).

    .venv/bin/python deploy/capacity/measure.py [--connections 10000] [--reports 20] [--json out.json]

Needs nothing running: a throwaway PostgreSQL cluster (durable settings) and the ingest service
as `avl ingest` in its own process, as bench/ingest.py does; half the devices speak Teltonika,
half GT06, each one report per frame. Everything is removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from avl.db import policies  # noqa: E402
from avl.db.migrate import migrate  # noqa: E402
from avl.embedded import LocalPostgres, free_port, wait_for_port  # noqa: E402
from avl.records import Position  # noqa: E402
from ingest.protocols import gt06, teltonika  # noqa: E402

ACK_SIZE = {"gt06": (10, 10), "teltonika": (1, 4)}  # (login ACK, report ACK) in bytes


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def slab_kib() -> int:
    """Kernel slab memory (socket structures, inodes, files), from /proc/meminfo."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Slab:"):
            return int(line.split()[1])
    return 0


def identifiers(n: int) -> list[tuple[str, str]]:
    return [("teltonika" if i % 2 == 0 else "gt06", f"35{i:013d}") for i in range(n)]


def position(device: str, k: int, start: datetime) -> Position:
    return Position(device=device, fix_time=start + timedelta(seconds=30 * k), valid=True,
                    latitude=10.48 + k * 0.0004, longitude=-66.90 + k * 0.0003, speed_kmh=36.0 + k % 5,
                    course=float(k * 7 % 360), altitude_m=900.0, satellites=9, ignition=True, power_mv=12600)


class Wave:
    """Counts devices that have logged in and reported (they then stay connected, idle)."""

    def __init__(self) -> None:
        self.ready = 0
        self.changed = asyncio.Event()

    def done(self) -> None:
        self.ready += 1
        self.changed.set()


async def device(protocol: str, ident: str, port: int, reports: int, start: datetime, hold: asyncio.Event,
                 wave: Wave) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    login_ack, report_ack = ACK_SIZE[protocol]
    login = teltonika.encode_login(ident) if protocol == "teltonika" else gt06.encode_login(ident)
    assert login is not None
    writer.write(login)
    await writer.drain()
    await asyncio.wait_for(reader.readexactly(login_ack), 60)
    for k in range(reports):
        p = position(ident, k, start)
        frame = teltonika.encode_batch([p]) if protocol == "teltonika" else gt06.encode_position(p, k + 1)
        writer.write(frame)
        await writer.drain()
        await asyncio.wait_for(reader.readexactly(report_ack), 60)
    wave.done()
    await hold.wait()
    writer.close()
    return reports


async def load(devices: list[tuple[str, str]], ports: dict[str, int], reports: int, pid: int) -> dict[str, Any]:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=30 * (reports + 1))
    hold = asyncio.Event()
    wave = Wave()
    before_rss, before_slab = rss_kib(pid), slab_kib()
    tasks: list[asyncio.Task[int]] = []
    t0 = time.monotonic()
    # Devices connect in waves of 500; each wave logs in and reports, then stays connected, idle.
    for i in range(0, len(devices), 500):
        tasks += [asyncio.ensure_future(device(p, d, ports[p], reports, start, hold, wave))
                  for p, d in devices[i:i + 500]]
        while wave.ready < len(tasks):
            failed = [t for t in tasks if t.done() and t.exception() is not None]
            if failed:
                raise RuntimeError(f"a device failed: {failed[0].exception()!r}")
            wave.changed.clear()
            try:
                await asyncio.wait_for(wave.changed.wait(), 1)
            except TimeoutError:
                pass
            if time.monotonic() - t0 > 900:
                raise RuntimeError("devices did not report within 900 s")
    load_s = time.monotonic() - t0
    await asyncio.sleep(3)
    after_rss, after_slab = rss_kib(pid), slab_kib()
    hold.set()
    sent = sum(await asyncio.gather(*tasks))
    return {"connections": len(devices), "reports_acked": sent, "load_s": round(load_s, 1),
            "ingest_rss_kib_before": before_rss, "ingest_rss_kib_connected": after_rss,
            "ingest_rss_kib_per_connection": round((after_rss - before_rss) / len(devices), 2),
            # Both ends of each connection are on this machine: count half for the server's socket.
            # Machine-wide, so other work on the machine blurs it.
            "kernel_slab_kib_per_server_socket": round((after_slab - before_slab) / (2 * len(devices)), 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--reports", type=int, default=20, help="reports per device, one per frame")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.connections + 200 > hard:
        print(f"--connections {args.connections}: the file descriptor limit is {hard}", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="avl-capacity-"))
    os.chmod(tmp, 0o755)
    pg = LocalPostgres(tmp / "pg", free_port(), durable=True, database="postgres")
    ingest: subprocess.Popen[bytes] | None = None
    result: dict[str, Any] = {"measured_at": datetime.now(UTC).isoformat(timespec="seconds"), "cpus": os.cpu_count()}
    try:
        url = pg.start()
        devices = identifiers(args.connections)
        with psycopg.connect(url) as conn:
            migrate(conn)
            policies.apply(conn, retention_days=400, compress_after_days=7, partitions_ahead_days=2)
            conn.execute("INSERT INTO accounts (id, name) VALUES (1, 'Capacity') ON CONFLICT DO NOTHING")
            with conn.cursor().copy("COPY devices (identifier, protocol, account_id, report_interval_s) FROM STDIN") as cp:
                for protocol, ident in devices:
                    cp.write_row((ident, protocol, 1, 30))
            conn.commit()
            wal_before = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
        ports = {"teltonika": free_port(), "gt06": free_port()}
        env = {k: v for k, v in os.environ.items() if not k.startswith("AVL_")}
        env.update({"AVL_DATABASE_URL": url, "AVL_DATA_DIR": str(tmp / "ingest"), "AVL_PROTOCOLS": "teltonika,gt06",
                    "AVL_PORTS": json.dumps(ports), "AVL_UDP": "false", "AVL_METRICS_PORT": "0",
                    "AVL_INGEST_HOST": "127.0.0.1", "AVL_MAX_CONNECTIONS_PER_SOURCE": str(args.connections + 10),
                    "AVL_LOG_LEVEL": "WARNING"})
        log = open(tmp / "ingest.log", "wb")  # noqa: SIM115 - the child's log
        ingest = subprocess.Popen([str(Path(sys.executable).parent / "avl"), "ingest"], env=env, stdout=log,
                                  stderr=log, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE,
                                                                                     (hard, hard)))
        if not (wait_for_port(ports["teltonika"], 60, ingest) and wait_for_port(ports["gt06"], 10, ingest)):
            raise RuntimeError((tmp / "ingest.log").read_text()[-2000:])
        time.sleep(1)
        result["connections"] = asyncio.run(load(devices, ports, args.reports, ingest.pid))
        ingest.send_signal(signal.SIGTERM)
        ingest.wait(60)
        with psycopg.connect(url, autocommit=True) as conn:
            rows = conn.execute("SELECT count(*) FROM positions").fetchone()[0]  # type: ignore[index]
            wal = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (wal_before,)).fetchone()[0]  # type: ignore[index]
            conn.execute("VACUUM ANALYZE positions")
            sizes = conn.execute(
                "SELECT sum(pg_relation_size(relid)), sum(pg_indexes_size(relid)),"
                " sum(pg_total_relation_size(relid)) FROM pg_partition_tree('positions') WHERE isleaf").fetchone()
            assert sizes is not None
            latest = conn.execute("SELECT pg_total_relation_size('latest_positions'), count(*) FROM latest_positions"
                                  ).fetchone()
            assert latest is not None
        heap, indexes, total = (int(x) for x in sizes)
        result["storage"] = {
            "positions_rows": rows, "heap_bytes_per_row": round(heap / rows, 1),
            "index_bytes_per_row": round(indexes / rows, 1), "total_bytes_per_row": round(total / rows, 1),
            "wal_bytes_per_row": round(float(wal) / rows, 1),
            "latest_positions_bytes_per_device": round(int(latest[0]) / max(1, int(latest[1])), 1)}
    finally:
        if ingest is not None and ingest.poll() is None:
            ingest.kill()
        pg.stop("fast")
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
