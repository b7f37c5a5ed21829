"""Installation centers: register installations, certify them with the customer, inspect and
replace faulty terminals.

An installer is bound to one installation center: it registers terminals installed there
and certifies them; another center's certification answers 404 like a missing one.
Admins act for any center. A vehicle brought in with a fault is found by its plate at any
center (the customer goes to the nearest one).

The lifecycle, as the service procedure runs it (seed 004, steps 11-12):

- Registration is refused for an account that is suspended, retired, or pre-paid without
  balance (the customer must have balance to start the installation).
- 24 V vehicles and motorcycles are restricted installations: they wait for the Engineering
  Unit's review (a support or admin user decides, recorded) before a certification may start;
  12 V cars, vans, trucks and buses go straight to certification.
- Certification: while the installer and the customer watch, the server checks the terminal
  live (``api.certification``); when every check is green and the customer saw the vehicle on
  the web platform, the customer signs the inspection form. The account's client console
  sessions are then ended and the password must be changed at the next login (API tokens,
  issued by admins for integrations, are not affected). Otherwise the installer corrects the
  installation and starts again.
- Warranty (``avl.admin.warranty``): dead on arrival within 15 days of the purchase (with the
  proof of purchase's reference) or of the installation; the installer's findings of physical
  damage, unauthorised repair or transport damage void it.
- Replacement: a new terminal takes the vehicle over; the old one leaves the account's fleet
  and goes back under an RMA (returned, in repair, replaced, scrapped); the fleet API shows
  the vehicle's history across both.
"""

from __future__ import annotations

import html
from datetime import date, datetime
from typing import Annotated, Any, Literal, cast

import psycopg
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from pydantic import BaseModel, Field

from api import certification
from api.auth import language_of
from api.deps import ApiError, Db, User, not_found, require
from api.fields import Msisdn
from avl import admin
from avl.i18n import DEFAULT_LANGUAGE, t
from diagnostics.tickets import add_activity
from ingest.protocols import ALL_NAMES

router = APIRouter(prefix="/api/v1/installers", tags=["installation centers"])

Installer = Annotated[User, require("installer")]
InstallerOrSupport = Annotated[User, require("installer", "support")]
Engineering = Annotated[User, require("support")]


async def _one(conn: AsyncConnection, sql: str, params: tuple[Any, ...]) -> dict[str, Any] | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        return await cur.fetchone()


