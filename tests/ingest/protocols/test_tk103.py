"""Behaviour of the TK103 decoder: replies, records, framing, bad input, encoder round trip."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avl.records import Position
from ingest.protocols.base import DecodeError, FrameError, Session
from ingest.protocols.tk103 import PROTOCOL, encode_login, encode_position
from tests.ingest.protocols.framing import split_all

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def session(device: str | None = None) -> Session:
    return Session(transport="tcp", device=device, now=lambda: NOW)


split_all = partial(split_all, PROTOCOL)


# Replies ------------------------------------------------------------------------------


def test_handshake_bp00_is_answered_with_ap01hso_and_records_nothing() -> None:
    s = session()
    result = PROTOCOL.decode(b"(123456789012BP00123456789012HSO)", s)
    assert result.reply == b"(123456789012AP01HSO)"
    assert result.positions == []
    assert s.device == "123456789012"


def test_login_bp05_is_answered_with_ap05_and_its_fix_recorded() -> None:
    frame = b"(123456789012BP05000123456789012240501A5130.0000N00007.5000W012.3101530045.0001000000L00000010)"
    result = PROTOCOL.decode(frame, session())
    assert result.reply == b"(123456789012AP05)"
    [p] = result.positions
    assert p.device == "123456789012"
    assert p.fix_time == datetime(2024, 5, 1, 10, 15, 30, tzinfo=UTC)
    assert p.latitude == pytest.approx(51.5)
    assert p.longitude == pytest.approx(-0.125)


def test_login_without_a_fix_is_still_answered() -> None:
    result = PROTOCOL.decode(encode_login("123456789012"), session())
    assert result.reply == b"(123456789012AP05)"
    assert result.positions == []


def test_comma_form_login_gets_no_reply_as_in_the_reference() -> None:
    frame = b"(123456789012345,BP05,010524,A,5130.0000N,00007.5000E,10.0,101530,90.00)"
    result = PROTOCOL.decode(frame, session())
    assert result.reply is None
    [p] = result.positions
    assert p.fix_time == datetime(2024, 5, 1, 10, 15, 30, tzinfo=UTC)  # DDMMYY in the comma form
    assert p.device == "123456789012345"


def test_position_report_is_not_acknowledged() -> None:
    frame = b"(123456789012BR00240501A5130.0000N00007.5000E012.3101530045.0001000000L00000010)"
    assert PROTOCOL.decode(frame, session()).reply is None


# Records ------------------------------------------------------------------------------


def test_br00_tail_gives_ignition_charge_io_fuel_and_odometer() -> None:
    frame = b"(123456789012BR00240501A2230.0000S11400.0000E060.0235959180.0001B8201FL0001E240+021.5)"
    [p] = PROTOCOL.decode(frame, session()).positions
    assert p.valid is True
    assert p.latitude == pytest.approx(-22.5)
    assert p.longitude == pytest.approx(114.0)
    assert p.speed_kmh == pytest.approx(60.0)
    assert p.course == pytest.approx(180.0)
    assert p.ignition is True
    assert p.odometer_m == 0x1E240
    assert p.attributes["charge"] is True
    assert p.attributes["fuel"] == 0x01F
    assert p.attributes["in2"] == 1 and p.attributes["panic"] == 1 and p.attributes["out2"] == 0
    assert p.attributes["blocked"] == 1
    assert p.attributes["door"] == 1
    assert p.attributes["ls3"] == 1
    assert p.attributes["temp1"] == pytest.approx(21.5)


def test_frame_with_its_own_id_identifies_the_session() -> None:
    s = session("someone-else")
    PROTOCOL.decode(b"(123456789012BR00240501A5130.0000N00007.5000E012.3101530045.0001000000L00000010)", s)
    assert s.device == "123456789012"


def test_bo01_alarm_code_maps_to_alarm_name() -> None:
    frame = b"(123456789012BO012240501A5130.0000N00007.5000E000.0101530000.0000000000L00000000)"
    [p] = PROTOCOL.decode(frame, session()).positions
    assert p.alarm == "sos"


def test_event_command_maps_to_alarm() -> None:
    frame = b"(123456789012345,ZC13,010524,A,5130.0000N,00007.5000E,0.0,101530,0.0)"
    [p] = PROTOCOL.decode(frame, session()).positions
    assert p.alarm == "powerCut"


def test_battery_report_is_a_status_record_with_voltages_in_mv() -> None:
    [p] = PROTOCOL.decode(b"(123456789012,ZC20,010524,101530,5,398,125,1)", session()).positions
    assert not p.located
    assert p.battery_mv == 3980
    assert p.power_mv == 12500
    assert p.attributes["batteryLevel"] == 80
    assert p.fix_time == datetime(2024, 5, 1, 10, 15, 30, tzinfo=UTC)


def test_cell_and_wifi_report_is_a_status_record_with_network() -> None:
    frame = b"(123456789012345,DW5B,262,2,1234,5678,1,AA:BB:CC:DD:EE:FF*-70*6,010524,101530)"
    [p] = PROTOCOL.decode(frame, session()).positions
    assert not p.located
    network = p.attributes["network"]
    assert network["cellTowers"][0]["mobileCountryCode"] == 262
    assert network["wifiAccessPoints"][0] == {"macAddress": "aa:bb:cc:dd:ee:ff", "signalStrength": -70, "channel": 6}


def test_command_result_keeps_parentheses_inside_free_text() -> None:
    frame = b"(123456789012345,ZC03,010524,101530,$Interval (s): 30$)"
    [p] = PROTOCOL.decode(frame, session()).positions
    assert p.attributes["result"] == "Interval (s): 30"


def test_vin_report() -> None:
    [p] = PROTOCOL.decode(b"(123456789012BV001HGCM82633A004352)", session()).positions
    assert p.attributes["vin"] == "1HGCM82633A004352"
    assert p.fix_time == NOW


def test_report_without_gps_time_is_kept_as_a_status_record() -> None:
    frame = b"(123456789012BR00000007V0000.0000N00000.0000E000.00014039900000000L00000AB0)"
    [p] = PROTOCOL.decode(frame, session()).positions
    assert not p.located
    assert p.fix_time == NOW
    assert p.odometer_m == 0xAB0


def test_login_with_an_unreadable_fix_is_still_answered() -> None:
    frame = b"(123456789012BP05000123456789012009901V0000.0000N00000.0000E000.0999999000.0000000000L00000000)"
    result = PROTOCOL.decode(frame, session())
    assert result.reply == b"(123456789012AP05)"


def test_unreadable_frame_does_not_change_the_session_device() -> None:
    s = session("123456789012")
    with pytest.raises(DecodeError):
        PROTOCOL.decode(b"(999999999999BR00garbage)", s)
    assert s.device == "123456789012"


def test_unsupported_but_well_formed_command_yields_nothing() -> None:
    result = PROTOCOL.decode(b"(123456789012BQ86,0,0a0b0c,010524101530,01)", session())
    assert result.positions == [] and result.reply is None


def test_frame_without_closing_parenthesis_or_with_crlf_decodes_the_same() -> None:
    frame = b"(123456789012BR00240501A5130.0000N00007.5000E012.3101530045.0001000000L00000010)"
    a = PROTOCOL.decode(frame, session()).positions[0]
    b = PROTOCOL.decode(frame[:-1], session()).positions[0]
    c = PROTOCOL.decode(frame + b"\r\n", session()).positions[0]
    assert (a.latitude, a.fix_time, a.odometer_m) == (b.latitude, b.fix_time, b.odometer_m)
    assert (a.latitude, a.fix_time, a.odometer_m) == (c.latitude, c.fix_time, c.odometer_m)


# Bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize("frame", [
    b"",
    b"hello",
    b"(",
    b"(1234",
    b"(123456789012BR00240501A5130.00",  # truncated location report
    b"(123456789012,ZC20,010524)",
    b"(123456789012BV00SHORT)",
    b"(123456789012BS5190:zz)",
])
def test_garbage_or_truncated_frame_raises_decode_error(frame: bytes) -> None:
    with pytest.raises(DecodeError):
        PROTOCOL.decode(frame, session())


# Framing ------------------------------------------------------------------------------


def test_split_two_frames_plus_half_a_third() -> None:
    one = b"(123456789012BP00123456789012HSO)"
    two = b"(123456789012BR00240501A5130.0000N00007.5000E012.3101530045.0001000000L00000010)"
    frames, rest = split_all(one + b"\r\n" + two + b"(1234567")
    assert frames == [one, two]
    assert rest == b"(1234567"


def test_split_skips_garbage_before_a_frame() -> None:
    frames, rest = split_all(b"\x00noise)$)(123456789012BP00HSO)")
    assert frames == [b"(123456789012BP00HSO)"]
    assert rest == b""


def test_split_ignores_parentheses_inside_dollar_free_text() -> None:
    frame = b"(123456789012345,ZC03,010524,101530,$a (b) c$)"
    frames, _ = split_all(frame + b"(123456789012BP00HSO)")
    assert frames == [frame, b"(123456789012BP00HSO)"]


def test_split_restarts_at_a_new_opening_parenthesis() -> None:
    frames, _ = split_all(b"(123456789012BR0024(123456789012BP00HSO)")
    assert frames == [b"(123456789012BP00HSO)"]


def test_split_needs_more_bytes_for_an_open_frame() -> None:
    assert PROTOCOL.split(b"(123456789012BR00") == (None, 0)


def test_split_oversized_frame_raises_frame_error() -> None:
    with pytest.raises(FrameError):
        PROTOCOL.split(b"(" + b"1" * PROTOCOL.max_frame)


# Properties ---------------------------------------------------------------------------


@settings(max_examples=400)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_decode_errors(data: bytes) -> None:
    try:
        split_all(data)
    except DecodeError:
        pass
    for candidate in (data, b"(" + data, b"(123456789012BR00" + data, b"(123456789012345," + data):
        try:
            PROTOCOL.decode(candidate, session())
        except DecodeError:
            pass


@given(st.text(alphabet="0123456789ABCDEFNSEWLAV.,:$*() -+", max_size=120))
def test_protocol_shaped_text_raises_only_decode_errors(body: str) -> None:
    for head in ("(123456789012BR00", "(123456789012345,ZC20,", "(123456789012BS51", "(123456789012345,DW5B,"):
        try:
            PROTOCOL.decode((head + body).encode("latin-1"), session())
        except DecodeError:
            pass


positions = st.builds(
    Position,
    device=st.one_of(st.from_regex(r"\A[0-9]{12}\Z"), st.from_regex(r"\A[0-9]{15}\Z"), st.from_regex(r"\A[0-9A-Z]{12}\Z")),
    fix_time=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31),
                          timezones=st.just(UTC)).map(lambda t: t.replace(microsecond=0)),
    valid=st.booleans(),
    latitude=st.floats(min_value=-89.999, max_value=89.999),
    longitude=st.floats(min_value=-179.999, max_value=179.999),
    speed_kmh=st.floats(min_value=0, max_value=999.9),
    course=st.floats(min_value=0, max_value=359.99),
    ignition=st.booleans(),
    odometer_m=st.integers(min_value=0, max_value=0xFFFFFFFF),
)


@given(positions)
def test_encode_position_round_trips_through_split_and_decode(p: Position) -> None:
    frames, rest = split_all(encode_position(p) + b"\r\n")
    assert len(frames) == 1 and rest == b""
    s = session()
    [q] = PROTOCOL.decode(frames[0], s).positions
    assert s.device == p.device == q.device
    assert q.fix_time == p.fix_time
    assert q.valid is p.valid
    assert q.latitude == pytest.approx(p.latitude, abs=2e-6)
    assert q.longitude == pytest.approx(p.longitude, abs=2e-6)
    assert q.speed_kmh == pytest.approx(p.speed_kmh, abs=0.051)
    assert q.course == pytest.approx(p.course, abs=0.01)  # 2 decimals on the wire
    assert q.ignition is p.ignition
    assert q.odometer_m == p.odometer_m


def test_encode_login_rejects_an_id_the_frame_cannot_carry() -> None:
    with pytest.raises(ValueError):
        encode_login("short")
