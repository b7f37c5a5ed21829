"""The diagnostics worker (`avl diagnostics`): sweeps the fleet every few minutes and runs
the checklist on silent devices with bounded concurrency; runs the checks people ask for
(queued ``diagnostic_runs``). Exactly one worker sweeps at a time (a PostgreSQL advisory
lock); queued checks may run on any worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from avl.config import Settings
from avl.db import first_line
from avl.observability import serve_metrics
from diagnostics import checklist, metrics, outbox, tickets
from diagnostics.context import Context, DiagnoseError, RateLimiter
from diagnostics.smpp import SmppLink
from diagnostics.sweep import Sweeper, quality_candidates

log = logging.getLogger("avl.diagnostics")

SWEEPER_LOCK = 7_412_200
DEADLINES_EVERY_S = 5.0  # bring-in reminders and the SLA gauges


class Worker:
    def __init__(self, settings: Settings, database_url: str, mqtt_url: str | None = None) -> None:
        self.settings = settings
        self.database_url = database_url
        self.mqtt_url = mqtt_url
        self.smpp: SmppLink | None = None
        self.limiter = RateLimiter(settings.sms_rate_per_minute)
        self.pool = AsyncConnectionPool(database_url, min_size=1, max_size=settings.diagnostics_concurrency + 2,
                                        open=False, kwargs={"autocommit": True})
        self.slots = asyncio.Semaphore(settings.diagnostics_concurrency)
        self.in_progress: set[int] = set()
        self.sweeping = False
        self.sweeper = Sweeper()  # the fleet's expected cadences, kept between sweeps
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self.pool.open()
        s = self.settings
        if s.smpp_host:
            self.smpp = SmppLink.from_settings(s)
            self.smpp.subscribe(lambda msg: self._spawn(outbox.record_inbound(self.pool, msg, s.phone_default_country)))
            if not await self.smpp.start():
                log.warning("SMSC %s:%s not bound yet (%s); SMS pings wait for it", s.smpp_host, s.smpp_port,
                            self.smpp.last_error or "connecting")

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.smpp is not None:
            await self.smpp.close()
        await self.pool.close()

    @asynccontextmanager
    async def context(self) -> AsyncIterator[Context]:
        async with self.pool.connection() as conn:
            yield Context(self.settings, self.database_url, conn, smpp=self.smpp, mqtt_url=self.mqtt_url,
                          sms_limiter=self.limiter)

    async def check(self, device: int | str, *, requested_by: str, run_id: int | None = None) -> None:
        async with self.slots, self.context() as ctx:
            try:
                await checklist.run(ctx, device, requested_by=requested_by, run_id=run_id)
            except DiagnoseError as exc:
                log.warning("checklist for %s: %s", device, exc)
            except Exception:
                log.exception("checklist for %s failed", device)

    async def sweep_once(self) -> None:
        s = self.settings
        async with self.context() as ctx:
            result = await self.sweeper.sweep(ctx.conn, silent_factor=s.silent_after_intervals,
                                              storm_share=s.storm_share, storm_min=s.storm_min_devices,
                                              parked_interval_s=s.parked_interval_s)
            log.info("sweep: %s devices, %s active, %s silent (%s newly) in %.3f s", result.devices, result.active,
                     len(result.silent), result.newly_silent, result.seconds)
            metrics.SWEEP_SECONDS.observe(result.seconds)
            metrics.SILENT_DEVICES.set(len(result.silent))
            up_s = await self._ingest_up_s(ctx)
            # After ingest (re)starts, terminals take a while to reconnect (their backoff reaches a minute
            # or more): silence found meanwhile says where ingest was, not where the devices are.
            if up_s is not None and up_s < s.sweep_grace_s and len(result.silent):
                log.info("sweep: ingest (re)started %.0f s ago; %s silent devices left until they could reconnect",
                         up_s, len(result.silent))
                result.silent, result.storm = result.silent[:0], False
            if result.storm:
                summary = (f"{result.newly_silent} of {result.active} active devices went silent together"
                           f" ({result.newly_silent / result.active:.0%}): platform or network incident")
                ticket = await tickets.platform_incident(ctx.conn, summary)
                log.warning("sweep: %s; incident %s, no device tickets", summary, ticket["number"])
                return
            # Not again while a check runs, a ticket is open for it, or a recent run looked at it (a short
            # silence found inconclusive is looked at again once it could be judged: unreachable_after_s).
            todo = await self._not_recently_checked(
                ctx, [int(x) for x in result.silent],
                max(min(s.sms_ping_period_s, s.unreachable_after_s), s.sweep_interval_s))
            # Devices that report, but whose latest report has no usable fix or a wrong supply voltage.
            quality = await quality_candidates(ctx.conn, fresh_s=max(s.sweep_interval_s, 600.0))
            quality = await self._not_recently_checked(ctx, [d for d in quality if d not in set(todo)],
                                                       s.quality_recheck_s)
            if quality:
                log.info("sweep: %s reporting devices with a suspect latest report", len(quality))
        for device_id in todo + quality:
            self.in_progress.add(device_id)
            self._spawn(self._swept(device_id))

    async def _ingest_up_s(self, ctx: Context) -> float | None:
        """Seconds since the youngest live ingest process started (None: none is alive)."""
        cur = await ctx.conn.execute(
            "SELECT extract(epoch FROM now() - max(started_at)) FROM platform_status WHERE component = 'ingest'"
            " AND updated_at > now() - interval '30 seconds'")
        row = await cur.fetchone()
        return None if row is None or row[0] is None else float(row[0])

    async def _not_recently_checked(self, ctx: Context, ids: list[int], within_s: float) -> list[int]:
        if not ids:
            return []
        cur = await ctx.conn.execute(
            "SELECT c.device_id FROM unnest(%s::bigint[]) AS c (device_id) WHERE NOT EXISTS (SELECT 1 FROM tickets t"
            " WHERE t.device_id = c.device_id AND t.state NOT IN ('resolved', 'closed')) AND NOT EXISTS"
            " (SELECT 1 FROM diagnostic_runs r WHERE r.device_id = c.device_id"
            " AND r.started_at > now() - make_interval(secs => %s))",
            (ids, within_s))
        return [int(r[0]) for r in await cur.fetchall() if int(r[0]) not in self.in_progress]

    async def _swept(self, device_id: int) -> None:
        try:
            await self.check(device_id, requested_by="sweep")
        finally:
            self.in_progress.discard(device_id)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def queued(self) -> None:
        """Checks asked for through the API: claim them and run them here."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE diagnostic_runs SET status = 'running', started_at = now() WHERE id IN (SELECT id FROM"
                " diagnostic_runs WHERE status = 'queued' ORDER BY id LIMIT 20 FOR UPDATE SKIP LOCKED)"
                " RETURNING id, device_id, requested_by")
            claimed = await cur.fetchall()
        for run_id, device_id, who in claimed:
            self._spawn(self.check(device_id, requested_by=who, run_id=run_id))

    async def run(self) -> None:
        lock_conn = await psycopg.AsyncConnection.connect(self.database_url, autocommit=True)
        try:
            next_sweep = next_beat = next_deadlines = 0.0
            loop = asyncio.get_running_loop()
            while True:
                if not self.sweeping:
                    cur = await lock_conn.execute("SELECT pg_try_advisory_lock(%s)", (SWEEPER_LOCK,))
                    row = await cur.fetchone()
                    self.sweeping = bool(row and row[0])
                    metrics.SWEEPER.set(1 if self.sweeping else 0)
                    if self.sweeping:
                        log.info("this worker is the fleet sweeper")
                if self.sweeping and loop.time() >= next_sweep:
                    next_sweep = loop.time() + self.settings.sweep_interval_s
                    try:
                        await self.sweep_once()
                    except psycopg.Error as exc:
                        log.warning("sweep failed: %s", first_line(exc))
                try:
                    await self.queued()
                    if self.smpp is not None:
                        await outbox.send_queued(self.pool, self.smpp, self.limiter)
                except psycopg.Error as exc:
                    log.warning("queued checks or SMS not read: %s", first_line(exc))
                if loop.time() >= next_beat:
                    next_beat = loop.time() + 5.0
                    await self._heartbeat(lock_conn)
                if loop.time() >= next_deadlines:
                    next_deadlines = loop.time() + DEADLINES_EVERY_S
                    await self.ticket_deadlines()
                await asyncio.sleep(1.0)
        finally:
            await lock_conn.close()

    async def ticket_deadlines(self) -> None:
        """The support desk's deadlines: the bring-in reminders due (each queued once, whichever
        worker gets there first) and the SLA gauges."""
        try:
            async with self.pool.connection() as conn:
                if await tickets.remind(conn, self.settings):
                    log.info("bring-in reminders queued")
                await tickets.measure(conn)
        except psycopg.Error as exc:
            log.warning("ticket deadlines not checked: %s", first_line(exc))

    async def _heartbeat(self, conn: psycopg.AsyncConnection) -> None:
        """Tells the platform view this worker is alive, whether it sweeps, and its SMSC bind."""
        details = {"sweeper": self.sweeping, "checks_running": len(self.in_progress),
                   "smsc": None if self.smpp is None else ("bound" if self.smpp.bound else "down")}
        try:
            await conn.execute(
                "INSERT INTO platform_status (component, instance, details) VALUES ('diagnostics', %s, %s)"
                " ON CONFLICT (component, instance) DO UPDATE SET updated_at = now(), details = EXCLUDED.details",
                (f"{socket.gethostname()}:{os.getpid()}", Jsonb(details)))
        except psycopg.Error as exc:
            log.debug("heartbeat not written: %s", first_line(exc))


async def run(settings: Settings, database_url: str, mqtt_url: str | None = None) -> None:
    serve_metrics(settings)
    worker = Worker(settings, database_url, mqtt_url)
    await worker.start()
    try:
        await worker.run()
    finally:
        await worker.close()
