"""The fleet client API over real HTTP, on reports sent by (simulated) terminals over real TCP
to a running ingest service: vehicles and status, history and simplification, trips and stops,
distance, exports, zones with events and alerts, locate-now, tenancy and suspension."""

from __future__ import annotations

import csv
import io
import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
import shapely  # type: ignore[import-untyped]

from avl.admin import DeviceSpec, add_device, set_account_status
from avl.records import Position
from ingest.protocols import teltonika
from ingest.service import IngestService
from tests.api.conftest import Api
from tests.ingest.harness import exchange, running_ingest, settings_for

# Two accounts, one vehicle each (plus spares for A): Teltonika terminals.
A_IMEI, A2_IMEI, A3_IMEI, B_IMEI = "356307040000011", "356307040000029", "356307040000037", "356307040000045"
ZONE = {"type": "Polygon", "coordinates": [[[-66.905, 10.500], [-66.895, 10.500], [-66.895, 10.510],
                                            [-66.905, 10.510], [-66.905, 10.500]]]}


@dataclass
class Fleet:
    api: Api
    ids: dict[str, int]
    a: str  # client tokens
    b: str
    support: str


def make_fleet(api: Api) -> Fleet:
    api.account("Flota A", contact_msisdn="584120000001")
    api.account("Flota B")
    ids = {}
    with psycopg.connect(api.db_url) as conn:
        for ident, account, plate, msisdn in ((A_IMEI, "Flota A", "AA100AA", "584140000011"),
                                              (A2_IMEI, "Flota A", "AA200AA", "584140000029"),
                                              (A3_IMEI, "Flota A", None, None),
                                              (B_IMEI, "Flota B", "BB100BB", "584140000045")):
            ids[ident] = add_device(conn, DeviceSpec(identifier=ident, protocol="teltonika", account=account,
                                                     plate=plate, msisdn=msisdn, report_interval_s=30))["id"]
    return Fleet(api, ids, api.token("client", "despacho-a", account="Flota A"),
                 api.token("client", "despacho-b", account="Flota B"), api.token("support", "soporte"))


@pytest.fixture
def fleet(api: Api) -> Fleet:
    return make_fleet(api)


async def send(svc: IngestService, imei: str, positions: list[Position]) -> None:
    """Sends positions as a Teltonika terminal does: IMEI handshake, then codec 8 frames, each
    acknowledged (record count) only once committed."""
    frames = [teltonika.encode_login(imei)] + [teltonika.encode_batch(positions[i:i + 200])
                                               for i in range(0, len(positions), 200)]
    await exchange(svc.tcp["teltonika"].port, frames, [1] + [4] * (len(frames) - 1))


def at(imei: str, when: datetime, lat: float, lon: float, *, speed: float = 0.0, ignition: bool | None = True,
       valid: bool = True) -> Position:
    return Position(device=imei, fix_time=when, valid=valid, latitude=lat, longitude=lon, speed_kmh=speed,
                    course=0.0, altitude_m=900.0, satellites=9 if valid else 0, ignition=ignition, power_mv=12600)


def drive_with_stop(imei: str, start: datetime) -> list[Position]:
    """Every 30 s: 10 min driving north at 36 km/h, 6 min stopped with the engine running,
    10 min driving, then parked with the ignition off for 20 min."""
    out, lat, lon, t = [], 10.40, -66.90, start
    for phase, count, speed, ignition in (("drive", 20, 36.0, True), ("stop", 12, 0.0, True),
                                          ("drive", 20, 36.0, True), ("park", 40, 0.0, False)):
        for _ in range(count):
            if phase == "drive":
                lat += 300 / 111_195  # 300 m per 30 s
            out.append(at(imei, t, lat, lon, speed=speed, ignition=ignition))
            t += timedelta(seconds=30)
    return out


def period(points: list[Position]) -> dict[str, str]:
    return {"from": points[0].fix_time.isoformat(), "to": (points[-1].fix_time + timedelta(seconds=1)).isoformat()}


# Vehicles and status -----------------------------------------------------------------------


