"""The simulated devices of ``bench.ingest``: one load-generator process drives its share of
the connections over real TCP, each connection behaving like a terminal with a backlog.

* Teltonika: IMEI handshake (ACK ``01``), then data frames of ``batch`` records (codec 8),
  each followed by a wait for the 4-byte record count the server sends once the records
  are durable; then the next frame.
* GT06: login (10-byte ACK), then location frames (0x22), one position per frame as the
  protocol has it; ``window`` frames are written back to back and the connection waits for
  all their 10-byte ACKs before sending the next ``window`` (a device emptying its buffer).
* Fixed rate (``rate_per_connection`` > 0, ``bench.ingest --rate``): each connection sends its
  frames (GT06: its windows) at that many positions per second instead of as soon as the last
  ACK is in (``Pace``), so send->ACK latency is measured at a chosen load rather than at saturation.

Frames are encoded before the run, once, and shared by every connection of a protocol:
neither Teltonika data frames nor GT06 location frames carry the device's identity (the
connection's login does), so device ``d`` sends frames ``offset_d``, ``offset_d + 1``, ...
of one drive through Caracas, one fix per second: fix times are distinct and strictly
increasing per device. Encoding on the fly would cost the load generator more CPU than the
server spends decoding, on a machine where they share two cores.
"""

from __future__ import annotations

import asyncio
import math
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from multiprocessing.connection import Connection
from typing import Any

from avl.records import Position
from ingest.protocols import gt06, teltonika

TELTONIKA = "teltonika"
GT06 = "gt06"
PROTOCOLS = (TELTONIKA, GT06)
GT06_ACK_SIZE = 10


def track_position(i: int, start: datetime, protocol: str) -> Position:
    """Fix ``i`` of a loop through the Caracas valley (10.45-10.53 N, 66.82-66.94 W), one per second."""
    theta = i * 0.0015
    return Position(
        device="", fix_time=start + timedelta(seconds=i), protocol=protocol, valid=True,
        latitude=10.49 + 0.035 * math.sin(theta), longitude=-66.88 + 0.055 * math.cos(theta),
        speed_kmh=float(18 + (i * 7) % 47), course=float((math.degrees(theta) + 90) % 360),
        altitude_m=float(880 + (i % 60)), satellites=7 + i % 5, ignition=True, power_mv=12400 + (i * 13) % 500,
        odometer_m=1000 + i * 9, attributes={"rssi": 3 + i % 2},
    )


class FrameBook:
    """Frame ``k`` of one protocol, encoded once and shared by every connection."""

    def __init__(self, protocol: str, start: datetime, batch: int) -> None:
        self.protocol = protocol
        self.start = start
        self.batch = batch if protocol == TELTONIKA else 1
        self.frames: list[bytes] = []

    def positions_in(self, k: int) -> int:
        return self.batch

    def get(self, k: int) -> bytes:
        while len(self.frames) <= k:
            self.frames.append(self._encode(len(self.frames)))
        return self.frames[k]

    def _encode(self, k: int) -> bytes:
        if self.protocol == TELTONIKA:
            first = k * self.batch
            return teltonika.encode_batch([track_position(i, self.start, TELTONIKA)
                                           for i in range(first, first + self.batch)])
        # Serial 1 is the login's; location frames count from 2 (wrapping at 16 bits).
        return gt06.encode_position(track_position(k, self.start, GT06), (k + 2) & 0xFFFF)


@dataclass
class SimDevice:
    protocol: str
    imei: str
    offset: int  # first frame of the shared book this device sends


