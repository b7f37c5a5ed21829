"""Splitting a whole TCP stream with a protocol's framer, as the TCP listener does."""

from __future__ import annotations

from ingest.protocols import Protocol


def split_all(protocol: Protocol, stream: bytes) -> tuple[list[bytes], bytes]:
    """Every complete frame in ``stream`` (garbage skipped), and what is left waiting for more bytes."""
    frames: list[bytes] = []
    while stream:
        frame, consumed = protocol.split(stream)
        if frame is None and consumed == 0:
            break
        if frame is not None:
            frames.append(frame)
        stream = stream[consumed:]
    return frames, stream
