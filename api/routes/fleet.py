"""The fleet client API: vehicles with their latest position and status, history (with
simplification for drawing), trips and stops, distance per day, zones (geofences) with their
events and alerts, exports of the location reports, and "locate now".

Tenancy: a client sees its own account only; every query filters by ``User.account_scope()``
and another account's vehicle, zone, alert or request answers 404 like a missing one. Support
and admin see every account (``account_id`` narrows a listing). A vehicle is addressed by its
terminal's device id: the id every position, event and export carries. After its terminal was
replaced (``POST /api/v1/installers/replacements``) the vehicle is addressed by the new
terminal's id, and its latest position, history, trips, distance and exports span both
terminals: the old one's reports before the swap, the new one's after. The old terminal leaves
the account (its id answers 404 to clients).

Suspended accounts (non-payment) can log in and see why, but get no tracking data: the
vehicle list shows ``account_blocked`` without positions, and history, trips, stops,
distance, zone events and locate-now answer 403 ``account_suspended``. Exports stay
available: they are the customer's evidence in a billing dispute. Zones can still be edited.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from pydantic import BaseModel, ConfigDict, Field

from api import exports, geo
from api.deps import ApiError, Db, ReadDb, User, device_in_scope, live_data_allowed, not_found, require
from api.fleet_snapshot import (
    COMPACT_FIELDS,
    POSITION_SQL,
    STATUS_INTERVALS,
    VEHICLE_HEAD_SQL,
    FleetSnapshots,
    Rendered,
    if_none_match_matches,
    with_times,
)
from api.routes.billing import api_error, call, settings_of
from avl import billing
from diagnostics.commands import position_command

router = APIRouter(prefix="/api/v1", tags=["fleet"])

FleetUser = Annotated[User, require("client", "support")]

HISTORY_MAX_DAYS = 31
EXPORT_MAX_DAYS = 93
EVALUATE_MAX_DAYS = 7
HISTORY_DEFAULT_POINTS = 5_000
HISTORY_MAX_POINTS = 50_000
EXPORT_BATCH_ROWS = 2_000
LOCATE_REUSE_S = 120      # a pending request younger than this is returned instead of a new one (billed once)
# The command asking each protocol family for a position now (the diagnostics status commands,
# except where the family has a dedicated one: Teltonika "getrecord" makes a record and sends it
# over GPRS; Concox "WHERE#" answers with the coordinates).
USABLE_FIX = "valid AND flags & 5 = 0"  # flags: 1 invalid fix, 4 coordinates 0,0

DeviceId = Annotated[int, Path(description="The vehicle's terminal (device) id", examples=[42])]


# Models ------------------------------------------------------------------------------------


class Status(StrEnum):
    online = "online"
    gps_not_updated = "gps_not_updated"
    offline = "offline"
    account_blocked = "account_blocked"


class LatestPosition(BaseModel):
    time: datetime = Field(description="fix time (UTC)")
    received_at: datetime
    valid: bool
    latitude: float
    longitude: float
    speed_kmh: float | None = None
    course: float | None = None
    altitude_m: float | None = None
    satellites: int | None = None
    ignition: bool | None = None
    power_mv: int | None = None
    battery_mv: int | None = None
    odometer_m: int | None = None
    alarm: str | None = None


class Vehicle(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": 42, "identifier": "356307042441013", "protocol": "teltonika", "account_id": 7, "vehicle_id": 40,
        "plate": "AB123CD", "vehicle_kind": "van", "description": None, "report_interval_s": 30,
        "status": "online", "status_detail": "reporting with a fresh GPS fix", "last_report_at": "2026-11-24T10:00:05Z",
        "position": {"time": "2026-11-24T10:00:00Z", "received_at": "2026-11-24T10:00:05Z", "valid": True,
                     "latitude": 10.4912, "longitude": -66.8791, "speed_kmh": 42.0, "course": 90.0,
                     "altitude_m": 910.0, "satellites": 9, "ignition": True, "power_mv": 12600,
                     "battery_mv": 4100, "odometer_m": 123456, "alarm": None}}]})

    id: int = Field(description="device id (addresses the vehicle in this API)")
    identifier: str = Field(description="IMEI / ESN / vendor id of the terminal")
    protocol: str
    account_id: int | None
    vehicle_id: int | None
    plate: str | None
    vehicle_kind: str | None
    description: str | None
    report_interval_s: int
    status: Status = Field(description=(
        f"account_blocked: the account is suspended or retired, a pre-paid account has no balance, or the terminal's "
        f"line is suspended; offline: no report (of any kind) for {STATUS_INTERVALS} report intervals, or never; "
        f"gps_not_updated: reports arrive, but the newest has no valid fix or its fix is older than "
        f"{STATUS_INTERVALS} report intervals; online: otherwise"))
    status_detail: str
    last_report_at: datetime | None = Field(description="arrival of the newest report of any kind")
    position: LatestPosition | None = Field(description="latest report; null when none, or no live data (suspended)")


class HistoryPoint(BaseModel):
    time: datetime
    latitude: float
    longitude: float
    valid: bool
    speed_kmh: float | None = None
    course: float | None = None
    altitude_m: float | None = None
    satellites: int | None = None
    ignition: bool | None = None


class History(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "device_id": 42, "from": "2026-11-24T00:00:00Z", "to": "2026-11-25T00:00:00Z", "total": 2880,
        "count": 2, "simplified": True, "tolerance_m": 10.0, "truncated": False, "next_from": None,
        "points": [{"time": "2026-11-24T06:00:00Z", "latitude": 10.49, "longitude": -66.88, "valid": True,
                    "speed_kmh": 0.0, "course": 0.0, "altitude_m": 900.0, "satellites": 9, "ignition": True}]}]})

    device_id: int
    from_: datetime = Field(alias="from")
    to: datetime
    total: int = Field(description="reports in the period (valid fixes only when simplified)")
    count: int
    simplified: bool
    tolerance_m: float | None = Field(description="Douglas-Peucker tolerance actually used (raised to meet max_points)")
    truncated: bool = Field(description="unsimplified and more than max_points: the first max_points are returned")
    next_from: datetime | None = Field(description="when truncated: the `from` of the next page")
    points: list[HistoryPoint]


class Place(BaseModel):
    time: datetime
    latitude: float
    longitude: float


class TripOut(BaseModel):
    start: Place
    end: Place
    duration_s: float
    distance_m: float
    max_speed_kmh: float | None
    avg_speed_kmh: float | None
    ongoing: bool = Field(description="the period ends before the trip did")


class StopOut(BaseModel):
    start: datetime
    end: datetime
    duration_s: float
    latitude: float
    longitude: float
    ignition_off: bool
    ongoing: bool = Field(description="the period ends while still stopped")


class TripsAndStops(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "device_id": 42, "from": "2026-11-24T00:00:00Z", "to": "2026-11-25T00:00:00Z",
        "trips": [{"start": {"time": "2026-11-24T08:00:00Z", "latitude": 10.48, "longitude": -66.90},
                   "end": {"time": "2026-11-24T08:25:00Z", "latitude": 10.50, "longitude": -66.85},
                   "duration_s": 1500, "distance_m": 8200.5, "max_speed_kmh": 61.0, "avg_speed_kmh": 19.7,
                   "ongoing": False}],
        "stops": [{"start": "2026-11-24T08:25:00Z", "end": "2026-11-24T09:10:00Z", "duration_s": 2700,
                   "latitude": 10.50, "longitude": -66.85, "ignition_off": True, "ongoing": False}]}]})

    device_id: int
    from_: datetime = Field(alias="from")
    to: datetime
    min_stop_s: int
    trips: list[TripOut]
    stops: list[StopOut]


class DayDistance(BaseModel):
    date: date
    distance_m: float
    reports: int = Field(description="valid fixes that day")
    max_speed_kmh: float | None


class Distance(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "device_id": 42, "tz": "America/Caracas", "total_m": 15200.0,
        "days": [{"date": "2026-11-24", "distance_m": 15200.0, "reports": 2880, "max_speed_kmh": 64.0}]}]})

    device_id: int
    tz: str
    total_m: float
    days: list[DayDistance]


class ZoneKind(StrEnum):
    allowed = "allowed"
    forbidden = "forbidden"


GEOMETRY_EXAMPLE: dict[str, Any] = {"type": "Polygon", "coordinates": [[[-66.91, 10.50], [-66.89, 10.50], [-66.89, 10.52],
                                                        [-66.91, 10.52], [-66.91, 10.50]]]}


class GeofenceIn(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "name": "Petare (no autorizado)", "kind": "forbidden", "dwell_s": None, "geometry": GEOMETRY_EXAMPLE}]})

    name: str = Field(min_length=1, max_length=200)
    kind: ZoneKind = ZoneKind.forbidden
    geometry: dict[str, Any] = Field(description="GeoJSON Polygon or MultiPolygon, [longitude, latitude] WGS84")
    dwell_s: int | None = Field(default=None, gt=0, le=30 * 86400,
                                description="raise a dwell event after this long inside")
    account_id: int | None = Field(default=None, description="staff only: the account the zone belongs to")


class Geofence(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": 3, "account_id": 7, "name": "Petare (no autorizado)", "kind": "forbidden", "dwell_s": None,
        "geometry": GEOMETRY_EXAMPLE, "bbox": [-66.91, 10.50, -66.89, 10.52], "created_at": "2026-11-24T10:00:00Z"}]})

    id: int
    account_id: int
    name: str
    kind: ZoneKind
    dwell_s: int | None
    geometry: dict[str, Any]
    bbox: list[float] = Field(description="[min_lon, min_lat, max_lon, max_lat]")
    created_at: datetime


class Alert(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": 9, "account_id": 7, "device_id": 42, "plate": "AB123CD", "geofence_id": 3,
        "geofence_name": "Petare (no autorizado)", "kind": "forbidden_enter", "time": "2026-11-24T10:12:30Z",
        "latitude": 10.51, "longitude": -66.90, "detected_at": "2026-11-24T10:12:41Z", "acknowledged_at": None,
        "message": "AB123CD entered the forbidden zone 'Petare (no autorizado)'"}]})

    id: int
    account_id: int
    device_id: int
    plate: str | None
    geofence_id: int | None = Field(description="null once the zone was deleted")
    geofence_name: str
    kind: str = Field(description="forbidden_enter (desvío a una localidad no autorizada) or allowed_exit")
    time: datetime = Field(description="fix time of the report that raised it")
    latitude: float
    longitude: float
    detected_at: datetime
    acknowledged_at: datetime | None
    message: str


class ZoneEventOut(BaseModel):
    geofence_id: int
    geofence_name: str
    zone_kind: ZoneKind
    event: str = Field(description="enter | exit | dwell")
    time: datetime
    latitude: float
    longitude: float
    duration_s: float | None = Field(description="exit: time inside; dwell: time inside when raised")


class ZoneRef(BaseModel):
    geofence_id: int
    geofence_name: str
    zone_kind: ZoneKind


class ZoneEvents(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "device_id": 42, "from": "2026-11-24T00:00:00Z", "to": "2026-11-25T00:00:00Z", "inside_at_start": [],
        "events": [{"geofence_id": 3, "geofence_name": "Petare (no autorizado)", "zone_kind": "forbidden",
                    "event": "enter", "time": "2026-11-24T10:12:30Z", "latitude": 10.51, "longitude": -66.90,
                    "duration_s": None}], "alerts": []}]})

    device_id: int
    from_: datetime = Field(alias="from")
    to: datetime
    inside_at_start: list[ZoneRef]
    events: list[ZoneEventOut]
    alerts: list[Alert]


class EvaluateIn(BaseModel):
    model_config = ConfigDict(populate_by_name=True, json_schema_extra={"examples": [
        {"from": "2026-11-24T00:00:00Z", "to": "2026-11-25T00:00:00Z"}]})

    from_: datetime = Field(alias="from")
    to: datetime
    account_id: int | None = Field(default=None, description="staff only: the account to evaluate")


class EvaluateOut(BaseModel):
    vehicles: int
    new_alerts: int
    alerts: list[Alert]


class LocateRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": 5, "device_id": 42, "account_id": 7, "requested_at": "2026-11-24T10:00:00Z", "channel": "sms",
        "command": "  getrecord", "sms_id": 77, "sms_status": "DELIVRD", "billable": True, "price": "1.00",
        "status": "answered", "answer_by": "2026-11-24T10:10:00Z", "delivered_at": "2026-11-24T10:00:06Z",
        "answered_at": "2026-11-24T10:00:21Z", "cancelled_at": None, "cancel_reason": None,
        "position": {"time": "2026-11-24T10:00:18Z", "received_at": "2026-11-24T10:00:21Z", "valid": True,
                     "latitude": 10.49, "longitude": -66.88, "speed_kmh": 0.0}}]})

    id: int
    device_id: int
    account_id: int
    requested_at: datetime
    channel: str = Field(description="sms: the only channel (no data-channel command path yet)")
    command: str
    sms_id: int | None
    sms_status: str | None = Field(description="the SMS outbox row's status: queued, submitted, DELIVRD, failed...")
    billable: bool = Field(description="asked by the client (support's requests are not billed)")
    price: Decimal | None = Field(description="what it costs once answered (AVL_PRICE_LOCATE when asked); charged "
                                              "once, and only when answered")
    status: str = Field(description="pending | answered (a position arrived after the SMS was delivered: billed) | "
                                    "expired (no answer by answer_by: not billed) | failed (the SMS was not delivered: "
                                    "not billed) | cancelled (the account was retired: not sent or not billed)")
    answer_by: datetime = Field(description="a position arriving later does not answer it (AVL_LOCATE_ANSWER_WINDOW_S)")
    delivered_at: datetime | None = Field(description="when answered: when the SMS was delivered (its receipt, or the "
                                                      "terminal's SMS answer)")
    answered_at: datetime | None
    cancelled_at: datetime | None
    cancel_reason: str | None
    position: LatestPosition | None = Field(description="when answered: the vehicle's latest position (not for a "
                                                         "suspended account: no live data)")


# Helpers -----------------------------------------------------------------------------------


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Times a fleet's reports can have (GPS week rollovers aside): anything else is a mistake in the request.
EARLIEST = datetime(1980, 1, 6, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


def period(start: datetime | None, end: datetime | None, max_days: int,
           default: timedelta = timedelta(days=1)) -> tuple[datetime, datetime]:
    """[from, to): default the last 24 hours (``default``); a time without a zone is UTC."""
    end = _utc(end) if end is not None else datetime.now(UTC)
    if not EARLIEST <= end <= LATEST:
        raise ApiError(422, "invalid_request", f"to: must be between {EARLIEST:%Y} and {LATEST:%Y}")
    start = _utc(start) if start is not None else end - default
    if not EARLIEST <= start <= LATEST:
        raise ApiError(422, "invalid_request", f"from: must be between {EARLIEST:%Y} and {LATEST:%Y}")
    if end <= start:
        raise ApiError(422, "invalid_request", "to: must be after from")
    if end - start > timedelta(days=max_days):
        raise ApiError(422, "invalid_request", f"to: the period is limited to {max_days} days")
    return start, end


From = Annotated[datetime | None, Query(alias="from", description="start (inclusive), ISO 8601; default: to - 24 h",
                                        examples=["2026-11-24T00:00:00Z"])]
To = Annotated[datetime | None, Query(alias="to", description="end (exclusive), ISO 8601; default: now",
                                      examples=["2026-11-25T00:00:00Z"])]


def _scope(user: User, account_id: int | None) -> int | None:
    """The account a listing is limited to: the client's own; for staff the one asked for (or all)."""
    scope = user.account_scope()
    return scope if scope is not None or user.role == "client" else account_id


