"""Ruptela FM-Eco/Pro/Tco (and later FM series) binary protocol over TCP: records with I/O elements,
extended records, DTCs, identification and heartbeat, with the acknowledgements the unit waits for.

Frame (big-endian)::

    +-----------+------------------------------------------------+------------------+
    | length u16| data (``length`` bytes)                        | CRC-16/KERMIT u16|
    +-----------+------------------------------------------------+------------------+
    data: u64 IMEI (-> the device, 15 digits) | u8 command | payload
    The CRC covers the data.

Commands:

    1  records:   u8 records left | u8 count | count x record
                  record: u32 time (Unix s) | u8 time extension | u8 priority | i32 longitude 1e-7 |
                  i32 latitude 1e-7 (both INT_MIN: no fix) | u16 altitude 0.1 m | u16 course 0.01 deg |
                  u8 satellites | u16 speed km/h | u8 HDOP 0.1 | u8 event I/O ID (-> event) |
                  four I/O groups of 1-, 2-, 4- and 8-byte values: u8 count, count x (u8 ID, value)
    68 extended records: as 1, with a u8 record extension after the time extension (high nibble:
                  how many records merge into one, low nibble: this record's place; a record with
                  place 1..n continues the previous one) and u16 event and I/O IDs
    9  DTCs:      u8 count, count x (u8 reserved, u32 time, i32 longitude 1e-7, i32 latitude 1e-7,
                  u8 archive flag (2 = archived), 5 ASCII DTC code)        -> status records ``dtcs``
    15 identification, 16 heartbeat                           -> no record; answered with 01
    2, 3, 4, 7 command answers (ASCII text), 17 set-I/O answer (u8)      -> status record ``result``
    37 files (camera pictures)                                -> no record, no reply

I/O elements kept under the reference server's names: 2-5 in1-in4, 13/173 motion, 20-23 adc3/adc4/
adc1/adc2, 29 power mV, 30 battery mV, 32 deviceTemp, 34 driverUniqueId (hex), 39 engineLoad,
65 odometer m, 74/78/79/80 temp3/temp0-2 (0.1 degC), 88 jamming, 94 rpm x0.25, 95 obdSpeed,
98 fuel x100/255, 100 fuelConsumption /20, 134 braking, 136 acceleration, 150 operator, 163/164
odometer/tripOdometer x5 m, 165 obdSpeed /256, 166/197 rpm x0.125, 170 charge, 205/207 fuel (x0.4),
208 fuelUsed x0.5, 251/409 ignition, 410 tow, 411 accident, 415 = 0 gpsAntennaCut, 645 obdOdometer
x1000, 758 = 1 tampering; 126+127 and 155+156 -> driverUniqueId (ASCII); 760+761 -> tagId; any
other -> io<ID>.

Replies: records (1, 68) ``00 02 64 01 13 BC``; DTCs ``00 02 6D 01 C4 A4``; identification and
heartbeat ``00 02 <command> 01 <CRC>``. Other commands get none.

Decisions (where this differs from the reference decoder):
    * The CRC is verified; a mismatch is decoded and flagged ``crcMismatch``.
    * Two corpus frames (SMS-via-GPRS answers, command 7) carry a length field shorter than the
      data while their CRC verifies over the whole data. ``decode`` takes a frame whose length
      field disagrees with its size when the CRC over everything between the length field and
      the last two bytes verifies; otherwise the frame is refused. ``split`` cuts at the declared
      length, and when the CRC does not verify there, at the first later point (up to 512 bytes
      on, within the bytes already received) where it does, falling back to the declared length.
    * A record without a fix is a status record (no location), not the last known position.
    * File transfers (command 37) get no reply: this server never asks for pictures, and does
      not store them.
"""

from __future__ import annotations

import struct
from datetime import datetime
from typing import Any, ClassVar

from avl.records import Position
from ingest.protocols.base import DecodeResult, Protocol, Session, from_unix
from ingest.protocols.crc16 import crc16_kermit
from ingest.protocols.guard import guarded
from ingest.protocols.reader import Reader

MSG_RECORDS = 1
MSG_DEVICE_CONFIGURATION = 2
MSG_DEVICE_VERSION = 3
MSG_FIRMWARE_UPDATE = 4
MSG_SMS_VIA_GPRS_RESPONSE = 7
MSG_DTCS = 9
MSG_IDENTIFICATION = 15
MSG_HEARTBEAT = 16
MSG_SET_IO = 17
MSG_FILES = 37
MSG_EXTENDED_RECORDS = 68