async def test_vehicles_carry_the_latest_position_and_a_status_that_says_what_is_going_on(
        fleet: Fleet, tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    async with running_ingest(settings_for(tmp_path), fleet.api.db_url) as svc:
        # A: fresh valid fixes; A2: fresh reports without a fix; A3: nothing yet.
        await send(svc, A_IMEI, [at(A_IMEI, now - timedelta(seconds=60 - 30 * i), 10.49, -66.88 + i * 1e-4,
                                    speed=20.0) for i in range(3)])
        await send(svc, A2_IMEI, [at(A2_IMEI, now - timedelta(seconds=10), 10.49, -66.87, valid=False)])
        await send(svc, B_IMEI, [at(B_IMEI, now, 10.30, -66.80)])
    with fleet.api.client(fleet.a) as c:
        vehicles = {v["identifier"]: v for v in c.get("/api/v1/vehicles").json()}
        assert set(vehicles) == {A_IMEI, A2_IMEI, A3_IMEI}  # not B's
        a = vehicles[A_IMEI]
        assert (a["status"], a["plate"], a["report_interval_s"]) == ("online", "AA100AA", 30)
        assert a["position"]["time"] == (now.isoformat().replace("+00:00", "Z"))
        assert (a["position"]["latitude"], a["position"]["speed_kmh"], a["position"]["ignition"]) == (10.49, 20.0, True)
        assert vehicles[A2_IMEI]["status"] == "gps_not_updated"
        assert "without a valid GPS fix" in vehicles[A2_IMEI]["status_detail"]
        assert (vehicles[A3_IMEI]["status"], vehicles[A3_IMEI]["position"]) == ("offline", None)
        one = c.get(f"/api/v1/vehicles/{fleet.ids[A_IMEI]}").json()
        assert one == a
        assert [v["identifier"] for v in c.get("/api/v1/vehicles", params={"status": "offline"}).json()] == [A3_IMEI]
    with psycopg.connect(fleet.api.db_url) as conn:
        # Time passes: A's last report is now older than 3 intervals (90 s); A2's fix is stale
        # although reports keep arriving; A's line is suspended later.
        conn.execute("UPDATE latest_positions SET last_received_at = now() - interval '5 minutes',"
                     " received_at = now() - interval '5 minutes' WHERE device_id = %s", (fleet.ids[A_IMEI],))
        conn.execute("UPDATE latest_positions SET valid = true, fix_time = now() - interval '10 minutes'"
                     " WHERE device_id = %s", (fleet.ids[A2_IMEI],))
    with fleet.api.client(fleet.a) as c:
        vehicles = {v["identifier"]: v for v in c.get("/api/v1/vehicles").json()}
        assert vehicles[A_IMEI]["status"] == "offline" and "3 report intervals (90 s)" in vehicles[A_IMEI]["status_detail"]
        assert vehicles[A2_IMEI]["status"] == "gps_not_updated"
        assert "older than" in vehicles[A2_IMEI]["status_detail"]
    with psycopg.connect(fleet.api.db_url) as conn:
        conn.execute("UPDATE devices SET line_status = 'suspended' WHERE id = %s", (fleet.ids[A_IMEI],))
    with fleet.api.client(fleet.support) as c:
        everyone = c.get("/api/v1/vehicles").json()
        assert {v["identifier"] for v in everyone} == {A_IMEI, A2_IMEI, A3_IMEI, B_IMEI}
        only_b = c.get("/api/v1/vehicles", params={"account_id": everyone[-1]["account_id"]}).json()
        assert [v["identifier"] for v in only_b] == [B_IMEI]
        blocked = c.get(f"/api/v1/vehicles/{fleet.ids[A_IMEI]}").json()
        assert blocked["status"] == "account_blocked" and "line is suspended" in blocked["status_detail"]


def test_a_suspended_account_sees_why_but_gets_no_tracking_data(fleet: Fleet) -> None:
    with psycopg.connect(fleet.api.db_url) as conn:
        conn.execute("INSERT INTO latest_positions (device_id, fix_time, received_at, last_received_at, valid,"
                     " latitude, longitude) VALUES (%s, now(), now(), now(), true, 10.5, -66.9)", (fleet.ids[A_IMEI],))
        set_account_status(conn, "Flota A", "suspend")
    vid = fleet.ids[A_IMEI]
    with fleet.api.client(fleet.a) as c:
        vehicles = c.get("/api/v1/vehicles").json()
        assert {v["status"] for v in vehicles} == {"account_blocked"}
        assert all(v["position"] is None for v in vehicles)
        assert "suspended (non-payment)" in vehicles[0]["status_detail"]
        for path in ("history", "trips", "distance", "geofence-events"):
            r = c.get(f"/api/v1/vehicles/{vid}/{path}")
            assert (r.status_code, r.json()["error"]) == (403, "account_suspended"), path
        assert c.post(f"/api/v1/vehicles/{vid}/locate").status_code == 403
        # The evidence for a billing dispute stays available.
        assert c.get(f"/api/v1/vehicles/{vid}/export", params={"format": "csv"}).status_code == 200
    with fleet.api.client(fleet.support) as c:  # staff still see the position
        assert c.get(f"/api/v1/vehicles/{vid}").json()["position"]["latitude"] == 10.5


# Tenancy -----------------------------------------------------------------------------------


def test_another_accounts_resources_answer_404_like_missing_ones(fleet: Fleet) -> None:
    b_vehicle = fleet.ids[B_IMEI]
    with fleet.api.client(fleet.b) as c:
        zone = c.post("/api/v1/geofences", json={"name": "Zona B", "geometry": ZONE}).json()["id"]
        request = c.post(f"/api/v1/vehicles/{b_vehicle}/locate").json()["id"]
    with psycopg.connect(fleet.api.db_url) as conn:
        alert = conn.execute(
            "INSERT INTO geofence_alerts (account_id, device_id, geofence_id, geofence_name, kind, fix_time, latitude,"
            " longitude) SELECT account_id, id, %s, 'Zona B', 'forbidden_enter', now(), 10.5, -66.9 FROM devices"
            " WHERE id = %s RETURNING id", (zone, b_vehicle)).fetchone()[0]  # type: ignore[index]
    with fleet.api.client(fleet.a) as c:
        missing = c.get("/api/v1/vehicles/999999").json()
        for method, path in [("GET", f"/api/v1/vehicles/{b_vehicle}"), ("GET", f"/api/v1/vehicles/{b_vehicle}/history"),
                             ("GET", f"/api/v1/vehicles/{b_vehicle}/trips"),
                             ("GET", f"/api/v1/vehicles/{b_vehicle}/distance"),
                             ("GET", f"/api/v1/vehicles/{b_vehicle}/export?format=gpx"),
                             ("GET", f"/api/v1/vehicles/{b_vehicle}/geofence-events"),
                             ("GET", f"/api/v1/vehicles/{b_vehicle}/locate-requests"),
                             ("POST", f"/api/v1/vehicles/{b_vehicle}/locate"),
                             ("GET", f"/api/v1/geofences/{zone}"), ("DELETE", f"/api/v1/geofences/{zone}"),
                             ("GET", f"/api/v1/locate-requests/{request}"),
                             ("POST", f"/api/v1/geofence-alerts/{alert}/acknowledge")]:
            r = c.request(method, path)
            assert r.status_code == 404, (method, path, r.text)
            assert r.json()["error"] == missing["error"] == "not_found"
        r = c.put(f"/api/v1/geofences/{zone}", json={"name": "mine now", "geometry": ZONE})
        assert r.status_code == 404
        assert c.get("/api/v1/geofences").json() == []
        assert c.get("/api/v1/geofence-alerts").json() == []
        # A client cannot widen its scope with account_id.
        with psycopg.connect(fleet.api.db_url) as conn:
            b_account = conn.execute("SELECT id FROM accounts WHERE name = 'Flota B'").fetchone()[0]  # type: ignore[index]
        assert B_IMEI not in {v["identifier"] for v in c.get("/api/v1/vehicles", params={"account_id": b_account}).json()}


# History and simplification ----------------------------------------------------------------


async def test_history_is_in_fix_time_order_even_when_reports_arrive_out_of_order(fleet: Fleet,
                                                                                  tmp_path: Path) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    points = [at(A_IMEI, start + timedelta(seconds=30 * i), 10.40 + i * 1e-4, -66.90, speed=30.0) for i in range(60)]
    points[10].valid = False
    async with running_ingest(settings_for(tmp_path), fleet.api.db_url) as svc:
        await send(svc, A_IMEI, points[30:])  # the buffered first half arrives last
        await send(svc, A_IMEI, points[:30])
    vid = fleet.ids[A_IMEI]
    with fleet.api.client(fleet.a) as c:
        h = c.get(f"/api/v1/vehicles/{vid}/history", params=period(points)).json()
        times = [p["time"] for p in h["points"]]
        assert times == sorted(times) and len(times) == 60 and h["total"] == 60 and not h["truncated"]
        assert times[0] == start.isoformat().replace("+00:00", "Z")
        assert h["points"][10]["valid"] is False
        assert c.get(f"/api/v1/vehicles/{vid}/history", params={**period(points), "valid_only": True}).json()["count"] == 59
        # A cap on an unsimplified history pages it.
        page = c.get(f"/api/v1/vehicles/{vid}/history", params={**period(points), "max_points": 25}).json()
        assert (page["count"], page["total"], page["truncated"]) == (25, 60, True)
        rest = c.get(f"/api/v1/vehicles/{vid}/history",
                     params={"from": page["next_from"], "to": period(points)["to"], "max_points": 50}).json()
        assert [p["time"] for p in page["points"] + rest["points"]] == times
        bad = c.get(f"/api/v1/vehicles/{vid}/history", params={"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"})
        assert (bad.status_code, bad.json()["message"]) == (422, "to: must be after from")
        too_long = c.get(f"/api/v1/vehicles/{vid}/history", params={"from": "2025-01-01T00:00:00Z",
                                                                       "to": "2026-01-01T00:00:00Z"})
        assert too_long.status_code == 422 and too_long.json()["message"].startswith("to:")
        assert c.get(f"/api/v1/vehicles/{vid}/history", params={"max_points": 1}).status_code == 422


def _metres(lat: list[float], lon: list[float], lat0: float, lon0: float) -> list[tuple[float, float]]:
    k = math.cos(math.radians(lat0))
    return [((x - lon0) * 111_195 * k, (y - lat0) * 111_195) for y, x in zip(lat, lon, strict=True)]


async def test_simplification_keeps_every_point_within_tolerance_and_respects_the_cap(fleet: Fleet,
                                                                                      tmp_path: Path) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    # A winding road: 400 fixes, a few metres of GPS noise on a sine.
    points = [at(A_IMEI, start + timedelta(seconds=30 * i), 10.40 + i * 2e-4 + 1e-5 * ((i * 7919) % 5 - 2),
                 -66.90 + 2e-3 * math.sin(i / 15), speed=40.0) for i in range(400)]
    async with running_ingest(settings_for(tmp_path), fleet.api.db_url) as svc:
        await send(svc, A_IMEI, points)
    vid = fleet.ids[A_IMEI]
    with fleet.api.client(fleet.a) as c:
        h = c.get(f"/api/v1/vehicles/{vid}/history", params={**period(points), "simplify_m": 20}).json()
        capped = c.get(f"/api/v1/vehicles/{vid}/history",
                       params={**period(points), "simplify_m": 20, "max_points": 12}).json()
    assert h["simplified"] and h["total"] == 400 and 2 < h["count"] < 100 and h["tolerance_m"] == 20
    kept = h["points"]
    assert (kept[0]["time"], kept[-1]["time"]) == (period(points)["from"].replace("+00:00", "Z"),
                                                   points[-1].fix_time.isoformat().replace("+00:00", "Z"))
    lat0, lon0 = 10.44, -66.90
    line = shapely.LineString(_metres([p["latitude"] for p in kept], [p["longitude"] for p in kept], lat0, lon0))
    worst = max(line.distance(shapely.Point(xy)) for xy in _metres([p.latitude for p in points],  # type: ignore[misc]
                                                                   [p.longitude for p in points], lat0, lon0))
    assert worst <= 20 * 1.01
    assert capped["count"] <= 12 and capped["tolerance_m"] > 20


# Trips, stops, distance --------------------------------------------------------------------


async def test_trips_and_stops_of_a_drive_with_a_stop_and_ignition_off(fleet: Fleet, tmp_path: Path) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    points = drive_with_stop(A_IMEI, start)
    async with running_ingest(settings_for(tmp_path), fleet.api.db_url) as svc:
        await send(svc, A_IMEI, points[40:])  # out of order on purpose
        await send(svc, A_IMEI, points[:40])
    vid = fleet.ids[A_IMEI]
    with fleet.api.client(fleet.a) as c:
        r = c.get(f"/api/v1/vehicles/{vid}/trips", params=period(points)).json()
        d = c.get(f"/api/v1/vehicles/{vid}/distance", params={"tz": "America/Caracas"}).json()
        assert c.get(f"/api/v1/vehicles/{vid}/distance", params={"tz": "Mars/Olympus"}).status_code == 422
    first, second = r["trips"]
    iso = [p.fix_time.isoformat().replace("+00:00", "Z") for p in points]
    # Trip 1: departs from the first fix, arrives at the first stationary fix (index 20).
    assert (first["start"]["time"], first["end"]["time"], first["ongoing"]) == (iso[0], iso[20], False)
    assert first["distance_m"] == pytest.approx(19 * 300, rel=0.01) and first["max_speed_kmh"] == 36.0
    # Trip 2: departs from the last stopped fix (index 31), ends when the ignition goes off (index 52).
    assert (second["start"]["time"], second["end"]["time"]) == (iso[31], iso[52])
    assert second["distance_m"] == pytest.approx(20 * 300, rel=0.01)  # from the stop's place
    middle, parked = r["stops"]
    assert (middle["start"], middle["end"], middle["ignition_off"], middle["ongoing"]) == (iso[20], iso[31], False, False)
    assert middle["duration_s"] == 330
    assert (parked["start"], parked["ignition_off"], parked["ongoing"]) == (iso[52], True, True)
    assert parked["duration_s"] == (91 - 52) * 30
    assert d["tz"] == "America/Caracas" and len(d["days"]) == 7
    assert d["total_m"] == pytest.approx(first["distance_m"] + second["distance_m"], rel=0.01)


# Exports -----------------------------------------------------------------------------------


async def test_exports_hold_every_report_in_four_formats_that_parse(fleet: Fleet, tmp_path: Path) -> None:
    start = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    points = [at(A_IMEI, start + timedelta(seconds=30 * i), 10.40 + i * 1e-4, -66.90, speed=30.0) for i in range(50)]
    points[7].valid = False
    async with running_ingest(settings_for(tmp_path), fleet.api.db_url) as svc:
        await send(svc, A_IMEI, points[25:])
        await send(svc, A_IMEI, points[:25])
    vid = fleet.ids[A_IMEI]
    span = {"from": "2026-03-01T12:00:00Z", "to": "2026-03-01T13:00:00Z"}
    times = [p.fix_time.strftime("%Y-%m-%dT%H:%M:%SZ") for p in points]
    got = {}
    with fleet.api.client(fleet.a) as c:
        for fmt in ("csv", "gpx", "kml", "geojson"):
            r = c.get(f"/api/v1/vehicles/{vid}/export", params={**span, "format": fmt})
            assert r.status_code == 200, r.text
            assert r.headers["content-disposition"] == (
                f'attachment; filename="AA100AA_20260301T120000Z_20260301T130000Z.{fmt}"')
            got[fmt] = r
        assert c.get(f"/api/v1/vehicles/{vid}/export", params={"format": "xls"}).status_code == 422
    assert got["csv"].headers["content-type"] == "text/csv; charset=utf-8"
    assert got["gpx"].headers["content-type"] == "application/gpx+xml"
    assert got["kml"].headers["content-type"] == "application/vnd.google-earth.kml+xml"
    assert got["geojson"].headers["content-type"] == "application/geo+json"

    rows = list(csv.DictReader(io.StringIO(got["csv"].text)))
    assert [r["fix_time"] for r in rows] == times
    assert rows[7]["valid"] == "false" and rows[0]["plate"] == "AA100AA" and rows[0]["ignition"] == "true"
    assert float(rows[3]["latitude"]) == pytest.approx(10.4003) and rows[0]["received_at"].endswith("Z")

    ns = {"g": "http://www.topografix.com/GPX/1/1"}
    gpx = ET.fromstring(got["gpx"].content)
    trkpts = gpx.findall(".//g:trkpt", ns)
    assert [p.findtext("g:time", namespaces=ns) for p in trkpts] == times
    assert trkpts[7].findtext("g:fix", namespaces=ns) == "none" and trkpts[0].find("g:fix", ns) is None
    assert float(trkpts[3].get("lat", "nan")) == pytest.approx(10.4003)

    kml = ET.fromstring(got["kml"].content)
    k = {"k": "http://www.opengis.net/kml/2.2"}
    stamps = [w.text for w in kml.findall(".//k:Placemark/k:TimeStamp/k:when", k)]
    assert stamps == times
    assert len(kml.findall(".//k:LineString", k)) == 1

    collection = json.loads(got["geojson"].content)
    assert collection["type"] == "FeatureCollection"
    assert [f["properties"]["fix_time"] for f in collection["features"]] == times
    assert collection["features"][3]["geometry"]["coordinates"][:2] == [-66.9, pytest.approx(10.4003)]
    assert collection["features"][7]["properties"]["valid"] is False

    with fleet.api.client(fleet.a) as c:  # an empty period is still a valid file
        empty = c.get(f"/api/v1/vehicles/{vid}/export", params={"from": "2026-01-01T00:00:00Z",
                                                                 "to": "2026-01-02T00:00:00Z", "format": "gpx"})
    assert ET.fromstring(empty.content).findall(".//g:trkpt", ns) == []


# Zones -------------------------------------------------------------------------------------


def test_zones_are_crud_for_the_account_and_bad_geometry_is_refused(fleet: Fleet) -> None:
    with fleet.api.client(fleet.a) as c:
        r = c.post("/api/v1/geofences", json={"name": "Petare", "kind": "forbidden", "geometry": ZONE, "dwell_s": 600})
        assert r.status_code == 201, r.text
        zone = r.json()
        assert zone["bbox"] == [-66.905, 10.5, -66.895, 10.51] and zone["dwell_s"] == 600
        assert c.get("/api/v1/geofences").json() == [zone]
        assert c.get(f"/api/v1/geofences/{zone['id']}").json() == zone
        multi = {"type": "MultiPolygon", "coordinates": [ZONE["coordinates"]]}
        changed = c.put(f"/api/v1/geofences/{zone['id']}", json={"name": "Base", "kind": "allowed", "geometry": multi})
        assert changed.status_code == 200 and changed.json()["kind"] == "allowed"
        assert changed.json()["geometry"]["type"] == "MultiPolygon"
        bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}
        for geometry, words in ((bowtie, "Self-intersection"), ({"type": "Point", "coordinates": [0, 0]}, "Polygon"),
                                ({"type": "Polygon", "coordinates": [[[0, 0], [200, 0], [0, 1], [0, 0]]]}, "WGS84"),
                                ({"type": "Polygon", "coordinates": "nope"}, "not a Polygon")):
            bad = c.post("/api/v1/geofences", json={"name": "x", "geometry": geometry})
            assert bad.status_code == 422 and bad.json()["message"].startswith("geometry:"), bad.text
            assert words in bad.json()["message"]
        assert c.post("/api/v1/geofences", json={"name": "x", "kind": "maybe", "geometry": ZONE}).status_code == 422
        assert c.delete(f"/api/v1/geofences/{zone['id']}").status_code == 204
        assert c.get(f"/api/v1/geofences/{zone['id']}").status_code == 404
    with fleet.api.client(fleet.support) as c:
        r = c.post("/api/v1/geofences", json={"name": "x", "geometry": ZONE})
        assert r.status_code == 422 and r.json()["message"].startswith("account_id:")


