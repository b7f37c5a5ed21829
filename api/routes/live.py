"""Live updates: the WebSocket ``/api/v1/live`` streams the account's new positions, device
events and zone enter/exit as they are committed.

The ingest writer sends ``NOTIFY avl_positions '{"devices": [ids]}'`` after each commit with
new rows. Each API process holds ONE listening connection (the hub, started with the first
subscriber and stopped with the last) and fans the device ids out to its WebSockets; each
WebSocket then reads the latest positions and new events of those devices *that belong to its
user's account* (tenancy at the query, as everywhere) and pushes them.

Messages (JSON text frames), server to client:
- ``{"type": "ready", "account_id": 7}``: listening; everything committed from now on is pushed.
- ``{"type": "positions", "positions": [{"device_id", "plate", "time", "received_at", "valid",
  "latitude", "longitude", "speed_kmh", "course", "altitude_m", "satellites", "ignition",
  "power_mv", "battery_mv", "odometer_m", "alarm"}, ...]}``: vehicles whose latest fix moved on.
- ``{"type": "events", "events": [{"id", "device_id", "time", "kind", "alarm", "ignition",
  "power_mv", "battery_mv", "attributes"}, ...]}``: new reports without a position (status,
  alarms).
- ``{"type": "geofence", "device_id", "geofence_id", "geofence_name", "zone_kind", "event":
  "enter"|"exit", "time", "latitude", "longitude"}``: the latest position crossed a zone edge
  (a live hint between consecutive pushed positions; the authoritative events, by fix time,
  come from ``GET /api/v1/vehicles/{id}/geofence-events``).
- ``{"type": "alert", ...}``: an alert recorded because of such a crossing (same fields as
  ``GET /api/v1/geofence-alerts``): the stretch since the previous pushed position is
  evaluated by fix time and the alert stored once.
- ``{"type": "resync"}``: the listening connection was lost and is back; updates in between
  may have been missed: re-read ``GET /api/v1/vehicles``.
- ``{"type": "error", "error": code, "message": line}`` then a close (4401 unauthenticated:
  the token was revoked or expired, the user logged out, was deactivated or changed the password;
  4403 not allowed: wrong role, account suspended or retired, a password change pending).

Opening the stream: ``POST /api/v1/live/tickets`` gives a single-use ticket valid for 30 s;
connect to ``/api/v1/live?ticket=...`` (what the console does). Programs may send
``Authorization: Bearer <token>`` on the upgrade request instead. A token in the URL
(``?token=``) is refused: URLs end up in proxy and server logs.

Revocation is pushed, not polled: the database NOTIFYs ``avl_access`` when a token is
revoked, a user deactivated or their password changed, an account suspended or retired,
whichever process made the change (migration 0009's triggers). The hub re-checks exactly the
streams concerned and closes those that lost access, within a moment. Every push is also read
in the same snapshot as a check of the stream's token, so nothing is pushed from data read
after the access was gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import numpy as np
import psycopg
from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, Field
from starlette.websockets import WebSocketState

from api import geo
from api.deps import ApiError, CurrentUser, Db, User, authenticate, bearer, live_data_allowed
from api.routes.fleet import account_zones, evaluate_device
from avl.admin import hash_token

log = logging.getLogger("avl.api.live")
router = APIRouter(prefix="/api/v1", tags=["live"])

CHANNEL = "avl_positions"
ACCESS_CHANNEL = "avl_access"
RECHECK_S = 60.0          # a backstop only: losing access is pushed on ACCESS_CHANNEL
TICKET_TTL_S = 30
ZONES_REFRESH_S = 30.0    # zone edits reach an open stream within this
RECONNECT_S = 2.0
READY_TIMEOUT_S = 10.0

POSITIONS_SQL = """
SELECT l.device_id, v.plate, d.account_id, l.fix_time, l.received_at, l.valid, l.latitude, l.longitude, l.speed_kmh,
       l.course, l.altitude_m, l.satellites, l.ignition, l.power_mv, l.battery_mv, l.odometer_m, l.alarm
