"""unknown_devices stays bounded: a flood of new identifiers from one source records only its
budget (the rest counted), each stored frame is cut to 512 bytes, another source still gets
its sightings recorded, and old sightings expire. Real HTTP connections (behind the PROXY
protocol, so the test can speak from several source addresses) into a running ingestor."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg

from ingest import metrics
from ingest.intake import UNKNOWN_RAW_MAX
from tests.ingest.harness import eventually, proxy_v2, running_ingest, settings_for


def _request(device: str, pad: int) -> bytes:
    return (f"GET /?id={device}&lat=10.5&lon=-66.9&timestamp=1700000000&note={'x' * pad} HTTP/1.1\r\n"
            f"Host: x\r\n\r\n").encode()


async def _send(port: int, source: str, device: str, pad: int = 20_000) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(proxy_v2(source, 40000) + _request(device, pad))
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()


def _sightings(database_url: str) -> dict[str, tuple[int, int, str]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT identifier, count, octet_length(last_raw), source_address FROM unknown_devices").fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


async def test_a_flood_of_new_identifiers_from_one_source_is_bounded(db_url: str, tmp_path: Path) -> None:
    dropped_before = metrics.UNKNOWN_DROPPED.labels("osmand", "source_limit")._value.get()
    settings = settings_for(tmp_path, proxy_protocol=True)  # AVL_UNKNOWN_PER_SOURCE_PER_MINUTE 30
    async with running_ingest(settings, db_url) as svc:
        port = svc.tcp["osmand"].port
        flood = [await _send(port, "198.51.100.7", f"scan-{i:04d}") for i in range(100)]
        # An identifier already recorded is still updated, budget or not; another source has its own budget.
        repeat = await _send(port, "198.51.100.7", "scan-0000")
        other = await _send(port, "203.0.113.20", "real-unregistered-phone")
        await eventually(lambda: "real-unregistered-phone" in (seen := _sightings(db_url))
                         and seen.get("scan-0000", (0,))[0] == 2)
    dropped = metrics.UNKNOWN_DROPPED.labels("osmand", "source_limit")._value.get() - dropped_before
    seen = _sightings(db_url)
    flood_rows = {k: v for k, v in seen.items() if k.startswith("scan-")}
    print(f"\n100 new identifiers of 20 kB from one source: {len(flood_rows)} recorded, {dropped:.0f} dropped (counted),"
          f" largest stored frame {max(v[1] for v in seen.values())} bytes; repeat count {seen['scan-0000'][0]};"
          f" other source recorded {'real-unregistered-phone' in seen}")
    assert all(r.startswith(b"HTTP/1.1 404") for r in [*flood, repeat, other])  # none acknowledged
    assert len(flood_rows) == 30 and dropped == 70
    assert seen["scan-0000"][0] == 2
    assert seen["real-unregistered-phone"][2].startswith("203.0.113.20:")
    assert max(v[1] for v in seen.values()) == UNKNOWN_RAW_MAX == 512


async def test_old_sightings_expire(db_url: str, tmp_path: Path) -> None:
    expired_before = metrics.UNKNOWN_EXPIRED._value.get()
    with psycopg.connect(db_url) as conn:
        conn.execute("INSERT INTO unknown_devices (identifier, protocol, first_seen, last_seen) VALUES"
                     " ('gone', 'gt06', now() - interval '9 days', now() - interval '4 days'),"
                     " ('recent', 'gt06', now() - interval '9 days', now() - interval '2 days')")
    async with running_ingest(settings_for(tmp_path), db_url):  # AVL_UNKNOWN_RETENTION_DAYS 3
        await eventually(lambda: "gone" not in _sightings(db_url))
    expired = metrics.UNKNOWN_EXPIRED._value.get() - expired_before
    print(f"\nsightings left after start with a 3-day retention: {sorted(_sightings(db_url))}; expired {expired:.0f}")
    assert sorted(_sightings(db_url)) == ["recent"]
    assert expired == 1
