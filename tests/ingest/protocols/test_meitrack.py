"""Behaviour of the Meitrack decoder: replies, checksum policy, framing, bad input, encoder round trip."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avl.records import Position
from ingest.protocols.base import DecodeError, FrameError, Session
from ingest.protocols.meitrack import PROTOCOL, encode_login, encode_position

IMEI = "864507031245110"
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def session() -> Session:
    return Session(transport="tcp", now=lambda: NOW)


def cs(data: bytes) -> bytes:
    return f"{sum(data) % 256:02X}".encode()


def frame(body: bytes, imei: str = IMEI, flag: bytes = b"A", prefix: bytes = b"$$", crlf: bool = True) -> bytes:
    """A Meitrack frame with a correct length and checksum, built independently of the module."""
    tail = b"," + imei.encode() + b"," + body + b"*"
    head = prefix + flag + str(len(tail) + 4).encode()
    return head + tail + cs(head + tail) + (b"\r\n" if crlf else b"")


AAA_BODY = (
    b"AAA,35,22.512618,-114.057065,240501103000,A,9,18,56.5,213,0.9,120,15075,934591,"
    b"520|4|0643|07D20555,0401,0000|0000|0000|018D|04CB,,"
)


def ccc_record(event: int, lat: float, lon: float, when: datetime) -> bytes:
    seconds = int((when - datetime(2000, 1, 1, tzinfo=UTC)).total_seconds())
    return struct.pack(
        "<BiiIBBBHHHhIIHHHHHHHHI",
        event, round(lat * 1e6), round(lon * 1e6), seconds, 1, 8, 20, 42, 90, 12, 150, 123456, 3600,
        510, 1, 0x3504, 0xEBFE, 2, 5, 419, 1250, 0,
    )


def cce_record(index: int, lat: float, lon: float, when: datetime) -> bytes:
    seconds = int((when - datetime(2000, 1, 1, tzinfo=UTC)).total_seconds())
    one = bytes([4, 0x01, 1, 0x05, 1, 0x06, 11, 0xFE, 0x69, 77])
    two = bytes([3, 0x08]) + struct.pack("<H", 64) + bytes([0x09]) + struct.pack("<H", 181) + bytes([0x1A]) + \
        struct.pack("<H", 1395)
    four = bytes([3, 0x02]) + struct.pack("<i", round(lat * 1e6)) + bytes([0x03]) + struct.pack("<i", round(lon * 1e6)) + \
        bytes([0x04]) + struct.pack("<I", seconds)
    var = bytes([1, 0xFE, 0xA8, 7, 1, 60, 1, 88, 0, 0, 0])
    body = struct.pack("<H", index) + one + two + four + var
    return struct.pack("<H", len(body)) + body


# Replies -------------------------------------------------------------------------------------


def test_aaa_report_decodes_and_gets_no_reply() -> None:
    s = session()
    result = PROTOCOL.decode(frame(AAA_BODY), s)
    assert result.reply is None
    assert s.device == IMEI
    [p] = result.positions
    assert p.fix_time == datetime(2024, 5, 1, 10, 30, tzinfo=UTC)
    assert p.valid is True
    assert (p.latitude, p.longitude) == (22.512618, -114.057065)
    assert p.speed_kmh == 56.5 and p.course == 213 and p.altitude_m == 120
    assert p.satellites == 9 and p.hdop == 0.9 and p.odometer_m == 15075
    assert p.battery_mv == 3970 and p.power_mv == 12270
    assert p.alarm is None
    assert p.attributes["input"] == 4 and p.attributes["output"] == 1 and p.attributes["event"] == 35
    assert "crcMismatch" not in p.attributes


def test_aaa_event_maps_to_alarm() -> None:
    body = AAA_BODY.replace(b"AAA,35,", b"AAA,1,")
    [p] = PROTOCOL.decode(frame(body), session()).positions
    assert p.alarm == "sos"


def test_aaa_analog_scaling_follows_the_model_option() -> None:
    s = session()
    s.options["model"] = "MVT380"
    [p] = PROTOCOL.decode(frame(AAA_BODY), s).positions
    assert p.battery_mv == round(0x018D * 3.0 * 2.0 / 1024.0 * 1000)


def test_ccc_gets_the_count_reply_with_the_frame_flag() -> None:
    when = datetime(2024, 4, 30, 8, 0, tzinfo=UTC)
    body = b"CCC," + bytes.fromhex("0201340002000000") + ccc_record(35, -7.2665, 112.74365, when) + \
        ccc_record(1, -7.2666, 112.7437, when + timedelta(seconds=30))
    result = PROTOCOL.decode(frame(body, flag=b"X"), session())
    expected = b"@@X27," + IMEI.encode() + b",CCC,2*"
    assert result.reply == expected + cs(expected) + b"\r\n"
    first, second = result.positions
    assert first.fix_time == when and first.valid is True
    assert abs(first.latitude - -7.2665) < 1e-9 and abs(first.longitude - 112.74365) < 1e-9  # type: ignore[operator]
    assert first.speed_kmh == 42 and first.course == 90 and first.hdop == pytest.approx(1.2)
    assert first.battery_mv == 4190 and first.power_mv == 12500 and first.odometer_m == 123456
    assert second.alarm == "sos"


def test_ccc_without_records_acknowledges_zero() -> None:
    body = b"CCC," + bytes.fromhex("0201340000000000")
    result = PROTOCOL.decode(frame(body, flag=b"Q"), session())
    assert result.positions == []
    assert result.reply is not None and result.reply.startswith(b"@@Q27,") and b",CCC,0*" in result.reply


def test_aac_keepalive_gets_the_aac_reply() -> None:
    result = PROTOCOL.decode(frame(b"AAC,1", flag=b"z"), session())
    expected = b"@@z27," + IMEI.encode() + b",AAC,1*"
    assert result.reply == expected + cs(expected) + b"\r\n"
    assert result.positions == []


def test_cce_records_decode_without_reply() -> None:
    when = datetime(2024, 4, 30, 8, 0, tzinfo=UTC)
    body = b"CCE," + struct.pack("<IH", 5, 2) + cce_record(7, 51.5, -0.12, when) + \
        cce_record(8, 51.6, -0.13, when + timedelta(seconds=10))
    result = PROTOCOL.decode(frame(body), session())
    assert result.reply is None
    first, second = result.positions
    assert first.fix_time == when and first.valid is True and first.satellites == 11
    assert first.latitude == pytest.approx(51.5) and first.longitude == pytest.approx(-0.12)
    assert first.speed_kmh == 64 and first.course == 181 and first.power_mv == 13950
    assert first.alarm == "sos"
    assert first.attributes["index"] == 7 and first.attributes["batteryLevel"] == 60
    assert first.attributes["battery2Level"] == 88 and first.attributes["cacheRemaining"] == 5
    assert second.attributes["index"] == 8


def test_cce_record_longer_than_the_frame_is_rejected() -> None:
    when = datetime(2024, 4, 30, 8, 0, tzinfo=UTC)
    body = b"CCE," + struct.pack("<IH", 0, 2) + cce_record(7, 51.5, -0.12, when)
    with pytest.raises(DecodeError):
        PROTOCOL.decode(frame(body), session())


def test_photo_transfer_requests_chunks_and_ends_with_an_image_record() -> None:
    s = session()
    taken = PROTOCOL.decode(frame(b"D03,OK"), s)
    request = b"@@O46," + IMEI.encode() + b",D00,camera_picture.jpg,0*"
    assert taken.reply == request + cs(request) + b"\r\n"
    assert taken.positions == []
    name = b"photo_0001.jpg"
    replies = []
    for index in range(9):
        result = PROTOCOL.decode(frame(b"D00," + name + b",10,%d," % index + bytes([0xFF, 0xD8, index])), s)
        assert result.positions == []
        replies.append(result.reply)
    assert replies[:7] == [None] * 7 and replies[8] is None
    assert replies[7] is not None and b",D00,photo_0001.jpg,8*" in replies[7]
    last = PROTOCOL.decode(frame(b"D00," + name + b",10,9," + b"\xff\xd9"), s)
    [record] = last.positions
    assert record.attributes["image"] == "photo_0001.jpg" and record.attributes["imageSize"] == 29
    assert record.latitude is None and record.fix_time == NOW


def test_d82_command_result_is_a_status_record() -> None:
    [p] = PROTOCOL.decode(frame(b"D82,OK,unlocked"), session()).positions
    assert p.attributes["result"] == "D82,OK,unlocked"
    assert not p.located


def test_unknown_command_response_yields_nothing() -> None:
    result = PROTOCOL.decode(frame(b"C01,OK"), session())
    assert result.positions == [] and result.reply is None


# Checksum and bad input ---------------------------------------------------------------------


def test_bad_checksum_still_decodes_and_is_flagged() -> None:
    good = frame(AAA_BODY)
    star = good.rindex(b"*")
    wrong = b"00" if good[star + 1:star + 3] != b"00" else b"01"
    bad = good[:star + 1] + wrong + b"\r\n"
    [p] = PROTOCOL.decode(bad, session()).positions
    assert p.attributes["crcMismatch"] is True
    assert p.latitude == 22.512618


def test_decode_accepts_frames_without_crlf() -> None:
    [p] = PROTOCOL.decode(frame(AAA_BODY, crlf=False), session()).positions
    assert "crcMismatch" not in p.attributes


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"$$A10,123",
        frame(AAA_BODY)[:60],
        frame(b"AAA,35,22.5,114.0,notadate,A"),
        frame(b"CCE,\x01\x00"),
        b"$$A99,86450703124511X,AAA,1*00\r\n",
    ],
)
def test_truncated_or_garbage_frames_raise_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        PROTOCOL.decode(data, session())


# Framing ------------------------------------------------------------------------------------


def test_split_two_frames_and_half_a_third() -> None:
    a, b, c = frame(AAA_BODY), frame(b"AAC,1", flag=b"z"), frame(AAA_BODY, flag=b"B")
    buffer = a + b + c[: len(c) // 2]
    got = []
    while True:
        f, n = PROTOCOL.split(buffer)
        if f is None and n == 0:
            break
        if f is not None:
            got.append(f)
        buffer = buffer[n:]
    assert got == [a, b]
    assert buffer == c[: len(c) // 2]


def test_split_skips_garbage_before_a_frame() -> None:
    data = b"\x00noise" + frame(b"AAC,1")
    f, n = PROTOCOL.split(data)
    assert f is None and n == 6
    assert PROTOCOL.split(data[n:])[0] == frame(b"AAC,1")


@pytest.mark.parametrize("declared", [b"25", b"28", b"40"])
def test_split_ends_a_text_frame_with_a_miscounted_length_at_its_trailer(declared: bytes) -> None:
    good = frame(b"AAC,1")
    wrong = good.replace(b"$$A27,", b"$$A" + declared + b",")
    assert PROTOCOL.split(wrong + good) == (wrong, len(wrong))
    assert PROTOCOL.split(wrong) == (wrong, len(wrong))


def test_split_waits_for_a_binary_frame_up_to_its_declared_length() -> None:
    body = b"CCE," + struct.pack("<IH", 0, 0) + b"*00\r\n"  # looks like a trailer inside binary data
    whole = frame(body)
    assert PROTOCOL.split(whole[:-4]) == (None, 0)
    assert PROTOCOL.split(whole) == (whole, len(whole))


def test_oversized_declared_length_raises_frame_error() -> None:
    with pytest.raises(FrameError):
        PROTOCOL.split(b"$$A99999," + IMEI.encode() + b",CCE,")


def test_encode_login_is_none() -> None:
    assert encode_login(IMEI) is None


# Properties ---------------------------------------------------------------------------------


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_decode_error(data: bytes) -> None:
    for candidate in (data, b"$$A" + data, b"$$A%d," % len(data) + data):
        try:
            PROTOCOL.split(candidate)
        except DecodeError:
            pass
        try:
            PROTOCOL.decode(candidate, session())
        except DecodeError:
            pass


@settings(max_examples=200)
@given(
    st.builds(
        Position,
        device=st.from_regex(r"[0-9]{15}", fullmatch=True),
        fix_time=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31),
                              timezones=st.just(UTC)).map(lambda t: t.replace(microsecond=0)),
        valid=st.booleans(),
        latitude=st.floats(-90, 90),
        longitude=st.floats(-180, 180),
        speed_kmh=st.floats(0, 500),
        course=st.integers(0, 359).map(float),
        altitude_m=st.integers(-400, 9000).map(float),
        satellites=st.integers(0, 40),
        power_mv=st.integers(0, 655350),
        battery_mv=st.integers(0, 655350),
        odometer_m=st.integers(0, 2**31),
    ),
    st.integers(0, 1000),
)
def test_encode_position_round_trips(p: Position, sequence: int) -> None:
    wire = encode_position(p, sequence)
    f, n = PROTOCOL.split(wire + b"$$")
    assert f == wire and n == len(wire)
    s = session()
    [q] = PROTOCOL.decode(f, s).positions
    assert s.device == p.device == q.device
    assert q.fix_time == p.fix_time and q.valid is p.valid
    assert abs(q.latitude - p.latitude) <= 5e-7 and abs(q.longitude - p.longitude) <= 5e-7  # type: ignore[operator]
    assert abs(q.speed_kmh - p.speed_kmh) <= 0.05 + 1e-9  # type: ignore[operator]
    assert q.course == p.course and q.altitude_m == p.altitude_m and q.satellites == p.satellites
    assert abs(q.power_mv - p.power_mv) <= 5 and abs(q.battery_mv - p.battery_mv) <= 5  # type: ignore[operator]
    assert q.odometer_m == p.odometer_m
    assert "crcMismatch" not in q.attributes
