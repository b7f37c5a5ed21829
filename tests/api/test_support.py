"""The support center over real HTTP: checklist runs executed by a real diagnostics worker on
reports sent through a running ingest service, the ticket workflow, the fleet health
overview and the unknown terminals."""

from __future__ import annotations

import asyncio
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg

from diagnostics.service import Worker
from ingest.protocols import gl200
from tests.api.conftest import Api
from tests.diagnostics.harness import provision, reports, send_gl200
from tests.ingest.harness import exchange, running_ingest, settings_for

HEALTHY = "862170010000201"
SILENT = "862170010000202"
NO_FIX = "862170010000203"
NEVER = "862170010000204"
BLOCKED = "862170010000205"
ACCOUNT = "Flota Diagnóstico"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def healthy_and_silent(port: int, healthy: str, silent: str) -> None:
    """``healthy`` reports up to now; ``silent`` (registered for 1 s reports) sends 3 and goes quiet
    for more than 3 of its intervals."""
    await send_gl200(port, reports(healthy, 20, minutes_ago=0.1))
    await send_gl200(port, reports(silent, 3, minutes_ago=0, step_s=1))
    await asyncio.sleep(3.5)


async def follow(c: httpx.AsyncClient, run_id: int, seconds: float = 20.0) -> tuple[dict[str, Any], list[list[str]]]:
    """Polls a run until it is done; returns it and the step names seen at each poll."""
    seen: list[list[str]] = []
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        run = (await c.get(f"/api/v1/support/diagnostics/{run_id}")).json()
        names = [s["name"] for s in run["steps"]]
        if not seen or seen[-1] != names:
            seen.append(names)
        if run["status"] in ("done", "failed") or asyncio.get_running_loop().time() > deadline:
            return run, seen
        await asyncio.sleep(0.05)


async def test_a_checklist_run_is_followed_through_the_api_to_its_verdict(api: Api, tmp_path: Path) -> None:
    ids = provision(api.db_url, account=ACCOUNT, devices=[
        {"identifier": HEALTHY, "protocol": "gl200", "plate": "AA001", "msisdn": "584140000201"},
        {"identifier": SILENT, "protocol": "gl200", "plate": "AA002", "msisdn": "584140000202", "interval": 1}])
    support = api.token("support", "Mesa de ayuda")
    settings = settings_for(tmp_path, unreachable_after_s=1)  # a silence of seconds counts as long here
    async with running_ingest(settings, api.db_url) as svc, \
            httpx.AsyncClient(base_url=api.url, headers=auth(support), timeout=30) as c:
        await healthy_and_silent(svc.tcp["gl200"].port, HEALTHY, SILENT)

        queued = {}
        for imei in (HEALTHY, SILENT):
            r = await c.post(f"/api/v1/support/devices/{ids[imei]}/diagnostics")
            assert r.status_code == 202, r.text
            assert (r.json()["status"], r.json()["steps"], r.json()["requested_by"]) == \
                ("queued", [], "Mesa de ayuda <mesa.de.ayuda@support.local>")
            queued[imei] = r.json()["id"]

        worker = Worker(settings, api.db_url)
        await worker.start()
        try:
            await worker.queued()  # claims both runs and runs them, as its loop does every second
            silent, seen = await follow(c, queued[SILENT])
            healthy, _ = await follow(c, queued[HEALTHY])
        finally:
            await worker.close()

    assert (healthy["status"], healthy["verdict"], healthy["ticket"]) == ("done", "healthy", None)
    assert [s["name"] for s in healthy["steps"]] == ["account", "platform", "reporting"]
    assert all(s["status"] == "ok" for s in healthy["steps"])
    assert healthy["steps"][2]["evidence"]["reports_24h"] == 20

    # The silent one: no SMSC configured here, so no SMS test is possible: inconclusive, a call to the customer.
    assert (silent["status"], silent["verdict"]) == ("done", "inconclusive")
    assert [s["name"] for s in silent["steps"]] == ["account", "platform", "reporting", "sms_ping", "action"]
    assert silent["explanation"].startswith("The remote tests could not decide")
    assert silent["steps"][2]["status"] == "fail" and "silent for" in silent["steps"][2]["summary"]
    # Polled while it ran: the steps appear one by one, in the procedure's order.
    final = [s["name"] for s in silent["steps"]]
    assert seen[-1] == final and all(names == final[:len(names)] for names in seen)
    ticket = silent["ticket"]
    assert ticket["type"] == "information" and ticket["state"] == "open" and ticket["number"].startswith("AVL-")

    with api.client(support) as sc:
        runs = sc.get(f"/api/v1/support/devices/{ids[SILENT]}/diagnostics").json()
        assert [r["id"] for r in runs] == [queued[SILENT]]
        # The ticket is found the ways a customer on the phone identifies the vehicle.
        for params in ({"plate": "AA002"}, {"number": ticket["number"]}, {"device": SILENT}, {"device": "0414-0000202"},
                       {"category": "inconclusive", "open_only": True}, {"q": "Llamar al cliente"}):
            assert [t["number"] for t in sc.get("/api/v1/support/tickets", params=params).json()] == [ticket["number"]]
        detail = sc.get(f"/api/v1/support/tickets/{ticket['number']}").json()
        assert detail["activities"][0]["who"] == "diagnostics" and "Sin visita al taller" in detail["activities"][0]["pending"]
        assert sc.get("/api/v1/support/diagnostics/99999").status_code == 404
        assert sc.post("/api/v1/support/devices/99999/diagnostics").status_code == 404
        hits = sc.get("/api/v1/support/devices", params={"q": "AA00"}).json()
        assert [(h["identifier"], h["open_tickets"]) for h in hits] == [(HEALTHY, 0), (SILENT, 1)]


