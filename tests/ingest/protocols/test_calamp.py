"""Behaviour of the CalAmp LMDirect decoder: ACKs, mobile IDs, report layouts, bad input, encoders."""

from __future__ import annotations

import struct
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avl.records import Position
from ingest.protocols.base import DecodeError, FrameError, Session
from ingest.protocols.calamp import PROTOCOL, encode_login, encode_mini_event, encode_position

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
WHEN = datetime(2024, 4, 30, 18, 15, 42, tzinfo=UTC)
ESN_HEADER = bytes.fromhex("8305") + bytes.fromhex("4643586340") + bytes.fromhex("0101")


def session(device: str | None = None) -> Session:
    return Session(transport="udp", device=device, now=lambda: NOW)


def message(service: int, msg_type: int, seq: int) -> bytes:
    return struct.pack(">BBH", service, msg_type, seq)


def fixed_part(inputs: int = 0x01, fix_status: int = 0x02) -> bytes:
    t = int(WHEN.timestamp())
    return struct.pack(
        ">IIiiiIhBBHhBBBB",
        t, t - 5, 434_123_456, -853_654_321, 25_050, 2_500, 271, 9, fix_status, 310, -85, 0x0F, 12, inputs, 0,
    )


def event_report(service: int = 1, seq: int = 0x1234, inputs: int = 0x01, fix_status: int = 0x02) -> bytes:
    accumulators = bytes([3, 0]) + struct.pack(">III", 1000, 2000, 3000)
    return ESN_HEADER + message(service, 2, seq) + fixed_part(inputs, fix_status) + bytes([4, 27]) + accumulators


# Replies -------------------------------------------------------------------------------------


def test_acknowledged_event_report_gets_the_ten_byte_ack() -> None:
    result = PROTOCOL.decode(event_report(service=1, seq=0x1234), session())
    assert result.reply == bytes.fromhex("0201 1234 02 00 00 000000")
    assert len(result.reply) == 10


def test_unacknowledged_report_gets_no_reply() -> None:
    result = PROTOCOL.decode(event_report(service=0), session())
    assert result.reply is None
    assert len(result.positions) == 1


def test_ack_echoes_the_message_type_of_an_id_report_without_a_record() -> None:
    datagram = ESN_HEADER + message(1, 3, 7) + bytes(40)
    result = PROTOCOL.decode(datagram, session())
    assert result.positions == []
    assert result.reply == bytes.fromhex("02010007030000000000")


# Identity ------------------------------------------------------------------------------------


def test_esn_mobile_id_sets_the_session_device() -> None:
    s = session()
    PROTOCOL.decode(event_report(), s)
    assert s.device == "4643586340"


def test_imei_mobile_id_drops_only_the_padding_nibble() -> None:
    header = bytes.fromhex("8308") + bytes.fromhex("353301059723580f") + bytes.fromhex("0102")
    s = session()
    PROTOCOL.decode(header + message(0, 2, 1) + fixed_part() + bytes([4, 27, 0, 0]), s)
    assert s.device == "353301059723580"


def test_hex_mobile_id_keeps_inner_f_digits() -> None:
    header = bytes.fromhex("8304") + bytes.fromhex("9f12f4ff") + bytes.fromhex("0101")
    s = session()
    PROTOCOL.decode(header + message(0, 2, 1) + fixed_part() + bytes([4, 27, 0, 0]), s)
    assert s.device == "9f12f4"


def test_report_without_options_header_uses_the_known_source() -> None:
    datagram = message(1, 2, 5) + fixed_part() + bytes([4, 27, 0, 0])
    with pytest.raises(DecodeError):
        PROTOCOL.decode(datagram, session())
    [p] = PROTOCOL.decode(datagram, session("4643586340")).positions
    assert p.device == "4643586340"


# Report layouts ------------------------------------------------------------------------------


def test_event_report_fields() -> None:
    [p] = PROTOCOL.decode(event_report(), session()).positions
    assert p.fix_time == WHEN
    assert p.valid is True
    assert p.latitude == pytest.approx(43.4123456) and p.longitude == pytest.approx(-85.3654321)
    assert p.altitude_m == pytest.approx(250.5)
    assert p.speed_kmh == pytest.approx(90.0)
    assert p.course == 271 and p.satellites == 9 and p.hdop == pytest.approx(1.2)
    assert p.ignition is True
    assert p.attributes["event"] == 27 and p.attributes["rssi"] == -85 and p.attributes["input"] == 1
    assert (p.attributes["acc0"], p.attributes["acc1"], p.attributes["acc2"]) == (1000, 2000, 3000)


def test_fix_status_bit_3_marks_the_fix_invalid_and_input_bit_0_is_ignition() -> None:
    [p] = PROTOCOL.decode(event_report(inputs=0x02, fix_status=0x08), session()).positions
    assert p.valid is False
    assert p.ignition is False


def test_locate_report_has_no_event_fields() -> None:
    datagram = ESN_HEADER + message(1, 8, 9) + fixed_part() + bytes([1, 0]) + struct.pack(">I", 42)
    result = PROTOCOL.decode(datagram, session())
    [p] = result.positions
    assert "event" not in p.attributes and p.attributes["acc0"] == 42
    assert result.reply == bytes.fromhex("02010009080000000000")


