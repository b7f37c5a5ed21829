"""Enfora / Sierra Wireless MT-G and similar modems: the modem's API event message, whose
user-configured body carries the IMEI and an NMEA GPRMC sentence. TCP and UDP; no ACK.

TCP frame (UDP: the same bytes in one datagram)::

    offset  size  field
    0       2     length, big-endian, counting itself (the framer uses it)
    2       2     API index / sequence
    4       1     command type (02 = event message)
    5       1     optional header byte
    6       ...   event data, ASCII, as the modem's AT$EVENT configuration lays it out:
                  the modem ID (IMEI, 15 digits, space padded), event fields, and
                  $GPRMC,hhmmss[.ss],A|V,ddmm.mmmm,N|S,dddmm.mmmm,E|W,speed kn,course,ddmmyy,...*CS\\r\\n

The header is not parsed: the IMEI is the first run of 15 ASCII digits, the fix comes from the
first ``GPRMC`` sentence. A frame without GPRMC (or with an empty one, no fix) yields nothing.
The NMEA checksum is verified: on mismatch the record still decodes and gets
``attributes["crcMismatch"] = True``. A frame without an IMEI is a DecodeError (the reference
ignores it silently).
"""

from __future__ import annotations

import re
import struct
from datetime import UTC
from typing import ClassVar

from avl.records import Position
from ingest.protocols.base import KNOTS_TO_KMH, DecodeError, DecodeResult, FrameError, Protocol, Session, utc
from ingest.protocols.crc16 import xor8

IMEI_LENGTH = 15
_HEADER = 6  # length, index, command type, header byte
_EVENT_MESSAGE = 0x02

_IMEI = re.compile(rb"\d{15}")
_GPRMC = re.compile(
    rb"GPRMC,(?P<hour>\d\d)(?P<minute>\d\d)(?P<second>\d\d)\.?\d*,"
    rb"(?P<validity>[AV]),"
    rb"(?P<lat_d>\d\d)(?P<lat_m>\d\d\.\d+),(?P<lat_h>[NS]),"
    rb"(?P<lon_d>\d{3})(?P<lon_m>\d\d\.\d+),(?P<lon_h>[EW]),"
    rb"(?P<speed>\d+\.\d+)?,"
    rb"(?P<course>\d+\.\d+)?,"
    rb"(?P<day>\d\d)(?P<month>\d\d)(?P<year>\d\d),"
)
_CHECKSUM = re.compile(rb"\*([0-9A-Fa-f]{2})")


def _checksum_mismatch(frame: bytes, start: int) -> bool:
    """Whether the NMEA sentence starting at ``start`` (its ``G``) carries a wrong ``*CS``.

    A sentence without a checksum is not flagged."""
    line_end = len(frame)
    for stop in (b"\r", b"\n"):
        found = frame.find(stop, start)
        if found >= 0:
            line_end = min(line_end, found)
    star = frame.rfind(b"*", start, line_end)
    if star < 0:
        return False
    declared = _CHECKSUM.match(frame, star)
    if declared is None:
        return True
    return xor8(frame[start:star]) != int(declared[1], 16)


class EnforaProtocol(Protocol):
    name: ClassVar[str] = "enfora"
    port: ClassVar[int] = 5008
    transports: ClassVar[frozenset[str]] = frozenset({"tcp", "udp"})
    max_frame: ClassVar[int] = 1024

    def split(self, buffer: bytes) -> tuple[bytes | None, int]:
        if len(buffer) < 2:
            return None, 0
        (length,) = struct.unpack_from(">H", buffer)
        if length < _HEADER:
            raise FrameError(self.name, f"declared length {length} is shorter than the {_HEADER}-byte header",
                             buffer[:64])
        if length > self.max_frame:
            raise self.too_long(buffer)
        if len(buffer) < length:
            return None, 0
        return buffer[:length], length

    def decode(self, frame: bytes, session: Session) -> DecodeResult:
        try:
            return self._decode(frame, session)
        except DecodeError:
            raise
        except (ValueError, IndexError, OverflowError) as exc:
            raise self.error(f"malformed frame: {exc}", frame) from exc

    def _decode(self, frame: bytes, session: Session) -> DecodeResult:
        imei = _IMEI.search(frame)
        if imei is None:
            raise self.error("no 15-digit IMEI in frame", frame)
        session.device = imei[0].decode("ascii")

        start = frame.find(b"GPRMC")
        if start < 0:
            return DecodeResult()
        match = _GPRMC.match(frame, start)
        if match is None:
            return DecodeResult()
        fix_time = utc(int(match["year"]), int(match["month"]), int(match["day"]),
                       int(match["hour"]), int(match["minute"]), int(match["second"]))
        latitude = int(match["lat_d"]) + float(match["lat_m"]) / 60
        longitude = int(match["lon_d"]) + float(match["lon_m"]) / 60
        attributes = {"crcMismatch": True} if _checksum_mismatch(frame, start) else {}
        position = self.position(
            session, fix_time, frame,
            valid=match["validity"] == b"A",
            latitude=-latitude if match["lat_h"] == b"S" else latitude,
            longitude=-longitude if match["lon_h"] == b"W" else longitude,
            speed_kmh=float(match["speed"] or 0) * KNOTS_TO_KMH,
            course=float(match["course"] or 0),
            attributes=attributes,
        )
        return DecodeResult([position])


# Encoder (device simulator) ---------------------------------------------------------


def _encode_coordinate(value: float, degree_digits: int, hemispheres: str) -> str:
    units = round(abs(value) * 60 * 1_000_000)  # 1e-6 minute
    degrees, rest = divmod(units, 60 * 1_000_000)
    minutes, fraction = divmod(rest, 1_000_000)
    hemisphere = hemispheres[1] if value < 0 else hemispheres[0]
    return f"{degrees:0{degree_digits}d}{minutes:02d}.{fraction:06d},{hemisphere}"


def encode_login(device: str) -> bytes | None:
    """Enfora has no login: every event message carries the IMEI."""
    return None


def encode_position(p: Position, sequence: int = 0) -> bytes:
    """An event message (command type 02) with the IMEI and a GPRMC sentence: time to the
    second, coordinates to 1e-6 minute, speed in knots to 0.01, course to 0.01 degree."""
    if len(p.device) != IMEI_LENGTH or not (p.device.isascii() and p.device.isdigit()):
        raise ValueError(f"enfora device must be a 15-digit IMEI, got {p.device!r}")
    if p.latitude is None or p.longitude is None:
        raise ValueError("enfora GPRMC needs a location")
    moment = p.fix_time.astimezone(UTC)
    speed_knots = (p.speed_kmh or 0.0) / KNOTS_TO_KMH
    sentence = ",".join([
        "GPRMC", f"{moment:%H%M%S}.00", "A" if p.valid else "V",
        _encode_coordinate(p.latitude, 2, "NS"), _encode_coordinate(p.longitude, 3, "EW"),
        f"{speed_knots:.2f}", f"{(p.course or 0.0):.2f}", f"{moment:%d%m%y}", "", "", "A" if p.valid else "N",
    ]).encode("ascii")
    body = b"  " + p.device.encode("ascii") + b" 1 $" + sentence + b"*%02X\r\n" % xor8(sentence)
    header = struct.pack(">HBB", sequence & 0xFFFF, _EVENT_MESSAGE, 0)
    return struct.pack(">H", 2 + len(header) + len(body)) + header + body


PROTOCOL = EnforaProtocol()
