"""ATrack (AK/AX/AT/AL series): binary ``@P`` reports, their comma-separated text form, ``$INFO``
and command answers, and the 12-byte keep-alive, over TCP and UDP.

Binary frame (big-endian)::

    offset  size  field
    0       2     prefix: "@P" report, "@R" photo chunk (other prefixes are decoded when a frame
                  arrives whole, e.g. the corpus "02 03" frame; the stream framer syncs on these two)
    2       2     CRC-16/ARC over offset 4 .. the end of the declared length
    4       2     length: bytes after this field
    6       2     sequence ID
    8       8     unit ID (integer, normally the IMEI)            -> the device
    16      ...   records, each at least 40 bytes, until fewer than 40 remain:
        u32 GPS time | u32 RTC time | u32 send time (Unix s)    (option longDate: u16 year, u8 month,
                                                                 day, hour, minute, second, then 14
                                                                 bytes of RTC and send time)
        i32 longitude 1e-6 deg | i32 latitude 1e-6 deg | u16 course | u8 report ID (-> event)
        u32 odometer 0.1 km | u16 HDOP 0.1 | u8 inputs (bit 0 = ignition) | u16 speed km/h
        u8 outputs | u16 analog input mV (-> adc1) | driver ID, NUL-terminated
        i16 temperature 1, i16 temperature 2 (0.1 degC; 2000 = no sensor, not kept)
        text message, NUL-terminated ("FULS:F=.. t=.. N=<fuel hex>" -> fuel)
        custom fields (option custom): the "%CI%XX%YY.." form as a NUL-terminated string, or
            none when the option ``form`` gives it; then each field in the form's order
    "@R" photo chunk: u32 time, u8 index, u8 count, u16 size, data

Text frame (CRLF-terminated lines; several records are joined by CRLF)::

    <2-byte prefix>,<CRC 4 hex>,<length>,<sequence>,<unit ID>,<record>[\\r\\n<record>...]\\r\\n
    record: GPS time (Unix s or yyyyMMddHHmmss),RTC time,send time,longitude 1e-6,latitude 1e-6,
            course,report ID,odometer 0.1 km (decimal),HDOP 0.1,inputs,speed km/h,outputs,
            analog mV,[driver ID],temperature 1,temperature 2[,text message,custom fields]
    The length counts from the comma after it through the final CRLF; the CRC is CRC-16/ARC
    (4 upper-case hex digits) over the same bytes plus the length digits.

    $INFO=<unit ID>,<model>,<firmware>,<IMEI>,<IMSI>,<ICCID>,<power 0.1 V>,<battery 0.1 V>,
          <satellites>,<GSM status>,<RSSI>,<connection status>,<antenna status>   -> status record
    $OK, $ERROR=<code>, other "$" lines (command answers)                         -> ``result``
    FE 02 <unit ID u64> <sequence u16>: keep-alive, echoed back unchanged

Replies: every binary and text report (and photo chunk) is acknowledged with 12 bytes,
``FE 02 <unit ID u64> <sequence u16>``; the keep-alive is echoed. ``$`` lines get none.

Per-device options (the reference server's ``atrack.*`` settings): ``longDate`` (Y-M-D-h-m-s
times), ``custom`` (records carry custom fields, with the form string when ``form`` is not
set), ``form`` (the unit's ``AT$FORM`` custom form, e.g. ``%MV%BV%SA``; implies ``custom``),
``decimalFuel`` (the FULS fuel level is decimal, not hex).

Decisions (where this differs from the reference decoder):
    * CRCs are verified (binary and text); a mismatch is decoded and flagged ``crcMismatch``.
      Bytes after a binary frame's declared length are ignored: the corpus frame with six
      trailing zero bytes decodes like its unpadded twin (its CRC verifies over the declared
      length). A text frame whose length field disagrees with its size (a corpus frame says
      419 for 108 bytes) is decoded; its CRC does not verify, so it is flagged. Two more corpus
      text frames (``@P,1126`` and ``@P,7E02``) fail their CRC too and are flagged.
    * A binary "@P" report whose CRC's first byte is 2C (','), one in 256, is told from a text report
      by the text head (hex CRC, decimal length); the reference takes it for text and fails it.
    * Text reports are acknowledged like binary ones (the reference sends nothing for them;
      a unit that expects the ACK would otherwise resend its buffer forever).
    * A record with GPS time 0 or coordinates 0,0 has no fix: it is a status record (no
      location) at its RTC time, or the receive time when the RTC is unset too. The reference
      stores it as a valid position at 0,0 in 1970 (documented in the corpus DEVIATIONS).
    * A custom field this decoder does not know ends the binary frame: its width is unknown,
      so nothing after it can be read. The records before are kept, the last one carries
      ``customUnknown`` naming the field, and the frame is acknowledged (resending it would
      not change the form). In text frames an unknown field only skips its value.
    * Photo chunks are acknowledged and dropped (the platform keeps no images).
    * Temperature 2000 (200.0 degC) means "no sensor" and is not kept; ``AT`` altitude is read
      signed; the report ID is ``event`` in both forms; the analog input is ``adc1`` in mV.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from avl.records import Position
from ingest.protocols import options
from ingest.protocols.base import DecodeResult, Protocol, Session, crc16_ibm, from_unix, text, utc
from ingest.protocols.guard import guarded
from ingest.protocols.reader import Reader

KEEPALIVE = b"\xfe\x02"
KEEPALIVE_SIZE = 12
MIN_RECORD = 40
NO_TEMPERATURE = 2000  # 200.0 degC: the unit has no sensor on that input
_EPOCH_2000 = 946684800

_TEXT_RECORD = re.compile(
    r"(?P<time>\d+),\d+,\d+,(?P<lon>-?\d+),(?P<lat>-?\d+),(?P<course>\d+),(?P<event>\d+),"
    r"(?P<odometer>\d+\.?\d*),(?P<hdop>\d+),(?P<input>\d+),(?P<speed>\d+),(?P<output>\d+),(?P<adc>\d+),"
    r"(?P<driver>[^,]+)?,(?P<temp1>-?\d+),(?P<temp2>-?\d+),(?:[^,]*,(?P<custom>.*))?",
    re.DOTALL,
)
_INFO = re.compile(
    r"\$INFO=(?P<unit>\d+),(?P<model>[^,]+),(?P<firmware>[^,]+),\d+,\d+,\d+,(?P<power>\d+),(?P<battery>\d+),"
    r"(?P<sat>\d+),\d+,(?P<rssi>\d+),\d+,\d+.*",
    re.DOTALL,
)
_FUEL = re.compile(r"FULS:F=([0-9A-Fa-f]+) t=([0-9A-Fa-f]+) N=([0-9A-Fa-f]+)")
_TEXT_HEAD = 32  # the length field of a text frame ends within this many bytes
# "<2-byte prefix>,<CRC hex>,<length>," and what a head still arriving can look like.
_TEXT_START = re.compile(rb"[^,$][^,],[0-9A-Fa-f]{1,4},(\d{1,6}),", re.DOTALL)
_TEXT_PARTIAL = re.compile(rb"[^,$][^,],(?:[0-9A-Fa-f]{0,4}|[0-9A-Fa-f]{1,4},\d{0,6})", re.DOTALL)


def ack(unit: int, sequence: int) -> bytes:
    """The 12-byte acknowledgement of a report (and the keep-alive's own layout)."""
    return KEEPALIVE + struct.pack(">QH", unit & 0xFFFFFFFFFFFFFFFF, sequence & 0xFFFF)


@dataclass(slots=True)
class _Record:
    """One report's fields before it becomes a Position."""

    fix_time: datetime | None = None
    rtc_time: int = 0
    latitude: float = 0.0
    longitude: float = 0.0
    fields: dict[str, Any] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)
    cell: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Options:
    long_date: bool
    custom: bool
    form: str | None
    decimal_fuel: bool

    @staticmethod
    def of(session: Session) -> _Options:
        form = options.text(session, "form")
        return _Options(long_date=options.flag(session, "longDate"),
                        custom=options.flag(session, "custom") or form is not None,
                        form=form, decimal_fuel=options.flag(session, "decimalFuel"))


