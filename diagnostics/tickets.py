"""Tickets from verdicts, as the support desk works them.

- One open ticket per device and fault category: a new verdict adds an activity to it.
- A number the customer can quote: ``AVL-<year>-<000042>``.
- Recurrence: the same category within 30 days of the previous ticket's resolution is a
  field-service case straight away, referencing the earlier ticket.
- Dead on arrival: a terminal fault within 15 days of installation is flagged for
  replacement, not repair.
- The instruction names the certified installation centers nearest to the vehicle's
  last position.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import psycopg
from psycopg.rows import dict_row

from diagnostics import metrics
from diagnostics.context import Device
from diagnostics.model import EXPLANATION, Verdict

RECURRENCE = timedelta(days=30)
DEAD_ON_ARRIVAL = timedelta(days=15)
SLA = {"technical": timedelta(hours=24), "field_service": timedelta(hours=72), "platform": timedelta(hours=4)}
CLOSED = ["resolved", "closed"]


async def nearest_centers(conn: psycopg.AsyncConnection, lat: float | None, lon: float | None,
                          limit: int = 3) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT id, name, address, phone, latitude, longitude FROM installation_centers"
                          " WHERE certified ORDER BY id")
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
    order = np.argsort(km)[:limit]
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
                       notes: str | None = None) -> None:
    await conn.execute(
        "INSERT INTO ticket_activities (ticket_id, who, channel, reason, supplied, pending, solution, protocol_applied,"
        " appointment_at, notes) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (ticket_id, who, channel, reason, supplied, pending, solution, protocol_applied, appointment_at, notes))


async def for_verdict(conn: psycopg.AsyncConnection, device: Device, verdict: Verdict, summary: str,
                      run_id: int | None) -> dict[str, Any]:
    """Opens the ticket for a terminal fault, or adds an activity to the open one."""
    category = verdict.value
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
        await cur.execute("SELECT id, number, resolved_at FROM tickets WHERE device_id = %s AND category = %s"
                          " AND state = ANY(%s) AND coalesce(resolved_at, closed_at) > %s"
                          " ORDER BY coalesce(resolved_at, closed_at) DESC LIMIT 1",
                          (device.id, category, CLOSED, now - RECURRENCE))
        earlier = await cur.fetchone()
        doa = device.installed_at is not None and now.date() - device.installed_at <= DEAD_ON_ARRIVAL
        # A data channel can often be fixed remotely (APN by SMS); the rest needs the vehicle at a center.
        kind = "technical" if verdict is Verdict.DATA_CHANNEL_FAULT and not earlier else "field_service"
        centers = await nearest_centers(conn, device.latitude, device.longitude)
        number = await new_number(conn)
        title = f"{device.plate or device.identifier}: {EXPLANATION[verdict]}"
        await cur.execute(
            "INSERT INTO tickets (number, account_id, device_id, type, category, title, recurrence_of, dead_on_arrival,"
            " sla_due_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING *",
            (number, device.account_id, device.id, kind, category, title, earlier["id"] if earlier else None, doa,
             now + SLA[kind]))
        ticket = await cur.fetchone()
        assert ticket is not None
        metrics.TICKETS_OPENED.labels(category).inc()
        where = "; ".join(f"{c['name']}" + (f" ({c['distance_km']} km)" if c["distance_km"] is not None else "")
                          for c in centers) or "no certified installation center registered"
        action = ("replace the terminal (dead on arrival: failed within 15 days of installation)" if doa
                  else "inspect and repair the terminal")
        pending = f"Take vehicle {device.plate or device.identifier} to a certified installation center to {action}: {where}"
        if kind == "technical":
            pending = "Support reconfigures the terminal's data channel (APN) by SMS; if it does not recover: " + pending
        if earlier:
            pending += f". Recurrence of {earlier['number']} (resolved {earlier['resolved_at']:%Y-%m-%d}): remote tests skipped"
        await add_activity(conn, ticket["id"], who="diagnostics", channel="system",
                           reason=f"checklist run {run_id}: {category}", supplied=summary, pending=pending,
                           protocol_applied="fault-support checklist (account, platform, reporting, SMS ping)")
        return {**ticket, "reused": False, "centers": centers, "instruction": pending}


async def platform_incident(conn: psycopg.AsyncConnection, summary: str) -> dict[str, Any]:
    """One open platform incident at a time, whatever the number of silent devices."""
    async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT pg_advisory_xact_lock(7412101)")
        await cur.execute("SELECT * FROM tickets WHERE device_id IS NULL AND category = 'platform_incident'"
                          " AND state <> ALL(%s)", (CLOSED,))
        ticket = await cur.fetchone()
        if ticket is None:
            await cur.execute(
                "INSERT INTO tickets (number, type, category, title, sla_due_at) VALUES (%s, 'platform',"
                " 'platform_incident', %s, %s) RETURNING *",
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
