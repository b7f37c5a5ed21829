"""The protocols' one byte reader: a bounds-checked cursor over a frame, big- or little-endian,
built on ``struct.unpack_from`` (no slicing per field), whose errors name the protocol.

    r = Reader(frame, "jt808")           # big-endian
    r = Reader(frame, "galileo", little=True)
    msg_id, attrs = r.u16(), r.u16()
    body = r.sub(length)                 # a reader over the next ``length`` bytes, for a nested block
    ms, lon, lat = r.unpack(HEADER)      # a fixed layout in one call (a struct.Struct, its own byte order)

A read past the end raises :class:`ShortFrame` (a :class:`DecodeError` with the protocol's
name, the offset and what was asked), so a truncated frame is refused with one line, never
an ``IndexError`` or ``struct.error`` from deep inside a decoder. A failed read does not move
the cursor.

The most used reads (``u8``, ``u16``, ``u32``, ``take``) check their bounds inline rather than
through ``advance``: decoders call them for every field of every record, and a Python call is
most of what a field costs.
"""

from __future__ import annotations

import struct
from typing import Any, Literal

from ingest.protocols.base import DecodeError

# (big-endian, little-endian), indexed by the reader's ``little`` flag.
_U16 = (struct.Struct(">H"), struct.Struct("<H"))
_I16 = (struct.Struct(">h"), struct.Struct("<h"))
_U32 = (struct.Struct(">I"), struct.Struct("<I"))
_I32 = (struct.Struct(">i"), struct.Struct("<i"))
_U64 = (struct.Struct(">Q"), struct.Struct("<Q"))
_I64 = (struct.Struct(">q"), struct.Struct("<q"))
_F32 = (struct.Struct(">f"), struct.Struct("<f"))
_F64 = (struct.Struct(">d"), struct.Struct("<d"))
_ORDER: tuple[Literal["big", "little"], ...] = ("big", "little")


class ShortFrame(DecodeError):
    """The frame ends inside a field."""


class Reader:
    """A cursor over ``data[pos:end]``; every read checks its bounds."""

    __slots__ = ("data", "pos", "end", "protocol", "little")

    def __init__(self, data: bytes, protocol: str, *, pos: int = 0, end: int | None = None,
                 little: bool = False) -> None:
        self.data = data
        self.protocol = protocol
        self.pos = pos
        self.end = len(data) if end is None else min(end, len(data))
        self.little = little

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def short(self, n: int) -> ShortFrame:
        """The error for a read of ``n`` bytes at the cursor that does not fit."""
        return ShortFrame(self.protocol, f"frame ends inside a field: needs {n} bytes at offset {self.pos},"
                          f" {max(self.end - self.pos, 0)} left", self.data)

    def advance(self, n: int) -> int:
        """Moves past the next ``n`` bytes and returns the offset they start at: for a caller
        that unpacks a block of known size from ``data`` in place."""
        pos = self.pos
        if n < 0 or pos + n > self.end:
            raise self.short(n)
        self.pos = pos + n
        return pos

    def take(self, n: int) -> bytes:
        pos = self.pos
        if n < 0 or pos + n > self.end:
            raise self.short(n)
        self.pos = pos + n
        return self.data[pos:pos + n]

    def skip(self, n: int) -> None:
        self.advance(n)

    def peek(self, offset: int = 0) -> int:
        """The byte ``offset`` bytes ahead, without moving."""
        if self.pos + offset >= self.end:
            raise ShortFrame(self.protocol, f"frame ends at offset {self.pos + offset}", self.data)
        return self.data[self.pos + offset]

    def sub(self, n: int) -> Reader:
        """A reader over the next ``n`` bytes (this one moves past them)."""
        pos = self.advance(n)
        return Reader(self.data, self.protocol, pos=pos, end=pos + n, little=self.little)

    def rest(self) -> bytes:
        return self.take(self.end - self.pos)

    def unpack(self, layout: struct.Struct) -> tuple[Any, ...]:
        """The fields of a fixed layout at the cursor, in one call (the layout names its byte order)."""
        pos = self.pos
        size = layout.size
        if pos + size > self.end:
            raise self.short(size)
        self.pos = pos + size
        return layout.unpack_from(self.data, pos)

    # Integers and floats ------------------------------------------------------------

    def u8(self) -> int:
        pos = self.pos
        if pos >= self.end:
            raise self.short(1)
        self.pos = pos + 1
        return self.data[pos]

    def i8(self) -> int:
        value = self.u8()
        return value - 256 if value > 127 else value

    def u16(self) -> int:
        pos = self.pos
        if pos + 2 > self.end:
            raise self.short(2)
        self.pos = pos + 2
        value: int = _U16[self.little].unpack_from(self.data, pos)[0]
        return value

    def i16(self) -> int:
        value: int = _I16[self.little].unpack_from(self.data, self.advance(2))[0]
        return value

    def u24(self) -> int:
        return self.uint(3)

    def u32(self) -> int:
        pos = self.pos
        if pos + 4 > self.end:
            raise self.short(4)
        self.pos = pos + 4
        value: int = _U32[self.little].unpack_from(self.data, pos)[0]
        return value

    def i32(self) -> int:
        value: int = _I32[self.little].unpack_from(self.data, self.advance(4))[0]
        return value

    def u64(self) -> int:
        value: int = _U64[self.little].unpack_from(self.data, self.advance(8))[0]
        return value

    def i64(self) -> int:
        value: int = _I64[self.little].unpack_from(self.data, self.advance(8))[0]
        return value

    def f32(self) -> float:
        value: float = _F32[self.little].unpack_from(self.data, self.advance(4))[0]
        return value

    def f64(self) -> float:
        value: float = _F64[self.little].unpack_from(self.data, self.advance(8))[0]
        return value

    def uint(self, n: int) -> int:
        """An unsigned integer of ``n`` bytes (any width)."""
        pos = self.advance(n)
        return int.from_bytes(self.data[pos:pos + n], _ORDER[self.little])

    def sint(self, n: int) -> int:
        """A two's-complement signed integer of ``n`` bytes (any width)."""
        pos = self.advance(n)
        return int.from_bytes(self.data[pos:pos + n], _ORDER[self.little], signed=True)

    # Text ---------------------------------------------------------------------------

    def ascii(self, n: int) -> str:
        """``n`` bytes as text, one character per byte (latin-1: nothing raises)."""
        return self.take(n).decode("latin-1")

    def text(self, n: int, encoding: str, errors: str = "strict") -> str:
        """``n`` bytes decoded as ``encoding`` (``errors`` as for ``bytes.decode``)."""
        return self.take(n).decode(encoding, errors)

    def cstring(self, limit: int | None = None) -> str:
        """Bytes up to a NUL (consumed), or to ``limit`` / the end when there is none."""
        stop = self.end if limit is None else min(self.end, self.pos + limit)
        nul = self.data.find(b"\x00", self.pos, stop)
        if nul < 0:
            return self.take(stop - self.pos).decode("latin-1")
        text = self.data[self.pos:nul].decode("latin-1")
        self.pos = nul + 1
        return text

    def bcd(self, n: int) -> str:
        """``n`` bytes of packed BCD as digits."""
        return self.take(n).hex()
