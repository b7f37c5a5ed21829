"""Real frames over real TCP, UDP, HTTP and MQTT into a running ingestor on a real database:
stored exactly once, acknowledged only when durable."""

from __future__ import annotations

import asyncio
import json
import struct
from pathlib import Path

import aiomqtt
import psycopg
import pytest

from avl.embedded import LocalBroker
from ingest.protocols import calamp, gl200, gt06, json_report, osmand, teltonika
from tests.ingest.harness import exchange, register, running_ingest, settings_for, stored, track, udp_exchange


async def test_teltonika_batches_over_tcp_are_stored_once_and_acked_with_their_count(db_url: str, tmp_path: Path) -> None:
    ids = register(db_url, [("356307042441013", "teltonika")])
    settings = settings_for(tmp_path)
    positions = track("356307042441013", 20)
    async with running_ingest(settings, db_url) as svc:
        port = svc.tcp["teltonika"].port
        batch = teltonika.encode_batch(positions)
        replies = await exchange(port, [teltonika.encode_login("356307042441013"), batch], [1, 4])
        assert replies == [b"\x01", struct.pack(">I", 20)]
        # The device did not see the ACK in time and sends the same batch again.
        again = await exchange(port, [teltonika.encode_login("356307042441013"), batch], [1, 4])
        assert again[1] == struct.pack(">I", 20)
    rows = stored(db_url, ids["356307042441013"])
    assert [r[0] for r in rows] == [p.fix_time for p in positions]
    assert rows[0][1] == pytest.approx(10.48, abs=1e-6) and rows[0][4] is True
    with psycopg.connect(db_url) as conn:
        # Attributes are JSON objects (queryable), and the frame's raw bytes are kept once, with its first report.
        assert conn.execute("SELECT DISTINCT jsonb_typeof(attributes) FROM positions").fetchall() == [("object",)]
        assert conn.execute("SELECT (attributes->>'rssi')::int FROM positions LIMIT 1").fetchone() is not None
        raws = conn.execute("SELECT raw FROM positions ORDER BY fix_time").fetchall()
        assert bytes(raws[0][0]) == batch and all(r[0] is None for r in raws[1:])
        assert conn.execute("SELECT jsonb_typeof(attributes) FROM latest_positions").fetchone() == ("object",)


async def test_gt06_login_location_and_latest_position(db_url: str, tmp_path: Path) -> None:
    imei = "868120201234561"
    ids = register(db_url, [(imei, "gt06")])
    positions = track(imei, 5)
    async with running_ingest(settings_for(tmp_path), db_url) as svc:
        frames = [gt06.encode_login(imei)] + [gt06.encode_position(p, i + 2) for i, p in enumerate(positions)]
        replies = await exchange(svc.tcp["gt06"].port, frames, [10] * len(frames))
    assert [r[3] for r in replies] == [0x01] + [0x22] * 5  # login ACK, then one ACK per location
    assert len(stored(db_url, ids[imei])) == 5
    with psycopg.connect(db_url) as conn:
        latest = conn.execute("SELECT fix_time FROM latest_positions WHERE device_id = %s", (ids[imei],)).fetchone()
    assert latest == (positions[-1].fix_time,)


async def test_out_of_order_buffered_reports_never_move_the_latest_position_back(db_url: str, tmp_path: Path) -> None:
    imei = "862170010000001"
    ids = register(db_url, [(imei, "gl200")])
    live, old = track(imei, 2)[1], track(imei, 2)[0]
    async with running_ingest(settings_for(tmp_path), db_url) as svc:
        port = svc.tcp["gl200"].port
        await exchange(port, [gl200.encode_position(live, 1)], [len(b"+SACK:0001$")])
        await exchange(port, [gl200.encode_position(old, 2, buffered=True)], [len(b"+SACK:0002$")])
    with psycopg.connect(db_url) as conn:
        latest = conn.execute("SELECT fix_time, last_received_at > received_at FROM latest_positions"
                              " WHERE device_id = %s", (ids[imei],)).fetchone()
    assert latest is not None and latest[0] == live.fix_time
    assert latest[1] is True  # the buffered report still counts as "heard from"
    assert len(stored(db_url, ids[imei])) == 2


async def test_calamp_over_udp_is_acked_after_commit(db_url: str, tmp_path: Path) -> None:
    esn = "4634040001"
    ids = register(db_url, [(esn, "calamp")])
    p = track(esn, 1)[0]
    async with running_ingest(settings_for(tmp_path), db_url) as svc:
        ack = await udp_exchange(svc.udp["calamp"].port, calamp.encode_position(p, 77))
    assert ack is not None and ack[:2] == b"\x02\x01" and struct.unpack(">H", ack[2:4])[0] == 77
    assert len(stored(db_url, ids[esn])) == 1


