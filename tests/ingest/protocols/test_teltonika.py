"""Behaviour of the Teltonika decoder: handshake, ACKs, CRC policy, framing, UDP, encoders."""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avl.records import Position
from ingest.protocols.base import DecodeError, FrameError, Session, crc16_ibm
from ingest.protocols.teltonika import (
    PROTOCOL,
    encode_batch,
    encode_login,
    encode_position,
    encode_udp,
)
from tests.ingest.protocols.framing import split_all

IMEI = "356307042441013"
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def tcp_session(device: str | None = IMEI, **options: str) -> Session:
    return Session(transport="tcp", device=device, options=dict(options), now=lambda: NOW)


def sample(**changes: object) -> Position:
    fields: dict[str, object] = dict(
        device=IMEI, fix_time=datetime(2024, 4, 30, 8, 15, 42, 250000, tzinfo=UTC), valid=True,
        latitude=54.6872, longitude=25.2797, speed_kmh=57.0, course=212.0, altitude_m=118.0,
        satellites=11, ignition=True, power_mv=12750, odometer_m=1234567, attributes={"rssi": 4},
    )
    fields.update(changes)
    return Position(**fields)  # type: ignore[arg-type]


def frame_from(codec: int, records: list[bytes], count: int | None = None) -> bytes:
    """A TCP data frame around raw record bytes, with a correct CRC."""
    n = len(records) if count is None else count
    block = bytes((codec, n)) + b"".join(records) + bytes((n,))
    return b"\0\0\0\0" + len(block).to_bytes(4, "big") + block + crc16_ibm(block).to_bytes(4, "big")


def codec12_frame(kind: int, payload: bytes) -> bytes:
    return frame_from(0x0C, [bytes((kind,)) + len(payload).to_bytes(4, "big") + payload])


# Handshake and keep-alive ---------------------------------------------------------------------


def test_imei_handshake_identifies_the_device_and_is_accepted_with_01() -> None:
    session = tcp_session(device=None)
    result = PROTOCOL.decode(encode_login(IMEI), session)
    assert result.reply == b"\x01"
    assert result.positions == []
    assert session.device == IMEI


def test_handshake_with_non_digit_imei_is_rejected() -> None:
    with pytest.raises(DecodeError, match="IMEI"):
        PROTOCOL.decode(b"\x00\x0f" + b"35630704244101X", tcp_session(device=None))


def test_handshake_whose_length_disagrees_with_its_bytes_is_rejected() -> None:
    with pytest.raises(DecodeError):
        PROTOCOL.decode(b"\x00\x0f" + IMEI[:10].encode(), tcp_session(device=None))


def test_keepalive_byte_gets_no_reply_and_no_record() -> None:
    result = PROTOCOL.decode(b"\xff", tcp_session())
    assert result.positions == [] and result.reply is None


def test_data_before_handshake_is_refused() -> None:
    with pytest.raises(DecodeError, match="identified"):
        PROTOCOL.decode(encode_position(sample()), tcp_session(device=None))


# Data frames and ACKs ---------------------------------------------------------------------------


def test_codec8_batch_is_acked_with_the_record_count_as_four_bytes() -> None:
    positions = [sample(fix_time=sample().fix_time + timedelta(seconds=i)) for i in range(3)]
    result = PROTOCOL.decode(encode_batch(positions), tcp_session())
    assert result.reply == b"\x00\x00\x00\x03"
    assert [p.fix_time for p in result.positions] == [p.fix_time for p in positions]
    assert all("crcMismatch" not in p.attributes for p in result.positions)


def test_codec8_extended_batch_decodes_and_is_acked() -> None:
    positions = [sample(), sample(ignition=False, power_mv=11900)]
    result = PROTOCOL.decode(encode_batch(positions, codec=0x8E), tcp_session())
    assert result.reply == b"\x00\x00\x00\x02"
    assert [p.ignition for p in result.positions] == [True, False]
    assert [p.power_mv for p in result.positions] == [12750, 11900]


