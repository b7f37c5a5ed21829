"""Behaviour of the gps103 (Coban ``imei:``) decoder: answers byte for byte, the local-clock
offset, field mapping, framing, bad input, the encoder round trip; and over real TCP and UDP
into the database, each answer checked."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avl.records import Position
from ingest.protocols.base import FrameError, Session
from ingest.protocols.gps103 import PROTOCOL, encode_login, encode_position
from tests.ingest.harness import register, running_ingest, settings_for, stored, track, udp_exchange
from tests.ingest.protocols.framing import split_all
from tests.ingest.protocols.refusals import decode_error

NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
IMEI = "359710045559474"
REPORT = b"imei:359710045559474,tracker,151030080103,,F,000101.000,A,5443.3834,N,02512.9071,E,0.00,0;"


def session(device: str | None = None, transport: str = "tcp") -> Session:
    return Session(transport=transport, device=device, now=lambda: NOW)


# Answers ------------------------------------------------------------------------------


def test_handshake_is_answered_load_and_identifies_the_unit() -> None:
    s = session()
    result = PROTOCOL.decode(b"##,imei:359586015829802,A", s)
    assert (result.reply, result.positions, s.device) == (b"LOAD", [], "359586015829802")


def test_a_bare_imei_heartbeat_is_answered_on() -> None:
    s = session()
    result = PROTOCOL.decode(b"359586015829802", s)
    assert (result.reply, result.positions, s.device) == (b"ON", [], "359586015829802")


def test_a_heartbeat_glued_to_a_report_is_answered_on_and_the_report_kept() -> None:
    result = PROTOCOL.decode(b"359769031878322imei:359769031878322,tracker,1602160718,2,F,221811.000,A,"
                             b"1655.2193,S,14546.6722,E,0.00,,", session())
    assert result.reply == b"ON"
    [p] = result.positions
    assert p.fix_time == datetime(2016, 2, 15, 22, 18, 11, tzinfo=UTC)  # local 07:18 next day, UTC+9


def test_sos_is_answered_with_the_acknowledgement_the_unit_expects() -> None:
    result = PROTOCOL.decode(b"imei:359586015829802,help me,0809231429,13554900601,F,062947.294,A,2234.4026,N,"
                             b"11354.3277,E,0.00,", session())
    assert result.reply == b"**,imei:359586015829802,E;"
    assert result.positions[0].alarm == "sos"


def test_ordinary_reports_get_no_answer() -> None:
    assert PROTOCOL.decode(REPORT, session()).reply is None


# Fields -------------------------------------------------------------------------------


def test_the_fix_time_is_the_local_clock_moved_by_its_offset_from_utc() -> None:
    [p] = PROTOCOL.decode(REPORT, session()).positions
    # local 2015-10-30 08:01, GPS 00:01:01 UTC: the unit runs UTC+8.
    assert p.fix_time == datetime(2015, 10, 30, 0, 1, 1, tzinfo=UTC)
    assert p.valid and p.latitude == pytest.approx(54.72306) and p.longitude == pytest.approx(25.21512)


def test_full_report_fields() -> None:
    [p] = PROTOCOL.decode(b"imei:760112011448012,001,2001151918,,F,191833.000,A,6136.6174,N,2126.9901,E,10.00,"
                          b"202.6,-0.1,1,0,10.5%,0.0%,20;", session()).positions
    assert p.speed_kmh == pytest.approx(18.52) and (p.course, p.altitude_m, p.ignition) == (202.6, -0.1, True)
    assert p.attributes == {"event": "001", "door": False, "fuel1": 10.5, "fuel2": 0.0, "temp1": 20}


@pytest.mark.parametrize(("keyword", "expected"), [
    ("acc on", {"ignition": True}),
    ("acc off", {"ignition": False}),
    ("ac alarm", {"alarm": "powerCut"}),
    ("stockade", {"alarm": "geofence"}),
    ("T:+21.5", {"alarm": "temperature", "temp1": 21.5}),
    ("oil 51.67", {"alarm": "fuelLeak", "fuel": 51.67}),
])
def test_keywords(keyword: str, expected: dict[str, object]) -> None:
    frame = f"imei:353451044508750,{keyword},0809231929,,F,055403.000,A,2233.1870,N,11354.3067,E,0.00,,".encode()
    [p] = PROTOCOL.decode(frame, session()).positions
    got = {"ignition": p.ignition, "alarm": p.alarm, **p.attributes}
    assert {key: got.get(key) for key in expected} == expected


def test_without_gps_the_cell_is_kept_as_a_status_record() -> None:
    [p] = PROTOCOL.decode(b"imei:359710049075097,help me,,,L,,,113b,,558f,,,,,0,0,,,", session()).positions
    assert not p.located and p.fix_time == NOW and p.alarm == "sos"
    assert p.attributes["network"] == {"cellTowers": [{"locationAreaCode": 0x113B, "cellId": 0x558F}]}


def test_obd_report_is_a_status_record() -> None:
    [p] = PROTOCOL.decode(b"imei:359710049057798,OBD,161003192752,1785,,,0,54,96.47%,75,20.00%,1892,12.60,"
                          b"P0134,P0571,,;", session()).positions
    assert not p.located and p.fix_time == datetime(2016, 10, 3, 19, 27, 52, tzinfo=UTC)
    assert (p.odometer_m, p.battery_mv) == (1785, 12600)
    assert p.attributes["dtcs"] == "P0134 P0571" and p.attributes["rpm"] == 1892


def test_alternative_layout() -> None:
    [p] = PROTOCOL.decode(b"imei:861359038609986,Equipo 1,---,------,----,214812,241018,14,1,-33.42317,-70.61930,"
                          b"036,090,0550,0.9,08,1,1,---,*", session()).positions
    assert p.fix_time == datetime(2018, 10, 24, 21, 48, 12, tzinfo=UTC)
    assert (p.valid, p.latitude, p.longitude, p.speed_kmh, p.satellites, p.ignition) == (
        True, -33.42317, -70.6193, 36.0, 8, True)


# Framing and bad input ------------------------------------------------------------------


def test_framing_cuts_at_each_delimiter() -> None:
    stream = b"##,imei:359586015829802,A;359586015829802\r\n" + REPORT + b"imei:1,L,*imei:2"
    frames, rest = split_all(PROTOCOL, stream)
    assert frames == [b"##,imei:359586015829802,A", b"359586015829802", REPORT[:-1], b"imei:1,L,"]
    assert rest == b"imei:2"


def test_an_endless_message_is_cut_off() -> None:
    with pytest.raises(FrameError):
        PROTOCOL.split(b"imei:" + b"1" * PROTOCOL.max_frame)


@pytest.mark.parametrize(("frame", "message"), [
    (b"hello there, this is not a gps103 report at all", "not an imei: report"),
    (b"imei:359710045559474,tracker,151030080103,,F,000101.000,A,54x3.3834,N,02512.9071,E,0.00,0", "not readable"),
    (b"imei:359710045559474,tracker,151330080103,,F,000101.000,A,5443.3834,N,02512.9071,E,0.00,0", "malformed"),
    (b"imei:359710045559474,tracker,,,F,000101.000,A,5443.3834,N,02512.9071,E,0.00,0", "no local date"),
])
def test_bad_reports_are_one_line_decode_errors(frame: bytes, message: str) -> None:
    assert message in decode_error(PROTOCOL, frame, session())


# Encoder ------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2099, 12, 31)),
       st.floats(-89.9, 89.9), st.floats(-179.9, 179.9), st.floats(0, 300), st.booleans(), st.booleans())
def test_encoder_round_trip(when: datetime, lat: float, lon: float, speed: float, valid: bool, ignition: bool) -> None:
    p = Position(device=IMEI, fix_time=when.replace(microsecond=0, tzinfo=UTC), valid=valid, latitude=lat,
                 longitude=lon, speed_kmh=speed, course=123.0, altitude_m=900.0, ignition=ignition)
    s = session()
    assert PROTOCOL.decode(split_all(PROTOCOL, encode_login(IMEI))[0][0], s).reply == b"LOAD"
    [frame], _ = split_all(PROTOCOL, encode_position(p))
    [q] = PROTOCOL.decode(frame, s).positions
    assert (q.device, q.fix_time, q.valid, q.course, q.altitude_m, q.ignition) == (
        IMEI, p.fix_time, valid, 123.0, 900.0, ignition)
    assert q.latitude == pytest.approx(lat, abs=2e-6) and q.longitude == pytest.approx(lon, abs=2e-6)
    assert q.speed_kmh == pytest.approx(speed, abs=0.01)


# Over real sockets into the database ----------------------------------------------------


async def test_tcp_handshake_reports_and_sos_are_stored_and_answered(db_url: str, tmp_path: Path) -> None:
    ids = register(db_url, [(IMEI, "gps103")])
    p1, p2, p3 = track(IMEI, 3)
    sos = encode_position(p3).replace(b",tracker,", b",help me,")
    async with running_ingest(settings_for(tmp_path), db_url) as svc:
        reader, writer = await asyncio.open_connection("127.0.0.1", svc.tcp["gps103"].port)
        try:
            writer.write(encode_login(IMEI))
            load = await asyncio.wait_for(reader.readexactly(4), 10)
            writer.write(encode_position(p1) + IMEI.encode() + b";" + encode_position(p2))
            on = await asyncio.wait_for(reader.readexactly(2), 10)
            writer.write(sos)
            ack = await asyncio.wait_for(reader.readexactly(26), 10)
        finally:
            writer.close()
    assert (load, on, ack) == (b"LOAD", b"ON", f"**,imei:{IMEI},E;".encode())
    rows = stored(db_url, ids[IMEI])
    assert [r[0] for r in rows] == [p1.fix_time, p2.fix_time, p3.fix_time]
    assert rows[0][1] == pytest.approx(p1.latitude, abs=2e-6)


async def test_udp_reports_are_stored(db_url: str, tmp_path: Path) -> None:
    ids = register(db_url, [(IMEI, "gps103")])
    p1, p2 = track(IMEI, 2)
    async with running_ingest(settings_for(tmp_path), db_url) as svc:
        port = svc.udp["gps103"].port
        load = await udp_exchange(port, encode_login(IMEI))
        await udp_exchange(port, encode_position(p1), wait_s=0.01)  # sent; an ordinary report gets no answer
        sos = await udp_exchange(port, encode_position(p2).replace(b",tracker,", b",help me,"))
    assert (load, sos) == (b"LOAD", f"**,imei:{IMEI},E;".encode())
    assert [r[0] for r in stored(db_url, ids[IMEI])] == [p1.fix_time, p2.fix_time]
