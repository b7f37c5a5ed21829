"""One frame's way through ingest, shared by every transport: decode, identify, route,
queue for the writer; the reply goes back only once the frame's records are durable.

A connection is bound to the first device it identifies as: a later frame carrying
another device's identity is refused (a terminal cannot write for another terminal).
UDP is not bound: each datagram identifies itself, and NAT reuses source addresses.
A device with a password (``devices.password_sha256``) must send it: once per connection,
in every datagram over UDP; MQTT relies on the broker's credentials instead.
Reports of unregistered devices are recorded as sightings (unknown devices) and not
acknowledged, so the terminal keeps them until an installer registers it. Sightings are
bounded: the stored frame is cut to ``UNKNOWN_RAW_MAX`` bytes, and one source address
records at most so many new identifiers a minute (the rest are counted and dropped).
A registered device's decoder options (``devices.options``: a model, a time zone, a custom
layout, whether to answer plain reports) are in its session from the frame that identifies
it: that frame, decoded before anyone knew which device sent it, is decoded again with them
when they change what the decoder reads. Later frames are decoded with the options as they
are at that moment, so a change applies to the device's next frame (UDP: to each datagram
the options of the device it names; MQTT: of the topic's device).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from avl.records import Position
from ingest import metrics
from ingest.pipeline import NO_OPTIONS, Batch, DeviceDirectory, JumpCheck, route
from ingest.protocols import DecodeError, DecodeResult, Protocol, Session
from ingest.sources import OncePer, SourceBudget, address_of
from ingest.writer import NotDurable, Writer, oldest_accepted

log = logging.getLogger("avl.ingest")

BOUND = "_bound_device"
VERIFIED = "_password_verified"  # the device whose password this connection has sent
UNKNOWN_RAW_MAX = 512  # bytes of an unknown device's frame kept (the console shows as much)
SIGHTINGS_BACKLOG = 1000  # sightings waiting for the writer; beyond it new ones are dropped
SIGHTED_MAX = 100_000  # identifiers remembered as recorded (their repeats are not "new")


class ArrivalClock:
    """What decoders read as ``Session.now`` while intake decodes a frame: the frame's arrival
    time, the same at every call. A report whose fix time is exactly that time had none of its own
    (an H02 report with an empty time field, an OsmAnd request without ``timestamp``, a command
    result, a heartbeat): intake tells its resend from a new report by the frame's bytes."""

    __slots__ = ("source", "at")

    def __init__(self, source: Callable[[], datetime]) -> None:
        self.source = source  # the session's own clock (tests may pin it)
        self.at = source()

    def __call__(self) -> datetime:
        return self.at


@dataclass(slots=True)
class Pending:
    """A decoded frame waiting for durability. ``reply`` goes out only if ``accepted()``."""

    reply: bytes | None
    future: asyncio.Future[None] | None = None
    refused: str | None = None  # why the frame's reports are not acknowledged
    records: int = 0
    # True when the reports could not be made durable (database and spool both failing): the
    # sender must keep them and resend. Other refusals (bad frame, unknown device, identity)
    # will not change by resending.
    retry: bool = False
    # Sent instead of ``reply`` when the frame is refused for its password (the protocol's
    # "wrong password" answer, e.g. Wialon's #AL#01), before the connection is closed.
    denial: bytes | None = None

    async def accepted(self) -> bool:
        if self.refused is not None:
            return False
        if self.future is None:
            return True
        try:
            await self.future
        except NotDurable as exc:
            self.refused = str(exc)
            self.retry = True
            return False
        return True


