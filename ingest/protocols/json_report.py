"""The project's own JSON report format, for gateways and modern devices over MQTT.

Topic ``avl/in/json/<device>``; payload one report or a list of them::

    {"time": "2026-11-24T10:00:00Z", "lat": 10.49, "lon": -66.88, "valid": true,
     "speed_kmh": 42.0, "course": 90, "altitude_m": 900, "satellites": 9, "hdop": 0.9,
     "ignition": true, "power_mv": 12600, "battery_mv": 4100, "odometer_m": 12345,
     "alarm": null, "attributes": {"rssi": 4}}

``time`` (ISO 8601 with a zone, or Unix seconds) is required; ``lat``/``lon`` together or
neither (a status report). Unknown top-level keys are refused, so typos are not lost silently.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from avl.records import Position
from ingest.protocols.base import DecodeResult, Protocol, Session

_FIELDS = {"time", "lat", "lon", "valid", "speed_kmh", "course", "altitude_m", "satellites", "hdop", "ignition",
           "power_mv", "battery_mv", "odometer_m", "alarm", "attributes"}
_FLOATS = ("speed_kmh", "course", "altitude_m", "hdop")
_INTS = ("satellites", "power_mv", "battery_mv", "odometer_m")


class JsonReportProtocol(Protocol):
    name = "json"
    port = 0
    transports = frozenset({"mqtt"})
    max_frame = 1 << 20

    def decode(self, frame: bytes, session: Session) -> DecodeResult:
        try:
            data = json.loads(frame)
        except (ValueError, UnicodeDecodeError) as exc:
            raise self.error(f"not JSON: {exc}", frame) from None
        except RecursionError:
            raise self.error("JSON nested too deeply", frame[:64]) from None
        reports = data if isinstance(data, list) else [data]
        return DecodeResult(positions=[self._report(r, session, frame) for r in reports])

    def _report(self, r: Any, session: Session, frame: bytes) -> Position:
        if not isinstance(r, dict):
            raise self.error("a report must be a JSON object", frame)
        extra = set(r) - _FIELDS
        if extra:
            raise self.error(f"unknown field(s) {', '.join(sorted(extra))}", frame)
        fields: dict[str, Any] = {}
        try:
            fix_time = _time(r["time"])
            if ("lat" in r) != ("lon" in r):
                raise ValueError("lat and lon go together")
            if "lat" in r:
                fields["latitude"], fields["longitude"] = float(r["lat"]), float(r["lon"])
                fields["valid"] = bool(r.get("valid", True))
            for key in _FLOATS:
                if r.get(key) is not None:
                    fields[key] = float(r[key])
            for key in _INTS:
                if r.get(key) is not None:
                    fields[key] = int(r[key])
            if r.get("ignition") is not None:
                fields["ignition"] = bool(r["ignition"])
            if r.get("alarm") is not None:
                fields["alarm"] = str(r["alarm"])
            attributes = r.get("attributes") or {}
            if not isinstance(attributes, dict):
                raise ValueError("attributes must be an object")
        except KeyError:
            raise self.error("missing field 'time'", frame) from None
        except (TypeError, ValueError, OverflowError) as exc:
            raise self.error(f"bad report: {exc}", frame) from None
        return self.position(session, fix_time, frame, attributes=attributes, **fields)


def _time(value: Any) -> datetime:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"time {value!r} has no time zone")
    return parsed.astimezone(UTC)


def encode_position(p: Position, sequence: int = 0) -> bytes:
    report: dict[str, Any] = {"time": p.fix_time.isoformat(), "valid": p.valid}
    if p.located:
        report["lat"], report["lon"] = p.latitude, p.longitude
    for key in (*_FLOATS, *_INTS, "ignition", "alarm"):
        value = getattr(p, key)
        if value is not None:
            report[key] = value
    if p.attributes:
        report["attributes"] = p.attributes
    return json.dumps(report).encode()


PROTOCOL = JsonReportProtocol()
