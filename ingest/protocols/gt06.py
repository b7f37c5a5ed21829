"""GT06 binary protocol (Concox / Jimi IoT and its many clones), TCP only.

Field layouts follow the reference server's Gt06 decoder; model-dependent layouts are picked with
``session.options["model"]`` (the reference's per-device model override).

Frame (``78 78`` = basic, 1-byte length; ``79 79`` = extended, 2-byte length)::

    +-------+--------+------+----------------+--------+--------+-------+
    | 78 78 | len u8 | type | body ...       | serial | CRC16  | 0D 0A |
    | 79 79 | len u16|  u8  |                |  u16   | X25    |       |
    +-------+--------+------+----------------+--------+--------+-------+
    len counts type .. CRC; CRC-16/X25 covers len .. serial.

Main bodies::

    0x01 login       IMEI 8 BCD (first nibble dropped), type id u16, [time zone word u16]
    0x13 status      status u8, voltage level u8 (0-6), GSM u8, alarm/extension u8, language u8
    0x12/0x22/...    time YMDhms (device local time), GPS length/sats u8, lat u32, lon u32
                     (1/1,800,000 deg), speed u8 km/h, course/status u16 (bit 10 north, 11 west,
                     12 fix valid, 14 ACC known, 15 ACC on, low 10 bits course), then cell
                     MCC u16 / MNC u8 / LAC u16 / CID u24, then [ACC u8, upload mode u8,
                     re-upload u8] and sometimes mileage u32
    0x16/0x26/0x27   as location + LBS length u8, then status u8, voltage level u8, GSM u8,
                     alarm u8, language u8 (alarm packets)
    0x8A             time request: the reply carries the server's UTC time
    0x94 (79 79)     information, sub-type u8 (0 = external voltage /100, 4 = text, 5 = door,
                     0x0A = IMEI/IMSI/ICCID, 0x1B = RFID/serial, 0x1E = temperature/humidity ...)
    0x95             alarm (JC100/JC400 cameras): time, [GPS], event u8, event data u16, [files]

Replies: ``78 78 05 <type> <serial> <crc> 0D 0A`` for login, heartbeat, location and alarm
packets (``79 79`` form for the AZ735 and multimedia packets), ``78 78 0B 8A <YYMMDDhhmmss>``
for a time request. Command replies 0x80-0x82 and information packets get no ACK.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any, ClassVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from avl.records import Position
from ingest.protocols.base import (
    KNOTS_TO_KMH,
    DecodeError,
    DecodeResult,
    Protocol,
    Session,
    crc16_x25,
    from_unix,
)
from ingest.protocols.reader import Reader

HEADER_BASIC = b"\x78\x78"
HEADER_EXTENDED = b"\x79\x79"
CRLF = b"\r\n"
COORD_SCALE = 30000.0 * 60.0  # 1/1,800,000 of a degree

# Packet types -----------------------------------------------------------------------
MSG_LOGIN = 0x01
MSG_GPS = 0x10
MSG_GPS_LBS_6 = 0x11
MSG_GPS_LBS_1 = 0x12
MSG_STATUS = 0x13
MSG_STRING = 0x15
MSG_GPS_LBS_STATUS_1 = 0x16
MSG_WIFI = 0x17  # also MSG_GPS_LBS_RFID, by frame length
MSG_LBS_EXTEND = 0x18
MSG_LBS_STATUS = 0x19
MSG_GPS_PHONE = 0x1A
MSG_GPS_LBS_EXTEND = 0x1E
MSG_STRING_INFO = 0x21
MSG_GPS_LBS_2 = 0x22
MSG_HEARTBEAT = 0x23
MSG_LBS_MULTIPLE_3 = 0x24
MSG_GPS_LBS_DRIVER = 0x25
MSG_GPS_LBS_STATUS_2 = 0x26
MSG_GPS_LBS_STATUS_3 = 0x27
MSG_LBS_MULTIPLE_1 = 0x28
MSG_ADDRESS_REQUEST = 0x2A
MSG_LBS_WIFI = 0x2C
MSG_GPS_LBS_4 = 0x2D
MSG_LBS_MULTIPLE_2 = 0x2E
MSG_GPS_LBS_5 = 0x31
MSG_GPS_LBS_STATUS_4 = 0x32  # also AZ735 GPS (extended)
MSG_WIFI_5 = 0x33  # also AZ735 alarm (extended)
MSG_X1_GPS = 0x34  # also LBS_3 (SL4X)
MSG_X1_PHOTO_INFO = 0x35
MSG_STATUS_2 = 0x36  # also X1 photo data (extended)
MSG_GPS_LBS_3 = 0x37
MSG_GPS_LBS_8 = 0x38
MSG_BMS = 0x40
MSG_MULTIMEDIA = 0x41
MSG_IBUTTON = 0x61
MSG_WIFI_2 = 0x69
MSG_GPS_MODULAR = 0x70
MSG_COMMAND_0 = 0x80
MSG_COMMAND_1 = 0x81
MSG_COMMAND_2 = 0x82
MSG_TIME_REQUEST = 0x8A
MSG_OBD = 0x8C
MSG_INFO = 0x94
MSG_ALARM = 0x95
MSG_ADDRESS_RESPONSE = 0x97
MSG_SERIAL = 0x9B
MSG_GPS_LBS_7 = 0xA0
MSG_LBS_2 = 0xA1
MSG_WIFI_3 = 0xA2  # also GPS_LBS_STATUS_5 (LWxG), by frame length
MSG_FENCE_SINGLE = 0xA3  # also STATUS_3 (SeeWorld)
MSG_FENCE_MULTI = 0xA4
MSG_LBS_ALARM = 0xA5
MSG_LBS_ADDRESS = 0xA7
MSG_STATUS_MODULAR = 0xF1
MSG_PERIPHERAL = 0xF2
MSG_WIFI_4 = 0xF3

MSG_GPS_LBS_STATUS_5 = MSG_WIFI_3
MSG_GPS_LBS_RFID = MSG_WIFI
MSG_LBS_3 = MSG_X1_GPS
MSG_STATUS_3 = MSG_FENCE_SINGLE

NT_MODELS = frozenset({"NT11", "NT20", "NT26", "NT40", "NT46", "VL100", "XT40"})
VL_MODELS = frozenset({"VL103", "LL303", "VL512", "G18"})

_GPS_TYPES = frozenset({
    MSG_GPS, MSG_GPS_LBS_1, MSG_GPS_LBS_2, MSG_GPS_LBS_DRIVER, MSG_GPS_LBS_3, MSG_GPS_LBS_4, MSG_GPS_LBS_5,
    MSG_GPS_LBS_6, MSG_GPS_LBS_STATUS_1, MSG_GPS_LBS_STATUS_2, MSG_GPS_LBS_STATUS_3, MSG_GPS_LBS_STATUS_4,
    MSG_GPS_LBS_STATUS_5, MSG_GPS_PHONE, MSG_GPS_LBS_EXTEND, MSG_GPS_LBS_7, MSG_GPS_LBS_RFID, MSG_FENCE_MULTI,
})
_LBS_TYPES = frozenset({
    MSG_LBS_STATUS, MSG_GPS_LBS_1, MSG_GPS_LBS_2, MSG_GPS_LBS_DRIVER, MSG_GPS_LBS_3, MSG_GPS_LBS_4, MSG_GPS_LBS_5,
    MSG_GPS_LBS_6, MSG_GPS_LBS_STATUS_1, MSG_GPS_LBS_STATUS_2, MSG_GPS_LBS_STATUS_3, MSG_GPS_LBS_STATUS_4,
    MSG_GPS_LBS_STATUS_5, MSG_GPS_LBS_7, MSG_GPS_LBS_RFID, MSG_FENCE_MULTI, MSG_LBS_ALARM, MSG_LBS_ADDRESS,
})
_STATUS_TYPES = frozenset({
    MSG_STATUS, MSG_STATUS_2, MSG_LBS_STATUS, MSG_GPS_LBS_STATUS_1, MSG_GPS_LBS_STATUS_2, MSG_GPS_LBS_STATUS_3,
    MSG_GPS_LBS_STATUS_4, MSG_GPS_LBS_STATUS_5, MSG_FENCE_MULTI, MSG_LBS_ALARM,
})
_LBS_MULTIPLE_TYPES = frozenset({
    MSG_LBS_MULTIPLE_1, MSG_LBS_MULTIPLE_2, MSG_LBS_MULTIPLE_3, MSG_LBS_EXTEND, MSG_LBS_WIFI, MSG_LBS_2, MSG_LBS_3,
    MSG_WIFI_3, MSG_WIFI_5,
})

# Device variants told apart by packet type and length (as the reference does) ---------------
VXT01 = "VXT01"
WANWAY_S20 = "WANWAY_S20"
SR411_MINI = "SR411_MINI"
GT06E_CARD = "GT06E_CARD"
BENWAY = "BENWAY"
S5 = "S5"
SPACE10X = "SPACE10X"
OBD6 = "OBD6"
WETRUST = "WETRUST"
JC400 = "JC400"
SL4X = "SL4X"
SEEWORLD = "SEEWORLD"
RFID = "RFID"
LW4G = "LW4G"
STANDARD = "STANDARD"

# Alarm names (the reference server's) ------------------------------------------------------
ALARM_GENERAL = "general"
ALARM_SOS = "sos"
ALARM_VIBRATION = "vibration"
ALARM_OVERSPEED = "overspeed"
ALARM_FALL_DOWN = "fallDown"
ALARM_LOW_POWER = "lowPower"
ALARM_LOW_BATTERY = "lowBattery"
ALARM_POWER_OFF = "powerOff"
ALARM_POWER_ON = "powerOn"
ALARM_DOOR = "door"
ALARM_GEOFENCE = "geofence"
ALARM_GEOFENCE_ENTER = "geofenceEnter"
ALARM_GEOFENCE_EXIT = "geofenceExit"
ALARM_ACCIDENT = "accident"
ALARM_TOW = "tow"
ALARM_ACCELERATION = "hardAcceleration"
ALARM_BRAKING = "hardBraking"
ALARM_CORNERING = "hardCornering"
ALARM_POWER_CUT = "powerCut"
ALARM_JAMMING = "jamming"
ALARM_TEMPERATURE = "temperature"
ALARM_TAMPERING = "tampering"
ALARM_REMOVING = "removing"

_STATUS_BIT_ALARMS = {1: ALARM_VIBRATION, 2: ALARM_POWER_CUT, 3: ALARM_LOW_BATTERY, 4: ALARM_SOS, 6: ALARM_GEOFENCE}

_MODULAR_EVENTS = {
    0x10: ALARM_DOOR, 0x12: ALARM_REMOVING, 0x14: ALARM_GEOFENCE_ENTER, 0x15: ALARM_GEOFENCE_EXIT,
    0x16: ALARM_TEMPERATURE, 0x1A: ALARM_LOW_BATTERY, 0x1B: ALARM_OVERSPEED, 0x1C: ALARM_POWER_ON,
    0x1D: ALARM_POWER_OFF, 0x20: ALARM_VIBRATION, 0x21: ALARM_POWER_CUT, 0x23: ALARM_TAMPERING,
}

_CAMERA_EVENTS = {
    0x0E: ALARM_LOW_POWER, 0x76: ALARM_TEMPERATURE, 0x80: ALARM_VIBRATION, 0x87: ALARM_OVERSPEED,
    0x88: ALARM_POWER_CUT, 0x90: ALARM_ACCELERATION, 0x91: ALARM_BRAKING, 0x92: ALARM_CORNERING,
    0x93: ALARM_ACCIDENT,
}

_AZ735_ALARMS = {0xA2: ALARM_LOW_BATTERY, 0xA3: ALARM_LOW_BATTERY, 0xA4: ALARM_GENERAL, 0xA5: ALARM_DOOR}

_OBD_KEYS = {40: "odometer", 43: "fuel", 45: "coolantTemp", 53: "obdSpeed", 54: "rpm", 71: "fuelUsed", 73: "hours"}

PATTERN_LOCATION = re.compile(
    r"Current position!Lat:([NS])(\d+\.\d+),Lon:([EW])(\d+\.\d+),"
    r"Course:(\d+\.\d+),Speed:(\d+\.\d+),"
    r"DateTime:(\d{4})-(\d\d)-(\d\d) +(\d\d):(\d\d):(\d\d)"
)
PATTERN_FUEL = re.compile(
    r"!AIOIL,\d+,\d+\.\d+,(\d+\.\d+),[^,]+,\d\d\d\d,(\d+\.\d+),[01],\d+,[0-9a-fA-F]{2}"
)
_TZ_OFFSET = re.compile(r"^(?:UTC|GMT)?\s*([+-])(\d{1,2})(?::?(\d{2}))?$", re.IGNORECASE)

STATE_LOGIN_TZ = "gt06.login_tz_minutes"


_U32_LE = struct.Struct("<I")


def _ascii(r: Reader, n: int) -> str:
    """``n`` bytes as ASCII text (other bytes become U+FFFD, as the reference's decoding does)."""
    return r.text(n, "ascii", "replace")


@dataclass(slots=True)
class _Record:
    """One report being decoded, in the reference server's vocabulary."""

    time: datetime | None = None
    located: bool = False
    valid: bool = False
    latitude: float = 0.0
    longitude: float = 0.0
    speed_kmh: float | None = None
    course: float | None = None
    altitude: float | None = None
    satellites: int | None = None
    hdop: float | None = None
    ignition: bool | None = None
    power: float | None = None
    battery: float | None = None
    odometer: float | None = None
    alarms: list[str] = field(default_factory=list)
    attributes: dict[str, Any] = field(default_factory=dict)

    def set(self, key: str, value: Any) -> None:
        """Store ``value`` under the reference attribute ``key`` (None and "" are not stored)."""
        if value is None or value == "":
            return
        if key == "ignition":
            self.ignition = bool(value)
        elif key == "power":
            self.power = float(value)
        elif key == "battery":
            self.battery = float(value)
        elif key == "odometer":
            self.odometer = float(value)
        elif key == "sat":
            self.satellites = int(value)
        elif key == "hdop":
            self.hdop = float(value)
        elif key == "alarm":
            self.add_alarm(str(value))
        else:
            self.attributes[key] = value

    def add_alarm(self, alarm: str | None) -> None:
        if alarm and alarm not in self.alarms:
            self.alarms.append(alarm)


def _between(value: int, start: int, end: int) -> int:
    return (value >> start) & ((1 << (end - start)) - 1)


def _bit(value: int, index: int) -> bool:
    return bool((value >> index) & 1)


def _java_trim(value: str) -> str:
    return value.strip("".join(chr(c) for c in range(0x21)))


def _java_split(value: str, sep: str) -> list[str]:
    """str.split as Java's String.split does it: trailing empty strings are dropped."""
    parts = value.split(sep)
    while parts and parts[-1] == "":
        parts.pop()
    return parts


def _lenient_time(year: int, month: int, day: int, hour: int, minute: int, second: int, tz: tzinfo) -> datetime:
    """A wall-clock time in ``tz`` as UTC; out-of-range fields roll over (as Java's lenient Calendar)."""
    if year < 100:
        year += 2000
    months = month - 1
    base = datetime(year + months // 12, months % 12 + 1, 1)
    local = base + timedelta(days=day - 1, hours=hour, minutes=minute, seconds=second)
    return local.replace(tzinfo=tz).astimezone(UTC)


def _parse_timezone(value: Any) -> tzinfo | None:
    """The per-device ``timezone`` option: a tzinfo, an IANA name, ``UTC+3``/``+05:30``, or hours."""
    if value is None or value == "":
        return None
    if isinstance(value, tzinfo):
        return value
    if isinstance(value, (int, float)):
        return timezone(timedelta(hours=float(value)))
    text_value = str(value).strip()
    if text_value.upper() in ("UTC", "GMT", "Z"):
        return UTC
    match = _TZ_OFFSET.match(text_value)
    if match:
        sign = -1 if match.group(1) == "-" else 1
        minutes = int(match.group(2)) * 60 + int(match.group(3) or 0)
        return timezone(sign * timedelta(minutes=minutes))
    try:
        return ZoneInfo(text_value)
    except (ZoneInfoNotFoundError, ValueError):
        try:
            return timezone(timedelta(hours=float(text_value)))
        except ValueError:
            return None


def _declared_fits(data: bytes) -> bool:
    """True when ``data`` (ending in CRLF) holds exactly the bytes its length field declares."""
    if data[:2] == HEADER_BASIC and len(data) >= 3:
        return len(data) - 3 - len(CRLF) == data[2]
    if data[:2] == HEADER_EXTENDED and len(data) >= 4:
        return len(data) - 4 - len(CRLF) == int.from_bytes(data[2:4], "big")
    return False


def _with_delimiter(data: bytes) -> bytes:
    """The frame with its CRLF: kept, completed or added, whichever matches the length field
    (a stripped frame whose CRC ends in 0D or 0D 0A stays readable)."""
    candidates = [data] if data.endswith(CRLF) else []
    if data.endswith(b"\r"):
        candidates.append(data + b"\n")
    candidates.append(data + CRLF)
    for candidate in candidates:
        if _declared_fits(candidate):
            return candidate
    return candidates[0]


def _response(msg_type: int, serial: int, content: bytes = b"", extended: bool = False) -> bytes:
    """A server packet: header, length, type, content, serial, CRC-16/X25, CRLF."""
    length = 5 + len(content)
    size = length.to_bytes(2, "big") if extended else bytes([length & 0xFF])
    body = size + bytes([msg_type]) + content + (serial & 0xFFFF).to_bytes(2, "big")
    header = HEADER_EXTENDED if extended else HEADER_BASIC
    return header + body + crc16_x25(body).to_bytes(2, "big") + CRLF


# (message type, length byte) -> the variant that sends it with that length.
_VARIANTS = {
    (MSG_GPS_LBS_1, 0x24): VXT01,
    (MSG_GPS_LBS_STATUS_1, 0x24): VXT01,
    (MSG_LBS_MULTIPLE_3, 0x31): WANWAY_S20,
    (MSG_LBS_MULTIPLE_3, 0x2E): SR411_MINI,
    (MSG_GPS_LBS_1, 0x21): BENWAY,
    (MSG_GPS_LBS_1, 0x2B): S5,
    (MSG_STATUS, 0x13): OBD6,
    (MSG_GPS_LBS_1, 0x29): WETRUST,
    (MSG_LBS_3, 0x37): SL4X,
    (MSG_GPS_LBS_5, 0x2A): SL4X,
    (MSG_GPS_LBS_STATUS_4, 0x27): SL4X,
    (MSG_GPS_LBS_STATUS_4, 0x29): SL4X,
    (MSG_GPS_LBS_2, 0x2F): SEEWORLD,
    (MSG_GPS_LBS_STATUS_1, 0x26): SEEWORLD,
    (MSG_STATUS_3, 0x0C): SEEWORLD,
    (MSG_GPS_LBS_RFID, 0x28): RFID,
    (MSG_GPS_LBS_STATUS_5, 0x40): LW4G,
}


def _variant(data: bytes) -> str:
    if data[:2] != HEADER_BASIC:
        return STANDARD
    length, msg_type = data[2], data[3]
    if msg_type == MSG_GPS_LBS_1 and length >= 0x71:
        return GT06E_CARD
    if msg_type == MSG_LBS_STATUS and length >= 0x17:
        return SPACE10X
    if msg_type == MSG_ALARM and len(data) >= 6 and data[4:6] == b"\xff\xff":
        return JC400
    return _VARIANTS.get((msg_type, length), STANDARD)


@dataclass(slots=True)
class _Context:
    """What one frame's decoding needs besides the bytes."""

    session: Session
    frame: bytes
    variant: str
    model: str
    tz: tzinfo

    @property
    def model_lw(self) -> bool:
        return self.model.startswith("LW")

    @property
    def model_sw(self) -> bool:
        return self.model == "SEEWORLD"

    @property
    def model_nt(self) -> bool:
        return self.model in NT_MODELS

    @property
    def model_vl(self) -> bool:
        return self.model in VL_MODELS

    def now(self) -> datetime:
        return self.session.now().astimezone(UTC)


class Gt06Protocol(Protocol):
    name: ClassVar[str] = "gt06"
    port: ClassVar[int] = 5023
    transports: ClassVar[frozenset[str]] = frozenset({"tcp"})
    max_frame: ClassVar[int] = 4096

    # Framing -----------------------------------------------------------------------

    def split(self, buffer: bytes) -> tuple[bytes | None, int]:
        """Frames by the length field, falling back to the first CRLF when the length is wrong
        (as the reference framer does). Bytes before a ``78 78``/``79 79`` header are skipped."""
        if not buffer:
            return None, 0
        if buffer[:2] not in (HEADER_BASIC, HEADER_EXTENDED):
            starts = [i for i in (buffer.find(HEADER_BASIC, 1), buffer.find(HEADER_EXTENDED, 1)) if i > 0]
            if starts:
                return None, min(starts)
            keep = 1 if buffer[-1:] in (b"\x78", b"\x79") else 0
            skip = len(buffer) - keep
            if skip > 0:
                return None, skip
            return None, 0
        if len(buffer) < 5:
            return None, 0
        if buffer[:2] == HEADER_BASIC:
            size = 2 + 1 + buffer[2] + 2
        else:
            size = 2 + 2 + int.from_bytes(buffer[2:4], "big") + 2
        if len(buffer) >= size + 2 and buffer[size:size + 2] == CRLF:
            return buffer[:size + 2], size + 2
        if len(buffer) >= size and buffer[size - 2:size] == CRLF:
            return buffer[:size], size
        # The length field is wrong: cut at a CRLF. While the buffer is still shorter than the
        # declared frame, a CRLF counts only where a frame can end (buffer end or next header),
        # so a CRLF inside a half-received frame does not split it.
        complete = len(buffer) >= size
        end = buffer.find(CRLF, 1)
        while end > 0:
            stop = end + 2
            if complete or stop == len(buffer) or buffer[stop:stop + 2] in (HEADER_BASIC, HEADER_EXTENDED):
                return buffer[:stop], stop
            end = buffer.find(CRLF, end + 1)
        if len(buffer) >= self.max_frame:
            raise self.too_long(buffer)
        return None, 0

    # Decoding ----------------------------------------------------------------------

    def decode(self, frame: bytes, session: Session) -> DecodeResult:
        try:
            return self._decode(frame, session)
        except DecodeError:
            raise
        except (struct.error, LookupError, ValueError, ArithmeticError, UnicodeError) as exc:
            raise self.error(f"malformed frame: {exc}", frame) from exc

    def _decode(self, frame: bytes, session: Session) -> DecodeResult:
        data = _with_delimiter(bytes(frame))
        header = data[:2]
        if header not in (HEADER_BASIC, HEADER_EXTENDED):
            raise self.error("no 7878/7979 header", frame)
        extended = header == HEADER_EXTENDED
        minimum = (4 if extended else 3) + 1 + 2 + 2 + 2
        if len(data) < minimum:
            raise self.error(f"frame too short ({len(frame)} bytes)", frame)
        # Devices send lengths that are too small (0 for Wi-Fi packets, say), which the reference
        # tolerates; a frame shorter than its declared length is truncated and cannot be read.
        declared = int.from_bytes(data[2:4], "big") if extended else data[2]
        present = len(data) - (4 if extended else 3) - len(CRLF)
        if present < declared:
            raise self.error(f"truncated frame: length field says {declared} bytes, {present} present", frame)
        crc_ok = crc16_x25(data[2:-4]) == int.from_bytes(data[-4:-2], "big")

        msg_type = data[4] if extended else data[3]
        if msg_type != MSG_LOGIN or extended:
            if session.device is None:
                raise self.error("report before the device identified itself (no login on this session)", frame)

        ctx = _Context(
            session=session,
            frame=data,
            variant=_variant(data),
            model=str(session.options.get("model") or "").upper(),
            tz=self._timezone(session),
        )
        if extended:
            records, reply = self._decode_extended(ctx, Reader(data, self.name, pos=2))
        else:
            records, reply = self._decode_basic(ctx, Reader(data, self.name, pos=2))

        positions = [self._to_position(record, ctx, frame) for record in records]
        if not crc_ok:
            for p in positions:
                p.attributes["crcMismatch"] = True
        return DecodeResult(positions=positions, reply=reply)

    def _timezone(self, session: Session) -> tzinfo:
        configured = _parse_timezone(session.options.get("timezone"))
        if configured is not None:
            return configured
        minutes = session.state.get(STATE_LOGIN_TZ)
        if isinstance(minutes, int):
            return timezone(timedelta(minutes=minutes))
        return UTC

    def _to_position(self, record: _Record, ctx: _Context, frame: bytes) -> Position:
        fix_time = record.time if record.time is not None else ctx.now()
        p = self.position(ctx.session, fix_time, frame)
        if record.located:
            p.valid = record.valid
            p.latitude = record.latitude
            p.longitude = record.longitude
            p.speed_kmh = record.speed_kmh
            p.course = record.course
        p.altitude_m = record.altitude
        p.satellites = record.satellites
        p.hdop = record.hdop
        p.ignition = record.ignition
        p.power_mv = None if record.power is None else round(record.power * 1000)
        p.battery_mv = None if record.battery is None else round(record.battery * 1000)
        p.odometer_m = None if record.odometer is None else round(record.odometer)
        p.alarm = ",".join(record.alarms) if record.alarms else None
        p.attributes.update(record.attributes)
        return p

    # Shared field groups ------------------------------------------------------------

    @staticmethod
    def _date(r: Reader, tz: tzinfo) -> datetime:
        y, mo, d, h, mi, s = r.take(6)
        return _lenient_time(y, mo, d, h, mi, s, tz)

    def _gps(self, rec: _Record, r: Reader, ctx: _Context, has_length: bool = False, has_satellites: bool = True,
             has_speed: bool = True, long_speed: bool = False, swap_flags: bool = False) -> bool:
        rec.time = self._date(r, ctx.tz)
        if has_length and r.u8() == 0:
            return False
        if has_satellites:
            rec.satellites = r.u8() & 0x0F
        latitude = r.u32() / COORD_SCALE
        longitude = r.u32() / COORD_SCALE
        flags = r.u16() if swap_flags else 0
        if has_speed:
            rec.speed_kmh = float(r.u16() if long_speed else r.u8())
        if not swap_flags:
            flags = r.u16()
        _apply_flags(rec, flags, latitude, longitude)
        return True

    @staticmethod
    def _lbs(r: Reader, msg_type: int, has_length: bool, variant: str) -> bool:
        """Skips the serving cell (MCC/MNC/LAC/CID); the cell is not part of our record."""
        length = 0
        if has_length:
            length = r.u8()
            if length == 0:
                window = r.data[r.pos + 9:min(r.pos + 45, len(r.data))]
                if not any(window):
                    r.skip(min(r.remaining, 45))
                return False
        cell_type = r.u8() if msg_type == MSG_GPS_LBS_8 else 0
        mcc = r.u16()
        if _bit(mcc, 15) or msg_type == MSG_GPS_LBS_6 or variant == SL4X:
            r.u16()
        else:
            r.u8()
        wide = cell_type >= 3 or msg_type in (MSG_LBS_ALARM, MSG_GPS_LBS_7, MSG_GPS_LBS_STATUS_5)
        r.skip(4 if wide else 2)  # LAC
        if wide or variant == SL4X:
            r.skip(8)  # CID
        elif msg_type in (MSG_GPS_LBS_6, MSG_IBUTTON, MSG_GPS_LBS_DRIVER) or variant == SEEWORLD:
            r.skip(4)
        else:
            r.skip(3)
        if cell_type >= 3:
            r.skip(2)  # rssi
        elif msg_type == MSG_GPS_LBS_8:
            r.skip(1)
        if length > 9:
            r.skip(length - 9)
        return True

    @staticmethod
    def _status(rec: _Record, r: Reader, variant: str) -> None:
        status = r.u8()
        rec.set("status", status)
        rec.set("ignition", _bit(status, 1))
        rec.set("charge", _bit(status, 2))
        rec.set("blocked", _bit(status, 7))
        code = _between(status, 3, 6)
        if code == 7:
            rec.add_alarm(ALARM_OVERSPEED if variant == VXT01 else ALARM_REMOVING)
        else:
            rec.add_alarm(_STATUS_BIT_ALARMS.get(code))

    @staticmethod
    def _alarm(value: int, ctx: _Context) -> str | None:
        lw, sw, vl = ctx.model_lw, ctx.model_sw, ctx.model_vl
        match value:
            case 0x01:
                return ALARM_SOS
            case 0x02:
                return ALARM_POWER_CUT
            case 0x03:
                return ALARM_VIBRATION
            case 0x04:
                return ALARM_GEOFENCE_ENTER
            case 0x05:
                return ALARM_GEOFENCE_EXIT
            case 0x06:
                return ALARM_OVERSPEED
            case 0x09:
                return ALARM_TOW if vl else ALARM_VIBRATION
            case 0x0E | 0x0F:
                return ALARM_LOW_BATTERY
            case 0x11:
                return ALARM_POWER_OFF
            case 0x0C | 0x13 | 0x25:
                return ALARM_TAMPERING
            case 0x14:
                return ALARM_DOOR
            case 0x18:
                return ALARM_ACCIDENT if lw else ALARM_REMOVING
            case 0x19:
                return ALARM_ACCELERATION if lw else ALARM_LOW_BATTERY
            case 0x1A | 0x27:
                return ALARM_BRAKING
            case 0x1B | 0x2A | 0x2B | 0x2E:
                return ALARM_CORNERING
            case 0x23:
                return ALARM_FALL_DOWN
            case 0x26:
                return ALARM_ACCELERATION
            case 0x28:
                return ALARM_CORNERING if sw else ALARM_BRAKING
            case 0x29:
                return ALARM_ACCIDENT if sw else ALARM_ACCELERATION
            case 0x2C:
                return ALARM_ACCIDENT
            case 0x30:
                return ALARM_BRAKING if vl else ALARM_JAMMING
            case _:
                return None

    # Basic (78 78) packets ----------------------------------------------------------

    def _decode_basic(self, ctx: _Context, r: Reader) -> tuple[list[_Record], bytes | None]:
        length = r.u8()
        data_length = length - 5
        msg_type = r.u8()
        serial = int.from_bytes(ctx.frame[-6:-4], "big")
        ack = _response(msg_type, serial)
        rec = _Record()
        variant = ctx.variant

        if msg_type == MSG_LOGIN:
            return self._login(ctx, r, data_length), ack

        if msg_type == MSG_HEARTBEAT:
            status = r.u8()
            rec.set("armed", _bit(status, 0))
            rec.set("ignition", _bit(status, 1))
            rec.set("charge", _bit(status, 2))
            if r.remaining >= 2 + 6:
                rec.set("battery", r.u16() * 0.01)
            if r.remaining >= 1 + 6:
                rec.set("rssi", r.u8())
            return [rec], ack

        if msg_type == MSG_ADDRESS_REQUEST:
            text_reply = b"NA&&NA&&0##"
            content = bytes([len(text_reply)]) + b"\x00\x00\x00\x00" + text_reply
            return [], _response(MSG_ADDRESS_RESPONSE, 0, content, extended=True)

        if msg_type == MSG_TIME_REQUEST:
            now = ctx.now()
            content = bytes([(now.year - 2000) & 0xFF, now.month, now.day, now.hour, now.minute, now.second])
            return [], _response(MSG_TIME_REQUEST, 0, content)

        if msg_type == MSG_X1_GPS and variant != SL4X:
            r.u32()  # data and alarm
            self._gps(rec, r, ctx)
            r.u16()  # terminal info
            rec.set("odometer", r.u32())
            r.skip(2 + 1 + 2 + 4)  # cell
            driver = r.u32()
            if driver > 0:
                rec.set("driverUniqueId", str(driver))
            rec.set("battery", r.u16() * 0.01)
            rec.set("power", r.u16() * 0.01)
            port_info = r.u32()
            rec.set("input", r.u8())
            rec.set("output", r.u8())
            for i in range(1, _between(port_info, 20, 24) + 1):
                rec.set(f"adc{i}", r.u16() * 0.01)
            return [rec], None

        if msg_type == MSG_X1_PHOTO_INFO:
            # Photo transfer (the server pulls the picture in 1 KB chunks) is not supported.
            return [], None

        if (msg_type == MSG_WIFI and variant != RFID) or msg_type in (MSG_WIFI_2, MSG_WIFI_4):
            return self._wifi(ctx, r, msg_type)

        if msg_type == MSG_INFO:
            rec.set("power", r.i16() * 0.01)
            return [rec], None

        if msg_type == MSG_LBS_MULTIPLE_3 and variant == SR411_MINI:
            self._gps(rec, r, ctx)
            self._lbs(r, msg_type, False, variant)
            rec.set("ignition", r.u8() > 0)
            rec.set("power", r.u16() * 0.01)
            rec.set("battery", r.u16() * 0.01)
            return [rec], None

        if msg_type in _LBS_MULTIPLE_TYPES and (msg_type != MSG_WIFI_3 or variant != LW4G) \
                and (msg_type != MSG_LBS_3 or variant == SL4X):
            self._lbs_multiple(rec, r, ctx, msg_type)
        elif msg_type == MSG_STRING:
            command_length = r.u8()
            if command_length > 0:
                r.u32()  # server flag
                value = _ascii(r, command_length - 4)
                if value.startswith("<ICCID:"):
                    rec.set("iccid", value[7:27])
                else:
                    rec.set("result", value)
        elif msg_type == MSG_BMS:
            self._bms(rec, r)
            return [rec], ack
        elif msg_type == MSG_STATUS and r.remaining == 22:
            r.skip(1 + 2 + 1 + 1)  # information content, satellites, alarm, language
            rec.set("batteryLevel", r.u8())
            r.skip(1 + 2 + 1 + 2 + 2)  # mode, working voltage, reserved, working times, working time
            raw_temp = r.u16()
            temperature = (raw_temp & 0x7FFF) * 0.1
            rec.set("temp1", temperature if _bit(raw_temp, 15) else -temperature)
        elif msg_type == MSG_IBUTTON:
            r.skip(8)  # imei
            self._gps(rec, r, ctx)
            self._lbs(r, msg_type, False, variant)
            rec.set("driverUniqueId", str((r.u32() << 16) | r.u16()))
        elif msg_type == MSG_STATUS_2 and ctx.model_vl and data_length > 30:
            self._vl_location(rec, r, ctx)
        elif self._supported(msg_type, ctx):
            if msg_type == MSG_LBS_STATUS and variant == SPACE10X:
                return [], None  # multi-LBS message
            self._location(rec, r, ctx, msg_type)
        elif msg_type == MSG_ALARM:
            self._camera_alarm(rec, r, ctx, data_length)
        else:
            if msg_type in (MSG_COMMAND_0, MSG_COMMAND_1, MSG_COMMAND_2):
                return [], None
            return [], ack

        return [rec], ack

    def _login(self, ctx: _Context, r: Reader, data_length: int) -> list[_Record]:
        imei = r.take(8).hex()[1:]
        r.u16()  # terminal type identifier
        state_tz: int | None = None
        if data_length > 10:
            bits = r.u16()
            hours, minutes = divmod(bits >> 4, 100)
            offset = hours * 60 + minutes
            state_tz = -offset if bits & 0x08 else offset
        ctx.session.device = imei
        if state_tz is None:
            ctx.session.state.pop(STATE_LOGIN_TZ, None)
        else:
            ctx.session.state[STATE_LOGIN_TZ] = state_tz
        return []

    def _wifi(self, ctx: _Context, r: Reader, msg_type: int) -> tuple[list[_Record], bytes | None]:
        raw_time = r.take(6)
        y, mo, d, h, mi, s = ((b >> 4) * 10 + (b & 0x0F) for b in raw_time)  # BCD
        rec = _Record(time=_lenient_time(y, mo, d, h, mi, s, UTC))
        count = r.u8() if msg_type == MSG_WIFI_4 else ctx.frame[2]
        for _ in range(count):
            if msg_type == MSG_WIFI_4:
                r.skip(2)
            r.skip(6)  # mac
            if msg_type != MSG_WIFI_4:
                r.u8()  # signal
        reply = None
        if msg_type != MSG_WIFI_4:
            cells = r.u8()
            r.skip(2 + 1)  # mcc, mnc
            r.skip(cells * (2 + 2 + 1))
            reply = HEADER_BASIC + bytes([0, msg_type]) + raw_time + CRLF
        return [rec], reply

    def _lbs_multiple(self, rec: _Record, r: Reader, ctx: _Context, msg_type: int) -> None:
        variant = ctx.variant
        rec.time = self._date(r, ctx.tz)
        if variant in (WANWAY_S20, SL4X):
            r.u8()  # timing advance
        mcc = r.u16()
        if _bit(mcc, 15) or variant == SL4X:
            r.u16()
        else:
            r.u8()
        count = r.u8() if variant == WANWAY_S20 else 6 if msg_type == MSG_WIFI_5 else 7
        for _ in range(count):
            if msg_type in (MSG_LBS_2, MSG_WIFI_3):
                r.skip(4 + 8)
            elif msg_type in (MSG_WIFI_5, MSG_LBS_3):
                r.skip(2 + 4)
            else:
                r.skip(2 + 3)
            r.u8()  # rssi
        if variant not in (WANWAY_S20, SL4X):
            r.u8()  # timing advance
        if msg_type not in (MSG_LBS_MULTIPLE_1, MSG_LBS_MULTIPLE_2, MSG_LBS_MULTIPLE_3, MSG_LBS_2, MSG_LBS_3):
            for _ in range(r.u8()):
                r.skip(6 + 1)  # mac, rssi

    @staticmethod
    def _bms(rec: _Record, r: Reader) -> None:
        r.skip(8)  # serial number
        rec.time = from_unix(r.u32())
        rec.set("relativeCapacity", r.u8())
        rec.set("remainingCapacity", r.u16())
        rec.set("absoluteCapacity", r.u8())
        rec.set("fullCapacity", r.u16())
        rec.set("batteryHealth", r.u8())
        rec.set("batteryTemp", r.u16() * 0.1 - 273.1)
        rec.set("current", r.u16())
        rec.set("battery", r.u16() * 0.001)
        rec.set("cycleIndex", r.u16())
        for i in range(1, 15):
            rec.set(f"batteryCell{i}", r.u16() * 0.001)
        rec.set("currentChargeInterval", r.u16())
        rec.set("maxChargeInterval", r.u16())
        rec.set("barcode", _java_trim(_ascii(r, 16)))
        rec.set("batteryVersion", r.u16())
        rec.set("manufacturer", _java_trim(_ascii(r, 16)))
        rec.set("batteryStatus", r.u32())
        rec.set("controllerStatus", r.u32())
        rec.set("controllerFault", r.u32())

    def _has_gps(self, msg_type: int, variant: str) -> bool:
        if msg_type == MSG_FENCE_SINGLE:
            return variant != SEEWORLD
        return msg_type in _GPS_TYPES

    def _has_lbs(self, msg_type: int, variant: str) -> bool:
        if msg_type == MSG_FENCE_SINGLE:
            return variant != SEEWORLD
        return msg_type in _LBS_TYPES

    def _has_status(self, msg_type: int, ctx: _Context) -> bool:
        if msg_type == MSG_FENCE_SINGLE:
            return ctx.variant == SEEWORLD
        if msg_type in (MSG_GPS_LBS_2, MSG_GPS_LBS_DRIVER):
            return ctx.model_nt
        return msg_type in _STATUS_TYPES

    def _supported(self, msg_type: int, ctx: _Context) -> bool:
        return (self._has_gps(msg_type, ctx.variant) or self._has_lbs(msg_type, ctx.variant)
                or self._has_status(msg_type, ctx))

    def _location(self, rec: _Record, r: Reader, ctx: _Context, msg_type: int) -> None:
        """The location / LBS / status / alarm family (0x10-0x27, 0x2D, 0x31, 0x32, 0x37, 0xA0-0xA5)."""
        variant = ctx.variant
        nt_location = ctx.model_nt and msg_type in (MSG_GPS_LBS_2, MSG_GPS_LBS_DRIVER)
        rec.set("type", msg_type)

        if msg_type == MSG_GPS_LBS_1 and ctx.model == "QH302R":
            r.skip(8)  # imei
        if nt_location:
            r.u8()  # location source
            r.skip(8)  # imei
            self._date(r, ctx.tz)  # device time

        if self._has_gps(msg_type, variant):
            self._gps(rec, r, ctx)

        has_status = self._has_status(msg_type, ctx)
        if self._has_lbs(msg_type, variant) and r.remaining > 6:
            has_length = (has_status and msg_type not in (MSG_LBS_STATUS, MSG_LBS_ALARM, MSG_GPS_LBS_STATUS_5)
                          and (msg_type != MSG_GPS_LBS_STATUS_1 or variant != VXT01))
            self._lbs(r, msg_type, has_length, variant)

        if has_status:
            self._status_block(rec, r, ctx, msg_type, nt_location)

        if msg_type in (MSG_STATUS_2, MSG_GPS_LBS_STATUS_5, MSG_GPS_LBS_STATUS_3, MSG_FENCE_MULTI) or nt_location:
            r.u8()  # language

        if msg_type == MSG_STATUS_2:
            while r.remaining > 6:
                module, module_length = r.u16(), r.u8()
                if module == 0x0018:
                    rec.set("battery", r.u16() / 100.0)
                elif module == 0x0032:
                    rec.set("startupStatus", r.u8())
                elif module == 0x006A:
                    rec.set("batteryLevel", r.u8())
                else:
                    r.skip(module_length)

        if msg_type == MSG_GPS_LBS_STATUS_5:
            rec.set("odometer", r.u32())
            rec.set("hours", r.u32() * 1000)
            r.skip(8)  # terminal id
            rec.set("input", r.u16())

        if msg_type == MSG_GPS_LBS_1:
            self._gps_lbs_1_variant(rec, r, ctx)

        if msg_type == MSG_GPS_LBS_2 and variant == SEEWORLD:
            rec.set("ignition", r.u8() > 0)
            r.skip(2)  # reporting mode, supplementary transmission
            rec.set("odometer", r.u32())
            r.u32()  # travel time
            temperature = r.u16()
            if _bit(temperature, 15):
                temperature = -(temperature & 0x7FFF)
            rec.set("temp1", temperature * 0.01)
            rec.set("humidity", r.u16() * 0.01)

        if msg_type == MSG_GPS_LBS_STATUS_4 and variant == SL4X:
            rec.altitude = float(r.i16())

        if (msg_type in (MSG_GPS_LBS_2, MSG_GPS_LBS_3, MSG_GPS_LBS_4, MSG_GPS_LBS_5)
                and r.remaining >= 3 + 6 and not ctx.model_nt):
            rec.set("ignition", r.u8() > 0)
            rec.set("event", r.u8())  # upload reason
            rec.set("archive", r.u8() > 0)
            if variant == SL4X:
                if r.remaining > 2 + 6:
                    rec.set("odometer", r.u32())
                rec.altitude = float(r.i16())

        if msg_type == MSG_GPS_LBS_3:
            module, sub_length = r.u16(), r.u8()
            if module == 0x0027:
                rec.set("power", r.u16() * 0.01)
            elif module == 0x002E:
                rec.set("odometer", r.u32())
            elif module == 0x003B:
                rec.set("accuracy", r.u16() * 0.01)
            else:
                r.skip(sub_length)

        if msg_type == MSG_GPS_LBS_RFID:
            rec.set("driverUniqueId", r.take(8).hex())
            r.u8()  # validity

        if nt_location:
            rec.set("odometer", r.u24())
            rec.set("hours", r.u24() * 60 * 1000)
        if ctx.model_nt and msg_type == MSG_GPS_LBS_DRIVER:
            driver_length = r.u8()
            if driver_length > 0:
                r.u8()  # identifier type
                rec.set("driverUniqueId", r.take(driver_length - 1).hex())

        if ctx.model_vl and msg_type == MSG_GPS_LBS_STATUS_1 and r.remaining >= 1 + 8 + 6:
            # VL series alarm packets append an identifier type and an 8-byte driver card.
            r.u8()
            card = r.take(8)
            if any(card):
                rec.set("driverUniqueId", card.hex())

        if r.remaining in (3 + 6, 3 + 4 + 6):
            rec.set("ignition", r.u8() > 0)
            r.u8()  # upload mode
            rec.set("archive", True if r.u8() > 0 else None)
        if r.remaining == 4 + 6:
            rec.set("odometer", r.u32())

        if msg_type in (MSG_GPS_LBS_STATUS_3, MSG_FENCE_MULTI):
            rec.set("geofence", r.u8())

    def _status_block(self, rec: _Record, r: Reader, ctx: _Context, msg_type: int, nt_location: bool) -> None:
        if msg_type == MSG_GPS_LBS_STATUS_5:
            r.u8()  # network indicator
        self._status(rec, r, ctx.variant)
        if ctx.variant == OBD6:
            signal = r.u16()
            rec.set("sat", _between(signal, 10, 15) + _between(signal, 5, 10))
            rec.set("rssi", signal & 0x1F)
            rec.add_alarm(self._alarm(r.u8(), ctx))
            r.u8()  # language
            rec.set("batteryLevel", r.u8())
            mode = r.u8()
            rec.set("power", r.u16() / 100.0)
            r.u8()  # reserved
            r.u16()  # working time
            if mode == 4:
                rec.set("temp1", r.i16() / 10.0)
            return
        if msg_type == MSG_GPS_LBS_STATUS_5 or nt_location:
            rec.set("power", r.u16() * 0.01)
        if msg_type == MSG_STATUS and ctx.model == "R11":
            rec.set("power", r.u16() * 0.01)
        else:
            battery = r.u8()
            if nt_location:
                rec.set("battery", battery / 10.0)
            elif battery <= 6:
                rec.set("batteryLevel", battery * 100 // 6)
            elif battery <= 100:
                rec.set("batteryLevel", battery)
        rec.set("rssi", r.u8())
        if msg_type == MSG_STATUS and ctx.model_lw:
            rec.set("power", (r.u16() & 0x0FFF) / 10.0)
            return
        extension = r.u8()
        if msg_type in (MSG_GPS_LBS_STATUS_3, MSG_FENCE_MULTI):
            extension += (r.peek() >> 4) << 8
        if msg_type == MSG_STATUS and ctx.model_sw:
            rec.set("power", float(extension))
        elif ctx.variant != VXT01:
            rec.add_alarm(self._alarm(extension, ctx))
            if ctx.model_vl and msg_type != MSG_STATUS:
                rec.set("event", extension)

    def _gps_lbs_1_variant(self, rec: _Record, r: Reader, ctx: _Context) -> None:
        variant = ctx.variant
        if variant == GT06E_CARD:
            rec.set("odometer", r.u32())
            card = _ascii(r, r.u8())
            r.skip(2)  # alarm, swiped
            rec.set("card", _java_trim(card))
        elif variant == BENWAY:
            mask = r.u16()
            rec.set("ignition", _bit(mask, 8 + 7))
            rec.set("in2", _bit(mask, 8 + 6))
            if _bit(mask, 8 + 4):
                value = mask & ((1 << 9) - 1)
                rec.set("temp1", -value if _bit(mask, 8 + 1) else value)
            else:
                value = mask & ((1 << 10) - 1)
                rec.set("adc1", value if _bit(mask, 8 + 5) else value * 0.1)
        elif variant == VXT01:
            self._status(rec, r, variant)
            rec.set("power", r.u16() * 0.01)
            rec.set("rssi", r.u8())
            r.u8()  # alarm extension
        elif variant == S5:
            self._status(rec, r, variant)
            rec.set("power", r.u16() * 0.01)
            rec.set("rssi", r.u8())
            rec.add_alarm(self._alarm(r.u8(), ctx))
            rec.set("oil", r.u16())
            temperature = r.u8()
            if _bit(temperature, 7):
                temperature = -(temperature & 0x7F)
            rec.set("temp1", temperature)
            rec.set("odometer", r.u32() * 10)
        elif variant == WETRUST:
            rec.set("odometer", r.u32())
            rec.set("card", _ascii(r, r.u8()))
            rec.add_alarm(ALARM_GENERAL if r.u8() > 0 else None)
            rec.set("cardStatus", r.u8())
            rec.set("drivingTime", r.u16())

    def _vl_location(self, rec: _Record, r: Reader, ctx: _Context) -> None:
        """0x36 from VL-series units: a location with a 4-byte cell id, then ACC, upload mode,
        re-upload, 4 bytes (mileage or level, unconfirmed), 2 unknown bytes, battery /10 V,
        3 unknown bytes and an 8-byte driver card. Inferred from captures: the reference handles
        this packet by model, and only the fields decoded here are confirmed by its tests."""
        rec.set("type", MSG_STATUS_2)
        self._gps(rec, r, ctx)
        mcc = r.u16()
        r.skip(2 if _bit(mcc, 15) else 1)  # mnc
        r.skip(2 + 4)  # lac, cid
        rec.set("ignition", r.u8() > 0)
        r.skip(2)  # upload mode, re-upload
        r.skip(4 + 2)
        rec.set("battery", r.u8() / 10.0)
        r.skip(3)
        if r.remaining >= 8 + 6:
            card = r.take(8)
            if any(card):
                rec.set("driverUniqueId", card.hex())

    def _camera_alarm(self, rec: _Record, r: Reader, ctx: _Context, data_length: int) -> None:
        jc400 = ctx.variant == JC400
        extended_alarm = data_length > 7
        if extended_alarm:
            if jc400:
                r.skip(2 + 1)  # marker, version
            self._gps(rec, r, ctx, has_satellites=jc400, has_speed=jc400, long_speed=jc400, swap_flags=jc400)
        else:
            rec.time = self._date(r, ctx.tz)
        if jc400:
            rec.set("power", r.u16() * 0.1)
        event = r.u8()
        rec.set("event", event)
        rec.set("eventData", r.u16())
        if event == 0x01:
            rec.add_alarm(ALARM_SOS if extended_alarm else ALARM_GENERAL)
        else:
            rec.add_alarm(_CAMERA_EVENTS.get(event))
        files_length = r.remaining - 6
        if files_length > 0:
            rec.set("eventFiles", _ascii(r, files_length))

    # Extended (79 79) packets --------------------------------------------------------

    def _decode_extended(self, ctx: _Context, r: Reader) -> tuple[list[_Record], bytes | None]:
        length = r.u16()
        msg_type = r.u8()
        serial = int.from_bytes(ctx.frame[-6:-4], "big")
        rec = _Record()

        if msg_type == MSG_STRING_INFO:
            r.u32()  # server flag
            encoding = r.u8()
            raw = r.take(r.remaining - 6)
            value = raw.decode("ascii", errors="replace") if encoding == 1 else raw.decode("utf-16-be", "replace")
            match = PATTERN_LOCATION.search(value)
            if match:
                lat = float(match.group(2)) * (-1 if match.group(1) == "S" else 1)
                lon = float(match.group(4)) * (-1 if match.group(3) == "W" else 1)
                rec.located, rec.valid = True, True
                rec.latitude, rec.longitude = lat, lon
                rec.course = float(match.group(5))
                rec.speed_kmh = float(match.group(6)) * KNOTS_TO_KMH
                y, mo, d, h, mi, s = (int(match.group(i)) for i in range(7, 13))
                rec.time = _lenient_time(y, mo, d, h, mi, s, UTC)
            else:
                rec.set("result", value)
            return [rec], None

        if msg_type == MSG_INFO:
            return self._info(ctx, r, rec, length), None

        if msg_type in (MSG_GPS_LBS_STATUS_4, MSG_WIFI_5):  # AZ735 GPS / alarm
            if not self._gps(rec, r, ctx, has_length=True):
                rec.located = False
            if self._lbs(r, msg_type, True, STANDARD):
                rec.set("rssi", r.u8())
            r.skip(r.u8())  # additional cell towers
            r.skip(r.u8())  # wifi access points
            status = r.u8()
            rec.set("status", status)
            if msg_type == MSG_WIFI_5:
                if status in (0xA0, 0xA1):
                    rec.set("armed", status == 0xA0)
                rec.add_alarm(_AZ735_ALARMS.get(status))
            r.skip(r.u8())  # reserved extension
            return [rec], _response(msg_type, serial, extended=True)

        if msg_type == MSG_OBD:
            rec.time = self._date(r, ctx.tz)
            rec.set("ignition", r.u8() > 0)
            self._obd(rec, _ascii(r, r.remaining - 18))
            return [rec], None

        if msg_type == MSG_GPS_MODULAR:
            self._modular(rec, r)
            return [rec], _response(MSG_GPS_MODULAR, r.u16())

        if msg_type == MSG_MULTIMEDIA:
            # Media chunks are acknowledged but not assembled (no media store here).
            return [], _response(msg_type, serial, extended=True)

        if msg_type == MSG_SERIAL:
            r.u8()  # external device type
            payload = r.take(r.remaining - 6)
            printable = all(b >= 0x20 or b in (0x0D, 0x0A) for b in payload) and all(b < 0x80 for b in payload)
            rec.set("result", _java_trim(payload.decode("ascii")) if printable else payload.hex())
            return [rec], None

        if msg_type == MSG_PERIPHERAL:
            self._peripheral(rec, r)
            return [rec], _response(msg_type, serial)

        if msg_type == MSG_STATUS_MODULAR:
            self._status_modules(rec, r)
            return [rec], _response(msg_type, serial)

        if msg_type == MSG_GPS_LBS_8:
            self._gps(rec, r, ctx)
            r.skip(2)  # upload mode, re-upload
            self._lbs(r, msg_type, False, STANDARD)
            return [rec], None

        return [], None

    def _info(self, ctx: _Context, r: Reader, rec: _Record, length: int) -> list[_Record]:
        sub_type = r.u8()
        if sub_type == 0x00:
            rec.set("adc1", r.u16() * 0.01)
        elif sub_type == 0x04:
            content = _ascii(r, r.remaining - 4 - 2)
            for item in content.split(";"):
                pair = _java_split(item, "=")
                if len(pair) < 2:
                    continue
                key, value = pair[0], pair[1]
                try:
                    number = int(value, 16)
                except ValueError:
                    continue
                if key in ("ALM1", "ALM2", "ALM3"):
                    rec.set(f"alarm{key[3]}Status", number)
                    rec.set("otherStatus", number)  # the reference falls through to STA1 here
                elif key == "STA1":
                    rec.set("otherStatus", number)
                elif key == "DYD":
                    rec.set("engineStatus", number)
        elif sub_type == 0x05:
            if r.remaining >= 6 + 1 + 6:
                rec.time = self._date(r, ctx.tz)
            flags = r.u8()
            rec.set("door", _bit(flags, 0))
            rec.set("io1", _bit(flags, 2))
        elif sub_type == 0x0A:
            r.skip(8 + 8)  # imei, imsi
            rec.set("iccid", r.take(10).hex().replace("f", ""))
        elif sub_type == 0x0B:
            data_length = length - 6
            if data_length == 1:
                rec.set("networkTechnology", "4G" if r.i8() > 0 else "2G")
            elif data_length == 2:
                rec.set("power", r.u16() / 100.0)
        elif sub_type == 0x0D:
            if r.peek() != ord("!"):
                r.skip(6)
            match = PATTERN_FUEL.fullmatch(r.data[r.pos:len(r.data) - 6].decode("ascii", errors="replace"))
            if not match:
                return []
            rec.set("temp1", float(match.group(1)))
            rec.set("fuel", float(match.group(2)))
        elif sub_type == 0x1B:
            if chr(r.peek()).isalpha():
                rec.set("serial", _java_trim(_ascii(r, r.remaining - 6)))
            else:
                r.skip(2)  # header, type
                rec.set("driverUniqueId", r.take(4).hex())
                r.skip(2)  # checksum, footer
        elif sub_type == 0x1E:
            rec.set("temp1", r.i32() / 10.0)
            rec.set("humidity", r.i32() / 10.0)
        else:
            return []
        return [rec]

    @staticmethod
    def _obd(rec: _Record, content: str) -> None:
        for pair in content.split(","):
            values = _java_split(pair, "=")
            if len(values) < 2 or len(values[0]) < 2:
                continue
            try:
                key = int(values[0][:2], 16)
                if key == 74:
                    rec.set("vin", values[1])
                elif key in _OBD_KEYS:
                    rec.set(_OBD_KEYS[key], int(values[1], 16) * 0.01)
            except ValueError:
                continue

    @staticmethod
    def _modular(rec: _Record, r: Reader) -> None:
        while r.remaining > 6:
            module, module_length = r.u16(), r.u16()
            if module == 0x03:
                rec.set("iccid", r.take(10).hex())
            elif module == 0x09:
                rec.set("sat", r.u8())
            elif module == 0x0A:
                rec.set("satVisible", r.u8())
            elif module == 0x11:
                r.skip(2 + 2 + 2 + 3 + 1)  # cell tower
            elif module == 0x18:
                rec.set("battery", r.u16() * 0.01)
            elif module == 0x28:
                rec.set("hdop", r.u8() * 0.1)
            elif module == 0x29:
                rec.set("index", r.u32())
            elif module == 0x2A:
                value = r.u8()
                rec.set("door", (value & 0x0F) > 0)
                rec.set("tamper", (value >> 4) > 0)
            elif module == 0x2B:
                rec.set("bootReason", r.u8())
            elif module == 0x2E:
                rec.set("odometer", r.unpack(_U32_LE)[0])
            elif module == 0x33:
                rec.time = from_unix(r.u32())
                rec.set("sat", r.u8())
                rec.altitude = float(r.i16())
                latitude = r.u32() / COORD_SCALE
                longitude = r.u32() / COORD_SCALE
                rec.speed_kmh = float(r.u8())
                flags = r.u16()
                _apply_flags(rec, flags, latitude, longitude, ignition=False)
            elif module == 0x34:
                event = r.u8()
                rec.add_alarm(_MODULAR_EVENTS.get(event))
                rec.set("event", event)
                r.unpack(_U32_LE)[0]  # time
                r.skip(r.u8())  # content
            elif module == 0x7F:
                rec.set("tag1Id", r.take(6).hex())
                rec.set("tag1Battery", r.u16() / 1000.0)
                rec.set("tag1BatteryLevel", r.u8())
                rec.set("tag1Temp", r.i16() / 10.0)
                rec.set("tag1Humidity", r.i16())
                rec.set("tag1Status", r.u8())
            else:
                r.skip(module_length)

    @staticmethod
    def _peripheral(rec: _Record, r: Reader) -> None:
        rec.time = from_unix(r.u32())
        while r.remaining > 6:
            status_id = r.u16()
            if status_id == 0x000A:
                status_length = r.u16()
                r.u8()  # mac address type
                rec.set("mac", r.take(6).hex())
                event = r.u8()
                rec.set("event", event)
                event_data = r.u8()
                rec.set("eventData", event_data if event > 0 else None)
                rec.set("dataType", r.u8())
                rec.set("dataDetails", r.take(status_length - 10).hex())
            elif status_id == 0x000C:
                r.u8()  # length
                rec.set("externalBatteryLevel", r.u8())
                rec.set("externalBatteryCharge", True if r.u8() > 0 else None)
                rec.set("externalBatteryCycles", r.u16())
                r.skip(6)
            else:
                status_length = r.u8()
                r.skip(r.u8() if status_length == 0 else status_length)

    @staticmethod
    def _status_modules(rec: _Record, r: Reader) -> None:
        """0xF1: Unix time, then (id u16, length u8, value) modules; 0x0005 = external power /100 V.
        Layout inferred from captures; other module ids are skipped."""
        rec.time = from_unix(r.u32())
        while r.remaining > 6:
            module, module_length = r.u16(), r.u8()
            value = r.take(module_length)
            if module == 0x0005 and module_length == 2:
                rec.set("power", int.from_bytes(value, "big") / 100.0)


def _apply_flags(rec: _Record, flags: int, latitude: float, longitude: float, ignition: bool = True) -> None:
    """The course/status word: course, fix, hemispheres and (bits 14/15) ACC."""
    rec.course = float(flags & 0x03FF)
    rec.valid = _bit(flags, 12)
    rec.latitude = latitude if _bit(flags, 10) else -latitude
    rec.longitude = -longitude if _bit(flags, 11) else longitude
    rec.located = True
    if ignition and _bit(flags, 14):
        rec.set("ignition", _bit(flags, 15))


# Encoders (device simulator) -------------------------------------------------------------


def _packet(msg_type: int, body: bytes, serial: int) -> bytes:
    return _response(msg_type, serial, body)


def encode_login(device: str) -> bytes | None:
    """The 0x01 login packet: the IMEI as 8 BCD bytes (16 nibbles, left-padded with 0)."""
    digits = "".join(ch for ch in device if ch.isdigit())
    if not digits or len(digits) > 16 or len(digits) != len(device):
        raise ValueError(f"gt06 login needs a numeric IMEI of at most 16 digits, got {device!r}")
    return _packet(MSG_LOGIN, bytes.fromhex(digits.rjust(16, "0")), 1)


def encode_position(p: Position, sequence: int = 0) -> bytes:
    """A 0x22 location packet (GPS + LBS + ACC byte) in UTC, with a valid CRC."""
    t = p.fix_time.astimezone(UTC)
    lat = p.latitude or 0.0
    lon = p.longitude or 0.0
    satellites = max(0, min(15, p.satellites or 0))
    speed = max(0, min(255, round(p.speed_kmh or 0.0)))
    course = round(p.course or 0.0) % 360
    flags = course & 0x03FF
    if p.valid:
        flags |= 1 << 12
    if lat >= 0:
        flags |= 1 << 10
    if lon < 0:
        flags |= 1 << 11
    if p.ignition is not None:
        flags |= 1 << 14
        if p.ignition:
            flags |= 1 << 15
    body = bytes([(t.year - 2000) & 0xFF, t.month, t.day, t.hour, t.minute, t.second, 0xC0 | satellites])
    body += round(abs(lat) * COORD_SCALE).to_bytes(4, "big") + round(abs(lon) * COORD_SCALE).to_bytes(4, "big")
    body += bytes([speed]) + flags.to_bytes(2, "big")
    body += b"\x00\x00" + b"\x00" + b"\x00\x00" + b"\x00\x00\x00"  # MCC, MNC, LAC, CID unknown
    body += bytes([1 if p.ignition else 0, 0, 0])  # ACC, upload mode (timed), real-time
    return _packet(MSG_GPS_LBS_2, body, sequence & 0xFFFF)


_HEARTBEAT_ALARMS = {ALARM_VIBRATION: 1, ALARM_POWER_CUT: 2, ALARM_LOW_BATTERY: 3, ALARM_SOS: 4}


def encode_heartbeat(p: Position, sequence: int = 0) -> bytes:
    """A 0x13 status (heartbeat) packet: terminal info (ACC, charging, alarm bits, GPS on),
    voltage level 0-6, GSM signal 0-4, alarm/language word."""
    status = 0x40  # GPS tracking on
    if p.ignition:
        status |= 0x02
    if p.attributes.get("charge"):
        status |= 0x04
    status |= _HEARTBEAT_ALARMS.get(p.alarm or "", 0) << 3
    level_pct = p.attributes.get("batteryLevel")
    if isinstance(level_pct, (int, float)):
        level = round(max(0.0, min(100.0, float(level_pct))) * 6 / 100)
    elif p.battery_mv is not None:
        level = round(max(0.0, min(1.0, (p.battery_mv - 3400) / 800)) * 6)
    else:
        level = 6
    rssi = p.attributes.get("rssi")
    gsm = int(rssi) if isinstance(rssi, int) and 0 <= rssi <= 4 else 4
    body = bytes([status, level, gsm, 0x00, 0x02])  # no alarm code, English
    return _packet(MSG_STATUS, body, sequence & 0xFFFF)


PROTOCOL = Gt06Protocol()
