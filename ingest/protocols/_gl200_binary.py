"""Queclink @Track binary reports: the HEX form (``+RSP``/``+EVT``/``+INF``/...) and Protocol Pro.

HEX form (big-endian; ``mask`` bits say which optional fields are present):

    +RSP/+BSP  type(1) mask(4) length(2) [devtype(1)] [proto(2)] [fw(2)] uid(8) [battery %(1)]
               [power mV(2)] [analog(2)] [geo: 2 reserved] [din/dout(2)] [motion(1)]
               [antenna|satellites(1)] index(1) count(1) {position}*count ... send time(7)
               count number(2) crc16(2) 0D 0A
               type 100 (compressed): no index, count(2), then bit-packed points
    +EVT/+BVT  as +RSP up to satellites, a type-specific insert, count(1), one position
    +INF/+BNF  type(1) mask(2) length(2) uid(8) devtype proto fw ... (a status record)
    +ACK +HBD +LGN +CRD ...   framed, no record
    position   hdop(1) [speed km/h: int(2) + tenths(1)] [course(2)] [altitude m(2, signed)]
               lon(4, signed, 1e-6) lat(4) utc yyyy(2) MM dd hh mm ss [mcc mnc lac cid(8) + 1]
    uid        15 IMEI digits, two per byte as a 0-99 integer (the last byte holds one digit);
               bytes > 99 mean an ASCII device name instead (the session keeps its device)
    crc16      CRC-16/CCITT-FALSE over type .. count number

Protocol Pro (byte 1 = 0x00; heartbeat byte 1 = 0x10):

    2B|2D 00 length(2) flags(1) [frame count, number(2) if flags bit 7] imei(8, BCD, first
    nibble dropped) devtype(2) proto(2) custom(1) reserved length(1) reserved(n)
    {record}* count number(2) crc8(1) '$'
    record     length(varint, counts itself) utc(4) record count(2) record id(1) event(1)
               {data id(varint) data length(varint) content}*
    data 0x52  full location: fix(1) lon(4) lat(4) utc(4) speed(2, 0.1 km/h) hdop(1, 0.1)
               course(2) altitude(3, signed, 0.1 m) satellites(1); 0x51 = the first five
    crc8       poly 0x31, init 0xFF, over header .. count number
"""

from __future__ import annotations

import struct

from avl.records import Position
from ingest.protocols._gl200_text import Context, put
from ingest.protocols.base import from_unix, utc
from ingest.protocols.crc16 import crc8_nrsc5, crc16_ccitt_false
from ingest.protocols.reader import Reader

PRO_IDENT = 0x00
PRO_HEARTBEAT = 0x10

_RSP_LCB = 3
_RSP_GEO = 8
_RSP_COMPRESSED = 100

# +EVT message type -> bytes of type-specific data between satellites and count.
_EVENT_INSERT: dict[int, int] = {
    6: 2,  # BPL backup battery voltage
    13: 4, 14: 4,  # IGN / IGF duration
    15: 3,  # UPD code, retry
    17: 4,  # IDF idling duration
    21: 5,  # GSS gps signal status, reserved
    23: 1,  # CRA crash counter
    25: 2,  # DOS
    26: 12,  # GES geofence id, enable, mode, radius, interval
    31: 2,  # GPJ cw jamming value, jamming state
    33: 1,  # JDS jamming state
    34: 3,  # UPC command id, result
    35: 1,  # RMD roaming state
    45: 7, 46: 7,  # VGN / VGF reserved, report type, duration
}
_EVENT_IGNITION: dict[int, bool] = {13: True, 14: False, 45: True, 46: False}


class Truncated(ValueError):
    """The frame is shorter than its length field says."""


PROTOCOL_NAME = "gl200"


def _reader(data: bytes, pos: int = 0, end: int | None = None) -> Reader:
    return Reader(data, PROTOCOL_NAME, pos=pos, end=end)


def _varint(r: Reader) -> int:
    """One byte, or two when the first has its top bit set (15 bits, big-endian)."""
    first = r.u8()
    if first & 0x80:
        return ((first & 0x7F) << 8) | r.u8()
    return first


