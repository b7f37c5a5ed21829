"""Administration (role admin): accounts and their service status, devices, vehicles,
installation centers, users and API tokens.

The operations and their one-line messages follow ``avl.admin`` (the ``avl`` command's),
reimplemented on the API's async connection. An account's status and pre-paid balance are
``avl.billing``'s operations, the same the ``avl`` command runs, each recorded with who did it and
why (``GET /billing/status-changes``, ``/billing/ledger``): non-payment suspends the account and
its lines, payment reconnects it (and the lines its suspension suspended), retiring it blocks the
customer's web access and suspends every terminal's line.
"""

from __future__ import annotations

import secrets
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

import psycopg
from fastapi import APIRouter, Query, Request, Response
from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row
from pydantic import BaseModel, Field

from api.auth import hashed
from api.deps import ApiError, Db, User, not_found, require
from api.fields import Msisdn
from api.routes.billing import AccountBilling, LedgerEntry, account_out, actor_of, call, settings_of, stored_lang
from avl import billing
from avl.admin import (
    PASSWORD_MAX,
    PASSWORD_MIN,
    TOKEN_PREFIX,
    AdminError,
    check_password,
    email_key,
    hash_token,
)

router = APIRouter(prefix="/api/v1/admin", tags=["admin"])

Admin = Annotated[User, require("admin")]

Role = Literal["client", "support", "installer", "admin", "billing"]  # billing: the billing system
VehicleKind = Literal["car", "van", "truck", "bus", "motorcycle", "other"]
EMAIL = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"


async def _one(conn: AsyncConnection, query: str | sql.Composed, params: tuple[Any, ...]) -> dict[str, Any] | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, params)
        return await cur.fetchone()


async def _all(conn: AsyncConnection, query: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, params)
        return await cur.fetchall()


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid_request", f"{field}: {message}")


async def _update(conn: AsyncConnection, table: str, row_id: int, changes: dict[str, Any]) -> None:
    """``UPDATE table SET col = %s, ...``: identifiers composed safely (they come from the models'
    field names, never from the request's text), values as parameters."""
    if not changes:
        return
    assignments = sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in changes)
    query = sql.SQL("UPDATE {} SET {} WHERE id = %s").format(sql.Identifier(table), assignments)
    await conn.execute(query, (*changes.values(), row_id))


# Accounts ------------------------------------------------------------------------------------------------------------


class AccountIn(BaseModel):
    name: str = Field(min_length=1, max_length=200, examples=["Transportes Ávila"])
    billing: Literal["post_paid", "pre_paid"] = Field("post_paid", examples=["post_paid"])
    balance: Decimal = Field(Decimal(0), ge=0, max_digits=12, decimal_places=2, examples=["0.00"])
    plan_code: str = Field("PLOCVEHC", min_length=1, max_length=32, examples=["PLOCVEHC"])
    contact_name: str | None = Field(default=None, max_length=200, examples=["Luis Mora"])
    contact_msisdn: Msisdn | None = Field(default=None, description="The contact's mobile (stored in E.164)")
    contact_email: str | None = Field(default=None, pattern=EMAIL, examples=["flota@avila.example"])


class StatusReason(BaseModel):
    reason: str | None = Field(default=None, max_length=200, examples=["non-payment"])


class SuspendIn(StatusReason):
    cause: Literal["non_payment", "administrative"] = Field(
        "non_payment", description="non_payment: a payment received (billing system) reconnects it; administrative: "
        "only an administrator does", examples=["non_payment"])


class RetireIn(StatusReason):
    kind: Literal["voluntary", "non_payment", "by_payment"] = Field(description="the procedure's retirement kinds",
                                                                    examples=["voluntary"])
    letter_reference: str | None = Field(default=None, max_length=100, description="voluntary: the reference of the "
                                         "request letter signed by the legal representative", examples=["CR-2026-118"])
    force_reason: str | None = Field(default=None, max_length=200, description="voluntary, before the minimum "
                                     "permanence (AVL_MIN_PERMANENCE_MONTHS): why it is retired anyway",
                                     examples=[None])


