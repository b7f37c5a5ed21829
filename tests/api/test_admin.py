"""Administration over real HTTP: accounts and their service status, devices, vehicles,
installation centers, users and tokens; only admins get in."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg

from tests.api.conftest import Api

ADMIN = "/api/v1/admin"


def admin(api: Api) -> httpx.Client:
    return api.client(api.token("admin", "Root"))


def center(c: httpx.Client, name: str = "Centro Chacao", **kw: Any) -> dict[str, Any]:
    r = c.post(f"{ADMIN}/centers", json={"name": name, "latitude": 10.4961, "longitude": -66.8530, **kw})
    assert r.status_code == 201, r.text
    return dict(r.json())


def install(c: httpx.Client, account_id: int, center_id: int, identifier: str, plate: str) -> int:
    r = c.post("/api/v1/installers/installations", json={
        "identifier": identifier, "protocol": "gl200", "plate": plate, "supply_voltage_v": 12, "account_id": account_id,
        "installation_center_id": center_id, "msisdn": "58414" + identifier[-7:]})
    assert r.status_code == 201, r.text
    return int(r.json()["device_id"])


def test_an_account_is_suspended_for_non_payment_reconnected_and_retired(api: Api) -> None:
    with admin(api) as c:
        r = c.post(f"{ADMIN}/accounts", json={"name": "Transportes Ávila", "billing": "pre_paid", "balance": "150.50",
                                              "contact_msisdn": "584120000001"})
        assert r.status_code == 201, r.text
        account = r.json()
        assert (account["status"], account["billing"], account["balance"], account["devices"]) == \
            ("active", "pre_paid", "150.50", 0)
        assert c.post(f"{ADMIN}/accounts", json={"name": "transportes ávila"}).status_code == 409
        r = c.post(f"{ADMIN}/accounts", json={"name": "Otra", "billing": "credit"})
        assert r.status_code == 422 and r.json()["message"].startswith("billing:")
        c.post(f"{ADMIN}/accounts", json={"name": "Otra"})
        assert [a["name"] for a in c.get(f"{ADMIN}/accounts").json()] == ["Otra", "Transportes Ávila"]
        assert [a["name"] for a in c.get(f"{ADMIN}/accounts", params={"q": "ávila"}).json()] == ["Transportes Ávila"]

        aid = account["id"]
        cid = center(c)["id"]
        devices = [install(c, aid, cid, f"86217001000030{i}", f"AV{i}") for i in range(2)]
        got = c.get(f"{ADMIN}/accounts/{aid}").json()
        assert (got["name"], got["devices"], got["lines_suspended"], got["contact_msisdn"]) == \
            ("Transportes Ávila", 2, 0, "+584120000001")
        client = api.token("client", "Despacho", account="Transportes Ávila")

        suspended = c.post(f"{ADMIN}/accounts/{aid}/suspend").json()
        assert (suspended["status"], suspended["status_reason"]) == ("suspended", "non-payment")
        with api.client(client) as cc:
            assert cc.get("/api/v1/me").json()["account_status"] == "suspended"
        assert c.post(f"{ADMIN}/accounts/{aid}/reconnect").json()["status"] == "active"

        retired = c.post(f"{ADMIN}/accounts/{aid}/retire", json={"kind": "non_payment", "reason": "contract ended"}).json()
        assert (retired["status"], retired["status_reason"], retired["lines_suspended"]) == \
            ("retired", "contract ended", 2)
        assert {c.get(f"{ADMIN}/devices/{d}").json()["line_status"] for d in devices} == {"suspended"}
        with api.client(client) as cc:
            assert cc.get("/api/v1/me").json()["error"] == "account_retired"  # web access blocked
        r = c.post(f"{ADMIN}/accounts/{aid}/reconnect")
        assert r.status_code == 409 and r.json()["error"] == "account_retired"
        assert c.get(f"{ADMIN}/accounts", params={"status": "retired"}).json()[0]["id"] == aid
        assert c.get(f"{ADMIN}/accounts/999").status_code == 404
        assert c.post(f"{ADMIN}/accounts/999/suspend").status_code == 404


def test_devices_are_listed_and_their_interval_and_line_changed(api: Api) -> None:
    with admin(api) as c:
        aid = c.post(f"{ADMIN}/accounts", json={"name": "Flota"}).json()["id"]
        cid = center(c)["id"]
        d1 = install(c, aid, cid, "862170010000401", "FL1")
        install(c, aid, cid, "862170010000402", "FL2")
        listed = c.get(f"{ADMIN}/devices", params={"account_id": aid}).json()
        assert [d["plate"] for d in listed] == ["FL1", "FL2"]
        assert [d["id"] for d in c.get(f"{ADMIN}/devices", params={"q": "FL1"}).json()] == [d1]
        assert c.get(f"{ADMIN}/devices", params={"protocol": "gt06"}).json() == []
        device = c.get(f"{ADMIN}/devices/{d1}").json()
        assert (device["account_name"], device["center_name"], device["report_interval_s"], device["last_received_at"]) \
            == ("Flota", "Centro Chacao", 60, None)
        changed = c.patch(f"{ADMIN}/devices/{d1}", json={"report_interval_s": 30, "line_status": "suspended"}).json()
        assert (changed["report_interval_s"], changed["line_status"]) == (30, "suspended")
        assert c.patch(f"{ADMIN}/devices/{d1}", json={"line_status": "active"}).json()["report_interval_s"] == 30
        r = c.patch(f"{ADMIN}/devices/{d1}", json={"report_interval_s": 0})
        assert r.status_code == 422 and r.json()["message"].startswith("report_interval_s:")
        assert c.patch(f"{ADMIN}/devices/999", json={"line_status": "active"}).status_code == 404


def test_vehicles_and_installation_centers(api: Api) -> None:
    with admin(api) as c:
        aid = c.post(f"{ADMIN}/accounts", json={"name": "Flota"}).json()["id"]
        r = c.post(f"{ADMIN}/vehicles", json={"account_id": aid, "plate": "TR1", "supply_voltage_v": 24, "kind": "truck"})
        assert r.status_code == 201, r.text
        vehicle = r.json()
        assert (vehicle["account_name"], vehicle["supply_voltage_v"], vehicle["device_id"]) == ("Flota", 24, None)
        assert c.post(f"{ADMIN}/vehicles", json={"account_id": aid, "plate": "TR1"}).status_code == 409
        r = c.post(f"{ADMIN}/vehicles", json={"account_id": aid, "plate": "TR2", "supply_voltage_v": 36})
        assert r.status_code == 422 and r.json()["message"] == "supply_voltage_v: supply voltage must be 12 or 24 V, not 36"
        r = c.post(f"{ADMIN}/vehicles", json={"account_id": 999, "plate": "TR2"})
        assert r.status_code == 422 and r.json()["message"] == "account_id: account 999 not found"
        changed = c.patch(f"{ADMIN}/vehicles/{vehicle['id']}", json={"supply_voltage_v": 12, "description": "tractor"})
        assert (changed.json()["supply_voltage_v"], changed.json()["kind"], changed.json()["description"]) == \
            (12, "truck", "tractor")
        assert c.patch(f"{ADMIN}/vehicles/{vehicle['id']}", json={"kind": None}).status_code == 422
        assert [v["plate"] for v in c.get(f"{ADMIN}/vehicles", params={"account_id": aid}).json()] == ["TR1"]
        assert c.get(f"{ADMIN}/vehicles/{vehicle['id']}").json()["description"] == "tractor"
        assert c.get(f"{ADMIN}/vehicles/999").status_code == 404

        chacao = center(c, address="Av. Francisco de Miranda", phone="+58 212 555 0101")
        assert (chacao["certified"], chacao["installers"], chacao["installations"]) == (True, 0, 0)
        assert c.post(f"{ADMIN}/centers", json={"name": "centro chacao", "latitude": 1, "longitude": 1}).status_code == 409
        r = c.post(f"{ADMIN}/centers", json={"name": "Polo", "latitude": 91, "longitude": 0})
        assert r.status_code == 422 and r.json()["message"].startswith("latitude:")
        center(c, "Centro Valencia")
        assert c.patch(f"{ADMIN}/centers/{chacao['id']}", json={"certified": False}).json()["certified"] is False
        assert [x["name"] for x in c.get(f"{ADMIN}/centers").json()] == ["Centro Chacao", "Centro Valencia"]
        assert c.get(f"{ADMIN}/centers/{chacao['id']}").json()["phone"] == "+58 212 555 0101"
        assert c.get(f"{ADMIN}/centers/999").status_code == 404


def test_users_and_tokens_are_created_revoked_and_deactivated(api: Api) -> None:
    with admin(api) as c:
        aid = c.post(f"{ADMIN}/accounts", json={"name": "Flota"}).json()["id"]
        cid = center(c)["id"]
        r = c.post(f"{ADMIN}/users", json={"name": "Ana", "email": "ana@flota.example", "role": "client",
                                           "account_id": aid, "password": "initial-pass-1"})
        assert r.status_code == 201, r.text
        ana = r.json()
        assert (ana["must_change_password"], ana["has_password"], ana["active"]) == (True, True, True)
        for body, message in [
            ({"name": "X", "email": "x@flota.example", "role": "client"}, "account_id: a client user needs an account"),
            ({"name": "X", "email": "x@flota.example", "role": "installer"},
             "installation_center_id: an installer user needs an installation center"),
            ({"name": "X", "email": "x@flota.example", "role": "support", "account_id": aid},
             "account_id: only client users belong to an account"),
            ({"name": "X", "email": "not-an-email", "role": "support"}, "email:"),
            ({"name": "X", "email": "x@flota.example", "role": "root"}, "role:"),
        ]:
            r = c.post(f"{ADMIN}/users", json=body)
            assert r.status_code == 422 and r.json()["message"].startswith(message), r.text
        assert c.post(f"{ADMIN}/users", json={"name": "A", "email": "ANA@flota.example", "role": "support"}).status_code \
            == 409
        installer = c.post(f"{ADMIN}/users", json={"name": "Taller", "email": "taller@chacao.example", "role": "installer",
                                                   "installation_center_id": cid}).json()
        assert installer["has_password"] is False
        assert [u["email"] for u in c.get(f"{ADMIN}/users", params={"role": "installer"}).json()] == \
            ["taller@chacao.example"]
        assert c.get(f"{ADMIN}/users/{ana['id']}").json()["account_id"] == aid

        r = c.post(f"{ADMIN}/tokens", json={"user_id": ana["id"], "name": "dispatch board", "expires_in_days": 30})
        assert r.status_code == 201, r.text
        created = r.json()
        token = created["token"]
        assert token.startswith("avl_") and created["expires_at"] is not None
        with api.client(token) as ac:
            assert ac.get("/api/v1/me").json()["email"] == "ana@flota.example"
        listed = c.get(f"{ADMIN}/tokens", params={"user_id": ana["id"]}).json()
        assert [t["name"] for t in listed] == ["dispatch board"] and "token" not in listed[0]
        with psycopg.connect(api.db_url) as conn:
            stored = conn.execute("SELECT token_hash FROM api_tokens WHERE id = %s", (created["id"],)).fetchone()
        assert stored is not None and token.encode() not in bytes(stored[0])

        assert c.post(f"{ADMIN}/tokens/{created['id']}/revoke").json()["revoked_at"] is not None
        with api.client(token) as ac:
            assert ac.get("/api/v1/me").status_code == 401
        assert c.get(f"{ADMIN}/tokens", params={"user_id": ana["id"]}).json() == []
        assert len(c.get(f"{ADMIN}/tokens", params={"user_id": ana["id"], "include_revoked": True}).json()) == 1

        second = c.post(f"{ADMIN}/tokens", json={"user_id": ana["id"], "name": "phone"}).json()["token"]
        deactivated = c.post(f"{ADMIN}/users/{ana['id']}/deactivate").json()
        assert deactivated["active"] is False
        with api.client(second) as ac:
            assert ac.get("/api/v1/me").status_code == 401
        r = c.post(f"{ADMIN}/tokens", json={"user_id": ana["id"], "name": "again"})
        assert r.status_code == 409 and r.json()["error"] == "user_inactive"
        me = c.get("/api/v1/me").json()
        assert c.post(f"{ADMIN}/users/{me['id']}/deactivate").status_code == 409
        assert c.post(f"{ADMIN}/tokens/999/revoke").status_code == 404
        assert c.post(f"{ADMIN}/users/999/deactivate").status_code == 404


def test_only_admins_reach_the_admin_routes(api: Api) -> None:
    api.account("Flota")
    with psycopg.connect(api.db_url) as conn:
        conn.execute("INSERT INTO installation_centers (name, latitude, longitude) VALUES ('C', 10, -66)")
    for token in (api.token("client", "Despacho", account="Flota"), api.token("support", "Mesa"),
                  api.token("installer", "Taller", center="C")):
        with api.client(token) as c:
            for method, path in (("GET", "/accounts"), ("POST", "/accounts/1/suspend"), ("GET", "/devices"),
                                 ("GET", "/vehicles"), ("GET", "/centers"), ("GET", "/users"), ("GET", "/tokens"),
                                 ("POST", "/tokens/1/revoke")):
                r = c.request(method, ADMIN + path)
                assert r.status_code == 403 and r.json()["error"] == "forbidden", (method, path)
    with api.client() as c:
        assert c.get(f"{ADMIN}/accounts").status_code == 401