def _json(text: str) -> Response:
    return Response(content=text.encode(), media_type="application/json")


def _json_bytes(body: bytes, headers: dict[str, str] | None = None) -> Response:
    return Response(content=body, media_type="application/json", headers=headers)


# A vehicle's terminals: (device id, on the vehicle from, until); None is open-ended.
Segment = tuple[int, datetime | None, datetime | None]


async def vehicle_terminals(conn: AsyncConnection, device: dict[str, Any]) -> list[Segment]:
    """The terminals whose reports make up the history of the vehicle ``device`` (a row of
    ``device_in_scope``) is on, oldest first: each replaced terminal up to its swap, the current
    one from its own. Replacements of the device's own account only (tenancy at the query)."""
    here: Segment = (device["id"], None, None)
    if device.get("vehicle_id") is None:
        return [here]
    cur = await conn.execute("SELECT new_device_id, old_device_id, swapped_at FROM terminal_replacements"
                             " WHERE vehicle_id = %s AND account_id = %s", (device["vehicle_id"], device["account_id"]))
    replaced = {new: (old, at) for new, old, at in await cur.fetchall()}
    segments: list[Segment] = []
    current, until = device["id"], None
    while current in replaced and len(segments) < len(replaced):
        old, at = replaced[current]
        segments.append((current, at, until))
        current, until = old, at
    segments.append((current, None, until))
    return segments[::-1]


