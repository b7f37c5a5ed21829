"""End-to-end console tests: the API app with the console mounted, served by a real uvicorn,
driven by headless Chromium (Debian's ``chromium`` package) through Playwright's Python API
(the ``playwright`` package: its driver only; never ``playwright install``).

One browser and one server (on one database) per test module; each test opens its own browser
context: a language (the context's locale, so its ``Accept-Language``) and a screen size
(``desktop`` 1400x900, ``phone`` 390x844). ``screen(page, name)`` is every screen's check: a
screenshot in ``test-artifacts/web/<name>-<lang>-<size>.png``, axe-core (vendored in
``tests/web/vendor/axe-core``, for the tests only) with no serious or critical violation, and no
message key missing from the catalogue.

Skipped, with the reason, when Chromium or the ``playwright`` package is missing."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from avl.admin import create_token, set_password
from tests.api.conftest import Api, serve
from tests.conftest import _fresh

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "web"
AXE_JS = Path(__file__).resolve().parent / "vendor" / "axe-core" / "axe.min.js"
CHROMIUM = os.environ.get("AVL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser") or ""
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-default-apps", "--disable-extensions"]
SIZES = {"desktop": {"width": 1400, "height": 900}, "phone": {"width": 390, "height": 844}}
LOCALES = {"es": "es-VE", "en": "en-US"}
PASSWORD = "console-pass-2026"

try:
    from playwright.async_api import Browser, Page, async_playwright
    from playwright.async_api import TimeoutError as PlaywrightTimeout
    HAVE_PLAYWRIGHT = True
except ImportError:  # pragma: no cover - reported as a skip
    HAVE_PLAYWRIGHT = False

SKIP_REASON = (
    "" if HAVE_PLAYWRIGHT and CHROMIUM and os.access(CHROMIUM, os.X_OK) else
    "the playwright Python package is not installed (pip install playwright; no browser download needed)"
    if not HAVE_PLAYWRIGHT else "Chromium is not installed (apt-get install chromium), or set AVL_CHROMIUM")
needs_chromium = pytest.mark.skipif(bool(SKIP_REASON), reason=SKIP_REASON)


@pytest.fixture(scope="module")
def console(pg_server: str, template_db: str) -> Iterator[Api]:
    """The API app (the console is mounted by ``create_app``) on a real uvicorn, on one database
    for the module (tests in a module name their data apart)."""
    fresh = _fresh(pg_server, template_db)
    db_url = next(fresh)
    try:
        with serve(db_url) as url:
            yield Api(url, db_url)
    finally:
        next(fresh, None)  # drops the database


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            await b.close()


@dataclass(frozen=True)
class View:
    """How a test looks at the console: a language and a screen size."""

    lang: str
    size: str

    @property
    def tag(self) -> str:
        return f"{self.lang}-{self.size}"


# The role flows run twice: in Spanish on a desktop, in English on a phone.
FLOWS = [View("es", "desktop"), View("en", "phone")]


async def open_page(browser: Browser, view: View) -> Page:
    """A fresh context (no cookies) in ``view``'s language and size, collecting the page's errors."""
    context = await browser.new_context(viewport=SIZES[view.size], locale=LOCALES[view.lang], timezone_id="America/Caracas",
                                        is_mobile=view.size == "phone", has_touch=False)
    p = await context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    p.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" and "401" not in msg.text
         and "403" not in msg.text and "409" not in msg.text else None)
    p.js_errors = errors  # type: ignore[attr-defined]
    p.view = view  # type: ignore[attr-defined]
    return p


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    p = await open_page(browser, View("es", "desktop"))
    try:
        yield p
    finally:
        await p.context.close()


@pytest.fixture(params=FLOWS, ids=[v.tag for v in FLOWS])
async def flow_page(request: pytest.FixtureRequest, browser: Browser) -> AsyncIterator[Page]:
    """A page for a role's flow, once per view of FLOWS."""
    p = await open_page(browser, request.param)
    try:
        yield p
    finally:
        await p.context.close()


async def shot(page: Page, name: str, *, full_page: bool = False) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    view: View | None = getattr(page, "view", None)
    path = ARTIFACTS / (f"{name}-{view.tag}.png" if view else f"{name}.png")
    await page.screenshot(path=str(path), full_page=full_page)
    return path


async def accessibility(page: Page) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on the page as it is now."""
    if not await page.evaluate("() => typeof window.axe === 'object'"):
        await page.evaluate(AXE_JS.read_text(encoding="utf-8"))  # evaluated over CDP: the page's CSP allows no inline script
    found: list[dict[str, Any]] = await page.evaluate("""async () => {
        const r = await axe.run(document, { resultTypes: ['violations'] });
        return r.violations.filter(v => v.impact === 'serious' || v.impact === 'critical')
          .map(v => ({ id: v.id, impact: v.impact, help: v.help, targets: v.nodes.slice(0, 5).map(n => n.target.join(' ')) }));
    }""")
    return found


async def screen(page: Page, name: str, *, full_page: bool = False) -> None:
    """Every screen: its screenshot, no serious or critical accessibility violation, every message
    key in the catalogue, no JavaScript error."""
    await shot(page, name, full_page=full_page)
    view: View | None = getattr(page, "view", None)
    if view is not None:  # nothing wider than the screen: no sideways scrolling on a phone
        width = await page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= SIZES[view.size]["width"], f"{name}: the page is {width} px wide on a {view.size}"
    violations = await accessibility(page)
    assert violations == [], f"{name}: accessibility violations: {violations}"
    missing = await page.evaluate("() => window.avlMissingKeys || []")
    assert missing == [], f"{name}: message keys missing from the catalogue: {sorted(set(missing))}"
    errors = getattr(page, "js_errors", [])
    assert errors == [], f"{name}: JavaScript errors: {errors}"


async def login(page: Page, base: str, email: str, password: str, lands_on: str) -> None:
    await page.goto(f"{base}/console/login")
    await page.fill("[data-testid=email]", email)
    await page.fill("[data-testid=password]", password)
    await page.click("[data-testid=login]")
    await page.wait_for_url(f"{base}{lands_on}*")
    await ready(page)


async def ready(page: Page) -> None:
    """The page's module finished loading (or the reason it did not)."""
    try:
        await page.wait_for_selector("body[data-ready='1']", timeout=15000)
    except PlaywrightTimeout:
        raise AssertionError(f"{page.url} not ready; page errors: {getattr(page, 'js_errors', None)}") from None


def user(console: Api, role: str, email: str, *, language: str | None = None, **kw: str) -> str:
    """A console user with the test password and, when given, a language of their own."""
    with psycopg.connect(console.db_url) as conn:
        create_token(conn, role, name=email.split("@")[0], email=email, **kw)
        set_password(conn, email, PASSWORD)
        if language:
            conn.execute("UPDATE users SET language = %s WHERE email = %s", (language, email))
    return email


def tagged(page: Page, text: str) -> str:
    """``text`` made unique to the page's view, for data a module's tests share one database for."""
    view: View | None = getattr(page, "view", None)
    return f"{text}{'' if view is None else '-' + view.tag}"
