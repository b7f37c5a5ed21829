"""Administrative operations on the service's entities (used by the CLI and the API).

Each function takes an open connection and commits nothing itself: the caller owns the
transaction. Errors a person will read are ``AdminError`` with one line.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import unicodedata
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from avl import phone
from ingest.protocols import ALL_NAMES

if TYPE_CHECKING:
    from avl.billing import RetirementKind

TOKEN_PREFIX = "avl_"


class AdminError(Exception):
    """A refused administrative operation; ``str()`` is one line."""


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def email_key(email: str) -> str:
    """The one form of an email used to find a user and to count failed logins: NFKC, then
    casefold (``Ana@X`` and ``ana@x`` are one user; ``lockİt@`` is not ``lockit@``)."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", email.strip()).casefold())


def _one(conn: psycopg.Connection, sql: str, params: tuple[Any, ...]) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, params)
        return cur.fetchone()


def find_account(conn: psycopg.Connection, ref: str | int) -> dict[str, Any]:
    """An account by id or (case-insensitive) name."""
    if isinstance(ref, int) or str(ref).isdigit():
        row = _one(conn, "SELECT * FROM accounts WHERE id = %s", (int(ref),))
    else:
        row = _one(conn, "SELECT * FROM accounts WHERE lower(name) = lower(%s)", (str(ref),))
    if row is None:
        raise AdminError(f"account {ref!r} not found")
    return row


def find_center(conn: psycopg.Connection, ref: str | int) -> dict[str, Any]:
    if isinstance(ref, int) or str(ref).isdigit():
        row = _one(conn, "SELECT * FROM installation_centers WHERE id = %s", (int(ref),))
    else:
        row = _one(conn, "SELECT * FROM installation_centers WHERE lower(name) = lower(%s)", (str(ref),))
    if row is None:
        raise AdminError(f"installation center {ref!r} not found")
    return row


def add_account(
    conn: psycopg.Connection,
    name: str,
    *,
    billing: str = "post_paid",
    balance: Decimal | float = 0,
    plan_code: str = "PLOCVEHC",
    contact_name: str | None = None,
    contact_msisdn: str | None = None,
    contact_email: str | None = None,
) -> dict[str, Any]:
    if billing not in ("post_paid", "pre_paid"):
        raise AdminError(f"billing must be post_paid or pre_paid, not {billing!r}")
    contact_msisdn = e164(contact_msisdn, "contact MSISDN")
    if _one(conn, "SELECT id FROM accounts WHERE lower(name) = lower(%s)", (name,)):
        raise AdminError(f"account {name!r} already exists")
    row = _one(
        conn,
        "INSERT INTO accounts (name, billing, balance, plan_code, contact_name, contact_msisdn, contact_email)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING *",
        (name, billing, Decimal(str(balance)), plan_code, contact_name, contact_msisdn, contact_email),
    )
    assert row is not None
    return row


def set_account_status(conn: psycopg.Connection, ref: str | int, action: str, reason: str | None = None, *,
                       kind: RetirementKind = "non_payment", letter: str | None = None, force_reason: str | None = None,
                       actor: str = "cli", permanence_months: int = 12) -> dict[str, Any]:
    """suspend (non-payment), reconnect (payment received) or retire (``kind``: voluntary with the
    signed ``letter``, non_payment, by_payment), recorded in the account's status changes.

    The rules and what each does (lines, tokens, queued SMS, tickets) are ``avl.billing``'s;
    refusals are ``BillingError`` (an ``AdminError``)."""
    from avl import billing

    if action == "suspend":
        done = billing.run(conn, billing.suspend(ref, reason=reason, actor=actor, via="cli"))
    elif action == "reconnect":
        done = billing.run(conn, billing.reconnect(ref, reason=reason, actor=actor, via="cli"))
    elif action == "retire":
        done = billing.run(conn, billing.retire(ref, kind, reason=reason, letter=letter, force_reason=force_reason,
                                                actor=actor, via="cli", permanence_months=permanence_months))
    else:
        raise AdminError(f"account action must be suspend, reconnect or retire, not {action!r}")
    return {**find_account(conn, done["account"]["id"]), "change": done["change"]}


def add_center(conn: psycopg.Connection, name: str, latitude: float, longitude: float, *,
               address: str | None = None, phone: str | None = None, hours: str | None = None) -> dict[str, Any]:
    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
        raise AdminError(f"center location {latitude},{longitude} is not a WGS84 coordinate")
    if _one(conn, "SELECT id FROM installation_centers WHERE lower(name) = lower(%s)", (name,)):
        raise AdminError(f"installation center {name!r} already exists")
    row = _one(
        conn,
        "INSERT INTO installation_centers (name, latitude, longitude, address, phone, hours)"
        " VALUES (%s, %s, %s, %s, %s, %s) RETURNING *",
        (name, latitude, longitude, address, phone, hours),
    )
    assert row is not None
    return row


