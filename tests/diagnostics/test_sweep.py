"""The fleet sweep: silent devices found over whole-fleet arrays; a mass silence is one
platform incident; only one worker sweeps at a time."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from avl.admin import DeviceSpec, add_device
from diagnostics.service import Worker
from diagnostics.sweep import Sweeper, classify, sweep
from tests.diagnostics.harness import provision, reports, send_gl200, set_status, tickets
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


async def test_the_sweep_judges_a_parked_vehicle_by_its_parked_cadence(db_url: str, tmp_path: Path) -> None:
    moving, parked, learned = "862170010000101", "862170010000102", "862170010000103"
    ids = provision(db_url, devices=[{"identifier": moving, "protocol": "gl200", "interval": 1},
                                     {"identifier": parked, "protocol": "gl200", "interval": 1, "parked_interval_s": 30},
                                     {"identifier": learned, "protocol": "gl200", "interval": 1}])
    with psycopg.connect(db_url) as conn:  # what an earlier checklist run learned of this one's cadence
        conn.execute("INSERT INTO device_cadence (device_id, moving_interval_s, parked_interval_s, moving_samples,"
                     " parked_samples) VALUES (%s, 1, 40, 50, 50)", (ids[learned],))
    settings = settings_for(tmp_path, silent_after_intervals=3)
    async with running_ingest(settings, db_url) as svc:
        await send_gl200(svc.tcp["gl200"].port, reports(moving, 2, minutes_ago=0.02, step_s=1))
        for imei in (parked, learned):
            await send_gl200(svc.tcp["gl200"].port, reports(imei, 2, minutes_ago=0.02, step_s=1, ignition=False,
                                                            speed_kmh=0.0))
        await asyncio.sleep(4)  # silent for 3 x 1 s, not for 3 x 30 s or 3 x 40 s
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            result = await sweep(conn, silent_factor=3, storm_share=0.9, storm_min=100,
                                 parked_interval_s=settings.parked_interval_s)
    assert sorted(result.silent.tolist()) == [ids[moving]]


async def test_the_sweep_also_checks_reporting_devices_whose_latest_report_looks_wrong(db_url: str,
                                                                                      tmp_path: Path) -> None:
    no_fix, wrong_supply, fine = "862170010000201", "862170010000202", "862170010000203"
    provision(db_url, devices=[{"identifier": i, "protocol": "gl200", "plate": f"AA{n}", "supply_voltage_v": 12}
                               for n, i in enumerate((no_fix, wrong_supply, fine))])
    settings = settings_for(tmp_path)
    async with running_ingest(settings, db_url) as svc:
        port = svc.tcp["gl200"].port
        await send_gl200(port, reports(no_fix, 20, minutes_ago=10, step_s=30)
                         + reports(no_fix, 12, minutes_ago=0.1, step_s=30, valid=False))
        await send_gl200(port, reports(wrong_supply, 12, minutes_ago=0.1, power_mv=27_600))
        await send_gl200(port, reports(fine, 12, minutes_ago=0.1))
        worker = Worker(settings, db_url)
        await worker.start()
        try:
            await worker.sweep_once()
            await asyncio.gather(*list(worker._tasks))
            await worker.sweep_once()  # checked once: not again within quality_recheck_s
            assert not worker._tasks
        finally:
            await worker.close()
    by_category = {t["category"]: t for t in tickets(db_url)}
    assert set(by_category) == {"gps_fault", "power_fault"}
    with psycopg.connect(db_url) as conn:
        runs = conn.execute("SELECT d.identifier, r.verdict FROM diagnostic_runs r JOIN devices d ON d.id = r.device_id"
                            " ORDER BY 1").fetchall()
    assert runs == [(no_fix, "gps_fault"), (wrong_supply, "power_fault")]  # the healthy one was never checked


async def test_no_storm_is_declared_while_terminals_reconnect_after_ingest_restarts(db_url: str,
                                                                                   tmp_path: Path) -> None:
    imeis = [f"86217002{i:07d}" for i in range(25)]
    provision(db_url, devices=[{"identifier": i, "protocol": "gl200", "interval": 1} for i in imeis])
    settings = settings_for(tmp_path, silent_after_intervals=2, storm_share=0.5, storm_min_devices=20,
                            sweep_grace_s=600)
    async with running_ingest(settings, db_url) as svc:  # ingest has just (re)started
        await asyncio.gather(*(send_gl200(svc.tcp["gl200"].port, reports(i, 2, minutes_ago=0.05, step_s=1))
                               for i in imeis))
        await asyncio.sleep(2.5)  # everyone is silent: as after a restart, before the terminals reconnect
        worker = Worker(settings, db_url)
        await worker.start()
        try:
            await worker.sweep_once()
            assert tickets(db_url) == []  # no incident, no device checks
            with psycopg.connect(db_url) as conn:  # ten minutes later, still nobody back: that is an incident
                conn.execute("UPDATE platform_status SET started_at = now() - interval '11 minutes'"
                             " WHERE component = 'ingest'")
            await worker.sweep_once()
        finally:
            await worker.close()
    (incident,) = tickets(db_url)
    assert incident["category"] == "platform_incident"


# The worker keeps what devices are expected to do in memory and re-reads only the devices that changed:
# after every kind of change, its sweep finds exactly what a full sweep of the same moment finds.
SWEEP: dict[str, Any] = {"silent_factor": 3.0, "storm_share": 0.9, "storm_min": 1000, "parked_interval_s": 600.0}


def _heard(conn: psycopg.Connection, device_id: int, seconds_ago: float, *, parked: bool = False) -> None:
    """The device's latest report arrived ``seconds_ago``, made parked (ignition off) or driving."""
    conn.execute(
        "INSERT INTO latest_positions (device_id, fix_time, received_at, last_received_at, valid, latitude, longitude,"
        " ignition, speed_kmh) VALUES (%(d)s, now() - make_interval(secs => %(s)s), now(),"
        " now() - make_interval(secs => %(s)s), true, 10.5, -66.9, %(on)s, %(v)s) ON CONFLICT (device_id) DO UPDATE"
        " SET fix_time = EXCLUDED.fix_time, last_received_at = EXCLUDED.last_received_at, ignition = EXCLUDED.ignition,"
        " speed_kmh = EXCLUDED.speed_kmh", {"d": device_id, "s": seconds_ago, "on": not parked, "v": 0 if parked else 40})


