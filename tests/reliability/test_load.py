"""Load and hostile connections: 10,000 concurrent TCP connections held (memory measured),
slowloris-style trickling and silent connections, a reader that never takes its ACKs,
a stream of garbage, a frame that never ends, a hostile frame: none may starve a normal
device, and the endless ones are cut off."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from ingest.protocols import NAMES, gl200, teltonika
from tests.ingest.harness import register, track
from tests.reliability.harness import (
    ADAPTERS,
    IngestProcess,
    Ledger,
    device,
    drain,
    imei,
    percentile,
    raise_nofile,
    rss_kib,
    stored_by_device,
)

REGRESSIONS = Path(__file__).resolve().parents[1] / "ingest" / "protocols" / "regressions"


def _sources(first: int, count: int) -> list[str]:
    """Loopback source addresses 127.0.<first..>.x: each is one 'device network address'."""
    return [f"127.0.{(first + i) // 250}.{(first + i) % 250 + 2}" for i in range(count)]


async def _open(port: int, source: str, rcvbuf: int | None = None
                ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((source, 0))
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock)


async def _normal_device(port: int, ident: str, seconds: float, ledger: Ledger, pause_s: float = 0.1) -> None:
    stop, give_up = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(device(ADAPTERS["teltonika"](), port, ident, stop, ledger, give_up=give_up,
                                      pause_s=pause_s, ack_timeout_s=10))
    await asyncio.sleep(seconds)
    await drain([task], stop, give_up, 15)


@pytest.mark.parametrize("connections", [10_000])
async def test_ten_thousand_connections_held(db_url: str, tmp_path: Path, connections: int) -> None:
    limit = raise_nofile(connections * 2 + 2000)  # this process and (inherited) the ingest process
    if limit < connections + 1000:
        pytest.skip(f"cannot raise the open-file limit to hold {connections} connections (got {limit})")
    fresh = imei(1, "35")
    register(db_url, [(fresh, "teltonika")])
    ingest = IngestProcess(db_url, tmp_path / "data", ["teltonika"])
    await asyncio.to_thread(ingest.start)
    port = ingest.ports["teltonika"]
    # The default AVL_MAX_CONNECTIONS_PER_SOURCE (256) stays: the fleet comes from 40 addresses.
    per_source = 250
    sources = _sources(0, connections // per_source)
    rss_idle = ingest.rss_kib()
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    failures = 0
    gate = asyncio.Semaphore(500)

    async def login(n: int) -> None:
        nonlocal failures
        async with gate:
            try:
                reader, writer = await _open(port, sources[n // per_source])
                writer.write(teltonika.encode_login(imei(100_000 + n, "35")))
                if await asyncio.wait_for(reader.readexactly(1), 30) != b"\x01":
                    raise ConnectionError("login refused")
                held.append((reader, writer))
            except (OSError, asyncio.IncompleteReadError, TimeoutError):
                failures += 1

    started = time.monotonic()
    try:
        await asyncio.gather(*(login(n) for n in range(connections)))
        connect_s = time.monotonic() - started
        await asyncio.sleep(2.0)
        open_server = ingest.metric('avl_open_connections{protocol="teltonika"}')
        rss_held = ingest.rss_kib()
        ledger = Ledger()
        await _normal_device(port, fresh, 5.0, ledger)
        still_open = ingest.metric('avl_open_connections{protocol="teltonika"}')
        client_rss = rss_kib(os.getpid())
    finally:
        for _, writer in held:
            writer.close()
        ingest.stop()
    stored = stored_by_device(db_url, [fresh])
    per_conn = (rss_held - rss_idle) / max(1, len(held))
    print(f"\n{connections} connections from {len(sources)} source addresses ({per_source} each):"
          f" logged in and held {len(held)} (failed {failures}) in {connect_s:.1f} s; server sees {open_server:.0f} open,"
          f" {still_open:.0f} after 5 s more; ingest RSS idle {rss_idle / 1024:.1f} MiB, holding them"
          f" {rss_held / 1024:.1f} MiB ({per_conn:.1f} KiB per connection); test client RSS {client_rss / 1024:.0f} MiB;"
          f" a fresh device meanwhile: frames {ledger.frames_sent}, acknowledged {ledger.acked_count},"
          f" stored {stored.total}, ACK latency p50 {percentile(ledger.latencies, 0.5) * 1000:.0f} ms"
          f" max {max(ledger.latencies, default=float('nan')) * 1000:.0f} ms")
    assert failures == 0 and len(held) == connections
    assert open_server >= connections and still_open >= connections
    assert ledger.acked_count > 0 and stored.total == ledger.acked_count
    assert max(ledger.latencies) < 1.0, "a fresh device waited over a second for its ACK"
    assert per_conn < 64, f"{per_conn:.0f} KiB of ingest memory per idle connection"


async def _trickle(port: int, source: str, prefix: bytes, stop: asyncio.Event, held: list[int]) -> None:
    """Slowloris: a frame that is never finished, one byte a second."""
    try:
        reader, writer = await _open(port, source)
    except OSError:
        return
    held[0] += 1
    try:
        data = prefix + b"0" * 100_000
        for b in data:
            if stop.is_set():
                break
            writer.write(bytes([b]))
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                if await asyncio.wait_for(reader.read(1), 1.0) == b"":
                    held[1] += 1  # cut off
                    return
    except OSError:
        held[1] += 1
    finally:
        writer.close()


async def _silent(port: int, source: str, closed_after: list[float], timeout_s: float) -> None:
    """A half-open connection as the server sees it: connected, then nothing, ever."""
    try:
        reader, writer = await _open(port, source)
    except OSError:
        return
    started = time.monotonic()
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(reader.read(), timeout_s)
        closed_after.append(time.monotonic() - started)
    writer.close()


async def _per_source_overflow(port: int, source: str, count: int) -> tuple[int, int]:
    """Opens ``count`` connections from one address; returns (kept open, closed at once)."""
    opened = await asyncio.gather(*(_open(port, source) for _ in range(count)), return_exceptions=True)
    conns = [c for c in opened if not isinstance(c, BaseException)]
    await asyncio.sleep(0.5)

    async def closed(reader: asyncio.StreamReader) -> bool:
        try:
            return await asyncio.wait_for(reader.read(1), 0.2) == b""
        except TimeoutError:
            return False
        except OSError:
            return True

    shut = sum(await asyncio.gather(*(closed(r) for r, _ in conns)))
    for _, writer in conns:
        writer.close()
    return len(conns) - shut, shut + count - len(conns)


async def test_slowloris_silent_and_slow_reader_connections_do_not_starve_a_normal_device(
        db_url: str, tmp_path: Path) -> None:
    raise_nofile(8192)
    normal, slow = imei(2, "35"), imei(3, "35")
    register(db_url, [(normal, "teltonika"), (slow, "gl200")])
    idle_s = 3.0
    ingest = IngestProcess(db_url, tmp_path / "data", ["teltonika", "gt06", "gl200"],
                           env={"AVL_IDLE_TIMEOUT_S": str(idle_s)})
    await asyncio.to_thread(ingest.start)
    baseline = Ledger()
    await _normal_device(ingest.ports["teltonika"], normal, 2.0, baseline)
    kept, refused = await _per_source_overflow(ingest.ports["gt06"], _sources(110, 1)[0], 300)
    per_source_refusals = ingest.metric('avl_refused_frames_total{protocol="gt06",reason="per_source_limit"}')

    stop = asyncio.Event()
    trickle_held = [0, 0]
    sources = _sources(100, 3)
    trickles = [asyncio.create_task(_trickle(ingest.ports["gt06"], sources[i // 250], b"\x78\x78\xff\x01", stop,
                                             trickle_held)) for i in range(500)]
    silent_closed: list[float] = []
    silents = [asyncio.create_task(_silent(ingest.ports["gl200"], sources[2], silent_closed, idle_s + 5))
               for _ in range(200)]
    # A reader that never takes its ACKs: thousands of reports, its receive buffer tiny.
    slow_reader, slow_writer = await _open(ingest.ports["gl200"], "127.0.0.1", rcvbuf=4096)
    frames = [gl200.encode_position(p, i) for i, p in enumerate(track(slow, 20_000, step_s=1))]
    slow_writer.write(b"".join(frames))
    loaded = Ledger()
    try:
        await _normal_device(ingest.ports["teltonika"], normal, 8.0, loaded)
        unsent = slow_writer.transport.get_write_buffer_size()
        trickling_now = ingest.metric('avl_open_connections{protocol="gt06"}')
        rss = ingest.rss_kib()
    finally:
        stop.set()
        slow_writer.close()
        await asyncio.gather(*trickles, *silents, return_exceptions=True)
        ingest.stop()
    slow_stored = stored_by_device(db_url, [slow]).total
    print(f"\nhostile connections: {trickle_held[0]} slowloris connections trickling 1 byte/s (server holds"
          f" {trickling_now:.0f} gt06 connections, {trickle_held[1]} cut off), {len(silent_closed)} of {len(silents)}"
          f" silent connections closed after {percentile(silent_closed, 0.5):.1f} s (idle timeout {idle_s} s),"
          f" per-source limit: {kept} kept / {refused} refused of 300 from one address (metric {per_source_refusals:.0f});"
          f" slow reader: {len(frames)} reports written, {slow_stored} stored, {unsent} bytes it could not send"
          f" (more than 0: the server stopped reading it); ingest RSS {rss / 1024:.0f} MiB;"
          f" normal device ACK latency alone p50 {percentile(baseline.latencies, 0.5) * 1000:.0f} ms"
          f" max {max(baseline.latencies) * 1000:.0f} ms, under all this p50"
          f" {percentile(loaded.latencies, 0.5) * 1000:.0f} ms p99 {percentile(loaded.latencies, 0.99) * 1000:.0f} ms"
          f" max {max(loaded.latencies) * 1000:.0f} ms ({loaded.acked_count} reports acknowledged)")
    assert loaded.acked_count > 0
    assert percentile(loaded.latencies, 0.99) < 0.5 and max(loaded.latencies) < 1.0, "the normal device was starved"
    assert len(silent_closed) == len(silents) and max(silent_closed) < idle_s + 2
    assert kept == 256 and refused == 300 - 256 == per_source_refusals


def _read(path: Path) -> bytes:
    return path.read_bytes()


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _latency_under(port_normal: int, normal: str, attack: asyncio.Task[None], seconds: float) -> Ledger:
    ledger = Ledger()
    try:
        await _normal_device(port_normal, normal, seconds, ledger)
    finally:
        attack.cancel()
        await asyncio.gather(attack, return_exceptions=True)
    return ledger


async def _firehose(port: int, chunk: bytes, seconds: float, sent: list[int]) -> None:
    """Garbage as fast as the server takes it, reconnecting when cut off."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            while time.monotonic() < deadline:
                writer.write(chunk)
                await writer.drain()
                sent[0] += len(chunk)
        except OSError:
            await asyncio.sleep(0.05)


