"""Step 4: send the terminal its protocol family's status command by SMS and watch what
happens: the delivery receipt, an SMS reply from the terminal's number, a fresh data
report. Bounded by ``sms_wait_s``; at most one ping per device per ``sms_ping_period_s``
(a repeated check reads the earlier ping's outcome); a global SMS rate limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from datetime import UTC, datetime
from typing import Any

from diagnostics import metrics
from diagnostics.context import Context, Device
from diagnostics.model import Step, Verdict
from diagnostics.smpp import Inbound, SmppError

# The status/position command each protocol family understands over SMS.
COMMANDS = {
    "teltonika": "  getstatus",
    "gt06": "STATUS#",
    "gl200": "AT+GTRTO=gl200,1,,,,,,FFFF$",
    "calamp": "!R0",
    "h02": "*HQ,000000,S20#",
    "tk103": "status123456",
    "meitrack": "0000,A00",
    "suntech": "ST300CMD;{identifier};02;StatusReq",
    "enfora": "AT$GPSRD=10",
}
FAILED_RECEIPTS = {"UNDELIV", "EXPIRED", "REJECTD", "DELETED", "UNKNOWN"}
AFTER_REPLY_WAIT_S = 20.0
_PAIR = re.compile(r"([A-Za-z][A-Za-z0-9 _.-]{0,30}?)\s*[:=]\s*([^;,\n]+?)\s*(?=[;,\n]|\s+[A-Za-z][A-Za-z0-9 _.-]{0,30}?\s*[:=]|$)")


def parse_status(text: str) -> dict[str, str]:
    """Known status replies are `key: value` lists (Teltonika `getstatus`, Concox `STATUS#`, ...)."""
    return {k.strip(): v.strip() for k, v in _PAIR.findall(text)}


def command_for(device: Device) -> str | None:
    template = COMMANDS.get(device.protocol)
    return template.format(identifier=device.identifier) if template else None


async def _fresh_report(ctx: Context, device_id: int, since: datetime) -> datetime | None:
    cur = await ctx.conn.execute(
        "SELECT last_received_at FROM latest_positions WHERE device_id = %s AND last_received_at > %s",
        (device_id, since))
    row = await cur.fetchone()
    return row[0] if row else None


async def _outcome(ctx: Context, sms_id: int, msisdn: str, since: datetime) -> tuple[str | None, list[str]]:
    """The ping's receipt status (None while only submitted) and the terminal's replies since."""
    cur = await ctx.conn.execute("SELECT status FROM sms_messages WHERE id = %s", (sms_id,))
    row = await cur.fetchone()
    status = row[0] if row and row[0] not in ("sending", "submitted", "queued") else None
    cur = await ctx.conn.execute("SELECT body FROM sms_messages WHERE direction = 'mo' AND msisdn = %s"
                                 " AND created_at >= %s ORDER BY id", (msisdn.lstrip("+"), since))
    return status, [r[0] for r in await cur.fetchall()]


async def _recent_ping(ctx: Context, device: Device) -> dict[str, Any] | None:
    if ctx.settings.sms_ping_period_s <= 0:
        return None
    cur = await ctx.conn.execute(
        "SELECT id, created_at, status, smpp_message_id FROM sms_messages WHERE device_id = %s AND direction = 'mt'"
        " AND created_at > now() - make_interval(secs => %s) ORDER BY created_at DESC LIMIT 1",
        (device.id, ctx.settings.sms_ping_period_s))
    row = await cur.fetchone()
    if row is None:
        return None
    replies = await ctx.conn.execute(
        "SELECT body FROM sms_messages WHERE direction = 'mo' AND msisdn = %s AND created_at >= %s ORDER BY created_at",
        (device.msisdn, row[1]))
    return {"sms_id": row[0], "sent_at": row[1], "status": row[2], "message_id": row[3],
            "replies": [r[0] for r in await replies.fetchall()]}


def _verdict(fresh: datetime | None, replies: list[str], receipt: str | None) -> tuple[Verdict, str]:
    if fresh is not None:
        return Verdict.RECOVERED_AFTER_PING, "a fresh report arrived after the ping"
    if replies:
        return Verdict.DATA_CHANNEL_FAULT, "the terminal answered by SMS but sent no data"
    if receipt in FAILED_RECEIPTS:
        return Verdict.UNREACHABLE, f"the SMS was not delivered ({receipt})"
    if receipt == "DELIVRD":
        return Verdict.UNREACHABLE, "the SMS was delivered but the terminal neither answered nor reported"
    return Verdict.UNREACHABLE, "no delivery receipt, no answer, no report"


async def check(ctx: Context, device: Device) -> tuple[Step, Verdict]:
    step = Step("sms_ping")
    command = command_for(device)
    evidence: dict[str, Any] = {"msisdn": device.msisdn, "command": command}
    if not device.msisdn or command is None:
        why = "the terminal has no MSISDN" if not device.msisdn else f"{device.protocol} terminals take no SMS commands"
        return step.done("skipped", f"no SMS ping: {why}", **evidence), Verdict.UNREACHABLE

    earlier = await _recent_ping(ctx, device)
    if earlier is not None:
        since = await _fresh_report(ctx, device.id, earlier["sent_at"])
        verdict, why = _verdict(since, earlier["replies"], earlier["status"])
        evidence.update(reused_ping=True, sent_at=earlier["sent_at"].isoformat(), receipt=earlier["status"],
                        replies=earlier["replies"], fresh_report_at=since.isoformat() if since else None)
        return step.done("ok" if verdict is Verdict.RECOVERED_AFTER_PING else "fail",
                         f"pinged at {earlier['sent_at']:%H:%M:%S} (one ping per period): {why}", **evidence), verdict

    if ctx.smpp is None:
        return step.done("skipped", "no SMS ping: no SMSC configured (AVL_SMPP_HOST)", **evidence), Verdict.UNREACHABLE
    if not await ctx.sms_limiter.acquire(ctx.wait_s):
        return step.done("skipped", "no SMS ping: the global SMS rate limit is exhausted", **evidence), Verdict.UNREACHABLE

    inbound: asyncio.Queue[Inbound] = asyncio.Queue()
    unsubscribe = ctx.smpp.subscribe(inbound.put_nowait)
    sent_at = datetime.now(UTC)
    cur = await ctx.conn.execute(
        "INSERT INTO sms_messages (direction, msisdn, device_id, body, status, purpose)"
        " VALUES ('mt', %s, %s, %s, 'sending', 'ping') RETURNING id", (device.msisdn, device.id, command))
    row = await cur.fetchone()
    assert row is not None
    sms_id = row[0]
    replies: list[str] = []
    receipt: str | None = None
    fresh: datetime | None = None
    try:
        try:
            message_id = await ctx.smpp.send(device.msisdn, command)
        except (SmppError, TimeoutError) as exc:
            await ctx.conn.execute("UPDATE sms_messages SET status = 'failed', error = %s WHERE id = %s", (str(exc), sms_id))
            evidence["error"] = str(exc)
            return step.done("fail", f"SMS not accepted by the SMSC: {exc}", **evidence), Verdict.UNREACHABLE
        metrics.SMS_SENT.labels("ping").inc()
        await ctx.conn.execute("UPDATE sms_messages SET status = 'submitted', submitted_at = now(), smpp_message_id = %s"
                               " WHERE id = %s", (message_id, sms_id))
        started = time.monotonic()
        deadline = started + ctx.wait_s
        replied_at: float | None = None
        while time.monotonic() < deadline:
            # Receipts and replies are recorded in sms_messages by the inbox of whichever worker's
            # bind the SMSC delivered them to; our own link's traffic only wakes us up sooner.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(inbound.get(), timeout=min(0.5, max(0.01, deadline - time.monotonic())))
            receipt, replies = await _outcome(ctx, sms_id, device.msisdn, sent_at)
            if replies and replied_at is None:
                replied_at = time.monotonic()
                deadline = min(deadline, replied_at + AFTER_REPLY_WAIT_S)
            fresh = await _fresh_report(ctx, device.id, sent_at)
            if fresh is not None or receipt in FAILED_RECEIPTS:
                break
    finally:
        unsubscribe()
    verdict, why = _verdict(fresh, replies, receipt)
    evidence.update(sent_at=sent_at.isoformat(), message_id=message_id, receipt=receipt, replies=replies,
                    reply_fields=parse_status(replies[0]) if replies else {},
                    fresh_report_at=fresh.isoformat() if fresh else None,
                    waited_s=round(time.monotonic() - started, 1))
    return step.done("ok" if verdict is Verdict.RECOVERED_AFTER_PING else "fail", why, **evidence), verdict