class Bits:
    """MSB-first bit reader over a few bytes."""

    def __init__(self, data: bytes) -> None:
        self.value = int.from_bytes(data, "big")
        self.left = len(data) * 8

    def unsigned(self, count: int) -> int:
        self.left -= count
        return (self.value >> self.left) & ((1 << count) - 1)

    def signed(self, count: int) -> int:
        raw = self.unsigned(count)
        return raw - (1 << count) if raw & (1 << (count - 1)) else raw


# Framing ------------------------------------------------------------------------------

HEX_HEADERS = frozenset({b"+RSP", b"+BSP", b"+EVT", b"+BVT", b"+INF", b"+BNF", b"+HBD", b"+CRD",
                         b"+BRD", b"+LGN"})


def is_pro(data: bytes) -> bool:
    return len(data) >= 2 and data[0] in (0x2B, 0x2D) and data[1] in (PRO_IDENT, PRO_HEARTBEAT)


def is_hex(data: bytes) -> bool:
    header = data[:4]
    if header == b"+ACK":
        return len(data) > 4 and data[4] != ord(":")
    return header in HEX_HEADERS


def length_field(data: bytes) -> tuple[int, int] | None:
    """(offset, size) of the frame length of a binary frame, from its header."""
    if is_pro(data):
        return (2, 2) if data[1] == PRO_IDENT else (2, 1)
    header = data[:4]
    if header == b"+ACK":
        return 6, 1
    if header in (b"+INF", b"+BNF"):
        return 7, 2
    if header == b"+HBD":
        return 5, 1
    if header in (b"+CRD", b"+BRD", b"+LGN"):
        return 6, 2
    if header in HEX_HEADERS:
        return 9, 2
    return None


def declared_length(data: bytes) -> int | None:
    where = length_field(data)
    if where is None or len(data) < where[0] + where[1]:
        return None
    offset, size = where
    return int.from_bytes(data[offset:offset + size], "big")


# HEX form -----------------------------------------------------------------------------


def _uid(raw: bytes) -> str | None:
    """The 8-byte unique id: IMEI digits as 0-99 integers per byte, or an ASCII name."""
    if all(b <= 99 for b in raw[:7]) and raw[7] <= 9:
        return "".join(f"{b:02d}" for b in raw[:7]) + str(raw[7])
    return None  # a device name: not an identity we can bind


def _position(r: Reader, p: Position, mask: int) -> None:
    hdop = r.u8()
    speed = r.u16() + r.u8() / 10.0 if mask & 1 else None
    course = float(r.u16()) if mask & 2 else None
    altitude = float(r.i16()) if mask & 4 else None
    longitude = r.i32() / 1_000_000
    latitude = r.i32() / 1_000_000
    year, month, day = r.u16(), r.u8(), r.u8()
    when = utc(year, month, day, r.u8(), r.u8(), r.u8())
    if mask & 8:
        r.skip(9)  # mcc, mnc, lac, cid, reserved
    p.hdop = float(hdop)
    p.latitude, p.longitude, p.fix_time, p.valid = latitude, longitude, when, hdop > 0
    p.speed_kmh, p.course = speed, course
    if altitude is not None:
        p.altitude_m = altitude


def _common_header(r: Reader, ctx: Context) -> tuple[int, int, str | None, dict[str, int]]:
    """type, mask, device, and the optional header values of +RSP / +EVT."""
    kind = r.u8()
    mask = r.u32()
    r.skip(2)  # length
    values: dict[str, int] = {}
    if mask & (1 << 8):
        r.skip(1)  # device type
    if mask & (1 << 9):
        r.skip(2)  # protocol version
    if mask & (1 << 10):
        values["versionFw"] = r.u16()
    device = _uid(r.take(8))
    if device:
        ctx.identify(device)
    if mask & (1 << 11):
        values["batteryLevel"] = r.u8()
    if mask & (1 << 12):
        values["power"] = r.u16()
    if mask & (1 << 14):
        values["adc1"] = r.u16()
    return kind, mask, device, values


def _apply_header(p: Position, values: dict[str, int], satellites: int | None) -> None:
    if "batteryLevel" in values:
        put(p, "batteryLevel", values["batteryLevel"])
    if "power" in values:
        p.power_mv = values["power"]
    if "adc1" in values:
        put(p, "adc1", values["adc1"] / 1000.0)
    if satellites is not None:
        p.satellites = satellites


