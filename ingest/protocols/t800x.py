"""T800x / TLW family (Topflytech T8803, T8806, T8808, TLW1/TLW2 ...): binary messages over TCP
and UDP, each message acknowledged by echoing its head.

Message (big-endian unless marked LE)::

    +--------+------+------------+--------+----------------------------+--------------+
    | marker | type | length u16 | serial | IMEI, 8 BCD bytes          | body         |
    | 2 B    | u8   | whole msg  | u16    | (first nibble 0, dropped)  |              |
    +--------+------+------------+--------+----------------------------+--------------+
    marker 23 23 (T8803/T8806/T8808), 25 25 (TLW1, TLW2 with OBD), 26 26 (driving behaviour
    units), 27 27 (TLW asset / solar units)

Types::

    01 login | 03 heartbeat | 02 GPS, 04 alarm, 13 GPS (extended), 14 alarm (extended)
    05 network (27 27) / harsh driving with records (26 26) | 06 harsh driving (26 26)
    10 BLE tags | 11 network | 81 command reply (u8 protocol number, UTF-16LE text)

Position body (02/04/13/14); ``[..]`` fields are absent for the 27 27 marker::

    [u16 ACC-on interval, u16 ACC-off interval, u8 angle, u16 distance, u16 GSM (low 7 bits)]
    u8 status: bit 6 GPS fix, bit 7 archived, low 5 bits satellites
    [u8 g-sensor, u8 flags, u8 heartbeat, u8 relay, u16 drag alarm, u16 IO: bit 14 ignition,
     13 AC, 12 in3, 11 in4, 7-9 out1-3 (02/04); 13/14 carry u8 output + u8 reserved instead,
     then (not for 26 26) 2 (02/04) or 5 (13/14) ADC u16 in 0.01 V, FFFF = none]
    u8 alarm code
    [u8 reserved, u32 odometer m, BCD2 battery %]
    with a fix: BCD YYMMDDhhmmss (UTC), f32 LE altitude m, f32 LE longitude, f32 LE latitude,
                BCD2 speed 0.1 km/h (26 26: u16 reserved instead), u16 course
    without:    BCD YYMMDDhhmmss, then 16 bytes of cells: LE u16 MCC, u16 MNC, 3 x (u16 LAC,
                u16 CID) (27 27: big-endian, bit 15 of MCC = one LTE cell, u32 CID + u16 TAC)
    23/25/26 tail: [BCD2 battery 0.01 V (13/14, or model TLW2-2BL)], [BCD2 power 0.01 V],
                   [BCD2 OBD speed 0.01 km/h, u32 fuel used mL,
                    u32 fuel consumption mL, u16 rpm, then bytes: air input, air pressure,
                    coolant +40, air temperature +40, engine load, throttle, fuel level (FF = none)]
    27 27 tail: 5 bytes acceleration, BCD1 battery %, u8 device temperature (bit 7 = minus),
                BCD1 light 0.1, BCD1 battery 0.1 V, BCD1 solar panel 0.1 V, u32 odometer m,
                u16 inputs (bit 2 ignition, bits 4-10 GSM), 10 bytes of intervals

Replies: marker, type, length 15 (16 when an alarm byte follows), serial, IMEI: for every
message except plain GPS reports (02, 13), which are answered only with the per-device option
``ack``; alarms (04, 14) carry their alarm byte. The 23 23 family is answered with serial 1
(as the reference server answers them). No checksum exists.

Decisions:
    * A frame may hold several messages back to back (a UDP datagram, or a stream the framer did
      not cut): each is read by its own length and answered; a message repeated byte for byte in
      one frame is one report (read and answered once).
    * The location a BLE tag record carries (with a fix) becomes the record's location.
    * Per-device option ``model`` (the reference's model override): ``TLW2-2BL`` reads the battery
      voltage field in plain GPS reports.
    * A fix whose floats are not finite or out of range, or whose time is not a date, is kept as a
      status record (no location) at the receive time.
"""

from __future__ import annotations

