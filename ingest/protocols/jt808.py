"""JT/T 808 (the Chinese road-transport standard, 2013 and 2019 editions; "huabao" in older
reference releases), TCP only. Field layouts follow the reference server's Jt808 decoder;
model-specific fields are picked with ``session.options["model"]``.

Frame (between ``7E`` delimiters; inside, ``7E`` is sent as ``7D 02`` and ``7D`` as ``7D 01``)::

    +----+--------+-------+---------+-------------------+--------+-----------+------+-----+----+
    | 7E | msg id | props | [ver]   | terminal number   | serial | [pkg n/i] | body | XOR | 7E |
    |    |  u16   |  u16  | u8 2019 | 6 BCD (10 in 2019)|  u16   | u16 u16   |      | u8  |    |
    +----+--------+-------+---------+-------------------+--------+-----------+------+-----+----+
    props: low 10 bits body length, bit 13 sub-packaged, bit 14 2019 edition (version byte,
    10-byte number); XOR of every byte from msg id to the end of the body. 0x5501/0x5502
    (vendor location) have a one-byte serial. The terminal number is the device id, leading
    zeros dropped (a non-BCD number is an IMEI: u16 and u32 plus its Luhn digit).

Messages and answers (``8001`` = general response: the terminal's serial, its message id, result)::

    0100 register        -> 8100: serial, result 0, authentication code (no record)
    0102 authenticate    -> 8001 (2013: the body is the code; 2019: u8 length, code, IMEI, version)
    0002 heartbeat       -> 8001 (a status record when it carries battery %, RSSI, status)
    0200 location        -> 8001; 0201 location query answer (no answer back)
    0704 / 0210 batch    -> 8001; u16 count + u8 type + (u16 length, location)... (0210: u8 lengths)
    0900 transparent     -> 8001 (0x40 text / GTSL driver card, 0x41 $OBD-RT, 0xF0 CAN/OBD records,
                            0xFF position, 0xF3 collision, 0x53/0x54 BLE tags and sensors)
    5501 / 5502          vendor location (BCD time and coordinates), answered 4401 when props bit 15
    0109 time request    -> 8109 with the server's UTC time
    0003 logout, 0506, 8888, 1007 -> 8001;  0107 attributes -> 8001 + ICCID
    6006 text report     -> 8001 + ``result``; 1300, 0701 (command answers), 0702 driver card,
    0104 parameters, 2070 acceleration: status records, no answer
    other terminal messages -> 8001 with result 3 ("not supported"), so the unit does not retry

    location body: u32 alarm word, u32 status (bit 0 ACC, 1 fix, 2 south, 3 west, 10 blocked,
    26 charging), u32 lat and lon x 1e-6 deg, i16 altitude m, u16 speed 0.1 km/h, u16 course,
    BCD YYMMDDhhmmss in the unit's time zone (GMT+8 unless ``options["timezone"]``), then TLV
    extras (u8 id, u8 length): 01 odometer 0.1 km, 30 RSSI, 31 satellites, 51 temperatures,
    56/E3/E4/FE battery, 61/82/D3/F1 power, 77 tyres, 80 OBD block, EB vendor blocks, ...

Authentication codes and device passwords:
    * The authentication code a terminal sends in ``0102`` is ``session.credential``: for a
      device with a password, the password IS its authentication code and intake checks it
      (once per connection). A wrong or missing code is answered with a failed ``8001``
      (result 1), then the connection is closed; reports on a connection that has not
      authenticated are refused the same way.
    * A device with a password is not registered again: its ``0100`` is refused with
      ``8100`` result 3 ("terminal already registered"), so a terminal that only knows the
      phone number learns no code. A device without a password is answered result 0 and the
      code the reference server issues, its own terminal number (not a secret: such a device
      is as unprotected as any protocol without credentials). To lock a device, give it a
      password and configure the same string as the terminal's authentication code.

Decisions:
    * Frames whose XOR or declared body length does not match the bytes (12 of the corpus's
      frames: a truncated body, a wrong XOR) are decoded from the bytes present; their records
      carry ``crcMismatch`` (README "Bad CRCs": the reference server checks neither).
    * The framer unescapes, as the reference's does; ``decode`` also takes a still-escaped frame
      (an MQTT payload): when the frame has ``7D`` bytes, the reading whose length and XOR
      agree is used.
    * Location reports without a fix still carry coordinates (the reference keeps them), with
      ``valid`` false. Reports the reference completes with the last known location
      (heartbeats, batches' status, text) are status records here: no made-up coordinates.
    * A TLV that cannot be read ends the extras; what was read is kept. A padlock's
      ``0x67`` password TLV is not stored.
    * Sub-packaged messages (props bit 13) are decoded packet by packet, not reassembled.
    * The alternative ``E7`` framing of some vendors is not supported.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from avl.records import Position
from ingest.protocols.base import KNOTS_TO_KMH, DecodeError, DecodeResult, Protocol, Session, bcd_int, utc
from ingest.protocols.crc16 import xor8
from ingest.protocols.reader import Reader, ShortFrame

DELIMITER = 0x7E
ESCAPE = 0x7D

MSG_TERMINAL_GENERAL_RESPONSE = 0x0001
MSG_GENERAL_RESPONSE = 0x8001
MSG_GENERAL_RESPONSE_2 = 0x4401
MSG_HEARTBEAT = 0x0002
MSG_TERMINAL_LOGOUT = 0x0003
MSG_HEARTBEAT_2 = 0x0506
MSG_TERMINAL_REGISTER = 0x0100
MSG_TERMINAL_REGISTER_RESPONSE = 0x8100
MSG_TERMINAL_AUTH = 0x0102
MSG_PARAMETER_QUERY_RESPONSE = 0x0104
MSG_TERMINAL_ATTRIBUTES = 0x0107
MSG_TIME_SYNC_REQUEST = 0x0109
MSG_TIME_SYNC_RESPONSE = 0x8109
MSG_LOCATION_REPORT = 0x0200
MSG_LOCATION_QUERY_RESPONSE = 0x0201
MSG_LOCATION_BATCH_2 = 0x0210
MSG_COMMAND_RESPONSE = 0x0701
MSG_DRIVER_IDENTITY = 0x0702
MSG_LOCATION_BATCH = 0x0704
MSG_TRANSPARENT = 0x0900
MSG_TIMEZONE_SYNC = 0x1007
MSG_TEXT_MESSAGE_RESPONSE = 0x1300
MSG_ACCELERATION = 0x2070
MSG_LOCATION_REPORT_2 = 0x5501
MSG_LOCATION_REPORT_BLIND = 0x5502
MSG_REPORT_TEXT_MESSAGE = 0x6006
MSG_PHOTO = 0x8888

RESULT_SUCCESS = 0
RESULT_FAILURE = 1
RESULT_NOT_SUPPORTED = 3
REGISTER_ALREADY_REGISTERED = 3

_ACK_ONLY = frozenset({MSG_TERMINAL_AUTH, MSG_HEARTBEAT_2, MSG_PHOTO, MSG_TERMINAL_LOGOUT, MSG_TIMEZONE_SYNC})
# Answers and records the reference gives without a general response: none is sent for them.
_NO_ANSWER = frozenset({MSG_TERMINAL_GENERAL_RESPONSE, MSG_LOCATION_QUERY_RESPONSE, MSG_ACCELERATION,
                        MSG_COMMAND_RESPONSE, MSG_DRIVER_IDENTITY, MSG_PARAMETER_QUERY_RESPONSE,
                        MSG_TEXT_MESSAGE_RESPONSE})

PADLOCK_MODELS = frozenset({"G-360P", "G-508P"})
AOVX_MODELS = frozenset({"AL300", "GL100"})
JC_MODELS = frozenset({"JC371", "JC181", "JC182", "JC450", "JC451"})

DEFAULT_TIMEZONE = timezone(timedelta(hours=8))  # the standard's GMT+8, unless the device says otherwise
_TZ_OFFSET = re.compile(r"^(?:UTC|GMT)?\s*([+-])(\d{1,2})(?::?(\d{2}))?$", re.IGNORECASE)

# Reference attribute names that are typed fields of our record, and how their values convert.
_TYPED: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "odometer": ("odometer_m", round),
    "power": ("power_mv", lambda volts: round(volts * 1000)),
    "battery": ("battery_mv", lambda volts: round(volts * 1000)),
    "sat": ("satellites", int),
    "hdop": ("hdop", float),
    "ignition": ("ignition", bool),
}


def _bit(value: int, index: int) -> bool:
    return bool(value >> index & 1)


def _bits(value: int, low: int, high: int) -> int:
    """Bits low..high-1 of value (the reference's BitUtil.between)."""
    return value >> low & ((1 << (high - low)) - 1)


def _luhn(number: int) -> int:
    total = 0
    for i, char in enumerate(reversed(str(number))):
        digit = int(char)
        if i % 2 == 0:
            digit *= 2
            if digit >= 10:
                digit = 1 + digit % 10
        total += digit
    return (10 - total % 10) % 10


def decode_id(raw: bytes) -> str:
    """The terminal number: its BCD digits, or (not BCD) an IMEI packed as u16 + u32 plus its Luhn digit."""
    digits = raw.hex()
    if digits.isdigit():
        return digits
    imei = int.from_bytes(raw[0:2], "big") << 32 | int.from_bytes(raw[2:6], "big")
    return f"{imei}{_luhn(imei)}"


def unescape(data: bytes) -> bytes:
    return data.replace(b"\x7d\x02", b"\x7e").replace(b"\x7d\x01", b"\x7d") if b"\x7d" in data else data


def escape(data: bytes) -> bytes:
    return data.replace(b"\x7d", b"\x7d\x01").replace(b"\x7e", b"\x7d\x02")


def _timezone(session: Session) -> tzinfo:
    value = session.options.get("timezone")
    if value is None or value == "":
        return DEFAULT_TIMEZONE
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return timezone(timedelta(hours=float(value)))
    text_value = str(value).strip()
    m = _TZ_OFFSET.match(text_value)
    if m is not None:
        minutes = int(m[2]) * 60 + int(m[3] or 0)
        return timezone(timedelta(minutes=-minutes if m[1] == "-" else minutes))
    try:
        return ZoneInfo(text_value)
    except (ZoneInfoNotFoundError, ValueError):
        return DEFAULT_TIMEZONE


def _bcd_time(r: Reader, zone: tzinfo) -> datetime:
    """BCD YYMMDDhhmmss in ``zone``, as UTC."""
    y, mo, d, h, mi, s = (bcd_int(r.take(1)) for _ in range(6))
    local = datetime(2000 + y, mo, d, h, mi, s, tzinfo=zone)
    return local.astimezone(UTC)


def _text(data: bytes, encoding: str = "ascii") -> str:
    return data.decode(encoding, errors="replace")


_CONTROL = "".join(map(chr, range(0x21)))  # what Java's trim() removes: controls and space


def _trim(value: str) -> str:
    return value.strip(_CONTROL)


@dataclass
class _Header:
    msg_id: int
    props: int
    version: int | None
    raw_id: bytes
    serial: int
    body: bytes
    intact: bool  # XOR and declared length agree with the bytes

    @property
    def body_length(self) -> int:
        return self.props & 0x3FF


@dataclass
class _Record:
    """A record in the making, set with the reference's attribute names (see ``_TYPED``)."""

    fields: dict[str, Any] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)
    alarms: list[str] = field(default_factory=list)
    fix_time: datetime | None = None

    def set(self, key: str, value: Any) -> None:
        if value is None:
            return
        typed = _TYPED.get(key)
        if typed is None:
            self.attributes[key] = value
        else:
            self.fields[typed[0]] = typed[1](value)

    def alarm(self, name: str | None) -> None:
        if name and name not in self.alarms:
            self.alarms.append(name)

    def has(self, key: str) -> bool:
        return key in self.attributes


