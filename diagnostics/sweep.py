"""The fleet sweep: which devices are silent, vectorised over the whole fleet.

A device is silent when its last report is older than ``silent_after_intervals`` times its
expected interval in the state it was last seen in: moving (its learned cadence, else the
declared interval) or parked (the declared parked cadence, else the learned one, else the
``parked_interval_s`` default). Devices that never reported are left to certification. When a
large share of the devices that were active in the last day go silent together, that is a
platform or network incident: one incident, not thousands of device tickets.

How a million devices take well under a second: what a device is expected to do (its cadence by
state, whether its line and account are active: ``devices``, ``accounts``, ``device_cadence``)
changes rarely, so the worker's :class:`Sweeper` keeps it in numpy arrays between sweeps and
re-reads only the devices that ``sweep_changes`` names (migration 0018). What changes with every
report (``latest_positions``: the last arrival and the state the vehicle was in) is read whole,
three columns, as one row of byte strings (``string_agg`` of each value's binary form) that
numpy takes without a Python object per device. Both reads share one REPEATABLE READ snapshot,
so the arrays are those a full read in that snapshot gives (tests/diagnostics/test_sweep.py).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg

from diagnostics.steps.reporting import CADENCE_MIN_SAMPLES, ON_BACKUP_BELOW_MV, VOLTAGE_RANGE

ACTIVE_WINDOW_S = 86_400.0

# Per device: the moving interval, the parked one (never shorter than moving) and whether it is
# serviceable, by the rules of diagnostics.steps.reporting.cadence_for. {where} narrows it to the
# changed devices. Every aggregated value is non-NULL: string_agg skips NULLs, which would shift
# the arrays against each other.
PROFILE_SQL = """
SELECT count(*), string_agg(int8send(id), ''), string_agg(float8send(moving_s), ''),
       string_agg(float8send(parked_s), ''), string_agg(boolsend(ok), '')
FROM (SELECT id, coalesce(moving_s, 'NaN') AS moving_s, coalesce(greatest(parked_s, moving_s), 'NaN') AS parked_s, ok
      FROM (SELECT d.id::int8 AS id,
                   CASE WHEN c.moving_samples >= {min} THEN c.moving_interval_s ELSE d.report_interval_s END::float8
                       AS moving_s,
                   coalesce(d.parked_interval_s, CASE WHEN c.parked_samples >= {min} THEN c.parked_interval_s END,
                            %(parked_default_s)s)::float8 AS parked_s,
                   coalesce(a.status = 'active' AND d.line_status = 'active', false) AS ok
            FROM devices d
            JOIN accounts a ON a.id = d.account_id
            LEFT JOIN device_cadence c ON c.device_id = d.id
            {where}) p) f
""".replace("{min}", str(CADENCE_MIN_SAMPLES))
CHANGED_WHERE = "WHERE d.id = ANY(%(devices)s::int8[]) OR d.account_id = ANY(%(accounts)s::int8[])"
# Per reporting device: the last arrival of anything from it (microseconds since 2000-01-01, as
# timestamptz_send has it) and whether its latest report was made parked.
LATEST_SQL = """
SELECT count(*), string_agg(int8send(device_id), ''), string_agg(timestamptz_send(last_received_at), ''),
       string_agg(boolsend(ignition IS FALSE OR (ignition IS NULL AND NOT coalesce(speed_kmh > 3, false))), '')
FROM latest_positions
"""
# The log rows this snapshot sees are the changes not yet in memory; rows committed later stay for the next sweep.
TAKE_CHANGES_SQL = """
WITH taken AS (DELETE FROM sweep_changes RETURNING device_id, account_id)
SELECT coalesce(array_agg(DISTINCT device_id) FILTER (WHERE device_id IS NOT NULL), '{}'),
       coalesce(array_agg(DISTINCT account_id) FILTER (WHERE account_id IS NOT NULL), '{}')
