"""Diagnostics sweep benchmark: how long the fleet sweep takes for 100,000 and 1,000,000
devices, from the latest-position table of a real PostgreSQL.

    .venv/bin/python -m bench.sweep [--sizes 100000,1000000] [--repeat 3]

Reports, per fleet size: the sweep (query + vectorised classification), its two parts, and
for reference in the same run the same classification written as a per-device Python loop.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from avl.db.migrate import migrate
from avl.embedded import LocalPostgres, free_port
from diagnostics.sweep import ACTIVE_WINDOW_S, sweep

FILL_SQL = """
INSERT INTO accounts (id, name) VALUES (1, 'Bench fleet') ON CONFLICT DO NOTHING;
INSERT INTO devices (id, identifier, protocol, account_id, report_interval_s)
SELECT g, lpad(g::text, 15, '0'), 'teltonika', 1, 30 FROM generate_series(%(first)s, %(last)s) g;
INSERT INTO latest_positions (device_id, fix_time, received_at, last_received_at, valid, latitude, longitude, ignition,
                              speed_kmh)
SELECT g, now() - make_interval(secs => (g %% 600)), now(), now() - make_interval(secs => (g %% 600)), true,
       10.4 + (g %% 1000) * 1e-4, -66.9 + (g %% 997) * 1e-4, g %% 3 <> 0, CASE WHEN g %% 3 <> 0 THEN 40 ELSE 0 END
FROM generate_series(%(first)s, %(last)s) g;
INSERT INTO device_cadence (device_id, moving_interval_s, parked_interval_s, moving_samples, parked_samples)
SELECT g, 20, 240, 50, 50 FROM generate_series(%(first)s, %(last)s) g WHERE g %% 7 = 0;
"""
# What the naive loop reads: the same inputs as the sweep's COPY, row by row.
NAIVE_SQL = """
SELECT d.id, d.report_interval_s, d.parked_interval_s, c.moving_interval_s, c.moving_samples, c.parked_interval_s,
       c.parked_samples, l.ignition, l.speed_kmh, coalesce(extract(epoch FROM l.last_received_at)::float8, 'NaN'::float8),
       a.status = 'active' AND d.line_status = 'active'
FROM devices d JOIN accounts a ON a.id = d.account_id LEFT JOIN latest_positions l ON l.device_id = d.id
LEFT JOIN device_cadence c ON c.device_id = d.id
"""
PARKED_DEFAULT_S = 600.0


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


async def measure(url: str, repeat: int) -> dict[str, float]:
    now = time.time()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        runs = [await sweep(conn, silent_factor=3.0, storm_share=0.9, storm_min=10**9, now=now,
                            parked_interval_s=PARKED_DEFAULT_S) for _ in range(repeat)]
        cur = await conn.execute(NAIVE_SQL)
        rows = await cur.fetchall()
    started = time.perf_counter()
    silent, _ = naive(rows, now, 3.0)
    loop_s = time.perf_counter() - started
    best = min(runs, key=lambda r: r.seconds)
    assert len(best.silent) == len(silent), "vectorised and naive sweeps disagree"
    return {"devices": best.devices, "silent": len(best.silent),
            "sweep_s": statistics.median(r.seconds for r in runs), "fetch_s": best.figures["fetch_s"],
            "classify_s": best.figures["classify_s"], "python_loop_classify_s": loop_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    workdir = Path(tempfile.mkdtemp(prefix="avl-bench-sweep-"))
    os.chmod(workdir, 0o755)
    pg = LocalPostgres(workdir, free_port(), durable=False)
    url = pg.start()
    results = []
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            migrate(conn)
            have = 0
            for size in sizes:
                for statement in FILL_SQL.strip().split(";\n"):
                    conn.execute(statement, {"first": have + 1, "last": size})
                for table in ("devices", "latest_positions", "accounts", "device_cadence"):
                    conn.execute(f"VACUUM ANALYZE {table}")
                have = size
                results.append(asyncio.run(measure(url, args.repeat)))
    finally:
        pg.stop("immediate")
    print(f"{'devices':>10} {'silent':>8} {'sweep s':>9} {'fetch s':>9} {'classify s':>11} {'loop classify s':>16}"
          f" {'vectorised speed-up':>20}")
    for r in results:
        print(f"{r['devices']:>10,} {r['silent']:>8,} {r['sweep_s']:>9.3f} {r['fetch_s']:>9.3f} {r['classify_s']:>11.4f}"
              f" {r['python_loop_classify_s']:>16.4f} {r['python_loop_classify_s'] / r['classify_s']:>19.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
