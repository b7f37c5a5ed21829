"""Certification at the installation center: each live check turns green or red on screen as
the terminal reports through a running ingest service; one passes (the customer signs, the
certificate prints), one fails (the vehicle is not at the center)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from playwright.async_api import Page

from avl.records import Position
from tests.api.conftest import Api
from tests.api.test_installers import CHACAO, VALENCIA, centers, terminal_answers
from tests.diagnostics.harness import send_gl200
from tests.ingest.harness import running_ingest, settings_for
from tests.web.conftest import login, needs_chromium, shot

pytestmark = needs_chromium
PASSWORD = "console-pass-2026"
GOOD, BAD = "862170010000501", "862170010000502"


def drive(imei: str, where: tuple[float, float], ignition: list[bool]) -> list[Position]:
    end = datetime.now(UTC).replace(microsecond=0)
    return [Position(device=imei, fix_time=end - timedelta(seconds=30 * (len(ignition) - 1 - i)), valid=True,
                     latitude=where[0] + i * 0.00005, longitude=where[1], speed_kmh=5.0 if on else 0.0, course=0.0,
                     altitude_m=900.0, hdop=0.9, ignition=on, power_mv=12800) for i, on in enumerate(ignition)]


async def certify(page: Page, device_id: int) -> None:
    await page.click(f"[data-testid=installation][data-device-id='{device_id}']")
    await page.click("[data-testid=start-cert]")
    await page.wait_for_selector("[data-testid=cert-result][data-result=in_progress]")
    assert set(await page.locator("[data-testid=check]").evaluate_all("els => els.map(e => e.dataset.status)")) == {"pending"}


async def test_a_certification_passes_and_one_fails(console: Api, page: Page, tmp_path: Path) -> None:
    centers(console)
    account = console.account("Transportes Ávila")
    installer = console.token("installer", "Taller Chacao", center="Centro Chacao")
    console.user("installer", "taller@chacao.example", PASSWORD, center="Centro Chacao")
    ids = {}
    with console.client(installer) as c:
        for imei, msisdn, plate in ((GOOD, "584140000501", "AB501CD"), (BAD, "584140000502", "AB502CD")):
            r = c.post("/api/v1/installers/installations", json={
                "identifier": imei, "protocol": "gl200", "msisdn": msisdn, "plate": plate, "supply_voltage_v": 12,
                "kind": "van", "account_id": account, "report_interval_s": 30})
            assert r.status_code == 201, r.text
            ids[imei] = r.json()["device_id"]
    async with running_ingest(settings_for(tmp_path), console.db_url) as svc:
        await svc.intake.directory.load()
        port = svc.tcp["gl200"].port
        await login(page, console.url, "taller@chacao.example", PASSWORD, "/console/certify")
        assert await page.locator("[data-testid=installation]").count() == 2

        # Passes: ignition on then off, 12.8 V, at the center, and the terminal answers the SMS.
        await certify(page, ids[GOOD])
        await shot(page, "30-certify-pending")
        await send_gl200(port, drive(GOOD, CHACAO, [True, True, True, False, False]))
        await page.wait_for_selector("[data-testid=check][data-check=at_center][data-status=green]", timeout=10000)
        assert await page.get_attribute("[data-testid=check][data-check=sms_round_trip]", "data-status") == "pending"
        assert await page.is_disabled("[data-testid=sign-off]")
        terminal_answers(console.db_url, ids[GOOD], "584140000501", f"+RESP:GTRTL,060100,{GOOD},,0,0,1,1,0.9$")
        await page.wait_for_selector("[data-testid=check][data-check=sms_round_trip][data-status=green]", timeout=10000)
        assert set(await page.locator("[data-testid=check]").evaluate_all("els => els.map(e => e.dataset.status)")) == {"green"}
        await page.fill("[data-testid=signer]", "Ana Pérez")
        await page.fill("[data-testid=signer-document]", "V-12345678")
        await page.click("[data-testid=sign-off]")
        await page.wait_for_selector("[data-testid=cert-result][data-result=pass]")
        await shot(page, "31-certify-passed", full_page=True)
        href = await page.get_attribute("[data-testid=certificate]", "href")
        assert href
        async with page.context.expect_page() as opened:
            await page.click("[data-testid=certificate]")
        certificate = await opened.value
        await certificate.wait_for_load_state()
        text = await certificate.inner_text("body")
        assert "Installation certificate" in text and "Ana Pérez" in text and "AB501CD" in text
        await shot(certificate, "32-certificate")
        await certificate.close()

        # Fails: the vehicle reports from Valencia, far from the center: that check turns red.
        await certify(page, ids[BAD])
        await send_gl200(port, drive(BAD, VALENCIA, [True, True, True, False, False]))
        await page.wait_for_selector("[data-testid=check][data-check=at_center][data-status=red]", timeout=10000)
        assert await page.get_attribute("[data-testid=check][data-check=ignition]", "data-status") == "green"
        await page.fill("[data-testid=signer]", "Ana Pérez")
        assert not await page.is_disabled("[data-testid=sign-off]")
        await page.click("[data-testid=sign-off]")
        await page.wait_for_selector("[data-testid=cert-result][data-result=fail]")
        assert "at_center" in await page.inner_text("[data-testid=fail-note]")
        await shot(page, "33-certify-failed", full_page=True)
        results = await page.locator("[data-testid=cert-item]").evaluate_all("els => els.map(e => e.dataset.result)")
        assert sorted(results) == ["fail", "pass"]
        assert page.js_errors == []  # type: ignore[attr-defined]