@dataclass
class DeviceSpec:
    identifier: str
    protocol: str
    account: str | int | None = None
    msisdn: str | None = None
    plate: str | None = None
    supply_voltage_v: int = 12
    vehicle_kind: str = "car"
    model: str | None = None
    firmware: str | None = None
    report_interval_s: int = 60
    center: str | int | None = None
    installed_at: date | None = None
    # Reporting cadence with the ignition off (None: learned from the device's history).
    parked_interval_s: int | None = None
    # The terminal's SMS command password, where its family needs one (None: the factory default).
    sms_password: str | None = None


def e164(number: str | None, what: str = "MSISDN", default_country: str = phone.DEFAULT_COUNTRY) -> str | None:
    """A phone number in E.164 (national input accepted), or an AdminError naming it."""
    if number is None or not number.strip():
        return None
    try:
        return phone.normalise(number, default_country)
    except ValueError as exc:
        raise AdminError(f"{what}: {exc}") from None


def add_device(conn: psycopg.Connection, spec: DeviceSpec) -> dict[str, Any]:
    """Registers a terminal (and its vehicle, when a plate is given)."""
    if spec.protocol not in ALL_NAMES:
        raise AdminError(f"unknown protocol {spec.protocol!r}; known: {', '.join(ALL_NAMES)}")
    if not spec.identifier or not spec.identifier.isprintable() or len(spec.identifier) > 64:
        raise AdminError(f"device identifier {spec.identifier!r} is not valid")
    if spec.supply_voltage_v not in (12, 24):
        raise AdminError(f"supply voltage must be 12 or 24 V, not {spec.supply_voltage_v}")
    if _one(conn, "SELECT id FROM devices WHERE identifier = %s AND protocol = %s", (spec.identifier, spec.protocol)):
        raise AdminError(f"device {spec.identifier} ({spec.protocol}) is already registered")
    msisdn = e164(spec.msisdn)
    if spec.parked_interval_s is not None and spec.parked_interval_s <= 0:
        raise AdminError(f"parked interval must be positive, not {spec.parked_interval_s}")
    if msisdn and _one(conn, "SELECT id FROM devices WHERE msisdn = %s", (msisdn,)):
        raise AdminError(f"MSISDN {msisdn} already belongs to another device")
    account_id = find_account(conn, spec.account)["id"] if spec.account is not None else None
    center_id = find_center(conn, spec.center)["id"] if spec.center is not None else None
    vehicle_id = None
    if spec.plate:
        if account_id is None:
            raise AdminError("a vehicle needs an account")
        if _one(conn, "SELECT id FROM vehicles WHERE plate = %s", (spec.plate,)):
            raise AdminError(f"vehicle {spec.plate} already exists")
        vehicle = _one(
            conn,
            "INSERT INTO vehicles (account_id, plate, supply_voltage_v, kind) VALUES (%s, %s, %s, %s) RETURNING id",
            (account_id, spec.plate, spec.supply_voltage_v, spec.vehicle_kind),
        )
        assert vehicle is not None
        vehicle_id = vehicle["id"]
    row = _one(
        conn,
        "INSERT INTO devices (identifier, protocol, msisdn, model, firmware, account_id, vehicle_id,"
        " installed_at, installation_center_id, report_interval_s, parked_interval_s, options)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING *",
        (spec.identifier, spec.protocol, msisdn, spec.model, spec.firmware, account_id, vehicle_id,
         spec.installed_at, center_id, spec.report_interval_s, spec.parked_interval_s,
         Jsonb({"sms_password": spec.sms_password} if spec.sms_password is not None else {})),
    )
    assert row is not None
    return row


def list_devices(conn: psycopg.Connection, account: str | int | None = None) -> list[dict[str, Any]]:
    sql = (
        "SELECT d.id, d.identifier, d.protocol, d.msisdn, d.line_status, d.model, d.report_interval_s,"
        " a.name AS account, v.plate, v.supply_voltage_v, l.fix_time AS last_fix, l.last_received_at"
        " FROM devices d LEFT JOIN accounts a ON a.id = d.account_id LEFT JOIN vehicles v ON v.id = d.vehicle_id"
        " LEFT JOIN latest_positions l ON l.device_id = d.id"
    )
    params: tuple[Any, ...] = ()
    if account is not None:
        sql += " WHERE d.account_id = %s"
        params = (find_account(conn, account)["id"],)
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql + " ORDER BY d.id", params)
        return cur.fetchall()