def test_ticket_workflow_from_a_customer_call_to_closing(api: Api) -> None:
    ids = provision(api.db_url, account=ACCOUNT, devices=[{"identifier": HEALTHY, "protocol": "gl200", "plate": "AA001"}])
    with psycopg.connect(api.db_url) as conn:
        account_id = conn.execute("SELECT id FROM accounts WHERE name = %s", (ACCOUNT,)).fetchone()[0]  # type: ignore[index]
    # The intake the seeds ask for: who, through which line, the product, quantity, date, fault, resolution asked.
    call = {"type": "technical", "category": "antenna_damaged", "title": "Van antenna broken in a crash",
            "account_id": account_id, "device_id": ids[HEALTHY], "intake_channel": "consultant_line",
            "reported_by": "Carla Ruiz (consultora de ventas)", "fault_reason": "la antena GPS se arrancó en un choque",
            "requested_resolution": "repair",
            "activity": {"channel": "phone", "reason": "customer reports the GPS antenna was torn off",
                         "supplied": "ticket number", "pending": "appointment at Centro Chacao",
                         "appointment_at": "2026-11-25T09:00:00-04:00", "protocol_applied": "field service intake"}}
    with api.client(api.token("support", "Mesa")) as c:
        r = c.post("/api/v1/support/tickets", json=call)
        assert r.status_code == 201, r.text
        t = r.json()
        assert (t["state"], t["type"], t["category"], t["plate"]) == ("open", "technical", "antenna_damaged", "AA001")
        assert t["first_response_at"] is not None and t["sla_due_at"] is not None
        assert (t["intake_channel"], t["reported_by"], t["requested_resolution"], t["quantity"]) == \
            ("consultant_line", "Carla Ruiz (consultora de ventas)", "repair", 1)
        assert t["purchase_date"] == (date.today() - timedelta(days=90)).isoformat()  # the terminal's installation
        assert t["intake_missing"] == ["product_model"] and t["queue"] == "technical"
        # Nobody told the customer anything yet: the 24 h rule runs.
        assert (t["inform_status"], t["customer_informed_at"]) == ("due", None)
        (opening,) = t["activities"]
        assert (opening["who"], opening["channel"], opening["pending"], opening["contact"]) == \
            ("Mesa <mesa@support.local>", "phone", "appointment at Centro Chacao", "Carla Ruiz (consultora de ventas)")
        assert opening["appointment_at"].startswith("2026-11-25T13:00:00")
        # One open ticket per device and category.
        r = c.post("/api/v1/support/tickets", json=call)
        assert r.status_code == 409 and t["number"] in r.json()["message"]
        info = c.post("/api/v1/support/tickets", json={
            "type": "information", "title": "How to export reports for a billing claim", "account_id": account_id,
            "activity": {"channel": "email", "reason": "asks for the export format"}}).json()
        assert (info["category"], info["device_id"], info["intake_channel"], info["queue"]) == \
            ("information", None, "email", "desk")
        assert info["intake_missing"] == ["reported_by", "product_model", "purchase_date", "fault_reason",
                                          "requested_resolution"]

        number = t["number"]
        found = c.get("/api/v1/support/tickets", params={"account_id": account_id}).json()
        assert [x["number"] for x in found] == [info["number"], number]
        assert [x["number"] for x in c.get("/api/v1/support/tickets", params={"q": "torn off"}).json()] == [number]
        assert [x["number"] for x in c.get("/api/v1/support/tickets", params={"type": "information"}).json()] == \
            [info["number"]]

        def move(state: str, **kw: Any) -> httpx.Response:
            return c.post(f"/api/v1/support/tickets/{number}/state", json={"state": state, **kw})

        dropped = move("at_installation_center", note="vehicle dropped off").json()
        assert dropped["state"] == "at_installation_center" and dropped["brought_in_at"] is not None
        r = c.post(f"/api/v1/support/tickets/{t['id']}/activities", json={
            "channel": "whatsapp", "reason": "center reports antenna replaced", "solution": "new GPS antenna fitted"})
        assert r.status_code == 201 and r.json()["activities"][-1]["solution"] == "new GPS antenna fitted"
        resolved = move("resolved").json()
        assert resolved["state"] == "resolved" and resolved["resolved_at"] is not None
        r = move("open")
        assert r.status_code == 409 and r.json()["error"] == "invalid_transition"
        told = c.post(f"/api/v1/support/tickets/{number}/activities", json={
            "channel": "phone", "contact": "Carla Ruiz", "reason": "call back",
            "customer_message": "La antena fue reemplazada; el caso queda resuelto."}).json()
        assert told["inform_status"] == "informed" and told["activities"][-1]["contact"] == "Carla Ruiz"
        reopened = move("in_progress", note="customer says it still does not report").json()
        assert reopened["resolved_at"] is None
        # Reopened: the customer is to be told again within 24 h.
        assert (reopened["inform_status"], reopened["customer_informed_at"]) == ("due", None)
        move("resolved")
        closed = move("closed").json()
        assert closed["state"] == "closed" and closed["closed_at"] is not None and closed["resolved_at"] is not None
        assert [a["reason"] for a in closed["activities"] if a["reason"].startswith("state:")] == [
            "state: open -> at_installation_center", "state: at_installation_center -> resolved",
            "state: resolved -> in_progress", "state: in_progress -> resolved", "state: resolved -> closed"]
        assert move("in_progress").status_code == 409  # closed is final
        r = c.post(f"/api/v1/support/tickets/{number}/activities", json={"channel": "phone", "reason": "late call"})
        assert r.status_code == 409 and r.json()["error"] == "ticket_closed"
        assert [x["number"] for x in c.get("/api/v1/support/tickets", params={"state": ["closed", "resolved"]}).json()] \
            == [number]
        # The call that opened it was its first response; later changes keep that time.
        waiting = c.post(f"/api/v1/support/tickets/{info['number']}/state", json={"state": "waiting_customer"}).json()
        assert waiting["state"] == "waiting_customer" and waiting["first_response_at"] == info["first_response_at"]
        assert c.get("/api/v1/support/tickets/AVL-1999-000001").status_code == 404
        with psycopg.connect(api.db_url) as conn:
            conn.execute("INSERT INTO devices (identifier, protocol) VALUES ('SPARE1', 'gl200')")
            spare = conn.execute("SELECT id FROM devices WHERE identifier = 'SPARE1'").fetchone()[0]  # type: ignore[index]
        r = c.post(f"/api/v1/support/devices/{spare}/diagnostics")  # a terminal in stock: no account to check
        assert r.status_code == 409 and r.json()["error"] == "no_account"
        r = c.post("/api/v1/support/tickets", json={**call, "device_id": 99999})
        assert r.status_code == 422 and r.json()["message"].startswith("device_id:")
        r = c.post("/api/v1/support/tickets", json={**call, "activity": {**call["activity"], "channel": "fax"}})
        assert r.status_code == 422 and r.json()["message"].startswith("activity.channel:")


