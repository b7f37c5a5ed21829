"""UDP listeners: each datagram is a frame; the reply goes back to its source once durable.

UDP has no backpressure: when too many datagrams are in flight, new ones are counted and
dropped unacknowledged (the device resends), rather than queued without bound.
A UDP source address can be forged, so the listener must not be an amplifier: a datagram
from outside the allowed networks gets nothing, and a reply larger than the datagram it
answers is counted and not sent (the device resends; its report is stored once).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import OrderedDict

from ingest import metrics
from ingest.intake import Intake
from ingest.protocols import Protocol, Session
from ingest.sources import SourceGate

log = logging.getLogger("avl.ingest.udp")


class UdpListener(asyncio.DatagramProtocol):
    def __init__(self, protocol: Protocol, intake: Intake, host: str, port: int, *, max_frame: int = 65536,
                 max_inflight: int = 10_000, max_sessions: int = 200_000, allow: list[str] | None = None) -> None:
        self.protocol = protocol
        self.intake = intake
        self.host = host
        self.port = port
        self.max_frame = max_frame
        self.max_inflight = max_inflight
        self.max_sessions = max_sessions
        self.gate = SourceGate(protocol.name, "udp", allow or [])
        self.sessions: OrderedDict[tuple[str, int], Session] = OrderedDict()
        self.transport: asyncio.DatagramTransport | None = None
        self._inflight: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        transport, _ = await loop.create_datagram_endpoint(lambda: self, sock=sock)
        self.transport = transport

    async def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        for task in list(self._inflight):
            task.cancel()
        await asyncio.gather(*self._inflight, return_exceptions=True)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not self.gate.admits(addr[0]):
            return
        if len(data) > self.max_frame:
            metrics.REFUSED.labels(self.protocol.name, "oversized").inc()
            return
        if len(self._inflight) >= self.max_inflight:
            metrics.REFUSED.labels(self.protocol.name, "overload").inc()
            return
        session = self.sessions.get(addr)
        if session is None:
            session = self.sessions[addr] = Session(transport="udp", remote=f"{addr[0]}:{addr[1]}")
            if len(self.sessions) > self.max_sessions:
                self.sessions.popitem(last=False)
        else:
            self.sessions.move_to_end(addr)
        task = asyncio.ensure_future(self._process(data, addr, session))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _process(self, data: bytes, addr: tuple[str, int], session: Session) -> None:
        pending = await self.intake.frame(self.protocol, session, data)
        if await pending.accepted():
            if pending.reply and len(pending.reply) > len(data):
                metrics.UDP_REPLIES_DROPPED.labels(self.protocol.name).inc()
                log.debug("%s %s: reply of %s bytes to a datagram of %s not sent", self.protocol.name, session.remote,
                          len(pending.reply), len(data))
            elif pending.reply and self.transport is not None:
                self.transport.sendto(pending.reply, addr)
        else:
            denial = pending.denial if (pending.refused or "").startswith("password") else None
            if denial and len(denial) <= len(data) and self.transport is not None:
                self.transport.sendto(denial, addr)  # the protocol's "wrong password" answer
            if pending.retry:  # other refusals are counted where they are decided (intake)
                metrics.REFUSED.labels(self.protocol.name, "not_durable").inc()
            log.debug("%s %s: not acknowledged: %s", self.protocol.name, session.remote, pending.refused)
