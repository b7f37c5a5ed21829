"""Behaviour of the jt600 (Jointech) decoder: answers byte for byte, binary report forms and their
fields, text messages (U0x, W01, P45, WLNET), escapes, framing, bad input, the encoders; and over
real TCP into the database, each answer checked."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avl.records import Position
from ingest.protocols.base import Session
from ingest.protocols.jt600 import PROTOCOL, encode_binary, encode_position, escape, unescape
from tests.ingest.harness import register, running_ingest, settings_for, stored, track
from tests.ingest.protocols.checks import assert_one_line_error, fix_times, latitudes, longitudes
from tests.ingest.protocols.framing import split_all

DEVICE = "3460311327"
NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
# Corpus frames (../shared/vectors/dev-2.jsonl)
U01 = b"(3460311327,U01,220916,135251,T,9.552607,N,13.658292,W,0.31,0,9,0%,00001001000000,11012,10,27,0,0,33)"
U06 = (b"(3460311327,U06,11,220916,135643,T,9.552553,N,13.658265,W,0.61,0,9,100%,00000001000000,11012,10,30,0,0,126,"
       b"0,30)")
P45 = b"(2050018634,P45,051124,204046,9.861502,N,83.950336,W,A,1,0,1,1,0012260888,0,0,0)"
W01 = b"(3110312099,W01,11404.6204,E,2232.9961,N,A,040511,063736,4,7,100,4,17,1,1,company)"
SHORT_V1 = bytes.fromhex("24311021600111001b16021105591022329862114046227b0598095080012327951435161f")
LONG_ANSWER = bytes.fromhex("2475201509261611002313101503464722331560113555309f00000000002d0500cb206800f064109326381a03")
SHORT_V2_SIX = bytes.fromhex(
    "2440811188882400a209060908045322564025113242329f0598000001003f0000002d0009060908050322564025113242329f059800000100"
    "3f0000002d0009060908051322564025113242329f0598000001003f0000002d0009060908052322564025113242329f0598000001003f0000"
    "002d0009060908053322564025113242329f0598000001003f0000002d0009060908054322564025113242329f0598000001003f0000002d00"
    "1f")
WLNET_WIRE = bytes.fromhex("28373530303331333630392c32332c32392c574c4e45542c352c322c22071916311822350966113549495e1f2322"
                           "07191622591190702002fe0117623c0101134700000029")
WLNET_ESCAPED = bytes.fromhex(
    "28383035343230313937332c312c3136382c574c4e45542c352c322c3d15022508595325169288057327940900003d150225085955102122"
    "0618730140644701011d4300000029")


def session(device: str | None = None) -> Session:
    return Session(transport="tcp", device=device, now=lambda: NOW)


# Answers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("frame", "reply"), [
    (U01, b"(S39)"), (U01.replace(b"U01", b"U02"), b"(S39)"), (U01.replace(b"U01", b"U03"), b"(S39)"),
    (U06, b"(S20)"), (P45, b"(P69,0,0)"), (W01, None), (SHORT_V1, None), (SHORT_V2_SIX, None),
    (LONG_ANSWER, b"(P35)"), (b"(3301210003,U04)", None), (b"(3460311327,@JT)", None),
])
def test_each_message_gets_its_answer(frame: bytes, reply: bytes | None) -> None:
    assert PROTOCOL.decode(frame, session()).reply == reply


def test_a_binary_report_asking_for_an_answer_from_protocol_19_gets_p69_with_its_index() -> None:
    [p] = track("6221107674", 1)
    frame = encode_binary(p, 0x42, answer=True)
    assert PROTOCOL.decode(frame, session()).reply == b"(P35)"
    v19 = frame[:6] + b"\x19" + frame[7:]
    assert PROTOCOL.decode(v19, session()).reply == b"(P69,0,66)"
    assert PROTOCOL.decode(encode_binary(p, 1), session()).reply is None


def test_u04_and_heartbeats_identify_the_unit_and_keep_nothing() -> None:
    s = session()
    result = PROTOCOL.decode(b"(3301210003,U04)", s)
    assert (result.positions, s.device) == ([], "3301210003")


# Fields -------------------------------------------------------------------------------------


def test_u01_fields_speed_in_mph_and_cell() -> None:
    s = session()
    [p] = PROTOCOL.decode(U01, s).positions
    assert s.device == DEVICE
    assert (p.fix_time, p.valid) == (datetime(2016, 9, 22, 13, 52, 51, tzinfo=UTC), True)
    assert (p.latitude, p.longitude, p.satellites) == (9.552607, -13.658292, 9)
    assert p.speed_kmh == pytest.approx(0.31 * 1.609344)
    assert p.attributes["network"]["cellTowers"][0] == {"cellId": 11012, "locationAreaCode": 10, "signalStrength": 27}
    assert p.attributes["status"] == 0b00001001000000


def test_u06_carries_its_alarm_number() -> None:
    [p] = PROTOCOL.decode(U06, session()).positions
    assert p.attributes["event"] == 11 and p.attributes["batteryLevel"] == 100


def test_p45_lock_report_names_the_card() -> None:
    [p] = PROTOCOL.decode(P45, session()).positions
    assert p.attributes["driverUniqueId"] == "0012260888" and p.attributes["event"] == 1
    assert (p.latitude, p.longitude) == (9.861502, -83.950336)


def test_w01_reference_values() -> None:
    [p] = PROTOCOL.decode(W01, session()).positions
    assert p.fix_time == datetime(2011, 5, 4, 6, 37, 36, tzinfo=UTC) and p.valid
    assert p.latitude == pytest.approx(22.54994, abs=1e-5) and p.longitude == pytest.approx(114.07701, abs=1e-5)


def test_short_binary_report_reference_values() -> None:
    s = session()
    [p] = PROTOCOL.decode(SHORT_V1, s).positions
    assert s.device == "3110216001"
    assert p.fix_time == datetime(2011, 2, 16, 5, 59, 10, tzinfo=UTC) and p.valid
    assert p.latitude == pytest.approx(22.54977, abs=1e-5) and p.longitude == pytest.approx(-114.07705, abs=1e-5)
    assert p.speed_kmh == pytest.approx(5 * 1.852) and (p.course, p.satellites, p.altitude_m) == (304.0, 9, 291.0)


def test_a_version_2_report_carries_six_records() -> None:
    positions = PROTOCOL.decode(SHORT_V2_SIX, session()).positions
    assert len(positions) == 6 and positions[0].odometer_m == 45000 and positions[0].attributes["charge"] is True
    assert [p.fix_time.second for p in positions] == [53, 3, 13, 23, 33, 43]


def test_long_report_status_alarms_and_battery() -> None:
    [p] = PROTOCOL.decode(LONG_ANSWER, session()).positions
    assert (p.alarm, p.satellites, p.odometer_m, p.attributes["batteryLevel"]) == ("vibration", 5, 45000, 100)


def test_wlnet_sensor_report_carries_its_temperature() -> None:
    [p] = PROTOCOL.decode(WLNET_WIRE, session()).positions
    assert p.attributes["temp1"] == 27.5 and p.fix_time == datetime(2019, 7, 22, 16, 31, 18, tzinfo=UTC)
    assert p.speed_kmh is None  # 0x1F is not BCD


# Escapes and framing --------------------------------------------------------------------------


def test_the_framer_restores_escaped_bytes_inside_text_messages() -> None:
    frames, rest = split_all(PROTOCOL, WLNET_ESCAPED)
    assert rest == b"" and frames == [unescape(WLNET_ESCAPED)]
    assert frames[0].count(b"(") == 3  # the frame's own and two inside the binary data
    [p] = PROTOCOL.decode(frames[0], session()).positions
    assert p.attributes["temp1"] == 28.5 and p.latitude == pytest.approx(-25.282147, abs=1e-6)
    assert unescape(escape(b"a(b)c,d=e")) == b"a(b)c,d=e"


def test_framing_splits_binary_and_text_skips_garbage_and_keeps_a_partial_report() -> None:
    stream = b"\r\n" + SHORT_V1 + U01 + LONG_ANSWER + P45 + SHORT_V2_SIX[:30]
    frames, rest = split_all(PROTOCOL, stream)
    assert frames == [SHORT_V1, U01, LONG_ANSWER, P45] and rest == SHORT_V2_SIX[:30]
    frames, rest = split_all(PROTOCOL, rest + SHORT_V2_SIX[30:])
    assert frames == [SHORT_V2_SIX] and rest == b""


# Bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("frame", "message"), [
    (b"#1234", "neither a $ report nor a ( message"),
    (b"$\xab" + SHORT_V1[2:], "is not BCD"),
    (SHORT_V1[:9], "too short"),
    (SHORT_V1[:30], "frame ends inside a field"),
    (U01[:-1], "does not end with )"),
    (b"(abc,U04)", "is not a number"),
    (b"(3460311327,U01,320916,135251,T,9.5,N,13.6,W,0.31,0,9,0%,0,1,1,27,0,0)", "malformed message"),
])
def test_bad_messages_are_one_line_decode_errors(frame: bytes, message: str) -> None:
    assert_one_line_error(PROTOCOL, frame, session(), message)


# Encoders -----------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(fix_times, latitudes, longitudes, st.integers(0, 99), st.integers(0, 179), st.booleans())
def test_binary_encoder_round_trip(when: datetime, lat: float, lon: float, knots: int, half_course: int,
                                   valid: bool) -> None:
    p = Position(device="6221107674", fix_time=when, valid=valid, latitude=lat,
                 longitude=lon, speed_kmh=knots * 1.852, course=half_course * 2.0, satellites=7, odometer_m=9000)
    [frame], rest = split_all(PROTOCOL, encode_binary(p, 5))
    [q] = PROTOCOL.decode(frame, session()).positions
    assert rest == b"" and (q.device, q.fix_time, q.valid, q.course, q.satellites) == (
        "6221107674", p.fix_time, valid, p.course, 7)
    assert q.latitude == pytest.approx(lat, abs=2e-6) and q.longitude == pytest.approx(lon, abs=2e-6)
    assert q.speed_kmh == pytest.approx(knots * 1.852)


# Over real sockets into the database ------------------------------------------------------------


async def test_tcp_text_and_binary_reports_are_stored_and_answered_after_commit(db_url: str, tmp_path: Path) -> None:
    ids = register(db_url, [(DEVICE, "jt600")])
    p1, p2 = track(DEVICE, 2)
    async with running_ingest(settings_for(tmp_path), db_url) as svc:
        reader, writer = await asyncio.open_connection("127.0.0.1", svc.tcp["jt600"].port)
        try:
            writer.write(encode_position(p1, 1))
            s39 = await asyncio.wait_for(reader.readexactly(5), 10)
            writer.write(encode_binary(p2, 2, answer=True))
            p35 = await asyncio.wait_for(reader.readexactly(5), 10)
        finally:
            writer.close()
    assert (s39, p35) == (b"(S39)", b"(P35)")
    rows = stored(db_url, ids[DEVICE])
    assert [r[0] for r in rows] == [p1.fix_time, p2.fix_time]
    assert rows[0][1] == pytest.approx(p1.latitude, abs=1e-6) and rows[1][1] == pytest.approx(p2.latitude, abs=2e-6)
