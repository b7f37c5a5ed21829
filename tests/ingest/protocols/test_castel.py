"""Behaviour of the castel (Castel / Sinocastel IDD-213 ...) decoder: answers byte for byte, the SC,
CC and MPIP message sets, alarms without a fix, OBD data, the CRC policy, several messages in one
frame, framing, bad input, the encoder; and over real TCP and UDP into the database, each answer
checked."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avl.records import Position
from ingest.protocols.base import Session, crc16_x25
from ingest.protocols.castel import (
    PROTOCOL,
    encode_alarm,
    encode_heartbeat,
    encode_login,
    encode_message,
    encode_position,
)
from tests.ingest.harness import register, running_ingest, settings_for, stored, track, udp_exchange
from tests.ingest.protocols.checks import assert_one_line_error, courses, fix_times, latitudes, longitudes
from tests.ingest.protocols.framing import split_all

DEVICE = "213GDP2018021343"
NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
# Corpus frames (../shared/vectors/dev-2.jsonl)
LOGIN_GPS = bytes.fromhex(
    "40408200033231334c32303137303031313039000000000000100136477b5964477b590400000000000000dc410f0000000002040007092079"
    "10008304011c07110e110dd41a160714a95a0f00001e058c4944442d3231334c2056312e312e3120323031372d30352d3038004944442d3231"
    "334c2056312e312e300000006da10d0a")
ALARM_NO_FIX = bytes.fromhex(
    "40404d0004323132474c3131343330303530303300000000004007120000002ca89b55cba99b555c57000000000000c40200000b0000000000"
    "036401111f000102000101170000000068850d0a")
ALARM_FIX = bytes.fromhex(
    "40406600043231334744533230323130303030353200000000400701000000cee93667d0e93667000000000000000000000000000000020400"
    "003e00400000001c010f0b18061b134c96d604106e7218000000000302010900000000011602000000f39a0d0a")
COMPREHENSIVE = bytes.fromhex(
    "40406600043233344c53413230323430303030303400000000401f00581d0000929bda67f5c0db6700000000280000000000000000000082"
    "000000002ec71500002c0114031907112f4c9fd604887472180000b004ff10000200ff00210002003c00d5210d0a")
PID_DATA = bytes.fromhex(
    "40407100043231384c31454332303235303030303032000000400256ad2f697eb22f69af2d2f0184550000d81c0000c60004020400213d29"
    "4b1d00831d0f000d05210b210c210d210f212f21332143214621472149214a21672101115a594908790b62613f0a24190d01820000b84b0d0a")
SLEEP_GPS = bytes.fromhex(
    "40403600043231334e583230313630303033343600000000004009ad31a457050810061a35b29bf80ae6da83180300320bbe32580d0a")
CC_LOGIN = bytes.fromhex(
    "40405c000c363131313530303030393536000000000000000040011c0a0f0e362dca53cd0860831303000000000300000000ff0000000000"
    "00007ba083a650542d3639305f56312e312e320050542d3639302056312e32008a020d0a")
MPIP_GPS = bytes.fromhex(
    "24245000363137313135313243333133360000000000000040011b011207133ac49a390464514a15000000008e480c000009170000000000"
    "00ffafffaf00010000ffff7800ffffffffffffff003c0d0a")
MPIP_INDEXED = bytes.fromhex(
    "24243f00676e6768656636313031313132393030313734002001840d0000d2deb556020602100b35360456cf09e6ebac020000000003000000"
    "0001abc10d0a")


def session(device: str | None = None, transport: str = "tcp") -> Session:
    return Session(transport=transport, device=device, now=lambda: NOW)


def answer(version: int, device_id: bytes, kind: int, content: bytes = b"") -> bytes:
    """A server message built by hand: @@, length, version, id, type, content, CRC-16/X25 (LE), CRLF."""
    inner = bytes([version]) + device_id + kind.to_bytes(2, "big") + content
    head = b"@@" + (len(inner) + 8).to_bytes(2, "little") + inner
    return head + crc16_x25(head).to_bytes(2, "little") + b"\r\n"


def id_of(frame: bytes) -> bytes:
    return frame[5:25]


# Answers ------------------------------------------------------------------------------------


def test_login_is_answered_9001_with_the_server_time_and_keeps_its_gps_record() -> None:
    s = session()
    result = PROTOCOL.decode(LOGIN_GPS, s)
    assert s.device == "213L2017001109"
    assert result.reply == answer(3, id_of(LOGIN_GPS), 0x9001,
                                  b"\xff\xff\xff\xff\x00\x00" + int(NOW.timestamp()).to_bytes(4, "little"))
    [p] = result.positions
    assert p.fix_time == datetime(2017, 7, 28, 14, 17, 13, tzinfo=UTC) and p.valid
    assert p.latitude == pytest.approx(-33.02477, abs=1e-5) and p.longitude == pytest.approx(-71.55549, abs=1e-5)
    assert (p.ignition, p.odometer_m) == (True, 4)


def test_heartbeat_is_answered_9003() -> None:
    frame = encode_heartbeat(DEVICE)
    result = PROTOCOL.decode(frame, session())
    assert result.positions == [] and result.reply == answer(4, id_of(frame), 0x9003)


def test_an_alarm_without_fix_is_answered_with_its_index_and_kept_as_a_status_record() -> None:
    result = PROTOCOL.decode(ALARM_NO_FIX, session())
    assert result.reply == answer(4, id_of(ALARM_NO_FIX), 0xC007, bytes.fromhex("12000000"))
    [p] = result.positions
    assert not p.located and p.fix_time == datetime(2015, 7, 7, 10, 28, 27, tzinfo=UTC)  # the stat block's UTC time
    assert (p.ignition, p.attributes["event"], p.odometer_m) == (False, 0x17, 22364)


def test_an_alarm_with_a_fix_carries_every_alarm_of_the_message() -> None:
    result = PROTOCOL.decode(ALARM_FIX, session())
    assert result.reply == answer(4, id_of(ALARM_FIX), 0xC007, bytes.fromhex("01000000"))
    [p] = result.positions
    assert p.located and not p.valid  # no fix bits: the last known coordinates, kept invalid
    assert (p.alarm, p.ignition) == ("powerOn", True)  # events 0x09 and 0x16


def test_cc_login_and_mpip_messages_get_the_answers_of_their_sets() -> None:
    result = PROTOCOL.decode(CC_LOGIN, session())
    assert result.reply == answer(0x0C, id_of(CC_LOGIN), 0x8001)
    assert result.positions[0].fix_time == datetime(2015, 10, 28, 14, 54, 45, tzinfo=UTC)
    result = PROTOCOL.decode(MPIP_GPS, session())
    assert result.reply == answer(0xFF, MPIP_GPS[4:24], 0x4001)
    assert result.positions[0].latitude == pytest.approx(19.69001, abs=1e-5)
    result = PROTOCOL.decode(MPIP_INDEXED, session())
    inner = MPIP_INDEXED[4:24] + b"\x10\x01" + bytes(4) + b"\xff" * 8
    head = b"@@" + (len(inner) + 8).to_bytes(2, "little") + inner
    assert result.reply == head + crc16_x25(head).to_bytes(2, "little") + b"\r\n"


def test_plain_gps_and_data_messages_get_no_answer() -> None:
    for frame in (encode_position(track(DEVICE, 1)[0]), PID_DATA, COMPREHENSIVE, SLEEP_GPS):
        assert PROTOCOL.decode(frame, session()).reply is None


# Data ---------------------------------------------------------------------------------------


def test_comprehensive_data_adds_voltages_and_temperatures() -> None:
    [p] = PROTOCOL.decode(COMPREHENSIVE, session()).positions
    assert (p.battery_mv, p.attributes["deviceTemp"]) == (600, 25.5)
    assert p.located and p.fix_time == datetime(2025, 3, 20, 7, 17, 47, tzinfo=UTC)


def test_pid_data_is_a_status_record_with_engine_values() -> None:
    [p] = PROTOCOL.decode(PID_DATA, session()).positions
    assert not p.located and p.ignition is True
    assert (p.attributes["rpm"], p.attributes["coolantTemp"], p.attributes["obdSpeed"]) == (2121, 90, 121)


def test_trouble_codes() -> None:
    body = bytes(34) + b"\x00\x02" + bytes.fromhex("0110") + bytes.fromhex("4123")
    [p] = PROTOCOL.decode(encode_message(DEVICE, 0x4006, body), session()).positions
    assert p.attributes["dtcs"] == "P0110 C0123" and p.fix_time == NOW


# CRC policy ---------------------------------------------------------------------------------


def test_a_wrong_crc_is_decoded_flagged_and_still_answered() -> None:
    bad = ALARM_FIX[:-4] + bytes([ALARM_FIX[-4] ^ 0xFF]) + ALARM_FIX[-3:]
    result = PROTOCOL.decode(bad, session())
    assert result.positions[0].attributes["crcMismatch"] is True
    assert result.reply == answer(4, id_of(ALARM_FIX), 0xC007, bytes.fromhex("01000000"))
    assert "crcMismatch" not in PROTOCOL.decode(ALARM_FIX, session()).positions[0].attributes


# Several messages in one frame -------------------------------------------------------------


def test_the_corpus_frame_holding_one_message_twice_is_one_report() -> None:
    assert PROTOCOL.decode(SLEEP_GPS * 2, session()).positions == PROTOCOL.decode(SLEEP_GPS, session()).positions
    assert len(PROTOCOL.decode(SLEEP_GPS * 2, session()).positions) == 1


def test_a_frame_of_different_messages_yields_all_reports_and_answers() -> None:
    p1, p2 = track(DEVICE, 2)
    result = PROTOCOL.decode(encode_position(p1) + encode_alarm(p2, 0x01, index=7), session())
    assert [p.fix_time for p in result.positions] == [p1.fix_time, p2.fix_time]
    assert result.positions[1].alarm == "overspeed"
    assert result.reply == answer(4, id_of(encode_position(p1)), 0xC007, (7).to_bytes(4, "little"))


# Framing ------------------------------------------------------------------------------------


def test_framing_splits_a_stream_skips_garbage_and_keeps_a_partial_message() -> None:
    stream = b"\r\nxx" + LOGIN_GPS + ALARM_NO_FIX + MPIP_GPS + COMPREHENSIVE[:50]
    frames, rest = split_all(PROTOCOL, stream)
    assert frames == [LOGIN_GPS, ALARM_NO_FIX, MPIP_GPS] and rest == COMPREHENSIVE[:50]
    frames, rest = split_all(PROTOCOL, rest + COMPREHENSIVE[50:])
    assert frames == [COMPREHENSIVE] and rest == b""


# Bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("frame", "message"), [
    (b"##" + LOGIN_GPS[2:], "no @@ or $$ message head"),
    (LOGIN_GPS[:2] + b"\x10\x00" + LOGIN_GPS[4:], "does not fit the frame"),
    (LOGIN_GPS[:2] + b"\xff\x00" + LOGIN_GPS[4:], "does not fit the frame"),
    (LOGIN_GPS[:5] + b"\x00" * 20 + LOGIN_GPS[25:], "is not text"),
    (encode_message(DEVICE, 0x4001, b"\x00" * 10), "frame ends inside a field"),
])
def test_bad_messages_are_one_line_decode_errors(frame: bytes, message: str) -> None:
    assert_one_line_error(PROTOCOL, frame, session(), message)


# Encoder ------------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(fix_times, latitudes, longitudes, st.floats(0, 2000), courses, st.integers(0, 15), st.booleans())
def test_encoder_round_trip(when: datetime, lat: float, lon: float, speed: float, course: int, satellites: int,
                            valid: bool) -> None:
    p = Position(device=DEVICE, fix_time=when, valid=valid, latitude=lat,
                 longitude=lon, speed_kmh=speed, course=float(course), satellites=satellites, ignition=True,
                 odometer_m=123456)
    [q] = PROTOCOL.decode(encode_position(p), session()).positions
    assert (q.device, q.fix_time, q.valid, q.satellites, q.ignition, q.odometer_m) == (
        DEVICE, p.fix_time, valid, satellites, True, 123456)
    assert q.latitude == pytest.approx(lat, abs=1e-6) and q.longitude == pytest.approx(lon, abs=1e-6)
    assert q.speed_kmh == pytest.approx(speed, abs=0.04) and q.course == course


# Over real sockets into the database ------------------------------------------------------------


async def test_tcp_login_reports_and_alarm_are_stored_and_answered_after_commit(db_url: str, tmp_path: Path) -> None:
    ids = register(db_url, [(DEVICE, "castel")])
    p1, p2, p3 = track(DEVICE, 3)
    login, alarm = encode_login(DEVICE), encode_alarm(p3, 0x05, index=0x2A)
    async with running_ingest(settings_for(tmp_path), db_url) as svc:
        reader, writer = await asyncio.open_connection("127.0.0.1", svc.tcp["castel"].port)
        try:
            writer.write(login)
            login_answer = await asyncio.wait_for(reader.readexactly(41), 10)
            writer.write(encode_position(p1) + encode_position(p2) + alarm)
            alarm_answer = await asyncio.wait_for(reader.readexactly(35), 10)
            rows_at_answer = stored(db_url, ids[DEVICE])
        finally:
            writer.close()
    server_time = datetime.fromtimestamp(int.from_bytes(login_answer[33:37], "little"), UTC)
    assert login_answer == answer(4, id_of(login), 0x9001, b"\xff\xff\xff\xff\x00\x00" + login_answer[33:37])
    assert abs((server_time - datetime.now(UTC)).total_seconds()) < 600
    assert alarm_answer == answer(4, id_of(alarm), 0xC007, (0x2A).to_bytes(4, "little"))
    assert [r[0] for r in rows_at_answer] == [p1.fix_time, p2.fix_time, p3.fix_time]
    assert rows_at_answer[0][1] == pytest.approx(p1.latitude, abs=1e-6)


async def test_udp_heartbeat_and_alarm_are_answered_and_the_alarm_stored(db_url: str, tmp_path: Path) -> None:
    ids = register(db_url, [(DEVICE, "castel")])
    [p] = track(DEVICE, 1)
    heartbeat, alarm = encode_heartbeat(DEVICE), encode_alarm(p, 0x01, index=3)
    async with running_ingest(settings_for(tmp_path), db_url) as svc:
        beat = await udp_exchange(svc.udp["castel"].port, heartbeat)
        answered = await udp_exchange(svc.udp["castel"].port, alarm)
    assert beat == answer(4, id_of(heartbeat), 0x9003)
    assert answered == answer(4, id_of(alarm), 0xC007, (3).to_bytes(4, "little"))
    assert [r[0] for r in stored(db_url, ids[DEVICE])] == [p.fix_time]
