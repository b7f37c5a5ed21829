"""The support center: the fault checklist on a device, tickets, the fleet's health, and the
terminals the ingestor sees but nobody registered.

The checklist runs in the diagnostics worker: the API queues a run and the worker claims it,
recording each step's evidence as it finishes, so a support agent follows it step by step
by polling the run.

Device status (fleet health) uses the fleet routes' definitions (``api.routes.fleet``,
``STATUS_INTERVALS`` report intervals of each device), with "never reported" told apart:

- ``account_blocked``: the account is suspended or retired, a pre-paid account has no balance,
  or the terminal's line is suspended;
- ``never_reported``: no report of any kind ever received;
- ``offline``: no report of any kind (positions or status events) for STATUS_INTERVALS intervals;
- ``gps_not_updated``: reports arrive, but the newest has no valid fix or its fix is older than
  STATUS_INTERVALS intervals;
- ``online``: otherwise.

The silent devices listed are the offline ones: what a client sees as offline is what the
support center sees as silent.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import psycopg
from fastapi import APIRouter, Query
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from pydantic import BaseModel, Field

from api.deps import ApiError, Db, User, device_in_scope, not_found, require
from api.routes.fleet import STATUS_INTERVALS
from diagnostics.model import EXPLANATION, Verdict
from diagnostics.steps.platform import HEARTBEAT_STALE_S, QUEUE_HIGH
from diagnostics.tickets import SLA as DIAGNOSTIC_SLA
from diagnostics.tickets import new_number

router = APIRouter(prefix="/api/v1/support", tags=["support center"])

Support = Annotated[User, require("support")]
Staff = Annotated[User, require("support", "installer")]

VERDICTS = {v.value for v in Verdict}
# Which state a ticket may move to from each state; a resolved ticket may be reopened, a closed one is final.
TRANSITIONS: dict[str, set[str]] = {
    "open": {"in_progress", "waiting_customer", "at_installation_center", "resolved", "closed"},
    "in_progress": {"waiting_customer", "at_installation_center", "resolved", "closed"},
    "waiting_customer": {"in_progress", "at_installation_center", "resolved", "closed"},
    "at_installation_center": {"in_progress", "waiting_customer", "resolved", "closed"},
    "resolved": {"in_progress", "closed"},
    "closed": set(),
}
# The diagnostics tickets' SLAs, and a day to answer an information request.
SLA = {**DIAGNOSTIC_SLA, "information": timedelta(hours=24)}

TicketState = Literal["open", "in_progress", "waiting_customer", "at_installation_center", "resolved", "closed"]
Channel = Literal["phone", "email", "whatsapp", "sms", "web", "system"]


async def _one(conn: AsyncConnection, sql: str, params: tuple[Any, ...]) -> dict[str, Any] | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        return await cur.fetchone()


async def _all(conn: AsyncConnection, sql: str, params: tuple[Any, ...] | dict[str, Any]) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        return await cur.fetchall()


def _who(user: User) -> str:
    return f"{user.name} <{user.email}>"


# Devices --------------------------------------------------------------------------------------------------------------


class DeviceHit(BaseModel):
    id: int = Field(examples=[42])
    identifier: str = Field(examples=["862170010000001"])
    protocol: str = Field(examples=["gl200"])
    msisdn: str | None = Field(examples=["584140000001"])
    line_status: str = Field(examples=["active"])
    plate: str | None = Field(examples=["AB123CD"])
    account_id: int | None = Field(examples=[1])
    account_name: str | None = Field(examples=["Transportes Ávila"])
    account_status: str | None = Field(examples=["active"])
    report_interval_s: int = Field(examples=[60])
    last_received_at: datetime | None
    open_tickets: int = Field(examples=[0])


@router.get("/devices", response_model=list[DeviceHit], summary="Find a device for a customer on the phone")
async def find_devices(user: Support, conn: Db,
                       q: Annotated[str, Query(min_length=2, description="Plate, IMEI/ESN, MSISDN or account name"
                                                                      " (part of it)")],
                       limit: Annotated[int, Query(ge=1, le=200)] = 50) -> list[DeviceHit]:
    like = f"%{q}%"
    rows = await _all(conn, """
        SELECT d.id, d.identifier, d.protocol, d.msisdn, d.line_status, v.plate, d.account_id, a.name AS account_name,
               a.status AS account_status, d.report_interval_s, l.last_received_at,
               (SELECT count(*) FROM tickets t WHERE t.device_id = d.id AND t.state NOT IN ('resolved', 'closed'))
                 AS open_tickets
        FROM devices d LEFT JOIN vehicles v ON v.id = d.vehicle_id LEFT JOIN accounts a ON a.id = d.account_id
        LEFT JOIN latest_positions l ON l.device_id = d.id
        WHERE v.plate ILIKE %s OR d.identifier ILIKE %s OR d.msisdn ILIKE %s OR a.name ILIKE %s
        ORDER BY d.id LIMIT %s""", (like, like, like, like, limit))
    return [DeviceHit(**r) for r in rows]


# Diagnostics ---------------------------------------------------------------------------------------------------------


class StepOut(BaseModel):
    name: str = Field(examples=["reporting"])
    status: str = Field(description="running | ok | fail | warn | skipped", examples=["ok"])
    summary: str = Field(examples=["20 reports in 24 h, last 12 s ago"])
    evidence: dict[str, Any] = Field(examples=[{"reports_24h": 20, "valid_fix_share": 1.0}])
    started_at: datetime | None = None
    finished_at: datetime | None = None


class TicketRef(BaseModel):
    id: int = Field(examples=[3])
    number: str = Field(examples=["AVL-2026-000042"])
    type: str = Field(examples=["field_service"])
    state: str = Field(examples=["open"])


class DiagnosticRun(BaseModel):
    id: int = Field(examples=[17])
    device_id: int = Field(examples=[42])
    identifier: str = Field(examples=["862170010000001"])
    plate: str | None = Field(examples=["AB123CD"])
    requested_by: str = Field(examples=["Support Desk <desk@support.local>"])
    status: Literal["queued", "running", "done", "failed"] = Field(examples=["running"])
    started_at: datetime
    finished_at: datetime | None
    steps: list[StepOut] = Field(description="Each step as soon as it finished, in the procedure's order")
    verdict: str | None = Field(examples=["unreachable"])
    explanation: str | None = Field(examples=["The terminal neither reports nor answers SMS."])
    ticket: TicketRef | None = None


RUN_SQL = """
SELECT r.*, d.identifier, v.plate, t.number AS ticket_number, t.type AS ticket_type, t.state AS ticket_state
FROM diagnostic_runs r JOIN devices d ON d.id = r.device_id LEFT JOIN vehicles v ON v.id = d.vehicle_id
LEFT JOIN tickets t ON t.id = r.ticket_id
"""


def _run(row: dict[str, Any]) -> DiagnosticRun:
    verdict = row["verdict"]
    explanation = EXPLANATION.get(Verdict(verdict)) if verdict in VERDICTS else None
    ticket = None
    if row["ticket_id"] is not None:
        ticket = TicketRef(id=row["ticket_id"], number=row["ticket_number"], type=row["ticket_type"],
                           state=row["ticket_state"])
    return DiagnosticRun(id=row["id"], device_id=row["device_id"], identifier=row["identifier"], plate=row["plate"],
                         requested_by=row["requested_by"], status=row["status"], started_at=row["started_at"],
                         finished_at=row["finished_at"], steps=[StepOut(**s) for s in row["steps"]], verdict=verdict,
                         explanation=explanation, ticket=ticket)


@router.post("/devices/{device_id}/diagnostics", status_code=202, response_model=DiagnosticRun,
             summary="Run the fault checklist on a device",
             responses={404: {"description": "no such device"}, 409: {"description": "the device has no account"}})
async def start_diagnostics(device_id: int, user: Support, conn: Db) -> DiagnosticRun:
    """Queues a checklist run (account, platform, reporting, SMS ping, verdict and action); the
    diagnostics worker claims it within a second or so. Follow it with ``GET /diagnostics/{run_id}``."""
    device = await device_in_scope(conn, user, device_id)
    if device["account_id"] is None:
        raise ApiError(409, "no_account", f"device {device_id} is not attributed to any account: nothing to diagnose")
    row = await _one(conn, "INSERT INTO diagnostic_runs (device_id, requested_by, status) VALUES (%s, %s, 'queued')"
                     " RETURNING id", (device_id, _who(user)))
    assert row is not None
    run = await _one(conn, RUN_SQL + " WHERE r.id = %s", (row["id"],))
    assert run is not None
    return _run(run)


@router.get("/diagnostics/{run_id}", response_model=DiagnosticRun, summary="A checklist run, step by step")
async def get_diagnostics(run_id: int, user: Support, conn: Db) -> DiagnosticRun:
    """Status, the steps finished so far with their evidence, the verdict and the ticket it opened."""
    row = await _one(conn, RUN_SQL + " WHERE r.id = %s", (run_id,))
    if row is None:
        raise not_found(f"diagnostic run {run_id}")
    return _run(row)


@router.get("/devices/{device_id}/diagnostics", response_model=list[DiagnosticRun],
            summary="Past checklist runs of a device")
async def list_diagnostics(device_id: int, user: Support, conn: Db,
                           limit: Annotated[int, Query(ge=1, le=200)] = 20) -> list[DiagnosticRun]:
    """Newest first, the sweep's and the support center's."""
    await device_in_scope(conn, user, device_id)
    rows = await _all(conn, RUN_SQL + " WHERE r.device_id = %s ORDER BY r.started_at DESC, r.id DESC LIMIT %s",
                      (device_id, limit))
    return [_run(r) for r in rows]


# Tickets -------------------------------------------------------------------------------------------------------------


class Activity(BaseModel):
    id: int = Field(examples=[9])
    at: datetime
    who: str = Field(examples=["Support Desk <desk@support.local>"])
    channel: Channel = Field(examples=["phone"])
    reason: str | None = Field(examples=["customer reports the van is not shown on the map"])
    supplied: str | None = Field(examples=["ticket number given to the customer"])
    pending: str | None = Field(examples=["take the van to Centro Chacao"])
    solution: str | None = Field(examples=[None])
    protocol_applied: str | None = Field(examples=["fault-support checklist"])
    appointment_at: datetime | None = Field(examples=["2026-11-25T09:00:00-04:00"])
    notes: str | None = Field(examples=[None])


class ActivityIn(BaseModel):
    channel: Channel = Field(description="How the customer was reached", examples=["phone"])
    reason: str = Field(min_length=1, max_length=2000, examples=["customer called: van still not on the map"])
    supplied: str | None = Field(default=None, max_length=4000, examples=["nearest centers: Centro Chacao"])
    pending: str | None = Field(default=None, max_length=4000, examples=["customer brings the van tomorrow 9:00"])
    solution: str | None = Field(default=None, max_length=4000, examples=[None])
    protocol_applied: str | None = Field(default=None, max_length=200, examples=["field service intake"])
    appointment_at: datetime | None = Field(default=None, examples=["2026-11-25T09:00:00-04:00"])
    notes: str | None = Field(default=None, max_length=4000, examples=[None])


class Ticket(BaseModel):
    id: int = Field(examples=[3])
    number: str = Field(examples=["AVL-2026-000042"])
    type: str = Field(examples=["field_service"])
    category: str = Field(examples=["unreachable"])
    state: TicketState = Field(examples=["open"])
    title: str = Field(examples=["AB123CD: The terminal neither reports nor answers SMS."])
    account_id: int | None = Field(examples=[1])
    account_name: str | None = Field(examples=["Transportes Ávila"])
    device_id: int | None = Field(examples=[42])
    identifier: str | None = Field(examples=["862170010000001"])
    plate: str | None = Field(examples=["AB123CD"])
    recurrence_of: int | None = Field(examples=[None])
    dead_on_arrival: bool = Field(examples=[False])
    opened_at: datetime
    sla_due_at: datetime | None
    first_response_at: datetime | None
    resolved_at: datetime | None
    closed_at: datetime | None


class TicketDetail(Ticket):
    activities: list[Activity] = Field(description="Every interaction, oldest first")


class TicketIn(BaseModel):
    type: Literal["technical", "information", "field_service"] = Field(examples=["information"])
    category: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[a-z0-9_]+$",
                                 description="Fault or request category (default: the type)",
                                 examples=["billing_question"])
    title: str = Field(min_length=1, max_length=300, examples=["Customer asks how to export reports for a claim"])
    account_id: int = Field(examples=[1])
    device_id: int | None = Field(default=None, description="The terminal concerned, if any (must be the account's)",
                                  examples=[42])
    activity: ActivityIn = Field(description="The call that opened it")


class StateChange(BaseModel):
    state: TicketState = Field(examples=["in_progress"])
    note: str | None = Field(default=None, max_length=2000, examples=["technician assigned"])
    channel: Channel = Field("web", examples=["web"])


TICKET_SQL = """
SELECT t.*, a.name AS account_name, d.identifier, v.plate
FROM tickets t LEFT JOIN accounts a ON a.id = t.account_id LEFT JOIN devices d ON d.id = t.device_id
LEFT JOIN vehicles v ON v.id = d.vehicle_id
"""


async def _ticket(conn: AsyncConnection, ref: str) -> TicketDetail:
    if ref.isdigit():
        row = await _one(conn, TICKET_SQL + " WHERE t.id = %s", (int(ref),))
    else:
        row = await _one(conn, TICKET_SQL + " WHERE t.number = upper(%s)", (ref,))
    if row is None:
        raise not_found(f"ticket {ref}")
    activities = await _all(conn, "SELECT * FROM ticket_activities WHERE ticket_id = %s ORDER BY at, id", (row["id"],))
    return TicketDetail(**row, activities=[Activity(**{k: v for k, v in a.items() if k != "ticket_id"})
                                           for a in activities])


async def _add_activity(conn: AsyncConnection, ticket_id: int, who: str, body: ActivityIn) -> None:
    await conn.execute(
        "INSERT INTO ticket_activities (ticket_id, who, channel, reason, supplied, pending, solution, protocol_applied,"
        " appointment_at, notes) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (ticket_id, who, body.channel, body.reason, body.supplied, body.pending, body.solution, body.protocol_applied,
         body.appointment_at, body.notes))
    # A person acting on the ticket is its first response.
    await conn.execute("UPDATE tickets SET first_response_at = now() WHERE id = %s AND first_response_at IS NULL",
                       (ticket_id,))


@router.get("/tickets", response_model=list[Ticket], summary="Search tickets")
async def search_tickets(
    user: Support, conn: Db,
    number: Annotated[str | None, Query(description="The number the customer quotes", examples=["AVL-2026-000042"])] = None,
    account_id: Annotated[int | None, Query()] = None,
    device: Annotated[str | None, Query(description="Device id, IMEI/ESN or MSISDN")] = None,
    plate: Annotated[str | None, Query(description="Vehicle plate (part of it)")] = None,
    state: Annotated[list[TicketState] | None, Query(description="One or more states")] = None,
    open_only: Annotated[bool, Query(description="Only tickets not resolved or closed")] = False,
    category: Annotated[str | None, Query(examples=["unreachable"])] = None,
    type: Annotated[Literal["technical", "information", "field_service", "platform"] | None, Query()] = None,
    q: Annotated[str | None, Query(min_length=2, description="Text in the title or any activity")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[Ticket]:
    """Newest first. Filters combine (AND)."""
    where: list[str] = []
    params: list[Any] = []
    if number:
        where.append("t.number = upper(%s)")
        params.append(number.strip())
    if account_id is not None:
        where.append("t.account_id = %s")
        params.append(account_id)
    if device:
        where.append("(d.identifier = %s OR d.msisdn = %s OR d.id::text = %s)")
        params += [device, device, device]
    if plate:
        where.append("v.plate ILIKE %s")
        params.append(f"%{plate}%")
    if state:
        where.append("t.state = ANY(%s)")
        params.append(list(state))
    if open_only:
        where.append("t.state NOT IN ('resolved', 'closed')")
    if category:
        where.append("t.category = %s")
        params.append(category)
    if type:
        where.append("t.type = %s")
        params.append(type)
    if q:
        where.append("(t.title ILIKE %s OR EXISTS (SELECT 1 FROM ticket_activities x WHERE x.ticket_id = t.id AND"
                     " concat_ws(' ', x.reason, x.supplied, x.pending, x.solution, x.notes) ILIKE %s))")
        params += [f"%{q}%", f"%{q}%"]
    # The clauses are fixed text chosen above; every value is a parameter.
    sql = TICKET_SQL + (" WHERE " + " AND ".join(where) if where else "") + \
        " ORDER BY t.opened_at DESC, t.id DESC LIMIT %s OFFSET %s"
    rows = await _all(conn, sql, (*params, limit, offset))
    return [Ticket(**r) for r in rows]


@router.get("/tickets/{ref}", response_model=TicketDetail, summary="A ticket with its activities")
async def get_ticket(ref: str, user: Support, conn: Db) -> TicketDetail:
    """By id or by the number the customer quotes (``AVL-2026-000042``)."""
    return await _ticket(conn, ref)


@router.post("/tickets", status_code=201, response_model=TicketDetail, summary="Open a ticket for a customer call",
             responses={409: {"description": "the device already has an open ticket of this category"}})
async def create_ticket(body: TicketIn, user: Support, conn: Db) -> TicketDetail:
    """A technical, information or field-service case opened by hand; the call is its first activity."""
    account = await _one(conn, "SELECT id FROM accounts WHERE id = %s", (body.account_id,))
    if account is None:
        raise ApiError(422, "invalid_request", f"account_id: account {body.account_id} not found")
    if body.device_id is not None and await _one(conn, "SELECT id FROM devices WHERE id = %s AND account_id = %s",
                                                 (body.device_id, body.account_id)) is None:
        raise ApiError(422, "invalid_request", f"device_id: device {body.device_id} is not one of account"
                       f" {body.account_id}'s")
    category = body.category or body.type
    try:
        async with conn.transaction():
            number = await new_number(conn)
            row = await _one(conn, "INSERT INTO tickets (number, account_id, device_id, type, category, title, sla_due_at)"
                             " VALUES (%s, %s, %s, %s, %s, %s, now() + %s) RETURNING id",
                             (number, body.account_id, body.device_id, body.type, category, body.title, SLA[body.type]))
            assert row is not None
            await _add_activity(conn, row["id"], _who(user), body.activity)
    except psycopg.errors.UniqueViolation as exc:
        existing = await _one(conn, "SELECT number FROM tickets WHERE device_id = %s AND category = %s"
                              " AND state NOT IN ('resolved', 'closed')", (body.device_id, category))
        raise ApiError(409, "ticket_open", f"device {body.device_id} already has open ticket"
                       f" {existing['number'] if existing else '?'} of category {category}") from exc
    return await _ticket(conn, str(row["id"]))


@router.post("/tickets/{ref}/state", response_model=TicketDetail, summary="Change a ticket's state",
             responses={409: {"description": "impossible transition"}})
async def change_state(ref: str, body: StateChange, user: Support, conn: Db) -> TicketDetail:
    """Moves the ticket and records the change as an activity. Leaving ``open`` (or any person's
    action) sets ``first_response_at``; ``resolved`` sets ``resolved_at`` (reopening clears it);
    ``closed`` sets ``closed_at`` and is final."""
    ticket = await _ticket(conn, ref)
    if body.state not in TRANSITIONS[ticket.state]:
        raise ApiError(409, "invalid_transition", f"ticket {ticket.number} cannot go from {ticket.state} to {body.state}")
    try:
        async with conn.transaction():
            cur = await conn.execute(
                "UPDATE tickets SET state = %s,"
                " resolved_at = CASE WHEN %s = 'resolved' THEN now() WHEN %s = 'closed' THEN resolved_at END,"
                " closed_at = CASE WHEN %s = 'closed' THEN now() END,"
                " first_response_at = coalesce(first_response_at, now())"
                " WHERE id = %s AND state = %s",
                (body.state, body.state, body.state, body.state, ticket.id, ticket.state))
            if cur.rowcount != 1:
                raise ApiError(409, "conflict", f"ticket {ticket.number} changed meanwhile; reload it")
            await _add_activity(conn, ticket.id, _who(user), ActivityIn(
                channel=body.channel, reason=f"state: {ticket.state} -> {body.state}", notes=body.note))
    except psycopg.errors.UniqueViolation as exc:  # reopening next to a newer open ticket of the same fault
        raise ApiError(409, "ticket_open", f"ticket {ticket.number} cannot be reopened: the device has another open"
                       f" ticket of category {ticket.category}") from exc
    return await _ticket(conn, str(ticket.id))


@router.post("/tickets/{ref}/activities", status_code=201, response_model=TicketDetail,
             summary="Record an interaction on a ticket", responses={409: {"description": "the ticket is closed"}})
async def add_activity(ref: str, body: ActivityIn, user: Support, conn: Db) -> TicketDetail:
    """Who (the user), through which channel, why, what was supplied, what is pending, the solution,
    the protocol applied and any appointment."""
    ticket = await _ticket(conn, ref)
    if ticket.state == "closed":
        raise ApiError(409, "ticket_closed", f"ticket {ticket.number} is closed")
    await _add_activity(conn, ticket.id, _who(user), body)
    return await _ticket(conn, str(ticket.id))


# Fleet health ---------------------------------------------------------------------------------------------------------


class SilentDevice(BaseModel):
    device_id: int = Field(examples=[42])
    identifier: str = Field(examples=["862170010000001"])
    plate: str | None = Field(examples=["AB123CD"])
    account_name: str | None = Field(examples=["Transportes Ávila"])
    report_interval_s: int = Field(examples=[60])
    last_received_at: datetime
    silent_for_s: float = Field(examples=[5400.0])
    open_ticket: str | None = Field(description="Its open ticket's number, if any", examples=[None])


class Heartbeat(BaseModel):
    component: str = Field(examples=["ingest"])
    instance: str = Field(examples=["avl-1:4242"])
    age_s: float = Field(examples=[2.1])
    alive: bool = Field(examples=[True])
    details: dict[str, Any] = Field(examples=[{"database_up": True, "spool_bytes": 0, "queue_rows": 0}])


class PlatformHealth(BaseModel):
    status: Literal["ok", "degraded"] = Field(examples=["ok"])
    problems: list[str] = Field(examples=[[]])
    processes: list[Heartbeat]
    newest_report_age_s: float | None = Field(examples=[1.4])


class FleetHealth(BaseModel):
    devices: dict[str, int] = Field(
        description=f"Devices by status and in total. account_blocked: the account is suspended or retired, a pre-paid"
                    f" account has no balance, or the line is suspended; never_reported: no report ever; offline: no"
                    f" report of any kind for {STATUS_INTERVALS} report intervals; gps_not_updated: reports arrive but"
                    f" the newest has no valid fix or its fix is older than {STATUS_INTERVALS} intervals; online:"
                    f" otherwise (the fleet routes' definitions)",
        examples=[{"online": 120, "gps_not_updated": 3, "offline": 7, "never_reported": 2, "account_blocked": 4,
                   "total": 136}])
    silent: list[SilentDevice] = Field(description="The offline devices (silent: nothing heard for"
                                                   f" {STATUS_INTERVALS} intervals), longest silence first")
    open_tickets: dict[str, int] = Field(description="Open tickets by category",
                                         examples=[{"unreachable": 4, "gps_fault": 1}])
    platform: PlatformHealth


STATUS_SQL = """
SELECT d.id, d.identifier, v.plate, a.name AS account_name, d.report_interval_s, h.heard_at,
       CASE WHEN a.status IN ('suspended', 'retired') OR (a.billing = 'pre_paid' AND a.balance <= 0)
                 OR d.line_status <> 'active' THEN 'account_blocked'
            WHEN h.heard_at IS NULL THEN 'never_reported'
            WHEN h.heard_at < w.since THEN 'offline'
            WHEN l.device_id IS NULL OR NOT l.valid OR l.fix_time < w.since THEN 'gps_not_updated'
            ELSE 'online' END AS status
