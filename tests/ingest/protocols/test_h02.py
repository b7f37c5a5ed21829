"""Behaviour of the h02 decoder: replies, field mapping, framing, bad input, encoder round trip."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avl.records import Position
from ingest.protocols.base import DecodeError, FrameError, Session
from ingest.protocols.h02 import PROTOCOL, encode_login, encode_position
from tests.ingest.protocols.framing import split_all

NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


def session(device: str | None = None, **options: str) -> Session:
    return Session(device=device, options=dict(options), now=lambda: NOW)


def v1(status: str = "FFFFFBFF", device: str = "1234567890", tail: str = "") -> bytes:
    return (f"*HQ,{device},V1,101112,A,4807.0380,N,01131.0000,W,10.00,90,010224,{status}{tail}#").encode()


def binary_frame(device: str = "4106000826", flags: int = 0xE, battery: int = 6, extra: bytes = b"\xff\x00\x00") -> bytes:
    """A binary report: 2024-02-01 10:11:12, 48 07.0380, 011 31.0000, 12 kn, course 123."""
    body = bytes.fromhex(device + "101112" + "010224" + "48070380")
    body += bytes((battery,)) + bytes.fromhex(f"011310000{flags:x}")
    body += bytes.fromhex("012123" + "fffffbff")
    return b"$" + body + extra


# Replies ------------------------------------------------------------------------


def test_heartbeat_is_echoed_up_to_its_type_and_keeps_battery_level() -> None:
    result = PROTOCOL.decode(b"*HQ,865205030000001,HTBT,85#", session())
    assert result.reply == b"*HQ,865205030000001,HTBT#"
    [record] = result.positions
    assert record.device == "865205030000001"
    assert not record.located
    assert record.attributes == {"batteryLevel": 85}
    assert record.fix_time == NOW


def test_v0_heartbeat_is_echoed() -> None:
    result = PROTOCOL.decode(b"*HQ,4210051415,V0#", session())
    assert result.reply == b"*HQ,4210051415,V0#"
    assert result.positions == []


def test_v1_gets_v4_reply_with_server_utc_time() -> None:
    result = PROTOCOL.decode(v1(), session())
    assert result.reply == b"*HQ,1234567890,V4,V1,20240506070809#"


def test_nbr_gets_v4_reply_and_a_status_record() -> None:
    frame = b"*HQ,1600068860,NBR,120156,262,03,255,2,802,54702,46,802,5032,37,081124,FFFFFFFE#"
    result = PROTOCOL.decode(frame, session())
    assert result.reply == b"*HQ,1600068860,V4,NBR,20240506070809#"
    [record] = result.positions
    assert not record.located
    assert record.fix_time == datetime(2024, 11, 8, 12, 1, 56, tzinfo=UTC)
    assert record.alarm == "vibration"


def test_other_reports_are_acked_with_r12_only_when_enabled() -> None:
    frame = b"*HQ,1600068860,LINK,112137,20,8,67,0,0,081116,FFFFFBFF#"
    assert PROTOCOL.decode(frame, session()).reply is None
    assert PROTOCOL.decode(frame, session(ack="true")).reply == b"*HQ,1600068860,R12,070809#"


def test_binary_frames_get_no_reply() -> None:
    assert PROTOCOL.decode(binary_frame(), session()).reply is None


# Field mapping --------------------------------------------------------------------


def test_v1_fields() -> None:
    result = PROTOCOL.decode(v1(tail=",1200,25,50.5,320,1a2b,3c4d"), session())
    [p] = result.positions
    assert p.device == "1234567890"
    assert p.fix_time == datetime(2024, 2, 1, 10, 11, 12, tzinfo=UTC)
    assert p.valid is True
    assert p.latitude == pytest.approx(48.1173)
    assert p.longitude == pytest.approx(-(11 + 31 / 60))
    assert p.speed_kmh == pytest.approx(18.52)
    assert p.course == 90
    assert p.ignition is False
    assert p.alarm is None
    assert p.odometer_m == 1200
    assert p.altitude_m == 320
    assert p.attributes["status"] == 0xFFFFFBFF
    assert p.attributes["temp1"] == 25
    assert p.attributes["fuel"] == 50.5


def test_frame_without_trailing_hash_or_with_crlf_decodes_the_same() -> None:
    whole = PROTOCOL.decode(v1(), session()).positions[0]
    bare = PROTOCOL.decode(v1().rstrip(b"#"), session()).positions[0]
    crlf = PROTOCOL.decode(v1() + b"\r\n", session()).positions[0]
    assert (whole.latitude, whole.fix_time) == (bare.latitude, bare.fix_time) == (crlf.latitude, crlf.fix_time)


@pytest.mark.parametrize(
    ("status", "alarm", "ignition"),
    [
        ("FFFFFFFE", "vibration", True),
        ("FFFFFFFD", "sos", True),
        ("FFFBFFFF", "sos", True),
        ("FFFFFFFB", "overspeed", True),
        ("FFF7FBFF", "powerCut", False),
        ("FFFFFFFF", None, True),
    ],
)
def test_status_word_is_active_low(status: str, alarm: str | None, ignition: bool) -> None:
    [p] = PROTOCOL.decode(v1(status), session()).positions
    assert p.alarm == alarm
    assert p.ignition is ignition


def test_free_fields_after_status_become_io_attributes() -> None:
    [p] = PROTOCOL.decode(v1(tail=",310,260, 12,ab"), session()).positions
    assert [p.attributes[f"io{i}"] for i in range(1, 5)] == ["310", "260", "12", "ab"]


def test_command_reply_is_kept_as_result() -> None:
    frame = b"*HQ,2020916012,V4,S20,DONE,130305,050316,A,2212.8745,N,11346.6574,E,14.28,028,220902,FFFFFBFF#"
    [p] = PROTOCOL.decode(frame, session()).positions
    assert p.attributes["result"] == "S20,DONE,130305"
    assert p.fix_time == datetime(2002, 9, 22, 5, 3, 16, tzinfo=UTC)


def test_sms_text_is_a_status_record_with_result() -> None:
    [p] = PROTOCOL.decode(b"*HQ,5226073533,SMS,VER:1.0\nGPS:A#", session()).positions
    assert p.attributes == {"result": "VER:1.0\nGPS:A"}
    assert not p.located and p.fix_time == NOW


def test_unknown_report_type_yields_nothing() -> None:
    result = PROTOCOL.decode(b"*HQ,8401016597,BASE,152609,0,0,0,0,211014,FFFFFFFF#", session())
    assert result.positions == [] and result.reply is None


def test_binary_fields() -> None:
    [p] = PROTOCOL.decode(binary_frame(), session()).positions
    assert p.device == "4106000826"
    assert p.fix_time == datetime(2024, 2, 1, 10, 11, 12, tzinfo=UTC)
    assert p.valid is True
    assert p.latitude == pytest.approx(48.1173)
    assert p.longitude == pytest.approx(11 + 31 / 60)
    assert p.speed_kmh == pytest.approx(12 * 1.852)
    assert p.course == 123
    assert p.attributes == {"status": 0xFFFFFBFF, "batteryLevel": 100}


def test_binary_flags_give_hemispheres_and_validity() -> None:
    [p] = PROTOCOL.decode(binary_frame(flags=0x0), session()).positions
    assert p.valid is False
    assert p.latitude is not None and p.latitude < 0
    assert p.longitude is not None and p.longitude < 0


def test_report_without_id_needs_an_identified_session() -> None:
    frame = b"*HQ,,V1,173212,A,2225.78879,S,02829.19021,E,0.00,0,290418,FFFFFBFF#"
    with pytest.raises(DecodeError, match="identified"):
        PROTOCOL.decode(frame, session())
    result = PROTOCOL.decode(frame, session(device="4210051415"))
    assert result.positions[0].device == "4210051415"
    assert result.reply is None  # the reference answers only frames that name the device


# Bad input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"hello world",
        b"*HQ#",
        b"$" + bytes(10),
        b"$" + b"\xaa" * 31,
        binary_frame()[:31],
    ],
)
def test_garbage_and_truncated_frames_raise_decode_error(frame: bytes) -> None:
    with pytest.raises(DecodeError):
        PROTOCOL.decode(frame, session())


def test_impossible_date_raises_decode_error() -> None:
    frame = b"*HQ,1234567890,V1,101112,A,4807.0380,N,01131.0000,W,10.00,90,450224,FFFFFBFF#"
    with pytest.raises(DecodeError, match="malformed"):
        PROTOCOL.decode(frame, session())


# Framing --------------------------------------------------------------------------


drain = partial(split_all, PROTOCOL)


def test_split_two_text_frames_and_half_a_third() -> None:
    a, b, c = v1(device="1111111111"), v1(device="2222222222"), v1(device="3333333333")
    frames, rest = drain(a + b"\r\n" + b + c[:20])
    assert frames == [a, b]
    assert rest == c[:20]


def test_split_mixed_binary_and_text_stream() -> None:
    short = binary_frame()
    long = binary_frame(extra=bytes.fromhex("ff0015060000002c02dc0c000000001f"))
    assert len(short) == 32 and len(long) == 45
    frames, rest = drain(short + long + v1() + short + long[:10])
    assert frames == [short, long, v1(), short]
    assert rest == long[:10]


def test_split_lone_binary_frame_of_32_or_45_bytes() -> None:
    short = binary_frame()
    long = binary_frame(extra=bytes(16))
    assert PROTOCOL.split(short) == (short, 32)
    assert PROTOCOL.split(long) == (long, 45)
    assert PROTOCOL.split(long[:40]) == (None, 0)


def test_split_skips_garbage_before_a_frame() -> None:
    assert PROTOCOL.split(b"\x00\x01junk" + v1()) == (None, 6)
    assert PROTOCOL.split(b"no marker here") == (None, 14)
    frames, rest = drain(b"*\x00\x01$\xaa\xbb" + v1())
    assert frames == [v1()] and rest == b""


def test_split_raises_on_endless_text_frame() -> None:
    with pytest.raises(FrameError):
        PROTOCOL.split(b"*HQ," + b"1" * PROTOCOL.max_frame)


# Properties -----------------------------------------------------------------------

TEXTISH = st.lists(
    st.sampled_from(["*HQ,", "1234567890", ",", "V1", "V4", "NBR", "LINK", "V3", "HTBT", "SMS", "VP1", "A", "V",
                     "N", "S", "E", "W", ".", "-", "0", "12", "4807.0380", "FFFFFBFF", "010224", "#", "$", "\r\n"]),
    max_size=40,
).map(lambda parts: "".join(parts).encode())


@settings(max_examples=400)
@given(st.one_of(st.binary(max_size=200), TEXTISH, TEXTISH.map(lambda b: b"*HQ,1," + b)))
def test_arbitrary_bytes_raise_nothing_but_decode_error(data: bytes) -> None:
    try:
        frame, consumed = PROTOCOL.split(data)
        assert 0 <= consumed <= len(data)
    except FrameError:
        pass
    for candidate in (data, b"$" + data, b"*" + data):
        try:
            PROTOCOL.decode(candidate, session(device="1"))
        except DecodeError:
            pass


positions = st.builds(
    Position,
    device=st.from_regex(r"[0-9]{10}|[0-9]{15}", fullmatch=True),
    fix_time=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC))
    .map(lambda t: t.replace(microsecond=0)),
    valid=st.booleans(),
    latitude=st.floats(min_value=-89.99, max_value=89.99),
    longitude=st.floats(min_value=-179.99, max_value=179.99),
    speed_kmh=st.floats(min_value=0, max_value=300),
    course=st.floats(min_value=0, max_value=359.99),
    ignition=st.booleans(),
    alarm=st.sampled_from([None, "sos", "vibration", "overspeed", "powerCut"]),
)


@given(positions)
def test_encode_position_round_trips(p: Position) -> None:
    wire = encode_position(p) + b"\r\n"
    frame, consumed = PROTOCOL.split(wire)
    assert frame is not None and consumed == len(wire)
    [q] = PROTOCOL.decode(frame, session()).positions
    assert q.device == p.device
    assert q.fix_time == p.fix_time
    assert q.valid is p.valid
    assert q.latitude == pytest.approx(p.latitude, abs=1e-6)
    assert q.longitude == pytest.approx(p.longitude, abs=1e-6)
    assert q.speed_kmh == pytest.approx(p.speed_kmh, abs=0.01)
    assert q.course == pytest.approx(p.course, abs=0.01)  # 2 decimals on the wire
    assert q.ignition is p.ignition
    assert q.alarm == p.alarm


def test_encode_login_is_none() -> None:
    assert encode_login("1234567890") is None