def positions_sql(select: str, segments: Sequence[Segment], start: datetime, end: datetime,
                  where: str = "") -> tuple[str, list[Any]]:
    """``SELECT <select> FROM positions`` in [start, end) over each terminal's time on the vehicle
    (one plain query for a vehicle that kept its terminal; each part bounded by fix time, so the
    partitions are pruned), for the caller to order by fix_time."""
    parts: list[str] = []
    params: list[Any] = []
    for device_id, since, until in segments:
        low = max(start, since) if since is not None else start
        high = min(end, until) if until is not None else end
        if low < high:
            parts.append(f"SELECT {select} FROM positions WHERE device_id = %s AND fix_time >= %s AND fix_time < %s"
                         + where)
            params += [device_id, low, high]
    return " UNION ALL ".join(parts) or f"SELECT {select} FROM positions WHERE false", params


async def _track(conn: AsyncConnection, segments: Sequence[Segment], start: datetime, end: datetime) -> geo.Track:
    sql, params = positions_sql("fix_time, latitude, longitude, speed_kmh, ignition", segments, start, end,
                                f" AND {USABLE_FIX}")
    cur = await conn.execute(sql + " ORDER BY fix_time", params)
    return geo.Track.from_rows(await cur.fetchall())


def _place(track: geo.Track, i: int) -> dict[str, Any]:
    return {"time": track.times[i], "latitude": float(track.lat[i]), "longitude": float(track.lon[i])}


# Vehicles ----------------------------------------------------------------------------------

# Each vehicle's JSON is concatenated by PostgreSQL (strings through to_json for escaping):
# two to three times faster than json_build_object, which looks up every argument's type on
# every row; a 10,000-vehicle fleet is one round trip and no per-row Python. The fleet list
# itself is served from memory (api/fleet_snapshot.py) unless AVL_API_FLEET_SNAPSHOT is off; this
# is the one-vehicle answer, and the list's when it is.
VEHICLES_SQL = with_times("""
SELECT '[' || coalesce(string_agg(x.j, ',' ORDER BY x.id), '') || ']' FROM (SELECT d.id,
    <HEAD> || ',"status":"' || s.status
    || '","status_detail":' || to_json(s.detail)::text || ',"last_report_at":' || TIME(h.heard_at)
    || ',"position":' || CASE WHEN %(show)s AND l.device_id IS NOT NULL THEN
        <POSITION>
        ELSE 'null' END || '}' AS j
FROM devices d
LEFT JOIN vehicles veh ON veh.id = d.vehicle_id
LEFT JOIN accounts a ON a.id = d.account_id
-- A replaced terminal's latest position stands for the vehicle's until the new one reports.
LEFT JOIN terminal_replacements rp ON rp.new_device_id = d.id
LEFT JOIN latest_positions l ON l.device_id = CASE WHEN rp.id IS NULL THEN d.id
    WHEN EXISTS (SELECT 1 FROM latest_positions x WHERE x.device_id = d.id) THEN d.id ELSE rp.old_device_id END
    AND (l.device_id = d.id OR l.fix_time < rp.swapped_at)
CROSS JOIN LATERAL (SELECT now() - make_interval(secs => %(intervals)s * d.report_interval_s) AS since) w
-- Status reports without a fix (device_events) count as "heard from" too; looked up only
-- when the positions alone say the device is silent.
CROSS JOIN LATERAL (SELECT CASE WHEN l.last_received_at >= w.since THEN l.last_received_at
    ELSE greatest(l.last_received_at, (SELECT e.received_at FROM device_events e WHERE e.device_id = d.id
                                       ORDER BY e.time DESC LIMIT 1)) END AS heard_at) h
CROSS JOIN LATERAL (SELECT * FROM (VALUES (
    CASE WHEN a.status IN ('suspended', 'retired') OR (a.billing = 'pre_paid' AND a.balance <= 0)
              OR d.line_status <> 'active' THEN 'account_blocked'
         WHEN h.heard_at IS NULL OR h.heard_at < w.since THEN 'offline'
         WHEN l.device_id IS NULL OR NOT l.valid OR l.fix_time < w.since THEN 'gps_not_updated'
         ELSE 'online' END,
    CASE WHEN a.status = 'suspended' THEN 'the account is suspended (' || coalesce(a.status_reason, 'non-payment') || ')'
         WHEN a.status = 'retired' THEN 'the account''s service was retired'
         WHEN a.billing = 'pre_paid' AND a.balance <= 0 THEN 'the pre-paid balance is exhausted'
         WHEN d.line_status <> 'active' THEN 'the terminal''s cellular line is suspended'
         WHEN h.heard_at IS NULL THEN 'no report received yet'
         WHEN h.heard_at < w.since THEN 'no report for more than ' || %(intervals)s || ' report intervals ('
              || %(intervals)s * d.report_interval_s || ' s)'
         WHEN l.device_id IS NULL THEN 'reports arrive without a position'
         WHEN NOT l.valid THEN 'reports arrive without a valid GPS fix'
         WHEN l.fix_time < w.since THEN 'reports arrive but the newest GPS fix is older than '
              || %(intervals)s || ' report intervals'
         ELSE 'reporting with a fresh GPS fix' END)) AS v (status, detail)) s
WHERE (%(scope)s::bigint IS NULL OR d.account_id = %(scope)s::bigint)
  AND (%(device)s::bigint IS NULL OR d.id = %(device)s::bigint)
  AND (%(status)s::text IS NULL OR s.status = %(status)s::text)) x
""".replace("<HEAD>", VEHICLE_HEAD_SQL).replace("<POSITION>", POSITION_SQL))


