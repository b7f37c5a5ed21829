"""Teltonika (FMB/FMC/FMM/FMU, FM36/FM6, GH3000): AVL codecs 8, 8E, 16 and 7 (GH3000) plus the
GPRS command/response codecs 12 and 13, over TCP (IMEI handshake, CRC-checked frames) and UDP.

TCP stream
    ``00 0F`` + 15 ASCII digits  IMEI handshake            -> reply ``01`` (accept)
    ``FF``                       keep-alive                -> no reply, no record
    data frame:
        00 00 00 00          preamble
        u32                  data length (codec .. count2)
        u8                   codec ID (08, 8E, 10, 07, 0C, 0D)
        u8                   record count N
        ...                  N records (layout below)
        u8                   record count again
        u32                  CRC-16/IBM over codec .. count2 (upper 16 bits zero)
    reply (AVL codecs): u32 big-endian N.  Codec 12/13 responses: no reply.

UDP datagram
    u16 length (of the rest) | u16 packet ID | u8 packet type | u8 AVL packet ID |
    u16 IMEI length | IMEI | codec | N | records | N            (no CRC)
    reply: ``00 05 <packet ID> 01 <AVL packet ID> <N>``

AVL record, codecs 8 / 8E / 16
    u64 Unix ms | u8 priority | i32 lon*1e7 | i32 lat*1e7 | i16 altitude m | u16 course |
    u8 satellites (0 = no fix) | u16 speed km/h |
    event IO ID (u8; u16 in 8E and 16) | [16: u8 generation type] | total IO count (u8; u16 in 8E) |
    groups of 1-, 2-, 4-, 8-byte values: count then (ID, value) pairs
        (counts u16 in 8E; IDs u16 in 8E and 16) |
    [8E only] variable-length group: u16 count, then (u16 ID, u16 length, bytes)

GH3000 record, codec 7
    u32 seconds since 2007-01-01 (low 30 bits) | u8 global mask |
    bit0: u8 location mask -> f32 lat, f32 lon | u16 alt | u8 course*256/360 | u8 km/h | u8 sats |
          [u16 LAC, u16 CID] | u8 signal | u32 operator
    bits 1-3: 1-, 2-, 4-byte IO groups (u8 count, u8 IDs)

Codec 12 (device -> server) record: u8 type | u32 length | bytes (text -> ``result``)
Codec 13 record: u8 type | u32 length (incl. timestamp) | u32 Unix s | bytes (-> ``result``)

Decisions
    * CRC mismatch, a count2 that differs from the count, a data length that disagrees with the
      bytes, or a missing count2/CRC: the records still decode (the reference server checks
      none of these) and each record gets ``attributes["crcMismatch"] = True``.
    * UDP ACK echoes the datagram's packet ID, as the Teltonika UDP specification says (the
      reference server writes 0 there). A UDP length field that disagrees with the datagram is
      a DecodeError (no CRC protects UDP, so the length is the only integrity check).
    * Codec 12 camera (type 0x0D) photo transfer is not supported: such frames yield no record
      and no reply.
    * A run of zero bytes (line noise, a broken modem) is skipped in one step, all but its last
      7 bytes (where a frame's non-zero length could still begin), not one byte per ``split``.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, ClassVar

from avl.records import Position
from ingest.protocols.base import DecodeError, DecodeResult, Protocol, Session, crc16_ibm
from ingest.protocols.reader import Reader

CODEC_GH3000 = 0x07
CODEC_8 = 0x08
CODEC_8_EXT = 0x8E
CODEC_12 = 0x0C
CODEC_13 = 0x0D
CODEC_16 = 0x10
AVL_CODECS = frozenset({CODEC_GH3000, CODEC_8, CODEC_8_EXT, CODEC_16})
ALL_CODECS = AVL_CODECS | {CODEC_12, CODEC_13}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_GH3000_EPOCH = 1167609600  # 2007-01-01T00:00:00Z
_KEEPALIVE = b"\xff"
_MAX_IMEI = 32
_PREAMBLE = b"\x00\x00\x00\x00"

# Model families with their own IO meanings (the reference server's list).
FMB_MODELS = frozenset({
    "FMB001", "FMB010", "FMB002", "FMB020", "FMB003", "FMB110", "FMB120", "FMB122", "FMB125", "FMB130",
    "FMB140", "FMU125", "FMB900", "FMB920", "FMB962", "FMB964", "FM3001", "FMB202", "FMB204", "FMB206",
    "FMT100", "MTB100", "FMP100", "MSP500", "FMC125", "FMM125", "FMU130", "FMC130", "FMM130", "FMB150",
    "FMC150", "FMM150", "FMC920",
})
_FM6_MODEL = re.compile(r"FM.6..")


# An AVL record's fixed part, one layout per codec: Unix ms, priority, lon, lat, altitude, course,
# satellites, speed, event IO ID, [16: generation type], total IO count.
_AVL_HEADER = {
    CODEC_8: struct.Struct(">QBiihHBHBB"),
    CODEC_8_EXT: struct.Struct(">QBiihHBHHH"),
    CODEC_16: struct.Struct(">QBiihHBHHBB"),
}
# An IO element's value by its width in bytes: unsigned, the 16-byte ones as bytes.
_VALUE_FORMAT = {1: "B", 2: "H", 4: "I", 8: "Q", 16: "16s"}
_ZEROS = re.compile(rb"\x00*")
_FRAME_START = re.compile(rb"[\x00\xff]")


@dataclass(slots=True)
class _Record:
    """What one record yields before it becomes a Position."""

    fix_time: datetime | None = None
    located: bool = False
    valid: bool = False
    fields: dict[str, Any] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)
    alarms: list[str] = field(default_factory=list)
    keep: bool = True

    def alarm(self, name: str) -> None:
        if name not in self.alarms:
            self.alarms.append(name)


# IO element handlers: (record, value read unsigned, its width in bytes) -> None ----------------

_Handler = Callable[[_Record, int, int], None]
_Convert = Callable[[int, int], Any]


def _signed(value: int, width: int) -> int:
    """An unsigned ``width``-byte value read as two's complement."""
    bits = width * 8
    return value - (1 << bits) if value >> (bits - 1) else value


