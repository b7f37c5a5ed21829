"""The local spool: batches the database could not take, fsynced before their ACKs go out
and replayed in order when the database is back.

One append-only file of records ``[u32 length][u32 crc32][payload]``; a second small
file holds the replay offset. A crash mid-append leaves a torn last record, which the
CRC exposes: it is cut off on open (it was never acknowledged, since its fsync had not
returned). Replayed writes are idempotent, so a crash mid-replay replays a few records
twice and stores them once.
"""

from __future__ import annotations

import logging
import marshal
import os
import struct
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ingest.pipeline import Batch

log = logging.getLogger("avl.ingest.spool")

_HEADER = struct.Struct(">II")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class SpoolError(Exception):
    """The spool cannot take more (disk full, I/O error): nothing may be acknowledged."""


def _encode_value(v: Any) -> Any:
    if isinstance(v, datetime):
        delta = v - _EPOCH
        return ("t", delta.days * 86_400_000_000 + delta.seconds * 1_000_000 + delta.microseconds)
    return v


def _decode_value(v: Any) -> Any:
    if isinstance(v, tuple) and len(v) == 2 and v[0] == "t":
        return _EPOCH + timedelta(microseconds=v[1])
    return v


def encode(batch: Batch) -> bytes:
    """Rows hold only None/bool/int/float/str/bytes/datetime: marshal takes them all but datetime."""
    parts: tuple[Any, ...] = tuple(tuple(tuple(_encode_value(v) for v in row) for row in rows)
                                   for rows in (batch.positions, batch.events, batch.quarantine, batch.unknown))
    if batch.untimed:
        parts += (tuple((table, tuple(_encode_value(v) for v in row), digest) for table, row, digest in batch.untimed),)
    return marshal.dumps(parts)


def decode(payload: bytes) -> Batch:
    parts = marshal.loads(payload)  # our own CRC-checked file
    positions, events, quarantine, unknown = ([tuple(_decode_value(v) for v in row) for row in rows]
                                              for rows in parts[:4])
    untimed = [(table, tuple(_decode_value(v) for v in row), digest) for table, row, digest in parts[4]] \
        if len(parts) > 4 else []
    return Batch(positions, events, quarantine, unknown, untimed)


class Spool:
    """``<name>.log`` and ``<name>.offset`` in ``directory``: each ingest process of a host has its own
    (``spool`` for the first, ``spool-<n>`` for the others; see ``ingest.processes``)."""

    def __init__(self, directory: Path, max_bytes: int = 1 << 34, name: str = "spool") -> None:
        self.directory = directory
        self.path = directory / f"{name}.log"
        self.offset_path = directory / f"{name}.offset"
        self.max_bytes = max_bytes
        directory.mkdir(parents=True, exist_ok=True)
        # Unbuffered, at the descriptor: a failed write (disk full) must leave nothing behind in a
        # buffer that a later flush would slip in ahead of the next record.
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        self.read_offset = self._load_offset()
        self.size = self._recover()

    # Writing --------------------------------------------------------------------

    def append(self, payload: bytes) -> None:
        """Appends one record and fsyncs it. Raises SpoolError when it cannot."""
        record = _HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        if self.size + len(record) > self.max_bytes:
            raise SpoolError(f"spool: {self.path} is at its limit of {self.max_bytes} bytes")
        try:
            view = memoryview(record)
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
        except OSError as exc:
            # Cut back whatever part was written, so the file stays a sequence of whole records.
            try:
                os.ftruncate(self._fd, self.size)
            except OSError:
                pass
            raise SpoolError(f"spool: cannot write {self.path}: {exc.strerror or exc}") from None
        self.size += len(record)

    # Replaying ------------------------------------------------------------------

    @property
    def pending(self) -> bool:
        return self.read_offset < self.size

    @property
    def pending_bytes(self) -> int:
        return self.size - self.read_offset

    def peek(self, offset: int | None = None) -> tuple[bytes, int] | None:
        """The record at ``offset`` (default: the next to replay) and the offset after it, or None."""
        offset = self.read_offset if offset is None else offset
        if offset >= self.size:
            return None
        header = os.pread(self._fd, _HEADER.size, offset)
        length, crc = _HEADER.unpack(header)
        payload = os.pread(self._fd, length, offset + _HEADER.size)
        if len(payload) != length or zlib.crc32(payload) != crc:  # cannot happen after _recover
            raise SpoolError(f"spool: corrupt record at offset {offset} in {self.path}")
        return payload, offset + _HEADER.size + length

    def advance(self, offset: int) -> None:
        """Marks everything before ``offset`` replayed (durably); empties the file when all is."""
        self.read_offset = offset
        if self.read_offset >= self.size:
            os.ftruncate(self._fd, 0)
            os.fsync(self._fd)
            self.size = self.read_offset = 0
        self._store_offset()

    def close(self) -> None:
        os.close(self._fd)

    def absorb(self, other: Spool) -> int:
        """Takes over what ``other`` (the spool of an ingest process that no longer runs) has not
        replayed: its records are appended here (fsynced), then ``other`` is emptied. A crash in
        between leaves them in both and they are replayed twice, which stores them once. Returns
        how many records were taken."""
        offset, taken = other.read_offset, 0
        while (record := other.peek(offset)) is not None:
            payload, offset = record
            self.append(payload)
            taken += 1
        other.advance(offset)
        return taken

    # Recovery -------------------------------------------------------------------

    def _load_offset(self) -> int:
        try:
            return int(self.offset_path.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _store_offset(self) -> None:
        tmp = self.offset_path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write(str(self.read_offset))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.offset_path)

    def _recover(self) -> int:
        """Scans the file; cuts a torn last record. Returns the size of the whole records."""
        good = 0
        end = os.fstat(self._fd).st_size
        while good + _HEADER.size <= end:
            length, crc = _HEADER.unpack(os.pread(self._fd, _HEADER.size, good))
            payload = os.pread(self._fd, length, good + _HEADER.size)
            if len(payload) != length or zlib.crc32(payload) != crc:
                break
            good += _HEADER.size + length
        if end != good:
            log.warning("spool: cut a torn record at offset %s of %s (written but never acknowledged)", good, self.path)
            os.ftruncate(self._fd, good)
            os.fsync(self._fd)
        if self.read_offset > good:
            self.read_offset = good
        if good:
            log.info("spool: %s bytes waiting to be replayed in %s", good - self.read_offset, self.path)
        return good