def _form_keys(form: str) -> list[str]:
    """``%CI%MV%BV`` or ``%MV%BV`` -> ["MV", "BV"] (the leading ``%CI`` names the form itself)."""
    form = form.strip()
    if form.startswith("%CI"):
        form = form[3:]
    return [key for key in form.split("%") if key]


# Custom fields ------------------------------------------------------------------------------


def _set_field(rec: _Record, name: str, value: Any) -> None:
    rec.fields[name] = value


def _power(rec: _Record, value: int) -> None:
    rec.fields["power_mv"] = value * 100


def _battery(rec: _Record, value: int) -> None:
    rec.fields["battery_mv"] = value * 100


def _alarm(name: str) -> Callable[[_Record, int], None]:
    def apply(rec: _Record, value: int) -> None:
        if value > 0:
            rec.fields["alarm"] = name
    return apply


def _attr(name: str, scale: float | None = None) -> Callable[[_Record, Any], None]:
    def apply(rec: _Record, value: Any) -> None:
        rec.attributes[name] = value if scale is None else value * scale
    return apply


def _cell(name: str) -> Callable[[_Record, int], None]:
    def apply(rec: _Record, value: int) -> None:
        rec.cell[name] = value
    return apply


def _mobile_codes(rec: _Record, value: int) -> None:
    combined = value % 100000  # cccnn
    rec.cell["mcc"], rec.cell["mnc"] = combined // 100, combined % 100


