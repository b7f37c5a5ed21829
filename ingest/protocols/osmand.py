"""OsmAnd / Traccar Client phone apps over HTTP/1.1: one request is one frame.

The HTTP transport hands ``decode`` the raw request bytes; ``split`` frames requests on a
keep-alive connection; the reply is the complete HTTP response.

    GET /?<query> or POST with a form body (when the query is empty)
        id | deviceid          device (required, else 400)
        lat, lon | location    decimal degrees (``location=lat,lon``)
        timestamp              Unix s, Unix ms (> 2^31), ISO-8601, ``yyyy-MM-dd HH:mm:ss``
                               (UTC, or the ``timezone`` option)
        speed (knots), bearing | heading, altitude (m), accuracy (m), hdop, batt (%),
        charge, valid, driverUniqueId, cell=mcc,mnc,lac,cid[,rssi], wifi=mac,rssi,
        password               the device's password (never stored; see below)
        anything else -> attribute (number, boolean or string)
    POST application/json (Transistorsoft background-geolocation)
        device_id, location{timestamp, coords{latitude, longitude, speed m/s, heading,
        accuracy, altitude}, is_moving, odometer (m), event, battery{level 0-1,
        is_charging}, activity{type}, mock, extras{...}} (``location`` may be a list)
        password (top level)   the device's password
    Reply  200 OK (empty body); 400 Bad Request (text/plain reason) for a missing id or
           unreadable values, with no records.

Password: the apps send whatever URL they are configured with, so a phone can carry its
device's password as a ``password`` parameter (query, form or JSON body) or as HTTP Basic
credentials (``Authorization: Basic base64(id:password)``). It becomes ``session.credential``
(intake checks it) and is masked with ``*`` in the raw request kept with the records.
"""

from __future__ import annotations

import base64
import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from avl.records import Position
from ingest.protocols.base import (
    KNOTS_TO_KMH,
    DecodeResult,
    FrameError,
    Protocol,
    Session,
    from_unix,
)

_REQUEST_LINE = re.compile(r"([A-Z]{3,10}) (\S+) HTTP/(\d)\.(\d)", re.ASCII)
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", re.ASCII)
# Where a password sits in a raw request (group 2 is masked, keeping the length).
_SECRETS = (
    re.compile(rb"((?:^|[?&\s])password=)([^&\s#]*)"),
    re.compile(rb'("password"\s*:\s*")((?:[^"\\]|\\.)*)'),
    re.compile(rb"(\r\nauthorization:[ \t]*)([^\r\n]*)", re.IGNORECASE),
)
_MPS_TO_KMH = 3.6
_INT_MAX = 2**31 - 1


class BadRequest(Exception):
    """A request that gets ``400 Bad Request`` and no records."""


def response(status: str, body: bytes = b"", close: bool = False, content_type: str = "text/plain") -> bytes:
    """A complete HTTP/1.1 response."""
    head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}"]
    if body:
        head.append(f"Content-Type: {content_type}; charset=utf-8")
    head.append(f"Connection: {'close' if close else 'keep-alive'}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


@dataclass(slots=True)
class Request:
    method: str
    target: str
    version: tuple[int, int]
    headers: dict[str, str]
    body: bytes

    @property
    def close(self) -> bool:
        """The client asked for the connection to close after this exchange."""
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if self.version >= (1, 1):
            return "close" in tokens
        return "keep-alive" not in tokens


@dataclass(slots=True)
class _Report:
    """One position's worth of decoded fields, before the device is known."""

    fix_time: datetime | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)
    latitude: float | None = None
    longitude: float | None = None


