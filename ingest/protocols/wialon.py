"""Wialon IPS 1.1 and 2.0 (Gurtam's text protocol, spoken by many brands' units): TCP, UDP and MQTT.

One packet per line, ``#<type>#<body>\\r\\n``; over UDP (and optionally elsewhere) the line is
prefixed with the sender, ``[<version>;]<imei>[;<password>]#<type>#<body>``::

    type  body                                                       answer
    L     1.1: imei;password        2.0: 2.0;imei;password;crc       #AL#1 (#AL#01 wrong password)
    SD    date;time;lat;N|S;lon;E|W;speed;course;alt;sats[;crc]       #ASD#1
    D     SD fields;hdop;inputs;outputs;adc1,adc2..;ibutton;params[;crc]  #AD#1
    B     SD|D messages joined by '|' [|crc]                          #AB#<messages stored>
    P     (empty)                                                    #AP#
    M     text[;crc]                                                 #AM#1

    date ddmmyy, time hhmmss[.n] (UTC; both NA: server time, as the specification says)
    lat ddmm.mmmm, lon dddmm.mmmm (any number of degree digits); speed km/h; alt m
    inputs/outputs decimal bitmasks; params name:type:value, type 1 int, 2 double, 3 string
    crc   2.0: CRC-16/ARC of the body up to and including its last ';' ('|' in B), hex

Records: SD/D/B messages are located reports when they carry both coordinates, else status
records; ``valid`` is 3 or more satellites (the reference server's rule). Params keep their
lowercased names as attributes, except: ``bat`` -> batteryLevel, ``temp`` -> deviceTemp,
``pwr_ext``/``pwr_int`` (V, Wialon's usual names) -> power_mv/battery_mv, and cell towers
``mcc``/``mnc``/``lac``/``cell_id`` (suffix none or 1-9) -> ``network.cellTowers``. ``M`` is a
status record with ``result``. B messages are flagged ``archive``.

Decisions:
    * The login password becomes ``session.credential``: intake checks it against the device's
      password and, when it is wrong or missing, answers with this frame's ``refusal``
      (``#AL#01``, "error checking password" in Gurtam's 1.1 and 2.0 specifications) and
      closes the connection. ``NA`` or an empty password is no password.
    * A 2.0 checksum that does not match is decoded and acknowledged as usual, its records
      flagged ``crcMismatch`` (README "Bad CRCs"); the corpus login ``#L#2.0;42001300083;;CE45``
      is such a frame and is answered ``#AL#1``. Gurtam's error answers (``#AD#16``...) would
      only make the unit resend the same bytes.
    * A CRC field is recognised by position: an SD of 11 fields, a D of 17, a 2.0 login of 4,
      a B whose last part has no ';', an M after a 2.0 login. Hex with or without ``0x``.
    * SD is answered ``#ASD#1`` as Gurtam's specification says (the reference server answers
      ``#AD#1`` to both).
    * A frame may hold several lines (an MQTT payload): each is decoded, records and answers
      are joined. On MQTT the topic names the device, so a payload needs no login.
    * Undecodable packets (bad date, coordinates, numbers) are DecodeErrors: no answer.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from avl.records import Position
from ingest.protocols.base import (
    DecodeError,
    DecodeResult,
    Protocol,
    Session,
    crc16_ibm,
    nmea_degrees,
    nmea_text,
    utc,
)

STATE_VERSION = "wialon.version"
MAX_LINES = 512  # lines in one frame (an MQTT payload); a TCP frame is one line

_PACKET = re.compile(r"(?P<prefix>[^#]*)#(?P<type>[A-Z]{1,3})#(?P<body>.*)", re.DOTALL)
_VERSION = re.compile(r"\d+\.\d+")
_CRC = re.compile(r"(?:0[xX])?[0-9A-Fa-f]{1,4}")
_DEVICE = re.compile(r"[^\s;#|]{1,64}")
_DATE = re.compile(r"(\d\d)(\d\d)(\d\d)")
_TIME = re.compile(r"(\d\d)(\d\d)(\d\d)(?:\.(\d{1,9}))?")
_COORDINATE = re.compile(r"\d+(?:\.\d+)?")
_PARAM = re.compile(r"(?P<name>.*):(?P<type>[1-3]):(?P<value>.*)", re.DOTALL)
_CELL_KEYS = ("mcc", "mnc", "lac", "cell_id")

SHORT_FIELDS = 10  # SD, and the first fields of D
LONG_FIELDS = 16  # D


def _blank(value: str) -> bool:
    return value in ("", "NA")


def _float(value: str, what: str) -> float | None:
    if _blank(value):
        return None
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{what} {value[:20]!r} is not a number") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError(f"{what} {value[:20]!r} is not a number")
    return number


def _int(value: str, what: str) -> int | None:
    if _blank(value):
        return None
    if not value.isdigit() or len(value) > 18:
        raise ValueError(f"{what} {value[:20]!r} is not a whole number")
    return int(value)


def _param_value(kind: str, value: str) -> Any:
    """A param as its declared type (1 int, 2 double, 3 string); a number that does not parse stays text."""
    if kind == "1":
        stripped = value.strip()
        if re.fullmatch(r"[+-]?\d{1,18}", stripped):
            return int(stripped)
    if kind in ("1", "2"):
        try:
            number = float(value)
        except ValueError:
            return value
        return number if number == number and abs(number) != float("inf") else value
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        number = float(str(value).strip().rstrip("%").strip())
    except ValueError:
        return None
    return number if number == number and abs(number) != float("inf") else None


def _crc_text(value: str) -> int:
    return int(value[2:] if value[:2] in ("0x", "0X") else value, 16)


class WialonProtocol(Protocol):
    name = "wialon"
    port = 5039
    transports = frozenset({"tcp", "udp"})
    max_frame = 32768  # a black-box packet joins many messages on one line

    def split(self, buffer: bytes) -> tuple[bytes | None, int]:
        end = buffer.find(b"\n")
        if end < 0:
            if len(buffer) >= self.max_frame:
                raise self.too_long(buffer)
            return None, 0
        line = buffer[:end].rstrip(b"\r")
        if not line.strip():
            return None, end + 1  # an empty line (a stray CRLF): nothing to decode
        return line, end + 1

    def decode(self, frame: bytes, session: Session) -> DecodeResult:
        previous = (session.device, session.credential, session.state.get(STATE_VERSION))
        try:
            return self._decode(frame, session)
        except DecodeError:
            session.device, session.credential = previous[0], previous[1]
            session.state[STATE_VERSION] = previous[2]
            raise
        except (ValueError, IndexError, OverflowError) as exc:
            session.device, session.credential = previous[0], previous[1]
            session.state[STATE_VERSION] = previous[2]
            raise self.error(f"malformed packet: {exc}", frame) from exc

    # ------------------------------------------------------------------------------

    def _decode(self, frame: bytes, session: Session) -> DecodeResult:
        lines = [line for line in frame.replace(b"\r", b"\n").split(b"\n") if line.strip()]
        if not lines:
            raise self.error("empty packet", frame)
        if len(lines) > MAX_LINES:
            raise self.error(f"{len(lines)} packets in one frame (at most {MAX_LINES})", frame[:64])
        result = DecodeResult()
        replies: list[bytes] = []
        refusal: bytes | None = None
        for line in lines:
            one = self._packet(line, session)
            result.positions += one.positions
            if one.reply:
                replies.append(one.reply)
            refusal = one.refusal or refusal
        result.reply = b"".join(replies) or None
        result.refusal = refusal
        return result

    def _packet(self, line: bytes, session: Session) -> DecodeResult:
        sentence = line.decode("utf-8", errors="replace").strip(" \x00")
        m = _PACKET.fullmatch(sentence)
        if m is None:
            raise self.error("no #<type># packet head", line)
        kind, body = m["type"], m["body"]
        if m["prefix"]:
            self._sender(m["prefix"], session, line)
        if kind == "L":
            return self._login(body, session, line)
        if kind == "P":
            return DecodeResult(reply=b"#AP#\r\n")
        if kind in ("SD", "D"):
            position = self._message(kind, body, session, line, crc_allowed=True)
            return DecodeResult([position], b"#ASD#1\r\n" if kind == "SD" else b"#AD#1\r\n")
        if kind == "B":
            return self._black_box(body, session, line)
        if kind == "M":
            return self._driver_message(body, session, line)
        raise self.error(f"unsupported packet type {kind!r}", line)

    def _sender(self, prefix: str, session: Session, line: bytes) -> None:
        """``[<version>;]<imei>[;<password>[;<crc>]]`` before the packet (UDP): who sends it."""
        fields = prefix.split(";")
        if _VERSION.fullmatch(fields[0]):
            session.state[STATE_VERSION] = fields[0]
            fields = fields[1:]
        if not fields or not _DEVICE.fullmatch(fields[0]):
            raise self.error(f"bad sender {prefix[:40]!r} before the packet", line)
        session.device = fields[0]
        if len(fields) > 1 and not _blank(fields[1]):
            session.credential = fields[1]

    def _login(self, body: str, session: Session, line: bytes) -> DecodeResult:
        # A 2.0 login's checksum is not checked: a login yields no record a mismatch could be
        # flagged on, and it is accepted either way (see Decisions); the password is the check.
        fields = body.split(";")
        version = "1.1"
        if _VERSION.fullmatch(fields[0]):
            version, fields = fields[0], fields[1:]
        if not fields or not _DEVICE.fullmatch(fields[0]):
            raise self.error("login without a device id", line)
        session.device = fields[0]
        session.state[STATE_VERSION] = version
        password = fields[1] if len(fields) > 1 else ""
        if not _blank(password):
            session.credential = password
        return DecodeResult(reply=b"#AL#1\r\n", refusal=b"#AL#01\r\n")

    def _black_box(self, body: str, session: Session, line: bytes) -> DecodeResult:
        parts = body.split("|")
        crc_ok = True
        if len(parts) > 1 and ";" not in parts[-1] and _CRC.fullmatch(parts[-1]):
            covered = body[: len(body) - len(parts[-1])]
            crc_ok = crc16_ibm(covered.encode("utf-8")) == _crc_text(parts[-1])
            parts = parts[:-1]
        positions = []
        for part in parts:
            if not part:
                continue
            position = self._message("B", part, session, line, crc_allowed=False)
            position.attributes["archive"] = True
            if not crc_ok:
                position.attributes["crcMismatch"] = True
            positions.append(position)
        return DecodeResult(positions, f"#AB#{len(positions)}\r\n".encode("ascii"))

    def _driver_message(self, body: str, session: Session, line: bytes) -> DecodeResult:
        attributes: dict[str, Any] = {}
        text = body
        if session.state.get(STATE_VERSION) == "2.0" and ";" in body:
            head, _, crc = body.rpartition(";")
            if _CRC.fullmatch(crc):
                text = head
                if crc16_ibm((head + ";").encode("utf-8")) != _crc_text(crc):
                    attributes["crcMismatch"] = True
        attributes["result"] = text
        position = self.position(session, session.now(), line, attributes=attributes)
        return DecodeResult([position], b"#AM#1\r\n")

    def _message(self, kind: str, body: str, session: Session, line: bytes,
                 crc_allowed: bool) -> Position:
        """One SD or D message (or a black-box part) as a record."""
        fields = body.split(";")
        crc_ok = True
        if crc_allowed and len(fields) in (SHORT_FIELDS + 1, LONG_FIELDS + 1) and _CRC.fullmatch(fields[-1]):
            covered = body[: len(body) - len(fields[-1])]
            crc_ok = crc16_ibm(covered.encode("utf-8")) == _crc_text(fields[-1])
            fields = fields[:-1]
        if len(fields) < SHORT_FIELDS:
            raise self.error(f"{kind} packet has {len(fields)} fields, at least {SHORT_FIELDS} expected", line)
        date, time, lat, lat_h, lon, lon_h, speed, course, altitude, sats = fields[:SHORT_FIELDS]
        attributes: dict[str, Any] = {}
        record: dict[str, Any] = {
            "speed_kmh": _float(speed, "speed"),
            "course": _float(course, "course"),
            "altitude_m": _float(altitude, "altitude"),
        }
        satellites = _int(sats, "satellites")
        if satellites is not None:
            record["satellites"] = satellites
            record["valid"] = satellites >= 3
        latitude = self._coordinate(lat, lat_h, "NS", 90.0, line)
        longitude = self._coordinate(lon, lon_h, "EW", 180.0, line)
        if latitude is not None and longitude is not None:
            record["latitude"], record["longitude"] = latitude, longitude
        if len(fields) > SHORT_FIELDS:
            self._extended(fields[SHORT_FIELDS:], record, attributes)
        if not crc_ok:
            attributes["crcMismatch"] = True
        fix_time = self._time(date, time, session, line)
        return self.position(session, fix_time, line, attributes=attributes, **record)

    def _time(self, date: str, time: str, session: Session, line: bytes) -> datetime:
        if _blank(date) or _blank(time):
            return session.now()  # "If date and time are NA, the server sets the current time"
        d, t = _DATE.fullmatch(date), _TIME.fullmatch(time)
        if d is None or t is None:
            raise self.error(f"bad date/time {date[:12]!r} {time[:18]!r}", line)
        fraction = (t[4] or "0")[:6].ljust(6, "0")
        return utc(int(d[3]), int(d[2]), int(d[1]), int(t[1]), int(t[2]), int(t[3]), int(fraction))

    def _coordinate(self, value: str, hemisphere: str, allowed: str, limit: float, line: bytes) -> float | None:
        if _blank(value):
            return None
        if not _COORDINATE.fullmatch(value) or hemisphere not in allowed:
            raise self.error(f"bad coordinate {value[:24]!r} {hemisphere[:2]!r}", line)
        degrees = nmea_degrees(value, hemisphere)
        if abs(degrees) > limit:
            raise self.error(f"coordinate {value[:24]!r} out of range", line)
        return degrees

    def _extended(self, fields: list[str], record: dict[str, Any], attributes: dict[str, Any]) -> None:
        """D's fields after the first ten: hdop, inputs, outputs, adc, ibutton, params."""
        fields = fields + [""] * (6 - len(fields))
        hdop, inputs, outputs, adc, ibutton, params = fields[:5] + [";".join(fields[5:])]
        if (value := _float(hdop, "hdop")) is not None:
            record["hdop"] = value
        if (value := _int(inputs, "inputs")) is not None:
            attributes["input"] = value
        if (value := _int(outputs, "outputs")) is not None:
            attributes["output"] = value
        if not _blank(adc):
            for index, raw in enumerate(adc.split(","), 1):
                number = _float(raw.strip(), f"adc{index}")
                if number is not None:
                    attributes[f"adc{index}"] = number
        if not _blank(ibutton):
            attributes["driverUniqueId"] = ibutton
        if not _blank(params):
            self._params(params, record, attributes)

    def _params(self, params: str, record: dict[str, Any], attributes: dict[str, Any]) -> None:
        values: dict[str, Any] = {}
        for item in params.split(","):
            m = _PARAM.fullmatch(item)
            if m is not None and m["name"]:
                values[m["name"].lower()] = _param_value(m["type"], m["value"])
        for key, target in (("bat", "batteryLevel"), ("temp", "deviceTemp")):
            if key in values and (number := _number(values[key])) is not None:
                del values[key]
                attributes[target] = round(number) if number.is_integer() else number
        for key, field_name in (("pwr_ext", "power_mv"), ("pwr_int", "battery_mv")):
            if key in values and (number := _number(values[key])) is not None and abs(number) < 1e6:
                del values[key]
                record[field_name] = round(number * 1000)
        towers = []
        for suffix in ["", *map(str, range(1, 10))]:
            keys = [key + suffix for key in _CELL_KEYS]
            numbers = [_number(values.get(key)) for key in keys]
            if any(n is None or not n.is_integer() for n in numbers):
                if suffix:
                    break
                continue
            mcc, mnc, lac, cid = (int(n) for n in numbers if n is not None)
            towers.append({"mobileCountryCode": mcc, "mobileNetworkCode": mnc, "locationAreaCode": lac, "cellId": cid})
            for key in keys:
                del values[key]
        if towers:
            attributes["network"] = {"cellTowers": towers}
        attributes.update(values)


