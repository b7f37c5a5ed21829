"""Schema migrations on a real PostgreSQL: complete, idempotent, and the positions table behaves."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from avl.db import policies
from avl.db.migrate import available, migrate, plan, storage_mode

TABLES = {
    "accounts", "vehicles", "devices", "installation_centers", "users", "api_tokens", "positions",
    "latest_positions", "device_events", "unknown_devices", "tickets", "ticket_activities", "certifications",
    "sms_messages", "diagnostic_runs", "geofences", "positions_quarantine", "schema_migrations",
}


def _tables(conn: psycopg.Connection) -> set[str]:
    rows = conn.execute(
        "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
    ).fetchall()
    return {r[0] for r in rows}


def test_migrate_creates_every_table_of_the_domain(empty_db_url: str) -> None:
    with psycopg.connect(empty_db_url) as conn:
        applied = migrate(conn)
        expected = [f"{m.version:04d}_{m.name}" + (f" ({m.variant})" if m.variant else "") for m in plan(available(), False)]
        assert applied == expected and "0002_positions (native)" in applied
        assert TABLES <= _tables(conn)
        assert storage_mode(conn) == "native"


def test_migrate_twice_is_a_no_op(empty_db_url: str) -> None:
    with psycopg.connect(empty_db_url) as conn:
        migrate(conn)
        before = conn.execute("SELECT version, applied_at FROM schema_migrations ORDER BY version").fetchall()
        assert migrate(conn) == []
        after = conn.execute("SELECT version, applied_at FROM schema_migrations ORDER BY version").fetchall()
        assert before == after


def test_concurrent_migrators_apply_each_migration_once(empty_db_url: str) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with psycopg.connect(empty_db_url) as conn:
                results.append(migrate(conn))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(len(r) for r in results) == [0, 0, len(plan(available(), False))]


def test_plan_picks_the_variant_for_the_server() -> None:
    migrations = available()
    with_ts, without = plan(migrations, timescale=True), plan(migrations, timescale=False)
    assert [m.version for m in with_ts] == [m.version for m in without] == sorted({m.version for m in migrations})
    assert [m.variant for m in with_ts if m.variant] == ["timescale"]
    assert [m.variant for m in without if m.variant] == ["native"]


def _device(conn: psycopg.Connection) -> int:
    row = conn.execute("INSERT INTO devices (identifier, protocol) VALUES ('356307042441013', 'teltonika') RETURNING id").fetchone()
    assert row is not None
    return int(row[0])


def _insert(conn: psycopg.Connection, device_id: int, fix_time: datetime) -> int:
    cur = conn.execute(
        "INSERT INTO positions (device_id, fix_time, received_at, valid, latitude, longitude, protocol)"
        " VALUES (%s, %s, now(), true, 10.5, -66.9, 'teltonika') ON CONFLICT DO NOTHING",
        (device_id, fix_time),
    )
    return cur.rowcount


def test_a_retransmitted_report_is_stored_once(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        policies.apply(conn, retention_days=30, compress_after_days=7, partitions_ahead_days=2)
        device = _device(conn)
        fix = datetime.now(UTC).replace(microsecond=0)
        assert _insert(conn, device, fix) == 1
        assert _insert(conn, device, fix) == 0
        count = conn.execute("SELECT count(*) FROM positions WHERE device_id = %s", (device,)).fetchone()
        assert count == (1,)


def test_positions_land_in_daily_partitions_and_retention_drops_old_days(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        device = _device(conn)
        now = datetime.now(UTC)
        old_day = (now - timedelta(days=40)).date()
        policies.ensure_partitions(conn, old_day, old_day)
        policies.apply(conn, retention_days=400, compress_after_days=7, partitions_ahead_days=2)
        _insert(conn, device, datetime.combine(old_day, datetime.min.time(), UTC) + timedelta(hours=3))
        _insert(conn, device, now)
        part = conn.execute(
            "SELECT tableoid::regclass::text FROM positions WHERE fix_time < now() - interval '30 days'"
        ).fetchone()
        assert part == (f"positions_{old_day:%Y%m%d}",)
        # Partitions exist ahead of today, so tomorrow's reports need no DDL on the hot path.
        ahead = (now + timedelta(days=2)).date()
        assert conn.execute("SELECT to_regclass(%s)", (f"positions_{ahead:%Y%m%d}",)).fetchone() != (None,)
        policies.apply(conn, retention_days=30, compress_after_days=7, partitions_ahead_days=2)
        remaining = conn.execute("SELECT count(*) FROM positions").fetchone()
        assert remaining == (1,)
        assert conn.execute("SELECT to_regclass(%s)", (f"positions_{old_day:%Y%m%d}",)).fetchone() == (None,)


def test_hourly_report_counts_per_device(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        policies.apply(conn, retention_days=30, compress_after_days=7, partitions_ahead_days=2)
        device = _device(conn)
        hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        for minute in (1, 2, 3):
            _insert(conn, device, hour + timedelta(minutes=minute))
        row = conn.execute("SELECT reports, valid_reports FROM positions_hourly WHERE device_id = %s AND hour = %s",
                           (device, hour)).fetchone()
        assert row == (3, 3)


def test_a_device_password_is_admitted_only_where_the_protocol_carries_one(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        conn.execute("INSERT INTO devices (identifier, protocol) VALUES ('1', 'wialon'), ('2', 'jt808'), ('3', 'gt06')")
        for identifier in ("1", "2"):  # Wialon's login password, JT808's authentication code
            conn.execute("UPDATE devices SET password_sha256 = sha256('x') WHERE identifier = %s", (identifier,))
        with pytest.raises(psycopg.errors.CheckViolation):  # GT06 carries none: it could never be checked
            conn.execute("UPDATE devices SET password_sha256 = sha256('x') WHERE identifier = '3'")
