"""Pointer Cellocator (CR200/CR300, CelloTrack and the Cello family): the ``MCGP`` binary messages
over TCP and UDP, each acknowledged with the server message the unit waits for.

Every field is little-endian. Header (12 bytes)::

    offset  size  field
    0       4     system code "MCGP" (another 4th byte than 'P', e.g. "MCPG": the alternative layout)
    4       1     message type: 0 status/location (70 bytes), 3 programming (31), 7 serial log (70),
                  8 serial data (19 + u16 at 16), 9 modular (15 + u8 at 13), 11 modular (16 + u16 at 13)
    5       4     unit ID                                                   -> the device (decimal)
    9       2     communication control (absent in type 8)
    11      1     message numerator (10 in type 8)
    last    1     checksum: sum of every byte after the system code, mod 256

Type 0, status/location (from offset 12)::

    12 u8 hardware version | 13 u8 firmware version | 14 u8 protocol version | 15 u8 unit status
    (low nibble -> status) | 16 u8 configuration flags | 17 u8 reason data | 18 u8 transmission
    reason (-> event; 70 SOS, 80 power cut, 81 low power) | 19 u8 unit mode | 20 u32 I/O state
    (bit 7 charge, bit 23 ignition, bit 24 door; -> input) | 24 u8 operator, 25-28 four u8
    analog inputs (alternative: 24 u8 input, 25 u16 adc1, 27 u16 adc2) | 29 u24 odometer |
    32 6 bytes multi-purpose | 38 u16 last fix time | 40 u8 location status | 41 u8 mode 1 |
    42 u8 mode 2 | 43 u8 satellites | 44 i32 longitude, 48 i32 latitude (1e-8 rad; alternative
    1e-7 deg) | 52 i32 altitude cm | 56 u32 speed cm/s (alternative km/h) | 60 u16 course mrad
    (alternative 0.001 deg) | 62 second, minute, hour, day, month u8, u16 year (UTC) | 69 checksum

Type 11, modular (from offset 12): u8 packet control | u16 length (bytes after this field up to the
checksum) | 4 reserved bytes | modules, each u8 type + u16 length + data:
    2  PL data:  u16 operator ID, u32 signature, u8 count, count x (u16 ID, u8 size, u32 value) -> io<ID>
    6  GPS:      u8 HDOP, u8 mode 1, u8 mode 2, u8 satellites, i32 longitude, i32 latitude (1e-8 rad),
                 i32 altitude cm, u8 speed (as the reference reads it: cm/s), u16 course mrad
    7  time:     u8 validity, second, minute, hour, day, month, year - 2000 (u8 each)

Replies (28 bytes, checksum as above): type 11 gets a type-11 message with the unit's numerator and
an ACK module (``80 0A00 00000000 09 0300 00 0000``); every other type gets the type-4 acknowledge,
``MCGP 04 <unit ID> 00 <00000000 authentication> 00 <the unit's numerator> 00 x 11``.

Decisions (where this differs from the reference decoder):
    * The checksum is verified: a mismatch is decoded and flagged ``crcMismatch`` (one corpus
      frame, an alternative-layout "MCPG" status message, has one).
    * Programming, serial and type-9 modular messages are acknowledged and yield no record.
    * A type-0 message with coordinates 0,0 or an impossible date is a status record (no location).
    * The transmission reason is kept raw as ``event``; alarms only for the three codes above.
"""

from __future__ import annotations

import math
import struct
from datetime import datetime
from typing import Any, ClassVar

from avl.records import Position
from ingest.protocols.base import DecodeResult, Protocol, Session, utc
from ingest.protocols.guard import guarded
from ingest.protocols.reader import Reader

SYSTEM_PREFIX = b"MC"
SYSTEM_CODE = b"MCGP"

MSG_STATUS = 0
MSG_PROGRAMMING = 3
MSG_ACK = 4
MSG_SERIAL_LOG = 7
MSG_SERIAL = 8
MSG_MODULAR = 9
MSG_MODULAR_EXT = 11

STATUS_SIZE = 70
_MIN_HEADER = 15  # enough to read every type's length field
_RAD_1E8_TO_DEG = 180 / math.pi / 1e8
_CM_S_TO_KMH = 0.036
_ALARMS = {70: "sos", 80: "powerCut", 81: "lowPower"}


def frame_size(data: bytes) -> int | None:
    """The size of the message starting ``data`` (at least 15 bytes), or None for an unknown type."""
    kind = data[4]
    if kind in (MSG_STATUS, MSG_SERIAL_LOG):
        return STATUS_SIZE
    if kind == MSG_PROGRAMMING:
        return 31
    if kind == MSG_SERIAL:
        return 19 + int.from_bytes(data[16:18], "little") if len(data) >= 19 else 0
    if kind == MSG_MODULAR:
        return 15 + data[13]
    if kind == MSG_MODULAR_EXT:
        return 16 + int.from_bytes(data[13:15], "little")
    return None