async def _all(conn: AsyncConnection, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        return await cur.fetchall()


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid_request", f"{field}: {message}")


def _center_scope(user: User) -> int | None:
    """The center an installer is limited to; None for admins (and support, where admitted)."""
    return user.installation_center_id if user.role == "installer" else None


def open_for_installation(account: dict[str, Any]) -> None:
    """Refuses an installation (registration, certification, replacement) for an account that
    cannot use the service: retired, suspended, or pre-paid without balance."""
    name = account["name"]
    if account["status"] == "retired":
        raise ApiError(409, "account_retired", f"account {name!r} is retired: no new installations")
    # A pre-paid account at zero is suspended for it too: topping up is what it takes.
    if account["billing"] == "pre_paid" and account["balance"] <= 0:
        raise ApiError(402, "no_balance", f"account {name!r} is pre-paid and has no balance"
                       f" ({account['balance']}): top up before the installation")
    if account["status"] == "suspended":
        raise ApiError(409, "account_suspended", f"account {name!r} is suspended"
                       f" ({account['status_reason'] or 'non-payment'}): no installations until it is reconnected")


ACCOUNT_SQL = "SELECT id, name, status, status_reason, billing, balance FROM accounts WHERE id = %s"


def _check_purchase(purchased_at: date | None, proof: str | None, installed: date | None) -> None:
    if purchased_at is None:
        return
    if not proof or not proof.strip():
        raise _invalid("proof_of_purchase", "a purchase date counts only with the proof of purchase's reference"
                       " (invoice or receipt number)")
    if purchased_at > date.today():
        raise _invalid("purchased_at", f"{purchased_at} is in the future")
    if installed is not None and purchased_at > installed:
        raise _invalid("purchased_at", f"{purchased_at} is after the installation ({installed})")


# Warranty ------------------------------------------------------------------------------------------------------------


class WarrantyOut(BaseModel):
    outcome: Literal["dead_on_arrival", "warranty_repair", "void", "unknown"] = Field(
        description="dead_on_arrival: replace, do not repair; warranty_repair; void: an exclusion was found;"
                    " unknown: no purchase date with its proof and no installation date (ask for the proof of"
                    " purchase)", examples=["dead_on_arrival"])
    basis: Literal["purchase", "installation"] | None = Field(
        description="the date the 15-day dead-on-arrival window counted from", examples=["purchase"])
    dead_on_arrival_until: date | None = Field(description="last day of the window (null: dates unknown)",
                                               examples=["2026-12-09"])
    detail: str = Field(examples=["reported 3 days after the purchase (2026-11-24): dead on arrival, replace the"
                                  " terminal"])
    purchased_at: date | None = Field(examples=["2026-11-24"])
    proof_of_purchase: str | None = Field(examples=["Factura 000123"])
    installed_at: date | None = Field(examples=["2026-11-25"])


def _warranty(device: dict[str, Any], reported_on: date, findings: list[str] | None = None) -> WarrantyOut:
    w = admin.warranty(purchased_at=device["purchased_at"], proof_of_purchase=device["proof_of_purchase"],
                       installed_at=device["installed_at"], reported_on=reported_on, findings=findings or [])
    return WarrantyOut(outcome=cast(Any, w.outcome), basis=cast(Any, w.basis), dead_on_arrival_until=w.dead_on_arrival_until,
                       detail=w.detail, purchased_at=device["purchased_at"],
                       proof_of_purchase=device["proof_of_purchase"], installed_at=device["installed_at"])


# Engineering reviews -------------------------------------------------------------------------------------------------


class EngineeringReview(BaseModel):
    id: int = Field(examples=[3])
    vehicle_id: int = Field(examples=[7])
    plate: str = Field(examples=["MT123AB"])
    device_id: int | None = Field(examples=[42])
    account_name: str = Field(examples=["Transportes Ávila"])
    installation_center_id: int | None = Field(examples=[1])
    reasons: list[Literal["supply_24v", "motorcycle"]] = Field(examples=[["motorcycle"]])
    state: Literal["pending", "approved", "rejected"] = Field(examples=["pending"])
    requested_at: datetime
    requested_by: str | None = Field(examples=["Taller Chacao"])
    request_note: str | None = Field(examples=[None])
    decided_at: datetime | None
    decided_by: str | None = Field(examples=[None])
    decision_note: str | None = Field(examples=[None])


REVIEW_SQL = """
SELECT r.id, r.vehicle_id, v.plate, r.device_id, a.name AS account_name, d.installation_center_id, r.reasons, r.state,
       r.requested_at, ru.name AS requested_by, r.request_note, r.decided_at, du.name AS decided_by, r.decision_note
FROM engineering_reviews r
JOIN vehicles v ON v.id = r.vehicle_id
JOIN accounts a ON a.id = v.account_id
LEFT JOIN devices d ON d.id = r.device_id
LEFT JOIN users ru ON ru.id = r.requested_by
LEFT JOIN users du ON du.id = r.decided_by
"""


async def _latest_review(conn: AsyncConnection, vehicle_id: int) -> dict[str, Any] | None:
    return await _one(conn, REVIEW_SQL + " WHERE r.vehicle_id = %s ORDER BY r.requested_at DESC, r.id DESC LIMIT 1",
                      (vehicle_id,))


async def _request_review(conn: AsyncConnection, vehicle_id: int, device_id: int, reasons: list[str], user: User,
                          note: str | None) -> int:
    row = await _one(conn, "INSERT INTO engineering_reviews (vehicle_id, device_id, reasons, requested_by, request_note)"
                     " VALUES (%s, %s, %s, %s, %s) RETURNING id", (vehicle_id, device_id, reasons, user.id, note))
    assert row is not None
    return int(row["id"])


def _reasons_text(reasons: list[str]) -> str:
    return " and ".join({"supply_24v": "24 V supply", "motorcycle": "motorcycle"}.get(r, r) for r in reasons)


async def _engineering_gate(conn: AsyncConnection, user: User, device: dict[str, Any]) -> None:
    """A certification of a restricted vehicle starts only after the Engineering Unit approved it;
    a restricted vehicle without a review (registered before the rule, or by the CLI) gets one."""
    reasons = admin.engineering_review_reasons(device["supply_voltage_v"], device["vehicle_kind"])
    if not reasons:
        return
    review = await _latest_review(conn, device["vehicle_id"])
    why = f"vehicle {device['plate']} ({_reasons_text(reasons)}) needs the Engineering Unit's approval before" \
          " certification"
    if review is None:
        review_id = await _request_review(conn, device["vehicle_id"], device["id"], reasons, user,
                                          "asked for by a certification start")
        raise ApiError(409, "engineering_review_pending", f"{why}: engineering review {review_id} was requested")
    if review["state"] == "pending":
        raise ApiError(409, "engineering_review_pending", f"{why}: engineering review {review['id']} is pending")
    if review["state"] == "rejected":
        raise ApiError(409, "engineering_review_rejected", f"{why}: engineering review {review['id']} was rejected"
                       f" ({review['decision_note']})")


@router.get("/engineering-reviews", response_model=list[EngineeringReview], summary="Engineering reviews",
            description="Restricted installations (24 V supply, motorcycles) waiting for or decided by the "
                        "Engineering Unit, oldest pending first. An installer sees its own center's.")
async def list_reviews(user: InstallerOrSupport, conn: Db,
                       state: Annotated[Literal["pending", "approved", "rejected"] | None, Query()] = None,
                       limit: Annotated[int, Query(ge=1, le=500)] = 100) -> list[EngineeringReview]:
    scope = _center_scope(user)
    rows = await _all(conn, REVIEW_SQL + " WHERE (%s::text IS NULL OR r.state = %s)"
                      " AND (%s::bigint IS NULL OR d.installation_center_id = %s)"
                      " ORDER BY r.state <> 'pending', r.requested_at, r.id LIMIT %s",
                      (state, state, scope, scope, limit))
    return [EngineeringReview(**r) for r in rows]


class DecisionIn(BaseModel):
    decision: Literal["approved", "rejected"] = Field(examples=["approved"])
    note: str = Field(min_length=3, max_length=1000, description="The Engineering Unit's reasons or conditions",
                      examples=["24-12 V converter fitted, fused at 2 A"])


ReviewId = Annotated[int, Path(description="engineering review id", examples=[3])]


@router.post("/engineering-reviews/{review_id}/decision", response_model=EngineeringReview,
             summary="The Engineering Unit's decision (support or admin)",
             responses={409: {"description": "already decided"}})
async def decide_review(review_id: ReviewId, body: DecisionIn, user: Engineering, conn: Db) -> EngineeringReview:
    """Approving lets the installer start the certification; rejecting blocks it (the installer may
    ask again after changing the installation). Who decided, when and why is kept."""
    cur = await conn.execute("UPDATE engineering_reviews SET state = %s, decided_at = now(), decided_by = %s,"
                             " decision_note = %s WHERE id = %s AND state = 'pending' RETURNING id",
                             (body.decision, user.id, body.note, review_id))
    if await cur.fetchone() is None:
        row = await _one(conn, "SELECT state FROM engineering_reviews WHERE id = %s", (review_id,))
        if row is None:
            raise not_found(f"engineering review {review_id}")
        raise ApiError(409, "already_decided", f"engineering review {review_id} is already {row['state']}")
    row = await _one(conn, REVIEW_SQL + " WHERE r.id = %s", (review_id,))
    assert row is not None
    return EngineeringReview(**row)


# Installations -------------------------------------------------------------------------------------------------------


class InstallationIn(BaseModel):
    identifier: str = Field(description="What the terminal sends: IMEI, ESN/MEID or vendor id",
                            examples=["862170010000001"])
    protocol: str = Field(description="The terminal's wire protocol", examples=["gl200"])
    msisdn: Msisdn | None = Field(default=None, description="The terminal's SIM number (stored in E.164)")
    plate: str = Field(min_length=1, max_length=20, examples=["AB123CD"])
    supply_voltage_v: int = Field(description="Declared vehicle supply voltage: 12 or 24 (24 V needs the Engineering"
                                              " Unit's review)", examples=[12])
    kind: Literal["car", "van", "truck", "bus", "motorcycle", "other"] = Field(
        "car", description="A motorcycle needs the Engineering Unit's review", examples=["van"])
    account_id: int = Field(description="The customer's corporate account", examples=[1])
    installation_center_id: int | None = Field(
        None, description="Defaults to the installer's own center (an installer may give only its own)", examples=[1])
    installed_at: date | None = Field(default=None, description="Installation date (default: today)", examples=["2026-11-24"])
    purchased_at: date | None = Field(default=None, description="Purchase date of the terminal (needs the proof of"
                                      " purchase): the dead-on-arrival window also counts from it",
                                      examples=["2026-11-20"])
    proof_of_purchase: str | None = Field(default=None, max_length=100, description="The purchase document's"
                                          " reference (invoice or receipt number)", examples=["Factura 000123"])
    report_interval_s: int = Field(60, gt=0, le=86_400, description="Expected report interval", examples=[60])
    model: str | None = Field(default=None, max_length=64, examples=["GV300"])
    firmware: str | None = Field(default=None, max_length=64, examples=["R05"])


class UnknownSighting(BaseModel):
    first_seen: datetime
    last_seen: datetime
    count: int
    source_address: str | None


class Installation(BaseModel):
    device_id: int = Field(examples=[42])
    identifier: str = Field(examples=["862170010000001"])
    protocol: str = Field(examples=["gl200"])
    msisdn: str | None = Field(examples=["+584140000001"])
    report_interval_s: int = Field(examples=[60])
    vehicle_id: int | None = Field(description="null once the terminal was replaced", examples=[7])
    plate: str | None = Field(description="the vehicle's (for a replaced terminal: the vehicle it was on)",
                              examples=["AB123CD"])
    supply_voltage_v: int | None = Field(examples=[12])
    vehicle_kind: str | None = Field(examples=["van"])
    account_id: int | None = Field(examples=[1])
    account_name: str | None = Field(examples=["Transportes Ávila"])
    installation_center_id: int | None = Field(examples=[1])
    center_name: str | None = Field(examples=["Centro Chacao"])
    installed_at: date | None = Field(examples=["2026-11-24"])
    purchased_at: date | None = Field(examples=["2026-11-20"])
    proof_of_purchase: str | None = Field(examples=["Factura 000123"])
    certified: bool = Field(description="A certification of this terminal passed", examples=[False])
    stage: Literal["engineering_review", "engineering_rejected", "certification", "certified", "replaced"] = Field(
        description="What comes next: the Engineering Unit's review (24 V, motorcycles), a certification, nothing"
                    " (certified), or nothing for a terminal replaced by another", examples=["certification"])
    engineering_review: EngineeringReview | None = Field(description="the vehicle's latest review, where one is needed")
    warranty: WarrantyOut = Field(description="for a fault reported today")
    replaces_device_id: int | None = Field(description="the terminal this one replaced on the vehicle", examples=[None])
    replaced_by_device_id: int | None = Field(description="the terminal that replaced this one", examples=[None])
    seen_unknown: UnknownSighting | None = Field(
        None, description="The ingestor saw this terminal before it was registered (its reports were not acknowledged;"
                          " from now on they are)")


INSTALLATION_SQL = """
SELECT d.id AS device_id, d.identifier, d.protocol, d.msisdn, d.report_interval_s, d.vehicle_id, v.plate,
       v.supply_voltage_v, v.kind AS vehicle_kind, coalesce(d.account_id, ro.account_id) AS account_id,
       a.name AS account_name, d.installation_center_id, ic.name AS center_name, d.installed_at, d.purchased_at,
       d.proof_of_purchase, ri.old_device_id AS replaces_device_id, ro.new_device_id AS replaced_by_device_id,
       EXISTS (SELECT 1 FROM certifications c WHERE c.device_id = d.id AND c.result = 'pass') AS certified,
       (SELECT r.id FROM engineering_reviews r WHERE r.vehicle_id = d.vehicle_id
        ORDER BY r.requested_at DESC, r.id DESC LIMIT 1) AS review_id
FROM devices d
LEFT JOIN terminal_replacements ro ON ro.old_device_id = d.id
LEFT JOIN terminal_replacements ri ON ri.new_device_id = d.id
LEFT JOIN vehicles v ON v.id = coalesce(d.vehicle_id, ro.vehicle_id)
LEFT JOIN accounts a ON a.id = coalesce(d.account_id, ro.account_id)
LEFT JOIN installation_centers ic ON ic.id = d.installation_center_id
"""


async def _installations(conn: AsyncConnection, rows: list[dict[str, Any]]) -> list[Installation]:
    ids = [r["review_id"] for r in rows if r["review_id"] is not None]
    reviews = {r["id"]: EngineeringReview(**r)
               for r in await _all(conn, REVIEW_SQL + " WHERE r.id = ANY(%s)", (ids,))} if ids else {}
    today = date.today()
    out = []
    for r in rows:
        needed = r["vehicle_id"] is not None and bool(admin.engineering_review_reasons(r["supply_voltage_v"],
                                                                                       r["vehicle_kind"]))
        review = reviews.get(r["review_id"])
        if r["replaced_by_device_id"] is not None:
            stage = "replaced"
        elif needed and (review is None or review.state == "pending"):
            stage = "engineering_review"
        elif needed and review is not None and review.state == "rejected":
            stage = "engineering_rejected"
        else:
            stage = "certified" if r["certified"] else "certification"
        fields = {k: v for k, v in r.items() if k != "review_id"}
        out.append(Installation(**fields, stage=cast(Any, stage), engineering_review=review if needed else None,
                                warranty=_warranty(r, today)))
    return out


async def _installation(conn: AsyncConnection, device_id: int) -> Installation:
    rows = await _all(conn, INSTALLATION_SQL + " WHERE d.id = %s", (device_id,))
    if not rows:
        raise not_found(f"device {device_id}")
    return (await _installations(conn, rows))[0]


def _check_terminal(identifier: str, protocol: str) -> None:
    """``avl.admin.add_device``'s checks of a terminal, as one-line errors naming the field."""
    if protocol not in ALL_NAMES:
        raise _invalid("protocol", f"unknown protocol {protocol!r}; known: {', '.join(ALL_NAMES)}")
    if not identifier or not identifier.isprintable() or len(identifier) > 64:
        raise _invalid("identifier", f"device identifier {identifier!r} is not valid")


async def _terminal_free(conn: AsyncConnection, identifier: str, protocol: str, msisdn: str | None,
                         moving_from: int | None = None) -> None:
    """409 when the terminal or its MSISDN is registered already (except on ``moving_from``)."""
    if await _one(conn, "SELECT id FROM devices WHERE identifier = %s AND protocol = %s", (identifier, protocol)):
        raise ApiError(409, "conflict", f"device {identifier} ({protocol}) is already registered")
    owner = await _one(conn, "SELECT id FROM devices WHERE msisdn = %s", (msisdn,)) if msisdn else None
    if owner is not None and owner["id"] != moving_from:
        raise ApiError(409, "conflict", f"MSISDN {msisdn} already belongs to another device")


def _installer_center(user: User, requested: int | None) -> int:
    own = _center_scope(user)
    center_id = requested if requested is not None else own
    if center_id is None:
        raise _invalid("installation_center_id", "an installation needs an installation center")
    if own is not None and center_id != own:
        raise ApiError(403, "forbidden", "an installer registers installations at its own installation center only")
    return center_id


async def _validated(conn: AsyncConnection, user: User, body: InstallationIn) -> tuple[int, dict[str, Any]]:
    """The center id and the account, or the one-line error (``avl.admin.add_device``'s messages)."""
    _check_terminal(body.identifier, body.protocol)
    if body.supply_voltage_v not in (12, 24):
        raise _invalid("supply_voltage_v", f"supply voltage must be 12 or 24 V, not {body.supply_voltage_v}")
    _check_purchase(body.purchased_at, body.proof_of_purchase, body.installed_at or date.today())
    center_id = _installer_center(user, body.installation_center_id)
    if await _one(conn, "SELECT id FROM installation_centers WHERE id = %s", (center_id,)) is None:
        raise _invalid("installation_center_id", f"installation center {center_id} not found")
    account = await _one(conn, ACCOUNT_SQL, (body.account_id,))
    if account is None:
        raise _invalid("account_id", f"account {body.account_id} not found")
    open_for_installation(account)
    return center_id, account


@router.post("/installations", status_code=201, response_model=Installation, summary="Register an installation",
             responses={402: {"description": "pre-paid account without balance"},
                        403: {"description": "another center's installation"},
                        409: {"description": "terminal, MSISDN or plate already registered; account retired or"
                                             " suspended"}})
async def register_installation(body: InstallationIn, user: Installer, conn: Db) -> Installation:
    """Registers the terminal and its vehicle for the customer's account at the installer's center.

    A terminal the ingestor saw before registration (``GET /api/v1/support/unknown-devices``) is
    the normal case: its reports were left unacknowledged, so it kept them, and from now on they
    are acknowledged and stored (ingest picks new registrations up within its directory refresh).
    A 24 V vehicle or a motorcycle gets an engineering review request (``stage`` says so)."""
    center_id, account = await _validated(conn, user, body)
    installed = body.installed_at or date.today()
    try:
        async with conn.transaction():
            await _terminal_free(conn, body.identifier, body.protocol, body.msisdn)
            if await _one(conn, "SELECT id FROM vehicles WHERE plate = %s", (body.plate,)):
                raise ApiError(409, "conflict", f"vehicle {body.plate} already exists: to put a new terminal on it,"
                               " replace its terminal (POST /api/v1/installers/replacements)")
            vehicle = await _one(conn, "INSERT INTO vehicles (account_id, plate, supply_voltage_v, kind)"
                                 " VALUES (%s, %s, %s, %s) RETURNING id",
                                 (account["id"], body.plate, body.supply_voltage_v, body.kind))
            assert vehicle is not None
            device = await _one(
                conn, "INSERT INTO devices (identifier, protocol, msisdn, model, firmware, account_id, vehicle_id,"
                " installed_at, installation_center_id, report_interval_s, purchased_at, proof_of_purchase)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (body.identifier, body.protocol, body.msisdn, body.model, body.firmware, account["id"], vehicle["id"],
                 installed, center_id, body.report_interval_s, body.purchased_at,
                 body.proof_of_purchase.strip() if body.purchased_at and body.proof_of_purchase else None))
            assert device is not None
            reasons = admin.engineering_review_reasons(body.supply_voltage_v, body.kind)
            if reasons:
                await _request_review(conn, vehicle["id"], device["id"], reasons, user, "restricted installation"
                                      f" registered: {_reasons_text(reasons)}")
    except psycopg.errors.UniqueViolation as exc:  # a concurrent registration won the race
        raise ApiError(409, "conflict", "terminal, MSISDN or plate registered concurrently; check and retry") from exc
    out = await _installation(conn, device["id"])
    sighting = await _one(conn, "SELECT first_seen, last_seen, count, source_address FROM unknown_devices"
                          " WHERE identifier = %s AND protocol = %s", (body.identifier, body.protocol))
    out.seen_unknown = UnknownSighting(**sighting) if sighting else None
    return out


