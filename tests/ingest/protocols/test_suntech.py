"""Behaviour of the Suntech decoder: framing, report layouts, options, errors, the simulator."""

from __future__ import annotations

import struct
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avl.records import Position
from ingest.protocols.base import DecodeError, FrameError, Session
from ingest.protocols.suntech import PROTOCOL, encode_login, encode_position

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def session(**options: str) -> Session:
    return Session(transport="tcp", options=dict(options), now=lambda: NOW)


def st300(report_type: str, tail: str, device: str = "123456789") -> bytes:
    head = (
        f"ST300{report_type};{device};04;706;20240102;03:04:05;1a2b;-23.500000;-046.600000;"
        "036.000;123.45;9;1;5000;12.34;100001"
    )
    return f"{head};{tail}".encode("latin-1")


def uex(data: str, checksum: int) -> bytes:
    return st300("UEX", f"{len(data)};{data};{checksum:02X}")


def binary_report(report_type: int = 0x81, inputs: int = 0x01, alert: int = 0) -> bytes:
    """A binary universal report with every field of mask 0x3FFFFF."""
    body = bytes.fromhex("1234567890")  # device id
    body += (0x3FFFFF).to_bytes(3, "big")
    body += bytes([52, 1, 0, 3, 1])  # model, fw 1.0.3, mode (1 = live)
    body += bytes([24, 3, 9, 14, 15, 16])  # 2024-03-09 14:15:16
    body += struct.pack(">IHHHB", 0x1234, 724, 5, 0x10, 17)  # cell, mcc, mnc, lac, rssi
    body += struct.pack(">I", 0x80000000 | 23_123_456)  # -23.123456 (sign + magnitude)
    body += struct.pack(">I", 46_654_321)
    body += struct.pack(">HHBBBBBH", 4520, 27000, 11, 1, inputs, 0, alert, 0)
    return bytes([report_type]) + struct.pack(">H", len(body)) + body


# Replies and identity ------------------------------------------------------------------


def test_reports_get_no_reply_and_identify_the_device() -> None:
    s = session()
    result = PROTOCOL.decode(st300("STT", "2;17") + b"\r", s)
    assert result.reply is None
    assert s.device == "123456789"
    [p] = result.positions
    assert p.device == "123456789"
    assert p.fix_time == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert (p.latitude, p.longitude, p.valid) == (-23.5, -46.6, True)
    assert p.speed_kmh == pytest.approx(36.0)
    assert p.course == pytest.approx(123.45)
    assert p.satellites == 9
    assert p.odometer_m == 5000
    assert p.power_mv == 12340
    assert p.ignition is True
    assert p.attributes["out2"] is True
    assert p.attributes["status"] == 2 and p.attributes["index"] == 17


def test_keep_alive_identifies_the_device_and_yields_no_record_and_no_reply() -> None:
    s = session()
    result = PROTOCOL.decode(b"ST300ALV;987654321", s)
    assert result.positions == [] and result.reply is None
    assert s.device == "987654321"


def test_login_encoder_is_none_because_every_report_carries_the_id() -> None:
    assert encode_login("123456789") is None


def test_command_result_is_a_status_record() -> None:
    [p] = PROTOCOL.decode(b"ST300CMD;Res;123456789;706;Enable1", session()).positions
    assert p.attributes["result"] == "706;Enable1"
    assert not p.located and p.fix_time == NOW


def test_alerts_and_emergencies_map_to_alarm_names() -> None:
    [emergency] = PROTOCOL.decode(st300("EMG", "3"), session()).positions
    [alert] = PROTOCOL.decode(st300("ALT", "47"), session()).positions
    assert emergency.alarm == "powerCut"
    assert alert.alarm == "hardBraking"


def test_a_bare_device_answer_yields_nothing() -> None:
    assert PROTOCOL.decode(b"-Error\r", session()).positions == []


# Options -------------------------------------------------------------------------------


def test_hbm_option_reads_hours_backup_battery_and_driver() -> None:
    frame = st300("STT", "2;17;000120;4.05;1;ABCDEF0123;1")
    [plain] = PROTOCOL.decode(frame, session()).positions
    [hbm] = PROTOCOL.decode(frame, session(hbm="1")).positions
    assert "hours" not in plain.attributes and plain.battery_mv is None
    assert hbm.attributes["hours"] == 120 * 60_000
    assert hbm.battery_mv == 4050
    assert hbm.attributes["driverUniqueId"] == "ABCDEF0123"