class Jt808Protocol(Protocol):
    name = "jt808"
    port = 5015
    transports = frozenset({"tcp"})
    max_frame = 8192  # a 1023-byte body, escaped, is at most ~2 KiB; batches are a few of those

    # Framing --------------------------------------------------------------------------

    def split(self, buffer: bytes) -> tuple[bytes | None, int]:
        first = buffer[0]
        if first == 0x28:  # "(": the vendor text form
            end = buffer.find(b")", 1, self.max_frame)
            if end >= 0:
                return buffer[: end + 1], end + 1
            if len(buffer) >= self.max_frame:
                raise self.too_long(buffer)
            return None, 0
        if first != DELIMITER:
            starts = [i for i in (buffer.find(b"\x7e"), buffer.find(b"(")) if i >= 0]
            return None, (min(starts) if starts else len(buffer))
        end = buffer.find(b"\x7e", 1, self.max_frame)
        if end < 0:
            if len(buffer) >= self.max_frame:
                raise self.too_long(buffer)
            return None, 0
        if end == 1:
            return None, 1  # "7E 7E": the end of a frame we lost, then a start
        return b"\x7e" + unescape(buffer[1:end]) + b"\x7e", end + 1

    # Decoding -------------------------------------------------------------------------

    def decode(self, frame: bytes, session: Session) -> DecodeResult:
        previous = session.device
        try:
            if frame[:1] == b"(":
                return self._text_frame(frame, session)
            return self._decode(frame, session)
        except DecodeError:
            session.device = previous
            raise
        except (ValueError, IndexError, OverflowError, UnicodeError) as exc:
            session.device = previous
            raise self.error(f"malformed message: {exc}", frame) from exc

    def _header(self, frame: bytes) -> _Header:
        if len(frame) < 2 or frame[0] != DELIMITER:
            raise self.error("no 7E delimiter", frame)
        inner = frame[1:-1] if frame[-1] == DELIMITER and len(frame) > 1 else frame[1:]
        candidates = [inner]
        if b"\x7d" in inner:
            candidates.append(unescape(inner))  # a frame still escaped (not through our framer)
        parsed = [self._parse_header(candidate, frame) for candidate in candidates]
        for header in parsed:
            if header.intact:
                return header
        return parsed[0]

    def _parse_header(self, inner: bytes, frame: bytes) -> _Header:
        r = Reader(inner, self.name)
        msg_id, props = r.u16(), r.u16()
        version = r.u8() if _bit(props, 14) else None
        raw_id = r.take(10 if version is not None else 6)
        serial = r.u8() if msg_id in (MSG_LOCATION_REPORT_2, MSG_LOCATION_REPORT_BLIND) else r.u16()
        if _bit(props, 13):
            r.skip(4)  # packet count and index of a sub-packaged message
        if r.remaining < 1:
            raise self.error("message ends before its checksum", frame)
        body = inner[r.pos:-1]
        intact = xor8(inner[:-1]) == inner[-1] and len(body) == props & 0x3FF
        return _Header(msg_id, props, version, raw_id, serial, body, intact)

    def _decode(self, frame: bytes, session: Session) -> DecodeResult:
        h = self._header(frame)
        device = decode_id(h.raw_id)
        session.device = device.lstrip("0") or device
        ctx = _Context(self, session, frame, h)
        result = ctx.dispatch()
        if not h.intact:
            for p in result.positions:
                p.attributes["crcMismatch"] = True
        return result

    def _text_frame(self, frame: bytes, session: Session) -> DecodeResult:
        sentence = _text(frame)
        if "BASE,2" in sentence:
            now = session.now().astimezone(UTC).strftime("%Y%m%d%H%M%S")
            return DecodeResult(reply=sentence.replace("TIME", now).encode("ascii", errors="replace"))
        position = self.position(session, session.now(), frame, attributes={"result": sentence})
        return DecodeResult([position])

    # Replies --------------------------------------------------------------------------

    @staticmethod
    def message(msg_id: int, h: _Header, data: bytes, short_serial: bool = False) -> bytes:
        """A platform message to the terminal of ``h``, checksummed, escaped and delimited."""
        props = len(data) | (0x4000 if h.version is not None else 0)
        out = msg_id.to_bytes(2, "big") + props.to_bytes(2, "big")
        if h.version is not None:
            out += bytes((h.version,))
        out += h.raw_id + (b"\x01" if short_serial else b"\x00\x00") + data
        return b"\x7e" + escape(out + bytes((xor8(out),))) + b"\x7e"

    def general_response(self, h: _Header, result: int = RESULT_SUCCESS) -> bytes:
        data = h.serial.to_bytes(2, "big") + h.msg_id.to_bytes(2, "big") + bytes((result,))
        return self.message(MSG_GENERAL_RESPONSE, h, data)


