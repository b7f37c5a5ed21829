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
from typing import Any, TypeVar

import psycopg
from psycopg import postgres, pq
from psycopg.adapt import Dumper

from avl.db import first_line
from ingest import metrics
from ingest.pipeline import Batch
from ingest.spool import Spool, SpoolError, decode, encode

log = logging.getLogger("avl.ingest.writer")

POSITION_COLUMNS = ("device_id", "fix_time", "received_at", "valid", "latitude", "longitude", "speed_kmh", "course",
                    "altitude_m", "satellites", "hdop", "ignition", "power_mv", "battery_mv", "odometer_m", "alarm",
                    "flags", "protocol", "attributes", "raw")
# attributes arrive as JSON text (the pipeline serialises them once) and are sent to the jsonb column as they
# are (``_JsonTextDumper``); the names are those of the binary COPY.
POSITION_TYPES = ("int8", "timestamptz", "timestamptz", "bool", "float8", "float8", "float4", "float4", "float4",
                  "int2", "float4", "bool", "int4", "int4", "int8", "text", "int4", "text", "jsonb", "bytea")
_COLS = ", ".join(POSITION_COLUMNS)
_LATEST_COLS = [c for c in POSITION_COLUMNS if c not in ("protocol", "raw")]
# staging_latest's: the latest columns, then last_received_at
_LATEST_TYPES = (*(t for c, t in zip(POSITION_COLUMNS, POSITION_TYPES, strict=True) if c in _LATEST_COLS), "timestamptz")
_LATEST = ", ".join(_LATEST_COLS)

# Per connection; emptied by every commit (cheaper than a TRUNCATE statement: no new file).
SQL_STAGE = (f"CREATE TEMP TABLE IF NOT EXISTS staging_positions ON COMMIT DELETE ROWS AS SELECT {_COLS}"
             " FROM positions WITH NO DATA")
SQL_STAGE_LATEST = (f"CREATE TEMP TABLE IF NOT EXISTS staging_latest ON COMMIT DELETE ROWS AS SELECT {_LATEST},"
                    " last_received_at FROM latest_positions WITH NO DATA")
