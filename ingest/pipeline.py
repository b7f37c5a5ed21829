"""From decoded records to rows: identify the device, validate, flag, and route each
record to positions, device events or quarantine. Nothing is silently dropped: every
record ends in a table or is refused with a reason the transport can count and log.
A report that would need an impossible speed from the device's trusted fixes is kept,
acknowledged and quarantined (``implausible_jump``), not trusted, unless it completes a run of
reports that agree with each other: those replace the trusted fixes (``JumpCheck``).
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg

from avl.records import Position
from ingest.sources import OncePer

log = logging.getLogger("avl.ingest")

# Bits of positions.flags.
FLAG_INVALID_FIX = 1  # the device said its fix is not valid
FLAG_CRC_MISMATCH = 2  # the frame's CRC/checksum did not match (decoded anyway, see README)
FLAG_NULL_ISLAND = 4  # 0,0 coordinates: a receiver with no fix that claims one
FLAG_BUFFERED = 8  # arrived more than BUFFERED_AFTER after its fix: stored-and-forwarded data
FLAG_VALUE_DROPPED = 16  # a field was out of its column's range and was dropped (kept in attributes)

BUFFERED_AFTER = timedelta(minutes=5)
FUTURE_LIMIT = timedelta(days=1)

EARTH_RADIUS_M = 6_371_008.8
_M_PER_DEGREE = EARTH_RADIUS_M * math.pi / 180
# A jump must exceed this on top of what the speed allows: GPS error and cell-based fixes
# put consecutive reports of a parked vehicle hundreds of metres apart.
JUMP_TOLERANCE_M = 1000.0

_INT2 = 32767
_INT4 = 2_147_483_647
_INT8 = 9_223_372_036_854_775_807
# As the standard library did before orjson: datetimes and dataclasses become their str(), via _clean.
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


@dataclass(slots=True)
class Batch:
    """Rows for one write. Tuples are in the column order of the writer's COPY/INSERTs.

    ``untimed``: rows of reports that have no time of their own (the decoder gave them the frame's
    arrival time), each as ``(table, row, frame digest)`` with ``table`` one of "position", "event",
    "quarantine". A device that resends such a frame (it got no ACK) would otherwise store it again
    under a new arrival time; the writer gives each the time of its frame's first arrival within
    ``AVL_DUPLICATE_WINDOW_S`` (table ``recent_frames``), so the unique keys absorb the resend.
    """

    positions: list[tuple[Any, ...]] = field(default_factory=list)
    events: list[tuple[Any, ...]] = field(default_factory=list)
    quarantine: list[tuple[Any, ...]] = field(default_factory=list)
    unknown: list[tuple[Any, ...]] = field(default_factory=list)
    untimed: list[tuple[str, tuple[Any, ...], bytes]] = field(default_factory=list)

    def __len__(self) -> int:
        return (len(self.positions) + len(self.events) + len(self.quarantine) + len(self.unknown)
                + len(self.untimed))

    def extend(self, other: Batch) -> None:
        self.positions.extend(other.positions)
        self.events.extend(other.events)
        self.quarantine.extend(other.quarantine)
        self.unknown.extend(other.unknown)
        self.untimed.extend(other.untimed)


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
    """JSON text for a jsonb column (orjson, compiled: this runs once per report). What orjson cannot
    take (bytes, big integers, non-string keys, datetimes...) or jsonb would refuse (NUL characters)
    goes through ``_clean`` first; NaN and infinities become null either way."""
    try:
        text = orjson.dumps(attributes, option=_ORJSON_OPTIONS).decode()
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(_clean(attributes), allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    if "\\u0000" in text:
        return json.dumps(_clean(attributes), allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    return text


def _fits(value: int | None, limit: int) -> bool:
    return value is None or -limit - 1 <= value <= limit


def _bounded(value: int | None, limit: int, name: str, attributes: dict[str, Any]) -> tuple[int | None, bool]:
    if value is None or -limit - 1 <= value <= limit:
        return value, False
    attributes[name] = value
    return None, True


def _finite(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


def _text(value: str | None) -> str | None:
    return None if value is None else value.replace("\x00", "")


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine) in metres."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    a = (math.sin((phi2 - phi1) / 2) ** 2
         + math.cos(phi1) * math.cos(phi2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2)
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


Fix = tuple[float, float, float]  # fix time (epoch seconds), latitude, longitude


@dataclass(slots=True)
class Jump:
    """The jump check's word on a fix that disagrees with the device's trusted fixes. ``trusted``
    False: quarantine it, ``record`` says why; True: it completed a run of reports that agree with
    each other and they are trusted instead (re-anchored), ``record`` says what was given up."""

    trusted: bool
    record: dict[str, Any]


@dataclass(slots=True)
class _Run:
    """Consecutive reports of one device that agree with each other but not with its trusted fixes."""

    fixes: list[Fix]  # the latest few, by fix time
    reports: int  # distinct fix times in the run
    first_t: float
    last_t: float


class JumpCheck:
    """Implausible jumps: a fix that would need more than ``max_speed_kmh`` (plus
    ``JUMP_TOLERANCE_M``) to be reached from the device's trusted fixes nearest to it in fix
    time, the one before and the one after, is not trusted.

    Comparing by fix time against the neighbours in time keeps buffered and out-of-order data
    normal, and the distance allowed grows with the gap, so the first fix after a long silence
    may be far away. Trusted fixes: valid ones that passed (a few per device, in memory), and at
    start each device's latest position. Coordinates 0,0 (flagged already) are not compared.

    Re-anchoring: a wrong trusted fix (a forged report after a silence, a bad fix, a stale latest
    position at start) would otherwise quarantine the device's own reports until the gap allows
    the distance. So valid fixes that fail are grouped into runs of fixes plausible among
    themselves (by the same rule); when ``REANCHOR_REPORTS`` consecutive reports form one run
    spanning at least ``REANCHOR_SPAN_S`` of fix time, the run becomes the trusted fixes and its
    last report is kept as a position. Any valid fix that passes against the trusted fixes ends
    the runs: a lone outlier in a live track (or a forger's burst shorter than the rule) stays
    quarantined. A report of another run in between does not end a run, so an outlier cannot
    delay the recovery.
    """

    KEEP = 3  # trusted fixes kept per device
    REANCHOR_REPORTS = 3  # consecutive agreeing reports (distinct fix times) that replace the trusted fixes
    REANCHOR_SPAN_S = 30.0  # ... spanning at least this much fix time (a burst or retransmissions are not enough)
    RUNS = 3  # runs kept per device

    def __init__(self, max_speed_kmh: float, tolerance_m: float = JUMP_TOLERANCE_M) -> None:
        self.max_speed_mps = max_speed_kmh / 3.6
        self.tolerance_m = tolerance_m
        self._fixes: dict[int, list[Fix]] = {}
        self._runs: dict[int, list[_Run]] = {}
        self._logged = OncePer()

    async def load(self, database_url: str) -> int:
        """Seeds each device's latest valid position; returns how many."""
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True, connect_timeout=5) as conn:
            cur = await conn.execute("SELECT device_id, fix_time, latitude, longitude FROM latest_positions"
                                     " WHERE valid AND NOT (latitude = 0 AND longitude = 0)")
            rows = await cur.fetchall()
        for device_id, fix_time, lat, lon in rows:
            _keep(self._fixes.setdefault(int(device_id), []), (fix_time.timestamp(), float(lat), float(lon)), self.KEEP)
        return len(rows)

    def assess(self, device_id: int, fix_time: datetime, lat: float, lon: float, valid: bool,
               device: str = "") -> Jump | None:
        """None when the fix agrees with the device's trusted fixes (a valid one becomes trusted),
        else what to do with it (see ``Jump``). ``device`` names it in the log."""
        if lat == 0 and lon == 0:
            return None
        fix = (fix_time.timestamp(), lat, lon)
        fixes = self._fixes.get(device_id)
        jump = self._implausible(fixes, fix) if fixes else None
        if jump is None:
            if valid:
                _keep(self._fixes.setdefault(device_id, []), fix, self.KEEP)
                if device_id in self._runs:
                    del self._runs[device_id]  # the trusted fixes are confirmed: the runs were outliers
            return None
        if not valid:
            return Jump(False, jump)
        run = self._join(device_id, fix)
        if run.reports < self.REANCHOR_REPORTS or run.last_t - run.first_t < self.REANCHOR_SPAN_S:
            jump["agreeing_reports"] = run.reports
            return Jump(False, jump)
        self._fixes[device_id] = run.fixes
        del self._runs[device_id]
        record = {"reports": run.reports, "span_s": run.last_t - run.first_t, "given_up": jump["from"],
                  "distance_m": jump["distance_m"]}
        if self._logged(f"reanchor {device_id}"):
            log.warning("device %s (id %s): %s reports over %.0f s agree with each other but not with its trusted fix"
                        " of %s at %.5f,%.5f (%.0f km away); trusting them instead (logged once per %.0f s per"
                        " device)", device or "?", device_id, run.reports, record["span_s"], jump["from"]["fix_time"],
                        jump["from"]["latitude"], jump["from"]["longitude"], jump["distance_m"] / 1000,
                        self._logged.period_s)
        return Jump(True, record)

    def _implausible(self, fixes: list[Fix], fix: Fix) -> dict[str, Any] | None:
        """Why ``fix`` cannot follow or precede its neighbours in fix time among ``fixes``, or None."""
        t, lat, lon = fix
        after = len(fixes) if t > fixes[-1][0] else bisect.bisect_left(fixes, t, key=_fix_time)
        for i in (after - 1, after):
            if not 0 <= i < len(fixes):
                continue
            t0, lat0, lon0 = fixes[i]
            gap_s = abs(t - t0)
            allowed_m = self.tolerance_m + self.max_speed_mps * gap_s
            # Along the meridian, then along the parallel: never shorter than the great circle, and cheap.
            if (abs(lat - lat0) + abs(lon - lon0)) * _M_PER_DEGREE <= allowed_m:
                continue
            moved_m = distance_m(lat0, lon0, lat, lon)
            if moved_m > allowed_m:
                return {"speed_kmh": round(moved_m / gap_s * 3.6, 1) if gap_s else None,
                        "distance_m": round(moved_m), "gap_s": gap_s,
                        "from": {"fix_time": datetime.fromtimestamp(t0, UTC).isoformat(),
                                 "latitude": lat0, "longitude": lon0}}
        return None

    def _join(self, device_id: int, fix: Fix) -> _Run:
        """The run ``fix`` agrees with, now including it, or a new run of its own."""
        runs = self._runs.setdefault(device_id, [])
        t = fix[0]
        for run in runs:
            if self._implausible(run.fixes, fix) is None:
                if all(f[0] != t for f in run.fixes):  # a retransmission is not another report
                    run.reports += 1
                    run.first_t, run.last_t = min(run.first_t, t), max(run.last_t, t)
                    _keep(run.fixes, fix, self.KEEP)
                return run
        run = _Run([fix], 1, t, t)
        runs.append(run)
        if len(runs) > self.RUNS:
            del runs[0]
        return run


