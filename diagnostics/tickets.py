"""Tickets from verdicts, as the support desk works them, and the deadlines that run on them.

- One open ticket per device and fault category: a new verdict adds an activity to it.
- A number the customer can quote: ``AVL-<year>-<000042>``.
- Recurrence: the same category within 30 days of the previous ticket's resolution is a
  field-service case straight away, referencing the earlier ticket.
- Dead on arrival: a terminal fault within 15 days of its purchase (with the proof of
  purchase recorded) or its installation is flagged for replacement, not repair.
- The instruction (in ``AVL_LANGUAGE``, the ``tickets`` catalogue) names the certified
  installation centers nearest to the vehicle's last position, with their addresses.
- The customer is told what is happening within 24 h of the opening (``inform_due_at``);
  any activity that records what the customer was told (``customer_message``: an SMS notice,
  what an agent said on the phone) meets it.
- Field service: the customer brings the vehicle within 7 days of the diagnosis
  (``bring_in_due_at``); the diagnostics worker queues one reminder by SMS 2 days before
  (:func:`remind`), and the deadline shows as overdue until the vehicle is at a center.
- A field-service ticket resolves only when the checklist, run again, finds the vehicle
  healthy (:func:`settle_resolution`).
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import psycopg
from psycopg.rows import dict_row

from avl import gsm7
from avl.admin import warranty
from avl.config import Settings
from avl.i18n import DEFAULT_LANGUAGE, catalogue, language, t
from diagnostics import metrics
from diagnostics.context import Device
from diagnostics.model import EXPLANATION, TERMINAL_FAULTS, Verdict
from diagnostics.smpp import encode_text

RECURRENCE = timedelta(days=30)
DEAD_ON_ARRIVAL = timedelta(days=15)
SLA = {"technical": timedelta(hours=24), "field_service": timedelta(hours=72), "platform": timedelta(hours=4),
       "information": timedelta(hours=24)}
CLOSED = ["resolved", "closed"]
INFORM_WITHIN = timedelta(hours=24)  # the customer is told what is happening within a day
BRING_IN_WITHIN = timedelta(days=7)  # field service: the vehicle at a center within 7 days of the diagnosis
REMIND_BEFORE = timedelta(days=2)  # the one reminder goes out this long before the deadline
QUEUES = ("desk", "technical", "field_service", "carrier", "platform")
# What a resolution check must find: the terminal reports properly, straight away or once the ping woke it.
HEALTHY = {Verdict.HEALTHY, Verdict.RECOVERED_AFTER_PING}
SMS_SEGMENTS = 2  # customer notices fit one or two GSM segments
DEFAULT_TIMEZONE = "America/Caracas"


def queue_for(kind: str, category: str) -> str:
    """The queue a new ticket goes to: who can act on it."""
    if kind in ("field_service", "platform"):
        return kind
    if category == "line_fault":
        return "carrier"
    return "technical" if kind == "technical" else "desk"


async def nearest_centers(conn: psycopg.AsyncConnection, lat: float | None, lon: float | None,
                          limit: int | None = 3) -> list[dict[str, Any]]:
    """Certified centers, nearest first (by name, without a distance, when the point is unknown)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT id, name, address, phone, hours, latitude, longitude FROM installation_centers"
                          " WHERE certified ORDER BY name, id")
        centers = await cur.fetchall()
    if not centers:
        return []
    if lat is None or lon is None:
        return [{**c, "distance_km": None} for c in centers[:limit]]
    la = np.radians([c["latitude"] for c in centers])
    lo = np.radians([c["longitude"] for c in centers])
    p, q = math.radians(lat), math.radians(lon)
    h = np.sin((la - p) / 2) ** 2 + np.cos(p) * np.cos(la) * np.sin((lo - q) / 2) ** 2
    km = 2 * 6371.0088 * np.arcsin(np.sqrt(h))
    order = np.argsort(km, kind="stable")[:limit]
    return [{**centers[i], "distance_km": round(float(km[i]), 1)} for i in order]


async def new_number(conn: psycopg.AsyncConnection) -> str:
    """The next number a customer can quote: ``AVL-<year>-<000042>``."""
    cur = await conn.execute("SELECT nextval('ticket_number_seq')")
    row = await cur.fetchone()
    assert row is not None
    return f"AVL-{datetime.now(UTC).year}-{row[0]:06d}"


