"""Behaviour of the Queclink @Track (gl200) decoder: replies, framing, binary forms, the simulator."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avl.records import Position
from ingest.protocols.base import DecodeError, FrameError, Session
from ingest.protocols.crc16 import crc8_nrsc5, crc16_ccitt_false
from ingest.protocols.gl200 import PROTOCOL, encode_login, encode_position
from tests.ingest.protocols.framing import split_all

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
IMEI = "865084030003675"


def session(device: str | None = None, **options: str) -> Session:
    return Session(transport="tcp", device=device, options=dict(options), now=lambda: NOW)


def fri(count: str = "11F0", head: str = "+RESP") -> bytes:
    return (f"{head}:GTFRI,060100,{IMEI},,12500,10,1,1,4.3,92,70.0,121.354335,31.222073,"
            f"20240214013254,0460,0000,18d8,6141,00,2000.0,12345:12:34,,,80,220100,,,,"
            f"20240214093254,{count}$").encode()


def hex_rsp(hdop: int = 1, speed: tuple[int, int] = (22, 1), imei: str = IMEI) -> bytes:
    """A HEX +RSP fixed report (mask 00FC1FBF) with a correct length and CRC."""
    uid = bytes(int(imei[i:i + 2]) for i in range(0, 14, 2)) + bytes([int(imei[14])])
    body = bytes([7]) + (0x00FC1FBF).to_bytes(4, "big") + b"\0\0" + bytes([0x45, 1, 2, 2, 9]) + uid
    body += bytes([100]) + (14206).to_bytes(2, "big") + bytes([0x42, 0x07, 0x10, 1])
    body += bytes([hdop]) + speed[0].to_bytes(2, "big") + bytes([speed[1]])
    body += (242).to_bytes(2, "big") + (126).to_bytes(2, "big", signed=True)
    body += (-9_068_207).to_bytes(4, "big", signed=True) + (39_611_009).to_bytes(4, "big", signed=True)
    body += bytes([0x07, 0xE8, 8, 1, 8, 26, 42]) + bytes(9)  # 2024-08-01 08:26:42, cell
    body += bytes(3 + 5 + 3 + 6)  # mileages and hour meters
    body += bytes([0x07, 0xE8, 8, 1, 8, 36, 16]) + b"\x19\xe1"  # send time, count
    length = 4 + len(body) + 4
    body = body[:5] + length.to_bytes(2, "big") + body[7:]
    return b"+RSP" + body + crc16_ccitt_false(body).to_bytes(2, "big") + b"\r\n"


def pro_report(fix: int = 0x29) -> bytes:
    """A Protocol Pro report with one record holding a full location (data id 0x52)."""
    location = bytes([fix]) + (-91_543_308).to_bytes(4, "big", signed=True)
    location += (44_833_422).to_bytes(4, "big", signed=True) + (1_700_000_000).to_bytes(4, "big")
    location += (455).to_bytes(2, "big") + bytes([22]) + (90).to_bytes(2, "big")
    location += (4341).to_bytes(3, "big", signed=True) + bytes([5])
    record = (1_700_000_000).to_bytes(4, "big") + b"\x01\x89\x50\x00"  # time, count, id, event
    record += b"\x52" + bytes([len(location)]) + location
    record = bytes([1 + len(record)]) + record  # the record length counts itself
    head = b"\x00" + bytes.fromhex("0" + IMEI) + b"\x82\x03\x00\x03\x00\x00"
    body = head + record + b"\x01\x0f"
    length = 4 + len(body) + 2
    frame = b"+\x00" + length.to_bytes(2, "big") + body
    return frame + bytes([crc8_nrsc5(frame)]) + b"$"


# Replies ----------------------------------------------------------------------------


def test_heartbeat_gets_sack_with_version_and_count_and_no_record() -> None:
    s = session()
    result = PROTOCOL.decode(b"+ACK:GTHBD,1A0401,135790246811220,,20240214093254,11F0$", s)
    assert result.reply == b"+SACK:GTHBD,1A0401,11F0$"
    assert result.positions == []
    assert s.device == "135790246811220"


def test_live_and_buffered_reports_get_sack_echoing_the_count_byte_for_byte() -> None:
    for head in ("+RESP", "+BUFF"):
        result = PROTOCOL.decode(fri("11f0", head), session())
        assert result.reply == b"+SACK:11f0$"
        assert len(result.positions) == 1


def test_report_without_a_4_hex_count_gets_no_sack() -> None:
    frame = fri().replace(b",11F0$", b",202306161834$")
    assert PROTOCOL.decode(frame, session()).reply is None


def test_command_ack_is_a_status_record_without_reply() -> None:
    result = PROTOCOL.decode(b"+ACK:GTRTO,1A0401,135790246811220,,0011,20240214093254,11F2$", session())
    assert result.reply is None
    [p] = result.positions
    assert not p.located and p.attributes["result"] == "+ACK:GTRTO"
    assert p.fix_time == datetime(2024, 2, 14, 9, 32, 54, tzinfo=UTC)


def test_binary_frames_get_no_reply() -> None:
    assert PROTOCOL.decode(hex_rsp(), session()).reply is None
    assert PROTOCOL.decode(pro_report(), session()).reply is None


# Text decoding ----------------------------------------------------------------------


def test_fri_report_decodes_location_status_and_identity() -> None:
    s = session()
    [p] = PROTOCOL.decode(fri(), s).positions
    assert s.device == IMEI and p.device == IMEI
    assert p.fix_time == datetime(2024, 2, 14, 1, 32, 54, tzinfo=UTC)
    assert (p.latitude, p.longitude, p.valid) == (31.222073, 121.354335, True)
    assert p.speed_kmh == pytest.approx(4.3)
    assert (p.course, p.altitude_m, p.hdop) == (92.0, 70.0, 1.0)
    assert p.power_mv == 12500 and p.odometer_m == 2_000_000
    assert p.ignition is True and p.attributes["batteryLevel"] == 80
    assert p.attributes["hours"] == (12345 * 3600 + 12 * 60 + 34) * 1000
    assert p.attributes["type"] == "FRI"


def test_zero_gnss_accuracy_marks_the_fix_invalid() -> None:
    frame = fri().replace(b",1,1,4.3,", b",1,0,4.3,")
    [p] = PROTOCOL.decode(frame, session()).positions
    assert p.located and p.valid is False


def test_alarm_report_maps_to_alarm_name() -> None:
    frame = (f"+RESP:GTSOS,020102,{IMEI},,0,0,1,1,4.3,92,70.0,121.354335,31.222073,"
             f"20240214013254,0460,0000,18d8,6141,00,,20240214093254,11F0$").encode()
    [p] = PROTOCOL.decode(frame, session()).positions
    assert p.alarm == "sos" and p.located


def test_power_off_report_without_location_is_a_status_record_at_send_time() -> None:
    frame = f"+RESP:GTPFA,F50201,{IMEI},GL300M,20240208124849,0BD4$".encode()
    [p] = PROTOCOL.decode(frame, session()).positions
    assert not p.located and p.alarm == "powerOff"
    assert p.fix_time == datetime(2024, 2, 8, 12, 48, 49, tzinfo=UTC)


def test_model_option_overrides_the_protocol_version_model() -> None:
    frame = (f"+RESP:GTERI,060100,{IMEI},,00000100,0,0,1,2,0.0,0,36.9,-1.844589,52.177779,"
             "20240106125701,0234,0015,0135,34A1,19,0,,79,1,,0,20240106125723,184D$").encode()
    [p] = PROTOCOL.decode(frame, session(model="GL500M")).positions
    assert p.attributes["batteryLevel"] == 79


def test_frame_with_trailing_crlf_or_no_dollar_decodes_the_same() -> None:
    base = PROTOCOL.decode(fri(), session()).positions[0]
    for variant in (fri() + b"\r\n", fri()[:-1]):
        p = PROTOCOL.decode(variant, session()).positions[0]
        assert (p.latitude, p.longitude, p.fix_time) == (base.latitude, base.longitude, base.fix_time)


def test_report_without_imei_on_an_unidentified_session_is_rejected() -> None:
    frame = b"+RESP:GTPFA,F50201,,GL300M,20240208124849,0BD4$"
    with pytest.raises(DecodeError):
        PROTOCOL.decode(frame, session())


# Binary decoding --------------------------------------------------------------------


def test_hex_report_decodes_with_vendor_imei_and_speed() -> None:
    s = session()
    [p] = PROTOCOL.decode(hex_rsp(), s).positions
    assert s.device == IMEI
    assert (p.latitude, p.longitude) == (39.611009, -9.068207)
    assert p.fix_time == datetime(2024, 8, 1, 8, 26, 42, tzinfo=UTC)
    assert p.speed_kmh == pytest.approx(22.1) and p.course == 242.0 and p.altitude_m == 126.0
    assert p.valid is True and p.power_mv == 14206 and p.satellites == 7
    assert p.attributes["batteryLevel"] == 100
    assert "crcMismatch" not in p.attributes


def test_hex_report_with_bad_crc_is_decoded_and_flagged() -> None:
    frame = bytearray(hex_rsp())
    frame[-3] ^= 0xFF
    [p] = PROTOCOL.decode(bytes(frame), session()).positions
    assert p.attributes["crcMismatch"] is True and p.located


def test_protocol_pro_report_decodes_full_location() -> None:
    s = session()
    [p] = PROTOCOL.decode(pro_report(), s).positions
    assert s.device == IMEI
    assert (p.latitude, p.longitude) == (44.833422, -91.543308)
    assert p.fix_time == datetime.fromtimestamp(1_700_000_000, UTC)
    assert p.speed_kmh == pytest.approx(45.5) and p.hdop == pytest.approx(2.2)
    assert p.altitude_m == pytest.approx(434.1) and p.satellites == 5 and p.valid is True
    assert "crcMismatch" not in p.attributes


def test_protocol_pro_bad_crc_is_flagged() -> None:
    frame = bytearray(pro_report())
    frame[-2] ^= 0x01
    [p] = PROTOCOL.decode(bytes(frame), session()).positions
    assert p.attributes["crcMismatch"] is True


def test_truncated_binary_frames_raise_decode_error() -> None:
    for frame in (hex_rsp()[:40], pro_report()[:20], hex_rsp()[:11]):
        with pytest.raises(DecodeError):
            PROTOCOL.decode(frame, session())


def test_garbage_raises_decode_error() -> None:
    for frame in (b"hello world", b"+RESP:NOPE,1,2,3$", b"\x00\x01\x02", b"+RESP:GT"):
        with pytest.raises(DecodeError):
            PROTOCOL.decode(frame, session())


# Framing ----------------------------------------------------------------------------


_split_all = partial(split_all, PROTOCOL)


def test_split_two_frames_and_half_a_third() -> None:
    text_frame, hex_frame, pro = fri(), hex_rsp(), pro_report()
    stream = text_frame + b"\r\n" + hex_frame + pro + text_frame[:30]
    frames, rest = _split_all(stream)
    assert frames == [text_frame[:-1], hex_frame, pro]
    assert rest == text_frame[:30]


def test_split_waits_for_a_binary_frame_to_complete() -> None:
    frame = hex_rsp()
    assert PROTOCOL.split(frame[:50]) == (None, 0)
    assert PROTOCOL.split(frame[:8]) == (None, 0)


def test_split_skips_garbage_and_stray_delimiters() -> None:
    frames, _ = _split_all(b"\x00\x00junk$" + fri())
    assert frames == [fri()[:-1]]


def test_split_accepts_nul_terminated_text() -> None:
    frame, consumed = PROTOCOL.split(fri()[:-1] + b"\x00" + b"+RESP")
    assert frame == fri()[:-1] and consumed == len(fri())


def test_oversized_stream_raises_frame_error() -> None:
    with pytest.raises(FrameError):
        PROTOCOL.split(b"+RESP:GTFRI," + b"1" * (PROTOCOL.max_frame + 10))
    too_long = b"+RSP\x07\x00\xfc\x1f\xbf\xff\xff" + bytes(20)
    with pytest.raises(FrameError):
        PROTOCOL.split(too_long)


# Robustness -------------------------------------------------------------------------

_PREFIXES = st.sampled_from([b"", b"+RESP:GTFRI,", b"+RESP:GTERI,", b"+RESP:GTCAN,", b"+ACK:GTHBD,",
                             b"+RSP", b"+EVT", b"+INF", b"+\x00", b"+\x10", b"+BUFF:GTIGN,"])


@settings(max_examples=400, deadline=None)
@given(prefix=_PREFIXES, data=st.binary(max_size=300))
def test_arbitrary_bytes_raise_nothing_but_decode_error(prefix: bytes, data: bytes) -> None:
    blob = prefix + data
    try:
        PROTOCOL.split(blob)
    except DecodeError:
        pass
    try:
        PROTOCOL.decode(blob, session())
    except DecodeError:
        pass


_FIELDS = st.lists(st.sampled_from(["", "0", "1", "10", "4.3", "-1.5", "121.354335", "31.222073",
                                    "20240214013254", "FF", "00000104", "H123", "L/H5.0", "P9.0",
                                    "01070:43:13", "11F0", "220100"]), max_size=60)


@settings(max_examples=400, deadline=None)
@given(kind=st.sampled_from(["FRI", "ERI", "CAN", "INF", "IGN", "OBD", "DAT", "BAA", "HBM", "LBS"]),
       fields=_FIELDS)
def test_field_soup_text_reports_raise_nothing_but_decode_error(kind: str, fields: list[str]) -> None:
    frame = f"+RESP:GT{kind},060100,{IMEI},," + ",".join(fields) + "$"
    try:
        PROTOCOL.decode(frame.encode(), session())
    except DecodeError:
        pass


# Simulator encoders -----------------------------------------------------------------


def test_encode_login_is_none() -> None:
    assert encode_login(IMEI) is None


def test_buffered_encoding_has_the_same_content_under_buff() -> None:
    p = Position(device=IMEI, fix_time=NOW, valid=True, latitude=1.5, longitude=2.5, speed_kmh=10.0)
    live, buffered = encode_position(p, 7), encode_position(p, 7, buffered=True)
    assert live.startswith(b"+RESP:GTFRI,") and buffered.startswith(b"+BUFF:GTFRI,")
    assert live.split(b":", 1)[1] == buffered.split(b":", 1)[1]


def test_encoder_rejects_a_device_id_that_is_not_an_imei() -> None:
    with pytest.raises(ValueError):
        encode_position(Position(device="abc", fix_time=NOW))


@settings(max_examples=200, deadline=None)
@given(
    device=st.from_regex(r"[0-9]{15}", fullmatch=True),
    when=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC)),
    valid=st.booleans(),
    latitude=st.floats(-89.999999, 89.999999),
    longitude=st.floats(-179.999999, 179.999999),
    speed=st.integers(0, 9999),
    course=st.integers(0, 359),
    power=st.one_of(st.none(), st.integers(11, 32000)),
    ignition=st.one_of(st.none(), st.booleans()),
    sequence=st.integers(0, 0xFFFF),
    buffered=st.booleans(),
)
def test_encode_position_round_trips(device: str, when: datetime, valid: bool, latitude: float,
                                     longitude: float, speed: int, course: int, power: int | None,
                                     ignition: bool | None, sequence: int, buffered: bool) -> None:
    when = when.replace(microsecond=0)
    original = Position(device=device, fix_time=when, valid=valid, latitude=latitude, longitude=longitude,
                        speed_kmh=speed / 10, course=float(course), power_mv=power, ignition=ignition)
    wire = encode_position(original, sequence, buffered=buffered)
    frame, consumed = PROTOCOL.split(wire)
    assert frame is not None and consumed == len(wire)
    s = session()
    result = PROTOCOL.decode(frame, s)
    assert result.reply == f"+SACK:{sequence:04X}$".encode()
    [p] = result.positions
    assert s.device == device and p.device == device
    assert p.fix_time == when and p.valid is valid
    assert p.latitude is not None and p.longitude is not None
    assert abs(p.latitude - latitude) <= 1e-6 and abs(p.longitude - longitude) <= 1e-6
    assert p.speed_kmh == pytest.approx(speed / 10)
    assert p.course == course
    assert p.power_mv == power and p.ignition is ignition


def test_line_noise_glued_before_the_header_is_ignored() -> None:
    [p] = PROTOCOL.decode(b"+\x01junk" + fri(), session()).positions
    assert p.device == IMEI and p.attributes["type"] == "FRI" and p.located
