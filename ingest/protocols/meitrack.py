"""Meitrack (MVT/T/TC/P series): ``$$`` text reports (AAA), binary buffered reports (CCC, CCE),
photo transfer (D03/D00) and command results (D82), over TCP and UDP.

Frame (every command)
    ``$$`` | flag (1 char) | length (decimal) | ``,`` IMEI ``,`` command (3 chars) ``,`` body
    ``*`` | checksum (2 hex, sum mod 256 of every byte up to and including ``*``) | ``\\r\\n``
    The length counts from the first ``,`` through the CRLF.

AAA / AFF text report (comma separated, after ``<cmd>,`` and an optional numeric field for AFF)
    event | lat deg | lon deg | yymmddhhmmss UTC | A/V | sats | GSM signal | speed km/h | course |
    HDOP | altitude m | odometer m | runtime s | MCC|MNC|LAC|CI (LAC/CI hex) | IO (input hex byte,
    output hex byte) | analog: ``adc1|adc2|adc3|battery|power`` hex (scaling per model) or
    ``battery|power|rtc|mcu|gps`` decimal volts | [event data, reserved, protocol, fuel (4 hex),
    temperatures (``iivvvv|...``), data count, data fields]

CCC binary report (little-endian): 2 bytes version | 2 bytes | 4 bytes, then 52-byte records
    u8 event | i32 lat*1e6 | i32 lon*1e6 | u32 seconds since 2000-01-01 | u8 valid (1) | u8 sats |
    u8 GSM signal | u16 km/h | u16 course | u16 HDOP*10 | i16 altitude m | u32 odometer m |
    u32 runtime s | u16 MCC, MNC, LAC, CI | u16 status | u16 adc1 | u16 battery 10 mV |
    u16 power 10 mV | u32 geofence
    reply: ``@@<flag><len>,<imei>,CCC,<records>*<cs>\\r\\n`` (the device then deletes them)

CCE binary report (little-endian): u32 records still cached | u16 record count, then per record
    u16 length (of what follows) | u16 index | four tagged groups, each a u8 count of
    (ID, value) pairs with 1-, 2-, 4-byte values, then ID + u8 length + bytes. An ID byte 0xFE
    starts a two-byte extended ID (0xFEnn). No reply.

Replies: CCC as above; AAC (keep-alive) -> ``@@z27,<imei>,AAC,1*<cs>\\r\\n``; D03 (photo taken)
    -> request chunk 0 of ``camera_picture.jpg``; D00 (photo chunk) -> every 8th chunk requests
    the next one: ``@@O<len>,<imei>,D00,<file>,<index>*<cs>\\r\\n``. AAA and CCE get no reply.

Decisions
    * Checksum mismatch: the frame still decodes and every record gets
      ``attributes["crcMismatch"] = True`` (the reference server never checks it).
    * CCC/CCE event codes map to alarms like AAA events (the reference server only does it for
      AAA); CCE HDOP (tag 0x0A) is in 0.1 units, as in CCC; CCC power is in 10 mV like the battery;
      CCE tag 0x9B (OBD odometer) goes to ``obdOdometer`` rather than overwriting the GPS odometer.
    * Framing uses the declared length; when it does not land on a CRLF (some units miscount
      it), a text frame ends at its first ``*<cs>\r\n`` and a binary one at the declared length.
      CCC altitude is read signed (the reference reads it unsigned).
    * A completed photo (last D00 chunk) yields a status record whose ``image`` is the device's
      file name; the picture bytes are not kept (there is no media store).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar

from avl.records import Position
from ingest.protocols.base import DecodeError, DecodeResult, FrameError, Protocol, Session, utc
from ingest.protocols.reader import Reader, ShortFrame

MEITRACK_EPOCH = utc(2000, 1, 1)
_PHOTO_STATE = "meitrack.photo"

_HEADER = re.compile(rb"\$\$(.)(\d{1,5}),")
_TRAILER = re.compile(rb"\*[0-9A-Fa-f]{2}\r\n")
_BINARY_COMMANDS = frozenset({b"CCC", b"CCE", b"D00"})

_H = "[0-9A-Fa-f]"
_AAA = re.compile(
    r"\$\$.\d+,"
    r"(?P<imei>\d+),"
    rf"{_H}{{3}},"
    r"(?:\d+,)?"
    r"(?P<event>\d+),"
    r"(?P<lat>-?\d+\.\d+),"
    r"(?P<lon>-?\d+\.\d+),"
    r"(?P<yy>\d\d)(?P<mo>\d\d)(?P<dd>\d\d)(?P<hh>\d\d)(?P<mi>\d\d)(?P<ss>\d\d),"
    r"(?P<valid>[AV]),"
    r"(?P<sat>\d+),"
    r"(?P<rssi>\d+),"
    r"(?P<speed>\d+\.?\d*),"
    r"(?P<course>\d+),"
    r"(?P<hdop>\d+\.?\d*),"
    r"(?P<alt>-?\d+),"
    r"(?P<odometer>\d+),"
    r"(?P<runtime>\d+),"
    rf"(?P<mcc>\d+)\|(?P<mnc>\d+)\|(?P<lac>{_H}+)?\|(?P<cid>{_H}+)?,"
    rf"(?P<input>{_H}{{2}})(?P<output>{_H}{{2}}),"
    r"(?:(?P<vbat>\d+\.\d+)\|(?P<vpow>\d+\.\d+)\|\d+\.\d+\|\d+\.\d+\|\d+\.\d+,"
    rf"|(?P<adc1>{_H}+)?\|(?P<adc2>{_H}+)?\|(?P<adc3>{_H}+)?\|(?P<bat>{_H}+)\|(?P<pow>{_H}+)?,)"
    r"(?:(?:(?P<event_data>[^,]+)?,)?[^,]*,(?P<protocol>\d+)?,"
    rf"(?P<fuel>{_H}{{4}})?"
    rf"(?:,(?P<temps>{_H}{{6}}(?:\|{_H}{{6}})*)?(?:,(?P<count>\d+),(?P<data>[^*]*))?)?"
    r"|.*)"
    rf"\*{_H}{{2}}",
    re.DOTALL,
)

_ALARMS: dict[int, str] = {
    1: "sos",
    17: "lowBattery",
    18: "lowPower",
    19: "overspeed",
    20: "geofenceEnter",
    21: "geofenceExit",
    22: "powerRestored",
    23: "powerCut",
    36: "tow",
    44: "jamming",
    78: "accident",
    90: "cornering",
    91: "cornering",
    129: "hardBraking",
    130: "hardAcceleration",
    135: "fatigueDriving",
}

# Hex analog scaling of the AAA report, per model (battery factor, power factor) in volts per unit.
_ANALOG_SCALE: dict[str, tuple[float, float]] = {
    **dict.fromkeys(("MVT340", "MVT380"), (3.0 * 2.0 / 1024.0, 3.0 * 16.0 / 1024.0)),
    "MT90": (3.3 * 2.0 / 4096.0, 1.0),
    **dict.fromkeys(("T1", "T3", "MVT100", "MVT600", "MVT800", "TC68", "TC68S"),
                    (3.3 * 2.0 / 4096.0, 3.3 * 16.0 / 4096.0)),
}
_DEFAULT_SCALE = (0.01, 0.01)


def checksum(data: bytes) -> bytes:
    """The two uppercase hex digits of the sum mod 256 of ``data``."""
    return b"%02X" % (sum(data) & 0xFF)


def build_frame(prefix: bytes, flag: bytes, imei: str, body: bytes) -> bytes:
    """``<prefix><flag><len>,<imei>,<body>*<cs>\\r\\n`` with a correct length and checksum."""
    tail = b"," + imei.encode("ascii") + b"," + body + b"*"
    length = len(tail) + 2 + 2  # checksum digits and CRLF
    head = prefix + flag + str(length).encode("ascii")
    return head + tail + checksum(head + tail) + b"\r\n"


# A CCC record (52 bytes, the last 4 unused): event, lat, lon, time, valid, satellites, rssi, speed,
# course, hdop, altitude, odometer, runtime, mcc, mnc, lac, cid, status, adc1, battery, power.
_CCC_RECORD = struct.Struct("<BiiIBBBHHHhII8H")


def _reader(data: bytes) -> Reader:
    return Reader(data, "meitrack", little=True)


def _tag(r: Reader) -> int:
    """A CCE parameter ID: one byte, or 0xFE plus one more (big-endian 0xFEnn)."""
    first = r.u8()
    return (first << 8) | r.u8() if first == 0xFE else first


@dataclass(slots=True)
class _Frame:
    flag: bytes
    imei: str
    command: str
    body: bytes  # after "<cmd>," up to (not including) "*<cs>"
    crc_ok: bool
    has_checksum: bool


class MeitrackProtocol(Protocol):
    name: ClassVar[str] = "meitrack"
    port: ClassVar[int] = 5020
    transports: ClassVar[frozenset[str]] = frozenset({"tcp", "udp"})
    max_frame: ClassVar[int] = 8192

    # Framing ------------------------------------------------------------------------

    def split(self, buffer: bytes) -> tuple[bytes | None, int]:
        start = buffer.find(b"$$")
        if start < 0:
            # Keep a trailing "$" that may begin the next frame.
            skip = len(buffer) - 1 if buffer.endswith(b"$") else len(buffer)
            return None, skip
        if start > 0:
            return None, start
        match = _HEADER.match(buffer)
        if match is None:
            if len(buffer) < 9 and re.fullmatch(rb"\$\$(.\d{0,5})?", buffer, re.DOTALL):
                return None, 0
            return None, 2  # "$$" not followed by a flag, a length and a comma: resync
        comma = match.end() - 1
        total = comma + int(match.group(2))
        if total > self.max_frame:
            raise FrameError(self.name, f"declared frame length {total} exceeds {self.max_frame} bytes",
                             buffer[:64])
        if total < comma + 10:
            return None, 2  # too short to hold ",<imei>,<cmd>*cs\r\n": not a frame start
        if len(buffer) >= total and buffer[total - 2:total] == b"\r\n":
            return buffer[:total], total
        # The declared length does not land on a CRLF (some units miscount it). A text frame ends
        # at its first "*<cs>\r\n"; a binary one (CCC, CCE, D00) is cut at its declared length.
        imei_end = buffer.find(b",", comma + 1, comma + 32)
        command = buffer[imei_end + 1:imei_end + 4] if imei_end > 0 else b""
        if len(command) == 3 and command not in _BINARY_COMMANDS:
            trailer = _TRAILER.search(buffer, comma, self.max_frame)
            if trailer is not None:
                return buffer[:trailer.end()], trailer.end()
        if len(buffer) < total:
            return None, 0
        return buffer[:total], total

    # Decoding -----------------------------------------------------------------------

    def decode(self, frame: bytes, session: Session) -> DecodeResult:
        try:
            return self._decode(frame, session)
        except ShortFrame as exc:  # its bytes are the binary body: name the frame instead
            raise self.error(exc.message, frame) from None
        except DecodeError:
            raise
        except (IndexError, ValueError, struct.error, OverflowError) as exc:
            raise self.error(f"malformed frame: {exc}", frame) from exc

    def _decode(self, frame: bytes, session: Session) -> DecodeResult:
        parsed = self._parse_envelope(frame)
        session.device = parsed.imei
        command = parsed.command
        if command == "CCC":
            result = self._decode_ccc(parsed, frame, session)
        elif command == "CCE":
            result = self._decode_cce(parsed, frame, session)
        elif command == "AAC":
            body = b"AAC,1"
            reply = build_frame(b"@@", b"z", parsed.imei, body)
            result = DecodeResult(reply=reply)
        elif command == "D03":
            session.state[_PHOTO_STATE] = {"file": "camera_picture.jpg", "size": 0}
            result = DecodeResult(reply=self._photo_request(parsed.imei, "camera_picture.jpg", 0))
        elif command == "D00":
            result = self._decode_photo_chunk(parsed, frame, session)
        elif command == "D82":
            record = self.position(session, session.now(), frame)
            record.attributes["result"] = "D82," + parsed.body.decode("latin-1")  # as the reference server
            result = DecodeResult([record])
        else:
            result = self._decode_text(parsed, frame, session)
        if not parsed.crc_ok:
            for p in result.positions:
                p.attributes["crcMismatch"] = True
        return result

    def _parse_envelope(self, frame: bytes) -> _Frame:
        data = frame
        if data.endswith(b"\r\n"):
            data = data[:-2]
        elif data.endswith((b"\r", b"\n")):
            data = data[:-1]
        match = _HEADER.match(data)
        if match is None:
            raise self.error("not a Meitrack frame (expected $$<flag><length>,)", frame)
        imei_end = data.find(b",", match.end())
        if imei_end < 0:
            raise self.error("truncated frame: no command field", frame)
        imei = data[match.end():imei_end]
        if not imei.isdigit() or len(imei) > 20:
            raise self.error(f"bad IMEI field {imei[:24]!r}", frame)
        command = data[imei_end + 1:imei_end + 4]
        separator = data[imei_end + 4:imei_end + 5]
        if len(command) < 3 or separator not in (b",", b"*"):
            raise self.error("truncated frame: no command field", frame)
        body_start = imei_end + 5
        has_checksum = len(data) >= 3 and data[-3:-2] == b"*" and re.fullmatch(rb"[0-9A-Fa-f]{2}", data[-2:]) is not None
        if has_checksum:
            body_end = len(data) - 3
            crc_ok = checksum(data[:-2]) == data[-2:].upper()
        elif command == b"D00":
            body_end, crc_ok = len(data), True  # photo chunk cut short: no checksum to check
        else:
            raise self.error("frame does not end with *<checksum>", frame)
        body = data[body_start:body_end] if body_start <= body_end else b""
        return _Frame(match.group(1), imei.decode("ascii"), command.decode("latin-1"), body, crc_ok,
                      has_checksum)

    # AAA and other text reports -----------------------------------------------------

    def _decode_text(self, parsed: _Frame, frame: bytes, session: Session) -> DecodeResult:
        data = frame.rstrip(b"\r\n").decode("latin-1")
        m = _AAA.fullmatch(data)
        if m is None:
            if parsed.command in ("AAA", "AFF"):
                raise self.error(f"{parsed.command} report does not match the expected field layout", frame)
            return DecodeResult()  # command response we do not decode (e.g. "C01,OK")
        fix_time = utc(int(m["yy"]), int(m["mo"]), int(m["dd"]), int(m["hh"]), int(m["mi"]), int(m["ss"]))
        event = int(m["event"])
        p = self.position(
            session, fix_time, frame,
            valid=m["valid"] == "A",
            latitude=float(m["lat"]),
            longitude=float(m["lon"]),
            satellites=int(m["sat"]),
            speed_kmh=float(m["speed"]),
            course=float(m["course"]),
            hdop=float(m["hdop"]),
            altitude_m=float(m["alt"]),
            odometer_m=int(m["odometer"]),
            alarm=_ALARMS.get(event),
        )
        attrs = p.attributes
        attrs["event"] = event
        attrs["rssi"] = int(m["rssi"])
        attrs["runtime"] = m["runtime"]
        attrs["input"] = int(m["input"], 16)
        attrs["output"] = int(m["output"], 16)
        if m["vbat"] is not None:
            p.battery_mv = round(float(m["vbat"]) * 1000)
            p.power_mv = round(float(m["vpow"]) * 1000)
        else:
            for i, key in enumerate(("adc1", "adc2", "adc3"), start=1):
                if m[key]:
                    attrs[f"adc{i}"] = int(m[key], 16)
            model = str(session.options.get("model") or "").upper()
            battery_scale, power_scale = _ANALOG_SCALE.get(model, _DEFAULT_SCALE)
            p.battery_mv = round(int(m["bat"], 16) * battery_scale * 1000)
            p.power_mv = round(int(m["pow"] or "0", 16) * power_scale * 1000)
        event_data = m["event_data"]
        if event_data:
            if event == 37:
                attrs["driverUniqueId"] = event_data.strip().replace(" ", "").replace("|", "")
            else:
                attrs["eventData"] = event_data
        protocol = int(m["protocol"] or 0)
        if m["fuel"]:
            attrs["fuel"] = int(m["fuel"][:2], 16) + int(m["fuel"][2:], 16) * 0.01
        if m["temps"]:
            for item in m["temps"].split("|"):
                index = int(item[:2], 16)
                if protocol >= 3:
                    attrs[f"temp{index}"] = _s16(int(item[2:], 16)) * 0.01
                else:
                    whole = _s8(int(item[2:4], 16))
                    attrs[f"temp{index}"] = whole + (-0.01 if whole < 0 else 0.01) * int(item[4:], 16)
        if m["count"] is not None and m["data"] is not None:
            _data_fields(attrs, m["data"].split(","))
        return DecodeResult([p])

    # CCC ----------------------------------------------------------------------------

    def _decode_ccc(self, parsed: _Frame, frame: bytes, session: Session) -> DecodeResult:
        reader = _reader(parsed.body)
        reader.skip(8)  # protocol version, record size and counters
        positions: list[Position] = []
        while reader.remaining >= 52:
            (event, lat_raw, lon_raw, seconds, fix, sats, rssi, speed, course, hdop, altitude, odometer, runtime,
             mcc, mnc, lac, cid, status, adc1, battery, power) = reader.sub(52).unpack(_CCC_RECORD)
            lat, lon = lat_raw * 1e-6, lon_raw * 1e-6
            fix_time = MEITRACK_EPOCH + timedelta(seconds=seconds)
            valid = fix == 1
            p = self.position(
                session, fix_time, frame,
                valid=valid, latitude=lat, longitude=lon, satellites=sats, speed_kmh=float(speed),
                course=float(course), hdop=hdop * 0.1, altitude_m=float(altitude), odometer_m=odometer,
                battery_mv=battery * 10, power_mv=power * 10, alarm=_ALARMS.get(event),
            )
            p.attributes.update(event=event, rssi=rssi, runtime=runtime, status=status, adc1=adc1)
            if mcc and mnc:
                p.attributes.update(mcc=mcc, mnc=mnc, lac=lac, cid=cid)
            positions.append(p)
        reply = build_frame(b"@@", parsed.flag, parsed.imei, b"CCC,%d" % len(positions))
        return DecodeResult(positions, reply)

    # CCE ----------------------------------------------------------------------------

    def _decode_cce(self, parsed: _Frame, frame: bytes, session: Session) -> DecodeResult:
        reader = _reader(parsed.body)
        cached = reader.u32()
        count = reader.u16()
        positions: list[Position] = []
        for _ in range(count):
            length = reader.u16()
            if length > reader.remaining:
                raise self.error(f"CCE record length {length} exceeds the {reader.remaining} bytes left", frame)
            record = reader.sub(length)
            p = self._cce_record(record, frame, session)
            p.attributes["cacheRemaining"] = cached
            positions.append(p)
        return DecodeResult(positions)

    def _cce_record(self, rec: Reader, frame: bytes, session: Session) -> Position:
        index = rec.u16()
        attrs: dict[str, Any] = {"index": index}
        fields: dict[str, Any] = {}
        fix_time: datetime | None = None
        for _ in range(rec.u8()):  # one-byte values
            tag, value = _tag(rec), rec.u8()
            if tag == 0x01:
                attrs["event"] = value
            elif tag == 0x05:
                fields["valid"] = value > 0
            elif tag == 0x06:
                fields["satellites"] = value
            elif tag == 0x07:
                attrs["rssi"] = value
            elif tag == 0x14:
                attrs["output"] = value
            elif tag == 0x15:
                attrs["input"] = value
            elif tag == 0x47:
                if value > 0:
                    attrs["lock"] = value == 2
            elif tag == 0x97:
                attrs["throttle"] = value
            elif tag == 0x9D:
                attrs["fuel"] = value
            elif tag == 0xFE69:
                attrs["batteryLevel"] = value
        for _ in range(rec.u8()):  # two-byte values
            tag, value = _tag(rec), rec.u16()
            if tag == 0x08:
                fields["speed_kmh"] = float(value)
            elif tag == 0x09:
                fields["course"] = float(value)
            elif tag == 0x0A:
                fields["hdop"] = value * 0.1
            elif tag == 0x0B:
                fields["altitude_m"] = float(_s16(value))
            elif tag in (0x16, 0x17, 0x18):
                attrs[f"adc{tag - 0x15}"] = value * 0.01
            elif tag == 0x19:
                fields["battery_mv"] = value * 10
            elif tag == 0x1A:
                fields["power_mv"] = value * 10
            elif tag == 0x40:
                attrs["event"] = value
            elif tag in (0x91, 0x92):
                attrs["obdSpeed"] = value
            elif tag == 0x98:
                attrs["fuelUsed"] = value
            elif tag == 0x99:
                attrs["rpm"] = value
            elif tag == 0x9C:
                attrs["coolantTemp"] = value
            elif tag == 0x9F:
                attrs["temp1"] = value
            elif tag == 0xC9:
                attrs["fuelConsumption"] = value
        for _ in range(rec.u8()):  # four-byte values
            tag, value = _tag(rec), rec.u32()
            if tag == 0x02:
                fields["latitude"] = _s32(value) * 1e-6
            elif tag == 0x03:
                fields["longitude"] = _s32(value) * 1e-6
            elif tag == 0x04:
                fix_time = MEITRACK_EPOCH + timedelta(seconds=value)
            elif tag == 0x0C:
                fields["odometer_m"] = value
            elif tag == 0x0D:
                attrs["runtime"] = value
            elif tag == 0x25:
                attrs["driverUniqueId"] = str(value)
            elif tag == 0x9B:
                attrs["obdOdometer"] = value
            elif tag == 0xA0:
                attrs["fuelUsed"] = value * 0.001
            elif tag == 0xA2:
                attrs["fuelConsumption"] = value * 0.01
        if rec.remaining:
            for _ in range(rec.u8()):  # variable-length values
                tag = _tag(rec)
                value_bytes = rec.take(rec.u8())
                _cce_variable(attrs, tag, value_bytes)
        if "event" in attrs:
            fields["alarm"] = _ALARMS.get(int(attrs["event"]))
        if ("latitude" in fields) != ("longitude" in fields):
            fields.pop("latitude", None)
            fields.pop("longitude", None)
        p = self.position(session, fix_time or session.now(), frame, **fields)
        p.attributes.update(attrs)
        return p

    # Photos -------------------------------------------------------------------------

    def _photo_request(self, imei: str, file: str, index: int) -> bytes:
        return build_frame(b"@@", b"O", imei, f"D00,{file},{index}".encode("latin-1"))

    def _decode_photo_chunk(self, parsed: _Frame, frame: bytes, session: Session) -> DecodeResult:
        fields = parsed.body.split(b",", 3)
        if len(fields) < 4:
            raise self.error("D00 photo chunk without file, total, index and data fields", frame)
        file = fields[0].decode("latin-1")
        total, current = int(fields[1]), int(fields[2])
        photo = session.state.get(_PHOTO_STATE)
        if not isinstance(photo, dict) or photo.get("file") not in (file, "camera_picture.jpg"):
            photo = {"file": file, "size": 0}
        # Only the size is tracked: the picture bytes are not kept (no media store yet).
        photo = {"file": file, "size": int(photo.get("size", 0)) + len(fields[3])}
        session.state[_PHOTO_STATE] = photo
        if current >= total - 1:
            session.state.pop(_PHOTO_STATE, None)
            record = self.position(session, session.now(), frame)
            record.attributes["image"] = file
            record.attributes["imageSize"] = photo["size"]
            return DecodeResult([record])
        reply = self._photo_request(parsed.imei, file, current + 1) if (current + 1) % 8 == 0 else None
        return DecodeResult(reply=reply)


def _s8(value: int) -> int:
    return value - 0x100 if value & 0x80 else value


def _s16(value: int) -> int:
    return value - 0x10000 if value & 0x8000 else value


def _s32(value: int) -> int:
    return value - 0x1_0000_0000 if value & 0x8000_0000 else value


def _data_fields(attrs: dict[str, Any], values: list[str]) -> None:
    """The AAA trailing data fields: temperature sensor data and the taximeter block."""
    if len(values) > 1 and values[1]:
        attrs["tempData"] = values[1]
    if len(values) > 5 and values[5]:
        data = values[5].split("|")
        if len(data[0]) > 1:
            attrs["taximeterOn"] = data[0][1] == "0"
        if len(data) > 1:
            attrs["taximeterStart"] = data[1]
        if len(data) > 6:
            attrs["taximeterEnd"] = data[2]
            attrs["taximeterDistance"] = int(data[3])
            attrs["taximeterFare"] = int(data[4])
            attrs["taximeterTrip"] = data[5]
            attrs["taximeterWait"] = data[6]


def _cce_variable(attrs: dict[str, Any], tag: int, value: bytes) -> None:
    """CCE variable-length parameters (ID, u8 length, bytes)."""
    if 0x2A <= tag <= 0x31 and len(value) >= 3:  # label + i16 temperature in 0.01 °C
        attrs[f"temp{tag - 0x2A}"] = struct.unpack_from("<h", value, 1)[0] * 0.01
    elif tag == 0xFE31 and len(value) >= 2:  # alarm protocol, alarm type, [media file name]
        attrs["alarmType"] = value[1]
        if value[0] == 0x02 and len(value) > 3:
            file = value[2:].decode("latin-1")
            folder = file[:8]
            if folder.isdigit():
                folder = f"{folder[:4]}-{folder[4:6]}-{folder[6:8]}"
            attrs["image"] = f"{folder}/{file}"
    elif tag == 0xFE73 and len(value) >= 2:  # BLE temperature/humidity tag
        rec = _reader(value)
        rec.u8()  # version
        attrs["tagName"] = rec.take(rec.u8()).decode("latin-1")
        if rec.remaining >= 6 + 1 + 4:
            rec.skip(6)  # MAC
            attrs["tagBattery"] = rec.u8()
            attrs["tagTemp"] = rec.i16() / 256.0
            attrs["tagHumidity"] = rec.i16() / 256.0
    elif tag == 0xFEA8 and len(value) >= 6:  # up to three batteries: (present, level) pairs
        for k in range(3):
            if value[2 * k] > 0:
                attrs["batteryLevel" if k == 0 else f"battery{k + 1}Level"] = value[2 * k + 1]


# Encoders (device simulator) ------------------------------------------------------------


def encode_login(device: str) -> bytes | None:
    """Meitrack has no login: every frame carries the IMEI."""
    return None


def encode_position(p: Position, sequence: int = 0) -> bytes:
    """An AAA report for ``p`` (event 35, periodic), with a correct length and checksum.

    Battery and power go in the hex analog field at 10 mV per unit (the default model scaling)."""
    t = p.fix_time
    lat = p.latitude if p.latitude is not None else 0.0
    lon = p.longitude if p.longitude is not None else 0.0
    speed = p.speed_kmh if p.speed_kmh is not None else 0.0
    battery = round((p.battery_mv or 0) / 10)
    power = round((p.power_mv or 0) / 10)
    body = ",".join([
        "AAA",
        "35",
        f"{lat:.6f}",
        f"{lon:.6f}",
        t.strftime("%y%m%d%H%M%S"),
        "A" if p.valid else "V",
        str(p.satellites or 0),
        "20",
        f"{speed:.1f}",
        str(round(p.course or 0) % 360),
        f"{p.hdop if p.hdop is not None else 1.0:.1f}",
        str(round(p.altitude_m or 0)),
        str(p.odometer_m or 0),
        "0",
        "0|0|0000|0000",
        "0000",
        f"0000|0000|0000|{battery:04X}|{power:04X}",
        "",
    ])
    flag = chr(ord("A") + sequence % 26).encode("ascii")
    return build_frame(b"$$", flag, p.device, body.encode("ascii"))


PROTOCOL = MeitrackProtocol()