def _store(key: str, convert: _Convert | None, typed: bool) -> _Handler:
    """A handler that stores the value (converted) under ``key``: in the record's typed fields
    (``typed``) or its attributes."""
    if convert is None:
        def plain(rec: _Record, value: int, width: int) -> None:
            (rec.fields if typed else rec.attributes)[key] = value
        return plain

    def converted(rec: _Record, value: int, width: int) -> None:
        (rec.fields if typed else rec.attributes)[key] = convert(value, width)
    return converted


def _attr(key: str, convert: _Convert | None = None) -> _Handler:
    return _store(key, convert, typed=False)


def _typed(key: str, convert: _Convert | None = None) -> _Handler:
    return _store(key, convert, typed=True)


def _scaled(key: str, factor: float, signed: bool = False) -> _Handler:
    def handler(rec: _Record, value: int, width: int) -> None:
        rec.attributes[key] = (_signed(value, width) if signed else value) * factor
    return handler


def _flag(key: str) -> _Handler:
    def handler(rec: _Record, value: int, width: int) -> None:
        rec.attributes[key] = value > 0
    return handler


def _alarm_if_set(name: str) -> _Handler:
    def handler(rec: _Record, value: int, width: int) -> None:
        if value > 0:
            rec.alarm(name)
    return handler


def _driver_id(rec: _Record, value: int, width: int) -> None:
    value = int.from_bytes(value.to_bytes(width, "big"), "little")  # iButton ID, least significant byte first
    if value:
        rec.attributes["driverUniqueId"] = f"{value:016X}"


def _harsh(rec: _Record, value: int, width: int) -> None:
    name = {1: "hardAcceleration", 2: "hardBraking", 3: "hardCornering"}.get(value)
    if name:
        rec.alarm(name)


def _io_speed(rec: _Record, value: int, width: int) -> None:
    rec.fields["speed_kmh"] = float(value)


