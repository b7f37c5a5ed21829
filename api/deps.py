"""Request dependencies: the database pool and the current user (from an API token)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Header, HTTPException, Request
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from avl.admin import hash_token


def pool(request: Request) -> AsyncConnectionPool:
    p: AsyncConnectionPool = request.app.state.pool
    return p


async def current_user(
    db: Annotated[AsyncConnectionPool, Depends(pool)],
    authorization: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    """The user behind ``Authorization: Bearer <token>``; 401 when missing, unknown or revoked."""
    if not authorization or not authorization.lower().startswith("bearer "):
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    token = authorization.split(None, 1)[1].strip()
    async with db.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "UPDATE api_tokens t SET last_used_at = now() FROM users u"
            " WHERE t.token_hash = %s AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > now())"
            " AND u.id = t.user_id AND u.active"
            " RETURNING u.id, u.name, u.email, u.role, u.account_id, u.installation_center_id",
            (hash_token(token),),
        )
        user = await cur.fetchone()
    if user is None:
        raise HTTPException(401, "invalid or revoked token", headers={"WWW-Authenticate": "Bearer"})
    return user