def parse_request(raw: bytes) -> Request:
    """Request line, headers and body (cut to Content-Length).

    ValueError when the bytes are not an HTTP request at all; BadRequest when the request
    line is fine but a header or the body is not.
    """
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        head = head.rstrip(b"\r\n")
    lines = head.decode("latin-1").split("\r\n")
    m = _REQUEST_LINE.fullmatch(lines[0])
    if m is None:
        raise ValueError("no HTTP request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            raise BadRequest(f"bad header line {line[:40]!r}")
        headers[name.lower()] = value.strip()
    length = headers.get("content-length")
    if length is not None:
        if not (length.isascii() and length.isdigit()) or len(length) > 12:
            raise BadRequest(f"bad Content-Length {length[:20]!r}")
        if len(body) < int(length):
            raise BadRequest(f"body of {len(body)} bytes, Content-Length says {length}")
        body = body[: int(length)]
    return Request(m[1], m[2], (int(m[3]), int(m[4])), headers, body)


class OsmAndProtocol(Protocol):
    name = "osmand"
    port = 5055
    transports = frozenset({"http"})
    max_frame = 65536

    def split(self, buffer: bytes) -> tuple[bytes | None, int]:
        blank = len(buffer) - len(buffer.lstrip(b"\r\n"))
        if blank:
            return None, blank  # empty lines between requests are allowed and ignored
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) >= self.max_frame:
                raise self.too_long(buffer)
            line_end = buffer.find(b"\r\n")
            first_line = buffer if line_end < 0 else buffer[:line_end]
            if (line_end >= 0 or len(first_line) > 8) and not _looks_like_request_start(first_line, line_end >= 0):
                raise FrameError(self.name, "not an HTTP request", buffer[:64])
            return None, 0
        header = buffer[:end].decode("latin-1")
        lines = header.split("\r\n")
        if not _REQUEST_LINE.fullmatch(lines[0]):
            raise FrameError(self.name, "not an HTTP request line", buffer[:64])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            if key == "transfer-encoding" and value.strip().lower() != "identity":
                raise FrameError(self.name, f"Transfer-Encoding {value.strip()[:20]!r} is not supported", buffer[:64])
            if key == "content-length":
                value = value.strip()
                if not (value.isascii() and value.isdigit()) or len(value) > 12 or (length and int(value) != length):
                    raise FrameError(self.name, f"bad Content-Length {value[:20]!r}", buffer[:64])
                length = int(value)
        total = end + 4 + length
        if total > self.max_frame:
            raise FrameError(self.name, f"request of {total} bytes exceeds {self.max_frame}", buffer[:64])
        if len(buffer) < total:
            return None, 0
        return buffer[:total], total

    def decode(self, frame: bytes, session: Session) -> DecodeResult:
        try:
            request = parse_request(frame)
        except BadRequest as exc:
            return DecodeResult([], response("400 Bad Request", f"{exc}\n".encode(), close=True))
        except ValueError as exc:
            raise self.error(f"not an HTTP request: {exc}", frame) from exc
        try:
            device, reports = self._read(request, session)
        except BadRequest as exc:
            return DecodeResult([], response("400 Bad Request", f"{exc}\n".encode(), close=request.close))
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, OSError) as exc:
            return DecodeResult([], response("400 Bad Request", f"unreadable value: {exc}\n".encode(),
                                             close=request.close))
        session.device = device
        if session.credential is None:
            session.credential = _basic_password(request)
        if session.credential is not None:
            frame = _masked(frame)
        positions = [self._position(report, frame, session) for report in reports]
        return DecodeResult(positions, response("200 OK", close=request.close))

    # ------------------------------------------------------------------------------

    def _read(self, request: Request, session: Session) -> tuple[str, list[_Report]]:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        query = urlsplit(request.target).query
        body = request.body.strip()
        if content_type == "application/json" or (not query and body.startswith(b"{")):
            return _read_json(body, session)
        if not query and body:
            query = body.decode("latin-1")
        params = parse_qsl(query, keep_blank_values=True, encoding="utf-8", errors="replace")
        return _read_query(params, session)

    def _position(self, report: _Report, frame: bytes, session: Session) -> Position:
        located = report.latitude is not None and report.longitude is not None
        if located and report.latitude == 0 and report.longitude == 0:
            located = False  # the apps send 0,0 when they have no fix
        fields = dict(report.fields)
        if located:
            fields.setdefault("valid", True)
        else:
            fields["valid"] = False
        return self.position(
            session, report.fix_time or session.now(), frame,
            latitude=report.latitude if located else None,
            longitude=report.longitude if located else None,
            attributes=report.attributes,
            **fields,
        )


