"""The ingest process SIGKILLed mid-stream, again and again, while the fleet keeps sending:
every report a terminal saw acknowledged is stored, and stored once."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from tests.ingest.harness import register
from tests.reliability.harness import (
    ADAPTERS,
    IngestProcess,
    Ledger,
    device,
    drain,
    gaps,
    imei,
    missing_acknowledged,
    percentile,
    quarantined,
    stored_by_device,
)

PROTOCOLS = ["teltonika", "gt06", "gl200"]


async def _kill_loop(db_url: str, tmp_path: Path, kills: int, per_protocol: int) -> None:
    fleet = [(imei(i), proto) for n, proto in enumerate(PROTOCOLS) for i in range(n * 1000, n * 1000 + per_protocol)]
    register(db_url, fleet)
    ingest = IngestProcess(db_url, tmp_path / "data", PROTOCOLS)
    await asyncio.to_thread(ingest.start)
    ledger = Ledger()
    stop, give_up = asyncio.Event(), asyncio.Event()
    tasks = [asyncio.create_task(device(ADAPTERS[proto](), ingest.ports[proto], ident, stop, ledger, give_up=give_up))
             for ident, proto in fleet]
    rng = random.Random(20261124)
    downtime = 0.0
    try:
        await asyncio.sleep(1.0)
        for _ in range(kills):
            await asyncio.sleep(rng.uniform(0.5, 1.5))
            ingest.kill()  # mid-stream: frames in flight, batches queued or committing
            killed_at = time.monotonic()
            await asyncio.sleep(rng.uniform(0.0, 0.5))
            await asyncio.to_thread(ingest.start)
            downtime += time.monotonic() - killed_at
        await asyncio.sleep(1.0)
        drained = await drain(tasks, stop, give_up, 30)
    finally:
        give_up.set()
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        ingest.stop()
    stored = stored_by_device(db_url, [ident for ident, _ in fleet])
    lost = missing_acknowledged(ledger, stored)
    print(f"\ningest SIGKILL x{kills} ({len(fleet)} devices, {', '.join(PROTOCOLS)}; {downtime:.1f} s down in all):"
          f" frames sent {ledger.frames_sent} (reports {ledger.reports_sent}, resends included),"
          f" reports acknowledged {ledger.acked_count}, stored {stored.total}, duplicates {stored.duplicates},"
          f" acknowledged but missing {sum(map(len, lost.values()))}, reconnects {ledger.connects},"
          f" ACK latency p50 {percentile(ledger.latencies, 0.5) * 1000:.0f} ms"
          f" p99 {percentile(ledger.latencies, 0.99) * 1000:.0f} ms")
    assert not lost, (f"acknowledged reports missing after SIGKILLs: {sum(map(len, lost.values()))}"
                      f" ({quarantined(db_url, lost)}); {gaps(ledger, lost)}")
    assert stored.duplicates == 0
    assert drained, "the fleet could not get its last reports acknowledged after the last restart"
    # Everything the fleet made was acknowledged in the end, so everything is stored.
    assert stored.total == ledger.acked_count
    assert ledger.acked_count > 0 and ingest.starts == kills + 1


async def test_ingest_sigkilled_repeatedly_loses_and_doubles_nothing(db_url: str, tmp_path: Path) -> None:
    await _kill_loop(db_url, tmp_path, kills=6, per_protocol=8)


@pytest.mark.soak
async def test_ingest_sigkilled_repeatedly_soak(db_url: str, tmp_path: Path) -> None:
    await _kill_loop(db_url, tmp_path, kills=60, per_protocol=40)
