"""The demo: one corporate account in Caracas whose vehicles are a virtual fleet on the real
wire protocols, an SMPP SMSC the fleet's handsets (and the account contact's phone) are bound
to, and the users of the three roles (plus an admin) with tokens and console passwords.

What the fleet carries is fixed here and printed when the demo starts: a few faults for the
support desk, on named plates from a given time, and one vehicle parked at an installation
center with its ignition switched on and off, ready for a certification to pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from pydantic import SecretStr

from avl.admin import add_account, add_center, create_token, set_password
from avl.config import ConfigError, Settings, redact_url
from simulators.fleet.motion import Motion, State
from simulators.fleet.terminals import Behaviour, VehicleSpec

log = logging.getLogger("avl.demo")

ACCOUNT = "Demo Logistics"
CONTACT = ("Flota Demo", "584120000000", "flota@demo.example")  # name, mobile (customer notices), email
CENTERS = [
    ("Centro de Instalación Chacao", 10.4961, -66.8530),
    ("Centro de Instalación Los Ruices", 10.4903, -66.8283),
]
VEHICLES = 12
PROTOCOLS = ("teltonika", "gt06", "gl200", "calamp", "h02", "osmand", "json")
INTERVAL_S = 10.0
PARKED_FACTOR = Behaviour().parked_factor  # parked, a report every this many intervals
SEED = 2026
# The vehicle waiting at the first center: ignition on this long, then off this long, again and again.
IGNITION_ON_S, IGNITION_OFF_S = 30.0, 15.0
SMPP_PASSWORD = "avl-secret"
PASSWORD = "demo-pass-2026"
USERS: tuple[tuple[str, str, str, dict[str, str]], ...] = (
    ("client", "Demo dispatcher", "dispatcher@demo.example", {"account": ACCOUNT}),
    ("support", "Demo support agent", "support@demo.example", {}),
    ("installer", "Demo installer", "installer@demo.example", {"center": CENTERS[0][0]}),
    ("admin", "Demo admin", "admin@demo.example", {}),
)


@dataclass(frozen=True)
class Fault:
    vehicle: VehicleSpec
    fault: str
    start_s: float  # after the fleet starts
    looks_like: str


@dataclass
class Composition:
    """The demo fleet: which vehicle carries which fault from when, and which one waits at a center."""

    specs: list[VehicleSpec]
    faults: list[Fault]
    waiting: VehicleSpec
    started_at: float | None = None  # wall time the fleet started

    def spec(self) -> str:
        return ",".join(f"{f.vehicle.identifier}={f.fault}" + (f"@{f.start_s:g}" if f.start_s else "")
                        for f in self.faults)


def composition() -> Composition:
    from simulators.fleet import make_specs

    specs = make_specs(VEHICLES, PROTOCOLS, INTERVAL_S, SEED)

    def first(protocol: str, n: int = 0) -> VehicleSpec:
        return [s for s in specs if s.protocol == protocol][n]

    waiting, data_down, no_fix, powered_off = first("teltonika", 1), first("teltonika"), first("gt06"), first("h02")
    taken = {waiting.index, data_down.index, no_fix.index, powered_off.index}
    twelve_volt = [s for s in specs if s.supply_voltage_v == 12 and s.index not in taken]
    voltage = next((s for s in twelve_volt if s.protocol == "gl200"), twelve_volt[0])
    faults = [
        Fault(no_fix, "no_fix", 0, "no GPS fix: reports go on at the last position, marked invalid"),
        Fault(voltage, "voltage_24v", 0, "25-28 V on a vehicle declared 12 V (a 24 V supply declared wrong)"),
        Fault(data_down, "data_down", 120, "data channel down, SMS still answered: reports wait in its memory"),
        Fault(powered_off, "powered_off", 300, "terminal without power: no reports, SMS not delivered"),
    ]
    return Composition(specs, faults, waiting)


class AtTheBay(Motion):
    """A vehicle parked at an installation bay while the installer switches its ignition on
    and off (so the certification sees it both ways): it never moves."""

    def __init__(self, rng: random.Random, latitude: float, longitude: float, start: float) -> None:
        super().__init__(rng, start=start)
        self.bay = (latitude, longitude)

    def at(self, t: float) -> State:
        ignition = (t - self.start) % (IGNITION_ON_S + IGNITION_OFF_S) < IGNITION_ON_S
        return State(self.bay[0], self.bay[1], 0.0, 0.0, ignition, False, self.odometer_m, "parked")


class Inbox:
    """The account contact's phone on the demo SMSC: each SMS it receives (customer notices)
    is one log line."""

    faults: tuple[str, ...] = ()

    def __init__(self, msisdn: str, owner: str) -> None:
        self.msisdn, self.owner = msisdn, owner

    def on_sms(self, text: str) -> None:
        log.info("SMS inbox of %s (%s): %s", self.owner, self.msisdn, text)


def fleet_config(settings: Settings, mqtt_url: str | None, comp: Composition) -> Any:
    from ingest.protocols import DEFAULT_PORTS
    from simulators.fleet import FleetConfig

    host = "127.0.0.1" if settings.ingest_host in ("0.0.0.0", "::", "") else settings.ingest_host
    return FleetConfig(vehicles=VEHICLES, protocols=PROTOCOLS, interval_s=INTERVAL_S, server=host,
                       ports={name: settings.port_for(name) for name in DEFAULT_PORTS}, mqtt_url=mqtt_url,
                       seed=SEED, faults=comp.spec(), behaviour=Behaviour(parked_factor=PARKED_FACTOR))


def provision(conn: psycopg.Connection, database_url: str, settings: Settings, mqtt_url: str | None,
              comp: Composition) -> dict[str, Any]:
    """Creates the demo account, centers, users and the fleet's terminals when missing;
    a new token for each role every call."""
    from simulators.fleet import Fleet

    if conn.execute("SELECT id FROM accounts WHERE name = %s", (ACCOUNT,)).fetchone() is None:
        add_account(conn, ACCOUNT, contact_name=CONTACT[0], contact_msisdn=CONTACT[1], contact_email=CONTACT[2])
        for name, lat, lon in CENTERS:
            add_center(conn, name, lat, lon)
    conn.commit()
    Fleet(fleet_config(settings, mqtt_url, comp)).provision(database_url, ACCOUNT)
    # Installed long ago at the second center, except the vehicle waiting for its certification
    # at the first (the demo installer's): it is the one their screen lists.
    installed = "UPDATE devices SET installed_at = %s, installation_center_id = (SELECT id FROM installation_centers" \
                " WHERE name = %s) WHERE installed_at IS NULL AND identifier = ANY(%s)"
    others = [s.identifier for s in comp.specs if s is not comp.waiting]
    conn.execute(installed, (date.today() - timedelta(days=60), CENTERS[1][0], others))
    conn.execute(installed, (date.today(), CENTERS[0][0], [comp.waiting.identifier]))
    tokens = {}
    for role, name, email, extra in USERS:
        _, tokens[role] = create_token(conn, role, name=name, email=email, **extra)
        set_password(conn, email, PASSWORD)
    count = conn.execute("SELECT count(*) FROM devices d JOIN accounts a ON a.id = d.account_id WHERE a.name = %s",
                         (ACCOUNT,)).fetchone()
    return {"account": ACCOUNT, "devices": count[0] if count else 0, "tokens": tokens,
            "logins": {role: email for role, _, email, _ in USERS}, "password": PASSWORD}


async def run_fleet(settings: Settings, mqtt_url: str | None, comp: Composition, started: asyncio.Event) -> None:
    """The virtual fleet (started once ingest listens) with its handsets on the SMSC."""
    from simulators.fleet import Fleet
    from simulators.fleet.sms_gateway import SmsGateway

    assert settings.smpp_host is not None
    fleet = Fleet(fleet_config(settings, mqtt_url, comp))
    await fleet.start()
    bay = fleet.terminals[comp.waiting.identifier]
    bay.motion = AtTheBay(bay.rng, CENTERS[0][1], CENTERS[0][2], bay.clock.origin)
    comp.started_at = fleet.started_wall
    gateway = SmsGateway(fleet.by_msisdn, settings.smpp_host, settings.smpp_port)
    await gateway.start()
    started.set()
    log.info("virtual fleet running: %s vehicles (%s), reporting every %.0f s", VEHICLES, ", ".join(PROTOCOLS),
             INTERVAL_S)
    try:
        while True:
            await asyncio.sleep(60)
            log.info("fleet: %s", fleet.summary_line())
    finally:
        await gateway.close()
        with contextlib.suppress(Exception):
            await fleet.stop(drain_s=2.0)


def _clock(comp: Composition, after_s: float) -> str:
    when = datetime.fromtimestamp((comp.started_at or time.time()) + after_s, UTC)
    return f"{when:%H:%M:%S} UTC" + (" (start)" if not after_s else f" ({after_s / 60:g} min in)")


# Settings the demo changes unless they were given: see run().
DEMO_PACE: dict[str, float] = {"sweep_interval_s": 30.0, "unreachable_after_s": 120.0, "sms_ping_period_s": 300.0,
                               "sweep_grace_s": 60.0}


def banner(settings: Settings, rt: Any, components: list[str], info: dict[str, Any], comp: Composition) -> str:
    """The block the demo prints once everything runs."""
    from avl.runtime import runtime_path

    base = f"http://{settings.api_host}:{settings.api_port}"
    waiting = comp.waiting
    lines = [
        "",
        "AVL demo is running (Ctrl-C stops everything it started).",
        f"  web console:  {base}/console/login",
        f"  API:          {base}/api/v1   (OpenAPI docs: {base}/api/docs)",
        f"  health:       {base}/health",
        f"  database:     {redact_url(rt.database_url)}",
        f"  MQTT broker:  {rt.mqtt_url}",
        f"  SMSC (SMPP):  {settings.smpp_host}:{settings.smpp_port}",
        f"  services:     {', '.join(components)}, virtual fleet ({VEHICLES} vehicles), SMSC",
        f"  demo account: {info['account']} with {info['devices']} devices; customer notices to its contact"
        f" {CONTACT[1]} show as 'SMS inbox' log lines",
        f"  console logins (password {info['password']}): "
        + ", ".join(f"{role} {email}" for role, email in info["logins"].items()),
        "  tokens (use as 'Authorization: Bearer <token>'):",
        *(f"    {role:<10} {token}" for role, token in info["tokens"].items()),
        f"  reports: every {INTERVAL_S:g} s with the ignition on; parked, every {INTERVAL_S * PARKED_FACTOR:g} s"
        " (a heartbeat between)",
        f"  diagnosis at a demo's pace: sweeps every {settings.sweep_interval_s:g} s, a silence of"
        f" {settings.unreachable_after_s:g} s can be a terminal fault (production: 300 s and 1800 s)",
        "  faults injected (what the support desk's checklist should find):",
        *(f"    {f.vehicle.plate}  {f.vehicle.protocol:<9} {f.vehicle.identifier:<15}  {f.fault:<12} from"
          f" {_clock(comp, f.start_s)}: {f.looks_like}" for f in comp.faults),
        f"  waiting for certification at {CENTERS[0][0]}: {waiting.plate} ({waiting.protocol} {waiting.identifier}),"
        f" parked, ignition on {IGNITION_ON_S:g} s / off {IGNITION_OFF_S:g} s; log in as {info['logins']['installer']}",
        f"  other terminals: .venv/bin/avl device list | diagnose {comp.faults[0].vehicle.identifier} | token create"
        f" ... use this demo (from {runtime_path(settings)})",
        f"  try: curl -H 'Authorization: Bearer {info['tokens']['client']}' {base}/api/v1/vehicles",
        "",
    ]
    return "\n".join(lines)


def run(settings: Settings, components: list[str]) -> None:
    """`avl demo`: everything up, the block printed, until Ctrl-C (or SIGTERM)."""
    from avl.cli import run_services
    from avl.db import connect
    from avl.runtime import check_port_free, prepare, read_runtime, remove_runtime, runtime_path, write_runtime

    running = read_runtime(settings)
    if running is not None:
        raise ConfigError(f"AVL_DATA_DIR: a demo is already running on {settings.data_dir} (pid {running['pid']};"
                          f" {runtime_path(settings)})")
    own_smsc = settings.smpp_host is None
    if own_smsc:  # the demo brings its own SMSC
        check_port_free("127.0.0.1", settings.smpp_port, "AVL_SMPP_PORT")
        settings = settings.model_copy(update={"smpp_host": "127.0.0.1", "smpp_system_id": "avl",
                                               "smpp_password": SecretStr(SMPP_PASSWORD)})
    # The demo judges at a demo's pace (unless told otherwise): production waits 30 min before calling a
    # silence a terminal fault and sweeps every 5 min; a demo watched for minutes would show nothing.
    pace = {name: value for name, value in DEMO_PACE.items() if name not in settings.model_fields_set}
    settings = settings.model_copy(update=pace)
    comp = composition()
    rt = prepare(settings, broker=True)
    try:
        with connect(rt.database_url) as conn:
            info = provision(conn, rt.database_url, settings, rt.mqtt_url, comp)
        fleet_started = asyncio.Event()

        async def announce() -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fleet_started.wait(), 30)
            assert settings.smpp_host is not None
            write_runtime(settings, {
                "command": "avl demo", "database_url": rt.database_url, "mqtt_url": rt.mqtt_url,
                "smpp": {"host": settings.smpp_host, "port": settings.smpp_port,
                         "system_id": settings.smpp_system_id, "password": settings.smpp_password.get_secret_value()},
                "api": f"http://{settings.api_host}:{settings.api_port}",
                "postgres_data": str(rt.postgres.pgdata) if rt.postgres else None,
            })
            print(banner(settings, rt, components, info, comp), flush=True)

        async def fleet() -> None:
            await run_fleet(settings, rt.mqtt_url, comp, fleet_started)

        async def services() -> None:
            await run_services(settings, rt.database_url, rt.mqtt_url, components, [fleet], announce)

        asyncio.run(_with_smsc(settings, own_smsc, services))
    finally:
        remove_runtime(settings)
        rt.close()
        print("demo stopped", flush=True)


async def _with_smsc(settings: Settings, own_smsc: bool, services: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """The SMSC up (and the contact's phone bound to it) before the services, so the diagnostics
    worker binds at once; stopped after them."""
    from simulators.fleet.sms_gateway import SmsGateway
    from simulators.smsc.server import Smsc

    assert settings.smpp_host is not None
    smsc = Smsc(default_validity=300.0, retry_interval=10.0) if own_smsc else None
    try:
        if smsc is not None:
            try:
                await smsc.start(settings.smpp_host, settings.smpp_port)
            except OSError as exc:
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                raise ConfigError(f"AVL_SMPP_PORT: cannot listen on {settings.smpp_host}:{settings.smpp_port}"
                                  f" ({reason})") from None
            # Its clients' binds and unbinds are not news in the demo's log (`avl smsc` shows them).
            logging.getLogger("simulators.smsc").setLevel(logging.WARNING)
        inbox = Inbox(CONTACT[1], CONTACT[0])
        phone = SmsGateway(lambda: {CONTACT[1]: inbox}, settings.smpp_host, settings.smpp_port,
                           address_range=rf"^\+?{CONTACT[1]}$")
        await phone.start()
        try:
            await services()
        finally:
            await phone.close()
    finally:
        if smsc is not None:
            await smsc.stop()
