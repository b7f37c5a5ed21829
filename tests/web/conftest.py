"""End-to-end console tests: the API app with the console mounted, served by a real uvicorn,
driven by headless Chromium (Debian's ``chromium`` package) through Playwright's Python API
(the ``playwright`` package: its driver only; never ``playwright install``).

Skipped, with the reason, when Chromium or the ``playwright`` package is missing.
Screenshots go to ``test-artifacts/web/`` at the repository root."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import uvicorn

from api.app import create_app
from api.console import mount
from avl.embedded import free_port
from tests.api.conftest import Api, _Server

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "web"
CHROMIUM = os.environ.get("AVL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser") or ""
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-default-apps", "--disable-extensions"]

try:
    from playwright.async_api import Browser, Page, async_playwright
    HAVE_PLAYWRIGHT = True
except ImportError:  # pragma: no cover - reported as a skip
    HAVE_PLAYWRIGHT = False

SKIP_REASON = (
    "" if HAVE_PLAYWRIGHT and CHROMIUM and os.access(CHROMIUM, os.X_OK) else
    "the playwright Python package is not installed (pip install playwright; no browser download needed)"
    if not HAVE_PLAYWRIGHT else "Chromium is not installed (apt-get install chromium), or set AVL_CHROMIUM")
needs_chromium = pytest.mark.skipif(bool(SKIP_REASON), reason=SKIP_REASON)


@pytest.fixture
def console(db_url: str) -> Iterator[Api]:
    """The API app with the console mounted, on a real uvicorn (as tests/api's ``api`` fixture)."""
    app = create_app(db_url)
    mount(app)
    port = free_port()
    server = _Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "API did not start"
    yield Api(f"http://127.0.0.1:{port}", db_url)
    server.should_exit = True
    thread.join(10)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1400, "height": 900}, locale="en-US",
                                        timezone_id="America/Caracas")
    p = await context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    p.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" and "401" not in msg.text
         and "403" not in msg.text and "409" not in msg.text else None)
    p.js_errors = errors  # type: ignore[attr-defined]
    try:
        yield p
    finally:
        await context.close()


async def shot(page: Page, name: str, *, full_page: bool = False) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=full_page)
    return path


async def login(page: Page, base: str, email: str, password: str, lands_on: str) -> None:
    await page.goto(f"{base}/console/login")
    await page.fill("[data-testid=email]", email)
    await page.fill("[data-testid=password]", password)
    await page.click("[data-testid=login]")
    await page.wait_for_url(f"{base}{lands_on}*")
    await page.wait_for_selector("body[data-ready='1']", timeout=15000)
