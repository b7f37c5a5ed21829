"""Login with the API's users; each role lands on its own screen, another role's screen says so,
and the API refuses that role's data whatever the page does. The login page speaks the
browser's language; after login the user's own choice, which the user changes and keeps."""

from __future__ import annotations

from urllib.parse import urlsplit

import psycopg
from playwright.async_api import Browser, Page

from avl.admin import add_center, create_token
from tests.api.conftest import Api
from tests.web.conftest import PASSWORD, View, login, needs_chromium, open_page, ready, screen, user

pytestmark = needs_chromium


async def test_each_role_logs_in_to_its_own_screen_only(console: Api, page: Page) -> None:
    console.account("Transportes Roles")
    with psycopg.connect(console.db_url) as conn:
        add_center(conn, "Centro Roles", 10.4961, -66.8530)
    user(console, "client", "despacho@roles.example", account="Transportes Roles")
    user(console, "support", "mesa@roles.example")
    user(console, "installer", "taller@roles.example", center="Centro Roles")
    base = console.url

    # No session: every screen sends to the login page; the root sends to the console.
    await page.goto(f"{base}/console/support")
    await page.wait_for_url(f"{base}/console/login?next=%2Fconsole%2Fsupport")
    await page.goto(f"{base}/")
    await page.wait_for_url(f"{base}/console/login")

    await ready(page)
    await page.fill("[data-testid=email]", "despacho@roles.example")
    await page.fill("[data-testid=password]", "wrong password")
    await page.click("[data-testid=login]")
    await page.wait_for_selector("[data-testid=login-error]:has-text('Correo o contraseña incorrectos')")
    page.js_errors.clear()  # type: ignore[attr-defined]  # the refused login's 401, as the browser logs it
    await screen(page, "01-login-refused")

    for email, home, others in [("despacho@roles.example", "/console/map", ["/console/support", "/console/certify"]),
                                ("mesa@roles.example", "/console/support", ["/console/map", "/console/certify"]),
                                ("taller@roles.example", "/console/certify", ["/console/map", "/console/support"])]:
        await page.context.clear_cookies()
        await login(page, base, email, PASSWORD, home)
        for other in others:
            await page.goto(f"{base}{other}")
            denied = page.locator("[data-testid=denied]")
            await denied.wait_for()
            assert "Esta pantalla no es para su rol" in await denied.inner_text()
        # The API itself refuses another role's data, with the same session cookie.
        statuses = await page.evaluate("""async () => Promise.all(
            ['/api/v1/vehicles', '/api/v1/support/fleet/health', '/api/v1/installers/certifications']
              .map(async (u) => (await fetch(u, {credentials: 'same-origin'})).status))""")
        # Support staff may read fleet data (the API admits them); the map screen is still the clients'.
        expected = {"/console/map": [200, 403, 403], "/console/support": [200, 200, 403],
                    "/console/certify": [403, 403, 200]}[home]
        assert statuses == expected, (email, statuses)
    await screen(page, "02-not-for-your-role")

    # Logging out ends the session: the screen sends back to the login page.
    await page.goto(f"{base}/console/certify")
    await ready(page)
    await page.click("[data-testid=logout]")
    await page.wait_for_url(f"{base}/console/login")
    await page.goto(f"{base}/console/certify")
    await page.wait_for_url(f"{base}/console/login?next=%2Fconsole%2Fcertify")
    assert page.js_errors == []  # type: ignore[attr-defined]