def test_io_elements_map_to_typed_fields_and_traccar_attributes() -> None:
    record = (
        (1_714_464_942_000).to_bytes(8, "big") + b"\x01"
        + struct.pack(">iihHBH", 252797000, 546872000, 118, 212, 0, 0)  # no satellites: invalid fix
        + b"\xf0\x06"  # event 240, 6 IO elements
        + b"\x03" + b"\xef\x01" + b"\xf0\x01" + b"\x15\x04"  # ignition, motion, rssi
        + b"\x02" + b"\x42\x31\x9c" + b"\x43\x0f\xa0"  # power 12700 mV, battery 4000 mV
        + b"\x01" + b"\x10\x00\x01\x00\x00"  # odometer 65536 m
        + b"\x01" + b"\x4e" + bytes.fromhex("0102030405060708")  # iButton, LSB first
    )
    p = PROTOCOL.decode(frame_from(0x08, [record]), tcp_session()).positions[0]
    assert p.valid is False and p.satellites == 0
    assert p.ignition is True and p.power_mv == 12700 and p.battery_mv == 4000 and p.odometer_m == 65536
    assert p.attributes["motion"] is True and p.attributes["rssi"] == 4
    assert p.attributes["event"] == 240 and p.attributes["priority"] == 1
    assert p.attributes["driverUniqueId"] == "0807060504030201"


def test_unknown_io_is_kept_as_ioNNN_and_model_specific_ids_need_the_model() -> None:
    record = (
        (1_714_464_942_000).to_bytes(8, "big") + b"\x00" + struct.pack(">iihHBH", 0, 0, 0, 0, 5, 0)
        + b"\x00\x02" + b"\x00" + b"\x02" + b"\x09\x0b\xb8" + b"\x71\x00\x50" + b"\x00" + b"\x00"
    )
    frame = frame_from(0x08, [record])
    generic = PROTOCOL.decode(frame, tcp_session()).positions[0]
    assert generic.attributes["io9"] == 3000 and generic.attributes["io113"] == 80
    fmb = PROTOCOL.decode(frame, tcp_session(model="FMB920")).positions[0]
    assert fmb.attributes["adc1"] == pytest.approx(3.0) and fmb.attributes["batteryLevel"] == 80


def test_codec12_response_becomes_a_status_record_with_result_and_no_ack() -> None:
    result = PROTOCOL.decode(codec12_frame(0x06, b"Ver:03.27.07 GPS:1\r\n"), tcp_session())
    assert result.reply is None
    [p] = result.positions
    assert not p.located and p.fix_time == NOW
    assert p.attributes["result"] == "Ver:03.27.07 GPS:1" and p.attributes["type"] == 6


def test_codec12_binary_response_is_kept_as_hex() -> None:
    [p] = PROTOCOL.decode(codec12_frame(0x06, b"\x01\x02\xff"), tcp_session()).positions
    assert p.attributes["result"] == "0102ff"


def test_codec12_camera_frames_yield_nothing() -> None:
    result = PROTOCOL.decode(codec12_frame(0x0D, b"\x01" + bytes(8)), tcp_session())
    assert result.positions == [] and result.reply is None


def test_codec8_extended_ble_tag_element_becomes_tag_attributes() -> None:
    tag = b"\x00\x01\xc4" + b"\x01\x06" + bytes.fromhex("a1b2c3d4e5f6") + b"\x02\x02\x80\x67" + b"\x0e\x02\x0b\xb8"
    element = b"\x01" + bytes((len(tag),)) + tag
    record = (
        (1_714_464_942_000).to_bytes(8, "big") + b"\x00" + struct.pack(">iihHBH", 0, 0, 0, 0, 5, 0)
        + b"\x02\x24\x00\x01" + b"\x00\x00" * 4
        + b"\x00\x01" + b"\x02\x24" + len(element).to_bytes(2, "big") + element
    )
    [p] = PROTOCOL.decode(frame_from(0x8E, [record]), tcp_session()).positions
    assert p.attributes["tag1Rssi"] == -60 and p.attributes["tag1Id"] == "a1b2c3d4e5f6"
    assert p.attributes["tag1Voltage"] == 3030 and p.attributes["tag1Battery"] == 3000


