"""Behaviour of the xirgo decoder: old and new fixed layouts, units configured with a field list
(the ``form`` option), events, the UDP acknowledgement, framing, bad input, the encoder; and over
real TCP and UDP into the database, the UDP answer checked."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avl.records import Position
from ingest.protocols.base import FrameError, Session
from ingest.protocols.xirgo import PROTOCOL, encode_position
from tests.ingest.harness import eventually, register, running_ingest, settings_for, stored, track, udp_exchange
from tests.ingest.protocols.checks import assert_one_line_error, courses, fix_times, latitudes, longitudes
from tests.ingest.protocols.framing import split_all

IMEI = "357207059646786"
NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
FORM = "UID,EV,D,T,LT,LN,AL,GSPT,HD,SV,HP,BV,CQ,GS,SI,IG,OT"
# Corpus frames (../shared/vectors/dev-2.jsonl)
OLD = b"$$357207059646786,4003,2015/05/19,15:55:27,-20.21421,-70.14920,33.6,0.4,0.0,11,0.8,12.9,31,297,1,0,0.0,0.0,0,1,1,1##"
NEW = (b"$$352054058132185,6011,2017/04/21,04:57:10,32.49658,-116.85957,250.9,0,0,0,602,0.0,12,0.8,765876,7.0,14.1,21,"
       b"1,1,0011,10.1,0.0,5,170917890,280,255,627,0,100,167##")
NEW_SHORT = (b"$$355922061611345,6001,2016/08/25,20:10:38,51.12948,-114.22637,1203,34.8,0.0,0.0,1377,215,12,0.8,1,0.0,"
             b"13.8,28,1,0,0.0,-309,-566,754##")
CUSTOM = b"$$184800793,4002,03/30/2019,02:10:13,46.848600,-114.022256,9723,0.0,1645,17,1.2,13.283,18,3,89011703278246523594,2,0##"
CUSTOM_INFO = b"$$184800619,6115,Y1z1.1179AA2.3.7c79d34,,,000##"


def session(transport: str = "tcp", **options: object) -> Session:
    return Session(transport=transport, options=dict(options), now=lambda: NOW)


def test_old_layout_fields() -> None:
    s = session()
    [p] = PROTOCOL.decode(OLD, s).positions
    assert s.device == IMEI
    assert (p.fix_time, p.valid, p.latitude, p.longitude) == (datetime(2015, 5, 19, 15, 55, 27, tzinfo=UTC), True,
                                                              -20.21421, -70.1492)
    assert p.speed_kmh == pytest.approx(0.4 * 1.609344) and p.odometer_m == round(297 * 1609.344)
    assert (p.ignition, p.satellites, p.hdop, p.power_mv, p.attributes["event"]) == (True, 11, 0.8, 12900, 4003)


def test_new_layout_fields_with_and_without_engine_data() -> None:
    [p] = PROTOCOL.decode(NEW, session()).positions
    assert (p.ignition, p.power_mv, p.altitude_m, p.satellites) == (True, 14100, 250.9, 12)
    assert (p.attributes["in3"], p.attributes["out1"], p.attributes["coolantTemp"]) == (1, 1, 167)
    [q] = PROTOCOL.decode(NEW_SHORT, session()).positions
    assert q.speed_kmh == pytest.approx(34.8 * 1.609344) and q.course == 215.0 and "coolantTemp" not in q.attributes


def test_a_unit_with_a_field_list_is_read_by_its_form() -> None:
    [p] = PROTOCOL.decode(CUSTOM, session(form=FORM)).positions
    assert p.device == "184800793" and p.fix_time == datetime(2019, 3, 30, 2, 10, 13, tzinfo=UTC)
    assert (p.latitude, p.longitude, p.altitude_m, p.speed_kmh, p.course) == (46.8486, -114.022256, 9723.0, 0.0, 164.5)
    assert (p.satellites, p.hdop, p.power_mv, p.valid, p.ignition) == (17, 1.2, 13283, True, False)
    assert p.attributes["iccid"] == "89011703278246523594"


def test_without_the_form_option_a_field_list_message_is_not_a_report() -> None:
    s = session()
    assert PROTOCOL.decode(CUSTOM, s).positions == [] and s.device == "184800793"


def test_an_information_message_shorter_than_the_form_identifies_the_unit_only() -> None:
    s = session(form=FORM)
    assert PROTOCOL.decode(CUSTOM_INFO, s).positions == [] and s.device == "184800619"


@pytest.mark.parametrize(("event", "expected"), [
    (6002, {"alarm": "overspeed"}), (6009, {"alarm": "powerCut"}), (6010, {"alarm": "powerRestored"}),
    (6017, {"alarm": "tow"}), (6011, {"ignition": True}), (4004, {"ignition": False}),
])
def test_events(event: int, expected: dict[str, object]) -> None:
    [p] = PROTOCOL.decode(encode_position(track(IMEI, 1)[0], event=event), session()).positions
    assert {k: getattr(p, k) for k in expected} == expected


# The UDP acknowledgement ----------------------------------------------------------------------


def test_over_udp_a_message_ending_with_a_sequence_is_acknowledged() -> None:
    frame = encode_position(track(IMEI, 1)[0], sequence=812, event=6002)
    assert PROTOCOL.decode(frame, session("udp")).reply == b"!UDP_ACK,6002,812"
    assert PROTOCOL.decode(frame, session("tcp")).reply is None  # TCP units expect nothing
    [cut], _ = split_all(PROTOCOL, frame)
    assert PROTOCOL.decode(cut, session("udp")).reply is None  # without its ## it is not the UDP form


# Framing ------------------------------------------------------------------------------------


def test_framing_cuts_at_the_end_marker_and_keeps_a_partial_message() -> None:
    frames, rest = split_all(PROTOCOL, b"\r\n" + OLD + b"\r\n" + NEW + CUSTOM[:30])
    assert frames == [OLD[:-2], NEW[:-2]] and rest == CUSTOM[:30]


def test_an_endless_message_is_cut_off() -> None:
    with pytest.raises(FrameError):
        PROTOCOL.split(b"$$1," + b"9" * 5000)


# Bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("frame", "form", "message"), [
    (b"hello", None, "does not start with $$"),
    (b"$$abc,4001##", None, "neither the old nor the new fixed layout"),
    (OLD.replace(b"2015/05/19", b"2015/13/19"), None, "malformed message"),
    (OLD.replace(b"-20.21421", b"-99.21421"), None, "out of range"),
    (CUSTOM, "UID,EV,,,LT,LN", "has no D and T fields"),
    (CUSTOM.replace(b"03/30/2019", b"03-30-2019"), FORM, "malformed message"),
])
def test_bad_messages_are_one_line_decode_errors(frame: bytes, form: str | None, message: str) -> None:
    s = session(form=form) if form else session()
    assert_one_line_error(PROTOCOL, frame, s, message)


# Encoder ------------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(fix_times, latitudes, longitudes, st.floats(0, 300), courses, st.booleans())
def test_encoder_round_trip(when: datetime, lat: float, lon: float, speed: float, course: int, ignition: bool) -> None:
    p = Position(device=IMEI, fix_time=when, valid=True, latitude=lat,
                 longitude=lon, speed_kmh=speed, course=float(course), satellites=9, hdop=0.8, ignition=ignition,
                 power_mv=12600)
    [q] = PROTOCOL.decode(encode_position(p), session()).positions
    assert (q.fix_time, q.course, q.ignition, q.power_mv, q.satellites) == (p.fix_time, course, ignition, 12600, 9)
    assert q.latitude == pytest.approx(lat, abs=1e-5) and q.longitude == pytest.approx(lon, abs=1e-5)
    assert q.speed_kmh == pytest.approx(speed, abs=0.1)


# Over real sockets into the database ------------------------------------------------------------


async def test_tcp_reports_are_stored(db_url: str, tmp_path: Path) -> None:
    ids = register(db_url, [(IMEI, "xirgo")])
    p1, p2 = track(IMEI, 2)
    async with running_ingest(settings_for(tmp_path), db_url) as svc:
        _, writer = await asyncio.open_connection("127.0.0.1", svc.tcp["xirgo"].port)
        try:
            writer.write(encode_position(p1) + b"\r\n" + encode_position(p2)[:50])
            writer.write(encode_position(p2)[50:] + b"\r\n")
            await writer.drain()
            assert await eventually(lambda: len(stored(db_url, ids[IMEI])) == 2)
        finally:
            writer.close()
    rows = stored(db_url, ids[IMEI])
    assert [r[0] for r in rows] == [p1.fix_time, p2.fix_time]
    assert rows[1][1] == pytest.approx(p2.latitude, abs=1e-5)


async def test_udp_reports_are_acknowledged_after_they_are_stored(db_url: str, tmp_path: Path) -> None:
    ids = register(db_url, [(IMEI, "xirgo")])
    [p] = track(IMEI, 1)
    async with running_ingest(settings_for(tmp_path), db_url) as svc:
        reply = await udp_exchange(svc.udp["xirgo"].port, encode_position(p, sequence=77))
        rows_at_answer = stored(db_url, ids[IMEI])
    assert reply == f"!UDP_ACK,{4001 if p.ignition else 4002},77".encode()
    assert [r[0] for r in rows_at_answer] == [p.fix_time]
