"""The support center's fault checklist for one device, in the procedure's order:
account status -> platform health -> reporting analysis -> SMS ping -> verdict and action.

Each step records its evidence in ``diagnostic_runs.steps`` as soon as it finishes, so a
support agent (or the API) can follow a run step by step while the SMS wait goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from psycopg.types.json import Jsonb

from avl.i18n import language, t
from diagnostics import metrics, tickets, verdicts
from diagnostics.context import Context, Device, DiagnoseError, load_device
from diagnostics.model import ACCOUNT_VERDICTS, EXPLANATION, TICKET_VERDICTS, Report, Step, Text, Verdict
from diagnostics.steps import account, platform, reporting, sms_ping

log = logging.getLogger("avl.diagnostics")


async def _save(ctx: Context, report: Report, status: str = "running") -> None:
    assert report.run_id is not None
    await ctx.conn.execute(
        "UPDATE diagnostic_runs SET steps = %s, status = %s, verdict = %s, ticket_id = %s,"
        " finished_at = CASE WHEN %s <> 'running' THEN now() END WHERE id = %s",
        (Jsonb([s.as_json() for s in report.steps]), status, report.verdict.value if report.verdict else None,
         report.ticket["id"] if report.ticket else None, status, report.run_id))


async def run(ctx: Context, ref: str | int, *, requested_by: str = "sweep", run_id: int | None = None) -> Report:
    """Runs the checklist; persists the run (creating it unless ``run_id`` is given)."""
    device = await load_device(ctx.conn, ref, default_country=ctx.settings.phone_default_country)
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
    report.sms_via = ctx.sms_via
    step, verdict = account.check(device)
    await _step(ctx, report, step)
    if verdict in ACCOUNT_VERDICTS:
        report.verdict, report.why = verdict, step.summary
        return  # the account's fault: no SMS, no vehicle sent to an installation center

    step, verdict = await platform.check(ctx)
    await _step(ctx, report, step)
    if verdict is Verdict.PLATFORM_INCIDENT:
        report.verdict, report.why = verdict, step.summary
        report.ticket = await tickets.platform_incident(ctx.conn, step.summary)
        return

    step, verdict, analysis = await reporting.check(ctx, device)
    await _step(ctx, report, step)
    decision = verdicts.Decision(verdict, step.summary) if verdict is not None else None
    if decision is None:  # silent: the SMS ping decides, then the data again if it came back
        step, outcome = await sms_ping.check(ctx, device)
        await _step(ctx, report, step)
        decision = verdicts.after_ping(outcome, analysis.silence_s, ctx.settings.unreachable_after_s)
        if decision.reanalyse:
            again = await reporting.analyse_device(ctx, await load_device(ctx.conn, device.id))
            by_data = reporting.data_verdict(again, device)
            if by_data is not None:
                decision = verdicts.Decision(by_data[2], f"{decision.why}, but {by_data[1]}")
    report.verdict, report.why = decision.verdict, decision.why
    if decision.verdict in TICKET_VERDICTS and decision.ticket:
        summary = "; ".join(f"{s.name}: {s.summary}" for s in report.steps)
        report.ticket = await tickets.for_verdict(ctx.conn, device, decision.verdict, summary, report.run_id,
                                                    ctx.settings)
        action = Step("action")
        notified = await _notify(ctx, device, decision.verdict, report.ticket)
        action.done("ok", Text.concat([
            Text("checklist:action.ticket_existing" if report.ticket.get("reused") else "checklist:action.ticket",
                 number=report.ticket["number"]),
            Text("checklist:action.notice_queued", msisdn=device.contact_msisdn) if notified
            else Text("checklist:action.no_notice")]),
                    ticket=report.ticket["number"], instruction=report.ticket.get("instruction"),
                    centers=report.ticket.get("centers"), dead_on_arrival=report.ticket["dead_on_arrival"],
                    recurrence_of=report.ticket["recurrence_of"], notified=notified)
        await _step(ctx, report, action)


def notice_text(verdict: Verdict, vehicle: str, number: str, center: Mapping[str, Any] | str | None,
                lang: str = "es", *, deadline: datetime | None = None, tz: str = tickets.DEFAULT_TIMEZONE) -> str:
    """The SMS the account's contact gets for a new case, in ``lang``, in one or two segments: the
    nearest center (name, address, hours) and the deadline to bring the vehicle in, as far as they fit."""
    return tickets.notice(verdict.value, lang, vehicle=vehicle, number=number, center=center, deadline=deadline,
                          tz=ZoneInfo(tz))


async def _notify(ctx: Context, device: Device, verdict: Verdict, ticket: dict[str, Any]) -> bool:
    """Tells the account's contact, by SMS, the case number and what happens next. The notice is
    queued in the outbox: the worker holding the SMSC bind sends it (from any process), and its
    receipt is recorded like any other SMS."""
    if ticket.get("reused") or not device.contact_msisdn or verdict is Verdict.INCONCLUSIVE:
        return False  # an inconclusive case is a call from support, not an SMS
    centers = ticket.get("centers") or []
    text = notice_text(verdict, device.plate or device.identifier, str(ticket["number"]),
                       centers[0] if centers else None, ctx.settings.language,
                       deadline=ticket.get("bring_in_due_at"), tz=ctx.settings.customer_timezone)
    await tickets.send_notice(ctx.conn, int(ticket["id"]), device.contact_msisdn, text, "customer notified")
    return True


def explain(report: Report, lang: str = "en") -> str:
    """The run as a support agent reads it (``avl diagnose``), in ``lang``."""
    via = report.sms_via or t("checklist:explain.nothing", lang)
    lines = [t("checklist:explain.device", lang, identifier=report.identifier, run=report.run_id, via=via)]
    for s in report.steps:
        lines.append(f"  [{s.status:>7}] {s.name:<9} {s.render(lang)}")
    if report.verdict:
        explanation = EXPLANATION[report.verdict] if language(lang) == "en" else \
            t(f"console:verdict_explain.{report.verdict.value}", lang)
        lines.append(t("checklist:explain.verdict", lang, verdict=report.verdict.value, explanation=explanation))
        if report.why:
            lines.append("  " + t("checklist:explain.because", lang, why=report.why))
    if report.ticket:
        lines.append(t("checklist:explain.ticket", lang, number=report.ticket["number"], type=report.ticket["type"]))
        if report.ticket.get("instruction"):
            lines.append(f"  {report.ticket['instruction']}")
    return "\n".join(lines)
