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

# Fixed-width binary COPY rows parse straight into numpy arrays (no per-row Python objects).
SWEEP_COPY = """
COPY (SELECT d.id::int8, d.report_interval_s::int4,
             coalesce(extract(epoch FROM l.last_received_at)::float8, 'NaN'::float8),
             coalesce(a.status = 'active' AND d.line_status = 'active', false)
      FROM devices d
      JOIN accounts a ON a.id = d.account_id
      LEFT JOIN latest_positions l ON l.device_id = d.id) TO STDOUT (FORMAT BINARY)
"""
_ROW = np.dtype([("fields", ">i2"), ("len_id", ">i4"), ("id", ">i8"), ("len_interval", ">i4"), ("interval", ">i4"),
                 ("len_last", ">i4"), ("last", ">f8"), ("len_ok", ">i4"), ("ok", "u1")])
_HEADER = 19  # PGCOPY signature (11), flags (4), header extension length (4)


def parse_copy(data: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The sweep's binary COPY output as arrays: ids, intervals, last arrival (epoch s), serviceable."""
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
                now: float | None = None) -> SweepResult:
    started = time.perf_counter()
    chunks = []
    async with conn.cursor().copy(SWEEP_COPY) as copy:
        async for chunk in copy:
            chunks.append(bytes(chunk))
    ids, interval, last, ok = parse_copy(b"".join(chunks))
    fetched = time.perf_counter()
    silent, n_active, newly, storm = classify(ids, interval, last, ok, now=time.time() if now is None else now, silent_factor=silent_factor,
                                              storm_share=storm_share, storm_min=storm_min)
    done = time.perf_counter()
    return SweepResult(devices=len(ids), active=n_active, silent=silent, newly_silent=newly, storm=storm,
                       seconds=done - started, figures={"fetch_s": fetched - started, "classify_s": done - fetched})
