"""Real services for the tests: a throwaway PostgreSQL cluster and a throwaway Mosquitto,
started once per session on free ports and torn down after. Set AVL_TEST_DATABASE_URL to
run against an existing server (e.g. one with TimescaleDB) instead of the throwaway cluster.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from avl.db.migrate import migrate
from avl.embedded import LocalBroker, LocalPostgres, free_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="avl-test-"))
    os.chmod(path, 0o755)  # the cluster runs as 'postgres' when tests run as root
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server(workdir: Path) -> Iterator[str]:
    """A server URL (maintenance database); the throwaway cluster unless AVL_TEST_DATABASE_URL."""
    external = os.environ.get("AVL_TEST_DATABASE_URL")
    if external:
        yield external
        return
    pg = LocalPostgres(workdir / "pg", free_port(), durable=False, database="postgres")
    url = pg.start()
    yield url
    pg.stop("immediate")


def _with_database(server_url: str, name: str) -> str:
    return psycopg.conninfo.make_conninfo(server_url, dbname=name)


@pytest.fixture(scope="session")
def template_db(pg_server: str) -> Iterator[str]:
    """A migrated template database; each test's database is a cheap copy of it."""
    name = f"avl_tpl_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    with psycopg.connect(_with_database(pg_server, name)) as conn:
        migrate(conn)
    yield name
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _fresh(pg_server: str, template: str | None) -> Iterator[str]:
    name = f"avl_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    yield _with_database(pg_server, name)
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db_url(pg_server: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    yield from _fresh(pg_server, template_db)


@pytest.fixture
def empty_db_url(pg_server: str) -> Iterator[str]:
    """A fresh database with no schema."""
    yield from _fresh(pg_server, None)


@pytest.fixture(scope="session")
def mqtt_broker(workdir: Path) -> Iterator[LocalBroker]:
    if LocalBroker.mosquitto_path() is None:
        pytest.fail("mosquitto is not installed: the test command installs it (apt-get install mosquitto)")
    broker = LocalBroker(workdir / "broker", free_port())
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def avl_env(db_url: str, tmp_path: Path) -> dict[str, str]:
    """Environment for running the `avl` command against the test database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVL_")}
    env.update({"AVL_DATABASE_URL": db_url, "AVL_DATA_DIR": str(tmp_path / "data"), "AVL_LOG_LEVEL": "WARNING"})
    return env
