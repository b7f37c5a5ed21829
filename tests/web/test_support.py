"""The support desk: find a device, run the fault checklist and watch its steps fill in to a
verdict (a real diagnostics worker), the ticket it opened, an activity added with its channel."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from playwright.async_api import Page

from diagnostics.service import Worker
from tests.api.conftest import Api
from tests.diagnostics.harness import provision, reports, send_gl200
from tests.ingest.harness import running_ingest, settings_for
from tests.web.conftest import login, needs_chromium, shot

pytestmark = needs_chromium
HEALTHY = "862170010000401"
SILENT = "862170010000402"
PASSWORD = "console-pass-2026"


async def test_the_support_desk_runs_the_checklist_to_a_verdict_and_works_the_ticket(console: Api, page: Page,
                                                                                      tmp_path: Path) -> None:
    ids = provision(console.db_url, account="Flota Diagnóstico", devices=[
        {"identifier": HEALTHY, "protocol": "gl200", "plate": "AA401", "msisdn": "584140000401"},
        {"identifier": SILENT, "protocol": "gl200", "plate": "AA402", "msisdn": "584140000402", "interval": 1}])
    console.user("support", "mesa@support.example", PASSWORD)
    settings = settings_for(tmp_path)
    async with running_ingest(settings, console.db_url) as svc:
        port = svc.tcp["gl200"].port
        await send_gl200(port, reports(HEALTHY, 20, minutes_ago=0.1))
        await send_gl200(port, reports(SILENT, 3, minutes_ago=0, step_s=1))
        worker = Worker(settings, console.db_url)
        await worker.start()

        async def claim() -> None:  # what the worker's loop does every second
            while True:
                await worker.queued()
                await asyncio.sleep(0.3)

        claiming = asyncio.create_task(claim())
        try:
            await asyncio.sleep(3.5)  # the silent one went quiet: more than 3 of its 1 s intervals
            await login(page, console.url, "mesa@support.example", PASSWORD, "/console/support")
            assert await page.inner_text("[data-testid=health-total] b") == "2"
            assert await page.inner_text("[data-testid=health-offline] b") == "1"
            await shot(page, "20-support-health")

            await page.fill("[data-testid=device-q]", "AA40")
            await page.click("[data-testid=device-search-go]")
            await page.wait_for_selector("[data-testid=device-hit] >> nth=1")
            await page.click(f"[data-testid=device-hit][data-device-id='{ids[SILENT]}']")
            await page.wait_for_selector("[data-testid=device-panel]:has-text('AA402')")
            # The steps fill in, in the procedure's order, until the verdict.
            seen: list[list[str]] = []
            await page.click("[data-testid=run-checklist]")
            for _ in range(200):
                names = await page.locator("[data-testid=step]").evaluate_all("els => els.map(e => e.dataset.step)")
                if not seen or seen[-1] != names:
                    seen.append(names)
                if await page.locator("[data-testid=verdict]").count():
                    break
                await asyncio.sleep(0.1)
            verdict = page.locator("[data-testid=verdict]")
            assert await verdict.get_attribute("data-verdict") == "unreachable"
            assert "The terminal neither reports nor answers SMS." in await verdict.inner_text()
            final = ["account", "platform", "reporting", "sms_ping", "action"]
            assert seen[-1] == final and all(names == final[:len(names)] for names in seen)
            statuses = await page.locator("[data-testid=step]").evaluate_all("els => els.map(e => e.dataset.status)")
            assert statuses[:2] == ["ok", "ok"] and statuses[2] == "fail"
            # The evidence is there to read.
            await page.locator("[data-testid=step][data-step=reporting] details summary").click()
            assert "expected_interval_s" in await page.inner_text("[data-testid=step][data-step=reporting]")
            ticket = await page.inner_text("[data-testid=run-ticket] a")
            assert ticket.startswith("AVL-")
            await shot(page, "21-support-checklist-verdict", full_page=True)

            # Work the ticket: an activity with its channel and notes.
            await page.click("[data-testid=run-ticket] a")
            await page.wait_for_selector(f"[data-testid=ticket-number]:has-text('{ticket}')")
            before = await page.locator("[data-testid=activity]").count()
            await page.select_option("[data-testid=activity-channel]", "whatsapp")
            await page.fill("[data-testid=activity-reason]", "customer called back about the van")
            await page.fill("[data-testid=activity-pending]", "bring the van to Centro Chacao tomorrow 9:00")
            await page.fill("[data-testid=activity-notes]", "customer agreed; ticket number given")
            await page.click("[data-testid=activity-save]")
            await page.wait_for_function(f"() => document.querySelectorAll('[data-testid=activity]').length === {before + 1}")
            last = page.locator("[data-testid=activity]").last
            text = await last.inner_text()
            assert "whatsapp" in text and "Centro Chacao tomorrow" in text and "ticket number given" in text
            detail = await page.evaluate(f"async () => (await fetch('/api/v1/support/tickets/{ticket}')).json()")
            assert detail["activities"][-1]["channel"] == "whatsapp"
            await page.locator("[data-testid=ticket-panel]").scroll_into_view_if_needed()
            await shot(page, "22-support-ticket")
            assert page.js_errors == []  # type: ignore[attr-defined]
        finally:
            claiming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await claiming
            await worker.close()
