"""The cross-tenant walk's helpers: two accounts whose data came in as real frames through a
running ingest service, the application's routes with the roles they admit (read from their
``require(...)`` dependencies, not listed by hand), minimal valid requests generated from the
OpenAPI document, and the checks that none of one account's data reaches the other.

Account B is the victim: vehicles with positions, a zone, the alert its vehicle raised by
entering it, a locate-now request, a ticket, a checklist run and a certification. Account A
is the client walking every route with B's identifiers.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from fastapi import FastAPI
from starlette.routing import BaseRoute, Mount, WebSocketRoute
from starlette.staticfiles import StaticFiles

from avl.admin import DeviceSpec, add_account, add_center, add_device, create_token
from tests.api.conftest import Api
from tests.diagnostics.harness import reports, send_gl200
from tests.ingest.harness import running_ingest, settings_for

CENTER = ("Centro Chacao", 10.4961, -66.8530)

# Every string here is unique to its account, so finding one of B's in a response to A is a leak.
A_ACCOUNT = "Flota Ámbar Walk"
A_DEVICES = [("862170018000011", "AMB100A", "584148000011")]
B_ACCOUNT = "Transportes Zafiro Bravo"
B_CONTACT = "584129990002"
B_DEVICES = [("353201019000021", "ZFB901Q", "584149000021"), ("353201019000039", "ZFB902Q", "584149000039")]
B_EMAIL = "operaciones@zafiro-bravo.example"
# B's motorcycle (identifier, plate, its replacement terminal): an engineering review and a replacement.
B_MOTO = ("353201019000047", "ZFB903M", "353201019000054")
B_ZONE_NAME = "Zafiro depósito prohibido"
A_ZONE_NAME = "Ámbar patio"


def _ring(min_lon: float, min_lat: float, max_lon: float, max_lat: float) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": [[[min_lon, min_lat], [max_lon, min_lat], [max_lon, max_lat],
                                                [min_lon, max_lat], [min_lon, min_lat]]]}


# B's first vehicle drives north-east from Altamira (tests.diagnostics.harness.reports) into this zone.
B_ZONE = _ring(-66.8444, 10.4986, -66.8300, 10.5100)  # its 7th report (i = 6) is the first inside
A_ZONE = _ring(-66.9500, 10.4000, -66.9400, 10.4100)


@dataclass
class Tenant:
    """One account, its client, and the identifiers of what it owns."""

    name: str
    account_id: int
    token: str
    user_id: int
    user_email: str
    token_id: int
    devices: dict[str, int]                 # identifier -> device id
    plates: dict[str, int]                  # plate -> vehicle id
    msisdns: list[str]
    geofence_id: int = 0
    geofence_name: str = ""
    alert_id: int = 0
    locate_id: int = 0
    ticket_id: int = 0
    ticket_number: str = ""
    run_id: int = 0
    cert_id: int = 0
    review_id: int = 0
    replacement_id: int = 0
    extra_markers: list[str] = field(default_factory=list)

    def markers(self) -> list[str]:
        """Strings that only this account's data contains."""
        found = [self.name, self.user_email, *self.devices, *self.plates, *self.msisdns, *self.extra_markers]
        if self.geofence_name:
            found.append(self.geofence_name)
        if self.ticket_number:
            found.append(self.ticket_number)
        return found


@dataclass
class World:
    api: Api
    a: Tenant
    b: Tenant
    support: str
    admin: str
    installer: str
    center_id: int

    def b_values(self) -> dict[str, list[Any]]:
        """Path (and body, query) parameter name -> B's identifiers for it. A route with a path
        parameter not named here fails the walk: map it before adding the route."""
        b = self.b
        return {
            "device_id": list(b.devices.values()),
            "vehicle_id": list(b.plates.values()),
            "geofence_id": [b.geofence_id],
            "alert_id": [b.alert_id],
            "request_id": [b.locate_id],
            "run_id": [b.run_id],
            "ref": [b.ticket_id, b.ticket_number],
            "cert_id": [b.cert_id],
            "account_id": [b.account_id],
            "user_id": [b.user_id],
            "token_id": [b.token_id],
            "center_id": [self.center_id],
            "review_id": [b.review_id],
            "replacement_id": [b.replacement_id],
            # The console's message catalogues: public, the same for everyone (not B's data).
            "lang": ["es", "en"],
            "namespace": ["console"],
        }