def test_codec13_response_carries_its_own_time_and_no_ack() -> None:
    stamp = int(datetime(2024, 4, 30, 9, 0, tzinfo=UTC).timestamp())
    body = b"\x06" + (4 + 5).to_bytes(4, "big") + stamp.to_bytes(4, "big") + b"hello"
    result = PROTOCOL.decode(frame_from(0x0D, [body]), tcp_session())
    assert result.reply is None
    [p] = result.positions
    assert p.attributes["result"] == "hello" and p.fix_time == datetime(2024, 4, 30, 9, 0, tzinfo=UTC)


def test_gh3000_record_with_location_and_io() -> None:
    seconds = int(datetime(2024, 4, 30, 9, 0, tzinfo=UTC).timestamp()) - 1167609600
    record = (
        seconds.to_bytes(4, "big") + b"\x03"  # location + 1-byte IO group
        + b"\x1f" + struct.pack(">ff", 54.5, 25.25) + b"\x00\x64" + b"\x40" + b"\x24" + b"\x07"
        + b"\x01" + b"\x01\x57"  # battery level 87 %
    )
    result = PROTOCOL.decode(frame_from(0x07, [record]), tcp_session())
    assert result.reply == b"\x00\x00\x00\x01"
    [p] = result.positions
    assert p.valid and p.latitude == 54.5 and p.longitude == 25.25
    assert p.course == 90.0 and p.speed_kmh == 36.0 and p.satellites == 7 and p.altitude_m == 100.0
    assert p.attributes["batteryLevel"] == 87


def test_unsupported_codec_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="codec"):
        PROTOCOL.decode(frame_from(0x42, []), tcp_session())


# CRC policy -------------------------------------------------------------------------------------


def test_bad_crc_frame_is_decoded_acked_and_flagged() -> None:
    frame = bytearray(encode_batch([sample(), sample()]))
    frame[-1] ^= 0x5A
    result = PROTOCOL.decode(bytes(frame), tcp_session())
    assert len(result.positions) == 2
    assert all(p.attributes["crcMismatch"] is True for p in result.positions)
    assert result.reply == b"\x00\x00\x00\x02"


def test_wrong_declared_length_is_decoded_and_flagged() -> None:
    frame = bytearray(encode_position(sample()))
    frame[4:8] = (0).to_bytes(4, "big")
    [p] = PROTOCOL.decode(bytes(frame), tcp_session()).positions
    assert p.attributes["crcMismatch"] is True and p.latitude == pytest.approx(54.6872)


