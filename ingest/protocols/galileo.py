"""Galileosky (GLONASS/GPS v2-v7, Base Block, Iridium units) over TCP: tag-based little-endian
packets, compressed packets, photo chunks and Iridium SBD messages, acknowledged with ``02`` and the
packet's checksum.

Packet::

    +--------+--------------------+-----------------------------------+---------------------+
    | header | length u16 LE      | tags: u8 tag + a value of the     | CRC-16/MODBUS u16 LE|
    | u8     | bit 15: more data  | tag's size (little-endian)        | over header .. tags |
    +--------+--------------------+-----------------------------------+---------------------+
    header 01 data, 07 photo chunk (u8 part number + data), 08 compressed data

Tags of data packets (a tag seen a second time starts the next record)::

    01 versionHw u8 | 02 versionFw u8 | 03 IMEI, 15 ASCII digits (-> the device) | 04 deviceId u16
    10 index u16 | 20 time u32 (Unix s) | 30 u8 fix (high nibble 0 = valid, low nibble satellites),
    i32 latitude 1e-6, i32 longitude 1e-6 | 33 u16 speed 0.1 km/h, u16 course 0.1 deg |
    34 i16 altitude m | 35 u8 HDOP 0.1 | 40 status u16 | 41 power mV | 42 battery mV |
    43 deviceTemp i8 | 44 acceleration u32 | 45 output u16 | 46 input u16 | 48 statusExtended u16 |
    50-57 adc0-7 u16 | 58/59 rs2320/rs2321 u16 | 60-62 fuel0-2 u16 | 90 driverUniqueId u32 |
    a0-af can8BitR15-30 u8 | b0-b9 can16BitR5-14 u16 | c0 fuelTotal u32 x0.5 | c1 fuel x0.4,
    temp1 -40, rpm x0.125 | c2/c3 canB0/canB1 u32 | c4-d2 can8BitR0-14 u8 | d4 odometer u32 m |
    d6-da can16BitR0-4 u16 | db-df can32BitR0-4 u32 | e0 index u32 | e1 u8 length + ASCII
    (-> result: a command's answer) | e2-e9 userData0-7 u32 | ea u8 length + bytes (userDataArray) |
    f0-f9 can32BitR5-14 u32 | fe u16 length + extended tags (skipped) | other known tags skipped by size

Compressed packet (08): u16 length, then records until the checksum: a 10-byte minimal data set
(bits: 1 reserved, 25 seconds since the start of the year (UTC), 1 invalid-fix flag, 22 longitude
(x360/2^22 - 180), 21 latitude (x180/2^21 - 90), 1 alarm), u8 tag count, the tag numbers, then
their values as above. No IMEI: the unit identified itself earlier on the connection.

Iridium SBD message (01, big-endian u16 length, then information elements; no checksum)::

    01 001C  u32 CDR reference, 15 ASCII IMEI, u8 session status, u16 MOMSN, u16 MTMSN, u32 time
    03 000B  u8 flags (bit 1 south, bit 0 west), u8 + u16/60000 latitude, u8 + u16/60000 longitude,
             u32 CEP radius
    02 <len> payload: tags as above (a 0x30 tag replaces the coarse Iridium location), or with the
             per-device option ``compressed`` one minimal data set, a tag count, tags and values

Replies: data and compressed packets get ``02`` + the packet's two checksum bytes; photo chunks
``07`` + the checksum bytes. Iridium messages get none (the gateway delivers them).

Decisions (where this differs from the reference decoder):
    * The checksum is verified; a mismatch is decoded and flagged ``crcMismatch``.
    * A tag this decoder does not know ends the packet (its size is unknown): the records before
      it are kept, the last one carries ``unknownTag``, and the packet is acknowledged so the
      unit moves on (the reference refuses the packet and the unit resends it forever).
    * Records with a time but no coordinates are status records (the reference drops them);
      records without a time are dropped unless they carry a command answer (e1), which becomes
      a status record at the receive time. The low nibble of the 0x30 fix byte is ``satellites``.
    * The compressed time counts from the start of the receive year; a result more than a day
      ahead of the receive time is taken from the previous year (a record from 31 December
      read in January).
    * Tag 0xfe is an extended-tag block with a u16 length (Galileosky's documentation); the
      reference reads it as 8 bytes.
    * Iridium and compressed packets are recognised in ``split`` too, so they work over a stream.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from avl.records import Position
from ingest.protocols import options
from ingest.protocols.base import DecodeResult, Protocol, Session, from_unix
from ingest.protocols.crc16 import crc16_modbus
from ingest.protocols.guard import guarded
from ingest.protocols.reader import Reader

HEADER_DATA = 0x01
HEADER_PHOTO = 0x07
HEADER_COMPRESSED = 0x08
ACK_DATA = 0x02
IRIDIUM_MARK = b"\x01\x00\x1c"  # after the header and length: the Iridium MO header element

_MIN_PACKET = 5
_MIN_IRIDIUM = 6

_SIZES: dict[int, int] = {
    **dict.fromkeys((0x01, 0x02, 0x35, 0x43, *range(0x88, 0x8D), 0xD5, *range(0xA0, 0xB0),
                     *range(0xC4, 0xD3)), 1),
    **dict.fromkeys((0x04, 0x10, 0x34, 0x40, 0x41, 0x42, 0x45, 0x46, 0x48, *range(0x50, 0x5A), 0x60, 0x61, 0x62,
                     *range(0x70, 0x78), *range(0xB0, 0xBA), *range(0xD6, 0xDB)), 2),
    **dict.fromkeys((0x63, 0x64, 0x6F, 0x5D, *range(0x65, 0x6F), 0xFA), 3),
    **dict.fromkeys((0x20, 0x33, 0x44, 0x90, 0xC0, 0xC1, 0xC2, 0xC3, 0xD3, 0xD4, *range(0xDB, 0xE0), 0xE0,
                     *range(0xF0, 0xFA), 0x5A, 0x47, *range(0xE2, 0xEA)), 4),
    0x03: 15,
    0x30: 9,
    0x5B: 7,
    0x5C: 68,
    0xFD: 8,
}


class _UnknownTag(Exception):
    def __init__(self, tag: int) -> None:
        super().__init__(f"unknown tag 0x{tag:02x}")
        self.tag = tag


class _Record:
    __slots__ = ("tags", "fix_time", "location", "fields", "attributes")

    def __init__(self) -> None:
        self.tags: set[int] = set()
        self.fix_time: datetime | None = None
        self.location: dict[str, Any] = {}
        self.fields: dict[str, Any] = {}
        self.attributes: dict[str, Any] = {}


def _tag(rec: _Record, r: Reader, tag: int) -> str | None:
    """Reads one tag's value into ``rec``; returns the IMEI for tag 0x03."""
    a, f = rec.attributes, rec.fields
    if tag == 0x03:
        return r.ascii(15)
    if tag == 0x30:
        fix = r.u8()
        latitude, longitude = r.i32() / 1e6, r.i32() / 1e6
        f["satellites"] = fix & 0x0F
        if -90 <= latitude <= 90 and -180 <= longitude <= 180 and (latitude or longitude):
            rec.location = {"latitude": latitude, "longitude": longitude, "valid": fix >> 4 == 0}
    elif tag == 0x20:
        rec.fix_time = from_unix(r.u32())
    elif tag == 0x33:
        f["speed_kmh"], f["course"] = r.u16() / 10, r.u16() / 10
    elif tag == 0x34:
        f["altitude_m"] = float(r.i16())
    elif tag == 0x35:
        f["hdop"] = r.u8() / 10
    elif tag == 0x41:
        f["power_mv"] = r.u16()
    elif tag == 0x42:
        f["battery_mv"] = r.u16()
    elif tag == 0x43:
        a["deviceTemp"] = r.i8()
    elif tag == 0xD4:
        f["odometer_m"] = r.u32()
    elif tag == 0xC1:
        a["fuel"], a["temp1"], a["rpm"] = r.u8() * 0.4, r.u8() - 40, r.u16() * 0.125
    elif tag == 0xE1:
        a["result"] = r.ascii(r.u8())
    elif tag == 0xEA:
        a["userDataArray"] = r.take(r.u8()).hex()
    elif tag == 0xFE:
        r.skip(r.u16())
    elif tag in _NAMED:
        name, size, scale = _NAMED[tag]
        value = r.uint(size)
        a[name] = value if scale is None else value * scale
    elif tag in _SIZES:
        r.skip(_SIZES[tag])
    else:
        raise _UnknownTag(tag)
    return None