def _shows_positions(user: User) -> bool:
    """False for a suspended account's client: no live data (its vehicles are listed without positions)."""
    try:
        live_data_allowed(user)
    except ApiError:
        return False
    return True


async def _vehicles_json(conn: AsyncConnection, user: User, scope: int | None, device: int | None,
                         status: Status | None) -> str:
    """The vehicles as a JSON array ordered by id, built by PostgreSQL."""
    async with conn.transaction():
        await conn.execute("SET LOCAL DateStyle = 'ISO'")  # what sql_time relies on
        cur = await conn.execute(VEHICLES_SQL, {"show": _shows_positions(user), "intervals": STATUS_INTERVALS,
                                                "scope": scope, "device": device,
                                                "status": status.value if status else None})
        row = await cur.fetchone()
    assert row is not None
    text: str = row[0]
    return text


class ListForm(StrEnum):
    full = "full"
    compact = "compact"


class CompactFleet(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"fields": list(COMPACT_FIELDS), "vehicles": [
        [42, "356307042441013", "teltonika", "AB123CD", "van", 30, "online", "2026-11-24T10:00:05Z",
         "2026-11-24T10:00:00Z", True, 10.4912, -66.8791, 42.0, 90.0, True, 12600],
        [43, "356307042441021", "teltonika", None, None, 30, "offline", None,
         None, None, None, None, None, None, None, None]]}]})

    fields: list[str] = Field(description="the names of the values in each vehicle's array, in order; "
                                          "`time` to `power_mv` are its latest position's")
    vehicles: list[list[int | float | str | bool | None]] = Field(
        description="one array per vehicle, by id; a vehicle without a position (or no live data: suspended) has "
                    "null from `time` on")


_ETAG_HEADER = {"ETag": {"description": "the list's version: send it back in `If-None-Match`",
                         "schema": {"type": "string"}}}


def _database_etag(body: bytes) -> str:
    """The ETag of a list the database built: its digest (another form's or account's differs)."""
    return '"d' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


def _not_modified(if_none_match: str | None, etag: str) -> bool:
    return if_none_match is not None and if_none_match_matches(if_none_match, etag)


@router.get("/vehicles", response_model=list[Vehicle] | CompactFleet,
            summary="The fleet: every vehicle with its latest position",
            description="The account's vehicles (staff: every account, or `account_id`), each with its latest report "
                        "and a status saying what is going on. A suspended account's vehicles are listed as "
                        "`account_blocked` without positions.\n\n"
                        "`form=compact`: an object with the field names once (`fields`) and one array of values per "
                        "vehicle (`vehicles`), without the status detail, account, description and the less used "
                        "position fields (under a third of the size). The answer carries an `ETag`: send it back in "
                        "`If-None-Match` and an unchanged list is a 304 without a body (statuses age: the list "
                        "changes when one does). A report committed before the request is in the answer.",
            responses={200: {"headers": _ETAG_HEADER},
                       304: {"description": "the list is the one `If-None-Match` named", "headers": _ETAG_HEADER}})
async def list_vehicles(
    request: Request, user: FleetUser, conn: Db,
    account_id: Annotated[int | None, Query(description="staff only: one account's vehicles")] = None,
    status: Annotated[Status | None, Query(description="only vehicles in this status")] = None,
    form: Annotated[ListForm, Query(description="full: the vehicle objects; compact: field names and arrays")]
    = ListForm.full,
    if_none_match: Annotated[str | None, Header(description="the ETag of the list the client has")] = None,
) -> Response:
    scope, compact, show = _scope(user, account_id), form is ListForm.compact, _shows_positions(user)
    wanted = status.value if status else None
    snapshots: FleetSnapshots | None = getattr(request.app.state, "fleet_snapshots", None)
    listed = None
    if snapshots is not None:  # from memory, checked against the database (api/fleet_snapshot.py)
        listed = await snapshots.list(conn, scope, compact=compact, show=show, status=wanted,
                                      if_none_match=if_none_match)
    if listed is None:  # built by the database (AVL_API_FLEET_SNAPSHOT=false, or not listening for changes)
        if compact:
            body = await FleetSnapshots.once(conn, scope, show=show, status=wanted)
        else:
            body = (await _vehicles_json(conn, user, scope, None, status)).encode()
        etag = _database_etag(body)
        listed = Rendered(body, etag, _not_modified(if_none_match, etag))
    headers = {"ETag": listed.etag, "Cache-Control": "private, no-cache"}
    if listed.not_modified:
        return Response(status_code=304, headers=headers)
    return _json_bytes(listed.body, headers)


@router.get("/vehicles/{device_id}", response_model=Vehicle, summary="One vehicle with its latest position and status",
            responses={404: {"description": "no such vehicle (or another account's)"}})
async def get_vehicle(device_id: DeviceId, user: FleetUser, conn: Db) -> Response:
    text = await _vehicles_json(conn, user, user.account_scope(), device_id, None)
    if text == "[]":
        raise not_found(f"vehicle {device_id}")
    return _json(text[1:-1])


# History, trips, stops, distance -----------------------------------------------------------


@router.get("/vehicles/{device_id}/history", response_model=History, summary="A vehicle's reports over a period",
            description="Reports in fix-time order (late and buffered data in its place). With `simplify_m`, the "
                        "track of valid fixes is simplified for drawing (Douglas-Peucker in metres, in a local metric "
                        "frame); the tolerance is raised until at most `max_points` remain. Without it, more than "
                        "`max_points` reports are cut to the first `max_points`, with `next_from` for the next page.",
            responses={403: {"description": "account suspended"}, 404: {"description": "no such vehicle"}})
