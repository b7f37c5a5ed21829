"""Installation centers over real HTTP: registering installations (an unknown terminal becomes
a known one whose reports are then acknowledged), and certification with the customer, on
reports sent as real Queclink frames through a running ingest service.

The terminal's SMS answer is inserted as the diagnostics worker's inbox records it (an 'mo'
row, purpose 'reply', device set): the SMPP leg itself is tested with the worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg

from api import certification
from avl.admin import DeviceSpec, add_center, add_device, set_account_status
from avl.config import Settings
from avl.records import Position
from diagnostics.context import load_device
from diagnostics.model import Verdict
from diagnostics.tickets import for_verdict
from ingest.protocols import gl200
from tests.api.conftest import Api, serve
from tests.ingest.harness import exchange, running_ingest, settings_for

CHACAO = (10.4961, -66.8530)
VALENCIA = (10.1620, -68.0077)
IMEI = "862170010000101"


def centers(api: Api) -> dict[str, int]:
    with psycopg.connect(api.db_url) as conn:
        return {name: int(add_center(conn, name, lat, lon, address="Av. Principal")["id"])
                for name, (lat, lon) in (("Centro Chacao", CHACAO), ("Centro Valencia", VALENCIA))}


def installation(account_id: int, **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"identifier": IMEI, "protocol": "gl200", "msisdn": "584140000101", "plate": "AB101CD",
                            "supply_voltage_v": 12, "kind": "van", "account_id": account_id, "report_interval_s": 30}
    body.update(kw)
    return body


def drive(where: tuple[float, float], ignition: list[bool], *, power_mv: int = 12800, step_s: int = 30,
          device: str = IMEI, shift_s: int = 0) -> list[Position]:
    """Reports at the interval ending now (+ ``shift_s``: another batch's fix times differ), a few meters
    apart around ``where``, with the given ignition sequence."""
    end = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=shift_s)
    return [Position(device=device, fix_time=end - timedelta(seconds=step_s * (len(ignition) - 1 - i)), valid=True,
                     latitude=where[0] + i * 0.00005, longitude=where[1], speed_kmh=5.0 if on else 0.0, course=0.0,
                     altitude_m=900.0, hdop=0.9, ignition=on, power_mv=power_mv)
            for i, on in enumerate(ignition)]


async def send(port: int, positions: list[Position]) -> None:
    frames = [gl200.encode_position(p, i + 1) for i, p in enumerate(positions)]
    await exchange(port, frames, [11] * len(frames))  # each one acknowledged (+SACK)


def terminal_answers(db_url: str, device_id: int, msisdn: str, text: str) -> None:
    """What the diagnostics worker's inbox records when the terminal answers the status SMS."""
    with psycopg.connect(db_url) as conn:
        conn.execute("INSERT INTO sms_messages (direction, msisdn, device_id, body, status, purpose)"
                     " VALUES ('mo', %s, %s, %s, 'received', 'reply')", (msisdn, device_id, text))


async def until(predicate: Callable[[], Awaitable[Any]], seconds: float = 10.0) -> Any:
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        value = await predicate()
        if value or asyncio.get_running_loop().time() > deadline:
            return value
        await asyncio.sleep(0.1)


def statuses(cert: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["status"] for c in cert["checks"]}


def test_installer_registers_at_its_own_center_only(api: Api) -> None:
    ids = centers(api)
    account = api.account("Transportes Ávila")
    installer = api.token("installer", "Taller Chacao", center="Centro Chacao")
    other = api.token("installer", "Taller Valencia", center="Centro Valencia")
    with api.client(installer) as c:
        r = c.post("/api/v1/installers/installations", json=installation(account, installed_at="2026-11-20"))
        assert r.status_code == 201, r.text
        reg = r.json()
        assert (reg["center_name"], reg["plate"], reg["supply_voltage_v"], reg["vehicle_kind"]) == \
            ("Centro Chacao", "AB101CD", 12, "van")
        assert (reg["installed_at"], reg["certified"], reg["seen_unknown"]) == ("2026-11-20", False, None)
        r = c.post("/api/v1/installers/installations",
                   json=installation(account, identifier="862170010000102", msisdn=None, plate="XY1",
                                     installation_center_id=ids["Centro Valencia"]))
        assert r.status_code == 403 and r.json()["error"] == "forbidden"
        # add_device's checks, one line naming the field.
        for body, status, message in [
            (installation(account, protocol="nmea0183"), 422, "protocol: unknown protocol 'nmea0183'"),
            (installation(account, supply_voltage_v=36), 422, "supply_voltage_v: supply voltage must be 12 or 24 V, not 36"),
            (installation(999), 422, "account_id: account 999 not found"),
            (installation(account, plate="NEW1", msisdn=None), 409, f"device {IMEI} (gl200) is already registered"),
            (installation(account, identifier="862170010000103", plate="NEW1"), 409,
             "MSISDN +584140000101 already belongs to another device"),
            (installation(account, identifier="862170010000103", msisdn=None), 409, "vehicle AB101CD already exists"),
        ]:
            r = c.post("/api/v1/installers/installations", json=body)
            assert r.status_code == status and r.json()["message"].startswith(message), (body, r.text)
        assert [i["identifier"] for i in c.get("/api/v1/installers/installations").json()] == [IMEI]
    with api.client(other) as c:
        assert c.get("/api/v1/installers/installations").json() == []
        # Another center's terminal looks missing.
        r = c.post("/api/v1/installers/certifications", json={"device_id": reg["device_id"]})
        assert r.status_code == 404
    with api.client(api.token("admin", "root")) as c:
        everything = c.get("/api/v1/installers/installations").json()
        assert [i["identifier"] for i in everything] == [IMEI]
        assert c.get("/api/v1/installers/installations", params={"center_id": ids["Centro Valencia"]}).json() == []
    with api.client(api.token("client", "Despacho", account="Transportes Ávila")) as c:
        assert c.post("/api/v1/installers/installations", json=installation(account)).status_code == 403
        assert c.get("/api/v1/installers/certifications").status_code == 403


PASSWORD = "orchid tractor velvet lantern"


def login(api: Api, email: str, password: str = PASSWORD) -> httpx.Response:
    with api.client() as c:
        return c.post("/api/v1/auth/login", json={"email": email, "password": password})


async def test_an_unknown_terminal_is_registered_certified_live_and_signed_off(api: Api, tmp_path: Path) -> None:
    centers(api)
    account = api.account("Transportes Ávila")
    installer = api.token("installer", "Taller Chacao", center="Centro Chacao")
    client = api.token("client", "Despacho", account="Transportes Ávila")  # an integration's API token
    customer = api.user("client", "ana@avila.test", PASSWORD, account="Transportes Ávila")
    session = login(api, customer).json()["token"]  # the customer's console, open at the bay
    headers = {"Authorization": f"Bearer {installer}"}
    settings = settings_for(tmp_path)
    async with running_ingest(settings, api.db_url) as svc, \
            httpx.AsyncClient(base_url=api.url, headers=headers, timeout=30) as c:
        port = svc.tcp["gl200"].port
        # The terminal reports before anyone registered it: recorded, not acknowledged.
        before = drive(CHACAO, [True])
        await exchange(port, [gl200.encode_position(before[0], 1)], [0])

        async def seen() -> list[dict[str, Any]]:
            return list((await c.get("/api/v1/support/unknown-devices")).json())

        unknown = await until(seen)
        assert [(u["identifier"], u["protocol"]) for u in unknown] == [(IMEI, "gl200")]
        assert unknown[0]["last_frame_text"].startswith("+RESP:GTFRI")

        r = await c.post("/api/v1/installers/installations", json=installation(account))
        assert r.status_code == 201, r.text
        device_id = r.json()["device_id"]
        assert r.json()["seen_unknown"]["count"] == 1
        assert (r.json()["stage"], r.json()["engineering_review"]) == ("certification", None)  # a 12 V van
        assert await seen() == []  # registered: no longer unknown
        await svc.intake.directory.load()  # what ingest's directory refresh does every 30 s

        r = await c.post("/api/v1/installers/certifications", json={"device_id": device_id})
        assert r.status_code == 201, r.text
        cert = r.json()
        assert cert["result"] == "in_progress" and cert["radius_m"] == 500
        assert set(statuses(cert).values()) == {"pending"}
        with psycopg.connect(api.db_url) as conn:
            sms = conn.execute("SELECT direction, msisdn, device_id, body, status, purpose FROM sms_messages").fetchall()
        assert sms == [("mt", "+584140000101", device_id, "AT+GTRTO=gl200,1,,,,,,FFFF$", "queued", "certification")]

        # Signing too early: nothing failed yet, it stays in progress.
        r = await c.post(f"/api/v1/installers/certifications/{cert['id']}/sign-off",
                         json={"customer_signed_by": "Ana Pérez", "customer_saw_vehicle": True})
        assert r.status_code == 409 and r.json()["error"] == "certification_incomplete"
        assert {f["name"] for f in r.json()["failed_checks"]} == set(statuses(cert))

        async def all_green(cert_id: int, shift_s: int) -> dict[str, Any]:
            # Ignition on, then off, a valid fix at the center, 12.8 V on a 12 V van; the SMS answered.
            await send(port, drive(CHACAO, [True, True, True, False, False], shift_s=shift_s))
            terminal_answers(api.db_url, device_id, "584140000101", "+RESP:GTRTL,060100,862170010000101,,0,0,1,1,0.9$")
            return dict((await c.get(f"/api/v1/installers/certifications/{cert_id}")).json())

        await send(port, drive(CHACAO, [True, True, True, False, False]))
        cert = (await c.get(f"/api/v1/installers/certifications/{cert['id']}")).json()
        assert statuses(cert) == {"reporting_interval": "green", "gps_fix": "green", "ignition": "green",
                                  "supply_voltage": "green", "sms_round_trip": "pending", "at_center": "green"}
        checks = {ch["name"]: ch for ch in cert["checks"]}
        assert checks["at_center"]["evidence"]["distance_m"] < 50
        assert checks["supply_voltage"]["evidence"]["measured_mv_median"] == 12800
        assert checks["reporting_interval"]["evidence"]["median_gap_s"] == 30.0
        assert checks["gps_fix"]["evidence"]["not_reported_by_protocol"] == ["satellites"]  # GTFRI has HDOP only
        cert = await all_green(cert["id"], 1)
        assert cert["all_green"] is True, cert["checks"]

        # Every check green, but the customer, at the web page, did not see the vehicle: not certified.
        r = await c.post(f"/api/v1/installers/certifications/{cert['id']}/sign-off",
                         json={"customer_signed_by": "Ana Pérez", "customer_saw_vehicle": False,
                               "customer_check_note": "the map shows no vehicle"})
        assert r.status_code == 409 and r.json()["error"] == "certification_failed", r.text
        assert [f["name"] for f in r.json()["failed_checks"]] == ["customer_web_check"]
        assert "did not see the vehicle on the web platform: the map shows no vehicle" in r.json()["message"]
        failed = (await c.get(f"/api/v1/installers/certifications/{cert['id']}")).json()
        assert (failed["result"], failed["customer_saw_vehicle"], failed["signed_at"]) == ("fail", False, None)
        with api.client(session) as console:
            assert console.get("/api/v1/me").status_code == 200  # nothing signed: the session goes on

        # The installer corrects and starts again; this time the customer sees the vehicle on the map.
        cert = (await c.post("/api/v1/installers/certifications", json={"device_id": device_id})).json()
        cert = await all_green(cert["id"], 2)
        assert cert["all_green"] is True, cert["checks"]
        r = await c.post(f"/api/v1/installers/certifications/{cert['id']}/sign-off",
                         json={"customer_signed_by": "Ana Pérez", "customer_document": "V-12345678",
                               "customer_saw_vehicle": True, "customer_check_note": "AB101CD en el mapa, en Chacao"})
        assert r.status_code == 200, r.text
        signed = r.json()
        assert (signed["result"], signed["customer_signed_by"], signed["customer_saw_vehicle"]) == \
            ("pass", "Ana Pérez", True)
        assert signed["signed_at"] is not None and signed["finished_at"] is not None
        assert signed["customer_checked_at"] is not None and signed["client_sessions_revoked"] == 1

        # The printable certificate: Spanish by default, English by choice, with the customer's own check.
        page = await c.get(f"/api/v1/installers/certifications/{cert['id']}/certificate")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        for text in ("Certificado de instalación", "AB101CD", IMEI, "Centro Chacao", "Ana Pérez", "V-12345678",
                     "Transportes Ávila", "VERDE", "12,8 V en un vehículo de 12 V",
                     "El cliente accedió a la página web y vio el reporte del vehículo en el mapa",
                     "AB101CD en el mapa, en Chacao", "furgoneta"):
            assert text in page.text, text
        assert "GREEN" not in page.text
        english = await c.get(f"/api/v1/installers/certifications/{cert['id']}/certificate", params={"lang": "en"})
        for text in ("Installation certificate", "GREEN", "12.8 V on a 12 V vehicle",
                     "The customer accessed the web platform and saw the vehicle report on the map"):
            assert text in english.text, text
        # AVL_LANGUAGE=en prints it in English for whoever made no choice; a user's own choice wins over it.
        with serve(api.db_url, Settings(language="en")) as english_api:
            r = await c.get(f"{english_api}/api/v1/installers/certifications/{cert['id']}/certificate")
            assert "<h1>Installation certificate</h1>" in r.text
        assert (await c.put("/api/v1/auth/language", json={"language": "en"})).status_code == 204
        page = await c.get(f"/api/v1/installers/certifications/{cert['id']}/certificate")
        assert "<h1>Installation certificate</h1>" in page.text
        listed = (await c.get("/api/v1/installers/certifications", params={"device_id": device_id})).json()
        assert [x["result"] for x in listed] == ["pass", "fail"]
        installed = (await c.get("/api/v1/installers/installations")).json()[0]
        assert (installed["certified"], installed["stage"]) == (True, "certified")
        r = await c.post(f"/api/v1/installers/certifications/{cert['id']}/sign-off",
                         json={"customer_signed_by": "X Y", "customer_saw_vehicle": True})
        assert r.status_code == 409 and r.json()["error"] == "certification_finished"

    # The procedure: the customer changes the access password after signing. The console session
    # used at the bay is over; the next login must set a new password before anything else.
    with api.client(session) as console:
        assert console.get("/api/v1/me").status_code == 401
    again = login(api, customer).json()
    assert again["must_change_password"] is True
    with api.client(again["token"]) as console:
        r = console.get("/api/v1/vehicles")
        assert r.status_code == 403 and r.json()["error"] == "password_change_required"
        r = console.post("/api/v1/auth/password", json={"current_password": PASSWORD,
                                                         "new_password": "quartz meadow pelican harbor"})
        assert r.status_code == 204, r.text
        assert console.get("/api/v1/vehicles").status_code == 200
    # An integration's API token (issued by an admin, not derived from the password) goes on working.
    with api.client(client) as cc:
        assert cc.get("/api/v1/me").json()["must_change_password"] is True
        assert cc.get("/api/v1/vehicles").status_code == 200
    with psycopg.connect(api.db_url) as conn:
        reasons = conn.execute("SELECT t.kind, t.revoked_reason FROM api_tokens t JOIN users u ON u.id = t.user_id"
                               " WHERE u.email = 'ana@avila.test' ORDER BY t.id").fetchall()
    # Ana's own API token is kept; the console session at the bay was ended by the certification.
    assert reasons == [("api", None), ("session", "certification"), ("session", None)]
    with api.client(api.token("installer", "Taller Valencia", center="Centro Valencia")) as other:
        assert other.get(f"/api/v1/installers/certifications/{cert['id']}").status_code == 404


async def test_wrong_voltage_far_from_the_center_fails_listing_the_failed_checks(api: Api, tmp_path: Path) -> None:
    centers(api)
    account = api.account("Transportes Ávila")
    installer = api.token("installer", "Taller Chacao", center="Centro Chacao")
    api.token("client", "Despacho", account="Transportes Ávila")
    settings = settings_for(tmp_path)
    async with running_ingest(settings, api.db_url) as svc, \
            httpx.AsyncClient(base_url=api.url, headers={"Authorization": f"Bearer {installer}"}, timeout=30) as c:
        r = await c.post("/api/v1/installers/installations", json=installation(account, kind="truck"))
        device_id = r.json()["device_id"]
        await svc.intake.directory.load()
        first = (await c.post("/api/v1/installers/certifications", json={"device_id": device_id})).json()
        # A new session supersedes one still in progress.
        cert = (await c.post("/api/v1/installers/certifications", json={"device_id": device_id})).json()
        old = (await c.get(f"/api/v1/installers/certifications/{first['id']}")).json()
        assert old["result"] == "fail" and old["outcome_note"] == f"superseded by certification {cert['id']}"

        # A 24 V truck declared as 12 V, reporting from Valencia, 150 km from Chacao.
        await send(svc.tcp["gl200"].port, drive(VALENCIA, [True, True, False, False], power_mv=27600))
        terminal_answers(api.db_url, device_id, "584140000101", "+RESP:GTRTL,060100,862170010000101$")
        live = (await c.get(f"/api/v1/installers/certifications/{cert['id']}")).json()
        assert statuses(live) == {"reporting_interval": "green", "gps_fix": "green", "ignition": "green",
                                  "supply_voltage": "red", "sms_round_trip": "green", "at_center": "red"}

        r = await c.post(f"/api/v1/installers/certifications/{cert['id']}/sign-off",
                         json={"customer_signed_by": "Ana Pérez", "customer_saw_vehicle": True})
        assert r.status_code == 409
        error = r.json()
        assert error["error"] == "certification_failed"
        assert [f["name"] for f in error["failed_checks"]] == ["supply_voltage", "at_center"]
        assert "27.6 V does not match the 12 V declaration" in error["message"]
        assert "150." in error["message"] or "km from Centro Chacao" in error["message"]

        failed = (await c.get(f"/api/v1/installers/certifications/{cert['id']}")).json()
        assert failed["result"] == "fail" and failed["customer_signed_by"] is None
        assert statuses(failed)["supply_voltage"] == "red"  # the checks as they were at the end
        r = await c.get(f"/api/v1/installers/certifications/{cert['id']}/certificate")
        assert r.status_code == 409 and r.json()["error"] == "not_passed"
        # The installer corrects the installation and starts again.
        retry = await c.post("/api/v1/installers/certifications", json={"device_id": device_id})
        assert retry.status_code == 201 and retry.json()["result"] == "in_progress"
    with psycopg.connect(api.db_url) as conn:
        flagged = conn.execute("SELECT role, must_change_password FROM users WHERE role = 'client'").fetchall()
    assert flagged == [("client", False)]  # no password change asked: nothing was signed


def test_certification_needs_an_installed_terminal(api: Api) -> None:
    ids = centers(api)
    api.account("Flota")
    with psycopg.connect(api.db_url) as conn:
        conn.execute("INSERT INTO devices (identifier, protocol, installation_center_id) VALUES ('X1', 'gl200', %s)",
                     (ids["Centro Chacao"],))
        device_id = conn.execute("SELECT id FROM devices WHERE identifier = 'X1'").fetchone()[0]  # type: ignore[index]
    with api.client(api.token("installer", "Taller", center="Centro Chacao")) as c:
        r = c.post("/api/v1/installers/certifications", json={"device_id": device_id})
        assert r.status_code == 409 and r.json()["error"] == "not_installed"
        assert c.post("/api/v1/installers/certifications", json={"device_id": 9999}).status_code == 404
        assert c.get("/api/v1/installers/certifications/9999").status_code == 404
        r = c.post("/api/v1/installers/certifications", json={"device_id": device_id, "radius_m": 1})
        assert r.status_code == 422 and r.json()["message"].startswith("radius_m:")


def test_check_rules_on_the_figures() -> None:
    """``api.certification.evaluate`` alone: the thresholds behind green, red and pending."""
    start = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)

    def reading(s: int, **kw: Any) -> certification.Reading:
        base: dict[str, Any] = {"valid": True, "latitude": CHACAO[0], "longitude": CHACAO[1], "hdop": 1.0,
                                "satellites": 8, "ignition": True, "power_mv": 12600}
        base.update(kw)
        return certification.Reading(start + timedelta(seconds=s), start + timedelta(seconds=s + 1), True, **base)

    def checks(readings: list[certification.Reading], *, now_s: int = 100, declared_v: int = 12,
               sms: certification.Sms | None = None) -> dict[str, tuple[str, str]]:
        inputs = certification.Inputs(started_at=start, now=start + timedelta(seconds=now_s), interval_s=30,
                                       declared_v=declared_v, center="Centro Chacao", center_lat=CHACAO[0],
                                       center_lon=CHACAO[1], radius_m=500, readings=readings,
                                       sms=sms or certification.Sms(msisdn="584140000101", command="STATUS#"))
        return {c.name: (c.status, c.summary) for c in certification.evaluate(inputs)}

    assert checks([], now_s=10)["reporting_interval"][0] == "pending"
    assert checks([], now_s=120)["reporting_interval"] == ("red", "no report in the 120 s since the start")
    assert checks([reading(0), reading(30)], now_s=200)["reporting_interval"][0] == "red"  # silent again
    assert checks([reading(0), reading(90), reading(180)], now_s=185)["reporting_interval"] == \
        ("red", "reports every 90 s, expected every 30 s")
    # A receiver still acquiring its fix gets a few reports' grace; then it is a fault.
    assert checks([reading(0, valid=False)])["gps_fix"][0] == "pending"
    assert checks([reading(0, satellites=3), reading(30, satellites=3), reading(60, satellites=3)])["gps_fix"] == \
        ("red", "3 satellites (at least 4 needed)")
    assert checks([reading(0, hdop=9.0)] * 3)["gps_fix"][0] == "red"
    assert checks([reading(0, ignition=False)])["ignition"] == ("pending", "turn the ignition on: not seen yet")
    assert checks([reading(0, power_mv=4100)])["supply_voltage"][1].endswith("running on the backup battery,"
                                                                               " not on vehicle power")
    assert checks([reading(0, power_mv=27000)], declared_v=24)["supply_voltage"][0] == "green"
    assert checks([reading(0, latitude=CHACAO[0] + 0.006)])["at_center"][0] == "red"  # ~670 m north
    assert checks([], sms=certification.Sms(msisdn=None, command=None))["sms_round_trip"][0] == "red"
    assert checks([], sms=certification.Sms(msisdn="5841", command="STATUS#", status="UNDELIV"))["sms_round_trip"] \
        == ("red", "the status SMS was not delivered (UNDELIV)")
    assert checks([], now_s=601)["sms_round_trip"] == ("red", "no SMS answer within 10 minutes")