@router.get("/installations", response_model=list[Installation], summary="Installations at my center")
async def list_installations(user: Installer, conn: Db,
                             center_id: Annotated[int | None, Query(description="Admins: one center")] = None,
                             limit: Annotated[int, Query(ge=1, le=500)] = 100,
                             offset: Annotated[int, Query(ge=0)] = 0) -> list[Installation]:
    """Newest first. An installer sees its own center's; an admin sees all (or ``center_id``'s)."""
    scope = _center_scope(user)
    center = scope if scope is not None else center_id
    rows = await _all(conn, INSTALLATION_SQL + " WHERE (%s::bigint IS NULL OR d.installation_center_id = %s)"
                      " ORDER BY d.installed_at DESC NULLS LAST, d.id DESC LIMIT %s OFFSET %s",
                      (center, center, limit, offset))
    return await _installations(conn, rows)


DevicePath = Annotated[int, Path(description="the terminal's device id", examples=[42])]


async def _own_device(conn: AsyncConnection, user: User, device_id: int) -> None:
    scope = _center_scope(user)
    if await _one(conn, "SELECT id FROM devices WHERE id = %s AND (%s::bigint IS NULL OR installation_center_id = %s)",
                  (device_id, scope, scope)) is None:
        raise not_found(f"device {device_id}")


@router.get("/installations/{device_id}", response_model=Installation, summary="One installation",
            responses={404: {"description": "no such terminal at this center"}})
async def get_installation(device_id: DevicePath, user: Installer, conn: Db) -> Installation:
    await _own_device(conn, user, device_id)
    return await _installation(conn, device_id)


class PurchaseIn(BaseModel):
    purchased_at: date = Field(examples=["2026-11-20"])
    proof_of_purchase: str = Field(min_length=1, max_length=100, description="invoice or receipt number",
                                   examples=["Factura 000123"])


@router.put("/installations/{device_id}/purchase", response_model=Installation,
            summary="Record the terminal's proof of purchase",
            responses={404: {"description": "no such terminal at this center"}})
