"""From decoded records to rows: identify the device, validate, flag, and route each
record to positions, device events or quarantine. Nothing is silently dropped: every
record ends in a table or is refused with a reason the transport can count and log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg

from avl.records import Position

log = logging.getLogger("avl.ingest")

# Bits of positions.flags.
FLAG_INVALID_FIX = 1  # the device said its fix is not valid
FLAG_CRC_MISMATCH = 2  # the frame's CRC/checksum did not match (decoded anyway, see README)
FLAG_NULL_ISLAND = 4  # 0,0 coordinates: a receiver with no fix that claims one
FLAG_BUFFERED = 8  # arrived more than BUFFERED_AFTER after its fix: stored-and-forwarded data
FLAG_VALUE_DROPPED = 16  # a field was out of its column's range and was dropped (kept in attributes)

BUFFERED_AFTER = timedelta(minutes=5)
FUTURE_LIMIT = timedelta(days=1)

_INT2 = 32767
_INT4 = 2_147_483_647
_INT8 = 9_223_372_036_854_775_807


@dataclass(slots=True)
class Batch:
    """Rows for one write. Tuples are in the column order of the writer's COPY/INSERTs."""

    positions: list[tuple[Any, ...]] = field(default_factory=list)
    events: list[tuple[Any, ...]] = field(default_factory=list)
    quarantine: list[tuple[Any, ...]] = field(default_factory=list)
    unknown: list[tuple[Any, ...]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.positions) + len(self.events) + len(self.quarantine) + len(self.unknown)

    def extend(self, other: Batch) -> None:
        self.positions.extend(other.positions)
        self.events.extend(other.events)
        self.quarantine.extend(other.quarantine)
        self.unknown.extend(other.unknown)


