"""The TimescaleDB path, checked by parsing the DDL it runs (these machines have no
TimescaleDB; with AVL_TEST_DATABASE_URL on a TimescaleDB server the last test runs it)."""

from __future__ import annotations

import os

import psycopg
import pytest
from pglast import ast, parse_sql

from avl.db.migrate import available, migrate, storage_mode
from avl.db.policies import timescale_policy_sql


def _sql(variant: str) -> str:
    return next(m.sql for m in available() if m.variant == variant)


def _columns(sql: str) -> list[tuple[str, str]]:
    for raw in parse_sql(sql):
        stmt = raw.stmt
        if isinstance(stmt, ast.CreateStmt) and stmt.relation.relname == "positions":
            return [(c.colname, ".".join(n.sval for n in c.typeName.names)) for c in stmt.tableElts
                    if isinstance(c, ast.ColumnDef)]
    raise AssertionError("no CREATE TABLE positions")


def _calls(sql: str) -> dict[str, list[ast.FuncCall]]:
    out: dict[str, list[ast.FuncCall]] = {}
    for raw in parse_sql(sql):
        stmt = raw.stmt
        if isinstance(stmt, ast.SelectStmt) and stmt.targetList:
            for target in stmt.targetList:
                if isinstance(target.val, ast.FuncCall):
                    out.setdefault(target.val.funcname[-1].sval, []).append(target.val)
    return out


def test_both_paths_create_the_same_positions_columns() -> None:
    assert _columns(_sql("timescale")) == _columns(_sql("native"))


def test_hypertable_is_on_fix_time_with_daily_chunks_and_no_space_partitioning() -> None:
    (call,) = _calls(_sql("timescale"))["create_hypertable"]
    positional = [a.val.sval for a in call.args if isinstance(a, ast.A_Const)]
    named = {a.name: a for a in call.args if isinstance(a, ast.NamedArgExpr)}
    assert positional == ["positions", "fix_time"]
    assert "partitioning_column" not in named and "number_partitions" not in named
    assert "chunk_time_interval" in named


def test_compression_is_segmented_by_device_and_ordered_by_time_descending() -> None:
    alters = [r.stmt for r in parse_sql(_sql("timescale")) if isinstance(r.stmt, ast.AlterTableStmt)]
    options = {}
    for alter in alters:
        for cmd in alter.cmds:
            for opt in cmd.def_ or ():
                options[f"{opt.defnamespace}.{opt.defname}"] = getattr(opt.arg, "sval", None)
    assert "timescaledb.compress" in options
    assert options["timescaledb.compress_segmentby"] == "device_id"
    assert options["timescaledb.compress_orderby"] == "fix_time DESC"


def test_hourly_continuous_aggregate_has_real_time_aggregation_and_a_refresh_policy() -> None:
    sql = _sql("timescale")
    (view,) = [r.stmt for r in parse_sql(sql) if isinstance(r.stmt, ast.CreateTableAsStmt)]
    assert view.into.rel.relname == "positions_hourly"
    opts = {f"{o.defnamespace}.{o.defname}": o.arg for o in view.into.options}
    assert "timescaledb.continuous" in opts
    assert opts["timescaledb.materialized_only"].sval == "false"
    assert "add_continuous_aggregate_policy" in _calls(sql)


def test_policy_statements_set_compression_and_retention_from_settings() -> None:
    statements = timescale_policy_sql(retention_days=400, compress_after_days=7)
    calls = [next(iter(_calls(sql % params))) for sql, params in statements]
    assert calls == ["remove_compression_policy", "add_compression_policy",
                     "remove_retention_policy", "add_retention_policy"]
    assert [p for _, p in statements if p] == [(7,), (400,)]


@pytest.mark.skipif(not os.environ.get("AVL_TEST_DATABASE_URL"), reason="needs AVL_TEST_DATABASE_URL on a TimescaleDB server")
def test_on_a_timescale_server_positions_is_a_hypertable(empty_db_url: str) -> None:
    with psycopg.connect(empty_db_url) as conn:
        if not conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone():
            pytest.skip("the server at AVL_TEST_DATABASE_URL has no TimescaleDB")
        migrate(conn)
        assert storage_mode(conn) == "timescale"
        row = conn.execute("SELECT num_dimensions, compression_enabled FROM timescaledb_information.hypertables"
                           " WHERE hypertable_name = 'positions'").fetchone()
        assert row == (1, True)