# IDs every model shares.
_COMMON_IO: dict[int, _Handler] = {
    1: _flag("in1"), 2: _flag("in2"), 3: _flag("in3"), 4: _flag("in4"),
    16: _typed("odometer_m"),
    17: _attr("axisX", _signed), 18: _attr("axisY", _signed), 19: _attr("axisZ", _signed),
    21: _attr("rssi"),
    25: _scaled("bleTemp1", 0.01, True), 26: _scaled("bleTemp2", 0.01, True),
    27: _scaled("bleTemp3", 0.01, True), 28: _scaled("bleTemp4", 0.01, True),
    66: _typed("power_mv"),
    67: _typed("battery_mv"),
    78: _driver_id,
    179: _flag("out1"), 180: _flag("out2"),
    181: _scaled("pdop", 0.1),
    182: _typed("hdop", lambda value, _: value * 0.1),
    199: _attr("tripOdometer"),
    236: _alarm_if_set("general"),
    239: _typed("ignition", lambda value, _: value > 0),
    240: _flag("motion"),
    241: _attr("operator"),
    253: _harsh,
}

# IDs whose meaning the reference server gives only for the FMB/FMC/FMM/FMU family.
_FMB_IO: dict[int, _Handler] = {
    9: _scaled("adc1", 0.001), 10: _scaled("adc2", 0.001),
    11: _attr("iccid", lambda value, width: str(_signed(value, width))),
    12: _scaled("fuelUsed", 0.001), 13: _scaled("fuelConsumption", 0.01),
    24: _io_speed,
    30: _attr("faultCount"),
    32: _attr("coolantTemp", _signed),
    68: _scaled("batteryCurrent", 0.001),
    72: _scaled("temp1", 0.1, True), 73: _scaled("temp2", 0.1, True),
    74: _scaled("temp3", 0.1, True), 75: _scaled("temp4", 0.1, True),
    80: _attr("dataMode"), 81: _attr("obdSpeed"), 82: _attr("throttle"),
    83: _scaled("fuelUsed", 0.1), 84: _scaled("fuel", 0.1), 85: _attr("rpm"),
    87: _attr("obdOdometer"), 89: _attr("fuelLevelPercentage"),
    110: _scaled("fuelConsumption", 0.1), 113: _attr("batteryLevel"),
    115: _scaled("engineTemp", 0.1, True),
    200: _attr("sleepMode"), 205: _attr("cid2g"), 206: _attr("lac"),
    232: _flag("cngStatus"), 233: _scaled("cngUsed", 0.1), 234: _attr("cngLevel"), 235: _attr("oilLevel"),
    246: _alarm_if_set("tow"), 247: _alarm_if_set("accident"), 249: _alarm_if_set("jamming"),
    251: _alarm_if_set("idle"), 252: _alarm_if_set("powerCut"),
    636: _attr("cid4g"),
    662: _flag("door"),
}

# GH3000 (codec 7) personal trackers.
_GH3000_IO: dict[int, _Handler] = {
    1: _attr("batteryLevel"),
    2: _flag("usbConnected"),
    5: _attr("uptime"),
    20: _typed("hdop", lambda value, _: value * 0.1),
    21: _scaled("vdop", 0.1),
    22: _scaled("pdop", 0.1),
    67: _typed("battery_mv"),
    221: _attr("button"),
    222: _alarm_if_set("sos"),
    240: _flag("motion"),
    244: _flag("roaming"),
}


def _unknown_io(rec: _Record, io_id: int, value: int, width: int) -> None:
    # As the reference server: unsigned, except 8-byte values which it reads as a signed long.
    rec.attributes[f"io{io_id}"] = _signed(value, 8) if width == 8 else value


# Variable-length (codec 8E) elements -----------------------------------------------------------


def _printable(data: bytes) -> bool:
    """The reference server's test: no control bytes except CR/LF, nothing above 0x7F."""
    return all(b >= 32 and b < 0x80 or b in (0x0D, 0x0A) for b in data)


def _java_trim(value: str) -> str:
    return value.strip("".join(chr(c) for c in range(33)))


def _beacons(rec: _Record, data: Reader) -> None:
    data.u8()  # data part
    index = 1
    while data.remaining > 0:
        flags = data.u8()
        prefix = f"beacon{index}"
        if flags >> 4:
            rec.attributes[prefix + "Uuid"] = data.take(16).hex()
            rec.attributes[prefix + "Major"] = data.u16()
            rec.attributes[prefix + "Minor"] = data.u16()
        else:
            rec.attributes[prefix + "Namespace"] = data.take(10).hex()
            rec.attributes[prefix + "Instance"] = data.take(6).hex()
        rec.attributes[prefix + "Rssi"] = data.i8()
        if flags & 0x02:
            rec.attributes[prefix + "Battery"] = data.u16() * 0.01
        if flags & 0x04:
            rec.attributes[prefix + "Temp"] = data.u16()
        index += 1