def test_no_installation_for_an_account_suspended_retired_or_prepaid_without_balance(api: Api) -> None:
    centers(api)
    active = api.account("Flota Activa")
    suspended = api.account("Flota Morosa")
    retired = api.account("Flota Retirada")
    empty = api.account("Flota Prepago", billing="pre_paid", balance=0)
    with psycopg.connect(api.db_url) as conn:
        set_account_status(conn, suspended, "suspend")
        set_account_status(conn, retired, "retire")
    with api.client(api.token("installer", "Taller Chacao", center="Centro Chacao")) as c:
        for account, status, code, message in [
            (suspended, 409, "account_suspended", "account 'Flota Morosa' is suspended (non-payment): no installations"
                                                  " until it is reconnected"),
            (retired, 409, "account_retired", "account 'Flota Retirada' is retired: no new installations"),
            (empty, 402, "no_balance", "account 'Flota Prepago' is pre-paid and has no balance (0.00): top up"
                                              " before the installation"),
        ]:
            r = c.post("/api/v1/installers/installations", json=installation(account, msisdn=None))
            assert (r.status_code, r.json()) == (status, {"error": code, "message": message})
        with psycopg.connect(api.db_url) as conn:
            assert conn.execute("SELECT count(*) FROM devices").fetchone() == (0,)
            conn.execute("UPDATE accounts SET balance = 25 WHERE id = %s", (empty,))  # topped up
        r = c.post("/api/v1/installers/installations", json=installation(empty, msisdn=None))
        assert r.status_code == 201, r.text
        r = c.post("/api/v1/installers/installations",
                   json=installation(active, identifier="862170010000102", plate="AC102CD", msisdn=None))
        assert r.status_code == 201, r.text
        device_id = r.json()["device_id"]
        # Suspended between the installation and the certification: no certification either.
        with psycopg.connect(api.db_url) as conn:
            set_account_status(conn, active, "suspend", "non-payment")
        r = c.post("/api/v1/installers/certifications", json={"device_id": device_id})
        assert r.status_code == 409 and r.json()["error"] == "account_suspended"
        with psycopg.connect(api.db_url) as conn:
            set_account_status(conn, active, "reconnect")
        assert c.post("/api/v1/installers/certifications", json={"device_id": device_id}).status_code == 201


