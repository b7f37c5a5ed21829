"""Login with the API's users; each role lands on its own screen, another role's screen says so,
and the API refuses that role's data whatever the page does."""

from __future__ import annotations

from playwright.async_api import Page

from tests.api.conftest import Api
from tests.web.conftest import login, needs_chromium, shot

pytestmark = needs_chromium
PASSWORD = "console-pass-2026"


async def test_each_role_logs_in_to_its_own_screen_only(console: Api, page: Page) -> None:
    console.account("Transportes Ávila")
    with __import__("psycopg").connect(console.db_url) as conn:
        from avl.admin import add_center
        add_center(conn, "Centro Chacao", 10.4961, -66.8530)
    console.user("client", "despacho@avila.example", PASSWORD, account="Transportes Ávila")
    console.user("support", "mesa@support.example", PASSWORD)
    console.user("installer", "taller@chacao.example", PASSWORD, center="Centro Chacao")
    base = console.url

    # No session: every screen sends to the login page; the root sends to the console.
    await page.goto(f"{base}/console/support")
    await page.wait_for_url(f"{base}/console/login?next=%2Fconsole%2Fsupport")
    await page.goto(f"{base}/")
    await page.wait_for_url(f"{base}/console/login")

    await page.fill("[data-testid=email]", "despacho@avila.example")
    await page.fill("[data-testid=password]", "wrong password")
    await page.click("[data-testid=login]")
    await page.wait_for_selector("[data-testid=login-error]:has-text('wrong email or password')")
    await shot(page, "01-login-refused")

    for email, home, others in [("despacho@avila.example", "/console/map", ["/console/support", "/console/certify"]),
                                ("mesa@support.example", "/console/support", ["/console/map", "/console/certify"]),
                                ("taller@chacao.example", "/console/certify", ["/console/map", "/console/support"])]:
        await page.context.clear_cookies()
        await login(page, base, email, PASSWORD, home)
        for other in others:
            await page.goto(f"{base}{other}")
            denied = page.locator("[data-testid=denied]")
            await denied.wait_for()
            assert "Not for your role" in await denied.inner_text()
        # The API itself refuses another role's data, with the same session cookie.
        statuses = await page.evaluate("""async () => Promise.all(
            ['/api/v1/vehicles', '/api/v1/support/fleet/health', '/api/v1/installers/certifications']
              .map(async (u) => (await fetch(u, {credentials: 'same-origin'})).status))""")
        # Support staff may read fleet data (the API admits them); the map screen is still the clients'.
        expected = {"/console/map": [200, 403, 403], "/console/support": [200, 200, 403],
                    "/console/certify": [403, 403, 200]}[home]
        assert statuses == expected, (email, statuses)
    await shot(page, "02-not-for-your-role")

    # Logging out ends the session: the screen sends back to the login page.
    await page.goto(f"{base}/console/certify")
    await page.wait_for_selector("body[data-ready='1']")
    await page.click("[data-testid=logout]")
    await page.wait_for_url(f"{base}/console/login")
    await page.goto(f"{base}/console/certify")
    await page.wait_for_url(f"{base}/console/login?next=%2Fconsole%2Fcertify")
    assert page.js_errors == []  # type: ignore[attr-defined]