async def test_entering_a_forbidden_zone_is_an_enter_event_and_one_alert(fleet: Fleet, tmp_path: Path) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    # Northbound through the zone (10.500-10.510): 20 fixes ~110 m apart, 1 per 30 s.
    points = [at(A_IMEI, start + timedelta(seconds=30 * i), 10.495 + i * 1e-3, -66.90, speed=13.0) for i in range(20)]
    async with running_ingest(settings_for(tmp_path), fleet.api.db_url) as svc:
        await send(svc, A_IMEI, points[8:])
        await send(svc, A_IMEI, points[:8])
    vid = fleet.ids[A_IMEI]
    iso = [p.fix_time.isoformat().replace("+00:00", "Z") for p in points]
    with fleet.api.client(fleet.a) as c:
        zone = c.post("/api/v1/geofences", json={"name": "Zona roja", "kind": "forbidden", "geometry": ZONE,
                                                 "dwell_s": 120}).json()
        r = c.get(f"/api/v1/vehicles/{vid}/geofence-events", params=period(points)).json()
        # Fixes 5..15 are inside (10.500..10.510): enter at 5, dwell after 120 s at 9, exit at 16.
        assert [(e["event"], e["time"]) for e in r["events"]] == [("enter", iso[5]), ("dwell", iso[9]), ("exit", iso[16])]
        assert r["events"][2]["duration_s"] == 330 and r["inside_at_start"] == []
        (alert,) = r["alerts"]
        assert (alert["kind"], alert["time"], alert["geofence_id"], alert["plate"]) == (
            "forbidden_enter", iso[5], zone["id"], "AA100AA")
        assert "entered the forbidden zone 'Zona roja'" in alert["message"]
        # Asking again (or evaluating the fleet) does not raise it twice.
        again = c.get(f"/api/v1/vehicles/{vid}/geofence-events", params=period(points)).json()
        assert [a["id"] for a in again["alerts"]] == [alert["id"]]
        ev = c.post("/api/v1/geofence-alerts/evaluate", json=period(points)).json()
        assert (ev["vehicles"], ev["new_alerts"], [a["id"] for a in ev["alerts"]]) == (3, 0, [alert["id"]])
        # Starting inside: no enter, the zone is listed as inside at the start.
        inside = c.get(f"/api/v1/vehicles/{vid}/geofence-events", params={"from": iso[7], "to": iso[12]}).json()
        assert inside["events"][0]["event"] == "dwell" and inside["inside_at_start"][0]["geofence_id"] == zone["id"]
        listed = c.get("/api/v1/geofence-alerts", params={"acknowledged": False}).json()
        assert [a["id"] for a in listed] == [alert["id"]]
        acked = c.post(f"/api/v1/geofence-alerts/{alert['id']}/acknowledge").json()
        assert acked["acknowledged_at"] is not None
        assert c.get("/api/v1/geofence-alerts", params={"acknowledged": False}).json() == []
        # Leaving an allowed area is the other alert.
        c.put(f"/api/v1/geofences/{zone['id']}", json={"name": "Base", "kind": "allowed", "geometry": ZONE})
        r = c.get(f"/api/v1/vehicles/{vid}/geofence-events", params=period(points)).json()
        assert [(a["kind"], a["time"]) for a in r["alerts"]] == [("allowed_exit", iso[16])]


