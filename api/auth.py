"""Console login: email and password give a session token (stored hashed like API tokens).

Failed logins are throttled per (email, client address) and per client address, never per
email alone: a stranger's wrong passwords must not lock the owner out. Past a few free
failures each key waits a delay that doubles with every further failure. The counters live
in the database (``login_throttle``) and each attempt takes its slot with one atomic upsert
*before* the password is checked, so a burst of concurrent attempts cannot overrun a limit
and every API process counts the same failures.

An unknown email costs the same scrypt as a known one (against a dummy hash), and scrypt
runs in a small thread pool, off the event loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import secrets
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from pydantic import BaseModel, Field

from api.deps import SESSION_COOKIE, AnyUser, ApiError, CurrentUser, Db
from avl.admin import (
    PASSWORD_MAX,
    TOKEN_PREFIX,
    AdminError,
    check_password,
    email_key,
    hash_password,
    hash_token,
    verify_password,
)

router = APIRouter(prefix="/api/v1/auth", tags=["access"])

SESSION_HOURS = 12
FREE_FAILURES_PER_LOGIN = 5      # per (email, address) before delays start
FREE_FAILURES_PER_ADDRESS = 20   # per address (an office behind one NAT shares it)
FIRST_DELAY_S = 30               # the wait after the last free failure; doubles with each further one
MAX_DELAY_S = 900
FORGET_S = 3600                  # a key's failures are forgotten an hour after the last one
SCRYPT_THREADS = 4               # concurrent password hashes (16 MiB each)

_hashing = ThreadPoolExecutor(max_workers=SCRYPT_THREADS, thread_name_prefix="avl-scrypt")


class Login(BaseModel):
    email: str = Field(max_length=254, examples=["dispatcher@flota.example"])
    password: str = Field(max_length=1024, examples=["correct horse battery staple"])


class Session(BaseModel):
    token: str
    expires_at: datetime
    must_change_password: bool
    user: dict[str, Any]


class PasswordChange(BaseModel):
    current_password: str = Field(max_length=1024)
    new_password: str = Field(max_length=PASSWORD_MAX, description=(
        "at least 12 characters and not easy to guess (common passwords, keyboard walks and "
        "repetitions are refused)"))


class LanguageChoice(BaseModel):
    language: Literal["es", "en"] | None = Field(description=(
        "`es` (Spanish, Venezuela) or `en` (English); null: no choice, the service's default (`AVL_LANGUAGE`)"),
        examples=["en"])


async def verify(password: str, stored: str | None) -> bool:
    """``verify_password`` in the hashing pool: the event loop keeps serving meanwhile."""
    return await asyncio.get_running_loop().run_in_executor(_hashing, verify_password, password, stored)


async def hashed(password: str) -> str:
    """``hash_password`` in the hashing pool."""
    return await asyncio.get_running_loop().run_in_executor(_hashing, hash_password, password)


def client_address(request: Request) -> str:
    """The client's address as the throttle counts it: an IPv6 client by its /64 (one
    subscriber's network), since it can pick any address inside it."""
    host = request.client.host if request.client else "?"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


# One attempt takes a slot; when the key is waiting out a delay nothing changes and no row returns.
_TAKE_SQL = """
INSERT INTO login_throttle AS t (key, failures, last_failure_at, blocked_until)
VALUES (%(key)s, 1, now(), CASE WHEN %(free)s <= 1 THEN now() + make_interval(secs => %(first)s) END)
ON CONFLICT (key) DO UPDATE SET
    failures = CASE WHEN t.last_failure_at < now() - make_interval(secs => %(forget)s) THEN 1 ELSE t.failures + 1 END,
    last_failure_at = now(),
    blocked_until = CASE
        WHEN (CASE WHEN t.last_failure_at < now() - make_interval(secs => %(forget)s) THEN 1 ELSE t.failures + 1 END)
             < %(free)s THEN NULL
        ELSE now() + make_interval(secs => least(%(max)s, %(first)s * power(2, least(30,
             (CASE WHEN t.last_failure_at < now() - make_interval(secs => %(forget)s) THEN 1 ELSE t.failures + 1 END)
             - %(free)s))))
    END
WHERE t.blocked_until IS NULL OR t.blocked_until <= now()
RETURNING failures
"""
# A successful attempt gives its slot back.
_GIVE_BACK_SQL = """
UPDATE login_throttle SET failures = greatest(failures - 1, 0),
    blocked_until = CASE WHEN failures - 1 < %(free)s THEN NULL ELSE blocked_until END
WHERE key = %(key)s
"""