class MovementIn(BaseModel):
    amount: Decimal = Field(max_digits=12, decimal_places=2, description="top-up: more than zero; adjustment: "
                            "signed, not zero", examples=["50.00"])
    reference: str | None = Field(default=None, min_length=1, max_length=100, description="makes it idempotent: the "
                                  "same reference again is the same movement", examples=["TU-000981"])
    reason: str | None = Field(default=None, max_length=200, examples=["Tarjeta Única"])


class MovementOut(BaseModel):
    entry: LedgerEntry
    replayed: bool = Field(description="the reference was posted before: nothing was added again", examples=[False])
    reconnected: bool = Field(description="the top-up reconnected an account suspended for lack of balance",
                              examples=[False])
    suspended: bool = Field(description="the movement took the balance to zero or below: the account was suspended",
                            examples=[False])
    account: AccountBilling


class Account(BaseModel):
    id: int = Field(examples=[1])
    name: str = Field(examples=["Transportes Ávila"])
    status: Literal["active", "suspended", "retired"] = Field(examples=["active"])
    status_reason: str | None = Field(examples=[None])
    status_cause: str | None = Field(description="suspended: non_payment, no_balance, administrative; retired: "
                                                 "voluntary, non_payment, by_payment", examples=[None])
    status_changed_at: datetime
    billing: str = Field(examples=["post_paid"])
    balance: Decimal = Field(examples=["0.00"])
    plan_code: str = Field(examples=["PLOCVEHC"])
    contact_name: str | None = Field(examples=["Luis Mora"])
    contact_msisdn: str | None = Field(examples=["584120000000"])
    contact_email: str | None = Field(examples=["flota@avila.example"])
    created_at: datetime
    devices: int = Field(examples=[12])
    lines_suspended: int = Field(examples=[0])
    users: int = Field(examples=[3])


ACCOUNT_SQL = """
SELECT a.*,
       (SELECT count(*) FROM devices d WHERE d.account_id = a.id) AS devices,
       (SELECT count(*) FROM devices d WHERE d.account_id = a.id AND d.line_status = 'suspended') AS lines_suspended,
       (SELECT count(*) FROM users u WHERE u.account_id = a.id AND u.active) AS users
FROM accounts a
"""


async def _account(conn: AsyncConnection, account_id: int) -> Account:
    row = await _one(conn, ACCOUNT_SQL + " WHERE a.id = %s", (account_id,))
    if row is None:
        raise not_found(f"account {account_id}")
    return Account(**row)


@router.post("/accounts", status_code=201, response_model=Account, summary="Create a corporate account",
             responses={409: {"description": "an account with this name exists"}})
async def create_account(body: AccountIn, user: Admin, conn: Db) -> Account:
    try:
        row = await _one(conn, "INSERT INTO accounts (name, billing, balance, plan_code, contact_name, contact_msisdn,"
                         " contact_email) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
                         (body.name, body.billing, body.balance, body.plan_code, body.contact_name,
                          body.contact_msisdn, body.contact_email))
    except psycopg.errors.UniqueViolation as exc:
        raise ApiError(409, "conflict", f"account {body.name!r} already exists") from exc
    assert row is not None
    return await _account(conn, row["id"])


@router.get("/accounts", response_model=list[Account], summary="List accounts")
async def list_accounts(user: Admin, conn: Db,
                        status: Annotated[Literal["active", "suspended", "retired"] | None, Query()] = None,
                        q: Annotated[str | None, Query(description="Part of the name")] = None,
                        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
                        offset: Annotated[int, Query(ge=0)] = 0) -> list[Account]:
    rows = await _all(conn, ACCOUNT_SQL + " WHERE (%s::text IS NULL OR a.status = %s) AND (%s::text IS NULL OR"
                      " a.name ILIKE '%%' || %s || '%%') ORDER BY a.name LIMIT %s OFFSET %s",
                      (status, status, q, q, limit, offset))
    return [Account(**r) for r in rows]


@router.get("/accounts/{account_id}", response_model=Account, summary="An account")
async def get_account(account_id: int, user: Admin, conn: Db) -> Account:
    return await _account(conn, account_id)


@router.post("/accounts/{account_id}/suspend", response_model=Account, summary="Suspend an account",
             responses={409: {"description": "the account is retired"}})
