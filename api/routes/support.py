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

Tickets, as the support desk works them (the rules are ``diagnostics.tickets``'): the intake
(who reported the fault, through which channel, the product, quantity, purchase or installation
date, the fault, the resolution asked for), a queue and an agent, the 24 h rule to inform the
customer and the 7-day deadline to bring the vehicle in, each shown as due or overdue and
searchable. A field-service ticket resolves only when the checklist, run again from here as a
library, finds the vehicle healthy: asynchronously (202 and the run's id), since a silent
vehicle's run waits for its SMS ping.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

import psycopg
from fastapi import APIRouter, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from pydantic import BaseModel, Field

from api.deps import ApiError, Db, User, device_in_scope, not_found, require
from api.fleet_snapshot import STATUS_INTERVALS
from avl import phone
from avl.config import Settings, load_settings
from avl.db import first_line
from avl.i18n import t
from diagnostics import checklist, tickets
from diagnostics.cli import sms_worker
from diagnostics.context import Context, DiagnoseError
from diagnostics.model import EXPLANATION, Verdict
from diagnostics.steps.platform import HEARTBEAT_STALE_S, QUEUE_HIGH

log = logging.getLogger("avl.api.support")

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
SLA = {**tickets.SLA, "information": timedelta(hours=24)}

TicketState = Literal["open", "in_progress", "waiting_customer", "at_installation_center", "resolved", "closed"]
Channel = Literal["phone", "email", "whatsapp", "sms", "web", "system"]
# How a fault came in: *626 (the customer line), *FLOTA (the account's sales consultant), or another channel.
IntakeChannel = Literal["customer_line", "consultant_line", "phone", "email", "whatsapp", "sms", "web", "system"]
RequestedResolution = Literal["repair", "replacement", "remote_fix", "information", "other"]
Queue = Literal["desk", "technical", "field_service", "carrier", "platform"]


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


class StepMessage(BaseModel):
    key: str = Field(examples=["checklist:reporting.ok_moving"])
    params: dict[str, Any] = Field(default_factory=dict, examples=[{"reports": 20, "hours": "24.0", "age": 12,
                                                                    "expected": 30}])


class StepOut(BaseModel):
    name: str = Field(examples=["reporting"])
    status: str = Field(description="running | ok | fail | warn | skipped", examples=["ok"])
    summary: str = Field(description="What the step found, in English", examples=["20 reports in 24 h, last 12 s ago"])
    messages: list[StepMessage] = Field(
        default_factory=list, description="The same as message catalogue keys (`avl/i18n/<lang>/checklist.json`) and"
        " their values, to show it in the reader's language")
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
    contact: str | None = Field(description="The person spoken to", examples=["María Pérez, fleet manager"])
    reason: str | None = Field(examples=["customer reports the van is not shown on the map"])
    supplied: str | None = Field(examples=["ticket number given to the customer"])
    pending: str | None = Field(examples=["take the van to Centro Chacao"])
    solution: str | None = Field(examples=[None])
    protocol_applied: str | None = Field(examples=["fault-support checklist"])
    appointment_at: datetime | None = Field(examples=["2026-11-25T09:00:00-04:00"])
    notes: str | None = Field(examples=[None])
    customer_message: str | None = Field(description="What the customer was told (the client sees it)",
                                         examples=["Su caso es AVL-2026-000042; lleve la camioneta al Centro Chacao."])


class ActivityIn(BaseModel):
    channel: Channel = Field(description="How the customer was reached", examples=["phone"])
    contact: str | None = Field(default=None, max_length=200, description="The person spoken to",
                                examples=["María Pérez, fleet manager"])
    reason: str = Field(min_length=1, max_length=2000, examples=["customer called: van still not on the map"])
    supplied: str | None = Field(default=None, max_length=4000, examples=["nearest centers: Centro Chacao"])
    pending: str | None = Field(default=None, max_length=4000, examples=["customer brings the van tomorrow 9:00"])
    solution: str | None = Field(default=None, max_length=4000, examples=[None])
    protocol_applied: str | None = Field(default=None, max_length=200, examples=["field service intake"])
    appointment_at: datetime | None = Field(default=None, examples=["2026-11-25T09:00:00-04:00"])
    notes: str | None = Field(default=None, max_length=4000, examples=[None])
    customer_message: str | None = Field(
        default=None, max_length=2000, description="What the customer was told, in their words: the client sees it on"
        " its ticket, and it meets the 24 h rule to inform the customer", examples=["Su caso es AVL-2026-000042."])


class ResolutionCheck(BaseModel):
    run_id: int = Field(examples=[18])
    status: Literal["queued", "running", "done", "failed"] = Field(examples=["done"])
    verdict: str | None = Field(examples=["healthy"])
    outcome: Literal["checking", "resolved", "refused"] = Field(
        description="checking: the run goes on; resolved: it found the vehicle healthy; refused: it did not (its"
                    " verdict says why) or it failed", examples=["resolved"])
    started_at: datetime


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
    # Intake
    intake_channel: IntakeChannel = Field(examples=["customer_line"])
    reported_by: str | None = Field(examples=["María Pérez, fleet manager"])
    product_model: str | None = Field(examples=["GL300"])
    quantity: int = Field(examples=[1])
    purchase_date: date | None = Field(examples=["2026-10-02"])
    fault_reason: str | None = Field(examples=["the van does not show on the map since Monday"])
    requested_resolution: RequestedResolution | None = Field(examples=["repair"])
    intake_missing: list[str] = Field(description="Intake items not captured yet (ask the customer)",
                                      examples=[["purchase_date"]])
    # Who works it
    queue: Queue = Field(examples=["field_service"])
    assignee_id: int | None = Field(examples=[7])
    assignee_name: str | None = Field(examples=["Mesa de ayuda"])
    assigned_at: datetime | None
    # The 24 h rule: the customer is told what is happening within a day of the opening (or a reopening).
    inform_due_at: datetime | None
    customer_informed_at: datetime | None
    inform_status: Literal["due", "overdue", "informed"] | None = Field(
        description="due: the customer is still to be told, within the 24 h; overdue: past them; informed: told",
        examples=["due"])
    # Field service: the vehicle at a certified center within 7 days of the diagnosis.
    bring_in_due_at: datetime | None
    brought_in_at: datetime | None
    reminded_at: datetime | None = Field(description="When the one reminder SMS was queued")
    bring_in_status: Literal["due", "overdue", "brought_in"] | None = Field(examples=["due"])
    center_id: int | None = Field(description="The certified center the case named (nearest)", examples=[1])
    center_name: str | None = Field(examples=["Centro Chacao"])
    resolution: ResolutionCheck | None = Field(
        description="The checklist run asked for to resolve this field-service ticket, and what it found")


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
    intake_channel: IntakeChannel | None = Field(
        default=None, description="How the fault came in: customer_line (*626), consultant_line (*FLOTA, the account's"
        " sales consultant), phone, email, whatsapp, sms, web; default: the opening activity's channel",
        examples=["customer_line"])
    reported_by: str | None = Field(default=None, max_length=200, description="Who reported it (also the opening"
                                    " activity's person spoken to)", examples=["María Pérez, fleet manager"])
    product_model: str | None = Field(default=None, max_length=100, description="Default: the terminal's model",
                                      examples=["GL300"])
    quantity: int = Field(default=1, ge=1, le=100_000, description="Units concerned", examples=[1])
    purchase_date: date | None = Field(default=None, description="Purchase or installation date, as the customer"
                                       " states it (default: the terminal's installation date)", examples=["2026-10-02"])
    fault_reason: str | None = Field(default=None, max_length=2000, description="The fault as the customer tells it",
                                     examples=["the van does not show on the map since Monday"])
    requested_resolution: RequestedResolution | None = Field(default=None, description="What the customer asks for",
                                                             examples=["repair"])
    queue: Queue | None = Field(default=None, description="Default: by type (field_service, technical, desk)",
                                examples=[None])
    assignee_id: int | None = Field(default=None, description="A support agent to work it", examples=[None])


class TicketUpdate(BaseModel):
    """Routing (queue, agent), the escalation of a technical case to field service, and the intake
    completed later. Fields left out are unchanged; ``assignee_id: null`` unassigns."""

    assignee_id: int | None = Field(default=None, description="A support agent (user id); null: nobody",
                                    examples=[7])
    queue: Queue | None = Field(default=None, examples=["field_service"])
    type: Literal["field_service"] | None = Field(
        default=None, description="field_service: the remote fix did not work, the vehicle goes to a certified center"
        " (the 7-day deadline starts and the customer is told by SMS)", examples=[None])
    reported_by: str | None = Field(default=None, max_length=200, examples=["María Pérez"])
    product_model: str | None = Field(default=None, max_length=100, examples=["GL300"])
    quantity: int | None = Field(default=None, ge=1, le=100_000, examples=[1])
    purchase_date: date | None = Field(default=None, examples=["2026-10-02"])
    fault_reason: str | None = Field(default=None, max_length=2000, examples=["no positions since Monday"])
    requested_resolution: RequestedResolution | None = Field(default=None, examples=["repair"])
    note: str | None = Field(default=None, max_length=2000, examples=["the APN fix did not take"])
    channel: Channel = Field("web", examples=["web"])


class StateChange(BaseModel):
    state: TicketState = Field(examples=["in_progress"])
    note: str | None = Field(default=None, max_length=2000, examples=["technician assigned"])
    channel: Channel = Field("web", examples=["web"])


class ResolutionPending(BaseModel):
    message: str = Field(examples=["the checklist runs again (run 18): the ticket resolves if the vehicle is healthy"])
    run_id: int = Field(description="Follow it with GET /support/diagnostics/{run_id}", examples=[18])
    ticket: TicketDetail


TICKET_SQL = """
SELECT t.*, a.name AS account_name, d.identifier, v.plate, u.name AS assignee_name, c.name AS center_name,
       r.status AS resolution_status, r.verdict AS resolution_verdict, r.started_at AS resolution_started_at
FROM tickets t LEFT JOIN accounts a ON a.id = t.account_id LEFT JOIN devices d ON d.id = t.device_id
LEFT JOIN vehicles v ON v.id = d.vehicle_id LEFT JOIN users u ON u.id = t.assignee_id
LEFT JOIN installation_centers c ON c.id = t.center_id LEFT JOIN diagnostic_runs r ON r.id = t.resolution_run_id
"""
INTAKE = ("reported_by", "product_model", "purchase_date", "fault_reason", "requested_resolution")
UNRESOLVED = "t.state NOT IN ('resolved', 'closed')"
# The 24 h rule and the bring-in deadline as filters, in the terms of ``_ticket_out``.
INFORM_FILTERS = {
    "due": f"t.customer_informed_at IS NULL AND t.inform_due_at >= now() AND {UNRESOLVED}",
    "overdue": f"t.customer_informed_at IS NULL AND t.inform_due_at < now() AND {UNRESOLVED}",
    "informed": "t.customer_informed_at IS NOT NULL",
}
BRING_IN_FILTERS = {
    "due": f"t.brought_in_at IS NULL AND t.bring_in_due_at >= now() AND {UNRESOLVED}",
    "overdue": f"t.brought_in_at IS NULL AND t.bring_in_due_at < now() AND {UNRESOLVED}",
    "brought_in": "t.brought_in_at IS NOT NULL",
}


def _ticket_out(row: dict[str, Any]) -> dict[str, Any]:
    """The row with what is computed from it: intake gaps, SLA states, the resolution check."""
    now = datetime.now(UTC)
    closed = row["state"] in tickets.CLOSED
    inform = ("informed" if row["customer_informed_at"] is not None else None if closed or row["inform_due_at"] is None
              else "overdue" if row["inform_due_at"] < now else "due")
    bring_in = (None if row["bring_in_due_at"] is None else "brought_in" if row["brought_in_at"] is not None
                else None if closed else "overdue" if row["bring_in_due_at"] < now else "due")
    resolution = None
    if row["resolution_run_id"] is not None:
        status, verdict = row["resolution_status"], row["resolution_verdict"]
        healthy = verdict in {v.value for v in tickets.HEALTHY}
        outcome: Literal["checking", "resolved", "refused"] = (
            "checking" if status in ("queued", "running") else "resolved" if status == "done" and healthy
            else "refused")
        resolution = ResolutionCheck(run_id=row["resolution_run_id"], status=status, verdict=verdict, outcome=outcome,
                                     started_at=row["resolution_started_at"])
    missing = [] if row["type"] == "platform" else [k for k in INTAKE if row[k] is None]
    return {**row, "intake_missing": missing, "inform_status": inform, "bring_in_status": bring_in,
            "resolution": resolution}


async def _ticket(conn: AsyncConnection, ref: str) -> TicketDetail:
    if ref.isascii() and ref.isdigit():  # not "²", which str.isdigit() takes for a digit
        row = await _one(conn, TICKET_SQL + " WHERE t.id = %s", (int(ref),))
    else:
        row = await _one(conn, TICKET_SQL + " WHERE t.number = upper(%s)", (ref,))
    if row is None:
        raise not_found(f"ticket {ref}")
    activities = await _all(conn, "SELECT * FROM ticket_activities WHERE ticket_id = %s ORDER BY at, id", (row["id"],))
    return TicketDetail(**_ticket_out(row), activities=[Activity(**{k: v for k, v in a.items() if k != "ticket_id"})
                                                        for a in activities])


async def _add_activity(conn: AsyncConnection, ticket_id: int, who: str, body: ActivityIn) -> None:
    await tickets.add_activity(conn, ticket_id, who=who, **body.model_dump())
    # A person acting on the ticket is its first response.
    await conn.execute("UPDATE tickets SET first_response_at = now() WHERE id = %s AND first_response_at IS NULL",
                       (ticket_id,))


async def _agent(conn: AsyncConnection, user_id: int) -> dict[str, Any]:
    """A user tickets can be assigned to: an active support agent (or admin)."""
    row = await _one(conn, "SELECT id, name, email FROM users WHERE id = %s AND active AND role IN ('support', 'admin')",
                     (user_id,))
    if row is None:
        raise ApiError(422, "invalid_request", f"assignee_id: user {user_id} is not an active support agent")
    return row


def _settings(request: Request) -> Settings:
    found: Settings | None = getattr(request.app.state, "settings", None)
    return found or load_settings()


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
    queue: Annotated[Queue | None, Query()] = None,
    assignee_id: Annotated[int | None, Query(description="Tickets of this agent")] = None,
    unassigned: Annotated[bool, Query(description="Only tickets nobody is assigned to")] = False,
    inform: Annotated[Literal["due", "overdue", "informed"] | None, Query(
        description="The 24 h rule: due (the customer still to be told, in time), overdue, informed; due and overdue"
                    " list the most urgent first")] = None,
    bring_in: Annotated[Literal["due", "overdue", "brought_in"] | None, Query(
        description="The 7-day deadline to bring the vehicle in: due, overdue (most urgent first), brought_in")] = None,
    q: Annotated[str | None, Query(min_length=2, description="Text in the title or any activity")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[Ticket]:
    """Newest first (or by deadline, see ``inform`` and ``bring_in``). Filters combine (AND)."""
    where: list[str] = []
    params: list[Any] = []
    if number:
        where.append("t.number = upper(%s)")
        params.append(number.strip())
    if account_id is not None:
        where.append("t.account_id = %s")
        params.append(account_id)
    if device:
        try:
            msisdn = phone.normalise(device)  # a line number in any spelling
        except ValueError:
            msisdn = device
        where.append("(d.identifier = %s OR d.msisdn = %s OR d.id::text = %s)")
        params += [device, msisdn, device]
    if plate:
        where.append("v.plate ILIKE %s")
        params.append(f"%{plate}%")
    if state:
        where.append("t.state = ANY(%s)")
        params.append(list(state))
    if open_only:
        where.append(UNRESOLVED)
    if category:
        where.append("t.category = %s")
        params.append(category)
    if type:
        where.append("t.type = %s")
        params.append(type)
    if queue:
        where.append("t.queue = %s")
        params.append(queue)
    if assignee_id is not None:
        where.append("t.assignee_id = %s")
        params.append(assignee_id)
    if unassigned:
        where.append("t.assignee_id IS NULL")
    order = "t.opened_at DESC, t.id DESC"
    if inform:
        where.append(INFORM_FILTERS[inform])
        if inform != "informed":
            order = "t.inform_due_at, t.id"
    if bring_in:
        where.append(BRING_IN_FILTERS[bring_in])
        if bring_in != "brought_in":
            order = "t.bring_in_due_at, t.id"
    if q:
        where.append("(t.title ILIKE %s OR EXISTS (SELECT 1 FROM ticket_activities x WHERE x.ticket_id = t.id AND"
                     " concat_ws(' ', x.reason, x.supplied, x.pending, x.solution, x.notes, x.contact,"
                     " x.customer_message) ILIKE %s))")
        params += [f"%{q}%", f"%{q}%"]
    # The clauses are fixed text chosen above; every value is a parameter.
    sql = TICKET_SQL + (" WHERE " + " AND ".join(where) if where else "") + f" ORDER BY {order} LIMIT %s OFFSET %s"
    rows = await _all(conn, sql, (*params, limit, offset))
    return [Ticket(**_ticket_out(r)) for r in rows]


@router.get("/tickets/{ref}", response_model=TicketDetail, summary="A ticket with its activities")
async def get_ticket(ref: str, user: Support, conn: Db) -> TicketDetail:
    """By id or by the number the customer quotes (``AVL-2026-000042``)."""
    return await _ticket(conn, ref)


@router.post("/tickets", status_code=201, response_model=TicketDetail, summary="Open a ticket for a customer call",
             responses={409: {"description": "the device already has an open ticket of this category"}})
async def create_ticket(body: TicketIn, user: Support, conn: Db) -> TicketDetail:
    """A technical, information or field-service case opened by hand; the call is its first
    activity. The intake (who reported it, through which channel, the product, quantity, purchase
    or installation date, the fault, the resolution asked for) is recorded with it; what is
    missing is listed in ``intake_missing``. A field-service case starts the 7-day deadline to
    bring the vehicle in, naming the certified center nearest to the vehicle."""
    account = await _one(conn, "SELECT id FROM accounts WHERE id = %s", (body.account_id,))
    if account is None:
        raise ApiError(422, "invalid_request", f"account_id: account {body.account_id} not found")
    device = None
    if body.device_id is not None:
        device = await _one(conn, "SELECT d.id, d.model, coalesce(d.purchased_at, d.installed_at) AS bought,"
                            " l.latitude, l.longitude FROM devices d"
                            " LEFT JOIN latest_positions l ON l.device_id = d.id WHERE d.id = %s AND d.account_id = %s",
                            (body.device_id, body.account_id))
        if device is None:
            raise ApiError(422, "invalid_request", f"device_id: device {body.device_id} is not one of account"
                           f" {body.account_id}'s")
    if body.assignee_id is not None:
        await _agent(conn, body.assignee_id)
    category = body.category or body.type
    bring_in_due = datetime.now(UTC) + tickets.BRING_IN_WITHIN if body.type == "field_service" else None
    centers = (await tickets.nearest_centers(conn, device["latitude"], device["longitude"], 1)
               if bring_in_due and device else [])
    activity = body.activity if body.activity.contact or not body.reported_by else \
        body.activity.model_copy(update={"contact": body.reported_by})
    try:
        async with conn.transaction():
            number = await tickets.new_number(conn)
            row = await _one(
                conn, "INSERT INTO tickets (number, account_id, device_id, type, category, title, sla_due_at, queue,"
                " assignee_id, assigned_at, inform_due_at, bring_in_due_at, center_id, intake_channel, reported_by,"
                " product_model, quantity, purchase_date, fault_reason, requested_resolution)"
                " VALUES (%s, %s, %s, %s, %s, %s, now() + %s, %s, %s, CASE WHEN %s::bigint IS NOT NULL THEN now() END,"
                " now() + %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (number, body.account_id, body.device_id, body.type, category, body.title, SLA[body.type],
                 body.queue or tickets.queue_for(body.type, category), body.assignee_id, body.assignee_id,
                 tickets.INFORM_WITHIN, bring_in_due, centers[0]["id"] if centers else None,
                 body.intake_channel or body.activity.channel, body.reported_by,
                 body.product_model or (device["model"] if device else None), body.quantity,
                 body.purchase_date or (device["bought"] if device else None), body.fault_reason,
                 body.requested_resolution))
            assert row is not None
            await _add_activity(conn, row["id"], _who(user), activity)
    except psycopg.errors.UniqueViolation as exc:
        existing = await _one(conn, "SELECT number FROM tickets WHERE device_id = %s AND category = %s"
                              " AND state NOT IN ('resolved', 'closed')", (body.device_id, category))
        raise ApiError(409, "ticket_open", f"device {body.device_id} already has open ticket"
                       f" {existing['number'] if existing else '?'} of category {category}") from exc
    return await _ticket(conn, str(row["id"]))


@router.patch("/tickets/{ref}", response_model=TicketDetail, summary="Assign, route, escalate or complete a ticket",
              responses={409: {"description": "the ticket is closed, or cannot move to field service"}})
async def update_ticket(ref: str, body: TicketUpdate, request: Request, user: Support, conn: Db) -> TicketDetail:
    """Assigns the ticket to a support agent (``assignee_id``; ``null`` unassigns) or a queue;
    moves a technical case to field service (``type: field_service``: the remote fix did not
    work, the 7-day deadline starts and the customer is told by SMS which center to go to and
    by when); completes the intake. Each change is recorded as an activity."""
    ticket = await _ticket(conn, ref)
    if ticket.state == "closed":
        raise ApiError(409, "ticket_closed", f"ticket {ticket.number} is closed")
    given = body.model_fields_set
    lang = _settings(request).language
    if "type" in given and body.type is not None and ticket.type != body.type:
        if ticket.type != "technical":
            raise ApiError(409, "invalid_transition", f"ticket {ticket.number} is {ticket.type}: only a technical case"
                           " moves to field service")
    agent = await _agent(conn, body.assignee_id) if "assignee_id" in given and body.assignee_id is not None else None
    intake = {k: v for k, v in body.model_dump(include=set(INTAKE) | {"quantity"}).items()
              if k in given and v is not None}
    async with conn.transaction():
        if "assignee_id" in given or body.queue is not None:
            queue = body.queue or ticket.queue
            await conn.execute("UPDATE tickets SET assignee_id = %s, queue = %s, assigned_at = CASE WHEN %s::bigint"
                               " IS NULL THEN NULL ELSE now() END WHERE id = %s",
                               (body.assignee_id if "assignee_id" in given else ticket.assignee_id, queue,
                                body.assignee_id if "assignee_id" in given else ticket.assignee_id, ticket.id))
            assignee = agent["name"] if agent else (ticket.assignee_name if "assignee_id" not in given else None)
            reason = (t("tickets:activity.assigned", lang, who=assignee, queue=queue) if assignee
                      else t("tickets:activity.unassigned", lang, queue=queue))
            await _add_activity(conn, ticket.id, _who(user), ActivityIn(channel="system", reason=reason,
                                                                        notes=body.note))
        for key, value in intake.items():  # the keys are the fixed INTAKE column names
            await conn.execute(f"UPDATE tickets SET {key} = %s WHERE id = %s", (value, ticket.id))
        if intake:
            await _add_activity(conn, ticket.id, _who(user), ActivityIn(
                channel=body.channel, reason="intake: " + ", ".join(sorted(intake)), notes=body.note))
        if body.type == "field_service" and ticket.type == "technical":
            await _escalate(conn, ticket, user, _settings(request), body)
    return await _ticket(conn, str(ticket.id))


async def _escalate(conn: AsyncConnection, ticket: TicketDetail, user: User, settings: Settings,
                    body: TicketUpdate) -> None:
    """A technical case becomes field service: the deadline starts, the nearest center is named and
    the customer is told by SMS."""
    lang, tz = settings.language, ZoneInfo(settings.customer_timezone)
    due = datetime.now(UTC) + tickets.BRING_IN_WITHIN
    where = await _one(conn, "SELECT l.latitude, l.longitude, a.contact_msisdn FROM tickets t"
                       " LEFT JOIN latest_positions l ON l.device_id = t.device_id"
                       " LEFT JOIN accounts a ON a.id = t.account_id WHERE t.id = %s", (ticket.id,))
    assert where is not None
    centers = await tickets.nearest_centers(conn, where["latitude"], where["longitude"], 1)
    center_id = ticket.center_id or (centers[0]["id"] if centers else None)
    await conn.execute("UPDATE tickets SET type = 'field_service', queue = %s, bring_in_due_at = %s, center_id = %s,"
                       " sla_due_at = now() + %s WHERE id = %s",
                       (body.queue or "field_service", due, center_id, SLA["field_service"], ticket.id))
    await _add_activity(conn, ticket.id, _who(user), ActivityIn(
        channel=body.channel, reason=t("tickets:activity.escalated", lang, date=tickets.local_date(due, tz)),
        notes=body.note))
    center = await _one(conn, "SELECT name, address, hours FROM installation_centers WHERE id = %s", (center_id,)) \
        if center_id else None
    if where["contact_msisdn"]:
        text = tickets.notice("escalated", lang, vehicle=ticket.plate or ticket.identifier or "", number=ticket.number,
                              center=center, deadline=due, tz=tz)
        await tickets.send_notice(conn, ticket.id, where["contact_msisdn"], text, "customer notified")


@router.post("/tickets/{ref}/state", response_model=TicketDetail, summary="Change a ticket's state",
             responses={202: {"model": ResolutionPending,
                              "description": "a field-service ticket: the checklist runs again before it resolves"},
                        409: {"description": "impossible transition, or a resolution check already running"}})
async def change_state(ref: str, body: StateChange, request: Request, user: Support, conn: Db) -> Any:
    """Moves the ticket and records the change as an activity. Leaving ``open`` (or any person's
    action) sets ``first_response_at``; ``resolved`` sets ``resolved_at`` (reopening clears it and
    gives the customer's 24 h again); ``closed`` sets ``closed_at`` and is final;
    ``at_installation_center`` records that the vehicle was brought in.

    Resolving a field-service ticket of a terminal answers ``202``: the checklist runs again on the
    vehicle's terminal (the one that replaced the ticket's, after a swap at the center; possibly
    waiting for an SMS ping, up to ``AVL_SMS_WAIT_S``) and the ticket resolves
    only if it finds the vehicle healthy; otherwise the ticket stays as it is, with the run's
    verdict recorded on it. Follow ``run_id``, or the ticket's ``resolution``."""
    ticket = await _ticket(conn, ref)
    if body.state not in TRANSITIONS[ticket.state]:
        raise ApiError(409, "invalid_transition", f"ticket {ticket.number} cannot go from {ticket.state} to {body.state}")
    if body.state == "resolved" and ticket.type == "field_service" and ticket.device_id is not None:
        return await _ask_resolution(request, conn, ticket, body, user)
    reopen = ticket.state == "resolved" and body.state != "closed"
    try:
        async with conn.transaction():
            cur = await conn.execute(
                "UPDATE tickets SET state = %(to)s,"
                " resolved_at = CASE WHEN %(to)s = 'resolved' THEN now() WHEN %(to)s = 'closed' THEN resolved_at END,"
                " closed_at = CASE WHEN %(to)s = 'closed' THEN now() END,"
                " first_response_at = coalesce(first_response_at, now()),"
                " brought_in_at = CASE WHEN %(to)s = 'at_installation_center' THEN coalesce(brought_in_at, now())"
                "   ELSE brought_in_at END,"
                " inform_due_at = CASE WHEN %(reopen)s THEN now() + %(inform)s ELSE inform_due_at END,"
                " customer_informed_at = CASE WHEN %(reopen)s THEN NULL ELSE customer_informed_at END"
                " WHERE id = %(id)s AND state = %(from)s",
                {"to": body.state, "reopen": reopen, "inform": tickets.INFORM_WITHIN, "id": ticket.id,
                 "from": ticket.state})
            if cur.rowcount != 1:
                raise ApiError(409, "conflict", f"ticket {ticket.number} changed meanwhile; reload it")
            await _add_activity(conn, ticket.id, _who(user), ActivityIn(
                channel=body.channel, reason=f"state: {ticket.state} -> {body.state}", notes=body.note))
    except psycopg.errors.UniqueViolation as exc:  # reopening next to a newer open ticket of the same fault
        raise ApiError(409, "ticket_open", f"ticket {ticket.number} cannot be reopened: the device has another open"
                       f" ticket of category {ticket.category}") from exc
    return await _ticket(conn, str(ticket.id))


# Resolution checks run in this process, as background tasks, beside the requests.
_CHECKS: set[asyncio.Task[None]] = set()
# A check still "running" this long after its SMS wait was abandoned (the API process ended).
STALE_CHECK_S = 120.0


async def _ask_resolution(request: Request, conn: AsyncConnection, ticket: TicketDetail, body: StateChange,
                          user: User) -> JSONResponse:
    """Starts the checklist on the ticket's vehicle; the ticket resolves when it finds it healthy.

    Asynchronous (202 + the run's id) rather than waiting: a silent vehicle's run waits for the SMS
    ping's receipt, answer and fresh report (``AVL_SMS_WAIT_S``, 2 minutes by default), longer than
    an HTTP request should be held; the run is followed step by step like any other."""
    settings = _settings(request)
    pending = ticket.resolution
    if pending is not None and pending.outcome == "checking":
        age = (datetime.now(UTC) - pending.started_at).total_seconds()
        if age < settings.sms_wait_s + STALE_CHECK_S:
            raise ApiError(409, "resolution_pending", f"ticket {ticket.number}: checklist run {pending.run_id} is"
                           " already deciding its resolution")
        await conn.execute("UPDATE diagnostic_runs SET status = 'failed', finished_at = now() WHERE id = %s"
                           " AND status IN ('queued', 'running')", (pending.run_id,))
    who = _who(user)
    # The vehicle's terminal now: the ticket's, or the one that replaced it at the center (a swap).
    current = await _one(conn, "WITH RECURSIVE chain (id, hops) AS (SELECT %s::bigint, 0 UNION ALL"
                         " SELECT r.new_device_id, c.hops + 1 FROM terminal_replacements r JOIN chain c"
                         " ON r.old_device_id = c.id WHERE c.hops < 20)"
                         " SELECT id FROM chain ORDER BY hops DESC LIMIT 1", (ticket.device_id,))
    device_id = int(current["id"]) if current else int(ticket.device_id or 0)
    async with conn.transaction():
        run = await _one(conn, "INSERT INTO diagnostic_runs (device_id, requested_by, status) VALUES (%s, %s, 'running')"
                         " RETURNING id", (device_id, f"{who} (resolving {ticket.number})"))
        assert run is not None
        cur = await conn.execute("UPDATE tickets SET resolution_run_id = %s WHERE id = %s AND state = %s",
                                 (run["id"], ticket.id, ticket.state))
        if cur.rowcount != 1:
            raise ApiError(409, "conflict", f"ticket {ticket.number} changed meanwhile; reload it")
        await _add_activity(conn, ticket.id, who, ActivityIn(
            channel=body.channel, reason=t("tickets:activity.resolution_requested", settings.language, run=run["id"]),
            notes=body.note))
    task = asyncio.create_task(_check_then_resolve(settings, request.app.state.database_url, ticket.id, run["id"],
                                                   device_id, who, body))
    _CHECKS.add(task)
    task.add_done_callback(_CHECKS.discard)
    out = ResolutionPending(message=f"checklist run {run['id']} checks the vehicle again: ticket {ticket.number}"
                                    " resolves if it is healthy", run_id=run["id"], ticket=await _ticket(conn, str(ticket.id)))
    return JSONResponse(jsonable_encoder(out), status_code=202)


async def _check_then_resolve(settings: Settings, database_url: str, ticket_id: int, run_id: int, device_id: int,
                              who: str, body: StateChange) -> None:
    """The checklist as a library, on its own connection (its SMS ping goes through the diagnostics
    worker's outbox when a worker with a bound SMSC is alive), then the ticket's resolution."""
    verdict: Verdict | None = None
    why = ""
    try:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            worker = await sms_worker(database_url)
            ctx = Context(settings, database_url, conn, sms_via="outbox" if worker else "off",
                          sms_note=f"the diagnostics worker's outbox ({worker})" if worker
                          else "no diagnostics worker with a bound SMSC is alive")
            try:
                report = await checklist.run(ctx, device_id, requested_by=who, run_id=run_id)
                verdict, why = report.verdict, report.why or (report.explanation if report.verdict else "")
            except DiagnoseError as exc:
                why = str(exc)
                await conn.execute("UPDATE diagnostic_runs SET status = 'failed', finished_at = now() WHERE id = %s"
                                   " AND status = 'running'", (run_id,))
            except Exception as exc:  # the run is recorded as failed, with its error, by checklist.run
                log.exception("resolution check %s failed", run_id)
                why = f"{type(exc).__name__}: {exc}"
            await tickets.settle_resolution(conn, ticket_id, run_id, verdict, why, who=who, channel=body.channel,
                                            note=body.note, lang=settings.language)
    except (psycopg.Error, OSError) as exc:
        log.warning("resolution check %s of ticket %s not settled: %s", run_id, ticket_id, first_line(exc))


@router.post("/tickets/{ref}/activities", status_code=201, response_model=TicketDetail,
             summary="Record an interaction on a ticket", responses={409: {"description": "the ticket is closed"}})
async def add_activity(ref: str, body: ActivityIn, user: Support, conn: Db) -> TicketDetail:
    """Who (the user), the person spoken to, through which channel, why, what was supplied, what is
    pending, the solution, the protocol applied, any appointment, and what the customer was told
    (``customer_message``: it meets the 24 h rule and the client sees it)."""
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