async def record_purchase(device_id: DevicePath, body: PurchaseIn, user: Installer, conn: Db) -> Installation:
    """The purchase date, counted for dead on arrival only with the purchase document's reference."""
    await _own_device(conn, user, device_id)
    device = await _one(conn, "SELECT installed_at FROM devices WHERE id = %s", (device_id,))
    assert device is not None
    _check_purchase(body.purchased_at, body.proof_of_purchase, device["installed_at"])
    await conn.execute("UPDATE devices SET purchased_at = %s, proof_of_purchase = %s WHERE id = %s",
                       (body.purchased_at, body.proof_of_purchase.strip(), device_id))
    return await _installation(conn, device_id)


class ReviewRequestIn(BaseModel):
    note: str = Field(min_length=3, max_length=1000, description="What changed since the rejection",
                      examples=["24-12 V converter fitted"])


@router.post("/installations/{device_id}/engineering-review", response_model=EngineeringReview, status_code=201,
             summary="Ask the Engineering Unit again",
             responses={404: {"description": "no such terminal at this center"},
                        409: {"description": "no review needed, or one pending or approved already"}})
async def request_review(device_id: DevicePath, body: ReviewRequestIn, user: Installer, conn: Db) -> EngineeringReview:
    """After a rejection (or where none was asked for), with a note of what the installer changed."""
    await _own_device(conn, user, device_id)
    device = await _one(conn, "SELECT d.id, d.vehicle_id, v.plate, v.supply_voltage_v, v.kind FROM devices d"
                        " JOIN vehicles v ON v.id = d.vehicle_id WHERE d.id = %s", (device_id,))
    if device is None:
        raise ApiError(409, "not_installed", f"device {device_id} is on no vehicle")
    reasons = admin.engineering_review_reasons(device["supply_voltage_v"], device["kind"])
    if not reasons:
        raise ApiError(409, "review_not_needed", f"vehicle {device['plate']} ({device['supply_voltage_v']} V"
                       f" {device['kind']}) needs no engineering review")
    latest = await _latest_review(conn, device["vehicle_id"])
    if latest is not None and latest["state"] != "rejected":
        raise ApiError(409, "review_exists", f"engineering review {latest['id']} of vehicle {device['plate']} is"
                       f" {latest['state']}")
    try:
        review_id = await _request_review(conn, device["vehicle_id"], device_id, reasons, user, body.note)
    except psycopg.errors.UniqueViolation as exc:
        raise ApiError(409, "review_exists", f"an engineering review of vehicle {device['plate']} is pending") from exc
    row = await _one(conn, REVIEW_SQL + " WHERE r.id = %s", (review_id,))
    assert row is not None
    return EngineeringReview(**row)


# Certification -------------------------------------------------------------------------------------------------------


class CertificationIn(BaseModel):
    device_id: int = Field(description="The installed terminal", examples=[42])
    radius_m: int = Field(500, ge=10, le=50_000, description="How close to the center the vehicle must be",
                          examples=[500])


class SignOff(BaseModel):
    customer_signed_by: str = Field(min_length=2, max_length=200, description="Who signs the inspection form for the"
                                    " customer", examples=["Ana Pérez"])
    customer_document: str | None = Field(default=None, max_length=64, description="The signer's identity document",
                                          examples=["V-12345678"])
    customer_saw_vehicle: bool = Field(description="The customer's own test (seed 004, step 12): they accessed the"
                                       " web platform and saw the vehicle report on the map. false fails the"
                                       " certification: the installer corrects and starts again", examples=[True])
    customer_check_note: str | None = Field(default=None, max_length=500, description="What the customer saw or"
                                            " missed", examples=["saw AB123CD at the center on the map"])


class CheckOut(BaseModel):
    name: str = Field(examples=["supply_voltage"])
    status: Literal["green", "red", "pending"] = Field(examples=["green"])
    summary: str = Field(examples=["12.8 V on a 12 V vehicle"])
    evidence: dict[str, Any] = Field(examples=[{"declared_v": 12, "measured_mv_median": 12800}])


class Certification(BaseModel):
    id: int = Field(examples=[5])
    device_id: int = Field(examples=[42])
    identifier: str = Field(examples=["862170010000001"])
    protocol: str = Field(examples=["gl200"])
    plate: str | None = Field(examples=["AB123CD"])
    account_id: int | None = Field(examples=[1])
    account_name: str | None = Field(examples=["Transportes Ávila"])
    installation_center_id: int = Field(examples=[1])
    center_name: str = Field(examples=["Centro Chacao"])
    installer_name: str | None = Field(examples=["Taller Chacao"])
    radius_m: int = Field(examples=[500])
    started_at: datetime
    finished_at: datetime | None
    result: Literal["in_progress", "pass", "fail"] = Field(examples=["in_progress"])
    all_green: bool = Field(description="Every check is green: the customer may sign", examples=[False])
    checks: list[CheckOut] = Field(description="Live while in progress; as evaluated at the end otherwise")
    customer_signed_by: str | None = Field(examples=[None])
    customer_document: str | None = Field(examples=[None])
    customer_saw_vehicle: bool | None = Field(description="The customer's own check of the web platform, at sign-off",
                                              examples=[None])
    customer_check_note: str | None = Field(examples=[None])
    customer_checked_at: datetime | None
    signed_at: datetime | None
    client_sessions_revoked: int | None = Field(description="Console sessions of the account's client users ended at"
                                                " sign-off (the password must be changed at the next login; API"
                                                " tokens are not affected)", examples=[None])
    outcome_note: str | None = Field(examples=[None])


async def _now(conn: AsyncConnection) -> datetime:
    cur = await conn.execute("SELECT clock_timestamp()")
    row = await cur.fetchone()
    assert row is not None
    value: datetime = row[0]
    return value


async def _certification_row(conn: AsyncConnection, user: User, cert_id: int) -> dict[str, Any]:
    scope = _center_scope(user)
    row = await _one(conn, certification.CERT_SQL + " WHERE c.id = %s AND (%s::bigint IS NULL"
                     " OR c.installation_center_id = %s)", (cert_id, scope, scope))
    if row is None:
        raise not_found(f"certification {cert_id}")
    return row


async def _checks(conn: AsyncConnection, row: dict[str, Any]) -> list[certification.Check]:
    if row["result"] != "in_progress":
        return [certification.Check(**c) for c in row["checks"].get("checks", [])]
    return certification.evaluate(await certification.load(conn, row, await _now(conn)))


def _out(row: dict[str, Any], checks: list[certification.Check]) -> Certification:
    fields = {k: row[k] for k in Certification.model_fields if k in row and k not in ("checks", "all_green")}
    return Certification(**fields, checks=[CheckOut(**c.as_json()) for c in checks],
                         all_green=bool(checks) and all(c.status == certification.GREEN for c in checks))


@router.post("/certifications", status_code=201, response_model=Certification, summary="Start a certification",
             responses={402: {"description": "pre-paid account without balance"},
                        404: {"description": "no such terminal at this center"},
                        409: {"description": "the terminal has no vehicle or account; the account is suspended or"
                                             " retired; the Engineering Unit has not approved a restricted vehicle"}})
async def start_certification(body: CertificationIn, user: Installer, conn: Db) -> Certification:
    """Starts the live checks of an installed terminal with the customer present.

    Queues the protocol family's status command by SMS (the diagnostics worker sends it and records
    the terminal's answer). A certification of the same terminal still in progress is superseded.
    A 24 V vehicle or a motorcycle needs the Engineering Unit's approval first."""
    scope = _center_scope(user)
    device = await _one(conn, "SELECT d.id, d.identifier, d.protocol, d.msisdn, d.account_id, d.vehicle_id,"
                        " d.installation_center_id, v.plate, v.supply_voltage_v, v.kind AS vehicle_kind"
                        " FROM devices d LEFT JOIN vehicles v ON v.id = d.vehicle_id WHERE d.id = %s"
                        " AND (%s::bigint IS NULL OR d.installation_center_id = %s)", (body.device_id, scope, scope))
    if device is None:
        raise not_found(f"device {body.device_id}")
    if device["vehicle_id"] is None or device["account_id"] is None:
        raise ApiError(409, "not_installed", f"device {body.device_id} has no vehicle or account: register the"
                       " installation first")
    if device["installation_center_id"] is None:
        raise ApiError(409, "not_installed", f"device {body.device_id} has no installation center")
    account = await _one(conn, ACCOUNT_SQL, (device["account_id"],))
    assert account is not None
    open_for_installation(account)
    await _engineering_gate(conn, user, device)
    command = certification.status_command(device["protocol"], device["identifier"])
    async with conn.transaction():
        row = await _one(conn, "INSERT INTO certifications (device_id, installation_center_id, installer_user_id,"
                         " radius_m) VALUES (%s, %s, %s, %s) RETURNING id",
                         (device["id"], device["installation_center_id"], user.id, body.radius_m))
        assert row is not None
        await conn.execute("UPDATE certifications SET result = 'fail', finished_at = now(), outcome_note = %s"
                           " WHERE device_id = %s AND result = 'in_progress' AND id <> %s",
                           (f"superseded by certification {row['id']}", device["id"], row["id"]))
        if device["msisdn"] and command is not None:
            sms = await _one(conn, "INSERT INTO sms_messages (direction, msisdn, device_id, body, status, purpose)"
                             " VALUES ('mt', %s, %s, %s, 'queued', 'certification') RETURNING id",
                             (device["msisdn"], device["id"], command))
            assert sms is not None
            await conn.execute("UPDATE certifications SET sms_message_id = %s WHERE id = %s", (sms["id"], row["id"]))
    cert = await _certification_row(conn, user, row["id"])
    return _out(cert, await _checks(conn, cert))