def _named() -> dict[int, tuple[str, int, float | None]]:
    named: dict[int, tuple[str, int, float | None]] = {
        0x01: ("versionHw", 1, None), 0x02: ("versionFw", 1, None), 0x04: ("deviceId", 2, None),
        0x10: ("index", 2, None), 0x40: ("status", 2, None), 0x44: ("acceleration", 4, None),
        0x45: ("output", 2, None), 0x46: ("input", 2, None), 0x48: ("statusExtended", 2, None),
        0x58: ("rs2320", 2, None), 0x59: ("rs2321", 2, None), 0x90: ("driverUniqueId", 4, None),
        0xC0: ("fuelTotal", 4, 0.5), 0xC2: ("canB0", 4, None), 0xC3: ("canB1", 4, None), 0xE0: ("index", 4, None),
    }
    named.update({0x50 + i: (f"adc{i}", 2, None) for i in range(8)})
    named.update({0x60 + i: (f"fuel{i}", 2, None) for i in range(3)})
    named.update({0xA0 + i: (f"can8BitR{i + 15}", 1, None) for i in range(16)})
    named.update({0xB0 + i: (f"can16BitR{i + 5}", 2, None) for i in range(10)})
    named.update({0xC4 + i: (f"can8BitR{i}", 1, None) for i in range(15)})
    named.update({0xD6 + i: (f"can16BitR{i}", 2, None) for i in range(5)})
    named.update({0xDB + i: (f"can32BitR{i}", 4, None) for i in range(5)})
    named.update({0xE2 + i: (f"userData{i}", 4, None) for i in range(8)})
    named.update({0xF0 + i: (f"can32BitR{i + 5}", 4, None) for i in range(10)})
    return named


