"""TK103 / Coban-family text protocol: ``(``...``)`` frames over TCP or UDP.

Two head forms: fixed width ``(<12-char id><4-char command><data>)`` (also seen with a bare
8-15 digit id) and comma separated ``(<id>,<command>,<data>)``.

    Head             ``(`` id, command (BP00 handshake, BP05 login, BR00 position, BO01 alarm,
                     BQ81 alarm, ZCxx/DWxx events, ZC20 battery, ZC03 text result,
                     DW5x cell + Wi-Fi, BZ00 cells, BV00 VIN, BS5x BMS)
    Location block   date (YYMMDD fixed form, DDMMYY comma form) ``A``/``V``
                     lat ``ddmm.mmmm`` N/S, lon ``dddmm.mmmm`` E/W, speed km/h (<=5 chars),
                     time ``hhmmss``, course (6 chars or ``d+.d+``)
    Fixed-form tail  charge (0 = on external power), ignition, three IO hex nibbles
                     (in2/panic/out2/blocked, hs3..hs1/door, ls3..ls1), fuel (3 hex),
                     ``L`` + odometer in metres (hex), optional ``+ddd.d`` temperature
    Replies          BP00 -> ``(<id>AP01HSO)`` (no record); fixed-form BP05 -> ``(<id>AP05)``
    Status records   ZC20 battery, BZ00 / DW5x cells and Wi-Fi (``network`` attribute), BV00 VIN,
                     ZC03 text result, BS5x BMS data: no fix, so no location. No checksum.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from avl.records import Position
from ingest.protocols.base import (
    DecodeError,
    DecodeResult,
    Protocol,
    Session,
    nmea_degrees,
    text,
    utc,
)

# Head: ``(`` then one of: fixed 12-char id + command, comma form, bare digit id + command.
_HEAD = re.compile(
    r"\("
    r"(?:(?P<id12>[^,()$]{12})(?P<cmd12>[A-Z]{2}[0-9A-Z]{2})"
    r"|(?P<idc>[^,()$]+),(?P<cmdc>[^,]{4}),?"
    r"|(?P<idn>\d{8,15})(?P<cmdn>[A-Z]{2}[0-9A-Z]{2}))",
    re.ASCII,
)

# The location block, searched for in the data after the command.
_LOCATION = re.compile(
    r"(?P<date>\d{6}),?(?P<valid>[AV]),?"
    r" *(?P<latd>\d*)(?P<latm>\d\d\.\d+)(?P<ns>[NS]),?"
    r" *(?P<lond>\d*)(?P<lonm>\d\d\.\d+)(?P<ew>[EW]),?"
    r"(?P<speed>[ \d.]{1,5})(?:\d*,)?"
    r"(?P<time>\d{6}),?"
    r"(?:(?:(?P<course6>[ \d.]{6})|(?P<course2>\d\d)),?"
    r"(?P<charge>[01])(?P<ignition>[01])"
    r"(?P<io1>[0-9A-Fa-f])(?P<io2>[0-9A-Fa-f])(?P<io3>[0-9A-Fa-f])"
    r"(?P<fuel>[0-9A-Fa-f]{3})L(?P<odometer>[0-9A-Fa-f]+)"
    r"|(?P<course>\d+\.\d+))?",
    re.ASCII,
)
_TEMPERATURE = re.compile(r"(?P<temp>[+-]\d{3}\.\d)$", re.ASCII)
_BQ81 = re.compile(r"ALARM,(?P<type>\d),\d+,", re.ASCII)
_BATTERY = re.compile(r"(?P<date>\d{6}),(?P<time>\d{6}),(?P<level>\d+),(?P<battery>\d+),(?P<power>\d+),\d+", re.ASCII)
_NETWORK = re.compile(r"(?P<mcc>\d+),(?P<mnc>\d+),(?P<lac>[0-9A-Fa-f]+),(?P<cid>[0-9A-Fa-f]+),", re.ASCII)
_LBS_WIFI = re.compile(
    r"(?P<mcc>\d+),(?P<mnc>\d+),(?P<lac>\d+),(?P<cid>\d+),(?P<count>\d+),"
    r"(?P<wifi>(?:(?:[0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}\*[-+]?\d+\*\d+,)*)"
    r"(?P<date>\d{6}),(?P<time>\d{6})",
    re.ASCII,
)
_COMMAND_RESULT = re.compile(r"(?P<date>\d{6}),(?P<time>\d{6}),\$(?P<message>[\s\S]*?)(?:\$|$)", re.ASCII)
_BMS_ITEM = re.compile(r"(?P<key>[0-9A-Fa-f]{2}):(?P<data>(?:[0-9A-Fa-f]{2})+)", re.ASCII)
_DEVICE_ID = re.compile(r"[0-9A-Za-z_.-]{12}|[0-9]{8,15}", re.ASCII)

# Event commands (ZCxx / DW3x / DW5x) -> alarm or ignition, as the reference maps them.
_EVENT_ALARMS: dict[str, str] = {}
for _codes, _alarm in (
    (("ZC11", "DW31", "DW51"), "movement"),
    (("ZC12", "DW32", "DW52"), "lowBattery"),
    (("ZC13", "DW33", "DW53"), "powerCut"),
    (("ZC17", "DW37", "DW57"), "removing"),
    (("ZC25", "DW3E", "DW5E"), "sos"),
    (("ZC26", "DW3F", "DW5F"), "tampering"),
    (("ZC27", "DW40", "DW60"), "lowPower"),
):
    for _code in _codes:
        _EVENT_ALARMS[_code] = _alarm
_EVENT_IGNITION: dict[str, bool] = {
    **dict.fromkeys(("ZC15", "DW35", "DW55", "ZC29", "DW42", "DW62"), True),
    **dict.fromkeys(("ZC16", "DW36", "DW56"), False),
}
_BO01_ALARMS = {1: "accident", 2: "sos", 3: "vibration", 4: "lowspeed", 5: "overspeed", 6: "geofenceExit"}
_BQ81_ALARMS = {0: "lowBattery", 1: "overspeed", 2: "idle", 3: "hardAcceleration", 4: "hardBraking", 5: "temperature"}
_BATTERY_LEVELS = {6: 100, 5: 80, 4: 50, 3: 20, 2: 10}
# Commands whose body must hold a location block (others without one are simply not recorded).
_LOCATION_COMMANDS = frozenset({"BR00", "BR01", "BR02", "BO01", "BQ81"})


class Tk103Protocol(Protocol):
    name = "tk103"
    port = 5002
    transports = frozenset({"tcp", "udp"})
    max_frame = 4096

    def split(self, buffer: bytes) -> tuple[bytes | None, int]:
        start = buffer.find(b"(")
        if start < 0:
            return None, len(buffer)  # no frame start anywhere: all garbage
        if start > 0:
            return None, start
        in_free_text = False
        limit = min(len(buffer), self.max_frame)
        for i in range(1, limit):
            byte = buffer[i]
            if byte == 0x24:  # "$" opens / closes free text, where parentheses mean nothing
                in_free_text = not in_free_text
            elif in_free_text:
                continue
            elif byte == 0x29:  # ")"
                return buffer[: i + 1], i + 1
            elif byte == 0x28:  # "(" outside free text: the previous frame was cut short
                return None, i
        if len(buffer) >= self.max_frame:
            raise self.too_long(buffer)
        return None, 0

    def decode(self, frame: bytes, session: Session) -> DecodeResult:
        previous = session.device
        try:
            return self._decode(frame, session)
        except DecodeError:
            session.device = previous  # a frame we cannot read does not re-identify the session
            raise
        except (ValueError, IndexError, KeyError, OverflowError) as exc:
            session.device = previous
            raise self.error(f"malformed frame: {exc}", frame) from exc

    # ------------------------------------------------------------------------------

    def _decode(self, frame: bytes, session: Session) -> DecodeResult:
        sentence = text(frame).strip("\r\n\x00 ")
        head = _HEAD.match(sentence)
        if head is None:
            raise self.error("no '(' + device id + command head", frame)
        fixed = head["idc"] is None
        device = head["id12"] or head["idc"] or head["idn"]
        command = head["cmd12"] or head["cmdc"] or head["cmdn"]
        data = sentence[head.end():]
        if data.endswith(")"):
            data = data[:-1]
        if fixed:
            data = data.removeprefix(",")
        session.device = device

        reply: bytes | None = None
        if fixed and command == "BP00":
            return DecodeResult([], f"({device}AP01HSO)".encode("latin-1"))
        if fixed and command == "BP05":
            reply = f"({device}AP05)".encode("latin-1")

        if command == "ZC20":
            positions = [self._battery(data, frame, session)]
        elif command == "BZ00":
            positions = [self._network(data, frame, session)]
        elif command == "ZC03":
            positions = [self._command_result(data, frame, session)]
        elif command.startswith("DW5"):
            positions = [self._lbs_wifi(command, data, frame, session)]
        elif command == "BV00":
            positions = [self._vin(data, frame, session)]
        elif command.startswith("BS5"):
            positions = [self._bms(data, frame, session)]
        else:
            located = self._location(command, data, fixed, frame, session)
            if located is None:
                if command in _LOCATION_COMMANDS or command.startswith(("ZC", "DW")):
                    raise self.error(f"{command} without a readable location block", frame)
                positions = []  # handshake-like or unsupported command: nothing to record
            else:
                positions = [located]
        return DecodeResult(positions, reply)

    def _location(self, command: str, data: str, fixed: bool, frame: bytes, session: Session) -> Position | None:
        m = _LOCATION.search(data)
        if m is None:
            return None
        prefix = data[: m.start()]
        attributes: dict[str, Any] = {}
        fields: dict[str, Any] = {}

        alarm: str | None = _EVENT_ALARMS.get(command)
        if command in _EVENT_IGNITION:
            fields["ignition"] = _EVENT_IGNITION[command]
        if command == "BO01" and prefix[:1].isdigit():
            alarm = _BO01_ALARMS.get(int(prefix[0]))
        elif command == "BQ81":
            bq = _BQ81.search(prefix)
            if bq is not None:
                alarm = _BQ81_ALARMS.get(int(bq["type"]))

        date = m["date"]
        if fixed:
            year, month, day = int(date[0:2]), int(date[2:4]), int(date[4:6])
        else:
            day, month, year = int(date[0:2]), int(date[2:4]), int(date[4:6])
        try:
            fix_time: datetime | None = _datetime(year, month, day, m["time"])
        except ValueError:
            fix_time = None  # no GPS time yet (e.g. all zeros): the fix cannot be placed in time

        latitude = nmea_degrees(m["latd"] + m["latm"], m["ns"]) if m["latd"] else _minutes(m["latm"], m["ns"])
        longitude = nmea_degrees(m["lond"] + m["lonm"], m["ew"]) if m["lond"] else _minutes(m["lonm"], m["ew"])
        if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
            raise self.error(f"coordinates {latitude:.5f},{longitude:.5f} out of range", frame)
        course = m["course6"] or m["course2"] or m["course"]

        if m["charge"] is not None:
            attributes["charge"] = m["charge"] == "0"
            fields["ignition"] = m["ignition"] == "1"
            attributes.update(_io_flags(int(m["io1"], 16), int(m["io2"], 16), int(m["io3"], 16),
                                        bool(session.options.get("decodeLow"))))
            attributes["fuel"] = int(m["fuel"], 16)
            fields["odometer_m"] = int(m["odometer"], 16)
        temperature = _TEMPERATURE.search(data)
        if temperature is not None:
            attributes["temp1"] = float(temperature["temp"])

        if fix_time is None:
            # Keep what the report says about the vehicle as a status record at server time.
            return self.position(session, session.now(), frame, alarm=alarm, attributes=attributes, **fields)
        return self.position(
            session, fix_time, frame,
            valid=m["valid"] == "A",
            latitude=latitude,
            longitude=longitude,
            speed_kmh=_float(m["speed"]),
            course=_course(course),
            alarm=alarm,
            attributes=attributes,
            **fields,
        )

    def _battery(self, data: str, frame: bytes, session: Session) -> Position:
        m = _BATTERY.match(data)
        if m is None:
            raise self.error("ZC20 battery report not readable", frame)
        attributes: dict[str, Any] = {}
        fields: dict[str, Any] = {}
        level = int(m["level"])
        if level != 255 and level in _BATTERY_LEVELS:
            attributes["batteryLevel"] = _BATTERY_LEVELS[level]
        battery = int(m["battery"])
        if battery != 65535:
            fields["battery_mv"] = battery * 10  # 0.01 V units
        power = int(m["power"])
        if power != 65535:
            fields["power_mv"] = power * 100  # 0.1 V units
        fix_time = _reverse_date_time(m["date"], m["time"])
        return self.position(session, fix_time, frame, attributes=attributes, **fields)

    def _network(self, data: str, frame: bytes, session: Session) -> Position:
        m = _NETWORK.match(data)
        if m is None:
            raise self.error("BZ00 cell report not readable", frame)
        cell = {
            "mobileCountryCode": int(m["mcc"]),
            "mobileNetworkCode": int(m["mnc"]),
            "locationAreaCode": int(m["lac"], 16),
            "cellId": int(m["cid"], 16),
        }
        return self.position(session, session.now(), frame, attributes={"network": {"cellTowers": [cell]}})

    def _lbs_wifi(self, command: str, data: str, frame: bytes, session: Session) -> Position:
        m = _LBS_WIFI.match(data)
        if m is None:
            raise self.error(f"{command} cell/Wi-Fi report not readable", frame)
        network: dict[str, Any] = {
            "cellTowers": [{
                "mobileCountryCode": int(m["mcc"]),
                "mobileNetworkCode": int(m["mnc"]),
                "locationAreaCode": int(m["lac"]),
                "cellId": int(m["cid"]),
            }],
        }
        entries = [e for e in m["wifi"].split(",") if e]
        if entries and len(entries) == int(m["count"]):
            points = []
            for entry in entries:
                mac, rssi, channel = entry.split("*")
                points.append({"macAddress": mac.lower(), "signalStrength": int(rssi), "channel": int(channel)})
            network["wifiAccessPoints"] = points
        fields: dict[str, Any] = {}
        if command in _EVENT_IGNITION:
            fields["ignition"] = _EVENT_IGNITION[command]
        return self.position(
            session, _reverse_date_time(m["date"], m["time"]), frame,
            alarm=_EVENT_ALARMS.get(command), attributes={"network": network}, **fields,
        )

    def _command_result(self, data: str, frame: bytes, session: Session) -> Position:
        m = _COMMAND_RESULT.match(data)
        if m is None:
            raise self.error("ZC03 command result not readable", frame)
        fix_time = _reverse_date_time(m["date"], m["time"])
        return self.position(session, fix_time, frame, attributes={"result": m["message"]})

    def _vin(self, data: str, frame: bytes, session: Session) -> Position:
        if len(data) != 17:
            raise self.error(f"BV00 VIN of {len(data)} characters, want 17", frame)
        return self.position(session, session.now(), frame, attributes={"vin": data})

    def _bms(self, data: str, frame: bytes, session: Session) -> Position:
        items = [_BMS_ITEM.fullmatch(item) for item in data.split(",")]
        if not items or any(item is None for item in items):
            raise self.error("BMS report is not a list of <id>:<hex> items", frame)
        attributes: dict[str, Any] = {}
        fields: dict[str, Any] = {}
        blocks = {int(item["key"], 16): bytes.fromhex(item["data"]) for item in items if item is not None}
        _decode_bms(blocks, attributes, fields)
        return self.position(session, session.now(), frame, attributes=attributes, **fields)


# Helpers ----------------------------------------------------------------------------


def _minutes(minutes: str, hemisphere: str) -> float:
    value = float(minutes) / 60.0
    return -value if hemisphere in ("S", "W") else value


def _float(value: str | None) -> float | None:
    """A free-width decimal field (``" 46.0"``, ``"000.0"``); None when blank or unreadable."""
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _course(value: str | None) -> float | None:
    course = _float(value)
    return course if course is not None and 0 <= course <= 360 else None


def _datetime(year: int, month: int, day: int, hhmmss: str) -> datetime:
    try:
        return utc(year, month, day, int(hhmmss[0:2]), int(hhmmss[2:4]), int(hhmmss[4:6]))
    except ValueError as exc:
        raise ValueError(f"bad date/time {year:02d}-{month:02d}-{day:02d} {hhmmss}") from exc


def _reverse_date_time(ddmmyy: str, hhmmss: str) -> datetime:
    return _datetime(int(ddmmyy[4:6]), int(ddmmyy[2:4]), int(ddmmyy[0:2]), hhmmss)


def _io_flags(mask1: int, mask2: int, mask3: int, decode_low: bool) -> dict[str, int]:
    """The three IO nibbles of the fixed-form tail, under the reference's attribute names."""
    flags = {"in2": mask1 & 1, "panic": (mask1 >> 1) & 1, "out2": (mask1 >> 2) & 1}
    if decode_low or mask1 & 8:
        flags["blocked"] = (mask1 >> 3) & 1
    for bit in range(3):
        if decode_low or mask2 >> bit & 1:
            flags[f"hs{3 - bit}"] = (mask2 >> bit) & 1
    if decode_low or mask2 & 8:
        flags["door"] = (mask2 >> 3) & 1
    for bit in range(1, 4):
        if decode_low or mask3 >> bit & 1:
            flags[f"ls{4 - bit}"] = (mask3 >> bit) & 1
    return flags