import math
import struct
from datetime import datetime
from typing import Any, ClassVar

from avl.records import Position
from ingest.protocols import options
from ingest.protocols.base import DecodeResult, Protocol, Session, utc
from ingest.protocols.messages import Record, back_to_back, each, garbage_before, malformed
from ingest.protocols.reader import Reader

MARKERS = frozenset({0x2323, 0x2525, 0x2626, 0x2727})
MARKER_BYTES = tuple(m.to_bytes(2, "big") for m in sorted(MARKERS))
HEAD_SIZE = 15  # marker, type, length, serial, IMEI

MSG_LOGIN = 0x01
MSG_GPS = 0x02
MSG_HEARTBEAT = 0x03
MSG_ALARM = 0x04
MSG_NETWORK = 0x05  # 27 27
MSG_DRIVING = 0x05  # 26 26
MSG_DRIVING_2 = 0x06  # 26 26
MSG_BLE = 0x10
MSG_NETWORK_2 = 0x11
MSG_GPS_2 = 0x13
MSG_ALARM_2 = 0x14
MSG_COMMAND = 0x81
POSITION_TYPES = frozenset({MSG_GPS, MSG_ALARM, MSG_GPS_2, MSG_ALARM_2})

_ALARMS = {1: "powerCut", 2: "lowBattery", 3: "sos", 4: "overspeed", 5: "geofenceEnter", 6: "geofenceExit",
           7: "tow", 8: "vibration", 10: "vibration", 21: "jamming", 23: "powerRestored", 24: "lowPower"}
_ASSET_ALARMS = {1: "removing", 2: "tampering", 3: "sos", 4: "removing", 5: "fallDown", 6: "lowBattery",
                 8: "temperature", 9: "vibration", 14: "geofenceEnter", 15: "geofenceExit", 16: "movement",
                 30: "temperature", 33: "temperature", 37: "temperature"}
_OBD_BYTES = (("airInput", 0), ("airPressure", 0), ("coolantTemp", -40), ("airTemp", -40), ("engineLoad", 0),
              ("throttle", 0), ("fuel", 0))


def _bcd(r: Reader, n: int) -> int:
    """``n`` bytes of packed BCD as a number; ValueError when a nibble is not a digit."""
    digits = r.bcd(n)
    if not digits.isdigit():
        raise ValueError(f"BCD field {digits!r} holds a non-digit")
    return int(digits)


def _time(r: Reader) -> datetime | None:
    """BCD ``YYMMDDhhmmss`` (UTC); None when it is not a date (the 6 bytes are read either way)."""
    digits = r.bcd(6)
    if not digits.isdigit():
        return None
    v = [int(digits[i:i + 2]) for i in range(0, 12, 2)]
    try:
        return utc(*v)
    except ValueError:
        return None


def _location(alt: float, lon: float, lat: float) -> dict[str, Any]:
    if all(math.isfinite(x) for x in (alt, lon, lat)) and -90 <= lat <= 90 and -180 <= lon <= 180:
        return {"latitude": lat, "longitude": lon, "altitude_m": alt if -12262 <= alt <= 18000 else None}
    return {}


def _floats(r: Reader) -> dict[str, Any]:
    """Altitude, longitude, latitude as little-endian float32 (the body is otherwise big-endian)."""
    alt, lon, lat = struct.unpack("<fff", r.take(12))
    return _location(alt, lon, lat)


