"""Behaviour of the startek decoder: report fields and extensions, 710 serial lines, command answers,
the checksum policy, the corpus frame longer than its length field, framing, bad input, the encoder;
and over real TCP into the database (Startek units expect no answer: none is sent)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avl.records import Position
from ingest.protocols.base import Session
from ingest.protocols.startek import PROTOCOL, checksum, encode_frame, encode_position
from tests.ingest.harness import eventually, register, running_ingest, settings_for, stored, track
from tests.ingest.protocols.checks import assert_one_line_error, courses, fix_times, latitudes, longitudes
from tests.ingest.protocols.framing import split_all

IMEI = "861157040151686"
NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
# Corpus frames (../shared/vectors/dev-2.jsonl)
POWER_CUT = (b"&&X152,861157040151686,000,18,,210907163833,A,10.232715,-67.880423,11,1.4,0,275,437,34804,"
             b"734|2|3EE4|00579406,28,00000015,00,00,0000|017D|0000|0000,1,010000,,9A\r\n")
DRIVER = (b"&&a152,860262050010565,000,53,8F5300,210528015706,A,-38.229746,145.043446,6,1.5,0,285,84,2102994,"
          b"505|1|306E|082D6101,31,0000003D,02,02,04C0|01A0|0000|0000,1,,DC\r\n")
OBD = (b"&&x164,869926040743375,000,0,,220705205955,A,33.326001,44.445318,10,1.2,0,57,8,925,418|40|038C|000083CD,"
       b"31,00000015,00,00,0016|016A|0000|0000,1,,,686|33||44|99|14|124|11|8D\r\n")
HOURS = (b"&&s148,868703050178631,000,37,,230704040211,A,22.678565,114.046011,31,0.5,0,339,77,8,460|0|249F|0AC2620D,"
         b"27,0000001D,02,00,04F2|01A1|0000|0000,129,,,,949037\r\n")
# Test line 65 of the reference test: 158 bytes between the first comma and the checksum, declared 147.
TOO_LONG = (b"&&A147,021104023195429,000,0,,180106093046,A,22.646430,114.065730,8,0.9,54,86,76,326781,"
            b"460|0|27B3|0EA7,27,0000000F,02,01,04E2|018C|01C8|0000,1,0104B0,01013D|02813546\r\n")
RESULT = b"&&:23,860262050015424,129,OKA2\r\n"


def session(device: str | None = None) -> Session:
    return Session(transport="tcp", device=device, now=lambda: NOW)


def test_position_report_fields() -> None:
    s = session()
    result = PROTOCOL.decode(POWER_CUT, s)
    assert s.device == IMEI and result.reply is None  # Startek units expect no answer
    [p] = result.positions
    assert (p.fix_time, p.valid) == (datetime(2021, 9, 7, 16, 38, 33, tzinfo=UTC), True)
    assert (p.latitude, p.longitude) == (10.232715, -67.880423)  # latitude first: Aragua, Venezuela
    assert (p.satellites, p.hdop, p.speed_kmh, p.course, p.altitude_m, p.odometer_m) == (11, 1.4, 0.0, 275.0, 437.0,
                                                                                         34804)
    assert (p.alarm, p.power_mv, p.battery_mv, p.ignition) == ("powerCut", 0, 3810, False)
    assert p.attributes["network"]["cellTowers"][0] == {"mobileCountryCode": 734, "mobileNetworkCode": 2,
                                                        "locationAreaCode": 0x3EE4, "cellId": 0x579406}
    assert p.attributes["fuel1"] == 0.0 and "crcMismatch" not in p.attributes


def test_driver_event_obd_and_engine_hours() -> None:
    [driver] = PROTOCOL.decode(DRIVER, session()).positions
    assert driver.attributes["driverUniqueId"] == "8F5300" and driver.ignition is True
    [obd] = PROTOCOL.decode(OBD, session()).positions
    assert {k: obd.attributes[k] for k in ("rpm", "engineLoad", "throttle", "coolantTemp", "fuelConsumption")} == {
        "rpm": 686, "engineLoad": 33, "throttle": 14, "coolantTemp": 84, "fuelConsumption": 1.1}
    assert "maf" not in obd.attributes  # an empty OBD field
    [hours] = PROTOCOL.decode(HOURS, session()).positions
    assert hours.attributes["hours"] == 9_490_000  # 9490 s, in ms


def test_command_answer_and_serial_lines_are_status_records() -> None:
    [p] = PROTOCOL.decode(RESULT, session()).positions
    assert (p.located, p.fix_time, p.attributes["result"], p.attributes["command"]) == (False, NOW, "OK", "129")
    lines = "T1,0.0,1\r\nT6,00,03\r\n"
    [q] = PROTOCOL.decode(encode_frame(IMEI, "710", lines), session()).positions
    assert q.attributes["serialData"] == {"T1": "0.0,1", "T6": "00,03"}


# Checksum and the inconsistent corpus frame ------------------------------------------------------


def test_a_wrong_checksum_is_decoded_and_flagged() -> None:
    bad = POWER_CUT.replace(b",9A\r\n", b",9B\r\n")
    [p] = PROTOCOL.decode(bad, session()).positions
    assert p.attributes["crcMismatch"] is True and p.latitude == 10.232715


def test_a_frame_longer_than_its_length_field_is_framed_to_its_crlf_decoded_and_flagged() -> None:
    frames, rest = split_all(PROTOCOL, TOO_LONG + POWER_CUT)
    assert frames == [TOO_LONG, POWER_CUT] and rest == b""
    [p] = PROTOCOL.decode(TOO_LONG, session()).positions
    assert p.attributes["crcMismatch"] is True  # its checksum does not match either
    assert (p.attributes["fuel1"], p.attributes["temp1"], p.attributes["temp2"]) == (120.0, 31.7, -30.9)


# Framing ------------------------------------------------------------------------------------


def test_framing_follows_the_length_so_crlf_inside_710_lines_does_not_cut() -> None:
    serial = encode_frame(IMEI, "710", "T1,1\r\nT2,2\r\n")
    frames, rest = split_all(PROTOCOL, b"garbage\r\n" + serial + RESULT + POWER_CUT[:40])
    assert frames == [serial, RESULT] and rest == POWER_CUT[:40]
    frames, rest = split_all(PROTOCOL, rest + POWER_CUT[40:])
    assert frames == [POWER_CUT] and rest == b""


def test_checksum_is_the_byte_sum() -> None:
    assert checksum(b"&&:23,860262050015424,129,OK") == b"A2"


# Bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("frame", "message"), [
    (b"&&X", "does not end with a 2-digit checksum"),
    (b"&&X12,abc,000,1ZZ\r\n", "does not end with a 2-digit checksum"),
    (b"&&X12,abc,000,100\r\n", "not a &&<index><length>,<IMEI>,<command>,... frame"),
    (b"&&X12,861157040151686,000,1,2,3,400\r\n", "does not have the report's fields"),
    (POWER_CUT.replace(b"210907163833", b"211307163833"), "malformed position report"),
    (POWER_CUT.replace(b"10.232715", b"99.232715"), "out of range"),
])
def test_bad_frames_are_one_line_decode_errors(frame: bytes, message: str) -> None:
    assert_one_line_error(PROTOCOL, frame, session(), message)


# Encoder ------------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(fix_times, latitudes, longitudes, st.integers(0, 300), courses, st.booleans())
def test_encoder_round_trip(when: datetime, lat: float, lon: float, speed: int, course: int, ignition: bool) -> None:
    p = Position(device=IMEI, fix_time=when, valid=True, latitude=lat,
                 longitude=lon, speed_kmh=float(speed), course=float(course), satellites=9, hdop=0.8, ignition=ignition,
                 power_mv=12340, battery_mv=4100, odometer_m=777)
    [frame], rest = split_all(PROTOCOL, encode_position(p, 3))
    [q] = PROTOCOL.decode(frame, session()).positions
    assert rest == b"" and "crcMismatch" not in q.attributes
    assert (q.fix_time, q.speed_kmh, q.course, q.ignition, q.power_mv, q.battery_mv, q.odometer_m) == (
        p.fix_time, speed, course, ignition, 12340, 4100, 777)
    assert q.latitude == pytest.approx(lat, abs=1e-6) and q.longitude == pytest.approx(lon, abs=1e-6)


# Over real sockets into the database ------------------------------------------------------------


def events(database_url: str, device_id: int) -> list[tuple[object, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT kind, attributes->>'result' FROM device_events WHERE device_id = %s",
                            (device_id,)).fetchall()


async def test_tcp_reports_split_across_writes_and_a_command_answer_are_stored(db_url: str, tmp_path: Path) -> None:
    ids = register(db_url, [(IMEI, "startek")])
    p1, p2 = track(IMEI, 2)
    stream = encode_position(p1, 1) + encode_position(p2, 2) + encode_frame(IMEI, "129", "OK")
    async with running_ingest(settings_for(tmp_path), db_url) as svc:
        _, writer = await asyncio.open_connection("127.0.0.1", svc.tcp["startek"].port)
        try:
            for chunk in (stream[:17], stream[17:150], stream[150:]):
                writer.write(chunk)
                await writer.drain()
            assert await eventually(lambda: len(stored(db_url, ids[IMEI])) == 2 and len(events(db_url, ids[IMEI])) == 1)
        finally:
            writer.close()
    rows = stored(db_url, ids[IMEI])
    assert [r[0] for r in rows] == [p1.fix_time, p2.fix_time]
    assert rows[0][1] == pytest.approx(p1.latitude, abs=1e-6)
    assert [e[1] for e in events(db_url, ids[IMEI])] == ["OK"]
