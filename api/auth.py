"""Console login: email and password give a session token (stored hashed like API tokens)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import defaultdict, deque
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request, Response
from psycopg.rows import dict_row
from pydantic import BaseModel, Field

from api.deps import SESSION_COOKIE, ApiError, CurrentUser, Db
from avl.admin import TOKEN_PREFIX, hash_password, hash_token, verify_password

router = APIRouter(prefix="/api/v1/auth", tags=["access"])

SESSION_HOURS = 12
LOGIN_ATTEMPTS = 5  # per email and per client address, within LOGIN_WINDOW_S
LOGIN_WINDOW_S = 300.0


class Login(BaseModel):
    email: str = Field(examples=["dispatcher@flota.example"])
    password: str = Field(examples=["correct horse battery staple"])


class Session(BaseModel):
    token: str
    expires_at: datetime
    must_change_password: bool
    user: dict[str, Any]


class PasswordChange(BaseModel):
    current_password: str
    new_password: str = Field(min_length=8)


class LoginLimiter:
    """Failed logins per key in a sliding window (per process; a cluster would use the database)."""

    def __init__(self) -> None:
        self.failures: dict[str, deque[float]] = defaultdict(deque)
        self.lock = asyncio.Lock()

    def blocked(self, *keys: str) -> bool:
        now = time.monotonic()
        for key in keys:
            q = self.failures[key]
            while q and now - q[0] > LOGIN_WINDOW_S:
                q.popleft()
            if len(q) >= LOGIN_ATTEMPTS:
                return True
        return False

    def fail(self, *keys: str) -> None:
        for key in keys:
            self.failures[key].append(time.monotonic())


@router.post("/login", response_model=Session, summary="Log in to the console",
             responses={401: {"description": "wrong email or password"}, 429: {"description": "too many attempts"}})
async def login(body: Login, request: Request, response: Response, conn: Db) -> Session:
    """Returns a session token (also set as an HTTP-only cookie) valid for 12 hours."""
    limiter: LoginLimiter = request.app.state.login_limiter
    keys = (f"email:{body.email.lower()}", f"addr:{request.client.host if request.client else '?'}")
    if limiter.blocked(*keys):
        raise ApiError(429, "too_many_attempts", f"too many failed logins; try again in {int(LOGIN_WINDOW_S / 60)} minutes")
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT u.id, u.name, u.email, u.role, u.account_id, u.installation_center_id, u.password_hash,"
                          " u.must_change_password, a.status AS account_status FROM users u"
                          " LEFT JOIN accounts a ON a.id = u.account_id WHERE lower(u.email) = lower(%s) AND u.active",
                          (body.email,))
        user = await cur.fetchone()
    if user is None or not verify_password(body.password, user.pop("password_hash")):
        limiter.fail(*keys)
        raise ApiError(401, "unauthenticated", "wrong email or password")
    if user["role"] == "client" and user["account_status"] == "retired":
        raise ApiError(403, "account_retired", "this account's service was retired: access blocked")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires = datetime.now(UTC) + timedelta(hours=SESSION_HOURS)
    await conn.execute("INSERT INTO api_tokens (user_id, name, token_hash, expires_at) VALUES (%s, 'session', %s, %s)",
                       (user["id"], hash_token(token), expires))
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict", max_age=SESSION_HOURS * 3600)
    return Session(token=token, expires_at=expires, must_change_password=user["must_change_password"], user=user)


@router.post("/logout", status_code=204, summary="End this session")
async def logout(user: CurrentUser, conn: Db, request: Request, response: Response) -> None:
    token = request.cookies.get(SESSION_COOKIE) or request.headers.get("authorization", " ").split(None, 1)[-1]
    await conn.execute("UPDATE api_tokens SET revoked_at = now() WHERE token_hash = %s AND user_id = %s",
                       (hash_token(token), user.id))
    response.delete_cookie(SESSION_COOKIE)


@router.post("/password", status_code=204, summary="Change my password",
             description="After certification the customer changes the access password, as the service procedure asks.")
async def change_password(body: PasswordChange, user: CurrentUser, conn: Db) -> None:
    cur = await conn.execute("SELECT password_hash FROM users WHERE id = %s", (user.id,))
    row = await cur.fetchone()
    if row is None or not verify_password(body.current_password, row[0]):
        raise ApiError(401, "unauthenticated", "the current password is wrong")
    await conn.execute("UPDATE users SET password_hash = %s, must_change_password = false WHERE id = %s",
                       (hash_password(body.new_password), user.id))


