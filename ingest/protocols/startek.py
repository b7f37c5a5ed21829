"""Startek units (``&&`` text reports) over TCP; the server sends no reply.

Frame::

    &&<index><length>,<IMEI>,<command>,<content><checksum>\\r\\n
    index      one character (a rolling counter)
    length     decimal: the bytes from the first comma up to the checksum
    command    3 hex digits: 000 position report, 710 serial/sensor lines, others = the answer
               to a command (the content is the answer, e.g. ``OK``)
    checksum   2 hex digits: the sum, mod 256, of every byte before it

Position content (comma separated)::

    event, event data, yyMMddhhmmss (UTC), A/V, latitude, longitude (signed decimal degrees),
    satellites, HDOP, speed km/h, course, altitude m, odometer m, MCC|MNC|LAC|CID (LAC, CID hex),
    GSM signal, status (hex), inputs (hex: bit 1 ignition, bit 2 door), outputs (hex),
    power|battery[|adc2|adc3...] (hex, 0.01 V), then optional: extension flags (decimal),
    fuel sensors (``<nn><hex>`` 0.1 %, ``|``-separated), temperature sensors (``<nn><hex>``
    0.1 C, bit 15 = minus), OBD (rpm|engine load|MAF|intake pressure|intake temperature|
    throttle|coolant temperature + 40|fuel consumption 0.1 L/h|fuel level), then with flag
    bit 1 the driver id and with flag bit 7 the engine hours in seconds.

Events: 1 SOS, 5/6 door, 17 low power, 18 power cut, 19 power restored, 39/40/41 harsh
acceleration/braking/cornering, 53 driver id (its event data).

Decisions:
    * The checksum is verified; a mismatch is decoded and flagged ``crcMismatch``.
    * Framing follows the length field; where the bytes after the declared end are not a
      checksum and CRLF (a unit that wrote more than it declared; one corpus frame does),
      the frame runs to the next CRLF after the declared end instead, and its checksum decides
      whether it is flagged.
    * The driver id and engine hours fields after OBD are read as the extension flags say
      (bit 1, bit 7), as the captured frames show them; the reference server's layout is not
      documented.
    * A 710 report (``T1``...``Tx`` lines) is a status record holding each line under its tag;
      command answers are status records with ``result``; both at the receive time.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from avl.records import Position
from ingest.protocols.base import DecodeResult, Protocol, Session, text, utc
from ingest.protocols.messages import garbage_before

HEADER = b"&&"
CRLF = b"\r\n"
_HEAD = re.compile(rb"&&(.)(\d{1,5}),", re.DOTALL)
_HEX2 = re.compile(rb"[0-9A-Fa-f]{2}")
_FRAME = re.compile(r"&&.(?P<length>\d+),(?P<imei>\d+),(?P<command>[0-9A-Fa-f]{3}),(?P<content>.*)", re.DOTALL)
_POSITION = re.compile(
    r"(?P<event>\d+),(?P<data>[^,]*),(?P<time>\d{12}),(?P<valid>[AV]),(?P<lat>-?\d+\.\d+),(?P<lon>-?\d+\.\d+),"
    r"(?P<sats>\d+),(?P<hdop>\d+(?:\.\d+)?),(?P<speed>\d+),(?P<course>\d+),(?P<alt>-?\d+),(?P<odometer>\d+),"
    r"(?P<mcc>\d+)\|(?P<mnc>\d+)\|(?P<lac>[0-9A-Fa-f]+)\|(?P<cid>[0-9A-Fa-f]+),(?P<rssi>\d+),"
    r"(?P<status>[0-9A-Fa-f]+),(?P<inputs>[0-9A-Fa-f]+),(?P<outputs>[0-9A-Fa-f]+),"
    r"(?P<power>[0-9A-Fa-f]+)\|(?P<battery>[0-9A-Fa-f]+)(?P<adc>(?:\|[0-9A-Fa-f]+)*)(?:,(?P<rest>.*))?",
    re.ASCII | re.DOTALL)
_ALARMS = {1: "sos", 5: "door", 6: "door", 17: "lowPower", 18: "powerCut", 19: "powerRestored", 39: "acceleration",
           40: "braking", 41: "cornering"}
_OBD = (("rpm", 1, 0), ("engineLoad", 1, 0), ("maf", 1, 0), ("intakePressure", 1, 0), ("intakeTemp", 1, 0),
        ("throttle", 1, 0), ("coolantTemp", 1, -40), ("fuelConsumption", 0.1, 0), ("fuelLevel", 1, 0))


def checksum(data: bytes) -> bytes:
    """The two hex digits a unit appends: the sum of ``data``'s bytes, mod 256."""
    return f"{sum(data) & 0xFF:02X}".encode()