_NAMED = _named()


def _minimal_data_set(rec: _Record, r: Reader, now: datetime) -> None:
    """The compressed 10-byte record head: time in the year, validity, coarse location, alarm."""
    bits = int.from_bytes(r.take(10), "big")
    seconds = bits >> 54 & ((1 << 25) - 1)
    invalid = bits >> 53 & 1
    lon_raw = bits >> 31 & ((1 << 22) - 1)
    lat_raw = bits >> 10 & ((1 << 21) - 1)
    alarm = bits >> 9 & 1
    year_start = datetime(now.year, 1, 1, tzinfo=UTC)
    fix_time = year_start + timedelta(seconds=seconds)
    if fix_time > now + timedelta(days=1):
        fix_time = datetime(now.year - 1, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)
    rec.fix_time = fix_time
    rec.location = {"latitude": 180 * lat_raw / 2097152 - 90, "longitude": 360 * lon_raw / 4194304 - 180,
                    "valid": invalid == 0}
    if alarm:
        rec.fields["alarm"] = "general"


class GalileoProtocol(Protocol):
    name: ClassVar[str] = "galileo"
    port: ClassVar[int] = 5034
    transports: ClassVar[frozenset[str]] = frozenset({"tcp"})
    max_frame: ClassVar[int] = 32773  # 15-bit length + 5

    def split(self, buffer: bytes) -> tuple[bytes | None, int]:
        if not buffer:
            return None, 0
        if buffer[0] not in (HEADER_DATA, HEADER_PHOTO, HEADER_COMPRESSED):
            starts = [i for i in (buffer.find(bytes([h]), 1) for h in (HEADER_DATA, HEADER_PHOTO, HEADER_COMPRESSED))
                      if i > 0]
            return None, min(starts) if starts else len(buffer)
        if len(buffer) < _MIN_PACKET or (len(buffer) < _MIN_IRIDIUM and buffer[0] == HEADER_DATA
                                         and int.from_bytes(buffer[1:3], "little") & 0x7FFF):
            return None, 0  # an empty packet is 5 bytes; any other data packet may still be an Iridium one
        if buffer[0] == HEADER_DATA and buffer[3:6] == IRIDIUM_MARK:
            size = int.from_bytes(buffer[1:3], "big") + 3
        else:
            size = (int.from_bytes(buffer[1:3], "little") & 0x7FFF) + _MIN_PACKET
        if len(buffer) < size:
            return None, 0
        return buffer[:size], size

    def decode(self, frame: bytes, session: Session) -> DecodeResult:
        return guarded(self, self._decode, frame, session, "packet")

    def _decode(self, frame: bytes, session: Session) -> DecodeResult:
        if len(frame) < _MIN_PACKET:
            raise self.error(f"packet of {len(frame)} bytes is too short", frame)
        header = frame[0]
        if header == HEADER_DATA and frame[3:6] == IRIDIUM_MARK:
            return self._iridium(frame, session)
        if header not in (HEADER_DATA, HEADER_PHOTO, HEADER_COMPRESSED):
            raise self.error(f"unknown packet header 0x{header:02x}", frame)
        end = (int.from_bytes(frame[1:3], "little") & 0x7FFF) + 3
        if end + 2 > len(frame):
            raise self.error(f"packet of {len(frame)} bytes is shorter than its declared {end + 2}", frame)
        checksum = frame[end:end + 2]
        mismatch = crc16_modbus(frame[:end]) != int.from_bytes(checksum, "little")
        if header == HEADER_PHOTO:  # a picture chunk: acknowledged, not kept
            return DecodeResult(reply=bytes([HEADER_PHOTO]) + checksum)
        body = Reader(frame, self.name, pos=3, end=end, little=True)
        if header == HEADER_COMPRESSED:
            records = self._compressed(body, session)
        else:
            records = self._tags(body, session)
        positions = [self._position(rec, session, frame) for rec in records]
        if mismatch:
            for p in positions:
                p.attributes["crcMismatch"] = True
        return DecodeResult(positions, bytes([ACK_DATA]) + checksum)

    def _tags(self, r: Reader, session: Session) -> list[_Record]:
        records: list[_Record] = []
        rec = _Record()
        try:
            while r.remaining:
                tag = r.u8()
                if tag in rec.tags:
                    records.append(rec)
                    rec = _Record()
                rec.tags.add(tag)
                imei = _tag(rec, r, tag)
                if imei is not None:
                    if not imei.isdigit():
                        raise self.error(f"IMEI tag holds {imei!r}", r.data)
                    session.device = imei
        except _UnknownTag as exc:
            rec.attributes["unknownTag"] = f"0x{exc.tag:02x}"
        records.append(rec)
        return [rec for rec in records if rec.fix_time is not None or "result" in rec.attributes]

    def _compressed(self, r: Reader, session: Session) -> list[_Record]:
        records = []
        now = session.now().astimezone(UTC)
        try:
            while r.remaining:
                rec = _Record()
                records.append(rec)
                _minimal_data_set(rec, r, now)
                for tag in list(r.take(r.u8())):
                    _tag(rec, r, tag)
        except _UnknownTag as exc:
            records[-1].attributes["unknownTag"] = f"0x{exc.tag:02x}"
        return records

    def _iridium(self, frame: bytes, session: Session) -> DecodeResult:
        end = int.from_bytes(frame[1:3], "big") + 3
        if end > len(frame):
            raise self.error(f"Iridium message of {len(frame)} bytes is shorter than its declared {end}", frame)
        r = Reader(frame, self.name, pos=6, end=end)  # big-endian information elements
        r.skip(4)  # CDR reference
        imei = r.ascii(15)
        if not imei.isdigit():
            raise self.error(f"Iridium IMEI {imei!r}", frame)
        session.device = imei
        r.skip(1 + 2 + 2)  # session status, MOMSN, MTMSN
        rec = _Record()
        rec.fix_time = from_unix(r.u32())
        r.skip(3)  # location element header
        flags = r.u8()
        latitude = r.u8() + r.u16() / 60000
        longitude = r.u8() + r.u16() / 60000
        r.skip(4)  # CEP radius
        if latitude <= 90 and longitude <= 180:
            rec.location = {"latitude": -latitude if flags & 0b10 else latitude,
                            "longitude": -longitude if flags & 0b01 else longitude, "valid": False}
        r.skip(1)  # payload element
        payload = r.sub(r.u16())
        data = Reader(frame, self.name, pos=payload.pos, end=payload.end, little=True)
        try:
            if options.flag(session, "compressed"):
                _minimal_data_set(rec, data, session.now().astimezone(UTC))
                for tag in list(data.take(data.u8())):
                    _tag(rec, data, tag)
            else:
                while data.remaining:
                    _tag(rec, data, data.u8())
        except _UnknownTag as exc:
            rec.attributes["unknownTag"] = f"0x{exc.tag:02x}"
        return DecodeResult([self._position(rec, session, frame)])

    def _position(self, rec: _Record, session: Session, frame: bytes) -> Position:
        if rec.fix_time is None or not rec.location:
            return self.position(session, rec.fix_time or session.now(), frame, attributes=rec.attributes,
                                 **{k: v for k, v in rec.fields.items() if k not in ("speed_kmh", "course")})
        return self.position(session, rec.fix_time, frame, attributes=rec.attributes, **rec.location, **rec.fields)