class T800xProtocol(Protocol):
    name: ClassVar[str] = "t800x"
    port: ClassVar[int] = 5094
    transports: ClassVar[frozenset[str]] = frozenset({"tcp", "udp"})
    max_frame: ClassVar[int] = 4096

    def split(self, buffer: bytes) -> tuple[bytes | None, int]:
        skip = garbage_before(buffer, *MARKER_BYTES)
        if skip:
            return None, skip
        if len(buffer) < 5:
            return None, 0
        length = int.from_bytes(buffer[3:5], "big")
        if length < HEAD_SIZE or length > self.max_frame:
            return None, 1  # not a head after all: look for the next marker
        if len(buffer) < length:
            return None, 0
        return buffer[:length], length

    def decode(self, frame: bytes, session: Session) -> DecodeResult:
        if len(frame) < HEAD_SIZE:
            raise self.error(f"message of {len(frame)} bytes is shorter than its {HEAD_SIZE}-byte head", frame)

        def length_at(pos: int) -> int:
            if len(frame) - pos < HEAD_SIZE:
                raise self.error(f"{len(frame) - pos} bytes after the last message are not a message", frame)
            return int.from_bytes(frame[pos + 3:pos + 5], "big")

        with malformed(self, frame):
            return each(back_to_back(self, frame, length_at, HEAD_SIZE), lambda message: self._message(message, session))

    def _message(self, message: bytes, session: Session) -> tuple[list[Position], bytes | None]:
        r = Reader(message, self.name)
        marker, kind = r.u16(), r.u8()
        if marker not in MARKERS:
            raise self.error(f"unknown marker {marker:04x}", message)
        r.skip(2)  # length, checked by the caller
        serial = r.u16()
        imei_bytes = r.take(8)
        imei = imei_bytes.hex()[1:]
        if not imei.isdigit():
            raise self.error(f"IMEI {imei_bytes.hex()} is not BCD", message)
        session.device = imei

        def reply(alarm: int | None = None) -> bytes:
            head = marker.to_bytes(2, "big") + bytes([kind]) + (16 if alarm is not None else 15).to_bytes(2, "big")
            return (head + (1 if marker == 0x2323 else serial).to_bytes(2, "big") + imei_bytes
                    + (bytes([alarm]) if alarm is not None else b""))

        if kind in POSITION_TYPES:
            record, alarm = self._position(r, marker, kind, session)
            record.attributes["index"] = serial
            if kind in (MSG_ALARM, MSG_ALARM_2):
                answer: bytes | None = reply(alarm if alarm else None)
            else:
                answer = reply() if options.flag(session, "ack") else None
            return [self._record(record, session, message)], answer
        records: list[Record] = []
        if kind in (MSG_NETWORK_2,) or (kind == MSG_NETWORK and marker == 0x2727):
            records = [self._network(r)]
        elif kind in (MSG_DRIVING, MSG_DRIVING_2) and marker == 0x2626:
            records = self._driving(r, kind)
        elif kind == MSG_BLE:
            records = [self._ble(r)]
        elif kind == MSG_COMMAND:
            rec = Record()
            r.skip(1)  # protocol number
            rec.attributes["result"] = r.rest().decode("utf-16-le", errors="replace").rstrip("\x00")
            records = [rec]
        # login, heartbeat and types without records: answered only
        return [self._record(rec, session, message) for rec in records], reply()

    # Bodies ---------------------------------------------------------------------------

    def _position(self, r: Reader, marker: int, kind: int, session: Session) -> tuple[Record, int]:
        rec = Record()
        a, f = rec.attributes, rec.fields
        extended = kind in (MSG_GPS_2, MSG_ALARM_2)
        asset = marker == 0x2727
        if not asset:
            r.skip(2 + 2 + 1 + 2)  # ACC on/off intervals, angle and distance compensation
            a["rssi"] = r.u16() & 0x7F
        status = r.u8()
        f["satellites"] = status & 0x1F
        a["archive"] = bool(status & 0x80)
        if not asset:
            r.skip(4)  # g-sensor manager, other flags, heartbeat, relay
            r.skip(2)  # drag alarm setting
            io = r.u16()
            f["ignition"] = bool(io & 1 << 14)
            a.update({"ac": bool(io & 1 << 13), "in3": bool(io & 1 << 12), "in4": bool(io & 1 << 11)})
            if extended:
                a["output"] = r.u8()
                r.skip(1)
            else:
                a.update({"out1": bool(io & 1 << 7), "out2": bool(io & 1 << 8), "out3": bool(io & 1 << 9)})
            if marker != 0x2626:
                for i in range(1, (5 if extended else 2) + 1):
                    value = r.u16()
                    if value != 0xFFFF:
                        a[f"adc{i}"] = value / 100
        alarm = r.u8()
        a["alarmCode"] = alarm
        f["alarm"] = (_ASSET_ALARMS if asset else _ALARMS).get(alarm)
        if not asset:
            r.skip(1)
            f["odometer_m"] = r.u32()
            battery = _bcd(r, 1)
            a["batteryLevel"] = battery or 100
        rec.fix_time = _time(r)
        if status & 0x40:
            location = _floats(r)
            if marker == 0x2626:
                r.skip(2)  # reserved (HDOP on some firmware)
            else:
                f["speed_kmh"] = _bcd(r, 2) / 10
            f["course"] = float(r.u16())
            if location and rec.fix_time is not None:
                f.update(location, valid=True)
        elif asset:
            self._asset_cells(r.sub(16), a)
        else:
            self._cells(r, a)
        if asset:
            self._asset_tail(r, rec)
        else:
            self._tail(r, rec, extended or options.text(session, "model") == "TLW2-2BL")
        return rec, alarm

    @staticmethod
    def _cells(r: Reader, a: dict[str, Any]) -> None:
        r.little = True
        mcc, mnc = r.u16(), r.u16()
        towers = [(r.u16(), r.u16()) for _ in range(3)]
        r.little = False
        if mcc != 0xFFFF and mnc != 0xFFFF:
            a["network"] = {"cellTowers": [{"mobileCountryCode": mcc, "mobileNetworkCode": mnc,
                                            "locationAreaCode": lac, "cellId": cid}
                                           for lac, cid in towers if lac != 0xFFFF and cid != 0xFFFF]}

    @staticmethod
    def _asset_cells(r: Reader, a: dict[str, Any]) -> None:
        mcc, mnc = r.u16(), r.u16()
        if mcc == 0xFFFF or mnc == 0xFFFF:
            return
        if mcc & 0x8000:
            cid, tac = r.u32(), r.u16()
            towers = [{"mobileCountryCode": mcc & 0x7FFF, "mobileNetworkCode": mnc, "locationAreaCode": tac,
                       "cellId": cid, "radioType": "lte"}]
        else:
            towers = [{"mobileCountryCode": mcc, "mobileNetworkCode": mnc, "locationAreaCode": lac, "cellId": cid}
                      for lac, cid in ((r.u16(), r.u16()) for _ in range(3)) if lac != 0xFFFF and cid != 0xFFFF]
        a["network"] = {"cellTowers": towers}

    @staticmethod
    def _tail(r: Reader, rec: Record, battery_voltage: bool) -> None:
        a, f = rec.attributes, rec.fields
        if battery_voltage and r.remaining >= 2:
            f["battery_mv"] = _bcd(r, 2) * 10
        if r.remaining >= 2:
            f["power_mv"] = _bcd(r, 2) * 10
        if r.remaining >= 19:  # OBD block; all-ones values are "not available"
            obd_speed = r.bcd(2)
            if obd_speed.isdigit():
                a["obdSpeed"] = int(obd_speed) / 100
            for name, size in (("fuelUsed", 4), ("fuelConsumption", 4), ("rpm", 2)):
                value = r.uint(size)
                if value != (1 << 8 * size) - 1:
                    a[name] = value if name == "rpm" else value / 1000  # mL -> L
            for name, offset in _OBD_BYTES:
                value = r.u8()
                if value != 0xFF:
                    a[name] = value + offset

    @staticmethod
    def _asset_tail(r: Reader, rec: Record) -> None:
        a, f = rec.attributes, rec.fields
        r.skip(5)  # acceleration
        a["batteryLevel"] = _bcd(r, 1) or 100
        temp = r.u8()
        a["deviceTemp"] = -(temp & 0x7F) if temp & 0x80 else temp
        a["lightSensor"] = _bcd(r, 1) / 10
        f["battery_mv"] = _bcd(r, 1) * 100
        a["solarPanel"] = _bcd(r, 1) / 10
        f["odometer_m"] = r.u32()
        inputs = r.u16()
        f["ignition"] = bool(inputs & 1 << 2)
        a["rssi"] = inputs >> 4 & 0x7F
        a["input"] = inputs

    @staticmethod
    def _network(r: Reader) -> Record:
        rec = Record()
        rec.fix_time = _time(r)
        a = rec.attributes
        a["operator"] = r.take(r.u8()).decode("utf-16-le", errors="replace")
        a["networkTechnology"] = r.ascii(r.u8())
        a["networkBand"] = r.ascii(r.u8())
        r.skip(r.u8())  # IMSI
        a["iccid"] = r.ascii(r.u8())
        return rec

    @staticmethod
    def _driving(r: Reader, kind: int) -> list[Record]:
        behaviour = r.u8()
        if kind == MSG_DRIVING:
            alarm = "braking" if behaviour in (0, 2, 4) else "acceleration" if behaviour in (1, 3, 5) else None
            records = []
            while r.remaining >= 24:  # one sample before and after the event, 24 bytes each
                rec = Record()
                rec.fix_time = _time(r)
                if r.peek() == r.peek(1) == r.peek(2) == r.peek(3) == 0xFF:
                    r.skip(12)  # no fix
                elif (location := _floats(r)) and rec.fix_time is not None:
                    rec.fields.update(location, valid=True)
                rec.fields["speed_kmh"] = _bcd(r, 2) / 10
                course, rpm = r.u16(), r.u16()
                if course != 0xFFFF and course <= 3600:
                    rec.fields["course"] = course / 10
                if rpm != 0xFFFF:
                    rec.attributes["rpm"] = rpm
                records.append(rec)
            if records:
                records[-1].fields["alarm"] = alarm
            return records
        rec = Record()
        rec.fields["alarm"] = {0: "braking", 1: "acceleration", 2: "cornering"}.get(behaviour)
        rec.fix_time = _time(r)
        status = r.u8()
        r.skip(5)  # acceleration
        location = _floats(r)
        rec.fields["speed_kmh"] = _bcd(r, 2) / 10
        course = r.u16()
        if course <= 3600:
            rec.fields["course"] = course / 10
        rec.attributes["rpm"] = r.u16()
        if location and rec.fix_time is not None:
            rec.fields.update(location, valid=not status & 0x80)
        return [rec]

    @staticmethod
    def _ble(r: Reader) -> Record:
        rec = Record()
        a = rec.attributes
        rec.fix_time = _time(r)
        rec.fields["ignition"] = r.u8() > 0
        i = 1
        while r.remaining >= 2:
            tag = r.u16()
            if tag == 0x01:  # tyre pressure
                a[f"tag{i}Id"] = r.take(6).hex()
                a[f"tag{i}Battery"] = r.u8() / 100 + 1.22
                a[f"tag{i}TirePressure"] = r.u8() * 1.527 * 2
                a[f"tag{i}TireTemp"] = r.u8() - 55
                a[f"tag{i}TireStatus"] = r.u8()
            elif tag in (0x02, 0x03):  # SOS button / driver card, with the unit's location then
                ident = r.take(6).hex()
                if tag == 0x03:
                    a["driverUniqueId"] = ident
                else:
                    a[f"tag{i}Id"] = ident
                a[f"tag{i}Battery"] = _bcd(r, 1) / 10
                flag = r.u8()
                alarm = ({0: "sos", 1: "lowBattery"} if tag == 0x02 else {1: "lowBattery"}).get(flag)
                if alarm:
                    rec.fields["alarm"] = alarm
                status = r.u8()
                block = r.sub(16)
                location = _floats(block)
                if status & 0x40 and location and "latitude" not in rec.fields and rec.fix_time is not None:
                    speed = block.bcd(2)
                    rec.fields.update(location, valid=True, satellites=status & 0x1F,
                                      speed_kmh=int(speed) / 10 if speed.isdigit() else None)
            elif tag in (0x04, 0x05):  # temperature + humidity / door sensor
                a[f"tag{i}Id"] = r.take(6).hex()
                a[f"tag{i}Battery"] = r.u8() / 100 + 2
                r.skip(1)  # battery level
                temp = r.u16()
                a[f"tag{i}Temp"] = (-(temp & 0x7FFF) if temp & 0x8000 else temp) / 100
                if tag == 0x04:
                    a[f"tag{i}Humidity"] = r.u16() / 100
                    a[f"tag{i}LightSensor"] = r.u16()
                else:
                    a[f"tag{i}Door"] = r.u8() > 0
                a[f"tag{i}Rssi"] = r.u8() - 128
            elif tag == 0x06:  # relay
                a[f"tag{i}Id"] = r.take(6).hex()
                a[f"tag{i}Battery"] = r.u8() / 100 + 2
                a[f"tag{i}Output"] = r.u8() > 0
                a[f"tag{i}Rssi"] = r.u8() - 128
            else:
                a["unknownBleType"] = tag  # its size is unknown: the rest cannot be read
                break
            i += 1
        return rec

    def _record(self, rec: Record, session: Session, frame: bytes) -> Position:
        fields = {k: v for k, v in rec.fields.items() if v is not None}
        located = "latitude" in fields
        if rec.fix_time is None or not located:
            for key in ("latitude", "longitude", "altitude_m", "valid"):
                fields.pop(key, None)
        if rec.fix_time is None and located:
            fields.pop("course", None)
        return self.position(session, rec.fix_time or session.now(), frame, attributes=rec.attributes, **fields)


