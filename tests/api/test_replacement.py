"""Replacing a vehicle's terminal over real HTTP, with reports sent as real Queclink frames through
a running ingest service: the old terminal goes back under an RMA, the new one is certified on
the same vehicle, and the fleet API shows the vehicle's history across both terminals, to its
own account only.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import psycopg

from avl.admin import set_account_status
from diagnostics.context import load_device
from diagnostics.model import Verdict
from diagnostics.tickets import for_verdict
from tests.api.conftest import Api
from tests.api.test_installers import CHACAO, IMEI, VALENCIA, centers, drive, installation, send, terminal_answers
from tests.ingest.harness import running_ingest, settings_for, track

OLD, NEW = IMEI, "862170010000202"
SIM = "+584140000101"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def open_ticket(db_url: str, identifier: str) -> str:
    """The support desk's diagnosis that sent the vehicle to a center: its number."""
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        device = await load_device(conn, identifier)
        ticket = await for_verdict(conn, device, Verdict.UNREACHABLE, "no report, no SMS answer", None)
    return str(ticket["number"])


async def test_a_replaced_terminal_keeps_the_vehicles_history_and_goes_back_under_rma(api: Api, tmp_path: Path) -> None:
    centers(api)
    account = api.account("Transportes Ávila")
    api.account("Otra Flota")
    chacao, valencia = (api.token("installer", f"Taller {c}", center=f"Centro {c}") for c in ("Chacao", "Valencia"))
    client = api.token("client", "Despacho", account="Transportes Ávila")
    stranger = api.token("client", "Ajeno", account="Otra Flota")
    support = api.token("support", "Mesa")
    today = date.today()
    async with running_ingest(settings_for(tmp_path), api.db_url) as svc, \
            httpx.AsyncClient(base_url=api.url, timeout=30) as http:
        port = svc.tcp["gl200"].port
        r = await http.post("/api/v1/installers/installations", headers=bearer(chacao), json=installation(
            account, installed_at=str(today - timedelta(days=3)), purchased_at=str(today - timedelta(days=5)),
            proof_of_purchase="Factura 55"))
        assert r.status_code == 201, r.text
        old_id = r.json()["device_id"]
        await svc.intake.directory.load()
        # Three hours ago the old terminal drove through Caracas.
        earlier = track(OLD, 20, start=datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3))
        await send(port, earlier)

        # Registering the new terminal as an installation is refused, naming the way to do it.
        r = await http.post("/api/v1/installers/installations", headers=bearer(chacao),
                            json=installation(account, identifier=NEW, msisdn=None))
        assert r.status_code == 409
        assert r.json()["message"] == ("vehicle AB101CD already exists: to put a new terminal on it, replace its"
                                       " terminal (POST /api/v1/installers/replacements)")

        # The diagnosis sent the customer to the nearest center: Valencia, not the one that installed it.
        number = await open_ticket(api.db_url, OLD)
        r = await http.post("/api/v1/installers/replacements", headers=bearer(valencia), json={
            "plate": "AB101CD", "identifier": NEW, "protocol": "gl200", "msisdn": SIM, "ticket_number": number,
            "notes": "no GPS fix, no answer to SMS; housing intact"})
        assert r.status_code == 201, r.text
        swap = r.json()
        new_id = swap["new_device_id"]
        assert (swap["old_device_id"], swap["old_identifier"], swap["new_identifier"], swap["plate"]) == \
            (old_id, OLD, NEW, "AB101CD")
        assert (swap["center_name"], swap["replaced_by"], swap["ticket_number"]) == \
            ("Centro Valencia", "Taller Valencia", number)
        assert (swap["rma_state"], [e["state"] for e in swap["rma_history"]]) == ("returned", ["returned"])
        warranty = swap["inspection"]["warranty"]
        assert (warranty["outcome"], warranty["basis"], warranty["proof_of_purchase"]) == \
            ("dead_on_arrival", "purchase", "Factura 55")
        assert swap["inspection"]["notes"] == "no GPS fix, no answer to SMS; housing intact"
        assert swap["new_terminal_certified"] is False
        with psycopg.connect(api.db_url) as conn:
            rows = conn.execute("SELECT id, account_id, vehicle_id IS NOT NULL, msisdn, line_status FROM devices"
                                " ORDER BY id").fetchall()
            activity = conn.execute("SELECT a.who, a.solution FROM ticket_activities a JOIN tickets t ON t.id ="
                                    " a.ticket_id WHERE t.number = %s ORDER BY a.id DESC LIMIT 1", (number,)).fetchone()
            ticket = conn.execute("SELECT state, brought_in_at IS NOT NULL FROM tickets WHERE number = %s",
                                  (number,)).fetchone()
        # The old terminal left the fleet (its SIM number moved to the new one); the new one took the vehicle.
        assert rows == [(old_id, None, False, None, "suspended"), (new_id, account, True, SIM, "active")]
        assert ticket == ("at_installation_center", True)  # brought in: the 7-day deadline is met
        assert activity == ("Taller Valencia", f"terminal {OLD} replaced by {NEW} (RMA {swap['id']}); the new"
                                               " terminal is to be certified")

        # Until the new terminal reports, the vehicle stands where the old one last saw it.
        fleet = (await http.get("/api/v1/vehicles", headers=bearer(client))).json()
        assert [(v["id"], v["plate"]) for v in fleet] == [(new_id, "AB101CD")]
        assert fleet[0]["position"]["time"] == earlier[-1].fix_time.isoformat().replace("+00:00", "Z")

        # The new terminal reports from the bay; the old one, on the lab's bench, reports too.
        await svc.intake.directory.load()
        bay = drive(VALENCIA, [True, True, True, False, False], device=NEW, shift_s=130)
        await send(port, bay)
        bench = drive(CHACAO, [True], device=OLD, shift_s=60)
        await send(port, bench)

        # The vehicle's history: the old terminal's reports before the swap, the new one's after.
        period = {"from": (datetime.now(UTC) - timedelta(hours=4)).isoformat(),
                  "to": (datetime.now(UTC) + timedelta(hours=1)).isoformat()}
        history = (await http.get(f"/api/v1/vehicles/{new_id}/history", headers=bearer(client), params=period)).json()
        times = [p["time"] for p in history["points"]]
        assert history["total"] == len(times) == len(earlier) + len(bay)
        assert times == sorted(times)
        assert times[0] == earlier[0].fix_time.isoformat().replace("+00:00", "Z")
        assert times[-1] == bay[-1].fix_time.isoformat().replace("+00:00", "Z")
        paged = (await http.get(f"/api/v1/vehicles/{new_id}/history", headers=bearer(client),
                                params={**period, "max_points": 10})).json()
        assert (paged["truncated"], paged["count"], paged["total"]) == (True, 10, len(earlier) + len(bay))
        export = await http.get(f"/api/v1/vehicles/{new_id}/export", headers=bearer(client), params=period)
        assert export.status_code == 200
        assert len(list(csv.DictReader(io.StringIO(export.text)))) == len(earlier) + len(bay)
        trips = (await http.get(f"/api/v1/vehicles/{new_id}/trips", headers=bearer(client), params=period)).json()
        assert trips["trips"] and trips["trips"][0]["start"]["time"] == history["points"][0]["time"]
        vehicle = (await http.get(f"/api/v1/vehicles/{new_id}", headers=bearer(client))).json()
        assert vehicle["position"]["time"] == bay[-1].fix_time.isoformat().replace("+00:00", "Z")

        # Tenancy: the old terminal is not the account's any more; another account sees nothing.
        assert (await http.get(f"/api/v1/vehicles/{old_id}/history", headers=bearer(client))).status_code == 404
        for path in (f"/api/v1/vehicles/{new_id}", f"/api/v1/vehicles/{new_id}/history",
                     f"/api/v1/vehicles/{new_id}/export", f"/api/v1/vehicles/{new_id}/trips",
                     f"/api/v1/vehicles/{old_id}/history"):
            assert (await http.get(path, headers=bearer(stranger))).status_code == 404, path
        assert (await http.get("/api/v1/vehicles", headers=bearer(stranger))).json() == []
        # Staff still see the returned terminal's own reports, the bench's included.
        own = (await http.get(f"/api/v1/vehicles/{old_id}/history", headers=bearer(support), params=period)).json()
        assert own["total"] == len(earlier) + len(bench)

        # The new terminal is certified at Valencia.
        r = await http.post("/api/v1/installers/certifications", headers=bearer(valencia), json={"device_id": new_id})
        assert r.status_code == 201, r.text
        cert = r.json()
        await send(port, drive(VALENCIA, [True, True, True, False, False], device=NEW, shift_s=300))
        terminal_answers(api.db_url, new_id, SIM, "+RESP:GTRTL,060100,862170010000202$")
        live = (await http.get(f"/api/v1/installers/certifications/{cert['id']}", headers=bearer(valencia))).json()
        assert live["all_green"] is True, live["checks"]
        r = await http.post(f"/api/v1/installers/certifications/{cert['id']}/sign-off", headers=bearer(valencia),
                            json={"customer_signed_by": "Ana Pérez", "customer_saw_vehicle": True})
        assert r.status_code == 200 and r.json()["result"] == "pass", r.text
        page = await http.get(f"/api/v1/installers/certifications/{cert['id']}/certificate", headers=bearer(valencia))
        assert f"Este equipo reemplaza al equipo {OLD} en el mismo vehículo" in page.text
        mine = (await http.get("/api/v1/installers/installations", headers=bearer(valencia))).json()
        assert [(i["device_id"], i["stage"], i["replaces_device_id"]) for i in mine] == [(new_id, "certified", old_id)]
        theirs = (await http.get("/api/v1/installers/installations", headers=bearer(chacao))).json()
        assert [(i["device_id"], i["stage"], i["plate"], i["replaced_by_device_id"]) for i in theirs] == \
            [(old_id, "replaced", "AB101CD", new_id)]

        # The returned terminal's RMA: in repair, then replaced by the vendor; nothing after that.
        url = f"/api/v1/installers/replacements/{swap['id']}"
        assert (await http.get(url, headers=bearer(chacao))).status_code == 404  # another center's
        r = await http.post(f"{url}/rma", headers=bearer(valencia), json={"state": "in_repair", "note": "to the vendor"})
        assert r.status_code == 200 and r.json()["rma_state"] == "in_repair", r.text
        r = await http.post(f"{url}/rma", headers=bearer(support), json={"state": "replaced", "note": "vendor credit"})
        assert [(e["state"], e["set_by"], e["note"]) for e in r.json()["rma_history"]][1:] == \
            [("in_repair", "Taller Valencia", "to the vendor"), ("replaced", "Mesa", "vendor credit")]
        assert r.json()["new_terminal_certified"] is True
        r = await http.post(f"{url}/rma", headers=bearer(valencia), json={"state": "in_repair"})
        assert (r.status_code, r.json()["message"]) == \
            (409, f"RMA {swap['id']} is replaced: it may go to nothing (final), not in_repair")
        listed = (await http.get("/api/v1/installers/replacements", headers=bearer(support),
                                 params={"rma_state": "replaced"})).json()
        assert [x["id"] for x in listed] == [swap["id"]]