def _sensors(field: str, scale: float, signed: bool) -> dict[int, float]:
    """``<nn><hex>|<nn><hex>...``: sensor number -> value."""
    values = {}
    for item in field.split("|"):
        if len(item) < 3 or not item[:2].isdigit():
            continue
        raw = int(item[2:], 16)
        if signed and raw & 0x8000:
            raw = -(raw & 0x7FFF)
        values[int(item[:2])] = round(raw * scale, 6)
    return values


class StartekProtocol(Protocol):
    name: ClassVar[str] = "startek"
    port: ClassVar[int] = 5222
    transports: ClassVar[frozenset[str]] = frozenset({"tcp"})
    max_frame: ClassVar[int] = 4096

    def split(self, buffer: bytes) -> tuple[bytes | None, int]:
        skip = garbage_before(buffer, HEADER)
        if skip:
            return None, skip
        m = _HEAD.match(buffer)
        if m is None:
            if len(buffer) >= 9 or (len(buffer) > 3 and not buffer[3:].replace(b",", b"").isdigit()):
                return None, 1  # not a head: look for the next one
            return None, 0
        declared_end = m.end() - 1 + int(m[2])  # the length counts from the first comma
        if declared_end + 4 > self.max_frame:
            return None, 1
        if len(buffer) < declared_end + 4:
            return None, 0
        if _HEX2.fullmatch(buffer[declared_end:declared_end + 2]) and buffer[declared_end + 2:declared_end + 4] == CRLF:
            return buffer[:declared_end + 4], declared_end + 4
        # The unit wrote more (or less) than it declared: the frame ends at the next CRLF.
        end = buffer.find(CRLF, max(declared_end - 2, m.end()))
        if end < 0:
            if len(buffer) >= self.max_frame:
                raise self.too_long(buffer)
            return None, 0
        return buffer[:end + 2], end + 2

    def decode(self, frame: bytes, session: Session) -> DecodeResult:
        body = frame[:-2] if frame.endswith(CRLF) else frame
        if len(body) < 4 or not _HEX2.fullmatch(body[-2:]):
            raise self.error("frame does not end with a 2-digit checksum", frame)
        m = _FRAME.fullmatch(text(body[:-2]))
        if m is None:
            raise self.error("not a &&<index><length>,<IMEI>,<command>,... frame", frame)
        session.device = m["imei"]
        attributes: dict[str, Any] = {}
        if checksum(body[:-2]) != body[-2:].upper():
            attributes["crcMismatch"] = True
        command, content = m["command"], m["content"]
        if command == "000":
            p = _POSITION.fullmatch(content)
            if p is None:
                raise self.error("position report does not have the report's fields", frame)
            try:
                return DecodeResult([self._position(p, session, frame, attributes)])
            except ValueError as exc:
                raise self.error(f"malformed position report: {exc}", frame) from exc
        if command == "710":
            lines = [line for line in content.split("\r\n") if line]
            attributes["serialData"] = {line.split(",", 1)[0]: line.split(",", 1)[-1] for line in lines}
        else:
            attributes["result"] = content
        attributes["command"] = command
        return DecodeResult([self.position(session, session.now(), frame, attributes=attributes)])

    def _position(self, m: re.Match[str], session: Session, frame: bytes, attributes: dict[str, Any]) -> Position:
        t = m["time"]
        fix_time = utc(int(t[0:2]), int(t[2:4]), int(t[4:6]), int(t[6:8]), int(t[8:10]), int(t[10:12]))
        event = int(m["event"])
        fields: dict[str, Any] = {"alarm": _ALARMS.get(event)}
        attributes["event"] = event
        if event == 53 and m["data"]:
            attributes["driverUniqueId"] = m["data"]
        inputs = int(m["inputs"], 16)
        fields["ignition"] = bool(inputs & 0b10)
        attributes.update(status=int(m["status"], 16), input=inputs, output=int(m["outputs"], 16),
                          door=bool(inputs & 0b100), rssi=int(m["rssi"]),
                          network={"cellTowers": [{"mobileCountryCode": int(m["mcc"]), "mobileNetworkCode": int(m["mnc"]),
                                                   "locationAreaCode": int(m["lac"], 16), "cellId": int(m["cid"], 16)}]})
        for i, value in enumerate(m["adc"].split("|")[1:], start=2):
            attributes[f"adc{i}"] = int(value, 16) / 100
        if m["rest"] is not None:
            self._extensions(m["rest"].split(","), attributes)
        latitude, longitude = float(m["lat"]), float(m["lon"])
        if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
            raise ValueError(f"coordinates {latitude},{longitude} out of range")
        return self.position(session, fix_time, frame, valid=m["valid"] == "A", latitude=latitude, longitude=longitude,
                             satellites=int(m["sats"]), hdop=float(m["hdop"]), speed_kmh=float(m["speed"]),
                             course=float(m["course"]), altitude_m=float(m["alt"]), odometer_m=int(m["odometer"]),
                             power_mv=int(m["power"], 16) * 10, battery_mv=int(m["battery"], 16) * 10,
                             attributes=attributes, **{k: v for k, v in fields.items() if v is not None})

    @staticmethod
    def _extensions(fields: list[str], a: dict[str, Any]) -> None:
        flags = int(fields[0]) if fields[0].isdigit() else 0
        fields = fields[1:]
        if flags & 1:
            fuel, temperature, obd = (fields + ["", "", ""])[:3]
            a.update({f"fuel{n}": v for n, v in _sensors(fuel, 0.1, signed=False).items()})
            a.update({f"temp{n}": v for n, v in _sensors(temperature, 0.1, signed=True).items()})
            for (name, scale, offset), value in zip(_OBD, obd.split("|") if obd else [], strict=False):
                if value.isdigit():
                    a[name] = round(int(value) * scale + offset, 6)
            fields = fields[3:]
        if flags & 0b10 and fields:
            driver = fields.pop(0)
            if driver:
                a["driverUniqueId"] = driver
        if flags & 0x80 and fields and fields[0].isdigit():
            a["hours"] = int(fields.pop(0)) * 1000  # seconds -> ms