_Apply = Callable[[_Record, Any], None]


def _skip(rec: _Record, value: Any) -> None:  # read and not kept
    pass


def _flag_attr(name: str) -> _Apply:
    def apply(rec: _Record, value: int) -> None:
        rec.attributes[name] = value > 0
    return apply


# key -> (binary kind, what to do with the value). Kinds: u8/u16/u32/i32/u64, "str" (NUL-terminated),
# or a number of bytes to skip. Semantics follow the ATrack custom-form list as the reference reads it.
_BINARY_CUSTOM: dict[str, tuple[str | int, _Apply]] = {
    "SA": ("u8", lambda rec, v: _set_field(rec, "satellites", v)),
    "MV": ("u16", _power),
    "BV": ("u16", _battery),
    "GQ": ("u8", _cell("signal")),
    "CE": ("u32", _cell("cid")),
    "LC": ("u16", _cell("lac")),
    "CN": ("u32", _mobile_codes),
    "RL": ("u8", _skip),
    "PC": ("u32", _attr("count1")),
    "AT": ("i32", lambda rec, v: _set_field(rec, "altitude_m", float(v))),
    "RP": ("u16", _attr("rpm")),
    "GS": ("u8", _attr("rssi")),
    "DT": ("u8", lambda rec, v: rec.attributes.__setitem__("archive", v == 1)),
    "VN": ("str", _attr("vin")),
    "MF": ("u16", _skip),
    "EL": ("u8", _attr("engineLoad")),
    "TR": ("u8", _attr("throttle")),
    "ET": ("u16", _attr("coolantTemp")),
    "FL": ("u8", _attr("fuel")),
    "ML": ("u8", _skip),
    "FC": ("u32", _attr("fuelConsumption")),
    "CI": ("str", _skip),
    "AV1": ("u16", _attr("adc1")),
    "NC": ("str", _skip),
    "SM": ("u16", _skip),
    "GL": ("str", _skip),
    "MA": ("str", _skip),
    "PD": ("u8", _skip),
    "CD": ("str", _attr("iccid")),
    "CM": ("u64", _skip),
    "GN": (60, _skip),
    "GV": (6, _skip),
    "ME": ("u64", _skip),
    "IA": ("u8", _attr("intakeTemp")),
    "MP": ("u8", _skip),
    "EO": ("u32", lambda rec, v: _set_field(rec, "odometer_m", round(v * 1609.344))),  # engine odometer, miles
    "EH": ("u32", _attr("hours", 360_000)),  # 0.1 h -> ms
    "ZO1": ("u8", _skip), "ZO2": ("u8", _skip), "ZO3": ("u8", _skip),
    "ZO4": ("u8", _attr("throttle", 0.4)),
    "ZO5": ("u8", _skip),
    "ZO6": ("u8", _attr("obdSpeed", 0.805)),
    "ZO7": ("u8", _skip), "ZO8": ("u8", _skip),
    "ZO9": ("u8", _attr("engineLoad", 0.5)),
    "ZO10": ("u8", _attr("fuel", 0.5)),
    "ZO11": ("u8", _skip), "ZO12": ("u8", _skip), "ZO13": ("u8", _skip),
    "ZO14": ("u8", _attr("coolantTemp")),
    "ZO15": ("u8", _skip), "ZO16": ("u8", _skip), "ZO17": ("u8", _skip),
    "ZH1": ("u16", _skip),
    "ZH2": ("u16", _attr("fuelConsumption", 16.428 / 3600)),
    "ZH3": ("u16", _attr("rpm", 0.25)),
    "ZL1": ("u32", _skip),
    "ZL2": ("u32", lambda rec, v: _set_field(rec, "odometer_m", v * 161)),
    "ZL3": ("u32", _skip),
    "ZL4": ("u32", _attr("hours", 5 * 36_000)),
    "ZS1": ("str", _attr("vin")),
    "JO1": ("u8", _skip), "JO2": ("u8", _skip), "JO3": ("u8", _skip),
    "JO4": ("u8", _attr("engineLoad")),
    "JO5": ("u8", _attr("fuel", 0.4)),
    "JO6": ("u8", _skip), "JO7": ("u8", _skip), "JO8": ("u8", _skip), "JO9": ("u8", _skip), "JO10": ("u8", _skip),
    "JO11": ("u8", lambda rec, v: rec.attributes.__setitem__("coolantTemp", v - 40)),
    "JO12": ("u8", _skip),
    "JH1": ("u16", _attr("obdSpeed", 1 / 256)),
    "JH2": ("u16", _attr("rpm", 0.125)),
    **{f"JH{i}": ("u16", _attr(f"axleWeight{i - 2}", 0.5)) for i in range(3, 8)},
    "JH8": ("u16", _attr("serviceOdometer", 5)),
    "JH9": ("u16", _skip), "JH10": ("u16", _skip),
    "JH11": ("u16", _attr("fuelConsumption", 0.05)),
    "JH12": ("u16", _skip),
    "JL1": ("u32", _attr("fuelUsed", 0.5)),
    "JL2": ("u32", _attr("hours", 5 * 36_000)),
    "JL3": ("u32", lambda rec, v: _set_field(rec, "odometer_m", v * 1000)),
    "JL4": ("u32", _attr("fuelUsed", 0.001)),
    "JS1": ("str", _attr("vin")),
    "JS2": ("str", _skip),
    "JS3": ("str", _attr("driver1")),
    "JS4": ("str", _attr("driver2")),
    **{f"JN{i}": ("u32", _skip) for i in range(1, 6)},
    "IN0": ("u8", lambda rec, v: _set_field(rec, "ignition", v > 0)),
    **{f"IN{i}": ("u8", _flag_attr(f"in{i}")) for i in range(1, 4)},
    "HA": ("u8", _alarm("acceleration")),
    "HB": ("u8", _alarm("braking")),
    "HC": ("u8", _alarm("cornering")),
}

