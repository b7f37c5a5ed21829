"""Loading and replaying the device frame corpus (../shared/vectors/dev.jsonl and dev-2.jsonl).

A frame is replayed on a fresh session after the frames that precede it in the same
reference test method (a login earlier in the method identifies the device), on a
session whose device is already known, as the corpus README asks.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from avl.records import Position
from ingest.protocols import get
from ingest.protocols.base import DecodeError, DecodeResult, Session

KNOWN_DEVICE = "123456789012345"
VECTORS = Path(os.environ.get("AVL_VECTORS", Path(__file__).resolve().parents[4] / "shared" / "vectors"))
CORPORA = (VECTORS / "dev.jsonl", VECTORS / "dev-2.jsonl")


@dataclass(frozen=True)
class Frame:
    data: dict[str, Any]

    @property
    def id(self) -> str:
        d = self.data
        return f"{d['protocol']}-{d['source_test'].removesuffix('ProtocolDecoderTest.java')}-{d['test_method']}-{d['seq']}-{d['id']}"

    @property
    def payload(self) -> bytes:
        d = self.data
        if d["kind"] == "binary":
            return bytes.fromhex(d["payload"])
        try:
            return str(d["payload"]).encode("latin-1")
        except UnicodeEncodeError:  # text beyond latin-1 (a Wialon param named in Cyrillic): the device sent UTF-8
            return str(d["payload"]).encode("utf-8")


def load() -> list[Frame]:
    frames = []
    for corpus in CORPORA:
        with corpus.open(encoding="utf-8") as f:
            frames += [Frame(json.loads(line)) for line in f if line.strip()]
    return frames


def group_key(frame: Frame) -> tuple[str, str, str]:
    d = frame.data
    return d["protocol"], d["source_test"], d["test_method"]


def predecessors(frames: list[Frame]) -> dict[str, list[Frame]]:
    """For each frame id, the decoder-stage frames of the same test method that come before it."""
    groups: dict[tuple[str, str, str], list[Frame]] = defaultdict(list)
    for f in frames:
        if f.data["stage"] == "decoder":
            groups[group_key(f)].append(f)
    out: dict[str, list[Frame]] = {}
    for members in groups.values():
        members.sort(key=lambda f: f.data["seq"])
        for i, f in enumerate(members):
            out[f.id] = members[:i]
    return out


def session_for(frame: Frame) -> Session:
    d = frame.data
    transport = d.get("transport") or ("http" if d["kind"] == "http" else "tcp")
    options: dict[str, Any] = {}
    for call in d.get("decoder_setup") or []:
        # e.g. setModelOverride("VL103"), setHbm(1), setProtocolType(1): keep the last value.
        name, _, arg = call.partition("(")
        options[name.removeprefix("set")[:1].lower() + name.removeprefix("set")[1:]] = arg.rstrip(")").strip('"')
    if "modelOverride" in options:
        options["model"] = options.pop("modelOverride")
    return Session(transport=transport, remote="127.0.0.1:40000", device=KNOWN_DEVICE, options=options)


def replay(frame: Frame, before: list[Frame]) -> DecodeResult:
    protocol = get(frame.data["protocol"])
    session = session_for(frame)
    for earlier in before:
        try:
            protocol.decode(earlier.payload, session)
        except DecodeError:
            pass
    return protocol.decode(frame.payload, session)


def first_frame(protocol_name: str, stream: bytes) -> bytes | None:
    protocol = get(protocol_name)
    buffer = stream
    while buffer:
        frame, consumed = protocol.split(buffer)
        if frame is not None:
            return frame
        if consumed == 0:
            return None
        buffer = buffer[consumed:]
    return None


# What the reference server requires of a position ("plausible fix").
def implausible(p: Position, check_location: bool = True) -> str | None:
    now = datetime.now(UTC)
    if p.fix_time.tzinfo is None:
        return "fix time is naive (must be UTC-aware)"
    if not (datetime(1999, 1, 1, tzinfo=UTC) < p.fix_time <= now + timedelta(hours=25)):
        return f"fix time {p.fix_time.isoformat()} out of range"
    if check_location:
        if p.latitude is None or p.longitude is None:
            return "no location"
        if not (-90 <= p.latitude <= 90 and -180 <= p.longitude <= 180):
            return f"coordinates {p.latitude},{p.longitude} out of range"
    if p.speed_kmh is not None and not (0 <= p.speed_kmh <= 869 * 1.852 + 1e-6):
        return f"speed {p.speed_kmh} out of range"
    if p.course is not None and not (0 <= p.course <= 360):
        return f"course {p.course} out of range"
    if p.altitude_m is not None and not (-12262 <= p.altitude_m <= 18000):
        return f"altitude {p.altitude_m} out of range"
    return None


def attribute_value(p: Position, key: str) -> Any:
    """The value the reference server would hold under ``key``, read from our record.

    Our typed fields replace some of its attribute names (and use mV instead of V)."""
    typed: dict[str, Any] = {
        "ignition": p.ignition,
        "alarm": p.alarm,
        "power": None if p.power_mv is None else p.power_mv / 1000,
        "battery": None if p.battery_mv is None else p.battery_mv / 1000,
        "odometer": p.odometer_m,
        "altitude": p.altitude_m,
        "sat": p.satellites,
        "hdop": p.hdop,
        "course": p.course,  # a field of the reference's position (target "field")
    }
    if key in typed and typed[key] is not None:
        return typed[key]
    return p.attributes.get(key)


def has_attributes(p: Position) -> bool:
    """A record carries attributes: in its dict or in a typed field that replaces one."""
    typed = (p.ignition, p.power_mv, p.battery_mv, p.odometer_m, p.alarm, p.hdop)
    return bool(p.attributes) or any(v is not None for v in typed)


def same_value(actual: Any, expected: Any) -> bool:
    if expected is None:
        return actual is None
    if isinstance(expected, bool) or isinstance(actual, bool):
        return actual is expected or actual == expected
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        return math.isclose(actual, expected, rel_tol=1e-6, abs_tol=1e-6)
    return bool(actual == expected)
