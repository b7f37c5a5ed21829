"""Castel / Sinocastel OBD units (IDD-213 and relatives, PT/MPIP trackers) over TCP and UDP:
little-endian binary messages with a CRC-16/X25, answered per message type.

Message::

    +-------+-----------+---------+-----------------+----------+---------+-----------+-------+
    | 40 40 | length    | version | device id       | type     | body    | CRC16/X25 | 0D 0A |
    | "@@"  | u16 LE    | u8      | 20 ASCII (NUL-  | u16 BE   | (LE)    | u16 LE    |       |
    |       | (whole)   |         | padded)         |          |         | @@ .. body|       |
    +-------+-----------+---------+-----------------+----------+---------+-----------+-------+
    "$$" (24 24) messages (MPIP units) have no version byte.

Message sets by version::

    3, 4 ("SC"): 1001 login, 1002 logout, 1003 heartbeat, 4001 GPS, 4002 PID data,
                 4003 g-sensor, 4004 supported PIDs, 4005 OBD data, 4006/400B trouble codes,
                 4007 alarm, 4008 cell, 4009 GPS while asleep, 400E fuel, 401F comprehensive,
                 5101 AGPS request, A002 query answer, B001 current location
    others ("CC"): 4001 login, 4206 heartbeat with positions
    "$$" (MPIP):   4001 GPS, 2001 GPS with index, 4201/4202/4206 GPS, 4204 eight GPS records

SC bodies::

    stat (34 B): u32 last ACC-on time, u32 UTC time (s), u32 odometer m, u32 trip m,
                 u32 fuel used 0.01 L, u16 current fuel, u32 state (bit 18 ignition,
                 bits 4/5/6 harsh acceleration/braking/idle), 8 reserved
    GPS family (1001, 1002, 4001, 4007, 400E, 401F, B001):
                 [4001/401F: u8 history (+ u32 index for 401F); 4007: u32 alarm index;
                  B001: u16], stat, u8 count, count x GPS record, then
                 4007: u8 count, each u8 flag (non-zero: u8 type, u16 description, u16 threshold);
                 400E: one u16 fuel sensor value per record;
                 401F: TLVs u16 tag, u16 length (0002 PIDs, 0006/000B trouble codes, 0007 alarms,
                       0010 device temperature, 0011-0014 temp1-4 in 0.1 C, 0020 power and
                       0021 battery in 0.01 V)
    GPS record (19 B): day, month, year, hour, minute, second (UTC), u32 latitude and u32
                 longitude in 1/3,600,000 deg, u16 speed cm/s, u16 course 0.1 deg,
                 u8 flags (bit 0 east, bit 1 north, bits 2-3 fix, high nibble satellites)

Replies (same framing, the device's version and id): 1003 -> 9003; 1001 -> 9001 with
u32 FFFFFFFF, u16 0 and the server's u32 UTC time; 4007 -> C007 with the alarm index;
CC 4001 -> 8001; CC 4206 -> 8206; MPIP 4001 -> 4001 and 2001 -> 1001 (u32 0, eight FF),
in the forms the reference server sends.

Decisions:
    * The CRC is verified; a mismatch is decoded, flagged ``crcMismatch`` and answered.
    * A frame may carry several messages (UDP, or a stream the framer did not cut): all are
      read; a message repeated byte for byte in one frame is one report.
    * A GPS-family message without GPS records (login, logout, alarm with no fix) is kept as
      a status record at its stat UTC time, with the stat and alarm data (the reference
      drops it): an alarm without a fix is still an alarm.
    * A GPS record whose date is not a date is dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import ClassVar

from avl.records import Position
from ingest.protocols.base import DecodeResult, Protocol, Session, crc16_x25, from_unix, utc
from ingest.protocols.messages import Record, back_to_back, each, garbage_before, malformed
from ingest.protocols.reader import Reader

HEADER_SC = b"@@"
HEADER_MPIP = b"$$"
CRLF = b"\r\n"
COORD_SCALE = 3_600_000.0
STAT_SIZE = 34

MSG_SC_LOGIN = 0x1001
MSG_SC_LOGIN_RESPONSE = 0x9001
MSG_SC_LOGOUT = 0x1002
MSG_SC_HEARTBEAT = 0x1003
MSG_SC_HEARTBEAT_RESPONSE = 0x9003
MSG_SC_GPS = 0x4001
MSG_SC_PID_DATA = 0x4002
MSG_SC_G_SENSOR = 0x4003
MSG_SC_OBD_DATA = 0x4005
MSG_SC_DTCS_PASSENGER = 0x4006
MSG_SC_ALARM = 0x4007
MSG_SC_ALARM_RESPONSE = 0xC007
MSG_SC_CELL = 0x4008
MSG_SC_GPS_SLEEP = 0x4009
MSG_SC_DTCS_COMMERCIAL = 0x400B
MSG_SC_FUEL = 0x400E
MSG_SC_COMPREHENSIVE = 0x401F
MSG_SC_AGPS_REQUEST = 0x5101
MSG_SC_QUERY_RESPONSE = 0xA002
MSG_SC_CURRENT_LOCATION = 0xB001
MSG_CC_LOGIN = 0x4001
MSG_CC_LOGIN_RESPONSE = 0x8001
MSG_CC_HEARTBEAT = 0x4206
MSG_CC_HEARTBEAT_RESPONSE = 0x8206
_Reply = Callable[[int, bytes], bytes]  # answer type, content -> the framed reply
SC_GPS_FAMILY = frozenset({MSG_SC_LOGIN, MSG_SC_LOGOUT, MSG_SC_GPS, MSG_SC_ALARM, MSG_SC_CURRENT_LOCATION,
                           MSG_SC_FUEL, MSG_SC_COMPREHENSIVE})

_ALARMS = {0x01: "overspeed", 0x02: "lowPower", 0x03: "temperature", 0x04: "acceleration", 0x05: "braking",
           0x06: "idle", 0x07: "tow", 0x08: "highRpm", 0x09: "powerOn", 0x0B: "laneChange", 0x0C: "cornering",
           0x0D: "fatigueDriving", 0x0E: "powerOff", 0x11: "accident", 0x12: "tampering", 0x1C: "vibration"}
_IGNITION_EVENTS = {0x16: True, 0x17: False}

# OBD-II PID value sizes (bytes), as the units send them; the PID is the low byte of the u16 tag.
_PID_SIZES = {
    **dict.fromkeys((0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0B, 0x0D, 0x0E, 0x0F, 0x11, 0x12, 0x13, 0x1C, 0x1D,
                     0x1E, 0x2C, 0x2D, 0x2E, 0x2F, 0x30, 0x33, 0x43, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4A, 0x4B,
                     0x4C, 0x51, 0x52, 0x5A), 1),
    **dict.fromkeys((0x02, 0x03, 0x0A, 0x0C, 0x10, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x1B, 0x1F, 0x21,
                     0x22, 0x23, 0x31, 0x32, 0x3C, 0x3D, 0x3E, 0x3F, 0x42, 0x44, 0x4D, 0x4E, 0x50, 0x53, 0x54,
                     0x55, 0x56, 0x57, 0x58, 0x59), 2),
    **dict.fromkeys((0x00, 0x01, 0x20, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2A, 0x2B, 0x34, 0x35, 0x36, 0x37,
                     0x38, 0x39, 0x3A, 0x3B, 0x40, 0x41, 0x4F), 4),
}
# PIDs with a reference attribute name (the units send them already scaled).
_PID_NAMES = {0x04: "engineLoad", 0x05: "coolantTemp", 0x0C: "rpm", 0x0D: "obdSpeed", 0x11: "throttle",
              0x21: "milDistance", 0x2F: "fuelLevel", 0x31: "clearedDistance"}


def _fix(r: Reader) -> Record:
    """A 19-byte GPS record; ``fix_time`` None when its date is not a date."""
    day, month, year, hour, minute, second = r.take(6)
    latitude, longitude = r.u32() / COORD_SCALE, r.u32() / COORD_SCALE
    speed_cms, course = r.u16(), r.u16()
    flags = r.u8()
    try:
        fix_time: datetime | None = utc(year, month, day, hour, minute, second)
    except ValueError:
        fix_time = None
    rec = Record(fix_time)
    if latitude <= 90 and longitude <= 180:
        rec.fields.update(latitude=latitude if flags & 0x02 else -latitude,
                          longitude=longitude if flags & 0x01 else -longitude, valid=bool(flags & 0x0C))
    rec.fields.update(speed_kmh=speed_cms * 36 / 1000, course=course / 10 if course <= 3600 else None,
                      satellites=flags >> 4)
    return rec


def _stat(r: Reader, rec: Record) -> None:
    """The 34-byte statistics block every SC data message carries."""
    r.skip(4)  # last ACC-on time
    utc_time = r.u32()
    rec.fields["odometer_m"] = r.u32()
    rec.attributes["odometerTrip"] = r.u32()
    rec.attributes["fuelConsumption"] = r.u32()
    r.skip(2)  # current fuel consumption
    state = r.u32()
    r.skip(8)
    rec.attributes["status"] = state
    rec.fields["ignition"] = bool(state & 1 << 18)
    for bit, alarm in ((4, "acceleration"), (5, "braking"), (6, "idle")):
        if state & 1 << bit:
            rec.fields["alarm"] = alarm
    if utc_time:
        rec.fix_time = from_unix(utc_time)


def _alarm(rec: Record, event: int) -> None:
    if event in _IGNITION_EVENTS:
        rec.fields["ignition"] = _IGNITION_EVENTS[event]
    elif event in _ALARMS:
        rec.fields["alarm"] = _ALARMS[event]
    rec.attributes["event"] = event


def _obd(r: Reader, rec: Record, groups: bool) -> None:
    pids = [r.u16() & 0xFF for _ in range(r.u8())]
    if groups:
        r.skip(2)  # group count and size: the first group is read
    for pid in pids:
        size = _PID_SIZES.get(pid)
        if size is None:
            rec.attributes["unknownPid"] = pid  # its size is unknown: the rest cannot be read
            return
        value = r.uint(size) if size < 4 else r.sint(4)
        rec.attributes[_PID_NAMES.get(pid, f"pid{pid:02x}")] = value


def _dtc(code: int) -> str:
    return "PCBU"[code >> 14] + f"{code & 0x3FFF:04X}"


def _comprehensive(r: Reader, rec: Record) -> None:
    """The TLVs of a 401F message."""
    a = rec.attributes
    while r.remaining >= 4:
        tag = r.u16()
        value = r.sub(r.u16())
        if tag == 0x0002:
            for _ in range(value.u8()):
                pid = value.u16()
                a[f"pid{pid:04x}"] = value.take(value.u16()).hex()
        elif tag in (0x0006, 0x000B):
            value.skip(1)  # fault flag
            codes = [_dtc(value.u16() if tag == 0x0006 else value.u32() & 0xFFFF) for _ in range(value.u8())]
            a["dtcs"] = " ".join(codes)
        elif tag == 0x0007:
            value.skip(4)  # alarm index
            for _ in range(value.u8()):
                flag, event = value.u8(), value.u8()
                value.skip(4)  # description, threshold
                if flag:
                    _alarm(rec, event)
        elif tag == 0x0010:
            a["deviceTemp"] = value.i16() / 10
        elif 0x0011 <= tag <= 0x0014:
            a[f"temp{tag - 0x0010}"] = value.i16() / 10
        elif tag == 0x0020:
            rec.fields["power_mv"] = value.u16() * 10
        elif tag == 0x0021:
            rec.fields["battery_mv"] = value.u16() * 10


class CastelProtocol(Protocol):
    name: ClassVar[str] = "castel"
    port: ClassVar[int] = 5086
    transports: ClassVar[frozenset[str]] = frozenset({"tcp", "udp"})
    max_frame: ClassVar[int] = 4096

    @staticmethod
    def _head_size(header: bytes) -> int:
        """Bytes before the body: header, length, [version], id, type."""
        return 2 + 2 + (1 if header == HEADER_SC else 0) + 20 + 2

    def split(self, buffer: bytes) -> tuple[bytes | None, int]:
        skip = garbage_before(buffer, HEADER_SC, HEADER_MPIP)
        if skip:
            return None, skip
        if len(buffer) < 4:
            return None, 0
        length = int.from_bytes(buffer[2:4], "little")
        if length < self._head_size(buffer[:2]) + 4 or length > self.max_frame:
            return None, 1  # not a head after all: look for the next one
        if len(buffer) < length:
            return None, 0
        return buffer[:length], length

    def decode(self, frame: bytes, session: Session) -> DecodeResult:
        def length_at(pos: int) -> int:
            if frame[pos:pos + 2] not in (HEADER_SC, HEADER_MPIP) or len(frame) - pos < 4:
                raise self.error(f"no @@ or $$ message head at offset {pos}", frame)
            return int.from_bytes(frame[pos + 2:pos + 4], "little")

        with malformed(self, frame):
            messages = back_to_back(self, frame, length_at, self._head_size(HEADER_MPIP) + 4)
            return each(messages, lambda message: self._message(message, session))

    def _message(self, message: bytes, session: Session) -> tuple[list[Position], bytes | None]:
        header = message[:2]
        end = len(message) - 4
        r = Reader(message, self.name, pos=4, end=end, little=True)
        version = r.u8() if header == HEADER_SC else None
        id_bytes = r.take(20)
        device = id_bytes.decode("latin-1").strip("\x00 ")
        if not device or not device.isprintable():
            raise self.error(f"device id {id_bytes.hex()} is not text", message)
        r.little = False
        kind = r.u16()
        r.little = True
        session.device = device
        mismatch = crc16_x25(message[:end]) != int.from_bytes(message[end:end + 2], "little")

        def reply(answer: int, content: bytes) -> bytes:
            # MPIP units are answered with FF in the version byte, as the reference server does.
            return _framed(bytes([0xFF if version is None else version]) + id_bytes + answer.to_bytes(2, "big")
                           + content)

        if version is None:
            records, answer = self._mpip(r, kind, id_bytes, reply)
        elif version in (3, 4):
            records, answer = self._sc(r, kind, session, reply)
        else:
            records, answer = self._cc(r, kind, reply)
        positions = []
        for rec in records:
            if mismatch:
                rec.attributes["crcMismatch"] = True
            positions.append(self._position(rec, session, message))
        return positions, answer

    # Message sets -------------------------------------------------------------------------

    def _sc(self, r: Reader, kind: int, session: Session,
            reply: _Reply) -> tuple[list[Record], bytes | None]:
        answer: bytes | None = None
        if kind == MSG_SC_HEARTBEAT:
            return [], reply(MSG_SC_HEARTBEAT_RESPONSE, b"")
        if kind in SC_GPS_FAMILY:
            if kind == MSG_SC_LOGIN:
                now = int(session.now().astimezone(UTC).timestamp())
                answer = reply(MSG_SC_LOGIN_RESPONSE, b"\xff\xff\xff\xff\x00\x00" + now.to_bytes(4, "little"))
            elif kind == MSG_SC_ALARM:
                answer = reply(MSG_SC_ALARM_RESPONSE, r.take(4))  # echoes the alarm index
            elif kind in (MSG_SC_GPS, MSG_SC_COMPREHENSIVE):
                r.skip(1 if kind == MSG_SC_GPS else 5)  # history flag [, index]
            elif kind == MSG_SC_CURRENT_LOCATION:
                r.skip(2)
            common = Record()
            _stat(r, common)
            fixes = [_fix(r) for _ in range(r.u8())]
            if kind == MSG_SC_ALARM:
                for _ in range(r.u8()):
                    if r.u8():
                        event = r.u8()
                        r.skip(4)  # description, threshold
                        _alarm(common, event)
            elif kind == MSG_SC_FUEL:
                for rec in fixes:
                    rec.attributes["adc1"] = r.u16()
            elif kind == MSG_SC_COMPREHENSIVE:
                _comprehensive(r, common)
            records = [_merged(rec, common) for rec in fixes if rec.fix_time is not None]
            return records or [common], answer
        rec = Record()
        if kind in (MSG_SC_GPS_SLEEP, MSG_SC_AGPS_REQUEST):
            if kind == MSG_SC_GPS_SLEEP:
                r.skip(4)  # device time
            rec = _fix(r)
            return ([rec] if rec.fix_time is not None else []), None
        if kind == MSG_SC_QUERY_RESPONSE:
            r.skip(2 + 1 + 1)  # index, answer count, answer index
            r.skip(2 * r.u8())  # failed tags
            for _ in range(r.u8()):
                r.skip(2)  # tag
                rec.attributes["result"] = r.ascii(r.u16())
            return [rec], None
        if kind not in (MSG_SC_PID_DATA, MSG_SC_G_SENSOR, MSG_SC_OBD_DATA, MSG_SC_DTCS_PASSENGER,
                        MSG_SC_DTCS_COMMERCIAL, MSG_SC_CELL):
            return [], None  # supported-PID lists, logout acknowledgements ...: nothing to keep
        _stat(r, rec)
        if kind == MSG_SC_PID_DATA:
            r.skip(2)  # sample rate
            _obd(r, rec, groups=True)
        elif kind == MSG_SC_OBD_DATA:
            r.skip(1)  # flag
            _obd(r, rec, groups=False)
        elif kind == MSG_SC_G_SENSOR:
            r.skip(2)  # sample rate
            samples = [[round(r.i16() * 0.015625, 6) for _ in range(3)] for _ in range(r.u8())]
            rec.attributes["gSensor"] = str(samples).replace(" ", "")
        elif kind == MSG_SC_CELL:
            rec.attributes["network"] = {"cellTowers": [{"locationAreaCode": r.u16(), "cellId": r.u16()}]}
        else:  # trouble codes
            r.skip(1)  # flag
            codes = []
            for _ in range(r.u8()):
                r.little = False
                codes.append(_dtc(r.u16()))
                r.little = True
                if kind == MSG_SC_DTCS_COMMERCIAL:
                    r.skip(2)  # attribute, occurrence
            rec.attributes["dtcs"] = " ".join(codes)
        return [rec], None

    def _cc(self, r: Reader, kind: int, reply: _Reply) -> tuple[list[Record], bytes | None]:
        if kind not in (MSG_CC_LOGIN, MSG_CC_HEARTBEAT):
            return [], None
        count = 1
        if kind == MSG_CC_HEARTBEAT:
            r.skip(1)  # history flag
            count = r.u8()
        records = []
        for _ in range(count):
            rec = _fix(r)
            rec.attributes["status"] = r.u32()
            r.skip(1)  # battery (unit undocumented)
            rec.fields["odometer_m"] = r.u32()
            r.skip(3)  # geofence id and flags, additional flags
            rec.attributes["network"] = {"cellTowers": [{"locationAreaCode": r.u16(), "cellId": r.u16()}]}
            if rec.fix_time is not None:
                records.append(rec)
            if kind == MSG_CC_LOGIN:
                break  # firmware and hardware version strings follow
        return records, reply(MSG_CC_LOGIN_RESPONSE if kind == MSG_CC_LOGIN else MSG_CC_HEARTBEAT_RESPONSE, b"")

    def _mpip(self, r: Reader, kind: int, id_bytes: bytes, reply: _Reply) -> tuple[list[Record], bytes | None]:
        answer: bytes | None = None
        count = 1
        if kind == 0x4001:
            answer = reply(kind, b"")
        elif kind == 0x2001:
            answer = _framed(id_bytes + b"\x10\x01" + bytes(4) + b"\xff" * 8)
            r.skip(4 + 4 + 1)  # index, Unix time, flag
        elif kind == 0x4204:
            count = 8
        elif kind not in (0x4201, 0x4202, 0x4206):
            return [], None
        records = []
        for _ in range(count):
            rec = _fix(r)
            if kind == 0x4204:
                r.skip(31)
            if rec.fix_time is not None:
                records.append(rec)
        return records, answer

    def _position(self, rec: Record, session: Session, frame: bytes) -> Position:
        fields = {k: v for k, v in rec.fields.items() if v is not None}
        if rec.fix_time is None:
            for key in ("latitude", "longitude", "valid"):
                fields.pop(key, None)
        return self.position(session, rec.fix_time or session.now(), frame, attributes=rec.attributes, **fields)


def _merged(rec: Record, common: Record) -> Record:
    """A GPS record with the message's stat and alarm data."""
    rec.attributes = {**common.attributes, **rec.attributes}
    rec.fields = {**{k: v for k, v in common.fields.items() if k not in rec.fields}, **rec.fields}
    return rec


