"""Installation centers: register installations and certify them with the customer.

An installer is bound to one installation center: it registers terminals installed there
and certifies them; another center's certification answers 404 like a missing one.
Admins act for any center.

Certification follows the service procedure (seed 004, steps 11-12): while the installer
and the customer watch, the server checks the terminal live (``api.certification``); when
every check is green the customer signs the inspection form and is asked to change the
access password; otherwise the installer corrects the installation and starts again.
"""

from __future__ import annotations

import html
from datetime import date, datetime
from typing import Annotated, Any, Literal, cast

import psycopg
from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from pydantic import BaseModel, Field

from api import certification
from api.deps import ApiError, Db, User, not_found, require
from ingest.protocols import ALL_NAMES

router = APIRouter(prefix="/api/v1/installers", tags=["installation centers"])

Installer = Annotated[User, require("installer")]


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
    """The center an installer is limited to; None for admins."""
    return user.installation_center_id if user.role == "installer" else None


# Installations -------------------------------------------------------------------------------------------------------


class InstallationIn(BaseModel):
    identifier: str = Field(description="What the terminal sends: IMEI, ESN/MEID or vendor id",
                            examples=["862170010000001"])
    protocol: str = Field(description="The terminal's wire protocol", examples=["gl200"])
    msisdn: str | None = Field(default=None, pattern=r"^\+?[0-9]{6,15}$", description="The terminal's SIM number",
                               examples=["584140000001"])
    plate: str = Field(min_length=1, max_length=20, examples=["AB123CD"])
    supply_voltage_v: int = Field(description="Declared vehicle supply voltage: 12 or 24", examples=[12])
    kind: Literal["car", "van", "truck", "bus", "motorcycle", "other"] = Field("car", examples=["van"])
    account_id: int = Field(description="The customer's corporate account", examples=[1])
    installation_center_id: int | None = Field(
        None, description="Defaults to the installer's own center (an installer may give only its own)", examples=[1])
    installed_at: date | None = Field(default=None, description="Installation date (default: today)", examples=["2026-11-24"])
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
    msisdn: str | None = Field(examples=["584140000001"])
    report_interval_s: int = Field(examples=[60])
    vehicle_id: int | None = Field(examples=[7])
    plate: str | None = Field(examples=["AB123CD"])
    supply_voltage_v: int | None = Field(examples=[12])
    vehicle_kind: str | None = Field(examples=["van"])
    account_id: int | None = Field(examples=[1])
    account_name: str | None = Field(examples=["Transportes Ávila"])
    installation_center_id: int | None = Field(examples=[1])
    center_name: str | None = Field(examples=["Centro Chacao"])
    installed_at: date | None = Field(examples=["2026-11-24"])
    certified: bool = Field(description="A certification of this terminal passed", examples=[False])
    seen_unknown: UnknownSighting | None = Field(
        None, description="The ingestor saw this terminal before it was registered (its reports were not acknowledged;"
                          " from now on they are)")


INSTALLATION_SQL = """
SELECT d.id AS device_id, d.identifier, d.protocol, d.msisdn, d.report_interval_s, d.vehicle_id, v.plate,
       v.supply_voltage_v, v.kind AS vehicle_kind, d.account_id, a.name AS account_name, d.installation_center_id,
       ic.name AS center_name, d.installed_at,
       EXISTS (SELECT 1 FROM certifications c WHERE c.device_id = d.id AND c.result = 'pass') AS certified
FROM devices d
LEFT JOIN vehicles v ON v.id = d.vehicle_id
LEFT JOIN accounts a ON a.id = d.account_id
LEFT JOIN installation_centers ic ON ic.id = d.installation_center_id
"""


async def _validated(conn: AsyncConnection, user: User, body: InstallationIn) -> tuple[int, dict[str, Any]]:
    """The center id and the account, or the one-line error (``avl.admin.add_device``'s messages)."""
    if body.protocol not in ALL_NAMES:
        raise _invalid("protocol", f"unknown protocol {body.protocol!r}; known: {', '.join(ALL_NAMES)}")
    if not body.identifier or not body.identifier.isprintable() or len(body.identifier) > 64:
        raise _invalid("identifier", f"device identifier {body.identifier!r} is not valid")
    if body.supply_voltage_v not in (12, 24):
        raise _invalid("supply_voltage_v", f"supply voltage must be 12 or 24 V, not {body.supply_voltage_v}")
    own = _center_scope(user)
    center_id = body.installation_center_id if body.installation_center_id is not None else own
    if center_id is None:
        raise _invalid("installation_center_id", "an installation needs an installation center")
    if own is not None and center_id != own:
        raise ApiError(403, "forbidden", "an installer registers installations at its own installation center only")
    if await _one(conn, "SELECT id FROM installation_centers WHERE id = %s", (center_id,)) is None:
        raise _invalid("installation_center_id", f"installation center {center_id} not found")
    account = await _one(conn, "SELECT id, name, status FROM accounts WHERE id = %s", (body.account_id,))
    if account is None:
        raise _invalid("account_id", f"account {body.account_id} not found")
    if account["status"] == "retired":
        raise ApiError(409, "account_retired", f"account {account['name']!r} is retired: no new installations")
    return center_id, account