FROM devices d
LEFT JOIN vehicles v ON v.id = d.vehicle_id
LEFT JOIN accounts a ON a.id = d.account_id
LEFT JOIN latest_positions l ON l.device_id = d.id
CROSS JOIN LATERAL (SELECT now() - make_interval(secs => %(intervals)s * d.report_interval_s) AS since) w
-- As the fleet routes: status reports without a fix count as heard from, looked up only when
-- the positions alone say the device is silent.
CROSS JOIN LATERAL (SELECT CASE WHEN l.last_received_at >= w.since THEN l.last_received_at
    ELSE greatest(l.last_received_at, (SELECT e.received_at FROM device_events e WHERE e.device_id = d.id
                                       ORDER BY e.time DESC LIMIT 1)) END AS heard_at) h
WHERE %(account)s::bigint IS NULL OR d.account_id = %(account)s::bigint
"""


@router.get("/fleet/health", response_model=FleetHealth, summary="The fleet health overview")
async def fleet_health(user: Support, conn: Db,
                       account_id: Annotated[int | None, Query(description="One account only")] = None,
                       silent_limit: Annotated[int, Query(ge=0, le=1000)] = 100) -> FleetHealth:
    """Device counts by status (account blocked / never reported / offline / gps not updated /
    online, as the fleet routes define them), the silent (offline) devices, open tickets by
    category, and platform health read from the services' heartbeats (as the checklist's
    platform step reads them)."""
    params = {"intervals": STATUS_INTERVALS, "account": account_id}
    rows = await _all(conn, "SELECT status, count(*) AS n FROM (" + STATUS_SQL + ") s GROUP BY status", params)
    counts = {s: 0 for s in ("online", "gps_not_updated", "offline", "never_reported", "account_blocked")}
    counts.update({r["status"]: int(r["n"]) for r in rows})
    counts["total"] = sum(counts.values())
    silent = await _all(conn, """
        SELECT s.id AS device_id, s.identifier, s.plate, s.account_name, s.report_interval_s,
               s.heard_at AS last_received_at, extract(epoch FROM now() - s.heard_at)::float8 AS silent_for_s,
               (SELECT t.number FROM tickets t WHERE t.device_id = s.id AND t.state NOT IN ('resolved', 'closed')
                ORDER BY t.opened_at DESC LIMIT 1) AS open_ticket
        FROM (""" + STATUS_SQL + """) s WHERE s.status = 'offline' ORDER BY s.heard_at LIMIT %(limit)s""",
                        {**params, "limit": silent_limit})
    tickets = await _all(conn, "SELECT category, count(*) AS n FROM tickets WHERE state NOT IN ('resolved', 'closed')"
                         " AND (%s::bigint IS NULL OR account_id = %s) GROUP BY category ORDER BY category",
                         (account_id, account_id))
    return FleetHealth(devices=counts, silent=[SilentDevice(**r) for r in silent],
                       open_tickets={r["category"]: int(r["n"]) for r in tickets},
                       platform=await _platform(conn))


async def _platform(conn: AsyncConnection) -> PlatformHealth:
    """The heartbeats in ``platform_status``, judged as diagnostics/steps/platform.py judges them."""
    beats = await _all(conn, "SELECT component, instance, details, extract(epoch FROM now() - updated_at)::float8 AS age"
                       " FROM platform_status WHERE updated_at > now() - interval '1 day' ORDER BY component, instance", ())
    newest = await _one(conn, "SELECT extract(epoch FROM now() - max(last_received_at))::float8 AS age"
                        " FROM latest_positions", ())
    processes = [Heartbeat(component=b["component"], instance=b["instance"], age_s=round(b["age"], 1),
                           alive=b["age"] <= HEARTBEAT_STALE_S, details=b["details"]) for b in beats]
    problems: list[str] = []
    ingest = [p for p in processes if p.component == "ingest" and p.alive]
    if not ingest:
        problems.append(f"no ingest process alive (no heartbeat in the last {HEARTBEAT_STALE_S:.0f} s)")
    for p in ingest:
        d = p.details
        if not d.get("database_up", True):
            problems.append(f"ingest {p.instance} has lost its database connection")
        if d.get("spool_bytes", 0) > 0:
            problems.append(f"ingest {p.instance} is spooling ({d['spool_bytes']} bytes waiting)")
        if d.get("queue_rows", 0) > QUEUE_HIGH * d.get("queue_max_rows", 1 << 62):
            problems.append(f"ingest {p.instance} writer queue is {d['queue_rows']} rows (falling behind)")
    age = newest["age"] if newest else None
    return PlatformHealth(status="degraded" if problems else "ok", problems=problems, processes=processes,
                          newest_report_age_s=round(age, 1) if age is not None else None)


# Unknown devices -----------------------------------------------------------------------------------------------------


class UnknownDevice(BaseModel):
    identifier: str = Field(examples=["862170010000099"])
    protocol: str = Field(examples=["gl200"])
    source_address: str | None = Field(examples=["190.202.1.7:40212"])
    first_seen: datetime
    last_seen: datetime
    count: int = Field(description="Frames received (none acknowledged)", examples=[14])
    last_frame_hex: str | None = Field(description="The last frame (first 512 bytes), hex", examples=["2b524553503a"])
    last_frame_text: str | None = Field(description="The same, when it is printable text",
                                        examples=["+RESP:GTFRI,060100,862170010000099,..."])


@router.get("/unknown-devices", response_model=list[UnknownDevice], summary="Terminals seen but not registered",
            description="Newest first. Their reports are not acknowledged, so they keep them until an installer"
                        " registers them (`POST /api/v1/installers/installations`); registered ones drop off the list.")
async def unknown_devices(user: Staff, conn: Db,
                          protocol: Annotated[str | None, Query(examples=["gl200"])] = None,
                          limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[UnknownDevice]:
    rows = await _all(conn, "SELECT u.* FROM unknown_devices u WHERE (%s::text IS NULL OR u.protocol = %s)"
                      " AND NOT EXISTS (SELECT 1 FROM devices d WHERE d.identifier = u.identifier"
                      " AND d.protocol = u.protocol) ORDER BY u.last_seen DESC LIMIT %s", (protocol, protocol, limit))
    out = []
    for r in rows:
        raw = bytes(r["last_raw"][:512]) if r["last_raw"] is not None else None
        text = None
        if raw is not None:
            decoded = raw.decode("ascii", "replace")
            text = decoded if decoded.strip().isprintable() else None
        out.append(UnknownDevice(identifier=r["identifier"], protocol=r["protocol"], source_address=r["source_address"],
                                 first_seen=r["first_seen"], last_seen=r["last_seen"], count=r["count"],
                                 last_frame_hex=raw.hex() if raw is not None else None, last_frame_text=text))
    return out
