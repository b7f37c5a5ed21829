"""The FastAPI application: ``create_app(database_url)``.

Every error is JSON ``{"error": code, "message": one line}``: validation errors name the
field, a database that went away is a 503, and an unexpected failure is a 500 without a
traceback (the traceback goes to the log).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import psycopg
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

import avl
from api import auth, console
from api.deps import AnyUser, ApiError, Db, pool
from api.fleet_snapshot import FleetSnapshots
from avl.config import Settings, load_settings
from avl.db import first_line

log = logging.getLogger("avl.api")


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """How uvicorn must serve the app: ``X-Forwarded-For``/``-Proto`` are believed only from the
    proxies in ``AVL_TRUSTED_PROXIES`` (uvicorn's own default trusts any local peer)."""
    trusted = [p.strip() for p in settings.trusted_proxies.split(",") if p.strip()]
    return {"proxy_headers": bool(trusted), "forwarded_allow_ips": trusted}


class BodyLimit:
    """Refuses a request body over ``limit`` bytes with a 413, whether announced by
    ``Content-Length`` or streamed in chunks (counted as they arrive)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _error(413, "body_too_large", self._message())(scope, receive, send)
            return
        seen = 0

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise ApiError(413, "body_too_large", self._message())
            return message

        await self.app(scope, counted, send)

    def _message(self) -> str:
        return f"the request body is larger than {self.limit} bytes (AVL_API_MAX_BODY_BYTES)"


def create_app(database_url: str, *, read_url: str | None = None, pool_size: int = 10,
               settings: Settings | None = None) -> FastAPI:
    """The API with the console mounted. ``settings``: default the environment's (``AVL_*``)."""
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = AsyncConnectionPool(database_url, min_size=1, max_size=pool_size, open=False,
                                 kwargs={"autocommit": True, "application_name": "avl-api"}, timeout=10)
        await db.open()
        app.state.pool = db
        app.state.fleet_snapshots = FleetSnapshots(db, database_url) if settings.api_fleet_snapshot else None
        if app.state.fleet_snapshots is not None:
            app.state.fleet_snapshots.start()
        app.state.database_url = database_url
        replica = None
        if read_url:
            replica = AsyncConnectionPool(read_url, min_size=1, max_size=pool_size, open=False,
                                          kwargs={"autocommit": True, "application_name": "avl-api-read"}, timeout=10)
            await replica.open()
        app.state.read_pool = replica
        try:
            yield
        finally:
            if app.state.fleet_snapshots is not None:
                await app.state.fleet_snapshots.close()
            if replica is not None:
                await replica.close()
            await db.close()

    app = FastAPI(
        title="AVL fleet location and fault-diagnosis API",
        version=avl.__version__,
        lifespan=lifespan,
        docs_url="/api/docs",
        openapi_url="/api/v1/openapi.json",
        description="For fleet clients (their vehicles, history, zones, exports), the support center (fault checklist, "
                    "tickets) and installation centers (registration, certification). Authenticate with "
                    "`Authorization: Bearer <token>` (an API token from `avl token create`, or a session from "
                    "`POST /api/v1/auth/login`).",
    )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and str(exc.detail).startswith("There was an error parsing the body"):
            return _error(422, "invalid_request", "the request body is not valid UTF-8 JSON")
        if isinstance(exc.detail, dict) and "error" in exc.detail:
            return JSONResponse(exc.detail, status_code=exc.status_code, headers=getattr(exc, "headers", None))
        code = {401: "unauthenticated", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
                413: "body_too_large"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
        return _error(422, "invalid_request", f"{where}: {first.get('msg')}" if where else str(first.get("msg")))

    @app.exception_handler(psycopg.DataError)
    async def bad_value(request: Request, exc: psycopg.DataError) -> JSONResponse:
        # A value the database cannot hold (an id beyond bigint, a NUL character in text): the client's input.
        return _error(422, "invalid_request", f"a value cannot be stored or compared: {first_line(exc)}")

    @app.exception_handler(RecursionError)
    async def too_deep(request: Request, exc: RecursionError) -> JSONResponse:
        # JSON nested thousands deep: the parser (or what walks the result) runs out of stack.
        return _error(422, "invalid_request", "the request body is nested too deeply")

    @app.exception_handler(psycopg.OperationalError)
    @app.exception_handler(PoolTimeout)
    async def database_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable for %s %s: %s", request.method, request.url.path, first_line(exc))
        return _error(503, "database_unavailable", "the database is unavailable; try again shortly")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error(500, "internal_error", "unexpected server error; it has been logged")

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
        except (psycopg.Error, PoolTimeout) as exc:
            return JSONResponse({"status": "unavailable", "database": first_line(exc)}, status_code=503)
        assert row is not None
        return JSONResponse({"status": "ok", "database": "ok", "storage": row[0], "schema_version": row[1],
                             "version": avl.__version__})

    @app.get("/api/v1/me", tags=["access"], summary="The user behind the token",
             responses={401: COMMON_RESPONSES[401], 403: COMMON_RESPONSES[403]})
    async def me(user: AnyUser, conn: Db) -> dict[str, Any]:
        chosen = await auth.language_of(conn, user.id)  # the console's language (PUT /api/v1/auth/language)
        return {"id": user.id, "name": user.name, "email": user.email, "role": user.role,
                "account_id": user.account_id, "installation_center_id": user.installation_center_id,
                "account_status": user.account_status, "must_change_password": user.must_change_password,
                "password_change_required": user.password_change_pending,
                "language": chosen or settings.language, "language_preference": chosen}

    app.state.settings = settings  # what routes read per request (e.g. AVL_LANGUAGE for the certificate)
    app.include_router(auth.router, responses={401: COMMON_RESPONSES[401], 422: COMMON_RESPONSES[422]})
    for module in ("fleet", "live", "support", "installers", "admin", "client_tickets", "billing"):
        try:
            routes = __import__(f"api.routes.{module}", fromlist=["router"])
        except ModuleNotFoundError as exc:
            if exc.name != f"api.routes.{module}":
                raise
            continue
        app.include_router(routes.router, responses=COMMON_RESPONSES)
    console.mount(app)
    app.add_middleware(BodyLimit, limit=settings.api_max_body_bytes)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


COMMON_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing, invalid, expired or revoked token"},
    403: {"description": "not for this role, or the account is retired or suspended"},
    404: {"description": "no such resource (another account's looks exactly the same)"},
    422: {"description": "invalid request: the message names the field"},
}


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The generated document plus the bearer scheme every /api/v1 operation but login accepts."""
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
        "type": "http", "scheme": "bearer", "description": "an API token (`avl token create`) or a console session"}
    for path, operations in schema.get("paths", {}).items():
        if path.startswith("/api/v1/") and path != "/api/v1/auth/login":
            for operation in operations.values():
                operation.setdefault("security", [{"bearer": []}])
    app.openapi_schema = schema
    return schema
