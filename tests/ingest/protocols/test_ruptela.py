"""Behaviour of the ruptela (Ruptela FM-Eco/Pro/Tco) decoder: records, extended records, DTCs,
identification and heartbeat, the ACKs byte for byte, CRC and length policy, framing, and records
over real TCP into the database."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avl.records import Position
from ingest.protocols.base import DecodeError, Session
from ingest.protocols.crc16 import crc16_kermit
from ingest.protocols.ruptela import PROTOCOL, encode_login, encode_position
from tests.ingest.harness import exchange, register, running_ingest, settings_for, stored, track
from tests.ingest.protocols import samples
from tests.ingest.protocols.framing import split_all

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
RECORDS_ACK = bytes.fromhex("0002640113bc")

# Real frames from the corpus (../shared/vectors/dev-2.jsonl).
RECORDS = bytes.fromhex(  # command 1, one record
    "0050000310f5615f419c0100015613d8ed0000fff5b37a035af37801e700000900000d07071b0c020003001c01202cad000500064302a81d"
    "33e61e100116317cd3ffff174ad60241000077fa960000f232003c2e")
TWO_RECORDS = bytes.fromhex(
    "00a10003116e7438a7a5010002553dddbe000020fddaff0f12289b007200000600000c070805011b18cf00020003001c01201dad01041d"
    "32d81e0d7d160000c50000047200000000d000000000410000b1ae960000a5a300553dddd4000020fdd96f0f122bfe005c16f8070005"
    "0b090805011b18cf00020003001c01201ead01041d338a1e0d8d160000c50000047200000000d000000000410000b1bd960000a5a300"
    "1681")
IDENTIFICATION = bytes.fromhex(
    "002e000315bc70d3e2ff0f4f42443130302e30312e30382e30300000c2b30ea77e430000601b000001f40000003c00144aa0")
SMS_ANSWER = bytes.fromhex(  # command 7; its length field says 17 for 36 bytes of data, its CRC covers all 36
    "0011000315a07f440b1d07534554494f20636f6e66696775726174696f6e2064617461206f6b341c")


def imei_of(frame: bytes) -> str:
    return f"{int.from_bytes(frame[2:10], 'big'):015d}"


def frame_of(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data + crc16_kermit(data).to_bytes(2, "big")


def session() -> Session:
    return Session(now=lambda: NOW)


def a_position(**fields: object) -> Position:
    return samples.a_position("863071014445404", **fields)


def test_records_identify_the_unit_and_get_the_records_ack() -> None:
    s = session()
    result = PROTOCOL.decode(RECORDS, s)
    assert s.device == imei_of(RECORDS) and len(s.device) == 15
    assert result.reply == RECORDS_ACK
    (p,) = result.positions
    assert p.fix_time == datetime(2015, 10, 6, 14, 21, 33, tzinfo=UTC)
    assert (p.latitude, p.longitude) == pytest.approx((5.6292216, -0.067495))
    assert (p.satellites, p.power_mv, p.battery_mv, p.odometer_m) == (9, 13286, 4097, 30714)
    assert p.attributes["event"] == 7 and "crcMismatch" not in p.attributes


def test_a_frame_with_two_records_yields_both() -> None:
    result = PROTOCOL.decode(TWO_RECORDS, session())
    assert [p.fix_time.isoformat() for p in result.positions] == ["2015-04-27T06:57:02+00:00", "2015-04-27T06:57:24+00:00"]


def test_extended_records_with_merge_flags_become_one_position() -> None:
    # Four records: the first opens a merge of three more (record extension 0x30..0x33).
    def record(place: int, io: bytes) -> bytes:
        return (bytes.fromhex("58068f4a00") + bytes([0x30 | place]) + bytes.fromhex("000d11398a1c0c19fd056524040b000c0a")
                + bytes.fromhex("0009") + io)
    no_io = b"\x00\x00\x00\x00"
    data = (bytes.fromhex("000315bc70f9b692") + bytes([68, 0, 4])
            + record(0, b"\x01\x00\xfb\x01" + b"\x00\x00\x00")  # ignition (I/O 251) on
            + record(1, b"\x00\x01\x00\x1d\x33\xe6" + b"\x00\x00")  # power (I/O 29) 13286 mV
            + record(2, no_io) + record(3, no_io))
    result = PROTOCOL.decode(frame_of(data), session())
    (p,) = result.positions
    assert p.ignition is True and p.power_mv == 13286 and p.attributes["event"] == 9
    assert result.reply == RECORDS_ACK


def test_driver_id_in_two_halves_and_alarms() -> None:
    io8 = b"\x02" + bytes([126]) + b"ABCDEFGH" + bytes([127]) + b"12345678"
    io1 = b"\x02" + bytes([88, 1]) + bytes([134, 1])  # jamming, harsh braking
    record = (bytes.fromhex("5613d8ed0000") + (-674955).to_bytes(4, "big", signed=True) + (56292216).to_bytes(4, "big")
              + bytes.fromhex("01e700000900000d") + bytes([7]) + io1 + b"\x00\x00" + io8)
    data = bytes.fromhex("000310f5615f419c") + bytes([1, 0, 1]) + record
    (p,) = PROTOCOL.decode(frame_of(data), session()).positions
    assert p.attributes["driverUniqueId"] == "ABCDEFGH12345678"
    assert p.alarm == "jamming,braking"


def test_record_without_a_fix_is_a_status_record() -> None:
    no_fix = (-(2**31)).to_bytes(4, "big", signed=True)
    record = bytes.fromhex("5613d8ed0000") + no_fix + no_fix + bytes(8) + bytes([7]) + bytes(4)
    data = bytes.fromhex("000310f5615f419c") + bytes([1, 0, 1]) + record
    (p,) = PROTOCOL.decode(frame_of(data), session()).positions
    assert not p.located and p.fix_time == datetime(2015, 10, 6, 14, 21, 33, tzinfo=UTC)


def test_dtcs_are_records_with_their_codes_and_get_the_dtc_ack() -> None:
    dtc = (b"\x00" + (1444141293).to_bytes(4, "big") + (-674955).to_bytes(4, "big", signed=True)
           + (56292216).to_bytes(4, "big") + b"\x02" + b"P0123")
    data = bytes.fromhex("000310f5615f419c") + bytes([9, 1]) + dtc
    result = PROTOCOL.decode(frame_of(data), session())
    assert result.reply == bytes.fromhex("00026d01c4a4")
    (p,) = result.positions
    assert p.attributes == {"archive": True, "dtcs": "P0123"}
    assert p.latitude == pytest.approx(5.6292216)


@pytest.mark.parametrize("command", [15, 16])
def test_identification_and_heartbeat_are_answered_with_01(command: int) -> None:
    data = bytes.fromhex("000315bc70d3e2ff") + bytes([command]) + b"\x00" * 4
    result = PROTOCOL.decode(frame_of(data), session())
    assert result.positions == []
    assert result.reply == frame_of(bytes([command, 1]))
    if command == 15:
        assert PROTOCOL.decode(IDENTIFICATION, session()).reply == bytes.fromhex("00020f019241")


def test_command_answer_with_a_short_length_field_is_decoded_when_its_crc_verifies() -> None:
    (p,) = PROTOCOL.decode(SMS_ANSWER, session()).positions
    assert p.attributes["result"] == "SETIO configuration data ok"
    assert "crcMismatch" not in p.attributes


def test_length_mismatch_with_a_bad_crc_is_refused() -> None:
    bad = bytearray(SMS_ANSWER)
    bad[-1] ^= 0xFF
    with pytest.raises(DecodeError, match="declared length 17"):
        PROTOCOL.decode(bytes(bad), session())


def test_bad_crc_with_a_consistent_length_is_decoded_and_flagged() -> None:
    bad = bytearray(RECORDS)
    bad[-1] ^= 0xFF
    result = PROTOCOL.decode(bytes(bad), session())
    assert result.positions[0].attributes["crcMismatch"] is True and result.reply == RECORDS_ACK


@pytest.mark.parametrize("frame", [RECORDS[:40], b"\x00\x05\x00", b"", RECORDS[:12] + RECORDS[-2:]])
def test_bad_frames_raise_one_line_decode_errors(frame: bytes) -> None:
    with pytest.raises(DecodeError) as excinfo:
        PROTOCOL.decode(frame, session())
    assert "\n" not in str(excinfo.value) and str(excinfo.value).startswith("ruptela: ")


def test_file_transfer_yields_nothing_and_no_reply() -> None:
    data = bytes.fromhex("0003142b0c152acd") + bytes([37, 2, 0]) + b"5DDA1FAD" + b"\x00\x0a\x00\x00" + b"\xff\xd8" * 20
    result = PROTOCOL.decode(frame_of(data), session())
    assert result.positions == [] and result.reply is None


def test_split_cuts_frames_by_length_and_waits_for_the_rest() -> None:
    frames, rest = split_all(PROTOCOL, RECORDS + IDENTIFICATION + TWO_RECORDS[:50])
    assert frames == [RECORDS, IDENTIFICATION] and rest == TWO_RECORDS[:50]
    assert PROTOCOL.split(rest) == (None, 0)


def test_split_recovers_a_frame_whose_length_field_is_short_when_its_crc_verifies_further_on() -> None:
    frames, rest = split_all(PROTOCOL, SMS_ANSWER + RECORDS)
    assert frames == [SMS_ANSWER, RECORDS] and rest == b""


def test_split_skips_a_length_no_frame_can_have() -> None:
    assert PROTOCOL.split(b"\x00\x01abc") == (None, 1)


@settings(max_examples=100, deadline=None)
@given(at=samples.coordinates, speed=st.integers(0, 300), fix_time=samples.fix_times, ignition=st.booleans())
def test_encoded_records_read_back_the_same(at: tuple[float, float], speed: int, fix_time: datetime,
                                            ignition: bool) -> None:
    (lat, lon) = at
    sent = a_position(latitude=lat, longitude=lon, speed_kmh=float(speed), ignition=ignition, fix_time=fix_time)
    (got,) = PROTOCOL.decode(encode_position(sent), session()).positions
    assert got.fix_time == sent.fix_time and got.speed_kmh == speed and got.ignition is ignition
    assert got.latitude == pytest.approx(lat, abs=1e-7) and got.longitude == pytest.approx(lon, abs=1e-7)
    assert got.odometer_m == 123456 and got.course == pytest.approx(123.45)


async def test_records_over_tcp_are_stored_and_acknowledged_after_commit(db_url: str, tmp_path: Path) -> None:
    imei = "863071014445404"
    ids = register(db_url, [(imei, "ruptela")])
    sent = track(imei, 2)
    login = encode_login(imei)
    assert login is not None
    async with running_ingest(settings_for(tmp_path, protocols=["ruptela"]), db_url) as svc:
        replies = await exchange(svc.tcp["ruptela"].port, [login] + [encode_position(p) for p in sent], [6, 6, 6])
    assert replies == [frame_of(bytes([15, 1])), RECORDS_ACK, RECORDS_ACK]
    rows = stored(db_url, ids[imei])
    assert [r[0] for r in rows] == [p.fix_time for p in sent]
    assert rows[0][1] == pytest.approx(sent[0].latitude, abs=1e-6) and rows[0][4] is True