FROM latest_positions l JOIN devices d ON d.id = l.device_id LEFT JOIN vehicles v ON v.id = d.vehicle_id
WHERE l.device_id = ANY(%s) AND (%s::bigint IS NULL OR d.account_id = %s)
"""
EVENTS_SQL = """
SELECT e.id, e.device_id, e.time, e.kind, e.alarm, e.ignition, e.power_mv, e.battery_mv, e.attributes
FROM device_events e JOIN devices d ON d.id = e.device_id
WHERE e.device_id = ANY(%s) AND e.id > %s AND (%s::bigint IS NULL OR d.account_id = %s)
ORDER BY e.id
"""


class Hub:
    """The process's one LISTEN connection, fanned out to the subscribers' pending sets."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.subscribers: set[Subscriber] = set()
        self.listening = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def subscribe(self, sub: Subscriber) -> None:
        self.subscribers.add(sub)
        if self.task is None or self.task.done():
            self.listening.clear()
            self.task = asyncio.create_task(self._run(), name="avl-live-hub")

    async def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        if not self.subscribers and self.task is not None:
            task, self.task = self.task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        lost = False
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.database_url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    await conn.execute(f"LISTEN {ACCESS_CHANNEL}")
                    self.listening.set()
                    if lost:  # what happened meanwhile is unknown: re-read the fleet, re-check access
                        for sub in self.subscribers:
                            sub.push(resync=True, recheck=True)
                    async for note in conn.notifies():
                        if note.channel == ACCESS_CHANNEL:
                            change = _access_change(note.payload)
                            for sub in self.subscribers:
                                if sub.concerned_by(change):
                                    sub.push(recheck=True)
                            continue
                        devices = _devices(note.payload)
                        for sub in self.subscribers:
                            sub.push(devices)
            except psycopg.OperationalError as exc:
                self.listening.clear()
                if not lost:
                    log.warning("live: listening connection lost (%s); retrying", str(exc).splitlines()[0] if str(exc) else exc)
                lost = True
                await asyncio.sleep(RECONNECT_S)


def _devices(payload: str) -> set[int]:
    try:
        ids = json.loads(payload).get("devices", [])
        return {int(i) for i in ids}
    except (ValueError, TypeError, AttributeError):
        log.warning("live: unexpected %s payload %r", CHANNEL, payload[:200])
        return set()


def _access_change(payload: str) -> dict[str, set[int]]:
    """``{"tokens": [..]}``, ``{"users": [..]}`` or ``{"accounts": [..]}`` as sets of ids; anything
    unreadable concerns everyone (re-checking a stream that is fine costs one query)."""
    try:
        data = json.loads(payload)
        return {kind: {int(i) for i in data.get(kind, [])} for kind in ("tokens", "users", "accounts")}
    except (ValueError, TypeError, AttributeError):
        log.warning("live: unexpected %s payload %r", ACCESS_CHANNEL, payload[:200])
        return {"all": set()}


@dataclass(eq=False)
class Subscriber:
    user: User
    scope: int | None
    expires_at: datetime | None = None
    pending: set[int] = field(default_factory=set)
    resync: bool = False
    recheck: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    sent_fix: dict[int, datetime] = field(default_factory=dict)
    inside: dict[int, frozenset[int]] = field(default_factory=dict)
    zones: dict[int | None, list[geo.Zone]] = field(default_factory=dict)
    zones_at: float = 0.0
    last_event_id: int = 0

    def push(self, devices: set[int] | None = None, resync: bool = False, recheck: bool = False) -> None:
        if devices:
            self.pending |= devices
        self.resync = self.resync or resync
        self.recheck = self.recheck or recheck
        self.wake.set()

    def concerned_by(self, change: dict[str, set[int]]) -> bool:
        return ("all" in change or self.user.token_id in change.get("tokens", ())
                or self.user.id in change.get("users", ())
                or (self.user.account_id is not None and self.user.account_id in change.get("accounts", ())))


def _may_stream(user: User) -> None:
    """ApiError unless this user may receive live data now."""
    if user.password_change_pending:
        raise ApiError(403, "password_change_required", "change your password first (POST /api/v1/auth/password)")
    if user.role not in ("client", "support", "admin"):
        raise ApiError(403, "forbidden", "live updates need the client or support role")
    live_data_allowed(user)