# Encoders for the device simulator -------------------------------------------------------


def _with_crc(body: str) -> str:
    return f"{body}{crc16_ibm(body.encode('utf-8')):04X}"


def encode_login(device: str, password: str | None = None) -> bytes:
    """A 2.0 login, ``#L#2.0;<imei>;<password or NA>;<crc>``; the server answers ``#AL#1``."""
    body = _with_crc(f"2.0;{device};{password or 'NA'};")
    return f"#L#{body}\r\n".encode()


def _message_body(p: Position) -> str:
    """A D message's fields for ``p``, without a checksum."""
    t = p.fix_time
    lat = p.latitude or 0.0
    lon = p.longitude or 0.0

    def num(value: float | None, fmt: str) -> str:
        return "NA" if value is None else format(value, fmt)

    params = []
    if p.power_mv is not None:
        params.append(f"pwr_ext:2:{p.power_mv / 1000:.3f}")
    if p.battery_mv is not None:
        params.append(f"pwr_int:2:{p.battery_mv / 1000:.3f}")
    satellites = p.satellites if p.satellites is not None else (9 if p.valid else 0)
    return ";".join([
        f"{t.day:02d}{t.month:02d}{t.year % 100:02d}", f"{t.hour:02d}{t.minute:02d}{t.second:02d}",
        nmea_text(lat, 2, 6), "S" if lat < 0 else "N", nmea_text(lon, 3, 6), "W" if lon < 0 else "E",
        num(p.speed_kmh, ".2f"), num(p.course, ".0f"), num(p.altitude_m, ".0f"), str(satellites),
        num(p.hdop, ".1f"), "NA", "NA", "NA", "NA", ",".join(params) or "NA",
    ])


def encode_position(p: Position, sequence: int = 0) -> bytes:
    """A 2.0 ``#D#`` packet: fix time, coordinates, speed, course, altitude, satellites, HDOP,
    and ``pwr_ext``/``pwr_int`` params (V) for the supply and backup voltages."""
    return f"#D#{_with_crc(_message_body(p) + ';')}\r\n".encode()


def encode_black_box(positions: list[Position]) -> bytes:
    """A 2.0 ``#B#`` packet of D messages, one checksum over them all; answered ``#AB#<count>``."""
    return f"#B#{_with_crc('|'.join(_message_body(p) for p in positions) + '|')}\r\n".encode()


PROTOCOL = WialonProtocol()
