"""The fleet map against a small simulated fleet on the real wire protocols through a running
ingest service, as a fleet client uses it, in Spanish on a desktop and in English on a phone:
the vehicles drawn (crowded ones clustered, no label over another), moving live, statuses that
age in the browser, a vehicle's details without scrolling, its history with the slider reset on
the next vehicle, the street-zoom note, a polygon zone drawn and then edited on the map, the
account's tickets and the certified centers, and locate-now with its price and its outcome."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from playwright.async_api import Page

from avl.admin import DeviceSpec, add_account, add_center, add_device
from avl.records import Position
from simulators.fleet import Fleet, FleetConfig
from tests.api.conftest import Api
from tests.diagnostics.harness import send_gl200
from tests.ingest.harness import running_ingest, settings_for
from tests.web.conftest import PASSWORD, View, login, needs_chromium, screen, user

pytestmark = needs_chromium


def imeis(view: View) -> dict[str, str]:
    """The test's own terminals, apart for each view (the module's tests share one database)."""
    base = 862170010000300 + (0 if view.lang == "es" else 50)
    return {name: str(base + i) for i, name in enumerate(("tracked", "twin1", "twin2", "quiet", "empty"), start=1)}


def day_so_far(imei: str) -> list[Position]:
    """A drive east along the valley, a 6-minute stop with the ignition off, a drive north: the last an instant ago."""
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=2)
    legs = [(15, 0.0, 0.0012, 38.0, True), (12, 0.0, 0.0, 0.0, False), (10, 0.0010, 0.0, 30.0, True)]
    n = sum(leg[0] for leg in legs)
    lat, lon, out, i = 10.4880, -66.9000, [], 0
    for count, dlat, dlon, speed, ignition in legs:
        for _ in range(count):
            out.append(Position(device=imei, fix_time=end - timedelta(seconds=30 * (n - 1 - i)), valid=True,
                                latitude=lat, longitude=lon, speed_kmh=speed, course=90.0, altitude_m=900.0,
                                satellites=9, ignition=ignition, power_mv=12700))
            lat, lon, i = lat + dlat, lon + dlon, i + 1
    return out


def here(imei: str, lat: float, lon: float, *, count: int = 2, step_s: int = 1) -> list[Position]:
    end = datetime.now(UTC).replace(microsecond=0)
    return [Position(device=imei, fix_time=end - timedelta(seconds=step_s * (count - 1 - i)), valid=True, latitude=lat,
                     longitude=lon, speed_kmh=39.39204, course=0.0, altitude_m=900.0, satellites=8, ignition=True,
                     power_mv=12456) for i in range(count)]


LABELS_APART = """() => {
    const shown = (sel) => [...document.querySelectorAll(sel)].filter(e => getComputedStyle(e).visibility !== 'hidden'
        && e.getBoundingClientRect().width > 0).map(e => e.getBoundingClientRect());
    const plates = shown('.vehicle-marker .plate'), places = shown('.place-label');
    const hit = (a, b) => a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;
    let n = 0;
    plates.forEach((a, i) => { plates.slice(i + 1).forEach(b => { if (hit(a, b)) n++; }); places.forEach(b => { if (hit(a, b)) n++; }); });
    return [plates.length, n];
}"""
ON_MAP = """() => document.querySelectorAll('[data-testid=vehicle-marker]').length
    + [...document.querySelectorAll('[data-testid=vehicle-cluster]')].reduce((n, e) => n + Number(e.dataset.count), 0)"""


async def settles(page: Page, expression: str, expected: Any, timeout_s: float = 20.0) -> None:
    """Waits for the page's ``expression`` to give ``expected``; else fails with what it gave."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (value := await page.evaluate(expression)) != expected:
        assert asyncio.get_running_loop().time() < deadline, f"{expression}: {value!r}, not {expected!r}"
        await asyncio.sleep(0.2)


async def items(page: Page, attr: str) -> dict[str, Any]:
    found: dict[str, Any] = dict(await page.locator("[data-testid=vehicle-item]").evaluate_all(
        f"els => els.map(e => [e.dataset.deviceId, e.dataset.{attr}])"))
    return found