async def suspend_account(account_id: int, request: Request, user: Admin, conn: Db,
                          body: SuspendIn | None = None) -> Account:
    """For non-payment (default) or an administrative cause: recorded in the account's status changes.
    Its users can still log in and see why, but receive no live data; its active lines are suspended.
    Suspending a suspended account changes nothing."""
    await call(request, conn, user, billing.suspend(account_id, cause=body.cause if body else "non_payment",
                                              reason=body.reason if body else None, actor=actor_of(user), via="api"))
    return await _account(conn, account_id)


@router.post("/accounts/{account_id}/reconnect", response_model=Account, summary="Reconnect an account (payment)",
             responses={409: {"description": "the account is retired, or pre-paid without balance (top it up)"}})
async def reconnect_account(account_id: int, request: Request, user: Admin, conn: Db,
                            body: StatusReason | None = None) -> Account:
    """Service resumes; the lines the suspension suspended are active again (a line suspended on its
    own stays suspended)."""
    await call(request, conn, user, billing.reconnect(account_id, reason=body.reason if body else None, actor=actor_of(user),
                                                via="api"))
    return await _account(conn, account_id)


@router.post("/accounts/{account_id}/retire", response_model=Account, summary="Retire an account's service",
             responses={409: {"description": "already retired, or voluntary before the minimum permanence without "
                                             "force_reason"},
                        422: {"description": "voluntary without the signed letter's reference"}})
async def retire_account(account_id: int, body: RetireIn, request: Request, user: Admin, conn: Db) -> Account:
    """Blocks the customer's web access (every token and session revoked: live streams close), suspends
    every line, cancels queued SMS and locate-now requests (never sent, never billed) and closes open
    tickets with a note. The data is kept for billing claims until retention. The kind is recorded:
    voluntary (with the signed letter's reference, after the minimum permanence unless forced with a
    reason), non_payment, by_payment."""
    await call(request, conn, user, billing.retire(
        account_id, body.kind, actor=actor_of(user), via="api", reason=body.reason, letter=body.letter_reference,
        force_reason=body.force_reason, permanence_months=settings_of(request).min_permanence_months,
        lang=stored_lang(request)))
    return await _account(conn, account_id)


async def _movement(request: Request, response: Response, conn: Db, user: User,
                    steps: billing.Steps[dict[str, Any]]) -> MovementOut:
    done = await call(request, conn, user, steps)
    if done["replayed"]:
        response.status_code = 200
    return MovementOut(entry=LedgerEntry(**done["entry"]), replayed=done["replayed"], reconnected=done["reconnected"],
                       suspended=done["suspended"],
                       account=account_out(done["account"], settings_of(request)))


MOVEMENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the reference was posted before: that movement"},
    409: {"description": "a post-paid account, or the reference was used for another movement"}}


@router.post("/accounts/{account_id}/topup", response_model=MovementOut, status_code=201,
             summary="Top up a pre-paid balance", responses=MOVEMENT_RESPONSES)
async def topup_account(account_id: int, body: MovementIn, request: Request, response: Response, user: Admin,
                        conn: Db) -> MovementOut:
    """Reconnects the account when it was suspended because its balance ran out."""
    return await _movement(request, response, conn, user, billing.topup(
        account_id, body.amount, reference=body.reference, reason=body.reason, actor=actor_of(user), via="api"))


@router.post("/accounts/{account_id}/adjustments", response_model=MovementOut, status_code=201,
             summary="Correct a pre-paid balance (either sign, with a reason)", responses=MOVEMENT_RESPONSES)
async def adjust_account(account_id: int, body: MovementIn, request: Request, response: Response, user: Admin,
                         conn: Db) -> MovementOut:
    return await _movement(request, response, conn, user, billing.adjust(
        account_id, body.amount, reason=body.reason or "", reference=body.reference, actor=actor_of(user), via="api"))


# Devices -------------------------------------------------------------------------------------------------------------


class Device(BaseModel):
    id: int = Field(examples=[42])
    identifier: str = Field(examples=["862170010000001"])
    protocol: str = Field(examples=["gl200"])
    msisdn: str | None = Field(examples=["584140000001"])
    line_status: Literal["active", "suspended"] = Field(examples=["active"])
    model: str | None = Field(examples=["GV300"])
    firmware: str | None = Field(examples=[None])
    report_interval_s: int = Field(examples=[60])
    account_id: int | None = Field(examples=[1])
    account_name: str | None = Field(examples=["Transportes Ávila"])
    vehicle_id: int | None = Field(examples=[7])
    plate: str | None = Field(examples=["AB123CD"])
    supply_voltage_v: int | None = Field(examples=[12])
    installation_center_id: int | None = Field(examples=[1])
    center_name: str | None = Field(examples=["Centro Chacao"])
    installed_at: date | None = Field(examples=["2026-11-24"])
    created_at: datetime
    last_fix_time: datetime | None
    last_received_at: datetime | None


