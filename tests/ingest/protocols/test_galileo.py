"""Behaviour of the galileo (Galileosky) decoder: tag packets, the head packet, command answers,
compressed and Iridium packets, the ``02`` + checksum ACK byte for byte, checksum policy, framing,
and packets over real TCP into the database."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avl.records import Position
from ingest.protocols.base import DecodeError, Session
from ingest.protocols.crc16 import crc16_modbus
from ingest.protocols.galileo import PROTOCOL, encode_login, encode_position
from tests.ingest.harness import exchange, register, running_ingest, settings_for, stored, track
from tests.ingest.protocols import samples
from tests.ingest.protocols.framing import split_all

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
IMEI = "868204001549087"

# Real packets from the corpus (../shared/vectors/dev-2.jsonl).
HEAD = bytes.fromhex("011380033836383230343030313534393038370432008590")  # IMEI and device number only
ANSWER = bytes.fromhex(  # index e0 and the answer text e1 of a command
    "012a0003383633353931303233353137333732046600e000000000e1104f555428332e2e3029203d2031313130bb29")
IRIDIUM = bytes.fromhex(
    "01004e01001c0747ea59333030323334303639363034353930000012000063c85e6903000b0321a8f846aba50000000202001e205f5ec86330"
    "0c4643fdfdbbe6c8fb330000000034e7013505d400000000")


def packet(tags: bytes, header: int = 0x01) -> bytes:
    """A packet with a valid checksum, built independently of the module under test."""
    head = bytes([header]) + len(tags).to_bytes(2, "little") + tags
    return head + crc16_modbus(head).to_bytes(2, "little")


def le(value: int, size: int, signed: bool = False) -> bytes:
    return value.to_bytes(size, "little", signed=signed)


def record(seconds: int, lat: float, lon: float, index: int = 1) -> bytes:
    return (b"\x10" + le(index, 2) + b"\x20" + le(seconds, 4) + b"\x30\x08" + le(round(lat * 1e6), 4, True)
            + le(round(lon * 1e6), 4, True) + b"\x33" + le(365, 2) + le(1234, 2) + b"\x41" + le(12650, 2))


def logged_in(**options: object) -> Session:
    s = Session(options=dict(options), now=lambda: NOW)
    PROTOCOL.decode(HEAD, s)
    return s


def a_position(**fields: object) -> Position:
    return samples.a_position(IMEI, **fields)


def test_head_packet_identifies_the_unit_and_is_acknowledged_with_02_and_its_checksum() -> None:
    s = Session(now=lambda: NOW)
    result = PROTOCOL.decode(HEAD, s)
    assert s.device == IMEI and result.positions == []
    assert result.reply == bytes.fromhex("02" "8590")  # the packet's checksum bytes, as sent


def test_a_tag_seen_again_starts_the_next_record() -> None:
    data = packet(record(1700000000, 10.5, -66.9, 1) + record(1700000030, 10.6, -66.8, 2))
    result = PROTOCOL.decode(data, logged_in())
    assert [(p.fix_time, p.latitude) for p in result.positions] == [
        (datetime.fromtimestamp(1700000000, UTC), pytest.approx(10.5)),
        (datetime.fromtimestamp(1700000030, UTC), pytest.approx(10.6))]
    p = result.positions[0]
    assert (p.speed_kmh, p.course, p.satellites, p.power_mv, p.valid) == (36.5, 123.4, 8, 12650, True)
    assert p.attributes["index"] == 1
    assert result.reply == b"\x02" + data[-2:]


def test_fix_byte_high_nibble_marks_an_invalid_fix() -> None:
    tags = b"\x20" + le(1700000000, 4) + b"\x30\x15" + le(10_500_000, 4, True) + le(-66_900_000, 4, True)
    (p,) = PROTOCOL.decode(packet(tags), logged_in()).positions
    assert p.valid is False and p.satellites == 5


def test_command_answer_is_a_status_record_with_the_result() -> None:
    s = Session(now=lambda: NOW)
    (p,) = PROTOCOL.decode(ANSWER, s).positions
    assert s.device == "863591023517372"
    assert p.attributes["result"] == "OUT(3..0) = 1110" and not p.located and p.fix_time == NOW


def test_record_with_a_time_but_no_coordinates_is_a_status_record() -> None:
    (p,) = PROTOCOL.decode(packet(b"\x20" + le(1700000000, 4) + b"\x41" + le(11800, 2)), logged_in()).positions
    assert not p.located and p.power_mv == 11800


def test_unknown_tag_ends_the_packet_keeps_what_came_before_and_is_acknowledged() -> None:
    data = packet(record(1700000000, 10.5, -66.9) + b"\x0f\x01\x02\x03")
    result = PROTOCOL.decode(data, logged_in())
    (p,) = result.positions
    assert p.attributes["unknownTag"] == "0x0f" and p.latitude == pytest.approx(10.5)
    assert result.reply == b"\x02" + data[-2:]


def test_bad_checksum_is_decoded_flagged_and_acknowledged_with_the_checksum_received() -> None:
    data = bytearray(packet(record(1700000000, 10.5, -66.9)))
    data[-1] ^= 0xFF
    result = PROTOCOL.decode(bytes(data), logged_in())
    assert result.positions[0].attributes["crcMismatch"] is True
    assert result.reply == b"\x02" + bytes(data[-2:])


def test_photo_chunk_is_acknowledged_with_07_and_not_stored() -> None:
    data = packet(b"\x00" + b"\xff\xd8" * 10, header=0x07)
    result = PROTOCOL.decode(data, logged_in())
    assert result.positions == [] and result.reply == b"\x07" + data[-2:]


def test_compressed_records_read_the_minimal_data_set() -> None:
    seconds = 40 * 86400 + 3600  # 10 Feb, 01:00 of the receive year
    lon_raw, lat_raw = round((-66.9 + 180) * 4194304 / 360), round((10.5 + 90) * 2097152 / 180)
    bits = (seconds << 54) | (0 << 53) | (lon_raw << 31) | (lat_raw << 10) | (1 << 9)
    rec = bits.to_bytes(10, "big") + b"\x01\x41" + le(12300, 2)
    data = packet(rec, header=0x08)
    result = PROTOCOL.decode(data, logged_in())
    (p,) = result.positions
    assert p.fix_time == datetime(2026, 2, 10, 1, 0, tzinfo=UTC)
    assert (p.latitude, p.longitude) == pytest.approx((10.5, -66.9), abs=1e-4)
    assert p.alarm == "general" and p.power_mv == 12300 and p.valid is True
    assert result.reply == b"\x02" + data[-2:]


def test_compressed_time_ahead_of_now_is_taken_from_the_previous_year() -> None:
    bits = (364 * 86400) << 54 | (1 << 53)  # 31 December; received 6 December: that was last year's
    (p,) = PROTOCOL.decode(packet(bits.to_bytes(10, "big") + b"\x00", header=0x08), logged_in()).positions
    assert p.fix_time == datetime(2025, 12, 31, tzinfo=UTC) and p.valid is False


def test_iridium_message_identifies_the_unit_and_gets_no_reply() -> None:
    s = Session(now=lambda: NOW, options={"compressed": "false"})
    result = PROTOCOL.decode(IRIDIUM, s)
    assert s.device == "300234069604590" and result.reply is None
    (p,) = result.positions
    assert p.fix_time == datetime(2023, 1, 18, 21, 2, 23, tzinfo=UTC)  # the payload's time tag
    assert (p.latitude, p.longitude) == pytest.approx((-33.733818, -70.719813))  # its 0x30 tag, not the coarse fix
    assert p.valid is True and p.altitude_m == 487.0


def test_iridium_compressed_option_reads_a_minimal_data_set_payload() -> None:
    bits = (86400 << 54) | (round((-70.7 + 180) * 4194304 / 360) << 31) | (round((-33.7 + 90) * 2097152 / 180) << 10)
    payload = bits.to_bytes(10, "big") + b"\x00"
    body = IRIDIUM[3:3 + 31 + 14] + b"\x02" + len(payload).to_bytes(2, "big") + payload
    message = b"\x01" + len(body).to_bytes(2, "big") + body
    (p,) = PROTOCOL.decode(message, Session(now=lambda: NOW, options={"compressed": "true"})).positions
    assert p.fix_time == datetime(2026, 1, 2, tzinfo=UTC)
    assert (p.latitude, p.longitude) == pytest.approx((-33.7, -70.7), abs=1e-4)


@pytest.mark.parametrize("frame", [
    HEAD[:10],  # shorter than its declared length
    b"\x05\x03\x00abc\x00\x00",  # unknown header
    packet(b"\x03" + b"86820400154908X"),  # an IMEI that is not digits
    packet(b"\x20\x01\x02"),  # a tag cut short
    b"\x01\x00",
])
def test_bad_packets_raise_one_line_decode_errors(frame: bytes) -> None:
    with pytest.raises(DecodeError) as excinfo:
        PROTOCOL.decode(frame, Session(now=lambda: NOW))
    assert "\n" not in str(excinfo.value) and str(excinfo.value).startswith("galileo: ")


def test_records_before_the_unit_identified_itself_are_refused() -> None:
    with pytest.raises(DecodeError, match="before the device identified"):
        PROTOCOL.decode(packet(record(1700000000, 10.5, -66.9)), Session(now=lambda: NOW))


def test_split_cuts_packets_by_length_including_iridium_and_waits_for_the_rest() -> None:
    data = packet(record(1700000000, 10.5, -66.9))
    frames, rest = split_all(PROTOCOL, b"\xaa\xbb" + HEAD + IRIDIUM + data + ANSWER[:7])
    assert frames == [HEAD, IRIDIUM, data] and rest == ANSWER[:7]
    assert PROTOCOL.split(rest) == (None, 0)


def test_split_ignores_the_archive_bit_of_the_length() -> None:
    data = bytearray(packet(record(1700000000, 10.5, -66.9)))
    data[2] |= 0x80  # more archive data waiting
    assert PROTOCOL.split(bytes(data) + HEAD) == (bytes(data), len(data))


@settings(max_examples=100, deadline=None)
@given(at=samples.coordinates, speed=st.integers(0, 3000), fix_time=samples.fix_times)
def test_encoded_packets_read_back_the_same(at: tuple[float, float], speed: int, fix_time: datetime) -> None:
    (lat, lon) = at
    sent = a_position(latitude=lat, longitude=lon, speed_kmh=speed / 10, fix_time=fix_time)
    (got,) = PROTOCOL.decode(encode_position(sent, 7), logged_in()).positions
    assert got.fix_time == sent.fix_time and got.speed_kmh == pytest.approx(speed / 10)
    assert got.latitude == pytest.approx(lat, abs=1e-6) and got.longitude == pytest.approx(lon, abs=1e-6)
    assert (got.altitude_m, got.odometer_m, got.satellites) == (912.0, 123456, 9)


async def test_packets_over_tcp_are_stored_and_acknowledged_after_commit(db_url: str, tmp_path: Path) -> None:
    ids = register(db_url, [(IMEI, "galileo")])
    sent = track(IMEI, 2)
    head = encode_login(IMEI)
    assert head is not None
    frames = [head] + [encode_position(p, i) for i, p in enumerate(sent)]
    async with running_ingest(settings_for(tmp_path, protocols=["galileo"]), db_url) as svc:
        replies = await exchange(svc.tcp["galileo"].port, frames, [3, 3, 3])
    assert replies == [b"\x02" + f[-2:] for f in frames]
    rows = stored(db_url, ids[IMEI])
    assert [r[0] for r in rows] == [p.fix_time for p in sent]
    assert rows[0][1] == pytest.approx(sent[0].latitude, abs=1e-6)