# Encoders (device simulator and tests) -----------------------------------------------------


def _head(marker: int, kind: int, serial: int, imei: str, body: bytes) -> bytes:
    return (marker.to_bytes(2, "big") + bytes([kind]) + (HEAD_SIZE + len(body)).to_bytes(2, "big")
            + (serial & 0xFFFF).to_bytes(2, "big") + bytes.fromhex("0" + imei[-15:].rjust(15, "0")) + body)


def _bcd_bytes(value: int, size: int) -> bytes:
    return bytes.fromhex(str(max(0, value) % 10 ** (2 * size)).rjust(2 * size, "0"))


def encode_login(device: str, sequence: int = 0) -> bytes:
    """A 23 23 login message (software version bytes as a T8806 sends them)."""
    return _head(0x2323, MSG_LOGIN, sequence, device, bytes.fromhex("140197625020"))


def encode_heartbeat(device: str, sequence: int = 0) -> bytes:
    return _head(0x2323, MSG_HEARTBEAT, sequence, device, b"")


def encode_position(p: Position, sequence: int = 0, alarm: int = 0) -> bytes:
    """A 23 23 GPS report of ``p`` (an alarm report when ``alarm`` is set)."""
    status = 0x40 | min(p.satellites or 0, 31) if p.valid else min(p.satellites or 0, 31)
    io = 1 << 14 if p.ignition else 0
    t = p.fix_time
    body = (bytes.fromhex("003c0384230000") + (20).to_bytes(2, "big") + bytes([status]) + bytes(4)
            + bytes(2) + io.to_bytes(2, "big") + b"\xff\xff\xff\xff" + bytes([alarm, 0])
            + (p.odometer_m or 0).to_bytes(4, "big") + b"\x80"
            + bytes.fromhex(t.strftime("%y%m%d%H%M%S")))
    if p.valid:
        body += (struct.pack("<fff", p.altitude_m or 0.0, p.longitude or 0.0, p.latitude or 0.0)
                 + _bcd_bytes(round((p.speed_kmh or 0.0) * 10), 2) + int(p.course or 0).to_bytes(2, "big"))
    else:
        body += b"\xff" * 16
    body += _bcd_bytes(round((p.power_mv or 0) / 10), 2)
    return _head(0x2323, MSG_ALARM if alarm else MSG_GPS, sequence, p.device, body)


PROTOCOL = T800xProtocol()
