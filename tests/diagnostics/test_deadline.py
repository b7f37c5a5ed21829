"""The 7-day deadline to bring a vehicle in after a field-service diagnosis: the customer's SMS
notice names the nearest center, its address and the deadline; the diagnostics workers queue one
reminder before it (whatever the number of workers), sent over real SMPP to the customer's
handset; a deadline passed shows as overdue. And the notice texts themselves: Spanish by
default, specific to the verdict, one or two GSM segments."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from prometheus_client import REGISTRY
from psycopg.rows import dict_row

from avl import gsm7
from avl.admin import add_center
from diagnostics import checklist, tickets
from diagnostics.context import Device
from diagnostics.model import Verdict
from diagnostics.service import DEADLINES_EVERY_S
from tests.diagnostics.harness import step
from tests.diagnostics.test_sms_ping import _diagnose, running_worker
from tests.simulators.sms_world import sms_world

CARACAS = ZoneInfo("America/Caracas")
LONG_CENTER = {"name": "Centro de Instalación Certificado Los Ruíces Sur, Caracas",
               "address": "Calle Los Ruíces Sur con Av. Principal de Los Ruíces, Edificio Torre Ávila, Planta Baja",
               "hours": "Lunes a viernes 7:30-16:30, sábados 8:00-12:00"}


def notices(db_url: str) -> list[dict[str, Any]]:
    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        return conn.execute("SELECT id, msisdn, body, status FROM sms_messages WHERE purpose = 'notice'"
                            " ORDER BY id").fetchall()


def ticket_row(db_url: str, device_id: int) -> dict[str, Any]:
    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        row = conn.execute("SELECT * FROM tickets WHERE device_id = %s ORDER BY id DESC LIMIT 1", (device_id,)).fetchone()
    assert row is not None
    return row


async def until(predicate: Any, seconds: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"{what}: not within {seconds} s"
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("verdict", [Verdict.GPS_FAULT, Verdict.POWER_FAULT, Verdict.UNREACHABLE])
@pytest.mark.parametrize("lang", ["es", "en"])
def test_a_workshop_notice_names_the_center_its_address_and_the_deadline_in_two_sms_at_most(
        verdict: Verdict, lang: str) -> None:
    due = datetime(2026, 12, 16, 2, 30, tzinfo=UTC)  # 15/12 in Caracas
    text = tickets.notice(verdict.value, lang, vehicle="AB123CD", number="AVL-2026-000042", center=LONG_CENTER,
                          deadline=due, tz=CARACAS)
    assert tickets.segments(text) <= 2 and gsm7.representable(text), text
    assert ("hasta el 15/12" if lang == "es" else "by 15/12") in text
    assert "Centro de Instalacion Certificado Los Ruices Sur" in text  # its accents dropped: still GSM, not UCS-2
    assert "AVL-2026-000042" in text and text.startswith("Vehiculo AB123CD" if lang == "es" else "Vehicle AB123CD")
    # A short center fits with its address and its hours.
    short = tickets.notice(verdict.value, lang, vehicle="AB123CD", number="AVL-2026-000042", deadline=due, tz=CARACAS,
                           center={"name": "Centro Chacao", "address": "Av. Miranda, Chacao", "hours": "Lu-Vi 8-17"})
    assert short.endswith(": Centro Chacao, Av. Miranda, Chacao (Lu-Vi 8-17).") and tickets.segments(short) <= 2


def test_a_data_channel_fault_is_fixed_remotely_first_and_a_line_is_checked_with_the_carrier() -> None:
    remote = tickets.notice("data_channel_fault", "es", vehicle="AB1", number="AVL-1", center=LONG_CENTER)
    assert "reconfiguramos a distancia" in remote and "Ruices" not in remote  # no center before the remote fix
    line = tickets.notice("line_fault", "es", vehicle="AB1", number="AVL-1", center=LONG_CENTER)
    assert "operadora" in line and "centro" not in line
    assert tickets.segments(remote) == tickets.segments(line) == 1


async def test_the_bring_in_reminder_goes_once_by_sms_and_a_passed_deadline_is_overdue(
        db_url: str, tmp_path: Path) -> None:
    fleets: list[dict[str, Any]] = [{"vehicles": 2, "protocols": ("gt06",), "interval_s": 1.0, "seed": 41}]
    async with sms_world(db_url, tmp_path, fleets, silent_after_intervals=3, unreachable_after_s=2,
                         parked_interval_s=1) as world:
        broken, late = world.fleets[0].specs
        customer = "+" + late.msisdn  # the customer's phone (E.164): a handset the SMSC routes to
        with psycopg.connect(db_url) as conn:
            conn.execute("UPDATE accounts SET contact_msisdn = %s", (customer,))
            add_center(conn, "Centro Chacao", 10.4961, -66.8530, address="Av. Francisco de Miranda, Chacao",
                       hours="Lu-Vi 8:00-17:00")
        async with running_worker(world.settings, db_url), running_worker(world.settings, db_url):
            await asyncio.sleep(1.5)
            world.fleets[0].terminals[broken.identifier].set_fault("powered_off", True)
            await asyncio.sleep(3.5)
            report = await _diagnose(world, db_url, broken.identifier)
            assert report.verdict is Verdict.UNREACHABLE, checklist.explain(report)
            assert step(report, "action").evidence["notified"] is True
            ticket = ticket_row(db_url, report.device_id)
            assert ticket["type"] == "field_service" and ticket["reminded_at"] is None
            due = ticket["bring_in_due_at"]
            assert timedelta(days=7) - timedelta(minutes=1) < due - ticket["opened_at"] <= timedelta(days=7)
            (first,) = notices(db_url)
            assert first["body"] == (f"Vehiculo {broken.plate}: equipo sin comunicacion. Caso {ticket['number']}."
                                     f" Llevelo hasta el {due.astimezone(CARACAS):%d/%m} a un centro de instalacion"
                                     " certificado: Centro Chacao, Av. Francisco de Miranda, Chacao (Lu-Vi 8:00-17:00).")
            await until(lambda: notices(db_url)[0]["status"] != "queued", 20, "the notice sent")

            # Two days before the deadline: one reminder, whichever of the two workers gets there.
            with psycopg.connect(db_url) as conn:
                conn.execute("UPDATE tickets SET bring_in_due_at = now() + interval '1 day' WHERE id = %s",
                             (ticket["id"],))
            await until(lambda: len(notices(db_url)) == 2 and notices(db_url)[1]["status"] != "queued", 30,
                        "the reminder sent")
            reminder = notices(db_url)[1]
            new_due = ticket_row(db_url, report.device_id)["bring_in_due_at"]
            assert reminder["msisdn"] == customer and reminder["status"] in ("submitted", "DELIVRD"), reminder
            assert reminder["body"].startswith(f"Recordatorio, caso {ticket['number']}: lleve el vehiculo {broken.plate}"
                                               f" hasta el {new_due.astimezone(CARACAS):%d/%m} a un centro")
            assert tickets.segments(reminder["body"]) <= 2
            assert ticket_row(db_url, report.device_id)["reminded_at"] is not None
            with psycopg.connect(db_url) as conn:
                told = conn.execute("SELECT reason, customer_message FROM ticket_activities WHERE ticket_id = %s"
                                    " ORDER BY id DESC LIMIT 1", (ticket["id"],)).fetchone()
            assert told == ("recordatorio del plazo para llevar el vehículo", reminder["body"])

            # A ticket whose deadline already passed (opened by hand, never reminded): a late reminder, and overdue.
            with psycopg.connect(db_url) as conn:
                conn.execute(
                    "INSERT INTO tickets (number, account_id, device_id, type, category, title, queue, bring_in_due_at)"
                    " SELECT 'AVL-2026-990001', account_id, id, 'field_service', 'antenna_damaged', 'antena', "
                    " 'field_service', now() - interval '1 day' FROM devices WHERE identifier = %s", (late.identifier,))
            await until(lambda: len(notices(db_url)) == 3, 30, "the late reminder queued")
            assert notices(db_url)[2]["body"].startswith("Caso AVL-2026-990001: el plazo para llevar el vehiculo")
            await asyncio.sleep(3 * DEADLINES_EVERY_S)  # both workers go round a few more times
            assert len(notices(db_url)) == 3  # once each
            assert REGISTRY.get_sample_value("avl_tickets_bring_in_overdue") == 1
            assert REGISTRY.get_sample_value("avl_ticket_reminders_total", {"sent": "yes"}) >= 2

            # Brought in: no longer overdue.
            with psycopg.connect(db_url) as conn:
                conn.execute("UPDATE tickets SET state = 'at_installation_center', brought_in_at = now()"
                             " WHERE number = 'AVL-2026-990001'")
            await until(lambda: REGISTRY.get_sample_value("avl_tickets_bring_in_overdue") == 0, 20, "the gauge")


def test_the_agents_instruction_is_specific_to_the_verdict_in_spanish_or_english() -> None:
    device = Device(id=1, identifier="862170010000001", protocol="gl200", msisdn="+584140000001", line_status="active",
                    report_interval_s=30, installed_at=None, account_id=1, account_name="A", account_status="active",
                    status_reason=None, billing="post_paid", balance=0, contact_msisdn=None, plate="AB123CD",
                    supply_voltage_v=12, fix_time=None, last_received_at=None, latitude=None, longitude=None)
    centers = [{"name": "Centro Chacao", "address": "Av. Francisco de Miranda", "distance_km": 0.9},
               {"name": "Centro Los Ruices", "address": None, "distance_km": 2.4}]
    due = datetime(2026, 12, 16, 2, 30, tzinfo=UTC)

    def said(verdict: Verdict, kind: str, lang: str, doa: bool = False) -> str:
        return tickets.instruction(device, verdict, kind, centers, doa, due if kind == "field_service" else None, lang,
                                   CARACAS)

    assert said(Verdict.UNREACHABLE, "field_service", "es") == (
        "El cliente lleva el vehículo AB123CD hasta el 15/12/2026 a un centro de instalación certificado para revisar y"
        " reparar el equipo: Centro Chacao, Av. Francisco de Miranda, a 0,9 km; Centro Los Ruices, a 2,4 km")
    assert "reemplazar el equipo" in said(Verdict.GPS_FAULT, "field_service", "es", doa=True)
    assert said(Verdict.DATA_CHANNEL_FAULT, "technical", "es").startswith("Soporte reconfigura por SMS el canal de datos")
    assert "operadora" in said(Verdict.LINE_FAULT, "technical", "es")
    assert said(Verdict.INCONCLUSIVE, "information", "es").startswith("Llamar al cliente")
    assert said(Verdict.UNREACHABLE, "field_service", "en").startswith(
        "The customer takes vehicle AB123CD by 15/12/2026 to a certified installation center to inspect and repair")
    assert said(Verdict.LINE_FAULT, "technical", "en").startswith("Check the line +584140000001 of vehicle AB123CD")
