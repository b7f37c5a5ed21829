"""``python -m bench.api``: fleet API latency over real HTTP against a real server process.

One run, on a throwaway PostgreSQL cluster:

1. data made by SQL (generate_series): one account with ``--vehicles`` vehicles and
   terminals, each with a latest position (most online, some without a fix, some silent),
   and 24 hours of 30-second reports (2,880 points) for ``--history-vehicles`` of them;
2. the API runs as ``avl api`` in its own process (configured through the environment): first
   with ``AVL_API_FLEET_SNAPSHOT=false`` for the baseline of the fleet list (built by PostgreSQL on
   each request, as before the snapshot), then as configured by default (the list from the
   in-process snapshot: full form, compact form, a 304 revalidation, and both forms while
   ``--live-rate`` vehicles a second report through the writer's path: UPDATE + NOTIFY);
3. one client with a keep-alive connection calls each endpoint ``--requests`` times in a row
   (after ``--warmup`` calls) and reports p50 / p95 / p99 / max latency and the body size.

The targets (2-core machine): the fleet's latest positions p95 < 50 ms, one vehicle's
24-hour history p95 < 100 ms. They are reported, never asserted. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg

from avl.admin import add_account, create_token
from avl.db.migrate import migrate
from avl.embedded import LocalPostgres, free_port, wait_for_port

ACCOUNT = "Bench Fleet"
_T0 = time.monotonic()

FILL_SQL = [
    # Vehicles and their terminals.
    "INSERT INTO vehicles (account_id, plate, kind) SELECT %(account)s, 'BN' || lpad(g::text, 6, '0'), 'van'"
    " FROM generate_series(1, %(vehicles)s) g",
    "INSERT INTO devices (identifier, protocol, account_id, vehicle_id, report_interval_s, msisdn, installed_at)"
    " SELECT '35630704' || lpad(v.id::text, 7, '0'), 'teltonika', v.account_id, v.id, 30,"
    " '58414' || lpad(v.id::text, 7, '0'), current_date - 90 FROM vehicles v WHERE v.account_id = %(account)s",
    # Latest positions: 90% online, 5% reporting without a fix, 5% silent for an hour.
    "INSERT INTO latest_positions (device_id, fix_time, received_at, last_received_at, valid, latitude, longitude,"
    " speed_kmh, course, altitude_m, satellites, hdop, ignition, power_mv, battery_mv, odometer_m)"
    " SELECT d.id, now() - make_interval(secs => CASE WHEN d.id %% 20 = 0 THEN 3600 ELSE d.id %% 30 END),"
    " now() - make_interval(secs => CASE WHEN d.id %% 20 = 0 THEN 3600 ELSE d.id %% 30 END),"
    " now() - make_interval(secs => CASE WHEN d.id %% 20 = 0 THEN 3600 ELSE d.id %% 30 END),"
    " d.id %% 20 <> 1, 10.40 + (d.id %% 1000) * 1e-4, -66.95 + (d.id %% 997) * 1.5e-4, (d.id %% 90)::real,"
    " (d.id * 7 %% 360)::real, 900, 9, 0.9, d.id %% 7 <> 0, 12600, 4100, d.id * 1000"
    " FROM devices d WHERE d.account_id = %(account)s",
    # 24 hours at 30 s for the first history vehicles: a loop through Caracas with stops.
    "SELECT avl_ensure_position_partition(day::date) FROM generate_series((now() - interval '1 day')::date,"
    " now()::date, interval '1 day') day",
    "INSERT INTO positions (device_id, fix_time, received_at, valid, latitude, longitude, speed_kmh, course,"
    " altitude_m, satellites, hdop, ignition, power_mv, odometer_m, protocol)"
    " SELECT d.id, t, t + interval '2 seconds', true, 10.47 + 0.03 * sin(g / 240.0 + d.id),"
    " -66.88 + 0.05 * cos(g / 360.0 + d.id), CASE WHEN (g / 60) %% 4 = 3 THEN 0 ELSE 25 + 20 * sin(g / 40.0) END,"
    " (g * 7 %% 360)::real, 900, 9, 0.9, (g / 60) %% 8 <> 7, 12600, g * 200, 'teltonika'"
    " FROM (SELECT id FROM devices WHERE account_id = %(account)s ORDER BY id LIMIT %(history)s) d,"
    " generate_series(1, %(points)s) g, LATERAL (SELECT date_trunc('second', now())"
    " - make_interval(secs => 30 * (%(points)s - g)) AS t) x",
]


# The latest positions' ages as the fill made them, again (run before each fleet-list phase, so every
# phase sees the same mix of statuses however long the ones before it took).
FRESHEN_SQL = (
    "UPDATE latest_positions l SET fix_time = t, received_at = t, last_received_at = t FROM devices d,"
    " LATERAL (SELECT now() - make_interval(secs => CASE WHEN d.id %% 20 = 0 THEN 3600 ELSE d.id %% 30 END) AS t) x"
    " WHERE d.id = l.device_id AND d.account_id = %(account)s"
)
# What the ingest writer does for the devices of a committed batch: their latest position moves on,
# then the commit's NOTIFY names them.
REPORT_SQL = (
    "UPDATE latest_positions SET fix_time = now(), received_at = now(), last_received_at = now(),"
    " latitude = latitude + 1e-5 WHERE device_id = ANY(%s)"
)


def log(message: str) -> None:
    print(f"[bench {time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


@dataclass
class Figures:
    name: str
    path: str
    requests: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    bytes: int
    items: int
    target_p95_ms: float | None

    @property
    def verdict(self) -> str:
        if self.target_p95_ms is None:
            return ""
        return "within target" if self.p95_ms < self.target_p95_ms else "OVER target"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def fill(url: str, vehicles: int, history: int, points: int) -> tuple[str, int, int]:
    """Creates the fleet; returns a client token, the first vehicle's device id and the account."""
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
        account = int(add_account(conn, ACCOUNT)["id"])
        params = {"account": account, "vehicles": vehicles, "history": history, "points": points}
        for sql in FILL_SQL:
            conn.execute(sql, params)
        for table in ("vehicles", "devices", "latest_positions", "positions", "accounts"):
            conn.execute(f"ANALYZE {table}")
        token = create_token(conn, "client", name="bench", account=account)[1]
        row = conn.execute("SELECT min(id) FROM devices WHERE account_id = %s", (account,)).fetchone()
        assert row is not None
        counts = conn.execute("SELECT (SELECT count(*) FROM devices), (SELECT count(*) FROM positions)").fetchone()
        assert counts is not None
        log(f"fleet: {counts[0]:,} vehicles, {counts[1]:,} stored positions")
        return token, int(row[0]), account