GARBAGE = [("teltonika", b"\x00"), ("teltonika", b"\xff"), ("suntech", b"\x00"), ("gt06", b"\x00")]


@pytest.mark.parametrize("target,garbage", GARBAGE, ids=[f"{t}-{g.hex()}" for t, g in GARBAGE])
async def test_a_garbage_stream_does_not_starve_a_normal_device(db_url: str, tmp_path: Path, target: str,
                                                                 garbage: bytes) -> None:
    """A connection pouring one byte value as fast as it can (a broken modem, a port scan,
    a misconfigured device): the other devices' ACKs must not wait for it."""
    normal = imei(4, "35")
    register(db_url, [(normal, "teltonika")])
    ingest = IngestProcess(db_url, tmp_path / "data", sorted({"teltonika", target}))
    await asyncio.to_thread(ingest.start)
    try:
        alone = Ledger()
        await _normal_device(ingest.ports["teltonika"], normal, 1.0, alone)
        sent = [0]
        cpu_before = sum(_cpu_seconds(pid) for pid in ingest.pids())
        attack = asyncio.create_task(_firehose(ingest.ports[target], garbage * 65536, 3.0, sent))
        await asyncio.sleep(0.5)
        ledger = await _latency_under(ingest.ports["teltonika"], normal, attack, 2.5)
        cpu = sum(_cpu_seconds(pid) for pid in ingest.pids()) - cpu_before
    finally:
        ingest.kill()
    worst = max(ledger.latencies, default=float("inf"))
    print(f"\n{target} port fed {sent[0] >> 10} KiB of {garbage.hex()} bytes in 3 s: ingest CPU {cpu:.1f} s;"
          f" a normal teltonika device: ACK latency alone max {max(alone.latencies) * 1000:.0f} ms, meanwhile"
          f" {ledger.acked_count} reports acknowledged, ACK latency p50 {percentile(ledger.latencies, 0.5) * 1000:.0f} ms"
          f" max {worst * 1000:.0f} ms")
    assert ledger.acked_count > 0, "the normal device got no ACK at all"
    assert worst < 0.25, (f"a garbage stream on the {target} port ({sent[0] >> 10} KiB of {garbage.hex()}) stalled"
                         f" every device: ACK latency up to {worst:.2f} s (alone: {max(alone.latencies):.2f} s)")


