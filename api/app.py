"""The FastAPI application: ``create_app(database_url)``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse
from psycopg_pool import AsyncConnectionPool

import avl
from api.deps import current_user, pool
from avl.db import first_line


def create_app(database_url: str, *, pool_size: int = 10) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = AsyncConnectionPool(database_url, min_size=1, max_size=pool_size, open=False,
                                 kwargs={"autocommit": True}, timeout=10)
        await db.open()
        app.state.pool = db
        try:
            yield
        finally:
            await db.close()

    app = FastAPI(
        title="AVL fleet location and fault-diagnosis API",
        version=avl.__version__,
        lifespan=lifespan,
        docs_url="/api/docs",
        openapi_url="/api/v1/openapi.json",
    )

    @app.get("/health", tags=["platform"], summary="Liveness and database reachability")
    async def health(db: Annotated[AsyncConnectionPool, Depends(pool)]) -> JSONResponse:
        """``200 {"status": "ok", ...}`` when the database answers, ``503`` otherwise."""
        try:
            async with db.connection(timeout=5) as conn:
                cur = await conn.execute(
                    "SELECT coalesce((SELECT variant FROM schema_migrations WHERE variant IS NOT NULL LIMIT 1), 'native'),"
                    " (SELECT max(version) FROM schema_migrations)"
                )
                row = await cur.fetchone()
        except Exception as exc:  # any database failure is reported, not raised
            return JSONResponse({"status": "unavailable", "database": first_line(exc)}, status_code=503)
        assert row is not None
        return JSONResponse({"status": "ok", "database": "ok", "storage": row[0], "schema_version": row[1],
                             "version": avl.__version__})

    @app.get("/api/v1/me", tags=["access"], summary="The user behind the bearer token")
    async def me(user: Annotated[dict[str, Any], Depends(current_user)]) -> dict[str, Any]:
        return user

    return app
