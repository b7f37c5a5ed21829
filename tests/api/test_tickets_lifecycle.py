"""The ticket lifecycle over real HTTP: the 24 h rule to inform the customer (due, overdue, its
metric from a real diagnostics worker), assignment to an agent or a queue, escalation to field
service with the 7-day deadline told by SMS, the checklist run again before a field-service
ticket resolves (on reports sent through a running ingest service), and what a client sees of
its tickets and of the certified installation centers."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import psycopg
from prometheus_client import REGISTRY

from diagnostics.service import Worker
from tests.api.conftest import Api, serve
from tests.api.test_support import auth, healthy_and_silent
from tests.diagnostics.harness import provision, reports, send_gl200
from tests.diagnostics.test_sms_ping import running_worker
from tests.ingest.harness import running_ingest, settings_for
from tests.simulators.sms_world import sms_world

HEALTHY = "862170010000301"
SILENT = "862170010000302"
ACCOUNT = "Transportes Ávila"
OTHER = "Flota Ajena"
CARACAS = ZoneInfo("America/Caracas")


def account_id(api: Api, name: str = ACCOUNT) -> int:
    with psycopg.connect(api.db_url) as conn:
        row = conn.execute("SELECT id FROM accounts WHERE name = %s", (name,)).fetchone()
    assert row is not None
    return int(row[0])


def user_id(api: Api, token: str) -> int:
    with api.client(token) as c:
        return int(c.get("/api/v1/me").json()["id"])


def open_ticket(c: httpx.Client, account: int, device: int | None, kind: str = "technical",
                **intake: Any) -> dict[str, Any]:
    r = c.post("/api/v1/support/tickets", json={
        "type": kind, "title": "El vehículo no aparece en el mapa", "account_id": account, "device_id": device,
        "activity": {"channel": "phone", "reason": "llamada del cliente al *626", "notes": "nota interna: cliente molesto"},
        **intake})
    assert r.status_code == 201, r.text
    return dict(r.json())


def set_centers(api: Api) -> dict[str, int]:
    """Addresses and opening hours, through the admin API."""
    details = {"Centro Chacao": ("Av. Francisco de Miranda, Chacao, Caracas", "Lu-Vi 8:00-17:00, Sa 8:00-12:00"),
               "Centro Los Ruices": ("Calle Los Ruíces Sur, Caracas", "Lu-Vi 7:30-16:30"),
               "Centro Valencia": ("Av. Bolívar Norte, Valencia", None)}
    with api.client(api.token("admin", "Raíz")) as c:
        centers = {x["name"]: x["id"] for x in c.get("/api/v1/admin/centers").json()}
        for name, (address, hours) in details.items():
            r = c.patch(f"/api/v1/admin/centers/{centers[name]}", json={"address": address, "hours": hours})
            assert r.status_code == 200 and r.json()["hours"] == hours, r.text
    return centers


async def test_the_24_hour_rule_is_due_then_overdue_until_the_customer_is_told(api: Api, tmp_path: Path) -> None:
    ids = provision(api.db_url, account=ACCOUNT, devices=[{"identifier": HEALTHY, "protocol": "gl200", "plate": "AV001"}])
    support = api.token("support", "Mesa")
    with api.client(support) as c:
        ticket = open_ticket(c, account_id(api), ids[HEALTHY], intake_channel="customer_line")
        number = ticket["number"]
        opened = datetime.fromisoformat(ticket["opened_at"])
        assert ticket["inform_status"] == "due" and ticket["customer_informed_at"] is None
        assert datetime.fromisoformat(ticket["inform_due_at"]) - opened == timedelta(hours=24)

        def listed(inform: str) -> list[str]:
            return [x["number"] for x in c.get("/api/v1/support/tickets", params={"inform": inform}).json()]

        assert (listed("due"), listed("overdue"), listed("informed")) == ([number], [], [])
        with psycopg.connect(api.db_url) as conn:  # a day goes by without anyone calling the customer
            conn.execute("UPDATE tickets SET inform_due_at = now() - interval '1 minute' WHERE number = %s", (number,))
        assert (listed("due"), listed("overdue")) == ([], [number])
        assert c.get(f"/api/v1/support/tickets/{number}").json()["inform_status"] == "overdue"

        worker = Worker(settings_for(tmp_path), api.db_url)
        await worker.start()
        try:
            await worker.ticket_deadlines()  # what its loop does every few seconds
            assert REGISTRY.get_sample_value("avl_tickets_inform_overdue", {"queue": "technical"}) == 1
            assert REGISTRY.get_sample_value("avl_tickets_inform_overdue", {"queue": "field_service"}) == 0

            # An internal note is not telling the customer; what the customer was told is.
            c.post(f"/api/v1/support/tickets/{number}/activities", json={"channel": "web", "reason": "revisé el equipo"})
            assert listed("overdue") == [number]
            r = c.post(f"/api/v1/support/tickets/{number}/activities", json={
                "channel": "phone", "contact": "Luis Gómez (despacho)", "reason": "llamada de seguimiento",
                "customer_message": "Estamos revisando el equipo; le llamamos mañana."})
            assert r.json()["inform_status"] == "informed" and r.json()["customer_informed_at"] is not None
            assert (listed("overdue"), listed("informed")) == ([], [number])
            await worker.ticket_deadlines()
            assert REGISTRY.get_sample_value("avl_tickets_inform_overdue", {"queue": "technical"}) == 0
        finally:
            await worker.close()


def test_tickets_are_assigned_to_an_agent_or_a_queue(api: Api) -> None:
    ids = provision(api.db_url, account=ACCOUNT, devices=[{"identifier": HEALTHY, "protocol": "gl200", "plate": "AV001"}])
    support, ana = api.token("support", "Mesa"), api.token("support", "Ana Torres")
    api.account(OTHER)
    client = api.token("client", "Despacho", account=ACCOUNT)
    ana_id, client_id = user_id(api, ana), user_id(api, client)
    with api.client(support) as c:
        first = open_ticket(c, account_id(api), ids[HEALTHY])
        second = open_ticket(c, account_id(api), None, kind="information")
        assert (first["queue"], first["assignee_id"], second["queue"]) == ("technical", None, "desk")

        r = c.patch(f"/api/v1/support/tickets/{first['number']}", json={"assignee_id": ana_id, "note": "ella lo conoce"})
        assert r.status_code == 200, r.text
        got = r.json()
        assert (got["assignee_id"], got["assignee_name"], got["queue"]) == (ana_id, "Ana Torres", "technical")
        assert got["assigned_at"] is not None
        assert got["activities"][-1]["reason"] == "asignado a Ana Torres (cola technical)"
        moved = c.patch(f"/api/v1/support/tickets/{second['number']}", json={"queue": "carrier"}).json()
        assert (moved["queue"], moved["assignee_id"]) == ("carrier", None)

        def numbers(**params: Any) -> list[str]:
            return [x["number"] for x in c.get("/api/v1/support/tickets", params=params).json()]

        assert numbers(assignee_id=ana_id) == [first["number"]]
        assert numbers(unassigned=True) == [second["number"]]
        assert numbers(queue="carrier") == [second["number"]]
        assert numbers(queue="technical", assignee_id=ana_id) == [first["number"]]

        r = c.patch(f"/api/v1/support/tickets/{second['number']}", json={"assignee_id": client_id})
        assert r.status_code == 422 and r.json()["message"] == \
            f"assignee_id: user {client_id} is not an active support agent"
        unassigned = c.patch(f"/api/v1/support/tickets/{first['number']}", json={"assignee_id": None}).json()
        assert (unassigned["assignee_id"], unassigned["assigned_at"]) == (None, None)
        assert numbers(assignee_id=ana_id) == []
        # The intake completed later, on the same ticket.
        done = c.patch(f"/api/v1/support/tickets/{second['number']}", json={
            "reported_by": "Luis Gómez", "fault_reason": "pregunta por la factura", "requested_resolution": "information",
            "product_model": "GL300", "purchase_date": "2026-10-02"}).json()
        assert done["intake_missing"] == [] and done["activities"][-1]["reason"].startswith("intake: ")
        c.post(f"/api/v1/support/tickets/{second['number']}/state", json={"state": "closed"})
        r = c.patch(f"/api/v1/support/tickets/{second['number']}", json={"assignee_id": ana_id})
        assert r.status_code == 409 and r.json()["error"] == "ticket_closed"


def test_a_technical_case_moved_to_field_service_starts_the_deadline_and_tells_the_customer(api: Api) -> None:
    ids = provision(api.db_url, account=ACCOUNT, devices=[{"identifier": HEALTHY, "protocol": "gl200", "plate": "AV001"}])
    set_centers(api)
    with api.client(api.token("support", "Mesa")) as c:
        ticket = open_ticket(c, account_id(api), ids[HEALTHY], category="data_channel_fault")
        assert (ticket["bring_in_due_at"], ticket["bring_in_status"]) == (None, None)
        r = c.patch(f"/api/v1/support/tickets/{ticket['number']}", json={"type": "field_service",
                                                                        "note": "el APN no se recupera"})
        assert r.status_code == 200, r.text
        moved = r.json()
        assert (moved["type"], moved["queue"], moved["bring_in_status"]) == ("field_service", "field_service", "due")
        due = datetime.fromisoformat(moved["bring_in_due_at"])
        assert timedelta(days=7) - timedelta(minutes=1) < due - datetime.now(UTC) <= timedelta(days=7)
        # It has never reported a position: the centers are proposed by name.
        assert moved["center_name"] == "Centro Chacao" and moved["inform_status"] == "informed"
        sms = moved["activities"][-1]
        assert (sms["channel"], sms["contact"]) == ("sms", "+584120000000")
        text = sms["customer_message"]
        assert text.startswith("Vehiculo AV001: la falla no se resolvio a distancia. Caso " + ticket["number"])
        assert f"hasta el {due.astimezone(CARACAS):%d/%m}" in text and "Centro Chacao, Av. Francisco de Miranda" in text
        with psycopg.connect(api.db_url) as conn:
            queued = conn.execute("SELECT msisdn, body, status, purpose FROM sms_messages").fetchall()
        assert queued == [("+584120000000", text, "queued", "notice")]  # the worker holding the SMSC sends it
        r = c.patch(f"/api/v1/support/tickets/{ticket['number']}", json={"type": "field_service"})
        assert r.status_code == 200  # already field service: nothing more
        info = open_ticket(c, account_id(api), None, kind="information")
        r = c.patch(f"/api/v1/support/tickets/{info['number']}", json={"type": "field_service"})
        assert r.status_code == 409 and r.json()["error"] == "invalid_transition"


async def follow_resolution(c: httpx.AsyncClient, number: str, seconds: float = 30.0) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        ticket: dict[str, Any] = (await c.get(f"/api/v1/support/tickets/{number}")).json()
        done = ticket["resolution"] and ticket["resolution"]["outcome"] != "checking"
        settled = ticket["state"] == "resolved" or any("rechazada" in (a["reason"] or "") for a in ticket["activities"])
        if (done and settled) or asyncio.get_running_loop().time() > deadline:
            return ticket
        await asyncio.sleep(0.1)


async def test_a_field_service_ticket_resolves_only_if_the_checklist_finds_the_vehicle_healthy(
        api: Api, tmp_path: Path) -> None:
    ids = provision(api.db_url, account=ACCOUNT, devices=[
        {"identifier": HEALTHY, "protocol": "gl200", "plate": "AV001"},
        {"identifier": SILENT, "protocol": "gl200", "plate": "AV002", "msisdn": "584140000302", "interval": 1}])
    support = api.token("support", "Mesa")
    async with running_ingest(settings_for(tmp_path), api.db_url) as svc, \
            httpx.AsyncClient(base_url=api.url, headers=auth(support), timeout=30) as c:
        await healthy_and_silent(svc.tcp["gl200"].port, HEALTHY, SILENT)
        numbers = {}
        for imei in (HEALTHY, SILENT):
            with api.client(support) as sc:
                t = open_ticket(sc, account_id(api), ids[imei], kind="field_service")
            assert t["bring_in_status"] == "due"
            numbers[imei] = t["number"]
            await c.post(f"/api/v1/support/tickets/{t['number']}/state", json={"state": "at_installation_center"})

        runs = {}
        for imei, number in numbers.items():
            r = await c.post(f"/api/v1/support/tickets/{number}/state", json={"state": "resolved",
                                                                              "note": "equipo reemplazado"})
            assert r.status_code == 202, r.text
            body = r.json()
            assert body["ticket"]["state"] == "at_installation_center"  # not yet: the checklist decides
            assert body["ticket"]["resolution"]["run_id"] == body["run_id"]
            runs[imei] = body["run_id"]
        fixed = await follow_resolution(c, numbers[HEALTHY])
        still = await follow_resolution(c, numbers[SILENT])

        assert (fixed["state"], fixed["resolution"]["outcome"], fixed["resolution"]["verdict"]) == \
            ("resolved", "resolved", "healthy")
        last = fixed["activities"][-1]
        assert (last["reason"], last["who"], last["notes"]) == \
            ("state: at_installation_center -> resolved", "Mesa <mesa@support.local>", "equipo reemplazado")
        assert f"corrida {runs[HEALTHY]}" in last["supplied"]
        run = (await c.get(f"/api/v1/support/diagnostics/{runs[HEALTHY]}")).json()
        assert run["status"] == "done" and run["requested_by"].endswith(f"(resolving {numbers[HEALTHY]})")
        assert [s["name"] for s in run["steps"]] == ["account", "platform", "reporting"]

        # The silent one is not resolved: the run's verdict is on the ticket.
        assert (still["state"], still["resolution"]["outcome"], still["resolution"]["verdict"]) == \
            ("at_installation_center", "refused", "inconclusive")
        refused = still["activities"][-1]
        assert refused["reason"].startswith(f"resolución rechazada: la corrida {runs[SILENT]} del checklist dio"
                                            " inconclusive")
        assert still["resolved_at"] is None
        # Asked again, the checklist runs again.
        again = await c.post(f"/api/v1/support/tickets/{numbers[SILENT]}/state", json={"state": "resolved"})
        assert again.status_code == 202 and again.json()["run_id"] != runs[SILENT]
        for _ in range(300):
            if (await c.get(f"/api/v1/support/diagnostics/{again.json()['run_id']}")).json()["status"] == "done":
                break
            await asyncio.sleep(0.1)
        assert (await follow_resolution(c, numbers[SILENT]))["resolution"]["run_id"] == again.json()["run_id"]
        # A ticket that is not field service (or has no vehicle) resolves at once.
        with api.client(support) as sc:
            info = open_ticket(sc, account_id(api), None, kind="information")
        r = await c.post(f"/api/v1/support/tickets/{info['number']}/state", json={"state": "resolved"})
        assert r.status_code == 200 and r.json()["state"] == "resolved" and r.json()["resolution"] is None


async def test_after_a_terminal_swap_the_resolution_checks_the_vehicles_new_terminal(api: Api, tmp_path: Path) -> None:
    ids = provision(api.db_url, account=ACCOUNT, devices=[{"identifier": HEALTHY, "protocol": "gl200", "plate": "AV001"}])
    support = api.token("support", "Mesa")
    with api.client(support) as c:
        number = open_ticket(c, account_id(api), ids[HEALTHY], kind="field_service")["number"]
    with api.client(api.token("installer", "Taller Chacao", center="Centro Chacao")) as c:
        r = c.post("/api/v1/installers/replacements", json={"plate": "AV001", "identifier": SILENT, "protocol": "gl200",
                                                            "ticket_number": number})
        assert r.status_code == 201, r.text
        new_device = r.json()["new_device_id"]
    async with running_ingest(settings_for(tmp_path), api.db_url) as svc, \
            httpx.AsyncClient(base_url=api.url, headers=auth(support), timeout=30) as c:
        await send_gl200(svc.tcp["gl200"].port, reports(SILENT, 20, minutes_ago=0.1))  # the new terminal reports
        r = await c.post(f"/api/v1/support/tickets/{number}/state", json={"state": "resolved"})
        assert r.status_code == 202, r.text
        ticket = await follow_resolution(c, number)
        run = (await c.get(f"/api/v1/support/diagnostics/{r.json()['run_id']}")).json()
    assert (run["device_id"], run["identifier"], run["verdict"]) == (new_device, SILENT, "healthy")
    assert ticket["state"] == "resolved" and ticket["brought_in_at"] is not None


def test_a_client_sees_its_tickets_state_and_instructions_never_the_internal_notes(api: Api) -> None:
    ids = provision(api.db_url, account=ACCOUNT, devices=[{"identifier": HEALTHY, "protocol": "gl200", "plate": "AV001"}])
    other = provision(api.db_url, account=OTHER, devices=[{"identifier": SILENT, "protocol": "gl200", "plate": "ZZ999"}])
    set_centers(api)
    client = api.token("client", "Despacho", account=ACCOUNT)
    with api.client(api.token("support", "Mesa")) as c:
        mine = open_ticket(c, account_id(api), ids[HEALTHY], kind="field_service")
        c.post(f"/api/v1/support/tickets/{mine['number']}/activities", json={
            "channel": "phone", "contact": "Luis Gómez", "reason": "razón interna", "pending": "pendiente interno",
            "notes": "nota interna secreta", "customer_message": "Le esperamos en el Centro Chacao."})
        theirs = open_ticket(c, account_id(api, OTHER), other[SILENT])
    with api.client(client) as c:
        listed = c.get("/api/v1/tickets")
        assert listed.status_code == 200
        assert [t["number"] for t in listed.json()] == [mine["number"]]
        r = c.get(f"/api/v1/tickets/{mine['number']}")
        assert r.status_code == 200, r.text
        got = r.json()
        due = datetime.fromisoformat(got["bring_in_due_at"]).astimezone(CARACAS)
        assert (got["state"], got["state_label"], got["plate"], got["bring_in_overdue"]) == \
            ("open", "abierto", "AV001", False)
        assert got["instruction"] == (f"Lleve el vehículo AV001 hasta el {due:%d/%m/%Y} a un centro de instalación"
                                      " certificado: Centro Chacao, Av. Francisco de Miranda, Chacao, Caracas.")
        assert got["center"]["hours"] == "Lu-Vi 8:00-17:00, Sa 8:00-12:00"
        assert [m["text"] for m in got["messages"]] == ["Le esperamos en el Centro Chacao."]
        text = json.dumps(got) + listed.text
        for internal in ("razón interna", "pendiente interno", "nota interna", "llamada del cliente", "Luis Gómez",
                         "no aparece en el mapa"):
            assert internal not in text, internal
        assert c.get(f"/api/v1/tickets/{mine['id']}").json()["number"] == mine["number"]
        # Another account's ticket is exactly like a missing one.
        for ref in (theirs["number"], str(theirs["id"])):
            r = c.get(f"/api/v1/tickets/{ref}")
            assert (r.status_code, r.json()["message"]) == (404, "ticket not found")
        assert c.get("/api/v1/tickets", params={"device_id": other[SILENT]}).json() == []
        # In English when the user chose it.
        assert c.put("/api/v1/auth/language", json={"language": "en"}).status_code == 204
        english = c.get(f"/api/v1/tickets/{mine['number']}").json()
        assert english["instruction"].startswith(f"Please take vehicle AV001 by {due:%d/%m/%Y} to a certified")
        assert english["state_label"] == "open"
    with psycopg.connect(api.db_url) as conn:  # the vehicle is brought in
        conn.execute("UPDATE tickets SET bring_in_due_at = now() - interval '1 hour' WHERE id = %s", (mine["id"],))
    with api.client(client) as c:
        assert c.get(f"/api/v1/tickets/{mine['number']}").json()["bring_in_overdue"] is True


async def test_a_client_finds_the_certified_centers_nearest_its_vehicle(api: Api, tmp_path: Path) -> None:
    ids = provision(api.db_url, account=ACCOUNT, devices=[{"identifier": HEALTHY, "protocol": "gl200", "plate": "AV001"}])
    other = provision(api.db_url, account=OTHER, devices=[{"identifier": SILENT, "protocol": "gl200", "plate": "ZZ999"}])
    set_centers(api)
    client = api.token("client", "Despacho", account=ACCOUNT)
    with api.client(client) as c:
        by_name = c.get("/api/v1/installation-centers").json()
        assert [x["name"] for x in by_name] == ["Centro Chacao", "Centro Los Ruices", "Centro Valencia"]
        assert all(x["distance_km"] is None for x in by_name)
        # From a point in Valencia: Valencia first.
        near = c.get("/api/v1/installation-centers", params={"lat": 10.18, "lon": -68.0}).json()
        assert near[0]["name"] == "Centro Valencia" and near[0]["distance_km"] < 5
        assert near[0]["address"] == "Av. Bolívar Norte, Valencia" and near[0]["hours"] is None
        r = c.get("/api/v1/installation-centers", params={"lat": 10.18})
        assert r.status_code == 422 and r.json()["message"] == "lon: give both lat and lon"
        r = c.get("/api/v1/installation-centers", params={"device_id": other[SILENT]})
        assert (r.status_code, r.json()["message"]) == (404, f"device {other[SILENT]} not found")
    async with running_ingest(settings_for(tmp_path), api.db_url) as svc:
        await send_gl200(svc.tcp["gl200"].port, reports(HEALTHY, 3, minutes_ago=0.1))  # in Altamira, Caracas
    with api.client(client) as c:
        near = c.get("/api/v1/installation-centers", params={"device_id": ids[HEALTHY], "limit": 2}).json()
        assert [x["name"] for x in near] == ["Centro Chacao", "Centro Los Ruices"]
        assert near[0]["distance_km"] < near[1]["distance_km"] < 5
        assert near[0]["hours"] == "Lu-Vi 8:00-17:00, Sa 8:00-12:00"


async def test_the_resolution_check_pings_a_silent_vehicle_through_the_workers_outbox(
        db_url: str, tmp_path: Path) -> None:
    fleets: list[dict[str, Any]] = [{"vehicles": 1, "protocols": ("gt06",), "interval_s": 1.0, "seed": 51}]
    async with sms_world(db_url, tmp_path, fleets, validity_s=3.0, silent_after_intervals=3, unreachable_after_s=2,
                         parked_interval_s=1) as world:
        off = world.spec("gt06")
        with psycopg.connect(db_url) as conn:
            device, account = conn.execute("SELECT id, account_id FROM devices WHERE identifier = %s",
                                           (off.identifier,)).fetchone()  # type: ignore[misc]
        async with running_worker(world.settings, db_url):
            await asyncio.sleep(6.5)  # the worker's heartbeat says its SMSC is bound
            world.fleets[0].terminals[off.identifier].set_fault("powered_off", True)  # the repair did not take
            await asyncio.sleep(3.5)
            with serve(db_url, world.settings.model_copy(update={"sms_wait_s": 10.0})) as url:
                api = Api(url, db_url)
                support = api.token("support", "Mesa")
                with api.client(support) as c:
                    number = open_ticket(c, account, device, kind="field_service", category="unreachable")["number"]
                async with httpx.AsyncClient(base_url=url, headers=auth(support), timeout=30) as ac:
                    r = await ac.post(f"/api/v1/support/tickets/{number}/state", json={"state": "resolved"})
                    assert r.status_code == 202, r.text
                    # Held at once, not for the SMS wait: the run goes on in the background.
                    assert r.json()["ticket"]["resolution"]["outcome"] == "checking"
                    dead = await follow_resolution(ac, number, 60)
                    run = (await ac.get(f"/api/v1/support/diagnostics/{r.json()['run_id']}")).json()

    assert (dead["state"], dead["resolution"]["outcome"], dead["resolution"]["verdict"]) == \
        ("open", "refused", "unreachable"), json.dumps(run["steps"])
    ping = next(s for s in run["steps"] if s["name"] == "sms_ping")
    assert (ping["evidence"]["via"], ping["evidence"]["receipt"]) == ("outbox", "EXPIRED")  # sent by the worker
    refusal = [a["reason"] for a in dead["activities"] if a["reason"].startswith("resolución rechazada")]
    assert len(refusal) == 1 and "dio unreachable" in refusal[0]
    # The same fault again: an activity on this ticket (its category), not a new ticket.
    assert any(a["reason"] == f"checklist run {run['id']}: unreachable again" for a in dead["activities"])