def _tail_fields(r: Reader, mask: int, kind_is_geo: bool) -> int | None:
    """din/dout, motion, antenna|satellites after the header; returns satellites."""
    if kind_is_geo:
        r.skip(2)  # reserved
    if mask & (1 << 17):
        r.skip(2)  # digital in / out
    if mask & (1 << 18):
        r.skip(1)  # motion status
    if mask & (1 << 19):
        return r.u8() & 0x0F
    return None


def decode_rsp(ctx: Context, frame: bytes, end: int) -> list[Position]:
    r = _reader(frame, 4, end)
    kind, mask, device, values = _common_header(r, ctx)
    satellites = _tail_fields(r, mask, kind == _RSP_GEO)
    if kind != _RSP_COMPRESSED:
        r.skip(1)  # report id / type
    if kind == _RSP_LCB:
        r.skip(1)  # phone number length
        while True:  # BCD phone number ended by an F nibble
            b = r.u8()
            if (b & 0x0F) == 0x0F or (b & 0xF0) == 0xF0:
                break
    positions: list[Position] = []
    if kind == _RSP_COMPRESSED:
        count = r.u16()
        speed = heading = latitude = longitude = 0
        time = 0
        for _ in range(count):
            if time > 0:
                time += 1
            marker = r.peek() >> 6
            if marker == 1:
                bits = Bits(r.take(3))
                bits.unsigned(3)  # point attribute, fix type
                speed = bits.unsigned(12)
                heading = bits.unsigned(9)
                longitude = r.i32()
                latitude = r.i32()
                if time == 0:
                    time = r.u32()
            elif marker == 2:
                bits = Bits(r.take(5))
                bits.unsigned(3)
                speed += bits.signed(7)
                heading += bits.signed(7)
                longitude += bits.signed(12)
                latitude += bits.signed(11)
            else:
                r.skip(1)  # invalid or same point
                continue
            p = ctx.make(device, from_unix(time))
            p.valid = True
            p.latitude, p.longitude = latitude / 1_000_000, longitude / 1_000_000
            p.speed_kmh, p.course = speed / 10.0, float(heading)
            _apply_header(p, values, satellites)
            positions.append(p)
        return positions
    for _ in range(r.u8()):
        p = ctx.make(device, ctx.now())
        _position(r, p, mask)
        _apply_header(p, values, satellites)
        positions.append(p)
    return positions


def decode_evt(ctx: Context, frame: bytes, end: int) -> list[Position]:
    r = _reader(frame, 4, end)
    kind, mask, device, values = _common_header(r, ctx)
    satellites = _tail_fields(r, mask, False)
    r.skip(_EVENT_INSERT.get(kind, 0))
    r.skip(1)  # count
    p = ctx.make(device, ctx.now())
    _position(r, p, mask)
    _apply_header(p, values, satellites)
    if "versionFw" in values:
        put(p, "versionFw", str(values["versionFw"]))
    if kind in _EVENT_IGNITION:
        p.ignition = _EVENT_IGNITION[kind]
    put(p, "event", kind)
    return [p]


def decode_inf(ctx: Context, frame: bytes, end: int) -> list[Position]:
    r = _reader(frame, 4, end)
    kind = r.u8()
    r.skip(2 + 2)  # mask, length
    device = _uid(r.take(8))
    if device:
        ctx.identify(device)
    r.skip(1 + 2)  # device type, protocol version
    firmware = r.u16()
    if kind == 6:  # VER
        r.skip(6)  # hardware version, mcu version, reserved
    r.skip(2)  # motion status, reserved
    satellites = r.u8()
    r.skip(1 + 7 + 1 + 1 + 2 + 2 + 2 + 4 + 1)  # mode, last fix, reserved.., masks, intervals
    p = ctx.make(device, ctx.now())
    put(p, "versionFw", str(firmware))
    p.satellites = satellites
    if kind == 7:  # BAT
        put(p, "charge", r.u8() != 0)
        p.power_mv = r.u16()
        p.battery_mv = r.u16()
        put(p, "batteryLevel", r.u8())
    r.skip(10)  # iccid
    if kind == 5:  # CSQ
        put(p, "rssi", r.u8())
        r.skip(1)
    r.skip(3)  # time zone
    if kind == 10:  # GIR
        r.skip(2 + 8 + 2)
    year, month, day = r.u16(), r.u8(), r.u8()
    p.fix_time = utc(year, month, day, r.u8(), r.u8(), r.u8())
    return [p]