# Text custom fields: key -> what to do with the value (ints unless the key is in _TEXT_STRINGS).
_TEXT_CUSTOM: dict[str, _Apply] = {
    "SA": _BINARY_CUSTOM["SA"][1],
    "MV": _power,
    "BV": _battery,
    "GQ": _cell("signal"),
    "CE": _cell("cid"),
    "LC": _cell("lac"),
    "PC": _attr("count1"),
    "AT": _BINARY_CUSTOM["AT"][1],
    "RP": _attr("rpm"),
    "GS": _attr("rssi"),
    "DT": _BINARY_CUSTOM["DT"][1],
    "VN": _attr("vin"),
    "TR": _attr("throttle"),
    "ET": _attr("coolantTemp"),
    "FL": _attr("fuel"),
    "FC": _attr("fuelConsumption"),
    "AV1": _attr("adc1"),
    "CD": _attr("iccid"),
    "EH": _attr("hours", 360_000),
    "IA": _attr("intakeTemp"),
    "EL": _attr("engineLoad"),
    "HA": _alarm("acceleration"),
    "HB": _alarm("braking"),
    "HC": _alarm("cornering"),
    "MT": _flag_attr("motion"),
    "BC": _attr("beacon"),
}
_TEXT_STRINGS = frozenset({"VN", "CD", "BC"})