# Locate now --------------------------------------------------------------------------------


def delivered(db_url: str, request_id: int) -> None:
    """What the diagnostics worker's inbox records when the SMSC's DELIVRD receipt for the request's SMS
    arrives (the SMPP leg is tested with the worker, in tests/api/test_billing.py)."""
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE sms_messages SET status = 'DELIVRD', delivered_at = clock_timestamp()"
                     " WHERE id = (SELECT sms_id FROM locate_requests WHERE id = %s)", (request_id,))


async def test_locate_now_queues_the_sms_is_billed_once_and_is_answered_by_a_fresh_report(fleet: Fleet,
                                                                                        tmp_path: Path) -> None:
    vid = fleet.ids[A_IMEI]
    with fleet.api.client(fleet.a) as c:
        r = c.post(f"/api/v1/vehicles/{vid}/locate")
        assert r.status_code == 201, r.text
        req = r.json()
        assert (req["status"], req["channel"], req["command"], req["sms_status"], req["billable"]) == (
            "pending", "sms", "  getrecord", "queued", True)
        again = c.post(f"/api/v1/vehicles/{vid}/locate")
        assert again.status_code == 200 and again.json()["id"] == req["id"]
        assert c.get(f"/api/v1/locate-requests/{req['id']}").json()["status"] == "pending"
        no_sms = c.post(f"/api/v1/vehicles/{fleet.ids[A3_IMEI]}/locate")
        assert (no_sms.status_code, no_sms.json()["error"]) == (409, "not_locatable")
    with psycopg.connect(fleet.api.db_url) as conn:
        sms = conn.execute("SELECT direction, msisdn, device_id, body, status, purpose FROM sms_messages").fetchall()
        billed = conn.execute("SELECT kind, device_id, reference_id FROM billable_events").fetchall()
    assert sms == [("mt", "+584140000011", vid, "  getrecord", "queued", "locate")]  # E.164
    assert billed == []  # billed when answered, not when asked
    now = datetime.now(UTC).replace(microsecond=0)
    async with running_ingest(settings_for(tmp_path), fleet.api.db_url) as svc:
        await send(svc, A_IMEI, [at(A_IMEI, now - timedelta(seconds=5), 10.43, -66.87)])  # before the SMS was delivered
        with fleet.api.client(fleet.a) as c:
            assert c.get(f"/api/v1/locate-requests/{req['id']}").json()["status"] == "pending"
        delivered(fleet.api.db_url, req["id"])
        await send(svc, A_IMEI, [at(A_IMEI, now, 10.4321, -66.8765)])
    with psycopg.connect(fleet.api.db_url) as conn:
        billed = conn.execute("SELECT kind, device_id, reference_id, amount FROM billable_events").fetchall()
    assert billed == [("locate_request", vid, req["id"], Decimal("1.00"))]
    with fleet.api.client(fleet.a) as c:
        done = c.get(f"/api/v1/locate-requests/{req['id']}").json()
        assert done["status"] == "answered"
        assert datetime.fromisoformat(done["answered_at"]) > datetime.fromisoformat(done["requested_at"])
        assert (done["position"]["latitude"], done["position"]["longitude"]) == (10.4321, -66.8765)
        assert [x["id"] for x in c.get(f"/api/v1/vehicles/{vid}/locate-requests").json()] == [req["id"]]
        # Answered: the next click is a new (billed) request.
        assert c.post(f"/api/v1/vehicles/{vid}/locate").status_code == 201
    with fleet.api.client(fleet.support) as c:  # a support request is not billed to the customer
        assert c.post(f"/api/v1/vehicles/{fleet.ids[B_IMEI]}/locate").json()["billable"] is False