def missing_value(param: str) -> Any:
    """An identifier nothing has: what a missing resource answers is what B's must answer."""
    return "AVL-2099-999999" if param == "ref" else 987_654_321


# World -------------------------------------------------------------------------------------


def _client(db_url: str, account: str, name: str, email: str) -> tuple[str, int, int]:
    """A client user of the account with an API token: (token, user id, token id)."""
    with psycopg.connect(db_url) as conn:
        user, token = create_token(conn, "client", name=name, email=email, account=account)
        row = conn.execute("SELECT max(id) FROM api_tokens WHERE user_id = %s", (user["id"],)).fetchone()
    assert row is not None
    return token, int(user["id"]), int(row[0])


def provision(api: Api) -> World:
    """Both accounts, their terminals (gl200, installed at Centro Chacao), clients and staff."""
    with psycopg.connect(api.db_url) as conn:
        a_id = int(add_account(conn, A_ACCOUNT)["id"])
        b_id = int(add_account(conn, B_ACCOUNT, contact_msisdn=B_CONTACT)["id"])
        center_id = int(add_center(conn, *CENTER)["id"])
        ids: dict[str, dict[str, int]] = {A_ACCOUNT: {}, B_ACCOUNT: {}}
        for account, devices in ((A_ACCOUNT, A_DEVICES), (B_ACCOUNT, B_DEVICES)):
            for ident, plate, msisdn in devices:
                ids[account][ident] = int(add_device(conn, DeviceSpec(
                    identifier=ident, protocol="gl200", account=account, plate=plate, msisdn=msisdn,
                    report_interval_s=30, center=CENTER[0], installed_at=date.today() - timedelta(days=60)))["id"])
        plates = {plate: int(vid) for plate, vid in conn.execute("SELECT plate, id FROM vehicles").fetchall()}
    tenants = []
    for account, account_id, devices, email in ((A_ACCOUNT, a_id, A_DEVICES, "despacho@ambar-walk.example"),
                                                (B_ACCOUNT, b_id, B_DEVICES, B_EMAIL)):
        token, user_id, token_id = _client(api.db_url, account, f"Despacho {account}", email)
        tenants.append(Tenant(account, account_id, token, user_id, email, token_id, ids[account],
                              {p: plates[p] for _, p, _ in devices}, [m for _, _, m in devices]))
    a, b = tenants
    b.extra_markers.append(B_CONTACT)
    return World(api, a, b, support=api.token("support", "Mesa de ayuda"), admin=api.token("admin", "Raíz"),
                 installer=api.token("installer", "Taller Chacao", center=CENTER[0]), center_id=center_id)


def create_zones(world: World) -> None:
    for tenant, name, zone in ((world.a, A_ZONE_NAME, A_ZONE), (world.b, B_ZONE_NAME, B_ZONE)):
        with world.api.client(tenant.token) as c:
            r = c.post("/api/v1/geofences", json={"name": name, "kind": "forbidden", "geometry": zone})
        assert r.status_code == 201, r.text
        tenant.geofence_id, tenant.geofence_name = r.json()["id"], name


async def report(world: World, tmp_path: Path) -> None:
    """Every terminal reports through a real ingest service (Queclink frames over TCP, each
    acknowledged once committed); B's first vehicle drives into B's forbidden zone."""
    async with running_ingest(settings_for(tmp_path), world.api.db_url) as svc:
        port = svc.tcp["gl200"].port
        (a1, *_), (b1, b2) = world.a.devices, world.b.devices
        await send_gl200(port, reports(a1, 10, minutes_ago=1.0))
        await send_gl200(port, reports(b1, 20, minutes_ago=0.5))
        await send_gl200(port, reports(b2, 5, minutes_ago=2.0, frozen=True))