def _text_mobile_codes(rec: _Record, value: str) -> None:
    if len(value) > 3 and value.isdigit():
        rec.cell["mcc"], rec.cell["mnc"] = int(value[:3]), int(value[3:])


def _read_custom(r: Reader, rec: _Record, keys: list[str]) -> str | None:
    """Reads the binary custom fields; returns the first key it does not know (and stops there)."""
    for key in keys:
        entry = _BINARY_CUSTOM.get(key)
        if entry is None:
            return key
        kind, apply = entry
        value: Any
        if isinstance(kind, int):
            r.skip(kind)
            continue
        if kind == "str":
            value = r.cstring()
            if not value:
                continue
        else:
            value = {"u8": r.u8, "u16": r.u16, "u32": r.u32, "i32": r.i32, "u64": r.u64}[kind]()
        apply(rec, value)
    return None


def _apply_text_custom(rec: _Record, keys: list[str], values: list[str]) -> None:
    for key, raw in zip(keys, values, strict=False):
        if key == "CN":
            _text_mobile_codes(rec, raw)
            continue
        apply = _TEXT_CUSTOM.get(key)
        if apply is None or raw == "":
            continue
        if key in _TEXT_STRINGS:
            apply(rec, raw)
            continue
        try:
            apply(rec, int(raw))
        except ValueError:
            continue  # a malformed value loses that field only


def _finish_cell(rec: _Record) -> None:
    cell = rec.cell
    if all(cell.get(k) for k in ("mcc", "cid")) and "mnc" in cell and "lac" in cell:
        tower = {"mobileCountryCode": cell["mcc"], "mobileNetworkCode": cell["mnc"],
                 "locationAreaCode": cell["lac"], "cellId": cell["cid"]}
        if "signal" in cell:
            tower["signalStrength"] = cell["signal"]
        rec.attributes["network"] = {"cellTowers": [tower]}
    elif "signal" in cell:
        rec.attributes["rssi"] = cell["signal"]


