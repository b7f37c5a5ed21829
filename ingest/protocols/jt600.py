"""Jointech JT600 family (JT600, JT701 padlock, JT707/JT709 ...) over TCP: binary ``$`` reports and
text ``(``...``)`` messages, some of them answered.

Binary report (big-endian, BCD where marked)::

    +----+---------------+-------------+----------+------------+-----------+-------+
    | $  | device id     | [protocol   | u8 type: | u16 length | records   | u8    |
    |    | 5 BCD bytes   |  version u8]| high     | (frame =   |           | index |
    |    |               |  long form  | nibble = | length+10) |           |       |
    |    |               |             | version  |            |           |       |
    +----+---------------+-------------+----------+------------+-----------+-------+
    The long form is told by a zero byte at offset 8 (the high byte of its length).

    record location (17 B): BCD DDMMYY hhmmss (UTC), BCD latitude ddmm.mmmm (8 digits), BCD
        longitude dddmm.mmmm (9 digits) + a flags nibble (bit 0 valid, bit 1 north, bit 2
        east), BCD speed (knots), course / 2
    long form tail: u32 odometer km, u8 satellites, u32 vehicle id, u16 status (bit 1/2
        geofence in/out, 3 power cut, 4 vibration, 5 the unit wants an answer, 7 blocked,
        11 low battery, 14 fault), u8 battery % (FF = charging), u16 CID, u16 LAC, u8 GSM;
        protocol versions 17 and 19 add a geofence id and reserved bytes up to the index
    version 1 tail: u8 satellites, u8 power (raw), u8 flags, u16 altitude m, u16 CID,
        u16 LAC, u8 GSM
    version 2 tail: u8 fuel high byte, 4 status bytes (ignition, door, charge, blocked, SOS,
        GPS antenna, overspeed, fatigue, tow), u32 odometer km, u8 fuel low byte
    version 3 tail: 12-bit fuel1, fuel2, fuel3, 20-bit odometer km, 24-bit status (bit 0
        ignition)

Text messages ``(<id>,<type>,...)``; on the wire ``(`` ``)`` ``,`` ``=`` inside are sent as
``3D 15``, ``3D 14``, ``3D 11``, ``3D 00`` (the framer restores them)::

    U01/U02/U03/U06  [alarm,] DDMMYY, hhmmss, T/F, lat, N/S, lon, E/W, speed mph, course,
                     satellites, battery %, status bits, CID, LAC, GSM, odometer km, serial
    W01              dddmm.mmmm, E/W, ddmm.mmmm, N/S, A/V, DDMMYY, hhmmss, speed km/h, course,
                     power, GPS signal, GSM signal, alert type
    P45 (JT701 lock) DDMMYY, hhmmss, lat, N/S, lon, E/W, A/V, speed mph, course, event source,
                     unlock check, RFID card, password check, wrong passwords, index
    <a>,<b>,WLNET,5,2,<binary>  a location block as above (17 B), then 23-byte sensor blocks:
                     BCD time, 10 bytes, u8 count, count x (i16 temperature 0.1 C, u8)

Replies: ``(S39)`` to U01/U02/U03, ``(S20)`` to U06, ``(P69,0,<index>)`` to P45, and to a binary
report whose status asks for one ``(P35)`` (``(P69,0,<index>)`` from protocol version 19).
No checksum is defined for these frames (U01's optional trailing hex pair is not verified).

Decisions: a binary speed or WLNET byte that is not BCD leaves the speed unknown; a record
without a valid date is dropped; U04, ``@JT`` and other text types carry no report (no record,
no answer).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, ClassVar

from avl.records import Position
from ingest.protocols.base import (
    KNOTS_TO_KMH,
    MPH_TO_KMH,
    DecodeResult,
    Protocol,
    Session,
    nmea_degrees,
    utc,
)
from ingest.protocols.messages import Record, garbage_before, malformed
from ingest.protocols.reader import Reader

BINARY = 0x24  # $
TEXT = 0x28  # (
MAX_TEXT = 4096
LOCATION_SIZE = 17
WLNET_SENSOR_SIZE = 23

_ESCAPED = re.compile(rb"=[\x00\x11\x14\x15]")
_UNESCAPE = {0x00: b"=", 0x11: b",", 0x14: b")", 0x15: b"("}

_U = re.compile(
    r"(?P<id>\d+),(?P<type>U\d\d),(?:(?P<alarm>\d+),)?(?P<date>\d{6}),(?P<time>\d{6}),(?P<valid>[TF]),"
    r"(?P<lat>\d+\.\d+),(?P<ns>[NS]),(?P<lon>\d+\.\d+),(?P<ew>[EW]),(?P<speed>\d+(?:\.\d*)?),(?P<course>\d+),"
    r"(?P<sats>\d+),(?P<battery>\d+)%,(?P<status>[01]+),(?P<cid>\d+),(?P<lac>\d+),(?P<gsm>\d+),"
    r"(?P<odometer>\d+),(?P<serial>\d+)", re.ASCII)
_W01 = re.compile(
    r"(?P<id>\d+),W01,(?P<lon>\d{5}\.\d+),(?P<ew>[EW]),(?P<lat>\d{4}\.\d+),(?P<ns>[NS]),(?P<valid>[AV]),"
    r"(?P<date>\d{6}),(?P<time>\d{6}),(?P<speed>\d+),(?P<course>\d+),(?P<power>\d+),(?P<gps>\d+),(?P<gsm>\d+),"
    r"(?P<alert>\d+)", re.ASCII)
_P45 = re.compile(
    r"(?P<id>\d+),P45,(?P<date>\d{6}),(?P<time>\d{6}),(?P<lat>\d+\.\d+),(?P<ns>[NS]),(?P<lon>\d+\.\d+),"
    r"(?P<ew>[EW]),(?P<valid>[AV]),(?P<speed>\d+),(?P<course>\d+),(?P<source>\d+),\d+,(?P<rfid>\d+),\d+,\d+,"
    r"(?P<index>\d+)", re.ASCII)
_ANSWERS = {"U01": b"(S39)", "U02": b"(S39)", "U03": b"(S39)", "U06": b"(S20)"}


def unescape(data: bytes) -> bytes:
    """The text frame's bytes with the ``3D xx`` escapes restored."""
    return _ESCAPED.sub(lambda m: _UNESCAPE[m.group()[1]], data)


