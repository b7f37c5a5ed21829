"""A fleet: N vehicles with terminals of the given protocols, deterministic from a seed.

    config = FleetConfig(vehicles=20, protocols=PROTOCOLS, server="127.0.0.1", ports={...},
                         mqtt_url="mqtt://127.0.0.1:1883", time_scale=30, faults="no_fix:1")
    fleet = Fleet(config)
    fleet.provision(database_url, "Simulated Fleet")      # register terminals and vehicles
    await fleet.run(duration_s=20)                         # or start() ... stop()
    fleet.stats(); fleet.acked_reports()

Identifiers: Luhn-valid 15-digit IMEIs (teltonika, gt06, gl200, h02; one TAC per protocol),
10-digit ESNs (calamp), phone numbers (osmand), ``gw-NNNNN`` (json). MSISDNs ``58414`` + 7
digits, Venezuelan plates ``AB123CD``. Routes come from each vehicle's own seeded generator.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ingest.protocols import DEFAULT_PORTS
from simulators.fleet.codecs import PROTOCOLS
from simulators.fleet.faults import FaultPlan, assign, parse_spec
from simulators.fleet.terminals import Behaviour, Endpoints, SimClock, Stats, Terminal, VehicleSpec

log = logging.getLogger("avl.simulate")

TAC = {"teltonika": "35630704", "gt06": "86812020", "gl200": "86217001", "h02": "86450003"}
MODELS = {"teltonika": "FMB920", "gt06": "GT06N", "gl200": "GV300", "h02": "ST-901", "calamp": "LMU-3030",
          "osmand": "Traccar Client", "json": "AVL gateway"}
MAX_VEHICLES = 100_000


def luhn_digit(digits: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def luhn_valid(number: str) -> bool:
    return number.isdigit() and luhn_digit(number[:-1]) == number[-1]


def _plate(n: int) -> str:
    letters = "ABCDEFGHJKLMNPRSTUVWXYZ"  # no I, O, Q: as on Venezuelan plates
    digits = n % 1000
    n //= 1000
    chars = []
    for _ in range(4):
        n, r = divmod(n, len(letters))
        chars.append(letters[r])
    return f"{chars[0]}{chars[1]}{digits:03d}{chars[2]}{chars[3]}"


def make_specs(vehicles: int, protocols: tuple[str, ...] | list[str], interval_s: float, seed: int) -> list[VehicleSpec]:
    """The fleet's vehicles: protocols round-robin, identities unique and deterministic."""
    if not 1 <= vehicles <= MAX_VEHICLES:
        raise ValueError(f"--vehicles must be between 1 and {MAX_VEHICLES}, not {vehicles}")
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown or not protocols:
        raise ValueError(f"--protocols: unknown {', '.join(unknown) or '(none given)'}; known: {', '.join(PROTOCOLS)}")
    rng = random.Random(f"fleet:{seed}")
    bases = {p: rng.randrange(10**8) for p in PROTOCOLS}
    msisdn_base = rng.randrange(10**7)
    plate_base = rng.randrange(23**4 * 1000)
    counters = dict.fromkeys(PROTOCOLS, 0)
    specs = []
    for i in range(vehicles):
        protocol = protocols[i % len(protocols)]
        k = counters[protocol]
        counters[protocol] += 1
        base = bases[protocol]
        if protocol in TAC:
            body = TAC[protocol] + f"{(base + k) % 10**6:06d}"
            identifier = body + luhn_digit(body)
        elif protocol == "calamp":
            identifier = f"46{(base + k) % 10**8:08d}"
        elif protocol == "osmand":
            identifier = f"58424{(base + k) % 10**7:07d}"
        else:
            identifier = f"gw-{(base + k) % 10**5:05d}"
        own = random.Random(f"{seed}:{i}:spec")
        specs.append(VehicleSpec(
            index=i, identifier=identifier, protocol=protocol,
            msisdn=f"58414{(msisdn_base + i * 7919) % 10**7:07d}",
            plate=_plate((plate_base + i * 104_729) % (23**4 * 1000)),
            supply_voltage_v=24 if own.random() < 0.2 else 12,
            interval_s=interval_s, model=MODELS[protocol]))
    return specs