def test_24v_vehicles_and_motorcycles_wait_for_the_engineering_units_approval(api: Api) -> None:
    centers(api)
    account = api.account("Transportes Ávila")
    support = api.token("support", "Ingeniería")
    with api.client(api.token("installer", "Taller Chacao", center="Centro Chacao")) as c, \
            api.client(support) as engineering:
        car = c.post("/api/v1/installers/installations", json=installation(account, kind="car")).json()
        assert (car["stage"], car["engineering_review"]) == ("certification", None)  # 12 V car: straight through
        assert c.post("/api/v1/installers/certifications", json={"device_id": car["device_id"]}).status_code == 201

        truck = c.post("/api/v1/installers/installations", json=installation(
            account, identifier="862170010000102", msisdn=None, plate="TR24", supply_voltage_v=24, kind="truck")).json()
        assert truck["stage"] == "engineering_review"
        review = truck["engineering_review"]
        assert (review["state"], review["reasons"], review["requested_by"]) == ("pending", ["supply_24v"], "Taller Chacao")
        moto = c.post("/api/v1/installers/installations", json=installation(
            account, identifier="862170010000103", msisdn=None, plate="MT12", kind="motorcycle")).json()
        assert (moto["stage"], moto["engineering_review"]["reasons"]) == ("engineering_review", ["motorcycle"])

        r = c.post("/api/v1/installers/certifications", json={"device_id": truck["device_id"]})
        assert (r.status_code, r.json()["error"]) == (409, "engineering_review_pending")
        assert r.json()["message"] == (f"vehicle TR24 (24 V supply) needs the Engineering Unit's approval before"
                                       f" certification: engineering review {review['id']} is pending")
        # The installer cannot decide; the Engineering Unit (a support or admin user) can, once.
        decision = {"decision": "rejected", "note": "no 24-12 V converter: the terminal would burn"}
        assert c.post(f"/api/v1/installers/engineering-reviews/{review['id']}/decision", json=decision).status_code == 403
        pending = engineering.get("/api/v1/installers/engineering-reviews", params={"state": "pending"}).json()
        assert [(p["plate"], p["reasons"]) for p in pending] == [("TR24", ["supply_24v"]), ("MT12", ["motorcycle"])]
        r = engineering.post(f"/api/v1/installers/engineering-reviews/{review['id']}/decision", json=decision)
        assert r.status_code == 200, r.text
        assert (r.json()["state"], r.json()["decided_by"], r.json()["decision_note"]) == \
            ("rejected", "Ingeniería", decision["note"])
        r = engineering.post(f"/api/v1/installers/engineering-reviews/{review['id']}/decision",
                             json={"decision": "approved", "note": "changed my mind"})
        assert r.status_code == 409 and r.json()["error"] == "already_decided"
        r = c.post("/api/v1/installers/certifications", json={"device_id": truck["device_id"]})
        assert r.status_code == 409 and r.json()["error"] == "engineering_review_rejected"
        assert "was rejected (no 24-12 V converter: the terminal would burn)" in r.json()["message"]
        assert c.get(f"/api/v1/installers/installations/{truck['device_id']}").json()["stage"] == "engineering_rejected"

        # The installer fits a converter and asks again; the Engineering Unit approves.
        r = c.post(f"/api/v1/installers/installations/{truck['device_id']}/engineering-review",
                   json={"note": "24-12 V converter fitted, fused at 2 A"})
        assert r.status_code == 201 and r.json()["state"] == "pending", r.text
        again = r.json()["id"]
        assert c.post(f"/api/v1/installers/installations/{truck['device_id']}/engineering-review",
                      json={"note": "again"}).json()["error"] == "review_exists"
        r = engineering.post(f"/api/v1/installers/engineering-reviews/{again}/decision",
                             json={"decision": "approved", "note": "converter checked on photos"})
        assert r.json()["state"] == "approved"
        assert c.get(f"/api/v1/installers/installations/{truck['device_id']}").json()["stage"] == "certification"
        assert c.post("/api/v1/installers/certifications", json={"device_id": truck["device_id"]}).status_code == 201
        r = c.post(f"/api/v1/installers/installations/{car['device_id']}/engineering-review", json={"note": "why"})
        assert r.status_code == 409 and r.json()["error"] == "review_not_needed"
        decided = engineering.get("/api/v1/installers/engineering-reviews", params={"state": "rejected"}).json()
        assert [(d["id"], d["decided_by"]) for d in decided] == [(review["id"], "Ingeniería")]

    # A 24 V vehicle registered by the CLI (no review yet) gets one when its certification is asked for.
    with psycopg.connect(api.db_url) as conn:
        cli = add_device(conn, DeviceSpec(identifier="862170010000104", protocol="gl200", account="Transportes Ávila",
                                          plate="BUS24", supply_voltage_v=24, vehicle_kind="bus",
                                          center="Centro Chacao"))
    with api.client(api.token("admin", "root")) as admin:
        r = admin.post("/api/v1/installers/certifications", json={"device_id": cli["id"]})
        assert r.status_code == 409 and "engineering review" in r.json()["message"] and "was requested" in \
            r.json()["message"]
        assert [p["plate"] for p in admin.get("/api/v1/installers/engineering-reviews",
                                              params={"state": "pending"}).json()] == ["MT12", "BUS24"]


