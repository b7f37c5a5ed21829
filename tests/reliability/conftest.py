"""A PostgreSQL cluster the fault tests may kill, shared by the tests of a module."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from avl.db.migrate import migrate
from avl.embedded import LocalPostgres
from tests.reliability.harness import killable_postgres, restart_postgres


@pytest.fixture(scope="module")
def killable_pg(workdir: Path) -> Iterator[LocalPostgres]:
    with killable_postgres(workdir) as pg:
        yield pg


@pytest.fixture
def killable_db(killable_pg: LocalPostgres) -> Iterator[tuple[LocalPostgres, str]]:
    """(the cluster, the URL of a fresh migrated database in it); the cluster is up again after."""
    if not killable_pg.running():
        restart_postgres(killable_pg)
    name = f"avl_k_{uuid.uuid4().hex[:10]}"
    server = psycopg.conninfo.make_conninfo(killable_pg.url, dbname="postgres")
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = psycopg.conninfo.make_conninfo(killable_pg.url, dbname=name)
    with psycopg.connect(url) as conn:
        migrate(conn)
    yield killable_pg, url
    if not killable_pg.running():
        restart_postgres(killable_pg)
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
