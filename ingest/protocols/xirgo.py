"""Xirgo XT-series fleet units (XT-2000/2060/4700/4860 ...): ``$$...##`` text over TCP and UDP.

Fixed layouts (``$$`` and ``##`` around comma-separated fields)::

    old  UID, event, yyyy/mm/dd, hh:mm:ss (UTC), lat, lon, altitude m, speed mph, course,
         satellites, HDOP, battery V, GSM, odometer miles, GPS status (1 = fix), ...
    new  UID, event, yyyy/mm/dd, hh:mm:ss, lat, lon, altitude m, speed mph, acceleration,
         deceleration, (counter), course, satellites, HDOP, odometer miles, fuel consumption,
         battery V, GSM, GPS status, [reset mode, in1 in2 in3 out1 (4 digits), adc1, fuel level,
         engine load, engine hours, oil pressure, oil level, oil temperature, coolant pressure,
         coolant level, coolant temperature]

Units configured with a field list send those fields instead; the server is told the list as the
per-device option ``form`` (the reference's ``xirgo.form``). Keys understood: UID/IM unit id,
EV event, D date MM/DD/YYYY, T time hh:mm:ss, LT/LN latitude/longitude, AL altitude m, GSPT speed
km/h, SP speed mph, HD heading (whole numbers in 0.1 deg), SV satellites, HP HDOP, BV battery V,
CQ GSM, MI odometer miles, GS GPS status (3 = fix), SI ICCID, IG ignition (1 on, 2 off),
OT outputs. Other keys are skipped by position.

Events: 4001/4003/6011/6013 ignition on, 4002/4004/6012/6014 ignition off, 4005 charging off,
6002 overspeed, 6006/6007 harsh acceleration/braking, 6008 low power, 6009/6010 power cut/
restored, 6016 idle, 6017 tow, 6030/6071 moving, 6031 stopped, 6032 parking, 6090 removal,
6091 low battery.

Replies: over UDP a message ending ``,<sequence>##`` is answered ``!UDP_ACK,<event>,<sequence>``;
over TCP nothing. No checksum exists.

Decisions: the fixed layout is recognised per message (new first, then old), not fixed by a
connection's first message; ``BV`` (the vehicle battery the unit is wired to) is kept as the
external power voltage; a message with fewer fields than its form (an information message) or a
fixed message of neither layout yields no record (still answered over UDP).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, ClassVar

from avl.records import Position
from ingest.protocols import options
from ingest.protocols.base import MPH_TO_KMH, DecodeResult, Protocol, Session, text, utc
from ingest.protocols.messages import garbage_before, malformed

START = b"$$"
END = b"##"
MILE_M = 1609.344

_NUMBER = r"-?\d+(?:\.\d*)?"
_HEAD = (r"\$\$(?P<uid>\d+),(?P<event>\d+),(?P<date>\d{4}/\d\d/\d\d),(?P<time>\d\d:\d\d:\d\d),"
         rf"(?P<lat>{_NUMBER}),(?P<lon>{_NUMBER}),(?P<alt>{_NUMBER}),(?P<speed>\d+(?:\.\d*)?),")
_OLD = re.compile(_HEAD + r"(?P<course>\d+(?:\.\d*)?),(?P<sats>\d+),(?P<hdop>\d+(?:\.\d*)?),(?P<battery>\d+\.\d+),"
                  r"(?P<gsm>\d+),(?P<odometer>\d+(?:\.\d*)?),(?P<gps>\d+),", re.ASCII)
_NEW = re.compile(
    _HEAD + r"\d+(?:\.\d*)?,\d+(?:\.\d*)?,\d+,(?P<course>\d+(?:\.\d*)?),(?P<sats>\d+),(?P<hdop>\d+(?:\.\d*)?),"
    r"(?P<odometer>\d+(?:\.\d*)?),(?P<fuel>\d+(?:\.\d*)?),(?P<battery>\d+\.\d+),(?P<gsm>\d+),(?P<gps>\d+)"
    r"(?:,\d,(?P<in1>[01])(?P<in2>[01])(?P<in3>[01])(?P<out1>[01]),(?P<adc1>\d+(?:\.\d*)?),"
    r"(?P<fuel_level>\d+(?:\.\d*)?),\d+,(?P<hours>\d+),(?P<oil_pressure>\d+),(?P<oil_level>\d+),(?P<oil_temp>-?\d+),"
    r"(?P<coolant_pressure>\d+),(?P<coolant_level>\d+),(?P<coolant_temp>-?\d+))?", re.ASCII)
_UDP_ACK = re.compile(r"\$\$\d+,(?P<event>\d+),.*,(?P<sequence>\d+)##", re.ASCII | re.DOTALL)

_IGNITION = {**dict.fromkeys((4001, 4003, 6011, 6013), True), **dict.fromkeys((4002, 4004, 6012, 6014), False)}
_ALARMS = {6002: "overspeed", 6006: "acceleration", 6007: "braking", 6008: "lowPower", 6009: "powerCut",
           6010: "powerRestored", 6016: "idle", 6017: "tow", 6032: "parking", 6090: "removing", 6091: "lowBattery"}
_MOTION = {6030: True, 6071: True, 6031: False}


def _event(event: int, fields: dict[str, Any], attributes: dict[str, Any]) -> None:
    attributes["event"] = event
    if event in _IGNITION:
        fields["ignition"] = _IGNITION[event]
    if event in _ALARMS:
        fields["alarm"] = _ALARMS[event]
    if event in _MOTION:
        attributes["motion"] = _MOTION[event]
    if event == 4005:
        attributes["charge"] = False


class XirgoProtocol(Protocol):
    name: ClassVar[str] = "xirgo"
    port: ClassVar[int] = 5081
    transports: ClassVar[frozenset[str]] = frozenset({"tcp", "udp"})
    max_frame: ClassVar[int] = 4096

    def split(self, buffer: bytes) -> tuple[bytes | None, int]:
        skip = garbage_before(buffer, START)
        if skip:
            return None, skip
        end = buffer.find(END, 2)
        if end < 0:
            if len(buffer) >= self.max_frame:
                raise self.too_long(buffer)
            return None, 0
        return buffer[:end], end + 2  # the ## is cut, as the reference framer does

    def decode(self, frame: bytes, session: Session) -> DecodeResult:
        sentence = text(frame).strip()
        if not sentence.startswith("$$"):
            raise self.error("message does not start with $$", frame)
        reply = None
        if session.transport == "udp" and (ack := _UDP_ACK.fullmatch(sentence)) is not None:
            reply = f"!UDP_ACK,{ack['event']},{ack['sequence']}".encode()
        body = sentence.removesuffix("##")
        form = options.text(session, "form")
        with malformed(self, frame):
            positions = self._custom(body, form, session, frame) if form else self._fixed(body, session, frame)
        return DecodeResult(positions, reply)

    def _custom(self, body: str, form: str, session: Session, frame: bytes) -> list[Position]:
        keys = [k.strip() for k in form.split(",")]
        values = body[2:].split(",")
        for key, value in zip(keys, values, strict=False):
            if key in ("UID", "IM") and value.isdigit():
                session.device = value
        if len(values) < len(keys):
            return []  # an information message, not a report in the form
        fields: dict[str, Any] = {}
        attributes: dict[str, Any] = {}
        date: list[int] | None = None
        time: list[int] | None = None
        for key, value in zip(keys, values, strict=False):
            if key == "EV":
                _event(int(value), fields, attributes)
            elif key == "D":
                month, day, year = (int(x) for x in value.split("/"))
                date = [year, month, day]
            elif key == "T":
                time = [int(x) for x in value.split(":")]
            elif key == "LT":
                fields["latitude"] = float(value)
            elif key == "LN":
                fields["longitude"] = float(value)
            elif key == "AL":
                fields["altitude_m"] = float(value)
            elif key == "GSPT":
                fields["speed_kmh"] = float(value)
            elif key == "SP":
                fields["speed_kmh"] = float(value) * MPH_TO_KMH
            elif key == "HD":
                fields["course"] = float(value) if "." in value else int(value) / 10
            elif key == "SV":
                fields["satellites"] = int(value)
            elif key == "HP":
                fields["hdop"] = float(value)
            elif key == "BV":
                fields["power_mv"] = round(float(value) * 1000)
            elif key == "CQ":
                attributes["rssi"] = int(value)
            elif key == "MI":
                fields["odometer_m"] = round(float(value) * MILE_M)
            elif key == "GS":
                fields["valid"] = int(value) == 3
            elif key == "SI":
                attributes["iccid"] = value
            elif key == "IG":
                if int(value) > 0:
                    fields["ignition"] = int(value) == 1
            elif key == "OT":
                attributes["output"] = int(value)
        if date is None or time is None:
            raise self.error(f"form {form!r} has no D and T fields: the report has no time", frame)
        fix_time = utc(*date, *time)
        if "latitude" not in fields or "longitude" not in fields:
            for key in ("latitude", "longitude", "valid"):
                fields.pop(key, None)
        elif not (-90 <= fields["latitude"] <= 90 and -180 <= fields["longitude"] <= 180):
            raise ValueError(f"coordinates {fields['latitude']},{fields['longitude']} out of range")
        return [self.position(session, fix_time, frame, attributes=attributes, **fields)]

    def _fixed(self, body: str, session: Session, frame: bytes) -> list[Position]:
        m = _NEW.match(body) or _OLD.match(body)
        if m is None:
            uid = body[2:].split(",", 1)[0]
            if uid.isdigit():
                session.device = uid
                return []  # neither layout: nothing to keep
            raise self.error("neither the old nor the new fixed layout", frame)
        session.device = m["uid"]
        fields: dict[str, Any] = {}
        attributes: dict[str, Any] = {}
        _event(int(m["event"]), fields, attributes)
        year, month, day = (int(x) for x in m["date"].split("/"))
        fix_time = utc(year, month, day, *(int(x) for x in m["time"].split(":")))
        latitude, longitude = float(m["lat"]), float(m["lon"])
        if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
            raise ValueError(f"coordinates {latitude},{longitude} out of range")
        fields.update(latitude=latitude, longitude=longitude, altitude_m=float(m["alt"]),
                      speed_kmh=float(m["speed"]) * MPH_TO_KMH, course=float(m["course"]), satellites=int(m["sats"]),
                      hdop=float(m["hdop"]), power_mv=round(float(m["battery"]) * 1000),
                      odometer_m=round(float(m["odometer"]) * MILE_M), valid=m["gps"] == "1")
        attributes["rssi"] = int(m["gsm"])
        groups = m.groupdict()
        if groups.get("fuel") is not None:
            attributes["fuelConsumption"] = float(groups["fuel"])
        if groups.get("in1") is not None:
            attributes.update(in1=int(m["in1"]), in2=int(m["in2"]), in3=int(m["in3"]), out1=int(m["out1"]),
                              adc1=float(m["adc1"]), fuel=float(m["fuel_level"]), hours=int(m["hours"]) * 3_600_000,
                              oilPressure=int(m["oil_pressure"]), oilLevel=int(m["oil_level"]),
                              oilTemp=int(m["oil_temp"]), coolantPressure=int(m["coolant_pressure"]),
                              coolantLevel=int(m["coolant_level"]), coolantTemp=int(m["coolant_temp"]))
        return [self.position(session, fix_time, frame, attributes=attributes, **fields)]


# Encoders (device simulator and tests) -----------------------------------------------------


def encode_position(p: Position, sequence: int | None = None, event: int | None = None) -> bytes:
    """An old-layout report of ``p``; with ``sequence`` it ends ``,<sequence>##`` (UDP units)."""
    t: datetime = p.fix_time
    if event is None:
        event = 4001 if p.ignition else 4002
    fields = [p.device, str(event), f"{t:%Y/%m/%d}", f"{t:%H:%M:%S}", f"{p.latitude or 0.0:.5f}",
              f"{p.longitude or 0.0:.5f}", f"{p.altitude_m or 0.0:.1f}", f"{(p.speed_kmh or 0.0) / MPH_TO_KMH:.1f}",
              f"{p.course or 0.0:.1f}", str(p.satellites or 0), f"{p.hdop or 1.0:.1f}",
              f"{(p.power_mv or 12000) / 1000:.1f}", "20", f"{(p.odometer_m or 0) / MILE_M:.1f}",
              "1" if p.valid else "0", "0", "0.0", "0.0", "0", "1", "1"]
    if sequence is not None:
        fields.append(str(sequence))
    return ("$$" + ",".join(fields) + "##").encode()


PROTOCOL = XirgoProtocol()