def _keep(fixes: list[Fix], fix: Fix, keep: int) -> None:
    """Adds ``fix`` in fix-time order, keeping the latest ``keep``."""
    if not fixes or fixes[-1][0] < fix[0]:
        fixes.append(fix)  # the usual case: the newest report
    else:
        bisect.insort(fixes, fix, key=_fix_time)
    if len(fixes) > keep:
        del fixes[0]


def _fix_time(fix: Fix) -> float:
    return fix[0]


def route(p: Position, device_id: int, received_at: datetime, oldest: datetime, batch: Batch,
          jumps: JumpCheck | None = None, frame_digest: bytes | None = None) -> str:
    """Adds ``p`` to ``batch`` as a position, a status event or a quarantined record.

    ``frame_digest``: ``p`` has no time of its own (its fix time is its arrival time) and this
    identifies the frame (and the record in it) that carried it; the row goes to ``batch.untimed``,
    where the writer recognises a resend of the same frame (see ``Batch``).

    Returns where it went: "position", "position:reanchored" (the jump check now trusts the run of
    reports it completes; see ``JumpCheck``), "event" or "quarantine:<reason>".
    """
    attributes = p.attributes  # copied only when a value out of its column's range moves into it
    lat, lon = p.latitude, p.longitude
    if lat is None or lon is None:
        power, battery = p.power_mv, p.battery_mv
        if not (_fits(power, _INT4) and _fits(battery, _INT4)):
            attributes = dict(attributes)
            power, _ = _bounded(power, _INT4, "power_mv", attributes)
            battery, _ = _bounded(battery, _INT4, "battery_mv", attributes)
        _add(batch, batch.events, "event", frame_digest,
             (device_id, p.fix_time, received_at, "alarm" if p.alarm else "status", _text(p.alarm), p.ignition,
              power, battery, attributes_json(attributes), p.raw or None))
        return "event"
    fix_time = p.fix_time
    reason = None
    jump = None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):  # NaN and infinities fail these too
        reason = "coordinates"
    elif fix_time > received_at + FUTURE_LIMIT:
        reason = "future"
    elif fix_time < oldest:
        reason = "too_old"
    elif jumps is not None and (jump := jumps.assess(device_id, fix_time, lat, lon, p.valid, p.device)) is not None:
        reason = None if jump.trusted else "implausible_jump"
    if reason is not None:
        record = {"protocol": p.protocol, "valid": p.valid, "speed_kmh": _finite(p.speed_kmh), "course": _finite(p.course),
                  "satellites": p.satellites, "ignition": p.ignition, "alarm": p.alarm, "attributes": attributes}
        if jump is not None:
            record["jump"] = jump.record
        _add(batch, batch.quarantine, "quarantine", frame_digest,
             (device_id, fix_time, received_at, reason, lat if math.isfinite(lat) else None,
              lon if math.isfinite(lon) else None, attributes_json(record), p.raw or None))
        return f"quarantine:{reason}"
    flags = 0 if p.valid else FLAG_INVALID_FIX
    if attributes.get("crcMismatch"):
        flags |= FLAG_CRC_MISMATCH
    if lat == 0 and lon == 0:
        flags |= FLAG_NULL_ISLAND
    if received_at - fix_time > BUFFERED_AFTER:
        flags |= FLAG_BUFFERED
    satellites, power, battery, odometer = p.satellites, p.power_mv, p.battery_mv, p.odometer_m
    if not (_fits(satellites, _INT2) and _fits(power, _INT4) and _fits(battery, _INT4) and _fits(odometer, _INT8)):
        attributes = dict(attributes)
        satellites, _ = _bounded(satellites, _INT2, "satellites", attributes)
        power, _ = _bounded(power, _INT4, "power_mv", attributes)
        battery, _ = _bounded(battery, _INT4, "battery_mv", attributes)
        odometer, _ = _bounded(odometer, _INT8, "odometer_m", attributes)
        flags |= FLAG_VALUE_DROPPED
    _add(batch, batch.positions, "position", frame_digest, (
        device_id, fix_time, received_at, p.valid, lat, lon, _finite(p.speed_kmh), _finite(p.course),
        _finite(p.altitude_m), satellites, _finite(p.hdop), p.ignition, power, battery, odometer, _text(p.alarm),
        flags, p.protocol, attributes_json(attributes), p.raw or None,
    ))
    return "position:reanchored" if jump is not None else "position"