FROM taken
"""
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01T00:00Z in microseconds since 1970
_TS_INFINITY = np.iinfo(np.int64).max
Row = tuple[Any, ...]  # one row of PROFILE_SQL or LATEST_SQL


@dataclass
class Fleet:
    """What the sweep expects of each device it watches, sorted by device id."""

    ids: np.ndarray  # int64
    moving_s: np.ndarray  # expected seconds between reports while moving
    parked_s: np.ndarray  # ... and while parked (never less than moving)
    ok: np.ndarray  # line and account active

    @classmethod
    def from_row(cls, row: Row) -> Fleet:
        """PROFILE_SQL's one row as arrays, in id order."""
        n = int(row[0])
        if n == 0:
            return cls(np.empty(0, np.int64), np.empty(0), np.empty(0), np.empty(0, bool))
        ids, moving, parked, ok = (_array(row[1], ">i8"), _array(row[2], ">f8"), _array(row[3], ">f8"),
                                   _array(row[4], "u1").astype(bool))
        if not len(ids) == len(moving) == len(parked) == len(ok) == n:
            raise ValueError(f"sweep: device profile arrays of {len(ids)}/{len(moving)}/{len(parked)}/{len(ok)}"
                             f" values for {n} devices")
        order = np.argsort(ids, kind="stable")
        return cls(ids[order], moving[order], parked[order], ok[order])

    def merged(self, changed: np.ndarray, fresh: Fleet) -> Fleet:
        """This fleet with ``fresh`` (the current rows of the changed devices still swept) in
        place; a device of ``changed`` missing from ``fresh`` has left the sweep."""
        gone = np.setdiff1d(changed, fresh.ids)
        keep = ~np.isin(self.ids, gone) if gone.size else np.ones(len(self.ids), bool)
        ids, moving, parked, ok = self.ids[keep], self.moving_s[keep], self.parked_s[keep], self.ok[keep]
        pos = np.searchsorted(ids, fresh.ids)
        found = pos < len(ids)
        found[found] = ids[pos[found]] == fresh.ids[found]
        at = pos[found]
        moving[at], parked[at], ok[at] = fresh.moving_s[found], fresh.parked_s[found], fresh.ok[found]
        new = ~found
        if new.any():
            ids = np.concatenate((ids, fresh.ids[new]))
            moving = np.concatenate((moving, fresh.moving_s[new]))
            parked = np.concatenate((parked, fresh.parked_s[new]))
            ok = np.concatenate((ok, fresh.ok[new]))
            order = np.argsort(ids, kind="stable")
            ids, moving, parked, ok = ids[order], moving[order], parked[order], ok[order]
        return Fleet(ids, moving, parked, ok)


def _array(data: Any, dtype: str) -> np.ndarray:
    """A string_agg of binary values as a native-order numpy array (a copy: bytes are read-only)."""
    if data is None:
        return np.empty(0, np.dtype(dtype).newbyteorder("="))
    return np.frombuffer(data, dtype=dtype).astype(np.dtype(dtype).newbyteorder("="))


def latest_arrays(row: Row, fleet: Fleet) -> tuple[np.ndarray, np.ndarray]:
    """LATEST_SQL's one row aligned with ``fleet``: last arrival (epoch seconds, NaN: never
    reported) and whether the vehicle was last seen parked."""
    n = len(fleet.ids)
    last, parked = np.full(n, np.nan), np.ones(n, bool)  # no report: parked, as SQL's NULL ignition and speed
    if int(row[0]) == 0 or n == 0:
        return last, parked
    ids, received_us, was_parked = _array(row[1], ">i8"), _array(row[2], ">i8"), _array(row[3], "u1").astype(bool)
    # Exact as extract(epoch ...)::float8: both are the correctly rounded quotient of the same integer.
    seconds = (received_us.astype(np.float64) + _PG_EPOCH_US) / 1e6
    seconds[received_us == _TS_INFINITY] = np.inf
    seconds[received_us == -_TS_INFINITY - 1] = -np.inf
    pos = np.searchsorted(fleet.ids, ids)
    hit = pos < n
    hit[hit] = fleet.ids[pos[hit]] == ids[hit]  # devices of no account are not swept
    last[pos[hit]], parked[pos[hit]] = seconds[hit], was_parked[hit]
    return last, parked