async def _agree(sweeper: Sweeper, conn: psycopg.AsyncConnection, *, full: bool) -> set[int]:
    now = time.time()
    kept = await sweeper.sweep(conn, now=now, **SWEEP)
    fresh = await sweep(conn, now=now, **SWEEP)
    assert kept.full is full
    assert (kept.devices, kept.active, kept.newly_silent) == (fresh.devices, fresh.active, fresh.newly_silent)
    assert sorted(kept.silent.tolist()) == sorted(fresh.silent.tolist())
    return set(kept.silent.tolist())


async def test_an_incremental_sweep_finds_what_a_full_one_finds_after_each_kind_of_change(db_url: str) -> None:
    ids = provision(db_url, devices=[{"identifier": f"86217003{i:07d}", "protocol": "gl200", "interval": 30}
                                     for i in range(6)])
    ids |= provision(db_url, account="Flota Morosa", devices=[{"identifier": f"86217004{i:07d}", "protocol": "gl200",
                                                               "interval": 30} for i in range(3)])
    d = [ids[f"86217003{i:07d}"] for i in range(6)]
    other = [ids[f"86217004{i:07d}"] for i in range(3)]
    with psycopg.connect(db_url, autocommit=True) as conn:
        for device in d[:3] + other:
            _heard(conn, device, 200)  # silent: 200 s > 3 x 30 s
        _heard(conn, d[3], 10)
        _heard(conn, d[4], 200, parked=True)  # parked: 200 s < 3 x 600 s
    sweeper = Sweeper()
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as aconn:
        assert await _agree(sweeper, aconn, full=True) == {*d[:3], *other}
        assert await _agree(sweeper, aconn, full=False) == {*d[:3], *other}  # nothing changed
        with psycopg.connect(db_url, autocommit=True) as conn:
            _heard(conn, d[0], 5)  # reports again
        assert await _agree(sweeper, aconn, full=False) == {*d[1:3], *other}
        with psycopg.connect(db_url, autocommit=True) as conn:  # a new device, heard from 300 s ago
            new = add_device(conn, DeviceSpec(identifier="862170039999999", protocol="gl200", account="Flota Diagnóstico",
                                              report_interval_s=30))["id"]
            _heard(conn, new, 300)
        assert await _agree(sweeper, aconn, full=False) == {*d[1:3], *other, new}
        with psycopg.connect(db_url, autocommit=True) as conn:  # a checklist run learned d[4]'s parked cadence
            conn.execute("INSERT INTO device_cadence (device_id, moving_interval_s, parked_interval_s, moving_samples,"
                         " parked_samples) VALUES (%s, 30, 40, 50, 50)", (d[4],))
        assert d[4] in await _agree(sweeper, aconn, full=False)  # 200 s > 3 x 40 s
        set_status(db_url, "Flota Morosa", "suspend")
        assert not set(other) & await _agree(sweeper, aconn, full=False)
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("UPDATE devices SET line_status = 'suspended' WHERE id = %s", (d[1],))
            conn.execute("UPDATE devices SET report_interval_s = 120 WHERE id = %s", (d[2],))  # 200 s < 3 x 120 s
        assert await _agree(sweeper, aconn, full=False) == {d[4], new}
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("UPDATE devices SET parked_interval_s = 3600 WHERE id = %s", (d[4],))  # declared: it wins
            conn.execute("UPDATE devices SET account_id = NULL WHERE id = %s", (new,))
        assert await _agree(sweeper, aconn, full=False) == set()
        set_status(db_url, "Flota Morosa", "reconnect")
        await _agree(sweeper, aconn, full=False)