def test_include_adc_and_temp_options() -> None:
    frame = st300("STT", "2;17;000120;4.05;1;1.25;;2.50;;0;10AB:+21.5;:;20CD:-3.0")
    [p] = PROTOCOL.decode(frame, session(hbm="1", includeAdc="true", includeTemp="true")).positions
    assert p.attributes["adc1"] == 1.25 and "adc2" not in p.attributes and p.attributes["adc3"] == 2.5
    assert p.attributes["temp1"] == 21.5 and "temp2" not in p.attributes and p.attributes["temp3"] == -3.0


def test_st910_protocol_type_1_adds_cell_and_odometer() -> None:
    frame = b"ST910;Alert;555111;20240102;03:04:05;0a0b0c;+10.500000;-070.250000;012.000;045.00;1;123456"
    [p] = PROTOCOL.decode(frame, session(protocolType="1")).positions
    assert p.alarm == "general" and p.odometer_m == 123456
    assert (p.latitude, p.longitude) == (10.5, -70.25)


# Universal and binary layouts ------------------------------------------------------------


def test_universal_text_report_follows_its_field_mask() -> None:
    frame = (
        b"STT;0560001616;3FFFFF;56;1.0.15;1;20240102;03:04:05;00008D6C;334;20;0925;24;"
        b"+20.741764;-103.430364;50.00;10.50;19;1;00000001;00000000;2;1;1765\r"
    )
    [p] = PROTOCOL.decode(frame, session()).positions
    assert p.device == "0560001616"
    assert (p.latitude, p.longitude, p.valid, p.satellites) == (20.741764, -103.430364, True, 19)
    assert p.speed_kmh == 50.0 and p.course == 10.5 and p.ignition is True
    assert p.attributes["index"] == 1765 and p.attributes["rssi"] == 24


def test_binary_report_decodes_signed_magnitude_coordinates() -> None:
    [p] = PROTOCOL.decode(binary_report(), session()).positions
    assert p.device == "1234567890"
    assert p.fix_time == datetime(2024, 3, 9, 14, 15, 16, tzinfo=UTC)
    assert p.latitude == pytest.approx(-23.123456) and p.longitude == pytest.approx(46.654321)
    assert p.speed_kmh == pytest.approx(45.2) and p.course == pytest.approx(270.0)
    assert p.ignition is True and p.valid is True and p.satellites == 11
    assert p.attributes["versionFw"] == "1.0.3"


def test_binary_alert_report_carries_the_alarm() -> None:
    [p] = PROTOCOL.decode(binary_report(0x82, inputs=0, alert=41), session()).positions
    assert p.alarm == "powerCut" and p.ignition is False


# Serial-data checksum (CRC policy) -------------------------------------------------------


def test_serial_data_with_matching_checksum_is_not_flagged() -> None:
    data = "RFID:00112233\r\n"
    [p] = PROTOCOL.decode(uex(data, sum(data.encode()) & 0xFF), session()).positions
    assert p.attributes["serial"] == "RFID:00112233"
    assert "crcMismatch" not in p.attributes


def test_serial_data_with_wrong_checksum_is_decoded_and_flagged() -> None:
    data = "hello device"
    [p] = PROTOCOL.decode(uex(data, (sum(data.encode()) + 1) & 0xFF), session()).positions
    assert p.attributes["serial"] == "hello device"
    assert p.attributes["crcMismatch"] is True
    assert p.located


def test_serial_fuel_pairs_sum_into_fuel() -> None:
    data = "N_0=0010.0;N_1=0020.0"
    [p] = PROTOCOL.decode(uex(data, sum(data.encode()) & 0xFF), session()).positions
    assert p.attributes["fuel0"] == 16 and p.attributes["fuel1"] == 32
    assert p.attributes["fuel"] == 48.0


# Bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"ST300STT;123456789;04;706;20240102",  # truncated text
        b"ST300STT;123456789;04;706;2024XX02;03:04:05;0;+1;+2;0;0;0;1;0;0;000000;1;1",  # bad date
        b"ST300STT;123456789;04;706;20240102;03:04:05;0;+99.0;+2;0;0;0;1;0;0;000000;1;1",  # bad lat
        binary_report()[:30],  # binary shorter than its declared length
        b"\x81\x00\x0b" + bytes(5) + b"\x3f\xff\xff" + bytes(3),  # mask promises more than it holds
        b"\x02\x00\x05\x10\x00",  # zip with a wrong length
        b"\xff\xfe\xfd;\x00",  # garbage
    ],
)
def test_malformed_frames_raise_decode_error(frame: bytes) -> None:
    with pytest.raises(DecodeError):
        PROTOCOL.decode(frame, session())