async def test_osmand_http_report_from_a_phone(db_url: str, tmp_path: Path) -> None:
    ids = register(db_url, [("demo-phone-1", "osmand")])
    p = track("demo-phone-1", 1)[0]
    async with running_ingest(settings_for(tmp_path), db_url) as svc:
        port = svc.tcp["osmand"].port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(osmand.encode_position(p))
        status = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /?id=not-registered&lat=10.5&lon=-66.9&timestamp=1700000000 HTTP/1.1\r\nHost: x\r\n\r\n")
        unknown = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
    assert status.startswith(b"HTTP/1.1 200")
    assert unknown.startswith(b"HTTP/1.1 404")
    assert len(stored(db_url, ids["demo-phone-1"])) == 1


async def test_unknown_device_is_recorded_and_not_acknowledged(db_url: str, tmp_path: Path) -> None:
    imei = "868120209999999"
    async with running_ingest(settings_for(tmp_path), db_url) as svc:
        port = svc.tcp["gt06"].port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(gt06.encode_login(imei))
        login_ack = await asyncio.wait_for(reader.readexactly(10), 10)
        writer.write(gt06.encode_position(track(imei, 1)[0], 2))
        await writer.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.readexactly(10), 1.0)
        writer.close()
        await asyncio.sleep(0.2)
    assert login_ack[3] == 0x01
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT protocol, count, last_raw IS NOT NULL FROM unknown_devices WHERE identifier = %s",
                           (imei,)).fetchone()
        assert row == ("gt06", 1, True)
        assert conn.execute("SELECT count(*) FROM positions").fetchone() == (0,)


async def test_a_connection_cannot_report_for_another_device(db_url: str, tmp_path: Path) -> None:
    ids = register(db_url, [("862170010000001", "gl200"), ("862170010000002", "gl200")])
    a, b = track("862170010000001", 1)[0], track("862170010000002", 1)[0]
    async with running_ingest(settings_for(tmp_path), db_url) as svc:
        reader, writer = await asyncio.open_connection("127.0.0.1", svc.tcp["gl200"].port)
        writer.write(gl200.encode_position(a, 1))
        assert await asyncio.wait_for(reader.readexactly(11), 10) == b"+SACK:0001$"
        writer.write(gl200.encode_position(b, 2))  # same connection, another IMEI
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # refused, and the connection closed
        writer.close()
    assert len(stored(db_url, ids["862170010000001"])) == 1
    assert stored(db_url, ids["862170010000002"]) == []


async def test_garbage_and_oversized_input_do_not_take_the_listener_down(db_url: str, tmp_path: Path) -> None:
    imei = "868120201234561"
    ids = register(db_url, [(imei, "gt06")])
    settings = settings_for(tmp_path, max_frame_bytes=4096)
    async with running_ingest(settings, db_url) as svc:
        port = svc.tcp["gt06"].port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x78\x78" + b"\xff" * 10_000)  # a frame that never ends
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 10) == b""  # cut off
        writer.close()
        replies = await exchange(port, [gt06.encode_login(imei), gt06.encode_position(track(imei, 1)[0], 2)], [10, 10])
        assert replies[1][3] == 0x22
    assert len(stored(db_url, ids[imei])) == 1


async def test_mqtt_reports_are_stored_once_and_acked_after_commit(db_url: str, tmp_path: Path,
                                                                  mqtt_broker: LocalBroker) -> None:
    ids = register(db_url, [("gw-0001", "json"), ("356307042441099", "teltonika")])
    reports = track("gw-0001", 10)
    raw = track("356307042441099", 3)
    async with running_ingest(settings_for(tmp_path, mqtt_group=f"g{tmp_path.name[-6:]}"), db_url,
                              mqtt_broker.url) as svc:
        assert svc.mqtt is not None
        await asyncio.wait_for(svc.mqtt.connected.wait(), 10)
        async with aiomqtt.Client("127.0.0.1", mqtt_broker.port) as pub:
            for p in reports:
                await pub.publish("avl/in/json/gw-0001", json_report.encode_position(p), qos=1)
            await pub.publish("avl/in/json/gw-0001", json.dumps({"nonsense": 1}).encode(), qos=1)
            await pub.publish("avl/in/teltonika/356307042441099", teltonika.encode_batch(raw), qos=1)
            # Duplicates (a publisher retrying) are absorbed.
            await pub.publish("avl/in/json/gw-0001", json_report.encode_position(reports[0]), qos=1)
        for _ in range(100):
            if svc.mqtt.acked >= 13:
                break
            await asyncio.sleep(0.1)
        assert svc.mqtt.acked == 13
    assert len(stored(db_url, ids["gw-0001"])) == 10
    assert len(stored(db_url, ids["356307042441099"])) == 3