@dataclass
class SweepResult:
    devices: int
    active: int  # reported within the last day, on an active account
    silent: np.ndarray  # device ids, on active accounts
    newly_silent: int  # silent among the active ones
    storm: bool
    seconds: float
    figures: dict[str, float] = field(default_factory=dict)
    full: bool = True  # every device's profile was read (False: only the changed ones)


def classify(ids: np.ndarray, interval_s: np.ndarray, last_epoch: np.ndarray, serviceable: np.ndarray, *, now: float,
             silent_factor: float, storm_share: float, storm_min: int) -> tuple[np.ndarray, int, int, bool]:
    """Returns (silent ids, active count, newly silent count, storm?) over whole-fleet arrays."""
    age = now - last_epoch  # NaN for devices that never reported
    never = np.isnan(age)
    # A terminal that never reported is an installation matter (certification), not a fault to sweep for.
    silent = serviceable & ~never & (age > silent_factor * interval_s)
    active = serviceable & ~never & (age <= ACTIVE_WINDOW_S)
    newly = int((silent & active).sum())
    n_active = int(active.sum())
    storm = newly >= storm_min and n_active > 0 and newly / n_active >= storm_share
    return ids[silent], n_active, newly, storm


class Sweeper:
    """Sweeps the fleet, keeping what devices are expected to do in memory between sweeps.

    One sweeper consumes ``sweep_changes``: its first sweep reads every device and makes the log
    its own (``sweep_reader``); later ones read the devices the log names. A sweeper that finds
    the log taken by another (the sweep moved to another worker and back), or whose sweep failed,
    reads everything again. ``keep=False`` reads everything every time and leaves the log alone.
    """

    def __init__(self, *, keep: bool = True) -> None:
        self.keep = keep
        self.token = uuid.uuid4().hex
        self._fleet: Fleet | None = None
        self._parked_default_s: float | None = None

    async def sweep(self, conn: psycopg.AsyncConnection, *, silent_factor: float, storm_share: float, storm_min: int,
                    now: float | None = None, parked_interval_s: float = 600.0) -> SweepResult:
        """``conn``: autocommit, no transaction open (the sweep runs its own, REPEATABLE READ)."""
        started = time.perf_counter()
        try:
            try:
                fleet, latest, full, changed = await self._read(conn, parked_interval_s)
            except psycopg.errors.SerializationFailure:
                # Another sweeper or a truncate changed the log under this snapshot: read everything again.
                self._fleet = None
                fleet, latest, full, changed = await self._read(conn, parked_interval_s)
        except BaseException:
            self._fleet = None  # what is in memory may no longer match the log
            raise
        last, parked = latest_arrays(latest, fleet)
        fetched = time.perf_counter()
        interval = np.where(parked, fleet.parked_s, fleet.moving_s)
        silent, n_active, newly, storm = classify(fleet.ids, interval, last, fleet.ok,
                                                  now=time.time() if now is None else now, silent_factor=silent_factor,
                                                  storm_share=storm_share, storm_min=storm_min)
        done = time.perf_counter()
        return SweepResult(devices=len(fleet.ids), active=n_active, silent=silent, newly_silent=newly, storm=storm,
                           seconds=done - started, full=full,
                           figures={"fetch_s": fetched - started, "classify_s": done - fetched,
                                    "changed_devices": float(changed)})

    async def _read(self, conn: psycopg.AsyncConnection,
                    parked_default_s: float) -> tuple[Fleet, Row, bool, int]:
        """(the fleet, LATEST_SQL's row, whether every device was read, devices re-read) in one snapshot."""
        params = {"parked_default_s": parked_default_s}
        async with conn.transaction():
            cur = conn.cursor(binary=True)
            await cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            incremental = False
            if self.keep:
                await cur.execute("SELECT token FROM sweep_reader FOR UPDATE")
                row = await cur.fetchone()
                incremental = (row is not None and row[0] == self.token and self._fleet is not None
                               and self._parked_default_s == parked_default_s)
            if incremental:
                assert self._fleet is not None
                await cur.execute(TAKE_CHANGES_SQL)
                taken = await cur.fetchone()
                devices, accounts = (list(taken[0]), list(taken[1])) if taken else ([], [])
                fleet, changed = self._fleet, len(devices) + len(accounts)
                if changed:
                    await cur.execute(PROFILE_SQL.replace("{where}", CHANGED_WHERE),
                                      {**params, "devices": devices, "accounts": accounts})
                    fresh = Fleet.from_row(await _one(cur))
                    fleet = fleet.merged(np.array(devices, np.int64), fresh)
                    changed = len(fresh.ids) + int(np.setdiff1d(devices, fresh.ids).size)
            else:
                if self.keep:
                    await cur.execute("UPDATE sweep_reader SET token = %s", (self.token,))
                    await cur.execute("DELETE FROM sweep_changes")
                await cur.execute(PROFILE_SQL.replace("{where}", ""), params)
                fleet = Fleet.from_row(await _one(cur))
                changed = len(fleet.ids)
            await cur.execute(LATEST_SQL)
            latest = await _one(cur)
        if self.keep:
            self._fleet, self._parked_default_s = fleet, parked_default_s
        return fleet, latest, not incremental, changed