def avl_command() -> list[str]:
    script = Path(sys.executable).parent / "avl"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; sys.argv[0] = 'avl'; from avl.cli import main; main()"]


def start_api(tmp: Path, url: str, port: int, **settings: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVL_")}
    env.update({"AVL_DATABASE_URL": url, "AVL_DATA_DIR": str(tmp / "api"), "AVL_API_HOST": "127.0.0.1",
                "AVL_API_PORT": str(port), "AVL_LOG_LEVEL": "WARNING", **settings})
    with open(tmp / "api.log", "ab") as log_file:
        proc = subprocess.Popen([*avl_command(), "api"], env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True)
    if not wait_for_port(port, 60, proc):
        stop(proc)
        raise RuntimeError(f"`avl api` did not listen on {port}:\n{(tmp / 'api.log').read_text(errors='replace')}")
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure(client: httpx.Client, name: str, path: str, params: dict[str, Any], requests: int, warmup: int,
            target: float | None, count: Any, headers: dict[str, str] | None = None, expect: int = 200) -> Figures:
    def get() -> httpx.Response:
        r = client.get(path, params=params, headers=headers)
        if r.status_code != expect:
            raise RuntimeError(f"{name}: {path} answered {r.status_code}, not {expect}: {r.text[:200]}")
        return r

    for _ in range(warmup):
        get()
    times, size, items = [], 0, 0
    for _ in range(requests):
        started = time.perf_counter()
        r = get()
        body = r.content
        times.append((time.perf_counter() - started) * 1000)
        size = len(body)
    items = count(r)
    return Figures(name, path, requests, percentile(times, 0.5), percentile(times, 0.95), percentile(times, 0.99),
                   max(times), statistics.fmean(times), size, items, target)


def busy_note() -> str:
    """Other jobs on the machine slow every figure down: say so."""
    one, five, _ = os.getloadavg()
    cpus = os.cpu_count() or 1
    note = f"load average {one:.1f} (1 min) / {five:.1f} (5 min) on {cpus} CPUs"
    return note + ("; OTHER JOBS WERE USING THE MACHINE: figures are pessimistic" if five > 0.8 * cpus else "")


class Reports:
    """Vehicles of the fleet reporting as the ingest writer stores them, ``rate`` a second (ten
    commits a second, each moving its vehicles' latest positions and naming them in a NOTIFY)."""

    def __init__(self, url: str, devices: list[int], rate: float) -> None:
        self.url, self.devices, self.rate = url, devices, rate
        self.reported = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-reports", daemon=True)

    def __enter__(self) -> Reports:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        per_tick, at, tick = max(1, round(self.rate / 10)), 0, time.monotonic()
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._stop.is_set():
                ids = [self.devices[(at + k) % len(self.devices)] for k in range(per_tick)]
                at += per_tick
                with conn.transaction():
                    conn.execute(REPORT_SQL, (ids,))
                    conn.execute("SELECT pg_notify('avl_positions', %s)", (json.dumps({"devices": ids}),))
                self.reported += len(ids)
                tick += 0.1
                self._stop.wait(max(0.0, tick - time.monotonic()))


class Api:
    """``avl api`` in its own process, and one keep-alive client of the bench account."""

    def __init__(self, tmp: Path, url: str, token: str, **settings: str) -> None:
        self.port = free_port()
        self.proc = start_api(tmp, url, self.port, **settings)
        log(f"`avl api` (pid {self.proc.pid}) on port {self.port}" + "".join(f", {k}={v}" for k, v in settings.items()))
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", headers={"Authorization": f"Bearer {token}"},
                                   timeout=60)

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()
        stop(self.proc)