MSG_RECORDS_ACK = 100
MSG_DTCS_ACK = 109

_NO_FIX = -(2**31)
_TEXT_ANSWERS = frozenset({MSG_DEVICE_CONFIGURATION, MSG_DEVICE_VERSION, MSG_FIRMWARE_UPDATE,
                           MSG_SMS_VIA_GPRS_RESPONSE})
_MIN_DATA = 9  # IMEI and command
_CRC_SCAN = 512  # how far past a declared end whose CRC fails the framer looks for one that verifies


def encode_content(command: int, content: bytes) -> bytes:
    """A server message: length, command and content, CRC-16/KERMIT."""
    data = bytes([command]) + content
    return struct.pack(">H", len(data)) + data + struct.pack(">H", crc16_kermit(data))


RECORDS_ACK = encode_content(MSG_RECORDS_ACK, b"\x01")  # 00 02 64 01 13 BC
DTCS_ACK = encode_content(MSG_DTCS_ACK, b"\x01")  # 00 02 6D 01 C4 A4


class _Record:
    __slots__ = ("fix_time", "location", "fields", "attributes", "alarms")

    def __init__(self, fix_time: datetime) -> None:
        self.fix_time = fix_time
        self.location: dict[str, Any] = {}
        self.fields: dict[str, Any] = {}
        self.attributes: dict[str, Any] = {}
        self.alarms: list[str] = []


def _value(r: Reader, size: int, signed: bool = False) -> int:
    return r.sint(size) if signed else r.uint(size)


def _scaled(name: str, scale: float) -> Any:
    return lambda rec, r, size: rec.attributes.__setitem__(name, _value(r, size) * scale)


def _raw(name: str, signed: bool = False) -> Any:
    return lambda rec, r, size: rec.attributes.__setitem__(name, _value(r, size, signed))


def _typed(name: str, scale: float = 1) -> Any:
    return lambda rec, r, size: rec.fields.__setitem__(name, round(_value(r, size) * scale))


def _tenths(name: str) -> Any:
    return lambda rec, r, size: rec.attributes.__setitem__(name, _value(r, size, True) / 10)


def _positive(name: str) -> Any:
    return lambda rec, r, size: rec.attributes.__setitem__(name, _value(r, size) > 0)


def _alarm_when(name: str, test: Any) -> Any:
    def apply(rec: _Record, r: Reader, size: int) -> None:
        if test(_value(r, size)):
            rec.alarms.append(name)
    return apply


def _driver_hex(rec: _Record, r: Reader, size: int) -> None:
    rec.attributes["driverUniqueId"] = r.take(size).hex()


def _ignition(rec: _Record, r: Reader, size: int) -> None:
    rec.fields["ignition"] = _value(r, size) > 0


_IO: dict[int, Any] = {
    **{i: _raw(f"in{i - 1}") for i in (2, 3, 4, 5)},
    13: _positive("motion"), 173: _positive("motion"),
    20: _raw("adc3"), 21: _raw("adc4"), 22: _raw("adc1"), 23: _raw("adc2"),
    29: _typed("power_mv"), 30: _typed("battery_mv"),
    32: _raw("deviceTemp", signed=True),
    34: _driver_hex,
    39: _raw("engineLoad"),
    65: _typed("odometer_m"),
    74: _tenths("temp3"),
    **{i: _tenths(f"temp{i - 78}") for i in (78, 79, 80)},
    88: _alarm_when("jamming", lambda v: v > 0),
    94: _scaled("rpm", 0.25),
    95: _raw("obdSpeed"),
    98: _scaled("fuel", 100 / 255),
    100: _scaled("fuelConsumption", 1 / 20),
    134: _alarm_when("braking", lambda v: v > 0),
    136: _alarm_when("acceleration", lambda v: v > 0),
    150: _raw("operator"),
    163: _typed("odometer_m", 5),
    164: _scaled("tripOdometer", 5),
    165: _scaled("obdSpeed", 1 / 256),
    166: _scaled("rpm", 0.125), 197: _scaled("rpm", 0.125),
    170: _positive("charge"),
    205: _raw("fuel"),
    207: _scaled("fuel", 0.4),
    208: _scaled("fuelUsed", 0.5),
    251: _ignition, 409: _ignition,
    410: _alarm_when("tow", lambda v: v > 0),
    411: _alarm_when("accident", lambda v: v > 0),
    415: _alarm_when("gpsAntennaCut", lambda v: v == 0),
    645: _scaled("obdOdometer", 1000),
    758: _alarm_when("tampering", lambda v: v == 1),
}


