"""The SMS outbox and inbox, kept by the worker that holds the SMPP bind.

Outbox: other services (the API's "locate now", certification) queue MT messages as
``sms_messages`` rows with status 'queued'; the worker claims them, sends them within the
global rate limit and records the SMSC's message id. Inbox: every delivery receipt updates
its MT row; every message from a handset is recorded (direction 'mo', purpose 'reply',
device found by its MSISDN), so the checklist, certification and the support desk read
the same history.
"""

from __future__ import annotations

import asyncio
import logging

from psycopg_pool import AsyncConnectionPool

from avl import phone
from diagnostics import metrics
from diagnostics.context import RateLimiter
from diagnostics.smpp import Inbound, SmppError, SmppLink

log = logging.getLogger("avl.diagnostics.sms")


async def record_inbound(pool: AsyncConnectionPool, msg: Inbound, default_country: str = phone.DEFAULT_COUNTRY) -> None:
    async with pool.connection() as conn:
        if msg.receipt_for:
            # The receipt can overtake the sender's own bookkeeping of the message id (it is written
            # once submit_sm_resp is back): wait for it a while, then keep the receipt anyway.
            delay = 0.05
            for _ in range(40):
                cur = await conn.execute(
                    "UPDATE sms_messages SET status = %s, delivered_at = CASE WHEN %s = 'DELIVRD' THEN %s END"
                    " WHERE smpp_message_id = %s AND direction = 'mt'",
                    (msg.receipt_status or "UNKNOWN", msg.receipt_status, msg.received_at, msg.receipt_for))
                if cur.rowcount:
                    return
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 1.5)
            # A later part of a multi-part message, or a message sent before this database: nothing to update.
            log.info("receipt for a message not in the outbox: %s (%s)", msg.receipt_for, msg.receipt_status)
            return
        try:
            source = phone.normalise(msg.source, default_country)
        except ValueError:
            source = msg.source  # an alphanumeric sender: kept as it came
        await conn.execute(
            "INSERT INTO sms_messages (direction, msisdn, device_id, body, status, purpose, created_at)"
            " VALUES ('mo', %s, (SELECT id FROM devices WHERE msisdn = %s), %s, 'received', 'reply', %s)",
            (source, source, msg.text, msg.received_at))


async def send_queued(pool: AsyncConnectionPool, smpp: SmppLink, limiter: RateLimiter, batch: int = 20) -> int:
    """Sends what is queued (oldest first); returns how many were sent."""
    if not smpp.bound:
        return 0
    async with pool.connection() as conn:
        cur = await conn.execute(
            "UPDATE sms_messages SET status = 'sending' WHERE id IN (SELECT id FROM sms_messages WHERE status = 'queued'"
            " AND direction = 'mt' ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED)"
            " RETURNING id, msisdn, body, purpose, validity_s",
            (batch,))
        claimed = sorted(await cur.fetchall())
        sent = 0
        for sms_id, msisdn, body, purpose, validity_s in claimed:
            if not await limiter.acquire(30.0):
                await conn.execute("UPDATE sms_messages SET status = 'queued' WHERE id = %s", (sms_id,))
                continue
            try:
                message_id = await smpp.send(msisdn, body, validity_s=validity_s)
            except (SmppError, TimeoutError) as exc:
                if not smpp.bound:  # the link went down, not this message's fault: it waits for the next bind
                    await conn.execute("UPDATE sms_messages SET status = 'queued' WHERE id = %s", (sms_id,))
                    continue
                await conn.execute("UPDATE sms_messages SET status = 'failed', error = %s WHERE id = %s",
                                   (str(exc) or type(exc).__name__, sms_id))
                continue
            await conn.execute("UPDATE sms_messages SET status = 'submitted', submitted_at = now(), smpp_message_id = %s"
                               " WHERE id = %s", (message_id, sms_id))
            sent += 1
            metrics.SMS_SENT.labels(purpose).inc()
        return sent