def _clean(value: Any) -> Any:
    """JSON-safe: no NaN/inf (jsonb refuses them), no NUL characters (text refuses them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {str(k).replace("\x00", ""): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if value is None or isinstance(value, bool | int):
        return value
    return str(value)


def attributes_json(attributes: dict[str, Any]) -> str:
    try:
        return json.dumps(attributes, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError):
        return json.dumps(_clean(attributes), allow_nan=False, separators=(",", ":"), ensure_ascii=False)


def _bounded(value: int | None, limit: int, name: str, attributes: dict[str, Any]) -> tuple[int | None, bool]:
    if value is None or -limit - 1 <= value <= limit:
        return value, False
    attributes[name] = value
    return None, True


def _finite(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


def _text(value: str | None) -> str | None:
    return None if value is None else value.replace("\x00", "")


def route(p: Position, device_id: int, received_at: datetime, oldest: datetime, batch: Batch) -> str:
    """Adds ``p`` to ``batch`` as a position, a status event or a quarantined record.

    Returns where it went: "position", "event" or "quarantine:<reason>".
    """
    attributes = dict(p.attributes)
    if not p.located:
        kind = "alarm" if p.alarm else "status"
        power, _ = _bounded(p.power_mv, _INT4, "power_mv", attributes)
        battery, _ = _bounded(p.battery_mv, _INT4, "battery_mv", attributes)
        batch.events.append((device_id, p.fix_time, received_at, kind, _text(p.alarm), p.ignition, power, battery,
                             attributes_json(attributes), p.raw or None))
        return "event"
    lat, lon = p.latitude, p.longitude
    assert lat is not None and lon is not None
    reason = None
    if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
        reason = "coordinates"
    elif p.fix_time > received_at + FUTURE_LIMIT:
        reason = "future"
    elif p.fix_time < oldest:
        reason = "too_old"
    if reason is not None:
        record = {"protocol": p.protocol, "valid": p.valid, "speed_kmh": _finite(p.speed_kmh), "course": _finite(p.course),
                  "satellites": p.satellites, "ignition": p.ignition, "alarm": p.alarm, "attributes": attributes}
        batch.quarantine.append((device_id, p.fix_time, received_at, reason,
                                 lat if math.isfinite(lat) else None, lon if math.isfinite(lon) else None,
                                 attributes_json(record), p.raw or None))
        return f"quarantine:{reason}"
    flags = 0
    if not p.valid:
        flags |= FLAG_INVALID_FIX
    if attributes.get("crcMismatch"):
        flags |= FLAG_CRC_MISMATCH
    if lat == 0 and lon == 0:
        flags |= FLAG_NULL_ISLAND
    if received_at - p.fix_time > BUFFERED_AFTER:
        flags |= FLAG_BUFFERED
    satellites, d1 = _bounded(p.satellites, _INT2, "satellites", attributes)
    power, d2 = _bounded(p.power_mv, _INT4, "power_mv", attributes)
    battery, d3 = _bounded(p.battery_mv, _INT4, "battery_mv", attributes)
    odometer, d4 = _bounded(p.odometer_m, _INT8, "odometer_m", attributes)
    if d1 or d2 or d3 or d4:
        flags |= FLAG_VALUE_DROPPED
    batch.positions.append((
        device_id, p.fix_time, received_at, p.valid, lat, lon, _finite(p.speed_kmh), _finite(p.course),
        _finite(p.altitude_m), satellites, _finite(p.hdop), p.ignition, power, battery, odometer, _text(p.alarm),
        flags, p.protocol, attributes_json(attributes), p.raw or None,
    ))
    return "position"


class DeviceDirectory:
    """Device identifier (as the terminal sends it) and protocol -> device id.

    Loaded whole at start and refreshed incrementally, so registered devices are known
    even while the database is unreachable (their reports are then spooled). A miss is
    looked up once and remembered for ``negative_ttl_s`` so a newly registered device is
    picked up quickly while a scanner's random identifiers cost one query each.
    """

    def __init__(self, database_url: str, negative_ttl_s: float = 30.0) -> None:
        self.database_url = database_url
        self.negative_ttl_s = negative_ttl_s
        self._ids: dict[tuple[str, str], int] = {}
        self._misses: dict[tuple[str, str], float] = {}
        self._max_id = 0
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        await self._fetch("SELECT identifier, protocol, id FROM devices WHERE id > %s", (self._max_id,))

    async def _fetch(self, sql: str, params: tuple[Any, ...]) -> list[tuple[str, str, int]]:
        async with await psycopg.AsyncConnection.connect(self.database_url, autocommit=True, connect_timeout=5) as conn:
            cur = await conn.execute(sql, params)
            rows = await cur.fetchall()
        for identifier, protocol, device_id in rows:
            self._ids[(identifier, protocol)] = device_id
            self._misses.pop((identifier, protocol), None)
            self._max_id = max(self._max_id, device_id)
        return rows

    def cached(self, identifier: str, protocol: str) -> int | None:
        return self._ids.get((identifier, protocol))

    async def lookup(self, identifier: str, protocol: str) -> int | None:
        key = (identifier, protocol)
        found = self._ids.get(key)
        if found is not None:
            return found
        missed = self._misses.get(key)
        if missed is not None and time.monotonic() - missed < self.negative_ttl_s:
            return None
        async with self._lock:
            try:
                rows = await self._fetch("SELECT identifier, protocol, id FROM devices WHERE identifier = %s AND protocol = %s",
                                         (identifier, protocol))
            except psycopg.Error as exc:
                log.warning("device lookup for %s (%s) failed, database unreachable: %s", identifier, protocol, exc)
                return None
        if not rows:
            if len(self._misses) > 100_000:
                self._misses.clear()
            self._misses[key] = time.monotonic()
            return None
        return int(rows[0][2])

    async def refresh_forever(self, every_s: float = 30.0) -> None:
        """Keeps the directory current: a registration is picked up at once (NOTIFY avl_devices),
        and a full incremental refresh runs every ``every_s`` in case a notice was missed."""
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.database_url, autocommit=True,
                                                                 connect_timeout=5) as conn:
                    await conn.execute("LISTEN avl_devices")
                    await self.load()
                    while True:
                        async for notice in conn.notifies(timeout=every_s):
                            self._registered(notice.payload)
                        await self.load()
            except psycopg.Error as exc:
                log.debug("device directory refresh failed: %s", exc)
                await asyncio.sleep(min(every_s, 5.0))

    def _registered(self, payload: str) -> None:
        try:
            data = json.loads(payload)
            key = (str(data["identifier"]), str(data["protocol"]))
            self._ids[key] = int(data["id"])
        except (ValueError, KeyError, TypeError):
            return
        self._misses.pop(key, None)
        self._max_id = max(self._max_id, int(data["id"]))