@router.post("/installations", status_code=201, response_model=Installation, summary="Register an installation",
             responses={403: {"description": "another center's installation"},
                        409: {"description": "terminal, MSISDN or plate already registered; account retired"}})
async def register_installation(body: InstallationIn, user: Installer, conn: Db) -> Installation:
    """Registers the terminal and its vehicle for the customer's account at the installer's center.

    A terminal the ingestor saw before registration (``GET /api/v1/support/unknown-devices``) is
    the normal case: its reports were left unacknowledged, so it kept them, and from now on they
    are acknowledged and stored (ingest picks new registrations up within its directory refresh)."""
    center_id, account = await _validated(conn, user, body)
    installed = body.installed_at or date.today()
    try:
        async with conn.transaction():
            if await _one(conn, "SELECT id FROM devices WHERE identifier = %s AND protocol = %s",
                          (body.identifier, body.protocol)):
                raise ApiError(409, "conflict", f"device {body.identifier} ({body.protocol}) is already registered")
            if body.msisdn and await _one(conn, "SELECT id FROM devices WHERE msisdn = %s", (body.msisdn,)):
                raise ApiError(409, "conflict", f"MSISDN {body.msisdn} already belongs to another device")
            if await _one(conn, "SELECT id FROM vehicles WHERE plate = %s", (body.plate,)):
                raise ApiError(409, "conflict", f"vehicle {body.plate} already exists")
            vehicle = await _one(conn, "INSERT INTO vehicles (account_id, plate, supply_voltage_v, kind)"
                                 " VALUES (%s, %s, %s, %s) RETURNING id",
                                 (account["id"], body.plate, body.supply_voltage_v, body.kind))
            assert vehicle is not None
            device = await _one(
                conn, "INSERT INTO devices (identifier, protocol, msisdn, model, firmware, account_id, vehicle_id,"
                " installed_at, installation_center_id, report_interval_s) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " RETURNING id",
                (body.identifier, body.protocol, body.msisdn, body.model, body.firmware, account["id"], vehicle["id"],
                 installed, center_id, body.report_interval_s))
            assert device is not None
    except psycopg.errors.UniqueViolation as exc:  # a concurrent registration won the race
        raise ApiError(409, "conflict", "terminal, MSISDN or plate registered concurrently; check and retry") from exc
    row = await _one(conn, INSTALLATION_SQL + " WHERE d.id = %s", (device["id"],))
    assert row is not None
    sighting = await _one(conn, "SELECT first_seen, last_seen, count, source_address FROM unknown_devices"
                          " WHERE identifier = %s AND protocol = %s", (body.identifier, body.protocol))
    return Installation(**row, seen_unknown=UnknownSighting(**sighting) if sighting else None)


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
    return [Installation(**r) for r in rows]


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
    signed_at: datetime | None
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
             responses={404: {"description": "no such terminal at this center"},
                        409: {"description": "the terminal has no vehicle or account"}})
async def start_certification(body: CertificationIn, user: Installer, conn: Db) -> Certification:
    """Starts the live checks of an installed terminal with the customer present.

    Queues the protocol family's status command by SMS (the diagnostics worker sends it and records
    the terminal's answer). A certification of the same terminal still in progress is superseded."""
    scope = _center_scope(user)
    device = await _one(conn, "SELECT d.id, d.identifier, d.protocol, d.msisdn, d.account_id, d.vehicle_id,"
                        " d.installation_center_id FROM devices d WHERE d.id = %s"
                        " AND (%s::bigint IS NULL OR d.installation_center_id = %s)", (body.device_id, scope, scope))
    if device is None:
        raise not_found(f"device {body.device_id}")
    if device["vehicle_id"] is None or device["account_id"] is None:
        raise ApiError(409, "not_installed", f"device {body.device_id} has no vehicle or account: register the"
                       " installation first")
    if device["installation_center_id"] is None:
        raise ApiError(409, "not_installed", f"device {body.device_id} has no installation center")
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


@router.post("/certifications/{cert_id}/sign-off", response_model=Certification,
             summary="The customer signs the inspection form",
             responses={409: {"description": "not every check is green (the failed checks are listed), or already"
                                             " finished"}})