@router.get("/certifications", response_model=list[Certification], summary="Certifications at my center")
async def list_certifications(user: Installer, conn: Db,
                              device_id: Annotated[int | None, Query(description="One terminal's")] = None,
                              limit: Annotated[int, Query(ge=1, le=200)] = 50) -> list[Certification]:
    """Newest first; finished ones with the checks as they were at the end, the ones in progress live."""
    scope = _center_scope(user)
    rows = await _all(conn, certification.CERT_SQL + " WHERE (%s::bigint IS NULL OR c.installation_center_id = %s)"
                      " AND (%s::bigint IS NULL OR c.device_id = %s) ORDER BY c.started_at DESC, c.id DESC LIMIT %s",
                      (scope, scope, device_id, device_id, limit))
    return [_out(r, await _checks(conn, r)) for r in rows]


@router.get("/certifications/{cert_id}", response_model=Certification, summary="A certification and its checks")
async def get_certification(cert_id: int, user: Installer, conn: Db) -> Certification:
    """Each check green, red or pending with its evidence, evaluated now from the reports stored
    since the start (poll it while the customer watches)."""
    row = await _certification_row(conn, user, cert_id)
    return _out(row, await _checks(conn, row))


def _refused(cert_id: int, code: str, what: str, failed: list[dict[str, Any]]) -> ApiError:
    listed = "; ".join(f"{c['name']} ({c['status']}: {c['summary']})" for c in failed)
    error = ApiError(409, code, f"certification {cert_id} {what}; not green: {listed}")
    cast(dict[str, Any], error.detail)["failed_checks"] = failed
    return error


@router.post("/certifications/{cert_id}/sign-off", response_model=Certification,
             summary="The customer signs the inspection form",
             responses={402: {"description": "pre-paid account without balance"},
                        409: {"description": "not every check is green or the customer did not see the vehicle (the"
                                             " failed checks are listed), or already finished, or the account is"
                                             " suspended or retired"}})
async def sign_off(cert_id: int, body: SignOff, user: Installer, conn: Db) -> Certification:
    """Passes only when every check is green and the customer saw the vehicle on the web platform:
    records who signed for the customer, their check, and when. Then, as the procedure asks, the
    customer changes the access password: the console sessions of the account's client users are
    ended and the new password is required at their next login (``must_change_password``). API
    tokens, issued by admins for integrations and not derived from the password, are left alone.

    A red check, or a customer who did not see the vehicle, fails the certification
    (``409 certification_failed``): the installer corrects the installation and starts a new one.
    Checks still pending leave it in progress (``409 certification_incomplete``). Both list what is
    not green in ``failed_checks``."""
    row = await _certification_row(conn, user, cert_id)
    if row["result"] != "in_progress":
        raise ApiError(409, "certification_finished", f"certification {cert_id} already ended: {row['result']}")
    account = await _one(conn, ACCOUNT_SQL, (row["account_id"],))
    assert account is not None
    open_for_installation(account)
    checks = await _checks(conn, row)
    snapshot = {"checks": [c.as_json() for c in checks]}
    failed = [c.as_json() for c in checks if c.status != certification.GREEN]
    customer = (body.customer_saw_vehicle, body.customer_check_note)
    if failed:
        red = any(c["status"] == certification.RED for c in failed)
        if red:
            await conn.execute("UPDATE certifications SET result = 'fail', finished_at = now(), checks = %s,"
                               " outcome_note = %s WHERE id = %s AND result = 'in_progress'",
                               (Jsonb(snapshot), "sign-off refused: " + "; ".join(
                                   f"{c['name']} ({c['status']}: {c['summary']})" for c in failed), cert_id))
            raise _refused(cert_id, "certification_failed",
                           "failed: correct the installation and start a new certification", failed)
        raise _refused(cert_id, "certification_incomplete", "is not complete yet: wait for the pending checks", failed)
    if not body.customer_saw_vehicle:
        summary = "the customer did not see the vehicle on the web platform" + (
            f": {body.customer_check_note}" if body.customer_check_note else "")
        failed = [{"name": "customer_web_check", "status": certification.RED, "summary": summary,
                   "evidence": {"customer_signed_by": body.customer_signed_by, "note": body.customer_check_note}}]
        await conn.execute("UPDATE certifications SET result = 'fail', finished_at = now(), checks = %s,"
                           " customer_saw_vehicle = false, customer_check_note = %s, customer_checked_at = now(),"
                           " outcome_note = %s WHERE id = %s AND result = 'in_progress'",
                           (Jsonb(snapshot), body.customer_check_note, "sign-off refused: " + summary, cert_id))
        raise _refused(cert_id, "certification_failed", "failed: correct the installation and start a new"
                       " certification", failed)
    async with conn.transaction():
        cur = await conn.execute(
            "UPDATE certifications SET result = 'pass', finished_at = now(), checks = %s, customer_signed_by = %s,"
            " customer_document = %s, customer_saw_vehicle = %s, customer_check_note = %s, customer_checked_at = now(),"
            " signed_at = now(), signed_recorded_by = %s WHERE id = %s AND result = 'in_progress'",
            (Jsonb(snapshot), body.customer_signed_by, body.customer_document, *customer, user.id, cert_id))
        if cur.rowcount != 1:
            raise ApiError(409, "certification_finished", f"certification {cert_id} already ended")
        # The procedure: having signed, the customer changes the access password. The installer
        # and the customer used it at the bay: whoever is logged in with it is logged out, and
        # the next login must set a new one.
        cur = await conn.execute(
            "UPDATE api_tokens SET revoked_at = now(), revoked_reason = 'certification' WHERE kind = 'session'"
            " AND revoked_at IS NULL AND user_id IN (SELECT id FROM users WHERE role = 'client' AND account_id = %s)",
            (row["account_id"],))
        await conn.execute("UPDATE certifications SET client_sessions_revoked = %s WHERE id = %s",
                           (cur.rowcount, cert_id))
        await conn.execute("UPDATE users SET must_change_password = true WHERE role = 'client' AND account_id = %s",
                           (row["account_id"],))
    row = await _certification_row(conn, user, cert_id)
    return _out(row, await _checks(conn, row))


# The printable certificate -------------------------------------------------------------------------------------------


@router.get("/certifications/{cert_id}/certificate", response_class=HTMLResponse,
            summary="Printable certificate of a passed certification",
            responses={200: {"content": {"text/html": {}}}, 409: {"description": "the certification did not pass"}})
async def certificate(request: Request, cert_id: int, user: Installer, conn: Db,
                      lang: Annotated[Literal["es", "en"] | None, Query(
                          description="Language of the certificate (default: the user's own choice, `PUT"
                                      " /api/v1/auth/language`, else AVL_LANGUAGE: Spanish)")] = None
                      ) -> HTMLResponse:
    """An HTML page to print: terminal, vehicle, customer, center, each check's evidence, the
    customer's own check of the web platform, the Engineering Unit's approval where one was needed,
    the terminal it replaced, and the signatures."""
    row = await _certification_row(conn, user, cert_id)
    if row["result"] != "pass":
        raise ApiError(409, "not_passed", f"certification {cert_id} has not passed ({row['result']})")
    settings = getattr(request.app.state, "settings", None)
    language = lang or await language_of(conn, user.id) or (settings.language if settings else DEFAULT_LANGUAGE)
    review = await _one(conn, REVIEW_SQL + " WHERE r.vehicle_id = %s AND r.state = 'approved' AND r.decided_at <= %s"
                        " ORDER BY r.decided_at DESC LIMIT 1", (row["vehicle_id"], row["signed_at"]))
    replaced = await _one(conn, "SELECT r.swapped_at, d.identifier FROM terminal_replacements r"
                          " JOIN devices d ON d.id = r.old_device_id WHERE r.new_device_id = %s", (row["device_id"],))
    return HTMLResponse(_certificate_html(row, await _checks(conn, row), language, review, replaced))