async def _one(cur: psycopg.AsyncCursor[Row]) -> Row:
    row = await cur.fetchone()
    assert row is not None  # an aggregate always returns one row
    return row


async def sweep(conn: psycopg.AsyncConnection, *, silent_factor: float, storm_share: float, storm_min: int,
                now: float | None = None, parked_interval_s: float = 600.0) -> SweepResult:
    """One full sweep, keeping nothing (the worker keeps a :class:`Sweeper`)."""
    return await Sweeper(keep=False).sweep(conn, silent_factor=silent_factor, storm_share=storm_share,
                                           storm_min=storm_min, now=now, parked_interval_s=parked_interval_s)


# The quality sweep: devices that report, but whose latest report looks wrong -------------------------
# A reporting device is never silent, so the silence sweep never looks at a dead GPS or a cut supply.
# These are cheap candidates from the latest positions alone; the checklist, which reads the
# device's history, decides (a tunnel is one invalid fix, a dead receiver is a streak of them).
QUALITY_SQL = """
SELECT d.id
FROM devices d
JOIN accounts a ON a.id = d.account_id AND a.status = 'active' AND d.line_status = 'active'
JOIN latest_positions l ON l.device_id = d.id
LEFT JOIN vehicles v ON v.id = d.vehicle_id
WHERE l.last_received_at > now() - make_interval(secs => %(fresh_s)s)
  AND ((NOT l.valid OR l.flags & 4 <> 0) AND (l.ignition OR (l.ignition IS NULL AND coalesce(l.speed_kmh, 0) > 3))
       OR l.power_mv IS NOT NULL AND v.supply_voltage_v IS NOT NULL
          AND (l.power_mv < %(backup)s OR l.power_mv NOT BETWEEN
               CASE v.supply_voltage_v WHEN 24 THEN %(low24)s ELSE %(low12)s END
               AND CASE v.supply_voltage_v WHEN 24 THEN %(high24)s ELSE %(high12)s END))
"""


async def quality_candidates(conn: psycopg.AsyncConnection, fresh_s: float) -> list[int]:
    """Devices heard from within ``fresh_s`` whose latest report has no usable fix while driving,
    or a supply voltage off the vehicle's declaration."""
    (low12, high12), (low24, high24) = VOLTAGE_RANGE[12], VOLTAGE_RANGE[24]
    cur = await conn.execute(QUALITY_SQL, {"fresh_s": fresh_s, "backup": ON_BACKUP_BELOW_MV, "low12": low12,
                                           "high12": high12, "low24": low24, "high24": high24})
    return [int(r[0]) for r in await cur.fetchall()]
