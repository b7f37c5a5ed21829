"""Diagnostics sweep benchmark: how long the fleet sweep takes for 100,000 and 1,000,000
devices, from the tables of a real PostgreSQL.

    .venv/bin/python -m bench.sweep [--sizes 100000,1000000] [--repeat 3] [--json out.json]

Reports, per fleet size: the worker's first sweep (a new ``Sweeper``: every device's profile and
every latest position read), then ``--repeat`` later sweeps of the same sweeper, each after a
sweep interval's worth of changes (1% of the fleet reports, 0.1% learn a cadence, 100 new
devices, a 0.1% account suspended or reactivated): each must find what a full sweep of that
moment finds. For reference in the same run, the same classification written as a per-device
Python loop over the same rows (it must find the same silent devices), and the sweep as it was before
the ``Sweeper`` (every sweep one binary COPY of the whole fleet joined with its latest positions, then
the same classification) as the baseline: it must find what the ``Sweeper`` finds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from avl.db.migrate import migrate
from avl.embedded import LocalPostgres, free_port
from diagnostics.steps.reporting import CADENCE_MIN_SAMPLES
from diagnostics.sweep import ACTIVE_WINDOW_S, Sweeper, SweepResult, classify, sweep

# Device g reports every 30 s; g % 3 <> 0 drives (ignition on), the rest is parked; one in 7 has a learned
# cadence; one in 1,000 belongs to a second account (suspended and reactivated during the run). Latest
# positions carry attributes the size a Teltonika report leaves, so the table is as wide as in service.
FILL_SQL = """
INSERT INTO accounts (id, name) VALUES (1, 'Bench fleet'), (2, 'Bench small fleet') ON CONFLICT DO NOTHING;
INSERT INTO devices (id, identifier, protocol, account_id, report_interval_s)
SELECT g, lpad(g::text, 15, '0'), 'teltonika', CASE WHEN g %% 1000 = 999 THEN 2 ELSE 1 END, 30
FROM generate_series(%(first)s::int8, %(last)s::int8) g;
INSERT INTO latest_positions (device_id, fix_time, received_at, last_received_at, valid, latitude, longitude, ignition,
                              speed_kmh, satellites, hdop, power_mv, attributes)
SELECT g, now() - make_interval(secs => (g %% 600)), now(), now() - make_interval(secs => (g %% 600)), true,
       10.4 + (g %% 1000) * 1e-4, -66.9 + (g %% 997) * 1e-4, g %% 3 <> 0, CASE WHEN g %% 3 <> 0 THEN 40 ELSE 0 END,
       9, 0.9, 12800, jsonb_build_object('io', jsonb_build_object('1', 1, '21', 4, '66', 12800, '67', 4100, '69', 1,
                                                                  '200', 0, '239', 1, '240', 1, '241', 73401),
                                         'event', 0, 'odometer_m', g * 10)
FROM generate_series(%(first)s::int8, %(last)s::int8) g;
INSERT INTO device_cadence (device_id, moving_interval_s, parked_interval_s, moving_samples, parked_samples)
SELECT g, 20, 240, 50, 50 FROM generate_series(%(first)s::int8, %(last)s::int8) g WHERE g %% 7 = 0;
"""
# What happens between two sweeps (round r of a fleet of n).
CHANGES_SQL = """
UPDATE latest_positions SET received_at = now(), last_received_at = now(), fix_time = now(),
       ignition = NOT coalesce(ignition, false) WHERE device_id %% 100 = %(r)s;
INSERT INTO device_cadence (device_id, moving_interval_s, parked_interval_s, moving_samples, parked_samples)
SELECT g, 25 + %(r)s::int, 300, 10, 10 FROM generate_series(1, %(n)s::int8) g WHERE g %% 1000 = %(r)s::int
ON CONFLICT (device_id) DO UPDATE SET moving_interval_s = EXCLUDED.moving_interval_s,
       moving_samples = EXCLUDED.moving_samples, learned_at = now();
INSERT INTO devices (identifier, protocol, account_id, report_interval_s)
SELECT 'new-' || %(r)s::text || '-' || g, 'teltonika', 1, 60 FROM generate_series(1, 100) g;
INSERT INTO latest_positions (device_id, fix_time, received_at, last_received_at, valid, latitude, longitude)
SELECT id, now(), now(), now() - interval '10 minutes', true, 10.5, -66.9 FROM devices
WHERE identifier LIKE 'new-' || %(r)s::text || '-%%';
UPDATE accounts SET status = CASE status WHEN 'active' THEN 'suspended' ELSE 'active' END WHERE id = 2;
"""
# What the naive loop reads: the same inputs as the sweep, row by row.
NAIVE_SQL = """
SELECT d.id, d.report_interval_s, d.parked_interval_s, c.moving_interval_s, c.moving_samples, c.parked_interval_s,
       c.parked_samples, l.ignition, l.speed_kmh, coalesce(extract(epoch FROM l.last_received_at)::float8, 'NaN'::float8),
       a.status = 'active' AND d.line_status = 'active'