def test_a_replacement_is_refused_with_a_reason_and_keeps_the_engineering_approval(api: Api) -> None:
    centers(api)
    account = api.account("Transportes Ávila")
    other = api.account("Otra Flota")
    installer = api.token("installer", "Taller Chacao", center="Centro Chacao")
    with api.client(installer) as c, api.client(api.token("support", "Ingeniería")) as engineering:
        truck = c.post("/api/v1/installers/installations", json=installation(
            account, plate="TR24", supply_voltage_v=24, kind="truck", installed_at="2026-01-10")).json()
        engineering.post(f"/api/v1/installers/engineering-reviews/{truck['engineering_review']['id']}/decision",
                         json={"decision": "approved", "note": "converter fitted"})
        c.post("/api/v1/installers/installations", json=installation(
            other, identifier="862170010000299", msisdn="584140000299", plate="OTRO1"))

        def swap(**kw: object) -> httpx.Response:
            body = {"plate": "TR24", "identifier": NEW, "protocol": "gl200", **kw}
            return c.post("/api/v1/installers/replacements", json=body)

        for body, status, message in [
            ({"plate": "NOPE"}, 404, "vehicle NOPE not found"),
            ({"identifier": "862170010000299"}, 409, "device 862170010000299 (gl200) is already registered"),
            ({"msisdn": "584140000299"}, 409, "MSISDN +584140000299 already belongs to another device"),
            ({"protocol": "nmea0183"}, 422, "protocol: unknown protocol 'nmea0183'"),
            ({"fault_reported_on": str(date.today() + timedelta(days=2))}, 422, "fault_reported_on:"),
            ({"ticket_number": "AVL-2026-999999"}, 422, "ticket_number: ticket AVL-2026-999999 is not about vehicle"),
        ]:
            r = swap(**body)
            assert r.status_code == status and r.json()["message"].startswith(message), (body, r.text)
        with psycopg.connect(api.db_url) as conn:
            set_account_status(conn, account, "suspend")
        r = swap()
        assert r.status_code == 409 and r.json()["error"] == "account_suspended"
        with psycopg.connect(api.db_url) as conn:
            set_account_status(conn, account, "reconnect")
            assert conn.execute("SELECT count(*) FROM terminal_replacements").fetchone() == (0,)

        # Damaged in transport: the warranty is void (the customer pays), the swap still happens.
        r = swap(transport_damage=True, notes="connector torn off")
        assert r.status_code == 201, r.text
        assert r.json()["inspection"]["warranty"]["outcome"] == "void"
        assert r.json()["inspection"]["findings"] == ["transport_damage"]
        # The vehicle's engineering approval carries over to the new terminal.
        new = c.get(f"/api/v1/installers/installations/{r.json()['new_device_id']}").json()
        assert (new["stage"], new["engineering_review"]["state"]) == ("certification", "approved")
        assert c.post("/api/v1/installers/certifications", json={"device_id": new["device_id"]}).status_code == 201
        # The returned terminal is no vehicle's any more: no certification of it.
        r = c.post("/api/v1/installers/certifications", json={"device_id": truck["device_id"]})
        assert r.status_code == 409 and r.json()["error"] == "not_installed"
