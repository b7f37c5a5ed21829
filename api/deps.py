"""Request dependencies: the database pool, the current user (API token or console
session), role checks, and the tenancy rule: a client sees only its own account, and
another account's resource answers 404 exactly like a missing one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Cookie, Depends, Header, HTTPException, Request
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from avl.admin import hash_token

SESSION_COOKIE = "avl_session"


def pool(request: Request) -> AsyncConnectionPool:
    p: AsyncConnectionPool = request.app.state.pool
    return p


async def db(p: Annotated[AsyncConnectionPool, Depends(pool)]) -> Any:
    """One pooled connection per request (autocommit; use ``conn.transaction()`` to group writes)."""
    async with p.connection() as conn:
        yield conn


Db = Annotated[AsyncConnection, Depends(db)]


async def read_db(request: Request) -> Any:
    """A connection to the read replica when one is configured (history-type queries), else the primary."""
    p: AsyncConnectionPool = getattr(request.app.state, "read_pool", None) or request.app.state.pool
    async with p.connection() as conn:
        yield conn


ReadDb = Annotated[AsyncConnection, Depends(read_db)]


@dataclass(frozen=True)
class User:
    id: int
    name: str
    email: str
    role: str  # client | support | installer | admin
    account_id: int | None
    installation_center_id: int | None
    account_status: str | None
    must_change_password: bool
    token_id: int = 0  # the API token or console session this request came with
    token_kind: str = "api"  # api | session

    def account_scope(self) -> int | None:
        """The account a query must be limited to (clients), or None (staff roles see all)."""
        return self.account_id if self.role == "client" else None

    @property
    def password_change_pending(self) -> bool:
        """A console session of a user who must change the password first (a password known to
        someone else, e.g. set at certification): it may only change it, ask who it is, or log out.
        API tokens are issued by an admin, not derived from the password, and are not held back."""
        return self.must_change_password and self.token_kind == "session"


class ApiError(HTTPException):
    """An error a person reads: one line, and a stable machine-readable code."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status, detail={"error": code, "message": message}, headers=headers)


def not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", f"{what} not found")


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (None when absent or blank)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


TOKEN_USER_SQL = """
SELECT u.id, u.name, u.email, u.role, u.account_id, u.installation_center_id, a.status AS account_status,
       u.must_change_password, t.id AS token_id, t.kind AS token_kind
FROM api_tokens t JOIN users u ON u.id = t.user_id LEFT JOIN accounts a ON a.id = u.account_id
WHERE t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > now()) AND u.active
"""


async def authenticate(conn: AsyncConnection, token: str | None, *, touch: bool = True) -> User:
    """The user behind an API token or console session, or a 401; a retired account's users get 403."""
    if not token:
        raise ApiError(401, "unauthenticated", "missing bearer token")
    async with conn.cursor(row_factory=dict_row) as cur:
        if touch:
            await cur.execute(
                "UPDATE api_tokens t SET last_used_at = now() FROM (" + TOKEN_USER_SQL + " AND t.token_hash = %s) x"
                " WHERE t.id = x.token_id RETURNING x.*", (hash_token(token),))
        else:
            await cur.execute(TOKEN_USER_SQL + " AND t.token_hash = %s", (hash_token(token),))
        row = await cur.fetchone()
        if row is None:
            # Retiring an account revokes its users' tokens (avl.billing): say why, as before.
            await cur.execute("SELECT 1 FROM api_tokens WHERE token_hash = %s AND revoked_reason = 'account_retired'",
                              (hash_token(token),))
            if await cur.fetchone() is not None:
                raise ApiError(403, "account_retired", "this account's service was retired: access blocked")
    if row is None:
        raise ApiError(401, "unauthenticated", "invalid, expired or revoked token")
    user = User(**row)
    if user.role == "client" and user.account_status == "retired":
        # The service's "access key blocked": a retired account's users are refused.
        raise ApiError(403, "account_retired", "this account's service was retired: access blocked")
    return user


async def any_user(
    conn: Db,
    authorization: Annotated[str | None, Header(description="`Bearer <API token>`")] = None,
    session: Annotated[str | None, Cookie(alias=SESSION_COOKIE, include_in_schema=False)] = None,
) -> User:
    """The user behind the bearer token or the console's session cookie, even one who must
    change the password first (for ``/me``, the password change and logout only)."""
    return await authenticate(conn, bearer(authorization) or session)


async def current_user(user: Annotated[User, Depends(any_user)]) -> User:
    """The user behind the request; a session that must change its password first gets a 403."""
    if user.password_change_pending:
        raise ApiError(403, "password_change_required",
                       "change your password first (POST /api/v1/auth/password); nothing else is open until then")
    return user


AnyUser = Annotated[User, Depends(any_user)]
CurrentUser = Annotated[User, Depends(current_user)]


def require(*roles: str) -> Any:
    """A dependency admitting only ``roles`` (admins are admitted everywhere)."""

    async def check(user: CurrentUser) -> User:
        if user.role not in roles and user.role != "admin":
            raise ApiError(403, "forbidden", f"this needs the {' or '.join(roles)} role")
        return user

    return Depends(check)


def live_data_allowed(user: User) -> None:
    """A suspended account can log in and see why, but receives no live data."""
    if user.role == "client" and user.account_status == "suspended":
        raise ApiError(403, "account_suspended",
                       "this account is suspended for non-payment: no live data until payment is received")


async def device_in_scope(conn: AsyncConnection, user: User, device_id: int) -> dict[str, Any]:
    """A device the user may see, or 404 (never 403: another account's device looks missing)."""
    scope = user.account_scope()
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT d.*, v.plate, v.supply_voltage_v, v.kind AS vehicle_kind FROM devices d"
            " LEFT JOIN vehicles v ON v.id = d.vehicle_id WHERE d.id = %s AND (%s::bigint IS NULL OR d.account_id = %s)",
            (device_id, scope, scope))
        row = await cur.fetchone()
    if row is None:
        raise not_found(f"device {device_id}")
    return row
