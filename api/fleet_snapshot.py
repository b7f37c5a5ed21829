"""The fleet list from memory: per account, every vehicle's JSON kept ready in the API process, so
``GET /api/v1/vehicles`` answers a 10,000-vehicle fleet without the database building it.

How it stays what the database says:
- **Loaded once** per scope (an account; staff's "every account") with one query. The parts of a
  vehicle's JSON that do not age are rendered by PostgreSQL with the very expressions of the SQL
  path (``VEHICLE_HEAD_SQL``, ``POSITION_SQL``), so both paths write the same bytes.
- **Kept current by the notifications**: ``avl_positions`` (the ingest writer's commits: latest
  positions and status events), ``avl_devices`` (a device added or changed) and ``avl_access`` (an
  account's status). The rows concerned are reloaded in the background, a few at a time.
- **Checked on every request**: in one repeatable-read transaction, one query reads a fingerprint
  of every row the list is made of (the row versions, ``xmin``, of the scope's devices, their
  vehicles, terminal replacements and latest positions, and of the accounts) and the newest device
  event; whatever differs from memory is reloaded in that same transaction before answering. So a
  change no notification told of (plain SQL, a listening connection that was down) is in the answer
  too, and the answer is the database's state at the request's snapshot. The fingerprint costs a few
  milliseconds for 10,000 vehicles instead of the hundred-odd that building the JSON costs.
- **Device events** (status reports without a fix: "heard from") are not rows of the fingerprint.
  Their ids come from a sequence, so they commit out of id order: an event with a lower id than the
  newest one seen can still become visible. Each check therefore re-reads the events above a floor
  (``event_low``) and applies those not applied yet; the floor rises to a check's newest id only once
  a later snapshot shows every transaction that was running at that check finished
  (``pg_snapshot_xmin`` at or past that check's ``pg_snapshot_xmax``): nothing below it can appear
  any more. The first load waits (up to ``SETTLE_S``) for the transactions running when it starts to
  end, for the same reason; if they do not, the list is answered by the database instead.
- **Without notifications** (the listening connection down, or not yet up) the list is answered by
  the database (the SQL path), and when the connection is back every snapshot is dropped and loaded
  afresh.
- **Statuses age at read time**: online / gps_not_updated / offline / account_blocked are computed
  per request (vectorised) from the database's clock, with the SQL path's rule; a vehicle's JSON is
  re-rendered only when its status (or its data) changed.

Tenancy: a snapshot holds one scope only (a client's own account); another account's vehicle is
never in it. A suspended client's list is rendered without positions, as the SQL path does.
Each answer carries an ETag (this process, the snapshot, its version): ``If-None-Match`` with the
current one gets a 304 without a body.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import logging
import re
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

log = logging.getLogger("avl.api.fleet")

# Status thresholds, in report intervals of the device (``report_interval_s``): the same
# factor as the diagnostics' "silent" (AVL_SILENT_AFTER_INTERVALS default), so what the
# client sees as offline is what the support center sees as silent.
STATUS_INTERVALS = 3

CHANNELS = ("avl_positions", "avl_devices", "avl_access")
COALESCE_S = 0.05       # notifications gathered this long before the rows are reloaded
IDLE_S = 600.0          # a snapshot nobody asked for this long is dropped
MAX_SNAPSHOTS = 256     # scopes kept at once (least recently used dropped first)
RECONNECT_S = 2.0
SETTLE_S = 2.0          # how long a first load waits for the transactions running when it starts
MAX_MARKS = 32          # pending event floors kept per snapshot (older ones merged: the floor rises later)
LISTEN_NAME = "avl-api-fleet-listen"  # the listening connection's application_name


# The SQL shared with the SQL path (api/routes/fleet.py) ----------------------------------------

def sql_time(column: str) -> str:
    """SQL for a timestamptz column as a JSON value: UTC ISO 8601 with a Z (fractional seconds
    only when there are some, as pydantic writes them) or null. Needs DateStyle ISO, set for
    the transaction. Inline: the same as an SQL function costs twice as much per row."""
    return f"""coalesce('"' || replace(({column} AT TIME ZONE 'UTC')::text, ' ', 'T') || 'Z"', 'null')"""


def with_times(sql: str) -> str:
    """``TIME(column)`` in ``sql`` written out with ``sql_time``."""
    return re.sub(r"TIME\(([a-z_.]+)\)", lambda m: sql_time(m[1]), sql)


# A vehicle's JSON object up to its status: strings through to_json for escaping (over d: devices,
# veh: vehicles); then its latest position (l) as an object.
VEHICLE_HEAD_SQL = """'{"id":' || d.id || ',"identifier":' || to_json(d.identifier)::text
    || ',"protocol":' || to_json(d.protocol)::text
    || ',"account_id":' || coalesce(d.account_id::text, 'null') || ',"vehicle_id":' || coalesce(veh.id::text, 'null')
    || ',"plate":' || coalesce(to_json(veh.plate)::text, 'null')
    || ',"vehicle_kind":' || coalesce(to_json(veh.kind)::text, 'null')
    || ',"description":' || coalesce(to_json(veh.description)::text, 'null')
    || ',"report_interval_s":' || d.report_interval_s"""
POSITION_SQL = """'{"time":' || TIME(l.fix_time) || ',"received_at":' || TIME(l.received_at)
        || ',"valid":' || l.valid || ',"latitude":' || l.latitude || ',"longitude":' || l.longitude
        || ',"speed_kmh":' || coalesce(l.speed_kmh::text, 'null') || ',"course":' || coalesce(l.course::text, 'null')
        || ',"altitude_m":' || coalesce(l.altitude_m::text, 'null')
        || ',"satellites":' || coalesce(l.satellites::text, 'null') || ',"ignition":' || coalesce(l.ignition::text, 'null')
        || ',"power_mv":' || coalesce(l.power_mv::text, 'null') || ',"battery_mv":' || coalesce(l.battery_mv::text, 'null')
        || ',"odometer_m":' || coalesce(l.odometer_m::text, 'null')
        || ',"alarm":' || coalesce(to_json(l.alarm)::text, 'null') || '}'"""
# The compact form: one array per vehicle, in this order (position fields null without a position).
COMPACT_FIELDS = ("id", "identifier", "protocol", "plate", "vehicle_kind", "report_interval_s", "status",
                  "last_report_at", "time", "valid", "latitude", "longitude", "speed_kmh", "course", "ignition",
                  "power_mv")
_COMPACT_HEAD_SQL = """'[' || d.id || ',' || to_json(d.identifier)::text || ',' || to_json(d.protocol)::text
    || ',' || coalesce(to_json(veh.plate)::text, 'null') || ',' || coalesce(to_json(veh.kind)::text, 'null')
    || ',' || d.report_interval_s"""
_COMPACT_POSITION_SQL = """TIME(l.fix_time) || ',' || l.valid || ',' || l.latitude || ',' || l.longitude
        || ',' || coalesce(l.speed_kmh::text, 'null') || ',' || coalesce(l.course::text, 'null')
        || ',' || coalesce(l.ignition::text, 'null') || ',' || coalesce(l.power_mv::text, 'null')"""
_COMPACT_NO_POSITION = b",".join([b"null"] * 8)

# Every row a vehicle's entry is made of, by its version (xmin: a new one with every change to the
# row): the device, its vehicle, its replacement, its own and its old terminal's latest position.
_VERSION_SQL = """((d.xmin::text::int8 * 1000003 + coalesce(veh.xmin::text::int8, 0) * 1000033
    + coalesce(rp.xmin::text::int8, 0) * 1000037 + coalesce(lown.xmin::text::int8, 0) * 1000039
    + coalesce(lo.xmin::text::int8, 0) * 1000081) # d.id)"""
_VERSIONS_JOINS = """FROM devices d LEFT JOIN vehicles veh ON veh.id = d.vehicle_id
LEFT JOIN terminal_replacements rp ON rp.new_device_id = d.id
LEFT JOIN latest_positions lown ON lown.device_id = d.id
LEFT JOIN latest_positions lo ON lo.device_id = rp.old_device_id"""
# The vehicle's latest position (l): its terminal's; after a replacement, until the new terminal
# reports, the old one's from before the swap. The SQL path's rule, written for index lookups.
_ROWS_JOINS = _VERSIONS_JOINS + """
LEFT JOIN latest_positions l ON l.device_id = CASE WHEN lown.device_id IS NOT NULL THEN d.id
                                                   WHEN lo.fix_time < rp.swapped_at THEN rp.old_device_id END"""
_ACCOUNT_VERSION_SQL = "((a.xmin::text::int8 * 1000003) # a.id)"
_US = "(extract(epoch FROM {}) * 1000000)::int8"

_ROWS_SQL = with_times(f"""
SELECT d.id, d.account_id, d.report_interval_s, d.line_status = 'active',
    {VEHICLE_HEAD_SQL}, {_COMPACT_HEAD_SQL},
    CASE WHEN l.device_id IS NULL THEN 'null' ELSE {POSITION_SQL} END,
    CASE WHEN l.device_id IS NULL THEN NULL ELSE {_COMPACT_POSITION_SQL} END,
    l.device_id IS NOT NULL, coalesce(l.valid, false), {_US.format('l.fix_time')},
    {_US.format('l.last_received_at')}, TIME(l.last_received_at),
    {_US.format('ev.received_at')}, TIME(ev.received_at), rp.old_device_id, {_VERSION_SQL}
{_ROWS_JOINS}
-- Status reports without a fix (device_events) count as "heard from" too.
LEFT JOIN LATERAL (SELECT e.received_at FROM device_events e WHERE e.device_id = d.id
                   ORDER BY e.time DESC LIMIT 1) ev ON true
WHERE """)
# pg_current_snapshot() in a repeatable-read transaction is the transaction's snapshot.
_SNAPSHOT_SQL = """pg_snapshot_xmin(pg_current_snapshot())::text::int8,
    pg_snapshot_xmax(pg_current_snapshot())::text::int8"""
_FINGERPRINT_SQL = f"""
SELECT {_US.format('now()')}, (SELECT coalesce(max(id), 0) FROM device_events), {_SNAPSHOT_SQL},
    (SELECT coalesce(sum({_ACCOUNT_VERSION_SQL}), 0) FROM accounts a WHERE {{accounts}}),
    count(*), coalesce(sum({_VERSION_SQL}), 0)
{_VERSIONS_JOINS}
WHERE {{devices}}"""
_VERSIONS_SQL = f"SELECT d.id, {_VERSION_SQL}\n{_VERSIONS_JOINS}\nWHERE {{devices}}"
_ACCOUNTS_SQL = f"""SELECT a.id, a.status, a.status_reason, coalesce(a.billing = 'pre_paid' AND a.balance <= 0, false),
    {_ACCOUNT_VERSION_SQL} FROM accounts a WHERE {{accounts}}"""
_EVENTS_SQL = "SELECT id, device_id FROM device_events WHERE id > %s AND id <= %s"
_EVENT_FLOOR_SQL = f"SELECT (SELECT coalesce(max(id), 0) FROM device_events), {_SNAPSHOT_SQL}"


# Statuses ---------------------------------------------------------------------------------------

ONLINE, GPS_NO_POSITION, GPS_INVALID, GPS_OLD, OFFLINE_NEVER, OFFLINE_SILENT, BLOCKED_LINE, BLOCKED_ACCOUNT = range(8)
STATUS_NAMES = ("online", "gps_not_updated", "gps_not_updated", "gps_not_updated", "offline", "offline",
                "account_blocked", "account_blocked")
_DETAILS = {
    ONLINE: "reporting with a fresh GPS fix",
    GPS_NO_POSITION: "reports arrive without a position",
    GPS_INVALID: "reports arrive without a valid GPS fix",
    GPS_OLD: f"reports arrive but the newest GPS fix is older than {STATUS_INTERVALS} report intervals",
    OFFLINE_NEVER: "no report received yet",
    BLOCKED_LINE: "the terminal's cellular line is suspended",
}
_NONE = np.iinfo(np.int64).min  # a missing time: before every other


def _status_part(code: int, detail: str) -> bytes:
    return (f',"status":"{STATUS_NAMES[code]}","status_detail":' + json.dumps(detail, ensure_ascii=False)).encode()


_STATUS_PARTS = {code: _status_part(code, detail) for code, detail in _DETAILS.items()}


def _silent_part(interval_s: int) -> bytes:
    return _status_part(OFFLINE_SILENT, f"no report for more than {STATUS_INTERVALS} report intervals "
                                        f"({STATUS_INTERVALS * interval_s} s)")


def account_block(status: str | None, reason: str | None, prepaid_empty: bool) -> str | None:
    """Why an account's vehicles are ``account_blocked`` (None: they are not, for the account's sake)."""
    if status == "suspended":
        return f"the account is suspended ({reason or 'non-payment'})"
    if status == "retired":
        return "the account's service was retired"
    if prepaid_empty:
        return "the pre-paid balance is exhausted"
    return None


# The snapshot -----------------------------------------------------------------------------------

@dataclass(slots=True)
class _Row:
    id: int
    account_id: int | None
    interval_s: int
    line_active: bool
    head: bytes          # full form, up to the status
    chead: bytes         # compact form, up to the status
    position: bytes      # full form's position object, or null
    cposition: bytes     # compact form's position fields
    has_latest: bool
    valid: bool
    fix_us: int
    heard_us: int        # the latest position's last_received_at
    heard_json: bytes
    event_us: int        # the device's newest status event's received_at
    event_json: bytes
    old_device_id: int | None
    version: int


def _row(r: Sequence[Any]) -> _Row:
    def us(v: int | None) -> int:
        return _NONE if v is None else int(v)

    return _Row(id=r[0], account_id=r[1], interval_s=r[2], line_active=bool(r[3]), head=r[4].encode(),
                chead=r[5].encode(), position=r[6].encode(),
                cposition=_COMPACT_NO_POSITION if r[7] is None else r[7].encode(), has_latest=bool(r[8]),
                valid=bool(r[9]), fix_us=us(r[10]), heard_us=us(r[11]), heard_json=r[12].encode(),
                event_us=us(r[13]), event_json=r[14].encode(), old_device_id=r[15], version=int(r[16]))


@dataclass(slots=True)
class _Account:
    id: int
    block: str | None
    part: bytes | None   # the status part of its blocked vehicles
    version: int


def _account(r: Sequence[Any]) -> _Account:
    block = account_block(r[1], r[2], bool(r[3]))
    return _Account(r[0], block, None if block is None else _status_part(BLOCKED_ACCOUNT, block), int(r[4]))


@dataclass
class Rendered:
    """A list ready to send: the body, its ETag, and whether the client already has it."""
    body: bytes
    etag: str
    not_modified: bool


class _Form:
    """One form's rendered vehicles, in id order, with the status key each was rendered for."""

    def __init__(self, n: int, version: int) -> None:
        self.keys = np.full(n, -1, dtype=np.int16)
        self.parts: list[bytes] = [b""] * n
        self.version = version
        self.body: bytes | None = None


_instance = secrets.token_hex(3)  # ETags of another process (or an earlier run) never match
_serials = itertools.count(1)


class Snapshot:
    """One scope's fleet list (an account, or every device when ``scope`` is None)."""

    def __init__(self, scope: int | None) -> None:
        self.scope = scope
        self.serial = next(_serials)
        self.lock = asyncio.Lock()
        self.loaded = False
        self.used_at = time.monotonic()
        self.rows: dict[int, _Row] = {}
        self.accounts: dict[int, _Account] = {}
        self.version_sum = 0
        self.accounts_sum = 0
        # Device events: every one with an id up to event_low is in the rows; those above it already
        # applied are in event_seen; event_marks: (newest id, snapshot xmax) of checks not yet settled.
        self.event_low = 0
        self.event_seen: set[int] = set()
        self.event_marks: collections.deque[tuple[int, int]] = collections.deque()
        self.dirty: set[int] = set()      # devices to reload (notified)
        self.dirty_accounts = False
        self.watch: dict[int, int] = {}   # a replaced terminal's id -> the vehicle's current device id
        self._forms: dict[bool, _Form] = {}
        self._order: list[int] = []
        self._pos: dict[int, int] = {}
        self._arrays: dict[str, npt.NDArray[Any]] = {}
        self._changed_structure = True
        self._versions = itertools.count(1)  # of the rendered lists: an ETag is never reused for other bytes
        self._params: tuple[int, ...]
        if scope is None:
            self._devices_where, self._accounts_where, self._params = "true", "true", ()
        else:
            self._devices_where, self._accounts_where, self._params = "d.account_id = %s", "a.id = %s", (scope,)

    # Keeping it current --------------------------------------------------------------------------

    def notified_devices(self, ids: Iterable[int], *, new: bool = False) -> bool:
        """Marks the vehicles these devices' reports concern (``new``: any device, it may have joined)."""
        before = len(self.dirty)
        for i in ids:
            if new or i in self.rows:
                self.dirty.add(i)
            elif i in self.watch:
                self.dirty.add(self.watch[i])
        return len(self.dirty) > before

    def notified_accounts(self, ids: Iterable[int]) -> bool:
        if any(i == self.scope or (self.scope is None and i in self.accounts) for i in ids):
            self.dirty_accounts = True
        return self.dirty_accounts

    async def load(self, conn: AsyncConnection, *, kept: bool = True) -> int | None:
        """Everything, in one snapshot of the database; returns its clock (µs), or None when
        transactions that may hold device events kept running for ``SETTLE_S`` (nothing loaded).
        ``kept=False``: for one answer only (no floor for the device events' checks)."""
        floor = await self._event_floor(conn) if kept else 0
        if floor is None:
            return None
        async with conn.transaction():
            # sql_time relies on DateStyle ISO
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ; SET LOCAL DateStyle = 'ISO'")
            now_us, event_max, _, xmax, *_ = await self._fingerprint(conn)
            self.rows = {}
            self.dirty.clear()
            await self._reload_rows(conn, None)
            await self._reload_accounts(conn)
            if kept:  # the events above the floor visible now are in the rows just read
                cur = await conn.execute(_EVENTS_SQL, (floor, event_max))
                self.event_low, self.event_seen = floor, {i for i, _ in await cur.fetchall()}
                self.event_marks.clear()
                self.event_marks.append((event_max, xmax))
        self._changed_structure = True
        self.loaded = True
        return now_us

    @staticmethod
    async def _event_floor(conn: AsyncConnection) -> int | None:
        """The newest device event now, once every transaction running now has ended (so no event
        with a lower id can appear any more); None if they are still running after ``SETTLE_S``."""
        cur = await conn.execute(_EVENT_FLOOR_SQL)
        row = await cur.fetchone()
        assert row is not None
        newest, xmin, xmax = int(row[0]), int(row[1]), int(row[2])
        deadline = time.monotonic() + SETTLE_S
        while xmin < xmax:
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.005)
            cur = await conn.execute(_EVENT_FLOOR_SQL)
            row = await cur.fetchone()
            assert row is not None
            xmin = int(row[1])
        return newest

    async def reload_dirty(self, conn: AsyncConnection) -> None:
        """The notified rows (outside a request)."""
        async with conn.transaction():
            await conn.execute("SET LOCAL DateStyle = 'ISO'")
            await self._apply_dirty(conn)

    async def validate(self, conn: AsyncConnection) -> int:
        """Brings memory to the database's state at this transaction's snapshot; returns its clock (µs)."""
        async with conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ; SET LOCAL DateStyle = 'ISO'")
            now_us, event_max, xmin, xmax, accounts_sum, count, version_sum = await self._fingerprint(conn)
            await self._apply_events(conn, event_max, xmin, xmax)
            if accounts_sum != self.accounts_sum:
                await self._reload_accounts(conn)
            # What differs was most likely notified (a commit just before this snapshot): reload that.
            # Those rows stay marked: a notification can be of a commit after this snapshot, which the
            # background reload brings in.
            reloaded: set[int] = set()
            for wait_s in (0.0, 0.002):
                if (count, version_sum) == (len(self.rows), self.version_sum):
                    break
                await asyncio.sleep(wait_s)  # the listening connection may be delivering it
                named = self.dirty - reloaded
                if named:
                    reloaded |= named
                    await self._reload_rows(conn, sorted(named))
            if (count, version_sum) != (len(self.rows), self.version_sum):  # a change nobody told of
                cur = await conn.execute(_VERSIONS_SQL.format(devices=self._devices_where), self._params)
                versions: dict[int, int] = {int(i): int(v) for i, v in await cur.fetchall()}
                changed = [i for i, v in versions.items() if i not in self.rows or self.rows[i].version != v]
                for i in [i for i in self.rows if i not in versions]:
                    self._drop(i)
                if changed:
                    await self._reload_rows(conn, changed)
            if (count, version_sum, accounts_sum) != (len(self.rows), self.version_sum, self.accounts_sum):
                # Cannot happen in one snapshot; never answer from a memory that disagrees.
                log.warning("fleet snapshot of scope %s disagreed with its fingerprint: reloading", self.scope)
                self.rows = {}
                await self._reload_rows(conn, None)
                await self._reload_accounts(conn)
        return now_us

    async def _apply_events(self, conn: AsyncConnection, event_max: int, xmin: int, xmax: int) -> None:
        """Reloads the vehicles whose device events became visible since the last check, whatever
        their ids (see the module's docstring), then raises the floor as far as it is safe."""
        if event_max > self.event_low:
            cur = await conn.execute(_EVENTS_SQL, (self.event_low, event_max))
            fresh = [(i, d) for i, d in await cur.fetchall() if i not in self.event_seen]
            self.event_seen.update(i for i, _ in fresh)
            ids = sorted({d for _, d in fresh if d in self.rows})
            if ids:
                await self._reload_rows(conn, ids)
        marks = self.event_marks
        if marks and marks[-1][1] == xmax:
            marks.pop()  # the same transactions running: the newer mark alone
        marks.append((event_max, xmax))
        if len(marks) > MAX_MARKS:
            del marks[-2]  # dropping a mark only makes the floor rise later
        low = self.event_low
        while marks and marks[0][1] <= xmin:  # every transaction running at that check has ended
            low = max(low, marks.popleft()[0])
        if low != self.event_low:
            self.event_low = low
            self.event_seen = {i for i in self.event_seen if i > low}

    async def _fingerprint(self, conn: AsyncConnection) -> tuple[int, int, int, int, int, int, int]:
        """The clock (µs), the newest device event, the snapshot's xmin and xmax, the accounts'
        version sum, the number of vehicles and their version sum."""
        cur = await conn.execute(_FINGERPRINT_SQL.format(devices=self._devices_where, accounts=self._accounts_where),
                                 self._params * 2)
        row = await cur.fetchone()
        assert row is not None
        a, b, c, d, e, f, g = (int(v) for v in row)
        return a, b, c, d, e, f, g

    async def _apply_dirty(self, conn: AsyncConnection) -> None:
        if self.dirty:
            ids, self.dirty = sorted(self.dirty), set()
            await self._reload_rows(conn, ids)
        if self.dirty_accounts:
            self.dirty_accounts = False
            await self._reload_accounts(conn)

    async def _reload_rows(self, conn: AsyncConnection, ids: list[int] | None) -> None:
        """Reloads these devices' entries (None: all); one no longer in the scope leaves it."""
        where, params = self._devices_where, list[Any](self._params)
        if ids is not None:
            where, params = f"{where} AND d.id = ANY(%s::int8[])", [*params, ids]
        cur = await conn.execute(_ROWS_SQL + where, params)
        found = {row.id: row for row in map(_row, await cur.fetchall())}
        for i in (ids if ids is not None else []):
            if i not in found and i in self.rows:
                self._drop(i)
        for i, row in found.items():
            old = self.rows.get(i)
            if old is not None:
                self.version_sum -= old.version
                if old.old_device_id is not None:
                    self.watch.pop(old.old_device_id, None)
            else:
                self._changed_structure = True
            self.rows[i] = row
            self.version_sum += row.version
            if row.old_device_id is not None:
                self.watch[row.old_device_id] = i
            if old is not None and not self._changed_structure:
                self._update_arrays(self._pos[i], row)
        if ids is None:
            self.version_sum = sum(r.version for r in self.rows.values())
            self.watch = {r.old_device_id: r.id for r in self.rows.values() if r.old_device_id is not None}
            self._changed_structure = True

    def _drop(self, device_id: int) -> None:
        row = self.rows.pop(device_id)
        self.version_sum -= row.version
        if row.old_device_id is not None:
            self.watch.pop(row.old_device_id, None)
        self._changed_structure = True

    async def _reload_accounts(self, conn: AsyncConnection) -> None:
        cur = await conn.execute(_ACCOUNTS_SQL.format(accounts=self._accounts_where), self._params)
        accounts = {a.id: a for a in map(_account, await cur.fetchall())}
        changed = {i: a.block for i, a in accounts.items()} != {i: a.block for i, a in self.accounts.items()}
        self.accounts = accounts
        self.accounts_sum = sum(a.version for a in accounts.values())
        if changed and not self._changed_structure:
            self._arrays["account_block"] = self._account_blocks()
            for form in self._forms.values():
                form.keys[:] = -1  # their blocked vehicles' words may have changed

    # Reading it ----------------------------------------------------------------------------------

    def _rebuild(self) -> None:
        """Arrays in id order after vehicles joined or left (or were all reloaded)."""
        self._order = sorted(self.rows)
        self._pos = {i: k for k, i in enumerate(self._order)}
        rows = [self.rows[i] for i in self._order]
        n = len(rows)
        self._arrays = {
            "window": np.fromiter((STATUS_INTERVALS * r.interval_s * 1_000_000 for r in rows), np.int64, n),
            "fix": np.fromiter((r.fix_us for r in rows), np.int64, n),
            "heard": np.fromiter((r.heard_us for r in rows), np.int64, n),
            "event": np.fromiter((r.event_us for r in rows), np.int64, n),
            "has_latest": np.fromiter((r.has_latest for r in rows), bool, n),
            "valid": np.fromiter((r.valid for r in rows), bool, n),
            "line_active": np.fromiter((r.line_active for r in rows), bool, n),
            "account": np.fromiter((-1 if r.account_id is None else r.account_id for r in rows), np.int64, n),
        }
        self._arrays["account_block"] = self._account_blocks()
        self._forms = {compact: _Form(n, next(self._versions)) for compact in self._forms}
        self._changed_structure = False

    def _account_blocks(self) -> npt.NDArray[np.bool_]:
        blocked = [i for i, a in self.accounts.items() if a.block is not None]
        return np.isin(self._arrays["account"], np.array(blocked, dtype=np.int64))

    def _update_arrays(self, k: int, row: _Row) -> None:
        a = self._arrays
        a["window"][k] = STATUS_INTERVALS * row.interval_s * 1_000_000
        a["fix"][k], a["heard"][k], a["event"][k] = row.fix_us, row.heard_us, row.event_us
        a["has_latest"][k], a["valid"][k], a["line_active"][k] = row.has_latest, row.valid, row.line_active
        account = -1 if row.account_id is None else row.account_id
        if a["account"][k] != account:
            a["account"][k] = account
            a["account_block"][k] = account in self.accounts and self.accounts[account].block is not None
        for form in self._forms.values():
            form.keys[k] = -1

    def statuses(self, now_us: int) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.bool_]]:
        """Each vehicle's status code, and whether its last report is its newest status event's
        (rather than its latest position's), at ``now_us``: the SQL path's rule, vectorised."""
        if self._changed_structure:
            self._rebuild()
        a = self._arrays
        since = now_us - a["window"]
        heard_fresh = a["heard"] >= since
        from_event = ~heard_fresh & (a["event"] > a["heard"])
        heard = np.where(from_event, a["event"], a["heard"])
        code = np.full(len(self._order), ONLINE, dtype=np.int8)
        code[~a["has_latest"] | ~a["valid"] | (a["fix"] < since)] = GPS_OLD
        code[~a["valid"]] = GPS_INVALID
        code[~a["has_latest"]] = GPS_NO_POSITION
        code[heard < since] = OFFLINE_SILENT
        code[heard == _NONE] = OFFLINE_NEVER
        code[~a["line_active"]] = BLOCKED_LINE
        code[a["account_block"]] = BLOCKED_ACCOUNT
        return code, from_event

    def _status_bytes(self, row: _Row, code: int) -> bytes:
        if code == OFFLINE_SILENT:
            return _silent_part(row.interval_s)
        if code == BLOCKED_ACCOUNT:
            part = self.accounts[row.account_id].part if row.account_id is not None else None
            assert part is not None
            return part
        return _STATUS_PARTS[code]

    def _render(self, row: _Row, code: int, from_event: bool, compact: bool, show: bool) -> bytes:
        heard = row.event_json if from_event else row.heard_json
        if compact:
            return b"".join((row.chead, b',"', STATUS_NAMES[code].encode(), b'",', heard, b",",
                             row.cposition if show else _COMPACT_NO_POSITION, b"]"))
        return b"".join((row.head, self._status_bytes(row, code), b',"last_report_at":', heard,
                         b',"position":', row.position if show else b"null", b"}"))

    def render(self, now_us: int, *, compact: bool, show: bool, status: str | None,
               if_none_match: str | None) -> Rendered:
        """The list at ``now_us`` (after ``validate``), in the full or compact form."""
        self.used_at = time.monotonic()
        code, from_event = self.statuses(now_us)
        form = self._forms.get(compact)
        if form is None:
            form = self._forms[compact] = _Form(len(self._order), next(self._versions))
        keys = code.astype(np.int16) * 2 + from_event
        stale = np.flatnonzero(keys != form.keys)
        if stale.size:
            rows, parts = self.rows, form.parts
            for k in stale.tolist():
                parts[k] = self._render(rows[self._order[k]], int(code[k]), bool(from_event[k]), compact, True)
            form.keys = keys
            form.version = next(self._versions)
            form.body = None
        variant = ("c" if compact else "f") + ("" if show else "h") + (f"-{status}" if status else "")
        etag = f'"{_instance}.{self.serial}.{form.version}.{variant}"'
        if if_none_match is not None and if_none_match_matches(if_none_match, etag):
            return Rendered(b"", etag, True)
        if show and status is None:
            if form.body is None:
                form.body = self._wrap(form.parts, compact)
            return Rendered(form.body, etag, False)
        chosen = range(len(self._order)) if status is None else np.flatnonzero(
            np.isin(code, [c for c, name in enumerate(STATUS_NAMES) if name == status])).tolist()
        if show:
            parts = [form.parts[k] for k in chosen]
        else:
            parts = [self._render(self.rows[self._order[k]], int(code[k]), bool(from_event[k]), compact, False)
                     for k in chosen]
        return Rendered(self._wrap(parts, compact), etag, False)

    @staticmethod
    def _wrap(parts: list[bytes], compact: bool) -> bytes:
        if compact:
            return b'{"fields":' + json.dumps(COMPACT_FIELDS).encode() + b',"vehicles":[' + b",".join(parts) + b"]}"
        return b"[" + b",".join(parts) + b"]"


