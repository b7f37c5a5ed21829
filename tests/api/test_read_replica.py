"""History-type queries go to a read replica when one is configured: a real PostgreSQL
streaming replica made with pg_basebackup from a throwaway primary."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import uvicorn

from api.app import create_app
from avl.admin import create_token
from avl.db import policies
from avl.db.migrate import migrate
from avl.embedded import LocalPostgres, free_port
from tests.api.conftest import _Server
from tests.ingest.harness import register


def _replica_of(primary: LocalPostgres, directory: Path) -> LocalPostgres:
    replica = LocalPostgres(directory, free_port(), durable=False)
    replica.pgdata.mkdir(parents=True)
    if replica.user:
        shutil.chown(replica.pgdata, replica.user, replica.user)
        os.chmod(replica.pgdata, 0o700)
    primary._run("pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port), "-U", "avl", "-D", str(replica.pgdata),
                 "-R", "-X", "stream", "-c", "fast")
    replica.start()
    return replica


def test_history_is_read_from_the_replica(workdir: Path) -> None:
    base = workdir / f"replica-{time.monotonic_ns()}"
    primary = LocalPostgres(base / "primary", free_port(), durable=False)
    primary.start()
    replica = None
    try:
        with psycopg.connect(primary.url) as conn:
            migrate(conn)
            policies.apply(conn, retention_days=30, compress_after_days=7, partitions_ahead_days=1)
        device = register(primary.url, [("356307042441013", "teltonika")], account="Flota Réplica")["356307042441013"]
        with psycopg.connect(primary.url) as conn:
            token = create_token(conn, "client", name="r", account="Flota Réplica")[1]
        replica = _replica_of(primary, base / "replica")
        now = datetime.now(UTC).replace(microsecond=0)
        with psycopg.connect(primary.url) as conn:  # reports written on the primary...
            for i in range(10):
                conn.execute("INSERT INTO positions (device_id, fix_time, received_at, valid, latitude, longitude,"
                             " protocol) VALUES (%s, %s, now(), true, %s, -66.9, 'teltonika')",
                             (device, now - timedelta(minutes=10 - i), 10.48 + i * 1e-3))
        with psycopg.connect(replica.url, autocommit=True) as rconn:
            assert rconn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
            for _ in range(100):  # ...reach the replica by streaming replication
                if rconn.execute("SELECT count(*) FROM positions").fetchone() == (10,):
                    break
                time.sleep(0.05)
        port = free_port()
        server = _Server(uvicorn.Config(create_app(primary.url, read_url=replica.url), host="127.0.0.1", port=port,
                                        log_level="warning"))
        thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.02)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}) as c:
                r = c.get(f"/api/v1/vehicles/{device}/history",
                          params={"from": (now - timedelta(hours=1)).isoformat(), "to": now.isoformat()})
                assert r.status_code == 200, r.text
                assert len(r.json()["points"]) == 10
            with psycopg.connect(replica.url, autocommit=True) as rconn:
                readers = rconn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'avl-api-read'"
                                        ).fetchone()
            assert readers is not None and readers[0] >= 1  # the API's read pool is connected to the replica
        finally:
            server.should_exit = True
            thread.join(10)
    finally:
        if replica is not None:
            replica.stop("immediate")
        primary.stop("immediate")
