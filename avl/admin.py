"""Administrative operations on the service's entities (used by the CLI and the API).

Each function takes an open connection and commits nothing itself: the caller owns the
transaction. Errors a person will read are ``AdminError`` with one line.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import dict_row

from ingest.protocols import ALL_NAMES

TOKEN_PREFIX = "avl_"


class AdminError(Exception):
    """A refused administrative operation; ``str()`` is one line."""


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


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


def set_account_status(conn: psycopg.Connection, ref: str | int, action: str, reason: str | None = None) -> dict[str, Any]:
    """suspend (non-payment), reconnect (payment received) or retire (service ended).

    Retiring blocks the customer's web access (the API refuses the account's users) and
    suspends the cellular line of every terminal of the account, as the service does.
    """
    account = find_account(conn, ref)
    if account["status"] == "retired" and action != "retire":
        raise AdminError(f"account {account['name']!r} is retired; a retired account cannot be {action}ed")
    status, default_reason = {
        "suspend": ("suspended", "non-payment"),
        "reconnect": ("active", None),
        "retire": ("retired", "service retired"),
    }[action]
    row = _one(
        conn,
        "UPDATE accounts SET status = %s, status_reason = %s, status_changed_at = now() WHERE id = %s RETURNING *",
        (status, reason or default_reason, account["id"]),
    )
    line = {"retire": "suspended", "reconnect": "active"}.get(action)
    if line:
        conn.execute("UPDATE devices SET line_status = %s WHERE account_id = %s", (line, account["id"]))
    assert row is not None
    return row


def add_center(conn: psycopg.Connection, name: str, latitude: float, longitude: float, *,
               address: str | None = None, phone: str | None = None) -> dict[str, Any]:
    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
        raise AdminError(f"center location {latitude},{longitude} is not a WGS84 coordinate")
    if _one(conn, "SELECT id FROM installation_centers WHERE lower(name) = lower(%s)", (name,)):
        raise AdminError(f"installation center {name!r} already exists")
    row = _one(
        conn,
        "INSERT INTO installation_centers (name, latitude, longitude, address, phone) VALUES (%s, %s, %s, %s, %s) RETURNING *",
        (name, latitude, longitude, address, phone),
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
    if spec.msisdn and _one(conn, "SELECT id FROM devices WHERE msisdn = %s", (spec.msisdn,)):
        raise AdminError(f"MSISDN {spec.msisdn} already belongs to another device")
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
        " installed_at, installation_center_id, report_interval_s)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING *",
        (spec.identifier, spec.protocol, spec.msisdn, spec.model, spec.firmware, account_id, vehicle_id,
         spec.installed_at, center_id, spec.report_interval_s),
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


def create_token(conn: psycopg.Connection, role: str, *, name: str, email: str | None = None,
                 account: str | int | None = None, center: str | int | None = None) -> tuple[dict[str, Any], str]:
    """Creates a user with ``role`` (or reuses the one with ``email``) and a new API token.

    Returns the user and the token; only the token's hash is stored."""
    if role not in ("client", "support", "installer", "admin"):
        raise AdminError(f"role must be client, support, installer or admin, not {role!r}")
    account_id = find_account(conn, account)["id"] if account is not None else None
    center_id = find_center(conn, center)["id"] if center is not None else None
    if role == "client" and account_id is None:
        raise AdminError("a client token needs --account")
    if role == "installer" and center_id is None:
        raise AdminError("an installer token needs --center")
    email = email or f"{name.lower().replace(' ', '.')}@{role}.local"
    user = _one(conn, "SELECT * FROM users WHERE lower(email) = lower(%s)", (email,))
    if user is None:
        user = _one(
            conn,
            "INSERT INTO users (name, email, role, account_id, installation_center_id) VALUES (%s, %s, %s, %s, %s) RETURNING *",
            (name, email, role, account_id if role == "client" else None, center_id if role == "installer" else None),
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


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str | None) -> bool:
    if not stored or not stored.startswith("scrypt$"):
        return False
    try:
        _, n, r, p, salt, digest = stored.split("$")
        candidate = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), dklen=32, n=int(n), r=int(r), p=int(p))
    except ValueError:
        return False
    return secrets.compare_digest(candidate.hex(), digest)


def set_password(conn: psycopg.Connection, email: str, password: str, *, must_change: bool = False) -> dict[str, Any]:
    if len(password) < 8:
        raise AdminError("a password needs at least 8 characters")
    row = _one(conn, "UPDATE users SET password_hash = %s, must_change_password = %s WHERE lower(email) = lower(%s)"
               " RETURNING id, email, role", (hash_password(password), must_change, email))
    if row is None:
        raise AdminError(f"user {email!r} not found")
    return row