async def test_a_suspended_account_sees_its_locate_requests_but_not_the_position_they_found(
        fleet: Fleet, tmp_path: Path) -> None:
    vid = fleet.ids[A_IMEI]
    with fleet.api.client(fleet.a) as c:
        req = c.post(f"/api/v1/vehicles/{vid}/locate").json()
    delivered(fleet.api.db_url, req["id"])
    async with running_ingest(settings_for(tmp_path), fleet.api.db_url) as svc:
        await send(svc, A_IMEI, [at(A_IMEI, datetime.now(UTC).replace(microsecond=0), 10.4321, -66.8765)])
    with fleet.api.client(fleet.a) as c:
        assert c.get(f"/api/v1/locate-requests/{req['id']}").json()["position"]["latitude"] == 10.4321
    with psycopg.connect(fleet.api.db_url) as conn:
        set_account_status(conn, "Flota A", "suspend")
    with fleet.api.client(fleet.a) as c:
        one = c.get(f"/api/v1/locate-requests/{req['id']}").json()
        listed = c.get(f"/api/v1/vehicles/{vid}/locate-requests").json()
    assert (one["status"], one["position"]) == ("answered", None)
    assert [(x["id"], x["position"]) for x in listed] == [(req["id"], None)]
    with fleet.api.client(fleet.support) as c:  # staff still see it
        assert c.get(f"/api/v1/locate-requests/{req['id']}").json()["position"]["latitude"] == 10.4321