def escape(data: bytes) -> bytes:
    """What a unit sends inside the parentheses for ``data``."""
    return (data.replace(b"=", b"=\x00").replace(b"(", b"=\x15").replace(b")", b"=\x14")
            .replace(b",", b"=\x11"))


def _dmy(date: str, time: str) -> datetime:
    return utc(int(date[4:6]), int(date[2:4]), int(date[0:2]), int(time[0:2]), int(time[2:4]), int(time[4:6]))


def _degrees(value: str, hemisphere: str) -> float:
    return -float(value) if hemisphere in ("S", "W") else float(value)


def _bcd_or_none(digits: str) -> int | None:
    return int(digits) if digits.isdigit() else None


def _location(r: Reader) -> Record:
    """The 17-byte location block."""
    rec = Record()
    when, lat, lon_flags = r.bcd(6), r.bcd(4), r.bcd(5)
    speed, course = _bcd_or_none(r.bcd(1)), r.u8() * 2
    if when.isdigit():
        try:
            rec.fix_time = _dmy(when[:6], when[6:])
        except ValueError:
            rec.fix_time = None
    flags = int(lon_flags[9], 16)
    if lat.isdigit() and lon_flags[:9].isdigit():
        latitude = int(lat[:2]) + int(lat[2:]) / 10000 / 60
        longitude = int(lon_flags[:3]) + int(lon_flags[3:9]) / 10000 / 60
        if latitude <= 90 and longitude <= 180:
            rec.fields.update(latitude=latitude if flags & 0b010 else -latitude,
                              longitude=longitude if flags & 0b100 else -longitude, valid=bool(flags & 0b001))
    rec.fields.update(speed_kmh=None if speed is None else speed * KNOTS_TO_KMH, course=float(course))
    return rec