def test_dead_on_arrival_counts_from_the_purchase_with_its_proof(api: Api) -> None:
    centers(api)
    account = api.account("Transportes Ávila")
    today = date.today()
    with api.client(api.token("installer", "Taller Chacao", center="Centro Chacao")) as c:
        # A purchase date counts only with the proof of purchase's reference.
        r = c.post("/api/v1/installers/installations", json=installation(account, purchased_at=str(today)))
        assert r.status_code == 422 and r.json()["message"].startswith("proof_of_purchase: a purchase date counts only")
        r = c.post("/api/v1/installers/installations", json=installation(
            account, installed_at=str(today - timedelta(days=12)), purchased_at=str(today - timedelta(days=10)),
            proof_of_purchase="Factura 1"))
        assert r.status_code == 422 and r.json()["message"].startswith("purchased_at:")
        # Bought 40 days ago, installed 20 days ago: past both windows, warranty repair.
        old = c.post("/api/v1/installers/installations", json=installation(
            account, installed_at=str(today - timedelta(days=20)), purchased_at=str(today - timedelta(days=40)),
            proof_of_purchase="Factura 000123")).json()
        assert old["warranty"]["outcome"] == "warranty_repair"
        assert old["warranty"]["detail"].startswith("reported 20 days after the installation")

    # Terminals added by the CLI without dates: the warranty is unknown, and says what to ask for.
    with psycopg.connect(api.db_url) as conn:
        add_device(conn, DeviceSpec(identifier="862170010000105", protocol="gl200", account="Transportes Ávila",
                                    plate="SINFECHA", center="Centro Chacao"))
    with api.client(api.token("installer", "Taller Valencia", center="Centro Valencia")) as c:
        # The customer brings the vehicle to the nearest center, which is not the one that installed it.
        r = c.post("/api/v1/installers/inspections", json={"plate": "SINFECHA"})
        assert r.status_code == 201, r.text
        unknown = r.json()["warranty"]
        assert (unknown["outcome"], unknown["basis"], unknown["dead_on_arrival_until"]) == ("unknown", None, None)
        assert unknown["detail"] == "purchase and installation dates unknown: ask the customer for the proof of purchase"
        # The customer shows the invoice: bought 10 days ago, so dead on arrival though never installed.
        r = c.post("/api/v1/installers/inspections", json={
            "plate": "SINFECHA", "purchased_at": str(today - timedelta(days=10)), "proof_of_purchase": "Factura 777",
            "notes": "no power LED"})
        doa = r.json()
        assert (doa["warranty"]["outcome"], doa["warranty"]["basis"], doa["warranty"]["proof_of_purchase"]) == \
            ("dead_on_arrival", "purchase", "Factura 777")
        assert doa["warranty"]["dead_on_arrival_until"] == str(today + timedelta(days=5))
        assert (doa["center_name"], doa["inspected_by"], doa["findings"]) == ("Centro Valencia", "Taller Valencia", [])
        # Physical damage or transport damage found by the installer void it.
        r = c.post("/api/v1/installers/inspections", json={"plate": "SINFECHA", "physical_damage": True,
                                                          "transport_damage": True, "notes": "housing cracked"})
        void = r.json()
        assert void["findings"] == ["physical_damage", "transport_damage"]
        assert (void["warranty"]["outcome"], void["warranty"]["detail"]) == \
            ("void", "warranty void: physical damage, transport damage found by the installer")
        assert c.post("/api/v1/installers/inspections", json={"plate": "NOPE"}).status_code == 404
        listed = c.get("/api/v1/installers/inspections").json()
        assert [i["warranty"]["outcome"] for i in listed] == ["void", "dead_on_arrival", "unknown"]
    with api.client(api.token("installer", "Taller Chacao", center="Centro Chacao")) as c:
        assert c.get("/api/v1/installers/inspections").json() == []  # another center's inspections


