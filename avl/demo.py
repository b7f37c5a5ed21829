"""The demo: one corporate account in Caracas whose vehicles are a virtual fleet on the real
wire protocols, an SMPP SMSC the fleet's handsets are bound to, and the users of the three
roles (plus an admin) with tokens and console passwords."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from datetime import date, timedelta
from typing import Any

import psycopg

from avl.admin import add_account, add_center, create_token, set_password
from avl.config import Settings

log = logging.getLogger("avl.demo")

ACCOUNT = "Demo Logistics"
CENTERS = [
    ("Centro de Instalación Chacao", 10.4961, -66.8530),
    ("Centro de Instalación Los Ruices", 10.4903, -66.8283),
]
VEHICLES = 12
PROTOCOLS = ("teltonika", "gt06", "gl200", "calamp", "h02", "osmand", "json")
INTERVAL_S = 10.0
# Faults on a few vehicles, so the support desk has something to diagnose.
FAULTS = "no_fix:1,voltage_24v:1,data_down:1@120"
PASSWORD = "demo-pass-2026"
USERS: tuple[tuple[str, str, str, dict[str, str]], ...] = (
    ("client", "Demo dispatcher", "dispatcher@demo.example", {"account": ACCOUNT}),
    ("support", "Demo support agent", "support@demo.example", {}),
    ("installer", "Demo installer", "installer@demo.example", {"center": CENTERS[0][0]}),
    ("admin", "Demo admin", "admin@demo.example", {}),
)


def fleet_config(settings: Settings, mqtt_url: str | None) -> Any:
    from ingest.protocols import DEFAULT_PORTS
    from simulators.fleet import FleetConfig

    host = "127.0.0.1" if settings.ingest_host in ("0.0.0.0", "::", "") else settings.ingest_host
    return FleetConfig(vehicles=VEHICLES, protocols=PROTOCOLS, interval_s=INTERVAL_S, server=host,
                       ports={name: settings.port_for(name) for name in DEFAULT_PORTS}, mqtt_url=mqtt_url,
                       seed=2026, faults=FAULTS)


def provision(conn: psycopg.Connection, database_url: str, settings: Settings, mqtt_url: str | None) -> dict[str, Any]:
    """Creates the demo account, centers, users and the fleet's terminals when missing;
    a new token for each role every call."""
    from simulators.fleet import Fleet

    if conn.execute("SELECT id FROM accounts WHERE name = %s", (ACCOUNT,)).fetchone() is None:
        add_account(conn, ACCOUNT, contact_name="Flota Demo", contact_msisdn="584120000000",
                    contact_email="flota@demo.example")
        for name, lat, lon in CENTERS:
            add_center(conn, name, lat, lon)
    conn.commit()
    fleet = Fleet(fleet_config(settings, mqtt_url))
    fleet.provision(database_url, ACCOUNT)
    conn.execute("UPDATE devices SET installed_at = %s, installation_center_id = (SELECT id FROM installation_centers"
                 " WHERE name = %s) WHERE installed_at IS NULL",
                 (date.today() - timedelta(days=60), CENTERS[0][0]))
    tokens = {}
    for role, name, email, extra in USERS:
        _, tokens[role] = create_token(conn, role, name=name, email=email, **extra)
        set_password(conn, email, PASSWORD)
    count = conn.execute("SELECT count(*) FROM devices d JOIN accounts a ON a.id = d.account_id WHERE a.name = %s",
                         (ACCOUNT,)).fetchone()
    return {"account": ACCOUNT, "devices": count[0] if count else 0, "tokens": tokens,
            "logins": {role: email for role, _, email, _ in USERS}, "password": PASSWORD}


async def run_smsc(port: int, ready: asyncio.Event) -> None:
    """The demo's SMSC (the network side of SMS): the fleet's handsets and the diagnostics worker bind to it."""
    from simulators.smsc.server import Smsc

    smsc = Smsc(default_validity=300.0, retry_interval=10.0)
    await smsc.start("127.0.0.1", port)
    ready.set()
    try:
        await asyncio.Event().wait()
    finally:
        await smsc.stop()


async def run_fleet(settings: Settings, mqtt_url: str | None, smsc_port: int, smsc_ready: asyncio.Event) -> None:
    """The virtual fleet, once the server's listeners are up, with its handsets on the SMSC."""
    from simulators.fleet import Fleet
    from simulators.fleet.sms_gateway import SmsGateway

    await smsc_ready.wait()
    config = fleet_config(settings, mqtt_url)
    # Start once every listener the fleet uses accepts connections (terminals back off when refused).
    for protocol in ("teltonika", "gt06", "gl200", "h02", "osmand"):
        for _ in range(600):
            try:
                _, writer = await asyncio.open_connection(config.server, config.ports[protocol])
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.1)
    fleet = Fleet(config)
    await fleet.start()
    gateway = SmsGateway(fleet.by_msisdn, "127.0.0.1", smsc_port)
    await gateway.start()
    log.info("virtual fleet running: %s vehicles (%s), reporting every %.0f s; faults %s", VEHICLES,
             ", ".join(PROTOCOLS), INTERVAL_S, FAULTS)
    try:
        while True:
            await asyncio.sleep(60)
            log.info("fleet: %s", fleet.summary_line())
    finally:
        await gateway.close()
        with contextlib.suppress(Exception):
            await fleet.stop(drain_s=2.0)


def extras(settings: Settings, mqtt_url: str | None, smsc_port: int) -> list[Callable[[], Coroutine[Any, Any, None]]]:
    ready = asyncio.Event()
    return [lambda: run_smsc(smsc_port, ready), lambda: run_fleet(settings, mqtt_url, smsc_port, ready)]