def if_none_match_matches(if_none_match: str, etag: str) -> bool:
    """``If-None-Match``: ``*`` or a list of (possibly weak) tags, one of which is ``etag``."""
    tags = [t.strip() for t in if_none_match.split(",")]
    return "*" in tags or any(t.removeprefix("W/") == etag for t in tags)


# The process's snapshots and their listening connection -------------------------------------------

class FleetSnapshots:
    """Every scope's snapshot in this API process, and the one connection that listens for changes."""

    def __init__(self, pool: AsyncConnectionPool, database_url: str) -> None:
        self.pool = pool
        self.database_url = database_url
        self.snapshots: dict[int | None, Snapshot] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.listening = asyncio.Event()  # set while the listening connection is up

    def start(self) -> None:
        """Starts listening (at the app's start-up)."""
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._listen(), name="avl-fleet-listen"),
                           asyncio.create_task(self._reload(), name="avl-fleet-reload")]

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def list(self, conn: AsyncConnection, scope: int | None, *, compact: bool, show: bool,
                   status: str | None, if_none_match: str | None) -> Rendered | None:
        """The scope's list as the database has it now (loaded on first use, then checked), or None
        when it is to be answered by the database: not listening (changes may go untold, and a
        snapshot would not be dropped when they resume), or a first load that could not settle."""
        self.start()
        if not self.listening.is_set():
            return None
        snapshot = self._snapshot(scope)
        async with snapshot.lock:
            if not snapshot.loaded:
                now_us = await snapshot.load(conn)
                if now_us is None:
                    log.warning("fleet: transactions kept running for %s s; answering from the database", SETTLE_S)
                    return None
            now_us = await snapshot.validate(conn)
            return snapshot.render(now_us, compact=compact, show=show, status=status, if_none_match=if_none_match)

    @staticmethod
    async def once(conn: AsyncConnection, scope: int | None, *, show: bool, status: str | None) -> bytes:
        """The compact list without keeping a snapshot (when snapshots are off or not usable)."""
        snapshot = Snapshot(scope)
        now_us = await snapshot.load(conn, kept=False)
        assert now_us is not None
        return snapshot.render(now_us, compact=True, show=show, status=status, if_none_match=None).body

    def _snapshot(self, scope: int | None) -> Snapshot:
        now = time.monotonic()
        for key in [k for k, s in self.snapshots.items() if now - s.used_at > IDLE_S and not s.lock.locked()]:
            del self.snapshots[key]
        snapshot = self.snapshots.get(scope)
        if snapshot is None:
            if len(self.snapshots) >= MAX_SNAPSHOTS:
                del self.snapshots[min(self.snapshots, key=lambda k: self.snapshots[k].used_at)]
            snapshot = self.snapshots[scope] = Snapshot(scope)
        snapshot.used_at = now
        return snapshot

    def notify(self, channel: str, payload: str) -> None:
        """One notification: marks what it concerns in every snapshot."""
        try:
            data = json.loads(payload)
            if channel == "avl_positions":
                ids, new = [int(i) for i in data.get("devices", [])], False
            elif channel == "avl_devices":
                ids, new = [int(data["id"])], True
            else:
                accounts = [int(i) for i in data.get("accounts", [])]
                if any([s.notified_accounts(accounts) for s in self.snapshots.values()]):
                    self._wake.set()
                return
        except (ValueError, TypeError, KeyError, AttributeError):
            log.warning("fleet: unexpected %s payload %r", channel, payload[:200])
            return
        if any([s.notified_devices(ids, new=new) for s in self.snapshots.values()]):
            self._wake.set()

    async def _listen(self) -> None:
        lost = False
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                        self.database_url, autocommit=True, application_name=LISTEN_NAME) as conn:
                    for channel in CHANNELS:
                        await conn.execute(f"LISTEN {channel}")
                    # Whatever was told while nobody listened is lost: every snapshot starts again.
                    self.snapshots.clear()
                    self.listening.set()
                    if lost:
                        log.warning("fleet: listening again; snapshots reloaded on their next use")
                    lost = False
                    async for note in conn.notifies():
                        self.notify(note.channel, note.payload)
            except asyncio.CancelledError:
                self.listening.clear()
                raise
            except Exception as exc:  # whatever ended it, the list is answered by the database meanwhile
                self.listening.clear()
                if not lost:
                    log.warning("fleet: listening connection lost (%s); answering from the database until it is back",
                                (str(exc).splitlines() or [type(exc).__name__])[0])
                lost = True
            else:
                self.listening.clear()
            await asyncio.sleep(RECONNECT_S)

    async def _reload(self) -> None:
        """Reloads the notified rows, a few notifications at a time."""
        while True:
            await self._wake.wait()
            await asyncio.sleep(COALESCE_S)
            self._wake.clear()
            for snapshot in list(self.snapshots.values()):
                if not snapshot.loaded or not (snapshot.dirty or snapshot.dirty_accounts):
                    continue
                try:
                    async with self.pool.connection() as conn, snapshot.lock:
                        await snapshot.reload_dirty(conn)
                except (psycopg.Error, OSError) as exc:  # the next request (or notification) tries again
                    log.warning("fleet: reloading notified vehicles failed: %s", str(exc).splitlines()[0])
                    await asyncio.sleep(RECONNECT_S)
                    self._wake.set()