SQL_COPY = f"COPY positions ({_COLS}) FROM STDIN (FORMAT BINARY)"
SQL_COPY_STAGED = f"COPY staging_positions ({_COLS}) FROM STDIN (FORMAT BINARY)"
SQL_COPY_LATEST = f"COPY staging_latest ({_LATEST}, last_received_at) FROM STDIN (FORMAT BINARY)"
SQL_INSERT = f"INSERT INTO positions ({_COLS}) SELECT {_COLS} FROM staging_positions ON CONFLICT DO NOTHING"
# Each device's newest row of the batch and its newest arrival (picked in memory): the latest
# position only moves forward, and any arrival counts as "heard from", even a buffered report older
# than the latest fix.
SQL_LATEST = (
    f"INSERT INTO latest_positions AS l ({_LATEST}, last_received_at) SELECT {_LATEST}, last_received_at"
    " FROM staging_latest ON CONFLICT (device_id) DO UPDATE SET "
    + ", ".join(f"{c} = CASE WHEN EXCLUDED.fix_time > l.fix_time THEN EXCLUDED.{c} ELSE l.{c} END"
                for c in _LATEST_COLS if c != "device_id")
    + ", last_received_at = greatest(l.last_received_at, EXCLUDED.last_received_at)"
    " WHERE EXCLUDED.fix_time > l.fix_time OR EXCLUDED.last_received_at > l.last_received_at"
)
SQL_NEWEST = "SELECT device_id, fix_time FROM latest_positions WHERE device_id = ANY(%s)"
# Reports without a time of their own: the first arrival of each frame within the window (see Batch).
SQL_FIRST_ARRIVALS = (
    "INSERT INTO recent_frames AS r (device_id, digest, first_at)"
    " SELECT * FROM unnest(%s::int8[], %s::bytea[], %s::timestamptz[])"
    " ON CONFLICT (device_id, digest) DO UPDATE SET first_at = CASE"
    " WHEN r.first_at < EXCLUDED.first_at - make_interval(secs => %s) THEN EXCLUDED.first_at ELSE r.first_at END"
    " RETURNING device_id, digest, first_at"
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
    direct_rows: int = 0  # positions copied straight into positions (they could not conflict)
    staged_rows: int = 0  # positions through the staging table and INSERT ... ON CONFLICT DO NOTHING
    latencies: list[float] = field(default_factory=list)


class Writer:
    def __init__(self, database_url: str, spool: Spool, *, batch_max_rows: int = 5000, batch_max_ms: float = 10.0,
                 queue_max_rows: int = 50_000, retention_days: int = 400, retry_s: float = 1.0,
                 duplicate_window_s: float = 300.0) -> None:
        self.database_url = database_url
        self.duplicate_window_s = duplicate_window_s
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
        self._waiting = 0  # submitters waiting for room: newcomers queue behind them
        # Per device, a fix time no later than its newest stored position (from this writer's commits):
        # a row newer than it cannot conflict, so it is copied straight into positions (see _write_sync).
        self._newest: dict[int, datetime] = {}
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
        if self._waiting or (self._queued_rows > 0 and self._queued_rows + rows > self.queue_max_rows):
            self._waiting += 1
            try:
                async with self._room:
                    while self._queued_rows > 0 and self._queued_rows + rows > self.queue_max_rows:
                        await self._room.wait()
                    self._queued_rows += rows
            finally:
                self._waiting -= 1
        else:
            self._queued_rows += rows  # room enough, nobody waiting: no lock to take
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
            metrics.QUEUE_ROWS.set(self._queued_rows)  # its deepest, sampled once a batch
            async with self._room:
                self._queued_rows -= sum(max(1, len(i.batch)) for i in items)
                self._room.notify_all()
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
            conn.adapters.register_dumper(None, _JsonTextDumper)  # COPY's jsonb column from JSON text
            conn.execute(SQL_STAGE)
            conn.execute(SQL_STAGE_LATEST)
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

    def _ensure_partitions(self, conn: psycopg.Connection, rows: list[tuple[Any, ...]]) -> None:
        first = last = rows[0][1]
        for row in rows:
            t = row[1]
            if t < first:
                first = t
            elif t > last:
                last = t
        first_day, last_day = first.astimezone(UTC).date(), last.astimezone(UTC).date()
        if (last_day - first_day).days <= 2:  # the usual case: a day or two, without looking at every row
            days = {first_day + timedelta(days=n) for n in range((last_day - first_day).days + 1)}
        else:
            days = {row[1].astimezone(UTC).date() for row in rows}
        days -= self._partitions
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
        positions = batch.positions + [row for table, row, _ in batch.untimed if table == "position"]
        if positions:
            self._ensure_partitions(conn, positions)
        try:
            newest, direct, staged = self._transaction(conn, batch, direct=True)
        except psycopg.errors.UniqueViolation:
            # A row copied straight in was there already: stored by another ingest process (a device that
            # reconnected there and back), or by something else. The staged path absorbs it.
            conn.rollback()
            for row in positions:
                self._newest.pop(row[0], None)
            newest, direct, staged = self._transaction(conn, batch, direct=False)
        self._newest.update(newest)
        self.stats.direct_rows += direct
        self.stats.staged_rows += staged
        if direct:
            metrics.positions_path("direct").inc(direct)
        if staged:
            metrics.positions_path("staged").inc(staged)

    def _transaction(self, conn: psycopg.Connection, batch: Batch, *,
                     direct: bool) -> tuple[dict[int, datetime], int, int]:
        """Writes ``batch`` in one transaction; returns, per device, the newest fix time now stored,
        and how many positions went straight in and through the staging table.

        Positions newer than the device's newest stored fix (``_newest``, in order within the batch)
        cannot conflict: they are copied straight into ``positions`` (``direct``). The others (a
        device this writer has not written yet, buffered or out-of-order data, a retransmission, every
        replayed spool record) go through the staging table and ``INSERT ... ON CONFLICT DO NOTHING``.
        """
        with conn.transaction(), conn.cursor() as cur:
            positions, events, quarantine = batch.positions, batch.events, batch.quarantine
            if batch.untimed:
                positions, events, quarantine = self._first_arrivals(cur, batch)
            newest: dict[int, datetime] = {}
            fresh: list[tuple[Any, ...]] = []
            staged: list[tuple[Any, ...]] = []
            if positions:
                known = self._newest if direct else {}
                latest: dict[int, tuple[Any, ...]] = {}
                heard: dict[int, datetime] = {}
                for row in positions:
                    device, fix_time, received_at = row[0], row[1], row[2]
                    stored = newest.get(device) or known.get(device)
                    if stored is not None and fix_time > stored:
                        fresh.append(row)
                        newest[device] = fix_time
                    else:
                        staged.append(row)
                    top = latest.get(device)
                    if top is None or fix_time > top[1]:
                        latest[device] = row
                    if device not in heard or received_at > heard[device]:
                        heard[device] = received_at
                if fresh:
                    with cur.copy(SQL_COPY) as copy:
                        copy.set_types(POSITION_TYPES)
                        for row in fresh:
                            copy.write_row(row)
                if staged:
                    with cur.copy(SQL_COPY_STAGED) as copy:
                        copy.set_types(POSITION_TYPES)
                        for row in staged:
                            copy.write_row(row)
                    cur.execute(SQL_INSERT)
                with cur.copy(SQL_COPY_LATEST) as copy:
                    copy.set_types(_LATEST_TYPES)
                    for device in sorted(latest):  # one lock order for every ingest process: no deadlock
                        row = latest[device]
                        copy.write_row((device, *row[1:16], row[16], row[18], heard[device]))
                cur.execute(SQL_LATEST)
                unsure = [device for device in latest if device not in newest]
                if unsure:  # what is stored for them now (this transaction's rows and anyone's before)
                    cur.execute(SQL_NEWEST, (unsure,))
                    newest.update(cur.fetchall())
            if events:
                cur.executemany(SQL_EVENT, events)
                seen: dict[int, datetime] = {}
                for event in events:
                    if event[0] not in seen or seen[event[0]] < event[2]:
                        seen[event[0]] = event[2]
                cur.execute(SQL_HEARD_EVENTS, (list(seen), list(seen.values())))
            if quarantine:
                cur.executemany(SQL_QUARANTINE, quarantine)
            if batch.unknown:
                cur.executemany(SQL_UNKNOWN, batch.unknown)
            if positions or events:
                devices = sorted({row[0] for row in positions} | {row[0] for row in events})
                # Delivered to listeners only when (and if) this transaction commits.
                for start in range(0, len(devices), 500):
                    cur.execute("SELECT pg_notify(%s, %s)",
                                (NOTIFY_CHANNEL, json.dumps({"devices": devices[start:start + 500]})))
        return newest, len(fresh), len(staged)

    def _first_arrivals(self, cur: psycopg.Cursor[Any], batch: Batch) -> tuple[list[tuple[Any, ...]], ...]:
        """The batch's positions, events and quarantined rows, its untimed rows among them with the
        time of their frame's first arrival within the window (see ``Batch``)."""
        first: dict[tuple[int, bytes], datetime] = {}
        for _, row, digest in sorted(batch.untimed, key=lambda u: (u[1][0], u[2])):  # one lock order: no deadlock
            first.setdefault((row[0], digest), row[1])
        cur.execute(SQL_FIRST_ARRIVALS, ([k[0] for k in first], [k[1] for k in first], list(first.values()),
                                         self.duplicate_window_s))
        arrived = {(device, bytes(digest)): at for device, digest, at in cur.fetchall()}
        out: dict[str, list[tuple[Any, ...]]] = {"position": list(batch.positions), "event": list(batch.events),
                                                 "quarantine": list(batch.quarantine)}
        for table, row, digest in batch.untimed:
            out[table].append((row[0], arrived.get((row[0], digest), row[1]), *row[2:]))
        return out["position"], out["event"], out["quarantine"]


class _JsonTextDumper(Dumper):
    """jsonb in binary COPY from the JSON text the pipeline made: its version byte, then the text.
    Registered for the oid only (``register_dumper(None, ...)``), so only ``set_types`` uses it."""

    format = pq.Format.BINARY
    oid = postgres.types["jsonb"].oid

    def dump(self, obj: str) -> bytes:
        return b"\x01" + obj.encode()


def _close_quietly(conn: psycopg.Connection) -> None:
    try:
        conn.close()
    except Exception:  # the connection is already broken; nothing else to do with it
        pass


def oldest_accepted(retention_days: int) -> datetime:
    """Reports older than this are beyond retention: quarantined rather than stored."""
    return datetime.now(UTC) - timedelta(days=retention_days)