def _regressions() -> list[Path]:
    tcp = {n for n in NAMES if n not in ("calamp",)}
    return sorted(p for p in REGRESSIONS.glob("*.bin") if p.name.rsplit("-", 1)[0] in tcp) if REGRESSIONS.is_dir() else []


@pytest.mark.parametrize("path", _regressions(), ids=lambda p: p.name)
async def test_a_hostile_frame_does_not_stall_other_devices(db_url: str, tmp_path: Path, path: Path) -> None:
    """Each frame of the fuzzing regression corpus, sent over TCP: other devices go on."""
    protocol = path.name.rsplit("-", 1)[0]
    frame = _read(path)
    normal = imei(5, "35")
    register(db_url, [(normal, "teltonika"), ("862364030181926", protocol)])
    ingest = IngestProcess(db_url, tmp_path / "data", sorted({"teltonika", protocol}))
    await asyncio.to_thread(ingest.start)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", ingest.ports[protocol])
        writer.write(frame)
        await writer.drain()
        ledger = Ledger()
        stop, give_up = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(device(ADAPTERS["teltonika"](), ingest.ports["teltonika"], normal, stop, ledger,
                                          give_up=give_up, ack_timeout_s=2.0))
        await asyncio.sleep(4.0)
        stop.set()
        give_up.set()
        await asyncio.gather(task, return_exceptions=True)
        writer.close()
    finally:
        ingest.kill()
    print(f"\n{path.name} sent to the {protocol} port: a normal device then got {ledger.acked_count} reports"
          f" acknowledged in 4 s ({ledger.errors} timeouts)")
    assert ledger.acked_count > 0, f"one {len(frame)}-byte {protocol} frame stalled the whole ingest process"


