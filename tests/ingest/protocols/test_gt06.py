"""Behaviour of the gt06 (Concox / Jimi IoT) decoder: framing, ACKs, CRC policy, time zones, encoders."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avl.records import Position
from ingest.protocols.base import DecodeError, FrameError, Session, crc16_x25
from ingest.protocols.gt06 import PROTOCOL, encode_heartbeat, encode_login, encode_position

IMEI = "123456789012345"
PINNED_NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


def packet(msg_type: int, body: bytes, serial: int = 1, extended: bool = False) -> bytes:
    """A device packet with a valid CRC, built independently of the module under test."""
    length = len(body) + 5
    size = length.to_bytes(2, "big") if extended else bytes([length])
    inner = size + bytes([msg_type]) + body + serial.to_bytes(2, "big")
    header = b"\x79\x79" if extended else b"\x78\x78"
    return header + inner + crc16_x25(inner).to_bytes(2, "big") + b"\r\n"


def logged_in(**options: object) -> Session:
    session = Session(options=dict(options), now=lambda: PINNED_NOW)
    login = encode_login(IMEI)
    assert login is not None
    PROTOCOL.decode(login, session)
    return session


def a_position(**fields: object) -> Position:
    values: dict[str, object] = {
        "device": IMEI, "fix_time": datetime(2024, 3, 1, 12, 30, 45, tzinfo=UTC), "valid": True,
        "latitude": 52.2297, "longitude": -21.0122, "speed_kmh": 57.0, "course": 123.0, "satellites": 9,
        "ignition": True,
    }
    values.update(fields)
    return Position(**values)  # type: ignore[arg-type]


# Login and replies ------------------------------------------------------------------------


def test_login_identifies_the_device_and_is_acknowledged_with_its_serial() -> None:
    session = Session()
    login = encode_login(IMEI)
    assert login is not None
    result = PROTOCOL.decode(login, session)
    assert session.device == IMEI
    assert result.positions == []
    # The ACK every GT06 manual shows for a login with serial 1.
    assert result.reply == bytes.fromhex("787805010001d9dc0d0a")


def test_reports_before_login_are_refused() -> None:
    with pytest.raises(DecodeError, match="before the device identified"):
        PROTOCOL.decode(encode_position(a_position()), Session())


def test_location_packet_is_acknowledged_with_type_and_serial() -> None:
    session = logged_in()
    result = PROTOCOL.decode(encode_position(a_position(), sequence=0x1234), session)
    assert len(result.positions) == 1
    inner = bytes.fromhex("0522") + bytes.fromhex("1234")
    assert result.reply == b"\x78\x78" + inner + crc16_x25(inner).to_bytes(2, "big") + b"\r\n"


def test_heartbeat_becomes_a_status_record_and_is_acknowledged() -> None:
    session = logged_in()
    frame = encode_heartbeat(a_position(ignition=True, attributes={"batteryLevel": 100, "rssi": 3}), sequence=7)
    result = PROTOCOL.decode(frame, session)
    (record,) = result.positions
    assert record.latitude is None and record.longitude is None
    assert record.ignition is True
    assert record.attributes["batteryLevel"] == 100
    assert record.attributes["rssi"] == 3
    assert record.fix_time == PINNED_NOW
    inner = bytes.fromhex("0513") + (7).to_bytes(2, "big")
    assert result.reply == b"\x78\x78" + inner + crc16_x25(inner).to_bytes(2, "big") + b"\r\n"


def test_heartbeat_carries_the_status_alarm_bits() -> None:
    session = logged_in()
    result = PROTOCOL.decode(encode_heartbeat(a_position(ignition=False, alarm="sos")), session)
    assert result.positions[0].alarm == "sos"
    assert result.positions[0].ignition is False


def test_time_request_is_answered_with_the_current_utc_time() -> None:
    session = logged_in()
    result = PROTOCOL.decode(packet(0x8A, b"", serial=9), session)
    assert result.positions == []
    inner = bytes([0x0B, 0x8A, 24, 5, 6, 7, 8, 9, 0, 0])
    assert result.reply == b"\x78\x78" + inner + crc16_x25(inner).to_bytes(2, "big") + b"\r\n"


def test_command_replies_are_not_acknowledged() -> None:
    session = logged_in()
    result = PROTOCOL.decode(packet(0x81, b"\x00", serial=3), session)
    assert result.reply is None
    assert result.positions == []


def test_extended_information_packet_reports_external_voltage_without_ack() -> None:
    session = logged_in()
    result = PROTOCOL.decode(packet(0x94, b"\x00\x04\xd2", serial=2, extended=True), session)
    assert result.reply is None
    assert result.positions[0].attributes["adc1"] == pytest.approx(12.34)


def test_model_override_selects_the_power_layout_of_lw_units() -> None:
    body = bytes([0x56, 0x06, 0x04]) + (0xF000 | 131).to_bytes(2, "big")
    result = PROTOCOL.decode(packet(0x13, body), logged_in(model="LW4G-4B"))
    assert result.positions[0].power_mv == 13100


# Time zones ---------------------------------------------------------------------------------


def _login_with_zone(word: int) -> bytes:
    return packet(0x01, bytes.fromhex("0" + IMEI) + b"\x36\x08" + word.to_bytes(2, "big"))


def test_login_time_zone_word_converts_device_local_time_to_utc() -> None:
    session = Session()
    PROTOCOL.decode(_login_with_zone(0x3200), session)  # GMT+8:00
    p = a_position()
    decoded = PROTOCOL.decode(encode_position(p), session).positions[0]
    assert decoded.fix_time == p.fix_time - timedelta(hours=8)


def test_login_time_zone_word_west_of_greenwich() -> None:
    session = Session()
    PROTOCOL.decode(_login_with_zone((530 << 4) | 0x08), session)  # GMT-5:30
    p = a_position()
    decoded = PROTOCOL.decode(encode_position(p), session).positions[0]
    assert decoded.fix_time == p.fix_time + timedelta(hours=5, minutes=30)


def test_configured_time_zone_wins_over_the_login_word() -> None:
    session = Session(options={"timezone": "Europe/Helsinki"})
    PROTOCOL.decode(_login_with_zone(0x3200), session)
    p = a_position()  # 1 March: Helsinki is UTC+2
    decoded = PROTOCOL.decode(encode_position(p), session).positions[0]
    assert decoded.fix_time == p.fix_time - timedelta(hours=2)


# CRC policy and bad input -------------------------------------------------------------------


def test_bad_crc_is_decoded_but_flagged() -> None:
    session = logged_in()
    good = encode_position(a_position())
    bad = good[:-4] + bytes([good[-4] ^ 0xFF, good[-3]]) + b"\r\n"
    assert "crcMismatch" not in PROTOCOL.decode(good, session).positions[0].attributes
    flagged = PROTOCOL.decode(bad, session).positions
    assert flagged and all(p.attributes["crcMismatch"] is True for p in flagged)
    assert flagged[0].latitude == pytest.approx(52.2297, abs=1e-6)


def test_frame_without_its_trailing_crlf_decodes_the_same() -> None:
    session = logged_in()
    frame = encode_position(a_position())
    assert PROTOCOL.decode(frame[:-2], session).positions[0].latitude == pytest.approx(52.2297, abs=1e-6)
    assert PROTOCOL.decode(frame[:-1], session).reply == PROTOCOL.decode(frame, session).reply


@pytest.mark.parametrize("length", [3, 10, 20, 30])
def test_truncated_location_raises_decode_error(length: int) -> None:
    frame = encode_position(a_position())
    with pytest.raises(DecodeError):
        PROTOCOL.decode(frame[:length], logged_in())


@pytest.mark.parametrize("garbage", [b"", b"hello world\r\n", b"\x00" * 40, b"\x78\x78"])
def test_garbage_raises_decode_error(garbage: bytes) -> None:
    with pytest.raises(DecodeError):
        PROTOCOL.decode(garbage, logged_in())


# Framing -------------------------------------------------------------------------------------


def test_split_returns_two_frames_then_waits_for_the_rest_of_the_third() -> None:
    first = encode_position(a_position(), sequence=1)
    second = encode_heartbeat(a_position(), sequence=2)
    third = encode_position(a_position(), sequence=3)
    buffer = first + second + third[:12]
    assert b"\r\n" not in third[:12]
    frame, used = PROTOCOL.split(buffer)
    assert (frame, used) == (first, len(first))
    buffer = buffer[used:]
    frame, used = PROTOCOL.split(buffer)
    assert (frame, used) == (second, len(second))
    buffer = buffer[used:]
    assert PROTOCOL.split(buffer) == (None, 0)
    frame, used = PROTOCOL.split(buffer + third[12:])
    assert frame == third


def test_split_skips_garbage_before_a_header() -> None:
    frame = encode_position(a_position())
    assert PROTOCOL.split(b"junk" + frame) == (None, 4)
    assert PROTOCOL.split(b"junk") == (None, 4)


def test_split_falls_back_to_crlf_when_the_length_byte_is_wrong() -> None:
    frame = bytearray(encode_position(a_position()))
    frame[2] = 0x50  # claims more bytes than it has
    assert PROTOCOL.split(bytes(frame)) == (bytes(frame), len(frame))


def test_split_handles_extended_frames() -> None:
    frame = packet(0x94, b"\x00\x04\xd2", extended=True)
    assert PROTOCOL.split(frame + frame[:5]) == (frame, len(frame))


def test_oversized_stream_raises_frame_error() -> None:
    endless = b"\x79\x79\xff\xff" + b"\x00" * (PROTOCOL.max_frame + 10)
    with pytest.raises(FrameError):
        PROTOCOL.split(endless)


# Properties ----------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_nothing_but_decode_errors(data: bytes) -> None:
    try:
        PROTOCOL.split(data)
    except DecodeError:
        pass
    for candidate in (data, b"\x78\x78" + data, b"\x79\x79" + data):
        try:
            PROTOCOL.decode(candidate, logged_in())
        except DecodeError:
            pass


@settings(max_examples=300, deadline=None)
@given(
    msg_type=st.integers(0, 255),
    body=st.binary(max_size=120),
    extended=st.booleans(),
    model=st.sampled_from(["", "VL103", "NT20", "LW4G-4B", "SEEWORLD", "R11", "QH302R"]),
)
def test_well_framed_packets_of_any_type_raise_nothing_but_decode_errors(
    msg_type: int, body: bytes, extended: bool, model: str
) -> None:
    try:
        PROTOCOL.decode(packet(msg_type, body, extended=extended), logged_in(model=model))
    except DecodeError:
        pass


@settings(max_examples=200, deadline=None)
@given(
    when=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC)),
    lat=st.floats(-90, 90),
    lon=st.floats(-180, 180),
    speed=st.integers(0, 255),
    course=st.integers(0, 359),
    satellites=st.integers(0, 15),
    valid=st.booleans(),
    ignition=st.booleans(),
    sequence=st.integers(0, 0xFFFF),
)
def test_encoded_position_reads_back_the_same(
    when: datetime, lat: float, lon: float, speed: int, course: int, satellites: int, valid: bool,
    ignition: bool, sequence: int,
) -> None:
    p = a_position(fix_time=when.replace(microsecond=0), latitude=lat, longitude=lon, speed_kmh=float(speed),
                   course=float(course), satellites=satellites, valid=valid, ignition=ignition)
    session = logged_in()
    stream = encode_position(p, sequence)
    frame, used = PROTOCOL.split(stream)
    assert frame is not None and used == len(stream)
    result = PROTOCOL.decode(frame, session)
    (q,) = result.positions
    assert q.device == IMEI
    assert q.fix_time == p.fix_time
    assert q.valid is valid
    assert q.latitude == pytest.approx(lat, abs=1e-6)
    assert q.longitude == pytest.approx(lon, abs=1e-6)
    assert q.speed_kmh == speed
    assert q.course == course
    assert q.satellites == satellites
    assert q.ignition is ignition
    assert "crcMismatch" not in q.attributes
    assert result.reply is not None and result.reply[3:6] == bytes([0x22]) + sequence.to_bytes(2, "big")


def test_stripped_frame_whose_crc_ends_in_carriage_return_still_decodes() -> None:
    p = a_position()
    frame = next(f for f in (encode_position(p, n) for n in range(0x10000)) if f[-3] == 0x0D)
    result = PROTOCOL.decode(frame[:-2], logged_in())
    assert "crcMismatch" not in result.positions[0].attributes
    assert result.reply == PROTOCOL.decode(frame, logged_in()).reply


def test_split_waits_when_a_half_received_frame_holds_a_crlf() -> None:
    frame = packet(0x94, b"\x1bRFID:0012\r\nAB" + b"\x00" * 20, extended=True)
    partial = frame[: frame.index(b"\r\n") + 4]
    assert PROTOCOL.split(partial) == (None, 0)
    assert PROTOCOL.split(frame) == (frame, len(frame))