_REVOKED = {"logout": "the session was logged out", "password_change": "the password was changed",
            "deactivated": "the user was deactivated"}


async def _token_user(conn: psycopg.AsyncConnection, token_id: int) -> tuple[User, datetime | None]:
    """The user behind a token id, or the ApiError saying exactly why access is gone."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT u.id, u.name, u.email, u.role, u.account_id, u.installation_center_id, a.status AS account_status,"
            " u.must_change_password, t.id AS token_id, t.kind AS token_kind, t.revoked_at, t.revoked_reason,"
            " t.expires_at, t.expires_at <= now() AS expired, u.active"
            " FROM api_tokens t JOIN users u ON u.id = t.user_id LEFT JOIN accounts a ON a.id = u.account_id"
            " WHERE t.id = %s", (token_id,))
        row = await cur.fetchone()
    if row is None:
        raise ApiError(401, "unauthenticated", "the token was deleted")
    if row["revoked_reason"] == "account_retired":  # revoked by the retirement (avl.billing)
        raise ApiError(403, "account_retired", "this account's service was retired: access blocked")
    if row["revoked_at"] is not None:
        raise ApiError(401, "unauthenticated", _REVOKED.get(row["revoked_reason"] or "", "the token was revoked"))
    if row["expired"]:
        raise ApiError(401, "unauthenticated", "the token expired")
    if not row["active"]:
        raise ApiError(401, "unauthenticated", "the user was deactivated")
    expires_at = row["expires_at"]
    user = User(**{k: v for k, v in row.items()
                   if k not in ("revoked_at", "revoked_reason", "expires_at", "expired", "active")})
    if user.role == "client" and user.account_status == "retired":
        raise ApiError(403, "account_retired", "this account's service was retired: access blocked")
    _may_stream(user)
    return user, expires_at


async def _open(websocket: WebSocket, pool: AsyncConnectionPool) -> tuple[User, datetime | None]:
    """The user a new stream is for: from a single-use ticket, or a bearer header."""
    if "token" in websocket.query_params:
        raise ApiError(401, "unauthenticated", "?token= is not accepted (URLs are logged): get a single-use ticket "
                                               "from POST /api/v1/live/tickets, or send an Authorization header")
    ticket = websocket.query_params.get("ticket")
    token = bearer(websocket.headers.get("authorization"))
    async with pool.connection() as conn:
        if ticket:
            cur = await conn.execute("DELETE FROM live_tickets WHERE ticket_hash = %s"
                                     " RETURNING token_id, expires_at > now()", (hash_token(ticket),))
            row = await cur.fetchone()
            if row is None or not row[1]:
                raise ApiError(401, "unauthenticated", "unknown, used or expired stream ticket: get a new one")
            return await _token_user(conn, int(row[0]))
        if not token:
            raise ApiError(401, "unauthenticated", "missing credentials: a stream ticket (POST /api/v1/live/tickets) "
                                                   "or an Authorization header")
        user = await authenticate(conn, token, touch=False)
        return await _token_user(conn, user.token_id)


async def _check(conn: psycopg.AsyncConnection, sub: Subscriber) -> None:
    """ApiError when the stream's user lost access, or no longer is who the stream was opened for."""
    user, sub.expires_at = await _token_user(conn, sub.user.token_id)
    if (user.id, user.role, user.account_id) != (sub.user.id, sub.user.role, sub.user.account_id):
        raise ApiError(403, "forbidden", "the user's role or account changed: reconnect")


class Ticket(BaseModel):
    ticket: str = Field(description="single use, valid for 30 s")
    expires_at: datetime
    url: str = Field(description="the stream's path with the ticket", examples=["/api/v1/live?ticket=..."])


@router.post("/live/tickets", status_code=201, response_model=Ticket, summary="A ticket to open the live stream",
             description=f"Single use, valid for {TICKET_TTL_S} s: connect to the `url` it gives with a WebSocket "
                         "(staff may add `&account_id=`). The stream runs on this request's token: when it is "
                         "revoked the stream closes.",
             responses={403: {"description": "not a fleet role, account suspended or retired"}})