class LoginThrottle:
    """The two keys of one login attempt: ``addr <address>`` and ``login <email key> <address>``."""

    def __init__(self, conn: AsyncConnection, email: str, request: Request) -> None:
        self.conn = conn
        address = client_address(request)
        self.keys = ((f"addr {address}", FREE_FAILURES_PER_ADDRESS),
                     (f"login {email_key(email)} {address}", FREE_FAILURES_PER_LOGIN))
        self.taken: list[tuple[str, int]] = []

    async def take(self) -> None:
        """Counts this attempt as a failure until ``succeeded``; a 429 when a key must wait."""
        for key, free in self.keys:  # always in this order, so concurrent attempts cannot deadlock
            cur = await self.conn.execute(_TAKE_SQL, {"key": key, "free": free, "first": FIRST_DELAY_S,
                                                      "max": MAX_DELAY_S, "forget": FORGET_S})
            if await cur.fetchone() is None:
                await self._give_back()
                cur = await self.conn.execute(
                    "SELECT extract(epoch FROM blocked_until - now()) FROM login_throttle WHERE key = %s", (key,))
                row = await cur.fetchone()
                wait_s = max(1, math.ceil(float(row[0])) if row and row[0] is not None else 1)
                raise ApiError(429, "too_many_attempts",
                               f"too many failed logins from this address; try again in {wait_s} s",
                               headers={"Retry-After": str(wait_s)})
            self.taken.append((key, free))

    async def _give_back(self) -> None:
        for key, free in self.taken:
            await self.conn.execute(_GIVE_BACK_SQL, {"key": key, "free": free})
        self.taken.clear()

    async def succeeded(self) -> None:
        """The right password: this (email, address) starts afresh; the address gets its slot back."""
        (addr_key, addr_free), (login_key, _) = self.keys
        await self.conn.execute("DELETE FROM login_throttle WHERE key = %s", (login_key,))
        await self.conn.execute(_GIVE_BACK_SQL, {"key": addr_key, "free": addr_free})
        self.taken.clear()


async def forget_old_failures(conn: AsyncConnection) -> None:
    """Drops throttle rows nobody has failed on for FORGET_S (they would restart at zero anyway)."""
    await conn.execute("DELETE FROM login_throttle WHERE last_failure_at < now() - make_interval(secs => %s)"
                       " AND (blocked_until IS NULL OR blocked_until < now())", (FORGET_S,))


@router.post("/login", response_model=Session, summary="Log in to the console",
             responses={401: {"description": "wrong email or password"},
                        429: {"description": "too many failed attempts from this address: wait `Retry-After` s"}})