FROM devices d JOIN accounts a ON a.id = d.account_id LEFT JOIN latest_positions l ON l.device_id = d.id
LEFT JOIN device_cadence c ON c.device_id = d.id
"""
PARKED_DEFAULT_S = 600.0
FACTOR = 3.0

# The baseline: the sweep before the Sweeper kept anything (diagnostics/sweep.py until issue 19), every
# device's row read on every sweep with one binary COPY parsed straight into numpy arrays.
WHOLE_READ_COPY = """
COPY (SELECT id, CASE WHEN parked THEN greatest(parked_s, moving_s) ELSE moving_s END, last, ok FROM (
      SELECT d.id::int8 AS id,
             CASE WHEN c.moving_samples >= {min} THEN c.moving_interval_s ELSE d.report_interval_s END::float8 AS moving_s,
             coalesce(d.parked_interval_s, CASE WHEN c.parked_samples >= {min} THEN c.parked_interval_s END,
                      %s)::float8 AS parked_s,
             (l.ignition IS FALSE OR (l.ignition IS NULL AND NOT coalesce(l.speed_kmh > 3, false))) AS parked,
             coalesce(extract(epoch FROM l.last_received_at)::float8, 'NaN'::float8) AS last,
             coalesce(a.status = 'active' AND d.line_status = 'active', false) AS ok
      FROM devices d
      JOIN accounts a ON a.id = d.account_id
      LEFT JOIN latest_positions l ON l.device_id = d.id
      LEFT JOIN device_cadence c ON c.device_id = d.id) f) TO STDOUT (FORMAT BINARY)