class DeviceUpdate(BaseModel):
    report_interval_s: int | None = Field(default=None, gt=0, le=86_400, examples=[30])
    line_status: Literal["active", "suspended"] | None = Field(default=None, examples=["suspended"])


DEVICE_SQL = """
SELECT d.id, d.identifier, d.protocol, d.msisdn, d.line_status, d.model, d.firmware, d.report_interval_s,
       d.account_id, a.name AS account_name, d.vehicle_id, v.plate, v.supply_voltage_v, d.installation_center_id,
       ic.name AS center_name, d.installed_at, d.created_at, l.fix_time AS last_fix_time, l.last_received_at
FROM devices d LEFT JOIN accounts a ON a.id = d.account_id LEFT JOIN vehicles v ON v.id = d.vehicle_id
LEFT JOIN installation_centers ic ON ic.id = d.installation_center_id LEFT JOIN latest_positions l ON l.device_id = d.id
"""


async def _device(conn: AsyncConnection, device_id: int) -> Device:
    row = await _one(conn, DEVICE_SQL + " WHERE d.id = %s", (device_id,))
    if row is None:
        raise not_found(f"device {device_id}")
    return Device(**row)


@router.get("/devices", response_model=list[Device], summary="List devices")
async def list_devices(user: Admin, conn: Db,
                       account_id: Annotated[int | None, Query()] = None,
                       protocol: Annotated[str | None, Query(examples=["gl200"])] = None,
                       q: Annotated[str | None, Query(description="Part of the identifier, MSISDN or plate")] = None,
                       limit: Annotated[int, Query(ge=1, le=1000)] = 200,
                       offset: Annotated[int, Query(ge=0)] = 0) -> list[Device]:
    rows = await _all(conn, DEVICE_SQL + " WHERE (%s::bigint IS NULL OR d.account_id = %s)"
                      " AND (%s::text IS NULL OR d.protocol = %s) AND (%s::text IS NULL OR d.identifier ILIKE '%%' || %s"
                      " || '%%' OR d.msisdn ILIKE '%%' || %s || '%%' OR v.plate ILIKE '%%' || %s || '%%')"
                      " ORDER BY d.id LIMIT %s OFFSET %s",
                      (account_id, account_id, protocol, protocol, q, q, q, q, limit, offset))
    return [Device(**r) for r in rows]


@router.get("/devices/{device_id}", response_model=Device, summary="A device")
async def get_device(device_id: int, user: Admin, conn: Db) -> Device:
    return await _device(conn, device_id)


@router.patch("/devices/{device_id}", response_model=Device, summary="Change a device's interval or line status")
async def update_device(device_id: int, body: DeviceUpdate, user: Admin, conn: Db) -> Device:
    """``report_interval_s``: the interval the terminal is configured for (the checklist and the
    sweep judge silence by it); ``line_status``: its cellular line, active or suspended."""
    await _device(conn, device_id)
    changes = {k: v for k, v in body.model_dump(exclude_unset=True).items() if v is not None}
    await _update(conn, "devices", device_id, changes)
    return await _device(conn, device_id)


# Vehicles ------------------------------------------------------------------------------------------------------------


class VehicleIn(BaseModel):
    account_id: int = Field(examples=[1])
    plate: str = Field(min_length=1, max_length=20, examples=["AB123CD"])
    supply_voltage_v: int = Field(12, description="12 or 24", examples=[12])
    kind: VehicleKind = Field("car", examples=["van"])
    description: str | None = Field(default=None, max_length=200, examples=["white delivery van"])


class VehicleUpdate(BaseModel):
    supply_voltage_v: int | None = Field(default=None, description="12 or 24", examples=[24])
    kind: VehicleKind | None = Field(default=None, examples=["truck"])
    description: str | None = Field(default=None, max_length=200, examples=["refrigerated truck"])