async def add_activity(conn: psycopg.AsyncConnection, ticket_id: int, *, who: str, channel: str, reason: str,
                       supplied: str | None = None, pending: str | None = None, solution: str | None = None,
                       protocol_applied: str | None = None, appointment_at: datetime | None = None,
                       notes: str | None = None, contact: str | None = None,
                       customer_message: str | None = None) -> None:
    """One interaction on the case. ``contact``: the person spoken to; ``customer_message``: what the
    customer was told (the only part of an activity a client sees), which meets the 24 h rule."""
    await conn.execute(
        "INSERT INTO ticket_activities (ticket_id, who, channel, reason, supplied, pending, solution, protocol_applied,"
        " appointment_at, notes, contact, customer_message) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (ticket_id, who, channel, reason, supplied, pending, solution, protocol_applied, appointment_at, notes,
         contact, customer_message))
    if customer_message:
        await conn.execute("UPDATE tickets SET customer_informed_at = coalesce(customer_informed_at, now())"
                           " WHERE id = %s", (ticket_id,))


async def send_notice(conn: psycopg.AsyncConnection, ticket_id: int, msisdn: str, text: str, reason: str) -> None:
    """Queues an SMS to the customer in the outbox (the worker holding the SMSC bind sends it) and
    records it on the ticket as what the customer was told."""
    await conn.execute("INSERT INTO sms_messages (direction, msisdn, device_id, body, status, purpose)"
                       " VALUES ('mt', %s, NULL, %s, 'queued', 'notice')", (msisdn, text))
    await add_activity(conn, ticket_id, who="diagnostics", channel="sms", reason=reason, supplied=text,
                       contact=msisdn, customer_message=text)


async def for_verdict(conn: psycopg.AsyncConnection, device: Device, verdict: Verdict, summary: str,
                      run_id: int | None, settings: Settings | None = None) -> dict[str, Any]:
    """Opens the ticket for a terminal fault, or adds an activity to the open one."""
    category = verdict.value
    lang, tz = _people(settings)
    now = datetime.now(UTC)
    async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        # Serialise per device: two checks of one device must not open two tickets.
        await cur.execute("SELECT pg_advisory_xact_lock(7412100, %s)", (device.id,))
        await cur.execute("SELECT * FROM tickets WHERE device_id = %s AND category = %s AND state <> ALL(%s)",
                          (device.id, category, CLOSED))
        open_ticket = await cur.fetchone()
        if open_ticket is not None:
            await add_activity(conn, open_ticket["id"], who="diagnostics", channel="system",
                               reason=f"checklist run {run_id}: {category} again", notes=summary)
            return {**open_ticket, "reused": True}
        workshop = verdict in TERMINAL_FAULTS
        earlier = None
        if workshop:
            await cur.execute("SELECT id, number, coalesce(resolved_at, closed_at) AS resolved_at FROM tickets"
                              " WHERE device_id = %s AND category = %s"
                              " AND state = ANY(%s) AND coalesce(resolved_at, closed_at) > %s"
                              " ORDER BY coalesce(resolved_at, closed_at) DESC LIMIT 1",
                              (device.id, category, CLOSED, now - RECURRENCE))
            earlier = await cur.fetchone()
        # Dead on arrival: within 15 days of the purchase (with its proof) or the installation (avl.admin.warranty).
        await cur.execute("SELECT purchased_at, proof_of_purchase, installed_at FROM devices WHERE id = %s", (device.id,))
        dates = await cur.fetchone()
        doa = workshop and dates is not None and warranty(reported_on=now.date(), **dates).outcome == "dead_on_arrival"
        kind = _kind(verdict, recurrence=earlier is not None)
        centers = await nearest_centers(conn, device.latitude, device.longitude) if workshop else []
        bring_in_due = now + BRING_IN_WITHIN if kind == "field_service" else None
        number = await new_number(conn)
        title = f"{device.plate or device.identifier}: {EXPLANATION[verdict]}"
        await cur.execute(
            "INSERT INTO tickets (number, account_id, device_id, type, category, title, recurrence_of, dead_on_arrival,"
            " sla_due_at, queue, inform_due_at, bring_in_due_at, center_id, intake_channel, product_model, purchase_date,"
            " fault_reason) SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'system', d.model,"
            " coalesce(d.purchased_at, d.installed_at), %s FROM devices d WHERE d.id = %s RETURNING *",
            (number, device.account_id, device.id, kind, category, title, earlier["id"] if earlier else None, doa,
             now + SLA[kind], queue_for(kind, category), now + INFORM_WITHIN, bring_in_due,
             centers[0]["id"] if centers else None, t(f"tickets:category.{category}", lang), device.id))
        ticket = await cur.fetchone()
        assert ticket is not None
        metrics.TICKETS_OPENED.labels(category).inc()
        pending = instruction(device, verdict, kind, centers, doa, bring_in_due, lang, tz)
        if earlier:
            pending += " " + t("tickets:instruction.recurrence", lang, number=earlier["number"],
                               date=local_date(earlier["resolved_at"], tz))
        await add_activity(conn, ticket["id"], who="diagnostics", channel="system",
                           reason=f"checklist run {run_id}: {category}", supplied=summary, pending=pending,
                           protocol_applied="fault-support checklist (account, platform, reporting, SMS ping)")
        return {**ticket, "reused": False, "centers": centers, "instruction": pending}