async def create_ticket(user: CurrentUser, conn: Db) -> Ticket:
    _may_stream(user)
    ticket = secrets.token_urlsafe(32)
    async with conn.transaction():
        await conn.execute("DELETE FROM live_tickets WHERE expires_at < now()")
        cur = await conn.execute("INSERT INTO live_tickets (ticket_hash, token_id, expires_at)"
                                 " VALUES (%s, %s, now() + make_interval(secs => %s)) RETURNING expires_at",
                                 (hash_token(ticket), user.token_id, TICKET_TTL_S))
        row = await cur.fetchone()
    assert row is not None
    return Ticket(ticket=ticket, expires_at=row[0], url=f"/api/v1/live?ticket={ticket}")


async def _refuse(websocket: WebSocket, exc: ApiError) -> None:
    detail: dict[str, Any] = exc.detail  # type: ignore[assignment]
    if websocket.application_state == WebSocketState.CONNECTING:
        await websocket.accept()
    await websocket.send_json({"type": "error", **detail})
    await websocket.close(code=4401 if exc.status_code == 401 else 4403, reason=detail["message"][:120])


def _position(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if k not in ("account_id", "fix_time", "received_at")}
    out["time"] = geo.iso(row["fix_time"])
    out["received_at"] = geo.iso(row["received_at"])
    return out


async def _zones_for(sub: Subscriber, conn: psycopg.AsyncConnection, account_id: int | None) -> list[geo.Zone]:
    now = asyncio.get_running_loop().time()
    if now - sub.zones_at > ZONES_REFRESH_S:
        sub.zones.clear()
        sub.zones_at = now
    if account_id not in sub.zones:
        sub.zones[account_id] = await account_zones(conn, account_id)
    return sub.zones[account_id]


async def _zone_messages(sub: Subscriber, conn: psycopg.AsyncConnection, row: dict[str, Any],
                         previous_fix: datetime | None) -> list[dict[str, Any]]:
    """Zone crossings between the previously pushed position and this one, and their alerts."""
    if not row["valid"]:
        return []
    zones = await _zones_for(sub, conn, row["account_id"])
    device = row["device_id"]
    lat, lon = np.array([row["latitude"]]), np.array([row["longitude"]])
    now_in = frozenset(z.id for z in zones if z.contains(lat, lon)[0])
    before = sub.inside.get(device)
    sub.inside[device] = now_in
    if before is None or before == now_in:
        return []
    out: list[dict[str, Any]] = []
    alarming = False
    for z in zones:
        event = "enter" if z.id in now_in - before else "exit" if z.id in before - now_in else None
        if event is None:
            continue
        alarming |= (event, z.kind) in (("enter", "forbidden"), ("exit", "allowed"))
        out.append({"type": "geofence", "device_id": device, "geofence_id": z.id, "geofence_name": z.name,
                    "zone_kind": z.kind, "event": event, "time": geo.iso(row["fix_time"]),
                    "latitude": row["latitude"], "longitude": row["longitude"]})
    if alarming and previous_fix is not None:
        # Record the alert the authoritative way: evaluate the stretch by fix time.
        _, _, alerts, _ = await evaluate_device(conn, row["account_id"], device, zones, previous_fix,
                                                row["fix_time"] + timedelta(microseconds=1))
        out += [{"type": "alert", **a.model_dump(mode="json")} for a in alerts]
    return out