def test_user_data_text_becomes_the_result() -> None:
    text = b"  hello unit \r\n"
    datagram = ESN_HEADER + message(0, 4, 3) + fixed_part() + bytes([0, 1]) + struct.pack(">H", len(text)) + text
    [p] = PROTOCOL.decode(datagram, session()).positions
    assert p.attributes["result"] == "hello unit"


def test_mini_event_report() -> None:
    body = struct.pack(">IiihBBBBBB", int(WHEN.timestamp()), 246_242_010, 468_551_891, 90, 57, 0x27, 0x80, 0x00, 12, 1)
    body += struct.pack(">I", 7)
    [p] = PROTOCOL.decode(ESN_HEADER + message(0, 10, 1) + body, session()).positions
    assert p.fix_time == WHEN
    assert p.satellites == 7 and p.valid is False
    assert p.speed_kmh == 57 and p.course == 90 and p.ignition is False
    assert p.attributes["event"] == 12 and p.attributes["acc0"] == 7


def test_report_ending_before_the_accumulators_is_still_acknowledged() -> None:
    datagram = ESN_HEADER + message(1, 2, 0x42) + fixed_part() + bytes([4, 27])
    result = PROTOCOL.decode(datagram, session())
    assert len(result.positions) == 1 and result.positions[0].attributes["event"] == 27
    assert result.reply == bytes.fromhex("02010042020000000000")


# Bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        bytes.fromhex("83"),
        bytes.fromhex("8305464358"),
        ESN_HEADER + bytes.fromhex("0102"),
        ESN_HEADER + message(1, 2, 1) + fixed_part()[:20],
        ESN_HEADER + message(1, 10, 1) + bytes(5),
    ],
)
def test_truncated_datagrams_raise_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        PROTOCOL.decode(data, session())


def test_truncated_report_gets_no_ack() -> None:
    with pytest.raises(DecodeError):
        PROTOCOL.decode(event_report()[:-30], session())


def test_calamp_is_udp_only() -> None:
    assert PROTOCOL.transports == frozenset({"udp"})
    with pytest.raises(FrameError, match="UDP only"):
        PROTOCOL.split(event_report())


def test_encode_login_is_none() -> None:
    assert encode_login("4643586340") is None


# Properties ----------------------------------------------------------------------------------


@settings(max_examples=300)
@given(st.binary(max_size=200), st.sampled_from([None, "4643586340"]))
def test_arbitrary_bytes_raise_only_decode_error(data: bytes, device: str | None) -> None:
    for candidate in (data, ESN_HEADER + data):
        try:
            PROTOCOL.decode(candidate, session(device))
        except DecodeError:
            pass
    with pytest.raises(FrameError):
        PROTOCOL.split(data)


positions = st.builds(
    Position,
    device=st.one_of(st.from_regex(r"[0-9]{15}", fullmatch=True), st.from_regex(r"[1-9][0-9]{9}", fullmatch=True)),
    fix_time=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                          timezones=st.just(UTC)).map(lambda t: t.replace(microsecond=0)),
    valid=st.booleans(),
    latitude=st.floats(-90, 90),
    longitude=st.floats(-180, 180),
    speed_kmh=st.floats(0, 250),
    course=st.integers(0, 359).map(float),
    altitude_m=st.floats(-400, 9000),
    satellites=st.integers(0, 15),
    hdop=st.integers(0, 255).map(lambda v: v / 10),
    ignition=st.booleans(),
)


@settings(max_examples=200)
@given(positions, st.integers(0, 0xFFFF))
def test_encode_position_round_trips(p: Position, sequence: int) -> None:
    wire = encode_position(p, sequence)
    s = session()
    result = PROTOCOL.decode(wire, s)
    assert result.reply == struct.pack(">BBHB5x", 2, 1, sequence, 2)
    [q] = result.positions
    assert s.device == p.device == q.device
    assert q.fix_time == p.fix_time and q.valid is p.valid
    assert abs(q.latitude - p.latitude) <= 1e-7 and abs(q.longitude - p.longitude) <= 1e-7  # type: ignore[operator]
    assert abs(q.speed_kmh - p.speed_kmh) <= 0.02  # type: ignore[operator]
    assert abs(q.altitude_m - p.altitude_m) <= 0.006  # type: ignore[operator]
    assert q.course == p.course and q.satellites == p.satellites and q.ignition is p.ignition
    assert q.hdop == pytest.approx(p.hdop)


@settings(max_examples=200)
@given(positions, st.integers(0, 0xFFFF))
def test_encode_mini_event_round_trips(p: Position, sequence: int) -> None:
    wire = encode_mini_event(p, sequence)
    s = session()
    result = PROTOCOL.decode(wire, s)
    assert result.reply == struct.pack(">BBHB5x", 2, 1, sequence, 10)
    [q] = result.positions
    assert s.device == p.device == q.device
    assert q.fix_time == p.fix_time and q.valid is p.valid
    assert abs(q.latitude - p.latitude) <= 1e-7 and abs(q.longitude - p.longitude) <= 1e-7  # type: ignore[operator]
    assert q.speed_kmh == round(p.speed_kmh)  # type: ignore[arg-type]
    assert q.course == p.course and q.satellites == p.satellites and q.ignition is p.ignition
