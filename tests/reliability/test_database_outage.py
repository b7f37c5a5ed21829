"""The database away mid-stream: the spool takes over, devices are acknowledged only for
what is in the spool, the spool replays in order once the database is back, nothing is
lost or doubled; and the spool file survives the ingest process being SIGKILLed while
it is spooling."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

import pytest

from avl.embedded import LocalPostgres
from tests.ingest.harness import register
from tests.reliability.harness import (
    ADAPTERS,
    IngestProcess,
    Ledger,
    device,
    drain,
    imei,
    missing_acknowledged,
    out_of_order,
    read_spool,
    restart_postgres,
    spool_bytes,
    stored_by_device,
    wait_for,
)

PROTOCOLS = ["teltonika", "gt06", "gl200"]


def _fleet(per_protocol: int) -> list[tuple[str, str]]:
    return [(imei(i, "86"), proto) for n, proto in enumerate(PROTOCOLS)
            for i in range(n * 1000, n * 1000 + per_protocol)]


def _acked_set(ledger: Ledger) -> set[tuple[str, datetime]]:
    return {(ident, t) for ident, times in ledger.acked.items() for t in times}


async def _outage(pg: LocalPostgres, url: str, tmp_path: Path, outage_s: float, per_protocol: int = 4) -> None:
    fleet = _fleet(per_protocol)
    ids = register(url, fleet)
    ident_of = {v: k for k, v in ids.items()}
    data_dir = tmp_path / "data"
    ingest = IngestProcess(url, data_dir, PROTOCOLS)
    await asyncio.to_thread(ingest.start)
    ledger = Ledger()
    stop, give_up = asyncio.Event(), asyncio.Event()
    tasks = [asyncio.create_task(device(ADAPTERS[proto](), ingest.ports[proto], ident, stop, ledger, give_up=give_up))
             for ident, proto in fleet]
    try:
        await asyncio.sleep(2.0)
        before = ledger.acked_count
        pg.kill()
        await asyncio.sleep(1.0)  # the writer notices; what was in flight settles
        mark = _acked_set(ledger)
        db_up_during = ingest.metric("avl_database_up")
        await asyncio.sleep(outage_s - 1.0)
        during = _acked_set(ledger) - mark
        sent_during = ledger.frames_sent
        spooled, _, _ = read_spool(data_dir)
        spooled_keys = {(ident_of[d], t) for d, t in spooled}
        file_bytes = spool_bytes(data_dir)
        metric_bytes = ingest.metric("avl_spool_bytes")
        await asyncio.to_thread(restart_postgres, pg)
        await asyncio.sleep(2.0)
        drained = await drain(tasks, stop, give_up, 30)
        replayed = await wait_for(lambda: spool_bytes(data_dir) == 0 and ingest.metric("avl_spool_bytes") == 0, 30)
    finally:
        give_up.set()
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        ingest.stop()
    idents = [i for i, _ in fleet]
    stored = stored_by_device(url, idents)
    lost = missing_acknowledged(ledger, stored)
    disorder = out_of_order(url, idents)
    not_in_spool = during - spooled_keys
    print(f"\ndatabase away {outage_s:.0f} s ({len(fleet)} devices): frames sent {ledger.frames_sent}"
          f" (reports {ledger.reports_sent}), acknowledged {ledger.acked_count} ({before} before the outage,"
          f" {len(during)} from the spool during it), spool at the end of the outage {file_bytes} bytes"
          f" ({len(spooled)} reports; metric {metric_bytes:.0f}), stored {stored.total}, duplicates {stored.duplicates},"
          f" acknowledged but missing {sum(map(len, lost.values()))}, acknowledged during the outage but not in the"
          f" spool {len(not_in_spool)}, devices out of order {len(disorder)}")
    assert db_up_during == 0, "avl_database_up still 1 after the database was killed"
    assert during, "nothing was acknowledged while the database was away: the spool did not take over"
    assert not not_in_spool, f"acknowledged during the outage but not in the spool file: {sorted(not_in_spool)[:3]}"
    assert sent_during > 0
    assert not lost, f"acknowledged reports missing: {dict(list(lost.items())[:3])}"
    assert stored.duplicates == 0
    assert replayed, "the spool was not emptied after the database came back"
    assert not disorder, f"reports committed out of order for {disorder[:5]}"
    assert drained and stored.total == ledger.acked_count


async def test_database_away_mid_stream_spools_and_replays_in_order(
        killable_db: tuple[LocalPostgres, str], tmp_path: Path) -> None:
    pg, url = killable_db
    await _outage(pg, url, tmp_path, outage_s=10.0)


@pytest.mark.soak
async def test_database_away_a_full_minute(killable_db: tuple[LocalPostgres, str], tmp_path: Path) -> None:
    pg, url = killable_db
    await _outage(pg, url, tmp_path, outage_s=60.0, per_protocol=20)


async def test_spool_survives_ingest_sigkill_while_spooling(killable_db: tuple[LocalPostgres, str],
                                                            tmp_path: Path) -> None:
    pg, url = killable_db
    fleet = _fleet(4)
    ids = register(url, fleet)
    ident_of = {v: k for k, v in ids.items()}
    data_dir = tmp_path / "data"
    ingest = IngestProcess(url, data_dir, PROTOCOLS)
    await asyncio.to_thread(ingest.start)
    ledger = Ledger()
    stop, give_up = asyncio.Event(), asyncio.Event()
    tasks = [asyncio.create_task(device(ADAPTERS[proto](), ingest.ports[proto], ident, stop, ledger, give_up=give_up))
             for ident, proto in fleet]
    try:
        await asyncio.sleep(1.5)
        pg.kill()
        await asyncio.sleep(1.0)
        mark = _acked_set(ledger)
        await asyncio.sleep(3.0)  # spooling, acknowledging from the spool
        ingest.kill()  # the fleet is still sending: an append may be cut in the middle
        from_spool = _acked_set(ledger) - mark
        spooled, _, torn = read_spool(data_dir)
        file_bytes = spool_bytes(data_dir)
        spooled_keys = {(ident_of[d], t) for d, t in spooled}
        await asyncio.sleep(1.0)  # devices find nobody listening, keep their reports
        await asyncio.to_thread(restart_postgres, pg)
        await asyncio.to_thread(ingest.start)  # replays the spool on start
        replayed = await wait_for(lambda: spool_bytes(data_dir) == 0, 30)
        await asyncio.sleep(1.0)
        drained = await drain(tasks, stop, give_up, 30)
    finally:
        give_up.set()
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        ingest.stop()
    idents = [i for i, _ in fleet]
    stored = stored_by_device(url, idents)
    lost = missing_acknowledged(ledger, stored)
    disorder = out_of_order(url, idents)
    print(f"\ningest SIGKILLed while spooling ({len(fleet)} devices): {len(from_spool)} reports acknowledged from the"
          f" spool before the kill; spool file after the kill {file_bytes} bytes, {len(spooled)} reports"
          f"{', a torn last record' if torn else ''}; after restarting both: frames sent {ledger.frames_sent},"
          f" acknowledged {ledger.acked_count}, stored {stored.total}, duplicates {stored.duplicates},"
          f" acknowledged but missing {sum(map(len, lost.values()))}, out of order {len(disorder)}")
    assert from_spool, "nothing was acknowledged from the spool before the kill"
    assert file_bytes > 0 and from_spool <= spooled_keys, "acknowledged reports are not in the spool file"
    assert replayed, "the restarted ingest did not replay its spool"
    assert not lost, f"acknowledged reports missing: {dict(list(lost.items())[:3])}"
    assert stored.duplicates == 0 and not disorder
    assert drained and stored.total == ledger.acked_count
