"""The live WebSocket over a real server: positions and events committed by a running ingest
service reach the account's streams (and only theirs), zone entries come with their alert,
streams open with single-use tickets, and losing access (token revoked, user deactivated,
password changed, account suspended or retired) closes exactly the streams concerned at once,
while a device keeps reporting every second."""

from __future__ import annotations

import asyncio
import contextlib
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
from ingest.service import IngestService
from tests.api.conftest import Api
from tests.api.test_fleet import A2_IMEI, A_IMEI, B_IMEI, ZONE, Fleet, at, make_fleet, send
from tests.ingest.harness import exchange, running_ingest, settings_for

GT06_IMEI = "868120200000019"


def ws_url(api: Api, token: str | None = None) -> str:
    """The stream's URL: with a fresh single-use ticket obtained with ``token``, else bare."""
    base = api.url.replace("http://", "ws://")
    if token is None:
        return base + "/api/v1/live"
    with api.client(token) as c:
        r = c.post("/api/v1/live/tickets")
    assert r.status_code == 201, r.text
    return base + r.json()["url"]


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


async def refused(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """The close code and the error message of a stream the server refuses."""
    async with connect(url, additional_headers=headers or {}) as ws:
        error = await receive(ws, "error")
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, error


async def test_the_stream_opens_with_a_single_use_ticket_or_a_header_never_a_token_in_the_url(fleet: Fleet) -> None:
    api = fleet.api
    api.user("client", "ana@flota-a.example", "tranvia-azul-1948", account="Flota A")
    async with client(api) as c:
        session = (await c.post("/api/v1/auth/login", json={"email": "ana@flota-a.example",
                                                            "password": "tranvia-azul-1948"})).json()["token"]
        assert (await c.get("/api/v1/live")).status_code == 426  # plain HTTP gets told to upgrade
        # The console: the session cookie buys a ticket, the ticket opens the stream.
        ticket = (await c.post("/api/v1/live/tickets")).json()
    url = ws_url(api) + "?ticket=" + ticket["ticket"]
    async with connect(url) as ws:
        assert (await receive(ws, "ready"))["account_id"] is not None
    code, error = await refused(url)  # used once already
    assert (code, error["error"]) == (4401, "unauthenticated") and "ticket" in error["message"]
    stale = ws_url(api, session)
    with psycopg.connect(api.db_url) as conn:
        conn.execute("UPDATE live_tickets SET expires_at = now() - interval '1 second'")
    assert (await refused(stale))[0] == 4401
    # Programs may send the bearer header on the upgrade request.
    async with connect(ws_url(api), additional_headers={"Authorization": f"Bearer {fleet.a}"}) as ws:
        await receive(ws, "ready")
    # A token in the URL is refused, even a valid one; so are no credentials and a cookie alone.
    code, error = await refused(ws_url(api) + f"?token={fleet.a}")
    assert code == 4401 and "?token=" in error["message"]
    assert (await refused(ws_url(api)))[0] == 4401
    assert (await refused(ws_url(api), {"Cookie": f"avl_session={session}"}))[0] == 4401
    assert (await refused(ws_url(api), {"Authorization": "Bearer avl_not-a-token"}))[0] == 4401
    with psycopg.connect(api.db_url) as conn:
        set_account_status(conn, "Flota A", "suspend")
    async with client(api, fleet.a) as c:
        r = await c.post("/api/v1/live/tickets")
        assert r.status_code == 403 and r.json()["error"] == "account_suspended"
    code, error = await refused(ws_url(api), {"Authorization": f"Bearer {fleet.a}"})
    assert (code, error["error"]) == (4403, "account_suspended")


async def report_every_second(svc: IngestService, imei: str, stop: asyncio.Event) -> None:
    """A terminal reporting once a second (fix time now) until ``stop``."""
    i = 0
    while not stop.is_set():
        now = datetime.now(UTC)
        await send(svc, imei, [at(imei, now.replace(microsecond=now.microsecond // 1000 * 1000),
                                  10.49 + i * 1e-4, -66.88, speed=30.0)])
        i += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


async def closes(ws: ClientConnection) -> tuple[int, dict[str, Any], int]:
    """Waits (up to 10 s) for the server to close ``ws``: its close code, its error message and how
    many position messages came after this call."""
    pushes, error = 0, {}
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(10):
            while True:
                message = json.loads(await ws.recv())
                pushes += message["type"] == "positions"
                error = message if message["type"] == "error" else error
    assert closed.value.rcvd is not None, "closed without a close frame"
    return closed.value.rcvd.code, error, pushes


async def still_live(*streams: ClientConnection) -> None:
    for ws in streams:
        await receive(ws, "positions")


async def test_losing_access_closes_exactly_the_streams_concerned_while_the_device_reports(
        fleet: Fleet, tmp_path: Path) -> None:
    api = fleet.api
    admin = api.token("admin", "root")
    for name in ("uno", "dos", "tres", "cuatro"):
        api.user("client", f"{name}@flota-a.example", "tranvia-azul-1948", account="Flota A")
    with psycopg.connect(api.db_url) as conn:
        users = dict(conn.execute("SELECT email, id FROM users").fetchall())
    uno = api.token("client", "uno-stream", email="uno@flota-a.example", account="Flota A")
    dos = api.token("client", "dos", email="dos@flota-a.example", account="Flota A")
    cuatro = api.token("client", "cuatro", email="cuatro@flota-a.example", account="Flota A")
    sessions = []
    for _ in range(2):  # "tres" on two consoles
        async with client(api) as c:
            sessions.append((await c.post("/api/v1/auth/login", json={"email": "tres@flota-a.example",
                                                                      "password": "tranvia-azul-1948"})).json()["token"])
    stop = asyncio.Event()
    async with running_ingest(settings_for(tmp_path), api.db_url) as svc, \
            connect(ws_url(api, uno)) as s_uno, connect(ws_url(api, dos)) as s_dos, \
            connect(ws_url(api, sessions[0])) as s_tres, connect(ws_url(api, cuatro)) as s_cuatro, \
            connect(ws_url(api, fleet.b)) as s_b, connect(ws_url(api, fleet.support)) as s_staff:
        everyone = (s_uno, s_dos, s_tres, s_cuatro, s_b, s_staff)
        for ws in everyone:
            await receive(ws, "ready")
        reporters = [asyncio.create_task(report_every_second(svc, imei, stop)) for imei in (A_IMEI, B_IMEI)]
        try:
            await still_live(*everyone)
            async with client(api, admin) as c:  # an administrator revokes uno's token (the API)
                token_id = next(t["id"] for t in (await c.get("/api/v1/admin/tokens")).json() if t["name"] == "uno-stream")
                assert (await c.post(f"/api/v1/admin/tokens/{token_id}/revoke")).status_code == 200
            code, error, late = await closes(s_uno)
            assert (code, error["message"], late <= 1) == (4401, "the token was revoked", True)
            await still_live(s_dos, s_tres, s_cuatro, s_b, s_staff)

            async with client(api, admin) as c:  # dos is deactivated (the API)
                assert (await c.post(f"/api/v1/admin/users/{users['dos@flota-a.example']}/deactivate")).status_code == 200
            code, error, late = await closes(s_dos)
            assert (code, error["error"], late <= 1) == (4401, "unauthenticated", True)
            await still_live(s_tres, s_cuatro, s_b, s_staff)

            async with client(api, sessions[1]) as c:  # tres changes the password on the other console
                r = await c.post("/api/v1/auth/password", json={"current_password": "tranvia-azul-1948",
                                                               "new_password": "ocho caballos de mar"})
                assert r.status_code == 204
            code, error, late = await closes(s_tres)
            assert (code, error["message"], late <= 1) == (4401, "the password was changed", True)
            await still_live(s_cuatro, s_b, s_staff)

            with psycopg.connect(api.db_url) as conn:  # the billing side suspends Flota A (`avl account suspend`)
                set_account_status(conn, "Flota A", "suspend")
            code, error, late = await closes(s_cuatro)
            assert (code, error["error"], late <= 1) == (4403, "account_suspended", True)
            await still_live(s_b, s_staff)

            with psycopg.connect(api.db_url) as conn:  # Flota B's service is retired
                set_account_status(conn, "Flota B", "retire")
            code, error, late = await closes(s_b)
            assert (code, error["error"], late <= 1) == (4403, "account_retired", True)
            await still_live(s_staff)  # support staff see every account throughout
        finally:
            stop.set()
            await asyncio.gather(*reporters)