def _framed(inner: bytes) -> bytes:
    """``@@``, the length, ``inner`` (version, id, type, content), the CRC and CRLF."""
    head = HEADER_SC + (len(inner) + 8).to_bytes(2, "little") + inner
    return head + crc16_x25(head).to_bytes(2, "little") + CRLF


# Encoders (device simulator and tests) -----------------------------------------------------


def _id(device: str) -> bytes:
    return device.encode("ascii")[:20].ljust(20, b"\x00")


def _stat_bytes(p: Position | None, when: datetime) -> bytes:
    state = 1 << 18 if p is not None and p.ignition else 0
    odometer = p.odometer_m or 0 if p is not None else 0
    return (bytes(4) + int(when.timestamp()).to_bytes(4, "little") + odometer.to_bytes(4, "little") + bytes(4)
            + bytes(4) + bytes(2) + state.to_bytes(4, "little") + bytes(8))


def _fix_bytes(p: Position) -> bytes:
    t = p.fix_time.astimezone(UTC)
    lat, lon = p.latitude or 0.0, p.longitude or 0.0
    flags = (min(p.satellites or 0, 15) << 4) | (0x0C if p.valid else 0) | (0x02 if lat >= 0 else 0) | (
        0x01 if lon >= 0 else 0)
    return (bytes([t.day, t.month, t.year % 100, t.hour, t.minute, t.second])
            + round(abs(lat) * COORD_SCALE).to_bytes(4, "little") + round(abs(lon) * COORD_SCALE).to_bytes(4, "little")
            + round((p.speed_kmh or 0.0) / 0.036).to_bytes(2, "little")
            + round((p.course or 0.0) * 10).to_bytes(2, "little") + bytes([flags]))