class Vehicle(BaseModel):
    id: int = Field(examples=[7])
    account_id: int = Field(examples=[1])
    account_name: str = Field(examples=["Transportes Ávila"])
    plate: str = Field(examples=["AB123CD"])
    supply_voltage_v: int = Field(examples=[12])
    kind: str = Field(examples=["van"])
    description: str | None = Field(examples=["white delivery van"])
    device_id: int | None = Field(examples=[42])
    created_at: datetime


VEHICLE_SQL = """
SELECT v.*, a.name AS account_name, d.id AS device_id
FROM vehicles v JOIN accounts a ON a.id = v.account_id LEFT JOIN devices d ON d.vehicle_id = v.id
"""


async def _vehicle(conn: AsyncConnection, vehicle_id: int) -> Vehicle:
    row = await _one(conn, VEHICLE_SQL + " WHERE v.id = %s", (vehicle_id,))
    if row is None:
        raise not_found(f"vehicle {vehicle_id}")
    return Vehicle(**row)


def _voltage(value: int) -> None:
    if value not in (12, 24):
        raise _invalid("supply_voltage_v", f"supply voltage must be 12 or 24 V, not {value}")


@router.post("/vehicles", status_code=201, response_model=Vehicle, summary="Register a vehicle",
             responses={409: {"description": "the plate exists"}})
async def create_vehicle(body: VehicleIn, user: Admin, conn: Db) -> Vehicle:
    _voltage(body.supply_voltage_v)
    if await _one(conn, "SELECT id FROM accounts WHERE id = %s", (body.account_id,)) is None:
        raise _invalid("account_id", f"account {body.account_id} not found")
    try:
        row = await _one(conn, "INSERT INTO vehicles (account_id, plate, supply_voltage_v, kind, description)"
                         " VALUES (%s, %s, %s, %s, %s) RETURNING id",
                         (body.account_id, body.plate, body.supply_voltage_v, body.kind, body.description))
    except psycopg.errors.UniqueViolation as exc:
        raise ApiError(409, "conflict", f"vehicle {body.plate} already exists") from exc
    assert row is not None
    return await _vehicle(conn, row["id"])


@router.get("/vehicles", response_model=list[Vehicle], summary="List vehicles")
async def list_vehicles(user: Admin, conn: Db, account_id: Annotated[int | None, Query()] = None,
                        plate: Annotated[str | None, Query(description="Part of the plate")] = None,
                        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
                        offset: Annotated[int, Query(ge=0)] = 0) -> list[Vehicle]:
    rows = await _all(conn, VEHICLE_SQL + " WHERE (%s::bigint IS NULL OR v.account_id = %s) AND (%s::text IS NULL"
                      " OR v.plate ILIKE '%%' || %s || '%%') ORDER BY v.plate LIMIT %s OFFSET %s",
                      (account_id, account_id, plate, plate, limit, offset))
    return [Vehicle(**r) for r in rows]


@router.get("/vehicles/{vehicle_id}", response_model=Vehicle, summary="A vehicle")
async def get_vehicle(vehicle_id: int, user: Admin, conn: Db) -> Vehicle:
    return await _vehicle(conn, vehicle_id)


@router.patch("/vehicles/{vehicle_id}", response_model=Vehicle, summary="Change a vehicle's declaration")
async def update_vehicle(vehicle_id: int, body: VehicleUpdate, user: Admin, conn: Db) -> Vehicle:
    """The declared supply voltage is what the checklist and the certification compare the terminal's to."""
    await _vehicle(conn, vehicle_id)
    changes = body.model_dump(exclude_unset=True)
    for key in ("supply_voltage_v", "kind"):
        if key in changes and changes[key] is None:
            raise _invalid(key, "may not be null")
    if "supply_voltage_v" in changes:
        _voltage(changes["supply_voltage_v"])
    await _update(conn, "vehicles", vehicle_id, changes)
    return await _vehicle(conn, vehicle_id)


# Installation centers ------------------------------------------------------------------------------------------------


