"""Retention, compression and partition upkeep for the positions table.

Run at start-up and then periodically by the ingest service. TimescaleDB schedules its
own jobs once the policies exist; plain PostgreSQL needs partitions created ahead and
old ones dropped, which is what ``apply`` does there.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta

import psycopg

from avl.db.migrate import storage_mode

log = logging.getLogger("avl.db")


def timescale_policy_sql(retention_days: int, compress_after_days: int) -> list[tuple[str, tuple[object, ...]]]:
    """The statements that (re)set TimescaleDB's compression and retention policies."""
    return [
        ("SELECT remove_compression_policy('positions', if_exists => true)", ()),
        ("SELECT add_compression_policy('positions', make_interval(days => %s))", (compress_after_days,)),
        ("SELECT remove_retention_policy('positions', if_exists => true)", ()),
        ("SELECT add_retention_policy('positions', make_interval(days => %s))", (retention_days,)),
    ]


def ensure_partitions(conn: psycopg.Connection, first: date, last: date) -> None:
    day = first
    while day <= last:
        conn.execute("SELECT avl_ensure_position_partition(%s)", (day,))
        day += timedelta(days=1)


def apply(conn: psycopg.Connection, *, retention_days: int, compress_after_days: int, partitions_ahead_days: int) -> None:
    mode = storage_mode(conn)
    with conn.transaction():
        if mode == "timescale":
            for sql, params in timescale_policy_sql(retention_days, compress_after_days):
                conn.execute(sql, params)
            return
        today = datetime.now(UTC).date()
        ensure_partitions(conn, today - timedelta(days=2), today + timedelta(days=partitions_ahead_days))
        row = conn.execute("SELECT avl_drop_position_partitions(%s)", (retention_days,)).fetchone()
        if row and row[0]:
            log.info("retention: dropped %s daily position partitions older than %s days", row[0], retention_days)