async def test_live_consumers_are_notified_after_commit(db_url: str, tmp_path: Path) -> None:
    imei = "356307042441013"
    ids = register(db_url, [(imei, "teltonika")])
    listener = await psycopg.AsyncConnection.connect(db_url, autocommit=True)
    await listener.execute("LISTEN avl_positions")
    async with running_ingest(settings_for(tmp_path), db_url) as svc:
        await exchange(svc.tcp["teltonika"].port,
                       [teltonika.encode_login(imei), teltonika.encode_batch(track(imei, 3))], [1, 4])
        notice = await asyncio.wait_for(anext(listener.notifies()), 10)
    await listener.close()
    assert json.loads(notice.payload) == {"devices": [ids[imei]]}
    # By the time a listener hears of it, the rows are there to read.
    assert len(stored(db_url, ids[imei])) == 3


async def test_impossible_reports_are_quarantined_and_invalid_fixes_flagged(db_url: str, tmp_path: Path) -> None:
    from datetime import timedelta

    from ingest.pipeline import FLAG_INVALID_FIX

    imei = "862170010000001"
    ids = register(db_url, [(imei, "gl200")])
    future, no_fix = track(imei, 2)
    future.fix_time += timedelta(days=3)
    no_fix.valid = False
    async with running_ingest(settings_for(tmp_path), db_url) as svc:
        port = svc.tcp["gl200"].port
        replies = await exchange(port, [gl200.encode_position(future, 1), gl200.encode_position(no_fix, 2)], [11, 11])
    assert replies == [b"+SACK:0001$", b"+SACK:0002$"]  # both kept, so both acknowledged
    with psycopg.connect(db_url) as conn:
        quarantined = conn.execute("SELECT reason, fix_time FROM positions_quarantine WHERE device_id = %s",
                                   (ids[imei],)).fetchall()
        assert quarantined == [("future", future.fix_time)]
        assert conn.execute("SELECT jsonb_typeof(record) FROM positions_quarantine").fetchone() == ("object",)
    rows = stored(db_url, ids[imei])
    assert len(rows) == 1 and rows[0][5] & FLAG_INVALID_FIX


async def test_a_stalled_database_stops_intake_instead_of_growing_memory(db_url: str, tmp_path: Path) -> None:
    from ingest.pipeline import Batch, route
    from ingest.spool import Spool
    from ingest.writer import Writer, oldest_accepted

    ids = register(db_url, [("356307042441013", "teltonika")])
    writer = Writer(db_url, Spool(tmp_path / "spool"), queue_max_rows=100, batch_max_rows=50, batch_max_ms=1)
    await writer.start()
    blocker = await psycopg.AsyncConnection.connect(db_url)
    await blocker.execute("LOCK TABLE latest_positions IN ACCESS EXCLUSIVE MODE")  # the writer's commit now waits
    futures = []
    blocked = False
    for p in track("356307042441013", 400):
        batch = Batch()
        route(p, ids["356307042441013"], p.fix_time, oldest_accepted(400), batch)
        try:
            futures.append(await asyncio.wait_for(writer.enqueue(batch), 0.5))
        except TimeoutError:
            blocked = True
            break
    assert blocked, "enqueue never waited: the queue is unbounded"
    assert writer.queued_rows <= 100 and len(futures) < 200
    await blocker.rollback()
    await blocker.close()
    await asyncio.wait_for(asyncio.gather(*futures), 30)
    await writer.close()
    writer.spool.close()
    assert len(stored(db_url, ids["356307042441013"])) == len(futures)


async def test_a_terminal_registered_while_ingest_runs_is_acknowledged_at_once(db_url: str, tmp_path: Path) -> None:
    imei = "868120207777777"
    report = track(imei, 1)[0]
    async with running_ingest(settings_for(tmp_path), db_url) as svc:
        port = svc.tcp["gt06"].port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(gt06.encode_login(imei))
        await asyncio.wait_for(reader.readexactly(10), 10)
        writer.write(gt06.encode_position(report, 2))
        await writer.drain()
        with pytest.raises(TimeoutError):  # unknown: not acknowledged, the terminal keeps it
            await asyncio.wait_for(reader.readexactly(10), 1.0)
        ids = register(db_url, [(imei, "gt06")])  # an installer registers it
        for _ in range(50):  # the terminal resends until acknowledged
            writer.write(gt06.encode_position(report, 3))
            try:
                ack = await asyncio.wait_for(reader.readexactly(10), 0.2)
                break
            except TimeoutError:
                continue
        writer.close()
    assert ack[3] == 0x22
    assert len(stored(db_url, ids[imei])) == 1
