"""The CRC-16 variants some protocols use beyond base's X-25 and ARC: KERMIT (Ruptela) and
MODBUS (Galileosky). Both are reflected, table-driven, with no final XOR."""

from __future__ import annotations

from ingest.protocols.base import _reflected_table

_CCITT_REFLECTED = _reflected_table(0x8408)
_ARC_REFLECTED = _reflected_table(0xA001)


def _run(table: list[int], crc: int, data: bytes) -> int:
    for b in data:
        crc = (crc >> 8) ^ table[(crc ^ b) & 0xFF]
    return crc


def crc16_kermit(data: bytes, crc: int = 0) -> int:
    """CRC-16/KERMIT: reflected 0x1021, init 0, no xorout (check "123456789" = 0x2189).

    ``crc`` continues a CRC: ``crc16_kermit(b, crc16_kermit(a)) == crc16_kermit(a + b)``."""
    return _run(_CCITT_REFLECTED, crc, data)


def crc16_modbus(data: bytes) -> int:
    """CRC-16/MODBUS: reflected 0x8005, init 0xFFFF, no xorout (check "123456789" = 0x4B37)."""
    return _run(_ARC_REFLECTED, 0xFFFF, data)