class AtrackProtocol(Protocol):
    name: ClassVar[str] = "atrack"
    port: ClassVar[int] = 5044
    transports: ClassVar[frozenset[str]] = frozenset({"tcp", "udp"})
    max_frame: ClassVar[int] = 65541  # the u16 length + 6

    # Framing ---------------------------------------------------------------------------

    def split(self, buffer: bytes) -> tuple[bytes | None, int]:
        if len(buffer) < 2:
            return None, 0
        if buffer[:2] == KEEPALIVE:
            return (buffer[:KEEPALIVE_SIZE], KEEPALIVE_SIZE) if len(buffer) >= KEEPALIVE_SIZE else (None, 0)
        if buffer[0] == 0x24:  # '$': one CRLF-terminated line
            end = buffer.find(b"\n")
            if end < 0:
                if len(buffer) > self.max_frame:
                    raise self.too_long(buffer)
                return None, 0
            return buffer[:end + 1], end + 1
        if len(buffer) < 3:
            return None, 0
        binary = buffer[:2] in (b"@P", b"@R")
        if buffer[2] == 0x2C and not (binary and _TEXT_PARTIAL.fullmatch(buffer[:_TEXT_HEAD]) is None
                                      and _TEXT_START.match(buffer) is None):
            return self._split_text(buffer)  # ',': a text report (an "@P" whose CRC starts with 2C is binary)
        if binary:  # binary report or photo chunk
            if len(buffer) < 6:
                return None, 0
            size = int.from_bytes(buffer[4:6], "big") + 6
            if len(buffer) < size:
                return None, 0
            return buffer[:size], size
        return None, self._garbage(buffer)

    def _split_text(self, buffer: bytes) -> tuple[bytes | None, int]:
        head = _TEXT_START.match(buffer)
        if head is None:
            return (None, 0) if _TEXT_PARTIAL.fullmatch(buffer[:_TEXT_HEAD]) else (None, self._garbage(buffer))
        size = head.end() - 1 + int(head[1])  # the length counts from the comma after it
        if size > self.max_frame:
            return None, self._garbage(buffer)
        if len(buffer) < size:
            return None, 0
        if len(buffer) > size and buffer[size] == 0x0A:  # a stray LF after the counted bytes
            size += 1
        return buffer[:size], size

    @staticmethod
    def _garbage(buffer: bytes) -> int:
        """Bytes to skip: up to the next place a frame could start (a text frame's head is matched whole).
        Each search stops at the best start found so far, so a long buffer is not scanned over and over."""
        best = len(buffer)
        for needle in (b"@P", b"@R", KEEPALIVE, b"$"):
            at = buffer.find(needle, 1, best + len(needle) - 1)
            if 0 < at < best:
                best = at
        text_head = _TEXT_START.search(buffer, 1, min(len(buffer), best + _TEXT_HEAD))
        if text_head is not None and text_head.start() < best:
            best = text_head.start()
        if best < len(buffer):
            return best
        # Keep the last bytes: they may be the start of a text frame's head still arriving.
        return max(1, len(buffer) - _TEXT_HEAD)

    # Decoding --------------------------------------------------------------------------

    def decode(self, frame: bytes, session: Session) -> DecodeResult:
        return guarded(self, self._decode, frame, session, "frame")

    def _decode(self, frame: bytes, session: Session) -> DecodeResult:
        if len(frame) < 2:
            raise self.error(f"frame of {len(frame)} bytes is too short", frame)
        if frame[:2] == KEEPALIVE:
            if len(frame) != KEEPALIVE_SIZE:
                raise self.error(f"keep-alive of {len(frame)} bytes, expected {KEEPALIVE_SIZE}", frame)
            session.device = str(int.from_bytes(frame[2:10], "big"))
            return DecodeResult(reply=frame)
        if frame[0] == 0x24:
            return self._dollar(frame, session)
        if len(frame) >= 3 and frame[2] == 0x2C and (frame[:2] not in (b"@P", b"@R") or _TEXT_START.match(frame)):
            return self._text(frame, session)  # an "@P" binary report whose CRC starts with 2C is not text
        return self._binary(frame, session)

    def _dollar(self, frame: bytes, session: Session) -> DecodeResult:
        sentence = text(frame).strip()
        info = _INFO.fullmatch(sentence)
        if info is None:
            if sentence.startswith("$INFO"):
                raise self.error("malformed $INFO line", frame)
            return DecodeResult([self.position(session, session.now(), frame, attributes={"result": sentence})])
        session.device = info["unit"]
        attributes = {"model": info["model"], "versionFw": info["firmware"], "rssi": int(info["rssi"])}
        record = self.position(session, session.now(), frame, power_mv=int(info["power"]) * 100,
                               battery_mv=int(info["battery"]) * 100, satellites=int(info["sat"]),
                               attributes=attributes)
        return DecodeResult([record])

    # Binary ----------------------------------------------------------------------------

    def _binary(self, frame: bytes, session: Session) -> DecodeResult:
        r = Reader(frame, self.name)
        prefix = r.take(2)
        crc = r.u16()
        end = r.u16() + 6
        if end > len(frame):
            raise self.error(f"frame of {len(frame)} bytes is shorter than its declared {end}", frame)
        mismatch = crc16_ibm(frame[4:end]) != crc
        body = Reader(frame, self.name, pos=r.pos, end=end)
        sequence = body.u16()
        unit = body.u64()
        session.device = str(unit)
        reply = ack(unit, sequence)
        if prefix == b"@R":  # a photo chunk: acknowledged, not kept
            return DecodeResult(reply=reply)
        opts = _Options.of(session)
        records: list[Position] = []
        while body.remaining >= MIN_RECORD:
            rec, unknown = self._binary_record(body, opts)
            records.append(self._position(rec, session, frame, mismatch))
            if unknown is not None:
                records[-1].attributes["customUnknown"] = unknown
                break
        return DecodeResult(records, reply)  # a report without records is still acknowledged

    def _binary_record(self, r: Reader, opts: _Options) -> tuple[_Record, str | None]:
        rec = _Record()
        if opts.long_date:
            rec.fix_time = utc(r.u16(), r.u8(), r.u8(), r.u8(), r.u8(), r.u8())
            r.skip(14)
        else:
            gps_time = r.u32()
            rec.rtc_time = r.u32()
            r.skip(4)  # send time
            rec.fix_time = from_unix(gps_time) if gps_time else None
        rec.longitude = r.i32() / 1e6
        rec.latitude = r.i32() / 1e6
        rec.fields["course"] = float(r.u16())
        rec.attributes["event"] = r.u8()
        rec.fields["odometer_m"] = r.u32() * 100
        rec.fields["hdop"] = r.u16() / 10
        inputs = r.u8()
        rec.attributes["input"] = inputs
        rec.fields["ignition"] = bool(inputs & 1)
        rec.fields["speed_kmh"] = float(r.u16())
        rec.attributes["output"] = r.u8()
        rec.attributes["adc1"] = r.u16()
        driver = r.cstring()
        if driver:
            rec.attributes["driverUniqueId"] = driver
        for index in (1, 2):
            temperature = r.i16()
            if temperature != NO_TEMPERATURE:
                rec.attributes[f"temp{index}"] = temperature / 10
        message = r.cstring()
        if message:
            fuel = _FUEL.search(message)
            if fuel is not None:
                rec.attributes["fuel"] = int(fuel[3], 10 if opts.decimal_fuel else 16) * 0.1
            else:
                rec.attributes["message"] = message
        unknown = None
        if opts.custom:
            form = opts.form if opts.form is not None else r.cstring()
            unknown = _read_custom(r, rec, _form_keys(form))
        _finish_cell(rec)
        return rec, unknown

    # Text ------------------------------------------------------------------------------

    def _text(self, frame: bytes, session: Session) -> DecodeResult:
        raw = text(frame)
        parts = raw.split(",", 5)
        if len(parts) < 6:
            raise self.error("text report without a unit ID and a record", frame)
        _prefix, crc, length, sequence, unit, rest = parts
        if not unit.isdigit() or not sequence.isdigit():
            raise self.error(f"text report with unit ID {unit[:20]!r} and sequence {sequence[:10]!r}", frame)
        session.device = unit
        mismatch = _text_crc_mismatch(frame, crc, length)
        opts = _Options.of(session)
        records = []
        for line in rest.strip().split("\r\n"):
            rec = self._text_record(line, opts)
            if rec is not None:
                records.append(self._position(rec, session, frame, mismatch))
        if not records:
            raise self.error("text report with no readable record", frame)
        return DecodeResult(records, ack(int(unit), int(sequence)))

    def _text_record(self, line: str, opts: _Options) -> _Record | None:
        m = _TEXT_RECORD.fullmatch(line.strip())
        if m is None:
            return None
        rec = _Record()
        stamp = m["time"]
        if len(stamp) >= 14:
            rec.fix_time = utc(int(stamp[:4]), int(stamp[4:6]), int(stamp[6:8]), int(stamp[8:10]),
                               int(stamp[10:12]), int(stamp[12:14]))
        elif int(stamp):
            rec.fix_time = from_unix(int(stamp))
        rec.longitude = int(m["lon"]) / 1e6
        rec.latitude = int(m["lat"]) / 1e6
        rec.fields["course"] = float(m["course"])
        rec.attributes["event"] = int(m["event"])
        rec.fields["odometer_m"] = round(float(m["odometer"]) * 100)
        rec.fields["hdop"] = int(m["hdop"]) / 10
        inputs = int(m["input"])
        rec.attributes["input"] = inputs
        rec.fields["ignition"] = bool(inputs & 1)
        rec.fields["speed_kmh"] = float(m["speed"])
        rec.attributes["output"] = int(m["output"])
        rec.attributes["adc1"] = int(m["adc"])
        if m["driver"]:
            rec.attributes["driverUniqueId"] = m["driver"]
        for index in (1, 2):
            temperature = int(m[f"temp{index}"])
            if temperature != NO_TEMPERATURE:
                rec.attributes[f"temp{index}"] = temperature / 10
        data = m["custom"]
        if opts.custom and data:
            values = data.split(",")
            if opts.form is not None:
                keys = _form_keys(opts.form)
            else:
                keys, values = _form_keys(values[0]), values[1:]
            _apply_text_custom(rec, keys, values)
        _finish_cell(rec)
        return rec

    # Records ---------------------------------------------------------------------------

    def _position(self, rec: _Record, session: Session, frame: bytes, crc_mismatch: bool) -> Position:
        if crc_mismatch:
            rec.attributes["crcMismatch"] = True
        fields = dict(rec.fields)
        if rec.fix_time is None or (rec.latitude == 0 and rec.longitude == 0):
            # No fix: a status record, at the unit's clock when it is set.
            fix_time = from_unix(rec.rtc_time) if rec.rtc_time >= _EPOCH_2000 else session.now()
            for key in ("course", "speed_kmh", "hdop"):
                fields.pop(key, None)
            return self.position(session, fix_time, frame, attributes=rec.attributes, **fields)
        if not (-90 <= rec.latitude <= 90 and -180 <= rec.longitude <= 180):
            raise self.error(f"coordinates {rec.latitude:.6f},{rec.longitude:.6f} out of range", frame)
        return self.position(session, rec.fix_time, frame, valid=True, latitude=rec.latitude,
                             longitude=rec.longitude, attributes=rec.attributes, **fields)