async def test_fleet_health_counts_devices_by_status_and_reads_platform_heartbeats(api: Api, tmp_path: Path) -> None:
    ids = provision(api.db_url, account=ACCOUNT, devices=[
        {"identifier": i, "protocol": "gl200", "plate": f"P{n}", "interval": 1 if i == SILENT else 30}
        for n, i in enumerate((HEALTHY, SILENT, NO_FIX, NEVER, BLOCKED))])
    support = api.token("support", "Mesa")
    with api.client(support) as c:
        before = c.get("/api/v1/support/fleet/health").json()
    assert before["platform"]["status"] == "degraded"
    assert before["platform"]["problems"] == ["no ingest process alive (no heartbeat in the last 30 s)"]
    settings = settings_for(tmp_path)
    async with running_ingest(settings, api.db_url) as svc, \
            httpx.AsyncClient(base_url=api.url, headers=auth(support), timeout=30) as c:
        port = svc.tcp["gl200"].port
        await send_gl200(port, reports(HEALTHY, 5, minutes_ago=0.1))
        await send_gl200(port, reports(SILENT, 3, minutes_ago=0, step_s=1))
        await send_gl200(port, reports(NO_FIX, 5, minutes_ago=0.1, valid=False))
        await asyncio.sleep(3.5)  # SILENT goes quiet: more than 3 of its 1 s intervals
        with psycopg.connect(api.db_url) as conn:
            conn.execute("UPDATE devices SET line_status = 'suspended' WHERE id = %s", (ids[BLOCKED],))
            conn.execute("INSERT INTO tickets (number, account_id, device_id, type, category, title)"
                         " VALUES ('AVL-2026-900001', (SELECT account_id FROM devices WHERE id = %s), %s,"
                         " 'field_service', 'gps_fault', 'x')", (ids[NO_FIX], ids[NO_FIX]))
        health = (await c.get("/api/v1/support/fleet/health")).json()
        other = (await c.get("/api/v1/support/fleet/health", params={"account_id": 9999})).json()
    assert health["devices"] == {"online": 1, "gps_not_updated": 1, "offline": 1, "never_reported": 1,
                                 "account_blocked": 1, "total": 5}
    (silent,) = health["silent"]
    assert (silent["identifier"], silent["plate"], silent["account_name"]) == (SILENT, "P1", ACCOUNT)
    assert 3 < silent["silent_for_s"] < 30 and silent["open_ticket"] is None
    assert health["open_tickets"] == {"gps_fault": 1}
    platform = health["platform"]
    assert platform["status"] == "ok" and platform["problems"] == []
    assert [(p["component"], p["alive"]) for p in platform["processes"]] == [("ingest", True)]
    assert platform["newest_report_age_s"] < 60
    assert other["devices"]["total"] == 0 and other["silent"] == [] and other["open_tickets"] == {}