def _certificate_html(row: dict[str, Any], checks: list[certification.Check], lang: str,
                      review: dict[str, Any] | None, replaced: dict[str, Any] | None) -> str:
    e = html.escape

    def m(key: str, **params: Any) -> str:
        return e(t(f"certificate:{key}", lang, **params))

    def cell(value: Any) -> str:
        return e("" if value is None else str(value))

    def when(value: datetime | None) -> str:
        return f"{value:%Y-%m-%d %H:%M:%S %Z}" if value is not None else ""

    purchase = t("certificate:purchase_value", lang, reference=row["proof_of_purchase"], date=row["purchased_at"]) \
        if row["purchased_at"] else t("certificate:unknown", lang)
    kind = t(f"certificate:kinds.{row['vehicle_kind']}", lang) if row["vehicle_kind"] else None
    facts = [("certification", f"#{row['id']}"), ("account", row["account_name"]), ("plate", row["plate"]),
             ("voltage", f"{row['supply_voltage_v']} V"), ("kind", kind),
             ("terminal", f"{row['identifier']} ({row['protocol']})"), ("msisdn", row["msisdn"]),
             ("purchase", purchase), ("installed", row["installed_at"]),
             ("center", f"{row['center_name']}" + (f", {row['center_address']}" if row["center_address"] else "")),
             ("installer", row["installer_name"]), ("started", when(row["started_at"])),
             ("signed", when(row["signed_at"]))]
    fact_rows = "\n".join(f"<tr><th>{m('facts.' + k)}</th><td>{cell(v)}</td></tr>" for k, v in facts)
    check_rows = "\n".join(
        f"<tr><td>{m('checks.' + c.name) if c.name in certification.CHECKS else e(c.name)}</td>"
        f"<td class=\"{e(c.status)}\">{m('status.' + c.status)}</td><td>{e(c.text(lang))}</td></tr>" for c in checks)
    customer = [m("customer_check.saw", at=when(row["customer_checked_at"] or row["signed_at"]))]
    if row["customer_check_note"]:
        customer.append(m("customer_check.note", note=row["customer_check_note"]))
    extra = f"<h2>{m('customer_check.heading')}</h2>\n" + "".join(f"<p>{p}</p>" for p in customer)
    if review is not None:
        reasons = ", ".join(t(f"certificate:engineering.reasons.{r}", lang) for r in review["reasons"])
        extra += (f"\n<h2>{m('engineering.heading')}</h2>\n<p>" + m(
            "engineering.approved", reasons=reasons, at=when(review["decided_at"]), who=review["decided_by"] or "",
            note=review["decision_note"] or "") + "</p>")
    if replaced is not None:
        extra += f"\n<p>{m('replaces', identifier=replaced['identifier'], at=when(replaced['swapped_at']))}</p>"
    signer = str(row["customer_signed_by"]) + (f" ({row['customer_document']})" if row["customer_document"] else "")
    return f"""<!DOCTYPE html>
<html lang="{e(lang)}"><head><meta charset="utf-8"><title>{m('title', id=row['id'])}</title>
<style>body{{font-family:sans-serif;max-width:48em;margin:2em auto}}table{{border-collapse:collapse;width:100%;margin:1em 0}}
th,td{{border:1px solid #999;padding:.3em .5em;text-align:left}}.green{{color:#060}}.red{{color:#a00}}
.sign{{margin-top:3em;display:flex;justify-content:space-between}}.sign div{{border-top:1px solid #000;width:40%}}</style>
</head><body>
<h1>{m('heading')}</h1>
<p>{m('intro')}</p>
<table>{fact_rows}</table>
<h2>{m('checks_heading')}</h2>
<table><tr><th>{m('columns.check')}</th><th>{m('columns.result')}</th><th>{m('columns.evidence')}</th></tr>
{check_rows}</table>
{extra}
<p>{m('password')}</p>
<div class="sign"><div>{m('sign.customer', signer=signer)}</div>
<div>{m('sign.center', installer=row['installer_name'] or '')}</div></div>
</body></html>
"""


# Inspections: the installer's findings and the warranty --------------------------------------------------------------


class FindingsIn(BaseModel):
    physical_damage: bool = Field(False, description="evident damage caused by a third party")
    unauthorised_repair: bool = Field(False, description="a repair was attempted by someone not authorised")
    transport_damage: bool = Field(False, description="damaged in transport")
    notes: str | None = Field(default=None, max_length=2000, examples=["housing intact, antenna connector loose"])
    ticket_number: str | None = Field(default=None, max_length=32, description="the support ticket that sent the"
                                      " vehicle here (its opening day is the fault's report day)",
                                      examples=["AVL-2026-000042"])
    fault_reported_on: date | None = Field(default=None, description="when the fault was reported (default: the"
                                           " ticket's opening day, else today)", examples=["2026-11-27"])
    purchased_at: date | None = Field(default=None, description="the terminal's purchase date, from the proof of"
                                      " purchase the customer brought", examples=["2026-11-20"])
    proof_of_purchase: str | None = Field(default=None, max_length=100, examples=["Factura 000123"])

    def findings(self) -> list[str]:
        return [f for f in admin.WARRANTY_EXCLUSIONS if getattr(self, f)]


class InspectionIn(FindingsIn):
    plate: str = Field(min_length=1, max_length=20, description="the vehicle brought in", examples=["AB123CD"])
    installation_center_id: int | None = Field(None, description="admins: where it was inspected", examples=[1])


class Inspection(BaseModel):
    id: int = Field(examples=[4])
    device_id: int = Field(examples=[42])
    identifier: str = Field(examples=["862170010000001"])
    plate: str | None = Field(examples=["AB123CD"])
    installation_center_id: int = Field(examples=[2])
    center_name: str = Field(examples=["Centro Valencia"])
    inspected_by: str | None = Field(examples=["Taller Valencia"])
    inspected_at: datetime
    ticket_number: str | None = Field(examples=["AVL-2026-000042"])
    fault_reported_on: date = Field(examples=["2026-11-27"])
    findings: list[Literal["physical_damage", "unauthorised_repair", "transport_damage"]] = Field(
        description="the warranty exclusions the installer found (any voids the warranty)", examples=[[]])
    notes: str | None = Field(examples=[None])
    warranty: WarrantyOut


INSPECTION_SQL = """
SELECT i.*, d.identifier, d.purchased_at, d.proof_of_purchase, d.installed_at, v.plate, ic.name AS center_name,
       u.name AS inspector, t.number AS ticket_number
FROM terminal_inspections i
JOIN devices d ON d.id = i.device_id
LEFT JOIN terminal_replacements ro ON ro.old_device_id = d.id
LEFT JOIN vehicles v ON v.id = coalesce(d.vehicle_id, ro.vehicle_id)
JOIN installation_centers ic ON ic.id = i.installation_center_id
LEFT JOIN users u ON u.id = i.inspected_by
LEFT JOIN tickets t ON t.id = i.ticket_id
"""


def _inspection(row: dict[str, Any]) -> Inspection:
    findings = [f for f in admin.WARRANTY_EXCLUSIONS if row[f]]
    w = WarrantyOut(outcome=row["warranty"], basis=row["warranty_basis"], detail=row["warranty_detail"],
                    dead_on_arrival_until=_warranty(row, row["fault_reported_on"]).dead_on_arrival_until,
                    purchased_at=row["purchased_at"], proof_of_purchase=row["proof_of_purchase"],
                    installed_at=row["installed_at"])
    return Inspection(id=row["id"], device_id=row["device_id"], identifier=row["identifier"], plate=row["plate"],
                      installation_center_id=row["installation_center_id"], center_name=row["center_name"],
                      inspected_by=row["inspector"], inspected_at=row["inspected_at"],
                      ticket_number=row["ticket_number"], fault_reported_on=row["fault_reported_on"],
                      findings=cast(Any, findings), notes=row["notes"], warranty=w)