class Intake:
    def __init__(self, writer: Writer, directory: DeviceDirectory, retention_days: int, *,
                 max_speed_kmh: float = 1000.0, unknown_per_source_per_minute: int = 30,
                 duplicate_window_s: float = 300.0) -> None:
        self.writer = writer
        self.duplicate_window_s = duplicate_window_s
        self.directory = directory
        self.retention_days = retention_days
        self.jumps = JumpCheck(max_speed_kmh) if max_speed_kmh > 0 else None
        self._tasks: set[asyncio.Future[None]] = set()
        self._new_sightings = SourceBudget(unknown_per_source_per_minute)
        self._sighted: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._logged = OncePer()

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _record(self, batch: Batch) -> None:
        try:
            await (await self.writer.enqueue(batch))
        except NotDurable as exc:
            log.warning("unknown-device sighting not recorded: %s", exc)

    async def frame(self, protocol: Protocol, session: Session, frame: bytes) -> Pending:
        """Decodes ``frame`` and queues its records. Never raises for bad input."""
        metrics.frames(protocol.name, session.transport).inc()
        clock = session.now
        if isinstance(clock, ArrivalClock):
            clock.at = clock.source()
        else:
            clock = session.now = ArrivalClock(clock)
        arrival = clock.at
        binds = session.transport != "udp"
        earlier = session.device
        if earlier is not None:  # the device's options as they are now (a change applies from its next frame)
            self._take_options(session, self.directory.cached(earlier, protocol.name))
        # The frame that identifies the device (over UDP any datagram: each names its own) was decoded
        # before the device's options could be known. When they change what the decoder reads (a
        # layout, a time format), it is decoded again, from the session as it was before it.
        before = dict(session.state) if earlier is None or not binds else None
        result = self._decode(protocol, session, frame)
        identified = session.device
        if before is not None and identified is not None and identified != earlier:
            device_id = self.directory.cached(identified, protocol.name)
            if device_id is None and isinstance(result, DecodeResult) and result.positions:
                device_id = await self.directory.lookup(identified, protocol.name)  # its reports look it up anyway
            if self._take_options(session, device_id):
                session.device, session.state = earlier, before
                result = self._decode(protocol, session, frame)
        if isinstance(result, Exception):
            return self._undecodable(protocol, session, frame, result)
        credential, session.credential = session.credential, None
        bound = session.state.get(BOUND)
        if binds and session.device is not None:
            # A connection belongs to the first device it identifies as, by login or by report.
            if bound is None:
                bound = session.state[BOUND] = session.device
            elif session.device != bound:
                refused = session.device
                session.device = bound
                metrics.REFUSED.labels(protocol.name, "identity").inc()
                log.warning("%s %s: connection identified as %s tried to identify as %s; refused",
                            protocol.name, session.remote, bound, refused)
                return Pending(reply=None, refused=f"connection is bound to device {bound}, not {refused}")
        if not result.positions:
            device_id = self.directory.cached(session.device, protocol.name) if session.device else None
            if device_id is not None and session.device is not None:  # a login: checked like a report
                denied = self._password_refused(protocol, session, session.device, device_id, credential)
                if denied is not None:
                    return Pending(reply=None, refused=denied, denial=result.refusal)
            return Pending(reply=result.reply)

        # A frame carrying many records (Teltonika batches, Queclink FRI) keeps its raw bytes once,
        # with its first report, instead of one copy per record.
        raw = result.positions[0].raw
        for p in result.positions[1:]:
            if p.raw is raw:
                p.raw = b""
        received_at = arrival
        oldest = oldest_accepted(self.retention_days)
        batch = Batch()
        unknown: set[str] = set()
        known: list[tuple[Position, int]] = []
        counts: dict[str, int] = {}
        device, device_id = None, None
        # UDP datagrams each carry their own identity and a source address is reused by other
        # devices (carrier NAT), so only connections (TCP, HTTP, MQTT topics) are bound.
        for p in result.positions:
            if p.device == device:  # the same device as the record before (most frames: one device)
                if device_id is not None:
                    known.append((p, device_id))
                continue
            device = p.device
            if not binds:
                pass
            elif bound is None:
                bound = session.state[BOUND] = p.device
            elif p.device != bound:
                metrics.REFUSED.labels(protocol.name, "identity").inc()
                log.warning("%s %s: connection identified as %s sent a report for %s; frame refused",
                            protocol.name, session.remote, bound, p.device)
                return Pending(reply=None, refused=f"connection is bound to device {bound}, not {p.device}")
            device_id = self.directory.cached(p.device, protocol.name)
            if device_id is None:
                device_id = await self.directory.lookup(p.device, protocol.name)
            if device_id is None:
                unknown.add(p.device)
                continue
            denied = self._password_refused(protocol, session, p.device, device_id, credential)
            if denied is not None:
                return Pending(reply=None, refused=denied, denial=result.refusal)
            known.append((p, device_id))
        if unknown:
            sightings = self._sightings(protocol.name, session, unknown, raw or frame, received_at)
            if sightings:  # recorded, but never acknowledged
                self._background(self._record(Batch(unknown=sightings)))
            metrics.UNKNOWN_FRAMES.labels(protocol.name).inc()
            return Pending(reply=None, refused=f"unknown device {', '.join(sorted(unknown))}")
        for index, (p, device_id) in enumerate(known):
            digest = None
            if p.fix_time == arrival:  # the decoder's clock: the report has no time of its own
                if index:  # records of one frame: a microsecond apart, so they are not one another's resend
                    p.fix_time = arrival + timedelta(microseconds=index)
                if self.duplicate_window_s > 0:
                    digest = hashlib.blake2b(index.to_bytes(4, "big") + frame, digest_size=16).digest()
            kind, _, note = route(p, device_id, received_at, oldest, batch, self.jumps, digest).partition(":")
            counts[kind] = counts.get(kind, 0) + 1
            if kind == "quarantine":
                metrics.quarantined(protocol.name, note).inc()
            elif note == "reanchored":  # the jump check trusts the device's new run of reports (logged there)
                metrics.JUMP_REANCHORED.labels(protocol.name).inc()
        for destination, count in counts.items():
            metrics.routed(protocol.name, destination).inc(count)
        future = await self.writer.enqueue(batch)
        return Pending(reply=result.reply, future=future, records=len(result.positions))

    @staticmethod
    def _decode(protocol: Protocol, session: Session, frame: bytes) -> DecodeResult | Exception:
        """The decoder's result, or what it raised (a decoder bug must not take the listener down)."""
        session.credential = None  # a password counts for the frame that carries it
        try:
            return protocol.decode(frame, session)
        except Exception as exc:
            return exc

    @staticmethod
    def _undecodable(protocol: Protocol, session: Session, frame: bytes, exc: Exception) -> Pending:
        metrics.DECODE_ERRORS.labels(protocol.name).inc()
        if isinstance(exc, DecodeError):
            log.info("%s from %s: %s", session.transport, session.remote, exc)
            return Pending(reply=None, refused=f"decode error: {exc}")
        log.error("%s decoder failed on a frame from %s (hex %s)", protocol.name, session.remote, frame[:64].hex(),
                  exc_info=exc)
        return Pending(reply=None, refused=f"decoder failure: {type(exc).__name__}")

    def _take_options(self, session: Session, device_id: int | None) -> bool:
        """Puts the device's decoder options (``devices.options``; none for an unregistered device)
        in the session; True when they differ from those the decoder read until now."""
        found = self.directory.options(device_id) if device_id is not None else NO_OPTIONS
        if found is session.options:
            return False
        changed = found != session.options
        session.options = found
        return changed

    def _password_refused(self, protocol: Protocol, session: Session, device: str, device_id: int,
                          credential: str | None) -> str | None:
        """Why the frame is refused when ``device`` has a password the frame does not carry, else None.

        A connection sends it once (at login or with its first report); a datagram, every time."""
        expected = self.directory.password_sha256(device_id)
        if expected is None or session.transport == "mqtt":  # MQTT: the broker authenticates publishers
            return None
        if session.transport != "udp" and session.state.get(VERIFIED) == device:
            return None
        if credential is not None and hmac.compare_digest(hashlib.sha256(credential.encode()).digest(), expected):
            if session.transport != "udp":
                session.state[VERIFIED] = device
            return None
        what = "no password" if credential is None else "a wrong password"
        metrics.REFUSED.labels(protocol.name, "password").inc()
        source = address_of(session.remote)
        if self._logged(f"password {protocol.name} {source}"):
            log.warning("%s %s: device %s sent %s; refused (logged once per %.0f s per address)", protocol.name,
                        session.remote, device, what, self._logged.period_s)
        return f"password: device {device} sent {what}"

    def _sightings(self, protocol: str, session: Session, identifiers: set[str], raw: bytes,
                   seen_at: datetime) -> list[tuple[Any, ...]]:
        """unknown_devices rows for ``identifiers``, within the bounds: an identifier recorded before
        is always updated; a new one only while its source address has budget left this minute."""
        source = "mqtt" if session.transport == "mqtt" else address_of(session.remote)
        rows = []
        for identifier in sorted(identifiers):
            key = (identifier, protocol)
            if key in self._sighted:
                self._sighted.move_to_end(key)
            elif self._new_sightings.take(source):
                self._sighted[key] = None
                if len(self._sighted) > SIGHTED_MAX:
                    self._sighted.popitem(last=False)
            else:
                metrics.UNKNOWN_DROPPED.labels(protocol, "source_limit").inc()
                if self._logged(f"sightings {source}"):
                    log.warning("%s %s: more than %s new unknown devices a minute from %s; the rest are not"
                                " recorded (logged once per %.0f s per address)", protocol, session.transport,
                                self._new_sightings.per_minute, source, self._logged.period_s)
                continue
            if len(self._tasks) >= SIGHTINGS_BACKLOG:
                metrics.UNKNOWN_DROPPED.labels(protocol, "backlog").inc()
                continue
            rows.append((identifier, protocol, session.remote, seen_at, seen_at, raw))
        if rows and len(raw) > UNKNOWN_RAW_MAX:
            metrics.UNKNOWN_RAW_CUT.labels(protocol).inc()
            rows = [(*row[:5], raw[:UNKNOWN_RAW_MAX]) for row in rows]
        return rows