@dataclass
class FleetConfig:
    vehicles: int = 10
    protocols: tuple[str, ...] = PROTOCOLS
    interval_s: float = 30.0  # simulated seconds between reports
    server: str = "127.0.0.1"
    ports: dict[str, int] = field(default_factory=dict)  # overrides of ingest's DEFAULT_PORTS
    mqtt_url: str | None = None  # default mqtt://<server>:1883
    seed: int = 1
    time_scale: float = 1.0
    origin: datetime | None = None  # simulated start; default now (accelerated runs: see Fleet.start)
    faults: str | list[FaultPlan] = ""
    bind: tuple[str, ...] = ()  # local source addresses, spread over vehicles
    behaviour: Behaviour = field(default_factory=Behaviour)


def _mqtt_endpoint(url: str | None, server: str) -> tuple[str, int, str | None, str | None]:
    from urllib.parse import urlsplit

    if not url:
        return server, 1883, None, None
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme not in ("mqtt", "tcp"):
        raise ValueError(f"--mqtt: unsupported scheme {parts.scheme!r} (use mqtt://host:port)")
    return parts.hostname or server, parts.port or 1883, parts.username, parts.password


class Fleet:
    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        config.behaviour.interval_s = config.interval_s
        self.specs = make_specs(config.vehicles, config.protocols, config.interval_s, config.seed)
        by_id = [s.identifier for s in self.specs]
        plans = parse_spec(config.faults) if isinstance(config.faults, str) else list(config.faults)
        self.fault_plans = assign(plans, by_id, config.seed)
        host, port, user, password = _mqtt_endpoint(config.mqtt_url, config.server)
        self.endpoints = Endpoints(host=config.server, ports={**DEFAULT_PORTS, **config.ports}, mqtt_host=host,
                                   mqtt_port=port, mqtt_username=user, mqtt_password=password)
        self.clock: SimClock | None = None
        self.terminals: dict[str, Terminal] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.started_monotonic = 0.0
        self.started_wall = 0.0

    # Identity ------------------------------------------------------------------------

    def manifest(self) -> list[dict[str, Any]]:
        return [s.manifest() for s in self.specs]

    def provision(self, database_url: str, account: str = "Simulated Fleet") -> int:
        """Registers the account (if missing) and every terminal and vehicle not yet registered.
        Returns how many terminals were added."""
        import psycopg

        from avl.admin import DeviceSpec, add_account, add_device

        added = 0
        with psycopg.connect(database_url) as conn:
            if not conn.execute("SELECT 1 FROM accounts WHERE lower(name) = lower(%s)", (account,)).fetchone():
                add_account(conn, account)
            have = {(r[0], r[1]) for r in conn.execute("SELECT identifier, protocol FROM devices").fetchall()}
            for s in self.specs:
                if (s.identifier, s.protocol) in have:
                    continue
                add_device(conn, DeviceSpec(identifier=s.identifier, protocol=s.protocol, account=account,
                                            msisdn=s.msisdn, plate=s.plate, supply_voltage_v=s.supply_voltage_v,
                                            model=s.model, report_interval_s=max(1, round(s.interval_s))))
                added += 1
        return added

    def by_msisdn(self) -> dict[str, Any]:
        """The running terminals by their SIM's number (for the SMS gateway)."""
        return {t.spec.msisdn: t for t in self.terminals.values()}

    # Running -------------------------------------------------------------------------

    async def start(self, duration_s: float | None = None) -> None:
        """Starts every terminal. Accelerated runs (time_scale > 1) with a known duration start
        their simulated clock that far in the past, so no fix time lies in the future."""
        c = self.config
        if c.origin is not None:
            origin = c.origin.timestamp()
        elif c.time_scale > 1 and duration_s:
            origin = time.time() - duration_s * c.time_scale
        else:
            origin = time.time()
        self.clock = SimClock(origin, c.time_scale)
        self.started_wall = time.time()
        for spec in self.specs:
            bind = c.bind[spec.index % len(c.bind)] if c.bind else None
            self.terminals[spec.identifier] = Terminal(spec, self.clock, self.endpoints, c.behaviour, c.seed, bind)
        for plan in self.fault_plans:
            assert plan.identifier is not None
            terminal = self.terminals[plan.identifier]
            if plan.start_s <= 0 and plan.end_s is None:
                terminal.set_fault(plan.fault, True, plan.value)
            else:
                terminal.schedule.append(plan)
        self.started_monotonic = time.monotonic()
        self._tasks = [asyncio.create_task(t.run(), name=f"sim-{t.identifier}") for t in self.terminals.values()]

    async def stop(self, drain_s: float = 10.0) -> None:
        """Stops making reports, gives terminals up to ``drain_s`` (real) seconds to deliver what
        they hold (those that can), then closes every connection."""
        for t in self.terminals.values():
            t.generating = False
            t.wake.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_s
        while loop.time() < deadline:
            busy = [t for t in self.terminals.values() if t.outbox and t.can_send()]
            if not busy:
                break
            await asyncio.sleep(0.1)
        for t in self.terminals.values():
            t.stopping = True
            t.wake.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def run(self, duration_s: float, drain_s: float = 10.0, summary_every_s: float = 0.0,
                  out: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Runs for ``duration_s`` real seconds (printing a summary line every ``summary_every_s``),
        stops, and returns the final report."""
        await self.start(duration_s)
        loop = asyncio.get_running_loop()
        end = loop.time() + duration_s
        try:
            while loop.time() < end:
                step = min(summary_every_s or duration_s, end - loop.time())
                await asyncio.sleep(step)
                if out is not None and summary_every_s:
                    out(self.summary_line())
        finally:
            await self.stop(drain_s)
        return self.report()

    # Control -------------------------------------------------------------------------

    def set_fault(self, identifier: str, fault: str, on: bool = True, value: float | None = None) -> None:
        terminal = self.terminals.get(identifier)
        if terminal is None:
            raise KeyError(f"no vehicle {identifier!r} in this fleet")
        terminal.set_fault(fault, on, value)

    def sim_elapsed(self) -> float:
        return self.clock.elapsed() if self.clock else 0.0

    # Results -------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        total = Stats()
        per_protocol: dict[str, Stats] = {}
        connected = outbox = 0
        for t in self.terminals.values():
            total.add(t.stats)
            per_protocol.setdefault(t.spec.protocol, Stats()).add(t.stats)
            connected += t.link is not None
            outbox += len(t.outbox)
        return {"vehicles": len(self.specs), "running": len(self.terminals), "connected": connected,
                "outbox": outbox, **total.as_dict(),
                "protocols": {p: s.as_dict() for p, s in sorted(per_protocol.items())}}

    def acked_reports(self) -> list[tuple[str, datetime]]:
        """(identifier, fix time) of every acknowledged report, in acknowledgement order per terminal."""
        return [(ident, datetime.fromtimestamp(ts, UTC))
                for ident, t in self.terminals.items() for ts in t.acked_times]

    def summary_line(self) -> str:
        s = self.stats()
        wall = time.monotonic() - self.started_monotonic if self.started_monotonic else 0.0
        rate = s["acknowledged"] / wall if wall > 0 else 0.0
        return (f"t={wall:6.0f}s sim+{self.sim_elapsed():7.0f}s vehicles={s['running']} connected={s['connected']} "
                f"sent={s['sent']} acknowledged={s['acknowledged']} retransmitted={s['retransmitted']} "
                f"buffered={s['buffered']} outbox={s['outbox']} reconnects={s['reconnects']} "
                f"heartbeats={s['heartbeats']} ({rate:.0f} acks/s)")

    def report(self) -> dict[str, Any]:
        wall = time.monotonic() - self.started_monotonic if self.started_monotonic else 0.0
        s = self.stats()
        faulty: dict[str, list[str]] = {}
        for t in self.terminals.values():
            for fault in t.faults:
                faulty.setdefault(fault, []).append(t.identifier)
        return {"wall_s": round(wall, 1), "simulated_s": round(self.sim_elapsed(), 1),
                "acks_per_s": round(s["acknowledged"] / wall, 1) if wall else 0.0, **s, "faults_active": faulty}

