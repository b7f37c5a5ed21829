"""The protocols' one byte reader: a bounds-checked cursor over a frame, big- or little-endian,
built on ``struct.unpack_from`` (no slicing per field), whose errors name the protocol.

    r = Reader(frame, "jt808")           # big-endian
    r = Reader(frame, "galileo", little=True)
    msg_id, attrs = r.u16(), r.u16()
    body = r.sub(length)                 # a reader over the next ``length`` bytes, for a nested block

A read past the end raises :class:`ShortFrame` (a :class:`DecodeError` with the protocol's
name, the offset and what was asked), so a truncated frame is refused with one line, never
an ``IndexError`` or ``struct.error`` from deep inside a decoder.
"""

from __future__ import annotations

import struct

from ingest.protocols.base import DecodeError

_U16B, _U16L = struct.Struct(">H"), struct.Struct("<H")
_I16B, _I16L = struct.Struct(">h"), struct.Struct("<h")
_U32B, _U32L = struct.Struct(">I"), struct.Struct("<I")
_I32B, _I32L = struct.Struct(">i"), struct.Struct("<i")
_U64B, _U64L = struct.Struct(">Q"), struct.Struct("<Q")
_I64B, _I64L = struct.Struct(">q"), struct.Struct("<q")
_F32B, _F32L = struct.Struct(">f"), struct.Struct("<f")
_F64B, _F64L = struct.Struct(">d"), struct.Struct("<d")


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

    def _need(self, n: int) -> int:
        pos = self.pos
        if n < 0 or pos + n > self.end:
            raise ShortFrame(self.protocol, f"frame ends inside a field: needs {n} bytes at offset {pos},"
                             f" {max(self.end - pos, 0)} left", self.data)
        self.pos = pos + n
        return pos

    def take(self, n: int) -> bytes:
        pos = self._need(n)
        return self.data[pos:pos + n]

    def skip(self, n: int) -> None:
        self._need(n)

    def peek(self, offset: int = 0) -> int:
        """The byte ``offset`` bytes ahead, without moving."""
        if self.pos + offset >= self.end:
            raise ShortFrame(self.protocol, f"frame ends at offset {self.pos + offset}", self.data)
        return self.data[self.pos + offset]

    def sub(self, n: int) -> Reader:
        """A reader over the next ``n`` bytes (this one moves past them)."""
        pos = self._need(n)
        return Reader(self.data, self.protocol, pos=pos, end=pos + n, little=self.little)

    def rest(self) -> bytes:
        return self.take(self.remaining)

    # Integers and floats ------------------------------------------------------------

    def u8(self) -> int:
        return self.data[self._need(1)]

    def i8(self) -> int:
        value = self.data[self._need(1)]
        return value - 256 if value > 127 else value

    def u16(self) -> int:
        return int((_U16L if self.little else _U16B).unpack_from(self.data, self._need(2))[0])

    def i16(self) -> int:
        return int((_I16L if self.little else _I16B).unpack_from(self.data, self._need(2))[0])

    def u24(self) -> int:
        pos = self._need(3)
        return int.from_bytes(self.data[pos:pos + 3], "little" if self.little else "big")

    def u32(self) -> int:
        return int((_U32L if self.little else _U32B).unpack_from(self.data, self._need(4))[0])

    def i32(self) -> int:
        return int((_I32L if self.little else _I32B).unpack_from(self.data, self._need(4))[0])

    def u64(self) -> int:
        return int((_U64L if self.little else _U64B).unpack_from(self.data, self._need(8))[0])

    def i64(self) -> int:
        return int((_I64L if self.little else _I64B).unpack_from(self.data, self._need(8))[0])

    def f32(self) -> float:
        return float((_F32L if self.little else _F32B).unpack_from(self.data, self._need(4))[0])

    def f64(self) -> float:
        return float((_F64L if self.little else _F64B).unpack_from(self.data, self._need(8))[0])

    def uint(self, n: int) -> int:
        """An unsigned integer of ``n`` bytes (any width)."""
        pos = self._need(n)
        return int.from_bytes(self.data[pos:pos + n], "little" if self.little else "big")

    def sint(self, n: int) -> int:
        pos = self._need(n)
        return int.from_bytes(self.data[pos:pos + n], "little" if self.little else "big", signed=True)

    # Text ---------------------------------------------------------------------------

    def ascii(self, n: int) -> str:
        return self.take(n).decode("latin-1")

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