def _io(rec: _Record, r: Reader, io_id: int, size: int) -> None:
    handler = _IO.get(io_id)
    if handler is None:
        rec.attributes[f"io{io_id}"] = _value(r, size)
    else:
        handler(rec, r, size)


def _join_ids(rec: _Record) -> None:
    """IDs the unit sends in two 8-byte halves."""
    for first, second in ((126, 127), (155, 156)):
        a, b = rec.attributes.pop(f"io{first}", None), rec.attributes.pop(f"io{second}", None)
        if a is not None and b is not None:
            rec.attributes["driverUniqueId"] = struct.pack(">QQ", a, b).decode("latin-1").strip("\x00 ")
    a, b = rec.attributes.pop("io760", None), rec.attributes.pop("io761", None)
    if a is not None and b is not None:
        rec.attributes["tagId"] = f"{a:x}{b:x}"


class RuptelaProtocol(Protocol):
    name: ClassVar[str] = "ruptela"
    port: ClassVar[int] = 5046
    transports: ClassVar[frozenset[str]] = frozenset({"tcp"})
    max_frame: ClassVar[int] = 65539  # u16 length + 4

    def split(self, buffer: bytes) -> tuple[bytes | None, int]:
        if len(buffer) < 2:
            return None, 0
        length = int.from_bytes(buffer[:2], "big")
        if length < _MIN_DATA:  # no frame is this short: skip to where one could start
            skip = 1
            while skip + 1 < len(buffer) and buffer[skip] == 0 and buffer[skip + 1] < _MIN_DATA:
                skip += 1
            return None, skip
        end = length + 4
        if len(buffer) < end:
            return None, 0
        if crc16_kermit(buffer[2:end - 2]) != int.from_bytes(buffer[end - 2:end], "big"):
            later = _crc_end(buffer, end)
            if later is not None:
                end = later
        return buffer[:end], end

    def decode(self, frame: bytes, session: Session) -> DecodeResult:
        return guarded(self, self._decode, frame, session, "frame")

    def _decode(self, frame: bytes, session: Session) -> DecodeResult:
        if len(frame) < _MIN_DATA + 4:
            raise self.error(f"frame of {len(frame)} bytes is too short", frame)
        declared = int.from_bytes(frame[:2], "big")
        data, crc = frame[2:-2], int.from_bytes(frame[-2:], "big")
        mismatch = crc16_kermit(data) != crc
        if declared != len(data) and mismatch:
            end = declared + 4
            if not (_MIN_DATA <= declared and end <= len(frame)
                    and crc16_kermit(frame[2:end - 2]) == int.from_bytes(frame[end - 2:end], "big")):
                raise self.error(f"frame of {len(frame)} bytes does not match its declared length {declared}"
                                 " and its CRC does not verify", frame)
            frame = frame[:end]  # trailing bytes after a whole, verified frame
            data, mismatch = frame[2:-2], False
        r = Reader(data, self.name)
        imei = f"{r.u64():015d}"
        command = r.u8()
        session.device = imei
        if command in (MSG_RECORDS, MSG_EXTENDED_RECORDS):
            records = self._records(r, session, frame, extended=command == MSG_EXTENDED_RECORDS)
            reply: bytes | None = RECORDS_ACK
        elif command == MSG_DTCS:
            records, reply = self._dtcs(r, session, frame), DTCS_ACK
        elif command in (MSG_IDENTIFICATION, MSG_HEARTBEAT):
            return DecodeResult(reply=encode_content(command, b"\x01"))
        elif command in _TEXT_ANSWERS:
            answer = r.rest().decode("latin-1").strip()
            records, reply = [self.position(session, session.now(), frame, attributes={"result": answer})], None
        elif command == MSG_SET_IO:
            records, reply = [self.position(session, session.now(), frame, attributes={"result": str(r.u8())})], None
        else:
            return DecodeResult()
        if mismatch:
            for p in records:
                p.attributes["crcMismatch"] = True
        return DecodeResult(records, reply)

    def _records(self, r: Reader, session: Session, frame: bytes, extended: bool) -> list[Position]:
        r.skip(1)  # records left in the unit
        count = r.u8()
        merged: list[_Record] = []
        for _ in range(count):
            fix_time = from_unix(r.u32())
            r.skip(1)  # time extension
            rec = _Record(fix_time)
            if extended:
                extension = r.u8()
                merge_count, place = extension >> 4, extension & 0x0F
                if merged and 0 < place <= merge_count:
                    rec = merged[-1]  # this record continues the previous one
            r.skip(1)  # priority
            lon, lat = r.i32(), r.i32()
            if lon > _NO_FIX and lat > _NO_FIX:
                latitude, longitude = lat / 1e7, lon / 1e7
                if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
                    raise self.error(f"coordinates {latitude},{longitude} out of range", frame)
                rec.location = {"latitude": latitude, "longitude": longitude, "altitude_m": r.u16() / 10,
                                "course": r.u16() / 100}
                rec.fields["satellites"] = r.u8()
                rec.location["speed_kmh"] = float(r.u16())
                rec.fields["hdop"] = r.u8() / 10
            else:
                r.skip(8)
            rec.attributes["event"] = r.u16() if extended else r.u8()
            for size in (1, 2, 4, 8):
                for _ in range(r.u8()):
                    _io(rec, r, r.u16() if extended else r.u8(), size)
            if not merged or rec is not merged[-1]:
                merged.append(rec)
        return [self._position(rec, session, frame) for rec in merged]

    def _position(self, rec: _Record, session: Session, frame: bytes) -> Position:
        _join_ids(rec)
        alarm = ",".join(dict.fromkeys(rec.alarms)) or None
        if not rec.location:
            return self.position(session, rec.fix_time, frame, alarm=alarm, attributes=rec.attributes, **rec.fields)
        return self.position(session, rec.fix_time, frame, valid=True, alarm=alarm, attributes=rec.attributes,
                             **rec.location, **rec.fields)

    def _dtcs(self, r: Reader, session: Session, frame: bytes) -> list[Position]:
        records = []
        for _ in range(r.u8()):
            r.skip(1)  # reserved
            fix_time = from_unix(r.u32())
            lon, lat = r.i32(), r.i32()
            attributes: dict[str, Any] = {}
            if r.u8() == 2:
                attributes["archive"] = True
            attributes["dtcs"] = r.ascii(5)
            latitude, longitude = lat / 1e7, lon / 1e7
            if lon > _NO_FIX and lat > _NO_FIX and (lat or lon) and -90 <= latitude <= 90 and -180 <= longitude <= 180:
                records.append(self.position(session, fix_time, frame, valid=True, latitude=latitude,
                                             longitude=longitude, attributes=attributes))
            else:
                records.append(self.position(session, fix_time, frame, attributes=attributes))
        return records