# Encoders (device simulator and tests) -----------------------------------------------------


def _packet(tags: bytes, header: int = HEADER_DATA) -> bytes:
    head = bytes([header]) + len(tags).to_bytes(2, "little") + tags
    return head + crc16_modbus(head).to_bytes(2, "little")


def encode_login(device: str, device_number: int = 50) -> bytes | None:
    """The head packet a unit sends on connecting: IMEI and device number."""
    return _packet(b"\x03" + device.encode("ascii") + b"\x04" + device_number.to_bytes(2, "little"))


def encode_position(p: Position, sequence: int = 0) -> bytes:
    """A data packet with one record for ``p`` (no IMEI tag: send ``encode_login`` first)."""
    def le(value: int, size: int, signed: bool = False) -> bytes:
        return value.to_bytes(size, "little", signed=signed)

    fix = (0 if p.valid else 0x10) | min(p.satellites or 0, 15)
    tags = (b"\x10" + le(sequence & 0xFFFF, 2)
            + b"\x20" + le(int(p.fix_time.timestamp()), 4)
            + b"\x30" + bytes([fix]) + le(round((p.latitude or 0.0) * 1e6), 4, True)
            + le(round((p.longitude or 0.0) * 1e6), 4, True)
            + b"\x33" + le(round((p.speed_kmh or 0.0) * 10), 2) + le(round((p.course or 0.0) * 10) % 3600, 2)
            + b"\x34" + le(round(p.altitude_m or 0), 2, True)
            + b"\x35" + bytes([round((p.hdop if p.hdop is not None else 0.9) * 10)])
            + b"\x41" + le(p.power_mv or 0, 2)
            + b"\xd4" + le(p.odometer_m or 0, 4))
    return _packet(tags)


PROTOCOL = GalileoProtocol()
