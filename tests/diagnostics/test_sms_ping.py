"""The checklist's SMS ping over real SMPP: the simulated SMSC, the virtual fleet's handsets,
a running ingest service. Each terminal fault gives its verdict, evidence and ticket (or none)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from avl.config import Settings
from diagnostics import checklist
from diagnostics.cli import diagnose_now
from diagnostics.model import Report, Verdict
from diagnostics.service import Worker
from tests.diagnostics.harness import step, tickets
from tests.ingest.harness import settings_for
from tests.simulators.sms_world import World, sms_world


async def _diagnose(world: World, db_url: str, identifier: str, settings: Settings | None = None,
                    wait_s: float = 6.0) -> Report:
    worker = Worker(settings or world.settings, db_url)
    await worker.start()
    try:
        async with worker.context() as ctx:
            ctx.sms_wait_s = wait_s
            return await checklist.run(ctx, identifier, requested_by="test")
    finally:
        await worker.close()


@contextlib.asynccontextmanager
async def running_worker(settings: Settings, db_url: str) -> AsyncIterator[Worker]:
    """A diagnostics worker running its loop (SMSC bind, outbox, inbox, heartbeat), as in production."""
    worker = Worker(settings, db_url)
    await worker.start()
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await worker.close()


async def _set_interval(db_url: str, identifier: str, seconds: int) -> None:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await conn.execute("UPDATE devices SET report_interval_s = %s WHERE identifier = %s", (seconds, identifier))


def _sms(db_url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url) as conn:
        return conn.execute("SELECT direction, purpose, status, device_id, msisdn FROM sms_messages ORDER BY id").fetchall()


async def test_sms_ping_tells_each_terminal_fault_apart(db_url: str, tmp_path: Path) -> None:
    fleets: list[dict[str, Any]] = [
        # Terminals reporting every second, until their fault starts (simulated seconds after start).
        {"vehicles": 3, "protocols": ("teltonika", "gt06", "calamp"), "interval_s": 1.0, "seed": 21},
        # A terminal reporting every 60 s although it is registered for 1 s: silent, but asleep, not broken.
        {"vehicles": 1, "protocols": ("gt06",), "interval_s": 60.0, "seed": 22},
    ]
    async with sms_world(db_url, tmp_path, fleets, validity_s=3.0, silent_after_intervals=3,
                         unreachable_after_s=2, parked_interval_s=1) as world:
        data_down, off, suspended = world.spec("teltonika"), world.spec("gt06"), world.spec("calamp")
        sleeper = world.spec("gt06", fleet=1)
        await _set_interval(db_url, sleeper.identifier, 1)
        await asyncio.sleep(2.0)  # everyone reports a little first
        fleet = world.fleets[0]
        fleet.terminals[data_down.identifier].set_fault("data_down", True)
        fleet.terminals[off.identifier].set_fault("powered_off", True)
        fleet.terminals[suspended.identifier].set_fault("sim_suspended", True)
        await asyncio.sleep(3.5)  # now silent for more than 3 report intervals (and the 2 s of a long silence)
        reports = await asyncio.gather(*(_diagnose(world, db_url, s.identifier)
                                         for s in (sleeper, data_down, off, suspended)))
    woke, sms_only, unreachable_off, line = reports

    assert woke.verdict is Verdict.RECOVERED_AFTER_PING, checklist.explain(woke)
    ping = step(woke, "sms_ping").evidence
    assert ping["fresh_report_at"] is not None and ping["fresh_report_at"] > ping["delivered_at"]

    assert sms_only.verdict is Verdict.DATA_CHANNEL_FAULT, checklist.explain(sms_only)
    ping = step(sms_only, "sms_ping").evidence
    assert ping["replies"] and ping["reply_fields"].get("Data Link") == "0"  # Teltonika getstatus, parsed
    assert ping["fresh_report_at"] is None

    assert unreachable_off.verdict is Verdict.UNREACHABLE, checklist.explain(unreachable_off)
    assert step(unreachable_off, "sms_ping").evidence["receipt"] == "EXPIRED"
    assert line.verdict is Verdict.LINE_FAULT, checklist.explain(line)  # a carrier matter, not a workshop's
    assert step(line, "sms_ping").evidence["receipt"] == "UNDELIV"

    by_device = {t["device_id"]: t for t in tickets(db_url)}
    assert woke.device_id not in by_device  # recovered: no ticket
    assert by_device[sms_only.device_id]["type"] == "technical"  # remote APN fix first
    assert by_device[unreachable_off.device_id]["type"] == "field_service"
    assert (by_device[line.device_id]["type"], by_device[line.device_id]["category"]) == ("technical", "line_fault")
    assert "operadora" in by_device[line.device_id]["pending"] and "centro de instalación" not in \
        by_device[line.device_id]["pending"]
    sms = _sms(db_url)
    pings = [r for r in sms if r[1] == "ping"]
    assert len(pings) == 4  # really sent over SMPP, one per device
    assert all(r[4].startswith("+58") for r in pings)  # E.164
    assert any(r[0] == "mo" and r[3] == sms_only.device_id for r in sms)  # the reply, matched to its device
    assert any(r[1] == "ping" and r[2] == "UNDELIV" for r in sms)  # the receipt, recorded by the inbox


async def test_one_ping_per_device_per_period(db_url: str, tmp_path: Path) -> None:
    fleets: list[dict[str, Any]] = [{"vehicles": 1, "protocols": ("teltonika",), "interval_s": 1.0, "seed": 23}]
    async with sms_world(db_url, tmp_path, fleets, silent_after_intervals=3, sms_ping_period_s=3600,
                         unreachable_after_s=2, parked_interval_s=1) as world:
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


async def test_a_short_silence_is_inconclusive_and_opens_no_ticket(db_url: str, tmp_path: Path) -> None:
    # Out of coverage for a few minutes looks exactly like powered off: the SMS expires. Not a workshop case yet.
    fleets: list[dict[str, Any]] = [{"vehicles": 1, "protocols": ("gt06",), "interval_s": 1.0, "seed": 24}]
    async with sms_world(db_url, tmp_path, fleets, validity_s=2.0, silent_after_intervals=3,
                         unreachable_after_s=1800, parked_interval_s=1) as world:
        device = world.spec("gt06")
        await asyncio.sleep(1.5)
        world.fleets[0].terminals[device.identifier].set_fault("no_coverage", True)
        await asyncio.sleep(3.5)
        report = await _diagnose(world, db_url, device.identifier)
    assert report.verdict is Verdict.INCONCLUSIVE, checklist.explain(report)
    assert "checked again" in report.why and step(report, "sms_ping").evidence["receipt"] == "EXPIRED"
    assert tickets(db_url) == []


async def test_recurrence_needs_the_same_fault_established_again(db_url: str, tmp_path: Path) -> None:
    fleets: list[dict[str, Any]] = [{"vehicles": 2, "protocols": ("teltonika",), "interval_s": 1.0, "seed": 25}]
    async with sms_world(db_url, tmp_path, fleets, silent_after_intervals=3, unreachable_after_s=2,
                         parked_interval_s=1) as world:
        same, other = world.fleets[0].specs
        with psycopg.connect(db_url) as conn:  # earlier cases, resolved 12 days ago
            for spec, category, number in ((same, "data_channel_fault", "AVL-2026-000777"),
                                           (other, "unreachable", "AVL-2026-000778")):
                conn.execute(
                    "INSERT INTO tickets (number, device_id, type, category, title, state, resolved_at) SELECT %s, id,"
                    " 'technical', %s, 'earlier', 'resolved', %s FROM devices WHERE identifier = %s",
                    (number, category, datetime.now(UTC) - timedelta(days=12), spec.identifier))
        await asyncio.sleep(1.5)
        for spec in (same, other):
            world.fleets[0].terminals[spec.identifier].set_fault("data_down", True)
        await asyncio.sleep(3.5)
        again, different = [await _diagnose(world, db_url, s.identifier) for s in (same, other)]
    # The SMS ping ran for both: it is what establishes the category.
    assert step(again, "sms_ping").evidence["replies"], checklist.explain(again)
    assert step(different, "sms_ping").evidence["replies"], checklist.explain(different)
    assert again.verdict is different.verdict is Verdict.DATA_CHANNEL_FAULT
    assert again.ticket is not None and different.ticket is not None
    assert (again.ticket["type"], again.ticket["recurrence_of"] is not None) == ("field_service", True)
    assert "Reincidencia de AVL-2026-000777" in again.ticket["instruction"]
    # The earlier ticket was another category: no recurrence, the remote fix comes first.
    assert (different.ticket["type"], different.ticket["recurrence_of"]) == ("technical", None)


async def test_avl_diagnose_beside_the_worker_pings_through_its_outbox(db_url: str, tmp_path: Path) -> None:
    fleets: list[dict[str, Any]] = [{"vehicles": 1, "protocols": ("gt06",), "interval_s": 1.0, "seed": 26}]
    async with sms_world(db_url, tmp_path, fleets, silent_after_intervals=3, unreachable_after_s=2,
                         parked_interval_s=1) as world:
        device = world.spec("gt06")
        async with running_worker(world.settings, db_url):
            await asyncio.sleep(6.5)  # the worker's heartbeat says its SMSC is bound
            world.fleets[0].terminals[device.identifier].set_fault("data_down", True)
            await asyncio.sleep(3.5)
            text, result = await diagnose_now(world.settings, db_url, None, device.identifier, 8.0)
    assert text.startswith("SMS via the diagnostics worker's outbox"), text
    assert (result["verdict"], result["sms_via"]) == ("data_channel_fault", "outbox"), text
    assert result["run_id"] and result["explanation"] and result["ticket"]["number"].startswith("AVL-")
    assert [s["name"] for s in result["steps"]] == ["account", "platform", "reporting", "sms_ping", "action"]
    pings = [r for r in _sms(db_url) if r[1] == "ping"]
    assert len(pings) == 1 and pings[0][2] == "DELIVRD"  # sent by the worker, its receipt recorded by the worker


async def test_an_smsc_outage_is_never_a_platform_incident(db_url: str, tmp_path: Path) -> None:
    fleets: list[dict[str, Any]] = [{"vehicles": 2, "protocols": ("gt06",), "interval_s": 1.0, "seed": 27}]
    # Parked, they report every 5 s (and gt06 heartbeats every second): 3 x 2 s is silent for neither.
    async with sms_world(db_url, tmp_path, fleets, silent_after_intervals=3, unreachable_after_s=2,
                         parked_interval_s=2) as world:
        healthy, silent = world.fleets[0].specs
        await asyncio.sleep(1.5)
        await world.smsc.stop()  # the SMSC goes away
        world.fleets[0].terminals[silent.identifier].set_fault("powered_off", True)
        await asyncio.sleep(7)
        fine, unknown = [await _diagnose(world, db_url, s.identifier) for s in (healthy, silent)]
    assert fine.verdict is Verdict.HEALTHY, checklist.explain(fine)
    assert "not bound" in step(fine, "platform").evidence["smsc"]  # recorded, not a problem
    assert unknown.verdict is Verdict.INCONCLUSIVE, checklist.explain(unknown)
    assert "SMSC link is down" in step(unknown, "sms_ping").summary
    assert tickets(db_url) == []  # no platform incident, no workshop visit, nothing to call about yet


async def test_the_customer_is_told_through_the_outbox(db_url: str, tmp_path: Path) -> None:
    fleets: list[dict[str, Any]] = [{"vehicles": 1, "protocols": ("gt06",), "interval_s": 1.0, "seed": 28}]
    async with sms_world(db_url, tmp_path, fleets, silent_after_intervals=3, unreachable_after_s=2,
                         parked_interval_s=1) as world:
        device = world.spec("gt06")
        contact = world.fleets[0].specs[0].msisdn  # a number the SMSC routes (the fleet's handsets)
        with psycopg.connect(db_url) as conn:
            conn.execute("UPDATE accounts SET contact_msisdn = '0' || substr(%s, 3)", (contact,))  # national form
        async with running_worker(world.settings, db_url):
            await asyncio.sleep(1.5)
            world.fleets[0].terminals[device.identifier].set_fault("powered_off", True)
            await asyncio.sleep(3.5)
            report = await _diagnose(world, db_url, device.identifier)
            for _ in range(50):
                notices = [r for r in _sms(db_url) if r[1] == "notice"]
                if notices and notices[0][2] != "queued":
                    break
                await asyncio.sleep(0.2)
    assert report.verdict is Verdict.UNREACHABLE, checklist.explain(report)
    assert step(report, "action").evidence["notified"] is True
    (notice,) = notices
    assert notice[2] in ("submitted", "DELIVRD", "UNDELIV", "EXPIRED"), notice  # the SMSC took it


async def test_a_report_between_delivery_and_the_recorded_submission_is_an_answer(db_url: str,
                                                                                  tmp_path: Path) -> None:
    # Through the outbox, the worker records the submission once submit_sm_resp is back; the terminal may
    # have got the SMS and reported before that. The report still answers the ping.
    from diagnostics.context import load_device
    from diagnostics.steps.sms_ping import PingOutcome, observe
    from diagnostics.verdicts import after_ping
    from tests.diagnostics.harness import context, provision

    ids = provision(db_url, devices=[{"identifier": "862170010000901", "protocol": "gt06", "msisdn": "04140000901"}])
    device_id = ids["862170010000901"]
    with psycopg.connect(db_url) as conn:
        sms_id = conn.execute(
            "INSERT INTO sms_messages (direction, msisdn, device_id, body, status, purpose, created_at, submitted_at,"
            " delivered_at) VALUES ('mt', '+584140000901', %s, 'STATUS#', 'DELIVRD', 'ping', now() - interval '10 s',"
            " now() - interval '2 s', now() - interval '6 s') RETURNING id", (device_id,)).fetchone()[0]  # type: ignore[index]
        conn.execute("INSERT INTO latest_positions (device_id, fix_time, received_at, last_received_at, valid, latitude,"
                     " longitude) VALUES (%s, now() - interval '4 s', now() - interval '4 s', now() - interval '4 s',"
                     " true, 10.5, -66.9)", (device_id,))
    async with context(settings_for(tmp_path), db_url) as ctx:
        outcome = PingOutcome()
        await observe(ctx, await load_device(ctx.conn, device_id), sms_id, outcome)
    assert outcome.fresh_after_delivery
    assert after_ping(outcome, 7200, 1800).verdict is Verdict.RECOVERED_AFTER_PING