class CenterIn(BaseModel):
    name: str = Field(min_length=1, max_length=200, examples=["Centro Chacao"])
    latitude: float = Field(ge=-90, le=90, examples=[10.4961])
    longitude: float = Field(ge=-180, le=180, examples=[-66.8530])
    address: str | None = Field(default=None, max_length=300, examples=["Av. Francisco de Miranda, Chacao"])
    phone: str | None = Field(default=None, max_length=32, examples=["+58 212 555 0101"])
    hours: str | None = Field(default=None, max_length=200, description="Opening hours, as customers read them",
                              examples=["Lu-Vi 8:00-17:00, Sa 8:00-12:00"])
    certified: bool = Field(True, description="Certified centers are proposed to customers in tickets",
                            examples=[True])


class CenterUpdate(BaseModel):
    latitude: float | None = Field(default=None, ge=-90, le=90, examples=[10.4962])
    longitude: float | None = Field(default=None, ge=-180, le=180, examples=[-66.8531])
    address: str | None = Field(default=None, max_length=300, examples=["Av. Francisco de Miranda 12, Chacao"])
    phone: str | None = Field(default=None, max_length=32, examples=["+58 212 555 0102"])
    hours: str | None = Field(default=None, max_length=200, examples=["Lu-Sa 7:00-19:00"])
    certified: bool | None = Field(default=None, examples=[False])


class Center(BaseModel):
    id: int = Field(examples=[1])
    name: str = Field(examples=["Centro Chacao"])
    latitude: float = Field(examples=[10.4961])
    longitude: float = Field(examples=[-66.8530])
    address: str | None = Field(examples=["Av. Francisco de Miranda, Chacao"])
    phone: str | None = Field(examples=["+58 212 555 0101"])
    hours: str | None = Field(examples=["Lu-Vi 8:00-17:00, Sa 8:00-12:00"])
    certified: bool = Field(examples=[True])
    created_at: datetime
    installers: int = Field(examples=[2])
    installations: int = Field(examples=[35])


CENTER_SQL = """
SELECT c.*, (SELECT count(*) FROM users u WHERE u.installation_center_id = c.id AND u.active) AS installers,
       (SELECT count(*) FROM devices d WHERE d.installation_center_id = c.id) AS installations
FROM installation_centers c
"""


async def _center(conn: AsyncConnection, center_id: int) -> Center:
    row = await _one(conn, CENTER_SQL + " WHERE c.id = %s", (center_id,))
    if row is None:
        raise not_found(f"installation center {center_id}")
    return Center(**row)


@router.post("/centers", status_code=201, response_model=Center, summary="Add an installation center",
             responses={409: {"description": "a center with this name exists"}})
async def create_center(body: CenterIn, user: Admin, conn: Db) -> Center:
    if await _one(conn, "SELECT id FROM installation_centers WHERE lower(name) = lower(%s)", (body.name,)):
        raise ApiError(409, "conflict", f"installation center {body.name!r} already exists")
    try:
        row = await _one(conn, "INSERT INTO installation_centers (name, latitude, longitude, address, phone, hours,"
                         " certified) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
                         (body.name, body.latitude, body.longitude, body.address, body.phone, body.hours,
                          body.certified))
    except psycopg.errors.UniqueViolation as exc:
        raise ApiError(409, "conflict", f"installation center {body.name!r} already exists") from exc
    assert row is not None
    return await _center(conn, row["id"])


@router.get("/centers", response_model=list[Center], summary="List installation centers")
async def list_centers(user: Admin, conn: Db) -> list[Center]:
    return [Center(**r) for r in await _all(conn, CENTER_SQL + " ORDER BY c.name", ())]


@router.get("/centers/{center_id}", response_model=Center, summary="An installation center")
async def get_center(center_id: int, user: Admin, conn: Db) -> Center:
    return await _center(conn, center_id)


@router.patch("/centers/{center_id}", response_model=Center, summary="Change an installation center")
async def update_center(center_id: int, body: CenterUpdate, user: Admin, conn: Db) -> Center:
    await _center(conn, center_id)
    changes = body.model_dump(exclude_unset=True)
    for key in ("latitude", "longitude", "certified"):
        if key in changes and changes[key] is None:
            raise _invalid(key, "may not be null")
    await _update(conn, "installation_centers", center_id, changes)
    return await _center(conn, center_id)


# Users ---------------------------------------------------------------------------------------------------------------


