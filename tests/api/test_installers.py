"""Installation centers over real HTTP: registering installations (an unknown terminal becomes
a known one whose reports are then acknowledged), and certification with the customer, on
reports sent as real Queclink frames through a running ingest service.

The terminal's SMS answer is inserted as the diagnostics worker's inbox records it (an 'mo'
row, purpose 'reply', device set): the SMPP leg itself is tested with the worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg

from api import certification
from avl.admin import add_center
from avl.records import Position
from ingest.protocols import gl200
from tests.api.conftest import Api
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


def drive(where: tuple[float, float], ignition: list[bool], *, power_mv: int = 12800, step_s: int = 30) -> list[Position]:
    """Reports at the interval ending now, a few meters apart around ``where``, with the given ignition sequence."""
    end = datetime.now(UTC).replace(microsecond=0)
    return [Position(device=IMEI, fix_time=end - timedelta(seconds=step_s * (len(ignition) - 1 - i)), valid=True,
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
             "MSISDN 584140000101 already belongs to another device"),
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


async def test_an_unknown_terminal_is_registered_certified_live_and_signed_off(api: Api, tmp_path: Path) -> None:
    centers(api)
    account = api.account("Transportes Ávila")
    installer = api.token("installer", "Taller Chacao", center="Centro Chacao")
    client = api.token("client", "Despacho", account="Transportes Ávila")
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
        assert await seen() == []  # registered: no longer unknown
        await svc.intake.directory.load()  # what ingest's directory refresh does every 30 s

        r = await c.post("/api/v1/installers/certifications", json={"device_id": device_id})
        assert r.status_code == 201, r.text
        cert = r.json()
        assert cert["result"] == "in_progress" and cert["radius_m"] == 500
        assert set(statuses(cert).values()) == {"pending"}
        with psycopg.connect(api.db_url) as conn:
            sms = conn.execute("SELECT direction, msisdn, device_id, body, status, purpose FROM sms_messages").fetchall()
        assert sms == [("mt", "584140000101", device_id, "AT+GTRTO=gl200,1,,,,,,FFFF$", "queued", "certification")]

        # Signing too early: nothing failed yet, it stays in progress.
        r = await c.post(f"/api/v1/installers/certifications/{cert['id']}/sign-off",
                         json={"customer_signed_by": "Ana Pérez"})
        assert r.status_code == 409 and r.json()["error"] == "certification_incomplete"
        assert {f["name"] for f in r.json()["failed_checks"]} == set(statuses(cert))

        # Ignition on, then off, a valid fix at the center, 12.8 V on a 12 V van: now acknowledged.
        await send(port, drive(CHACAO, [True, True, True, False, False]))
        cert = (await c.get(f"/api/v1/installers/certifications/{cert['id']}")).json()
        assert statuses(cert) == {"reporting_interval": "green", "gps_fix": "green", "ignition": "green",
                                  "supply_voltage": "green", "sms_round_trip": "pending", "at_center": "green"}
        checks = {ch["name"]: ch for ch in cert["checks"]}
        assert checks["at_center"]["evidence"]["distance_m"] < 50
        assert checks["supply_voltage"]["evidence"]["measured_mv_median"] == 12800
        assert checks["reporting_interval"]["evidence"]["median_gap_s"] == 30.0
        assert checks["gps_fix"]["evidence"]["not_reported_by_protocol"] == ["satellites"]  # GTFRI has HDOP only

        terminal_answers(api.db_url, device_id, "584140000101", "+RESP:GTRTL,060100,862170010000101,,0,0,1,1,0.9$")
        cert = (await c.get(f"/api/v1/installers/certifications/{cert['id']}")).json()
        assert cert["all_green"] is True, cert["checks"]

        r = await c.post(f"/api/v1/installers/certifications/{cert['id']}/sign-off",
                         json={"customer_signed_by": "Ana Pérez", "customer_document": "V-12345678"})
        assert r.status_code == 200, r.text
        signed = r.json()
        assert (signed["result"], signed["customer_signed_by"]) == ("pass", "Ana Pérez")
        assert signed["signed_at"] is not None and signed["finished_at"] is not None

        page = await c.get(f"/api/v1/installers/certifications/{cert['id']}/certificate")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        for text in ("AB101CD", IMEI, "Centro Chacao", "Ana Pérez", "V-12345678", "Transportes Ávila", "GREEN"):
            assert text in page.text
        listed = (await c.get("/api/v1/installers/certifications", params={"device_id": device_id})).json()
        assert [(x["id"], x["result"]) for x in listed] == [(cert["id"], "pass")]
        assert (await c.get("/api/v1/installers/installations")).json()[0]["certified"] is True
        r = await c.post(f"/api/v1/installers/certifications/{cert['id']}/sign-off", json={"customer_signed_by": "X Y"})
        assert r.status_code == 409 and r.json()["error"] == "certification_finished"

    # The procedure: the customer changes the access password after signing.
    with api.client(client) as cc:
        assert cc.get("/api/v1/me").json()["must_change_password"] is True
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
                         json={"customer_signed_by": "Ana Pérez"})
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
