"""Billing and the account lifecycle over real HTTP: "Solicitud de Posición" billed once when a
position answers it after its SMS was delivered (the diagnostics worker's SMPP bind, the SMSC
simulator and a virtual fleet on the real protocols), the pre-paid balance (402 at zero, suspended
at zero, reconnected by a top-up), the billing system's idempotent events, retirement (what it
cancels, closes and revokes; what it keeps) and the audit trail of every change."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg_pool import AsyncConnectionPool
from websockets.asyncio.client import connect

from avl.admin import DeviceSpec, add_account, add_device
from avl.config import Settings
from diagnostics.outbox import record_inbound
from diagnostics.smpp import Inbound
from tests.api.conftest import Api, serve
from tests.api.test_fleet import A2_IMEI, A_IMEI, at, make_fleet, send
from tests.api.test_fleet import delivered as fleet_delivered
from tests.api.test_live import closes, receive, ws_url
from tests.diagnostics.test_sms_ping import running_worker
from tests.ingest.harness import running_ingest, settings_for
from tests.simulators.sms_world import sms_world

BILLING = "/api/v1/billing"
ADMIN = "/api/v1/admin"


def aclient(api: Api, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=api.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def query(db_url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url) as conn:
        return conn.execute(sql, params).fetchall()


async def until(what: str, predicate: Callable[[], Any], timeout_s: float = 30.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not (value := predicate()):
        assert asyncio.get_running_loop().time() < deadline, f"not in {timeout_s:g} s: {what}"
        await asyncio.sleep(0.2)
    return value


def device_ids(db_url: str) -> dict[str, int]:
    return dict(query(db_url, "SELECT identifier, id FROM devices"))


def changes(db_url: str, account_id: int) -> list[tuple[Any, ...]]:
    return query(db_url, "SELECT from_status, to_status, cause, actor, via FROM account_status_changes"
                         " WHERE account_id = %s ORDER BY id", account_id)


# Locate-now, billed when answered -------------------------------------------------------------


async def test_a_locate_now_is_billed_once_when_a_position_answers_it_after_its_sms_was_delivered(
        db_url: str, tmp_path: Path) -> None:
    with psycopg.connect(db_url) as conn:
        account_id = int(add_account(conn, "SMS fleet 41", billing="pre_paid", balance=2)["id"])
    fleets = [{"vehicles": 3, "protocols": ("teltonika", "gt06", "calamp"), "interval_s": 1.0, "seed": 41}]
    async with sms_world(db_url, tmp_path, fleets, validity_s=3.0) as world:
        with serve(db_url) as url:
            api = Api(url, db_url)
            client = api.token("client", "despacho", account="SMS fleet 41")
            xpert = api.token("billing", "Xpert", email="xpert@billing.example")
            support = api.token("support", "mesa")
            ids = device_ids(db_url)
            v1, v2, v3 = (ids[world.spec(p).identifier] for p in ("teltonika", "gt06", "calamp"))
            world.fleets[0].terminals[world.spec("gt06").identifier].set_fault("sim_suspended", True)
            await asyncio.sleep(1.5)  # every terminal reports each second
            async with aclient(api, client) as c:
                first = await c.post(f"/api/v1/vehicles/{v1}/locate")
                assert first.status_code == 201, first.text
                r1 = first.json()
                assert (r1["status"], r1["billable"], r1["price"], r1["sms_status"]) == ("pending", True, "1.00", "queued")
                r2 = (await c.post(f"/api/v1/vehicles/{v2}/locate")).json()
                # 2.00 less the two pending requests' price: nothing left for a third.
                refused = await c.post(f"/api/v1/vehicles/{v3}/locate")
                assert (refused.status_code, refused.json()["error"]) == (402, "no_balance"), refused.text
                assert "SMS fleet 41" in refused.json()["message"] and "0.00" in refused.json()["message"]
                assert (await c.post(f"/api/v1/vehicles/{v1}/locate")).json()["id"] == r1["id"]  # the same, again
                # Reports keep coming, but the SMS is not delivered yet (no worker): nothing answers it.
                await asyncio.sleep(2.0)
                assert (await c.get(f"/api/v1/locate-requests/{r1['id']}")).json()["status"] == "pending"
            assert query(db_url, "SELECT count(*) FROM billable_events") == [(0,)]

            async with running_worker(world.settings, db_url):
                # Answered and billed as the answer is stored (nobody looks through the API meanwhile).
                await until("request 1 answered", lambda: query(
                    db_url, "SELECT 1 FROM locate_requests WHERE id = %s AND answered_at IS NOT NULL", r1["id"]))
                await until("request 2's SMS undeliverable", lambda: query(
                    db_url, "SELECT 1 FROM sms_messages m JOIN locate_requests r ON r.sms_id = m.id WHERE r.id = %s"
                            " AND m.status = 'UNDELIV'", r2["id"]))
                (delivered_at, answered_at), = query(db_url, "SELECT delivered_at, answered_at FROM locate_requests"
                                                              " WHERE id = %s", r1["id"])
                assert answered_at > delivered_at
                async with aclient(api, client) as c:
                    assert (await c.get(f"/api/v1/locate-requests/{r2['id']}")).json()["status"] == "failed"
                    third = await c.post(f"/api/v1/vehicles/{v3}/locate")  # 1.00 available again
                    assert third.status_code == 201, third.text
                    r3 = third.json()
                await until("request 3 answered", lambda: query(
                    db_url, "SELECT 1 FROM locate_requests WHERE id = %s AND answered_at IS NOT NULL", r3["id"]))
                # The balance reached zero: the account suspended itself.
                await until("suspended", lambda: query(db_url, "SELECT 1 FROM accounts WHERE status = 'suspended'"))

            async with aclient(api, client) as c:
                answered = (await c.get(f"/api/v1/locate-requests/{r1['id']}")).json()
                assert (answered["status"], answered["position"]) == ("answered", None)  # suspended: no live data
                again = await c.post(f"/api/v1/vehicles/{v1}/locate")
                assert (again.status_code, again.json()["error"]) == (402, "no_balance")
                mine = (await c.get(f"{BILLING}/account")).json()
                assert (mine["balance"], mine["status"], mine["status_cause"]) == ("0.00", "suspended", "no_balance")
                ledger = (await c.get(f"{BILLING}/ledger")).json()
                assert [(e["kind"], e["amount"], e["balance_after"], e["reference"], e["actor"]) for e in ledger] == [
                    ("debit", "-1.00", "0.00", f"locate:{r3['id']}", None),
                    ("debit", "-1.00", "1.00", f"locate:{r1['id']}", None),
                    ("adjustment", "2.00", "2.00", None, None)]
            assert query(db_url, "SELECT reference_id, amount FROM billable_events ORDER BY id") == [
                (r1["id"], Decimal("1.00")), (r3["id"], Decimal("1.00"))]  # the undelivered one is not billed
            assert query(db_url, "SELECT DISTINCT line_suspended_by FROM devices") == [("account",)]

            async with aclient(api, xpert) as c:  # the billing system: a top-up, sent twice
                event = {"reference": "XP-TU-000981", "kind": "topup", "account_id": account_id, "amount": "5.00"}
                topped = await c.post(f"{BILLING}/events", json=event)
                assert topped.status_code == 201, topped.text
                assert (topped.json()["outcome"], topped.json()["account"]["status"],
                        topped.json()["account"]["balance"]) == ("applied", "active", "5.00")
                replay = await c.post(f"{BILLING}/events", json=event)
                assert (replay.status_code, replay.json()["replayed"], replay.json()["account"]["balance"]) == \
                    (200, True, "5.00")
                assert (await c.get(f"{BILLING}/ledger", params={"account_id": account_id})).status_code == 403
            assert query(db_url, "SELECT DISTINCT line_status FROM devices") == [("active",)]
            async with aclient(api, client) as c:  # looking again bills nothing again
                assert (await c.get(f"/api/v1/locate-requests/{r1['id']}")).json()["status"] == "answered"
            assert query(db_url, "SELECT count(*) FROM billable_events") == [(2,)]
            async with aclient(api, support) as c:
                trail = (await c.get(f"{BILLING}/status-changes", params={"account_id": account_id})).json()
            assert [(s["from_status"], s["to_status"], s["cause"], s["actor"], s["via"]) for s in trail] == [
                ("suspended", "active", "topup", "billing xpert@billing.example", "billing"),
                ("active", "suspended", "no_balance", "system", "system")]
            assert trail[1]["details"] == {"lines_suspended": 3}


async def test_the_terminals_sms_answer_proves_delivery_and_an_answer_after_the_window_is_not_billed(
        db_url: str, tmp_path: Path) -> None:
    with serve(db_url, Settings(locate_answer_window_s=4)) as url:
        fleet = make_fleet(Api(url, db_url))
        vid = fleet.ids[A_IMEI]
        async with aclient(fleet.api, fleet.a) as c:
            request = (await c.post(f"/api/v1/vehicles/{vid}/locate")).json()
        async with AsyncConnectionPool(db_url, min_size=1, open=False) as pool:  # what the worker's inbox records
            await record_inbound(pool, Inbound(source="+584140000011", destination="2020", text="Data Link: 1",
                                               received_at=datetime.now(UTC)))
        async with running_ingest(settings_for(tmp_path), db_url) as svc:
            await send(svc, A_IMEI, [at(A_IMEI, datetime.now(UTC).replace(microsecond=0), 10.4321, -66.8765)])
            async with aclient(fleet.api, fleet.a) as c:
                answered = (await c.get(f"/api/v1/locate-requests/{request['id']}")).json()
                assert (answered["status"], answered["sms_status"]) == ("answered", "queued")  # no receipt: the answer
                late = (await c.post(f"/api/v1/vehicles/{fleet.ids[A2_IMEI]}/locate")).json()
            fleet_delivered(db_url, late["id"])
            await asyncio.sleep(4.5)  # the answer window passes
            await send(svc, A2_IMEI, [at(A2_IMEI, datetime.now(UTC).replace(microsecond=0), 10.4322, -66.8766)])
            async with aclient(fleet.api, fleet.a) as c:
                expired = (await c.get(f"/api/v1/locate-requests/{late['id']}")).json()
                assert (expired["status"], expired["answered_at"]) == ("expired", None)
    # Post-paid: a billable event for the invoice, no ledger movement.
    assert query(db_url, "SELECT reference_id, amount, ledger_id FROM billable_events") == [
        (request["id"], Decimal("1.00"), None)]
    assert query(db_url, "SELECT count(*) FROM account_ledger") == [(0,)]


# Retirement ------------------------------------------------------------------------------------


async def test_retiring_cancels_what_is_queued_closes_tickets_revokes_access_and_keeps_the_data(
        db_url: str, tmp_path: Path) -> None:
    fleets = [{"vehicles": 2, "protocols": ("teltonika", "gt06"), "interval_s": 1.0, "seed": 42}]
    async with sms_world(db_url, tmp_path, fleets, validity_s=3.0) as world:
        with serve(db_url) as url:
            api = Api(url, db_url)
            (account_id,), = query(db_url, "SELECT id FROM accounts")
            client = api.token("client", "despacho", account="SMS fleet 42")
            email = api.user("client", "jefe@flota42.example", "tranvia-azul-1948", account="SMS fleet 42")
            async with httpx.AsyncClient(base_url=url) as c:
                session = (await c.post("/api/v1/auth/login", json={"email": email, "password": "tranvia-azul-1948"})
                           ).json()["token"]
            support, admin = api.token("support", "mesa"), api.token("admin", "root")
            ids = device_ids(db_url)
            v1, v2 = ids[world.spec("teltonika").identifier], ids[world.spec("gt06").identifier]
            msisdn1 = world.spec("teltonika").msisdn
            await asyncio.sleep(1.5)
            async with aclient(api, client) as c:
                request = (await c.post(f"/api/v1/vehicles/{v1}/locate")).json()  # queued: no worker yet
            async with aclient(api, support) as c:
                ticket = await c.post("/api/v1/support/tickets", json={
                    "type": "technical", "category": "gps_check", "title": "cliente reporta posición congelada",
                    "account_id": account_id, "device_id": v2,
                    "activity": {"channel": "phone", "reason": "llamada del cliente"}})
                assert ticket.status_code == 201, ticket.text
            positions_before = query(db_url, "SELECT count(*) FROM positions")[0][0]
            async with connect(ws_url(api, client)) as stream:
                await receive(stream, "ready")
                async with aclient(api, admin) as c:
                    r = await c.post(f"{ADMIN}/accounts/{account_id}/retire",
                                     json={"kind": "non_payment", "reason": "mora de 90 días"})
                    assert r.status_code == 200, r.text
                    assert (r.json()["status"], r.json()["status_cause"], r.json()["lines_suspended"]) == \
                        ("retired", "non_payment", 2)
                code, error, _ = await closes(stream)  # the live stream closes by itself
                assert (code, error["error"]) == (4403, "account_retired")
            for token in (client, session):  # web access blocked: tokens and sessions alike
                async with aclient(api, token) as c:
                    me = await c.get("/api/v1/me")
                    assert (me.status_code, me.json()["error"]) == (403, "account_retired")
            assert query(db_url, "SELECT DISTINCT revoked_reason FROM api_tokens t JOIN users u ON u.id = t.user_id"
                                 " WHERE u.account_id = %s", account_id) == [("account_retired",)]
            assert query(db_url, "SELECT state, closed_at IS NOT NULL FROM tickets") == [("closed", True)]
            (note,), = query(db_url, "SELECT notes FROM ticket_activities WHERE who = 'admin root@admin.local'")
            assert note == "Caso cerrado: el servicio de la cuenta se retiró (retiro por falta de pago)."
            (details,), = query(db_url, "SELECT details FROM account_status_changes WHERE to_status = 'retired'")
            assert details == {"kind": "non_payment", "lines_suspended": 2, "sms_cancelled": 1, "locates_cancelled": 1,
                               "tickets_closed": [ticket.json()["id"]], "tokens_revoked": 3}

            # The diagnostics worker comes up: the cancelled SMS is not sent, the request never answered or billed.
            async with running_worker(world.settings, db_url):
                await asyncio.sleep(3.0)  # the outbox is polled, every terminal reports meanwhile
            assert not [m for m in world.smsc.store.all() if m.destination_addr.lstrip("+") == msisdn1.lstrip("+")]
            assert query(db_url, "SELECT m.status, r.cancel_reason, r.answered_at FROM locate_requests r"
                                 " JOIN sms_messages m ON m.id = r.sms_id WHERE r.id = %s", request["id"]) == [
                ("cancelled", "account retired", None)]
            assert query(db_url, "SELECT count(*) FROM billable_events") == [(0,)]
            # The data is kept for billing claims: staff still read the vehicle's reports.
            assert query(db_url, "SELECT count(*) FROM positions")[0][0] >= positions_before > 0
            async with aclient(api, support) as c:
                now = datetime.now(UTC)
                export = await c.get(f"/api/v1/vehicles/{v1}/export", params={
                    "format": "csv", "from": (now - timedelta(hours=1)).isoformat(), "to": now.isoformat()})
                assert export.status_code == 200 and export.text.count("\n") > 1


async def test_voluntary_retirement_needs_the_letter_and_the_permanence_unless_forced(api: Api) -> None:
    account_id = api.account("Flota Voluntaria")
    admin = api.token("admin", "root")
    async with aclient(api, admin) as c:
        retire = f"{ADMIN}/accounts/{account_id}/retire"
        assert (await c.post(retire, json={"reason": "x"})).status_code == 422  # the kind is required
        no_letter = await c.post(retire, json={"kind": "voluntary"})
        assert (no_letter.status_code, no_letter.json()["error"]) == (422, "letter_required")
        assert no_letter.json()["message"].startswith("Un retiro voluntario necesita")  # AVL_LANGUAGE by default
        assert (await c.put("/api/v1/auth/language", json={"language": "en"})).status_code == 204
        no_letter = await c.post(retire, json={"kind": "voluntary"}, headers={"Accept-Language": "es"})
        assert no_letter.json()["message"].startswith("A voluntary retirement needs")  # the user's own choice first
        assert (await c.put("/api/v1/auth/language", json={"language": "es"})).status_code == 204
        early = await c.post(retire, json={"kind": "voluntary", "letter_reference": "CR-2026-118"})
        assert (early.status_code, early.json()["error"]) == (409, "minimum_permanence")
        assert "permanencia mínima de 12 meses" in early.json()["message"]
        forced = await c.post(retire, json={"kind": "voluntary", "letter_reference": "CR-2026-118",
                                            "force_reason": "empresa liquidada"})
        assert (forced.status_code, forced.json()["status"], forced.json()["status_cause"]) == \
            (200, "retired", "voluntary")
        again = await c.post(retire, json={"kind": "by_payment"})
        assert (again.status_code, again.json()["error"]) == (409, "account_retired")
        trail = (await c.get(f"{BILLING}/status-changes", params={"account_id": account_id})).json()
    assert [(s["to_status"], s["cause"], s["reference"], s["actor"], s["via"]) for s in trail] == [
        ("retired", "voluntary", "CR-2026-118", "admin root@admin.local", "api")]
    assert trail[0]["details"]["forced"] is True and trail[0]["details"]["force_reason"] == "empresa liquidada"
    assert trail[0]["reason"] == "retiro antes de la permanencia mínima, forzado: empresa liquidada"


# The billing system, post-paid ------------------------------------------------------------------


async def test_the_billing_systems_events_suspend_and_reconnect_a_post_paid_account_once_each(api: Api) -> None:
    account_id = api.account("Pospago Oeste")
    prepaid = api.account("Prepago Oeste", billing="pre_paid", balance=10)
    with psycopg.connect(api.db_url) as conn:
        for imei, plate in (("356307042441062", "PO100AA"), ("356307042441070", "PO200AA")):
            add_device(conn, DeviceSpec(identifier=imei, protocol="teltonika", account="Pospago Oeste", plate=plate))
    ids = device_ids(api.db_url)
    xpert, admin = api.token("billing", "Xpert", email="xpert@billing.example"), api.token("admin", "root")
    client, support = api.token("client", "despacho", account="Pospago Oeste"), api.token("support", "mesa")
    async with aclient(api, admin) as c:  # the carrier suspends one SIM on its own
        r = await c.patch(f"{ADMIN}/devices/{ids['356307042441070']}", json={"line_status": "suspended"})
        assert r.status_code == 200, r.text

    async with aclient(api, xpert) as c:
        async def event(reference: str, kind: str, **extra: Any) -> httpx.Response:
            return await c.post(f"{BILLING}/events", json={"reference": reference, "kind": kind,
                                                            "account_id": extra.pop("account", account_id), **extra})

        overdue = await event("XP-2026-000124", "payment_overdue", note="factura 2026-11 vencida")
        assert overdue.status_code == 201, overdue.text
        assert (overdue.json()["outcome"], overdue.json()["account"]["status"],
                overdue.json()["account"]["status_cause"]) == ("applied", "suspended", "non_payment")
        replay = await event("XP-2026-000124", "payment_overdue", note="factura 2026-11 vencida")
        assert (replay.status_code, replay.json()["replayed"], replay.json()["status_change_id"]) == \
            (200, True, overdue.json()["status_change_id"])
        conflict = await event("XP-2026-000124", "payment_received")
        assert (conflict.status_code, conflict.json()["error"]) == (409, "reference_conflict")
        paid = await event("XP-2026-000125", "payment_received")
        assert (paid.status_code, paid.json()["outcome"], paid.json()["account"]["status"]) == (201, "applied", "active")
        # The SIM suspended on its own before the account was stays suspended.
        assert query(api.db_url, "SELECT identifier, line_status FROM devices ORDER BY id") == [
            ("356307042441062", "active"), ("356307042441070", "suspended")]
        paid_twice = await event("XP-2026-000126", "payment_received")
        assert (paid_twice.status_code, paid_twice.json()["outcome"]) == (201, "unchanged")
        assert not_for_prepaid(await event("XP-2026-000127", "payment_overdue", account=prepaid), "not_post_paid")
        assert not_for_prepaid(await event("XP-2026-000128", "topup", amount="5.00"), "not_pre_paid")
        missing = await event("XP-2026-000129", "payment_overdue", account=987654)
        assert missing.status_code == 404

    async with aclient(api, admin) as c:  # suspended by an administrator: a payment does not reconnect it
        r = await c.post(f"{ADMIN}/accounts/{account_id}/suspend", json={"cause": "administrative",
                                                                           "reason": "uso indebido"})
        assert (r.json()["status"], r.json()["status_cause"]) == ("suspended", "administrative")
    async with aclient(api, xpert) as c:
        r = await c.post(f"{BILLING}/events", json={"reference": "XP-2026-000130", "kind": "payment_received",
                                                    "account_id": account_id}, headers={"Accept-Language": "en"})
        assert (r.json()["outcome"], r.json()["account"]["status"]) == ("unchanged", "suspended")
        assert "decisión administrativa" in r.json()["detail"]  # recorded for everyone: in AVL_LANGUAGE
        by_payment = await c.post(f"{BILLING}/events", json={"reference": "XP-2026-000131", "kind": "retirement",
                                                             "account_id": account_id, "retirement_kind": "by_payment"})
        assert (by_payment.status_code, by_payment.json()["account"]["status"],
                by_payment.json()["account"]["status_cause"]) == (201, "retired", "by_payment")

    async with aclient(api, client) as c:  # the audit trail is staff's; events are the billing system's
        assert (await c.get(f"{BILLING}/status-changes", params={"account_id": account_id})).status_code == 403
        assert (await c.post(f"{BILLING}/events", json={"reference": "X", "kind": "payment_received",
                                                        "account_id": account_id})).status_code == 403
    async with aclient(api, support) as c:
        trail = (await c.get(f"{BILLING}/status-changes", params={"account_id": account_id})).json()
    assert [(s["from_status"], s["to_status"], s["cause"], s["actor"], s["via"], s["reference"]) for s in reversed(trail)] \
        == [("active", "suspended", "non_payment", "billing xpert@billing.example", "billing", "XP-2026-000124"),
            ("suspended", "active", "payment", "billing xpert@billing.example", "billing", "XP-2026-000125"),
            ("active", "suspended", "administrative", "admin root@admin.local", "api", None),
            ("suspended", "retired", "by_payment", "billing xpert@billing.example", "billing", "XP-2026-000131")]
    assert trail[-1]["reason"] == "factura 2026-11 vencida"
    assert [s["details"] for s in reversed(trail)][:2] == [{"lines_suspended": 1}, {"lines_reactivated": 1}]
    assert query(api.db_url, "SELECT reference, outcome FROM billing_system_events ORDER BY reference") == [
        ("XP-2026-000124", "applied"), ("XP-2026-000125", "applied"), ("XP-2026-000126", "unchanged"),
        ("XP-2026-000130", "unchanged"), ("XP-2026-000131", "applied")]


def not_for_prepaid(r: httpx.Response, error: str) -> bool:
    return r.status_code == 409 and r.json()["error"] == error


# The balance, seen by whom --------------------------------------------------------------------


async def test_top_ups_by_an_admin_are_idempotent_and_each_client_sees_only_its_own_balance(api: Api) -> None:
    mine = api.account("Prepago Centro", billing="pre_paid", balance=0)
    other = api.account("Prepago Otro", billing="pre_paid", balance=7)
    admin, support = api.token("admin", "root"), api.token("support", "mesa")
    client = api.token("client", "despacho", account="Prepago Centro")
    async with aclient(api, admin) as c:
        body = {"amount": "30.00", "reference": "TU-000777", "reason": "Tarjeta Única"}
        first = await c.post(f"{ADMIN}/accounts/{mine}/topup", json=body)
        assert (first.status_code, first.json()["account"]["balance"]) == (201, "30.00"), first.text
        again = await c.post(f"{ADMIN}/accounts/{mine}/topup", json=body)
        assert (again.status_code, again.json()["replayed"], again.json()["entry"]["id"]) == \
            (200, True, first.json()["entry"]["id"])
        other_amount = await c.post(f"{ADMIN}/accounts/{mine}/topup", json={**body, "amount": "31.00"})
        assert (other_amount.status_code, other_amount.json()["error"]) == (409, "reference_conflict")
        assert (await c.post(f"{ADMIN}/accounts/{mine}/topup", json={"amount": "-5"})).status_code == 422
        refund = await c.post(f"{ADMIN}/accounts/{mine}/adjustments", json={"amount": "-4.50"})
        assert (refund.status_code, refund.json()["error"]) == (422, "invalid_request")  # a reason is required
        refund = await c.post(f"{ADMIN}/accounts/{mine}/adjustments", json={"amount": "-4.50", "reason": "reintegro"})
        assert (refund.status_code, refund.json()["account"]["balance"]) == (201, "25.50")
    async with aclient(api, client) as c:
        account = (await c.get(f"{BILLING}/account")).json()
        assert (account["id"], account["balance"], account["available"], account["price_locate"]) == \
            (mine, "25.50", "25.50", "1.00")
        ledger = (await c.get(f"{BILLING}/ledger")).json()
        assert [(e["kind"], e["amount"], e["reference"], e["via"], e["actor"]) for e in ledger] == [
            ("adjustment", "-4.50", None, "api", None), ("topup", "30.00", "TU-000777", "api", None)]
        page = (await c.get(f"{BILLING}/ledger", params={"limit": 1, "before": ledger[0]["id"]})).json()
        assert [e["id"] for e in page] == [ledger[1]["id"]]
        # Another account's balance looks missing; so does a missing one.
        for account_id in (other, 987654):
            r = await c.get(f"{BILLING}/ledger", params={"account_id": account_id})
            assert (r.status_code, r.json()["error"]) == (404, "not_found")
        assert (await c.get(f"{BILLING}/account", params={"account_id": mine})).status_code == 200
    async with aclient(api, support) as c:
        seen = (await c.get(f"{BILLING}/ledger", params={"account_id": mine})).json()
        assert seen[1]["actor"] == "admin root@admin.local"
        assert (await c.get(f"{BILLING}/account")).status_code == 422  # staff name the account
        assert (await c.get(f"{BILLING}/account", params={"account_id": other})).json()["balance"] == "7.00"