def _ble_tags(rec: _Record, data: Reader) -> None:
    data.u8()  # header
    index = 1
    while data.remaining > 0:
        tag = data.sub(data.u8())
        prefix = f"tag{index}"
        while tag.remaining > 0:
            param_id = tag.u8()
            value = tag.sub(tag.u8())
            if param_id == 0:
                rec.attributes[prefix + "Rssi"] = value.i8()
            elif param_id == 1:
                rec.attributes[prefix + "Id"] = value.rest().hex()
            elif param_id == 2:
                flags = value.u8()
                if flags & 0x40:
                    rec.attributes[prefix + "LowBattery"] = True
                if flags & 0x80:
                    rec.attributes[prefix + "Voltage"] = value.u8() * 10 + 2000
            elif param_id == 13:
                rec.attributes[prefix + "LowBattery"] = value.u8()
            elif param_id == 14:
                rec.attributes[prefix + "Battery"] = value.u16()
        index += 1


def _variable_io(rec: _Record, io_id: int, data: Reader) -> None:
    if io_id == 256:
        rec.attributes["vin"] = data.rest().decode("ascii", "replace")
    elif io_id == 281:
        rec.attributes["dtcs"] = data.rest().decode("ascii", "replace").replace(",", " ")
    elif io_id == 385:
        _beacons(rec, data)
    elif io_id in (548, 10829, 10831):
        _ble_tags(rec, data)
    else:
        rec.attributes[f"io{io_id}"] = data.rest().hex()


# Record parsers --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Options:
    model: str | None
    extended: bool
    fmb: bool  # a model of the FMB/FMC/FMM/FMU family: its own IO meanings apply
    fm6: bool  # an FM6 model: IO 195/196 carry the driver ID
    widths: tuple[int, ...]  # the IO groups' value widths, in order (16 bytes only when configured)

    @classmethod
    def of(cls, session: Session) -> _Options:
        raw = session.options.get("model")
        model = str(raw) if raw else None
        extended = str(session.options.get("extended", "")).lower() in ("1", "true", "yes")
        return cls(model, extended, model in FMB_MODELS, bool(model and _FM6_MODEL.fullmatch(model)),
                   (1, 2, 4, 8, 16) if extended else (1, 2, 4, 8))


@cache
def _io_table(codec: int, fmb: bool) -> dict[int, _Handler]:
    """IO ID -> handler for a codec and model family (the common IDs win over the FMB ones)."""
    if codec == CODEC_GH3000:
        return _GH3000_IO
    return {**_FMB_IO, **_COMMON_IO} if fmb else _COMMON_IO


@cache
def _group_layouts(codec: int, widths: tuple[int, ...]) -> tuple[tuple[int, struct.Struct], ...]:
    """(value width, layout of one (IO ID, value) element) per IO group, in order."""
    id_format = ">H" if codec in (CODEC_8_EXT, CODEC_16) else ">B"
    return tuple((width, struct.Struct(id_format + _VALUE_FORMAT[width])) for width in widths)


def _io_groups(rec: _Record, r: Reader, codec: int, options: _Options, widths: tuple[int, ...]) -> None:
    """The IO groups: each a count, then that many (ID, value) elements of one width, unpacked
    in one call per group (a record's IO is most of its bytes and most of its decoding)."""
    handlers = _io_table(codec, options.fmb)
    count_of = r.u16 if codec == CODEC_8_EXT else r.u8
    attributes = rec.attributes
    for width, element in _group_layouts(codec, widths):
        count = count_of()
        if not count:
            continue
        if count == 1:
            elements: Iterable[tuple[Any, ...]] = (r.unpack(element),)
        else:
            start = r.advance(count * element.size)
            elements = element.iter_unpack(r.data[start:r.pos])
        for io_id, value in elements:
            if width == 16:  # the optional 16-byte group: opaque values, kept as hex
                attributes[f"io{io_id}"] = value.hex()
                continue
            handler = handlers.get(io_id)
            if handler is None:
                _unknown_io(rec, io_id, value, width)
            else:
                handler(rec, value, width)