def _kind(verdict: Verdict, *, recurrence: bool) -> str:
    if verdict is Verdict.INCONCLUSIVE:
        return "information"  # support calls the customer
    if verdict is Verdict.LINE_FAULT:
        return "technical"  # a check with the carrier
    if verdict is Verdict.DATA_CHANNEL_FAULT and not recurrence:
        return "technical"  # a data channel can often be fixed remotely (APN by SMS)
    return "field_service"


def _people(settings: Settings | None) -> tuple[str, ZoneInfo]:
    """The language and time zone of what customers and agents read."""
    if settings is None:
        return DEFAULT_LANGUAGE, ZoneInfo(DEFAULT_TIMEZONE)
    return settings.language, ZoneInfo(settings.customer_timezone)


def local_date(when: datetime | date, tz: ZoneInfo, *, short: bool = False) -> str:
    """A date as people in Venezuela write it: ``15/12/2026`` (``15/12`` in an SMS)."""
    day = when.astimezone(tz).date() if isinstance(when, datetime) else when
    return day.strftime("%d/%m" if short else "%d/%m/%Y")


def _centers_text(centers: list[dict[str, Any]], lang: str) -> str:
    parts = []
    for c in centers:
        bits = [str(c["name"])] + ([str(c["address"])] if c.get("address") else [])
        if c.get("distance_km") is not None:
            km = f"{c['distance_km']:.1f}"
            bits.append(t("tickets:instruction.distance", lang, km=km.replace(".", ",") if lang == "es" else km))
        parts.append(", ".join(bits))
    return "; ".join(parts) or t("tickets:instruction.no_center", lang)


def instruction(device: Device, verdict: Verdict, kind: str, centers: list[dict[str, Any]], doa: bool,
                bring_in_due: datetime | None, lang: str = DEFAULT_LANGUAGE,
                tz: ZoneInfo | None = None) -> str:
    """What the support desk must get done for this verdict (the opening activity's ``pending``)."""
    tz = tz or ZoneInfo(DEFAULT_TIMEZONE)
    vehicle = device.plate or device.identifier
    if verdict is Verdict.INCONCLUSIVE:
        return t("tickets:instruction.inconclusive", lang, vehicle=vehicle)
    if verdict is Verdict.LINE_FAULT:
        return t("tickets:instruction.line_fault", lang, vehicle=vehicle, msisdn=device.msisdn)
    where = _centers_text(centers, lang)
    if kind == "technical" or bring_in_due is None:
        return t("tickets:instruction.remote_first", lang, vehicle=vehicle, centers=where)
    action = t("tickets:instruction.replace" if doa else "tickets:instruction.repair", lang)
    return t("tickets:instruction.workshop", lang, vehicle=vehicle, date=local_date(bring_in_due, tz), action=action,
             centers=where)


def customer_instruction(ticket: Mapping[str, Any], center: Mapping[str, Any] | None, lang: str,
                         tz: ZoneInfo) -> str:
    """What the client reads on its ticket: what happens now, specific to the case (never the
    support desk's internal notes)."""
    vehicle = ticket.get("plate") or ticket.get("identifier") or ""
    state = ticket["state"]
    if state in CLOSED:
        return t(f"tickets:customer.{state}", lang)
    if ticket.get("brought_in_at") or state == "at_installation_center":
        return t("tickets:customer.brought_in", lang, vehicle=vehicle)
    if ticket.get("bring_in_due_at"):
        where = (", ".join(str(x) for x in (center["name"], center.get("address")) if x) if center
                 else t("tickets:customer.no_center", lang))
        key = "workshop_replace" if ticket.get("dead_on_arrival") else "workshop"
        return t(f"tickets:customer.{key}", lang, vehicle=vehicle, date=local_date(ticket["bring_in_due_at"], tz),
                 center=where)
    category = ticket["category"]
    if category == Verdict.DATA_CHANNEL_FAULT.value:
        return t("tickets:customer.remote_first", lang, vehicle=vehicle)
    if category in (Verdict.LINE_FAULT.value, Verdict.INCONCLUSIVE.value):
        return t(f"tickets:customer.{category}", lang, vehicle=vehicle)
    return t("tickets:customer.in_progress", lang)


