"""Running a real ingest service for tests, and talking to it like devices do."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import struct
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from avl.admin import DeviceSpec, add_account, add_device
from avl.config import ConfigError, Settings
from avl.embedded import free_port
from avl.records import Position
from ingest.protocols import DEFAULT_PORTS
from ingest.service import IngestService
from ingest.transports.proxy import V2_SIGNATURE


def settings_for(data_dir: Path, **overrides: Any) -> Settings:
    ports = {name: free_port() for name in DEFAULT_PORTS}
    values: dict[str, Any] = {"data_dir": data_dir, "ingest_host": "127.0.0.1", "ports": ports, "metrics_port": 0,
                              "sweep_grace_s": 0.0,  # diagnostics: the tests start ingest moments before sweeping
                              # Each service its own persistent MQTT session on the shared test broker: a
                              # session left by another test would hand this one that test's messages.
                              "mqtt_client_id": f"avl-test-{uuid.uuid4().hex[:12]}",
                              "batch_max_ms": 2.0, "idle_timeout_s": 30.0}
    values.update(overrides)
    return Settings(**values)


@contextlib.asynccontextmanager
async def running_ingest(settings: Settings, database_url: str, mqtt_url: str | None = None) -> AsyncIterator[IngestService]:
    for attempt in range(5):
        service = IngestService(settings, database_url, mqtt_url)
        try:
            await service.start()
            break
        except ConfigError:
            # A "free" port was taken in between by another process: pick new ones.
            if attempt == 4:
                raise
            settings.ports = {name: free_port() for name in DEFAULT_PORTS}
    try:
        yield service
    finally:
        await service.close()


def register(database_url: str, devices: list[tuple[str, str]], account: str = "Flota Test") -> dict[str, int]:
    """Registers (identifier, protocol) pairs; returns identifier -> device id."""
    with psycopg.connect(database_url) as conn:
        if not conn.execute("SELECT 1 FROM accounts WHERE name = %s", (account,)).fetchone():
            add_account(conn, account)
        return {ident: add_device(conn, DeviceSpec(identifier=ident, protocol=proto, account=account))["id"]
                for ident, proto in devices}


def track(device: str, count: int, start: datetime | None = None, step_s: int = 30) -> list[Position]:
    """A plausible drive through Caracas, one report every ``step_s`` seconds."""
    start = start or datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=step_s * count)
    return [Position(device=device, fix_time=start + timedelta(seconds=i * step_s), valid=True,
                     latitude=10.48 + i * 0.0004, longitude=-66.90 + i * 0.0003, speed_kmh=36.0 + (i % 5),
                     course=float((i * 7) % 360), altitude_m=900.0, satellites=9, ignition=True, power_mv=12600)
            for i in range(count)]


async def exchange(port: int, frames: list[bytes], expect: list[int], wait_s: float = 10.0) -> list[bytes]:
    """Sends frames on one TCP connection, each waiting for a reply of the given size (0: none)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    replies = []
    try:
        for frame, size in zip(frames, expect, strict=True):
            writer.write(frame)
            await writer.drain()
            if size:
                replies.append(await asyncio.wait_for(reader.readexactly(size), wait_s))
    finally:
        writer.close()
    return replies


async def http_status(port: int, request: bytes) -> bytes:
    """The response's status line, or b"" when the server closed without answering."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 10)
    except ConnectionError:
        return b""
    finally:
        writer.close()


async def closed_unanswered(port: int, data: bytes) -> bool:
    """True when the server closes the connection after ``data`` without a byte of answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10) == b""
    except ConnectionError:
        return True
    finally:
        writer.close()


async def udp_exchange(port: int, datagram: bytes, wait_s: float = 10.0) -> bytes | None:
    """Sends one datagram from a new socket; the first reply, or None when none came within ``wait_s``."""
    loop = asyncio.get_running_loop()
    got: asyncio.Future[bytes] = loop.create_future()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: object) -> None:
            if not got.done():
                got.set_result(data)

    transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", port))
    try:
        transport.sendto(datagram)
        return await asyncio.wait_for(got, wait_s)
    except TimeoutError:
        return None
    finally:
        transport.close()


async def eventually(condition: Callable[[], bool], wait_s: float = 10.0) -> bool:
    """Polls ``condition`` until it holds or ``wait_s`` has passed (a loaded machine is slow); its last value."""
    for _ in range(int(wait_s / 0.05)):
        if condition():
            return True
        await asyncio.sleep(0.05)
    return condition()


def proxy_v2(src: str, sport: int, dst: str = "10.0.0.1", dport: int = 5023) -> bytes:
    """A PROXY protocol v2 header, as HAProxy's ``send-proxy-v2`` puts it before a device's bytes."""
    body = ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed + struct.pack(">HH", sport, dport)
    return V2_SIGNATURE + bytes((0x21, 0x11)) + struct.pack(">H", len(body)) + body


def stored(database_url: str, device_id: int) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT fix_time, latitude, longitude, speed_kmh, ignition, flags FROM positions"
                            " WHERE device_id = %s ORDER BY fix_time", (device_id,)).fetchall()