def _avl_record(r: Reader, codec: int, options: _Options) -> _Record:
    millis, priority, lon, lat, altitude, course, satellites, speed, event = r.unpack(_AVL_HEADER[codec])[:9]
    longitude = lon / 1e7
    latitude = lat / 1e7
    rec = _Record(
        fix_time=_EPOCH + timedelta(0, 0, 0, millis),  # (days, s, µs, ms): positional is faster
        located=True,
        # Satellites 0 means no fix; coordinates outside the globe cannot be a fix either.
        valid=satellites != 0 and abs(latitude) <= 90 and abs(longitude) <= 180,
        fields={"latitude": latitude, "longitude": longitude, "altitude_m": float(altitude),
                "course": float(course), "satellites": satellites, "speed_kmh": float(speed)},
        attributes={"priority": priority, "event": event},
    )
    _io_groups(rec, r, codec, options, options.widths)
    if codec == CODEC_8_EXT:
        for _ in range(r.u16()):
            io_id = r.u16()
            _variable_io(rec, io_id, r.sub(r.u16()))
    if options.fm6:
        _model_fixups(rec)
    return rec


def _model_fixups(rec: _Record) -> None:
    """FM6 models send the driver ID as text in the 8-byte IO elements 195 and 196."""
    msb, lsb = rec.attributes.get("io195"), rec.attributes.get("io196")
    if isinstance(msb, int) and isinstance(lsb, int):
        driver = struct.pack(">qq", msb, lsb).decode("latin-1")
        rec.attributes["driverUniqueId"] = driver


def _gh3000_record(r: Reader, options: _Options) -> _Record:
    rec = _Record()
    seconds = (r.u32() & 0x3FFFFFFF) + _GH3000_EPOCH
    rec.fix_time = _EPOCH + timedelta(seconds=seconds)
    global_mask = r.u8()
    if global_mask & 0x01:
        location_mask = r.u8()
        satellites: int | None = None
        if location_mask & 0x01:
            latitude, longitude = r.f32(), r.f32()
            if math.isfinite(latitude) and math.isfinite(longitude) and abs(latitude) <= 90 \
                    and abs(longitude) <= 180:
                rec.located = True
                rec.fields.update(latitude=latitude, longitude=longitude)
        if location_mask & 0x02:
            rec.fields["altitude_m"] = float(r.u16())
        if location_mask & 0x04:
            rec.fields["course"] = r.u8() * 360.0 / 256
        if location_mask & 0x08:
            rec.fields["speed_kmh"] = float(r.u8())
        if location_mask & 0x10:
            satellites = r.u8()
            rec.fields["satellites"] = satellites
        if location_mask & 0x20:
            rec.attributes["lac"] = r.u16()
            rec.attributes["cid"] = r.u16()
        if location_mask & 0x40:
            rec.attributes["rssi"] = r.u8()
        if location_mask & 0x80:
            rec.attributes["operator"] = r.u32()
        rec.valid = rec.located and satellites != 0
    widths = tuple(w for bit, w in ((0x02, 1), (0x04, 2), (0x08, 4)) if global_mask & bit)
    _io_groups(rec, r, CODEC_GH3000, options, widths)
    # Without a location the reference server keeps the record only when it carries attributes.
    rec.keep = rec.located or bool(rec.attributes or rec.fields or rec.alarms)
    return rec


def _text_or_hex(data: bytes) -> str:
    return _java_trim(data.decode("ascii")) if _printable(data) else data.hex()


def _codec12_record(r: Reader) -> _Record:
    rec = _Record()
    kind = r.u8()
    data = r.take(r.u32())
    if kind == 0x0D:  # camera photo transfer (subtype, photo ID, offset, chunk): not supported
        rec.keep = False
        return rec
    rec.attributes["type"] = kind
    text = _text_or_hex(data)
    if _printable(data) and text.startswith("UUUUww") and text.endswith("SSS"):
        try:
            values = [float(v) for v in text[6:-4].split(";")]
        except ValueError:
            values = []
        if len(values) >= 12:
            for i in range(8):
                rec.attributes[f"axle{i + 1}"] = values[i]
            names = ("loadTruck", "loadTrailer", "totalTruck", "totalTrailer")
            rec.attributes.update(zip(names, values[8:12], strict=True))
            return rec
    rec.attributes["result"] = text
    return rec