def checksum(data: bytes) -> int:
    """The sum, mod 256, of every byte after the 4-byte system code."""
    return sum(data[4:]) & 0xFF


def _message(kind: int, unit: int, numerator: int, content: bytes) -> bytes:
    body = SYSTEM_CODE + struct.pack("<BIBI", kind, unit & 0xFFFFFFFF, numerator & 0xFF, 0) + content
    return body + bytes([checksum(body)])


def ack(unit: int, numerator: int) -> bytes:
    """The type-4 acknowledge of a unit's message (28 bytes)."""
    return _message(MSG_ACK, unit, 0, bytes([0, numerator & 0xFF]) + bytes(11))


def module_ack(unit: int, numerator: int) -> bytes:
    """The type-11 reply with an ACK module, for a type-11 message (28 bytes)."""
    modules = struct.pack("<BHIBHBH", 0x80, 10, 0, 9, 3, 0, 0)
    return _message(MSG_MODULAR_EXT, unit, numerator, modules)


class CellocatorProtocol(Protocol):
    name: ClassVar[str] = "cellocator"
    port: ClassVar[int] = 5033
    transports: ClassVar[frozenset[str]] = frozenset({"tcp", "udp"})
    max_frame: ClassVar[int] = 65551  # type 11: 16 + u16

    def split(self, buffer: bytes) -> tuple[bytes | None, int]:
        start = _find_start(buffer)
        if start < 0:  # keep a trailing "M": it may start the next message
            return None, len(buffer) - (1 if buffer.endswith(b"M") else 0)
        if start > 0:
            return None, start
        if len(buffer) < _MIN_HEADER:
            return None, 0
        size = frame_size(buffer)
        if size is None:
            return None, 1  # an unknown message type: not a frame start after all
        if size == 0 or len(buffer) < size:
            return None, 0
        return buffer[:size], size

    def decode(self, frame: bytes, session: Session) -> DecodeResult:
        return guarded(self, self._decode, frame, session, "message")

    def _decode(self, frame: bytes, session: Session) -> DecodeResult:
        if len(frame) < _MIN_HEADER or frame[:2] != SYSTEM_PREFIX:
            raise self.error("not a Cellocator message (no MCGP system code)", frame)
        size = frame_size(frame)
        if size is None:
            raise self.error(f"unknown message type {frame[4]}", frame)
        if len(frame) < size or size == 0:
            raise self.error(f"message of {len(frame)} bytes is shorter than its type's {size}", frame)
        frame = frame[:size]
        mismatch = frame[-1] != checksum(frame[:-1])
        r = Reader(frame, self.name, end=size - 1, little=True)
        r.skip(4)
        kind = r.u8()
        unit = r.u32()
        if kind != MSG_SERIAL:
            r.skip(2)  # communication control
        numerator = r.u8()
        session.device = str(unit)
        reply = module_ack(unit, numerator) if kind == MSG_MODULAR_EXT else ack(unit, numerator)
        records: list[Position] = []
        if kind == MSG_STATUS:
            records.append(self._status(r, session, frame, alternative=frame[3] != ord("P")))
        elif kind == MSG_MODULAR_EXT:
            records.append(self._modular(r, session, frame))
        if mismatch:
            for p in records:
                p.attributes["crcMismatch"] = True
        return DecodeResult(records, reply)

    def _status(self, r: Reader, session: Session, frame: bytes, alternative: bool) -> Position:
        attributes: dict[str, Any] = {"versionHw": r.u8(), "versionFw": r.u8()}
        r.skip(1)  # protocol version
        attributes["status"] = r.u8() & 0x0F
        r.skip(2)  # configuration flags, reason data
        reason = r.u8()
        attributes["event"] = reason
        attributes["mode"] = r.u8()
        inputs = r.u32()
        attributes["input"] = inputs
        attributes["door"] = bool(inputs >> 24 & 1)
        attributes["charge"] = bool(inputs >> 7 & 1)
        if alternative:
            r.skip(1)
            attributes["adc1"], attributes["adc2"] = r.u16(), r.u16()
        else:
            r.skip(1)  # operator
            for index in range(1, 5):
                attributes[f"adc{index}"] = r.u8()
        odometer = r.u24()
        r.skip(6 + 2 + 3)  # multi-purpose data, last fix time, location status, mode 1, mode 2
        satellites = r.u8()
        lon, lat, altitude_cm = r.i32(), r.i32(), r.i32()
        speed, course = r.u32(), r.u16()
        second, minute, hour, day, month, year = r.u8(), r.u8(), r.u8(), r.u8(), r.u8(), r.u16()
        if alternative:
            longitude, latitude, speed_kmh, degrees = lon / 1e7, lat / 1e7, float(speed), course / 1000
        else:
            longitude, latitude = lon * _RAD_1E8_TO_DEG, lat * _RAD_1E8_TO_DEG
            speed_kmh, degrees = speed * _CM_S_TO_KMH, math.degrees(course / 1000)
        fields: dict[str, Any] = {"satellites": satellites, "ignition": bool(inputs >> 23 & 1),
                                  "odometer_m": odometer, "alarm": _ALARMS.get(reason)}
        fix_time = _time(year, month, day, hour, minute, second)
        if fix_time is None or (lat == 0 and lon == 0) or not _on_earth(latitude, longitude):
            return self.position(session, fix_time or session.now(), frame, attributes=attributes, **fields)
        return self.position(session, fix_time, frame, valid=True, latitude=latitude, longitude=longitude,
                             altitude_m=altitude_cm / 100, speed_kmh=speed_kmh, course=degrees % 360,
                             attributes=attributes, **fields)

    def _modular(self, r: Reader, session: Session, frame: bytes) -> Position:
        r.skip(1)  # packet control
        r.skip(2 + 4)  # length (the framer used it), reserved
        attributes: dict[str, Any] = {}
        fields: dict[str, Any] = {}
        located: dict[str, float] = {}
        fix_time: datetime | None = None
        while r.remaining >= 3:
            module_type = r.u8()
            module = r.sub(min(r.u16(), r.remaining))
            if module_type == 2:
                module.skip(2 + 4)  # operator ID, PL signature
                for _ in range(module.u8()):
                    io_id = module.u16()
                    module.skip(1)  # value size
                    attributes[f"io{io_id}"] = module.u32()
            elif module_type == 6:
                module.skip(3)  # HDOP (scale undocumented), mode 1, mode 2
                fields["satellites"] = module.u8()
                lon, lat, altitude_cm = module.i32(), module.i32(), module.i32()
                speed, course = module.u8(), module.u16()
                longitude, latitude = lon * _RAD_1E8_TO_DEG, lat * _RAD_1E8_TO_DEG
                if (lat or lon) and _on_earth(latitude, longitude):
                    located = {"latitude": latitude, "longitude": longitude, "altitude_m": altitude_cm / 100,
                               "speed_kmh": speed * _CM_S_TO_KMH, "course": math.degrees(course / 1000) % 360}
            elif module_type == 7:
                module.skip(1)  # validity
                second, minute, hour, day, month, year = (module.u8() for _ in range(6))
                fix_time = _time(2000 + year, month, day, hour, minute, second)
        if fix_time is None or not located:
            return self.position(session, fix_time or session.now(), frame, attributes=attributes, **fields)
        return self.position(session, fix_time, frame, valid=True, attributes=attributes, **located, **fields)