def encode_message(device: str, kind: int, body: bytes, version: int = 4) -> bytes:
    """One ``@@`` message of the SC set."""
    return _framed(bytes([version]) + _id(device) + kind.to_bytes(2, "big") + body)


def encode_login(device: str) -> bytes:
    """An SC login without a GPS record (the firmware strings left out)."""
    return encode_message(device, MSG_SC_LOGIN, _stat_bytes(None, datetime.now(UTC)) + b"\x00")


def encode_heartbeat(device: str) -> bytes:
    return encode_message(device, MSG_SC_HEARTBEAT, b"")


def encode_position(p: Position, sequence: int = 0) -> bytes:
    """An SC GPS message (4001) with one record for ``p``."""
    return encode_message(p.device, MSG_SC_GPS, b"\x00" + _stat_bytes(p, p.fix_time) + b"\x01" + _fix_bytes(p))


def encode_alarm(p: Position, event: int, index: int = 1) -> bytes:
    """An SC alarm message (4007) with one record for ``p`` and one alarm ``event``."""
    return encode_message(p.device, MSG_SC_ALARM, index.to_bytes(4, "little") + _stat_bytes(p, p.fix_time) + b"\x01"
                          + _fix_bytes(p) + b"\x01\x01" + bytes([event]) + bytes(4))


PROTOCOL = CastelProtocol()