async def history(
    device_id: DeviceId, user: FleetUser, conn: ReadDb, start: From = None, end: To = None,
    simplify_m: Annotated[float | None, Query(ge=0, le=10_000, description="Douglas-Peucker tolerance, metres")] = None,
    max_points: Annotated[int, Query(ge=2, le=HISTORY_MAX_POINTS)] = HISTORY_DEFAULT_POINTS,
    valid_only: Annotated[bool, Query(description="only reports with a valid fix")] = False,
) -> Response:
    segments = await vehicle_terminals(conn, await device_in_scope(conn, user, device_id))
    live_data_allowed(user)
    start, end = period(start, end, HISTORY_MAX_DAYS)
    simplify = simplify_m is not None
    where = f" AND {USABLE_FIX}" if simplify or valid_only else ""
    sql, params = positions_sql("fix_time, latitude, longitude, valid, speed_kmh, course, altitude_m, satellites,"
                                " ignition", segments, start, end, where)
    cur = await conn.execute(sql + " ORDER BY fix_time" + ("" if simplify else " LIMIT %s"),
                             params if simplify else [*params, max_points + 1])
    rows = await cur.fetchall()
    truncated, tolerance, total = False, None, len(rows)
    if simplify:
        lat = np.fromiter((r[1] for r in rows), np.float64, len(rows))
        lon = np.fromiter((r[2] for r in rows), np.float64, len(rows))
        kept, tolerance = geo.simplify_capped(lat, lon, simplify_m or 0.0, max_points)
        rows = [rows[i] for i in kept]
    elif len(rows) > max_points:
        truncated, rows = True, rows[:max_points]
        sql, params = positions_sql("1", segments, start, end, where)
        total_cur = await conn.execute(f"SELECT count(*) FROM ({sql}) x", params)
        counted = await total_cur.fetchone()
        total = int(counted[0]) if counted else len(rows)
    names = ("latitude", "longitude", "valid", "speed_kmh", "course", "altitude_m", "satellites", "ignition")
    points = [{"time": geo.iso(r[0]), **dict(zip(names, r[1:], strict=True))} for r in rows]
    next_from = geo.iso(rows[-1][0] + timedelta(microseconds=1)) if truncated else None
    body = {"device_id": device_id, "from": geo.iso(start), "to": geo.iso(end), "total": total, "count": len(points),
            "simplified": simplify, "tolerance_m": tolerance, "truncated": truncated, "next_from": next_from,
            "points": points}
    # Plain dicts straight to JSON: validating thousands of points through models costs more than the query.
    return JSONResponse(body)


@router.get("/vehicles/{device_id}/trips", response_model=TripsAndStops, summary="Trips and stops over a period",
            description="Derived from ignition and motion over the valid fixes in fix-time order. A report is moving "
                        f"when its ignition is not off and its speed is at least {geo.MOVING_KMH:g} km/h. A trip runs "
                        "from the departure fix to the arrival fix and ends once the vehicle stays stationary "
                        "`min_stop_s` or its ignition goes off; trips under "
                        f"{geo.MIN_TRIP_M:g} m are folded into the stop. Stops are the stretches between trips (and "
                        "before the first / after the last) lasting at least `min_stop_s`.",
            responses={403: {"description": "account suspended"}, 404: {"description": "no such vehicle"}})
async def trips(
    device_id: DeviceId, user: FleetUser, conn: ReadDb, start: From = None, end: To = None,
    min_stop_s: Annotated[int, Query(ge=30, le=86_400)] = geo.MIN_STOP_S,
) -> TripsAndStops:
    segments = await vehicle_terminals(conn, await device_in_scope(conn, user, device_id))
    live_data_allowed(user)
    start, end = period(start, end, HISTORY_MAX_DAYS)
    track = await _track(conn, segments, start, end)
    found, stopped = geo.trips_and_stops(track, min_stop_s=min_stop_s)
    trips_out = []
    for t in found:
        duration = float(track.t[t.end] - track.t[t.start])
        trips_out.append(TripOut(start=Place(**_place(track, t.start)), end=Place(**_place(track, t.end)),
                                 duration_s=duration, distance_m=round(t.distance_m, 1), max_speed_kmh=t.max_speed_kmh,
                                 avg_speed_kmh=round(t.distance_m / duration * 3.6, 1) if duration > 0 else None,
                                 ongoing=t.ongoing))
    stops_out = [StopOut(start=track.times[s.start], end=track.times[s.end],
                         duration_s=float(track.t[s.end] - track.t[s.start]), latitude=float(track.lat[s.start]),
                         longitude=float(track.lon[s.start]), ignition_off=s.ignition_off, ongoing=s.ongoing)
                 for s in stopped]
    return TripsAndStops.model_validate({"device_id": device_id, "from": start, "to": end, "min_stop_s": min_stop_s,
                                         "trips": trips_out, "stops": stops_out})


@router.get("/vehicles/{device_id}/distance", response_model=Distance, summary="Distance driven per day",
            description="Great-circle distance between consecutive valid fixes (fix-time order), per local day of "
                        f"`tz`. Jumps under {geo.DRIFT_M:g} m between two stationary reports are GPS drift and "
                        f"segments implying more than {geo.MAX_PLAUSIBLE_KMH:g} km/h are glitches: neither counts.",
            responses={403: {"description": "account suspended"}, 404: {"description": "no such vehicle"}})
async def distance(
    device_id: DeviceId, user: FleetUser, conn: ReadDb,
    first: Annotated[date | None, Query(alias="from", description="first day (default: 6 days before `to`)")] = None,
    last: Annotated[date | None, Query(alias="to", description="last day, inclusive (default: today in `tz`)")] = None,
    tz: Annotated[str, Query(description="IANA time zone the days are counted in", examples=["America/Caracas"])] = "UTC",
) -> Distance:
    segments = await vehicle_terminals(conn, await device_in_scope(conn, user, device_id))
    live_data_allowed(user)
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ApiError(422, "invalid_request", f"tz: unknown time zone {tz!r}") from None
    for name, day in (("from", first), ("to", last)):
        if day is not None and not EARLIEST.date() <= day < LATEST.date():
            raise ApiError(422, "invalid_request", f"{name}: must be between {EARLIEST:%Y} and {LATEST:%Y}")
    last = last or datetime.now(zone).date()
    first = first or last - timedelta(days=6)
    if last < first:
        raise ApiError(422, "invalid_request", "to: must not be before from")
    if (last - first).days >= HISTORY_MAX_DAYS:
        raise ApiError(422, "invalid_request", f"to: at most {HISTORY_MAX_DAYS} days")
    start = datetime.combine(first, datetime.min.time(), zone)
    end = datetime.combine(last + timedelta(days=1), datetime.min.time(), zone)
    days = geo.distance_per_day(await _track(conn, segments, start, end), first, last, zone)
    out = [DayDistance(date=d.day, distance_m=round(d.distance_m, 1), reports=d.reports, max_speed_kmh=d.max_speed_kmh)
           for d in days]
    return Distance(device_id=device_id, tz=tz, total_m=round(sum(d.distance_m for d in out), 1), days=out)


# Exports -----------------------------------------------------------------------------------


class ExportFormat(StrEnum):
    csv = "csv"
    gpx = "gpx"
    kml = "kml"
    geojson = "geojson"


@router.get("/vehicles/{device_id}/export", summary="Export the location reports of a period",
            description="Every stored report of the period (valid or not, never simplified) in fix-time order, times "
                        "in UTC ISO 8601, as a file download: CSV (`text/csv`), GPX 1.1 (`application/gpx+xml`), KML 2.2 "
                        "(`application/vnd.google-earth.kml+xml`) or GeoJSON (`application/geo+json`). For backing "
                        f"billing claims, so also available to a suspended account. At most {EXPORT_MAX_DAYS} days.",
            response_class=StreamingResponse,
            responses={200: {"description": "the file", "content": {f.media_type.split(";")[0]: {}
                                                                     for f in exports.FORMATS.values()}},
                       404: {"description": "no such vehicle"}})
