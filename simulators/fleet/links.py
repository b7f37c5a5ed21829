"""Transports a terminal talks over: a TCP stream (also HTTP keep-alive for OsmAnd), a UDP
socket of its own, or an MQTT session. Each sends a frame and waits for its ACK.

``exchange`` returns True when the frame was acknowledged, False when the ACK timed out or
the server answered with a refusal; it raises ``ConnectionError`` when the link is gone
(the terminal then reconnects with backoff).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from collections.abc import Hashable

import aiomqtt

from simulators.fleet.codecs import Codec, Frame

_token_counter = 0


def _token() -> int:
    global _token_counter
    _token_counter += 1
    return _token_counter


class Link:
    """Base: what a terminal needs from any transport."""

    async def exchange(self, frame: Frame, wait_s: float, *, duplicate: bool = False,
                       garbage: bytes | None = None, read: bool = True) -> bool:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class StreamLink(Link):
    """TCP (or HTTP over TCP). Keyed ACKs are matched by key; in-order ACKs by position:
    every frame that expects an ACK queues a token, and each ACK answers the oldest token."""

    def __init__(self, codec: Codec, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.codec = codec
        self.reader = reader
        self.writer = writer
        self.buf = bytearray()
        self.owed: deque[Hashable] = deque()  # in-order codecs: tokens of frames awaiting an ACK
        self.login_pending = False
        self.answers: dict[Hashable, bool] = {}

    @classmethod
    async def open(cls, codec: Codec, host: str, port: int, wait_s: float, bind: str | None) -> StreamLink:
        local = (bind, 0) if bind else None
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, local_addr=local), wait_s)
        return cls(codec, reader, writer)

    async def login(self, frame: Frame, wait_s: float) -> bool:
        self.login_pending = True
        try:
            return await self.exchange(frame, wait_s)
        finally:
            self.login_pending = False

    def _write(self, data: bytes) -> None:
        if self.writer.is_closing():
            raise ConnectionError("connection closed")
        self.writer.write(data)

    async def exchange(self, frame: Frame, wait_s: float, *, duplicate: bool = False,
                       garbage: bytes | None = None, read: bool = True) -> bool:
        token: Hashable = frame.key if self.codec.keyed else _token()
        if garbage:
            self._write(garbage)
        for _ in range(2 if duplicate else 1):
            self._write(frame.data)
            if frame.expects_ack and not self.codec.keyed:
                self.owed.append(token)
        try:
            async with asyncio.timeout(wait_s):
                await self.writer.drain()
        except TimeoutError:
            return False
        if not frame.expects_ack or not read:
            return True
        self.answers.clear()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while token not in self.answers:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                async with asyncio.timeout(remaining):
                    data = await self.reader.read(4096)
            except TimeoutError:
                return False
            if not data:
                raise ConnectionError("closed by the server")
            self.buf += data
            acks, used = self.codec.parse(self.buf, self.login_pending)
            del self.buf[:used]
            for key, ok in acks:
                if not self.codec.keyed:
                    if not self.owed:
                        continue  # an ACK we did not ask for
                    key = self.owed.popleft()
                if key == token:
                    self.answers[token] = ok or self.answers.get(token, False)
        return self.answers[token]

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1):
                await self.writer.wait_closed()


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.lost = False

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.queue.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP unreachable and the like: the ACK just does not come

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


class UdpLink(Link):
    """A UDP socket of the terminal's own (the server keys UDP sessions by source address)."""

    def __init__(self, codec: Codec, transport: asyncio.DatagramTransport, protocol: _Datagrams) -> None:
        self.codec = codec
        self.transport = transport
        self.protocol = protocol

    @classmethod
    async def open(cls, codec: Codec, host: str, port: int, bind: str | None) -> UdpLink:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            _Datagrams, remote_addr=(host, port), local_addr=(bind, 0) if bind else None)
        return cls(codec, transport, protocol)

    async def exchange(self, frame: Frame, wait_s: float, *, duplicate: bool = False,
                       garbage: bytes | None = None, read: bool = True) -> bool:
        if self.protocol.lost:
            raise ConnectionError("socket closed")
        if garbage:
            self.transport.sendto(garbage)
        for _ in range(2 if duplicate else 1):
            self.transport.sendto(frame.data)
        if not frame.expects_ack or not read:
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                async with asyncio.timeout(remaining):
                    data = await self.protocol.queue.get()
            except TimeoutError:
                return False
            acks, _ = self.codec.parse(bytearray(data), False)
            if any(key == frame.key and ok for key, ok in acks):
                return True

    async def close(self) -> None:
        self.transport.close()


class MqttLink(Link):
    """One MQTT session per terminal; the ACK of a QoS 1 publish is the broker's PUBACK."""

    def __init__(self, client: aiomqtt.Client, topic: str) -> None:
        self.client = client
        self.topic = topic

    @classmethod
    async def open(cls, host: str, port: int, identifier: str, topic: str, wait_s: float,
                   username: str | None = None, password: str | None = None, bind: str | None = None) -> MqttLink:
        client = aiomqtt.Client(host, port, identifier=f"sim-{identifier}", username=username, password=password,
                                keepalive=120, timeout=wait_s, bind_address=bind or "")
        try:
            await client.__aenter__()
        except aiomqtt.MqttError as exc:
            raise ConnectionError(str(exc)) from None
        return cls(client, topic)

    async def exchange(self, frame: Frame, wait_s: float, *, duplicate: bool = False,
                       garbage: bytes | None = None, read: bool = True) -> bool:
        try:
            if garbage:
                await self.client.publish(self.topic, garbage, qos=1, timeout=wait_s)
            for _ in range(2 if duplicate else 1):
                await self.client.publish(self.topic, frame.data, qos=1, timeout=wait_s)
        except aiomqtt.MqttError as exc:
            if "timed out" in str(exc).lower():
                return False
            raise ConnectionError(str(exc)) from None
        return True

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await self.client.__aexit__(None, None, None)


def garbage_bytes(rng: random.Random) -> bytes:
    """Line noise: 8-40 random bytes."""
    return bytes(rng.getrandbits(8) for _ in range(rng.randint(8, 40)))
