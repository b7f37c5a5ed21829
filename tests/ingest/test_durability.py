"""Nothing acknowledged is lost: the database dies mid-stream, the spool takes over, and
after the database returns every acknowledged report is stored exactly once."""

from __future__ import annotations

import asyncio
import os
import struct
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from avl.db.migrate import migrate
from avl.embedded import LocalPostgres, free_port
from ingest.pipeline import Batch
from ingest.protocols import teltonika
from ingest.spool import Spool, SpoolError, decode, encode
from tests.ingest.harness import register, running_ingest, settings_for, track


async def _device_loop(port: int, imei: str, stop: asyncio.Event, acked: list[datetime], sent: list[int]) -> None:
    """A Teltonika terminal: batches of 5 reports, waits for the ACK, resends on timeout, reconnects."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=12)
    seq = 0
    while not stop.is_set():
        batch = track(imei, 5, start + timedelta(seconds=seq * 5), step_s=1)
        seq += 1
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(teltonika.encode_login(imei))
                await asyncio.wait_for(reader.readexactly(1), 5)
                writer.write(teltonika.encode_batch(batch))
                sent[0] += 1
                ack = await asyncio.wait_for(reader.readexactly(4), 5)
                writer.close()
                if struct.unpack(">I", ack)[0] == len(batch):
                    acked.extend(p.fix_time for p in batch)
                    break
            except (OSError, asyncio.IncompleteReadError, TimeoutError):
                await asyncio.sleep(0.2)  # no ACK: keep the batch and try again


async def test_database_killed_mid_stream_loses_nothing_acknowledged(workdir: Path, tmp_path: Path) -> None:
    pg = LocalPostgres(workdir / f"killdb-{os.getpid()}-{time.monotonic_ns()}", free_port(), durable=False)
    url = pg.start()
    with psycopg.connect(url) as conn:
        migrate(conn)
    imeis = [f"35630704244{i:04d}" for i in range(4)]
    ids = register(url, [(imei, "teltonika") for imei in imeis])
    acked: dict[str, list[datetime]] = {imei: [] for imei in imeis}
    sent = [0]
    stop = asyncio.Event()
    try:
        async with running_ingest(settings_for(tmp_path), url) as svc:
            assert svc.writer is not None
            port = svc.tcp["teltonika"].port
            devices = [asyncio.create_task(_device_loop(port, imei, stop, acked[imei], sent)) for imei in imeis]
            await asyncio.sleep(1.0)
            before = sum(map(len, acked.values()))
            pg.kill()
            await asyncio.sleep(3.0)  # devices keep sending; acks now come from the spool
            during = sum(map(len, acked.values())) - before
            assert svc.writer.stats.spooled_batches > 0
            await asyncio.to_thread(pg.start)
            await asyncio.sleep(1.0)
            stop.set()
            await asyncio.gather(*devices)
            for _ in range(200):
                if not svc.writer.spool.pending:
                    break
                await asyncio.sleep(0.05)
            assert not svc.writer.spool.pending
        total = sum(map(len, acked.values()))
        with psycopg.connect(url) as conn:
            for imei in imeis:
                rows = conn.execute("SELECT fix_time FROM positions WHERE device_id = %s ORDER BY fix_time",
                                    (ids[imei],)).fetchall()
                stored = [r[0] for r in rows]
                assert set(acked[imei]) <= set(stored), "an acknowledged report is missing"
                assert len(stored) == len(set(stored))
        print(f"\nDB kill: batches sent {sent[0]}, reports acknowledged {total} ({during} while the database was down), "
              f"spooled batches {svc.writer.stats.spooled_batches}, replayed {svc.writer.stats.replayed_batches}")
        assert during > 0, "no report was acknowledged from the spool while the database was down"
    finally:
        stop.set()
        pg.stop("immediate")


def _batch(n: int) -> Batch:
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    return Batch(positions=[(1, now + timedelta(seconds=i), now, True, 10.5, -66.9, 30.0, 90.0, 900.0, 9, 0.9, True,
                             12600, 4100, 1000 + i, None, 0, "teltonika", "{}", b"\x00\x01") for i in range(n)])


def test_spool_round_trips_batches_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for n in (1, 2, 3):
        spool.append(encode(_batch(n)))
    seen = []
    while (record := spool.peek()) is not None:
        payload, offset = record
        seen.append(decode(payload))
        spool.advance(offset)
    assert [len(b.positions) for b in seen] == [1, 2, 3]
    assert seen[2].positions == _batch(3).positions
    assert not spool.pending and spool.path.stat().st_size == 0


def test_spool_survives_a_restart_and_cuts_a_torn_last_record(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(encode(_batch(2)))
    spool.append(encode(_batch(3)))
    record = spool.peek()
    assert record is not None
    spool.advance(record[1])  # first batch replayed before the "crash"
    spool.close()
    with open(tmp_path / "spool.log", "ab") as f:
        f.write(b"\x00\x00\x01\x00torn")  # a crash mid-append: never fsynced, never acknowledged
    reopened = Spool(tmp_path)
    record = reopened.peek()
    assert record is not None and len(decode(record[0]).positions) == 3
    reopened.advance(record[1])
    assert not reopened.pending


def test_a_full_spool_refuses_instead_of_pretending(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=2000)
    spool.append(encode(_batch(1)))
    with pytest.raises(SpoolError, match="at its limit"):
        for _ in range(100):
            spool.append(encode(_batch(5)))
