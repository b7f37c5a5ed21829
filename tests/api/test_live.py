"""The live WebSocket over a real server: positions and events committed by a running ingest
service reach the account's streams (and only theirs), zone entries come with their alert,
and authentication / suspension are enforced."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from avl.admin import DeviceSpec, add_device, set_account_status
from avl.records import Position
from ingest.protocols import gt06
from tests.api.conftest import Api
from tests.api.test_fleet import A2_IMEI, A_IMEI, B_IMEI, ZONE, Fleet, at, make_fleet, send
from tests.ingest.harness import exchange, running_ingest, settings_for

GT06_IMEI = "868120200000019"


def ws_url(api: Api, token: str | None = None) -> str:
    return api.url.replace("http://", "ws://") + "/api/v1/live" + (f"?token={token}" if token else "")


async def receive(ws: ClientConnection, wanted: str) -> dict[str, Any]:
    """The next message of type ``wanted`` (others are skipped), within 10 s."""
    async with asyncio.timeout(10):
        while True:
            message = json.loads(await ws.recv())
            if message["type"] == wanted:
                return message


async def drain(ws: ClientConnection, quiet_s: float = 0.5) -> list[dict[str, Any]]:
    """Every message until the stream stays quiet for ``quiet_s``."""
    out = []
    while True:
        try:
            out.append(json.loads(await asyncio.wait_for(ws.recv(), quiet_s)))
        except TimeoutError:
            return out


def client(api: Api, token: str | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=api.url, headers={"Authorization": f"Bearer {token}"} if token else {})


@pytest.fixture
def fleet(api: Api) -> Fleet:
    return make_fleet(api)


async def test_each_account_sees_its_own_positions_and_events_and_none_of_anothers(fleet: Fleet,
                                                                                    tmp_path: Path) -> None:
    with psycopg.connect(fleet.api.db_url) as conn:
        gt06_id = add_device(conn, DeviceSpec(identifier=GT06_IMEI, protocol="gt06", account="Flota A"))["id"]
    now = datetime.now(UTC).replace(microsecond=0)
    async with running_ingest(settings_for(tmp_path), fleet.api.db_url) as svc, \
            connect(ws_url(fleet.api, fleet.a)) as ws_a, connect(ws_url(fleet.api, fleet.b)) as ws_b, \
            connect(ws_url(fleet.api), additional_headers={"Authorization": f"Bearer {fleet.support}"}) as ws_staff:
        for ws in (ws_a, ws_b, ws_staff):
            await receive(ws, "ready")
        await send(svc, B_IMEI, [at(B_IMEI, now - timedelta(seconds=30), 10.30, -66.80)])
        await send(svc, A_IMEI, [at(A_IMEI, now - timedelta(seconds=30), 10.49, -66.88),
                                 at(A_IMEI, now, 10.4912, -66.8791, speed=42.0)])
        # A status report without a position (a GT06 heartbeat) is an event.
        heartbeat = Position(device=GT06_IMEI, fix_time=now, ignition=True)
        await exchange(svc.tcp["gt06"].port, [gt06.encode_login(GT06_IMEI), gt06.encode_heartbeat(heartbeat, 2)],
                       [10, 10])
        a_messages = await drain(ws_a)
        b_messages = await drain(ws_b)
        staff = await drain(ws_staff)
    a_positions = [p for m in a_messages if m["type"] == "positions" for p in m["positions"]]
    assert a_positions and {p["device_id"] for p in a_positions} == {fleet.ids[A_IMEI]}
    latest = a_positions[-1]
    assert (latest["latitude"], latest["speed_kmh"], latest["plate"]) == (10.4912, 42.0, "AA100AA")
    assert latest["time"] == now.isoformat().replace("+00:00", "Z")
    a_events = [e for m in a_messages if m["type"] == "events" for e in m["events"]]
    assert a_events and {e["device_id"] for e in a_events} == {gt06_id}
    b_devices = {p["device_id"] for m in b_messages if m["type"] == "positions" for p in m["positions"]}
    assert b_devices == {fleet.ids[B_IMEI]}
    assert not [m for m in b_messages if m["type"] == "events"]
    staff_devices = {p["device_id"] for m in staff if m["type"] == "positions" for p in m["positions"]}
    assert staff_devices == {fleet.ids[A_IMEI], fleet.ids[B_IMEI]}


async def test_entering_a_forbidden_zone_is_pushed_with_its_alert(fleet: Fleet, tmp_path: Path) -> None:
    async with client(fleet.api, fleet.a) as c:
        zone = (await c.post("/api/v1/geofences", json={"name": "Zona roja", "geometry": ZONE})).json()
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    outside = [at(A2_IMEI, start + timedelta(seconds=30 * i), 10.497 + i * 1e-3, -66.90, speed=13.0) for i in range(3)]
    inside = [at(A2_IMEI, start + timedelta(seconds=30 * i), 10.497 + i * 1e-3, -66.90, speed=13.0) for i in range(3, 6)]
    async with running_ingest(settings_for(tmp_path), fleet.api.db_url) as svc, \
            connect(ws_url(fleet.api, fleet.a)) as ws:
        await receive(ws, "ready")
        await send(svc, A2_IMEI, outside)
        await receive(ws, "positions")
        await send(svc, A2_IMEI, inside)
        crossing = await receive(ws, "geofence")
        alert = await receive(ws, "alert")
    assert (crossing["event"], crossing["geofence_id"], crossing["device_id"]) == ("enter", zone["id"],
                                                                                  fleet.ids[A2_IMEI])
    # The alert is dated by fix time: the first fix inside (10.500), not the newest.
    assert alert["kind"] == "forbidden_enter" and alert["time"] == inside[0].fix_time.isoformat().replace("+00:00", "Z")
    async with client(fleet.api, fleet.a) as c:
        assert [a["id"] for a in (await c.get("/api/v1/geofence-alerts")).json()] == [alert["id"]]


async def test_the_stream_authenticates_by_query_header_or_cookie_and_refuses_the_rest(fleet: Fleet) -> None:
    api = fleet.api
    api.user("client", "ana@flota-a.example", "password-1", account="Flota A")
    async with client(api) as c:
        session = await c.post("/api/v1/auth/login", json={"email": "ana@flota-a.example", "password": "password-1"})
        assert (await c.get("/api/v1/live")).status_code == 426  # plain HTTP gets told to upgrade
    cookie = f"avl_session={session.json()['token']}"
    async with connect(ws_url(api), additional_headers={"Cookie": cookie}) as ws:
        assert (await receive(ws, "ready"))["account_id"] is not None
    async with connect(ws_url(api), additional_headers={"Authorization": f"Bearer {fleet.a}"}) as ws:
        await receive(ws, "ready")
    for url, code, error in ((ws_url(api), 4401, "unauthenticated"),
                             (ws_url(api, "avl_not-a-token"), 4401, "unauthenticated")):
        async with connect(url) as ws:
            assert (await receive(ws, "error"))["error"] == error
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == code
    with psycopg.connect(api.db_url) as conn:
        set_account_status(conn, "Flota A", "suspend")
    async with connect(ws_url(api, fleet.a)) as ws:
        assert (await receive(ws, "error"))["error"] == "account_suspended"
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
