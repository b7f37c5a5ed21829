"""The support center's fault checklist for one device, in the procedure's order:
account status -> platform health -> reporting analysis -> SMS ping -> verdict and action.

Each step records its evidence in ``diagnostic_runs.steps`` as soon as it finishes, so a
support agent (or the API) can follow a run step by step while the SMS wait goes on.
"""

from __future__ import annotations

import logging

from psycopg.types.json import Jsonb

from diagnostics import metrics, tickets
from diagnostics.context import Context, Device, DiagnoseError, load_device
from diagnostics.model import ACCOUNT_VERDICTS, EXPLANATION, TERMINAL_FAULTS, Report, Step, Verdict
from diagnostics.smpp import SmppError
from diagnostics.steps import account, platform, reporting, sms_ping

log = logging.getLogger("avl.diagnostics")

# Verdicts a recent resolved ticket can repeat (recurrence skips the remote tests).
SILENT_CATEGORIES = (Verdict.UNREACHABLE, Verdict.DATA_CHANNEL_FAULT)


async def _save(ctx: Context, report: Report, status: str = "running") -> None:
    assert report.run_id is not None
    await ctx.conn.execute(
        "UPDATE diagnostic_runs SET steps = %s, status = %s, verdict = %s, ticket_id = %s,"
        " finished_at = CASE WHEN %s <> 'running' THEN now() END WHERE id = %s",
        (Jsonb([s.as_json() for s in report.steps]), status, report.verdict.value if report.verdict else None,
         report.ticket["id"] if report.ticket else None, status, report.run_id))


async def _recurrence(ctx: Context, device: Device) -> dict[str, object] | None:
    """A silent-device ticket resolved in the last 30 days: the same fault again goes straight to field service."""
    cur = await ctx.conn.execute(
        "SELECT id, number, category, coalesce(resolved_at, closed_at) FROM tickets WHERE device_id = %s"
        " AND category = ANY(%s) AND state IN ('resolved', 'closed')"
        " AND coalesce(resolved_at, closed_at) > now() - interval '30 days'"
        " ORDER BY coalesce(resolved_at, closed_at) DESC LIMIT 1",
        (device.id, [v.value for v in SILENT_CATEGORIES]))
    row = await cur.fetchone()
    return None if row is None else {"ticket": row[1], "category": row[2], "resolved_at": row[3].isoformat()}


async def run(ctx: Context, ref: str | int, *, requested_by: str = "sweep", run_id: int | None = None) -> Report:
    """Runs the checklist; persists the run (creating it unless ``run_id`` is given)."""
    device = await load_device(ctx.conn, ref)
    if device.account_id is None:
        raise DiagnoseError(f"device {device.identifier} is not attributed to any account")
    report = Report(device_id=device.id, identifier=device.identifier)
    if run_id is None:
        cur = await ctx.conn.execute("INSERT INTO diagnostic_runs (device_id, requested_by) VALUES (%s, %s) RETURNING id",
                                     (device.id, requested_by))
        row = await cur.fetchone()
        assert row is not None
        run_id = int(row[0])
    report.run_id = run_id
    try:
        await _checklist(ctx, device, report)
    except Exception as exc:
        report.steps.append(Step("error").done("fail", f"checklist failed: {type(exc).__name__}: {exc}"))
        await _save(ctx, report, "failed")
        raise
    await _save(ctx, report, "done")
    if report.verdict is not None:
        metrics.VERDICTS.labels(report.verdict.value).inc()
    log.info("checklist %s for %s: %s%s", run_id, device.identifier, report.verdict,
             f" -> ticket {report.ticket['number']}" if report.ticket else "")
    return report


async def _step(ctx: Context, report: Report, step: Step) -> None:
    report.steps.append(step)
    await _save(ctx, report)


async def _checklist(ctx: Context, device: Device, report: Report) -> None:
    step, verdict = account.check(device)
    await _step(ctx, report, step)
    if verdict in ACCOUNT_VERDICTS:
        report.verdict = verdict
        return  # the account's fault: no SMS, no vehicle sent to an installation center

    step, verdict = await platform.check(ctx)
    await _step(ctx, report, step)
    if verdict is Verdict.PLATFORM_INCIDENT:
        report.verdict = verdict
        report.ticket = await tickets.platform_incident(ctx.conn, step.summary)
        return

    step, verdict, figures = await reporting.check(ctx, device)
    await _step(ctx, report, step)
    if verdict is None:  # silent: the SMS ping decides
        earlier = await _recurrence(ctx, device)
        if earlier is not None:
            skipped = Step("sms_ping").done(
                "skipped", f"recurrence of {earlier['ticket']} ({earlier['category']}, resolved within 30 days):"
                " remote tests skipped, straight to field service", recurrence=earlier)
            await _step(ctx, report, skipped)
            verdict = Verdict(str(earlier["category"]))
        else:
            step, verdict = await sms_ping.check(ctx, device)
            await _step(ctx, report, step)
    report.verdict = verdict
    if verdict in TERMINAL_FAULTS:
        summary = "; ".join(f"{s.name}: {s.summary}" for s in report.steps)
        report.ticket = await tickets.for_verdict(ctx.conn, device, verdict, summary, report.run_id)
        action = Step("action")
        notified = await _notify(ctx, device, verdict, report.ticket)
        action.done("ok", f"ticket {report.ticket['number']}" + (" (existing)" if report.ticket.get("reused") else "")
                    + (f"; customer notified at {device.contact_msisdn}" if notified else "; customer not notified by SMS"),
                    ticket=report.ticket["number"], instruction=report.ticket.get("instruction"),
                    centers=report.ticket.get("centers"), dead_on_arrival=report.ticket["dead_on_arrival"],
                    recurrence_of=report.ticket["recurrence_of"], notified=notified)
        await _step(ctx, report, action)


async def _notify(ctx: Context, device: Device, verdict: Verdict, ticket: dict[str, object]) -> bool:
    """Tells the account's contact, by SMS, the ticket number and what to do."""
    if ticket.get("reused") or not device.contact_msisdn or ctx.smpp is None or not ctx.smpp.bound:
        return False
    text = (f"Vehicle {device.plate or device.identifier}: {verdict.value.replace('_', ' ')}. Ticket {ticket['number']}."
            " Please take it to a certified installation center.")
    try:
        message_id = await ctx.smpp.send(device.contact_msisdn, text[:160], receipt=False)
    except (SmppError, TimeoutError) as exc:
        log.warning("customer notice for ticket %s not sent: %s", ticket["number"], exc)
        return False
    await ctx.conn.execute("INSERT INTO sms_messages (direction, msisdn, body, status, smpp_message_id, submitted_at,"
                           " purpose) VALUES ('mt', %s, %s, 'submitted', %s, now(), 'notice')",
                           (device.contact_msisdn, text, message_id))
    await tickets.add_activity(ctx.conn, int(ticket["id"]), who="diagnostics", channel="sms",  # type: ignore[call-overload]
                               reason="customer notified", supplied=text)
    return True


def explain(report: Report) -> str:
    """The run as a support agent reads it (``avl diagnose``)."""
    lines = [f"device {report.identifier} (run {report.run_id})"]
    for s in report.steps:
        lines.append(f"  [{s.status:>7}] {s.name:<9} {s.summary}")
    if report.verdict:
        lines.append(f"verdict: {report.verdict.value}: {EXPLANATION[report.verdict]}")
    if report.ticket:
        lines.append(f"ticket: {report.ticket['number']} ({report.ticket['type']})")
        if report.ticket.get("instruction"):
            lines.append(f"  {report.ticket['instruction']}")
    return "\n".join(lines)