def record_cases(world: World) -> None:
    """What B's account accumulates through the API: the alert (zone events), a locate-now
    request, a ticket, a checklist run and a certification."""
    b, api = world.b, world.api
    b1 = next(iter(b.devices.values()))
    now = datetime.now(UTC)
    span = {"from": (now - timedelta(hours=1)).isoformat(), "to": (now + timedelta(minutes=1)).isoformat()}
    with api.client(b.token) as c:
        events = c.get(f"/api/v1/vehicles/{b1}/geofence-events", params=span)
        assert events.status_code == 200 and events.json()["alerts"], events.text
        b.alert_id = events.json()["alerts"][0]["id"]
        locate = c.post(f"/api/v1/vehicles/{b1}/locate")
        assert locate.status_code == 201, locate.text
        b.locate_id = locate.json()["id"]
    with api.client(world.support) as c:
        ticket = c.post("/api/v1/support/tickets", json={
            "type": "technical", "category": "gps_check", "title": "ZFB901Q: cliente reporta posición congelada",
            "account_id": b.account_id, "device_id": b1,
            "activity": {"channel": "phone", "reason": "llamada del cliente Zafiro"}})
        assert ticket.status_code == 201, ticket.text
        b.ticket_id, b.ticket_number = ticket.json()["id"], ticket.json()["number"]
        run = c.post(f"/api/v1/support/devices/{b1}/diagnostics")
        assert run.status_code == 202, run.text
        b.run_id = run.json()["id"]
    with api.client(world.installer) as c:
        cert = c.post("/api/v1/installers/certifications", json={"device_id": b1})
        assert cert.status_code == 201, cert.text
        b.cert_id = cert.json()["id"]
    # The installation lifecycle: a motorcycle's engineering review and the replacement of its
    # terminal, on a vehicle kept out of b.devices (its first terminal leaves the account).
    with api.client(world.installer) as c:
        moto = c.post("/api/v1/installers/installations", json={
            "identifier": B_MOTO[0], "protocol": "gl200", "plate": B_MOTO[1], "supply_voltage_v": 12,
            "kind": "motorcycle", "account_id": b.account_id})
        assert moto.status_code == 201, moto.text
        b.review_id = moto.json()["engineering_review"]["id"]
        swap = c.post("/api/v1/installers/replacements",
                      json={"plate": B_MOTO[1], "identifier": B_MOTO[2], "protocol": "gl200"})
        assert swap.status_code == 201, swap.text
        b.replacement_id = swap.json()["id"]
    b.extra_markers.extend(B_MOTO)


SNAPSHOT_SQL = {
    "accounts": "SELECT to_jsonb(x) FROM accounts x WHERE id = %(account)s",
    "devices": "SELECT to_jsonb(x) FROM devices x WHERE account_id = %(account)s",
    "vehicles": "SELECT to_jsonb(x) FROM vehicles x WHERE account_id = %(account)s",
    "positions": "SELECT jsonb_build_object('device', device_id, 'n', count(*)) FROM positions"
                 " WHERE device_id = ANY(%(devices)s) GROUP BY device_id",
    "geofences": "SELECT to_jsonb(x) FROM geofences x WHERE account_id = %(account)s",
    "geofence_alerts": "SELECT to_jsonb(x) FROM geofence_alerts x WHERE account_id = %(account)s",
    "locate_requests": "SELECT to_jsonb(x) FROM locate_requests x WHERE account_id = %(account)s",
    "billable_events": "SELECT to_jsonb(x) FROM billable_events x WHERE account_id = %(account)s",
    "sms_messages": "SELECT to_jsonb(x) FROM sms_messages x WHERE device_id = ANY(%(devices)s)",
    "tickets": "SELECT to_jsonb(x) FROM tickets x WHERE account_id = %(account)s",
    "ticket_activities": "SELECT to_jsonb(x) FROM ticket_activities x JOIN tickets t ON t.id = x.ticket_id"
                         " WHERE t.account_id = %(account)s",
    "diagnostic_runs": "SELECT to_jsonb(x) FROM diagnostic_runs x WHERE device_id = ANY(%(devices)s)",
    "certifications": "SELECT to_jsonb(x) FROM certifications x WHERE device_id = ANY(%(devices)s)",
    "users": "SELECT to_jsonb(x) FROM users x WHERE account_id = %(account)s",
    "api_tokens": "SELECT to_jsonb(x) - 'last_used_at' FROM api_tokens x JOIN users u ON u.id = x.user_id"
                  " WHERE u.account_id = %(account)s",
}


