"""Step 4, for a silent terminal: send its family's status query by SMS and watch what
happens within ``sms_wait_s``: the delivery receipt, an SMS answer from the terminal's number,
a fresh data report. At most one ping per device per ``sms_ping_period_s`` (a repeated check
reads the earlier ping's outcome); a global SMS rate limit.

The ping goes out through this process's own SMPP bind (the diagnostics worker) or, from
another process, through the worker's outbox (``sms_messages`` rows it sends and whose
receipts and answers it records). Either way the outcome is read from ``sms_messages``.

What the outcome means is decided in ``diagnostics.verdicts``; this module only observes.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from diagnostics import metrics
from diagnostics.commands import status_command
from diagnostics.context import Context, Device
from diagnostics.model import Step, Text
from diagnostics.smpp import Inbound, SmppError

FAILED_RECEIPTS = {"UNDELIV", "EXPIRED", "REJECTD", "DELETED", "UNKNOWN"}
PENDING = ("queued", "sending", "submitted", "ENROUTE", "ACCEPTD")
# After an answer, how long to keep waiting for the data report it may bring.
AFTER_REPLY_WAIT_S = 20.0
# The ping's validity period leaves this much of the wait for the SMSC's EXPIRED receipt.
RECEIPT_MARGIN_S = 5.0
_PAIR = re.compile(r"([A-Za-z][A-Za-z0-9 _.-]{0,30}?)\s*[:=]\s*([^;,\n]+?)\s*(?=[;,\n]|\s+[A-Za-z][A-Za-z0-9 _.-]{0,30}?\s*[:=]|$)")


def parse_status(text: str) -> dict[str, str]:
    """Known status replies are `key: value` lists (Teltonika `getstatus`, Concox `STATUS#`, ...)."""
    return {k.strip(): v.strip() for k, v in _PAIR.findall(text)}


@dataclass
class PingOutcome:
    """What was observed; ``problem`` says why the SMS test could not be done or finished."""

    sent: bool = False
    made_at: datetime | None = None  # when the ping was queued or handed to the link
    sent_at: datetime | None = None
    delivered_at: datetime | None = None  # the DELIVRD receipt, or the first answer (which proves delivery)
    receipt: str | None = None
    replies: list[str] = field(default_factory=list)
    first_reply_at: datetime | None = None
    report_at: datetime | None = None  # newest arrival of any frame after the ping was sent
    problem: str | None = None  # a Text where this module makes it
    # The problem is lasting (no number, no SMS commands, no SMSC): a person must step in.
    lasting: bool = False
    # The SMSC refused the destination itself (ESME_RINVDSTADR): a matter of the line.
    refused_destination: bool = False

    @property
    def fresh_after_delivery(self) -> bool:
        return self.report_at is not None and self.delivered_at is not None and self.report_at > self.delivered_at

    @property
    def reported_since_sent(self) -> bool:
        """A frame arrived after the ping was made (whether or not in answer to it)."""
        return self.report_at is not None and self.made_at is not None and self.report_at > self.made_at


async def _newest_arrival(ctx: Context, device_id: int) -> datetime | None:
    cur = await ctx.conn.execute("SELECT last_received_at FROM latest_positions WHERE device_id = %s", (device_id,))
    row = await cur.fetchone()
    return row[0] if row else None


async def observe(ctx: Context, device: Device, sms_id: int, outcome: PingOutcome) -> None:
    """Reads the ping's row, the terminal's answers since it was sent, and its newest arrival."""
    cur = await ctx.conn.execute("SELECT status, submitted_at, delivered_at, error, created_at FROM sms_messages"
                                 " WHERE id = %s", (sms_id,))
    row = await cur.fetchone()
    created_at = datetime.now(UTC)
    if row is not None:
        status, submitted_at, delivered_at, error, created_at = row
        outcome.made_at = created_at
        if status == "failed":
            outcome.problem = Text("checklist:sms.refused", error=error or "")
            outcome.refused_destination = bool(error and "RINVDSTADR" in error)
        elif status not in PENDING:
            outcome.receipt = status
        if submitted_at is not None:
            outcome.sent, outcome.sent_at = True, outcome.sent_at or submitted_at
        if delivered_at is not None:
            outcome.delivered_at = delivered_at
    assert device.msisdn is not None
    # Answers count from when the ping was made: one can arrive before its submit_sm_resp is recorded.
    since = created_at
    cur = await ctx.conn.execute("SELECT body, created_at FROM sms_messages WHERE direction = 'mo' AND msisdn = %s"
                                 " AND created_at >= %s ORDER BY id", (device.msisdn, since))
    answers = await cur.fetchall()
    outcome.replies = [r[0] for r in answers]
    if answers:
        outcome.first_reply_at = answers[0][1]
        if outcome.delivered_at is None or answers[0][1] < outcome.delivered_at:
            outcome.delivered_at = answers[0][1]
    # Any frame since the ping was made (its submit_sm_resp, and so sent_at, can be recorded after the
    # terminal got the SMS and reported: sent_at is no boundary).
    newest = await _newest_arrival(ctx, device.id)
    outcome.report_at = newest if newest is not None and newest > created_at else None


async def _recent_ping(ctx: Context, device: Device) -> int | None:
    if ctx.settings.sms_ping_period_s <= 0:
        return None
    # Only a ping of this silence: one sent before the device last reported told about another.
    cur = await ctx.conn.execute(
        "SELECT id FROM sms_messages WHERE device_id = %s AND direction = 'mt' AND purpose = 'ping'"
        " AND status <> 'failed' AND created_at > now() - make_interval(secs => %s)"
        " AND (%s::timestamptz IS NULL OR created_at > %s) ORDER BY created_at DESC LIMIT 1",
        (device.id, ctx.settings.sms_ping_period_s, device.last_received_at, device.last_received_at))
    row = await cur.fetchone()
    return None if row is None else int(row[0])


def _settled(outcome: PingOutcome) -> bool:
    """Nothing more to wait for: a problem, a fresh report, a failed receipt, or an answer long enough
    ago that the data report it may bring would have come."""
    if outcome.problem or outcome.fresh_after_delivery:
        return True
    if outcome.receipt in FAILED_RECEIPTS:
        return True
    return outcome.first_reply_at is not None and \
        (datetime.now(UTC) - outcome.first_reply_at).total_seconds() >= AFTER_REPLY_WAIT_S


async def check(ctx: Context, device: Device) -> tuple[Step, PingOutcome]:
    step = Step("sms_ping")
    command = status_command(device.protocol, device.identifier, device.options)
    evidence: dict[str, Any] = {"msisdn": device.msisdn, "command": command, "via": ctx.sms_via}
    outcome = PingOutcome()
    if not device.msisdn or command is None:
        outcome.problem = Text("checklist:sms.no_msisdn") if not device.msisdn else \
            Text("checklist:sms.no_commands", protocol=device.protocol)
        outcome.lasting = True
        return step.done("skipped", outcome.problem, **evidence), outcome

    earlier = await _recent_ping(ctx, device)
    if earlier is not None:
        # Its outcome may still be coming (another check sent it moments ago): watch it to its end.
        await observe(ctx, device, earlier, outcome)
        started = time.monotonic()
        made = outcome.made_at or datetime.now(UTC)
        await _watch(ctx, device, earlier, outcome, started + ctx.wait_s - (datetime.now(UTC) - made).total_seconds())
        _conclude(ctx, outcome)
        evidence.update(_evidence(outcome), reused_ping=True, sms_id=earlier, waited_s=round(time.monotonic() - started, 1))
        sent = f"{outcome.sent_at:%H:%M:%S}" if outcome.sent_at else "earlier"
        return step.done("ok" if outcome.reported_since_sent else "fail", Text.concat([
            Text("checklist:sms.reused", time=sent, period=round(ctx.settings.sms_ping_period_s)), _summary(outcome)]),
            **evidence), outcome

    if ctx.sms_via == "off":
        outcome.problem, outcome.lasting = Text("checklist:sms.off", why=ctx.sms_note), True
        return step.done("skipped", outcome.problem, **evidence), outcome
    if ctx.sms_via == "bind" and (ctx.smpp is None or not ctx.smpp.bound):
        why = ctx.smpp.last_error if ctx.smpp is not None and ctx.smpp.last_error else "connecting"
        outcome.problem = Text("checklist:sms.link_down", error=why)
        evidence["smsc"] = why
        return step.done("skipped", outcome.problem, **evidence), outcome
    if not await ctx.sms_limiter.acquire(min(ctx.wait_s, 30.0)):
        outcome.problem = Text("checklist:sms.rate_limited")
        return step.done("skipped", outcome.problem, **evidence), outcome

    validity_s = max(1, int(ctx.wait_s - RECEIPT_MARGIN_S)) if ctx.wait_s > 2 * RECEIPT_MARGIN_S else None
    status = "sending" if ctx.sms_via == "bind" else "queued"
    cur = await ctx.conn.execute(
        "INSERT INTO sms_messages (direction, msisdn, device_id, body, status, purpose, validity_s)"
        " VALUES ('mt', %s, %s, %s, %s, 'ping', %s) RETURNING id", (device.msisdn, device.id, command, status, validity_s))
    row = await cur.fetchone()
    assert row is not None
    sms_id = int(row[0])
    evidence["sms_id"] = sms_id
    started = time.monotonic()
    inbound: asyncio.Queue[Inbound] = asyncio.Queue()
    unsubscribe = ctx.smpp.subscribe(inbound.put_nowait) if ctx.smpp is not None else (lambda: None)
    try:
        if ctx.sms_via == "bind":
            assert ctx.smpp is not None
            try:
                message_id = await ctx.smpp.send(device.msisdn, command, validity_s=validity_s)
            except (SmppError, TimeoutError) as exc:
                error = str(exc) or type(exc).__name__
                await ctx.conn.execute("UPDATE sms_messages SET status = 'failed', error = %s WHERE id = %s",
                                       (error, sms_id))
                outcome.problem = Text("checklist:sms.refused", error=error)
                outcome.refused_destination = "RINVDSTADR" in error or getattr(exc, "status", None) == 0x0B
                evidence.update(_evidence(outcome), waited_s=round(time.monotonic() - started, 1))
                return step.done("fail", outcome.problem, **evidence), outcome
            metrics.SMS_SENT.labels("ping").inc()
            await ctx.conn.execute("UPDATE sms_messages SET status = 'submitted', submitted_at = now(),"
                                   " smpp_message_id = %s WHERE id = %s AND status = 'sending'", (message_id, sms_id))
        await _watch(ctx, device, sms_id, outcome, started + ctx.wait_s, inbound)
    finally:
        unsubscribe()
    _conclude(ctx, outcome)
    evidence.update(_evidence(outcome), waited_s=round(time.monotonic() - started, 1))
    return step.done("ok" if outcome.reported_since_sent else "fail", _summary(outcome), **evidence), outcome


async def _watch(ctx: Context, device: Device, sms_id: int, outcome: PingOutcome, deadline: float,
                 inbound: asyncio.Queue[Inbound] | None = None) -> None:
    """Observes the ping until its outcome is settled or ``deadline`` (monotonic) passes."""
    while True:
        await observe(ctx, device, sms_id, outcome)
        if _settled(outcome) or time.monotonic() >= deadline:
            return
        # Receipts and answers are recorded in sms_messages by the inbox of whichever worker's bind
        # the SMSC delivered them to; our own link's traffic only wakes us up sooner.
        timeout = min(0.5, max(0.01, deadline - time.monotonic()))
        if inbound is None:
            await asyncio.sleep(timeout)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(inbound.get(), timeout=timeout)


def _conclude(ctx: Context, outcome: PingOutcome) -> None:
    """Names what is missing once the wait is over."""
    if outcome.problem is not None:
        return
    if not outcome.sent:
        outcome.problem = Text("checklist:sms.not_sent_outbox" if ctx.sms_via == "outbox" else "checklist:sms.not_submitted")
    elif outcome.receipt is None and not outcome.replies and not outcome.reported_since_sent:
        outcome.problem = Text("checklist:sms.no_receipt", seconds=round(ctx.wait_s))


def _evidence(outcome: PingOutcome) -> dict[str, Any]:
    def iso(t: datetime | None) -> str | None:
        return t.isoformat() if t else None

    return {"sent_at": iso(outcome.sent_at), "receipt": outcome.receipt, "delivered_at": iso(outcome.delivered_at),
            "replies": outcome.replies, "reply_fields": parse_status(outcome.replies[0]) if outcome.replies else {},
            "fresh_report_at": iso(outcome.report_at) if outcome.fresh_after_delivery else None,
            "report_since_sent_at": iso(outcome.report_at), "problem": outcome.problem}


def _summary(outcome: PingOutcome) -> Text:
    if outcome.fresh_after_delivery:
        return Text("checklist:sms.fresh")
    if outcome.reported_since_sent:
        return Text("checklist:sms.before_delivery")
    parts: list[str] = []
    if outcome.replies:
        parts.append(Text("checklist:sms.answered", reply=repr(outcome.replies[0][:60])))
    if outcome.receipt:
        parts.append(Text("checklist:sms.receipt", receipt=outcome.receipt))
    if outcome.problem:
        parts.append(outcome.problem)
    return Text.concat(parts) if parts else Text("checklist:sms.nothing")