def test_truncated_frame_is_a_decode_error() -> None:
    frame = encode_batch([sample(), sample()])
    for cut in (5, 11, 20, len(frame) // 2, len(frame) - 40):
        with pytest.raises(DecodeError):
            PROTOCOL.decode(frame[:cut], tcp_session())


def test_garbage_is_a_decode_error() -> None:
    with pytest.raises(DecodeError):
        PROTOCOL.decode(b"GET / HTTP/1.1\r\n\r\n", tcp_session())
    with pytest.raises(DecodeError):
        PROTOCOL.decode(b"\x00\x00\x00\x01" + bytes(20), tcp_session())


# Stream framing ---------------------------------------------------------------------------------


def test_split_yields_handshake_keepalive_and_data_frames_then_waits_for_the_rest() -> None:
    login = encode_login(IMEI)
    first = encode_position(sample())
    second = encode_batch([sample(), sample()], codec=0x8E)
    stream = login + b"\xff" + first + second + second[: len(second) // 2]
    frames, stream = split_all(PROTOCOL, stream)
    assert frames == [login, b"\xff", first, second]
    assert stream == second[: len(second) // 2]


def test_split_skips_garbage_before_a_frame() -> None:
    frame = encode_position(sample())
    frame_out, consumed = PROTOCOL.split(b"junk" + frame)
    assert frame_out is None and consumed == 4
    assert PROTOCOL.split(frame) == (frame, len(frame))


def test_split_refuses_an_oversized_frame() -> None:
    header = b"\0\0\0\0" + (PROTOCOL.max_frame).to_bytes(4, "big") + b"\x08\x01"
    with pytest.raises(FrameError):
        PROTOCOL.split(header)


def test_a_run_of_zero_bytes_is_skipped_in_one_split() -> None:
    """Line noise of zeros (a broken modem): all of it but the last 7 bytes, where a frame's length
    could still begin, goes in one call, not one byte per call (which held the event loop ~80 ms
    per 64 KiB)."""
    assert PROTOCOL.split(bytes(65536)) == (None, 65536 - 7)
    assert PROTOCOL.split(bytes(7)) == (None, 0)
    assert PROTOCOL.split(bytes(9) + b"\x01") == (None, 2)


def _one_byte_at_a_time(buffer: bytes) -> tuple[bytes | None, int]:
    """The framer as it was: the bytes of a zero run that cannot start a frame went one per call."""
    frame, consumed = PROTOCOL.split(buffer)
    if frame is None and consumed > 1 and buffer[0] == 0:
        return None, 1
    return frame, consumed


def _frames(stream: bytes, split: Callable[[bytes], tuple[bytes | None, int]]) -> tuple[list[bytes], int, bytes, str]:
    """The frames ``split`` finds in ``stream``, the bytes it skips, what is left, the error that cuts it."""
    frames: list[bytes] = []
    skipped = 0
    try:
        while stream:
            frame, consumed = split(stream)
            if consumed == 0:
                break
            if frame is None:
                skipped += consumed
            else:
                frames.append(frame)
            stream = stream[consumed:]
    except FrameError as exc:
        return frames, skipped, stream, str(exc)
    return frames, skipped, stream, ""


_PIECES = [encode_login(IMEI), b"\xff", encode_position(sample()), b"\0\0\0\0\0\0\0\x05", b"\0\x0f"]


@given(st.lists(st.one_of(st.integers(0, 40).map(bytes), st.sampled_from(_PIECES), st.binary(max_size=12)),
                max_size=12))
def test_zero_runs_skipped_in_bulk_frame_the_stream_as_one_byte_at_a_time_did(chunks: list[bytes]) -> None:
    stream = b"".join(chunks)
    assert _frames(stream, PROTOCOL.split) == _frames(stream, _one_byte_at_a_time)


# UDP ----------------------------------------------------------------------------------------------


def test_udp_datagram_identifies_the_device_and_acks_echoing_the_packet_ids() -> None:
    session = Session(transport="udp", now=lambda: NOW)
    datagram = encode_udp([sample(), sample()], IMEI, packet_id=0xCAFE, avl_packet_id=0x7B)
    result = PROTOCOL.decode(datagram, session)
    assert session.device == IMEI
    assert result.reply == b"\x00\x05\xca\xfe\x01\x7b\x02"
    assert len(result.positions) == 2 and result.positions[0].device == IMEI
    assert all("crcMismatch" not in p.attributes for p in result.positions)


def test_udp_datagram_with_wrong_length_is_a_decode_error() -> None:
    datagram = encode_udp([sample()], IMEI, packet_id=1, avl_packet_id=1)
    with pytest.raises(DecodeError, match="UDP"):
        PROTOCOL.decode(datagram + b"\x00", Session(transport="udp"))


# Encoders -----------------------------------------------------------------------------------------


def test_encoders_reject_what_the_wire_cannot_carry() -> None:
    with pytest.raises(ValueError):
        encode_batch([])
    with pytest.raises(ValueError):
        encode_batch([sample()] * 256)
    with pytest.raises(ValueError):
        encode_batch([sample()], codec=0x10)


# Property tests -----------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["tcp", "udp"]))
def test_arbitrary_bytes_raise_nothing_but_decode_errors(data: bytes, transport: str) -> None:
    try:
        PROTOCOL.split(data)
    except DecodeError:
        pass
    try:
        PROTOCOL.decode(data, Session(transport=transport, device=IMEI))
    except DecodeError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([0x07, 0x08, 0x8E, 0x0C, 0x0D, 0x10]), st.integers(0, 4))
def test_arbitrary_record_bytes_in_a_valid_envelope_raise_only_decode_errors(
        body: bytes, codec: int, count: int) -> None:
    try:
        PROTOCOL.decode(frame_from(codec, [body], count=count), tcp_session())
    except DecodeError:
        pass


positions = st.builds(
    lambda ms, lat, lon, speed, course, alt, sats, ign, power, odo, rssi: sample(
        fix_time=datetime(2000, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms),
        valid=sats > 0, latitude=lat, longitude=lon, speed_kmh=float(speed), course=float(course),
        altitude_m=float(alt), satellites=sats, ignition=ign, power_mv=power, odometer_m=odo,
        attributes={} if rssi is None else {"rssi": rssi},
    ),
    st.integers(0, 40 * 365 * 86400 * 1000),
    st.floats(-90, 90, allow_nan=False),
    st.floats(-180, 180, allow_nan=False),
    st.integers(0, 300),
    st.integers(0, 359),
    st.integers(-400, 8000),
    st.integers(0, 40),
    st.none() | st.booleans(),
    st.none() | st.integers(0, 65535),
    st.none() | st.integers(0, 2**32 - 1),
    st.none() | st.integers(0, 5),
)


def _assert_same(got: Position, sent: Position) -> None:
    assert got.device == IMEI
    assert got.fix_time == sent.fix_time
    assert got.valid is sent.valid
    assert got.latitude == pytest.approx(sent.latitude, abs=1e-7)
    assert got.longitude == pytest.approx(sent.longitude, abs=1e-7)
    assert got.speed_kmh == sent.speed_kmh and got.course == sent.course and got.altitude_m == sent.altitude_m
    assert got.satellites == sent.satellites
    assert got.ignition == sent.ignition and got.power_mv == sent.power_mv and got.odometer_m == sent.odometer_m
    assert got.attributes.get("rssi") == sent.attributes.get("rssi")
    assert "crcMismatch" not in got.attributes


@settings(max_examples=200, deadline=None)
@given(positions)
def test_encode_position_round_trips_through_split_and_decode(sent: Position) -> None:
    session = tcp_session(device=None)
    stream = encode_login(IMEI) + encode_position(sent)
    login, used = PROTOCOL.split(stream)
    assert login is not None
    PROTOCOL.decode(login, session)
    frame, _ = PROTOCOL.split(stream[used:])
    assert frame is not None
    result = PROTOCOL.decode(frame, session)
    assert result.reply == b"\x00\x00\x00\x01"
    [got] = result.positions
    _assert_same(got, sent)


@settings(max_examples=100, deadline=None)
@given(st.lists(positions, min_size=1, max_size=20), st.sampled_from([0x08, 0x8E]), st.booleans())
def test_batches_round_trip_over_tcp_and_udp(sent: list[Position], codec: int, udp: bool) -> None:
    if udp:
        session = Session(transport="udp")
        result = PROTOCOL.decode(encode_udp(sent, IMEI, 7, 9, codec=codec), session)
        assert result.reply == b"\x00\x05\x00\x07\x01\x09" + bytes((len(sent),))
    else:
        result = PROTOCOL.decode(encode_batch(sent, codec), tcp_session())
        assert result.reply == len(sent).to_bytes(4, "big")
    assert len(result.positions) == len(sent)
    for got, want in zip(result.positions, sent, strict=True):
        _assert_same(got, want)