def run(args: argparse.Namespace, url: str, tmp: Path) -> list[Figures]:
    token, vehicle, account = fill(url, args.vehicles, args.history_vehicles, args.points)
    with psycopg.connect(url, autocommit=True) as conn:
        devices = [i for (i,) in conn.execute("SELECT id FROM devices WHERE account_id = %s ORDER BY id", (account,))]

    def freshen() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(FRESHEN_SQL, {"account": account})

    results: list[Figures] = []

    def timed(api: Api, name: str, path: str, params: dict[str, Any], target: float | None, count: Any,
              **kw: Any) -> Figures:
        figures = measure(api.client, name, path, params, args.requests, args.warmup, target, count, **kw)
        log(f"{name}: p50 {figures.p50_ms:.1f} ms, p95 {figures.p95_ms:.1f} ms")
        results.append(figures)
        return figures

    full, compact = (lambda r: len(r.json())), (lambda r: len(r.json()["vehicles"]))
    # Before: the list built by PostgreSQL on each request (the SQL path, still the one-vehicle answer).
    freshen()
    with Api(tmp, url, token, AVL_API_FLEET_SNAPSHOT="false") as api:
        timed(api, "latest positions, SQL (before)", "/api/v1/vehicles", {}, 50.0, full)

    now = datetime.now(UTC)
    day = {"from": (now - timedelta(hours=24, minutes=1)).isoformat(), "to": (now + timedelta(minutes=1)).isoformat()}
    history = f"/api/v1/vehicles/{vehicle}/history"
    with Api(tmp, url, token) as api:
        freshen()
        timed(api, "latest positions, whole fleet", "/api/v1/vehicles", {}, 50.0, full)
        timed(api, "  compact form", "/api/v1/vehicles", {"form": "compact"}, 50.0, compact)
        etag = api.client.get("/api/v1/vehicles", params={"form": "compact"}).headers["etag"]
        timed(api, "  unchanged: If-None-Match, 304", "/api/v1/vehicles", {"form": "compact"}, None, lambda r: 0,
              headers={"If-None-Match": etag}, expect=304)
        freshen()
        with Reports(url, devices, args.live_rate) as reports:
            label = f"{args.live_rate:g} reports/s"
            timed(api, f"  while {label} arrive", "/api/v1/vehicles", {}, 50.0, full)
            timed(api, f"  compact, while {label} arrive", "/api/v1/vehicles", {"form": "compact"}, 50.0, compact)
        log(f"{reports.reported:,} reports written meanwhile")
        plan: list[tuple[str, str, dict[str, Any], float | None, Any]] = [
            ("one vehicle", f"/api/v1/vehicles/{vehicle}", {}, None, lambda r: 1),
            ("history 24 h, every report", history, {**day, "max_points": 5000}, 100.0, lambda r: r.json()["count"]),
            ("history 24 h, simplified 10 m", history, {**day, "simplify_m": 10}, None, lambda r: r.json()["count"]),
            ("trips and stops 24 h", f"/api/v1/vehicles/{vehicle}/trips", day, None, lambda r: len(r.json()["trips"])),
            ("export CSV 24 h", f"/api/v1/vehicles/{vehicle}/export", {**day, "format": "csv"}, None,
             lambda r: r.text.count("\n") - 1),
        ]
        for name, path, params, target, count in plan:
            timed(api, name, path, params, target, count)
    return results