def decode_hex(ctx: Context, frame: bytes) -> tuple[list[Position], bool]:
    """Records of one HEX frame and whether its CRC matched."""
    length = declared_length(frame)
    if length is None or length < 12:
        raise ValueError(f"bad length field {length}")
    if len(frame) == length - 2 and not frame.endswith(b"\r\n"):
        frame += b"\r\n"  # delivered without its tail
    if len(frame) < length:
        raise Truncated(f"frame has {len(frame)} bytes, its length field says {length}")
    frame = frame[:length]
    crc_ok = struct.unpack(">H", frame[-4:-2])[0] == crc16_ccitt_false(frame[4:-4])
    header = frame[:4]
    end = length - 4
    if header in (b"+RSP", b"+BSP"):
        return decode_rsp(ctx, frame, end), crc_ok
    if header in (b"+EVT", b"+BVT"):
        return decode_evt(ctx, frame, end), crc_ok
    if header in (b"+INF", b"+BNF"):
        return decode_inf(ctx, frame, end), crc_ok
    return [], crc_ok


# Protocol Pro ---------------------------------------------------------------------------


def _pro_location(p: Position, data: bytes, full: bool) -> None:
    r = _reader(data)
    fix = r.u8()
    longitude = r.i32() / 1_000_000
    latitude = r.i32() / 1_000_000
    when = from_unix(r.u32())
    speed = r.u16() / 10.0
    p.latitude, p.longitude, p.fix_time, p.speed_kmh = latitude, longitude, when, speed
    p.valid = (fix >> 2) & 0x03 == 0b10  # fix state 2 = fixed (bits 7-4: signal level)
    if full:
        hdop = r.u8()
        p.hdop = hdop / 10.0
        p.course = float(r.u16())
        p.altitude_m = r.sint(3) / 10.0
        p.satellites = r.u8()


def decode_pro(ctx: Context, frame: bytes) -> tuple[list[Position], bool]:
    length = declared_length(frame)
    if length is None or length < 8:
        raise ValueError(f"bad length field {length}")
    if len(frame) == length - 1 and not frame.endswith(b"$"):
        frame += b"$"
    if len(frame) < length:
        raise Truncated(f"frame has {len(frame)} bytes, its length field says {length}")
    frame = frame[:length]
    crc_ok = frame[-2] == crc8_nrsc5(frame[:-2])
    if frame[1] == PRO_HEARTBEAT:
        imei = frame[3:11].hex()[1:]
        ctx.identify(imei)
        return [], crc_ok
    r = _reader(frame, 4, length - 4)
    if r.u8() & 0x80:
        r.skip(2)  # frame count, frame number
    imei = r.take(8).hex()[1:]
    ctx.identify(imei)
    r.skip(2 + 2 + 1)  # device type, protocol version, custom version
    r.skip(r.u8())  # reserved field
    positions: list[Position] = []
    while r.remaining > 0:
        start = r.pos
        size = _varint(r)
        if size <= r.pos - start:
            raise ValueError(f"record length {size} too small")
        record = _reader(frame, r.pos, start + size)
        if start + size > r.end:
            raise Truncated("record runs past the frame")
        generated = from_unix(record.u32())
        index = record.u16()
        record_id = record.u8()
        event = record.u8()
        p = ctx.make(imei, generated)
        put(p, "index", index)
        put(p, "event", record_id)
        if event:
            put(p, "eventCode", event)
        while record.remaining > 0:
            data_id = _varint(record)
            content = record.take(_varint(record))
            if data_id == 0x52 and len(content) >= 22:
                _pro_location(p, content, True)
            elif data_id == 0x51 and len(content) >= 15:
                _pro_location(p, content, False)
        positions.append(p)
        r.pos = start + size
    return positions, crc_ok
