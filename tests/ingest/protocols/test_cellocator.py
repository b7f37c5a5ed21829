"""Behaviour of the cellocator (Pointer Cellocator) decoder: status and modular messages, the
acknowledge messages byte for byte, checksum policy, framing, and reports over real TCP and UDP."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avl.records import Position
from ingest.protocols.base import DecodeError, Session
from ingest.protocols.cellocator import PROTOCOL, ack, checksum, encode_position, module_ack
from tests.ingest.harness import exchange, register, running_ingest, settings_for, stored, track, udp_exchange
from tests.ingest.protocols import samples
from tests.ingest.protocols.framing import split_all

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)

# Real messages from the corpus (../shared/vectors/dev-2.jsonl).
STATUS = bytes.fromhex(  # type 0, unit 0x0015d08a = 1429642, numerator 0x02
    "4d434750008ad01500080102011804000000360060000000005e750000000000000000000000c24300040204da4da30367195703e80300"
    "000000000000003b020f0802e107df")
ALTERNATIVE = bytes.fromhex(  # "MCPG": degrees and km/h; its checksum byte is wrong (e4, the sum is f2)
    "4d4350470041420f000402021226d8a70221d801010000000001000000000000000000000000c4d90000000ca7a741ff0096dd15a407"
    "00000000000000001619130c01e307e4")
MODULAR = bytes.fromhex(  # type 11 with PL, GPS and time modules; unit 0x0b88a9 = 755881, numerator 0x7e
    "4d4347500ba9880b00c80a7e003800000000000806000001210a14000613000000000d4457a5f71442ac02e8030000010004070700001117"
    "1408060e1c08000100000200020000fd")


def session() -> Session:
    return Session(now=lambda: NOW)


def a_position(**fields: object) -> Position:
    return samples.a_position("1429642", **fields)


def test_status_message_identifies_the_unit_and_gets_the_type_4_acknowledge() -> None:
    s = session()
    result = PROTOCOL.decode(STATUS, s)
    assert s.device == "1429642"
    # MCGP, type 4, unit ID, numerator 0, authentication 0, action 0, the acknowledged numerator 02, 11 spare, checksum.
    assert result.reply == bytes.fromhex("4d43475004" "8ad01500" "00" "00000000" "00" "02" + "00" * 11 + "75")
    (p,) = result.positions
    assert p.fix_time == datetime(2017, 2, 8, 15, 2, 59, tzinfo=UTC)
    assert (p.latitude, p.longitude) == pytest.approx((32.108430, 34.969875), abs=1e-6)
    assert p.altitude_m == 10.0 and p.satellites == 4 and p.valid is True
    assert p.attributes["event"] == 54 and "crcMismatch" not in p.attributes


def test_modular_message_gets_a_type_11_reply_with_an_ack_module() -> None:
    s = session()
    result = PROTOCOL.decode(MODULAR, s)
    assert s.device == "755881"
    assert result.reply == bytes.fromhex("4d4347500b" "a9880b00" "7e" "00000000" "800a00" "00000000" "090300" "00" "0000" "5b")
    (p,) = result.positions
    assert p.fix_time == datetime(2014, 6, 8, 20, 23, 17, tzinfo=UTC)  # time module: s, m, h, d, M, Y-2000
    assert (p.latitude, p.longitude) == pytest.approx((25.693456, -80.305286), abs=1e-6)  # GPS module, 1e-8 rad
    assert p.satellites == 13 and p.altitude_m == 10.0


def test_replies_carry_a_valid_checksum_and_fit_in_the_datagram_they_answer() -> None:
    for reply in (ack(1429642, 2), module_ack(755881, 0x7E)):
        assert len(reply) == 28 and reply[-1] == checksum(reply[:-1])
    assert len(ack(1, 1)) <= len(STATUS)


def test_alternative_layout_reads_degrees_and_flags_the_bad_checksum() -> None:
    (p,) = PROTOCOL.decode(ALTERNATIVE, session()).positions
    assert (p.latitude, p.longitude) == pytest.approx((36.6843392, -1.2474457))
    assert p.fix_time == datetime(2019, 1, 12, 19, 25, 22, tzinfo=UTC)
    assert p.attributes["crcMismatch"] is True


def test_status_alarm_and_ignition_bits() -> None:
    frame = bytearray(encode_position(a_position(), 9))
    frame[18] = 70  # transmission reason: SOS button
    frame[-1] = checksum(bytes(frame[:-1]))
    (p,) = PROTOCOL.decode(bytes(frame), session()).positions
    assert p.alarm == "sos" and p.ignition is True and p.attributes["event"] == 70


def test_message_without_a_fix_is_a_status_record() -> None:
    frame = encode_position(a_position(latitude=0.0, longitude=0.0))
    (p,) = PROTOCOL.decode(frame, session()).positions
    assert not p.located and p.ignition is True


def test_programming_message_is_acknowledged_without_a_record() -> None:
    body = b"MCGP" + bytes([3]) + (1429642).to_bytes(4, "little") + b"\x00\x00\x05" + bytes(18)
    frame = body + bytes([checksum(body)])
    assert len(frame) == 31
    result = PROTOCOL.decode(frame, session())
    assert result.positions == [] and result.reply == ack(1429642, 5)


@pytest.mark.parametrize("frame", [
    STATUS[:40],  # shorter than a status message
    b"XXXX" + STATUS[4:],  # no system code
    b"MCGP" + bytes([42]) + STATUS[5:],  # unknown type
    b"MCGP",
])
def test_bad_messages_raise_one_line_decode_errors(frame: bytes) -> None:
    with pytest.raises(DecodeError) as excinfo:
        PROTOCOL.decode(frame, session())
    assert "\n" not in str(excinfo.value) and str(excinfo.value).startswith("cellocator: ")


def test_split_cuts_each_type_by_its_size_and_skips_garbage() -> None:
    stream = b"noise" + STATUS + MODULAR + ALTERNATIVE + STATUS[:30]
    frames, rest = split_all(PROTOCOL, stream)
    assert frames == [STATUS, MODULAR, ALTERNATIVE]
    assert rest == STATUS[:30]
    assert PROTOCOL.split(rest) == (None, 0)


def test_split_keeps_a_trailing_m_that_may_start_the_next_message() -> None:
    assert PROTOCOL.split(b"garbageM") == (None, 7)
    assert PROTOCOL.split(b"garbage") == (None, 7)


def test_split_waits_at_every_cut_of_a_message() -> None:
    for cut in range(1, len(MODULAR)):
        assert PROTOCOL.split(MODULAR[:cut]) == (None, 0), cut


@settings(max_examples=100, deadline=None)
@given(at=samples.coordinates, speed=st.floats(0, 250), fix_time=samples.fix_times)
def test_encoded_status_reads_back_the_same(at: tuple[float, float], speed: float, fix_time: datetime) -> None:
    (lat, lon) = at
    sent = a_position(latitude=lat, longitude=lon, speed_kmh=speed, fix_time=fix_time)
    (got,) = PROTOCOL.decode(encode_position(sent, 1), session()).positions
    assert got.fix_time == sent.fix_time
    assert got.latitude == pytest.approx(lat, abs=1e-6) and got.longitude == pytest.approx(lon, abs=1e-6)
    assert got.speed_kmh == pytest.approx(speed, abs=0.02)  # cm/s
    assert math.isclose(got.course or 0, 123.45, abs_tol=0.06)  # mrad


async def test_reports_over_tcp_and_udp_are_stored_and_acknowledged_after_commit(db_url: str, tmp_path: Path) -> None:
    unit = "1429642"
    ids = register(db_url, [(unit, "cellocator")])
    sent = track(unit, 3)
    async with running_ingest(settings_for(tmp_path, protocols=["cellocator"]), db_url) as svc:
        replies = await exchange(svc.tcp["cellocator"].port, [encode_position(sent[0], 1), encode_position(sent[1], 2)],
                                 [28, 28])
        udp_reply = await udp_exchange(svc.udp["cellocator"].port, encode_position(sent[2], 3))
    assert replies == [ack(int(unit), 1), ack(int(unit), 2)]
    assert udp_reply == ack(int(unit), 3)
    rows = stored(db_url, ids[unit])
    assert [r[0] for r in rows] == [p.fix_time for p in sent]
    assert rows[0][1] == pytest.approx(sent[0].latitude, abs=1e-6) and rows[0][4] is True