# Encoders (device simulator and tests) -----------------------------------------------------


def encode_frame(device: str, command: str, content: str, index: str = "A") -> bytes:
    """A whole frame: head, length, checksum and CRLF around ``content``."""
    rest = f",{device},{command},{content}".encode("latin-1")
    head = f"&&{index}{len(rest)}".encode() + rest
    return head + checksum(head) + CRLF


def encode_position(p: Position, sequence: int = 0, event: int = 0) -> bytes:
    """A 000 position report of ``p``."""
    t = p.fix_time
    inputs = 0b10 if p.ignition else 0
    content = (f"{event},,{t:%y%m%d%H%M%S},{'A' if p.valid else 'V'},{p.latitude or 0.0:.6f},{p.longitude or 0.0:.6f},"
               f"{p.satellites or 0},{p.hdop or 1.0:.1f},{round(p.speed_kmh or 0)},{round(p.course or 0)},"
               f"{round(p.altitude_m or 0)},{p.odometer_m or 0},734|4|3EE4|00579406,28,00000015,{inputs:02X},00,"
               f"{(p.power_mv or 0) // 10:04X}|{(p.battery_mv or 0) // 10:04X}")
    return encode_frame(p.device, "000", content, "ABCDEFGH"[sequence % 8])


PROTOCOL = StartekProtocol()