class Jt600Protocol(Protocol):
    name: ClassVar[str] = "jt600"
    port: ClassVar[int] = 5014
    transports: ClassVar[frozenset[str]] = frozenset({"tcp"})
    max_frame: ClassVar[int] = 0xFFFF + 10

    def split(self, buffer: bytes) -> tuple[bytes | None, int]:
        if not buffer:
            return None, 0
        first = buffer[0]
        if first == BINARY:
            if len(buffer) < 10:
                return None, 0
            size = int.from_bytes(buffer[8:10] if buffer[8] == 0 else buffer[7:9], "big") + 10
            if size < 10 + LOCATION_SIZE:
                return None, 1  # not a report head after all
            if len(buffer) < size:
                return None, 0
            return buffer[:size], size
        if first == TEXT:
            end = buffer.find(b")", 1, MAX_TEXT)
            if end < 0:
                return (None, 1) if len(buffer) >= MAX_TEXT else (None, 0)
            return unescape(buffer[:end + 1]), end + 1
        return None, garbage_before(buffer[1:], b"$", b"(") + 1

    def decode(self, frame: bytes, session: Session) -> DecodeResult:
        with malformed(self, frame):
            if frame[:1] == b"$":
                return self._binary(frame, session)
            if frame[:1] == b"(":
                return self._text(frame, session)
        raise self.error("neither a $ report nor a ( message", frame)

    # Binary ---------------------------------------------------------------------------------

    def _binary(self, frame: bytes, session: Session) -> DecodeResult:
        if len(frame) < 10:
            raise self.error(f"report of {len(frame)} bytes is too short", frame)
        r = Reader(frame, self.name, pos=1)
        digits = r.bcd(5)
        if not digits.isdigit():
            raise self.error(f"device id {digits} is not BCD", frame)
        long_form = frame[8] == 0
        protocol_version = r.u8() if long_form else 0
        version = r.u8() >> 4
        r.skip(2)  # length: the framer cut the report by it
        session.device = str(int(digits))
        records: list[Record] = []
        answer_wanted = False
        while r.remaining > LOCATION_SIZE:
            rec = _location(r)
            a, f = rec.attributes, rec.fields
            if long_form:
                f["odometer_m"] = r.u32() * 1000
                f["satellites"] = r.u8()
                r.skip(4)  # vehicle id
                status = r.u16()
                for bit, alarm in ((1, "geofenceEnter"), (2, "geofenceExit"), (3, "powerCut"), (4, "vibration"),
                                   (11, "lowBattery"), (14, "fault")):
                    if status & 1 << bit:
                        f["alarm"] = alarm
                answer_wanted |= bool(status & 1 << 5)
                a.update(status=status, blocked=bool(status & 1 << 7))
                battery = r.u8()
                if battery == 0xFF:
                    a["charge"] = True
                else:
                    a["batteryLevel"] = battery
                a["network"] = _cell(r.u16(), r.u16(), r.u8())
                if protocol_version in (0x17, 0x19):
                    r.skip(r.remaining - 1)  # geofence id, reserved, extensions
            elif version == 1:
                f["satellites"] = r.u8()
                a["power"] = r.u8()
                r.skip(1)  # other flags and sensors
                f["altitude_m"] = float(r.u16())
                a["network"] = _cell(r.u16(), r.u16(), r.u8())
            elif version == 2:
                fuel = r.u8() << 8
                self._status(r.take(4), rec)
                f["odometer_m"] = r.u32() * 1000
                a["fuel"] = fuel | r.u8()
            elif version == 3:
                bits = int.from_bytes(r.take(10), "big")
                a.update(fuel1=bits >> 68 & 0xFFF, fuel2=bits >> 56 & 0xFFF, fuel3=bits >> 44 & 0xFFF)
                f["odometer_m"] = (bits >> 24 & 0xFFFFF) * 1000
                a["status"] = bits & 0xFFFFFF
                f["ignition"] = bool(bits & 1)
            records.append(rec)
        index = r.u8() if r.remaining else 0
        reply = None
        if answer_wanted:
            reply = b"(P35)" if protocol_version < 0x19 else f"(P69,0,{index})".encode()
        positions = [self._position(rec, session, frame) for rec in records if rec.fix_time is not None]
        return DecodeResult(positions, reply)

    @staticmethod
    def _status(data: bytes, rec: Record) -> None:
        f, a = rec.fields, rec.attributes
        f["ignition"] = bool(data[0] & 1)
        a.update(door=bool(data[0] & 0x40), charge=bool(data[1] & 1), blocked=bool(data[1] & 2))
        for byte, bit, alarm in ((1, 2, "sos"), (1, 3, "gpsAntennaCut"), (1, 4, "overspeed"),
                                 (2, 2, "fatigueDriving"), (2, 3, "tow")):
            if data[byte] & 1 << bit:
                f["alarm"] = alarm

    # Text -----------------------------------------------------------------------------------

    def _text(self, frame: bytes, session: Session) -> DecodeResult:
        if not frame.endswith(b")"):
            raise self.error("text message does not end with )", frame)
        inner = frame[1:-1]
        parts = inner.split(b",", 6)
        if len(parts) == 7 and parts[3] == b"WLNET":
            return self._wlnet(parts, session, frame)
        text = inner.decode("latin-1")
        for pattern, decoder in ((_W01, self._w01), (_P45, self._p45), (_U, self._u)):
            m = pattern.match(text)
            if m is not None:
                session.device = m["id"]
                return decoder(m, session, frame)
        ident = text.split(",", 1)[0]
        if not ident.isdigit():
            raise self.error(f"device id {ident[:20]!r} is not a number", frame)
        session.device = ident
        return DecodeResult()  # U04, @JT and the like: nothing to keep, nothing to answer

    def _u(self, m: re.Match[str], session: Session, frame: bytes) -> DecodeResult:
        status = int(m["status"], 2)
        attributes: dict[str, Any] = {"batteryLevel": int(m["battery"]), "status": status, "index": int(m["serial"]),
                                      "network": _cell(int(m["cid"]), int(m["lac"]), int(m["gsm"]))}
        if m["alarm"] is not None:
            attributes["event"] = int(m["alarm"])
        p = self.position(session, _dmy(m["date"], m["time"]), frame, valid=m["valid"] == "T",
                          latitude=_degrees(m["lat"], m["ns"]), longitude=_degrees(m["lon"], m["ew"]),
                          speed_kmh=float(m["speed"]) * MPH_TO_KMH, course=float(m["course"]),
                          satellites=int(m["sats"]), odometer_m=int(m["odometer"]) * 1000, attributes=attributes)
        return DecodeResult([p], _ANSWERS.get(m["type"]))

    def _w01(self, m: re.Match[str], session: Session, frame: bytes) -> DecodeResult:
        p = self.position(session, _dmy(m["date"], m["time"]), frame, valid=m["valid"] == "A",
                          latitude=nmea_degrees(m["lat"], m["ns"]), longitude=nmea_degrees(m["lon"], m["ew"]),
                          speed_kmh=float(m["speed"]), course=float(m["course"]),
                          attributes={"power": int(m["power"]), "gps": int(m["gps"]), "rssi": int(m["gsm"]),
                                      "alertType": int(m["alert"])})
        return DecodeResult([p])

    def _p45(self, m: re.Match[str], session: Session, frame: bytes) -> DecodeResult:
        attributes: dict[str, Any] = {"event": int(m["source"]), "index": int(m["index"])}
        if m["rfid"] != "0000000000":
            attributes["driverUniqueId"] = m["rfid"]
        p = self.position(session, _dmy(m["date"], m["time"]), frame, valid=m["valid"] == "A",
                          latitude=_degrees(m["lat"], m["ns"]), longitude=_degrees(m["lon"], m["ew"]),
                          speed_kmh=float(m["speed"]) * MPH_TO_KMH, course=float(m["course"]), attributes=attributes)
        return DecodeResult([p], f"(P69,0,{m['index']})".encode())

    def _wlnet(self, parts: list[bytes], session: Session, frame: bytes) -> DecodeResult:
        ident = parts[0].decode("latin-1")
        if not ident.isdigit():
            raise self.error(f"device id {ident[:20]!r} is not a number", frame)
        session.device = ident
        r = Reader(parts[6], self.name)
        rec = _location(r)
        sensors = 0
        while r.remaining >= WLNET_SENSOR_SIZE:
            block = r.sub(WLNET_SENSOR_SIZE)
            block.skip(6)  # the sample's time
            rec.attributes.setdefault("sensorData", []).append(block.take(10).hex())  # meaning undocumented
            for _ in range(min(block.u8(), block.remaining // 3)):
                sensors += 1
                rec.attributes[f"temp{sensors}"] = block.i16() / 10
                block.skip(1)
        if rec.fix_time is None:
            return DecodeResult()
        return DecodeResult([self._position(rec, session, frame)])

    def _position(self, rec: Record, session: Session, frame: bytes) -> Position:
        assert rec.fix_time is not None
        fields = {k: v for k, v in rec.fields.items() if v is not None}
        return self.position(session, rec.fix_time, frame, attributes=rec.attributes, **fields)


def _cell(cid: int, lac: int, rssi: int) -> dict[str, Any]:
    return {"cellTowers": [{"cellId": cid, "locationAreaCode": lac, "signalStrength": rssi}]}


# Encoders (device simulator and tests) -----------------------------------------------------


def encode_position(p: Position, sequence: int = 0) -> bytes:
    """A U01 text report of ``p`` (answered ``(S39)``)."""
    t = p.fix_time
    lat, lon = p.latitude or 0.0, p.longitude or 0.0
    body = (f"{p.device},U01,{t:%d%m%y},{t:%H%M%S},{'T' if p.valid else 'F'},{abs(lat):.6f},{'N' if lat >= 0 else 'S'},"
            f"{abs(lon):.6f},{'E' if lon >= 0 else 'W'},{(p.speed_kmh or 0.0) / MPH_TO_KMH:.2f},{round(p.course or 0)},"
            f"{p.satellites or 0},80%,00000000000001,0,0,20,{(p.odometer_m or 0) // 1000},{sequence}")
    return b"(" + escape(body.encode("latin-1")) + b")"


def encode_binary(p: Position, sequence: int = 0, answer: bool = False) -> bytes:
    """A long-form binary report (protocol version 16) of ``p``; ``answer`` sets the status bit that
    asks for ``(P35)``. ``p.device`` must be at most 10 digits."""
    t = p.fix_time
    lat, lon = p.latitude or 0.0, p.longitude or 0.0

    def ddmm(value: float, width: int) -> str:
        degrees = int(abs(value))
        return f"{degrees:0{width}d}{round((abs(value) - degrees) * 60 * 10000):06d}"

    flags = (1 if p.valid else 0) | (2 if lat >= 0 else 0) | (4 if lon >= 0 else 0)
    knots = min(99, round((p.speed_kmh or 0.0) / KNOTS_TO_KMH))
    record = bytes.fromhex(f"{t:%d%m%y%H%M%S}" + ddmm(lat, 2) + ddmm(lon, 3) + f"{flags:x}" + f"{knots:02d}")
    record += bytes([round(p.course or 0) // 2 % 180]) + ((p.odometer_m or 0) // 1000).to_bytes(4, "big")
    record += bytes([p.satellites or 0]) + bytes(4) + (0x20 if answer else 0).to_bytes(2, "big") + b"\x50"
    record += bytes(5)
    # Long form: the length counts the records and the index byte.
    head = b"$" + bytes.fromhex(p.device.rjust(10, "0")) + b"\x16\x11" + (len(record) + 1).to_bytes(2, "big")
    return head + record + bytes([sequence & 0xFF])


PROTOCOL = Jt600Protocol()
