"""Behaviour of the enfora decoder: IMEI and GPRMC extraction, checksum flag, framing, bad input."""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from functools import partial

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avl.records import Position
from ingest.protocols.base import DecodeError, FrameError, Session
from ingest.protocols.enfora import PROTOCOL, encode_login, encode_position
from tests.ingest.protocols.framing import split_all

IMEI = "356938035643809"


def session(device: str | None = None) -> Session:
    return Session(device=device)


def nmea_checksum(sentence: bytes) -> int:
    value = 0
    for byte in sentence:
        value ^= byte
    return value


def message(sentence: bytes | None, imei: str = IMEI, checksum: int | None = None, index: int = 7) -> bytes:
    """An event message: header, space-padded IMEI, an event field and an NMEA sentence."""
    body = b"     " + imei.encode() + b" 5 "
    if sentence is not None:
        cs = nmea_checksum(sentence) if checksum is None else checksum
        body += b"$" + sentence + b"*%02X\r\n" % cs
    header = struct.pack(">HBB", index, 0x02, 0x00)
    return struct.pack(">H", 2 + len(header) + len(body)) + header + body


RMC = b"GPRMC,081500.00,A,4807.038000,N,01131.000000,W,12.5,270.0,230324,,,A"


def test_event_message_decodes_imei_and_gprmc_without_reply() -> None:
    s = session()
    result = PROTOCOL.decode(message(RMC), s)
    assert result.reply is None
    [p] = result.positions
    assert s.device == p.device == IMEI
    assert p.fix_time == datetime(2024, 3, 23, 8, 15, tzinfo=UTC)
    assert p.valid is True
    assert p.latitude == pytest.approx(48.1173)
    assert p.longitude == pytest.approx(-(11 + 31 / 60))
    assert p.speed_kmh == pytest.approx(12.5 * 1.852)
    assert p.course == 270
    assert "crcMismatch" not in p.attributes


def test_frame_without_length_prefix_decodes_the_same() -> None:
    with_prefix = PROTOCOL.decode(message(RMC), session()).positions[0]
    without = PROTOCOL.decode(message(RMC)[2:], session()).positions[0]
    assert (with_prefix.latitude, with_prefix.fix_time) == (without.latitude, without.fix_time)


def test_wrong_nmea_checksum_is_decoded_and_flagged() -> None:
    wrong = nmea_checksum(RMC) ^ 0x01
    [p] = PROTOCOL.decode(message(RMC, checksum=wrong), session()).positions
    assert p.attributes["crcMismatch"] is True
    assert p.latitude == pytest.approx(48.1173)


def test_message_without_gprmc_or_without_fix_yields_nothing() -> None:
    assert PROTOCOL.decode(message(None), session()).positions == []
    empty = PROTOCOL.decode(message(b"GPRMC,,V,,,,,,,,,,N"), session())
    assert empty.positions == [] and empty.reply is None


@pytest.mark.parametrize("frame", [b"", b"\x00\x0a\x00\x01\x02\x00abc", b"$GPRMC,081500,A,4807.038,N,01131.000,E,1.0,1.0,230394,,*00"])
def test_frame_without_imei_raises_decode_error(frame: bytes) -> None:
    with pytest.raises(DecodeError, match="IMEI"):
        PROTOCOL.decode(frame, session())


def test_impossible_date_raises_decode_error() -> None:
    with pytest.raises(DecodeError, match="malformed"):
        PROTOCOL.decode(message(RMC.replace(b"230324", b"231324")), session())


# Framing --------------------------------------------------------------------------


drain = partial(split_all, PROTOCOL)


def test_split_two_frames_and_half_a_third() -> None:
    a, b, c = message(RMC, index=1), message(None, index=2), message(RMC, index=3)
    frames, rest = drain(a + b + c[: len(c) // 2])
    assert frames == [a, b]
    assert rest == c[: len(c) // 2]
    assert PROTOCOL.split(b"\x00") == (None, 0)


def test_split_raises_on_impossible_or_oversized_length() -> None:
    with pytest.raises(FrameError, match="shorter"):
        PROTOCOL.split(b"\x00\x01" + bytes(10))
    with pytest.raises(FrameError):
        PROTOCOL.split(struct.pack(">H", PROTOCOL.max_frame + 1) + bytes(10))


# Properties -----------------------------------------------------------------------


@settings(max_examples=300)
@given(st.one_of(st.binary(max_size=200), st.binary(max_size=80).map(lambda b: message(RMC)[:60] + b)))
def test_arbitrary_bytes_raise_nothing_but_decode_error(data: bytes) -> None:
    try:
        frame, consumed = PROTOCOL.split(data)
        assert 0 <= consumed <= len(data)
    except FrameError:
        pass
    try:
        PROTOCOL.decode(data, session())
    except DecodeError:
        pass


positions = st.builds(
    Position,
    device=st.from_regex(r"[0-9]{15}", fullmatch=True),
    fix_time=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC))
    .map(lambda t: t.replace(microsecond=0)),
    valid=st.booleans(),
    latitude=st.floats(min_value=-89.99, max_value=89.99),
    longitude=st.floats(min_value=-179.99, max_value=179.99),
    speed_kmh=st.floats(min_value=0, max_value=300),
    course=st.floats(min_value=0, max_value=359.99),
)


@given(positions, st.integers(min_value=0, max_value=100_000))
def test_encode_position_round_trips(p: Position, sequence: int) -> None:
    wire = encode_position(p, sequence)
    frame, consumed = PROTOCOL.split(wire)
    assert frame is not None and consumed == len(wire)
    [q] = PROTOCOL.decode(frame, session()).positions
    assert q.device == p.device
    assert q.fix_time == p.fix_time
    assert q.valid is p.valid
    assert q.latitude == pytest.approx(p.latitude, abs=1e-7)
    assert q.longitude == pytest.approx(p.longitude, abs=1e-7)
    assert q.speed_kmh == pytest.approx(p.speed_kmh, abs=0.02)  # 2 decimals of knots on the wire
    assert q.course == pytest.approx(p.course, abs=0.01)  # 2 decimals on the wire
    assert "crcMismatch" not in q.attributes


def test_encode_login_is_none() -> None:
    assert encode_login(IMEI) is None