async def _flush(sub: Subscriber, websocket: WebSocket, pool: AsyncConnectionPool) -> None:
    """Pushes what is new for the pending devices; ApiError when the stream lost access."""
    devices, sub.pending = sub.pending, set()
    recheck, sub.recheck = sub.recheck, False
    if not devices and not recheck:
        if sub.resync:
            sub.resync = False
            await websocket.send_json({"type": "resync"})
        return
    ids = sorted(devices)
    rows: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    async with pool.connection() as conn:
        # The access check and the reads see one snapshot: nothing read after a revocation is pushed.
        async with conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            await _check(conn, sub)
            if ids:
                async with conn.cursor(row_factory=dict_row) as cur:
                    await cur.execute(POSITIONS_SQL, (ids, sub.scope, sub.scope))
                    rows = await cur.fetchall()
                    await cur.execute(EVENTS_SQL, (ids, sub.last_event_id, sub.scope, sub.scope))
                    events = await cur.fetchall()
        if sub.resync:
            sub.resync = False
            await websocket.send_json({"type": "resync"})
        fresh = [r for r in rows if r["device_id"] not in sub.sent_fix or r["fix_time"] > sub.sent_fix[r["device_id"]]]
        zone_messages: list[dict[str, Any]] = []
        for row in sorted(fresh, key=lambda r: r["device_id"]):
            previous = sub.sent_fix.get(row["device_id"])
            sub.sent_fix[row["device_id"]] = row["fix_time"]
            zone_messages += await _zone_messages(sub, conn, row, previous)
    if fresh:
        await websocket.send_json({"type": "positions", "positions": [_position(r) for r in fresh]})
    if events:
        sub.last_event_id = max(e["id"] for e in events)
        await websocket.send_json({"type": "events", "events": [
            {**e, "time": geo.iso(e["time"])} for e in events]})
    for message in zone_messages:
        await websocket.send_json(message)


@router.get("/live", status_code=426, summary="Live updates (WebSocket): positions, events, zone crossings",
            description=__doc__ or "", responses={426: {"description": "connect with a WebSocket client"}},
            response_model=None)
async def live_info() -> JSONResponse:
    return JSONResponse({"error": "upgrade_required", "message": "connect to /api/v1/live with a WebSocket client"},
                        status_code=426, headers={"Upgrade": "websocket"})


@router.websocket("/live")
async def live(
    websocket: WebSocket,
    ticket: Annotated[str | None, Query(description="a single-use ticket from POST /api/v1/live/tickets "
                                                    "(or send the bearer header)")] = None,
    account_id: Annotated[int | None, Query(description="staff only: one account's vehicles")] = None,
) -> None:
    pool: AsyncConnectionPool = websocket.app.state.pool
    try:
        user, expires_at = await _open(websocket, pool)
    except ApiError as exc:
        await _refuse(websocket, exc)
        return
    scope = user.account_scope() if user.role == "client" else account_id
    sub = Subscriber(user, scope, expires_at)
    hub: Hub | None = getattr(websocket.app.state, "live_hub", None)
    if hub is None:
        hub = websocket.app.state.live_hub = Hub(websocket.app.state.database_url)
    await websocket.accept()
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT coalesce(max(id), 0) FROM device_events")
        row = await cur.fetchone()
        sub.last_event_id = int(row[0]) if row else 0
    hub.subscribe(sub)
    closed = asyncio.Event()

    async def reader() -> None:
        # Nothing is expected from the client; reading is how a disconnect is noticed.
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
        except (WebSocketDisconnect, RuntimeError):
            pass
        closed.set()
        sub.wake.set()

    reading = asyncio.create_task(reader())
    try:
        try:
            await asyncio.wait_for(hub.listening.wait(), READY_TIMEOUT_S)
        except TimeoutError:
            await _refuse(websocket, ApiError(503, "database_unavailable", "live updates are unavailable; retry"))
            return
        await websocket.send_json({"type": "ready", "account_id": scope})
        while not closed.is_set():
            wait_s = RECHECK_S  # a backstop: revocations arrive as pushes; expiry is known in advance
            if sub.expires_at is not None:
                wait_s = max(0.0, min(wait_s, (sub.expires_at - datetime.now(UTC)).total_seconds() + 0.5))
            try:
                await asyncio.wait_for(sub.wake.wait(), wait_s)
            except TimeoutError:
                sub.recheck = True
            sub.wake.clear()
            if closed.is_set():
                break
            try:
                await _flush(sub, websocket, pool)
            except ApiError as exc:
                await _refuse(websocket, exc)
                return
    except (WebSocketDisconnect, RuntimeError):
        pass  # the client went away while we were sending
    except (psycopg.OperationalError, OSError) as exc:
        log.warning("live: closing a stream: %s", str(exc).splitlines()[0] if str(exc) else exc)
        with contextlib.suppress(Exception):
            await websocket.close(code=1011)
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
        await hub.unsubscribe(sub)