""".replace("{min}", str(CADENCE_MIN_SAMPLES))
_COPY_ROW = np.dtype([("fields", ">i2"), ("len_id", ">i4"), ("id", ">i8"), ("len_interval", ">i4"),
                      ("interval", ">f8"), ("len_last", ">i4"), ("last", ">f8"), ("len_ok", ">i4"), ("ok", "u1")])
_COPY_HEADER = 19  # PGCOPY signature (11), flags (4), header extension length (4)


async def whole_read_sweep(conn: psycopg.AsyncConnection, now: float) -> SweepResult:
    """The baseline: the whole fleet read and classified, nothing kept."""
    started = time.perf_counter()
    chunks = []
    async with conn.cursor().copy(WHOLE_READ_COPY, (PARKED_DEFAULT_S,)) as copy:
        async for chunk in copy:
            chunks.append(bytes(chunk))
    data = b"".join(chunks)
    rows = np.frombuffer(memoryview(data)[_COPY_HEADER:len(data) - 2], dtype=_COPY_ROW)  # trailer: int16 -1
    ids = rows["id"].astype(np.int64)
    silent, n_active, newly, storm = classify(ids, rows["interval"].astype(np.float64),
                                              rows["last"].astype(np.float64), rows["ok"].astype(bool), now=now,
                                              silent_factor=FACTOR, storm_share=0.9, storm_min=10**9)
    return SweepResult(devices=len(ids), active=n_active, silent=silent, newly_silent=newly, storm=storm,
                       seconds=time.perf_counter() - started)


def naive(rows: list[tuple[Any, ...]], now: float, factor: float) -> tuple[list[int], int]:
    silent, active = [], 0
    for device_id, declared, declared_parked, moving_s, n_moving, parked_s, n_parked, ignition, speed, last, ok in rows:
        if not ok or last != last:  # NaN: never reported
            continue
        moving = moving_s if n_moving and n_moving >= 6 else declared
        parked = declared_parked or (parked_s if n_parked and n_parked >= 6 else PARKED_DEFAULT_S)
        is_parked = ignition is False or (ignition is None and not (speed is not None and speed > 3))
        interval = max(parked, moving) if is_parked else moving
        age = now - last
        if age <= ACTIVE_WINDOW_S:
            active += 1
        if age > factor * interval:
            silent.append(device_id)
    return silent, active


def _same(a: SweepResult, b: SweepResult) -> bool:
    return (a.devices, a.active, a.newly_silent) == (b.devices, b.active, b.newly_silent) and np.array_equal(
        np.sort(a.silent), np.sort(b.silent))


async def measure(url: str, size: int, repeat: int) -> dict[str, Any]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        sweeper = Sweeper()
        kw: dict[str, Any] = {"silent_factor": FACTOR, "storm_share": 0.9, "storm_min": 10**9,
                              "parked_interval_s": PARKED_DEFAULT_S}
        now = time.time()
        first = await sweeper.sweep(conn, now=now, **kw)
        assert first.full and _same(first, await sweep(conn, now=now, **kw)), "the first sweep is not a full one"
        later: list[SweepResult] = []
        baseline = [await whole_read_sweep(conn, now)]
        assert _same(first, baseline[0]), "the sweeper and the whole-read baseline disagree"
        for r in range(repeat):
            for statement in CHANGES_SQL.strip().split(";\n"):
                await conn.execute(statement, {"r": r, "n": size})
            now = time.time()
            result = await sweeper.sweep(conn, now=now, **kw)
            assert not result.full, "a later sweep read every device again"
            assert _same(result, await sweep(conn, now=now, **kw)), "incremental and full sweeps disagree"
            old = await whole_read_sweep(conn, now)
            assert _same(result, old), "the sweeper and the whole-read baseline disagree"
            later.append(result)
            baseline.append(old)
        cur = await conn.execute(NAIVE_SQL)
        rows = await cur.fetchall()
    started = time.perf_counter()
    silent, active = naive(rows, now, FACTOR)
    loop_s = time.perf_counter() - started
    last = later[-1] if later else first
    assert sorted(silent) == sorted(last.silent.tolist()) and active == last.active, \
        "vectorised and naive sweeps disagree"
    best = min(later, key=lambda r: r.seconds) if later else first
    return {"devices": last.devices, "silent": len(last.silent),
            "first_sweep_s": first.seconds, "first_fetch_s": first.figures["fetch_s"],
            "sweep_s": statistics.median(r.seconds for r in later) if later else first.seconds,
            "fetch_s": best.figures["fetch_s"], "classify_s": best.figures["classify_s"],
            "changed_devices": statistics.median(r.figures["changed_devices"] for r in later) if later else 0,
            "whole_read_sweep_s": statistics.median(r.seconds for r in baseline),
            "python_loop_classify_s": loop_s}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    workdir = Path(tempfile.mkdtemp(prefix="avl-bench-sweep-"))
    os.chmod(workdir, 0o755)
    pg = LocalPostgres(workdir, free_port(), durable=False)
    url = pg.start()
    results = []
    load = os.getloadavg()[0]
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            migrate(conn)
            have = 0
            for size in sizes:
                for statement in FILL_SQL.strip().split(";\n"):
                    conn.execute(statement, {"first": have + 1, "last": size})
                conn.execute("SELECT setval('devices_id_seq', %s)", (size,))
                # Setting up logs every device as new; a worker that sweeps finds a short log instead.
                conn.execute("DELETE FROM sweep_changes")
                for table in ("devices", "latest_positions", "accounts", "device_cadence", "sweep_changes"):
                    conn.execute(f"VACUUM ANALYZE {table}")
                have = size
                results.append(asyncio.run(measure(url, size, args.repeat)))
                # The next size continues from the original rows: drop what this one's rounds added.
                conn.execute("DELETE FROM latest_positions WHERE device_id > %s", (size,))
                conn.execute("DELETE FROM devices WHERE id > %s", (size,))
    finally:
        pg.stop("immediate")
        shutil.rmtree(workdir, ignore_errors=True)  # a million devices' database is gigabytes
    print(f"load average before the run: {load:.2f} (figures taken on a busy machine are pessimistic)")
    print(f"{'devices':>10} {'silent':>8} {'whole-read s':>13} {'first sweep s':>14} {'sweep s':>9} {'fetch s':>9}"
          f" {'classify s':>11} {'re-read':>8} {'loop classify s':>16} {'vectorised speed-up':>20}")
    for r in results:
        print(f"{r['devices']:>10,} {r['silent']:>8,} {r['whole_read_sweep_s']:>13.3f} {r['first_sweep_s']:>14.3f}"
              f" {r['sweep_s']:>9.3f}"
              f" {r['fetch_s']:>9.3f} {r['classify_s']:>11.4f} {int(r['changed_devices']):>8,}"
              f" {r['python_loop_classify_s']:>16.4f} {r['python_loop_classify_s'] / r['classify_s']:>19.1f}x")
    if args.json:
        args.json.write_text(json.dumps({"load_average": load, "sizes": results}, indent=2))
    return results


if __name__ == "__main__":
    main()