def _text_crc_mismatch(frame: bytes, crc: str, length: str) -> bool:
    """The text CRC covers ``,<length>,...`` through the final CRLF (re-added when the framer stripped it)."""
    start = frame.find(b",", 3)
    covered = frame[start:]
    if length.isdigit() and not covered.endswith(b"\r\n"):
        declared = int(length) + len(length) + 1
        if declared == len(covered) + 2:
            covered += b"\r\n"
    return f"{crc16_ibm(covered):04X}" != crc.strip().upper()


# Encoders (device simulator and tests) -----------------------------------------------------


def encode_login(device: str) -> bytes | None:
    """ATrack has no login: every report carries the unit ID. The keep-alive identifies a unit too."""
    return encode_keepalive(device)


def encode_keepalive(device: str, sequence: int = 0) -> bytes:
    return ack(int(device), sequence)


def encode_position(p: Position, sequence: int = 0) -> bytes:
    """A binary ``@P`` report with one record for ``p`` (no custom fields)."""
    seconds = int(p.fix_time.timestamp())
    record = struct.pack(
        ">IIIiiHBIHBHBH", seconds, seconds, seconds,
        round((p.longitude or 0.0) * 1e6), round((p.latitude or 0.0) * 1e6), round(p.course or 0) % 360,
        2,  # report ID: time report
        (p.odometer_m or 0) // 100, round((p.hdop if p.hdop is not None else 0.9) * 10), 1 if p.ignition else 0,
        round(p.speed_kmh or 0), 0, 0,
    ) + b"\x00" + struct.pack(">hh", NO_TEMPERATURE, NO_TEMPERATURE) + b"\x00"
    body = struct.pack(">HQ", sequence & 0xFFFF, int(p.device)) + record
    inner = struct.pack(">H", len(body)) + body
    return b"@P" + struct.pack(">H", crc16_ibm(inner)) + inner


def encode_text_position(p: Position, sequence: int = 0) -> bytes:
    """The same report in the text form, CRC and length filled in."""
    seconds = int(p.fix_time.timestamp())
    record = (f"{seconds},{seconds},{seconds},{round((p.longitude or 0.0) * 1e6)},{round((p.latitude or 0.0) * 1e6)},"
              f"{round(p.course or 0) % 360},2,{(p.odometer_m or 0) / 100:.1f},"
              f"{round((p.hdop if p.hdop is not None else 0.9) * 10)},{1 if p.ignition else 0},"
              f"{round(p.speed_kmh or 0)},0,0,,{NO_TEMPERATURE},{NO_TEMPERATURE},\r\n")
    tail = f",{sequence},{p.device},{record}".encode("latin-1")
    counted = len(tail)
    covered = f",{counted}".encode("latin-1") + tail
    return f"@P,{crc16_ibm(covered):04X}".encode("latin-1") + covered


PROTOCOL = AtrackProtocol()
