"""The fleet sweep: which devices are silent, vectorised over the latest positions.

A device is silent when its last report is older than ``silent_after_intervals`` times its
expected interval (devices that never reported are left to certification). When a large share of the devices that were active in the last day go
silent together, that is a platform or network incident: one incident, not thousands of
device tickets.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import psycopg

ACTIVE_WINDOW_S = 86_400.0

SWEEP_SQL = """
SELECT d.id, d.report_interval_s, coalesce(extract(epoch FROM l.last_received_at), 'NaN'::float8),
       (a.status = 'active' AND d.line_status = 'active')
FROM devices d
JOIN accounts a ON a.id = d.account_id
LEFT JOIN latest_positions l ON l.device_id = d.id
"""


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


async def sweep(conn: psycopg.AsyncConnection, *, silent_factor: float, storm_share: float, storm_min: int) -> SweepResult:
    started = time.perf_counter()
    cur = await conn.execute(SWEEP_SQL)
    rows = await cur.fetchall()
    fetched = time.perf_counter()
    if rows:
        ids, interval, last, ok = (np.array(col) for col in zip(*rows, strict=True))
        ids, interval, last = ids.astype(np.int64), interval.astype(np.float64), last.astype(np.float64)
        ok = ok.astype(bool)
    else:
        ids = np.empty(0, np.int64)
        interval = last = np.empty(0)
        ok = np.empty(0, bool)
    silent, n_active, newly, storm = classify(ids, interval, last, ok, now=time.time(), silent_factor=silent_factor,
                                              storm_share=storm_share, storm_min=storm_min)
    done = time.perf_counter()
    return SweepResult(devices=len(rows), active=n_active, silent=silent, newly_silent=newly, storm=storm,
                       seconds=done - started, figures={"fetch_s": fetched - started, "classify_s": done - fetched})