async def sign_off(cert_id: int, body: SignOff, user: Installer, conn: Db) -> Certification:
    """Passes only when every check is green: records who signed for the customer and when, and asks
    the account's users to change the access password (as the procedure asks).

    A red check fails the certification (``409 certification_failed``): the installer corrects the
    installation and starts a new one. Checks still pending leave it in progress
    (``409 certification_incomplete``). Both list the checks that are not green in ``failed_checks``."""
    row = await _certification_row(conn, user, cert_id)
    if row["result"] != "in_progress":
        raise ApiError(409, "certification_finished", f"certification {cert_id} already ended: {row['result']}")
    checks = await _checks(conn, row)
    snapshot = {"checks": [c.as_json() for c in checks]}
    failed = [c for c in checks if c.status != certification.GREEN]
    if failed:
        listed = "; ".join(f"{c.name} ({c.status}: {c.summary})" for c in failed)
        red = any(c.status == certification.RED for c in failed)
        if red:
            await conn.execute("UPDATE certifications SET result = 'fail', finished_at = now(), checks = %s,"
                               " outcome_note = %s WHERE id = %s AND result = 'in_progress'",
                               (Jsonb(snapshot), "sign-off refused: " + listed, cert_id))
        code = "certification_failed" if red else "certification_incomplete"
        what = "failed: correct the installation and start a new certification" if red else \
            "is not complete yet: wait for the pending checks"
        error = ApiError(409, code, f"certification {cert_id} {what}; not green: {listed}")
        cast(dict[str, Any], error.detail)["failed_checks"] = [c.as_json() for c in failed]
        raise error
    async with conn.transaction():
        cur = await conn.execute(
            "UPDATE certifications SET result = 'pass', finished_at = now(), checks = %s, customer_signed_by = %s,"
            " customer_document = %s, signed_at = now(), signed_recorded_by = %s WHERE id = %s AND result = 'in_progress'",
            (Jsonb(snapshot), body.customer_signed_by, body.customer_document, user.id, cert_id))
        if cur.rowcount != 1:
            raise ApiError(409, "certification_finished", f"certification {cert_id} already ended")
        # The procedure: having signed, the customer changes the access password.
        await conn.execute("UPDATE users SET must_change_password = true WHERE role = 'client' AND account_id = %s",
                           (row["account_id"],))
    row = await _certification_row(conn, user, cert_id)
    return _out(row, await _checks(conn, row))


@router.get("/certifications/{cert_id}/certificate", response_class=HTMLResponse,
            summary="Printable certificate of a passed certification",
            responses={200: {"content": {"text/html": {}}}, 409: {"description": "the certification did not pass"}})
async def certificate(cert_id: int, user: Installer, conn: Db) -> HTMLResponse:
    """An HTML page to print: terminal, vehicle, customer, center, each check's evidence, signatures."""
    row = await _certification_row(conn, user, cert_id)
    if row["result"] != "pass":
        raise ApiError(409, "not_passed", f"certification {cert_id} has not passed ({row['result']})")
    return HTMLResponse(_certificate_html(row, await _checks(conn, row)))


def _certificate_html(row: dict[str, Any], checks: list[certification.Check]) -> str:
    e = html.escape

    def cell(value: Any) -> str:
        return e("" if value is None else str(value))

    facts = [("Certification", f"#{row['id']}"), ("Customer account", row["account_name"]),
             ("Vehicle plate", row["plate"]), ("Declared supply voltage", f"{row['supply_voltage_v']} V"),
             ("Vehicle kind", row["vehicle_kind"]), ("Terminal", f"{row['identifier']} ({row['protocol']})"),
             ("Terminal line (MSISDN)", row["msisdn"]), ("Installed on", row["installed_at"]),
             ("Installation center", f"{row['center_name']}" + (f", {row['center_address']}" if row["center_address"] else "")),
             ("Installer", row["installer_name"]), ("Started", f"{row['started_at']:%Y-%m-%d %H:%M:%S %Z}"),
             ("Signed", f"{row['signed_at']:%Y-%m-%d %H:%M:%S %Z}")]
    fact_rows = "\n".join(f"<tr><th>{e(k)}</th><td>{cell(v)}</td></tr>" for k, v in facts)
    check_rows = "\n".join(f"<tr><td>{e(c.name)}</td><td class=\"{e(c.status)}\">{e(c.status.upper())}</td>"
                           f"<td>{e(c.summary)}</td></tr>" for c in checks)
    signer = cell(row["customer_signed_by"]) + (f" ({cell(row['customer_document'])})" if row["customer_document"] else "")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Installation certificate #{row['id']}</title>
<style>body{{font-family:sans-serif;max-width:48em;margin:2em auto}}table{{border-collapse:collapse;width:100%;margin:1em 0}}
th,td{{border:1px solid #999;padding:.3em .5em;text-align:left}}.green{{color:#060}}.red{{color:#a00}}
.sign{{margin-top:3em;display:flex;justify-content:space-between}}.sign div{{border-top:1px solid #000;width:40%}}</style>
</head><body>
<h1>Installation certificate</h1>
<p>The terminal below was installed and certified: while the installer and the customer watched, the location
platform verified that it reports at its interval with a valid fix, that the ignition is seen, that the supply
voltage matches the declaration, that it answers SMS, and that the vehicle is at the installation center.
The customer is asked to change the access password of the location platform.</p>
<table>{fact_rows}</table>
<h2>Checks</h2>
<table><tr><th>Check</th><th>Result</th><th>Evidence</th></tr>
{check_rows}</table>
<div class="sign"><div>For the customer: {signer}</div><div>For the installation center: {cell(row['installer_name'])}</div></div>
</body></html>
"""