def _codec13_record(r: Reader) -> _Record:
    rec = _Record()
    r.u8()  # type
    length = r.u32() - 4
    rec.fix_time = _EPOCH + timedelta(seconds=r.u32())
    data = r.take(length)
    text = _text_or_hex(data)
    parts = text.split("|")
    if _printable(data) and text.startswith("GTSL") and len(parts) > 4:
        rec.attributes["driverUniqueId"] = parts[4]
    else:
        rec.attributes["result"] = text
    return rec


def _record(r: Reader, codec: int, options: _Options) -> _Record:
    if codec == CODEC_12:
        return _codec12_record(r)
    if codec == CODEC_13:
        return _codec13_record(r)
    if codec == CODEC_GH3000:
        return _gh3000_record(r, options)
    return _avl_record(r, codec, options)


# The decoder -------------------------------------------------------------------------------------


class TeltonikaProtocol(Protocol):
    name: ClassVar[str] = "teltonika"
    port: ClassVar[int] = 5027
    transports: ClassVar[frozenset[str]] = frozenset({"tcp", "udp"})
    max_frame: ClassVar[int] = 65536

    def split(self, buffer: bytes) -> tuple[bytes | None, int]:
        if not buffer:
            return None, 0
        if buffer[0] == 0xFF:
            return _KEEPALIVE, 1
        if buffer[0] != 0x00:
            return None, _garbage_run(buffer)
        if len(buffer) < 2:
            return None, 0
        imei_length = buffer[1]
        if imei_length:  # IMEI handshake: 00 <length> <ASCII IMEI>
            if imei_length > _MAX_IMEI:
                return None, 1
            size = 2 + imei_length
            return (buffer[:size], size) if len(buffer) >= size else (None, 0)
        if len(buffer) < 8:
            return (None, 0) if _PREAMBLE.startswith(buffer[:4]) else (None, 1)
        if buffer[:4] != _PREAMBLE:
            return None, 1
        length = int.from_bytes(buffer[4:8], "big")
        if length < 3:  # codec, count and count2 at least
            return None, _zeros_run(buffer)
        size = 12 + length
        if size > self.max_frame:
            raise self.too_long(buffer)
        return (buffer[:size], size) if len(buffer) >= size else (None, 0)

    def decode(self, frame: bytes, session: Session) -> DecodeResult:
        try:
            if session.transport == "udp":
                return self._decode_udp(frame, session)
            return self._decode_tcp(frame, session)
        except DecodeError:
            raise
        except (ValueError, IndexError, OverflowError, struct.error, UnicodeDecodeError) as exc:
            raise self.error(f"malformed frame: {exc}", frame) from None

    # TCP -----------------------------------------------------------------------------------------

    def _decode_tcp(self, frame: bytes, session: Session) -> DecodeResult:
        if frame == _KEEPALIVE:
            return DecodeResult()
        if len(frame) < 2:
            raise self.error("frame too short", frame)
        if frame[:2] != b"\x00\x00":
            return self._login(frame, session)
        if len(frame) < 12:
            raise self.error(f"data frame of {len(frame)} bytes is shorter than its 12-byte envelope", frame)
        if frame[:4] != _PREAMBLE:
            raise self.error("data frame does not start with 4 zero bytes", frame)
        declared = int.from_bytes(frame[4:8], "big")
        r = Reader(frame, self.name, pos=8)
        codec, count, records = self._records(r, frame, session)
        intact = declared == len(frame) - 12
        if r.remaining >= 5:
            count2 = r.u8()
            crc_end = r.pos
            crc = r.u32()
            intact = intact and count2 == count and r.remaining == 0 and crc == crc16_ibm(frame[8:crc_end])
        else:
            intact = False  # count2/CRC missing: nothing to verify the records against
        positions = self._positions(records, session, frame, intact)
        reply = count.to_bytes(4, "big") if codec in AVL_CODECS else None
        return DecodeResult(positions, reply)

    def _login(self, frame: bytes, session: Session) -> DecodeResult:
        length = int.from_bytes(frame[:2], "big")
        if length > _MAX_IMEI or len(frame) != 2 + length:
            raise self.error(f"IMEI handshake declares {length} bytes but carries {len(frame) - 2}", frame)
        session.device = self._imei(frame[2:], frame)
        return DecodeResult([], b"\x01")

    def _imei(self, data: bytes, frame: bytes) -> str:
        if not data or not data.isdigit():
            raise self.error("IMEI is not a string of ASCII digits", frame)
        return data.decode("ascii")

    # UDP -----------------------------------------------------------------------------------------

    def _decode_udp(self, frame: bytes, session: Session) -> DecodeResult:
        r = Reader(frame, self.name)
        length = r.u16()
        packet_id = r.take(2)
        r.u8()  # packet type ("not usable" byte, 01)
        avl_packet_id = r.u8()
        imei = self._imei(r.take(r.u16()), frame)
        if length != len(frame) - 2:
            raise self.error(f"UDP datagram declares {length} bytes but carries {len(frame) - 2}", frame)
        session.device = imei
        codec, count, records = self._records(r, frame, session)
        intact = r.remaining == 1 and r.u8() == count
        positions = self._positions(records, session, frame, intact)
        reply = None
        if codec in AVL_CODECS:
            reply = b"\x00\x05" + packet_id + b"\x01" + bytes((avl_packet_id, count))
        return DecodeResult(positions, reply)

    # Shared ----------------------------------------------------------------------------------------

    def _records(self, r: Reader, frame: bytes, session: Session) -> tuple[int, int, list[_Record]]:
        codec = r.u8()
        if codec not in ALL_CODECS:
            raise self.error(f"unsupported codec 0x{codec:02X}", frame)
        count = r.u8()
        options = _Options.of(session)
        if codec in (CODEC_8, CODEC_8_EXT, CODEC_16):
            return codec, count, [_avl_record(r, codec, options) for _ in range(count)]
        return codec, count, [_record(r, codec, options) for _ in range(count)]

    def _positions(self, records: list[_Record], session: Session, frame: bytes, intact: bool) -> list[Position]:
        kept = [rec for rec in records if rec.keep]
        if not kept:
            return []
        device, name = self.identified(session, frame), self.name
        positions: list[Position] = []
        for rec in kept:
            if not intact:
                rec.attributes["crcMismatch"] = True
            fix_time = rec.fix_time if rec.fix_time is not None else session.now()
            positions.append(Position(device=device, fix_time=fix_time, protocol=name, valid=rec.valid,
                                      alarm=",".join(rec.alarms) if rec.alarms else None, attributes=rec.attributes,
                                      raw=frame, **rec.fields))
        return positions