async def _vehicle_terminal(conn: AsyncConnection, plate: str) -> dict[str, Any]:
    """The terminal now on the vehicle with ``plate`` (locked for the transaction), at any center."""
    vehicle = await _one(conn, "SELECT id FROM vehicles WHERE plate = %s", (plate,))
    if vehicle is None:
        raise not_found(f"vehicle {plate}")
    device = await _one(conn, "SELECT d.*, v.plate, v.account_id AS vehicle_account_id FROM devices d"
                        " JOIN vehicles v ON v.id = d.vehicle_id WHERE v.id = %s FOR UPDATE OF d", (vehicle["id"],))
    if device is None:
        raise ApiError(409, "not_installed", f"vehicle {plate} has no terminal")
    return device


async def _inspect(conn: AsyncConnection, user: User, device: dict[str, Any], body: FindingsIn,
                   center_id: int) -> int:
    """Records the findings (and the proof of purchase brought) and the warranty they give; the id."""
    ticket = None
    if body.ticket_number:
        ticket = await _one(conn, "SELECT id, opened_at FROM tickets WHERE number = %s AND device_id = %s",
                            (body.ticket_number, device["id"]))
        if ticket is None:
            raise _invalid("ticket_number", f"ticket {body.ticket_number} is not about vehicle {device['plate']}'s"
                           " terminal")
    if body.purchased_at is not None or body.proof_of_purchase is not None:
        if body.purchased_at is None:
            raise _invalid("purchased_at", "a proof of purchase needs the purchase date")
        _check_purchase(body.purchased_at, body.proof_of_purchase, device["installed_at"])
        assert body.proof_of_purchase is not None
        await conn.execute("UPDATE devices SET purchased_at = %s, proof_of_purchase = %s WHERE id = %s",
                           (body.purchased_at, body.proof_of_purchase.strip(), device["id"]))
        device = {**device, "purchased_at": body.purchased_at, "proof_of_purchase": body.proof_of_purchase.strip()}
    reported = body.fault_reported_on or (ticket["opened_at"].date() if ticket else date.today())
    if reported > date.today():
        raise _invalid("fault_reported_on", f"{reported} is in the future")
    w = admin.warranty(purchased_at=device["purchased_at"], proof_of_purchase=device["proof_of_purchase"],
                       installed_at=device["installed_at"], reported_on=reported, findings=body.findings())
    row = await _one(
        conn, "INSERT INTO terminal_inspections (device_id, installation_center_id, inspected_by, ticket_id,"
        " fault_reported_on, physical_damage, unauthorised_repair, transport_damage, notes, warranty, warranty_basis,"
        " warranty_detail) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (device["id"], center_id, user.id, ticket["id"] if ticket else None, reported, body.physical_damage,
         body.unauthorised_repair, body.transport_damage, body.notes, w.outcome, w.basis, w.detail))
    assert row is not None
    if ticket is not None:
        # The vehicle is at a center: the ticket's 7-day bring-in deadline is met.
        await conn.execute("UPDATE tickets SET brought_in_at = coalesce(brought_in_at, now()),"
                           " first_response_at = coalesce(first_response_at, now()), state = CASE WHEN state IN"
                           " ('open', 'in_progress', 'waiting_customer') THEN 'at_installation_center' ELSE state END"
                           " WHERE id = %s", (ticket["id"],))
        await add_activity(conn, ticket["id"], who=user.name, channel="web", reason="terminal inspected at the"
                           " installation center", supplied=body.notes, solution=f"warranty: {w.detail}")
    return int(row["id"])


async def _center(conn: AsyncConnection, user: User, requested: int | None) -> int:
    center_id = _installer_center(user, requested)
    if await _one(conn, "SELECT id FROM installation_centers WHERE id = %s", (center_id,)) is None:
        raise _invalid("installation_center_id", f"installation center {center_id} not found")
    return center_id


@router.post("/inspections", status_code=201, response_model=Inspection, summary="Inspect a terminal brought in",
             responses={404: {"description": "no vehicle with this plate"},
                        409: {"description": "the vehicle has no terminal"}})
async def inspect(body: InspectionIn, user: Installer, conn: Db) -> Inspection:
    """The installer's findings on the terminal of the vehicle brought in (at any center: the
    customer goes to the nearest), and the warranty outcome for the fault's report day: dead on
    arrival within 15 days of the purchase (with its proof) or the installation, else warranty
    repair; physical damage, unauthorised repair or transport damage void it; ``unknown`` when no
    date is recorded. A ticket named gets an activity saying so."""
    center_id = await _center(conn, user, body.installation_center_id)
    async with conn.transaction():
        device = await _vehicle_terminal(conn, body.plate)
        inspection_id = await _inspect(conn, user, device, body, center_id)
    row = await _one(conn, INSPECTION_SQL + " WHERE i.id = %s", (inspection_id,))
    assert row is not None
    return _inspection(row)


@router.get("/inspections", response_model=list[Inspection], summary="Inspections",
            description="Newest first; an installer sees its own center's.")
async def list_inspections(user: InstallerOrSupport, conn: Db,
                           device_id: Annotated[int | None, Query(description="one terminal's")] = None,
                           limit: Annotated[int, Query(ge=1, le=500)] = 100) -> list[Inspection]:
    scope = _center_scope(user)
    rows = await _all(conn, INSPECTION_SQL + " WHERE (%s::bigint IS NULL OR i.installation_center_id = %s)"
                      " AND (%s::bigint IS NULL OR i.device_id = %s) ORDER BY i.inspected_at DESC, i.id DESC LIMIT %s",
                      (scope, scope, device_id, device_id, limit))
    return [_inspection(r) for r in rows]


# Replacements and RMA ------------------------------------------------------------------------------------------------

RmaState = Literal["returned", "in_repair", "replaced", "scrapped"]
# Where a returned terminal may go next; replaced and scrapped are final.
RMA_NEXT: dict[str, tuple[str, ...]] = {"returned": ("in_repair", "replaced", "scrapped"),
                                        "in_repair": ("replaced", "scrapped"), "replaced": (), "scrapped": ()}


class ReplacementIn(FindingsIn):
    plate: str = Field(min_length=1, max_length=20, description="the vehicle whose terminal is replaced",
                       examples=["AB123CD"])
    identifier: str = Field(description="the new terminal's IMEI, ESN/MEID or vendor id", examples=["862170010000002"])
    protocol: str = Field(description="the new terminal's wire protocol", examples=["gl200"])
    msisdn: Msisdn | None = Field(default=None, description="the new terminal's SIM number; the old terminal's number"
                                  " moves to it when the same")
    model: str | None = Field(default=None, max_length=64, examples=["GV300"])
    firmware: str | None = Field(default=None, max_length=64, examples=["R05"])
    report_interval_s: int | None = Field(default=None, gt=0, le=86_400, description="default: the old terminal's")
    new_purchased_at: date | None = Field(default=None, description="the new terminal's purchase date")
    new_proof_of_purchase: str | None = Field(default=None, max_length=100)
    installation_center_id: int | None = Field(None, description="admins: where it was replaced", examples=[1])


class RmaEvent(BaseModel):
    at: datetime
    state: RmaState
    set_by: str | None = Field(examples=["Taller Valencia"])
    note: str | None


class Replacement(BaseModel):
    id: int = Field(examples=[2])
    vehicle_id: int = Field(examples=[7])
    plate: str = Field(examples=["AB123CD"])
    account_id: int = Field(examples=[1])
    account_name: str = Field(examples=["Transportes Ávila"])
    old_device_id: int = Field(examples=[42])
    old_identifier: str = Field(examples=["862170010000001"])
    new_device_id: int = Field(examples=[57])
    new_identifier: str = Field(examples=["862170010000002"])
    swapped_at: datetime = Field(description="the vehicle's history is the old terminal's reports before this, the"
                                             " new one's from then on")
    installation_center_id: int = Field(examples=[2])
    center_name: str = Field(examples=["Centro Valencia"])
    replaced_by: str | None = Field(examples=["Taller Valencia"])
    ticket_number: str | None = Field(examples=["AVL-2026-000042"])
    rma_state: RmaState = Field(examples=["returned"])
    rma_history: list[RmaEvent]
    inspection: Inspection = Field(description="the old terminal's findings and warranty at the swap")
    new_terminal_certified: bool = Field(description="the new terminal passed a certification", examples=[False])


REPLACEMENT_SQL = """
SELECT r.*, v.plate, a.name AS account_name, od.identifier AS old_identifier, nd.identifier AS new_identifier,
       ic.name AS center_name, u.name AS replacer, t.number AS ticket_number,
       EXISTS (SELECT 1 FROM certifications c WHERE c.device_id = r.new_device_id AND c.result = 'pass') AS certified
FROM terminal_replacements r
JOIN vehicles v ON v.id = r.vehicle_id
JOIN accounts a ON a.id = r.account_id
JOIN devices od ON od.id = r.old_device_id
JOIN devices nd ON nd.id = r.new_device_id
JOIN installation_centers ic ON ic.id = r.installation_center_id
LEFT JOIN users u ON u.id = r.replaced_by
LEFT JOIN tickets t ON t.id = r.ticket_id
"""


