"""Every screen of the console in Spanish and English, on a desktop and on a phone: each one
screenshotted, checked by axe-core (no serious or critical violation), no wider than the screen,
and complete in its language (no message key missing, no JavaScript error). The roles' tasks run
in the other modules in Spanish on a desktop and in English on a phone (``FLOWS``); this tour
shows every screen in the other two: Spanish on a phone, English on a desktop."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from playwright.async_api import Browser

from avl.admin import DeviceSpec, add_account, add_center, add_device
from avl.records import Position
from tests.api.conftest import Api
from tests.diagnostics.harness import send_gl200
from tests.ingest.harness import running_ingest, settings_for
from tests.web.conftest import FLOWS, SIZES, View, login, needs_chromium, open_page, screen, user

pytestmark = needs_chromium
ALL = [View(lang, size) for lang in ("es", "en") for size in SIZES]
ACCOUNT = "Transportes Ávila"
# Two vans a few metres apart (their plates would overlap), a truck across town, a car gone quiet.
FLEET = [("862170010000601", "AB601CD", "van", (10.4961, -66.8530)), ("862170010000602", "AB602CD", "van", (10.4962, -66.8528)),
         ("862170010000603", "AB603CD", "truck", (10.5000, -66.9140)), ("862170010000604", "AB604CD", "car", (10.4700, -66.8000))]


def now_at(imei: str, where: tuple[float, float], *, minutes_ago: float = 0.0, count: int = 3) -> list[Position]:
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=minutes_ago)
    return [Position(device=imei, fix_time=end - timedelta(seconds=20 * (count - 1 - i)), valid=True, latitude=where[0],
                     longitude=where[1] + i * 0.0001, speed_kmh=32.4567, course=90.0, altitude_m=900.0, satellites=9,
                     hdop=0.9, ignition=True, power_mv=12845) for i in range(count)]


@pytest.fixture(scope="module")
async def fleet(console: Api, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Api]:
    """An account with four vehicles that reported through a real ingest service, a zone, a ticket,
    a certified center with an installation, and a user per role and language."""
    with psycopg.connect(console.db_url) as conn:
        account = add_account(conn, ACCOUNT, contact_msisdn="584120000601")["id"]
        add_center(conn, "Centro Chacao", 10.4961, -66.8530, address="Av. Francisco de Miranda, Chacao", phone="+582122630000")
        conn.execute("UPDATE installation_centers SET certified = true")
        for imei, plate, kind, _ in FLEET:
            add_device(conn, DeviceSpec(identifier=imei, protocol="gl200", account=ACCOUNT, plate=plate, vehicle_kind=kind,
                                        msisdn=f"58414{imei[-7:]}", report_interval_s=30, center="Centro Chacao"))
    for lang in ("es", "en"):
        user(console, "client", f"cliente-{lang}@avila.example", account=ACCOUNT, language=lang)
        user(console, "support", f"mesa-{lang}@support.example", language=lang)
        user(console, "installer", f"taller-{lang}@chacao.example", center="Centro Chacao", language=lang)
    settings = settings_for(tmp_path_factory.mktemp("ingest"))
    async with running_ingest(settings, console.db_url) as svc:
        await svc.intake.directory.load()
        port = svc.tcp["gl200"].port
        for imei, _, _, where in FLEET:
            await send_gl200(port, now_at(imei, where, minutes_ago=30 if imei.endswith("604") else 0))
    client = console.token("client", "tour", account=ACCOUNT)
    support = console.token("support", "tour-desk")
    with console.client(client) as c:
        ring = [[-66.86, 10.49], [-66.85, 10.49], [-66.85, 10.50], [-66.86, 10.50], [-66.86, 10.49]]
        assert c.post("/api/v1/geofences", json={"name": "Chacao", "kind": "allowed",
                                                  "geometry": {"type": "Polygon", "coordinates": [ring]}}).status_code == 201
    with console.client(support) as c:
        vehicles = {v["plate"]: v for v in console.client(client).get("/api/v1/vehicles").json()}
        r = c.post("/api/v1/support/tickets", json={"type": "technical", "title": "AB604CD: sin reportes", "account_id": account,
                                                     "device_id": vehicles["AB604CD"]["id"],
                                                     "activity": {"channel": "phone", "reason": "el cliente llamó"}})
        assert r.status_code == 201, r.text
    yield console


async def test_every_screen_in_the_views_the_role_flows_do_not_take(fleet: Api, browser: Browser, tmp_path: Path) -> None:
    base = fleet.url
    for view in ALL:
        page = await open_page(browser, view)
        try:
            # The login page speaks the browser's language (Accept-Language).
            await page.goto(f"{base}/console/login")
            await page.wait_for_selector("body[data-ready='1']")
            assert await page.get_attribute("html", "lang") == {"es": "es-VE", "en": "en-US"}[view.lang]
            await screen(page, "00-login")
            if view in FLOWS:
                continue

            await login(page, base, f"cliente-{view.lang}@avila.example", "console-pass-2026", "/console/map")
            await page.wait_for_function("() => document.querySelectorAll('[data-testid=vehicle-item]').length === 4")
            await page.wait_for_selector("[data-testid=live-state][data-state=live]")
            await screen(page, "10-map")
            await page.click("[data-testid=vehicle-item] >> nth=2")
            await page.wait_for_selector("[data-testid=history-info][data-points]")
            await screen(page, "11-map-details", full_page=view.size == "phone")
            for tab in ("zones", "alerts", "tickets", "centers"):
                await page.click(f"[role=tab][data-tab={tab}]")
                await page.wait_for_timeout(200)
                await screen(page, f"12-map-{tab}")
            await page.click("[data-testid=logout]")
            await page.wait_for_url(f"{base}/console/login")

            await login(page, base, f"mesa-{view.lang}@support.example", "console-pass-2026", "/console/support")
            await screen(page, "20-support", full_page=True)
            await page.click("[data-testid=logout]")
            await page.wait_for_url(f"{base}/console/login")

            await login(page, base, f"taller-{view.lang}@chacao.example", "console-pass-2026", "/console/certify")
            await screen(page, "30-certify", full_page=True)
            await page.click("[data-testid=register-open]")
            await screen(page, "31-certify-register", full_page=True)
        finally:
            await page.context.close()