def _garbage_run(buffer: bytes) -> int:
    """How many leading bytes cannot start a frame (a frame starts with 00 or FF)."""
    start = _FRAME_START.search(buffer)
    return len(buffer) if start is None else max(start.start(), 1)


def _zeros_run(buffer: bytes) -> int:
    """How many leading bytes of a buffer that starts with a data frame of impossible length
    (00 00 00 00, then a length below 3) cannot start a frame. Within a run of n zero bytes,
    the first n - 7 are each followed by 4 zero bytes and a zero length, so none starts a frame
    (skipped in one step: one at a time, 64 KiB of zeros took ~80 ms of the event loop)."""
    run = _ZEROS.match(buffer)
    return max((run.end() if run else 0) - 7, 1)


# Encoders (device simulator) ---------------------------------------------------------------------


def encode_login(device: str) -> bytes:
    """The TCP IMEI handshake: ``00 0F`` + the IMEI in ASCII."""
    imei = device.encode("ascii")
    return len(imei).to_bytes(2, "big") + imei


def _clamp(value: float, low: int, high: int) -> int:
    return max(low, min(high, int(round(value))))


def _io_elements(p: Position) -> dict[int, list[tuple[int, int]]]:
    """IO elements the simulator sends, grouped by value width: 239, 21, 66, 16."""
    groups: dict[int, list[tuple[int, int]]] = {1: [], 2: [], 4: [], 8: []}
    if p.ignition is not None:
        groups[1].append((239, int(p.ignition)))
    rssi = p.attributes.get("rssi")
    if isinstance(rssi, int) and not isinstance(rssi, bool) and 0 <= rssi <= 0xFF:
        groups[1].append((21, rssi))
    if p.power_mv is not None:
        groups[2].append((66, _clamp(p.power_mv, 0, 0xFFFF)))
    if p.odometer_m is not None:
        groups[4].append((16, _clamp(p.odometer_m, 0, 0xFFFFFFFF)))
    return groups