async def export(
    request: Request, device_id: DeviceId, user: FleetUser, conn: ReadDb, start: From = None, end: To = None,
    format: Annotated[ExportFormat, Query(description="csv, gpx, kml or geojson")] = ExportFormat.csv,
) -> StreamingResponse:
    device = await device_in_scope(conn, user, device_id)
    segments = await vehicle_terminals(conn, device)
    start, end = period(start, end, EXPORT_MAX_DAYS)
    sql, params = positions_sql(exports.SELECT, segments, start, end)
    fmt = exports.FORMATS[format.value]
    meta = exports.Meta(device_id, device["identifier"], device["plate"], start, end, datetime.now(UTC))
    writer = exports.WRITERS[format.value](meta)
    pool = request.app.state.pool

    async def body() -> AsyncIterator[bytes]:
        yield writer.head().encode()
        # Its own connection: the request's is returned to the pool before the body streams.
        async with pool.connection() as stream_conn, stream_conn.transaction():
            async with stream_conn.cursor(name="avl_export") as cur:
                await cur.execute(sql + " ORDER BY fix_time", params)
                while batch := await cur.fetchmany(EXPORT_BATCH_ROWS):
                    yield writer.rows(batch).encode()
        yield writer.tail().encode()

    name = exports.filename(meta, fmt)
    return StreamingResponse(body(), media_type=fmt.media_type,
                             headers={"Content-Disposition": f'attachment; filename="{name}"'})


# Geofences ---------------------------------------------------------------------------------

GEOFENCE_COLS = "id, account_id, name, kind, dwell_s, geometry, min_lon, min_lat, max_lon, max_lat, created_at"


def _geofence(row: dict[str, Any]) -> Geofence:
    return Geofence(id=row["id"], account_id=row["account_id"], name=row["name"], kind=row["kind"],
                    dwell_s=row["dwell_s"], geometry=row["geometry"], created_at=row["created_at"],
                    bbox=[row["min_lon"], row["min_lat"], row["max_lon"], row["max_lat"]])


def _zone_geometry(body: GeofenceIn) -> tuple[dict[str, Any], tuple[float, float, float, float]]:
    try:
        geom, bbox = geo.parse_zone(body.geometry)
    except geo.GeometryError as exc:
        raise ApiError(422, "invalid_request", f"geometry: {exc}") from None
    return geo.as_geojson(geom), bbox


async def _geofence_in_scope(conn: AsyncConnection, user: User, geofence_id: int) -> dict[str, Any]:
    scope = user.account_scope()
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"SELECT {GEOFENCE_COLS} FROM geofences WHERE id = %s"
                          " AND (%s::bigint IS NULL OR account_id = %s)", (geofence_id, scope, scope))
        row = await cur.fetchone()
    if row is None:
        raise not_found(f"geofence {geofence_id}")
    return row


async def _target_account(conn: AsyncConnection, user: User, requested: int | None) -> int:
    """The account a new zone (or an evaluation) is for: the client's own; staff must name one."""
    if user.role == "client":
        assert user.account_id is not None
        return user.account_id
    if requested is None:
        raise ApiError(422, "invalid_request", "account_id: required for staff")
    cur = await conn.execute("SELECT 1 FROM accounts WHERE id = %s", (requested,))
    if await cur.fetchone() is None:
        raise ApiError(422, "invalid_request", f"account_id: account {requested} not found")
    return requested


GeofenceId = Annotated[int, Path(description="geofence id", examples=[3])]


@router.get("/geofences", response_model=list[Geofence], summary="The account's zones")
async def list_geofences(
    user: FleetUser, conn: Db,
    account_id: Annotated[int | None, Query(description="staff only: one account's zones")] = None,
) -> list[Geofence]:
    scope = _scope(user, account_id)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"SELECT {GEOFENCE_COLS} FROM geofences WHERE (%s::bigint IS NULL OR account_id = %s)"
                          " ORDER BY id", (scope, scope))
        return [_geofence(r) for r in await cur.fetchall()]


@router.post("/geofences", response_model=Geofence, status_code=201, summary="Create a zone",
             description="A GeoJSON Polygon or MultiPolygon, `allowed` or `forbidden`. Entering a forbidden zone "
                         "raises an alert; so does leaving the allowed zones for a point outside all of them.")
async def create_geofence(body: GeofenceIn, user: FleetUser, conn: Db) -> Geofence:
    account = await _target_account(conn, user, body.account_id)
    geometry, (min_lon, min_lat, max_lon, max_lat) = _zone_geometry(body)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "INSERT INTO geofences (account_id, name, kind, geometry, min_lat, min_lon, max_lat, max_lon, dwell_s)"
            f" VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {GEOFENCE_COLS}",
            (account, body.name, body.kind.value, Jsonb(geometry), min_lat, min_lon, max_lat, max_lon, body.dwell_s))
        row = await cur.fetchone()
    assert row is not None
    return _geofence(row)


@router.get("/geofences/{geofence_id}", response_model=Geofence, summary="One zone",
            responses={404: {"description": "no such zone (or another account's)"}})
async def get_geofence(geofence_id: GeofenceId, user: FleetUser, conn: Db) -> Geofence:
    return _geofence(await _geofence_in_scope(conn, user, geofence_id))


@router.put("/geofences/{geofence_id}", response_model=Geofence, summary="Replace a zone",
            responses={404: {"description": "no such zone (or another account's)"}})
async def update_geofence(geofence_id: GeofenceId, body: GeofenceIn, user: FleetUser, conn: Db) -> Geofence:
    await _geofence_in_scope(conn, user, geofence_id)
    geometry, (min_lon, min_lat, max_lon, max_lat) = _zone_geometry(body)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "UPDATE geofences SET name = %s, kind = %s, geometry = %s, min_lat = %s, min_lon = %s, max_lat = %s,"
            f" max_lon = %s, dwell_s = %s WHERE id = %s RETURNING {GEOFENCE_COLS}",
            (body.name, body.kind.value, Jsonb(geometry), min_lat, min_lon, max_lat, max_lon, body.dwell_s,
             geofence_id))
        row = await cur.fetchone()
    if row is None:
        raise not_found(f"geofence {geofence_id}")
    return _geofence(row)


@router.delete("/geofences/{geofence_id}", status_code=204, summary="Delete a zone",
               description="Its alerts are kept (with the zone's name) as the record of what happened.",
               responses={404: {"description": "no such zone (or another account's)"}})
async def delete_geofence(geofence_id: GeofenceId, user: FleetUser, conn: Db) -> Response:
    await _geofence_in_scope(conn, user, geofence_id)
    await conn.execute("DELETE FROM geofences WHERE id = %s", (geofence_id,))
    return Response(status_code=204)


# Zone events and alerts --------------------------------------------------------------------

ALERT_SQL = """
SELECT g.id, g.account_id, g.device_id, v.plate, g.geofence_id, g.geofence_name, g.kind, g.fix_time AS time,
       g.latitude, g.longitude, g.detected_at, g.acknowledged_at, d.identifier
FROM geofence_alerts g JOIN devices d ON d.id = g.device_id LEFT JOIN vehicles v ON v.id = d.vehicle_id
"""


def _alert(row: dict[str, Any]) -> Alert:
    who = row["plate"] or row["identifier"]
    what = ("entered the forbidden zone" if row["kind"] == "forbidden_enter" else "left the allowed zone")
    return Alert(message=f"{who} {what} '{row['geofence_name']}'",
                 **{k: v for k, v in row.items() if k != "identifier"})


async def account_zones(conn: AsyncConnection, account_id: int | None) -> list[geo.Zone]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT id, name, kind, dwell_s, geometry, min_lon, min_lat, max_lon, max_lat"
                          " FROM geofences WHERE account_id = %s ORDER BY id", (account_id,))
        return [geo.Zone.from_row(r) for r in await cur.fetchall()]