# Framing --------------------------------------------------------------------------------


def test_split_two_reports_and_half_a_third() -> None:
    first = st300("STT", "2;1")
    second = binary_report()
    third = st300("STT", "2;3")
    stream = first + b"\r" + second + third[:20]
    frame, used = PROTOCOL.split(stream)
    assert frame == first and used == len(first) + 1
    stream = stream[used:]
    frame, used = PROTOCOL.split(stream)
    assert frame == second and used == len(second)
    stream = stream[used:]
    assert PROTOCOL.split(stream) == (None, 0)


def test_split_keeps_crlf_inside_a_report() -> None:
    data = "RFID:00112233\r\n"
    report = uex(data, sum(data.encode()) & 0xFF)
    frame, used = PROTOCOL.split(report + b"\rST300ALV;1")
    assert frame == report and used == len(report) + 1
    [p] = PROTOCOL.decode(frame, session()).positions
    assert "crcMismatch" not in p.attributes


def test_split_zip_frame_includes_its_footer_byte() -> None:
    frame = b"\x02\x00\x03abc\x03"
    assert PROTOCOL.split(frame + b"ST300") == (frame, len(frame))


def test_split_skips_stray_line_ends() -> None:
    assert PROTOCOL.split(b"\r\n\nST300") == (None, 3)


def test_oversized_text_raises_frame_error() -> None:
    with pytest.raises(FrameError):
        PROTOCOL.split(b"ST300STT;" + b"9" * (PROTOCOL.max_frame + 10))


def test_oversized_zip_length_raises_frame_error() -> None:
    with pytest.raises(FrameError):
        PROTOCOL.split(b"\x02\xff\xff\x10")


# Properties ------------------------------------------------------------------------------


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_decode_errors(data: bytes) -> None:
    try:
        PROTOCOL.split(data)
    except FrameError:
        pass
    try:
        PROTOCOL.decode(data, session(hbm="2", includeAdc="true", includeTemp="true", includeRpm="true"))
    except DecodeError:
        pass


@settings(max_examples=200)
@given(st.lists(st.sampled_from(["ST300STT", "STT", "ALT", "ST910", "ST410STT", "UEX", "1", "", "-1.5", "Res",
                                 "20240102", "03:04:05", "+10.5", "FFFFFF", "3", "a=b", "t_0=1C", "\r\n"]),
                max_size=40))
def test_arbitrary_field_lists_raise_only_decode_errors(fields: list[str]) -> None:
    try:
        PROTOCOL.decode(";".join(fields).encode(), session(hbm="1", includeTemp="true"))
    except DecodeError:
        pass


positions = st.builds(
    Position,
    device=st.from_regex(r"[0-9]{6,10}", fullmatch=True),
    fix_time=st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC)),
    valid=st.booleans(),
    latitude=st.floats(min_value=-90, max_value=90),
    longitude=st.floats(min_value=-180, max_value=180),
    speed_kmh=st.floats(min_value=0, max_value=400),
    course=st.floats(min_value=0, max_value=359.99),
    satellites=st.integers(min_value=0, max_value=40),
    ignition=st.booleans(),
    power_mv=st.integers(min_value=0, max_value=40_000).map(lambda mv: mv // 10 * 10),
)


@settings(max_examples=200)
@given(positions, st.integers(min_value=0, max_value=100_000))
def test_encoded_positions_decode_to_the_same_values(p: Position, sequence: int) -> None:
    wire = encode_position(p, sequence)
    frame, used = PROTOCOL.split(wire)
    assert frame is not None and used == len(wire)
    s = session()
    result = PROTOCOL.decode(frame, s)
    assert result.reply is None
    [q] = result.positions
    assert q.device == p.device == s.device
    assert abs((q.fix_time - p.fix_time).total_seconds()) <= 0.5
    assert q.valid is p.valid
    assert q.latitude == pytest.approx(p.latitude, abs=1e-6)
    assert q.longitude == pytest.approx(p.longitude, abs=1e-6)
    assert q.speed_kmh == pytest.approx(p.speed_kmh, abs=1e-3)  # 3 decimals on the wire
    assert q.course == pytest.approx(p.course, abs=1e-2)  # 2 decimals on the wire
    assert q.satellites == p.satellites
    assert q.ignition is p.ignition
    assert q.power_mv == p.power_mv
    assert q.attributes["index"] == sequence % 10_000