def test_fleet_endpoints_need_a_token_and_a_fleet_role(api: Api) -> None:
    api.account("Flota A")
    with psycopg.connect(api.db_url) as conn:
        conn.execute("INSERT INTO installation_centers (name, latitude, longitude) VALUES ('C1', 10.5, -66.9)")
    installer = api.token("installer", "tecnico", center="C1")
    with api.client() as c:
        assert c.get("/api/v1/vehicles").status_code == 401
    with api.client(installer) as c:
        assert c.get("/api/v1/vehicles").status_code == 403
        assert c.get("/api/v1/geofences").status_code == 403
    with api.client() as c:  # every fleet operation is documented, with a summary
        paths = c.get("/api/v1/openapi.json").json()["paths"]
    fleet_ops = [(path, method, op) for path, ops in paths.items() for method, op in ops.items()
                 if path.startswith(("/api/v1/vehicles", "/api/v1/geofence", "/api/v1/locate", "/api/v1/live"))]
    assert len(fleet_ops) >= 19
    assert all(op.get("summary") for _, _, op in fleet_ops)


def test_periods_outside_any_plausible_fix_time_are_refused(api: Api) -> None:
    api.account("Flota Fechas")
    token = api.token("client", "fechas", account="Flota Fechas")
    with api.client(token) as c:
        r = c.get("/api/v1/geofence-alerts", params={"from": "0945-07-29T14:43:14Z", "to": "0945-07-30T14:43:14Z"})
    assert r.status_code == 422 and r.json()["message"].startswith("to: must be between")