def report(results: list[Figures], args: argparse.Namespace) -> None:
    print(f"\nfleet API latency: {args.vehicles:,} vehicles, {args.points:,}-point 24 h history, "
          f"{args.requests} sequential requests per endpoint over one keep-alive connection")
    print(f"{busy_note()}\n")
    print(f"{'endpoint':<36} {'items':>7} {'KiB':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}"
          f" {'target p95':>11}  verdict")
    for f in results:
        target = f"< {f.target_p95_ms:g} ms" if f.target_p95_ms else ""
        print(f"{f.name:<36} {f.items:>7,} {f.bytes / 1024:>8.0f} {f.p50_ms:>8.1f} {f.p95_ms:>8.1f} {f.p99_ms:>8.1f}"
              f" {f.max_ms:>8.1f} {target:>11}  {f.verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--vehicles", type=int, default=10_000)
    parser.add_argument("--history-vehicles", type=int, default=100,
                        help="vehicles given 24 h of reports (the first is the one measured)")
    parser.add_argument("--points", type=int, default=2880, help="reports per history vehicle (30 s apart)")
    parser.add_argument("--requests", type=int, default=200, help="measured requests per endpoint")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured requests first")
    parser.add_argument("--live-rate", type=float, default=333.0,
                        help="vehicles reporting a second during the 'while ... arrive' lines (10,000 at 30 s: 333)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="avl-bench-api-"))
    os.chmod(tmp, 0o755)  # the cluster runs as 'postgres' when run as root
    pg = LocalPostgres(tmp / "pg", free_port(), durable=False)
    url = pg.start()
    try:
        results = run(args, url, tmp)
    finally:
        pg.stop("immediate")
        shutil.rmtree(tmp, ignore_errors=True)
    report(results, args)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "results": [{**asdict(f), "verdict": f.verdict} for f in results]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