def _basic_password(request: Request) -> str | None:
    """The password of ``Authorization: Basic`` credentials, if the request has them."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    _, colon, password = decoded.partition(":")
    return password if colon else None


def _masked(frame: bytes) -> bytes:
    """``frame`` with every password in it replaced by as many ``*``."""
    for pattern in _SECRETS:
        frame = pattern.sub(lambda m: m[1] + b"*" * len(m[2]), frame)
    return frame


def _looks_like_request_start(line: bytes, complete: bool) -> bool:
    text = line.decode("latin-1")
    if complete:
        return _REQUEST_LINE.fullmatch(text) is not None
    method, _, _ = text.partition(" ")
    return method.isalpha() and method.isupper() and len(method) <= 10


# Query / form ------------------------------------------------------------------------


def _number(key: str, value: str) -> float:
    if not _NUMBER.fullmatch(value.strip()):
        raise BadRequest(f"{key}={value[:40]!r} is not a number")
    number = float(value)
    if not math.isfinite(number):
        raise BadRequest(f"{key}={value[:40]!r} is not finite")
    return number


def _coordinates(report: _Report, latitude: float, longitude: float) -> None:
    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
        raise BadRequest(f"coordinates {latitude},{longitude} out of range")
    report.latitude, report.longitude = latitude, longitude


def _timestamp(value: str, session: Session) -> datetime:
    value = value.strip()
    if re.fullmatch(r"-?[0-9]+", value):
        number = int(value)
        if number < 0 or number > 10**14:
            raise BadRequest(f"timestamp={value[:40]!r} out of range")
        return from_unix(number if number < _INT_MAX else number / 1000)
    if re.fullmatch(r"[0-9]+\.[0-9]+", value):
        return from_unix(float(value))
    if "T" in value:
        return _iso(value, "timestamp")
    try:
        local = datetime.strptime(value, "%Y-%m-%d %H:%M:%S")
    except ValueError as exc:
        raise BadRequest(f"timestamp={value[:40]!r} not understood") from exc
    return local.replace(tzinfo=_zone(session)).astimezone(UTC)


def _iso(value: str, key: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise BadRequest(f"{key}={value[:40]!r} is not ISO-8601") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _zone(session: Session) -> Any:
    name = session.options.get("timezone")
    if not name:
        return UTC
    try:
        return ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError):
        match = re.fullmatch(r"(?:GMT|UTC)?([+-])([0-9]{1,2}):?([0-9]{2})?", str(name))
        if match is None:
            return UTC
        offset = timedelta(hours=int(match[2]), minutes=int(match[3] or 0))
        return timezone(-offset if match[1] == "-" else offset)


def _boolean(value: str) -> bool:
    return value.strip().lower() in ("true", "1")


def _speed_course(report: _Report, key: str, value: float) -> None:
    if key == "speed":
        if value >= 0:
            report.fields["speed_kmh"] = value * KNOTS_TO_KMH
    elif 0 <= value <= 360:
        report.fields["course"] = value


def _read_query(params: list[tuple[str, str]], session: Session) -> tuple[str, list[_Report]]:
    report = _Report()
    device: str | None = None
    cells: list[dict[str, int]] = []
    wifis: list[dict[str, Any]] = []
    lat: float | None = None
    lon: float | None = None
    for key, value in params:
        if key in ("id", "deviceid"):
            device = value.strip() or None
        elif key == "valid":
            report.fields["valid"] = _boolean(value)
        elif key == "timestamp":
            report.fix_time = _timestamp(value, session)
        elif key == "lat":
            lat = _number(key, value)
        elif key == "lon":
            lon = _number(key, value)
        elif key == "location":
            parts = value.split(",")
            if len(parts) != 2:
                raise BadRequest(f"location={value[:40]!r} is not lat,lon")
            lat, lon = _number("lat", parts[0]), _number("lon", parts[1])
        elif key == "cell":
            numbers = [int(_number(key, v)) for v in value.split(",")]
            if len(numbers) < 4:
                raise BadRequest(f"cell={value[:40]!r} is not mcc,mnc,lac,cid[,rssi]")
            cell = {"mobileCountryCode": numbers[0], "mobileNetworkCode": numbers[1],
                    "locationAreaCode": numbers[2], "cellId": numbers[3]}
            if len(numbers) > 4:
                cell["signalStrength"] = numbers[4]
            cells.append(cell)
        elif key == "wifi":
            parts = value.split(",")
            if len(parts) < 2:
                raise BadRequest(f"wifi={value[:40]!r} is not mac,rssi")
            wifis.append({"macAddress": parts[0].replace("-", ":").lower(),
                          "signalStrength": int(_number(key, parts[1]))})
        elif key in ("speed", "bearing", "heading"):
            _speed_course(report, "speed" if key == "speed" else "course", _number(key, value))
        elif key == "altitude":
            report.fields["altitude_m"] = _number(key, value)
        elif key == "accuracy":
            report.attributes["accuracy"] = _number(key, value)
        elif key == "hdop":
            report.fields["hdop"] = _number(key, value)
        elif key == "batt":
            report.attributes["batteryLevel"] = _number(key, value)
        elif key == "charge":
            report.attributes["charge"] = _boolean(value)
        elif key == "driverUniqueId":
            report.attributes["driverUniqueId"] = value
        elif key == "password":
            session.credential = value
        elif key:
            _other(report, key, value)
    if device is None:
        raise BadRequest("missing device id (id or deviceid)")
    if lat is not None and lon is not None:
        _coordinates(report, lat, lon)
    network: dict[str, Any] = {}
    if cells:
        network["cellTowers"] = cells
    if wifis:
        network["wifiAccessPoints"] = wifis
    if network:
        report.attributes["network"] = network
    return device, [report]


def _other(report: _Report, key: str, value: str) -> None:
    """Any other key: a number, a boolean or a string; a few land in typed fields."""
    parsed: float | bool | str
    if _NUMBER.fullmatch(value.strip()) and math.isfinite(float(value)):
        parsed = float(value)
    elif value in ("true", "false"):
        parsed = value == "true"
    else:
        parsed = value
    _attribute(report, key, parsed)


def _attribute(report: _Report, key: str, value: Any) -> None:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if key == "ignition" and isinstance(value, bool):
        report.fields["ignition"] = value
    elif key == "power" and number:
        report.fields["power_mv"] = round(value * 1000)
    elif key == "battery" and number:
        report.fields["battery_mv"] = round(value * 1000)
    elif key == "odometer" and number:
        report.fields["odometer_m"] = round(value)
    elif key == "sat" and number:
        report.fields["satellites"] = round(value)
    elif key == "alarm" and isinstance(value, str):
        report.fields["alarm"] = value
    else:
        report.attributes[key] = value


# JSON (Transistorsoft) ---------------------------------------------------------------


def _json_number(value: Any, key: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(f"{key} is not a number")
    return float(value)


def _read_json(body: bytes, session: Session) -> tuple[str, list[_Report]]:
    try:
        root = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"body is not JSON: {exc}") from exc
    except RecursionError as exc:
        raise BadRequest("JSON body nested too deeply") from exc
    if not isinstance(root, dict):
        raise BadRequest("JSON body is not an object")
    device = root.get("device_id")
    if isinstance(device, (int, str)) and not isinstance(device, bool) and str(device).strip():
        device = str(device).strip()
    else:
        raise BadRequest("missing device_id")
    if isinstance(root.get("password"), str):
        session.credential = root["password"]
    locations = root.get("location")
    if isinstance(locations, dict):
        locations = [locations]
    if not isinstance(locations, list) or not locations or not all(isinstance(x, dict) for x in locations):
        raise BadRequest("missing location object")
    return device, [_json_location(location) for location in locations]


def _json_location(location: dict[str, Any]) -> _Report:
    report = _Report()
    timestamp = location.get("timestamp")
    if isinstance(timestamp, str):
        report.fix_time = _iso(timestamp, "location.timestamp")
    elif timestamp is not None:
        raise BadRequest("location.timestamp is not a string")
    coords = location.get("coords")
    if isinstance(coords, dict):
        lat = _json_number(coords.get("latitude"), "coords.latitude")
        lon = _json_number(coords.get("longitude"), "coords.longitude")
        if lat is not None and lon is not None:
            _coordinates(report, lat, lon)
            report.fields["valid"] = True
        if (accuracy := _json_number(coords.get("accuracy"), "coords.accuracy")) is not None and accuracy >= 0:
            report.attributes["accuracy"] = accuracy
        if (speed := _json_number(coords.get("speed"), "coords.speed")) is not None and speed >= 0:
            report.fields["speed_kmh"] = speed * _MPS_TO_KMH
        if (heading := _json_number(coords.get("heading"), "coords.heading")) is not None:
            _speed_course(report, "course", heading)
        if (altitude := _json_number(coords.get("altitude"), "coords.altitude")) is not None:
            report.fields["altitude_m"] = altitude
    elif coords is not None:
        raise BadRequest("location.coords is not an object")
    if isinstance(location.get("is_moving"), bool):
        report.attributes["motion"] = location["is_moving"]
    if (odometer := _json_number(location.get("odometer"), "location.odometer")) is not None and odometer >= 0:
        report.fields["odometer_m"] = round(odometer)
    if isinstance(location.get("event"), str):
        report.attributes["event"] = location["event"]
    if isinstance(location.get("mock"), bool):
        report.attributes["mock"] = location["mock"]
    battery = location.get("battery")
    if isinstance(battery, dict):
        level = _json_number(battery.get("level"), "battery.level")
        if level is not None and 0 <= level <= 1:
            report.attributes["batteryLevel"] = int(level * 100)
        if isinstance(battery.get("is_charging"), bool):
            report.attributes["charge"] = battery["is_charging"]
    activity = location.get("activity")
    if isinstance(activity, dict) and isinstance(activity.get("type"), str):
        report.attributes["activity"] = activity["type"]
    extras = location.get("extras")
    if isinstance(extras, dict):
        for key, value in extras.items():
            if isinstance(value, (bool, int, float, str)) and not (isinstance(value, float) and not math.isfinite(value)):
                _attribute(report, str(key), value)
    return report


# Encoders for the device simulator -------------------------------------------------------


def encode_login(device: str) -> None:
    """OsmAnd has no login: every request names its device."""
    return None


def encode_position(p: Position, sequence: int = 0) -> bytes:
    """A raw ``GET /?id=...`` request as the OsmAnd / Traccar Client apps send it."""
    params: list[tuple[str, str]] = [("id", p.device)]
    if p.latitude is not None and p.longitude is not None:
        params += [("lat", repr(p.latitude)), ("lon", repr(p.longitude))]
    params.append(("timestamp", str(int(p.fix_time.timestamp()))))
    if p.speed_kmh is not None:
        params.append(("speed", repr(p.speed_kmh / KNOTS_TO_KMH)))
    if p.course is not None:
        params.append(("bearing", repr(p.course)))
    if p.altitude_m is not None:
        params.append(("altitude", repr(p.altitude_m)))
    if not p.valid:
        params.append(("valid", "false"))
    if p.satellites is not None:
        params.append(("sat", str(p.satellites)))
    if p.ignition is not None:
        params.append(("ignition", "true" if p.ignition else "false"))
    if p.power_mv is not None:
        params.append(("power", repr(p.power_mv / 1000)))
    battery = p.attributes.get("batteryLevel")
    if isinstance(battery, (int, float)) and not isinstance(battery, bool):
        params.append(("batt", repr(battery)))
    query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in params)
    return f"GET /?{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode("ascii")


PROTOCOL = OsmAndProtocol()

__all__ = ["PROTOCOL", "BadRequest", "OsmAndProtocol", "Request", "encode_login", "encode_position", "parse_request",
           "response"]