def _find_start(buffer: bytes) -> int:
    """The offset of the first "MC" + two letters, or -1."""
    at = buffer.find(SYSTEM_PREFIX)
    while at >= 0:
        code = buffer[at + 2:at + 4]
        if len(code) < 2 or code.isalpha():
            return at
        at = buffer.find(SYSTEM_PREFIX, at + 1)
    return -1


def _time(year: int, month: int, day: int, hour: int, minute: int, second: int) -> datetime | None:
    try:
        return utc(year, month, day, hour, minute, second)
    except ValueError:
        return None


def _on_earth(latitude: float, longitude: float) -> bool:
    return -90 <= latitude <= 90 and -180 <= longitude <= 180


# Encoders (device simulator and tests) -----------------------------------------------------


def encode_login(device: str) -> bytes | None:
    """Cellocator has no login: every message carries the unit ID."""
    return None


def encode_position(p: Position, sequence: int = 0) -> bytes:
    """A type-0 status/location message for ``p`` (the unit ID is ``p.device``, decimal)."""
    t = p.fix_time
    inputs = (1 << 23) if p.ignition else 0
    body = struct.pack(
        "<BIHB" "BBBBBBBB" "I" "B4B" "3s" "6sHBBBB" "iii" "IH" "BBBBBH",
        MSG_STATUS, int(p.device), 0, sequence & 0xFF,
        0x4A, 0x1F, 0x04, 0x00, 0x00, 0x00, 0x15, 0x00,  # hw, fw, protocol, status, flags, reason data, reason, mode
        inputs,
        0, 0, 0, 0, 0,
        (p.odometer_m or 0).to_bytes(3, "little"),
        bytes(6), 0, 0, 0, 0, p.satellites or 0,
        round(math.radians(p.longitude or 0.0) * 1e8), round(math.radians(p.latitude or 0.0) * 1e8),
        round((p.altitude_m or 0.0) * 100),
        round((p.speed_kmh or 0.0) / _CM_S_TO_KMH), round(math.radians(p.course or 0.0) * 1000),
        t.second, t.minute, t.hour, t.day, t.month, t.year,
    )
    message = SYSTEM_CODE + body
    return message + bytes([checksum(message)])


PROTOCOL = CellocatorProtocol()