def set_device_options(conn: psycopg.Connection, identifier: str, changes: dict[str, Any], *,
                       protocol: str | None = None) -> dict[str, Any]:
    """Sets a terminal's decoder options (``devices.options``; the README's table per protocol), a
    value of None removing one. Ingest hears of the change (NOTIFY avl_devices) and decodes the
    device's next frame with them. Returns the device with all its options."""
    sql = "SELECT id, protocol FROM devices WHERE identifier = %s"
    found = [row for row in conn.execute(sql, (identifier,)).fetchall() if protocol is None or row[1] == protocol]
    if not found:
        raise AdminError(f"device {identifier!r}{f' ({protocol})' if protocol else ''} not found")
    if len(found) > 1:
        raise AdminError(f"device {identifier} is registered for {', '.join(sorted(p for _, p in found))}:"
                         " name one with --protocol")
    kept = {key: value for key, value in changes.items() if value is not None}
    removed = [key for key, value in changes.items() if value is None]
    try:
        row = _one(conn, "UPDATE devices SET options = (options || %s) - %s::text[] WHERE id = %s"
                   " RETURNING id, identifier, protocol, options", (Jsonb(kept), removed, found[0][0]))
    except psycopg.errors.CheckViolation:
        raise AdminError(f"options of device {identifier}: too long (at most 4096 bytes as JSON)") from None
    assert row is not None
    return row


def create_token(conn: psycopg.Connection, role: str, *, name: str, email: str | None = None,
                 account: str | int | None = None, center: str | int | None = None) -> tuple[dict[str, Any], str]:
    """Creates a user with ``role`` (or reuses the one with ``email``) and a new API token.

    Returns the user and the token; only the token's hash is stored."""
    if role not in ("client", "support", "installer", "admin", "billing"):
        raise AdminError(f"role must be client, support, installer, admin or billing, not {role!r}")
    account_id = find_account(conn, account)["id"] if account is not None else None
    center_id = find_center(conn, center)["id"] if center is not None else None
    if role == "client" and account_id is None:
        raise AdminError("a client token needs --account")
    if role == "installer" and center_id is None:
        raise AdminError("an installer token needs --center")
    email = email or f"{name.lower().replace(' ', '.')}@{role}.local"
    user = _one(conn, "SELECT * FROM users WHERE email_key = %s", (email_key(email),))
    if user is None:
        user = _one(
            conn,
            "INSERT INTO users (name, email, email_key, role, account_id, installation_center_id)"
            " VALUES (%s, %s, %s, %s, %s, %s) RETURNING *",
            (name, email, email_key(email), role, account_id if role == "client" else None,
             center_id if role == "installer" else None),
        )
    elif user["role"] != role:
        raise AdminError(f"user {email} exists with role {user['role']}, not {role}")
    assert user is not None
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    conn.execute("INSERT INTO api_tokens (user_id, name, token_hash) VALUES (%s, %s, %s)",
                 (user["id"], name, hash_token(token)))
    return user, token


# Passwords (web console login): scrypt from the standard library, salted, parameters stored.

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
PASSWORD_MIN = 12
PASSWORD_MAX = 128
# zxcvbn's score (0-4) a password needs: 3 is "safely unguessable" (about 10^8 guesses or more).
# Its dictionaries include the 30,000 most common passwords of the leaked-password corpora,
# with their l33t, reversed and keyboard-walk variants; a blocklist is the least of it.
PASSWORD_MIN_SCORE = 3
_ZXCVBN_MAX = 72  # zxcvbn refuses longer inputs; the first 72 characters decide
_zxcvbn_lock = threading.Lock()  # zxcvbn keeps the user inputs in a module-level dictionary


def check_password(password: str, *, user_inputs: tuple[str, ...] = ()) -> None:
    """AdminError (one line) when ``password`` is too short, too long or easy to guess: common,
    a keyboard walk, a repetition, or built from ``user_inputs`` (the user's email and name)."""
    if len(password) < PASSWORD_MIN:
        raise AdminError(f"a password needs at least {PASSWORD_MIN} characters")
    if len(password) > PASSWORD_MAX:
        raise AdminError(f"a password has at most {PASSWORD_MAX} characters")
    from zxcvbn import zxcvbn  # type: ignore[import-untyped]

    folded = password.casefold()
    if any(folded in (value.casefold(), value.casefold().split("@")[0]) for value in user_inputs if value):
        raise AdminError("a password must not be the user's email or name")
    inputs = [*user_inputs, *(part for value in user_inputs for part in value.replace("@", " ").replace(".", " ").split())]
    with _zxcvbn_lock:
        verdict = zxcvbn(password[:_ZXCVBN_MAX], user_inputs=inputs)
    if verdict["score"] < PASSWORD_MIN_SCORE:
        why = verdict["feedback"].get("warning") or "it is easy to guess"
        raise AdminError(f"this password is too easy to guess ({why.rstrip('.').lower()}); a few unrelated words work well")


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str | None) -> bool:
    """Whether ``password`` matches; costs one scrypt even when there is no usable hash, so
    the answer takes as long for an unknown user as for a known one."""
    if not stored or not stored.startswith("scrypt$"):
        stored = _dummy_hash()
        password = ""  # never matches: the dummy's password is random
        known = False
    else:
        known = True
    try:
        _, n, r, p, salt, digest = stored.split("$")
        candidate = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), dklen=32, n=int(n), r=int(r), p=int(p))
    except ValueError:
        return False
    return secrets.compare_digest(candidate.hex(), digest) and known


