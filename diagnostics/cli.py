"""`avl diagnose DEVICE`: the checklist now, printed for a support agent.

It runs in its own process, beside the diagnostics worker that owns the SMSC bind, so its
SMS ping goes out through the worker's outbox when such a worker is alive (``AVL_DIAGNOSE_SMS``
decides: auto, outbox, bind, off), and it says which way it went.
"""

from __future__ import annotations

from typing import Any

import psycopg

from avl.config import Settings
from diagnostics import checklist
from diagnostics.service import Worker

WORKER_ALIVE_S = 30


async def sms_worker(database_url: str) -> str | None:
    """The instance of a diagnostics worker alive with its SMSC bound, if any."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT instance FROM platform_status WHERE component = 'diagnostics' AND details->>'smsc' = 'bound'"
            " AND updated_at > now() - make_interval(secs => %s) ORDER BY updated_at DESC LIMIT 1", (WORKER_ALIVE_S,))
        row = await cur.fetchone()
    return None if row is None else str(row[0])


async def choose_sms(settings: Settings, database_url: str) -> tuple[str, str]:
    """(via, note): how this process's SMS ping goes out, and the sentence that says so."""
    mode = settings.diagnose_sms
    worker = await sms_worker(database_url) if mode in ("auto", "outbox") else None
    if mode == "auto":
        mode = "outbox" if worker else ("bind" if settings.smpp_host else "off")
    if mode == "outbox":
        return "outbox", (f"the diagnostics worker's outbox ({worker})" if worker else
                          "the diagnostics worker's outbox (no worker with a bound SMSC is alive now)")
    if mode == "bind":
        if not settings.smpp_host:
            return "off", "AVL_DIAGNOSE_SMS=bind but no SMSC configured (AVL_SMPP_HOST)"
        return "bind", f"its own SMPP bind to {settings.smpp_host}:{settings.smpp_port}"
    if settings.diagnose_sms == "off":
        return "off", "SMS pings turned off (AVL_DIAGNOSE_SMS=off)"
    return "off", "no SMSC configured (AVL_SMPP_HOST) and no diagnostics worker with one"


async def diagnose_now(settings: Settings, database_url: str, mqtt_url: str | None, device: str,
                       wait_s: float | None) -> tuple[str, dict[str, Any]]:
    """Runs the checklist; returns the agent's text and everything as JSON (run, steps, verdict, ticket)."""
    via, note = await choose_sms(settings, database_url)
    worker = Worker(settings if via == "bind" else settings.model_copy(update={"smpp_host": None}), database_url,
                    mqtt_url)
    await worker.start()
    try:
        async with worker.context() as ctx:
            ctx.sms_wait_s = wait_s
            ctx.sms_via, ctx.sms_note = via, note
            report = await checklist.run(ctx, device, requested_by="cli")
    finally:
        await worker.close()
    return f"SMS via {note}\n" + checklist.explain(report, settings.language), report.as_json()