def snapshot(db_url: str, tenant: Tenant) -> dict[str, list[str]]:
    """Everything the tenant owns, as sorted JSON rows: compared before and after the walk."""
    params = {"account": tenant.account_id, "devices": list(tenant.devices.values())}
    out = {}
    with psycopg.connect(db_url) as conn:
        for table, query in SNAPSHOT_SQL.items():
            out[table] = sorted(json.dumps(r[0], sort_keys=True) for r in conn.execute(query, params).fetchall())
    return out


# Routes ------------------------------------------------------------------------------------

PATH_PARAM = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?}")


@dataclass(frozen=True)
class Operation:
    method: str                  # HTTP method, or "WEBSOCKET"
    path: str
    roles: frozenset[str]        # the roles its require(...) admits (empty: any authenticated user)
    authenticated: bool          # depends on the current user (or is a WebSocket, which authenticates itself)
    in_schema: bool

    @property
    def path_params(self) -> list[str]:
        return PATH_PARAM.findall(self.path)

    def admits(self, role: str) -> bool:
        """Whether the route's declared roles admit ``role`` (admins are admitted everywhere)."""
        return role == "admin" or not self.roles or role in self.roles

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def _flat(routes: Sequence[BaseRoute], prefix: str = "") -> Iterator[tuple[str, BaseRoute]]:
    """(path prefix, route) for every route, included routers and mounted sub-applications opened."""
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI >= 0.120 keeps included routers lazily
        if included is not None:
            yield from _flat(included.routes, prefix)
        elif isinstance(route, Mount) and not isinstance(route.app, StaticFiles):
            assert route.routes, f"a mounted application the walk cannot enumerate: {route.path}"
            yield from _flat(route.routes, prefix + route.path)
        else:
            yield prefix, route


def _static_files(mount: Mount) -> list[str]:
    """The paths a static-files mount serves: one public GET each."""
    assert isinstance(mount.app, StaticFiles)
    out = []
    for directory in mount.app.all_directories:
        root = Path(directory)
        out += [f"{mount.path}/{f.relative_to(root).as_posix()}" for f in sorted(root.rglob("*")) if f.is_file()]
    return out


def _dependency_calls(dependant: Any) -> Iterator[Any]:
    if dependant.call is not None:
        yield dependant.call
    for sub in dependant.dependencies:
        yield from _dependency_calls(sub)


def operations(app: FastAPI) -> list[Operation]:
    """Every route of the app, one per method, with the roles read off its dependencies:
    ``api.deps.require(*roles)`` returns a closure ``check`` over ``roles``."""
    from api.deps import current_user

    out = []
    for prefix, route in _flat(app.routes):
        if isinstance(route, Mount):  # static files: public, no data
            out += [Operation("GET", path, frozenset(), False, False) for path in _static_files(route)]
            continue
        path = getattr(route, "path", None)
        assert isinstance(path, str), f"a route without a path: {route!r}"
        path = prefix + path
        roles: set[str] = set()
        authenticated = False
        dependant = getattr(route, "dependant", None)
        for call in _dependency_calls(dependant) if dependant is not None else ():
            if call is current_user:
                authenticated = True
            if inspect.isfunction(call) and call.__name__ == "check":
                declared = inspect.getclosurevars(call).nonlocals.get("roles")
                if declared is not None:
                    roles |= set(declared)
        in_schema = bool(getattr(route, "include_in_schema", False))
        if isinstance(route, WebSocketRoute) or type(route).__name__ == "APIWebSocketRoute":
            out.append(Operation("WEBSOCKET", path, frozenset(roles), True, False))
            continue
        for method in sorted(getattr(route, "methods", None) or ()):
            out.append(Operation(method, path, frozenset(roles), authenticated, in_schema))
    return out


# Requests from the OpenAPI document ---------------------------------------------------------


