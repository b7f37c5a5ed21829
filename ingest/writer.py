"""The batch writer: rows from every connection, COPY in batches, idempotent insert,
latest position advanced only forward, commit, THEN the waiting ACKs are released.

While the database is unreachable, batches are appended to the fsynced spool and
acknowledged from there; once it is back, the spool is replayed in order before any new
batch goes direct. When neither the database nor the spool can take a batch, its
submitters get ``NotDurable`` and devices get no ACK: they keep their data and resend.

Group commit: the writer takes everything queued while the previous batch was being
committed (up to ``batch_max_rows``), lingering at most ``batch_max_ms`` for a small
batch to fill, so batches grow with load and latency stays low when it is light.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TypeVar

import psycopg

from avl.db import first_line
from ingest import metrics
from ingest.pipeline import Batch
from ingest.spool import Spool, SpoolError, decode, encode

log = logging.getLogger("avl.ingest.writer")

POSITION_COLUMNS = ("device_id", "fix_time", "received_at", "valid", "latitude", "longitude", "speed_kmh", "course",
                    "altitude_m", "satellites", "hdop", "ignition", "power_mv", "battery_mv", "odometer_m", "alarm",
                    "flags", "protocol", "attributes", "raw")
# attributes arrive as JSON text (the pipeline serialises them once) and become jsonb in SQL_INSERT.
POSITION_TYPES = ("int8", "timestamptz", "timestamptz", "bool", "float8", "float8", "float4", "float4", "float4",
                  "int2", "float4", "bool", "int4", "int4", "int8", "text", "int4", "text", "text", "bytea")
_COLS = ", ".join(POSITION_COLUMNS)
_LATEST_COLS = [c for c in POSITION_COLUMNS if c not in ("protocol", "raw")]
_LATEST_SET = ", ".join(f"{c} = EXCLUDED.{c}" for c in _LATEST_COLS if c != "device_id")

_STAGED = ", ".join("attributes::text AS attributes" if c == "attributes" else c for c in POSITION_COLUMNS)
_FROM_STAGE = ", ".join("attributes::jsonb" if c == "attributes" else c for c in POSITION_COLUMNS)
SQL_STAGE = f"CREATE TEMP TABLE IF NOT EXISTS staging_positions AS SELECT {_STAGED} FROM positions WITH NO DATA"
SQL_INSERT = f"INSERT INTO positions ({_COLS}) SELECT {_FROM_STAGE} FROM staging_positions ON CONFLICT DO NOTHING"
SQL_LATEST = (
    f"INSERT INTO latest_positions ({', '.join(_LATEST_COLS)}, last_received_at)"
    f" SELECT DISTINCT ON (device_id) {', '.join('attributes::jsonb' if c == 'attributes' else c for c in _LATEST_COLS)},"
    " received_at FROM staging_positions"
    " ORDER BY device_id, fix_time DESC"
    f" ON CONFLICT (device_id) DO UPDATE SET {_LATEST_SET}"
    " WHERE EXCLUDED.fix_time > latest_positions.fix_time"
)
# Any arrival counts as "heard from", even a buffered report older than the latest fix.
SQL_HEARD = (
    "UPDATE latest_positions l SET last_received_at = s.received_at"
    " FROM (SELECT device_id, max(received_at) AS received_at FROM staging_positions GROUP BY device_id) s"
    " WHERE l.device_id = s.device_id AND l.last_received_at < s.received_at"
)
# A heartbeat or a status report without a fix shows the terminal is alive too.
SQL_HEARD_EVENTS = (
    "UPDATE latest_positions l SET last_received_at = e.received_at"
    " FROM unnest(%s::int8[], %s::timestamptz[]) AS e (device_id, received_at)"
    " WHERE l.device_id = e.device_id AND l.last_received_at < e.received_at"
)
SQL_EVENT = (
    "INSERT INTO device_events (device_id, time, received_at, kind, alarm, ignition, power_mv, battery_mv, attributes, raw)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s) ON CONFLICT DO NOTHING"
)
SQL_QUARANTINE = (
    "INSERT INTO positions_quarantine (device_id, fix_time, received_at, reason, latitude, longitude, record, raw)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, %s) ON CONFLICT DO NOTHING"
)
SQL_UNKNOWN = (
    "INSERT INTO unknown_devices AS u (identifier, protocol, source_address, first_seen, last_seen, count, last_raw)"
    " VALUES (%s, %s, %s, %s, %s, 1, %s)"
    " ON CONFLICT (identifier, protocol) DO UPDATE SET source_address = EXCLUDED.source_address,"
    " last_seen = greatest(u.last_seen, EXCLUDED.last_seen), count = u.count + 1, last_raw = EXCLUDED.last_raw"
)
NOTIFY_CHANNEL = "avl_positions"
T = TypeVar("T")


class NotDurable(Exception):
    """The rows could not be made durable: the device must not be acknowledged."""


@dataclass(slots=True)
class _Item:
    batch: Batch
    future: asyncio.Future[None]


@dataclass
class WriterStats:
    batches: int = 0
    rows: int = 0
    spooled_batches: int = 0
    replayed_batches: int = 0
    refused_batches: int = 0
    latencies: list[float] = field(default_factory=list)


class Writer:
    def __init__(self, database_url: str, spool: Spool, *, batch_max_rows: int = 5000, batch_max_ms: float = 10.0,
                 queue_max_rows: int = 50_000, retention_days: int = 400, retry_s: float = 1.0) -> None:
        self.database_url = database_url
        self.spool = spool
        self.batch_max_rows = batch_max_rows
        self.batch_max_s = batch_max_ms / 1000
        self.queue_max_rows = queue_max_rows
        self.retention_days = retention_days
        self.retry_s = retry_s
        self.stats = WriterStats()
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._queued_rows = 0
        self._room = asyncio.Condition()
        self._conn: psycopg.Connection | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="avl-writer-db")
        self._partitions: set[date] = set()
        self._next_attempt = 0.0
        self._replay_singly = False
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    # Submitting -----------------------------------------------------------------

    async def enqueue(self, batch: Batch) -> asyncio.Future[None]:
        """Queues ``batch`` (waiting for room: that is the backpressure that stops a
        connection's reads) and returns a future that completes when it is durable."""
        rows = max(1, len(batch))
        async with self._room:
            while self._queued_rows > 0 and self._queued_rows + rows > self.queue_max_rows:
                await self._room.wait()
            self._queued_rows += rows
        metrics.QUEUE_ROWS.set(self._queued_rows)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(batch, future))
        return future

    async def submit(self, batch: Batch) -> None:
        """Returns once ``batch`` is durable; raises NotDurable when it cannot be."""
        await (await self.enqueue(batch))

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def database_up(self) -> bool:
        return self._conn is not None and not self._conn.closed

    # Running --------------------------------------------------------------------

    async def start(self) -> None:
        metrics.SPOOL_BYTES.set(self.spool.pending_bytes)
        await self._connect(quiet=True)
        self._task = asyncio.create_task(self._run(), name="avl-writer")

    async def close(self) -> None:
        """Finishes what is queued, then stops."""
        self._closing = True
        if self._task is not None:
            await self._queue.put(_Item(Batch(), asyncio.get_running_loop().create_future()))
            await self._task
        if self._conn is not None:
            await self._db(_close_quietly, self._conn)
        self._executor.shutdown(wait=False)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self.spool.pending and self._queue.empty():
                try:
                    await self._replay(budget_s=0.2)
                except (SpoolError, OSError) as exc:  # the spool's disk: keep serving, retry later
                    log.error("writer: cannot read the spool for replay (%s); retrying", exc)
                    await asyncio.sleep(self.retry_s)
                    continue
                if self.spool.pending:
                    try:
                        item = await asyncio.wait_for(self._queue.get(), self.retry_s)
                    except TimeoutError:
                        continue
                else:
                    continue
            else:
                item = await self._queue.get()
            items = [item]
            rows = len(item.batch)
            deadline = loop.time() + self.batch_max_s
            while rows < self.batch_max_rows:
                try:
                    nxt = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0 or self._closing:
                        break
                    try:
                        nxt = await asyncio.wait_for(self._queue.get(), remaining)
                    except TimeoutError:
                        break
                items.append(nxt)
                rows += len(nxt.batch)
            try:
                await self._commit(items)
            except Exception as exc:  # the writer must outlive any one batch
                log.exception("writer: batch failed unexpectedly; not acknowledged")
                for i in items:
                    if not i.future.done():
                        i.future.set_exception(NotDurable(f"writer failure: {type(exc).__name__}"))
            async with self._room:
                self._queued_rows -= sum(max(1, len(i.batch)) for i in items)
                self._room.notify_all()
            metrics.QUEUE_ROWS.set(self._queued_rows)
            if self._closing and self._queue.empty():
                return

    async def _commit(self, items: list[_Item]) -> None:
        batch = Batch()
        for item in items:
            batch.extend(item.batch)
        started = time.perf_counter()
        error: str | None = None
        if len(batch) == 0:
            pass
        elif not self.spool.pending and await self._connect():
            try:
                await self._write(batch)
            except psycopg.OperationalError as exc:
                await self._lost(exc)
                error = self._to_spool(batch)
            except psycopg.Error as exc:
                # A row the database refuses (should not happen after the pipeline): isolate it.
                log.error("writer: batch refused (%s); retrying item by item", first_line(exc))
                await self._isolate(items)
                return
        else:
            error = self._to_spool(batch)
        elapsed = time.perf_counter() - started
        metrics.BATCH_SECONDS.observe(elapsed)
        metrics.BATCH_ROWS.observe(len(batch))
        self.stats.batches += 1
        self.stats.rows += len(batch)
        for item in items:
            if item.future.done():
                continue
            if error is None:
                item.future.set_result(None)
            else:
                item.future.set_exception(NotDurable(error))

    async def _isolate(self, items: list[_Item]) -> None:
        for item in items:
            try:
                if len(item.batch):
                    await self._write(item.batch)
                item.future.set_result(None)
            except psycopg.OperationalError as exc:
                await self._lost(exc)
                error = self._to_spool(item.batch)
                if error is None:
                    item.future.set_result(None)
                else:
                    item.future.set_exception(NotDurable(error))
            except psycopg.Error as exc:
                log.error("writer: rows refused by the database, not acknowledged: %s", first_line(exc))
                self.stats.refused_batches += 1
                item.future.set_exception(NotDurable(f"database refused the rows: {first_line(exc)}"))

    def _to_spool(self, batch: Batch) -> str | None:
        try:
            self.spool.append(encode(batch))
        except SpoolError as exc:
            self.stats.refused_batches += 1
            log.error("writer: %s; not acknowledging %s rows", exc, len(batch))
            return str(exc)
        self.stats.spooled_batches += 1
        metrics.SPOOL_BYTES.set(self.spool.pending_bytes)
        return None

    async def _replay(self, budget_s: float) -> None:
        """Replays spooled batches in order while the database takes them."""
        if not await self._connect():
            return
        deadline = time.monotonic() + budget_s
        replayed = 0
        while self.spool.pending and time.monotonic() < deadline:
            # Several spooled batches per transaction, in order, up to a full batch of rows.
            merged = Batch()
            offset = self.spool.read_offset
            records = 0
            while len(merged) < self.batch_max_rows and (records == 0 or not self._replay_singly):
                record = self.spool.peek(offset)
                if record is None:
                    break
                payload, offset = record
                merged.extend(decode(payload))
                records += 1
            try:
                await self._write(merged)
            except psycopg.OperationalError as exc:
                await self._lost(exc)
                return
            except psycopg.Error as exc:
                if records > 1:
                    self._replay_singly = True  # find the record the database refuses
                    continue
                kept = self.spool.directory / f"rejected-{int(time.time())}-{self.spool.read_offset}.bin"
                kept.write_bytes(self.spool.peek()[0])  # type: ignore[index]
                log.error("writer: the database refuses a spooled batch (%s); kept in %s", first_line(exc), kept)
            self._replay_singly = False
            self.spool.advance(offset)
            replayed += records
            self.stats.replayed_batches += records
        metrics.SPOOL_BYTES.set(self.spool.pending_bytes)
        if replayed:
            log.info("writer: replayed %s spooled batches (%s bytes left)", replayed, self.spool.pending_bytes)

    # Database -------------------------------------------------------------------
    # The database work runs on one dedicated thread with a blocking connection: a batch's
    # COPY, inserts and commit then never wait behind the event loop's decoding callbacks
    # (libpq releases the GIL while it waits on the network).

    async def _db(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _connect(self, quiet: bool = False) -> bool:
        if self._conn is not None and not self._conn.closed:
            return True
        now = time.monotonic()
        if now < self._next_attempt:
            return False
        self._next_attempt = now + self.retry_s
        try:
            conn = await self._db(self._connect_sync)
        except psycopg.Error as exc:
            metrics.DATABASE_UP.set(0)
            if not quiet:
                log.debug("writer: database still unreachable: %s", first_line(exc))
            else:
                log.warning("writer: database unreachable at start (%s); spooling", first_line(exc))
            return False
        self._conn = conn
        self._partitions.clear()
        metrics.DATABASE_UP.set(1)
        log.info("writer: database connection up")
        return True

    def _connect_sync(self) -> psycopg.Connection:
        conn = psycopg.connect(self.database_url, connect_timeout=5)
        try:
            conn.execute(SQL_STAGE)
            conn.commit()
        except BaseException:
            conn.close()
            raise
        return conn

    async def _lost(self, exc: BaseException) -> None:
        log.warning("writer: database connection lost (%s); spooling until it is back", first_line(exc))
        metrics.DATABASE_UP.set(0)
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._db(_close_quietly, conn)
        self._next_attempt = time.monotonic() + self.retry_s

    async def _write(self, batch: Batch) -> None:
        await self._db(self._write_sync, batch)

    def _ensure_partitions(self, conn: psycopg.Connection, batch: Batch) -> None:
        days = {row[1].astimezone(UTC).date() for row in batch.positions} - self._partitions
        if not days:
            return
        for day in sorted(days):
            try:
                conn.execute("SELECT avl_ensure_position_partition(%s)", (day,))
            except psycopg.errors.UndefinedFunction:
                conn.rollback()  # TimescaleDB: the hypertable makes its own chunks
            self._partitions.add(day)
        conn.commit()

    def _write_sync(self, batch: Batch) -> None:
        conn = self._conn
        assert conn is not None
        if batch.positions:
            self._ensure_partitions(conn, batch)
        with conn.transaction():
            with conn.cursor() as cur:
                if batch.positions:
                    with cur.copy(f"COPY staging_positions ({_COLS}) FROM STDIN (FORMAT BINARY)") as copy:
                        copy.set_types(list(POSITION_TYPES))
                        for row in batch.positions:
                            copy.write_row(row)
                    cur.execute(SQL_INSERT)
                    cur.execute(SQL_LATEST)
                    cur.execute(SQL_HEARD)
                    cur.execute("TRUNCATE staging_positions")
                if batch.events:
                    cur.executemany(SQL_EVENT, batch.events)
                    heard: dict[int, datetime] = {}
                    for event in batch.events:
                        if event[0] not in heard or heard[event[0]] < event[2]:
                            heard[event[0]] = event[2]
                    cur.execute(SQL_HEARD_EVENTS, (list(heard), list(heard.values())))
                if batch.quarantine:
                    cur.executemany(SQL_QUARANTINE, batch.quarantine)
                if batch.unknown:
                    cur.executemany(SQL_UNKNOWN, batch.unknown)
                if batch.positions or batch.events:
                    devices = sorted({row[0] for row in batch.positions} | {row[0] for row in batch.events})
                    # Delivered to listeners only when (and if) this transaction commits.
                    for start in range(0, len(devices), 500):
                        cur.execute("SELECT pg_notify(%s, %s)",
                                    (NOTIFY_CHANNEL, json.dumps({"devices": devices[start:start + 500]})))


def _close_quietly(conn: psycopg.Connection) -> None:
    try:
        conn.close()
    except Exception:  # the connection is already broken; nothing else to do with it
        pass


def oldest_accepted(retention_days: int) -> datetime:
    """Reports older than this are beyond retention: quarantined rather than stored."""
    return datetime.now(UTC) - timedelta(days=retention_days)