def _decode_bms(blocks: dict[int, bytes], attributes: dict[str, Any], fields: dict[str, Any]) -> None:
    """A battery-management report relayed by the tracker: Daly-style data blocks 0x90-0x98.

    0x90 pack voltage (0.1 V), current (0.1 A, offset 30000), state of charge (0.1 %);
    0x91 highest / lowest cell mV; 0x92 highest / lowest temperature (offset 40 degC);
    0x93 state, MOS flags, remaining capacity (mAh); 0x94 cell and sensor counts, cycles;
    0x95 cell voltages, 3 per numbered frame; 0x96 temperatures, 7 per numbered frame;
    0x97 balancing bitmap; 0x98 fault bitmap. Unknown blocks are kept as hex.
    """
    cells = temps = None
    if (b := blocks.get(0x94)) is not None and len(b) >= 7:
        cells, temps = b[0], b[1]
        attributes["cellCount"] = cells
        attributes["batteryCycles"] = int.from_bytes(b[5:7], "big")
    for key, b in sorted(blocks.items()):
        if key == 0x90 and len(b) >= 8:
            fields["battery_mv"] = int.from_bytes(b[0:2], "big") * 100
            attributes["current"] = round((int.from_bytes(b[4:6], "big") - 30000) * 0.1, 1)
            attributes["batteryLevel"] = round(int.from_bytes(b[6:8], "big") * 0.1, 1)
        elif key == 0x91 and len(b) >= 6:
            attributes["cellVoltageMax"] = int.from_bytes(b[0:2], "big") / 1000
            attributes["cellVoltageMin"] = int.from_bytes(b[3:5], "big") / 1000
        elif key == 0x92 and len(b) >= 4:
            attributes["batteryTempMax"] = b[0] - 40
            attributes["batteryTempMin"] = b[2] - 40
        elif key == 0x93 and len(b) >= 8:
            attributes["charge"] = b[0] == 1
            attributes["chargeMos"] = bool(b[1])
            attributes["dischargeMos"] = bool(b[2])
            attributes["remainingCapacity"] = int.from_bytes(b[4:8], "big") / 1000  # Ah
        elif key == 0x94:
            continue
        elif key == 0x95:
            for offset in range(0, len(b) - 6, 8):
                frame_no = b[offset]
                for i in range(3):
                    cell = (frame_no - 1) * 3 + i + 1
                    if frame_no >= 1 and (cells is None or cell <= cells):
                        mv = int.from_bytes(b[offset + 1 + 2 * i: offset + 3 + 2 * i], "big")
                        attributes[f"cellVoltage{cell}"] = mv / 1000
        elif key == 0x96:
            for offset in range(0, len(b) - 7, 8):
                frame_no = b[offset]
                for i in range(7):
                    sensor = (frame_no - 1) * 7 + i + 1
                    if frame_no >= 1 and temps is not None and sensor <= temps:
                        attributes[f"batteryTemp{sensor}"] = b[offset + 1 + i] - 40
        elif key == 0x97:
            attributes["cellBalance"] = b.hex()
        elif key == 0x98:
            if any(b):
                attributes["bmsFaults"] = b.hex()
        else:
            attributes[f"bms{key:02x}"] = b.hex()


