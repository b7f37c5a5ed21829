"""The decoder interface every protocol module implements, and the helpers they share.

Decoders are pure: bytes and session state in; records, reply bytes and errors out.
No sockets, no database, no clock except through ``Session.now`` (so tests can pin it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

from avl.records import Position

# The CRC-16s most decoders use, re-exported from where they are computed.
from ingest.protocols.crc16 import crc16_ibm as crc16_ibm
from ingest.protocols.crc16 import crc16_x25 as crc16_x25

KNOTS_TO_KMH = 1.852
MPH_TO_KMH = 1.609344


class DecodeError(Exception):
    """A frame that cannot be decoded. ``str()`` is one line naming the protocol and the bytes."""

    def __init__(self, protocol: str, message: str, frame: bytes | None = None) -> None:
        self.protocol = protocol
        self.message = message
        self.frame = frame
        super().__init__(self.__str__())

    def __str__(self) -> str:
        text = f"{self.protocol}: {self.message}"
        if self.frame is not None:
            text += f" (hex {hex_preview(self.frame)})"
        return text


class FrameError(DecodeError):
    """The byte stream cannot be framed (oversized or endless frame): the connection is cut."""


def hex_preview(data: bytes, limit: int = 48) -> str:
    """Hex of the first ``limit`` bytes, with an ellipsis and the total size when cut."""
    if len(data) <= limit:
        return data.hex()
    return f"{data[:limit].hex()}...({len(data)} bytes)"


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class Session:
    """What a decoder knows about one connection (TCP), one source address (UDP) or one
    request (HTTP). Decoders read and update it: a login frame sets ``device``."""

    transport: str = "tcp"  # tcp | udp | http | mqtt
    remote: str = ""
    device: str | None = None
    # Per-device options the operator sets (e.g. {"model": "VL103"}), as the
    # reference server's per-device attributes.
    options: dict[str, Any] = field(default_factory=dict)
    # Protocol-private state between frames (e.g. gt06 time zone, h02 frame size).
    state: dict[str, Any] = field(default_factory=dict)
    # A password or authentication word this frame carried (calamp, osmand). Intake clears it
    # before each frame and checks it against the device's; it is never stored.
    credential: str | None = None
    now: Callable[[], datetime] = _utcnow


@dataclass(slots=True)
class DecodeResult:
    """What one frame yields: records (possibly none) and the bytes the device expects back.

    The transport sends ``reply`` only after every record in ``positions`` is durable.
    """

    positions: list[Position] = field(default_factory=list)
    reply: bytes | None = None
    # What the device is told instead when intake refuses the frame's password (Wialon's
    # ``#AL#01``, JT808's failed general response); the connection is then closed.
    refusal: bytes | None = None


class Protocol:
    """Base of every protocol module's decoder.

    Subclasses set ``name``, ``port`` and ``transports`` and implement ``decode``; stream
    protocols (TCP) implement ``split``. UDP datagrams and HTTP requests arrive whole and
    go straight to ``decode`` with ``session.transport`` telling which.
    """

    name: ClassVar[str] = ""
    port: ClassVar[int] = 0
    transports: ClassVar[frozenset[str]] = frozenset({"tcp"})
    max_frame: ClassVar[int] = 4096

    def split(self, buffer: bytes) -> tuple[bytes | None, int]:
        """Find the first frame in a TCP stream buffer.

        Returns ``(frame, consumed)``: ``(None, 0)`` means more bytes are needed;
        ``(None, n)`` with n > 0 means skip n bytes of garbage; otherwise ``frame`` is one
        complete frame (delimiters may be stripped) and ``consumed`` the bytes it used.
        Raises ``FrameError`` when no frame can start within ``max_frame`` bytes.
        """
        raise NotImplementedError

    def decode(self, frame: bytes, session: Session) -> DecodeResult:
        raise NotImplementedError

    # Helpers for subclasses -------------------------------------------------------

    def error(self, message: str, frame: bytes | None = None) -> DecodeError:
        return DecodeError(self.name, message, frame)

    def position(self, session: Session, fix_time: datetime, frame: bytes, **fields: Any) -> Position:
        """A record for the session's device; raises when the device is not identified yet."""
        return Position(device=self.identified(session, frame), fix_time=fix_time, protocol=self.name, raw=frame,
                        **fields)

    def identified(self, session: Session, frame: bytes) -> str:
        """The session's device; raises when the device is not identified yet."""
        if session.device is None:
            raise self.error("report before the device identified itself (no login on this session)", frame)
        return session.device

    def too_long(self, buffer: bytes) -> FrameError:
        return FrameError(self.name, f"no complete frame within {self.max_frame} bytes", buffer[:64])


# BCD and coordinates --------------------------------------------------------------


def bcd(data: bytes) -> str:
    """Packed BCD to its digit string (nibbles > 9 are kept as hex digits, e.g. ``f`` padding)."""
    return data.hex()


def bcd_int(data: bytes) -> int:
    value = 0
    for b in data:
        hi, lo = b >> 4, b & 0x0F
        if hi > 9 or lo > 9:
            raise ValueError(f"not BCD: {data.hex()}")
        value = value * 100 + hi * 10 + lo
    return value


def nmea_degrees(value: str, hemisphere: str = "") -> float:
    """``ddmm.mmmm`` / ``dddmm.mmmm`` (NMEA) to signed decimal degrees."""
    raw = float(value)
    degrees = int(raw / 100)
    result = degrees + (raw - degrees * 100) / 60.0
    if hemisphere in ("S", "W", "s", "w"):
        result = -result
    return result


def nmea_text(value: float, degree_digits: int, decimals: int = 4) -> str:
    """``abs(value)`` as NMEA ``d..dmm.mmmm`` (the encoders' inverse of ``nmea_degrees``)."""
    scale = 10**decimals
    units = round(abs(value) * 60 * scale)  # minutes in 1/scale
    degrees, rest = divmod(units, 60 * scale)
    return f"{degrees:0{degree_digits}d}{rest // scale:02d}.{rest % scale:0{decimals}d}"


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0,
        microsecond: int = 0) -> datetime:
    """A UTC datetime; two-digit years are taken as 20xx. Raises ValueError when invalid."""
    if year < 100:
        year += 2000
    return datetime(year, month, day, hour, minute, second, microsecond, tzinfo=UTC)


def from_unix(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def text(frame: bytes) -> str:
    """A text protocol's frame as str (latin-1: every byte maps, nothing raises)."""
    return frame.decode("latin-1")
