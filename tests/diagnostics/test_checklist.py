"""The fault checklist on real data: each fault gives the right verdict, evidence and ticket (or none).

Reports reach the database through a running ingest service over real TCP, as devices send them.
SMS pings over SMPP are in test_sms_ping.py.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg

from diagnostics.model import Verdict
from tests.diagnostics.harness import diagnose, provision, reports, send_gl200, set_status, sms_count, step, tickets
from tests.ingest.harness import running_ingest, settings_for

IMEI = "862170010000001"
IMEI2 = "862170010000002"


async def test_suspended_account_stops_the_checklist_without_sms_or_ticket(db_url: str, tmp_path: Path) -> None:
    provision(db_url, devices=[{"identifier": IMEI, "protocol": "gl200", "msisdn": "584140000001", "plate": "AB1"}])
    set_status(db_url, "Flota Diagnóstico", "suspend")
    report = await diagnose(settings_for(tmp_path), db_url, IMEI)
    assert report.verdict is Verdict.ACCOUNT_SUSPENDED
    assert [s.name for s in report.steps] == ["account"]
    assert "non-payment" in report.steps[0].summary
    assert tickets(db_url) == [] and sms_count(db_url) == 0


async def test_retired_account_and_empty_prepaid_balance_are_the_accounts_verdicts(db_url: str, tmp_path: Path) -> None:
    provision(db_url, devices=[{"identifier": IMEI, "protocol": "gl200", "msisdn": "584140000001"}])
    provision(db_url, account="Prepago SA", billing="pre_paid", balance=0,
              devices=[{"identifier": IMEI2, "protocol": "gl200", "msisdn": "584140000002"}])
    set_status(db_url, "Flota Diagnóstico", "retire")
    retired = await diagnose(settings_for(tmp_path), db_url, IMEI)
    no_balance = await diagnose(settings_for(tmp_path), db_url, "584140000002")  # found by its MSISDN
    assert (retired.verdict, no_balance.verdict) == (Verdict.ACCOUNT_RETIRED, Verdict.NO_BALANCE)
    assert tickets(db_url) == []


async def test_platform_down_is_one_platform_incident_not_a_device_fault(db_url: str, tmp_path: Path) -> None:
    provision(db_url, devices=[{"identifier": IMEI, "protocol": "gl200"}, {"identifier": IMEI2, "protocol": "gl200"}])
    # No ingest process is running: no heartbeat.
    first = await diagnose(settings_for(tmp_path), db_url, IMEI)
    second = await diagnose(settings_for(tmp_path), db_url, IMEI2)
    assert first.verdict is second.verdict is Verdict.PLATFORM_INCIDENT
    assert "no ingest process alive" in step(first, "platform").summary
    (incident,) = tickets(db_url)
    assert (incident["category"], incident["device_id"], incident["type"]) == ("platform_incident", None, "platform")
    assert sms_count(db_url) == 0


async def test_healthy_device_gets_no_ticket(db_url: str, tmp_path: Path) -> None:
    provision(db_url, devices=[{"identifier": IMEI, "protocol": "gl200", "plate": "AB1"}])
    settings = settings_for(tmp_path)
    async with running_ingest(settings, db_url) as svc:
        await send_gl200(svc.tcp["gl200"].port, reports(IMEI, 20, minutes_ago=0.2))
        report = await diagnose(settings, db_url, IMEI)
    assert report.verdict is Verdict.HEALTHY
    figures = step(report, "reporting").evidence
    assert figures["reports_24h"] == 20 and figures["valid_fix_share"] == 1.0 and figures["frozen_position"] is False
    assert tickets(db_url) == []


async def test_frozen_position_with_ignition_on_is_a_gps_fault_sent_to_the_nearest_center(db_url: str,
                                                                                          tmp_path: Path) -> None:
    provision(db_url, devices=[{"identifier": IMEI, "protocol": "gl200", "plate": "AB123CD"}])
    settings = settings_for(tmp_path)
    async with running_ingest(settings, db_url) as svc:
        await send_gl200(svc.tcp["gl200"].port, reports(IMEI, 12, minutes_ago=0.2, frozen=True))
        report = await diagnose(settings, db_url, IMEI)
    assert report.verdict is Verdict.GPS_FAULT
    assert step(report, "reporting").evidence["frozen_position"] is True
    assert "sms_ping" not in [s.name for s in report.steps]  # it reports: no need to ping
    (ticket,) = tickets(db_url)
    assert ticket["category"] == "gps_fault" and ticket["type"] == "field_service"
    assert ticket["number"].startswith(f"AVL-{datetime.now(UTC).year}-")
    # The vehicle is in Altamira: Chacao is the nearest center, Valencia is not proposed first.
    assert "Centro Chacao" in ticket["pending"] and ticket["pending"].index("Centro Chacao") < ticket["pending"].index("Ruices")
    assert not ticket["dead_on_arrival"]


async def test_invalid_fixes_are_a_gps_fault_and_a_new_verdict_reuses_the_open_ticket(db_url: str, tmp_path: Path) -> None:
    provision(db_url, devices=[{"identifier": IMEI, "protocol": "gl200"}])
    settings = settings_for(tmp_path)
    async with running_ingest(settings, db_url) as svc:
        await send_gl200(svc.tcp["gl200"].port, reports(IMEI, 12, minutes_ago=0.2, valid=False))
        first = await diagnose(settings, db_url, IMEI)
        second = await diagnose(settings, db_url, IMEI)
    assert first.verdict is second.verdict is Verdict.GPS_FAULT
    assert step(first, "reporting").evidence["valid_fix_share"] == 0.0
    (ticket,) = tickets(db_url)  # one open ticket per device and category
    assert second.ticket is not None and second.ticket["reused"] and second.ticket["number"] == ticket["number"]


async def test_24_volts_on_a_12_volt_declaration_is_a_power_fault(db_url: str, tmp_path: Path) -> None:
    provision(db_url, devices=[{"identifier": IMEI, "protocol": "gl200", "plate": "AB1", "supply_voltage_v": 12}])
    settings = settings_for(tmp_path)
    async with running_ingest(settings, db_url) as svc:
        await send_gl200(svc.tcp["gl200"].port, reports(IMEI, 12, minutes_ago=0.2, power_mv=27600))
        report = await diagnose(settings, db_url, IMEI)
    assert report.verdict is Verdict.POWER_FAULT
    assert step(report, "reporting").evidence["power_mv_median"] == 27600
    assert tickets(db_url)[0]["category"] == "power_fault"


async def test_fault_within_15_days_of_installation_is_dead_on_arrival(db_url: str, tmp_path: Path) -> None:
    provision(db_url, devices=[{"identifier": IMEI, "protocol": "gl200", "plate": "AB1",
                                "installed": date.today() - timedelta(days=10)}])
    settings = settings_for(tmp_path)
    async with running_ingest(settings, db_url) as svc:
        await send_gl200(svc.tcp["gl200"].port, reports(IMEI, 12, minutes_ago=0.2, valid=False))
        report = await diagnose(settings, db_url, IMEI)
    (ticket,) = tickets(db_url)
    assert ticket["dead_on_arrival"] is True
    assert "replace the terminal" in ticket["pending"]
    assert step(report, "action").evidence["dead_on_arrival"] is True


async def test_recurrence_within_30_days_skips_the_remote_tests(db_url: str, tmp_path: Path) -> None:
    ids = provision(db_url, devices=[{"identifier": IMEI, "protocol": "gl200", "msisdn": "584140000001",
                                      "interval": 1}])
    with psycopg.connect(db_url) as conn:  # an earlier case, repaired 12 days ago
        conn.execute("INSERT INTO tickets (number, device_id, type, category, title, state, resolved_at)"
                     " VALUES ('AVL-2025-000777', %s, 'field_service', 'unreachable', 'earlier', 'resolved', %s)",
                     (ids[IMEI], datetime.now(UTC) - timedelta(days=12)))
    settings = settings_for(tmp_path, silent_after_intervals=2)
    async with running_ingest(settings, db_url) as svc:
        await send_gl200(svc.tcp["gl200"].port, reports(IMEI, 5, minutes_ago=0.1, step_s=1))
        await asyncio.sleep(2.5)  # then silent for more than 2 report intervals
        report = await diagnose(settings, db_url, IMEI)
    assert report.verdict is Verdict.UNREACHABLE
    ping = step(report, "sms_ping")
    assert ping.status == "skipped" and "AVL-2025-000777" in ping.summary
    new = tickets(db_url)[-1]
    assert new["type"] == "field_service" and new["recurrence_of"] is not None
    assert "Recurrence of AVL-2025-000777" in new["pending"]
    assert sms_count(db_url) == 0


async def test_runs_are_recorded_step_by_step_with_their_evidence(db_url: str, tmp_path: Path) -> None:
    provision(db_url, devices=[{"identifier": IMEI, "protocol": "gl200"}])
    settings = settings_for(tmp_path)
    async with running_ingest(settings, db_url) as svc:
        await send_gl200(svc.tcp["gl200"].port, reports(IMEI, 5, minutes_ago=0.2))
        report = await diagnose(settings, db_url, IMEI)
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT status, verdict, steps, finished_at IS NOT NULL FROM diagnostic_runs WHERE id = %s",
                           (report.run_id,)).fetchone()
    assert row is not None
    status, verdict, steps, finished = row
    assert (status, verdict, finished) == ("done", "healthy", True)
    assert [s["name"] for s in steps] == ["account", "platform", "reporting"]
    assert steps[1]["evidence"]["ingest_processes"][0]["database_up"] is True