class Requests:
    """Minimal valid requests for an operation, from its OpenAPI description: required
    parameters and body fields from their examples (or defaults, or their type), and every
    parameter or field named like one of B's identifiers set to B's."""

    def __init__(self, document: dict[str, Any], values: Mapping[str, list[Any]]) -> None:
        self.document = document
        self.values = values

    def _resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[-1]
            schema = {**self.document["components"]["schemas"][name],
                      **{k: v for k, v in schema.items() if k != "$ref"}}
        for key in ("anyOf", "oneOf"):
            if key in schema:  # Optional[X]: X
                options = [self._resolve(s) for s in schema[key] if s.get("type") != "null"]
                merged = {**options[0], **{k: v for k, v in schema.items() if k != key}}
                return merged
        return schema

    def _identifier(self, name: str, schema: dict[str, Any]) -> Any:
        if name in self.values and schema.get("type") == "integer":
            return next(v for v in self.values[name] if isinstance(v, int))
        return None

    def sample(self, schema: dict[str, Any], name: str = "") -> Any:
        schema = self._resolve(schema)
        mapped = self._identifier(name, schema)
        if mapped is not None:
            return mapped
        kind = schema.get("type")
        if kind == "object" or "properties" in schema:
            base = dict(schema["examples"][0]) if schema.get("examples") else {}
            properties: dict[str, Any] = schema.get("properties", {})
            for prop, prop_schema in properties.items():
                resolved = self._resolve(prop_schema)
                if self._identifier(prop, resolved) is not None:
                    base[prop] = self._identifier(prop, resolved)
                elif prop in schema.get("required", []) and prop not in base:
                    base[prop] = self.sample(prop_schema, prop)
            return base
        for key in ("examples", "example", "default", "const", "enum"):
            if key in schema and schema[key] is not None:
                value = schema[key]
                return value[0] if key in ("examples", "enum") else value
        if kind == "array":
            return [self.sample(schema.get("items", {}))] if schema.get("minItems") else []
        if kind == "integer":
            low = schema.get("minimum", schema.get("exclusiveMinimum", 0) + 1)
            return max(int(low), 1)
        if kind == "number":
            return float(schema.get("minimum", 1.0))
        if kind == "boolean":
            return True
        fmt = schema.get("format")
        if fmt == "date-time":
            return datetime.now(UTC).isoformat()
        if fmt == "date":
            return date.today().isoformat()
        text = "walk-" + name
        return text.ljust(int(schema.get("minLength", 0)), "x")

    def operation(self, op: Operation) -> dict[str, Any]:
        described: dict[str, Any] = self.document["paths"].get(op.path, {}).get(op.method.lower(), {})
        return described

    def build(self, op: Operation) -> tuple[dict[str, Any], Any]:
        """(query parameters, JSON body or None)."""
        described = self.operation(op)
        query = {}
        for p in described.get("parameters", []):
            if p["in"] != "query":
                continue
            schema = self._resolve(p.get("schema", {}))
            mapped = self._identifier(p["name"], schema)
            if mapped is not None:
                query[p["name"]] = mapped
            elif p.get("required"):
                query[p["name"]] = self.sample(p.get("schema", {}), p["name"])
        body = None
        content = described.get("requestBody", {}).get("content", {})
        if "application/json" in content:
            body = self.sample(content["application/json"]["schema"])
        return query, body


# Checks ------------------------------------------------------------------------------------


def leaks(response: httpx.Response, victim: Tenant, *, structured: bool = True) -> list[str]:
    """What of the victim's a response carries: its strings anywhere in the body or headers, and
    (``structured``: data, not the OpenAPI document's examples) JSON objects naming its account,
    its devices or its vehicles."""
    found = []
    text = response.text
    headers = " ".join(f"{k}: {v}" for k, v in response.headers.items())
    for marker in victim.markers():
        if marker in text or marker in headers:
            found.append(f"contains {marker!r}")
    if not structured:
        return found
    try:
        body = response.json()
    except ValueError:
        return found
    devices = set(victim.devices.values())
    vehicles = set(victim.plates.values())

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            for key, owned in (("account_id", {victim.account_id}), ("device_id", devices), ("vehicle_id", vehicles)):
                value = node.get(key)
                if isinstance(value, int) and value in owned:
                    found.append(f"an object with {key} {value}: {json.dumps(node)[:160]}")
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(body)
    return found