async def test_a_password_set_by_someone_else_is_changed_first_and_the_map_streams_without_a_token_in_any_url(
        console: Api, page: Page) -> None:
    account = console.account("Transportes Rosa")
    with psycopg.connect(console.db_url) as conn:
        admin = create_token(conn, "admin", name="root")[1]
    with console.client(admin) as c:  # an initial password from the administrator: to be changed
        assert c.post("/api/v1/admin/users", json={"name": "Rosa", "email": "rosa@avila.example", "role": "client",
                                                   "account_id": account, "password": "primera-clave-7"}).status_code == 201
    requested: list[str] = []
    sockets: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.on("websocket", lambda ws: sockets.append(ws.url))
    base = console.url
    await page.goto(f"{base}/console/login")
    await ready(page)
    await page.fill("[data-testid=email]", "rosa@avila.example")
    await page.fill("[data-testid=password]", "primera-clave-7")
    await page.click("[data-testid=login]")
    form = page.locator("[data-testid=password-change]")
    await form.wait_for()
    assert "Elija una contraseña nueva" in await form.inner_text()
    await page.fill("[data-testid=current-password]", "primera-clave-7")
    await page.fill("[data-testid=new-password]", "password1234")
    await page.click("[data-testid=change-password]")
    await page.wait_for_selector("[data-testid=password-error]:has-text('new_password')")
    page.js_errors.clear()  # type: ignore[attr-defined]  # the refused weak password: a 422 the browser logs
    await screen(page, "03-password-change-required")
    await page.fill("[data-testid=new-password]", "faro del norte 31")
    await page.click("[data-testid=change-password]")
    await ready(page)
    await page.wait_for_selector("[data-testid=live-state][data-state=live]")
    # The stream was opened with a single-use ticket: no session token in any URL.
    session = next(c["value"] for c in await page.context.cookies() if c["name"] == "avl_session")
    assert sockets and all("ticket=" in url for url in sockets)
    assert not [url for url in requested + sockets if session in url]
    # A link cannot point the map's tile layer at the API: the tile URL is the server's setting only.
    await page.goto(f"{base}/console/map?tiles=/api/v1/admin/users%3Fz%3D{{z}}")
    await ready(page)  # tiles are asked for before this
    assert not [url for url in requested if urlsplit(url).path.startswith("/api/v1/admin/users")]
    assert page.js_errors == []  # type: ignore[attr-defined]


async def test_the_login_page_speaks_the_browsers_language_and_each_user_keeps_the_language_they_chose(
        console: Api, browser: Browser) -> None:
    console.account("Transportes Idioma")
    user(console, "client", "idioma@avila.example", account="Transportes Idioma")
    base = console.url
    english = await open_page(browser, View("en", "desktop"))
    spanish = await open_page(browser, View("es", "phone"))
    try:
        # Before login: Accept-Language decides (an English browser reads English), and a link
        # switches to the other language.
        await english.goto(f"{base}/console/login")
        await ready(english)
        assert await english.inner_text("[data-testid=login]") == "Log in"
        assert await english.get_attribute("html", "lang") == "en-US"
        await spanish.goto(f"{base}/console/login")
        await ready(spanish)
        assert await spanish.inner_text("[data-testid=login]") == "Iniciar sesión"
        await spanish.click("[data-testid=other-language]")
        await spanish.wait_for_url("**/console/login?lang=en")
        await ready(spanish)
        assert await spanish.inner_text("[data-testid=login]") == "Log in"
        await screen(spanish, "04-login-switched")

        # After login: the user's own language, Spanish unless chosen otherwise, whatever the browser says.
        await login(english, base, "idioma@avila.example", PASSWORD, "/console/map")
        me = await english.evaluate("async () => (await fetch('/api/v1/me')).json()")
        assert (me["language"], me["language_preference"]) == ("es", None)
        assert await english.inner_text("[role=tab][data-tab=zones]") == "Zonas"
        # The user chooses English: stored, and every screen follows.
        await english.select_option("[data-testid=language]", "en")
        await english.wait_for_function("() => document.documentElement.lang === 'en-US'")
        await ready(english)
        assert await english.inner_text("[role=tab][data-tab=zones]") == "Zones"
        me = await english.evaluate("async () => (await fetch('/api/v1/me')).json()")
        assert (me["language"], me["language_preference"]) == ("en", "en")
        await screen(english, "05-map-chosen-english")

        # Logged in again from a Spanish browser, the user still reads English.
        await login(spanish, base, "idioma@avila.example", PASSWORD, "/console/map")
        assert await spanish.inner_text("[role=tab][data-tab=zones]") == "Zones"
        assert await spanish.inner_text("[data-testid=logout]") == "Log out"
        # Choosing a language needs a session: the API refuses it without one.
        status = await english.evaluate("""async () => (await fetch('/api/v1/auth/language', {method: 'PUT',
            credentials: 'omit', headers: {'Content-Type': 'application/json'}, body: '{"language": "es"}'})).status""")
        assert status == 401
        english.js_errors.clear()  # type: ignore[attr-defined]  # that 401, as the browser logs it
        # And only es or en: anything else is a 422 naming the field.
        refused = await english.evaluate("""async () => { const r = await fetch('/api/v1/auth/language', {method: 'PUT',
            headers: {'Content-Type': 'application/json'}, body: '{"language": "fr"}'}); return [r.status, await r.json()]; }""")
        assert refused[0] == 422 and refused[1]["message"].startswith("language")
    finally:
        await english.context.close()
        await spanish.context.close()