class _Context:
    """One message's decoding: the header, the session, and the per-device settings."""

    def __init__(self, protocol: Jt808Protocol, session: Session, frame: bytes, h: _Header) -> None:
        self.protocol = protocol
        self.session = session
        self.frame = frame
        self.h = h
        self.model = str(session.options.get("model") or "") or None
        self.zone = _timezone(session)

    def error(self, message: str) -> DecodeError:
        return self.protocol.error(message, self.frame)

    def record(self, rec: _Record, fix_time: datetime | None = None, **located: Any) -> Position:
        fields = {**rec.fields, **located}
        if rec.alarms:
            fields["alarm"] = ",".join(rec.alarms)
        when = fix_time or rec.fix_time or self.session.now()
        return self.protocol.position(self.session, when, self.frame, attributes=rec.attributes, **fields)

    def body(self) -> Reader:
        return Reader(self.h.body, self.protocol.name)

    # The messages ---------------------------------------------------------------------

    def dispatch(self) -> DecodeResult:
        h, p = self.h, self.protocol
        t = h.msg_id
        if t == MSG_TERMINAL_REGISTER:
            code = decode_id(h.raw_id).encode("ascii")
            reply = p.message(MSG_TERMINAL_REGISTER_RESPONSE, h, h.serial.to_bytes(2, "big") + b"\x00" + code)
            refusal = p.message(MSG_TERMINAL_REGISTER_RESPONSE, h,
                                h.serial.to_bytes(2, "big") + bytes((REGISTER_ALREADY_REGISTERED,)))
            return DecodeResult(reply=reply, refusal=refusal)
        if t == MSG_TERMINAL_AUTH:
            self.session.credential = self._auth_code()
            return DecodeResult(reply=p.general_response(h), refusal=p.general_response(h, RESULT_FAILURE))
        if t in _ACK_ONLY:
            return DecodeResult(reply=p.general_response(h))
        if t == MSG_HEARTBEAT:
            return DecodeResult(self._heartbeat(), p.general_response(h))
        if t == MSG_LOCATION_REPORT:
            return DecodeResult([self.location(self.body(), trailer=2)], p.general_response(h))
        if t == MSG_LOCATION_QUERY_RESPONSE:
            r = self.body()
            r.skip(2)  # the query's serial
            return DecodeResult([self.location(r, trailer=2)])
        if t in (MSG_LOCATION_REPORT_2, MSG_LOCATION_REPORT_BLIND):
            reply = p.message(MSG_GENERAL_RESPONSE_2, h, t.to_bytes(2, "big") + b"\x00", short_serial=True)
            return DecodeResult([self._location2(t)], reply if _bit(h.props, 15) else None)
        if t == MSG_LOCATION_BATCH_2 and h.body_length == 7:
            r = self.body()
            rec = _Record()
            rec.set("batteryLevel", r.u8())
            return DecodeResult([self.record(rec, _bcd_time(r, self.zone))], p.general_response(h))
        if t in (MSG_LOCATION_BATCH, MSG_LOCATION_BATCH_2):
            return DecodeResult(self._batch(t), p.general_response(h))
        if t == MSG_TIME_SYNC_REQUEST:
            now = self.session.now().astimezone(UTC)
            data = now.year.to_bytes(2, "big") + bytes((now.month, now.day, now.hour, now.minute, now.second,
                                                        RESULT_SUCCESS))
            return DecodeResult(reply=p.message(MSG_TIME_SYNC_RESPONSE, h, data))
        if t == MSG_TERMINAL_ATTRIBUTES:
            r = self.body()
            r.skip(2 + 5 + 20 + 7)  # terminal type, maker, model, terminal id
            rec = _Record()
            rec.set("iccid", r.take(10).hex())
            return DecodeResult([self.record(rec)], p.general_response(h))
        if t == MSG_REPORT_TEXT_MESSAGE:
            r = self.body()
            r.skip(1)  # encoding
            rec = _Record(attributes={"result": _text(r.rest(), "gbk")})
            return DecodeResult([self.record(rec)], p.general_response(h))
        if t == MSG_TEXT_MESSAGE_RESPONSE:
            r = self.body()
            r.skip(2)  # the answered serial
            rec = _Record(attributes={"result": _trim(_text(r.rest(), "utf-16-be"))})
            return DecodeResult([self.record(rec)])
        if t == MSG_ACCELERATION:
            return DecodeResult([self._acceleration()])
        if t == MSG_TRANSPARENT:
            transparent = self._transparent()
            return DecodeResult([transparent] if transparent is not None else [], p.general_response(h))
        if t == MSG_COMMAND_RESPONSE:
            r = self.body()
            rec = _Record(attributes={"result": _text(r.take(r.u32()))})
            return DecodeResult([self.record(rec)])
        if t == MSG_DRIVER_IDENTITY:
            return DecodeResult([self._driver_identity()])
        if t == MSG_PARAMETER_QUERY_RESPONSE:
            return DecodeResult([self._parameters()])
        if t in _NO_ANSWER or t >= 0x8000:
            return DecodeResult()
        return DecodeResult(reply=p.general_response(h, RESULT_NOT_SUPPORTED))

    def _auth_code(self) -> str | None:
        body = self.h.body
        if self.h.version is not None and body:
            code = body[1:1 + body[0]]  # 2019: u8 length, code, IMEI, software version
        else:
            code = body
        value = code.decode("latin-1").strip("\x00 ")
        return value or None

    def _heartbeat(self) -> list[Position]:
        if len(self.h.body) < 3:
            return []
        r = self.body()
        rec = _Record()
        rec.set("batteryLevel", r.u8())
        rec.set("rssi", r.u8())
        rec.set("status", r.u8())
        return [self.record(rec)]

    def _acceleration(self) -> Position:
        r = self.body()
        samples = []
        while r.remaining > 0:
            r.skip(6)  # time
            samples.append("[" + ",".join(str(self._signed_word(r)) for _ in range(3)) + "]")
        return self.record(_Record(attributes={"gSensor": "[" + ",".join(samples) + "]"}))

    @staticmethod
    def _signed_word(r: Reader) -> int:
        value = r.u16()
        return -(value & 0x7FFF) if _bit(value, 15) else value & 0x7FFF

    def _driver_identity(self) -> Position:
        r = self.body()
        rec = _Record()
        rec.set("cardStatus", r.u8())
        rec.fix_time = _bcd_time(r, self.zone)
        rec.set("cardResult", r.u8())
        rec.set("driver", _text(r.take(r.u8())))
        rec.set("cardCode", _trim(_text(r.take(20))))
        rec.set("cardAgency", _text(r.take(r.u8())))
        rec.set("cardValidity", r.take(4).hex())
        return self.record(rec)

    def _parameters(self) -> Position:
        r = self.body()
        r.skip(3)  # the answered serial, parameter count
        rec = _Record()
        while r.remaining >= 5:
            subtype, length = r.u32(), r.u8()
            if length > r.remaining:
                break
            value = r.sub(length)
            numbers = {0x0001: "heartbeatInterval", 0x0018: "port", 0x0027: "sleepReportInterval",
                       0x0028: "emergencyReportInterval", 0x0029: "defaultReportInterval",
                       0x0055: "overspeedThreshold", 0x0056: "speedLimitDuration"}
            if subtype in numbers and length >= 4:
                rec.set(numbers[subtype], value.u32())
            elif subtype in (0x0010, 0x0013, 0x0083):
                name = {0x0010: "apn", 0x0013: "server", 0x0083: "plateNumber"}[subtype]
                rec.set(name, _trim(_text(value.rest(), "gbk")))
            elif subtype == 0x0080 and length >= 4:
                rec.set("odometer", value.u32() * 100)
        return self.record(rec)

    # Locations ------------------------------------------------------------------------

    def _alarm_word(self, rec: _Record, value: int) -> None:
        model = self.model
        if model in PADLOCK_MODELS:
            if _bit(value, 0) or _bit(value, 4):
                rec.alarm("removing")
            if _bit(value, 1):
                rec.alarm("tampering")
            return
        if model in AOVX_MODELS:
            if _bit(value, 16):
                rec.alarm("movement")
            return
        for bits, name in (((0,), "sos"), ((1,), "overspeed"), ((2,), "fatigueDriving"), ((5, 6), "gpsAntennaCut"),
                           ((4, 9, 10, 11), "fault"), ((7, 18), "lowBattery"), ((8,), "powerOff"),
                           ((15,), "vibration"), ((16, 17), "tampering"), ((19,), "parking"), ((20,), "geofence"),
                           ((26,), "general"), ((28,), "movement")):
            if any(_bit(value, b) for b in bits):
                rec.alarm(name)
        if (_bit(value, 29) or _bit(value, 30)) and model != "VL300":
            rec.alarm("accident")

    def _coordinates(self, rec: _Record, r: Reader) -> dict[str, Any]:
        status = r.u32()
        rec.set("ignition", _bit(status, 0))
        if self.model == "G1C Pro":
            rec.set("motion", _bit(status, 4))
        rec.set("blocked", _bit(status, 10))
        if self.model in ("MV810G", "MV710G"):
            rec.set("door", _bit(status, 16))
        rec.set("charge", _bit(status, 26))
        lat, lon = r.u32() / 1e6, r.u32() / 1e6
        if lat > 90 or lon > 180:
            raise self.error(f"coordinates {lat:.6f},{lon:.6f} out of range")
        return {"valid": _bit(status, 1), "latitude": -lat if _bit(status, 2) else lat,
                "longitude": -lon if _bit(status, 3) else lon}

    def location(self, r: Reader, trailer: int) -> Position:
        """A 0200 location body (also in batches): base fields, then the TLV extras.

        ``trailer`` is how many bytes the reference's buffer still held after the body (its
        checksum and delimiter: 2 for a whole message, 0 for a batch item), which its
        length tests count."""
        rec = _Record()
        self._alarm_word(rec, r.u32())
        located = self._coordinates(rec, r)
        located["altitude_m"] = float(r.i16())
        located["speed_kmh"] = r.u16() / 10.0
        located["course"] = float(r.u16())
        try:
            fix_time: datetime | None = _bcd_time(r, self.zone)
        except ValueError:
            # No valid clock (all zeros before a first fix): what the report says about the unit is
            # kept as a status record at server time, without the coordinates it cannot place in time.
            fix_time, located = None, {}
        if r.remaining + trailer == 20:
            r.skip(4)  # remaining battery and mileage
            rec.set("odometer", r.u32() * 1000)
            rec.set("battery", r.u16() / 10.0)
            r.skip(4)  # area id
            rec.set("rssi", r.u8())
            return self.record(rec, fix_time, **located)
        network = _Network()
        while r.remaining + trailer > 2 and r.remaining >= 2:
            subtype, length = r.u8(), r.u8()
            end = r.pos + length
            if end > r.end:
                break
            try:
                end = _Extras(self, rec, network, r, subtype, length, end).read()
            except (ShortFrame, ValueError, IndexError):
                break  # a TLV we cannot read ends the extras (see Decisions)
            r.pos = end
        network.store(rec)
        return self.record(rec, fix_time, **located)

    def _location2(self, msg_id: int) -> Position:
        """0x5501/0x5502: BCD DDMMYY hhmmss, BCD lat (8 digits) and lon (9 digits) ddmm.mmmm with a
        flags nibble (bit 0 valid, 1 north, 2 east), BCD speed, course / 2, then vendor fields."""
        r = self.body()
        d, mo, y, h, mi, s = (bcd_int(r.take(1)) for _ in range(6))
        fix_time = utc(y, mo, d, h, mi, s)
        lat_raw = bcd_int(r.take(4))
        lon_bytes = r.take(5)
        lon_raw = bcd_int(bytes(lon_bytes[:4])) * 10 + (lon_bytes[4] >> 4)
        if lon_bytes[4] >> 4 > 9:
            raise ValueError(f"not BCD: {lon_bytes.hex()}")
        flags = lon_bytes[4] & 0x0F
        lat = lat_raw // 1_000_000 + (lat_raw % 1_000_000) / 10000.0 / 60.0
        lon = lon_raw // 1_000_000 + (lon_raw % 1_000_000) / 10000.0 / 60.0
        if lat > 90 or lon > 180:
            raise self.error(f"coordinates {lat:.6f},{lon:.6f} out of range")
        located: dict[str, Any] = {
            "latitude": lat if _bit(flags, 1) else -lat,
            "longitude": lon if _bit(flags, 2) else -lon,
            "speed_kmh": bcd_int(r.take(1)) * KNOTS_TO_KMH,  # the reference reads it as knots
            "course": r.u8() * 2.0,
            "valid": msg_id != MSG_LOCATION_REPORT_BLIND,
        }
        rec = _Record()
        rec.set("rssi", r.u8())
        rec.set("sat", r.u8())
        rec.set("odometer", r.u32() * 1000)
        battery = r.u8()
        if battery <= 100:
            rec.set("batteryLevel", battery)
        elif battery in (0xAA, 0xAB):
            rec.set("charge", True)
        cid, lac = r.u32(), r.u16()
        if cid > 0 and lac > 0:
            rec.set("network", {"cellTowers": [{"cellId": cid, "locationAreaCode": lac}]})
        product, status, alarm = r.u8(), r.u16(), r.u16()
        if product in (1, 2):
            if _bit(alarm, 0):
                rec.alarm("lowPower")
        elif product == 3:
            rec.set("blocked", _bit(status, 5))
            for index, name in ((0, "overspeed"), (1, "lowPower"), (2, "vibration"), (3, "lowBattery"),
                                (5, "geofenceEnter"), (6, "geofenceExit")):
                if _bit(alarm, index):
                    rec.alarm(name)
        rec.set("status", status)
        while r.remaining > 0:
            tag, length = r.u8(), r.u8()
            if tag == 0x02:
                located["altitude_m"] = float(r.i16())
            elif tag == 0x10:
                rec.set("wakeSource", r.u8())
            elif tag == 0x0B:
                self._lock_command(rec, r, length)
            elif tag == 0x0C:
                x, y_, z = (self._tilt(r.u16()) for _ in range(3))
                rec.set("tilt", f"[{x},{y_},{z}]")
            elif tag == 0xFC:
                rec.set("geofence", r.u8())
            else:
                r.skip(length)
        return self.record(rec, fix_time, **located)

    @staticmethod
    def _tilt(value: int) -> int:
        return value - 0x10000 if value > 0x8000 else value

    @staticmethod
    def _lock_command(rec: _Record, r: Reader, length: int) -> None:
        rec.set("lockCommand", r.u8())
        if 5 <= length <= 6:
            rec.set("lockCard", r.u32())
        elif length >= 7:
            rec.set("lockPassword", _text(r.take(6)))
        if length % 2 == 0:
            rec.set("unlockResult", r.u8())

    def _batch(self, msg_id: int) -> list[Position]:
        r = self.body()
        archive = False
        if msg_id == MSG_LOCATION_BATCH:
            r.skip(2)  # count
            archive = r.u8() > 0  # 0 normal, 1 blind-area (buffered) reports
        positions = []
        while r.remaining > 2:
            length = r.u8() if msg_id == MSG_LOCATION_BATCH_2 else r.u16()
            position = self.location(r.sub(length), trailer=0)
            if archive:
                position.attributes["archive"] = True
            positions.append(position)
        return positions

    # Transparent data (0x0900) -----------------------------------------------------------

    def _transparent(self) -> Position | None:
        r = self.body()
        kind = r.u8()
        if kind == 0x40:
            data = _trim(_text(r.rest()))
            rec = _Record()
            if data.startswith("GTSL"):
                values = data.split("|")
                if len(values) > 4:
                    rec.set("driverUniqueId", values[4])
            else:
                rec.set("data", data)
            return self.record(rec) if rec.attributes else None
        if kind == 0x41:
            rec = _Record()
            self.obd_rt(rec, _trim(_text(r.rest())))
            return self.record(rec)
        if kind == 0xF0:
            return self._can_record(r)
        if kind == 0xFF:
            fix_time = _bcd_time(r, self.zone)
            lat, lon = r.i32() / 1e6, r.i32() / 1e6
            if abs(lat) > 90 or abs(lon) > 180:
                raise self.error(f"coordinates {lat:.6f},{lon:.6f} out of range")
            return self.record(_Record(), fix_time, valid=True, latitude=lat, longitude=lon,
                               altitude_m=float(r.i16()), speed_kmh=r.u16() / 10.0, course=float(r.u16()))
        if kind == 0xF3:
            rec = _Record()
            while r.remaining > 2:
                subtype, length = r.u16(), r.u16()
                end = r.pos + length
                if subtype == 0x0002:
                    rec.set("collision", r.u16() / 256.0 / 100.0)
                elif subtype == 0x0006:
                    rec.fix_time = _bcd_time(r, self.zone)
                r.pos = min(end, r.end)
            return self.record(rec)
        if kind in (0x53, 0x54):
            return self._ble(kind, r)
        return None

    def obd_rt(self, rec: _Record, data: str) -> None:
        """``$OBD-RT,power,rpm,speed,throttle,load,coolant,fuel now,fuel avg,trip,odometer,trip fuel,fuel used``"""
        values = data.split(",")
        keys: list[tuple[str, Callable[[str], Any]]] = [
            ("power", float), ("rpm", float), ("obdSpeed", float), ("throttle", float), ("engineLoad", float),
            ("coolantTemp", int), ("fuelConsumption", float), ("fuelConsumption", float), ("tripOdometer", float),
            ("obdOdometer", float), ("tripFuelUsed", float), ("fuelUsed", float)]
        for (key, kind), value in zip(keys, values[1:], strict=False):
            if value.strip():
                rec.set(key, kind(value.strip()))

    def _can_record(self, r: Reader) -> Position | None:
        fix_time = _bcd_time(r, self.zone)
        rec = _Record()
        if r.u8() > 0:
            rec.set("archive", True)
        r.skip(1)  # vehicle type
        subtype = r.u8()
        located: dict[str, Any] = {}
        if subtype == 0x01:
            for _ in range(r.u8()):
                item, length = r.u16(), r.u8()
                self._can_item(rec, r, item, length)
            located = self._location_tail(rec, r)
        elif subtype == 0x02:
            codes = []
            for _ in range(r.u16()):
                r.skip(4)  # system id
                for _ in range(r.u16()):
                    r.skip(8)  # dtc, status
                    codes.append(_trim(_text(r.take(r.u16()))))
            rec.set("dtcs", " ".join(codes))
            located = self._location_tail(rec, r)
        elif subtype == 0x03:
            alarms = {0x01: "powerRestored", 0x02: "powerCut", 0x0E: "idle", 0x1A: "hardAcceleration",
                      0x1B: "hardBraking", 0x1C: "hardCornering", 0x1D: "laneChange", 0x1E: "laneChange",
                      0x1F: "laneChange", 0x23: "fatigueDriving", 0x25: "overspeed", 0x26: "accident",
                      0x27: "accident", 0x28: "accident", 0x31: "door", 0x32: "door"}
            for _ in range(r.u8()):
                item, length = r.u8(), r.u8()
                rec.alarm(alarms.get(item))
                r.skip(length)
            located = self._location_tail(rec, r)
        elif subtype == 0x04:
            trip = r.u8()
            rec.set("tripNumber", r.u32())
            r.skip(6)  # start time
            if trip == 0x02:
                r.skip(6 + 8 + 8 + 1)  # end time, start and end locations, location flags
                rec.set("idlingCount", r.u16())
                rec.set("idlingTime", r.u16())
                rec.set("tripOdometer", r.u16() * 100)
                rec.set("tripFuel", r.u16() / 100.0)
        elif subtype == 0x0B:
            if r.u8() > 0:
                rec.set("vin", _text(r.take(17)))
        elif subtype == 0x15:
            event = r.i32()
            named = {51: "hardAcceleration", 52: "hardBraking", 53: "hardCornering", 54: "laneChange", 56: "accident"}
            if event in named:
                rec.alarm(named[event])
            else:
                rec.set("event", event)
        else:
            return None
        return self.record(rec, fix_time, **located)

    def _location_tail(self, rec: _Record, r: Reader) -> dict[str, Any]:
        """The status word and coordinates some 0xF0 records end with (when they are there)."""
        if r.remaining < 12:
            return {}
        return self._coordinates(rec, r)

    @staticmethod
    def _can_item(rec: _Record, r: Reader, item: int, length: int) -> None:
        readers: dict[int, tuple[str, Callable[[Reader], Any]]] = {
            0x0102: ("odometer", lambda x: x.u32() * 100), 0x0528: ("odometer", lambda x: x.u32() * 100),
            0x0546: ("odometer", lambda x: x.u32() * 100), 0x0103: ("fuel", lambda x: x.u32() / 100.0),
            0x0111: ("fuelTemp", lambda x: x.u8() - 40), 0x012E: ("oilLevel", lambda x: x.u16() / 10.0),
            0x052A: ("fuel", lambda x: x.u16() / 100.0), 0x0105: ("fuelUsed", lambda x: x.u32() / 100.0),
            0x052C: ("fuelUsed", lambda x: x.u32() / 100.0), 0x014A: ("fuelConsumption", lambda x: x.u16() / 100.0),
            0x0537: ("fuelConsumption", lambda x: x.u16() / 100.0),
            0x0538: ("fuelConsumption", lambda x: x.u16() / 100.0),
            0x0539: ("fuelConsumption", lambda x: x.u16() / 100.0), 0x052B: ("fuel", lambda x: x.u8()),
            0x052D: ("coolantTemp", lambda x: x.u8() - 40), 0x052E: ("airTemp", lambda x: x.u8() - 40),
            0x0530: ("power", lambda x: x.u16() / 1000.0), 0x0535: ("obdSpeed", lambda x: x.u16() / 10.0),
            0x0536: ("rpm", lambda x: x.u16()), 0x053D: ("intakePressure", lambda x: x.u16() / 10.0),
            0x0544: ("liquidLevel", lambda x: x.u8()), 0x0547: ("throttle", lambda x: x.u8()),
            0x0548: ("throttle", lambda x: x.u8()),
        }
        if item in readers:
            key, read = readers[item]
            rec.set(key, read(r))
        elif item == 0xFEEC:
            rec.set("vin", _text(r.take(length)))
        elif length in (1, 2, 4):
            rec.set(f"io{item}", r.uint(length))
        else:
            r.skip(length)

    def _ble(self, kind: int, r: Reader) -> Position:
        rec = _Record()
        located = self._coordinates(rec, r)
        located["altitude_m"] = float(r.i16())
        located["speed_kmh"] = r.u16() / 10.0
        located["course"] = float(r.u16())
        fix_time = _bcd_time(r, self.zone)
        if kind == 0x53:
            r.skip(1)  # node count across all packets
            while r.remaining > 0:
                index = r.u8() + 1
                rec.set(f"tag{index}Mac", r.take(6).hex())
                rec.set(f"tag{index}Rssi", r.i8())
                rec.set(f"tag{index}Data", r.take(r.u8()).hex())
        else:
            while r.remaining > 0:
                mask = r.u16()
                r.skip(6)  # sample time
                if _bit(mask, 0):
                    rec.set("lightSensor", r.u16())
                if _bit(mask, 1):
                    rec.set("deviceTemp", r.i16() / 10.0)
                    rec.set("humidity", r.i16() / 10.0)
                if _bit(mask, 2):
                    rec.set("temp3", r.i16() / 10.0)
                if _bit(mask, 3):
                    r.skip(6)  # acceleration
                if _bit(mask, 4):
                    rec.set("airPressure", r.u16())
        return self.record(rec, fix_time, **located)


