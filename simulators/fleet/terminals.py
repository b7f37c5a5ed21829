"""A simulated terminal: its vehicle's motion, its report schedule, an outbox of reports not
yet acknowledged, and the connection it keeps to the server. One asyncio task each.

Behaviour, as real terminals do it:

* a report every ``interval_s`` (simulated) while the ignition is on; parked (ignition off)
  a report every ``parked_factor`` intervals and a protocol heartbeat at the other ticks;
  an ignition change is reported at once;
* connect, log in (teltonika IMEI handshake, gt06 login packet), send the oldest report,
  wait for its ACK; on ACK timeout resend it (keyed ACKs: on the same connection, up to
  ``max_retries`` times; in-order ACKs: on a new connection, since a lost ACK would shift
  every later one), reconnect with exponential backoff and jitter when the link fails;
* while it cannot send (out of coverage, data channel down, SIM suspended, powered off)
  reports stay in the outbox with their original fix times and are flushed in order when
  it can again: teltonika in batches of up to 255 records, gl200 as ``+BUFF`` reports,
  the others one by one.

Fix times come from the terminal's own clock (``clock_skew`` shifts it), truncated to the
second, which is what every protocol carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from array import array
from collections import deque
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from avl.records import Position
from simulators.fleet import sms
from simulators.fleet.codecs import CODECS, Codec, Frame
from simulators.fleet.faults import DEFAULT_CLOCK_SKEW_S, FAULTS, OFFLINE, FaultPlan
from simulators.fleet.links import Link, MqttLink, StreamLink, UdpLink, garbage_bytes
from simulators.fleet.motion import CARACAS, City, Gnss, Motion

log = logging.getLogger("avl.simulate")


class SimClock:
    """Simulated time (epoch seconds): ``origin`` at start, running ``scale`` times real time."""

    def __init__(self, origin: float | None = None, scale: float = 1.0) -> None:
        if scale <= 0:
            raise ValueError("time scale must be positive")
        self.origin = time.time() if origin is None else origin
        self.scale = scale
        self._t0 = time.monotonic()

    def now(self) -> float:
        return self.origin + (time.monotonic() - self._t0) * self.scale

    def elapsed(self) -> float:
        """Simulated seconds since the start."""
        return (time.monotonic() - self._t0) * self.scale

    def real_delay(self, sim_seconds: float) -> float:
        return max(0.0, sim_seconds / self.scale)


@dataclass(slots=True)
class Endpoints:
    """Where the server listens: host, per-protocol ports, the MQTT broker."""

    host: str = "127.0.0.1"
    ports: dict[str, int] = field(default_factory=dict)
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    mqtt_username: str | None = None
    mqtt_password: str | None = None


@dataclass(slots=True)
class Behaviour:
    """Timers and limits shared by every terminal of a fleet."""

    interval_s: float = 30.0  # simulated
    parked_factor: int = 5
    ack_timeout_s: float = 10.0  # real
    connect_timeout_s: float = 10.0  # real
    max_retries: int = 3
    backoff_base_s: float = 1.0  # real
    backoff_max_s: float = 60.0  # real
    outbox_max: int = 20_000
    coverage_gap: tuple[float, float] | None = None  # (every, length), simulated seconds
    keep_acked: bool = True
    city: City = CARACAS


@dataclass(slots=True)
class VehicleSpec:
    index: int
    identifier: str
    protocol: str
    msisdn: str
    plate: str
    supply_voltage_v: int
    interval_s: float
    model: str

    def manifest(self) -> dict[str, Any]:
        return {"identifier": self.identifier, "protocol": self.protocol, "msisdn": self.msisdn, "plate": self.plate,
                "supply_voltage_v": self.supply_voltage_v, "report_interval_s": self.interval_s, "model": self.model}


@dataclass(slots=True)
class Stats:
    sent: int = 0  # reports sent the first time
    acknowledged: int = 0  # reports acknowledged
    retransmitted: int = 0  # report sends after the first
    buffered: int = 0  # reports made while the terminal could not send
    reconnects: int = 0  # connections opened after the first
    connect_failures: int = 0
    heartbeats: int = 0
    unacknowledged: int = 0  # sent and given up on (slow reader)
    dropped: int = 0  # outbox full: oldest reports lost
    garbage: int = 0
    duplicates: int = 0

    def add(self, other: Stats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(slots=True)
class Report:
    position: Position
    buffered: bool
    seq: int = 0  # assigned at first send (keyed protocols resend with the same number)
    attempts: int = 0


class Terminal:
    def __init__(self, spec: VehicleSpec, clock: SimClock, endpoints: Endpoints, behaviour: Behaviour,
                 seed: int, bind: str | None = None) -> None:
        self.spec = spec
        self.identifier = spec.identifier
        self.codec: Codec = CODECS[spec.protocol]
        self.clock = clock
        self.endpoints = endpoints
        self.behaviour = behaviour
        self.bind = bind
        self.rng = random.Random(f"{seed}:{spec.index}:run")
        self.motion = Motion(self.rng, city=behaviour.city, start=clock.origin)
        self.gnss = Gnss(self.rng, altitude_m=behaviour.city.altitude_m)
        self.faults: dict[str, float | None] = {}
        self.schedule: list[FaultPlan] = []
        self._scheduled_on: set[int] = set()
        self.outbox: deque[Report] = deque()
        self.stats = Stats()
        self.acked_times: array[int] = array("q")
        self.link: Link | None = None
        self.udp: UdpLink | None = None
        self.connected_once = False
        self.generating = True
        self.stopping = False
        self.wake = asyncio.Event()
        # Reports start at a random point of the first interval so the fleet's load is spread.
        self.next_tick = clock.origin + self.rng.uniform(0, spec.interval_s)
        self.last_report_t = 0.0
        self.last_ignition: bool | None = None
        self.heartbeat_due = False
        self.report_requested = False
        self.seq = 0
        self.failures = 0  # consecutive link failures (backoff exponent)
        self.retry_at = 0.0  # loop time before which no connection is attempted
        self.keyed_retries = 0
        self.gap_phase = self.rng.uniform(0, behaviour.coverage_gap[0]) if behaviour.coverage_gap else 0.0
        self.battery_mv = 4150
        self.last_fix: tuple[float, float, float, float, int, float, float] | None = None
        self.frozen: tuple[float, float, float, float, int, float, float] | None = None
        self.last_fix_time = datetime.fromtimestamp(int(clock.origin), UTC)
        self.last_ignition_state = False

    # Faults -------------------------------------------------------------------------

    def set_fault(self, fault: str, on: bool = True, value: float | None = None) -> None:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
        if on:
            if fault == "antenna_fault" and "antenna_fault" not in self.faults:
                self.frozen = self.last_fix
            self.faults[fault] = value
        else:
            self.faults.pop(fault, None)
            if fault == "antenna_fault":
                self.frozen = None
        self.wake.set()

    def _apply_schedule(self) -> None:
        elapsed = self.clock.now() - self.clock.origin
        for n, plan in enumerate(self.schedule):
            active = plan.start_s <= elapsed and (plan.end_s is None or elapsed < plan.end_s)
            if active and n not in self._scheduled_on:
                self._scheduled_on.add(n)
                self.set_fault(plan.fault, True, plan.value)
            elif not active and n in self._scheduled_on:
                self._scheduled_on.discard(n)
                self.set_fault(plan.fault, False)

    def _next_schedule_event(self) -> float:
        elapsed = self.clock.now() - self.clock.origin
        times = [t for plan in self.schedule for t in (plan.start_s, plan.end_s) if t is not None and t > elapsed]
        return self.clock.origin + min(times) if times else float("inf")

    def offline(self, t: float | None = None) -> bool:
        """True while the terminal cannot reach the server (faults or a coverage gap)."""
        if OFFLINE.intersection(self.faults):
            return True
        gap = self.behaviour.coverage_gap
        if gap is not None:
            t = self.clock.now() if t is None else t
            return (t - self.clock.origin + self.gap_phase) % gap[0] < gap[1]
        return False

    @property
    def sms_reachable(self) -> bool:
        """Whether an SMS to this terminal can be delivered (the SMSC's delivery receipt)."""
        return not ({"powered_off", "sim_suspended", "no_coverage"} & set(self.faults))

    def on_sms(self, text: str) -> str | None:
        """The SMS this terminal answers to ``text`` (None: none; not delivered or ignored)."""
        if not self.sms_reachable:
            return None
        status = self._status()
        return sms.answer(self.spec.protocol, text, status)

    def _status(self) -> sms.TerminalStatus:
        p = self._position(max(self.clock.now(), self.last_report_t))
        return sms.TerminalStatus(
            identifier=self.identifier, fix_time=p.fix_time, latitude=p.latitude or 0.0, longitude=p.longitude or 0.0,
            speed_kmh=p.speed_kmh or 0.0, course=p.course or 0.0, altitude_m=p.altitude_m or 0.0,
            satellites=p.satellites or 0, valid=p.valid, ignition=bool(p.ignition), power_mv=p.power_mv or 0,
            battery_mv=p.battery_mv or 0, data_link=self.link is not None and not self.offline(),
            antenna_fault="antenna_fault" in self.faults)

    # Reports -------------------------------------------------------------------------

    def _position(self, t: float) -> Position:
        state = self.motion.at(t)
        faults = self.faults
        if self.frozen is not None and "antenna_fault" in faults:
            lat, lon, _, course, sats, hdop, alt = self.frozen
            speed, valid = 0.0, True
        elif "no_fix" in faults:
            last = self.last_fix or (state.latitude, state.longitude, 0.0, state.course, 0, 0.0, 900.0)
            lat, lon, course, alt = last[0], last[1], last[3], last[6]
            speed, sats, hdop, valid = 0.0, 0, 0.0, False
        else:
            fix = self.gnss.read(state)
            lat, lon, speed, course, sats, hdop, alt = fix
            valid = True
            self.last_fix = fix
            if "antenna_fault" in faults:
                self.frozen = fix
        system_v = 24 if self.spec.supply_voltage_v == 24 or "voltage_24v" in faults else 12
        if "voltage_0v" in faults:
            power_mv = 0
            self.battery_mv = max(3300, self.battery_mv - self.rng.randint(1, 4))
        else:
            base = (13_900 if state.ignition else 12_550) * (2 if system_v == 24 else 1)
            power_mv = base + self.rng.randint(-150, 150)
            self.battery_mv = min(4150, self.battery_mv + 5)
        skew = 0.0
        if "clock_skew" in faults:
            value = faults["clock_skew"]
            skew = DEFAULT_CLOCK_SKEW_S if value is None else value
        fix_time = datetime.fromtimestamp(int(t + skew), UTC)
        return Position(device=self.identifier, fix_time=fix_time, protocol=self.spec.protocol, valid=valid,
                        latitude=lat, longitude=lon, speed_kmh=speed, course=course, altitude_m=alt,
                        satellites=sats, hdop=hdop if valid else None, ignition=state.ignition,
                        power_mv=power_mv, battery_mv=self.battery_mv, odometer_m=int(state.odometer_m),
                        attributes={"batteryLevel": min(100, max(0, (self.battery_mv - 3300) // 8))})

    def _generate(self) -> None:
        """Makes the reports (and heartbeats) whose ticks have come, each at its own time."""
        now = self.clock.now()
        interval = self.spec.interval_s
        while self.generating and self.next_tick <= now:
            t = self.next_tick
            self.next_tick = t + interval
            if "powered_off" in self.faults:
                continue
            ignition = self.motion.at(t).ignition
            parked_due = t - self.last_report_t >= interval * self.behaviour.parked_factor - 1e-6
            if not (ignition or parked_due or ignition != self.last_ignition):
                self.heartbeat_due = True
                continue
            self.last_ignition = ignition
            p = self._position(t)
            if p.fix_time == self.last_fix_time:
                continue  # two ticks in the same second of the terminal's clock
            self.last_fix_time = p.fix_time
            self.last_report_t = t
            # Made while it cannot reach the server: kept in its memory ("buffered", +BUFF for Queclink).
            buffered = self.offline(t) or (self.link is None and self.failures > 0)
            self._append(Report(p, buffered))
        if self.report_requested and self.generating and "powered_off" not in self.faults:
            self.report_requested = False
            t = max(now, self.last_report_t)
            p = self._position(t)
            if p.fix_time != self.last_fix_time:
                self.last_fix_time, self.last_report_t = p.fix_time, t
                self._append(Report(p, self.offline(t)))

    def _append(self, report: Report) -> None:
        if report.buffered:
            self.stats.buffered += 1
        if len(self.outbox) >= self.behaviour.outbox_max:
            self.outbox.popleft()
            self.stats.dropped += 1
        self.outbox.append(report)
        self.heartbeat_due = False

    def report_now(self) -> None:
        """A position request (SMS, command): one report at once, off schedule."""
        self.report_requested = True
        self.wake.set()

    # Connection ---------------------------------------------------------------------

    def _next_seq(self) -> int:
        self.seq = self.seq % 0xFFFE + 1
        if self.spec.protocol == "gt06" and self.seq == 1:
            self.seq = 2  # 1 is the login's serial
        return self.seq

    async def _connect(self) -> None:
        b = self.behaviour
        ep = self.endpoints
        transport = self.codec.transport
        if self.connected_once:
            self.stats.reconnects += 1
        if transport == "mqtt":
            link: Link = await MqttLink.open(ep.mqtt_host, ep.mqtt_port, self.identifier,
                                             f"avl/in/json/{self.identifier}", b.connect_timeout_s,
                                             ep.mqtt_username, ep.mqtt_password, self.bind)
        elif transport == "udp":
            # A UDP terminal keeps its socket (and source port) for life: the server keys UDP sessions
            # by source address, so a port handed to another terminal would carry the wrong identity.
            if self.udp is None or self.udp.protocol.lost:
                self.udp = await UdpLink.open(self.codec, ep.host, ep.ports[self.spec.protocol], self.bind)
            link = self.udp
        else:
            stream = await StreamLink.open(self.codec, ep.host, ep.ports[self.spec.protocol], b.connect_timeout_s,
                                           self.bind)
            login = self.codec.login(self.identifier, 1)
            if login is not None and not await stream.login(login, b.ack_timeout_s):
                await stream.close()
                raise ConnectionError("login not acknowledged")
            link = stream
        self.link = link
        self.connected_once = True

    async def _drop_link(self, final: bool = False) -> None:
        if self.link is not None:
            link, self.link = self.link, None
            if link is not self.udp:
                await link.close()
        if final and self.udp is not None:
            await self.udp.close()
            self.udp = None

    def _backoff(self) -> None:
        b = self.behaviour
        self.failures += 1
        delay = min(b.backoff_max_s, b.backoff_base_s * 2 ** min(self.failures - 1, 20))
        self.retry_at = asyncio.get_running_loop().time() + delay * self.rng.uniform(0.5, 1.5)

    async def _send_next(self) -> None:
        assert self.link is not None
        batch_max = self.codec.batch_max
        reports = [self.outbox[i] for i in range(min(batch_max, len(self.outbox)))]
        for r in reports:
            if r.attempts:
                self.stats.retransmitted += 1
            else:
                self.stats.sent += 1
                if self.codec.keyed:
                    r.seq = self._next_seq()
            r.attempts += 1
        first = reports[0]
        frame = self.codec.encode([r.position for r in reports], first.seq, first.buffered)
        faults = self.faults
        garbage = None
        if "garbage" in faults and self.rng.random() < 0.5:
            garbage = garbage_bytes(self.rng)
            self.stats.garbage += 1
        duplicate = "duplicates" in faults
        if duplicate:
            self.stats.duplicates += 1
        slow = "slow_reader" in faults and isinstance(self.link, StreamLink)
        ok = await self.link.exchange(frame, self.behaviour.ack_timeout_s, duplicate=duplicate, garbage=garbage,
                                      read=not slow)
        if slow:
            # It never reads its ACKs: as far as it knows nothing is acknowledged; it moves on.
            for _ in reports:
                self.outbox.popleft()
            self.stats.unacknowledged += len(reports)
            return
        if ok:
            for _ in reports:
                done = self.outbox.popleft()
                if self.behaviour.keep_acked:
                    self.acked_times.append(int(done.position.fix_time.timestamp()))
            self.stats.acknowledged += len(reports)
            self.failures = 0
            self.keyed_retries = 0
            return
        # No ACK in time (or refused): keyed protocols retry on this connection, the others reconnect.
        self.keyed_retries += 1
        if not self.codec.keyed or self.keyed_retries > self.behaviour.max_retries:
            self.keyed_retries = 0
            await self._drop_link()
            self._backoff()

    async def _send_heartbeat(self) -> None:
        assert self.link is not None
        self.heartbeat_due = False
        p = self._position(max(self.clock.now(), self.last_report_t))
        frame: Frame | None = self.codec.heartbeat(p, self._next_seq())
        if frame is None:
            return
        ok = await self.link.exchange(frame, self.behaviour.ack_timeout_s,
                                      read="slow_reader" not in self.faults)
        if ok:
            self.stats.heartbeats += 1

    # Main loop ----------------------------------------------------------------------

    def can_send(self) -> bool:
        return not self.offline() and "powered_off" not in self.faults

    async def _sleep(self, loop_deadline: float) -> None:
        loop = asyncio.get_running_loop()
        delay = loop_deadline - loop.time()
        if delay <= 0:
            return
        self.wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self.wake.wait()

    def _next_event_loop_time(self) -> float:
        """Loop time of the next tick, coverage-gap edge or scheduled fault change."""
        loop = asyncio.get_running_loop()
        now = self.clock.now()
        target = self.next_tick if self.generating else float("inf")
        target = min(target, self._next_schedule_event())
        gap = self.behaviour.coverage_gap
        if gap is not None:
            pos = (now - self.clock.origin + self.gap_phase) % gap[0]
            edge = gap[1] - pos if pos < gap[1] else gap[0] - pos
            target = min(target, now + edge + 1e-3)
        if target == float("inf"):
            return loop.time() + 3600
        return loop.time() + self.clock.real_delay(target - now)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not self.stopping:
                self._apply_schedule()
                self._generate()
                if not self.can_send():
                    await self._drop_link()
                    await self._sleep(self._next_event_loop_time())
                    continue
                if self.link is None:
                    if not self.outbox and not self.heartbeat_due:
                        await self._sleep(self._next_event_loop_time())
                        continue
                    if loop.time() < self.retry_at:
                        await self._sleep(min(self.retry_at, self._next_event_loop_time()))
                        continue
                    try:
                        await self._connect()
                    except (OSError, TimeoutError) as exc:
                        self.stats.connect_failures += 1
                        log.debug("%s: connect failed: %s", self.identifier, exc)
                        self._backoff()
                        continue
                try:
                    if self.outbox:
                        await self._send_next()
                        continue
                    if self.heartbeat_due:
                        await self._send_heartbeat()
                except (OSError, ConnectionError) as exc:
                    log.debug("%s: link lost: %s", self.identifier, exc)
                    await self._drop_link()
                    self._backoff()
                    continue
                await self._sleep(self._next_event_loop_time())
        finally:
            await self._drop_link(final=True)

    def snapshot(self) -> dict[str, Any]:
        return {**self.spec.manifest(), "faults": {k: v for k, v in self.faults.items()},
                "connected": self.link is not None, "outbox": len(self.outbox), "stats": self.stats.as_dict()}