async def _replacement(conn: AsyncConnection, user: User, replacement_id: int) -> Replacement:
    scope = _center_scope(user)
    row = await _one(conn, REPLACEMENT_SQL + " WHERE r.id = %s AND (%s::bigint IS NULL OR r.installation_center_id = %s)",
                     (replacement_id, scope, scope))
    if row is None:
        raise not_found(f"replacement {replacement_id}")
    events = await _all(conn, "SELECT e.at, e.state, u.name AS set_by, e.note FROM rma_events e"
                        " LEFT JOIN users u ON u.id = e.set_by WHERE e.replacement_id = %s ORDER BY e.at, e.id",
                        (replacement_id,))
    inspection = await _one(conn, INSPECTION_SQL + " WHERE i.id = %s", (row["inspection_id"],))
    assert inspection is not None
    return Replacement(**{k: row[k] for k in Replacement.model_fields if k in row and k != "replaced_by"},
                       replaced_by=row["replacer"],
                       rma_history=[RmaEvent(**e) for e in events], inspection=_inspection(inspection),
                       new_terminal_certified=row["certified"])


@router.post("/replacements", status_code=201, response_model=Replacement,
             summary="Replace the terminal of a vehicle, keeping its history",
             responses={402: {"description": "pre-paid account without balance"},
                        404: {"description": "no vehicle with this plate"},
                        409: {"description": "the new terminal or its MSISDN is registered already; the account is"
                                             " suspended or retired; the vehicle has no terminal"}})
async def replace_terminal(body: ReplacementIn, user: Installer, conn: Db) -> Replacement:
    """The vehicle brought in (by plate, at any center) gets the new terminal; the old one leaves
    the account's fleet (no account, no vehicle, its line suspended; the SIM number moves to the
    new terminal when given the same) and is returned under an RMA. The old terminal's findings
    and warranty outcome are recorded as an inspection. The fleet API shows the vehicle under the
    new terminal's device id with its history continuous: the old terminal's reports before the
    swap, the new one's after. Certify the new terminal next (``POST /certifications``); a
    restricted vehicle's engineering approval carries over."""
    center_id = await _center(conn, user, body.installation_center_id)
    _check_terminal(body.identifier, body.protocol)
    _check_purchase(body.new_purchased_at, body.new_proof_of_purchase, date.today())
    try:
        async with conn.transaction():
            old = await _vehicle_terminal(conn, body.plate)
            account = await _one(conn, ACCOUNT_SQL, (old["vehicle_account_id"],))
            assert account is not None
            open_for_installation(account)
            await _terminal_free(conn, body.identifier, body.protocol, body.msisdn, moving_from=old["id"])
            inspection_id = await _inspect(conn, user, old, body, center_id)
            moves = body.msisdn is not None and body.msisdn == old["msisdn"]
            await conn.execute("UPDATE devices SET vehicle_id = NULL, account_id = NULL, line_status = 'suspended',"
                               " msisdn = CASE WHEN %s THEN NULL ELSE msisdn END WHERE id = %s", (moves, old["id"]))
            await conn.execute("UPDATE certifications SET result = 'fail', finished_at = now(), outcome_note ="
                               " 'the terminal was replaced' WHERE device_id = %s AND result = 'in_progress'",
                               (old["id"],))
            new = await _one(
                conn, "INSERT INTO devices (identifier, protocol, msisdn, model, firmware, account_id, vehicle_id,"
                " installed_at, installation_center_id, report_interval_s, parked_interval_s, purchased_at,"
                " proof_of_purchase) VALUES (%s, %s, %s, %s, %s, %s, %s, current_date, %s, %s, %s, %s, %s) RETURNING id",
                (body.identifier, body.protocol, body.msisdn, body.model, body.firmware, account["id"], old["vehicle_id"],
                 center_id, body.report_interval_s or old["report_interval_s"], old["parked_interval_s"],
                 body.new_purchased_at, body.new_proof_of_purchase if body.new_purchased_at else None))
            assert new is not None
            ticket = await _one(conn, "SELECT ticket_id FROM terminal_inspections WHERE id = %s", (inspection_id,))
            assert ticket is not None
            swap = await _one(
                conn, "INSERT INTO terminal_replacements (vehicle_id, account_id, old_device_id, new_device_id,"
                " installation_center_id, replaced_by, inspection_id, ticket_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                " RETURNING id", (old["vehicle_id"], account["id"], old["id"], new["id"], center_id, user.id,
                                  inspection_id, ticket["ticket_id"]))
            assert swap is not None
            inspection = await _one(conn, "SELECT warranty_detail FROM terminal_inspections WHERE id = %s",
                                    (inspection_id,))
            assert inspection is not None
            await conn.execute("INSERT INTO rma_events (replacement_id, state, set_by, note) VALUES (%s, 'returned', %s,"
                               " %s)", (swap["id"], user.id, f"returned at the swap; {inspection['warranty_detail']}"))
            if ticket["ticket_id"] is not None:
                await add_activity(conn, ticket["ticket_id"], who=user.name, channel="web",
                                   reason="terminal replaced at the installation center",
                                   solution=f"terminal {old['identifier']} replaced by {body.identifier} (RMA"
                                   f" {swap['id']}); the new terminal is to be certified")
    except psycopg.errors.UniqueViolation as exc:  # a concurrent registration or swap won the race
        raise ApiError(409, "conflict", "terminal, MSISDN or swap registered concurrently; check and retry") from exc
    return await _replacement(conn, user, swap["id"])


@router.get("/replacements", response_model=list[Replacement], summary="Terminal replacements and their RMA",
            description="Newest first; an installer sees its own center's.")
async def list_replacements(user: InstallerOrSupport, conn: Db,
                            rma_state: Annotated[RmaState | None, Query(description="only in this RMA state")] = None,
                            limit: Annotated[int, Query(ge=1, le=200)] = 50) -> list[Replacement]:
    scope = _center_scope(user)
    rows = await _all(conn, "SELECT id FROM terminal_replacements WHERE (%s::bigint IS NULL"
                      " OR installation_center_id = %s) AND (%s::text IS NULL OR rma_state = %s)"
                      " ORDER BY swapped_at DESC, id DESC LIMIT %s", (scope, scope, rma_state, rma_state, limit))
    return [await _replacement(conn, user, r["id"]) for r in rows]


ReplacementId = Annotated[int, Path(description="replacement (RMA) id", examples=[2])]


@router.get("/replacements/{replacement_id}", response_model=Replacement, summary="A replacement and its RMA")
async def get_replacement(replacement_id: ReplacementId, user: InstallerOrSupport, conn: Db) -> Replacement:
    return await _replacement(conn, user, replacement_id)


class RmaIn(BaseModel):
    state: RmaState = Field(description="returned → in_repair → replaced | scrapped (replaced and scrapped are final)",
                            examples=["in_repair"])
    note: str | None = Field(default=None, max_length=1000, examples=["sent to the vendor's repair center"])


@router.post("/replacements/{replacement_id}/rma", response_model=Replacement, summary="Move the returned terminal's RMA",
             responses={409: {"description": "a transition the RMA does not allow"}})
async def set_rma(replacement_id: ReplacementId, body: RmaIn, user: InstallerOrSupport, conn: Db) -> Replacement:
    await _replacement(conn, user, replacement_id)  # scope: 404 for another center's
    async with conn.transaction():
        row = await _one(conn, "SELECT rma_state FROM terminal_replacements WHERE id = %s FOR UPDATE", (replacement_id,))
        assert row is not None
        allowed = RMA_NEXT[row["rma_state"]]
        if body.state not in allowed:
            after = f"only {', '.join(allowed)}" if allowed else "nothing (final)"
            raise ApiError(409, "rma_transition", f"RMA {replacement_id} is {row['rma_state']}: it may go to {after},"
                           f" not {body.state}")
        await conn.execute("UPDATE terminal_replacements SET rma_state = %s, rma_updated_at = now() WHERE id = %s",
                           (body.state, replacement_id))
        await conn.execute("INSERT INTO rma_events (replacement_id, state, set_by, note) VALUES (%s, %s, %s, %s)",
                           (replacement_id, body.state, user.id, body.note))
    return await _replacement(conn, user, replacement_id)
