"""The API served by a real uvicorn on a free port, over real HTTP, on a fresh database."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn

from api.app import create_app, uvicorn_options
from avl.admin import add_account, create_token, set_password
from avl.config import Settings
from avl.embedded import free_port


@dataclass
class Api:
    url: str
    db_url: str

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def token(self, role: str, name: str, **kw: str) -> str:
        with psycopg.connect(self.db_url) as conn:
            return create_token(conn, role, name=name, **kw)[1]

    def user(self, role: str, email: str, password: str, **kw: str) -> str:
        with psycopg.connect(self.db_url) as conn:
            create_token(conn, role, name=email.split("@")[0], email=email, **kw)
            set_password(conn, email, password)
        return email

    def account(self, name: str, **kw: object) -> int:
        with psycopg.connect(self.db_url) as conn:
            return int(add_account(conn, name, **kw)["id"])  # type: ignore[arg-type]


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # running in a thread
        pass


@contextlib.contextmanager
def serve(db_url: str, settings: Settings | None = None, host: str = "127.0.0.1", **options: Any) -> Iterator[str]:
    """The app on a real uvicorn in a thread, configured as `avl run` configures it (plus uvicorn
    ``options``, e.g. ``ssl_certfile``/``ssl_keyfile``); yields its URL."""
    settings = settings or Settings()
    port = free_port()
    server = _Server(uvicorn.Config(create_app(db_url, settings=settings), host=host, port=port, log_level="warning",
                                    **uvicorn_options(settings), **options))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "API did not start"
    try:
        yield f"{'https' if 'ssl_certfile' in options else 'http'}://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def api(db_url: str) -> Iterator[Api]:
    with serve(db_url) as url:
        yield Api(url, db_url)