_ENDLESS = {
    "tk103": b"(0123456789", "gl200": b"+RESP:GTFRI,", "enfora": b"\x00\xff\x00\x04", "suntech": b"ST300STT;",
    "h02": b"*HQ,123", "meitrack": b"$$A9999,", "gt06": b"\x79\x79\xff\xff", "teltonika": b"\x00\x00\x00\x00\x00\x00\xff\xff",
    "osmand": b"POST /?id=1 HTTP/1.1\r\nX: ",
}


async def _endless(port: int, prefix: bytes, filler: bytes) -> tuple[bool, int]:
    """Writes a frame that never ends; returns (cut off by the server, bytes written)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(prefix)
    sent = 0
    started = time.monotonic()
    try:
        while time.monotonic() - started < 10 and sent < 64 << 20:
            writer.write(filler)
            await asyncio.wait_for(writer.drain(), 1)
            sent += len(filler)
            with contextlib.suppress(TimeoutError):
                if await asyncio.wait_for(reader.read(1024), 0.001) == b"":
                    break
    except (OSError, TimeoutError):
        pass
    cut = False
    with contextlib.suppress(OSError, TimeoutError):
        cut = await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    return cut or reader.at_eof(), sent


async def test_an_endless_frame_is_cut_off(db_url: str, tmp_path: Path) -> None:
    ingest = IngestProcess(db_url, tmp_path / "data", sorted(_ENDLESS), env={"AVL_MAX_FRAME_BYTES": "65536"})
    await asyncio.to_thread(ingest.start)
    results = {}
    try:
        for protocol, prefix in sorted(_ENDLESS.items()):
            filler = (b"A" if protocol != "teltonika" else b"\x08") * 4096
            before = ingest.metric(f'avl_refused_frames_total{{protocol="{protocol}"')
            cut, sent = await _endless(ingest.ports[protocol], prefix, filler)
            await asyncio.sleep(0.2)
            counted = ingest.metric(f'avl_refused_frames_total{{protocol="{protocol}"') - before
            with socket.create_connection(("127.0.0.1", ingest.ports[protocol]), timeout=2):
                pass  # the listener still takes connections
            results[protocol] = (cut, sent, counted)
        rss = ingest.rss_kib()
    finally:
        ingest.stop()
    print("\nendless frames: " + ", ".join(f"{p} cut off {'yes' if c else 'NO'} after {s >> 10} KiB written"
                                         f" (counted {n:.0f})" for p, (c, s, n) in results.items())
          + f"; ingest RSS after {rss / 1024:.0f} MiB")
    assert all(c for c, _, _ in results.values()), f"not cut off: {[p for p, r in results.items() if not r[0]]}"
    # What the brief asks beyond cutting: that the cut is counted (there is no metric for it).
    uncounted = [p for p, (_, _, n) in results.items() if n < 1]
    assert not uncounted, ("connections cut off for an endless frame are not counted in any metric"
                           f" (avl_refused_frames_total has nothing for them): {', '.join(uncounted)}")


async def test_an_endless_frame_written_while_ingest_was_busy_is_cut_off_in_order(db_url: str, tmp_path: Path) -> None:
    """The device kept writing while ingest was not reading (paused here with SIGSTOP, as a starved CPU or
    a long pause would): when ingest gets to it, bytes are still unread, and closing such a socket makes the
    kernel send a reset, which the device sees instead of the end of the stream. It must see the end."""
    protocols = ["enfora", "gt06", "osmand"]
    ingest = IngestProcess(db_url, tmp_path / "data", protocols, env={"AVL_MAX_FRAME_BYTES": "65536"})
    await asyncio.to_thread(ingest.start)
    results = {}
    try:
        for protocol in protocols:
            ingest.signal_all(signal.SIGSTOP)
            resume = asyncio.get_running_loop().call_later(0.5, ingest.signal_all, signal.SIGCONT)
            try:
                results[protocol] = await _endless(ingest.ports[protocol], _ENDLESS[protocol], b"A" * 4096)
            finally:
                resume.cancel()
                ingest.signal_all(signal.SIGCONT)
    finally:
        ingest.stop()
    print("\nendless frames written while ingest was paused for 0.5 s: " + ", ".join(
        f"{p} ended {'in order' if c else 'by a reset'} after {s >> 10} KiB written" for p, (c, s) in results.items()))
    assert all(c for c, _ in results.values()), f"reset, not ended: {[p for p, (c, _) in results.items() if not c]}"


@pytest.mark.soak
async def test_a_reader_that_never_takes_its_acks_is_cut_off(db_url: str, tmp_path: Path) -> None:
    """Enough reports that its ACKs fill every buffer: the server stops reading it, and cuts
    it off after its write timeout (30 s), while a normal device goes on."""
    normal, slow = imei(6, "35"), imei(7, "35")
    register(db_url, [(normal, "teltonika"), (slow, "gl200")])
    ingest = IngestProcess(db_url, tmp_path / "data", ["teltonika", "gl200"])
    await asyncio.to_thread(ingest.start)
    reader, writer = await _open(ingest.ports["gl200"], "127.0.0.1", rcvbuf=4096)
    blocked_after = 0
    started = time.monotonic()
    cut_after = None
    try:
        for i, p in enumerate(track(slow, 400_000, step_s=1)):
            writer.write(gl200.encode_position(p, i))
            if i % 1000 == 999:
                try:
                    await asyncio.wait_for(writer.drain(), 5)
                except TimeoutError:
                    blocked_after = i + 1
                    break
        ledger = Ledger()
        normal_task = asyncio.create_task(_normal_device(ingest.ports["teltonika"], normal, 40.0, ledger, pause_s=1.0))
        with contextlib.suppress(OSError, TimeoutError):
            while time.monotonic() - started < 120:
                writer.write(b"x")  # keeps probing: fails once the server has reset the connection
                await asyncio.wait_for(writer.drain(), 1)
                await asyncio.sleep(0.5)
        cut_after = time.monotonic() - started
        await normal_task
    finally:
        writer.close()
        ingest.stop()
    print(f"\nslow reader: the server stopped reading it after {blocked_after} reports; cut off after {cut_after:.0f} s;"
          f" a normal device meanwhile: {ledger.acked_count} acknowledged, max ACK latency"
          f" {max(ledger.latencies, default=0) * 1000:.0f} ms")
    assert blocked_after, "the server never stopped reading a reader that does not take its ACKs"
    assert cut_after is not None and cut_after < 100
    assert ledger.acked_count > 0 and max(ledger.latencies) < 1.0
