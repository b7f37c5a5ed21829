"""The protocols' shared byte reader: values, both byte orders, bounds named by protocol."""

from __future__ import annotations

import pytest

from ingest.protocols.base import DecodeError
from ingest.protocols.reader import Reader, ShortFrame


def test_reads_big_and_little_endian_fields() -> None:
    data = bytes.fromhex("01 ff fe 0001 00000002 000000000000000a 3fc00000") + b"AB\x00rest"
    r = Reader(data, "jt808")
    assert (r.u8(), r.i8(), r.i8(), r.u16(), r.u32(), r.u64(), r.f32()) == (1, -1, -2, 1, 2, 10, 1.5)
    assert r.cstring() == "AB" and r.rest() == b"rest" and r.remaining == 0
    little = Reader(bytes.fromhex("0100 02000000 ffff"), "galileo", little=True)
    assert (little.u16(), little.u32(), little.i16()) == (1, 2, -1)


def test_a_sub_reader_is_bounded_and_moves_its_parent() -> None:
    r = Reader(b"\x00\x02\xaa\xbb\xcc", "x")
    block = r.sub(r.u16())
    assert (block.u8(), block.u8(), r.u8()) == (0xAA, 0xBB, 0xCC)
    with pytest.raises(ShortFrame):
        block.u8()


def test_reading_past_the_end_is_one_decode_error_naming_the_protocol() -> None:
    r = Reader(b"\x01\x02\x03", "ruptela")
    r.u16()
    with pytest.raises(DecodeError) as err:
        r.u32()
    assert str(err.value).startswith("ruptela:") and "needs 4 bytes at offset 2, 1 left" in str(err.value)
    assert r.pos == 2  # a failed read does not move the cursor
