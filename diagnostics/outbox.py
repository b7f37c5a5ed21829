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

from diagnostics import metrics
from diagnostics.context import RateLimiter
from diagnostics.smpp import Inbound, SmppError, SmppLink

log = logging.getLogger("avl.diagnostics.sms")


async def record_inbound(pool: AsyncConnectionPool, msg: Inbound) -> None:
    async with pool.connection() as conn:
        if msg.receipt_for:
            for _ in range(5):  # the receipt can overtake the sender's own bookkeeping of the message id
                cur = await conn.execute(
                    "UPDATE sms_messages SET status = %s, delivered_at = CASE WHEN %s = 'DELIVRD' THEN now() END"
                    " WHERE smpp_message_id = %s AND direction = 'mt'",
                    (msg.receipt_status or "UNKNOWN", msg.receipt_status, msg.receipt_for))
                if cur.rowcount:
                    return
                await asyncio.sleep(0.2)
            log.info("receipt for unknown message %s (%s)", msg.receipt_for, msg.receipt_status)
            return
        await conn.execute(
            "INSERT INTO sms_messages (direction, msisdn, device_id, body, status, purpose)"
            " VALUES ('mo', %s, (SELECT id FROM devices WHERE msisdn = %s), %s, 'received', 'reply')",
            (msg.source.lstrip("+"), msg.source.lstrip("+"), msg.text))


async def send_queued(pool: AsyncConnectionPool, smpp: SmppLink, limiter: RateLimiter, batch: int = 20) -> int:
    """Sends what is queued (oldest first); returns how many were sent."""
    if not smpp.bound:
        return 0
    async with pool.connection() as conn:
        cur = await conn.execute(
            "UPDATE sms_messages SET status = 'sending' WHERE id IN (SELECT id FROM sms_messages WHERE status = 'queued'"
            " AND direction = 'mt' ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING id, msisdn, body, purpose",
            (batch,))
        claimed = await cur.fetchall()
        sent = 0
        for sms_id, msisdn, body, purpose in claimed:
            if not await limiter.acquire(30.0):
                await conn.execute("UPDATE sms_messages SET status = 'queued' WHERE id = %s", (sms_id,))
                continue
            try:
                message_id = await smpp.send(msisdn, body)
            except (SmppError, TimeoutError) as exc:
                await conn.execute("UPDATE sms_messages SET status = 'failed', error = %s WHERE id = %s",
                                   (str(exc), sms_id))
                continue
            await conn.execute("UPDATE sms_messages SET status = 'submitted', submitted_at = now(), smpp_message_id = %s"
                               " WHERE id = %s", (message_id, sms_id))
            sent += 1
            metrics.SMS_SENT.labels(purpose).inc()
        return sent
