"""The fault checklist on real data: each fault gives the right verdict, evidence and ticket (or none).

Reports reach the database through a running ingest service over real TCP, as devices send them.
SMS pings over SMPP are in test_sms_ping.py.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg

from diagnostics import checklist
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
    assert "reemplazar el equipo" in ticket["pending"]  # AVL_LANGUAGE: Spanish by default
    assert step(report, "action").evidence["dead_on_arrival"] is True


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


# Cadence: parked vehicles report less often, and the window starts at the first report ------------


async def test_a_parked_vehicle_reporting_at_its_parked_cadence_is_healthy_not_silent(db_url: str,
                                                                                       tmp_path: Path) -> None:
    # Declared every second while moving; parked (ignition off) it reports every 4 s, as its history shows.
    provision(db_url, devices=[{"identifier": IMEI, "protocol": "gl200", "plate": "AB1", "interval": 1}])
    settings = settings_for(tmp_path, silent_after_intervals=3)
    async with running_ingest(settings, db_url) as svc:
        await send_gl200(svc.tcp["gl200"].port, reports(IMEI, 10, minutes_ago=1.5, step_s=1)
                         + reports(IMEI, 10, minutes_ago=0.01, step_s=4, ignition=False, speed_kmh=0.0, frozen=True))
        await asyncio.sleep(5)  # 5 s: silent for a moving vehicle (3 x 1 s), not for a parked one (3 x 4 s)
        report = await diagnose(settings, db_url, IMEI)
    figures = step(report, "reporting").evidence
    assert report.verdict is Verdict.HEALTHY, checklist.explain(report)
    assert (figures["state"], figures["parked_interval_source"], figures["parked_interval_s"]) == ("parked", "learned", 4)
    assert figures["silent"] is False and tickets(db_url) == [] and sms_count(db_url) == 0
    with psycopg.connect(db_url) as conn:  # kept for the sweep
        assert conn.execute("SELECT parked_interval_s FROM device_cadence").fetchone() == (4.0,)


async def test_an_installers_parked_cadence_is_used_before_anything_is_learned(db_url: str, tmp_path: Path) -> None:
    provision(db_url, devices=[{"identifier": IMEI, "protocol": "gl200", "interval": 1, "parked_interval_s": 20}])
    settings = settings_for(tmp_path, silent_after_intervals=3)
    async with running_ingest(settings, db_url) as svc:
        await send_gl200(svc.tcp["gl200"].port, reports(IMEI, 3, minutes_ago=0.01, step_s=1, ignition=False,
                                                        speed_kmh=0.0))
        await asyncio.sleep(4)
        report = await diagnose(settings, db_url, IMEI)
    figures = step(report, "reporting").evidence
    assert report.verdict is Verdict.HEALTHY, checklist.explain(report)
    assert (figures["parked_interval_source"], figures["expected_interval_s"]) == ("declared", 20)


async def test_the_window_starts_at_the_devices_first_report(db_url: str, tmp_path: Path) -> None:
    provision(db_url, devices=[{"identifier": IMEI, "protocol": "gl200", "interval": 60}])
    settings = settings_for(tmp_path)
    async with running_ingest(settings, db_url) as svc:  # a device installed an hour ago, reporting every minute
        await send_gl200(svc.tcp["gl200"].port, reports(IMEI, 60, minutes_ago=0.1, step_s=60))
        report = await diagnose(settings, db_url, IMEI)
    figures = step(report, "reporting").evidence
    assert report.verdict is Verdict.HEALTHY
    assert figures["window_s"] < 3700 and figures["longest_gap_s"] < 200 and figures["received_share"] > 0.95


# The fix: recent reports decide, and a garage is not a dead receiver ------------------------------


async def test_a_receiver_that_lost_its_fix_is_a_gps_fault_even_after_a_good_day(db_url: str, tmp_path: Path) -> None:
    provision(db_url, devices=[{"identifier": IMEI, "protocol": "gl200", "plate": "AB1", "interval": 30}])
    settings = settings_for(tmp_path)
    async with running_ingest(settings, db_url) as svc:
        await send_gl200(svc.tcp["gl200"].port, reports(IMEI, 40, minutes_ago=30, step_s=30)
                         + reports(IMEI, 5, minutes_ago=0.1, step_s=90, valid=False, satellites=0))
        report = await diagnose(settings, db_url, IMEI)
    figures = step(report, "reporting").evidence
    assert report.verdict is Verdict.GPS_FAULT, checklist.explain(report)
    assert figures["valid_fix_share"] > 0.8  # the day's share alone would have called it healthy
    assert (figures["no_fix_streak_reports"], figures["no_fix_streak_s"]) == (5, 360)
    assert tickets(db_url)[0]["category"] == "gps_fault"


async def test_no_fix_while_parked_is_not_a_gps_fault(db_url: str, tmp_path: Path) -> None:
    provision(db_url, devices=[{"identifier": IMEI, "protocol": "gl200", "interval": 30}])
    settings = settings_for(tmp_path)
    async with running_ingest(settings, db_url) as svc:  # parked in a basement: ignition off, no sky
        await send_gl200(svc.tcp["gl200"].port, reports(IMEI, 20, minutes_ago=15, step_s=30)
                         + reports(IMEI, 6, minutes_ago=0.1, step_s=120, valid=False, ignition=False, speed_kmh=0.0))
        report = await diagnose(settings, db_url, IMEI)
    assert report.verdict is Verdict.HEALTHY, checklist.explain(report)
    assert tickets(db_url) == []


async def test_the_supply_is_judged_on_its_latest_readings(db_url: str, tmp_path: Path) -> None:
    provision(db_url, devices=[{"identifier": IMEI, "protocol": "gl200", "plate": "AB1", "interval": 30,
                               "supply_voltage_v": 12}])
    settings = settings_for(tmp_path)
    async with running_ingest(settings, db_url) as svc:  # the main supply was cut a few minutes ago
        await send_gl200(svc.tcp["gl200"].port, reports(IMEI, 30, minutes_ago=5, step_s=30)
                         + reports(IMEI, 6, minutes_ago=0.1, step_s=30, power_mv=300))
        report = await diagnose(settings, db_url, IMEI)
    assert report.verdict is Verdict.POWER_FAULT, checklist.explain(report)
    assert "backup battery" in step(report, "reporting").summary


# No SMS test possible: inconclusive, never a workshop visit ------------------------------------------


async def test_without_an_sms_step_a_silent_terminal_is_inconclusive_not_unreachable(db_url: str,
                                                                                     tmp_path: Path) -> None:
    provision(db_url, devices=[{"identifier": IMEI, "protocol": "gl200", "msisdn": "584140000001", "interval": 1},
                               {"identifier": IMEI2, "protocol": "gl200", "msisdn": "584140000002", "interval": 1}])
    short = settings_for(tmp_path, silent_after_intervals=2, unreachable_after_s=3600)
    long = settings_for(tmp_path, silent_after_intervals=2, unreachable_after_s=1)
    async with running_ingest(short, db_url) as svc:
        await send_gl200(svc.tcp["gl200"].port, reports(IMEI, 5, minutes_ago=0.1, step_s=1))
        await send_gl200(svc.tcp["gl200"].port, reports(IMEI2, 5, minutes_ago=0.1, step_s=1))
        await asyncio.sleep(3)
        just_silent = await diagnose(short, db_url, IMEI)
        long_silent = await diagnose(long, db_url, IMEI2)
    assert just_silent.verdict is long_silent.verdict is Verdict.INCONCLUSIVE, checklist.explain(just_silent)
    assert "no SMSC configured" in step(long_silent, "sms_ping").summary
    (task,) = tickets(db_url)  # a short silence opens nothing; a long one is a call to the customer
    assert (task["device_id"], task["type"], task["category"]) == (long_silent.device_id, "information", "inconclusive")
    assert "Llamar al cliente" in task["pending"] and "centro de instalación" not in task["pending"]
    assert sms_count(db_url) == 0


async def test_a_prepaid_account_suspended_at_zero_is_no_balance_not_non_payment(db_url: str, tmp_path: Path) -> None:
    from decimal import Decimal

    from avl import billing

    provision(db_url, account="Prepago SA", billing="pre_paid", balance=5,
              devices=[{"identifier": IMEI, "protocol": "gl200", "msisdn": "584140000001"}])
    with psycopg.connect(db_url) as conn:  # the balance is used up: the account suspends itself
        billing.run(conn, billing.adjust("Prepago SA", Decimal("-5"), reason="locate requests", reference=None,
                                         actor="test", via="system"))
        conn.commit()
        assert conn.execute("SELECT status, status_cause FROM accounts").fetchone() == ("suspended", "no_balance")
    report = await diagnose(settings_for(tmp_path), db_url, IMEI)
    assert report.verdict is Verdict.NO_BALANCE, checklist.explain(report)
    assert "no balance" in report.steps[0].summary and tickets(db_url) == []
