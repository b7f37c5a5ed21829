"""Suntech ST200/ST300/ST340/ST4xx/ST500/ST600/ST9xx/SA200 trackers (TCP, port 5011).

Four wire forms share the port; the first two bytes tell them apart:

    0x02 <len16> ...      "zip" binary; frame = 1 + 2 + len + 1 (footer) bytes
    <type> 0x00 <len8>    binary universal (0x81 status / 0x82 alert); frame = 1 + 2 + len
                          (the 16-bit length field's high byte is the 0x00)
    anything else         ';'-separated text ended by a lone '\\r' ('\\r\\n' inside a
                          report is serial / RFID payload and does not end it)

Text layouts (``values`` = the report split on ';'):

    <model><TYP>;id;...   legacy, e.g. ``ST300STT;dev;model;fw;YYYYMMDD;HH:MM:SS;cell;lat;lon;
                          speed km/h;course;sats;fix;odometer m;power V;IO;<type fields>;
                          [hbm: hours min;backup V;mode;(adc1..3);(rpm);driver;registered;
                          (temp1..3);(hbm 2: cid;mcc;mnc;rssi;lac)]``
                          SA200/ST200 have no model field, ST500 no cell, ST600 adds
                          mcc;mnc;lac;rssi after the cell. IO = ignition,in1..3,out1..2.
                          Types: STT status, EMG emergency, EVT input event, ALT alert,
                          UEX serial data (count;data..;checksum), HTE trip, ALV keep-alive,
                          CMD;Res command result.
    ST4xxSTT/ALT;id;...   fw;model;[variant];7 x cell;battery V;mode;index;status;
                          [collab];[temp;motion];date;time;lat;lon;speed;course;sats;fix
    ST910;<Kind>;id;...   Location/Emergency/Alert personal trackers: [fw];date;time;[cell];
                          lat;lon;speed;course;fix;[odometer] ([..] per protocolType option)
    <TYP>;id;<hex mask>;  universal (STT/ALT/UEX/RES/BLE): the mask says which fields follow
                          (bit 1 model, 2 fw, 3 mode, 4+5 date+time, 6 cell, 7 mcc, 8 mnc,
                          9 lac, 10 rssi, 11 lat, 12 lon, 13 speed, 14 course, 15 sats,
                          16 fix, 17 input, 18 output, 19-21 alert id/modifier/data or
                          mode/reason/index, 22 reserved, 23 assign mask + io values)

Binary universal (0x81 / 0x82), big-endian, fields present per the 24-bit mask as above:
    id 5 bytes (hex digits); model 1; fw 3 (a.b.c); mode 1; Y M D h m s; cell 4; mcc 2; mnc 2;
    lac 2; rssi 1; lat 4 / lon 4 (sign bit + magnitude, 1e-6 deg); speed 2 (/100 km/h);
    course 2 (/100); sats 1; fix 1; input 1 (bit 0 ignition); output 1; alert id 1;
    alert modifier 2; alert data (8-byte driver id when the alert id is 59)
Zip (0x02): type 0x10; id 5 bytes (first 9 hex digits); model 1; sw 2; Y M D h m s; lac 2;
    cell 1; lat / lon = degrees byte + 6 BCD digits of millionths; speed 2 + 2 BCD digits
    (km/h); course 2 + 2 BCD digits; flags (bit 7 fix, 6 south, 5 west); odometer 4 (m);
    power 1 + 2 BCD digits (V); io (bit 0 ignition, 1-3 in, 4-5 out); event 1; [hbm]; footer

The decoder sends no reply for any report (the reference server sends none, ALV included).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from avl.records import Position
from ingest.protocols.base import DecodeError, DecodeResult, Protocol, Session, text, utc
from ingest.protocols.reader import Reader

_ZIP = 0x02
_DATE_FORMAT = "%Y%m%d%H:%M:%S"
_LEGACY_TYPES = frozenset({"STT", "EMG", "EVT", "ALT", "UEX"})
_UNIVERSAL_TYPES = frozenset({"STT", "ALT", "BLE", "RES", "UEX"})
_BLE_MASK = 0b1100000110110  # BLE reports carry no mask: model, fw, date, time, lat, lon

_EMERGENCY: dict[int, str] = {
    1: "sos",
    2: "parking",
    3: "powerCut",
    5: "door",
    6: "door",
    7: "movement",
    8: "vibration",
}

_ALERT: dict[int, str] = {
    1: "overspeed",
    5: "geofenceExit",
    6: "geofenceEnter",
    14: "lowBattery",
    15: "vibration",
    16: "accident",
    40: "powerRestored",
    41: "powerCut",
    42: "sos",
    46: "hardAcceleration",
    47: "hardBraking",
    50: "jamming",
    132: "door",
}


class _Fields:
    """A cursor over the ';'-separated values of a text report."""

    def __init__(self, values: list[str], index: int = 0) -> None:
        self.values = values
        self.index = index

    def take(self) -> str:
        value = self.values[self.index]  # IndexError when the report is short
        self.index += 1
        return value

    def skip(self, count: int = 1) -> None:
        self.index += count

    def peek(self) -> str:
        return self.values[self.index]

    def left(self) -> int:
        return len(self.values) - self.index

    def rest(self) -> list[str]:
        return self.values[self.index:]


# Small parsing helpers (Java parseInt / parseDouble semantics where it matters) ------------


def _number(value: str) -> float:
    result = float(value)
    if not math.isfinite(result):
        raise ValueError(f"not a finite number: {value!r}")
    return result


def _integer(value: str, base: int = 10) -> int:
    return int(value.strip(), base)


def _mv(volts: float) -> int:
    return round(volts * 1000)


def _time(date: str, clock: str) -> datetime:
    return datetime.strptime(date + clock, _DATE_FORMAT).replace(tzinfo=UTC)


def _split_dropping_trailing_empty(value: str, separator: str) -> list[str]:
    """``String.split`` as Java does it: trailing empty pieces are dropped."""
    parts = value.split(separator)
    while parts and not parts[-1]:
        parts.pop()
    return parts


def _bit(mask: int, bit: int) -> bool:
    return bool(mask >> bit & 1)


def _option_int(session: Session, name: str) -> int:
    value = session.options.get(name)
    if value is None:
        return 0
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    raw = str(value).strip().lower()
    if raw in ("true", "yes"):
        return 1
    if raw in ("false", "no", ""):
        return 0
    try:
        return int(raw)
    except ValueError:
        return 0


def _option_bool(session: Session, name: str) -> bool:
    return _option_int(session, name) != 0


def _set_location(position: Position, latitude: float, longitude: float) -> None:
    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
        raise ValueError(f"coordinates {latitude},{longitude} out of range")
    position.latitude = latitude
    position.longitude = longitude


class SuntechProtocol(Protocol):
    name = "suntech"
    port = 5011
    transports = frozenset({"tcp"})
    max_frame = 8192

    # Framing ------------------------------------------------------------------------

    def split(self, buffer: bytes) -> tuple[bytes | None, int]:
        if not buffer:
            return None, 0
        if buffer[0] in (0x0D, 0x0A):
            # Stray line ends between reports: skip them.
            skipped = len(buffer) - len(buffer.lstrip(b"\r\n"))
            return None, skipped
        if buffer[0] == _ZIP:
            return self._split_length(buffer, footer=1)
        if len(buffer) < 2:
            return None, 0
        if buffer[1] == 0x00:
            return self._split_length(buffer, footer=0)
        return self._split_text(buffer)

    def _split_length(self, buffer: bytes, footer: int) -> tuple[bytes | None, int]:
        if len(buffer) < 3:
            return None, 0
        size = 3 + int.from_bytes(buffer[1:3], "big") + footer
        if size > self.max_frame:
            raise self.too_long(buffer)
        if len(buffer) < size:
            return None, 0
        return buffer[:size], size

    def _split_text(self, buffer: bytes) -> tuple[bytes | None, int]:
        start = 0
        while True:
            end = buffer.find(b"\r", start)
            if end < 0:
                if len(buffer) > self.max_frame:
                    raise self.too_long(buffer)
                return None, 0
            if end > self.max_frame:
                raise self.too_long(buffer)
            if end + 1 < len(buffer) and buffer[end + 1] == 0x0A:
                start = end + 1  # "\r\n" inside a serial / RFID payload
                continue
            # A lone '\r' ends the report; one at the very end of the buffer does too
            # (as the reference framer does), so the last report of a burst is not held back.
            return buffer[:end], end + 1

    # Decoding -----------------------------------------------------------------------

    def decode(self, frame: bytes, session: Session) -> DecodeResult:
        if not frame:
            raise self.error("empty frame")
        try:
            if frame[0] == _ZIP:
                positions = self._decode_zip(frame, session)
            elif len(frame) > 1 and frame[1] == 0x00:
                positions = self._decode_binary(frame, session)
            else:
                positions = self._decode_text(frame, session)
        except DecodeError:
            raise
        except (ValueError, IndexError, KeyError, OverflowError, struct.error) as exc:
            raise self.error(f"malformed report ({type(exc).__name__}: {exc})", frame) from None
        return DecodeResult(positions=positions, reply=None)

    def _identify(self, session: Session, device: str, frame: bytes) -> None:
        device = device.strip()
        if not device:
            raise self.error("report without a device id", frame)
        session.device = device

    def _record(self, session: Session, frame: bytes, report_type: str | None = None) -> Position:
        position = self.position(session, session.now(), frame)
        if report_type is not None:
            position.attributes["type"] = report_type
        return position

    # Text ---------------------------------------------------------------------------

    def _decode_text(self, frame: bytes, session: Session) -> list[Position]:
        body = text(frame).strip("\r\n")
        values = body.split(";")
        prefix = values[0]
        if not prefix or not all(ch.isascii() and (ch.isalnum() or ch in "-+_") for ch in prefix):
            raise self.error(f"not a Suntech report (header {prefix[:16]!r})", frame)
        if len(values) < 2:
            return []  # a bare device answer such as "-Error": nothing to record
        if prefix == "CRR":
            # Crash-report chunks (binary accelerometer dumps): not decoded.
            return []
        decoder: Callable[[list[str], bytes, Session], list[Position]]
        if len(prefix) < 5:
            session.state["suntech.universal"] = True
            decoder = self._decode_universal
        else:
            session.state["suntech.universal"] = False
            session.state["suntech.prefix"] = prefix[:-3]
            if prefix.endswith("HTE"):
                decoder = self._decode_travel
            elif prefix.startswith("ST9"):
                decoder = self._decode_st9
            elif prefix.startswith("ST4"):
                decoder = self._decode_st4
            else:
                decoder = self._decode_legacy
        return decoder(values, frame, session)

    def _decode_st9(self, values: list[str], frame: bytes, session: Session) -> list[Position]:
        fields = _Fields(values, 1)
        kind = fields.take()
        if kind not in ("Location", "Emergency", "Alert"):
            return []
        self._identify(session, fields.take(), frame)
        position = self._record(session, frame)
        if kind in ("Emergency", "Alert"):
            position.alarm = "general"
        protocol_type = _option_int(session, "protocolType")
        if kind != "Alert" or protocol_type == 0:
            position.attributes["versionFw"] = fields.take()
        position.fix_time = _time(fields.take(), fields.take())
        if protocol_type == 1:
            fields.skip()  # cell
        _set_location(position, _number(fields.take()), _number(fields.take()))
        position.speed_kmh = _number(fields.take())
        position.course = _number(fields.take())
        position.valid = fields.take() == "1"
        if protocol_type == 1:
            position.odometer_m = _integer(fields.take())
        return [position]

    def _decode_st4(self, values: list[str], frame: bytes, session: Session) -> list[Position]:
        report_type = values[0][5:]
        if report_type not in ("STT", "ALT"):
            return []
        fields = _Fields(values, 1)
        self._identify(session, fields.take(), frame)
        position = self._record(session, frame, report_type)
        position.attributes["versionFw"] = fields.take()
        model = _integer(fields.take())
        if model == 41:
            fields.skip()  # variant
        for _ in range(7):
            # cid; mcc; mnc; rssi+lac (serving cell) or lac+rssi (neighbours); timing advance
            for _ in range(6):
                _integer(fields.take())
        position.battery_mv = _mv(_number(fields.take()))
        if fields.take() == "0":
            position.attributes["archive"] = True
        position.attributes["index"] = _integer(fields.take())
        position.attributes["status"] = _integer(fields.take())
        if len(fields.peek()) == 3:
            fields.skip()  # collaborative network
        if model == 41:
            fields.skip(2)  # collaborative network, temperature
            position.attributes["motion"] = _integer(fields.take()) == 2
        if fields.left() == 0 or not fields.peek():
            return [position]  # no fix in this report: a status record
        position.fix_time = _time(fields.take(), fields.take())
        _set_location(position, _number(fields.take()), _number(fields.take()))
        position.speed_kmh = _number(fields.take())
        position.course = _number(fields.take())
        position.satellites = _integer(fields.take())
        position.valid = fields.take() == "1"
        return [position]

    def _decode_legacy(self, values: list[str], frame: bytes, session: Session) -> list[Position]:
        model = values[0][:5]
        report_type = values[0][5:]
        fields = _Fields(values, 1)
        result = fields.peek() == "Res"
        if result:
            fields.skip()
        self._identify(session, fields.take(), frame)
        if result:
            position = self._record(session, frame, report_type)
            position.attributes["result"] = ";".join(fields.rest())
            return [position]
        if report_type not in _LEGACY_TYPES:
            return []  # ALV keep-alive and the like: identifies the device, no record
        position = self._record(session, frame, report_type)
        attributes = position.attributes

        if model.startswith("ST3") or model in ("ST500", "ST600"):
            fields.skip()  # model
        attributes["versionFw"] = fields.take()
        position.fix_time = _time(fields.take(), fields.take())
        if model != "ST500":
            _integer(fields.take(), 16)  # cell id
            if model == "ST600":
                _integer(fields.take())  # mcc
                _integer(fields.take())  # mnc
                _integer(fields.take(), 16)  # lac
                _integer(fields.take())  # rssi
        _set_location(position, _number(fields.take()), _number(fields.take()))
        position.speed_kmh = _number(fields.take())
        position.course = _number(fields.take())
        position.satellites = _integer(fields.take())
        position.valid = fields.take() == "1"
        position.odometer_m = _integer(fields.take())
        position.power_mv = _mv(_number(fields.take()))

        io = fields.take()
        if len(io) >= 6:
            position.ignition = io[0] == "1"
            for i in range(1, 4):
                attributes[f"in{i}"] = io[i] == "1"
            for i in range(1, 3):
                attributes[f"out{i}"] = io[i + 3] == "1"

        if report_type == "STT":
            attributes["status"] = _integer(fields.take())
            attributes["index"] = _integer(fields.take())
        elif report_type == "EMG":
            position.alarm = _EMERGENCY.get(_integer(fields.take()))
        elif report_type == "EVT":
            attributes["event"] = _integer(fields.take())
        elif report_type == "ALT":
            position.alarm = _ALERT.get(_integer(fields.take()))
        else:  # UEX
            self._serial_data(fields, position)

        hbm = _option_int(session, "hbm")
        if hbm >= 1:
            self._hbm_fields(fields, position, session, hbm)
        return [position]

    def _hbm_fields(self, fields: _Fields, position: Position, session: Session, hbm: int) -> None:
        """The extra fields devices configured for hour meter / backup battery send."""
        attributes = position.attributes
        if fields.left() > 0:
            attributes["hours"] = _integer(fields.take()) * 60000  # minutes -> ms
        if fields.left() > 0:
            position.battery_mv = _mv(_number(fields.take()))
        if fields.left() > 0 and fields.take() == "0":
            attributes["archive"] = True
        if _option_bool(session, "includeAdc"):
            for i in range(1, 4):
                if fields.left() > 0:
                    value = fields.take()
                    if value:
                        attributes[f"adc{i}"] = _number(value)
        if _option_bool(session, "includeRpm") and fields.left() > 0:
            attributes["rpm"] = _integer(fields.take())
        if fields.left() >= (2 if hbm == 1 else 7):
            driver = fields.take()
            if driver:
                attributes["driverUniqueId"] = driver
            fields.skip()  # registered
        if _option_bool(session, "includeTemp"):
            for i in range(1, 4):
                if fields.left() == 0:
                    break
                sensor = fields.take()
                value = sensor[sensor.find(":") + 1:]
                if value:
                    attributes[f"temp{i}"] = _number(value)
        if hbm >= 2 and fields.left() >= 5:
            for _ in range(5):
                _integer(fields.take())  # cid; mcc; mnc; rssi; lac

    def _serial_data(self, fields: _Fields, position: Position) -> None:
        """UEX payload: ``length;data...;checksum`` where data may itself hold ';'."""
        attributes = position.attributes
        remaining = _integer(fields.take())
        consumed: list[str] = []
        total_fuel = 0.0
        while remaining > 0:
            item = fields.take()
            consumed.append(item)
            remaining -= len(item) + 1
            if item.startswith("CabAVL"):
                parts = item.split(",")
                for key, raw in (("fuel1", parts[2]), ("fuel2", parts[3])):
                    fuel = _number(raw)
                    if fuel > 0:
                        total_fuel += fuel
                        attributes[key] = fuel
            elif item.startswith("GTSL"):
                attributes["driverUniqueId"] = item.split("|")[4]
            elif "=" in item:
                pair = _split_dropping_trailing_empty(item, "=")
                if len(pair) >= 2 and pair[0]:
                    value = pair[1].strip()
                    if "." in value:
                        value = value[: value.index(".")]
                    name = pair[0]
                    suffix = name[2:3]
                    if name[0] == "t":
                        attributes[f"temp{suffix}"] = _integer(value, 16)
                    elif name[0] == "N":
                        fuel_value = _integer(value, 16)
                        total_fuel += fuel_value
                        attributes[f"fuel{suffix}"] = fuel_value
                    elif name[0] == "Q":
                        attributes["drivingQuality"] = _integer(value, 16)
            else:
                attributes["serial"] = item.strip()
        if total_fuel > 0:
            attributes["fuel"] = total_fuel
        checksum = fields.take() if fields.left() > 0 else ""
        if len(checksum) == 2:
            # Sum of the payload bytes (the ';' between its pieces included), modulo 256.
            expected = f"{sum(';'.join(consumed).encode('latin-1')) & 0xFF:02X}"
            if checksum.upper() != expected:
                attributes["crcMismatch"] = True

    def _decode_travel(self, values: list[str], frame: bytes, session: Session) -> list[Position]:
        self._identify(session, values[1], frame)
        position = self._record(session, frame)
        position.attributes["driverUniqueId"] = values[-1]
        return [position]

    def _decode_universal(self, values: list[str], frame: bytes, session: Session) -> list[Position]:
        fields = _Fields(values, 0)
        report_type = fields.take()
        if report_type not in _UNIVERSAL_TYPES:
            return []
        self._identify(session, fields.take(), frame)
        position = self._record(session, frame, report_type)
        attributes = position.attributes
        if report_type == "RES":
            attributes["result"] = ";".join(fields.rest())
            return [position]

        mask = _BLE_MASK if report_type == "BLE" else _integer(fields.take(), 16)
        if _bit(mask, 1):
            fields.skip()  # model
        if _bit(mask, 2):
            attributes["versionFw"] = fields.take()
        if _bit(mask, 3) and fields.take() == "0":
            attributes["archive"] = True
        if _bit(mask, 4) and _bit(mask, 5):
            position.fix_time = _time(fields.take(), fields.take())
        if _bit(mask, 6):
            _integer(fields.take(), 16)  # cell id
        if _bit(mask, 7):
            _integer(fields.take())  # mcc
        if _bit(mask, 8):
            _integer(fields.take())  # mnc
        if _bit(mask, 9):
            _integer(fields.take(), 16)  # lac
        if _bit(mask, 10):
            attributes["rssi"] = _integer(fields.take())
        latitude = _number(fields.take()) if _bit(mask, 11) else None
        longitude = _number(fields.take()) if _bit(mask, 12) else None
        if latitude is not None and longitude is not None:
            _set_location(position, latitude, longitude)

        if report_type == "BLE":
            position.valid = True
            for i in range(1, _integer(fields.take()) + 1):
                attributes[f"tag{i}Rssi"] = _integer(fields.take())
                fields.skip(2)  # rssi min, rssi max
                attributes[f"tag{i}Id"] = fields.take()
                attributes[f"tag{i}Samples"] = _integer(fields.take())
                attributes[f"tag{i}Major"] = _integer(fields.take())
                attributes[f"tag{i}Minor"] = _integer(fields.take())
            return [position]

        if _bit(mask, 13):
            position.speed_kmh = _number(fields.take())
        if _bit(mask, 14):
            position.course = _number(fields.take())
        if _bit(mask, 15):
            position.satellites = _integer(fields.take())
        if _bit(mask, 16):
            position.valid = fields.take() == "1"
        if _bit(mask, 17):
            # A binary digit string read as a decimal number, as the reference does:
            # its parity is the last digit, input 1 = ignition.
            inputs = _integer(fields.take())
            position.ignition = bool(inputs & 1)
            attributes["input"] = inputs
        if _bit(mask, 18):
            attributes["output"] = _integer(fields.take())

        if report_type == "ALT":
            if _bit(mask, 19):
                position.alarm = _ALERT.get(_integer(fields.take()))
            if _bit(mask, 20):
                attributes["alertModifier"] = fields.take()
            if _bit(mask, 21):
                attributes["alertData"] = fields.take()
        elif report_type == "UEX":
            self._serial_data(fields, position)
        else:
            if _bit(mask, 19):
                attributes["mode"] = _integer(fields.take())
            if _bit(mask, 20):
                attributes["reason"] = _integer(fields.take())
            if _bit(mask, 21):
                attributes["index"] = _integer(fields.take())
        if _bit(mask, 22):
            fields.skip()  # reserved
        if _bit(mask, 23) and report_type != "UEX":
            assign_mask = _integer(fields.take(), 16)
            for i in range(31):
                if _bit(assign_mask, i):
                    attributes[f"io{i + 1}"] = fields.take()
        # Whatever follows are the configured "assign" fields, in order.
        for number, value in enumerate(fields.rest(), start=1):
            if value:
                attributes[f"assign{number}"] = value
        return [position]

    # Binary -------------------------------------------------------------------------

    def _decode_binary(self, frame: bytes, session: Session) -> list[Position]:
        reader = Reader(frame, self.name)
        report_type = reader.u8()
        declared = reader.u16()
        if declared + 3 != len(frame):
            raise self.error(f"declared length {declared} does not match {len(frame) - 3} bytes", frame)
        self._identify(session, reader.take(5).hex(), frame)
        position = self._record(session, frame)
        attributes = position.attributes
        mask = reader.uint(3)

        if _bit(mask, 1):
            reader.u8()  # model
        if _bit(mask, 2):
            major, minor, patch = reader.take(3)
            attributes["versionFw"] = f"{major}.{minor}.{patch}"
        if _bit(mask, 3) and reader.u8() == 0:
            attributes["archive"] = True
        if _bit(mask, 4) and _bit(mask, 5):
            year, month, day, hour, minute, second = reader.take(6)
            position.fix_time = utc(year, month, day, hour, minute, second)
        if _bit(mask, 6):
            reader.u32()  # cell id
        if _bit(mask, 7):
            reader.u16()  # mcc
        if _bit(mask, 8):
            reader.u16()  # mnc
        if _bit(mask, 9):
            reader.u16()  # lac
        if _bit(mask, 10):
            attributes["rssi"] = reader.u8()
        latitude = _signed_magnitude(reader.u32()) / 1e6 if _bit(mask, 11) else None
        longitude = _signed_magnitude(reader.u32()) / 1e6 if _bit(mask, 12) else None
        if latitude is not None and longitude is not None:
            _set_location(position, latitude, longitude)
        if _bit(mask, 13):
            position.speed_kmh = reader.u16() / 100
        if _bit(mask, 14):
            position.course = reader.u16() / 100
        if _bit(mask, 15):
            position.satellites = reader.u8()
        if _bit(mask, 16):
            position.valid = reader.u8() > 0
        if _bit(mask, 17):
            inputs = reader.u8()
            position.ignition = bool(inputs & 1)
            attributes["input"] = inputs
        if _bit(mask, 18):
            attributes["output"] = reader.u8()
        alert_id = 0
        if _bit(mask, 19):
            alert_id = reader.u8()
            if report_type == 0x82:
                position.alarm = _ALERT.get(alert_id)
        if _bit(mask, 20):
            reader.u16()  # alert modifier
        if _bit(mask, 21) and alert_id == 59:
            attributes["driverUniqueId"] = reader.take(8).hex()
        return [position]

    def _decode_zip(self, frame: bytes, session: Session) -> list[Position]:
        reader = Reader(frame, self.name, pos=1)
        declared = reader.u16()
        if declared + 4 != len(frame):
            raise self.error(f"declared length {declared} does not match {len(frame) - 4} bytes", frame)
        if reader.u8() != 0x10:
            return []  # only the location report is defined
        self._identify(session, reader.take(5).hex()[:9], frame)
        reader.u8()  # model
        reader.u16()  # software version
        position = self._record(session, frame)
        attributes = position.attributes
        year, month, day, hour, minute, second = reader.take(6)
        position.fix_time = utc(year, month, day, hour, minute, second)
        reader.u16()  # lac
        reader.u8()  # cell id
        latitude = reader.u8() + _bcd(reader.take(3)) / 1e6
        longitude = reader.u8() + _bcd(reader.take(3)) / 1e6
        # The reference stores this pair unconverted; Suntech reports km/h everywhere.
        position.speed_kmh = reader.u16() + _bcd(reader.take(1)) / 100
        position.course = reader.u16() + _bcd(reader.take(1)) / 100
        flags = reader.u8()
        position.valid = _bit(flags, 7)
        if _bit(flags, 6):
            latitude = -latitude
        if _bit(flags, 5):
            longitude = -longitude
        _set_location(position, latitude, longitude)
        position.odometer_m = reader.u32()
        position.power_mv = _mv(reader.u8() + _bcd(reader.take(1)) / 100)
        io = reader.u8()
        position.ignition = _bit(io, 0)
        for i in range(1, 4):
            attributes[f"in{i}"] = _bit(io, i)
        for i in range(1, 3):
            attributes[f"out{i}"] = _bit(io, i + 3)
        attributes["event"] = reader.u8()
        hbm = _option_int(session, "hbm")
        if hbm == 1 and reader.remaining >= 8:
            attributes["hours"] = reader.u32()
            position.battery_mv = reader.u16() * 1000  # the reference reads whole volts
            if reader.u8() == 0:
                attributes["archive"] = True
        elif hbm == 2 and reader.remaining >= 11:
            reader.take(9)  # cid, mcc, mnc, rssi, lac
            reader.u8()  # timing advance
        return [position]


def _signed_magnitude(value: int) -> int:
    magnitude = value & 0x7FFFFFFF
    return -magnitude if value & 0x80000000 else magnitude


def _bcd(data: bytes) -> int:
    digits = data.hex()
    if not digits.isdigit():
        raise ValueError(f"not BCD: {digits}")
    return int(digits)


# Device simulator --------------------------------------------------------------------


def encode_login(device: str) -> bytes | None:
    """Suntech devices have no login: every report carries the device id."""
    return None


def encode_position(p: Position, sequence: int = 0) -> bytes:
    """An ST300 ``STT`` status report (legacy layout, decodes with no per-device options)."""
    if not p.device or any(ch in p.device for ch in ";\r\n"):
        raise ValueError(f"device id {p.device!r} cannot be sent in a Suntech report")
    fix_time = p.fix_time.astimezone(UTC) + timedelta(microseconds=500_000)
    fix_time = fix_time.replace(microsecond=0)
    latitude = p.latitude if p.latitude is not None else 0.0
    longitude = p.longitude if p.longitude is not None else 0.0
    power = (p.power_mv or 0) / 1000
    io = ("1" if p.ignition else "0") + "00000"
    fields: list[str] = [
        "ST300STT",
        p.device,
        "04",  # model
        "706",  # firmware
        fix_time.strftime("%Y%m%d"),
        fix_time.strftime("%H:%M:%S"),
        "0",  # cell id
        f"{latitude:+010.6f}",
        f"{longitude:+011.6f}",
        f"{p.speed_kmh or 0.0:07.3f}",
        f"{p.course or 0.0:06.2f}",
        str(p.satellites or 0),
        "1" if p.valid else "0",
        str(p.odometer_m or 0),
        f"{power:.2f}",
        io,
        "1",  # status
        f"{sequence % 10000:04d}",
    ]
    return ";".join(fields).encode("latin-1") + b"\r"


PROTOCOL = SuntechProtocol()
