"""`avl decode`: what a device sent, as support staff read it (and tests check it)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from avl.records import Position
from ingest.protocols import DecodeError, Protocol, Session


def _payload(line: dict[str, Any]) -> bytes:
    kind = line.get("kind", "binary")
    payload = line.get("payload")
    if not isinstance(payload, str):
        raise ValueError("'payload' must be a string")
    if kind == "binary":
        return bytes.fromhex(payload)
    if kind in ("text", "http"):
        return payload.encode("latin-1")
    raise ValueError(f"'kind' must be binary, text or http, not {kind!r}")


def position_json(p: Position) -> dict[str, Any]:
    attributes = dict(p.attributes)
    for key in ("ignition", "power_mv", "battery_mv", "odometer_m", "alarm", "hdop"):
        value = getattr(p, key)
        if value is not None:
            attributes[key] = value
    return {"device": p.device, "time": p.fix_time.isoformat().replace("+00:00", "Z"), "valid": p.valid,
            "latitude": p.latitude, "longitude": p.longitude, "speed": p.speed_kmh, "course": p.course,
            "altitude": p.altitude_m, "satellites": p.satellites, "attributes": attributes}


def decode_lines(protocol: Protocol, lines: Iterable[str], assume_device: str | None = None) -> Iterator[str]:
    sessions: dict[str, Session] = {}
    for raw in lines:
        if not raw.strip():
            continue
        out: dict[str, Any] = {"positions": [], "reply": None, "error": None}
        try:
            line = json.loads(raw)
            if not isinstance(line, dict):
                raise ValueError("each line must be a JSON object")
            frame = _payload(line)
            key = line.get("session")
            transport = "http" if line.get("kind") == "http" else str(line.get("transport", "tcp"))
            if key is None:
                session = Session(transport=transport, device=assume_device)
            else:
                session = sessions.setdefault(str(key), Session(transport=transport, device=assume_device))
            result = protocol.decode(frame, session)
            out["positions"] = [position_json(p) for p in result.positions]
            out["reply"] = result.reply.hex() if result.reply is not None else None
        except DecodeError as exc:
            out["error"] = str(exc)
        except (ValueError, TypeError) as exc:
            out["error"] = f"bad input line: {exc}"
        yield json.dumps(out, default=str, ensure_ascii=False)
