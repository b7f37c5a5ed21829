"""One frame's way through ingest, shared by every transport: decode, identify, route,
queue for the writer; the reply goes back only once the frame's records are durable.

A connection is bound to the first device it identifies as: a later frame carrying
another device's identity is refused (a terminal cannot write for another terminal).
UDP is not bound: each datagram identifies itself, and NAT reuses source addresses.
Reports of unregistered devices are recorded as sightings (unknown devices) and not
acknowledged, so the terminal keeps them until an installer registers it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ingest import metrics
from ingest.pipeline import Batch, DeviceDirectory, route
from ingest.protocols import DecodeError, Protocol, Session
from ingest.writer import NotDurable, Writer, oldest_accepted

log = logging.getLogger("avl.ingest")

BOUND = "_bound_device"


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
    def __init__(self, writer: Writer, directory: DeviceDirectory, retention_days: int) -> None:
        self.writer = writer
        self.directory = directory
        self.retention_days = retention_days
        self._tasks: set[asyncio.Future[None]] = set()

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
        try:
            result = protocol.decode(frame, session)
        except DecodeError as exc:
            metrics.DECODE_ERRORS.labels(protocol.name).inc()
            log.info("%s from %s: %s", session.transport, session.remote, exc)
            return Pending(reply=None, refused=f"decode error: {exc}")
        except Exception as exc:  # a decoder bug must not take the listener down
            metrics.DECODE_ERRORS.labels(protocol.name).inc()
            log.exception("%s decoder failed on a frame from %s (hex %s)", protocol.name, session.remote, frame[:64].hex())
            return Pending(reply=None, refused=f"decoder failure: {type(exc).__name__}")
        binds = session.transport != "udp"
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
            return Pending(reply=result.reply)

        # A frame carrying many records (Teltonika batches, Queclink FRI) keeps its raw bytes once,
        # with its first report, instead of one copy per record.
        for p in result.positions[1:]:
            if p.raw is frame:
                p.raw = b""
        received_at = datetime.now(UTC)
        oldest = oldest_accepted(self.retention_days)
        batch = Batch()
        unknown: set[str] = set()
        counts: dict[str, int] = {}
        # UDP datagrams each carry their own identity and a source address is reused by other
        # devices (carrier NAT), so only connections (TCP, HTTP, MQTT topics) are bound.
        for p in result.positions:
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
            destination = route(p, device_id, received_at, oldest, batch)
            kind = destination.partition(":")[0]
            counts[kind] = counts.get(kind, 0) + 1
        for destination, count in counts.items():
            metrics.routed(protocol.name, destination).inc(count)
        if unknown:
            sightings = Batch(unknown=[(ident, protocol.name, session.remote, received_at, received_at, frame)
                                       for ident in sorted(unknown)])
            # Recorded, but never acknowledged.
            self._background(self._record(sightings))
            metrics.UNKNOWN_FRAMES.labels(protocol.name).inc()
            return Pending(reply=None, refused=f"unknown device {', '.join(sorted(unknown))}")
        future = await self.writer.enqueue(batch)
        return Pending(reply=result.reply, future=future, records=len(result.positions))