def _encode_record(p: Position, codec: int) -> bytes:
    wide = codec == CODEC_8_EXT
    millis = (p.fix_time - _EPOCH) // timedelta(milliseconds=1)
    # Validity travels as the satellite count: 0 = no fix, so a valid fix needs at least 1.
    satellites = _clamp(p.satellites or 0, 0, 0xFF)
    if not p.valid:
        satellites = 0
    elif satellites == 0:
        satellites = 1
    out = bytearray()
    out += millis.to_bytes(8, "big")
    priority = p.attributes.get("priority")
    out += bytes((priority if isinstance(priority, int) and 0 <= priority <= 2 else 0,))
    out += _clamp((p.longitude or 0.0) * 1e7, -(2**31), 2**31 - 1).to_bytes(4, "big", signed=True)
    out += _clamp((p.latitude or 0.0) * 1e7, -(2**31), 2**31 - 1).to_bytes(4, "big", signed=True)
    out += _clamp(p.altitude_m or 0.0, -(2**15), 2**15 - 1).to_bytes(2, "big", signed=True)
    out += (_clamp(p.course or 0.0, 0, 360) % 360).to_bytes(2, "big")
    out += bytes((satellites,))
    out += _clamp(p.speed_kmh or 0.0, 0, 0xFFFF).to_bytes(2, "big")
    groups = _io_elements(p)
    total = sum(len(g) for g in groups.values())
    size = 2 if wide else 1
    out += (0).to_bytes(size, "big")  # event IO ID: periodic record
    out += total.to_bytes(size, "big")
    for width in (1, 2, 4, 8):
        out += len(groups[width]).to_bytes(size, "big")
        for io_id, value in groups[width]:
            out += io_id.to_bytes(size, "big") + value.to_bytes(width, "big")
    if wide:
        out += (0).to_bytes(2, "big")  # no variable-length elements
    return bytes(out)


def _avl_block(positions: list[Position], codec: int) -> bytes:
    if codec not in (CODEC_8, CODEC_8_EXT):
        raise ValueError(f"encoder supports codec 8 (0x08) and 8 extended (0x8E), not 0x{codec:02X}")
    if not 0 < len(positions) <= 255:
        raise ValueError(f"a Teltonika packet carries 1 to 255 records, not {len(positions)}")
    count = bytes((len(positions),))
    return bytes((codec,)) + count + b"".join(_encode_record(p, codec) for p in positions) + count


def encode_batch(positions: list[Position], codec: int = CODEC_8) -> bytes:
    """One TCP data frame carrying every position as a record (codec 8 or 8E), with its CRC."""
    block = _avl_block(positions, codec)
    return _PREAMBLE + len(block).to_bytes(4, "big") + block + crc16_ibm(block).to_bytes(4, "big")


def encode_position(p: Position, sequence: int = 0) -> bytes:
    """A Codec 8 TCP data frame with one record (Teltonika frames carry no sequence number)."""
    del sequence
    return encode_batch([p], CODEC_8)


def encode_udp(positions: list[Position], imei: str, packet_id: int, avl_packet_id: int,
               codec: int = CODEC_8) -> bytes:
    """One UDP datagram: header with packet IDs and the IMEI, then the AVL block (no CRC)."""
    imei_bytes = imei.encode("ascii")
    body = (
        (packet_id & 0xFFFF).to_bytes(2, "big")
        + b"\x01"  # packet type (the specification's "not usable" byte, always 01)
        + bytes((avl_packet_id & 0xFF,))
        + len(imei_bytes).to_bytes(2, "big")
        + imei_bytes
        + _avl_block(positions, codec)
    )
    return len(body).to_bytes(2, "big") + body


PROTOCOL = TeltonikaProtocol()
