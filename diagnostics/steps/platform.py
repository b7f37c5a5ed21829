"""Step 2: the location platform itself is operational.

Reads the ingest processes' heartbeats (alive, writer queue, spool, database), checks the
database is writable and the broker reachable. A platform problem is a platform verdict,
never a terminal fault. The SMSC's state is recorded here but belongs to the SMS step: without
an SMSC no device's data is in doubt, only the SMS test cannot be done.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from avl.db import first_line
from diagnostics.context import Context
from diagnostics.model import Step, Text, Verdict

HEARTBEAT_STALE_S = 30.0
QUEUE_HIGH = 0.8


async def check(ctx: Context) -> tuple[Step, Verdict | None]:
    step = Step("platform")
    problems: list[Text] = []
    evidence: dict[str, Any] = {}
    now = datetime.now(UTC)
    try:
        async with ctx.conn.cursor(row_factory=dict_row) as cur:
            await cur.execute("SELECT instance, updated_at, details FROM platform_status WHERE component = 'ingest'"
                              " AND updated_at > now() - interval '1 day' ORDER BY updated_at DESC")
            beats = await cur.fetchall()
            await cur.execute("SELECT max(last_received_at) AS newest FROM latest_positions")
            newest = (await cur.fetchone() or {}).get("newest")
            # The database is writable: this worker's own heartbeat is a write.
            await cur.execute(
                "INSERT INTO platform_status (component, instance, details) VALUES ('diagnostics', 'checklist', '{}')"
                " ON CONFLICT (component, instance) DO UPDATE SET updated_at = now()")
        evidence["database"] = "writable"
    except psycopg.Error as exc:
        evidence["database"] = first_line(exc)
        return step.done("fail", Text("checklist:platform.database", error=first_line(exc)), **evidence), Verdict.PLATFORM_INCIDENT

    alive = [b for b in beats if (now - b["updated_at"]).total_seconds() <= HEARTBEAT_STALE_S]
    evidence["ingest_processes"] = [{"instance": b["instance"], "age_s": round((now - b["updated_at"]).total_seconds(), 1),
                                     **b["details"]} for b in beats[:8]]
    if not alive:
        problems.append(Text("checklist:platform.no_ingest"))
    for b in alive:
        d = b["details"]
        if not d.get("database_up", True):
            problems.append(Text("checklist:platform.ingest_database_lost", instance=b["instance"]))
        if d.get("spool_bytes", 0) > 0:
            problems.append(Text("checklist:platform.spooling", instance=b["instance"], bytes=d["spool_bytes"]))
        if d.get("queue_rows", 0) > QUEUE_HIGH * d.get("queue_max_rows", 1 << 62):
            problems.append(Text("checklist:platform.queue", instance=b["instance"], rows=d["queue_rows"]))
    evidence["newest_report_age_s"] = round((now - newest).total_seconds(), 1) if newest else None

    if ctx.mqtt_url:
        evidence["broker"] = await _broker(ctx.mqtt_url)
        if evidence["broker"] != "reachable":
            problems.append(Text("checklist:platform.broker", error=evidence["broker"]))
    # The SMSC is evidence, not a platform problem: without it the SMS step cannot be done, and
    # that step says so (an inconclusive verdict), but no device's data is in doubt.
    if ctx.smpp is not None:
        evidence["smsc"] = "bound" if ctx.smpp.bound else f"not bound ({ctx.smpp.last_error or 'connecting'})"
    else:
        evidence["smsc"] = f"SMS via {ctx.sms_via}: {ctx.sms_note}"
    if problems:
        return step.done("fail", Text.concat(problems), problems=[str(p) for p in problems], **evidence), \
            Verdict.PLATFORM_INCIDENT
    return step.done("ok", Text("checklist:platform.ok", count=len(alive)), **evidence), None


async def _broker(url: str) -> str:
    import aiomqtt

    from ingest.transports.mqtt import client_params

    try:
        async with asyncio.timeout(5):
            async with aiomqtt.Client(**client_params(url)):  # type: ignore[arg-type]
                return "reachable"
    except (aiomqtt.MqttError, TimeoutError, OSError, ValueError) as exc:
        return str(exc) or type(exc).__name__