def _fixed_id(device: str) -> str:
    if not _DEVICE_ID.fullmatch(device):
        raise ValueError(f"tk103 device id must be 12 letters/digits or 8-15 digits, got {device!r}")
    return device


# Encoders for the device simulator -------------------------------------------------------


def encode_login(device: str) -> bytes:
    """A fixed-form BP05 login without a fix (``(<id>BP05000<id>)``); the server answers AP05."""
    device = _fixed_id(device)
    return f"({device}BP05000{device})".encode("latin-1")


def _coordinate(value: float, degree_digits: int) -> str:
    units = round(abs(value) * 600000)  # ten-thousandths of a minute
    degrees, rest = divmod(units, 600000)
    return f"{degrees:0{degree_digits}d}{rest // 10000:02d}.{rest % 10000:04d}"


def encode_position(p: Position, sequence: int = 0) -> bytes:
    """A fixed-form BR00 report: fix, speed km/h, course, ignition, odometer (m)."""
    device = _fixed_id(p.device)
    t = p.fix_time
    lat = p.latitude or 0.0
    lon = p.longitude or 0.0
    speed = min(max(p.speed_kmh or 0.0, 0.0), 999.9)
    course = min(max(p.course or 0.0, 0.0), 360.0)
    odometer = min(max(p.odometer_m or 0, 0), 0xFFFFFFFF)
    body = (
        f"{t.year % 100:02d}{t.month:02d}{t.day:02d}{'A' if p.valid else 'V'}"
        f"{_coordinate(lat, 2)}{'S' if lat < 0 else 'N'}"
        f"{_coordinate(lon, 3)}{'W' if lon < 0 else 'E'}"
        f"{speed:05.1f}{t.hour:02d}{t.minute:02d}{t.second:02d}{course:06.2f}"
        f"0{'1' if p.ignition else '0'}000000L{odometer:08X}"
    )
    return f"({device}BR00{body})".encode("latin-1")


PROTOCOL = Tk103Protocol()