class UserIn(BaseModel):
    name: str = Field(min_length=1, max_length=200, examples=["Ana Pérez"])
    email: str = Field(pattern=EMAIL, max_length=254, examples=["ana@avila.example"])
    role: Role = Field(examples=["client"])
    account_id: int | None = Field(default=None, description="Clients: their account", examples=[1])
    installation_center_id: int | None = Field(default=None, description="Installers: their center", examples=[None])
    password: str | None = Field(default=None, max_length=PASSWORD_MAX,
                                 description="An initial console password (the user must change it): at least "
                                 f"{PASSWORD_MIN} characters and not easy to guess", examples=["initial-pass-1"])


class UserOut(BaseModel):
    id: int = Field(examples=[5])
    name: str = Field(examples=["Ana Pérez"])
    email: str = Field(examples=["ana@avila.example"])
    role: Role = Field(examples=["client"])
    account_id: int | None = Field(examples=[1])
    installation_center_id: int | None = Field(examples=[None])
    active: bool = Field(examples=[True])
    must_change_password: bool = Field(examples=[True])
    has_password: bool = Field(examples=[True])
    created_at: datetime


USER_SQL = """
SELECT id, name, email, role, account_id, installation_center_id, active, must_change_password,
       password_hash IS NOT NULL AS has_password, created_at
FROM users
"""


async def _user(conn: AsyncConnection, user_id: int) -> UserOut:
    row = await _one(conn, USER_SQL + " WHERE id = %s", (user_id,))
    if row is None:
        raise not_found(f"user {user_id}")
    return UserOut(**row)


@router.post("/users", status_code=201, response_model=UserOut, summary="Create a user",
             responses={409: {"description": "the email is taken"}})
async def create_user(body: UserIn, user: Admin, conn: Db) -> UserOut:
    """Clients belong to one account and installers to one installation center; support and
    admin users to neither. API tokens are created separately (``POST /tokens``)."""
    if body.role == "client":
        if body.account_id is None:
            raise _invalid("account_id", "a client user needs an account")
        if await _one(conn, "SELECT id FROM accounts WHERE id = %s", (body.account_id,)) is None:
            raise _invalid("account_id", f"account {body.account_id} not found")
    elif body.account_id is not None:
        raise _invalid("account_id", "only client users belong to an account")
    if body.role == "installer":
        if body.installation_center_id is None:
            raise _invalid("installation_center_id", "an installer user needs an installation center")
        if await _one(conn, "SELECT id FROM installation_centers WHERE id = %s", (body.installation_center_id,)) is None:
            raise _invalid("installation_center_id", f"installation center {body.installation_center_id} not found")
    elif body.installation_center_id is not None:
        raise _invalid("installation_center_id", "only installer users belong to an installation center")
    if body.password:
        try:
            check_password(body.password, user_inputs=(body.email, body.name))
        except AdminError as exc:
            raise _invalid("password", str(exc)) from None
    password_hash = await hashed(body.password) if body.password else None
    try:
        row = await _one(conn, "INSERT INTO users (name, email, email_key, role, account_id, installation_center_id,"
                         " password_hash, must_change_password) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                         (body.name, body.email, email_key(body.email), body.role, body.account_id,
                          body.installation_center_id, password_hash, password_hash is not None))
    except psycopg.errors.UniqueViolation as exc:
        raise ApiError(409, "conflict", f"user {body.email} already exists") from exc
    assert row is not None
    return await _user(conn, row["id"])


@router.get("/users", response_model=list[UserOut], summary="List users")
async def list_users(user: Admin, conn: Db, role: Annotated[Role | None, Query()] = None,
                     account_id: Annotated[int | None, Query()] = None,
                     installation_center_id: Annotated[int | None, Query()] = None,
                     active: Annotated[bool | None, Query()] = None) -> list[UserOut]:
    rows = await _all(conn, USER_SQL + " WHERE (%s::text IS NULL OR role = %s) AND (%s::bigint IS NULL OR account_id = %s)"
                      " AND (%s::bigint IS NULL OR installation_center_id = %s) AND (%s::boolean IS NULL OR active = %s)"
                      " ORDER BY id", (role, role, account_id, account_id, installation_center_id,
                                       installation_center_id, active, active))
    return [UserOut(**r) for r in rows]


@router.get("/users/{user_id}", response_model=UserOut, summary="A user")
async def get_user(user_id: int, user: Admin, conn: Db) -> UserOut:
    return await _user(conn, user_id)


