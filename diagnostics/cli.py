"""`avl diagnose DEVICE`: the checklist now, printed for a support agent."""

from __future__ import annotations

from typing import Any

from avl.config import Settings
from diagnostics import checklist
from diagnostics.service import Worker


async def diagnose_now(settings: Settings, database_url: str, mqtt_url: str | None, device: str,
                       wait_s: float | None) -> tuple[str, list[dict[str, Any]]]:
    worker = Worker(settings, database_url, mqtt_url)
    await worker.start()
    try:
        async with worker.context() as ctx:
            ctx.sms_wait_s = wait_s
            report = await checklist.run(ctx, device, requested_by="cli")
    finally:
        await worker.close()
    return checklist.explain(report), [s.as_json() for s in report.steps]
