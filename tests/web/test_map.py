"""The fleet map against a small simulated fleet on the real wire protocols through a running
ingest service: the vehicles are drawn and move live, a vehicle's history is drawn with its
stops, a zone is drawn on the map and saved through the API."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from playwright.async_api import Page

from avl.admin import DeviceSpec, add_device
from avl.records import Position
from simulators.fleet import Fleet, FleetConfig
from tests.api.conftest import Api
from tests.diagnostics.harness import send_gl200
from tests.ingest.harness import running_ingest, settings_for
from tests.web.conftest import login, needs_chromium, shot

pytestmark = needs_chromium
ACCOUNT = "Flota Caracas"
PASSWORD = "console-pass-2026"
TRACKED = "862170010000301"


def day_so_far() -> list[Position]:
    """A drive east along the valley, a 6-minute stop with the ignition off, a drive north: the last an instant ago."""
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=2)
    legs = [(15, 0.0, 0.0012, 38.0, True), (12, 0.0, 0.0, 0.0, False), (10, 0.0010, 0.0, 30.0, True)]
    n = sum(leg[0] for leg in legs)
    lat, lon, out, i = 10.4880, -66.9000, [], 0
    for count, dlat, dlon, speed, ignition in legs:
        for _ in range(count):
            out.append(Position(device=TRACKED, fix_time=end - timedelta(seconds=30 * (n - 1 - i)), valid=True,
                                latitude=lat, longitude=lon, speed_kmh=speed, course=90.0, altitude_m=900.0,
                                satellites=9, ignition=ignition, power_mv=12700))
            lat, lon, i = lat + dlat, lon + dlon, i + 1
    return out


async def test_the_map_shows_the_fleet_moving_a_history_and_a_new_zone(console: Api, page: Page, tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    async with running_ingest(settings, console.db_url) as svc:
        ports = {n: svc.tcp[n].port if n in svc.tcp else svc.udp[n].port for n in (*svc.tcp, *svc.udp)}
        fleet = Fleet(FleetConfig(vehicles=4, protocols=("teltonika", "gt06", "gl200", "h02"), interval_s=1.0,
                                  server="127.0.0.1", ports=ports, seed=7))
        fleet.provision(console.db_url, ACCOUNT)
        with psycopg.connect(console.db_url) as conn:
            device_id = add_device(conn, DeviceSpec(identifier=TRACKED, protocol="gl200", account=ACCOUNT, plate="HIST01",
                                                    report_interval_s=30))["id"]
        await svc.intake.directory.load()
        console.user("client", "despacho@caracas.example", PASSWORD, account=ACCOUNT)
        await send_gl200(svc.tcp["gl200"].port, day_so_far())
        await fleet.start()
        try:
            await asyncio.sleep(2.5)  # every simulated vehicle has reported
            base = console.url
            await login(page, base, "despacho@caracas.example", PASSWORD, "/console/map")

            # Every vehicle of the account is on the map, coloured by its status.
            markers = page.locator("[data-testid=vehicle-marker]")
            await page.wait_for_function("() => document.querySelectorAll('[data-testid=vehicle-marker]').length === 5")
            assert await page.locator("[data-testid=vehicle-item]").count() == 5
            await page.wait_for_function(
                "() => document.querySelectorAll('.vehicle-marker.status-online').length >= 4", timeout=20000)
            await page.wait_for_selector("[data-testid=live-state]:has-text('live')")

            # They move live: positions pushed over the WebSocket move the markers (no reload).
            before = await markers.evaluate_all("els => Object.fromEntries(els.map(e => [e.dataset.deviceId, e.dataset.time]))")
            await page.wait_for_function(
                """before => [...document.querySelectorAll('[data-testid=vehicle-marker]')]
                     .filter(e => before[e.dataset.deviceId] !== e.dataset.time).length >= 3""", arg=before, timeout=15000)
            moved = await markers.evaluate_all(
                "els => els.map(e => [e.dataset.deviceId, e.dataset.lat + ',' + e.dataset.lon])")
            await asyncio.sleep(2.0)
            after = dict(await markers.evaluate_all(
                "els => els.map(e => [e.dataset.deviceId, e.dataset.lat + ',' + e.dataset.lon])"))
            assert sum(after[k] != v for k, v in moved) >= 1, "no simulated vehicle changed position"
            await shot(page, "10-map-fleet-live")

            # A vehicle's details and its history: the track, its stop, the time slider, exports.
            await page.click(f"[data-testid=vehicle-item][data-device-id='{device_id}']")
            await page.wait_for_selector("[data-testid=history-info][data-points]")
            assert int(await page.get_attribute("[data-testid=history-info]", "data-points") or 0) >= 3
            assert await page.locator("path.history-track").count() == 1
            assert await page.locator("path.stop-marker").count() >= 1
            assert "HIST01" in await page.inner_text("[data-testid=details]")
            slider = page.locator("[data-testid=history-slider]")
            await slider.fill("0")
            assert "ignition on" in await page.inner_text("[data-testid=slider-info]")
            href = await page.get_attribute("[data-testid=export-gpx]", "href")
            assert href and href.startswith(f"/api/v1/vehicles/{device_id}/export?format=gpx")
            gpx = await page.evaluate("async (u) => { const r = await fetch(u); return [r.status, await r.text()]; }", href)
            assert gpx[0] == 200 and "<gpx" in gpx[1]
            await shot(page, "11-map-history")

            # A zone drawn on the map (two opposite corners) and saved.
            await page.fill("[data-testid=zone-name]", "Petare (no autorizado)")
            await page.select_option("[data-testid=zone-kind]", "forbidden")
            await page.click("[data-testid=zone-draw]")
            box = await page.locator("#map").bounding_box()
            assert box is not None
            await page.mouse.click(box["x"] + box["width"] * 0.80, box["y"] + box["height"] * 0.15)
            await page.mouse.click(box["x"] + box["width"] * 0.93, box["y"] + box["height"] * 0.30)
            assert len((await page.input_value("[data-testid=zone-coords]")).splitlines()) == 4
            await page.click("[data-testid=zone-save]")
            await page.wait_for_selector("[data-testid=zone-item]:has-text('Petare (no autorizado)')")
            assert await page.locator("path.zone-shape").count() == 1
            zones = await page.evaluate("async () => (await fetch('/api/v1/geofences')).json()")
            assert [(z["name"], z["kind"], z["geometry"]["type"]) for z in zones] == \
                [("Petare (no autorizado)", "forbidden", "Polygon")]
            ring = zones[0]["geometry"]["coordinates"][0]
            assert len(ring) == 5 and ring[0] == ring[-1]
            await shot(page, "12-map-zone")
            assert page.js_errors == []  # type: ignore[attr-defined]
        finally:
            await fleet.stop(drain_s=0.5)