async def test_unknown_terminals_are_listed_newest_first(api: Api, tmp_path: Path) -> None:
    support = api.token("support", "Mesa")
    settings = settings_for(tmp_path)
    async with running_ingest(settings, api.db_url) as svc, \
            httpx.AsyncClient(base_url=api.url, headers=auth(support), timeout=30) as c:
        port = svc.tcp["gl200"].port
        for imei in (SILENT, HEALTHY):
            frame = gl200.encode_position(reports(imei, 1, minutes_ago=0)[0], 1)
            await exchange(port, [frame], [0])  # no ACK comes: the terminal is not registered
            for _ in range(100):
                listed = (await c.get("/api/v1/support/unknown-devices")).json()
                if imei in [u["identifier"] for u in listed]:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.05)  # distinct last_seen
        listed = (await c.get("/api/v1/support/unknown-devices")).json()
        assert [u["identifier"] for u in listed] == [HEALTHY, SILENT]
        assert listed[0]["count"] == 1 and listed[0]["source_address"].startswith("127.0.0.1")
        assert bytes.fromhex(listed[0]["last_frame_hex"]).startswith(b"+RESP:GTFRI")
        assert (await c.get("/api/v1/support/unknown-devices", params={"protocol": "gt06"})).json() == []
        assert (await c.get("/api/v1/support/unknown-devices", params={"limit": 1})).json()[0]["identifier"] == HEALTHY


def test_clients_cannot_reach_the_support_center_and_installers_only_its_unknown_terminals(api: Api) -> None:
    api.account("Flota Uno")
    with api.client(api.token("client", "Despacho", account="Flota Uno")) as c:
        for path in ("/api/v1/support/tickets", "/api/v1/support/fleet/health", "/api/v1/support/unknown-devices",
                     "/api/v1/support/diagnostics/1", "/api/v1/support/devices?q=AB"):
            r = c.get(path)
            assert r.status_code == 403 and r.json()["error"] == "forbidden", path
        assert c.post("/api/v1/support/devices/1/diagnostics").status_code == 403
        assert c.post("/api/v1/support/tickets/1/state", json={"state": "closed"}).status_code == 403
    with psycopg.connect(api.db_url) as conn:
        conn.execute("INSERT INTO installation_centers (name, latitude, longitude) VALUES ('C', 10, -66)")
    with api.client(api.token("installer", "Taller", center="C")) as c:
        assert c.get("/api/v1/support/unknown-devices").status_code == 200
        assert c.get("/api/v1/support/tickets").status_code == 403
    with api.client() as c:
        assert c.get("/api/v1/support/tickets").status_code == 401