_dummy: list[str] = []


def _dummy_hash() -> str:
    if not _dummy:
        _dummy.append(hash_password(secrets.token_urlsafe(16)))
    return _dummy[0]


def set_password(conn: psycopg.Connection, email: str, password: str, *, must_change: bool = False) -> dict[str, Any]:
    """Sets a user's console password (rules: ``check_password``) and ends the user's console
    sessions: whoever knew the old password is logged out. API tokens are kept."""
    user = _one(conn, "SELECT id, name, email FROM users WHERE email_key = %s", (email_key(email),))
    if user is None:
        raise AdminError(f"user {email!r} not found")
    check_password(password, user_inputs=(user["email"], user["name"]))
    row = _one(conn, "UPDATE users SET password_hash = %s, must_change_password = %s WHERE id = %s"
               " RETURNING id, email, role", (hash_password(password), must_change, user["id"]))
    conn.execute("UPDATE api_tokens SET revoked_at = now(), revoked_reason = 'password_change'"
                 " WHERE user_id = %s AND kind = 'session' AND revoked_at IS NULL", (user["id"],))
    assert row is not None
    return row


# Installation lifecycle: the Engineering Unit's restricted cases and the warranty rules -------------------------------

def engineering_review_reasons(supply_voltage_v: int | None, vehicle_kind: str | None) -> list[str]:
    """Why an installation needs the Engineering Unit's review before certification (seed 004:
    terminals run on 12 V; 24 V trucks and motorcycles are restricted cases); empty for 12 V cars."""
    reasons = []
    if supply_voltage_v == 24:
        reasons.append("supply_24v")
    if vehicle_kind == "motorcycle":
        reasons.append("motorcycle")
    return reasons


DEAD_ON_ARRIVAL_DAYS = 15
# The installer's findings that void the warranty (and dead-on-arrival replacement).
WARRANTY_EXCLUSIONS = ("physical_damage", "unauthorised_repair", "transport_damage")


@dataclass(frozen=True)
class Warranty:
    """The warranty outcome for a fault reported on ``reported_on``.

    ``outcome``: ``dead_on_arrival`` (replace, do not repair), ``warranty_repair``, ``void`` (an
    exclusion was found) or ``unknown`` (neither a purchase date with its proof nor an
    installation date is recorded: ask for the proof of purchase). ``basis``: the date the
    dead-on-arrival window counted from (``purchase`` or ``installation``)."""

    outcome: str
    basis: str | None
    dead_on_arrival_until: date | None
    detail: str


def warranty(*, purchased_at: date | None, proof_of_purchase: str | None, installed_at: date | None,
             reported_on: date, findings: tuple[str, ...] | list[str] = ()) -> Warranty:
    """Dead on arrival: a fault reported within 15 days of the purchase (counted only with the
    proof of purchase's reference) or of the installation. Past that, warranty repair. Physical
    damage, unauthorised repair or transport damage found by the installer void both."""
    unknown = [f for f in findings if f not in WARRANTY_EXCLUSIONS]
    if unknown:
        raise AdminError(f"unknown warranty finding {unknown[0]!r}; known: {', '.join(WARRANTY_EXCLUSIONS)}")
    window = timedelta(days=DEAD_ON_ARRIVAL_DAYS)
    starts = [(basis, day) for basis, day in (("purchase", purchased_at if proof_of_purchase else None),
                                              ("installation", installed_at)) if day is not None]
    until = max((day + window for _, day in starts), default=None)
    if findings:
        found = ", ".join(f.replace("_", " ") for f in findings)
        return Warranty("void", None, until, f"warranty void: {found} found by the installer")
    if not starts:
        why = " (a purchase date without its proof does not count)" if purchased_at else ""
        return Warranty("unknown", None, None, "purchase and installation dates unknown" + why
                        + ": ask the customer for the proof of purchase")
    for basis, day in starts:
        if reported_on <= day + window:
            return Warranty("dead_on_arrival", basis, until,
                            f"reported {max(0, (reported_on - day).days)} days after the {basis} ({day:%Y-%m-%d}): dead on"
                            f" arrival, replace the terminal")
    basis, day = max(starts, key=lambda s: s[1])
    return Warranty("warranty_repair", basis, until,
                    f"reported {(reported_on - day).days} days after the {basis} ({day:%Y-%m-%d}), past the"
                    f" {DEAD_ON_ARRIVAL_DAYS}-day dead-on-arrival window: warranty repair")