@dataclass
class _Network:
    towers: list[dict[str, int]] = field(default_factory=list)
    wifi: list[dict[str, Any]] = field(default_factory=list)

    def tower(self, mcc: int, mnc: int, lac: int, cid: int, rssi: int | None = None) -> None:
        cell = {"mobileCountryCode": mcc, "mobileNetworkCode": mnc, "locationAreaCode": lac, "cellId": cid}
        if rssi is not None:
            cell["signalStrength"] = rssi
        self.towers.append(cell)

    def store(self, rec: _Record) -> None:
        network: dict[str, Any] = {}
        if self.towers:
            network["cellTowers"] = self.towers
        if self.wifi:
            network["wifiAccessPoints"] = self.wifi
        if network:
            rec.set("network", network)


class _Extras:
    """One TLV of a location's extras (the reference decoder's ``switch (subtype)``)."""

    def __init__(self, ctx: _Context, rec: _Record, network: _Network, r: Reader, subtype: int, length: int,
                 end: int) -> None:
        self.ctx, self.rec, self.network, self.r = ctx, rec, network, r
        self.subtype, self.length, self.end = subtype, length, end

    def read(self) -> int:
        """Reads the TLV; returns where the next one starts."""
        handler = getattr(self, f"_x{self.subtype:02x}", None)
        if handler is not None:
            result = handler()
            if isinstance(result, int):
                return result
        return self.end

    # Handlers, named for the TLV id ---------------------------------------------------------

    def _x01(self) -> None:
        self.rec.set("odometer", self.r.u32() * 100)

    def _x02(self) -> None:
        fuel = self.r.u16()
        self.rec.set("fuel", fuel & 0x7FFF if _bit(fuel, 15) else fuel / 10.0)

    def _x06(self) -> None:
        self.rec.set("batteryLevel", self.r.u8())

    def _x0b(self) -> None:
        _Context._lock_command(self.rec, self.r, self.length)

    def _x14(self) -> None:
        self.rec.set("videoAlarm", self.r.u32())

    def _x25(self) -> None:
        self.rec.set("input", self.r.u32())

    def _x2b(self) -> None:
        self.rec.set("adc1", self.r.u16() / 100.0)
        self.rec.set("adc2", self.r.u16() / 100.0)

    _xa7 = _x2b

    def _x30(self) -> None:
        self.rec.set("rssi", self.r.u8())

    def _x31(self) -> None:
        self.rec.set("sat", self.r.u8())

    def _x33(self) -> None:
        if self.length == 1:
            self.rec.set("mode", self.r.u8())
            return
        value = _text(self.r.take(self.length))
        if value.startswith("*M00"):
            self.rec.set("battery", int(value[8:15][2:5]) / 100.0)

    def _x51(self) -> None:
        if self.length in (2, 16):
            for i in range(1, self.length // 2 + 1):
                value = self.r.u16()
                if value != 0xFFFF:
                    self.rec.set(f"temp{i}", -(value & 0x7FFF) / 10.0 if _bit(value, 15) else value / 10.0)

    def _x56(self) -> None:
        self.rec.set("batteryLevel", self.r.u8() * 10)

    def _x57(self) -> None:
        alarm = self.r.u16()
        for index, name in ((8, "hardAcceleration"), (9, "hardBraking"), (10, "hardCornering")):
            if _bit(alarm, index):
                self.rec.alarm(name)
        self.r.skip(2)  # external switch state
        alarm = self.r.u32()
        if self.ctx.model in ("MV810G", "MV710G") and _bit(alarm, 16):
            self.rec.alarm("door")

    def _x60(self) -> None:
        event = self.r.u16()
        self.rec.set("event", event)
        if 0x0061 <= event <= 0x0066:
            self.r.skip(6)  # lock id
            self.rec.set("driverUniqueId", _text(self.r.take(8)))

    def _x63(self) -> None:
        for i in range(1, self.length // 11 + 1):
            self.rec.set(f"lock{i}Id", self.r.take(6).hex())
            self.rec.set(f"lock{i}Battery", self.r.u16() / 1000.0)
            self.rec.set(f"lock{i}Seal", self.r.u8() == 0x31)
            self.r.skip(2)  # physical state, rssi

    def _x64(self) -> None:
        self.r.skip(5)  # alarm serial number, status
        self.rec.set("adasAlarm" if self.subtype == 0x64 else "dmsAlarm", self.r.u8())
        if self.length >= 47:
            self.r.pos = self.end - 16
            self.rec.set("alarmLabel", self.r.take(16).hex())

    _x65 = _x64

    def _x67(self) -> None:
        pass  # a padlock's password: not stored

    def _x68(self) -> None:
        self.rec.set("batteryLevel", self.r.u16() / 100.0)

    def _x69(self) -> None:
        self.rec.set("battery", self.r.u16() / 100.0)

    def _x70(self) -> None:
        self.r.skip(5)  # alarm serial number, status
        self.rec.alarm({0x01: "hardAcceleration", 0x02: "hardBraking", 0x03: "hardCornering",
                        0x16: "accident"}.get(self.r.u8()))

    def _x77(self) -> None:
        while self.r.pos < self.end:
            tyre = self.r.u8()
            self.rec.set(f"tire{tyre}SensorId", self.r.take(3).hex())
            self.rec.set(f"tire{tyre}Pressure", (self.r.u16() & 0x3FF) / 40.0)
            self.rec.set(f"tire{tyre}Temp", self.r.u8() - 50)
            self.rec.set(f"tire{tyre}Status", self.r.u8())

    def _x80(self) -> int:
        self.r.skip(1)  # content
        end = self.r.end  # the OBD block runs to the end of the body
        _obd_extension(self.rec, self.r, end)
        return end

    def _x82(self) -> None:
        self.rec.set("power", self.r.u16() / 10.0)

    def _x91(self) -> None:
        r, rec = self.r, self.rec
        rec.set("battery", r.u16() / 10.0)
        rec.set("rpm", r.u16())
        rec.set("obdSpeed", r.u8())
        rec.set("throttle", r.u8() * 100 // 255)
        rec.set("engineLoad", r.u8() * 100 // 255)
        rec.set("coolantTemp", r.u8() - 40)
        r.skip(2)
        rec.set("fuelConsumption", r.u16() / 100.0)
        r.skip(2 + 4 + 2)
        rec.set("fuelUsed", r.u16() / 100.0)

    def _x94(self) -> None:
        if self.length > 0:
            self.rec.set("vin", _text(self.r.take(self.length)))

    def _xac(self) -> None:
        self.rec.set("odometer", self.r.u32())

    def _xbc(self) -> None:
        self.rec.set("driver", _trim(_text(self.r.take(self.length))))

    def _xbd(self) -> None:
        self.rec.set("driverUniqueId", _text(self.r.take(self.length)))

    def _xd0(self) -> None:
        if _bit(self.r.u32(), 3):
            self.rec.alarm("vibration")

    def _xd3(self) -> None:
        self.rec.set("power", self.r.u16() / 10.0)

    def _xd4(self) -> None:
        r, rec, length = self.r, self.rec, self.length
        if length == 1:
            level = r.u8()
            if level == 0xFF:
                rec.set("charge", True)
            else:
                rec.set("batteryLevel", level)
        elif self.subtype == 0xE1 and length >= 12 and (length - 4) % 8 == 0:
            mcc, mnc = r.u16(), r.u16()
            while r.pos < self.end:
                lac, cid, rssi = r.u24(), r.u32(), r.u8()
                if 0 < lac <= 0xFFFF and cid <= 0xFFFFFFF:
                    self.network.tower(mcc, mnc, lac, cid, rssi)
        elif self.subtype == 0xE1 and length == 2:
            rec.set("power", r.u16() / 10.0)
        else:
            rec.set("driverUniqueId", str(r.u32()))

    _xe1 = _xd4
    _xe9 = _xd4

    def _xd5(self) -> None:
        r, rec = self.r, self.rec
        if self.length == 2:
            rec.set("battery", r.u16() / 100.0)
            return
        for i in range(1, r.u8() + 1):
            rec.set(f"lock{i}Id", r.take(5).hex())
            rec.set(f"lock{i}Card", r.take(5).hex())
            rec.set(f"lock{i}Battery", r.u8())
            rec.set(f"lock{i}Locked", not _bit(r.u16(), 5))

    def _xda(self) -> None:
        self.r.skip(2)  # string cut count
        status = self.r.u8()
        self.rec.set("string", _bit(status, 0))
        self.rec.set("motion", _bit(status, 2))
        self.rec.set("cover", _bit(status, 3))

    def _xe2(self) -> None:
        if self.ctx.model != "DT800":
            self.rec.set("fuel", self.r.u32() / 10.0)

    def _xe3(self) -> None:
        self.r.skip(1)
        self.rec.set("batteryLevel", self.r.u8())
        self.rec.set("battery", self.r.u16() / 100.0)

    def _xe4(self) -> None:
        if self.r.u8() == 0:
            self.rec.set("charge", True)
        self.rec.set("batteryLevel", self.r.u8())

    def _xe5(self) -> None:
        if self.length == 1:
            self.rec.set("motion", self.r.u8() == 1)

    def _xe6(self) -> None:
        r, length = self.r, self.length
        head = bytes(r.data[r.pos:r.pos + 7])
        if length >= 7 and head == b"$OBD-RT":
            self.ctx.obd_rt(self.rec, _text(r.take(length), "utf-8"))
        elif length >= 11 and length % 11 == 0:
            while r.pos < self.end:
                sensor = r.u8()
                r.skip(6)  # mac
                self.rec.set(f"temp{sensor}", _custom_double(r))
                self.rec.set(f"humidity{sensor}", _custom_double(r))

    def _xe7(self) -> None:
        if self.length == 8:
            alarm = self.r.u16()
            if _bit(alarm, 0):
                self.rec.alarm("vibration")
            if _bits(alarm, 1, 4):
                self.rec.alarm("sos")

    def _xe8(self) -> None:
        if self.ctx.model in JC_MODELS:
            _jimi_extension(self.rec, self.r, self.end)
        else:
            self.rec.set("lockStatus", self.r.u24())

    def _xea(self) -> None:
        if self.length <= 2:
            return
        r = self.r
        r.skip(1)  # extended info type
        while r.pos + 2 <= self.end:
            kind, length = r.u8(), r.u8()
            if r.pos + length > self.end:
                break
            end = r.pos + length
            if kind == 0x11:
                self.rec.set("externalAlarms", r.u16())
                self.rec.set("alarmThresholdType", r.u8())
            elif kind == 0x13:
                self.rec.set("externalIlluminance", r.u16())
            elif kind == 0x14:
                self.rec.set("externalAirPressure", r.u16())
            elif kind == 0x15:
                self.rec.set("externalHumidity", r.u16() / 10.0)
            elif kind == 0x16:
                self.rec.set("externalTemp", r.u16() / 10.0 - 50)
            r.pos = end

    def _xeb(self) -> None:
        r, length = self.r, self.length
        data = bytes(r.data[r.pos:self.end])
        if len(data) >= 2 and int.from_bytes(data[:2], "big") > 200 and (length - 3) % 5 == 0:
            mcc, mnc = r.u16(), r.u8()
            while r.pos < self.end:
                lac, cid, rssi = r.u16(), r.u16(), r.u8()
                self.network.tower(mcc, mnc, lac, cid, rssi)
        elif data and all(0x20 <= b < 0x7F for b in data):
            self.rec.set("timezone", data.decode("ascii"))
        else:
            _eb_blocks(self.rec, self.network, r, self.end)

    def _xed(self) -> None:
        self.rec.set("card", _trim(_text(self.r.take(self.length))))

    def _xee(self) -> None:
        if self.length == 6:
            self.rec.set("rssi", self.r.u8())
            self.rec.set("power", self.r.u16() / 1000.0)
            self.rec.set("battery", self.r.u16() / 1000.0)
            self.rec.set("sat", self.r.u8())

    def _xf0(self) -> None:
        r = self.r
        while r.pos < self.end:
            mcc, mnc, cid, lac = r.u16(), r.u16(), r.u32(), r.u32()
            self.network.tower(mcc, mnc, lac, cid, r.u8())

    def _xf1(self) -> None:
        self.rec.set("power", self.r.u32() / 1000.0)

    def _xf2(self) -> None:
        self.rec.set("versionFw", _text(self.r.take(self.length)))

    def _xf3(self) -> None:
        r, rec = self.r, self.rec
        if self.ctx.model in AOVX_MODELS:
            mask = r.u8()
            index = 0
            while r.pos < self.end:
                index += 1
                rec.set(f"tag{index}Mac", r.take(6).hex())
                rec.set(f"tag{index}Rssi", r.i8())
                if _bit(mask, 0):
                    rec.set(f"tag{index}Name", _trim(_text(r.take(10))))
                if _bit(mask, 1):
                    r.skip(2)  # firmware version
                if _bit(mask, 2):
                    rec.set(f"tag{index}Battery", r.u16() / 1000.0)
                if _bit(mask, 3):
                    rec.set(f"tag{index}Temp", r.i16() / 10.0)
                if _bit(mask, 4):
                    rec.set(f"tag{index}Humidity", r.i16() / 10.0)
                for bit, size in ((5, 6), (6, 2), (7, 2)):
                    if _bit(mask, bit):
                        r.skip(size)
            return
        obd: dict[int, tuple[str, Callable[[Reader], Any]]] = {
            0x0002: ("obdSpeed", lambda x: x.u16() / 10.0), 0x0003: ("rpm", lambda x: x.u16()),
            0x0004: ("power", lambda x: x.u16() / 1000.0), 0x0005: ("obdOdometer", lambda x: x.u32() * 100),
            0x0007: ("fuelConsumption", lambda x: x.u16() / 10.0), 0x0008: ("engineLoad", lambda x: x.u16() / 10.0),
            0x0009: ("coolantTemp", lambda x: x.u16() - 40), 0x000B: ("intakePressure", lambda x: x.u16()),
            0x000C: ("intakeTemp", lambda x: x.u16() - 40), 0x000D: ("intakeFlow", lambda x: x.u16()),
            0x000E: ("throttle", lambda x: x.u16() * 100 // 255), 0x0100: ("tripOdometer", lambda x: x.u16() / 10.0),
            0x0102: ("tripFuel", lambda x: x.u16() / 10.0), 0x0112: ("hardAccelerationCount", lambda x: x.u16()),
            0x0113: ("hardDecelerationCount", lambda x: x.u16()), 0x0114: ("hardCorneringCount", lambda x: x.u16()),
        }
        while r.pos < self.end:
            kind, length = r.u16(), r.u8()
            if kind in obd:
                key, read = obd[kind]
                rec.set(key, read(r))
            elif kind == 0x0050:
                rec.set("vin", _text(r.take(17)).strip("\x00"))
            elif kind == 0x0051 and length > 0:
                rec.set("cvn", r.take(length).hex())
            elif kind == 0x0052 and length > 0:
                rec.set("calid", _text(r.take(length)).strip("\x00"))
            else:
                r.skip(length)

    def _xec(self) -> None:
        r = self.r
        while r.pos < self.end:
            mac = r.take(6).hex()
            self.network.wifi.append({"macAddress": ":".join(mac[i:i + 2] for i in range(0, 12, 2)),
                                      "signalStrength": r.i8()})

    _xf4 = _xec

    def _xf5(self) -> None:
        if self.length == 2:
            self.rec.set("illuminance", self.r.u16())

    def _xf6(self) -> None:
        r, rec, aovx = self.r, self.rec, self.ctx.model in AOVX_MODELS
        if not aovx and self.length == 2:
            rec.set("airPressure", r.u16())
        elif not aovx and self.length == 8:
            rec.set("imei", r.take(8).hex()[1:])
        else:
            event = r.u8()
            rec.set("event", event)
            if event == 2:
                rec.set("motion", True)
            mask = r.u8()
            if _bit(mask, 0):
                rec.set("lightSensor", r.u16())
            if _bit(mask, 1):
                rec.set("temp1", r.i16() / 10.0)
            if _bit(mask, 2):
                rec.set("humidity", r.i16() / 10.0)
            if _bit(mask, 3):
                rec.set("gSensor", f"[{r.i16()},{r.i16()},{r.i16()}]")
            if _bit(mask, 4):
                r.skip(10)  # threshold configuration
            if _bit(mask, 5):
                rec.set("airPressure", r.u16())

    def _xf7(self) -> None:
        r, rec = self.r, self.rec
        if self.length == 2:
            rec.set("humidity", r.u16() / 10.0)
            return
        rec.set("battery", r.u32() / 1000.0)
        if self.length >= 5 and r.u8() in (2, 3):
            rec.set("charge", True)
        if self.length >= 6:
            rec.set("batteryLevel", r.u8())

    def _xf8(self) -> None:
        r, rec = self.r, self.rec
        if self.ctx.model in AOVX_MODELS:
            r.skip(1 + 8)  # working mode, imei
            rec.set("iccid", r.take(10).hex())
        elif self.ctx.model in ("C5", "C5L"):
            rec.set("steps", r.u16())
        else:
            rec.set("temp2", r.u16() / 10.0 - 50)

    def _xf9(self) -> None:
        r, rec = self.r, self.rec
        mask = r.u16()
        for bit, size in ((0, 4), (1, 4)):
            if _bit(mask, bit):
                r.skip(size)  # gnss age, acc on time
        if _bit(mask, 2):
            rec.set("hdop", r.u16() / 10.0)
        if _bit(mask, 3):
            r.skip(6)  # gnss time
        if _bit(mask, 5):
            r.skip(8)  # sampling and report interval
        if _bit(mask, 6):
            rec.set("temp3", r.i16() / 10.0)

    def _xfb(self) -> None:
        self.rec.set("container", _text(self.r.take(self.length)))

    def _xfc(self) -> None:
        self.rec.set("geofence", self.r.u8())

    def _xfe(self) -> None:
        r, rec, length = self.r, self.rec, self.length
        if length == 1:
            rec.set("batteryLevel", r.u8())
        elif length == 2:
            rec.set("power", r.u16() / 10.0)
        elif length == 4:
            rec.set("odometer", r.u32())
        else:
            if r.u8() == 0x7C:
                while r.pos < self.end:
                    kind, size = r.u8(), r.u8()
                    if kind == 0x01:
                        alarms = r.u32()
                        for bit, name in ((0, "hardAcceleration"), (1, "hardBraking"), (2, "hardCornering"),
                                          (3, "accident"), (4, "tampering")):
                            if _bit(alarms, bit):
                                rec.alarm(name)
                    else:
                        r.skip(size)
            rec.set("batteryLevel", r.u8())


def _custom_double(r: Reader) -> float:
    whole, fraction = r.i8(), r.u8()
    sign = -1 if whole < 0 else 1
    return sign * (abs(whole) + fraction / 255.0)


def _obd_extension(rec: _Record, r: Reader, end: int) -> None:
    """The 0x80 block's own TLVs (the reference's decodeExtension)."""
    readers: dict[int, tuple[str, Callable[[Reader], Any]]] = {
        0x01: ("odometer", lambda x: x.u32() * 100), 0x02: ("fuel", lambda x: x.u16() / 10.0),
        0x03: ("obdSpeed", lambda x: x.u16() / 10.0), 0x61: ("power", lambda x: x.u16() / 100.0),
        0x69: ("battery", lambda x: x.u16() / 100.0), 0x80: ("obdSpeed", lambda x: x.u8()),
        0x81: ("rpm", lambda x: x.u16()), 0x82: ("power", lambda x: x.u16() / 10.0),
        0x83: ("engineLoad", lambda x: x.u8()), 0x84: ("coolantTemp", lambda x: x.u8() - 40),
        0x85: ("fuelConsumption", lambda x: x.u16()), 0x86: ("intakeTemp", lambda x: x.u8() - 40),
        0x87: ("intakeFlow", lambda x: x.u16()), 0x88: ("intakePressure", lambda x: x.u8()),
        0x89: ("throttle", lambda x: x.u8()), 0x8C: ("obdOdometer", lambda x: x.u32() * 100),
        0x8D: ("tripOdometer", lambda x: x.u16() * 1000), 0x8E: ("fuel", lambda x: x.u8()),
    }
    while r.pos < end:
        kind, length = r.u8(), r.u8()
        if kind in readers:
            key, read = readers[kind]
            rec.set(key, read(r))
        elif kind == 0x56:
            r.skip(1)  # power level
            rec.set("batteryLevel", r.u8())
        elif kind == 0x8B:
            rec.set("vin", _text(r.take(17)))
        elif kind == 0xA0:
            rec.set("dtcs", _text(r.take(length)).replace(",", " "))
        elif kind == 0xCC:
            rec.set("iccid", _text(r.take(20)))
        else:
            r.skip(length)


def _jimi_extension(rec: _Record, r: Reader, end: int) -> None:
    """0xE8 on Jimi JC cameras: an extended type, then its data."""
    kind = r.u16()
    if kind == 0x2002:
        r.skip(1)
        rec.set("uploadMode", r.u8())
        rec.set("buffered", r.u8() == 1)
    elif kind == 0x2003:
        r.skip(1)
        rec.set("charge", r.u8() == 1)
        status = r.u8()
        if 1 <= status <= 6:
            rec.set("batteryLevel", status * 100 // 6)
        rec.set("battery", r.u16() / 100.0)
        rec.set("rssi", r.u8())
        rec.set("power", r.u16() / 100.0)
    elif kind == 0x2005:
        r.skip(1)
        while r.pos < end:
            status_id, length = r.u16(), r.u8()
            status_end = r.pos + length
            if status_id == 0x0001:
                rec.set("battery", r.u16() / 100.0)
            elif status_id == 0x0002:
                rec.set("dataUsage", r.u32())
            elif status_id == 0x0003:
                rec.set("batteryLevel", r.u8())
            elif status_id == 0x0004:
                rec.set("charge", r.u8() == 0)
            elif status_id == 0x0005:
                rec.set("iccid", r.take(10).hex()[:19])
            elif status_id == 0x0007:
                rec.set("hdop", r.u16() / 10.0)
            elif status_id == 0x2001:
                rec.set("power", r.u16() / 10.0)
            r.pos = status_end
    else:
        events = {
            0x0001: "fault", 0x0400: "hardAcceleration", 0x0412: "hardAcceleration", 0x0401: "hardBraking",
            0x0413: "hardBraking", 0x0402: "hardCornering", 0x0414: "hardCornering", 0x0403: "overspeed",
            0x0405: "accident", 0x0416: "accident", 0x0417: "accident", 0x0406: "vibration", 0x0407: "tow",
            0x0408: "geofenceEnter", 0x0409: "geofenceExit", 0x040C: "door", 0x0415: "laneChange", 0x0C01: "sos",
            0x0C02: "lowPower", 0x0C05: "general", 0x0C0E: "powerCut", 0x0C0F: "lowBattery", 0x0C10: "powerOff",
            0x0C12: "tampering",
        }
        if kind in (0x0C03, 0x0C04):
            rec.set("ignition", kind == 0x0C03)
        else:
            rec.alarm(events.get(kind))


def _eb_blocks(rec: _Record, network: _Network, r: Reader, end: int) -> None:
    """0xEB vendor blocks: u16 length, u16 id, data."""
    while r.pos < end:
        length = r.u16()
        block_end = r.pos + length
        kind = r.u16()
        if kind == 0x0001:
            rec.set("fuel1", r.u16() / 10.0)
        elif kind == 0x0023:
            rec.set("fuel2", float(_text(r.take(6))))
        elif kind == 0x002D:
            if length == 6:
                rec.set("power", r.u32() / 1000.0)
            else:
                rec.set("battery", r.u16() / 1000.0)
        elif kind == 0x0089:
            alarm = r.u32()
            if not _bit(alarm, 0):
                rec.alarm("powerOff")
            if not _bit(alarm, 12):
                rec.alarm("removing")
        elif kind == 0x00B2:
            rec.set("iccid", r.take(10).hex().rstrip("f"))
        elif kind == 0x00B9:
            r.skip(1)  # count
            wifi = _text(r.take(length - 3)).split(",")
            for i in range(len(wifi) // 2):
                network.wifi.append({"macAddress": wifi[i * 2], "signalStrength": int(wifi[i * 2 + 1])})
        elif kind == 0x00C5:
            alarm = r.u32()
            if not _bit(alarm, 6):
                rec.alarm("vibration")
            motion = _bits(alarm, 23, 25)
            if motion in (0, 1):
                rec.set("motion", motion == 0)
        elif kind == 0x00C6:
            battery_alarm = r.u8()
            if battery_alarm in (0x03, 0x04):
                rec.alarm("lowBattery")
            rec.set("batteryAlarm", battery_alarm)
        elif kind == 0x00CE:
            rec.set("power", r.u16() / 100.0)
        elif kind == 0x00D8:
            mcc, mnc, lac, cid = r.u16(), r.u8(), r.u16(), r.u32()
            network.tower(mcc, mnc, lac, cid)
        elif kind in (0x00A8, 0x00E1):
            rec.set("batteryLevel", r.u8())
        r.pos = block_end


# Encoders for tests and the device simulator ---------------------------------------------


def encode_id(device: str) -> bytes:
    """A terminal number as BCD: 6 bytes (12 digits), or 10 (the 2019 edition) for a longer one."""
    width = 12 if len(device) <= 12 else 20
    digits = device.rjust(width, "0")
    if len(digits) > 20 or not digits.isdigit():
        raise ValueError(f"jt808: terminal number {device!r} is not up to 20 digits")
    return bytes.fromhex(digits)


def encode_message(msg_id: int, device: str, serial: int, body: bytes) -> bytes:
    """A terminal message (2013 edition; 2019 for numbers over 12 digits, e.g. an IMEI): header,
    body, XOR, escaped between 7E delimiters."""
    if len(body) > 0x3FF:
        raise ValueError(f"jt808: a body of {len(body)} bytes does not fit the 10-bit length (1023 at most)")
    raw_id = encode_id(device)
    long_id = len(raw_id) == 10
    out = msg_id.to_bytes(2, "big") + (len(body) | (0x4000 if long_id else 0)).to_bytes(2, "big")
    out += (b"\x01" if long_id else b"") + raw_id + (serial & 0xFFFF).to_bytes(2, "big") + body
    return b"\x7e" + escape(out + bytes((xor8(out),))) + b"\x7e"


def encode_login(device: str, sequence: int = 0) -> bytes:
    """A 0100 registration (province, city, maker, model, terminal id, plate colour and plate)."""
    body = (b"\x00\x2c\x01\x2f" + b"AVLSM" + b"SIM-808".ljust(20, b"\x00") + device[-7:].rjust(7, "0").encode()
            + b"\x01" + b"AB123CD")
    return encode_message(MSG_TERMINAL_REGISTER, device, sequence, body)


def encode_auth(device: str, code: str, sequence: int = 1) -> bytes:
    """A 0102 authentication with ``code`` (2013: the body is the code; 2019: its length, the code,
    the IMEI and the software version)."""
    raw = code.encode("latin-1")
    if len(device) > 12:
        raw = bytes((len(raw),)) + raw + device[-15:].rjust(15, "0").encode() + b"1.0".ljust(20, b"\x00")
    return encode_message(MSG_TERMINAL_AUTH, device, sequence, raw)


def encode_heartbeat(device: str, sequence: int = 0) -> bytes:
    return encode_message(MSG_HEARTBEAT, device, sequence, b"")


def _bcd_now(moment: datetime) -> bytes:
    local = moment.astimezone(DEFAULT_TIMEZONE)
    return bytes.fromhex(local.strftime("%y%m%d%H%M%S"))


def location_body(p: Position) -> bytes:
    """A 0200 body: alarm word (bit 0 for an SOS), status (ACC, fix, hemispheres), coordinates,
    altitude, speed, course, GMT+8 time, then odometer (0x01), satellites (0x31) and supply
    voltage (0xF1, mV) extras."""
    lat, lon = p.latitude or 0.0, p.longitude or 0.0
    alarm = 1 if p.alarm == "sos" else 0
    status = (1 if p.ignition else 0) | (2 if p.valid else 0) | (4 if lat < 0 else 0) | (8 if lon < 0 else 0)
    body = alarm.to_bytes(4, "big") + status.to_bytes(4, "big")
    body += round(abs(lat) * 1e6).to_bytes(4, "big") + round(abs(lon) * 1e6).to_bytes(4, "big")
    body += max(-0x8000, min(0x7FFF, round(p.altitude_m or 0))).to_bytes(2, "big", signed=True)
    body += min(0xFFFF, round((p.speed_kmh or 0.0) * 10)).to_bytes(2, "big")
    body += min(0xFFFF, round(p.course or 0)).to_bytes(2, "big") + _bcd_now(p.fix_time)
    if p.odometer_m is not None:
        body += b"\x01\x04" + min(0xFFFFFFFF, p.odometer_m // 100).to_bytes(4, "big")
    if p.satellites is not None:
        body += b"\x31\x01" + bytes((min(255, p.satellites),))
    if p.power_mv is not None:
        body += b"\xf1\x04" + min(0xFFFFFFFF, max(0, p.power_mv)).to_bytes(4, "big")
    return body


def encode_position(p: Position, sequence: int = 0) -> bytes:
    """A 0200 location report for ``p``; the server answers 8001 echoing ``sequence``."""
    return encode_message(MSG_LOCATION_REPORT, p.device, sequence, location_body(p))


def encode_batch(positions: list[Position], sequence: int = 0, buffered: bool = True) -> bytes:
    """A 0704 batch of location reports (type 1: blind-area, buffered)."""
    body = len(positions).to_bytes(2, "big") + (b"\x01" if buffered else b"\x00")
    for p in positions:
        item = location_body(p)
        body += len(item).to_bytes(2, "big") + item
    return encode_message(MSG_LOCATION_BATCH, positions[0].device, sequence, body)


def decode_reply(frame: bytes) -> tuple[int, int, bytes]:
    """A platform message's (message id, platform serial, body), from one framed reply."""
    inner = unescape(frame.strip(b"\x7e"))
    if len(inner) < 13 or xor8(inner[:-1]) != inner[-1]:
        raise ValueError(f"jt808: not a platform message: {frame[:32].hex()}")
    props = int.from_bytes(inner[2:4], "big")
    offset = 4 + (1 if _bit(props, 14) else 0) + (10 if _bit(props, 14) else 6)
    return int.from_bytes(inner[0:2], "big"), int.from_bytes(inner[offset:offset + 2], "big"), inner[offset + 2:-1]


PROTOCOL = Jt808Protocol()
