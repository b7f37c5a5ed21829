"""Tenancy, proved by walking every route: a client of account A calls every route of the app
(read from the app itself, so a new route is walked without anyone listing it) with account B's
identifiers in its path, query and body. Every client route answers 404 for B's resources,
exactly like a missing one; every staff route answers 403; no response carries anything of B's;
B's data is unchanged afterwards. The live WebSocket of A carries none of B's reports.

B's data came in as real Queclink frames through a running ingest service, and through the API
(a zone, the alert its vehicle raised, a locate-now request, a ticket, a checklist run, a
certification): see ``tests.api.walk``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect

from api.app import create_app
from tests.api.conftest import Api
from tests.api.test_live import drain, receive, ws_url
from tests.api.walk import (
    Operation,
    Requests,
    World,
    create_zones,
    leaks,
    missing_value,
    operations,
    provision,
    record_cases,
    report,
    snapshot,
)
from tests.diagnostics.harness import reports, send_gl200
from tests.ingest.harness import running_ingest, settings_for

LOGOUT = "/api/v1/auth/logout"  # revokes the walker's own token: walked last


def _url(op: Operation, values: dict[str, Any]) -> str:
    path = op.path
    for name, value in values.items():
        path = path.replace("{" + name + "}", str(value))
    return path


def _combinations(op: Operation, values: dict[str, list[Any]]) -> list[dict[str, Any]]:
    names = op.path_params
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(values[n] for n in names))]


def _error(r: httpx.Response) -> tuple[str | None, str | None]:
    try:
        body = r.json()
    except ValueError:
        return None, None
    return (body.get("error"), body.get("message")) if isinstance(body, dict) else (None, None)


def _normalised(message: str | None, values: dict[str, Any]) -> str | None:
    """The message with the identifiers asked for replaced by their names."""
    if message is None:
        return None
    for name, value in values.items():
        message = re.sub(rf"(?<![\w-]){re.escape(str(value))}(?![\w-])", "{" + name + "}", message)
    return message


def _request(c: httpx.Client, requests: Requests, op: Operation, url: str) -> httpx.Response:
    query, body = requests.build(op)
    return c.request(op.method, url, params=query, json=body)


def _shown(r: httpx.Request, b: dict[str, list[Any]]) -> str:
    """The request as walked, with the body fields that carry B's identifiers."""
    shown = r.url.raw_path.decode()
    if r.content:
        body = json.loads(r.content)
        ours = {k: v for k, v in body.items() if k in b and v in b[k]} if isinstance(body, dict) else {}
        shown += f"  body {json.dumps(ours)}" if ours else "  body"
    return shown


async def build(api: Api, tmp_path: Path) -> World:
    world = provision(api)
    create_zones(world)
    await report(world, tmp_path)
    record_cases(world)
    return world