@dataclass
class ProtocolStats:
    connections: int = 0
    connect_errors: int = 0
    frames_sent: int = 0
    frames_acked: int = 0
    positions_acked: int = 0  # whole run (warm-up, window and drain)
    window_positions: int = 0  # ACKed within the measurement window
    window_frames: int = 0
    latencies: array[float] = field(default_factory=lambda: array("d"))  # seconds, frames ACKed in the window
    per_second: Counter[int] = field(default_factory=Counter)  # second since the window opened -> positions ACKed
    errors: list[str] = field(default_factory=list)
    unacked_frames: int = 0  # sent, never ACKed (connection error or drain timeout)

    def error(self, text: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(text)

    def as_dict(self) -> dict[str, Any]:
        return {"connections": self.connections, "connect_errors": self.connect_errors,
                "frames_sent": self.frames_sent, "frames_acked": self.frames_acked,
                "positions_acked": self.positions_acked, "window_positions": self.window_positions,
                "window_frames": self.window_frames, "latencies": self.latencies.tobytes(),
                "per_second": dict(self.per_second), "errors": self.errors, "unacked_frames": self.unacked_frames}


@dataclass
class Clock:
    start: float
    window: float  # measurement window [window, end)
    end: float


@dataclass
class Device:
    spec: SimDevice
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


async def _connect(spec: SimDevice, port: int, stats: ProtocolStats) -> Device | None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if spec.protocol == TELTONIKA:
            writer.write(teltonika.encode_login(spec.imei))
            ack = await asyncio.wait_for(reader.readexactly(1), 30)
            if ack != b"\x01":
                raise ConnectionError(f"login refused ({ack.hex()})")
        else:
            login = gt06.encode_login(spec.imei)
            assert login is not None
            writer.write(login)
            ack = await asyncio.wait_for(reader.readexactly(GT06_ACK_SIZE), 30)
            if ack[:2] != b"\x78\x78" or ack[3] != 0x01:
                raise ConnectionError(f"login refused ({ack.hex()})")
    except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
        stats.connect_errors += 1
        stats.error(f"{spec.protocol} {spec.imei}: connect/login: {type(exc).__name__}: {exc}")
        return None
    stats.connections += 1
    return Device(spec, reader, writer)


class Pace:
    """Fixed-rate mode: a connection's sends ``interval`` seconds apart from its own phase (spread
    over the first interval, so the connections together send evenly). When an ACK comes later than
    the next send is due, the send follows the ACK at once: the device's backlog, sent as soon as
    the protocol lets it. ``interval`` 0: as fast as the ACKs come back."""

    def __init__(self, clock: Clock, interval: float, phase: float) -> None:
        self.interval = interval
        self.next_at = clock.start + phase * interval

    async def wait(self) -> None:
        if self.interval:
            delay = self.next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self.next_at += self.interval


def _phase(imei: str) -> float:
    return (int(imei) * 0.6180339887) % 1.0


async def _teltonika(dev: Device, book: FrameBook, stats: ProtocolStats, clock: Clock, rate: float) -> None:
    reader, writer = dev.reader, dev.writer
    k = dev.spec.offset
    expected = book.batch.to_bytes(4, "big")
    lat = stats.latencies
    monotonic = time.monotonic
    pace = Pace(clock, book.batch / rate if rate else 0.0, _phase(dev.spec.imei))
    await asyncio.sleep(max(0.0, clock.start - monotonic()))
    while True:
        await pace.wait()
        if (sent_at := monotonic()) >= clock.end:
            break
        writer.write(book.get(k))
        stats.frames_sent += 1
        try:
            ack = await reader.readexactly(4)
        except (OSError, asyncio.IncompleteReadError) as exc:
            stats.unacked_frames += 1
            stats.error(f"teltonika {dev.spec.imei}: {type(exc).__name__}: {exc}")
            return
        now = monotonic()
        if ack != expected:
            stats.unacked_frames += 1
            stats.error(f"teltonika {dev.spec.imei}: ACK {ack.hex()} for {book.batch} records")
            return
        k += 1
        n = book.batch
        stats.frames_acked += 1
        stats.positions_acked += n
        stats.per_second[math.floor(now - clock.window)] += n
        if clock.window <= now < clock.end:
            stats.window_positions += n
            stats.window_frames += 1
            lat.append(now - sent_at)


async def _gt06(dev: Device, book: FrameBook, stats: ProtocolStats, clock: Clock, window: int, rate: float) -> None:
    reader, writer = dev.reader, dev.writer
    k = dev.spec.offset
    lat = stats.latencies
    monotonic = time.monotonic
    pace = Pace(clock, window / rate if rate else 0.0, _phase(dev.spec.imei))
    await asyncio.sleep(max(0.0, clock.start - monotonic()))
    while True:
        await pace.wait()
        if (sent_at := monotonic()) >= clock.end:
            break
        writer.write(b"".join(book.get(k + j) for j in range(window)))
        stats.frames_sent += window
        expected = window * GT06_ACK_SIZE
        got = bytearray()
        acked = 0
        try:
            while len(got) < expected:
                chunk = await reader.read(expected - len(got))
                if not chunk:
                    raise ConnectionError("closed by the server")
                now = monotonic()
                got += chunk
                complete = len(got) // GT06_ACK_SIZE
                fresh = complete - acked
                if fresh <= 0:
                    continue
                for j in range(acked, complete):
                    ack = got[j * GT06_ACK_SIZE:(j + 1) * GT06_ACK_SIZE]
                    if ack[:2] != b"\x78\x78" or ack[3] != 0x22:
                        raise ConnectionError(f"unexpected ACK {bytes(ack).hex()}")
                acked = complete
                stats.frames_acked += fresh
                stats.positions_acked += fresh
                stats.per_second[math.floor(now - clock.window)] += fresh
                if clock.window <= now < clock.end:
                    stats.window_positions += fresh
                    stats.window_frames += fresh
                    elapsed = now - sent_at
                    for _ in range(fresh):
                        lat.append(elapsed)
        except (OSError, asyncio.IncompleteReadError) as exc:
            stats.unacked_frames += window - acked
            stats.error(f"gt06 {dev.spec.imei}: {type(exc).__name__}: {exc}")
            return
        k += window


async def run_devices(specs: list[SimDevice], ports: dict[str, int], options: dict[str, Any],
                      go: Any) -> dict[str, Any]:
    """Connects and logs in every device, awaits ``go()`` -> Clock, runs the load, drains.

    Returns per-protocol statistics (``ProtocolStats.as_dict``)."""
    start = datetime.fromisoformat(options["track_start"])
    books = {p: FrameBook(p, start, options["batch"]) for p in PROTOCOLS}
    window = options["window"]
    rate = options.get("rate_per_connection", 0.0)  # positions/s per connection; 0: as fast as ACKed
    # Encode ahead what the devices are likely to need, so the run itself rarely encodes.
    for spec in specs:
        book = books[spec.protocol]
        book.get(spec.offset + options["prebuild_frames"][spec.protocol])
    stats = {p: ProtocolStats() for p in PROTOCOLS}
    limit = asyncio.Semaphore(64)

    async def connect(spec: SimDevice) -> Device | None:
        async with limit:
            return await _connect(spec, ports[spec.protocol], stats[spec.protocol])

    devices = [d for d in await asyncio.gather(*(connect(s) for s in specs)) if d is not None]
    clock: Clock = await go(len(devices))
    tasks = []
    for dev in devices:
        st, book = stats[dev.spec.protocol], books[dev.spec.protocol]
        if dev.spec.protocol == TELTONIKA:
            tasks.append(asyncio.create_task(_teltonika(dev, book, st, clock, rate)))
        else:
            tasks.append(asyncio.create_task(_gt06(dev, book, st, clock, window, rate)))
    # Every frame sent before the end is waited for (so ACKed == stored can be checked),
    # but not forever.
    drain_s = options["drain_s"]
    await asyncio.sleep(max(0.0, clock.end - time.monotonic()))
    done, pending = await asyncio.wait(tasks, timeout=drain_s) if tasks else (set(), set())
    for task, dev in zip(tasks, devices, strict=True):
        if task in pending:
            task.cancel()
            st = stats[dev.spec.protocol]
            st.unacked_frames += 1 if dev.spec.protocol == TELTONIKA else window
            st.error(f"{dev.spec.protocol} {dev.spec.imei}: no ACK within {drain_s} s after the end")
    await asyncio.gather(*tasks, return_exceptions=True)
    for dev in devices:
        dev.writer.close()
    await asyncio.gather(*(d.writer.wait_closed() for d in devices), return_exceptions=True)
    return {p: s.as_dict() for p, s in stats.items()}


def worker_main(conn: Connection, specs: list[SimDevice], ports: dict[str, int], options: dict[str, Any]) -> None:
    """A load-generator process: ``ready`` -> parent, ``go`` (Clock) <- parent, results -> parent."""

    async def go(connected: int) -> Clock:
        conn.send(("ready", connected))
        loop = asyncio.get_running_loop()
        message = await loop.run_in_executor(None, conn.recv)
        return Clock(*message)

    async def main() -> dict[str, Any]:
        return await run_devices(specs, ports, options, go)

    try:
        try:
            import uvloop  # cheaper per packet: the load generator should cost little CPU
        except ImportError:
            result = asyncio.run(main())
        else:
            result = uvloop.run(main())
        conn.send(("result", result))
    except BaseException as exc:  # reported to the parent, which prints it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        conn.close()