@router.post("/users/{user_id}/deactivate", response_model=UserOut, summary="Deactivate a user",
             responses={409: {"description": "deactivating yourself"}})
async def deactivate_user(user_id: int, user: Admin, conn: Db) -> UserOut:
    """The user can no longer log in; every token and session of theirs is revoked."""
    if user_id == user.id:
        raise ApiError(409, "conflict", "you cannot deactivate yourself")
    await _user(conn, user_id)
    async with conn.transaction():
        await conn.execute("UPDATE users SET active = false WHERE id = %s", (user_id,))
        await conn.execute("UPDATE api_tokens SET revoked_at = now(), revoked_reason = 'deactivated'"
                           " WHERE user_id = %s AND revoked_at IS NULL", (user_id,))
    return await _user(conn, user_id)


# Tokens --------------------------------------------------------------------------------------------------------------


class TokenIn(BaseModel):
    user_id: int = Field(examples=[5])
    name: str = Field(min_length=1, max_length=100, description="What the token is for", examples=["dispatch board"])
    expires_in_days: int | None = Field(default=None, ge=1, le=3650, description="None: does not expire", examples=[365])


class TokenInfo(BaseModel):
    id: int = Field(examples=[12])
    user_id: int = Field(examples=[5])
    user_email: str = Field(examples=["ana@avila.example"])
    role: Role = Field(examples=["client"])
    name: str = Field(examples=["dispatch board"])
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


class NewToken(TokenInfo):
    token: str = Field(description="Shown once; only its hash is stored", examples=["avl_3q2Fh..."])


TOKEN_SQL = """
SELECT t.id, t.user_id, u.email AS user_email, u.role, t.name, t.created_at, t.expires_at, t.last_used_at, t.revoked_at
FROM api_tokens t JOIN users u ON u.id = t.user_id
"""


async def _token(conn: AsyncConnection, token_id: int) -> TokenInfo:
    row = await _one(conn, TOKEN_SQL + " WHERE t.id = %s", (token_id,))
    if row is None:
        raise not_found(f"token {token_id}")
    return TokenInfo(**row)


@router.post("/tokens", status_code=201, response_model=NewToken, summary="Create an API token",
             responses={409: {"description": "the user is deactivated"}})
async def create_token(body: TokenIn, user: Admin, conn: Db) -> NewToken:
    """The token is in this response only; it is stored hashed and cannot be shown again."""
    owner = await _one(conn, "SELECT id, email, active FROM users WHERE id = %s", (body.user_id,))
    if owner is None:
        raise _invalid("user_id", f"user {body.user_id} not found")
    if not owner["active"]:
        raise ApiError(409, "user_inactive", f"user {owner['email']} is deactivated")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires = datetime.now(UTC) + timedelta(days=body.expires_in_days) if body.expires_in_days else None
    row = await _one(conn, "INSERT INTO api_tokens (user_id, name, token_hash, expires_at) VALUES (%s, %s, %s, %s)"
                     " RETURNING id", (body.user_id, body.name, hash_token(token), expires))
    assert row is not None
    info = await _token(conn, row["id"])
    return NewToken(**info.model_dump(), token=token)


@router.get("/tokens", response_model=list[TokenInfo], summary="List API tokens (never the tokens themselves)")
async def list_tokens(user: Admin, conn: Db, user_id: Annotated[int | None, Query()] = None,
                      include_revoked: Annotated[bool, Query()] = False) -> list[TokenInfo]:
    rows = await _all(conn, TOKEN_SQL + " WHERE (%s::bigint IS NULL OR t.user_id = %s) AND (%s OR t.revoked_at IS NULL)"
                      " ORDER BY t.id", (user_id, user_id, include_revoked))
    return [TokenInfo(**r) for r in rows]


@router.post("/tokens/{token_id}/revoke", response_model=TokenInfo, summary="Revoke an API token")
async def revoke_token(token_id: int, user: Admin, conn: Db) -> TokenInfo:
    """Takes effect at once; revoking a revoked token changes nothing."""
    await _token(conn, token_id)
    await conn.execute("UPDATE api_tokens SET revoked_at = now(), revoked_reason = 'admin'"
                       " WHERE id = %s AND revoked_at IS NULL", (token_id,))
    return await _token(conn, token_id)
