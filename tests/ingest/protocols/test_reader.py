"""The protocols' shared byte reader: values, both byte orders, bounds named by protocol."""

from __future__ import annotations

import struct

import pytest

from ingest.protocols import get
from ingest.protocols.base import DecodeError
from ingest.protocols.reader import Reader, ShortFrame
from tests.ingest.protocols.corpus import load, session_for


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


def test_a_fixed_layout_is_read_in_one_call_and_a_short_read_moves_nothing() -> None:
    layout = struct.Struct(">HbI")
    r = Reader(bytes.fromhex("0102 ff 00000003 aa"), "teltonika")
    assert r.unpack(layout) == (0x0102, -1, 3) and r.pos == 7
    with pytest.raises(ShortFrame, match=r"^teltonika: frame ends inside a field: needs 7 bytes at offset 7, 1 left"):
        r.unpack(layout)
    assert r.pos == 7 and r.advance(1) == 7 and r.remaining == 0
    with pytest.raises(ShortFrame):
        r.advance(1)


def test_text_is_decoded_as_the_caller_says() -> None:
    r = Reader(b"OK\xffOK\xff", "gt06")
    assert r.text(3, "ascii", "replace") == "OK\ufffd" and r.ascii(3) == "OK\xff"


# The decoders that carried a reader of their own before this one.
MIGRATED = ("teltonika", "gt06", "gl200", "meitrack", "suntech", "calamp")


@pytest.mark.parametrize("name", MIGRATED)
def test_a_cut_frame_is_refused_with_one_line_naming_the_protocol(name: str) -> None:
    """Every real frame of the protocol cut short at each length: whatever the decoder refuses it
    with is a DecodeError of one line that starts with the protocol's name."""
    protocol = get(name)
    frames = [f for f in load() if f.data["protocol"] == name and f.data["stage"] == "decoder"]
    refused = 0
    for frame in frames:
        payload = frame.payload
        for cut in range(1, min(len(payload), 160)):
            try:
                protocol.decode(payload[:cut], session_for(frame))
            except DecodeError as exc:
                refused += 1
                assert str(exc).startswith(f"{name}: ") and "\n" not in str(exc), str(exc)
    assert refused > 0
