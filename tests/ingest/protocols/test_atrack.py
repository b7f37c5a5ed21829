"""Behaviour of the atrack (ATrack AK/AX) decoder: binary and text reports, the ACK, per-device
layout options, CRC policy, framing, and reports over real TCP and UDP into the database."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avl.records import Position
from ingest.protocols.atrack import PROTOCOL, ack, encode_keepalive, encode_position, encode_text_position
from ingest.protocols.base import DecodeError, FrameError, Session, crc16_ibm
from tests.ingest.harness import exchange, register, running_ingest, settings_for, stored, track, udp_exchange
from tests.ingest.protocols import samples
from tests.ingest.protocols.framing import split_all

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)

# Real frames from the corpus (../shared/vectors/dev-2.jsonl).
UNIT = "352964052096642"
BINARY = bytes.fromhex(  # one record, sequence 0x01e0, unit 0x00014104d8f19682
    "40501e58003301e000014104d8f19682525ecd5d525ee344525ee35effc88815026ab4d70000020000104403de01000b0000000007d007"
    "d000")
KEEPALIVE = bytes.fromhex("fe0200014104d8f196820001")
NO_FIX = bytes.fromhex(  # GPS time 0, RTC 201 s, coordinates 0,0
    "40503835003300070001441c3d8ed1c400000000000000c9000000c900000000000000000000020000000003de0100000000000007d007"
    "d000")
LONG_DATE = bytes.fromhex(
    "0203b494003c00eb00014104d8dd3a3e07de011b0b1f0307de011b0b1f0307de011b0b1f0300307f28030574d30000020000000600160100"
    "020000000007d007d000")
CUSTOM_IN_FRAME = bytes.fromhex(  # the form string "%CI%SA%MV%BV%GQ%AT" precedes each record's custom fields
    "405025e30096eb730001452efaf6a7d6562fe4f8562fe4f7562fe52c02a006d902273f810064650000e0f5000a0100000000000007d007d0"
    "00254349255341254d5625425625475125415400090083002a1a000001a8562fe4f8562fe4f7562fe52c02a006d902273f81006402000"
    "0e0f5000a0100000000000007d007d000254349255341254d5625425625475125415400090083002a1a000001a8")
TEXT = (b"@P,1126,121,104547,358901048091554,20180412143513,20180412143514,20180413060000,16423389,48178700,108,2,6.5,"
        b"9,0,0,0,0,0,2000,2000,\r\n")
TEXT_CUSTOM = (b"@P,CA4B,122,1,358683064932578,1533633976,1533633975,1533633975,121562641,25082649,72,0,1638,15,0,0,1,0,,"
               b"2000,2000,\x1a,%CI%MV%BV,143,0\r\n")
TEXT_FORM = "%AT%BV%MV%SA%VN%PD%IA%MP%EL%ET%FC%FL%RP%ML%MF%TR%EH%DL%EG%HA%HB%HC%IP%MT"
TEXT_WITH_FORM = (b"@P,7E02,186,0,357766091026083,1558908265,1558908266,1558908266,-121900220,37407524,175,2,6,6,1,39,0,0,,"
                  b"2000,2000, ,3,40,142,12,JN8AZ1MU1BW066090,0,30,0,58,90,22,72,1187,0,1232,9,409,0,1,0,0,0,0,1\r\n")


def session(**options: object) -> Session:
    return Session(options=dict(options), now=lambda: NOW)


def a_position(**fields: object) -> Position:
    return samples.a_position(UNIT, **fields)


# Reports and the ACK ------------------------------------------------------------------------------


def test_binary_report_identifies_the_unit_and_is_acknowledged_with_unit_id_and_sequence() -> None:
    s = session()
    result = PROTOCOL.decode(BINARY, s)
    assert s.device == UNIT
    assert result.reply == bytes.fromhex("fe02" "00014104d8f19682" "01e0")
    (p,) = result.positions
    assert p.fix_time == datetime(2013, 10, 16, 17, 31, 9, tzinfo=UTC)
    assert (p.latitude, p.longitude) == pytest.approx((40.547543, -3.635179))
    assert p.speed_kmh == 11.0 and p.odometer_m == 416400 and p.ignition is True and p.valid is True
    assert "temp1" not in p.attributes  # 2000 = no sensor
    assert "crcMismatch" not in p.attributes


def test_keep_alive_is_echoed_unchanged_and_identifies_the_unit() -> None:
    s = session()
    result = PROTOCOL.decode(KEEPALIVE, s)
    assert result.reply == KEEPALIVE and result.positions == []
    assert s.device == UNIT


def test_text_report_is_acknowledged_like_a_binary_one() -> None:
    s = session()
    result = PROTOCOL.decode(TEXT, s)
    assert s.device == "358901048091554"
    # The reference sends nothing for text reports; the unit's ACK is the same 12 bytes (sequence mod 2^16).
    assert result.reply == ack(358901048091554, 104547 & 0xFFFF)
    (p,) = result.positions
    assert p.fix_time == datetime(2018, 4, 12, 14, 35, 13, tzinfo=UTC)  # yyyyMMddHHmmss form
    assert p.odometer_m == 650 and p.attributes["driverUniqueId"] == "0"


def test_record_without_a_fix_is_a_status_record_not_null_island_in_1970() -> None:
    result = PROTOCOL.decode(NO_FIX, session())
    (p,) = result.positions
    assert not p.located and p.fix_time == NOW  # RTC 201 s is not a clock either
    assert p.attributes["event"] == 2 and p.ignition is True
    assert result.reply == ack(356363059253700, 7)


def test_photo_chunk_is_acknowledged_and_not_stored() -> None:
    body = bytes.fromhex("00050001441c3d8ed1c4") + bytes.fromhex("5ee35eff0001000a") + b"\xff\xd8" * 5
    inner = len(body).to_bytes(2, "big") + body
    photo = b"@R" + crc16_ibm(inner).to_bytes(2, "big") + inner
    result = PROTOCOL.decode(photo, session())
    assert result.positions == [] and result.reply == ack(356363059253700, 5)


def test_info_line_is_a_status_record_with_power_battery_and_satellites() -> None:
    s = session()
    line = b"$INFO=358683066267395,AX7,Rev.0.61 Build.1624,358683066267395,466924131626767,89886920041316267670,144,0,9,1,12,1,0\r\n"
    result = PROTOCOL.decode(line, s)
    (p,) = result.positions
    assert s.device == "358683066267395" and result.reply is None
    assert (p.power_mv, p.battery_mv, p.satellites) == (14400, 0, 9)
    assert p.attributes["model"] == "AX7" and p.attributes["rssi"] == 12


def test_command_answer_is_kept_as_result_once_the_unit_is_known() -> None:
    (p,) = PROTOCOL.decode(b"$ERROR=101\r\n", Session(device=UNIT, now=lambda: NOW)).positions
    assert p.attributes["result"] == "$ERROR=101" and not p.located
    with pytest.raises(DecodeError):
        PROTOCOL.decode(b"$OK\r\n", session())  # no unit yet: nobody to attribute it to


# Per-device options -------------------------------------------------------------------------------


def test_long_date_option_selects_the_date_layout() -> None:
    (p,) = PROTOCOL.decode(LONG_DATE, session(longDate="true")).positions
    assert p.fix_time == datetime(2014, 1, 27, 11, 31, 3, tzinfo=UTC)
    assert (p.latitude, p.longitude) == pytest.approx((50.689235, 3.17828))
    # Without it the same bytes read as Unix seconds and the coordinates shift: refused, not misfiled.
    with pytest.raises(DecodeError, match="out of range"):
        PROTOCOL.decode(LONG_DATE, session())


def test_custom_option_reads_the_form_carried_in_the_frame() -> None:
    result = PROTOCOL.decode(CUSTOM_IN_FRAME, session(custom="true"))
    assert len(result.positions) == 2
    p = result.positions[0]
    assert (p.satellites, p.power_mv, p.battery_mv, p.altitude_m) == (9, 13100, 4200, 424.0)
    assert p.attributes["rssi"] == 26  # GQ without a full cell tower
    # Without the option the custom bytes are read as a second record: refused (not acknowledged, so
    # the unit keeps it) rather than stored as nonsense.
    with pytest.raises(DecodeError, match="out of range"):
        PROTOCOL.decode(CUSTOM_IN_FRAME, session())


def test_form_option_gives_the_layout_of_text_custom_fields() -> None:
    (p,) = PROTOCOL.decode(TEXT_WITH_FORM, session(custom="true", form=TEXT_FORM)).positions
    assert (p.altitude_m, p.battery_mv, p.power_mv, p.satellites) == (3.0, 4000, 14200, 12)
    assert p.attributes["vin"] == "JN8AZ1MU1BW066090" and p.attributes["rpm"] == 1187
    assert p.attributes["hours"] == 409 * 360_000 and p.attributes["motion"] is True


def test_text_custom_fields_with_the_form_in_the_line() -> None:
    (p,) = PROTOCOL.decode(TEXT_CUSTOM, session(custom="true")).positions
    assert (p.power_mv, p.battery_mv) == (14300, 0)


def with_custom(frame: bytes, fields: bytes) -> bytes:
    """A binary report with ``fields`` appended to its (single) record, length and CRC redone."""
    body = frame[6:] + fields
    inner = len(body).to_bytes(2, "big") + body
    return frame[:2] + crc16_ibm(inner).to_bytes(2, "big") + inner


def test_form_option_gives_the_layout_of_binary_custom_fields() -> None:
    frame = with_custom(encode_position(a_position(), 4), bytes([11]) + (127).to_bytes(2, "big"))
    (p,) = PROTOCOL.decode(frame, session(form="%SA%MV")).positions
    assert (p.satellites, p.power_mv) == (11, 12700)


def test_unknown_binary_custom_field_ends_the_frame_and_is_named() -> None:
    frame = with_custom(encode_position(a_position(), 4), bytes([11]) + bytes(40))
    result = PROTOCOL.decode(frame, session(form="%SA%XX%MV"))
    (p,) = result.positions  # the 40 bytes after XX are not read as another record
    assert p.satellites == 11 and p.attributes["customUnknown"] == "XX"
    assert result.reply == ack(int(UNIT), 4)  # still acknowledged: resending would not change the form


# CRC and length policy ----------------------------------------------------------------------------


def test_bad_binary_crc_is_decoded_and_flagged() -> None:
    frame = bytearray(BINARY)
    frame[2] ^= 0xFF
    result = PROTOCOL.decode(bytes(frame), session())
    assert result.positions[0].attributes["crcMismatch"] is True and result.reply is not None


def test_bytes_after_the_declared_length_are_ignored() -> None:
    # The corpus holds this frame with six trailing zero bytes; its CRC verifies over the declared length.
    padded = PROTOCOL.decode(BINARY + bytes(6), session()).positions
    assert [(p.fix_time, p.latitude) for p in padded] == [(p.fix_time, p.latitude)
                                                          for p in PROTOCOL.decode(BINARY, session()).positions]
    assert "crcMismatch" not in padded[0].attributes


def test_text_crc_is_verified_with_or_without_the_trailing_crlf() -> None:
    good = encode_text_position(a_position(), 7)
    for frame in (good, good.rstrip(b"\r\n")):
        assert "crcMismatch" not in PROTOCOL.decode(frame, session()).positions[0].attributes
    # A corpus frame whose length field says 419 for 108 bytes: decoded, flagged.
    odd = b"@P,93D1,419,0,357766091026083,1557178589,1557178590,1557178590,-121899637,37406241,338,230,2809,8,0,0,0,0,,2000,2000,\r\n"
    assert PROTOCOL.decode(odd, session()).positions[0].attributes["crcMismatch"] is True


# Bad input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("frame", [
    BINARY[:20],  # shorter than its declared length
    b"\xfe\x02\x00\x01",  # a cut keep-alive
    b"@P,1126,121,abc,xyz,1,2\r\n",  # text without a numeric unit ID
    b"@P,1126,121,1,358901048091554,not a record\r\n",
    b"$INFO=1,2\r\n",
    b"@",
])
def test_bad_frames_raise_one_line_decode_errors(frame: bytes) -> None:
    with pytest.raises(DecodeError) as excinfo:
        PROTOCOL.decode(frame, session())
    assert "\n" not in str(excinfo.value) and str(excinfo.value).startswith("atrack: ")


def test_report_out_of_range_is_refused() -> None:
    frame = encode_position(a_position(latitude=95.0))
    with pytest.raises(DecodeError, match="out of range"):
        PROTOCOL.decode(frame, session())


# Framing ----------------------------------------------------------------------------------------------


def test_split_cuts_binary_text_keepalive_and_info_frames_from_one_stream() -> None:
    info = b"$OK\r\n"
    stream = BINARY + TEXT + KEEPALIVE + info + TEXT_CUSTOM + BINARY[:9]
    frames, rest = split_all(PROTOCOL, stream)
    assert frames == [BINARY, TEXT, KEEPALIVE, info, TEXT_CUSTOM]
    assert rest == BINARY[:9]
    assert PROTOCOL.split(rest) == (None, 0)  # waits for the rest


def test_split_uses_the_text_length_so_a_multi_line_report_is_one_frame() -> None:
    two = encode_text_position(a_position(), 1)
    # Two records in one report: the length counts both lines.
    lines = two.split(b",", 3)[3]
    body = b"," + lines.rstrip(b"\r\n") + b"\r\n" + lines.split(b",", 2)[2]
    covered = f",{len(body)}".encode() + body
    frame = f"@P,{crc16_ibm(covered):04X}".encode() + covered
    assert PROTOCOL.split(frame + TEXT) == (frame, len(frame))
    result = PROTOCOL.decode(frame, session())
    assert len(result.positions) == 2 and "crcMismatch" not in result.positions[0].attributes


def test_binary_report_whose_crc_starts_with_a_comma_is_not_taken_for_text() -> None:
    # One binary report in 256 has 2C (',') right after "@P"; the reference reads it as text and fails.
    frame = next(f for f in (encode_position(a_position(), seq) for seq in range(5000)) if f[2] == 0x2C)
    result = PROTOCOL.decode(frame, session())
    assert result.positions[0].latitude == pytest.approx(10.4801234, abs=1e-6)
    assert PROTOCOL.split(frame + TEXT) == (frame, len(frame))
    assert PROTOCOL.split(frame[:5]) == (None, 0)


def test_split_skips_garbage_up_to_the_next_frame_start() -> None:
    frames, rest = split_all(PROTOCOL, b"\x00\x11garbage" + BINARY)
    assert frames == [BINARY] and rest == b""


def test_split_waits_for_a_frame_split_at_every_byte() -> None:
    for cut in range(1, len(BINARY)):
        assert PROTOCOL.split(BINARY[:cut]) == (None, 0), cut
    for cut in range(3, len(TEXT)):
        assert PROTOCOL.split(TEXT[:cut])[0] is None, cut


def test_endless_info_line_is_a_frame_error() -> None:
    with pytest.raises(FrameError):
        PROTOCOL.split(b"$" + b"A" * (PROTOCOL.max_frame + 1))


# Encoders ---------------------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(at=samples.coordinates, speed=st.integers(0, 300), fix_time=samples.fix_times, text_form=st.booleans())
def test_encoded_reports_read_back_the_same(at: tuple[float, float], speed: int, fix_time: datetime,
                                            text_form: bool) -> None:
    (lat, lon) = at
    sent = a_position(latitude=lat, longitude=lon, speed_kmh=float(speed), fix_time=fix_time)
    frame = (encode_text_position if text_form else encode_position)(sent, 3)
    (got,) = PROTOCOL.decode(frame, session()).positions
    assert got.fix_time == sent.fix_time and got.speed_kmh == speed
    assert got.latitude == pytest.approx(lat, abs=1e-6) and got.longitude == pytest.approx(lon, abs=1e-6)
    assert "crcMismatch" not in got.attributes


def test_keepalive_encoder_matches_the_corpus_frame() -> None:
    assert encode_keepalive(UNIT, 1) == KEEPALIVE


# Over real sockets into the database -----------------------------------------------------------------


async def test_reports_over_tcp_and_udp_are_stored_and_acknowledged_after_commit(db_url: str, tmp_path: Path) -> None:
    ids = register(db_url, [(UNIT, "atrack")])
    sent = track(UNIT, 3)
    settings_ = settings_for(tmp_path, protocols=["atrack"])
    async with running_ingest(settings_, db_url) as svc:
        port = svc.tcp["atrack"].port
        frames = [KEEPALIVE, encode_position(sent[0], 10), encode_text_position(sent[1], 11)]
        replies = await exchange(port, frames, [12, 12, 12])
        udp_reply = await udp_exchange(svc.udp["atrack"].port, encode_position(sent[2], 12))
    assert replies == [KEEPALIVE, ack(int(UNIT), 10), ack(int(UNIT), 11)]
    assert udp_reply == ack(int(UNIT), 12)
    rows = stored(db_url, ids[UNIT])
    assert [r[0] for r in rows] == [p.fix_time for p in sent]
    assert rows[0][1] == pytest.approx(sent[0].latitude, abs=1e-6) and rows[0][4] is True