def _add(batch: Batch, rows: list[tuple[Any, ...]], table: str, frame_digest: bytes | None, row: tuple[Any, ...]) -> None:
    if frame_digest is None:
        rows.append(row)
    else:
        batch.untimed.append((table, row, frame_digest))


# Keys of ``devices.options`` that are not a decoder's: diagnostics' SMS command password. Migration
# 0016's notice leaves the same keys out.
_NOT_DECODER_OPTIONS = ("sms_password",)
_DEVICES = "SELECT identifier, protocol, id, password_sha256, options FROM devices"
# What a device without options decodes with: shared, never written (decoders only read options).
NO_OPTIONS: dict[str, Any] = {}


def decoder_options(value: Any) -> dict[str, Any]:
    """The decoder options among a device's ``options`` (``NO_OPTIONS`` when there are none)."""
    if not isinstance(value, dict):
        return NO_OPTIONS
    found = {key: v for key, v in value.items() if key not in _NOT_DECODER_OPTIONS}
    return found or NO_OPTIONS


class DeviceDirectory:
    """Device identifier (as the terminal sends it) and protocol -> device id, and the
    devices' password hashes (``devices.password_sha256``) and decoder options
    (``devices.options``, which intake puts in the session of the device's connection).

    Loaded whole at start and refreshed incrementally, so registered devices are known
    even while the database is unreachable (their reports are then spooled). A miss is
    looked up once and remembered for ``negative_ttl_s`` so a newly registered device is
    picked up quickly while a scanner's random identifiers cost one query each. Passwords
    and options are reloaded whole on each refresh (only the devices that have some) and
    follow each change notice (migration 0016 sends the options with it).
    """

    def __init__(self, database_url: str, negative_ttl_s: float = 30.0) -> None:
        self.database_url = database_url
        self.negative_ttl_s = negative_ttl_s
        self._ids: dict[tuple[str, str], int] = {}
        self._passwords: dict[int, bytes] = {}
        self._options: dict[int, dict[str, Any]] = {}
        self._misses: dict[tuple[str, str], float] = {}
        self._max_id = 0
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        """New devices since the last load, and every password and every device's options (a change
        to one is a notice, but a notice can be missed)."""
        async with await psycopg.AsyncConnection.connect(self.database_url, autocommit=True, connect_timeout=5) as conn:
            cur = await conn.execute(_DEVICES + " WHERE id > %s", (self._max_id,))
            self._add(await cur.fetchall())
            cur = await conn.execute("SELECT id, password_sha256 FROM devices WHERE password_sha256 IS NOT NULL")
            self._passwords = {int(device_id): bytes(digest) for device_id, digest in await cur.fetchall()}
            cur = await conn.execute("SELECT id, options FROM devices WHERE options <> '{}'::jsonb")
            rows = await cur.fetchall()
        options: dict[int, dict[str, Any]] = {}
        for device_id, value in rows:
            found = decoder_options(value)
            before = self._options.get(device_id)
            if found:
                options[device_id] = before if before == found else found  # unchanged: the same object
        self._options = options

    def _add(self, rows: list[tuple[Any, ...]]) -> None:
        for identifier, protocol, device_id, digest, found in rows:
            self._set_password(device_id, digest)
            self._set_options(device_id, found)
            self._ids[(identifier, protocol)] = device_id
            self._misses.pop((identifier, protocol), None)
            self._max_id = max(self._max_id, device_id)

    def cached(self, identifier: str, protocol: str) -> int | None:
        return self._ids.get((identifier, protocol))

    def password_sha256(self, device_id: int) -> bytes | None:
        """The SHA-256 of the device's password, or None when it needs none."""
        return self._passwords.get(device_id)

    def options(self, device_id: int) -> dict[str, Any]:
        """The device's decoder options (``devices.options``); the same object until they change."""
        return self._options.get(device_id, NO_OPTIONS)

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
                async with await psycopg.AsyncConnection.connect(self.database_url, autocommit=True,
                                                                 connect_timeout=5) as conn:
                    cur = await conn.execute(_DEVICES + " WHERE identifier = %s AND protocol = %s", (identifier, protocol))
                    rows = await cur.fetchall()
                self._add(rows)
            except psycopg.Error as exc:
                log.warning("device lookup for %s (%s) failed, database unreachable: %s", identifier, protocol, exc)
                return None
        if not rows:
            if len(self._misses) > 100_000:
                self._misses.clear()
            self._misses[key] = time.monotonic()
            return None
        return int(rows[0][2])

    def _set_password(self, device_id: int, digest: bytes | None) -> None:
        if digest:
            self._passwords[device_id] = bytes(digest)
        else:
            self._passwords.pop(device_id, None)

    def _set_options(self, device_id: int, value: Any) -> None:
        found = decoder_options(value)
        if not found:
            self._options.pop(device_id, None)
        elif found != self._options.get(device_id):  # unchanged options stay the same object
            self._options[device_id] = found

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
            device_id = int(data["id"])
            digest = bytes.fromhex(data["password_sha256"]) if data.get("password_sha256") else None
        except (ValueError, KeyError, TypeError):
            return
        # The password and the options first: a report must not find the device before them.
        self._set_password(device_id, digest)
        if "options" in data:
            self._set_options(device_id, data["options"])
        self._ids[key] = device_id
        self._misses.pop(key, None)
        self._max_id = max(self._max_id, int(data["id"]))