async def test_a_sweeper_reads_everything_again_once_another_has_swept(db_url: str) -> None:
    ids = provision(db_url, devices=[{"identifier": f"86217005{i:07d}", "protocol": "gl200", "interval": 30}
                                     for i in range(3)])
    with psycopg.connect(db_url, autocommit=True) as conn:
        for device in ids.values():
            _heard(conn, device, 200)
    first, second = Sweeper(), Sweeper()  # the sweep moves to another worker, and back
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as aconn:
        assert await _agree(first, aconn, full=True) == set(ids.values())
        assert await _agree(second, aconn, full=True) == set(ids.values())
        set_status(db_url, "Flota Diagnóstico", "suspend")
        assert await _agree(second, aconn, full=False) == set()  # the other one has taken this change from the log
        assert await _agree(first, aconn, full=True) == set()


async def test_a_change_is_read_at_the_next_sweep_once_and_a_truncate_reads_everything_again(db_url: str) -> None:
    ids = provision(db_url, devices=[{"identifier": f"86217006{i:07d}", "protocol": "gl200", "interval": 30}
                                     for i in range(3)])
    d = sorted(ids.values())
    with psycopg.connect(db_url, autocommit=True) as conn:
        for device in d:
            _heard(conn, device, 200)
    sweeper = Sweeper()
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as aconn:
        first = await sweeper.sweep(aconn, **SWEEP)
        assert first.full and first.figures["changed_devices"] >= 3  # the first sweep reads everything
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("UPDATE devices SET report_interval_s = 120 WHERE id = %s", (d[0],))
        changed = await sweeper.sweep(aconn, **SWEEP)
        assert not changed.full and changed.figures["changed_devices"] == 1
        assert d[0] not in set(changed.silent.tolist())  # 200 s < 3 x 120 s
        after = await sweeper.sweep(aconn, **SWEEP)
        assert not after.full and after.figures["changed_devices"] == 0  # read once, not again
        assert set(after.silent.tolist()) == set(changed.silent.tolist())
        with psycopg.connect(db_url, autocommit=True) as conn:  # no rows to log: the sweeper forgets
            conn.execute("INSERT INTO device_cadence (device_id, moving_interval_s, parked_interval_s, moving_samples,"
                         " parked_samples) VALUES (%s, 30, 40, 50, 50)", (d[1],))
            conn.execute("TRUNCATE device_cadence")
        assert await _agree(sweeper, aconn, full=True) == {d[1], d[2]}
        assert await _agree(sweeper, aconn, full=False) == {d[1], d[2]}