async def test_a_client_walking_every_route_with_another_accounts_identifiers_finds_nothing_of_it(
        api: Api, tmp_path: Path) -> None:
    world = await build(api, tmp_path)
    app = create_app(api.db_url)  # the served app's twin: its routes and their dependencies
    every = operations(app)
    with api.client() as c:
        document = c.get("/api/v1/openapi.json").json()

    # The walk covers the whole app: the routes the document describes are the app's routes.
    http = [op for op in every if op.method != "WEBSOCKET"]
    documented = {(method.upper(), path) for path, methods in document["paths"].items() for method in methods}
    assert documented == {(op.method, op.path) for op in http if op.in_schema}
    assert [str(op) for op in every if op.method == "WEBSOCKET"] == ["WEBSOCKET /api/v1/live"], \
        "a new WebSocket route needs its own tenancy test (see the live test below)"
    values = world.b_values()
    unmapped = sorted({f"{op} {{{name}}}" for op in http for name in op.path_params if name not in values})
    assert not unmapped, f"path parameters with no B identifier mapped (add them to World.b_values): {unmapped}"

    # The identifiers are B's real resources: B (or, for staff routes, an admin) reaches each one.
    with api.client(world.b.token) as cb, api.client(world.admin) as ca:
        for op in http:
            if op.method != "GET" or not op.path_params:
                continue
            for combo in _combinations(op, values):
                if op.admits("client"):
                    r = cb.get(_url(op, combo))
                    assert r.status_code == 200, f"B cannot read its own {op} {combo}: {r.status_code} {r.text}"
                else:
                    r = ca.get(_url(op, combo))
                    assert r.status_code < 500 and r.status_code != 404, f"admin: {op} {combo}: {r.text}"
    # And A's own data is there to be seen: list routes are not empty by accident.
    with api.client(world.a.token) as c:
        assert set(world.a.devices) <= {v["identifier"] for v in c.get("/api/v1/vehicles").json()}
        assert [g["name"] for g in c.get("/api/v1/geofences").json()] == [world.a.geofence_name]

    before = snapshot(api.db_url, world.b)
    requests = Requests(document, values)
    problems: list[str] = []
    outcomes: Counter[str] = Counter()
    lines: list[str] = []
    with api.client(world.a.token) as c:
        for op in sorted(http, key=lambda o: o.path == LOGOUT):
            for combo in _combinations(op, values):
                url = _url(op, combo)
                r = _request(c, requests, op, url)
                code, message = _error(r)
                where = f"{op.method} {_shown(r.request, values)} -> {r.status_code} {r.text[:200]}"
                if r.status_code >= 500:
                    problems.append(f"server error: {where}")
                problems += [f"leak of B's data ({what}): {where}" for what in leaks(r, world.b, structured=op.authenticated)]
                if not op.authenticated:
                    outcome = f"public, {r.status_code}"
                elif not op.admits("client"):
                    outcome = "403 staff only"
                    if (r.status_code, code) != (403, "forbidden"):
                        problems.append(f"staff route not refused to a client with 403 forbidden: {where}")
                elif op.path_params:
                    outcome = "404 like a missing one"
                    missing = {name: missing_value(name) for name in combo}
                    m = _request(c, requests, op, _url(op, missing))
                    m_code, m_message = _error(m)
                    if (r.status_code, code) != (404, "not_found"):
                        problems.append(f"B's resource not answered 404 not_found: {where}")
                    elif (m.status_code, m_code, _normalised(m_message, missing)) != \
                            (r.status_code, code, _normalised(message, combo)):
                        problems.append(f"B's resource answered unlike a missing one: {where}; missing:"
                                        f" {m.status_code} {m.text[:200]}")
                else:
                    outcome = f"{r.status_code} {'own data only' if r.status_code < 300 else code}"
                    if r.status_code == 403:
                        problems.append(f"client route refused to a client: {where}")
                outcomes[outcome] += 1
                lines.append(f"  {outcome:<24} {op.method:<6} {_shown(r.request, values)}")
    after = snapshot(api.db_url, world.b)

    print(f"\nTenancy walk as a client of {world.a.name!r} with {world.b.name!r}'s identifiers:"
          f" {len(lines)} requests over {len(http)} operations (+ WEBSOCKET /api/v1/live, walked by the live test)")
    for outcome, n in sorted(outcomes.items()):
        print(f"  {n:3d}  {outcome}")
    print("\n".join(sorted(lines)))
    changed = [table for table in before if before[table] != after[table]]
    for table in changed:
        problems.append(f"B's {table} changed during the walk: {json.dumps(before[table])[:300]} ->"
                        f" {json.dumps(after[table])[:300]}")
    assert not problems, "\n".join(problems)
    assert outcomes["404 like a missing one"] and outcomes["403 staff only"]


async def test_the_live_stream_of_a_client_carries_none_of_another_accounts_reports(api: Api, tmp_path: Path) -> None:
    world = provision(api)
    create_zones(world)
    (a1, *_), (b1, b2) = world.a.devices, world.b.devices
    # A asks for B's account on the stream too: a client's stream is its own account's whatever it asks.
    a_url = ws_url(api, world.a.token) + f"&account_id={world.b.account_id}"
    async with running_ingest(settings_for(tmp_path), api.db_url) as svc, \
            connect(a_url) as ws_a, connect(ws_url(api, world.b.token)) as ws_b:
        assert (await receive(ws_a, "ready"))["account_id"] == world.a.account_id
        await receive(ws_b, "ready")
        port = svc.tcp["gl200"].port
        track = reports(b1, 20, minutes_ago=0.5)
        await send_gl200(port, track[:5])
        await receive(ws_b, "positions")
        await send_gl200(port, track[5:])  # into B's forbidden zone
        b_alert = await receive(ws_b, "alert")
        await send_gl200(port, reports(b2, 5, minutes_ago=2.0, frozen=True))
        await send_gl200(port, reports(a1, 10, minutes_ago=1.0))
        a_messages: list[dict[str, Any]] = []
        async with asyncio.timeout(10):  # until A's own vehicle shows up (A's stream works), keeping everything
            while not any(m["type"] == "positions" for m in a_messages):
                a_messages.append(json.loads(await ws_a.recv()))
        a_messages += await drain(ws_a, 1.0)
        b_messages = await drain(ws_b, 1.0)
    assert b_alert["device_id"] == world.b.devices[b1]
    b_seen = {p["device_id"] for m in b_messages if m["type"] == "positions" for p in m["positions"]}
    assert world.b.devices[b2] in b_seen  # B's stream works: B's second vehicle reached it
    seen = {p["device_id"] for m in a_messages if m["type"] == "positions" for p in m["positions"]}
    assert seen <= {world.a.devices[a1]}
    assert not [m for m in a_messages if m["type"] in ("geofence", "alert", "events")]
    text = json.dumps(a_messages)
    assert not [marker for marker in world.b.markers() if marker in text]
    b_ids = set(world.b.devices.values())
    assert not [m for m in a_messages if m.get("device_id") in b_ids
                or any(p.get("device_id") in b_ids for p in m.get("positions", []))]