def label(kind: str, code: str, lang: str) -> str | None:
    """The customer-facing name of a state, type or category (None for a category with no name)."""
    return catalogue(language(lang), "tickets").get(f"{kind}.{code}")


# Customer SMS ---------------------------------------------------------------------------------------------------------


def sms_safe(value: str) -> str:
    """``value`` in the GSM 03.38 alphabet: a letter outside it loses its accent (Á -> A, í -> i);
    what has no such form becomes ``?``. Keeps a plate or a center's name from turning the whole
    notice into UCS-2 (70 characters a segment)."""
    out = []
    for ch in value:
        if ch in gsm7.ENCODE:
            out.append(ch)
        else:
            out.append("".join(c for c in unicodedata.normalize("NFKD", ch) if c in gsm7.ENCODE) or "?")
    return "".join(out)


def segments(text: str) -> int:
    """How many SMS ``text`` goes out as (what the SMPP link sends)."""
    return len(encode_text(text)[0])


def notice(key: str, lang: str, *, vehicle: str, number: str, center: Mapping[str, Any] | str | None = None,
           deadline: datetime | None = None, tz: ZoneInfo | None = None, max_segments: int = SMS_SEGMENTS) -> str:
    """The customer SMS ``notices:<key>`` in ``lang``, within ``max_segments``: the center's name,
    address and hours and the deadline are put in as far as they fit (hours go first, then the
    address, then the name is shortened)."""
    tz = tz or ZoneInfo(DEFAULT_TIMEZONE)
    lang = language(lang)
    info = {"name": center} if isinstance(center, str) else dict(center or {})
    name, address, hours = (sms_safe(str(info[k])) if info.get(k) else "" for k in ("name", "address", "hours"))
    day = local_date(deadline, tz, short=True) if deadline else ""
    base = {"vehicle": sms_safe(vehicle), "number": number, "date": day,
            "deadline": t("notices:deadline", lang, date=day) if day else ""}
    parts = [""]
    if name and "{{center}}" in catalogue(lang, "notices")[key]:
        cuts = [name[:n].rstrip(" ,.;") for n in range(len(name), min(8, len(name)) - 1, -1)]
        parts = [t("notices:center", lang, name=cut) for cut in cuts] + [""]
        if address:
            parts.insert(0, t("notices:center_address", lang, name=name, address=address))
            if hours:
                parts.insert(0, t("notices:center_hours", lang, name=name, address=address, hours=hours))
    text = ""
    for part in parts:
        text = t(f"notices:{key}", lang, **base, center=part)
        if segments(text) <= max_segments:
            break
    return text


# Deadlines: the worker's loop ----------------------------------------------------------------------------------------

async def remind(conn: psycopg.AsyncConnection, settings: Settings | None = None, batch: int = 50) -> int:
    """Queues the one reminder of each field-service ticket whose bring-in deadline is 2 days away
    (or already past, if the ticket was opened late): an SMS to the account's contact through the
    outbox, recorded on the ticket. Claimed under a row lock, with ``reminded_at`` set in the same
    transaction as the SMS: once, however many workers run."""
    lang, tz = _people(settings)
    async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "WITH due AS (SELECT id FROM tickets WHERE bring_in_due_at IS NOT NULL AND brought_in_at IS NULL"
            " AND reminded_at IS NULL AND state NOT IN ('resolved', 'closed', 'at_installation_center')"
            " AND bring_in_due_at <= now() + %s ORDER BY bring_in_due_at LIMIT %s FOR UPDATE SKIP LOCKED)"
            " UPDATE tickets t SET reminded_at = now() FROM due WHERE t.id = due.id RETURNING t.id", (REMIND_BEFORE, batch))
        ids = [r["id"] for r in await cur.fetchall()]
        if not ids:
            return 0
        await cur.execute(
            "SELECT t.id, t.number, t.bring_in_due_at, coalesce(v.plate, d.identifier) AS vehicle, a.contact_msisdn,"
            " c.name, c.address, c.hours FROM tickets t LEFT JOIN devices d ON d.id = t.device_id"
            " LEFT JOIN vehicles v ON v.id = d.vehicle_id LEFT JOIN accounts a ON a.id = t.account_id"
            " LEFT JOIN installation_centers c ON c.id = t.center_id WHERE t.id = ANY(%s) ORDER BY t.id", (ids,))
        for row in await cur.fetchall():
            if not row["contact_msisdn"]:
                await add_activity(conn, row["id"], who="diagnostics", channel="system",
                                   reason=t("tickets:activity.reminder_no_contact", lang))
                metrics.TICKET_REMINDERS.labels("no").inc()
                continue
            late = row["bring_in_due_at"] <= datetime.now(UTC)
            text = notice("reminder_late" if late else "reminder", lang, vehicle=row["vehicle"] or "",
                          number=row["number"], center=row if row["name"] else None, deadline=row["bring_in_due_at"],
                          tz=tz)
            await send_notice(conn, row["id"], row["contact_msisdn"], text, t("tickets:activity.reminder", lang))
            metrics.TICKET_REMINDERS.labels("yes").inc()
        return len(ids)


