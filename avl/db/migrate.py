"""Versioned schema migrations: ``NNNN_name.sql`` files applied in order, each once.

A version may come in variants (``0002_positions.timescale.sql`` / ``.native.sql``): the
TimescaleDB one is chosen when the server offers the extension, the native one otherwise.
Concurrent migrators (several processes starting together) serialise on an advisory lock.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

import psycopg

log = logging.getLogger("avl.db")

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)(?:\.(native|timescale))?\.sql$")
_LOCK = 7_412_001  # advisory lock key for migrations


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    variant: str | None  # None (common), "native" or "timescale"
    sql: str


def available() -> list[Migration]:
    out = []
    for entry in resources.files("avl.db").joinpath("migrations").iterdir():
        m = _FILE.match(entry.name)
        if m:
            out.append(Migration(int(m[1]), m[2], m[3], entry.read_text(encoding="utf-8")))
    return sorted(out, key=lambda m: (m.version, m.variant or ""))


def timescale_available(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')").fetchone()
    return bool(row and row[0])


def plan(migrations: list[Migration], timescale: bool) -> list[Migration]:
    """The migration to run for each version, given whether TimescaleDB is available."""
    wanted = "timescale" if timescale else "native"
    chosen: dict[int, Migration] = {}
    for m in migrations:
        if m.variant in (None, wanted):
            chosen[m.version] = m
    return [chosen[v] for v in sorted(chosen)]


def applied(conn: psycopg.Connection) -> dict[int, str]:
    rows = conn.execute("SELECT version, coalesce(variant, '') FROM schema_migrations").fetchall()
    return {int(v): str(variant) for v, variant in rows}


def storage_mode(conn: psycopg.Connection) -> str:
    """'timescale' or 'native': how the positions table was created."""
    row = conn.execute("SELECT variant FROM schema_migrations WHERE variant IS NOT NULL ORDER BY version LIMIT 1").fetchone()
    return str(row[0]) if row else "native"


def migrate(conn: psycopg.Connection) -> list[str]:
    """Applies what is missing; returns the names applied (empty when up to date)."""
    conn.autocommit = True
    done: list[str] = []
    # A session-level lock: concurrent `CREATE TABLE IF NOT EXISTS` can still collide.
    conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK,))
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, variant text,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        have = applied(conn)
        timescale = timescale_available(conn)
        if not have:
            log.info("positions storage: %s", "TimescaleDB hypertable" if timescale
                     else "native daily partitions (no TimescaleDB on this server)")
        for m in plan(available(), timescale):
            if m.version in have:
                continue
            with conn.transaction():
                conn.execute(m.sql.encode())
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, variant) VALUES (%s, %s, %s)",
                    (m.version, m.name, m.variant),
                )
            label = f"{m.version:04d}_{m.name}" + (f" ({m.variant})" if m.variant else "")
            log.info("applied migration %s", label)
            done.append(label)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK,))
    return done