async def test_a_fleet_client_follows_the_fleet_draws_a_zone_and_locates_a_vehicle(
        console: Api, flow_page: Page, tmp_path: Path) -> None:
    page, view = flow_page, flow_page.view  # type: ignore[attr-defined]
    es = view.lang == "es"
    account = f"Flota Caracas {view.tag}"
    ids = imeis(view)
    with psycopg.connect(console.db_url) as conn:
        account_id = add_account(conn, account, billing="pre_paid", balance=1.5, contact_msisdn="584120000301")["id"]
        if not conn.execute("SELECT 1 FROM installation_centers WHERE name = 'Centro Chacao'").fetchone():
            add_center(conn, "Centro Chacao", 10.4961, -66.8530, address="Av. Francisco de Miranda, Chacao")
        device = {}
        for name, plate, interval in (("tracked", "HIST01", 30), ("twin1", "TWIN01", 30), ("twin2", "TWIN02", 30),
                                      ("quiet", "QUIET01", 1), ("empty", "EMPTY01", 30)):
            device[name] = add_device(conn, DeviceSpec(identifier=ids[name], protocol="gl200", account=account,
                                                       plate=f"{plate}{view.lang.upper()}", report_interval_s=interval,
                                                       msisdn=f"58414{ids[name][-7:]}"))["id"]
    email = user(console, "client", f"despacho-{view.tag}@caracas.example", account=account, language=view.lang)
    support = console.token("support", f"mesa-{view.tag}")
    with console.client(support) as c:  # a case the support center opened, and what the customer was told
        r = c.post("/api/v1/support/tickets", json={
            "type": "technical", "title": "HIST01: revisar", "account_id": account_id, "device_id": device["tracked"],
            "activity": {"channel": "phone", "reason": "llamada", "customer_message": "Revisamos su equipo a distancia."}})
        assert r.status_code == 201, r.text
        ticket = r.json()["number"]

    settings = settings_for(tmp_path)
    async with running_ingest(settings, console.db_url) as svc:
        ports = {n: svc.tcp[n].port if n in svc.tcp else svc.udp[n].port for n in (*svc.tcp, *svc.udp)}
        fleet = Fleet(FleetConfig(vehicles=4, protocols=("teltonika", "gt06", "gl200", "h02"), interval_s=1.0,
                                  server="127.0.0.1", ports=ports, seed=7 if es else 8))
        fleet.provision(console.db_url, account)
        await svc.intake.directory.load()
        gl200 = svc.tcp["gl200"].port
        await send_gl200(gl200, day_so_far(ids["tracked"]))
        # Two vans ten metres apart: their plates would cover each other.
        await send_gl200(gl200, here(ids["twin1"], 10.4961, -66.8530))
        await send_gl200(gl200, here(ids["twin2"], 10.4962, -66.8529))
        await fleet.start()
        try:
            await asyncio.sleep(2.5)  # every simulated vehicle has reported
            base = console.url
            fetched: list[float] = []
            page.on("request", lambda rq: fetched.append(asyncio.get_running_loop().time())
                    if rq.url.endswith("/api/v1/vehicles") else None)
            await login(page, base, email, PASSWORD, "/console/map")
            await page.wait_for_selector("[data-testid=live-state][data-state=live]")

            # Every vehicle of the account is listed; every one with a position is on the map, alone
            # or counted in a cluster, and no plate covers another or a place name.
            assert await page.locator("[data-testid=vehicle-item]").count() == 9
            await settles(page, ON_MAP, 7)  # the quiet one and the empty one have not reported yet
            await page.wait_for_timeout(400)  # the labels are laid out after the clusters settle
            assert (await page.evaluate(LABELS_APART))[1] == 0
            # Speeds rounded, with their unit.
            twin = page.locator(f"[data-testid=vehicle-item][data-device-id='{device['twin1']}']")
            assert "39 km/h" in await twin.inner_text() and "39.39" not in await twin.inner_text()
            await page.wait_for_function(
                "() => document.querySelectorAll('[data-testid=vehicle-item][data-status=online]').length >= 6", timeout=20000)

            # They move live: positions pushed over the WebSocket (no reload).
            before = await items(page, "time")
            await page.wait_for_function(
                """before => [...document.querySelectorAll('[data-testid=vehicle-item]')]
                     .filter(e => e.dataset.time && before[e.dataset.deviceId] !== e.dataset.time).length >= 3""",
                arg=before, timeout=15000)
            await screen(page, "10-map-fleet-live")

            # A vehicle that stops reporting turns offline in the browser, without a push or a reload.
            await send_gl200(gl200, here(ids["quiet"], 10.47, -66.86, count=2))
            quiet = f"[data-testid=vehicle-item][data-device-id='{device['quiet']}']"
            await page.wait_for_selector(f"{quiet}[data-status=online]", timeout=10000)
            loaded = len(fetched)
            await page.wait_for_selector(f"{quiet}[data-status=offline]", timeout=15000)
            assert len(fetched) == loaded, "the status aged by a reload, not in the browser"
            assert ("sin conexión" if es else "offline") in await page.inner_text(quiet)

            # The twins apart at street level: still no label over another; and the note says
            # where street detail comes from (the shipped basemap has none).
            note = page.locator("[data-testid=street-note]")
            assert not await note.is_visible()
            await page.evaluate("() => window.avlMap.map.setView([10.49615, -66.85295], 18, {animate: false})")
            await note.wait_for(state="visible")
            assert "AVL_CONSOLE_TILE_URL" in await note.inner_text()
            await page.wait_for_timeout(400)
            shown, overlaps = await page.evaluate(LABELS_APART)
            assert overlaps == 0 and shown >= 1
            await page.evaluate("() => window.avlMap.map.setView([10.485, -66.88], 12, {animate: false})")

            # A vehicle's details, history and exports, all in view without scrolling (a desktop),
            # or right under the map (a phone).
            await page.click(f"[data-testid=vehicle-item][data-device-id='{device['tracked']}']")
            await page.wait_for_selector("[data-testid=history-info][data-points]")
            details = page.locator("[data-testid=details]")
            box = await details.bounding_box()
            assert box is not None
            if view.size == "desktop":
                assert box["y"] >= 0 and box["y"] + box["height"] <= 900, box
                for part in ("locate-now", "history-load", "history-slider", "export-gpx"):
                    part_box = await page.locator(f"[data-testid={part}]").bounding_box()
                    assert part_box and 0 <= part_box["y"] and part_box["y"] + part_box["height"] <= 900, part
            else:
                map_box = await page.locator("#map").bounding_box()
                assert map_box and box["y"] >= map_box["y"] + map_box["height"] - 1 and box["width"] <= 390
            assert int(await page.get_attribute("[data-testid=history-info]", "data-points") or 0) >= 3
            assert await page.locator("path.history-track").count() == 1
            assert await page.locator("path.stop-marker").count() >= 1
            assert f"HIST01{view.lang.upper()}" in await details.inner_text()
            await page.locator("[data-testid=history-slider]").fill("0")
            assert ("motor encendido" if es else "ignition: on") in await page.inner_text("[data-testid=slider-info]")
            href = await page.get_attribute("[data-testid=export-gpx]", "href")
            assert href and href.startswith(f"/api/v1/vehicles/{device['tracked']}/export?format=gpx")
            gpx = await page.evaluate("async (u) => { const r = await fetch(u); return [r.status, await r.text()]; }", href)
            assert gpx[0] == 200 and "<gpx" in gpx[1]
            await screen(page, "11-map-history", full_page=view.size == "phone")

            # The next vehicle has no history: nothing of the previous one stays on the slider.
            await page.click(f"[data-testid=vehicle-item][data-device-id='{device['empty']}']")
            await page.wait_for_selector("[data-testid=history-info][data-points='0']")
            assert await page.is_disabled("[data-testid=history-slider]")
            assert await page.inner_text("[data-testid=slider-info]") == ""
            assert await page.locator("path.history-track").count() == 0

            # A zone drawn as a polygon on the map, saved, then corrected by dragging a vertex.
            await page.click("[role=tab][data-tab=zones]")
            await page.fill("[data-testid=zone-name]", "Petare (no autorizado)")
            await page.select_option("[data-testid=zone-kind]", "forbidden")
            await page.click("[data-testid=zone-draw]")
            await page.locator("#map").scroll_into_view_if_needed()
            box = await page.locator("#map").bounding_box()
            assert box is not None
            corners = [(0.10, 0.35), (0.40, 0.30), (0.45, 0.70), (0.15, 0.75)]  # clear of the details card
            for fx, fy in [*corners, corners[0]]:  # the first vertex again closes the polygon
                await page.mouse.click(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy)
                await page.wait_for_timeout(100)
            await page.wait_for_function("() => document.querySelector('[data-testid=zone-coords]').value.split('\\n').length === 4")
            await page.click("[data-testid=zone-save]")
            await page.wait_for_selector("[data-testid=zone-item]:has-text('Petare (no autorizado)')")
            assert await page.locator("path.zone-shape").count() == 1
            zones = await page.evaluate("async () => (await fetch('/api/v1/geofences')).json()")
            assert [(z["name"], z["kind"], z["geometry"]["type"]) for z in zones] == \
                [("Petare (no autorizado)", "forbidden", "Polygon")]
            ring = zones[0]["geometry"]["coordinates"][0]
            assert len(ring) == 5 and ring[0] == ring[-1]
            await screen(page, "12-map-zone")

            await page.click("[data-testid=zone-edit]")
            await page.wait_for_function("() => document.querySelectorAll('[data-testid=zone-vertex]').length === 4")
            await page.locator("#map").scroll_into_view_if_needed()
            vertex = await page.locator("[data-testid=zone-vertex] >> nth=1").bounding_box()
            assert vertex is not None
            x, y = vertex["x"] + vertex["width"] / 2, vertex["y"] + vertex["height"] / 2
            await page.mouse.move(x, y)
            await page.mouse.down()
            await page.mouse.move(x + 30, y + 30, steps=8)
            await page.mouse.up()
            await page.wait_for_function(  # the dragged vertex moved in the form too
                """([lon, lat]) => { const [a, b] = document.querySelector('[data-testid=zone-coords]').value.split('\\n')[1]
                    .split(',').map(Number); return Math.abs(a - lat) + Math.abs(b - lon) > 1e-5; }""", arg=ring[1])
            await screen(page, "13-map-zone-edit")
            await page.click("[data-testid=zone-save]")
            await page.wait_for_selector("[data-testid=zone-item]:has-text('Petare (no autorizado)')")
            edited = (await page.evaluate("async () => (await fetch('/api/v1/geofences')).json()"))[0]["geometry"]["coordinates"][0]
            assert len(edited) == 5 and edited[1] != ring[1] and edited[0] == ring[0]

            # The account's tickets, in the customer's words, and the certified centers nearest the vehicle.
            await page.click("[role=tab][data-tab=vehicles]")
            await page.click(f"[data-testid=vehicle-item][data-device-id='{device['tracked']}']")
            await page.click("[role=tab][data-tab=tickets]")
            await page.click(f"[data-testid=client-ticket-item][data-number='{ticket}']")
            await page.wait_for_selector(f"[data-testid=client-ticket-number]:has-text('{ticket}')")
            assert "Revisamos su equipo a distancia." in await page.inner_text("[data-testid=client-ticket]")
            await screen(page, "14-map-tickets")
            await page.click("[role=tab][data-tab=centers]")
            await page.wait_for_selector("[data-testid=center-item]:has-text('Centro Chacao')")
            assert f"HIST01{view.lang.upper()}" in await page.inner_text("[data-testid=centers-from]")
            assert " km" in await page.inner_text("[data-testid=center-item] >> nth=0")
            await screen(page, "15-map-centers")

            # Locate now: its price first; the request is sent and followed to its outcome. The
            # pre-paid balance (1.50) covers two pending requests: a third is refused (402), in the API's words.
            await page.click("[role=tab][data-tab=vehicles]")
            price = page.locator("[data-testid=locate-price]")
            await page.wait_for_function("() => document.querySelector('[data-testid=locate-price]').textContent !== ''")
            assert ("1,00" if es else "1.00") in await price.inner_text()
            await page.click("[data-testid=locate-now]")
            await page.wait_for_selector("[data-testid=locate-outcome][data-status=pending]")
            for twin, outcome in (("twin1", "[data-status=pending]"), ("twin2", "[data-error=no_balance]")):
                await page.click(f"[data-testid=vehicle-item][data-device-id='{device[twin]}']")
                await page.click("[data-testid=locate-now]")
                await page.wait_for_selector(f"[data-testid=locate-outcome]{outcome}")
            assert ("recárguela" if es else "top it up") in await page.inner_text("[data-testid=locate-outcome]")
            page.js_errors.clear()  # type: ignore[attr-defined]  # the browser logs the 402 it was shown
            await screen(page, "16-map-locate-refused")
            # Back on the first vehicle, its request is still followed; the SMS is delivered and the
            # terminal's next report answers it.
            await page.click(f"[data-testid=vehicle-item][data-device-id='{device['tracked']}']")
            await page.wait_for_selector("[data-testid=locate-outcome][data-status=pending]")
            request_id = int(await page.get_attribute("[data-testid=locate-outcome]", "data-request-id") or 0)
            with psycopg.connect(console.db_url) as conn:  # what the worker records on the SMSC's DELIVRD receipt
                conn.execute("UPDATE sms_messages SET status = 'DELIVRD', delivered_at = clock_timestamp()"
                             " WHERE id = (SELECT sms_id FROM locate_requests WHERE id = %s)", (request_id,))
            await send_gl200(gl200, here(ids["tracked"], 10.4905, -66.8800, count=1))
            await page.wait_for_selector("[data-testid=locate-outcome][data-status=answered]", timeout=15000)
            outcome = await page.inner_text("[data-testid=locate-outcome]")
            assert ("10,49050" if es else "10.49050") in outcome and ("1,00" if es else "1.00") in outcome
            await screen(page, "17-map-locate-answered", full_page=view.size == "phone")
        finally:
            await fleet.stop(drain_s=0.5)
