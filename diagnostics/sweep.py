"""The fleet sweep: which devices are silent, vectorised over the latest positions.

A device is silent when its last report is older than ``silent_after_intervals`` times its
expected interval in the state it was last seen in: moving (its learned cadence, else the
declared interval) or parked (the declared parked cadence, else the learned one, else the
``parked_interval_s`` default). Devices that never reported are left to certification. When a large share of the devices that were active in the last day go
silent together, that is a platform or network incident: one incident, not thousands of
device tickets.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import psycopg

from diagnostics.steps.reporting import ON_BACKUP_BELOW_MV, VOLTAGE_RANGE

ACTIVE_WINDOW_S = 86_400.0

# Fixed-width binary COPY rows parse straight into numpy arrays (no per-row Python objects).
CADENCE_MIN_SAMPLES = 6  # as diagnostics.steps.reporting
SWEEP_COPY = """
COPY (SELECT id, CASE WHEN parked THEN greatest(parked_s, moving_s) ELSE moving_s END, last, ok FROM (
      SELECT d.id::int8 AS id,
             CASE WHEN c.moving_samples >= {min} THEN c.moving_interval_s ELSE d.report_interval_s END::float8 AS moving_s,
             coalesce(d.parked_interval_s, CASE WHEN c.parked_samples >= {min} THEN c.parked_interval_s END,
                      %s)::float8 AS parked_s,
             (l.ignition IS FALSE OR (l.ignition IS NULL AND NOT coalesce(l.speed_kmh > 3, false))) AS parked,
             coalesce(extract(epoch FROM l.last_received_at)::float8, 'NaN'::float8) AS last,
             coalesce(a.status = 'active' AND d.line_status = 'active', false) AS ok
      FROM devices d
      JOIN accounts a ON a.id = d.account_id
      LEFT JOIN latest_positions l ON l.device_id = d.id
      LEFT JOIN device_cadence c ON c.device_id = d.id) f) TO STDOUT (FORMAT BINARY)
""".replace("{min}", str(CADENCE_MIN_SAMPLES))
_ROW = np.dtype([("fields", ">i2"), ("len_id", ">i4"), ("id", ">i8"), ("len_interval", ">i4"), ("interval", ">f8"),
                 ("len_last", ">i4"), ("last", ">f8"), ("len_ok", ">i4"), ("ok", "u1")])
_HEADER = 19  # PGCOPY signature (11), flags (4), header extension length (4)


def parse_copy(data: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The sweep's binary COPY output as arrays: ids, expected intervals, last arrival (epoch s), serviceable."""
    body = memoryview(data)[_HEADER:len(data) - 2]  # trailer: int16 -1
    rows = np.frombuffer(body, dtype=_ROW)
    return (rows["id"].astype(np.int64), rows["interval"].astype(np.float64), rows["last"].astype(np.float64),
            rows["ok"].astype(bool))


@dataclass
class SweepResult:
    devices: int
    active: int  # reported within the last day, on an active account
    silent: np.ndarray  # device ids, on active accounts
    newly_silent: int  # silent among the active ones
    storm: bool
    seconds: float
    figures: dict[str, float] = field(default_factory=dict)


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


async def sweep(conn: psycopg.AsyncConnection, *, silent_factor: float, storm_share: float, storm_min: int,
                now: float | None = None, parked_interval_s: float = 600.0) -> SweepResult:
    started = time.perf_counter()
    chunks = []
    async with conn.cursor().copy(SWEEP_COPY, (parked_interval_s,)) as copy:
        async for chunk in copy:
            chunks.append(bytes(chunk))
    ids, interval, last, ok = parse_copy(b"".join(chunks))
    fetched = time.perf_counter()
    silent, n_active, newly, storm = classify(ids, interval, last, ok, now=time.time() if now is None else now, silent_factor=silent_factor,
                                              storm_share=storm_share, storm_min=storm_min)
    done = time.perf_counter()
    return SweepResult(devices=len(ids), active=n_active, silent=silent, newly_silent=newly, storm=storm,
                       seconds=done - started, figures={"fetch_s": fetched - started, "classify_s": done - fetched})


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
