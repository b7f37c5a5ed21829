"""The fleet sweep: silent devices found over whole-fleet arrays; a mass silence is one
platform incident; only one worker sweeps at a time."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import psycopg

from diagnostics.service import Worker
from diagnostics.sweep import classify
from tests.diagnostics.harness import provision, reports, send_gl200, tickets
from tests.ingest.harness import running_ingest, settings_for


def test_classify_finds_silent_devices_and_ignores_never_reported_and_suspended_ones() -> None:
    now = 1_000_000.0
    ids = np.arange(1, 7)
    interval = np.array([30, 30, 60, 30, 30, 30], dtype=float)
    last = np.array([now - 10, now - 100, now - 100, np.nan, now - 500, now - 90_000])
    ok = np.array([True, True, True, True, False, True])
    silent, active, newly, storm = classify(ids, interval, last, ok, now=now, silent_factor=3, storm_share=0.5,
                                            storm_min=2)
    # 2: 100 s > 3 x 30 s; 3: 100 s < 3 x 60 s; 4 never reported; 5 suspended; 6 silent for a day
    assert silent.tolist() == [2, 6]
    assert (active, newly, storm) == (3, 1, False)


def test_a_mass_silence_is_a_storm() -> None:
    n = 1000
    now = 1e6
    last = np.full(n, now - 5.0)
    last[: n // 2] = now - 400.0
    silent, active, newly, storm = classify(np.arange(n), np.full(n, 30.0), last, np.ones(n, bool), now=now,
                                            silent_factor=3, storm_share=0.3, storm_min=20)
    assert (len(silent), active, newly, storm) == (500, 1000, 500, True)


async def test_many_devices_silent_together_open_one_platform_incident(db_url: str, tmp_path: Path) -> None:
    imeis = [f"86217001{i:07d}" for i in range(25)]
    provision(db_url, devices=[{"identifier": i, "protocol": "gl200", "interval": 1} for i in imeis])
    settings = settings_for(tmp_path, silent_after_intervals=2, storm_share=0.5, storm_min_devices=20)
    async with running_ingest(settings, db_url) as svc:
        await asyncio.gather(*(send_gl200(svc.tcp["gl200"].port, reports(i, 2, minutes_ago=0.05, step_s=1))
                               for i in imeis))
        await asyncio.sleep(2.5)  # every one of them goes quiet at once
        worker = Worker(settings, db_url)
        await worker.start()
        try:
            await worker.sweep_once()
            await worker.sweep_once()  # a second sweep adds to the same incident
        finally:
            await worker.close()
    (incident,) = tickets(db_url)
    assert incident["category"] == "platform_incident" and "25 of 25 active devices" in incident["title"]
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM diagnostic_runs").fetchone() == (0,)


async def test_only_one_worker_sweeps(db_url: str, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, sweep_interval_s=3600)
    workers = [Worker(settings, db_url), Worker(settings, db_url)]
    for w in workers:
        await w.start()
    tasks = [asyncio.create_task(w.run()) for w in workers]
    try:
        await asyncio.sleep(1.5)
        assert sorted(w.sweeping for w in workers) == [False, True]
        sweeper = next(i for i, w in enumerate(workers) if w.sweeping)
        tasks[sweeper].cancel()  # the sweeper dies: the other takes over
        await asyncio.gather(tasks[sweeper], return_exceptions=True)
        other = workers[1 - sweeper]
        for _ in range(50):
            if other.sweeping:
                break
            await asyncio.sleep(0.1)
        assert other.sweeping
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for w in workers:
            await w.close()
