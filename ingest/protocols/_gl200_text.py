"""Queclink @Track ASCII reports (``+RESP:`` / ``+BUFF:`` / ``+ACK:``): the text half of gl200.

A report is one comma-separated line ``+RESP:GTxxx,<protocol version>,<IMEI>,<device name>,...,
<send time yyyyMMddHHmmss>,<count number 4 hex>`` (the framer strips the trailing ``$``).
Field layouts differ per report type and per model (the first 2 or 6 characters of the
protocol version name the model, or the operator sets ``model`` in the device options):

    FRI GEO RTL DOG   [vin,]name,power mV,report type,count,{location}*count,tail variants
    ERI               name,ERI mask,power mV,report type,count,{location}*count,odometer km,
                      hour meter,adc..,battery %,device status,[mask blocks: fuel, 1-wire, BLE]
    IGN IGF VGN VGF   name,duration,{location},hour meter,odometer km
    CAN               name,report type,bus state,CAN mask(+ext masks),{mask fields},location
    INF               name,state,iccid,rssi,..,power mV,power2 mV,battery V,charging,...
    OBD LSW TSW IDA WIF GSM VER PNA PFA DAR DTT BAA BID LSA LBS DAT   own layouts
    anything else     "basic": the lat/lon pair is searched for, hdop speed course altitude
                      precede it, the fix time follows; the type names the alarm
    location          hdop,speed km/h,course,altitude m,lon,lat,fix time,
                      [wifi count,(mac,rssi,,,)*],mcc,mnc,lac,cid,append mask|odometer km

Every record gets ``type`` (the three letters after ``GT``). Speeds are km/h, times UTC.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from avl.records import Position
from ingest.protocols.base import utc

# Model names by the first two (or, for 10-character versions, six) characters of the
# protocol version field, as the reference server maps them.
PROTOCOL_MODELS: dict[str, str] = {
    "02": "GL200", "04": "GV200", "06": "GV300", "08": "GMT100", "09": "GV50P", "0F": "GV55",
    "10": "GV55 LITE", "11": "GL500", "1A": "GL300", "1F": "GV500", "21": "GL200", "25": "GV300",
    "27": "GV300W", "28": "GL300VC", "2C": "GL300W", "2D": "GV500VC", "2F": "GV55", "4F": "GV56",
    "30": "GL300", "31": "GV65", "35": "GV200", "36": "GV500", "3F": "GMT100", "40": "GL500",
    "41": "GV75W", "42": "GT501", "44": "GL530", "45": "GB100", "50": "GV55W", "52": "GL50",
    "55": "GL50B", "5E": "GV500MAP", "6E": "GV310LAU", "74": "GV350CEU", "BD": "CV200",
    "C2": "GV600M", "C3": "GL320M", "DC": "GV600MG", "DE": "GL500M", "DF": "CV100LG",
    "F1": "GV350M", "F8": "GV800W", "FC": "GV600W", "802004": "GV58LAU", "802005": "GV355CEU",
    "80201E": "GV30CEU",
}

_HEX4 = re.compile(r"[0-9A-Fa-f]{4}")
_COORDINATE = re.compile(r"-?\d{1,3}\.\d{6}")
_HEX_BYTE = re.compile(r"[0-9A-Fa-f]{1,2}")
_TIME14 = re.compile(r"\d{14}")


@dataclass(slots=True)
class Context:
    """What the text and binary halves need from the protocol object for one frame."""

    make: Callable[[str | None, datetime], Position]  # (device id or None, fix time) -> record
    identify: Callable[[str], None]  # a frame named its device
    now: Callable[[], datetime]
    model_override: str | None = None
    default_time: datetime | None = None

    def new(self, device: str | None) -> Position:
        return self.make(device or None, self.default_time or self.now())


# Helpers ------------------------------------------------------------------------


def put(p: Position, key: str, value: Any) -> None:
    """Set one reference-server attribute, routing the ones we keep in typed fields.

    ``None`` and ``""`` are ignored, as the reference server ignores them."""
    if value is None or (isinstance(value, str) and value == ""):
        return
    if key == "ignition":
        p.ignition = bool(value)
    elif key == "alarm":
        p.alarm = value if p.alarm is None else f"{p.alarm},{value}"
    elif key == "power":
        p.power_mv = round(float(value) * 1000)
    elif key == "battery":
        p.battery_mv = round(float(value) * 1000)
    elif key == "odometer":
        p.odometer_m = round(float(value))
    elif key == "sat":
        p.satellites = int(value)
    elif key == "hdop":
        p.hdop = float(value)
    elif key == "altitude":
        p.altitude_m = float(value)
    else:
        p.attributes[key] = value


def locate(p: Position, latitude: float, longitude: float, when: datetime, *, valid: bool,
           speed_kmh: float | None = None, course: float | None = None,
           altitude: float | None = None) -> None:
    p.latitude = latitude
    p.longitude = longitude
    p.fix_time = when
    p.valid = valid
    p.speed_kmh = speed_kmh
    p.course = course
    if altitude is not None:
        p.altitude_m = altitude


def parse_time(value: str) -> datetime:
    """``yyyyMMddHHmmss`` (UTC) to a datetime; ValueError when malformed."""
    if not _TIME14.fullmatch(value):
        raise ValueError(f"bad time {value!r}")
    return utc(int(value[0:4]), int(value[4:6]), int(value[6:8]),
               int(value[8:10]), int(value[10:12]), int(value[12:14]))


def _float(value: str | None) -> float | None:
    return float(value) if value else None


def _int(value: str | None, base: int = 10) -> int | None:
    return int(value, base) if value else None


def _bit(value: int, bit: int) -> bool:
    return bool((value >> bit) & 1)


def _hours_ms(value: str | None) -> int | None:
    """``hhhhh:mm:ss`` hour meter to milliseconds."""
    if not value:
        return None
    parts = [int(x) for x in value.split(":")]
    seconds = parts[0] * 3600 + (parts[1] * 60 if len(parts) > 1 else 0) + (parts[2] if len(parts) > 2 else 0)
    return seconds * 1000


def model_of(ctx: Context, version: str) -> str:
    if ctx.model_override:
        return ctx.model_override.upper()
    prefix = version[:6] if len(version) > 6 else version[:2]
    return PROTOCOL_MODELS.get(prefix.upper(), "")


def _status(p: Position, value: int) -> None:
    """The 6-hex device status: ignition byte, input byte, output byte."""
    ignition = (value >> 16) & 0xFF
    if _bit(ignition, 4):
        p.ignition = False
    elif _bit(ignition, 5):
        p.ignition = True
    inputs = (value >> 8) & 0xFF
    outputs = value & 0xFF
    p.attributes.update({
        "input": inputs, "in1": _bit(inputs, 1), "in2": _bit(inputs, 2),
        "output": outputs, "out1": _bit(outputs, 0), "out2": _bit(outputs, 1),
    })


def _analog(p: Position, index: int, value: str) -> None:
    if value.startswith("F"):
        put(p, f"fuel{index}", int(value[1:]))
    else:
        put(p, f"adc{index}", int(value) / 1000.0)


# Location, regex form -------------------------------------------------------------

_LOCATION = (
    r"(?P<hdop>\d{1,2}\.?\d?)?,"
    r"(?P<speed>\d{1,3}\.\d)?,"
    r"(?P<course>\d{1,3}\.?\d?)?,"
    r"(?P<alt>-?\d{1,5}\.\d)?,"
    r"(?P<lon>-?\d{1,3}\.\d{6})?,"
    r"(?P<lat>-?\d{1,2}\.\d{6})?,"
    r"(?P<time>\d{14})?"
    r"(?:,\d+(?P<wifi>(?:,[0-9a-fA-F]{12},-\d+,,,)+))?"
    r","
    r"(?P<mcc>\d+)?,"
    r"(?P<mnc>\d+)?,"
    r"(?:(?P<lac>\d+),(?P<cid>\d+),|(?P<lacx>[0-9a-fA-F]+)?,(?P<cidx>[0-9a-fA-F]+)?,)"
    r"(?:\d+|(?P<odometer>\d+\.\d))?,"
)
_LOCATION_ANON = re.sub(r"\(\?P<\w+>", "(?:", _LOCATION)
_LOCATION_RE = re.compile(_LOCATION)

_VERSION = r"(?:.{6}|.{10})?,"
_IMEI = r"(?P<imei>\d{15}|[0-9a-fA-F]{14}),"
_TAIL = r"(?P<devtime>\d{14})?,(?P<count>[0-9a-fA-F]{4})\$?"


def _compile(*parts: str) -> re.Pattern[str]:
    return re.compile("".join(parts), re.DOTALL)


def _regex_location(p: Position, m: re.Match[str]) -> None:
    hdop = _float(m["hdop"])
    put(p, "hdop", hdop)
    if m["lon"] and m["lat"] and m["time"]:
        locate(p, float(m["lat"]), float(m["lon"]), parse_time(m["time"]),
               valid=hdop is None or hdop > 0, speed_kmh=float(m["speed"] or 0),
               course=float(m["course"] or 0), altitude=float(m["alt"] or 0))
    if m["odometer"]:
        put(p, "odometer", float(m["odometer"]) * 1000)


def _device_time(ctx: Context, m: re.Match[str]) -> None:
    if m["devtime"]:
        ctx.default_time = parse_time(m["devtime"])


# Location, field-index form -------------------------------------------------------


def _field_location(p: Position, model: str, v: list[str], i: int) -> int:
    """Decode one location block starting at ``v[i]``; return the index after it."""
    hdop = _float(v[i])
    put(p, "hdop", hdop)
    speed = float(v[i + 1] or 0)
    course = float(v[i + 2] or 0)
    altitude = float(v[i + 3] or 0)
    i += 4
    if v[i] and v[i + 1] and v[i + 2]:
        locate(p, float(v[i + 1]), float(v[i]), parse_time(v[i + 2]),
               valid=hdop is None or hdop > 0, speed_kmh=speed, course=course, altitude=altitude)
    i += 3
    if len(v[i + 1]) == 12:  # wifi access points: count, then (mac, rssi, 3 reserved) each
        i += 1 + int(v[i]) * 5
    i += 4  # mcc, mnc, lac, cid
    if model.startswith("GL5"):
        i += 2  # csq rssi, csq ber
    if model in ("GT500MA", "GT501"):
        i += 1  # csq rssi
    elif model != "GL320M":
        value = v[i]
        i += 1
        if value:
            if "." in value:
                put(p, "odometer", float(value) * 1000)
            else:
                append_mask = int(value, 16)
                if _bit(append_mask, 0):
                    put(p, "sat", int(v[i]))
                    i += 1
                if _bit(append_mask, 1):
                    i += 1  # trigger type
                if _bit(append_mask, 4):
                    i += 1  # gnss jamming state
    return i


# FRI / GEO / RTL / DOG ------------------------------------------------------------

_FRI = _compile(
    r"\+(?:RESP|BUFF):GT...,", _VERSION, _IMEI,
    r"(?:(?P<vin>[0-9A-Z]{17}),)?",
    r"[^,]*,",
    r"(?P<power>\d+)?,",
    r"(?:(?P<rtype>\d{1,2}),)?",
    r"(?:\d{1,2},)?",
    r"(?:\d*,)?",
    r"(?:(?P<battery0>\d+),)?",
    r"(?P<locations>(?:", _LOCATION_ANON, r")++)",  # possessive: no quadratic backtracking
    r"(?:",
    r"\d{1,2},(?P<bat_mv>\d{1,5})?,(?P<level1>\d{1,3}),[01],(?:[01])?,(?P<temp>-?\d{1,2}\.\d)?,",
    r"|",
    r"(?P<odo2>\d{1,7}\.\d)?,(?P<hours>\d{5}:\d\d:\d\d)?,(?P<adc1>[0-9a-fA-F]+)?,"
    r"(?P<adc2>[0-9a-fA-F]+)?,(?:\d*,)?(?P<level2>\d{1,3})?,(?P<status>[0-9a-fA-F]{6})?,"
    r"(?P<rpm>\d+)?,(?:\d+\.?\d*|Inf|NaN)?,(?P<fuel>\d+)?,",
    r"|",
    r"(?P<rssi>-?\d),(?P<level3>\d{1,3}),",
    r"|",
    r"(?:(?P<odo4>\d{1,7}\.\d)?,)?(?P<level4>\d{1,3})?,",
    r")",
    r".*",
    _TAIL,
)


def decode_fri(ctx: Context, sentence: str) -> list[Position] | None:
    m = _FRI.fullmatch(sentence)
    if m is None:
        return None
    positions: list[Position] = []
    for item in _LOCATION_RE.finditer(m["locations"]):
        p = ctx.new(m["imei"])
        put(p, "vin", m["vin"])
        _regex_location(p, item)
        positions.append(p)
    if not positions:
        return None
    last = positions[-1]
    power = _int(m["power"])
    if power is not None and power > 10:
        put(last, "power", power / 1000.0)  # only some devices report it here
    put(last, "batteryLevel", _int(m["battery0"]))
    if m["bat_mv"]:
        put(last, "battery", int(m["bat_mv"]) / 1000.0)
    put(last, "batteryLevel", _int(m["level1"]))
    put(last, "temp1", _float(m["temp"]))
    if m["odo2"]:
        put(last, "odometer", float(m["odo2"]) * 1000)
    put(last, "hours", _hours_ms(m["hours"]))
    put(last, "adc1", m["adc1"])
    put(last, "adc2", m["adc2"])
    put(last, "batteryLevel", _int(m["level2"]))
    if m["status"]:
        _status(last, int(m["status"], 16))
    put(last, "rpm", _int(m["rpm"]))
    put(last, "fuel", _int(m["fuel"]))
    if m["rssi"] and m["level3"]:
        if m["rtype"]:
            report_type = int(m["rtype"])
            put(last, "motion", _bit(report_type, 0))
            put(last, "charge", _bit(report_type, 1))
        put(last, "rssi", int(m["rssi"]))
        put(last, "batteryLevel", int(m["level3"]))
    if m["odo4"]:
        put(last, "odometer", float(m["odo4"]) * 1000)
    put(last, "batteryLevel", _int(m["level4"]))
    return positions


# ERI ------------------------------------------------------------------------------


def decode_eri(ctx: Context, v: list[str]) -> list[Position] | None:
    extended = v[0].endswith("ERI")
    version, imei = v[1], v[2]
    model = model_of(ctx, version)
    i = 3
    vin = None
    if model == "GV500":
        vin = v[i]
        i += 1
    i += 1  # device name
    mask = 0
    if extended:
        mask = int(v[i], 16)
        i += 1
    power = int(v[i]) / 1000.0 if v[i] else None
    i += 2  # power, report type
    count = int(v[i])
    i += 1
    positions: list[Position] = []
    for _ in range(count):
        p = ctx.new(imei)
        put(p, "vin", vin)
        i = _field_location(p, model, v, i)
        positions.append(p)
    if not positions:
        return None
    p = positions[-1]

    def take() -> str:
        nonlocal i
        i += 1
        return v[i - 1]

    def counted() -> int:
        """A count read from the frame, refused when more items than fields are left (a hostile
        count would otherwise spin the loop below for ever without reading anything)."""
        n = int(take())
        if not 0 <= n <= len(v) - i:
            raise ValueError(f"count {n} exceeds the {len(v) - i} fields left")
        return n

    if not extended and re.fullmatch(r"GL200|GL300(W|VC)?", model):
        put(p, "batteryLevel", _int(take()))
        return positions

    put(p, "power", power)
    if not model.startswith("GL5"):
        value = take()
        put(p, "odometer", float(value) * 1000 if value else None)
    if not model.startswith("GL5") and model != "GL320M":
        put(p, "hours", _hours_ms(take()))
        value = take()
        if value:
            _analog(p, 1, value)
    if model.startswith("GV") and not model.startswith("GV6") and model != "GV350M":
        value = take()
        if value:
            _analog(p, 2, value)
    if model in ("GV200", "GV310LAU", "GV350CEU"):
        value = take()
        if value:
            _analog(p, 3, value)
    elif (model.startswith("GV3") and model.endswith("CEU")) or model.startswith("GV600M"):
        i += 1  # reserved

    if model.startswith("GL5"):
        put(p, "batteryLevel", _int(take()))
        i += 1  # mode selection
        value = take()
        put(p, "motion", int(value) > 0 if value else None)
    elif model == "GV200":
        put(p, "input", _int(take(), 16))
        put(p, "output", _int(take(), 16))
        i += 1  # uart device type
    elif model == "GL320M":
        put(p, "batteryLevel", _int(take()))
        if _bit(mask, 7):
            put(p, "externalBattery", _int(take()))
    else:
        put(p, "batteryLevel", _int(take()))
        value = take()
        if value:
            _status(p, int(value, 16))
        if extended:
            i += 1  # reserved / uart device type
        else:
            put(p, "rpm", _int(take()))
            i += 1  # fuel consumption
            put(p, "fuel", _int(take()))

    if _bit(mask, 0) and model != "GV350M":
        put(p, "fuel", _int(take(), 16))

    if _bit(mask, 29):
        i += 2  # reserved
        data_mask = int(take(), 16)
        if _bit(data_mask, 0):
            put(p, "fuel", _int(take(), 16))
        if _bit(data_mask, 1):
            i += 1  # fuel height

    if _bit(mask, 1):  # 1-wire temperature sensors
        for n in range(1, counted() + 1):
            i += 2  # id, type
            value = take()
            if value:
                raw = int(value, 16) & 0xFFFF
                put(p, f"temp{n}", (raw - 0x10000 if raw & 0x8000 else raw) * 0.0625)

    if _bit(mask, 2):
        return positions  # CAN data is not decoded here

    if (_bit(mask, 3) or _bit(mask, 4) or (_bit(mask, 0) and model == "GV350M")) and i < len(v) - 2:
        for _ in range(counted()):
            i += 1  # type
            if model == "GV350M":
                i += 1  # uart id
                if _bit(mask, 0):
                    put(p, "fuel", int(take(), 16))
            if _bit(mask, 3):
                put(p, "fuel", float(take()))
            if _bit(mask, 4):
                i += 1  # volume
            if _bit(mask, 10):
                i += 1  # fuel temperature

    if _bit(mask, 7) and model != "GL320M":
        for _ in range(counted()):
            i += 1  # serial number
            sensor_type = int(take())
            i += 1  # temperature
            if sensor_type == 2:
                i += 1  # humidity

    if _bit(mask, 8) and model != "GL320M":  # bluetooth accessories
        for n in range(1, counted() + 1):
            i += 3  # index, type, model
            if model.startswith("GV600M"):
                i += 1  # raw data length
            i += 1  # raw data
            device_mask = int(take(), 16)
            if _bit(device_mask, 0):
                i += 1  # name
            if _bit(device_mask, 1):
                put(p, f"tag{n}Id", take())
            if _bit(device_mask, 2):
                i += 1  # status
            if _bit(device_mask, 3):
                i += 1  # battery level
            if _bit(device_mask, 4):
                put(p, f"tag{n}Temp", _float(take()))
            if _bit(device_mask, 5):
                put(p, f"tag{n}Humidity", _int(take()))
            for bit in (7, 8, 9, 10, 11, 12):
                if _bit(device_mask, bit):
                    i += 1
            if _bit(device_mask, 13):
                put(p, f"tag{n}Battery", _int(take()))
            if _bit(device_mask, 14):
                i += 1  # relay
    return positions


# IGN / IGF / VGN / VGF ------------------------------------------------------------


def decode_ign(ctx: Context, v: list[str], report: str) -> Position:
    model = model_of(ctx, v[1])
    p = ctx.new(v[2])
    i = 4  # header, version, imei, device name
    if model == "CV200":
        i += 2  # reserved, report type
    i += 1  # duration of ignition on / off
    i = _field_location(p, model, v, i)
    p.ignition = "GN" in report
    put(p, "hours", _hours_ms(v[i]))
    if v[i + 1]:
        put(p, "odometer", float(v[i + 1]) * 1000)
    return p


# CAN ------------------------------------------------------------------------------


def _strip_l(value: str) -> float | None:
    if value.startswith("K"):
        return None
    return float(value[1:] if value.startswith("L") else value)


# (bit, key, converter) in wire order (bit 5, engine rpm, comes before bit 4, speed).
_CAN_FIELDS: tuple[tuple[int, str, Callable[[str], Any]], ...] = (
    (1, "ignition", lambda s: int(s) > 0),
    (2, "obdOdometer", lambda s: int(s[1:]) * 100 if s.startswith("H") else None),
    (3, "fuelUsed", _strip_l),
    (5, "rpm", int),
    (4, "obdSpeed", int),
    (6, "coolantTemp", int),
    (7, "fuelConsumption", lambda s: float(s[3:]) if s.startswith("L/H") else None),
    (8, "fuel", lambda s: float(s[1:])),
    (9, "range", lambda s: int(s) * 100),
    (10, "throttle", int),
    (11, "hours", lambda s: round(float(s) * 3_600_000)),
    (12, "drivingTime", float),
    (13, "idleHours", float),
    (14, "idleFuelConsumption", _strip_l),
    (15, "axleWeight", int),
    (16, "tachographInfo", lambda s: int(s, 16)),
    (17, "indicators", lambda s: int(s, 16)),
    (18, "lights", lambda s: int(s, 16)),
    (19, "doors", lambda s: int(s, 16)),
    (20, "vehicleOverspeed", float),
    (21, "engineOverspeed", float),
)

_CAN_EXT_FIELDS: dict[int, tuple[str, Callable[[str], Any]]] = {
    0: ("adBlueLevel", lambda s: float(s[1:] if s[:1] in ("L", "P") else s)),
    1: ("axleWeight1", int),
    2: ("axleWeight3", int),
    3: ("axleWeight4", int),
    7: ("adc1", lambda s: int(s) / 1000.0),
    15: ("driver1Card", str),
    16: ("driver2Card", str),
    17: ("driver1Name", str),
    18: ("driver2Name", str),
    19: ("registration", str),
}


def decode_can(ctx: Context, v: list[str]) -> Position:
    model = model_of(ctx, v[1])
    p = ctx.new(v[2])
    ceu = re.fullmatch(r"GV35.CEU", model) is not None
    i = 6  # header, version, imei, device name, report type, bus state
    mask = int(v[i], 16)
    i += 1

    def take() -> str:
        nonlocal i
        i += 1
        return v[i - 1]

    def mask_count(value: str) -> int:
        return 1 + bin(int(value, 16) if value else 0).count("1")

    if _bit(mask, 0):
        put(p, "vin", take())
    for bit, key, convert in _CAN_FIELDS:
        if _bit(mask, bit):
            value = take()
            if value:
                put(p, key, convert(value))
    if model == "GV350M":
        i += sum(_bit(mask, b) for b in (22, 23, 24))
    elif ceu:
        i += sum(_bit(mask, b) for b in (23, 24, 25, 26, 27))

    ext = 0
    if _bit(mask, 29):
        value = take()
        ext = int(value, 16) if value else 0
    for bit in range(0, 31):
        if not _bit(ext, bit):
            continue
        if bit in _CAN_EXT_FIELDS:
            key, convert = _CAN_EXT_FIELDS[bit]
            value = take()
            if value:
                put(p, key, convert(value))
        elif bit in (26, 27):
            if not ceu:
                i += 1  # tachograph driver working time mask
        elif bit == 28:
            count = int(v[i]) if ceu and v[i] else 0
            i += 1 + count  # dtc codes
        else:
            i += 1

    can = 0
    if _bit(ext, 31):
        value = take()
        can = int(value, 16) if value else 0
    i += _bit(can, 0) + _bit(can, 1)
    if model != "GV350CEU" and _bit(can, 2):
        i += 1  # tachograph timestamp
    if ceu:
        i += sum(_bit(can, b) for b in range(4, 13))
        i += _bit(can, 14)
        if _bit(can, 15):
            count = int(v[i]) if v[i] else 0
            i += 1 + count * 5  # axle, wheel, pressure, temperature, status
        i += sum(_bit(can, b) for b in range(16, 20))
        if _bit(can, 3):
            i += mask_count(v[i])  # e-genset data
        if _bit(mask, 28):
            i += mask_count(v[i])  # electric vehicle data
    if model == "GV355CEU":
        for bit in (26, 27):
            if _bit(ext, bit):
                i += mask_count(v[i])  # tachograph working time

    if model != "GV355CEU" and _bit(mask, 30):
        while not v[i]:
            i += 1
        valid = int(take()) > 0
        if v[i]:
            speed, course, altitude = float(v[i]), float(v[i + 1]), float(v[i + 2])
            locate(p, float(v[i + 4]), float(v[i + 3]), parse_time(v[i + 5]), valid=valid,
                   speed_kmh=speed, course=course, altitude=altitude)
    return p


# INF ------------------------------------------------------------------------------

_INF_STATES: dict[int, tuple[bool | None, bool | None]] = {
    0x16: (False, True), 0x1A: (False, True), 0x12: (False, True), 0x11: (False, False),
    0x21: (True, False), 0x22: (True, True), 0x41: (None, False), 0x42: (None, True),
}


def decode_inf(ctx: Context, v: list[str]) -> Position | None:
    version = v[1]
    if len(version) > 10:
        return None  # GT300 dialect
    p = ctx.new(v[2])
    model = model_of(ctx, version)
    i = 4  # header, version, imei, device name

    def take() -> str:
        nonlocal i
        i += 1
        return v[i - 1]

    state = take()
    if state:
        ignition, motion = _INF_STATES.get(int(state, 16), (None, None))
        put(p, "ignition", ignition)
        put(p, "motion", motion)
    put(p, "iccid", take())
    put(p, "rssi", _int(take()))
    i += 2  # signal quality, external power supply
    if len(v[i + 1]) >= 12:
        i += 1  # ble sensor mac
        put(p, "deviceTemp", int(take()))
        put(p, "humidity", int(take()))
    value = take()
    if value:
        if "." in value:
            put(p, "odometer", float(value) * 1000)
        else:
            put(p, "power", int(value) / 1000.0)
    if model != "GV500VC":
        if model in ("GV350M", "GV310LAU"):
            i += 1  # expand mask or network type
        else:
            value = take()
            if value:
                put(p, "power2", int(value) / 1000.0)
    put(p, "battery", _float(take()))
    value = take()
    if value and int(value) == 1:
        put(p, "charge", True)
    if model == "GV310LAU":
        i += 5  # led state, power saving, external antenna, last fix time, pin mask
        for n in (1, 2, 3):
            put(p, f"adc{n}", int(take()))
    return p


# Regex-shaped reports -------------------------------------------------------------

_OBD = _compile(
    r"\+RESP:GTOBD,", _VERSION, _IMEI,
    r"(?:[0-9A-Z]{17})?,", r"[^,]{0,20},", r"[01],", r"[0-9a-fA-F]{1,8},", r"(?:[0-9A-Z]{17})?,",
    r"[01],", r"(?:\d{1,5})?,", r"(?:[0-9a-fA-F]{8})?,",
    r"(?P<rpm>\d{1,5})?,", r"(?P<obdspeed>\d{1,3})?,", r"(?P<coolant>-?\d{1,3})?,",
    r"(?P<fuelcons>\d+\.?\d*|Inf|NaN)?,", r"(?P<dtcsdist>\d{1,5})?,", r"(?:\d{1,5})?,",
    r"(?P<obdconn>[01])?,", r"(?P<dtcsnum>\d{1,3})?,", r"(?P<dtcs>[0-9a-fA-F]*),",
    r"(?P<throttle>\d{1,3})?,", r"(?:\d{1,3})?,", r"(?P<fuel>\d{1,3})?,", r"(?:[0-9A],)?",
    r"(?P<obdodo>\d+),", _LOCATION, r"(?P<obdodo2>\d{1,7}\.\d)?,", _TAIL,
)

_LSW = _compile(r"\+RESP:GT[LT]SW,", _VERSION, _IMEI, r"[^,]*,[01],(?P<state>[01]),", _LOCATION, _TAIL)
_IDA = _compile(r"\+RESP:GTIDA,", _VERSION, _IMEI, r"[^,]*,,(?P<rfid>[^,]+),[01],1,", _LOCATION,
                r"(?P<idaodo>\d+\.\d),,,,,", _TAIL)
_WIF = _compile(r"\+RESP:GTWIF,", _VERSION, _IMEI, r"[^,]*,\d+,(?:[0-9a-fA-F]{12},-?\d+,,,,)+,,,,",
                r"(?P<battery>\d{1,3}),", _TAIL)
_GSM = _compile(r"\+RESP:GTGSM,", _VERSION, _IMEI, r"(?:STR|CTN|NMR|RTL),.*", _TAIL)
_VER = _compile(r"\+(?:RESP|BUFF):GTVER,", _VERSION, _IMEI, r"[^,]*,(?P<dtype>[^,]*),",
                r"(?P<fw>[0-9a-fA-F]{4}),(?P<hw>[0-9a-fA-F]{4}),(?P<devtime>\d{14}),",
                r"(?P<count>[0-9a-fA-F]{4})\$?")
_PNA = _compile(r"\+RESP:GTP[NF]A,", _VERSION, _IMEI, r"[^,]*,", _TAIL)
_DAR = _compile(r"\+RESP:GTDAR,", _VERSION, _IMEI, r"[^,]*,(?P<wtype>\d),(?P<fatigue>\d{1,2}),,,",
                _LOCATION, r".*", _TAIL)
_DTT = _compile(r"\+RESP:GTDTT,", _VERSION, _IMEI, r"[^,]*,,,\d,\d+,(?P<data>[0-9a-fA-F]+),", _TAIL)
_BAA = _compile(r"\+RESP:GTBAA,", _VERSION, _IMEI, r"[^,]*,[0-9a-fA-F]+,\d,\d,[0-9a-fA-F]+,",
                r"(?P<mask>[0-9a-fA-F]{4}),(?P<acc>(?:[^,]+,){0,6})", _LOCATION, r".*", _TAIL)
_BID = _compile(r"\+RESP:GTBID,", _VERSION, _IMEI, r"[^,]*,\d,\d,",
                r"(?P<mask>[0-9a-fA-F]{4}),(?P<acc>(?:[^,]+,){0,2})", _LOCATION, r".*", _TAIL)
_LSA = _compile(r"\+RESP:GTLSA,", _VERSION, _IMEI, r"[^,]*,\d,\d,\d+,", _LOCATION,
                r"\d+,(?P<light>\d),(?P<battery>\d+),[01],[01]?,(?P<temp>-?\d+\.\d)?,", _TAIL)


def _start(ctx: Context, pattern: re.Pattern[str], sentence: str) -> tuple[Position, re.Match[str]] | None:
    m = pattern.fullmatch(sentence)
    if m is None:
        return None
    if "devtime" in m.re.groupindex:
        _device_time(ctx, m)
    return ctx.new(m["imei"]), m


def decode_obd(ctx: Context, sentence: str) -> Position | None:
    started = _start(ctx, _OBD, sentence)
    if started is None:
        return None
    p, m = started
    put(p, "rpm", _int(m["rpm"]))
    put(p, "obdSpeed", _int(m["obdspeed"]))
    put(p, "temp1", _int(m["coolant"]))
    put(p, "fuelConsumption", m["fuelcons"])
    put(p, "dtcsClearedDistance", _int(m["dtcsdist"]))
    if m["obdconn"]:
        put(p, "odbConnect", m["obdconn"] == "1")
    put(p, "dtcsNumber", _int(m["dtcsnum"]))
    put(p, "dtcsCodes", m["dtcs"])
    put(p, "throttle", _int(m["throttle"]))
    put(p, "fuel", _int(m["fuel"]))
    put(p, "obdOdometer", int(m["obdodo"]) * 1000)
    _regex_location(p, m)
    if m["obdodo2"]:
        put(p, "obdOdometer", int(float(m["obdodo2"]) * 1000))
    return p


def decode_lsw(ctx: Context, sentence: str) -> Position | None:
    started = _start(ctx, _LSW, sentence)
    if started is None:
        return None
    p, m = started
    put(p, "in1" if "LSW" in sentence else "in2", m["state"] == "1")
    _regex_location(p, m)
    return p


def decode_ida(ctx: Context, sentence: str) -> Position | None:
    started = _start(ctx, _IDA, sentence)
    if started is None:
        return None
    p, m = started
    put(p, "driverUniqueId", m["rfid"])
    _regex_location(p, m)
    put(p, "odometer", float(m["idaodo"]) * 1000)
    return p


def decode_wif(ctx: Context, sentence: str) -> Position | None:
    started = _start(ctx, _WIF, sentence)
    if started is None:
        return None
    p, m = started
    put(p, "batteryLevel", int(m["battery"]))
    return p


def decode_gsm(ctx: Context, sentence: str) -> Position | None:
    started = _start(ctx, _GSM, sentence)
    return None if started is None else started[0]


def decode_ver(ctx: Context, sentence: str) -> Position | None:
    started = _start(ctx, _VER, sentence)
    if started is None:
        return None
    p, m = started
    put(p, "deviceType", m["dtype"])
    put(p, "versionFw", int(m["fw"], 16))
    put(p, "versionHw", int(m["hw"], 16))
    return p


def decode_pna(ctx: Context, sentence: str) -> Position | None:
    started = _start(ctx, _PNA, sentence)
    if started is None:
        return None
    p, _ = started
    put(p, "alarm", "powerOn" if "PNA" in sentence else "powerOff")
    return p


def decode_dar(ctx: Context, sentence: str) -> Position | None:
    started = _start(ctx, _DAR, sentence)
    if started is None:
        return None
    p, m = started
    warning = int(m["wtype"])
    if warning == 1:
        put(p, "alarm", "fatigueDriving")
        put(p, "fatigueDegree", int(m["fatigue"]))
    else:
        put(p, "warningType", warning)
    _regex_location(p, m)
    return p


def decode_dtt(ctx: Context, sentence: str) -> Position | None:
    started = _start(ctx, _DTT, sentence)
    if started is None:
        return None
    p, m = started
    data = bytes.fromhex(m["data"]).decode("ascii", errors="replace")
    if "COMB" in data:
        put(p, "fuel", float(data.split(",")[2]))
    else:
        put(p, "result", data)
    return p


def _accessory(p: Position, mask: int, values: list[str],
               fields: tuple[tuple[int, str, Callable[[str], Any]], ...]) -> None:
    index = 0
    for bit, key, convert in fields:
        if _bit(mask, bit):
            put(p, key, convert(values[index]))
            index += 1


_BAA_FIELDS: tuple[tuple[int, str, Callable[[str], Any]], ...] = (
    (0, "accessoryName", str), (1, "accessoryMac", str), (2, "accessoryStatus", int),
    (3, "accessoryVoltage", lambda s: int(s) / 1000.0), (4, "accessoryTemp", int),
    (5, "accessoryHumidity", int),
)
_BID_FIELDS: tuple[tuple[int, str, Callable[[str], Any]], ...] = (
    (1, "accessoryMac", str), (3, "accessoryVoltage", lambda s: int(s) / 1000.0),
)


def decode_baa(ctx: Context, sentence: str, bid: bool = False) -> Position | None:
    started = _start(ctx, _BID if bid else _BAA, sentence)
    if started is None:
        return None
    p, m = started
    _accessory(p, int(m["mask"], 16), m["acc"].split(","), _BID_FIELDS if bid else _BAA_FIELDS)
    _regex_location(p, m)
    return p


def decode_lsa(ctx: Context, sentence: str) -> Position | None:
    started = _start(ctx, _LSA, sentence)
    if started is None:
        return None
    p, m = started
    _regex_location(p, m)
    put(p, "lightLevel", int(m["light"]))
    put(p, "batteryLevel", int(m["battery"]))
    put(p, "temp1", _float(m["temp"]))
    return p


# LBS / DAT ------------------------------------------------------------------------


def decode_lbs(ctx: Context, v: list[str]) -> Position:
    p = ctx.new(v[2])
    put(p, "batteryLevel", int(v[6]))  # after device name, trigger type, report type
    return p


def decode_dat(ctx: Context, v: list[str]) -> Position:
    model = model_of(ctx, v[1])
    p = ctx.new(v[2])
    put(p, "data", v[7])  # after device name, report type, 2 reserved
    _field_location(p, model, v, 8)
    return p


# Basic: any other report ----------------------------------------------------------

_ALARMS: dict[str, str] = {
    "SOS": "sos", "SPD": "overspeed", "TOW": "tow", "IDL": "idle", "PNA": "powerOn",
    "PFA": "powerOff", "EPN": "powerRestored", "MPN": "powerRestored", "EPF": "powerCut",
    "MPF": "powerCut", "BPL": "lowBattery", "STT": "movement", "SWG": "geofence",
    "TMP": "temperature", "TEM": "temperature", "JDR": "jamming", "JDS": "jamming",
}


def _imei_field(v: list[str]) -> str:
    """Field 2 carries the IMEI, except in the GT300 dialect where field 1 does."""
    if len(v) > 1 and re.fullmatch(r"\d{15}", v[1]) and not re.fullmatch(r"\d{15}|[0-9a-fA-F]{14}", v[2]):
        return v[1]
    return v[2]


def decode_basic(ctx: Context, v: list[str], report: str) -> Position:
    p = ctx.new(_imei_field(v))
    model = model_of(ctx, v[1])
    if len(v) > 5 and _HEX_BYTE.fullmatch(v[5]):
        report_type = int(v[5], 16)
        if report in ("STR", "CTN"):
            battery = v[8] if len(v) > 8 else ""
            if re.fullmatch(r"GL5[03]0", model) and battery:
                put(p, "batteryLevel", int(battery))
        elif report == "NMR":
            put(p, "motion", report_type == 1)
        elif report == "DIS":
            put(p, f"in{report_type // 0x10}", report_type % 0x10 == 1)
        elif report == "IGL":
            put(p, "ignition", report_type % 0x10 == 1)
        elif report == "HBM":
            behaviour = report_type % 0x10
            if behaviour in (0, 3):
                put(p, "alarm", "hardBraking")
            elif behaviour in (1, 4):
                put(p, "alarm", "hardAcceleration")
            elif behaviour == 2:
                put(p, "alarm", "hardCornering")

    located = False
    for i in range(4, len(v) - 2):
        if _COORDINATE.fullmatch(v[i]) and _COORDINATE.fullmatch(v[i + 1]):
            try:
                hdop, speed, course, altitude = (float(x) if x else None for x in v[i - 4:i])
                when = parse_time(v[i + 2])
            except ValueError:
                continue  # a coordinate-shaped pair inside some other data
            put(p, "hdop", hdop)
            locate(p, float(v[i + 1]), float(v[i]), when, valid=hdop is None or hdop > 0,
                   speed_kmh=speed or 0.0, course=course or 0.0, altitude=altitude or 0.0)
            located = True
            break

    if located and len(v) >= 2 and len(v[-2]) == 14 and re.fullmatch(r"\d{1,3}", v[-3]):
        put(p, "batteryLevel", int(v[-3]))
    if report in _ALARMS:
        put(p, "alarm", _ALARMS[report])
    return p


# +ACK -----------------------------------------------------------------------------


def decode_ack(ctx: Context, v: list[str]) -> tuple[list[Position], bytes | None]:
    if v[0] == "+ACK:GTHBD":
        if len(v) > 2 and v[2]:
            ctx.identify(v[2])
        return [], f"+SACK:GTHBD,{v[1]},{v[-1]}$".encode("latin-1")
    p = ctx.new(v[2] if len(v) > 2 else None)
    p.valid = False
    put(p, "result", v[0])
    return [p], None


# Dispatch -------------------------------------------------------------------------

_BY_SENTENCE: dict[str, Callable[[Context, str], Position | list[Position] | None]] = {
    "OBD": decode_obd, "FRI": decode_fri, "GEO": decode_fri, "RTL": decode_fri, "DOG": decode_fri,
    "LSW": decode_lsw, "TSW": decode_lsw, "IDA": decode_ida, "WIF": decode_wif, "GSM": decode_gsm,
    "VER": decode_ver, "PNA": decode_pna, "PFA": decode_pna, "DAR": decode_dar, "DTT": decode_dtt,
    "BAA": decode_baa, "BID": lambda c, s: decode_baa(c, s, bid=True), "LSA": decode_lsa,
}
_BY_VALUES: dict[str, Callable[[Context, list[str]], Position | list[Position] | None]] = {
    "INF": decode_inf, "CAN": decode_can, "ERI": decode_eri, "LBS": decode_lbs, "DAT": decode_dat,
    "IGN": lambda c, v: decode_ign(c, v, "IGN"), "IGF": lambda c, v: decode_ign(c, v, "IGF"),
    "VGN": lambda c, v: decode_ign(c, v, "VGN"), "VGF": lambda c, v: decode_ign(c, v, "VGF"),
}


def decode(ctx: Context, sentence: str) -> tuple[list[Position], bytes | None]:
    """Decode one sentence (``$`` already stripped). Raises ValueError when it is not one."""
    type_index = sentence.find(":GT")
    start = sentence.rfind("+", 0, type_index) if type_index > 0 else -1
    if start < 0:
        raise ValueError("not an @Track report (no '+...:GT' header)")
    sentence = sentence[start:]  # drop line noise glued in front of the header
    type_index -= start
    values = sentence.split(",")
    if len(values) < 3:
        raise ValueError("too few fields")
    if len(values[-2]) == 14 and _TIME14.fullmatch(values[-2]):
        try:
            ctx.default_time = parse_time(values[-2])
        except ValueError:
            ctx.default_time = None
    if sentence.startswith("+ACK"):
        return decode_ack(ctx, values)

    report = sentence[type_index + 3:type_index + 6]
    result: Position | list[Position] | None = None
    try:
        if report in _BY_SENTENCE:
            result = _BY_SENTENCE[report](ctx, sentence)
        elif report in _BY_VALUES:
            result = _BY_VALUES[report](ctx, values)
    except (ValueError, IndexError):
        result = None  # a layout this model variant does not follow: fall back to the scan
    if result is None:
        result = decode_basic(ctx, values, report)
    positions = result if isinstance(result, list) else [result]
    for p in positions:
        p.attributes["type"] = report

    reply = None
    if sentence.startswith(("+RESP", "+BUFF")) and _HEX4.fullmatch(values[-1]):
        reply = f"+SACK:{values[-1]}$".encode("latin-1")
    return positions, reply
