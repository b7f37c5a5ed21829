"""TCP listeners (and HTTP for osmand, which frames whole requests): one per protocol port.

Per connection: frames are split from the stream, decoded and queued in order; their
replies go out in the same order once durable. Bounded: frame size (a stream with no
frame within the limit is cut off), idle time, connections per source address, and the
time a slow reader may take to accept its ACKs. A source outside the listener's allowed
networks (the device's own address behind the PROXY protocol) is closed at once.
A connection the server ends (a cut-off frame, a refusal) is ended in order: see ``_end``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import typing
from collections import Counter
from collections.abc import Callable

from ingest import metrics
from ingest.intake import Intake
from ingest.protocols import FrameError, Protocol, Session
from ingest.sources import SourceGate
from ingest.transports.proxy import parse_proxy_header

log = logging.getLogger("avl.ingest.tcp")

_HTTP_REFUSED = {
    "unknown": b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 15\r\n\r\nunknown device\n",
    "busy": b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 29\r\n"
            b"Retry-After: 30\r\n\r\nreport not stored, try again\n",
    "bad": b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\nbad request\n",
    "identity": b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 28\r\n\r\nconnection bound to another\n",
    "password": b"HTTP/1.1 401 Unauthorized\r\nContent-Type: text/plain\r\nContent-Length: 25\r\n"
                b"WWW-Authenticate: Basic realm=\"avl\"\r\nConnection: close\r\n\r\ndevice password required\n",
}
# Refusals after which the connection is not trusted any more: it is closed.
_CLOSING = ("connection is bound", "password")


# A device that sends this many undecodable frames in a row is not a device we can serve.
MAX_BAD_FRAMES = 32
# ... or this many frames in a row that carry nothing (keep-alives), without a report between them.
MAX_EMPTY_FRAMES = 256
# Bytes-no-frame-starts-with skipped (one split each, often one byte each) before other connections get a turn.
GARBAGE_SKIPS_PER_TURN = 512
# How long, and how many bytes, a connection the server ends is read (and dropped) after its FIN: as much as
# Linux's largest autotuned receive buffer (tcp_rmem max, 32 MiB) may hold; reading it costs milliseconds.
LINGER_S = 2.0
LINGER_MAX_BYTES = 32 << 20


class SourceSlots(typing.Protocol):
    """Connections per source address counted across the ingest processes of a host (see
    ``ingest.processes.SharedSourceCounts``), so the limit is the host's, not each process's."""

    def admit(self, key: str, source: str, limit: int) -> bool: ...

    def leave(self, key: str, source: str) -> None: ...


class TcpListener:
    def __init__(self, protocol: Protocol, intake: Intake, host: str, port: int, *, transport: str = "tcp",
                 idle_timeout_s: float = 600.0, max_frame: int = 65536, max_per_source: int = 256,
                 write_timeout_s: float = 30.0, proxy_protocol: bool = False, allow: list[str] | None = None,
                 slots: SourceSlots | None = None) -> None:
        self.protocol = protocol
        self.intake = intake
        self.host = host
        self.port = port
        self.transport = transport
        self.idle_timeout_s = idle_timeout_s
        self.max_frame = max_frame
        self.max_per_source = max_per_source
        self.write_timeout_s = write_timeout_s
        self.proxy_protocol = proxy_protocol
        self.gate = SourceGate(protocol.name, transport, allow or [])
        self.per_source: Counter[str] = Counter()
        self.slots = slots
        self.server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        # SO_REUSEPORT: several ingest processes may share the port; the kernel spreads connections.
        self.server = await asyncio.start_server(self._handle, self.host, self.port, reuse_port=True,
                                                 backlog=4096, limit=self.max_frame)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        peer = writer.get_extra_info("peername") or ("?", 0)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        first = b""
        if self.proxy_protocol:
            try:
                proxied, first = await self._proxy_header(reader)
            except (FrameError, TimeoutError, ConnectionError, asyncio.IncompleteReadError) as exc:
                metrics.REFUSED.labels(self.protocol.name, "proxy_header").inc()
                log.info("%s %s:%s: %s; closing", self.protocol.name, peer[0], peer[1], exc)
                self._connections.discard(task)
                writer.close()
                return
            if proxied is not None:
                peer = proxied
        source = str(peer[0])
        if not self.gate.admits(source):
            self._connections.discard(task)
            writer.close()
            return
        if (self.per_source[source] >= self.max_per_source if self.slots is None
                else not self.slots.admit(self.protocol.name, source, self.max_per_source)):
            metrics.REFUSED.labels(self.protocol.name, "per_source_limit").inc()
            log.warning("%s: refusing connection from %s: %s connections already open", self.protocol.name, source,
                        self.max_per_source)
            self._connections.discard(task)
            writer.close()
            return
        self.per_source[source] += 1
        gauge = metrics.CONNECTIONS.labels(self.protocol.name)
        gauge.inc()
        session = Session(transport=self.transport, remote=f"{peer[0]}:{peer[1]}")
        try:
            await self._serve(reader, writer, session, first)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except TimeoutError:
            log.debug("%s %s: idle or slow reader, closing", self.protocol.name, session.remote)
        except asyncio.CancelledError:
            # Only ``close`` cancels a connection. Ended quietly: on Python 3.11 the stream's own done
            # callback calls ``exception()`` on a cancelled task and logs a traceback for it.
            pass
        except FrameError as exc:
            metrics.REFUSED.labels(self.protocol.name, "frame_cut").inc()
            log.info("%s %s: %s; closing", self.protocol.name, session.remote, exc)
            await _end(reader, writer)
        finally:
            gauge.dec()
            self.per_source[source] -= 1
            if self.per_source[source] <= 0:
                del self.per_source[source]
            if self.slots is not None:
                self.slots.leave(self.protocol.name, source)
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1)

    async def _proxy_header(self, reader: asyncio.StreamReader) -> tuple[tuple[str, int] | None, bytes]:
        """Reads the load balancer's PROXY header; returns the device's address and the bytes after it."""
        data = b""
        async with asyncio.timeout(5):
            while True:
                chunk = await reader.read(512)
                if not chunk:
                    raise ConnectionError("closed before the PROXY header")
                data += chunk
                parsed = parse_proxy_header(data)
                if parsed is not None:
                    address, consumed = parsed
                    return address, data[consumed:]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, session: Session,
                     first: bytes = b"") -> None:
        loop = asyncio.get_running_loop()
        # One timer per connection, moved at each read (a wait_for per read costs a task per read).
        async with asyncio.timeout(None) as idle:
            await self._stream(reader, writer, session, first, lambda s: idle.reschedule(
                None if s is None else loop.time() + s))

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, session: Session,
                      first: bytes, idle: Callable[[float | None], None]) -> None:
        buffer = b""
        http = self.transport == "http"
        pending_first = first
        garbage = skips = failures = empty = 0
        while True:
            if pending_first:
                chunk, pending_first = pending_first, b""
            else:
                idle(self.idle_timeout_s)
                chunk = await reader.read(65536)
                idle(None)  # waiting for our own ACKs is not the device's silence
            if not chunk:
                return
            buffer += chunk
            pendings = []
            while buffer:
                frame, consumed = self.protocol.split(buffer)
                if consumed == 0:
                    break
                buffer = buffer[consumed:]
                if frame is None:
                    # Bytes no frame can start with. A stream of them is cut off after max_frame
                    # bytes, so line noise cannot cost the process unbounded work.
                    garbage += consumed
                    if garbage > self.max_frame:
                        raise FrameError(self.protocol.name, f"no frame in {garbage} bytes", buffer[:32])
                    skips += 1
                    if skips % GARBAGE_SKIPS_PER_TURN == 0:
                        await asyncio.sleep(0)  # skipped a byte at a time, a chunk of noise takes 0.2 s: others go first
                    continue
                garbage = 0
                pending = await self.intake.frame(self.protocol, session, frame)
                pendings.append(pending)
                failures = failures + 1 if (pending.refused or "").startswith("decode") else 0
                if failures > MAX_BAD_FRAMES:
                    raise FrameError(self.protocol.name, f"{failures} undecodable frames in a row", frame[:32])
                # Frames that yield nothing at all (keep-alives) are cheap, but a flood of them is not a device.
                empty = empty + 1 if not pending.records and pending.reply is None and pending.refused is None else 0
                if empty > MAX_EMPTY_FRAMES:
                    raise FrameError(self.protocol.name, f"{empty} empty frames in a row", frame[:32])
                if len(pendings) % 64 == 0:
                    await asyncio.sleep(0)  # a long burst must not keep other connections waiting
            if len(buffer) > self.max_frame:
                raise FrameError(self.protocol.name, f"no complete frame within {self.max_frame} bytes", buffer[:64])
            close = False
            out: list[bytes] = []  # replies due, in order: one write for all that are ready together
            for pending in pendings:
                if (pending.refused or "").startswith(_CLOSING):
                    close = True  # another device's identity, or no password: it is not trusted any more
                if out and pending.future is not None and not pending.future.done():
                    writer.write(b"".join(out))  # what is durable goes out before waiting for the rest
                    out.clear()
                if await pending.accepted():
                    if pending.reply:
                        out.append(pending.reply)
                        close = close or (http and b"\r\nConnection: close" in pending.reply.split(b"\r\n\r\n", 1)[0])
                    continue
                if pending.retry:  # other refusals are counted where they are decided (intake)
                    metrics.REFUSED.labels(self.protocol.name, "not_durable").inc()
                log.debug("%s %s: not acknowledged: %s", self.protocol.name, session.remote, pending.refused)
                if pending.denial and (pending.refused or "").startswith("password"):
                    out.append(pending.denial)  # the protocol's "wrong password" answer, then the close
                if http:
                    out.append(_HTTP_REFUSED[_http_reason(pending.refused or "")])
            if out:
                writer.write(b"".join(out))
            if pendings and writer.transport.get_write_buffer_size():  # else nothing is waiting to go out
                async with asyncio.timeout(self.write_timeout_s):
                    await writer.drain()
            if close:
                await _end(reader, writer)
                return


async def _end(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Ends a connection the server gives up on so that the peer sees the end (and the reply before it).

    Closing a socket while bytes the peer sent are still unread makes the kernel answer with a reset
    (RST) instead of an orderly end (FIN), and a reset can reach the peer before it has read what was
    sent: it sees "connection reset", not the refusal and the end. A peer that kept writing while the
    server was busy (an endless frame, a pipelined request) always leaves such bytes. So: FIN first,
    then read and drop what still comes, for at most ``LINGER_S`` and ``LINGER_MAX_BYTES`` (the way
    HTTP servers close: nginx's lingering_close); the caller then closes.
    """
    with contextlib.suppress(OSError, RuntimeError):
        if writer.can_write_eof():
            writer.write_eof()
    dropped = 0
    with contextlib.suppress(TimeoutError, OSError, asyncio.IncompleteReadError):
        async with asyncio.timeout(LINGER_S):
            while dropped < LINGER_MAX_BYTES:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                dropped += len(chunk)


def _http_reason(refused: str) -> str:
    if refused.startswith("unknown device"):
        return "unknown"
    if refused.startswith("decode"):
        return "bad"
    if refused.startswith("connection is bound"):
        return "identity"
    if refused.startswith("password"):
        return "password"
    return "busy"