async def evaluate_device(conn: AsyncConnection, account_id: int, device_id: int, zones: Sequence[geo.Zone],
                          start: datetime, end: datetime) -> tuple[geo.Track, geo.Evaluation, list[Alert], int]:
    """Evaluates a vehicle's fixes in [start, end) against the zones and records the alerts
    (once each: re-evaluating the same stretch finds them already there). Returns the track,
    the evaluation, the alerts of the period's evaluation and how many of them are new."""
    track = await _track(conn, [(device_id, None, None)], start, end)
    found = geo.evaluate_zones(track, zones)
    new = 0
    if found.alerts:
        params = [(account_id, device_id, a.zone.id, a.zone.name, a.kind, track.times[a.index],
                   float(track.lat[a.index]), float(track.lon[a.index])) for a in found.alerts]
        async with conn.transaction(), conn.cursor() as cur:
            for p in params:
                await cur.execute(
                    "INSERT INTO geofence_alerts (account_id, device_id, geofence_id, geofence_name, kind, fix_time,"
                    " latitude, longitude) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING", p)
                new += cur.rowcount
    alerts: list[Alert] = []
    if found.alerts:
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(ALERT_SQL + " WHERE g.device_id = %s AND g.fix_time = ANY(%s) ORDER BY g.fix_time, g.id",
                              (device_id, [track.times[a.index] for a in found.alerts]))
            alerts = [_alert(r) for r in await cur.fetchall()]
    return track, found, alerts, new


@router.get("/vehicles/{device_id}/geofence-events", response_model=ZoneEvents, summary="Zone enter / exit / dwell",
            description="Computed on request from the stored valid fixes of the period, in fix-time order (so late "
                        "and buffered reports land where they belong), against the account's zones. Enter is raised "
                        "at the first fix inside, exit at the first fix outside, dwell once inside for the zone's "
                        "`dwell_s`; a zone the first fix is already in is listed in `inside_at_start`. Entering a "
                        "forbidden zone (and leaving the allowed area) is recorded as an alert, once.",
            responses={403: {"description": "account suspended"}, 404: {"description": "no such vehicle"}})
async def geofence_events(device_id: DeviceId, user: FleetUser, conn: Db, start: From = None,
                          end: To = None) -> ZoneEvents:
    device = await device_in_scope(conn, user, device_id)
    live_data_allowed(user)
    start, end = period(start, end, HISTORY_MAX_DAYS)
    zones = await account_zones(conn, device["account_id"])
    track, found, alerts, _ = await evaluate_device(conn, device["account_id"], device_id, zones, start, end)
    events = [ZoneEventOut(geofence_id=e.zone.id, geofence_name=e.zone.name, zone_kind=ZoneKind(e.zone.kind),
                           event=e.event, time=track.times[e.index], latitude=float(track.lat[e.index]),
                           longitude=float(track.lon[e.index]), duration_s=e.duration_s) for e in found.events]
    inside = [ZoneRef(geofence_id=z.id, geofence_name=z.name, zone_kind=ZoneKind(z.kind)) for z in found.inside_at_start]
    return ZoneEvents.model_validate({"device_id": device_id, "from": start, "to": end, "inside_at_start": inside,
                                      "events": events, "alerts": alerts})


@router.get("/geofence-alerts", response_model=list[Alert], summary="Zone alerts",
            description="Alerts recorded so far (by zone-event requests, the evaluation below and the live stream), "
                        "newest first; by default those of the last 30 days.")