async def measure(conn: psycopg.AsyncConnection) -> None:
    """The support desk's deadlines as gauges: the 24 h rule (due and overdue, by queue) and the
    vehicles not brought in by their deadline."""
    cur = await conn.execute(
        "SELECT queue, count(*) FILTER (WHERE inform_due_at >= now()), count(*) FILTER (WHERE inform_due_at < now())"
        " FROM tickets WHERE customer_informed_at IS NULL AND inform_due_at IS NOT NULL"
        " AND state NOT IN ('resolved', 'closed')"
        " GROUP BY queue")
    counts = {q: (0, 0) for q in QUEUES} | {str(q): (int(due), int(late)) for q, due, late in await cur.fetchall()}
    for queue, (due, late) in counts.items():
        metrics.TICKETS_INFORM_DUE.labels(queue).set(due)
        metrics.TICKETS_INFORM_OVERDUE.labels(queue).set(late)
    cur = await conn.execute("SELECT count(*) FROM tickets WHERE bring_in_due_at < now() AND brought_in_at IS NULL"
                             " AND state NOT IN ('resolved', 'closed')")
    row = await cur.fetchone()
    metrics.TICKETS_BRING_IN_OVERDUE.set(int(row[0]) if row else 0)


# Resolution ----------------------------------------------------------------------------------------------------------


async def settle_resolution(conn: psycopg.AsyncConnection, ticket_id: int, run_id: int, verdict: Verdict | None,
                            why: str, *, who: str, channel: str = "web", note: str | None = None,
                            lang: str = DEFAULT_LANGUAGE) -> bool:
    """Applies a resolution check's outcome: the ticket resolves when the run found the vehicle
    healthy; otherwise the resolution is refused, with the run's verdict, on the ticket. Nothing
    changes if the ticket moved on meanwhile (closed, or another check asked for)."""
    async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT state, resolution_run_id FROM tickets WHERE id = %s FOR UPDATE", (ticket_id,))
        row = await cur.fetchone()
        if row is None or row["resolution_run_id"] != run_id or row["state"] in CLOSED:
            return False
        if verdict in HEALTHY:
            assert verdict is not None
            await cur.execute("UPDATE tickets SET state = 'resolved', resolved_at = now(),"
                              " first_response_at = coalesce(first_response_at, now()) WHERE id = %s", (ticket_id,))
            await add_activity(conn, ticket_id, who=who, channel=channel, reason=f"state: {row['state']} -> resolved",
                               supplied=t("tickets:activity.resolution_confirmed", lang, run=run_id,
                                          verdict=verdict.value), notes=note)
            return True
        key = "resolution_refused" if verdict is not None else "resolution_failed"
        await add_activity(conn, ticket_id, who="diagnostics", channel="system",
                           reason=t(f"tickets:activity.{key}", lang, run=run_id,
                                    verdict=verdict.value if verdict else "", why=why or "?"))
        return False


async def platform_incident(conn: psycopg.AsyncConnection, summary: str) -> dict[str, Any]:
    """One open platform incident at a time, whatever the number of silent devices."""
    async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT pg_advisory_xact_lock(7412101)")
        await cur.execute("SELECT * FROM tickets WHERE device_id IS NULL AND category = 'platform_incident'"
                          " AND state <> ALL(%s)", (CLOSED,))
        ticket = await cur.fetchone()
        if ticket is None:
            await cur.execute(
                "INSERT INTO tickets (number, type, category, title, sla_due_at, queue) VALUES (%s, 'platform',"
                " 'platform_incident', %s, %s, 'platform') RETURNING *",
                (await new_number(conn), "Platform incident: " + summary[:200], datetime.now(UTC) + SLA["platform"]))
            ticket = await cur.fetchone()
            assert ticket is not None
            metrics.TICKETS_OPENED.labels("platform_incident").inc()
            reused = False
        else:
            reused = True
        await add_activity(conn, ticket["id"], who="diagnostics", channel="system", reason="platform check failed",
                           notes=summary)
        return {**ticket, "reused": reused}