async def login(body: Login, request: Request, response: Response, conn: Db) -> Session:
    """Returns a session token (also set as an HTTP-only cookie, `Secure` over HTTPS) valid for 12 hours."""
    if secrets.randbelow(100) == 0:  # now and then, whatever the outcome: attacks create rows too
        await forget_old_failures(conn)
    throttle = LoginThrottle(conn, body.email, request)
    await throttle.take()
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT u.id, u.name, u.email, u.role, u.account_id, u.installation_center_id, u.password_hash,"
                          " u.must_change_password, a.status AS account_status FROM users u"
                          " LEFT JOIN accounts a ON a.id = u.account_id WHERE u.email_key = %s AND u.active",
                          (email_key(body.email),))
        user = await cur.fetchone()
    # Always one scrypt: an unknown email takes as long as a wrong password.
    if not await verify(body.password, user.pop("password_hash") if user else None) or user is None:
        raise ApiError(401, "unauthenticated", "wrong email or password")
    await throttle.succeeded()
    if user["role"] == "client" and user["account_status"] == "retired":
        raise ApiError(403, "account_retired", "this account's service was retired: access blocked")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires = datetime.now(UTC) + timedelta(hours=SESSION_HOURS)
    await conn.execute("INSERT INTO api_tokens (user_id, name, kind, token_hash, expires_at)"
                       " VALUES (%s, 'session', 'session', %s, %s)", (user["id"], hash_token(token), expires))
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict", max_age=SESSION_HOURS * 3600,
                        secure=request.url.scheme == "https")
    return Session(token=token, expires_at=expires, must_change_password=user["must_change_password"], user=user)


@router.post("/logout", status_code=204, summary="End this session",
             description="Revokes the token this request was made with (the bearer token when there is one, "
                         "else the session cookie's).")
async def logout(user: AnyUser, conn: Db, request: Request, response: Response) -> None:
    await conn.execute("UPDATE api_tokens SET revoked_at = now(), revoked_reason = 'logout'"
                       " WHERE id = %s AND revoked_at IS NULL", (user.token_id,))
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie and await _token_id(conn, cookie) == user.token_id:
        response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="strict",
                               secure=request.url.scheme == "https")


async def _token_id(conn: AsyncConnection, token: str) -> int | None:
    cur = await conn.execute("SELECT id FROM api_tokens WHERE token_hash = %s", (hash_token(token),))
    row = await cur.fetchone()
    return int(row[0]) if row else None


@router.post("/password", status_code=204, summary="Change my password",
             description="After certification the customer changes the access password, as the service procedure "
                         "asks. Ends the user's other console sessions (this one stays); API tokens are kept. "
                         "Wrong current passwords are throttled like logins.",
             responses={429: {"description": "too many wrong current passwords from this address"}})
async def change_password(body: PasswordChange, user: AnyUser, conn: Db, request: Request) -> None:
    throttle = LoginThrottle(conn, user.email, request)
    await throttle.take()
    cur = await conn.execute("SELECT password_hash FROM users WHERE id = %s", (user.id,))
    row = await cur.fetchone()
    if not await verify(body.current_password, row[0] if row else None):
        raise ApiError(401, "unauthenticated", "the current password is wrong")
    await throttle.succeeded()
    if body.new_password == body.current_password:
        raise ApiError(422, "invalid_request", "new_password: must differ from the current password")
    try:
        check_password(body.new_password, user_inputs=(user.email, user.name))
    except AdminError as exc:
        raise ApiError(422, "invalid_request", f"new_password: {exc}") from None
    new_hash = await hashed(body.new_password)
    async with conn.transaction():
        await conn.execute("UPDATE users SET password_hash = %s, must_change_password = false WHERE id = %s",
                           (new_hash, user.id))
        await conn.execute("UPDATE api_tokens SET revoked_at = now(), revoked_reason = 'password_change'"
                           " WHERE user_id = %s AND kind = 'session' AND id <> %s AND revoked_at IS NULL",
                           (user.id, user.token_id))


async def language_of(conn: AsyncConnection, user_id: int) -> str | None:
    """The user's own choice of language (``users.language``), or None when never made."""
    cur = await conn.execute("SELECT language FROM users WHERE id = %s", (user_id,))
    row = await cur.fetchone()
    return str(row[0]) if row and row[0] else None


@router.put("/language", status_code=204, summary="Choose my language",
            description="The language of the web console (and of what else is written for this user): `es` "
                        "(Spanish, Venezuela) or `en` (English); null goes back to the service's default. "
                        "`GET /api/v1/me` shows it as `language`.")
async def choose_language(body: LanguageChoice, user: CurrentUser, conn: Db) -> None:
    await conn.execute("UPDATE users SET language = %s WHERE id = %s", (body.language, user.id))
