"""H02 (Sinotrack ST-90x and other ``*HQ`` trackers): ASCII ``*HQ,<id>,<type>,...#`` reports and
the fixed-size binary ``$`` report, over TCP and UDP. No checksum in either form.

Text frames (manufacturer ``HQ``; ``TH`` and ``hq`` seen too), cut at ``#``::

    *HQ,<id>,V1,hhmmss,A|V,<lat>,N|S,<lon>,E|W,<speed kn>,<course>,ddmmyy,<status 8 hex>[,...]#
        also V0..V19, VI1 (validity replaced by a coding-scheme number = valid) and
        V4,<command reply text>,... ; <lat>/<lon> as ``ddmm.mmmm``, ``ddmmmmmm`` or ``-dd-mm.mmmm``;
        optional SIM info before the status; after it either
        odometer m,temp,fuel,altitude m,lac hex,cid hex  or free fields (-> io1, io2, ...)
    *HQ,<id>,HTBT,<battery %>#   heartbeat (V0 likewise)           -> status record, batteryLevel
    *HQ,<id>,NBR,hhmmss,mcc,mnc,delay,n,(lac,cid,rssi)xn,ddmmyy,<status>#      -> status record
    *HQ,<id>,LINK,hhmmss,rssi,sats,battery %,steps,turnovers,ddmmyy,<status>#  -> status record
    *HQ,<id>,V3,hhmmss,<mcc><mnc>,n,<cells>,<battery 4 hex>,<reboot>,X,ddmmyy,<status>#
    *hq,<imei>,VP1,A|B,ddmm.mmmm,N|S,dddmm.mmmm,E|W,speed kn,course,ddmmyy#   (or VP1,V,mcc,mnc,cells)
    *HQ,<id>,SMS,<text>#          reply to an SMS-style command     -> status record, ``result``

Binary frames (32 or 45 bytes; 42 bytes = 15-digit id; other sizes exist)::

    offset  size  field
    0       1     '$'
    1       5|8   device id, BCD (8 bytes in 42-byte frames: first 15 digits)
    +0      6     hh mm ss dd MM yy, BCD, UTC
    +6      4     latitude  dd mm.mmmm, BCD
    +10     1     battery code (0-6 steps, or 1-100 %, or F1-F6)       -> batteryLevel
    +11     5     longitude ddd mm.mmmm, BCD, then a flags nibble: 2 = fix valid, 4 = north, 8 = east
    +16     3     speed kn (3 BCD digits), course (3 digits)
    +19     4     status word, u32
    +23     ...   model-specific extras (ignored)

Status word (active low): bit 0 clear = vibration, bit 1 or 18 clear = SOS, bit 2 clear =
overspeed, bit 19 clear = power cut (first match wins); bit 10 set = ignition. Kept raw as ``status``.

Replies: heartbeat (V0/HTBT) echoed up to its type field (``*HQ,<id>,HTBT#``); V1 and NBR get
``*HQ,<id>,V4,<type>,<yyyyMMddHHmmss UTC>#``; with the per-device option ``ack`` other reports get
``*HQ,<id>,R12,<HHmmss>#``. Binary frames get none.

Decisions (where this differs from the reference decoder):
    * Framing needs no per-connection state: a binary frame ends where the next frame
      (``$`` + BCD id, or ``*`` + two letters + comma) visibly starts. Without a visible
      successor, exactly 32 or 45 buffered bytes are one frame; otherwise the framer waits
      for more, and past 96 bytes cuts 32 (the reference's default guess).
      A marker byte not followed by such a head is skipped as garbage.
    * A V1 whose id is present is answered even when its body cannot be parsed (the device
      only wants the acknowledgement); such a frame yields no record.
    * The optional battery and SIM-info fields are matched lazily, so a date or a status word
      is never mistaken for them (the reference loses the date of some V19 reports that way).
    * V3's battery field is kept raw under ``attributes["battery"]`` (its unit is unknown);
      cell towers (NBR, V3, VP1, lac/cid) are not kept: the record has no network field.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, ClassVar

from avl.records import Position
from ingest.protocols.base import KNOTS_TO_KMH, DecodeError, DecodeResult, Protocol, Session, text, utc

_TEXT_MARK = 0x2A  # '*'
_BINARY_MARK = 0x24  # '$'
_X_MARK = 0x58  # 'X' (a 32-byte frame the reference server ignores)
_MARKS = bytes((_TEXT_MARK, _BINARY_MARK, _X_MARK))

SHORT_BINARY = 32
LONG_BINARY = 45
LONG_ID_BINARY = 42
_BINARY_SCAN = 96  # beyond this, a '$' frame without a visible successor is cut at 32 bytes

# The status bits that carry alarms (active low), in the reference's order of precedence.
_ALARM_BITS: tuple[tuple[tuple[int, ...], str], ...] = (
    ((0,), "vibration"),
    ((1, 18), "sos"),
    ((2,), "overspeed"),
    ((19,), "powerCut"),
)
_IGNITION_BIT = 10


def _coordinate_pattern(name: str, hemispheres: str) -> str:
    """``-dd-mm.mmmm`` | ``[d]dmm.mmmm`` | ``ddmmmmmm`` and its hemisphere, as named groups."""
    return (
        rf"(?:-(?P<{name}_d1>\d+)-(?P<{name}_m1>\d+\.\d+)"
        rf"|(?P<{name}_d2>\d*)(?P<{name}_m2>\d\d\.\d+)"
        rf"|(?P<{name}_d3>\d+)(?P<{name}_m3>\d\d)(?P<{name}_f3>\d{{4}})),"
        rf"(?P<{name}_h>[{hemispheres}])"
    )


_HEX = "[0-9A-Fa-f]"
_DATE = r"(?P<day>\d\d)(?P<month>\d\d)(?P<year>\d\d)"
_TIME = r"(?P<hour>\d\d)(?P<minute>\d\d)(?P<second>\d\d)"

_POSITION = re.compile(
    r"\*..,"
    r"(?P<id>\d+)?,"
    r"(?:V4,(?P<result>.*),|(?P<type>V[^,]*),)"
    rf"(?:{_TIME})?,"
    r"(?:(?P<validity>[ABV])?,|(?P<coding>\d+),)"
    + _coordinate_pattern("lat", "NS") + ","
    + _coordinate_pattern("lon", "EW") + ","
    r" *(?P<speed>\d+\.?\d*),"
    r"(?P<course>\d+\.?\d*)?,"
    r"(?:\d+,)??"  # battery
    rf"(?:{_DATE})?"
    r"(?:,[^,]*,[^,]*,[^,]*)??"  # SIM info
    rf"(?:,(?P<status>{_HEX}{{8}})"
    rf"(?:,(?P<odometer>\d+),(?P<temp>-?\d+),(?P<fuel>\d+\.\d+),(?P<altitude>-?\d+),{_HEX}+,{_HEX}+"
    r"|,(?P<data>.*))?)?"
    r"#",
    re.DOTALL,
)

_HEARTBEAT = re.compile(r"\*..,(?P<id>\d*),(?:HTBT|V0),(?P<battery>\d+).*", re.DOTALL)

_NBR = re.compile(
    rf"\*..,(?P<id>\d*),NBR,{_TIME},\d+,\d+,\d+,\d+,(?:\d+,\d+,-?\d+,)+{_DATE},(?P<status>{_HEX}{{8}}).*",
    re.DOTALL,
)

_LINK = re.compile(
    rf"\*..,(?P<id>\d*),LINK,{_TIME},(?P<rssi>\d+),(?P<sat>\d+),(?P<battery>\d+),(?P<steps>\d+),"
    rf"(?P<turnovers>\d+),{_DATE},(?P<status>{_HEX}{{8}}).*",
    re.DOTALL,
)

_V3 = re.compile(
    rf"\*..,(?P<id>\d*),V3,{_TIME},\d{{3}}\d+,\d+,.*,(?P<battery>{_HEX}{{4}}),\d+,X,{_DATE},"
    rf"(?P<status>{_HEX}{{8}})#?",
    re.DOTALL,
)

_VP1 = re.compile(
    r"\*[hH][qQ],(?P<id>\d{15}),VP1,"
    r"(?:V,\d+,\d+,[^#]+"
    r"|[AB],(?P<lat_d>\d+)(?P<lat_m>\d\d\.\d+),(?P<lat_h>[NS]),(?P<lon_d>\d+)(?P<lon_m>\d\d\.\d+),(?P<lon_h>[EW]),"
    rf"(?P<speed>\d+\.\d+),(?P<course>\d+\.\d+),{_DATE})"
    r".*",
    re.DOTALL,
)

_SMS = re.compile(r"\*..,(?P<id>\d*),SMS,(?P<result>.*)#", re.DOTALL)


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def _as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _status_fields(status: int) -> dict[str, Any]:
    """Alarm, ignition and the raw ``status`` attribute from the active-low status word."""
    alarm = None
    for bits, name in _ALARM_BITS:
        if any(not status >> bit & 1 for bit in bits):
            alarm = name
            break
    return {"alarm": alarm, "ignition": bool(status >> _IGNITION_BIT & 1), "status": status}


def _battery_level(code: int) -> int | None:
    """The binary frame's battery byte as a percentage (the reference's mapping)."""
    if code == 0:
        return None
    if code <= 3:
        return (code - 1) * 10
    if code <= 6:
        return (code - 1) * 20
    if code <= 100:
        return code
    if 0xF1 <= code <= 0xF6:
        return code - 0xF0
    return None


def _text_coordinate(match: re.Match[str], name: str) -> float:
    if match[f"{name}_m1"] is not None:
        degrees, minutes = int(match[f"{name}_d1"]), float(match[f"{name}_m1"])
    elif match[f"{name}_m2"] is not None:
        degrees, minutes = int(match[f"{name}_d2"] or 0), float(match[f"{name}_m2"])
    else:
        degrees, minutes = int(match[f"{name}_d3"]), float(f"{match[f'{name}_m3']}.{match[f'{name}_f3']}")
    value = degrees + minutes / 60.0
    return -value if match[f"{name}_h"] in ("S", "W") else value


def _frame_time(match: re.Match[str]) -> datetime:
    """ddmmyy plus hhmmss (midnight when the time is absent); ValueError when impossible."""
    groups = match.groupdict()
    hour, minute, second = (int(groups.get(key) or 0) for key in ("hour", "minute", "second"))
    return utc(int(match["year"]), int(match["month"]), int(match["day"]), hour, minute, second)


def _digits(data: bytes, what: str) -> str:
    """Packed BCD bytes as their digit string; ValueError naming ``what`` when a nibble is not 0-9."""
    value = data.hex()
    if not value.isdigit():
        raise ValueError(f"{what} is not BCD: {value}")
    return value


class H02Protocol(Protocol):
    name: ClassVar[str] = "h02"
    port: ClassVar[int] = 5013
    transports: ClassVar[frozenset[str]] = frozenset({"tcp", "udp"})
    max_frame: ClassVar[int] = 2048

    # Framing ------------------------------------------------------------------------

    def split(self, buffer: bytes) -> tuple[bytes | None, int]:
        if not buffer:
            return None, 0
        marker = buffer[0]
        if marker not in _MARKS:
            starts = [i for i in (buffer.find(bytes((m,))) for m in _MARKS) if i >= 0]
            return None, min(starts) if starts else len(buffer)
        if marker != _X_MARK and not self._frame_starts(buffer, 0):
            return None, 1  # a stray marker byte: not followed by "HQ," or a BCD device id
        if marker == _TEXT_MARK:
            end = buffer.find(b"#", 0, self.max_frame)
            if end < 0:
                if len(buffer) >= self.max_frame:
                    raise self.too_long(buffer)
                return None, 0
            consumed = end + 1
            while consumed < len(buffer) and buffer[consumed] in b"\r\n":
                consumed += 1
            return buffer[: end + 1], consumed
        if marker == _X_MARK:
            if len(buffer) < SHORT_BINARY:
                return None, 0
            return buffer[:SHORT_BINARY], SHORT_BINARY
        size = self._binary_size(buffer)
        if size == 0:
            return None, 0
        return buffer[:size], size

    @staticmethod
    def _frame_starts(buffer: bytes, at: int) -> bool:
        """Whether a frame plausibly starts at ``at`` (judged on the bytes available so far)."""
        if at >= len(buffer):
            return False
        marker = buffer[at]
        if marker == _BINARY_MARK:
            head = buffer[at + 1: at + 6]  # the device id: BCD
            return all(b >> 4 <= 9 and b & 0x0F <= 9 for b in head)
        if marker == _TEXT_MARK:
            head = buffer[at + 1: at + 4]  # two letters and a comma: "HQ,"
            return all(bytes((b,)).isalpha() if i < 2 else b == 0x2C for i, b in enumerate(head))
        return False

    def _binary_size(self, buffer: bytes) -> int:
        """The size of the binary frame at the start of ``buffer``; 0 when more bytes are needed.

        Frames are 32 or 45 bytes (42 with a 15-digit id, other sizes exist). The size is read
        from the bytes: the frame ends where the next one visibly starts; a frame alone in the
        buffer is 45 bytes when exactly 45 are there, else 32 (as the reference framer guesses).
        """
        n = len(buffer)
        if n < SHORT_BINARY:
            return 0
        for size in range(SHORT_BINARY, min(n, _BINARY_SCAN)):
            if self._frame_starts(buffer, size):
                return size
        if n in (SHORT_BINARY, LONG_BINARY):
            return n
        if n < _BINARY_SCAN:
            return 0
        return SHORT_BINARY

    # Decoding ------------------------------------------------------------------------

    def decode(self, frame: bytes, session: Session) -> DecodeResult:
        if not frame:
            raise self.error("empty frame")
        try:
            if frame[0] == _TEXT_MARK:
                return self._decode_text(frame, session)
            if frame[0] == _BINARY_MARK:
                return DecodeResult([self._decode_binary(frame, session)])
            if frame[0] == _X_MARK:
                return DecodeResult()
        except DecodeError:
            raise
        except (ValueError, IndexError, OverflowError) as exc:
            raise self.error(f"malformed frame: {exc}", frame) from exc
        raise self.error(f"unknown frame marker 0x{frame[0]:02x}", frame)

    def _decode_binary(self, frame: bytes, session: Session) -> Position:
        if len(frame) < SHORT_BINARY:
            raise self.error(f"binary frame truncated: {len(frame)} bytes, at least {SHORT_BINARY} expected", frame)
        id_size = 8 if len(frame) == LONG_ID_BINARY else 5
        device = frame[1: 1 + id_size].hex()[:15]
        at = 1 + id_size
        clock = _digits(frame[at: at + 6], "time")
        hour, minute, second, day, month, year = (int(clock[i: i + 2]) for i in range(0, 12, 2))
        fix_time = utc(year, month, day, hour, minute, second)
        lat = _digits(frame[at + 6: at + 10], "latitude")
        battery = _battery_level(frame[at + 10])
        lon_hex = frame[at + 11: at + 16].hex()
        lon = lon_hex[:9]
        if not lon.isdigit():
            raise ValueError(f"longitude is not BCD: {lon}")
        flags = int(lon_hex[9], 16)
        motion = _digits(frame[at + 16: at + 19], "speed/course")
        status = int.from_bytes(frame[at + 19: at + 23], "big")

        latitude = int(lat[:2]) + int(lat[2:]) / 10000 / 60
        longitude = int(lon[:3]) + int(lon[3:]) / 10000 / 60
        if not flags & 0x04:
            latitude = -latitude
        if not flags & 0x08:
            longitude = -longitude
        status_fields = _status_fields(status)
        attributes: dict[str, Any] = {"status": status_fields.pop("status")}
        if battery is not None:
            attributes["batteryLevel"] = battery
        session.device = device
        return self.position(
            session, fix_time, frame,
            valid=bool(flags & 0x02), latitude=latitude, longitude=longitude,
            speed_kmh=int(motion[:3]) * KNOTS_TO_KMH, course=float(int(motion[3:])),
            attributes=attributes, **status_fields,
        )

    def _decode_text(self, frame: bytes, session: Session) -> DecodeResult:
        sentence = text(frame).strip("".join(map(chr, range(33))))
        if not sentence.endswith("#"):
            sentence += "#"
        first = sentence.find(",")
        second = sentence.find(",", first + 1) if first >= 0 else -1
        if second < 0:
            raise self.error("text frame without id and type fields", frame)
        device_id = sentence[first + 1: second]
        type_end = sentence.find(",", second + 1)
        if type_end < 0:
            type_end = sentence.find("#", second + 1)
        kind = sentence[second + 1: type_end]
        if device_id.isascii() and device_id.isdigit():
            session.device = device_id

        reply = self._reply(kind, device_id, sentence[:type_end], session)
        if kind in ("V0", "HTBT"):
            positions = self._heartbeat(sentence, frame, session)
        elif kind == "NBR":
            positions = self._status_report(_NBR, sentence, frame, session)
        elif kind == "LINK":
            positions = self._status_report(_LINK, sentence, frame, session)
        elif kind == "V3":
            positions = self._status_report(_V3, sentence, frame, session)
        elif kind == "VP1":
            positions = self._vp1(sentence, frame, session)
        elif kind == "SMS":
            positions = self._sms(sentence, frame, session)
        else:
            positions = self._text_position(sentence, frame, session)
        return DecodeResult(positions, reply)

    def _reply(self, kind: str, device_id: str, head: str, session: Session) -> bytes | None:
        if kind in ("V0", "HTBT"):
            return (head + "#").encode("latin-1")
        if not device_id:
            return None
        now = _as_utc(session.now())
        if kind in ("V1", "NBR"):
            return f"*HQ,{device_id},V4,{kind},{now:%Y%m%d%H%M%S}#".encode("latin-1")
        if _truthy(session.options.get("ack", "")):
            return f"*HQ,{device_id},R12,{now:%H%M%S}#".encode("latin-1")
        return None

    def _text_position(self, sentence: str, frame: bytes, session: Session) -> list[Position]:
        match = _POSITION.fullmatch(sentence)
        if match is None:
            return []
        valid = match["validity"] == "A" or match["coding"] is not None
        fix_time = _frame_time(match) if match["day"] is not None else _as_utc(session.now())
        fields: dict[str, Any] = {}
        attributes: dict[str, Any] = {}
        if match["result"] is not None:
            attributes["result"] = match["result"]
        if match["status"] is not None:
            fields = _status_fields(int(match["status"], 16))
            attributes["status"] = fields.pop("status")
        if match["odometer"] is not None:
            fields["odometer_m"] = int(match["odometer"])
            attributes["temp1"] = int(match["temp"])
            attributes["fuel"] = float(match["fuel"])
            fields["altitude_m"] = float(match["altitude"])
        if match["data"] is not None:
            values = match["data"].split(",")
            while values and not values[-1]:
                values.pop()
            for index, value in enumerate(values, start=1):
                attributes[f"io{index}"] = value.strip()
        position = self.position(
            session, fix_time, frame,
            valid=valid,
            latitude=_text_coordinate(match, "lat"), longitude=_text_coordinate(match, "lon"),
            speed_kmh=float(match["speed"]) * KNOTS_TO_KMH,
            course=float(match["course"]) if match["course"] else 0.0,
            attributes=attributes, **fields,
        )
        return [position]

    def _heartbeat(self, sentence: str, frame: bytes, session: Session) -> list[Position]:
        match = _HEARTBEAT.fullmatch(sentence)
        if match is None:
            return []
        fix_time = _as_utc(session.now())
        return [self.position(session, fix_time, frame, attributes={"batteryLevel": int(match["battery"])})]

    def _status_report(self, pattern: re.Pattern[str], sentence: str, frame: bytes,
                       session: Session) -> list[Position]:
        """NBR / LINK / V3: a report without a location, timed by the frame."""
        match = pattern.fullmatch(sentence)
        if match is None:
            return []
        fields = _status_fields(int(match["status"], 16))
        attributes: dict[str, Any] = {"status": fields.pop("status")}
        groups = match.groupdict()
        if "rssi" in groups:  # LINK
            attributes["rssi"] = int(match["rssi"])
            fields["satellites"] = int(match["sat"])
            attributes["batteryLevel"] = int(match["battery"])
            attributes["steps"] = int(match["steps"])
            attributes["turnovers"] = int(match["turnovers"])
        elif "battery" in groups:  # V3: raw value, unit unknown
            attributes["battery"] = int(match["battery"], 16)
        return [self.position(session, _frame_time(match), frame, attributes=attributes, **fields)]

    def _vp1(self, sentence: str, frame: bytes, session: Session) -> list[Position]:
        match = _VP1.fullmatch(sentence)
        if match is None:
            return []
        if match["lat_d"] is None:  # cell towers only
            return [self.position(session, _as_utc(session.now()), frame)]
        latitude = int(match["lat_d"]) + float(match["lat_m"]) / 60
        longitude = int(match["lon_d"]) + float(match["lon_m"]) / 60
        return [self.position(
            session, _frame_time(match), frame, valid=True,
            latitude=-latitude if match["lat_h"] == "S" else latitude,
            longitude=-longitude if match["lon_h"] == "W" else longitude,
            speed_kmh=float(match["speed"]) * KNOTS_TO_KMH, course=float(match["course"]),
        )]

    def _sms(self, sentence: str, frame: bytes, session: Session) -> list[Position]:
        match = _SMS.fullmatch(sentence)
        if match is None:
            return []
        return [self.position(session, _as_utc(session.now()), frame, attributes={"result": match["result"]})]


# Encoder (device simulator) ---------------------------------------------------------


def _encode_coordinate(value: float, degree_digits: int, hemispheres: str) -> str:
    units = round(abs(value) * 60 * 100_000)  # 1e-5 minute
    degrees, rest = divmod(units, 60 * 100_000)
    minutes, fraction = divmod(rest, 100_000)
    hemisphere = hemispheres[1] if value < 0 else hemispheres[0]
    return f"{degrees:0{degree_digits}d}{minutes:02d}.{fraction:05d},{hemisphere}"


def _encode_status(p: Position) -> int:
    status = 0xFFFFFFFF
    if not p.ignition:
        status &= ~(1 << _IGNITION_BIT)
    for bits, name in _ALARM_BITS:
        if p.alarm == name:
            status &= ~(1 << bits[0])
    return status & 0xFFFFFFFF


def encode_login(device: str) -> bytes | None:
    """H02 has no login: every report carries the device id."""
    return None


def encode_position(p: Position, sequence: int = 0) -> bytes:
    """A ``*HQ,<id>,V1,...#`` report: time to the second, coordinates to 1e-5 minute,
    speed in knots to 0.01, ignition and alarm in the status word."""
    if not (p.device.isascii() and p.device.isdigit()):
        raise ValueError(f"h02 device id must be digits, got {p.device!r}")
    if p.latitude is None or p.longitude is None:
        raise ValueError("h02 V1 report needs a location")
    moment = _as_utc(p.fix_time)
    speed_knots = (p.speed_kmh or 0.0) / KNOTS_TO_KMH
    fields = [
        "*HQ", p.device, "V1", f"{moment:%H%M%S}", "A" if p.valid else "V",
        _encode_coordinate(p.latitude, 2, "NS"), _encode_coordinate(p.longitude, 3, "EW"),
        f"{speed_knots:.2f}", f"{(p.course or 0.0):.2f}", f"{moment:%d%m%y}", f"{_encode_status(p):08X}",
    ]
    return (",".join(fields) + "#").encode("ascii")


PROTOCOL = H02Protocol()
