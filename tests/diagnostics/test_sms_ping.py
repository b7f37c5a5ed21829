"""The checklist's SMS ping over real SMPP: the simulated SMSC, the virtual fleet's handsets,
a running ingest service. Each terminal fault gives its verdict, evidence and ticket."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psycopg

from diagnostics import checklist
from diagnostics.model import Report, Verdict
from diagnostics.service import Worker
from tests.diagnostics.harness import step, tickets
from tests.simulators.sms_world import World, sms_world


async def _diagnose(world: World, db_url: str, identifier: str) -> Report:
    worker = Worker(world.settings, db_url)
    await worker.start()
    try:
        async with worker.context() as ctx:
            ctx.sms_wait_s = 6.0
            return await checklist.run(ctx, identifier, requested_by="test")
    finally:
        await worker.close()


async def _set_interval(db_url: str, identifier: str, seconds: int) -> None:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await conn.execute("UPDATE devices SET report_interval_s = %s WHERE identifier = %s", (seconds, identifier))


async def test_sms_ping_tells_each_terminal_fault_apart(db_url: str, tmp_path: Path) -> None:
    fleets: list[dict[str, Any]] = [
        # Terminals reporting every second, until their fault starts (simulated seconds after start).
        {"vehicles": 3, "protocols": ("teltonika", "gt06", "calamp"), "interval_s": 1.0, "seed": 21},
        # A terminal reporting every 60 s although it is registered for 1 s: silent, but asleep, not broken.
        {"vehicles": 1, "protocols": ("gt06",), "interval_s": 60.0, "seed": 22},
    ]
    async with sms_world(db_url, tmp_path, fleets, validity_s=3.0, silent_after_intervals=3) as world:
        data_down, off, suspended = world.spec("teltonika"), world.spec("gt06"), world.spec("calamp")
        sleeper = world.spec("gt06", fleet=1)
        await _set_interval(db_url, sleeper.identifier, 1)
        await asyncio.sleep(2.0)  # everyone reports a little first
        fleet = world.fleets[0]
        fleet.terminals[data_down.identifier].set_fault("data_down", True)
        fleet.terminals[off.identifier].set_fault("powered_off", True)
        fleet.terminals[suspended.identifier].set_fault("sim_suspended", True)
        await asyncio.sleep(3.5)  # now silent for more than 3 report intervals
        reports = await asyncio.gather(*(_diagnose(world, db_url, s.identifier)
                                         for s in (sleeper, data_down, off, suspended)))
    woke, sms_only, unreachable_off, unreachable_sim = reports

    assert woke.verdict is Verdict.RECOVERED_AFTER_PING, checklist.explain(woke)
    ping = step(woke, "sms_ping").evidence
    assert ping["fresh_report_at"] is not None and ping["receipt"] in ("DELIVRD", None)

    assert sms_only.verdict is Verdict.DATA_CHANNEL_FAULT, checklist.explain(sms_only)
    ping = step(sms_only, "sms_ping").evidence
    assert ping["replies"] and ping["reply_fields"].get("Data Link") == "0"  # Teltonika getstatus, parsed
    assert ping["fresh_report_at"] is None

    assert unreachable_off.verdict is Verdict.UNREACHABLE, checklist.explain(unreachable_off)
    assert step(unreachable_off, "sms_ping").evidence["replies"] == []
    assert unreachable_sim.verdict is Verdict.UNREACHABLE
    assert step(unreachable_sim, "sms_ping").evidence["receipt"] == "UNDELIV"

    by_device = {t["device_id"]: t for t in tickets(db_url)}
    assert {t["category"] for t in by_device.values()} == {"data_channel_fault", "unreachable"}
    assert woke.device_id not in by_device  # recovered: no ticket
    assert by_device[sms_only.device_id]["type"] == "technical"  # remote APN fix first
    assert by_device[unreachable_off.device_id]["type"] == "field_service"
    with psycopg.connect(db_url) as conn:
        sms = conn.execute("SELECT direction, purpose, status, device_id FROM sms_messages ORDER BY id").fetchall()
    pings = [r for r in sms if r[1] == "ping"]
    assert len(pings) == 4  # really sent over SMPP, one per device
    assert any(r[0] == "mo" and r[3] == sms_only.device_id for r in sms)  # the reply, recorded by the inbox
    assert any(r[1] == "ping" and r[2] == "UNDELIV" for r in sms)  # the receipt, recorded by the inbox
    notices = [r for r in sms if r[1] == "notice"]
    assert len(notices) == 0  # the simulated accounts have no contact number to notify


async def test_one_ping_per_device_per_period(db_url: str, tmp_path: Path) -> None:
    fleets: list[dict[str, Any]] = [{"vehicles": 1, "protocols": ("teltonika",), "interval_s": 1.0, "seed": 23}]
    async with sms_world(db_url, tmp_path, fleets, silent_after_intervals=3, sms_ping_period_s=3600) as world:
        device = world.spec("teltonika")
        await asyncio.sleep(1.5)
        world.fleets[0].terminals[device.identifier].set_fault("data_down", True)
        await asyncio.sleep(3.5)
        first = await _diagnose(world, db_url, device.identifier)
        second = await _diagnose(world, db_url, device.identifier)
    assert first.verdict is second.verdict is Verdict.DATA_CHANNEL_FAULT, checklist.explain(first)
    assert step(second, "sms_ping").evidence["reused_ping"] is True
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM sms_messages WHERE purpose = 'ping'").fetchone() == (1,)