async def test_a_diagnosed_terminal_fault_is_dead_on_arrival_from_its_purchase_date(api: Api) -> None:
    """The support desk's ticket flags dead on arrival by the same rule: a terminal never given an
    installation date, bought 5 days ago with its proof, is replaced, not repaired."""
    api.account("Transportes Ávila")
    today = date.today()
    with psycopg.connect(api.db_url) as conn:
        for identifier, purchased, proof in (("862170010000106", today - timedelta(days=5), "Factura 9"),
                                             ("862170010000107", today - timedelta(days=30), "Factura 10"),
                                             ("862170010000108", None, None)):
            device = add_device(conn, DeviceSpec(identifier=identifier, protocol="gl200", account="Transportes Ávila"))
            conn.execute("UPDATE devices SET purchased_at = %s, proof_of_purchase = %s WHERE id = %s",
                         (purchased, proof, device["id"]))
    flags = {}
    async with await psycopg.AsyncConnection.connect(api.db_url, autocommit=True) as conn:
        for identifier in ("862170010000106", "862170010000107", "862170010000108"):
            device = await load_device(conn, identifier)
            ticket = await for_verdict(conn, device, Verdict.UNREACHABLE, "no answer", None)
            flags[identifier] = ticket["dead_on_arrival"]
    assert flags == {"862170010000106": True, "862170010000107": False, "862170010000108": False}
