"""What the decoders of marker-and-length messages share: a report taking shape, finding the next
marker in a stream, reading a frame that holds several messages back to back, and turning a
malformed message into one ``DecodeError`` line."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from avl.records import Position
from ingest.protocols.base import DecodeError, DecodeResult, Protocol


class Record:
    """One report taking shape while its message is read: its time, typed ``Position`` fields
    and attributes."""

    __slots__ = ("fix_time", "fields", "attributes")

    def __init__(self, fix_time: datetime | None = None) -> None:
        self.fix_time = fix_time
        self.fields: dict[str, Any] = {}
        self.attributes: dict[str, Any] = {}


def garbage_before(buffer: bytes, *markers: bytes) -> int:
    """The bytes before the first of ``markers`` in ``buffer`` (0: it starts with one); with none in
    it, all but a tail that may be the beginning of one."""
    found = [i for i in (buffer.find(m) for m in markers) if i >= 0]
    if found:
        return min(found)
    keep = max((k for m in markers for k in range(1, len(m)) if buffer.endswith(m[:k])), default=0)
    return len(buffer) - keep


def back_to_back(protocol: Protocol, frame: bytes, length_at: Callable[[int], int], minimum: int) -> list[bytes]:
    """The messages of ``frame``, each ``length_at(offset)`` bytes long (at least ``minimum``;
    ``length_at`` raises for a bad head). A message repeated byte for byte in one frame is one
    report: it is kept once."""
    messages: list[bytes] = []
    pos = 0
    while pos < len(frame):
        length = length_at(pos)
        if length < minimum or pos + length > len(frame):
            raise protocol.error(f"message length {length} at offset {pos} does not fit the frame's"
                                 f" {len(frame)} bytes", frame)
        message = frame[pos:pos + length]
        if message not in messages:
            messages.append(message)
        pos += length
    return messages


def each(messages: list[bytes], decode: Callable[[bytes], tuple[list[Position], bytes | None]]) -> DecodeResult:
    """All the messages' records, and their answers in order."""
    result = DecodeResult()
    replies = b""
    for message in messages:
        positions, reply = decode(message)
        result.positions.extend(positions)
        replies += reply or b""
    result.reply = replies or None
    return result


@contextmanager
def malformed(protocol: Protocol, frame: bytes) -> Iterator[None]:
    """A value a message cannot hold (a date that is no date, a digit that is no digit) as one line."""
    try:
        yield
    except DecodeError:
        raise
    except (ValueError, OverflowError, UnicodeDecodeError) as exc:
        raise protocol.error(f"malformed message: {exc}", frame) from exc
