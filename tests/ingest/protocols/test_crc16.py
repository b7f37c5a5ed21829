"""The protocols' CRC checks: each algorithm gives its catalogue check value (the CRC of the
ASCII bytes "123456789" in the CRC catalogue), matches its bitwise definition on any input, and a
KERMIT CRC can be continued over a second block (Ruptela's extended frames need it)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.protocols import base
from ingest.protocols.crc16 import (
    crc8_nrsc5,
    crc16_ccitt_false,
    crc16_ibm,
    crc16_kermit,
    crc16_modbus,
    crc16_x25,
    xor8,
)


@pytest.mark.parametrize("function,check", [
    (crc16_ibm, 0xBB3D), (crc16_x25, 0x906E), (crc16_kermit, 0x2189), (crc16_modbus, 0x4B37),
    (crc16_ccitt_false, 0x29B1), (crc8_nrsc5, 0xF7), (xor8, 0x31),
], ids=lambda v: getattr(v, "__name__", ""))
def test_each_crc_gives_its_catalogue_check_value(function: object, check: int) -> None:
    assert callable(function) and function(b"123456789") == check


def _reflected(data: bytes, poly: int, crc: int) -> int:
    """The bitwise definition, to check the compiled ones against on any input."""
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
    return crc


def _unreflected(data: bytes, poly: int, crc: int, width: int) -> int:
    top, mask = 1 << (width - 1), (1 << width) - 1
    for byte in data:
        crc ^= byte << (width - 8)
        for _ in range(8):
            crc = ((crc << 1) ^ poly) & mask if crc & top else (crc << 1) & mask
    return crc


@given(st.binary(max_size=300), st.binary(max_size=300))
def test_the_crcs_match_their_definition_and_kermit_continues(a: bytes, b: bytes) -> None:
    assert crc16_ibm(a) == _reflected(a, 0xA001, 0)
    assert crc16_x25(a) == _reflected(a, 0x8408, 0xFFFF) ^ 0xFFFF
    assert crc16_modbus(a) == _reflected(a, 0xA001, 0xFFFF)
    assert crc16_ccitt_false(a) == _unreflected(a, 0x1021, 0xFFFF, 16)
    assert crc8_nrsc5(a) == _unreflected(a, 0x31, 0xFF, 8)
    assert crc16_kermit(a + b) == crc16_kermit(b, crc16_kermit(a)) == _reflected(a + b, 0x8408, 0)
    assert base.crc16_ibm is crc16_ibm and base.crc16_x25 is crc16_x25  # where most decoders import them


@given(st.binary(max_size=600))
def test_the_xor_check_is_every_byte_xored_at_any_length(data: bytes) -> None:
    """JT808 and NMEA checks: short inputs and long ones (folded as one integer) alike."""
    expected = 0
    for byte in data:
        expected ^= byte
    assert xor8(data) == expected
    assert xor8(data + bytes([expected])) == 0  # a frame with its check byte appended checks to zero


def test_the_xor_check_at_the_lengths_where_its_method_changes() -> None:
    blob = bytes((i * 37 + 11) & 0xFF for i in range(1100))
    for n in (0, 1, 63, 64, 65, 127, 128, 129, 1024, 1100):
        expected = 0
        for byte in blob[:n]:
            expected ^= byte
        assert xor8(blob[:n]) == expected, n