async def list_alerts(
    user: FleetUser, conn: Db, start: From = None, end: To = None,
    account_id: Annotated[int | None, Query(description="staff only: one account's alerts")] = None,
    device_id: Annotated[int | None, Query(description="one vehicle's alerts")] = None,
    acknowledged: Annotated[bool | None, Query(description="only (un)acknowledged alerts")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[Alert]:
    scope = _scope(user, account_id)
    start, end = period(start, end, 366, default=timedelta(days=30))
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            ALERT_SQL + " WHERE (%s::bigint IS NULL OR g.account_id = %s) AND (%s::bigint IS NULL OR g.device_id = %s)"
            " AND g.fix_time >= %s AND g.fix_time < %s"
            " AND (%s::boolean IS NULL OR (g.acknowledged_at IS NOT NULL) = %s) ORDER BY g.fix_time DESC, g.id DESC"
            " LIMIT %s", (scope, scope, device_id, device_id, start, end, acknowledged, acknowledged, limit))
        return [_alert(r) for r in await cur.fetchall()]


@router.post("/geofence-alerts/evaluate", response_model=EvaluateOut, summary="Evaluate every vehicle for alerts",
             description="Runs the zone evaluation over the period for every vehicle of the account and records the "
                         f"alerts not yet recorded (at most {EVALUATE_MAX_DAYS} days: it reads every report of the "
                         "fleet in the period). A scheduler can call it, e.g. hourly over the last hours.",
             responses={403: {"description": "account suspended"}})
async def evaluate_alerts(body: EvaluateIn, user: FleetUser, conn: Db) -> EvaluateOut:
    live_data_allowed(user)
    account = await _target_account(conn, user, body.account_id)
    start, end = period(body.from_, body.to, EVALUATE_MAX_DAYS)
    zones = await account_zones(conn, account)
    cur = await conn.execute("SELECT id FROM devices WHERE account_id = %s ORDER BY id", (account,))
    devices = [r[0] for r in await cur.fetchall()]
    alerts: list[Alert] = []
    new = 0
    if zones:
        for device_id in devices:
            _, _, found, added = await evaluate_device(conn, account, device_id, zones, start, end)
            alerts += found
            new += added
    return EvaluateOut(vehicles=len(devices), new_alerts=new, alerts=alerts)


@router.post("/geofence-alerts/{alert_id}/acknowledge", response_model=Alert, summary="Acknowledge an alert",
             responses={404: {"description": "no such alert (or another account's)"}})
async def acknowledge_alert(alert_id: Annotated[int, Path(examples=[9])], user: FleetUser, conn: Db) -> Alert:
    scope = user.account_scope()
    cur = await conn.execute(
        "UPDATE geofence_alerts SET acknowledged_at = coalesce(acknowledged_at, now()),"
        " acknowledged_by = coalesce(acknowledged_by, %s) WHERE id = %s AND (%s::bigint IS NULL OR account_id = %s)"
        " RETURNING id", (user.id, alert_id, scope, scope))
    if await cur.fetchone() is None:
        raise not_found(f"alert {alert_id}")
    async with conn.cursor(row_factory=dict_row) as dcur:
        await dcur.execute(ALERT_SQL + " WHERE g.id = %s", (alert_id,))
        row = await dcur.fetchone()
    assert row is not None
    return _alert(row)


# Locate now --------------------------------------------------------------------------------
# Billed once, when answered: the answer is settled by the database as the report is stored
# (avl_settle_locates, migration 0011), and again before any look, for what that left.

LOCATE_SQL = """
SELECT r.id, r.device_id, r.account_id, r.requested_at, r.channel, r.command, r.sms_id, m.status AS sms_status,
       r.billable, r.price, r.answer_by, r.delivered_at, r.answered_at, r.cancelled_at, r.cancel_reason,
       CASE WHEN r.answered_at IS NOT NULL THEN 'answered'
            WHEN r.cancelled_at IS NOT NULL THEN 'cancelled'
            WHEN m.status IN (FAILED) THEN 'failed'
            WHEN r.answer_by <= now() THEN 'expired'
            ELSE 'pending' END AS status,
       l.fix_time, l.received_at, l.valid, l.latitude, l.longitude, l.speed_kmh, l.course, l.altitude_m, l.satellites,
       l.ignition, l.power_mv, l.battery_mv, l.odometer_m, l.alarm
FROM locate_requests r
LEFT JOIN sms_messages m ON m.id = r.sms_id
LEFT JOIN latest_positions l ON l.device_id = r.device_id
"""
LOCATE_SQL = LOCATE_SQL.replace("FAILED", ", ".join(f"'{status}'" for status in billing.SMS_FAILED))
POSITION_FIELDS = ("valid", "latitude", "longitude", "speed_kmh", "course", "altitude_m", "satellites", "ignition",
                   "power_mv", "battery_mv", "odometer_m", "alarm")
LOCATE_FIELDS = ("id", "device_id", "account_id", "requested_at", "channel", "command", "sms_id", "sms_status",
                 "billable", "price", "status", "answer_by", "delivered_at", "answered_at", "cancelled_at",
                 "cancel_reason")


def _locate_out(row: dict[str, Any], user: User) -> LocateRequest:
    """The request and, once answered, the vehicle's latest position: not for a suspended account
    (no live data until payment), which still sees its requests and their state."""
    suspended = user.role == "client" and user.account_status == "suspended"
    position = None
    if row["answered_at"] is not None and row["fix_time"] is not None and not suspended:
        position = LatestPosition(time=row["fix_time"], received_at=row["received_at"],
                                  **{k: row[k] for k in POSITION_FIELDS})
    return LocateRequest(**{k: row[k] for k in LOCATE_FIELDS}, position=position)


async def _locates(conn: AsyncConnection, account_id: int | None, where: str,
                   params: tuple[Any, ...]) -> list[dict[str, Any]]:
    """Requests, once the answers that came for the account (staff: every account) are settled."""
    await billing.arun(conn, billing.settle(account_id))
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(LOCATE_SQL + where, params)
        return await cur.fetchall()


@router.post("/vehicles/{device_id}/locate", response_model=LocateRequest, status_code=201,
             summary="Locate now: ask the terminal for its position (billable)",
             description="Queues the protocol family's position command to the terminal by SMS (the SMS outbox, sent "
                         "by the diagnostics worker's SMPP bind) and records the request. It is answered by the first "
                         "position that arrives after the SMS was delivered, within AVL_LOCATE_ANSWER_WINDOW_S; poll "
                         f"`GET /api/v1/locate-requests/{{id}}` or watch the live stream. A client's request is billed "
                         "at the price quoted when asked (AVL_PRICE_LOCATE), once, when answered (never if not). A "
                         "pre-paid account needs a balance available (its balance less its pending requests' price): "
                         f"else 402 `no_balance`. A request still pending from the last {LOCATE_REUSE_S} s is returned "
                         "(200) instead of a new one. SMS only: there is no data-channel command path yet.",
             responses={200: {"description": "a pending request for this vehicle, returned again"},
                        402: {"description": "no_balance: a pre-paid account without balance available"},
                        403: {"description": "account suspended"}, 404: {"description": "no such vehicle"},
                        409: {"description": "the terminal cannot be commanded by SMS (no MSISDN, or a protocol "
                                             "without SMS commands)"}})
async def locate(device_id: DeviceId, user: FleetUser, conn: Db, request: Request, response: Response) -> LocateRequest:
    device = await device_in_scope(conn, user, device_id)
    if device["account_id"] is None:
        raise ApiError(409, "not_locatable", f"vehicle {device_id}: the terminal belongs to no account")
    settings = settings_of(request)
    billable = user.role == "client"
    async with conn.transaction():
        # The account first (held until the request is recorded, so concurrent requests cannot spend
        # the balance twice), then the vehicle: the order every writer takes them in.
        account = await call(request, conn, user, billing.billable_account(device["account_id"]))
        no_balance = billing.balance_refusal(account) if billable else None
        if no_balance is None:  # a pre-paid account suspended at zero hears about its balance instead
            live_data_allowed(user)
        command = position_command(device["protocol"], device["identifier"], device.get("options"))
        if not device["msisdn"]:
            raise ApiError(409, "not_locatable", f"vehicle {device_id}: the terminal has no SMS number (MSISDN)")
        if command is None:
            raise ApiError(409, "not_locatable", f"vehicle {device_id}: {device['protocol']} terminals take no SMS commands")
        # One request at a time per vehicle: concurrent clicks get the same request (billed once).
        await conn.execute("SELECT 1 FROM devices WHERE id = %s FOR NO KEY UPDATE", (device_id,))
        recent = await _locates(
            conn, device["account_id"], " WHERE r.device_id = %s AND r.answered_at IS NULL AND r.cancelled_at IS NULL"
            " AND r.requested_at > now() - make_interval(secs => %s) AND NOT coalesce(m.status = ANY(%s), false)"
            " ORDER BY r.requested_at DESC LIMIT 1", (device_id, LOCATE_REUSE_S, billing.SMS_FAILED))
        if recent:
            response.status_code = 200
            return _locate_out(recent[0], user)
        if no_balance is not None:
            raise await api_error(request, conn, user, no_balance)
        cur = await conn.execute(
            "INSERT INTO sms_messages (direction, msisdn, device_id, body, status, purpose)"
            " VALUES ('mt', %s, %s, %s, 'queued', 'locate') RETURNING id", (device["msisdn"], device_id, command))
        sms = await cur.fetchone()
        assert sms is not None
        cur = await conn.execute(
            "INSERT INTO locate_requests (account_id, device_id, requested_by, command, sms_id, billable, price, answer_by)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, clock_timestamp() + make_interval(secs => %s)) RETURNING id",
            (device["account_id"], device_id, user.id, command, sms[0], billable,
             settings.price_locate if billable else None, settings.locate_answer_window_s))
        created = await cur.fetchone()
        assert created is not None
        rows = await _locates(conn, device["account_id"], " WHERE r.id = %s", (created[0],))
    return _locate_out(rows[0], user)


@router.get("/locate-requests/{request_id}", response_model=LocateRequest, summary="A locate-now request",
            description="`answered` (with the position) once a position arrived after the SMS was delivered.",
            responses={404: {"description": "no such request (or another account's)"}})
async def get_locate(request_id: Annotated[int, Path(examples=[5])], user: FleetUser, conn: Db) -> LocateRequest:
    scope = user.account_scope()
    rows = await _locates(conn, scope, " WHERE r.id = %s AND (%s::bigint IS NULL OR r.account_id = %s)",
                          (request_id, scope, scope))
    if not rows:
        raise not_found(f"locate request {request_id}")
    return _locate_out(rows[0], user)


@router.get("/vehicles/{device_id}/locate-requests", response_model=list[LocateRequest],
            summary="A vehicle's locate-now requests, newest first",
            responses={404: {"description": "no such vehicle"}})
async def list_locates(device_id: DeviceId, user: FleetUser, conn: Db,
                       limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[LocateRequest]:
    device = await device_in_scope(conn, user, device_id)
    rows = await _locates(conn, device["account_id"], " WHERE r.device_id = %s ORDER BY r.requested_at DESC LIMIT %s",
                          (device_id, limit))
    return [_locate_out(r, user) for r in rows]
