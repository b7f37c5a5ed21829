"""A device resends what it believes unacknowledged: every resend is stored once. Reports without a
time of their own are told apart by their frame within ``AVL_DUPLICATE_WINDOW_S``; timed positions
by their fix time, whether the writer copies them straight in or through its staging table."""

from __future__ import annotations

import asyncio
import struct
from datetime import timedelta
from pathlib import Path

import psycopg

from ingest.protocols import teltonika
from tests.ingest.harness import exchange, http_status, register, running_ingest, settings_for, stored, track

H02_ID = "865205030000001"
# A location without its time field (its date too), and a heartbeat: both get their arrival time.
H02_UNTIMED = f"*HQ,{H02_ID},V1,,A,1029.1234,N,06654.1234,W,0.00,0,,FFFFFBFF#".encode()
H02_HEARTBEAT = f"*HQ,{H02_ID},HTBT,85#".encode()
OSMAND_UNTIMED = b"GET /?id=phone-untimed-1&lat=10.5&lon=-66.9&speed=0 HTTP/1.1\r\nHost: x\r\n\r\n"


async def _h02(port: int, frames: list[bytes]) -> list[bytes]:
    """One connection; each frame's reply (sent once it is durable) awaited before the next."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        replies = []
        for frame in frames:
            writer.write(frame)
            await writer.drain()
            replies.append(await asyncio.wait_for(reader.readuntil(b"#"), 10))
        return replies
    finally:
        writer.close()


def _counts(db_url: str, device_id: int) -> tuple[int, int]:
    with psycopg.connect(db_url) as conn:
        positions = conn.execute("SELECT count(*) FROM positions WHERE device_id = %s", (device_id,)).fetchone()
        events = conn.execute("SELECT count(*) FROM device_events WHERE device_id = %s", (device_id,)).fetchone()
    assert positions is not None and events is not None
    return positions[0], events[0]


def _age_first_arrivals(db_url: str, seconds: float) -> None:
    """As if the first arrivals were ``seconds`` earlier: past the window, a frame is a new report."""
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE recent_frames SET first_at = first_at - make_interval(secs => %s)", (seconds,))


async def test_h02_reports_without_a_time_and_heartbeats_resent_within_the_window_are_stored_once(
        db_url: str, tmp_path: Path) -> None:
    device_id = register(db_url, [(H02_ID, "h02")])[H02_ID]
    settings = settings_for(tmp_path, duplicate_window_s=300.0)
    async with running_ingest(settings, db_url) as svc:
        port = svc.tcp["h02"].port
        first = await _h02(port, [H02_UNTIMED, H02_HEARTBEAT])
        assert first[1] == f"*HQ,{H02_ID},HTBT#".encode()
        assert _counts(db_url, device_id) == (1, 1)
        # The terminal did not see the replies and sends both again, on a new connection, and again.
        for _ in range(2):
            assert len(await _h02(port, [H02_UNTIMED, H02_HEARTBEAT])) == 2
        assert _counts(db_url, device_id) == (1, 1)
        # Past the window the same bytes are a new report (a parked terminal repeats itself).
        _age_first_arrivals(db_url, 301)
        await _h02(port, [H02_UNTIMED, H02_HEARTBEAT])
        assert _counts(db_url, device_id) == (2, 2)
        await _h02(port, [H02_UNTIMED, H02_HEARTBEAT])
        assert _counts(db_url, device_id) == (2, 2)


async def test_an_osmand_request_without_timestamp_resent_within_the_window_is_stored_once(
        db_url: str, tmp_path: Path) -> None:
    device_id = register(db_url, [("phone-untimed-1", "osmand")])["phone-untimed-1"]
    async with running_ingest(settings_for(tmp_path, duplicate_window_s=300.0), db_url) as svc:
        port = svc.tcp["osmand"].port
        for _ in range(3):
            assert (await http_status(port, OSMAND_UNTIMED)).startswith(b"HTTP/1.1 200")
        assert len(stored(db_url, device_id)) == 1
        # Another report (the phone moved a few metres) is not a resend.
        other = OSMAND_UNTIMED.replace(b"lat=10.5", b"lat=10.5001")
        assert (await http_status(port, other)).startswith(b"HTTP/1.1 200")
        assert len(stored(db_url, device_id)) == 2
        _age_first_arrivals(db_url, 301)
        assert (await http_status(port, OSMAND_UNTIMED)).startswith(b"HTTP/1.1 200")
        assert len(stored(db_url, device_id)) == 3


async def test_fast_and_staged_paths_store_each_position_once(db_url: str, tmp_path: Path) -> None:
    imei = "356307042449999"
    device_id = register(db_url, [(imei, "teltonika")])[imei]
    positions = track(imei, 20)
    batches = [teltonika.encode_batch(positions[i:i + 5]) for i in range(0, 20, 5)]
    login = teltonika.encode_login(imei)
    async with running_ingest(settings_for(tmp_path), db_url) as svc:
        port = svc.tcp["teltonika"].port
        stats = svc.writer.stats if svc.writer else None
        assert stats is not None

        async def send(batch: bytes) -> None:
            replies = await exchange(port, [login, batch], [1, 4])
            assert replies[1] == struct.pack(">I", 5)

        await send(batches[0])  # a device this writer has not written yet: staged
        assert (stats.direct_rows, stats.staged_rows) == (0, 5)
        await send(batches[1])  # newer than what is stored: cannot conflict, copied straight in
        assert (stats.direct_rows, stats.staged_rows) == (5, 5)
        await send(batches[1])  # a retransmission: staged, absorbed by the unique key
        assert (stats.direct_rows, stats.staged_rows) == (5, 10)
        # Another ingest process stored one of the next reports (the device reconnected there and back):
        # the straight copy meets it, and the batch goes through staging instead.
        with psycopg.connect(db_url) as conn:
            conn.execute("INSERT INTO positions (device_id, fix_time, received_at, valid, latitude, longitude, flags,"
                         " protocol, attributes) VALUES (%s, %s, now(), true, 10.5, -66.9, 0, 'teltonika', '{}')",
                         (device_id, positions[12].fix_time))
        await send(batches[2])
        await send(batches[3])
        assert stats.direct_rows >= 10 and stats.staged_rows >= 15
    rows = stored(db_url, device_id)
    assert [r[0] for r in rows] == [p.fix_time for p in positions]
    with psycopg.connect(db_url) as conn:
        latest = conn.execute("SELECT fix_time FROM latest_positions WHERE device_id = %s", (device_id,)).fetchone()
    assert latest == (positions[-1].fix_time,)
    assert positions[-1].fix_time - positions[0].fix_time == timedelta(seconds=19 * 30)
