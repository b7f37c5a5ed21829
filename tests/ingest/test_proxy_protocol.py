"""Behind an L4 balancer with the PROXY protocol the ingestor still sees each device's own address."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest

from ingest.protocols import FrameError, gt06
from ingest.transports.proxy import V2_SIGNATURE, parse_proxy_header
from tests.ingest.harness import proxy_v2, running_ingest, settings_for, track


def test_v1_and_v2_headers_give_the_source_address_and_need_all_their_bytes() -> None:
    line = b"PROXY TCP4 203.0.113.7 10.0.0.1 40001 5023\r\n"
    assert parse_proxy_header(line + b"\x78\x78") == (("203.0.113.7", 40001), len(line))
    assert parse_proxy_header(line[:20]) is None
    assert parse_proxy_header(proxy_v2("198.51.100.9", 50000)) == (("198.51.100.9", 50000), 28)
    assert parse_proxy_header(proxy_v2("198.51.100.9", 50000)[:20]) is None
    local = V2_SIGNATURE + bytes((0x20, 0x00)) + b"\x00\x00"  # the balancer's health check
    assert parse_proxy_header(local) == (None, 16)
    assert parse_proxy_header(b"PROXY UNKNOWN\r\n") == (None, 15)


@pytest.mark.parametrize("data", [b"\x78\x78\x0d\x01", b"PROXY TCP4 nonsense\r\n", b"PROXY " + b"x" * 200])
def test_anything_else_is_refused(data: bytes) -> None:
    with pytest.raises(FrameError):
        parse_proxy_header(data)


async def test_unknown_devices_are_recorded_with_their_own_address(db_url: str, tmp_path: Path) -> None:
    imei = "868120203333333"
    async with running_ingest(settings_for(tmp_path, proxy_protocol=True), db_url) as svc:
        port = svc.tcp["gt06"].port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(proxy_v2("203.0.113.50", 41234) + gt06.encode_login(imei) + gt06.encode_position(track(imei, 1)[0], 2))
        login_ack = await asyncio.wait_for(reader.readexactly(10), 10)
        writer.close()
        # Without the header, the connection is refused rather than misread.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(gt06.encode_login(imei))
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        await asyncio.sleep(0.3)
    assert login_ack[3] == 0x01
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT source_address FROM unknown_devices WHERE identifier = %s", (imei,)).fetchone()
    assert row == ("203.0.113.50:41234",)