def _crc_end(buffer: bytes, declared_end: int) -> int | None:
    """The first frame end after ``declared_end`` (within ``buffer``) where the CRC verifies."""
    crc = crc16_kermit(buffer[2:declared_end - 2])
    for end in range(declared_end + 1, min(len(buffer), declared_end + _CRC_SCAN) + 1):
        crc = crc16_kermit(buffer[end - 3:end - 2], crc)
        if crc == int.from_bytes(buffer[end - 2:end], "big"):
            return end
    return None


# Encoders (device simulator and tests) -----------------------------------------------------


def encode_login(device: str) -> bytes | None:
    """The identification message (command 15) a unit sends on connecting."""
    return _frame(device, MSG_IDENTIFICATION, b"\x00" * 8)


def _frame(device: str, command: int, payload: bytes) -> bytes:
    data = struct.pack(">QB", int(device), command) + payload
    return struct.pack(">H", len(data)) + data + struct.pack(">H", crc16_kermit(data))


def encode_position(p: Position, sequence: int = 0) -> bytes:
    """A records message (command 1) with one record for ``p`` (ignition as I/O 251, odometer as 65)."""
    record = struct.pack(
        ">IBBiiHHBHBB", int(p.fix_time.timestamp()), 0, 0,
        round((p.longitude or 0.0) * 1e7), round((p.latitude or 0.0) * 1e7), round((p.altitude_m or 0.0) * 10),
        round((p.course or 0.0) * 100) % 36000, p.satellites or 0, round(p.speed_kmh or 0),
        round((p.hdop if p.hdop is not None else 0.9) * 10), 0,
    )
    record += struct.pack(">BBB", 1, 251, 1 if p.ignition else 0)  # 1-byte I/O
    record += b"\x00"  # no 2-byte I/O
    record += struct.pack(">BBI", 1, 65, p.odometer_m or 0)  # 4-byte I/O
    record += b"\x00"  # no 8-byte I/O
    return _frame(p.device, MSG_RECORDS, bytes([0, 1]) + record)


PROTOCOL = RuptelaProtocol()
