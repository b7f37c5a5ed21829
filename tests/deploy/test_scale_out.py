"""Scale-out on one host, with real processes as deploy/ runs them.

Two `avl ingest` processes on the same device ports (SO_REUSEPORT: the kernel spreads TCP
connections and UDP flows between them) and in the same MQTT shared-subscription group on a
real Mosquitto, driven by the simulated fleet over every transport: both take a share of the
load, and every report a device got an ACK for is stored exactly once.

Two `avl diagnostics` workers on one database: exactly one holds the sweeper lock and sweeps;
when it dies, the other takes over.
"""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import psycopg

from avl.embedded import LocalBroker, free_port
from diagnostics.service import SWEEPER_LOCK
from simulators.fleet import PROTOCOLS, Behaviour, Fleet, FleetConfig
from tests.deploy.procs import AvlProcess, scrape, total
from tests.deploy.promql import PLANNED, TARGET_LABELS, alert_exprs, dashboard_exprs, parse

# Every transport the fleet speaks: TCP (teltonika, gt06, gl200, h02), HTTP (osmand),
# UDP (calamp) and MQTT (json). 24 vehicles per protocol.
VEHICLES = 24 * len(PROTOCOLS)
RUN_S = 10.0


def _free_ports() -> dict[str, int]:
    """One port per listening protocol, free for TCP and for UDP."""
    import socket

    ports: dict[str, int] = {}
    while len(ports) < len(PROTOCOLS) - 1:
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        if port not in ports.values():
            ports[[p for p in PROTOCOLS if p != "json"][len(ports)]] = port
    return ports


async def _until(condition: Callable[[], bool], timeout_s: float, every_s: float = 0.25) -> None:
    """Polls ``condition`` until it holds or ``timeout_s`` passes (the caller asserts after)."""
    for _ in range(int(timeout_s / every_s)):
        if condition():
            return
        await asyncio.sleep(every_s)


def _stored(db_url: str) -> dict[str, list[datetime]]:
    out: dict[str, list[datetime]] = defaultdict(list)
    with psycopg.connect(db_url) as conn:
        for ident, fix in conn.execute("SELECT d.identifier, p.fix_time FROM positions p"
                                       " JOIN devices d ON d.id = p.device_id").fetchall():
            out[ident].append(fix)
    return out


def _count(db_url: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM positions").fetchone()
    return int(row[0]) if row else 0


async def test_two_ingest_processes_share_ports_and_subscription_and_store_every_ack_once(
        db_url: str, tmp_path: Path, mqtt_broker: LocalBroker) -> None:
    ports = _free_ports()
    group = f"avl-ingest-{uuid.uuid4().hex[:8]}"
    fleet = Fleet(FleetConfig(vehicles=VEHICLES, protocols=PROTOCOLS, server="127.0.0.1", ports=ports,
                              mqtt_url=mqtt_broker.url, interval_s=30.0, time_scale=30.0, seed=21,
                              behaviour=Behaviour(ack_timeout_s=5.0, backoff_base_s=0.2, backoff_max_s=1.0,
                                                  connect_timeout_s=5.0)))
    assert fleet.provision(db_url, "Flota Escalada") == VEHICLES
    metrics_ports = [free_port(), free_port()]
    procs = []
    for i, metrics_port in enumerate(metrics_ports):
        env = AvlProcess.environment(
            AVL_DATABASE_URL=db_url, AVL_MQTT_URL=mqtt_broker.url, AVL_MQTT_GROUP=group,
            AVL_MQTT_CLIENT_ID=f"{group}-{i}", AVL_DATA_DIR=str(tmp_path / f"ingest-{i}"),
            AVL_METRICS_PORT=str(metrics_port), AVL_API_HOST="127.0.0.1", AVL_INGEST_HOST="127.0.0.1",
            AVL_PROTOCOLS=",".join(ports), AVL_PORTS=json.dumps(ports), AVL_LOG_LEVEL="INFO",
            AVL_BATCH_MAX_MS="5", AVL_INGEST_PROCESSES="1")  # one worker each, as one per container
        procs.append(AvlProcess(f"ingest-{i}", "ingest", env, tmp_path / f"ingest-{i}.log"))
    try:
        for p in procs:
            p.start()
        for p in procs:  # both listening and subscribed before the first device connects
            await asyncio.to_thread(p.wait_for_log, "mqtt: subscribed to $share/", 40)
        report = await fleet.run(duration_s=RUN_S, drain_s=10)
        acked = fleet.acked_reports()
        # MQTT reports are acknowledged by the broker: wait for ingest to commit them.
        await _until(lambda: _count(db_url) >= len(acked), 20)
        scraped = [scrape(port) for port in metrics_ports]
        frames = [m["avl_frames_total"] for m in scraped]
        with psycopg.connect(db_url) as conn:
            heartbeats = conn.execute("SELECT instance FROM platform_status WHERE component = 'ingest'").fetchall()
    finally:
        codes = [p.stop() for p in procs]
    logs = "\n".join(p.log() for p in procs)
    assert codes == [0, 0], logs[-3000:]
    assert "Traceback" not in logs, logs[-3000:]

    # The load was split: each process took a share of each transport.
    shares: dict[str, list[float]] = {}
    for transport in ("tcp", "http", "udp", "mqtt"):
        shares[transport] = [total(f, transport=transport) for f in frames]
    print("frames per process:", {t: [int(x) for x in v] for t, v in shares.items()})
    for transport, (a, b) in shares.items():
        assert a > 0 and b > 0, (transport, shares)
    # 96 TCP connections hashed over two sockets: neither gets less than a fifth.
    a, b = shares["tcp"]
    assert min(a, b) / (a + b) > 0.2, shares
    # Both processes heartbeat under their own host:pid.
    assert {h[0].rsplit(":", 1)[1] for h in heartbeats} >= {str(p.pid) for p in procs}

    # The dashboard's and alerts' label matchers name label values the running service produces.
    for where, expr in dashboard_exprs() + alert_exprs():
        for sel in parse(expr)[0]:
            wanted = {label: value for label, op, value in sel.matchers if op == "=" and label not in TARGET_LABELS}
            if sel.metric in PLANNED or sel.metric == "up" or not wanted:
                continue
            assert any(all(dict(labels).get(k) == v for k, v in wanted.items())
                       for m in scraped for labels in m.get(sel.metric, {})), (where, sel)

    # Every acknowledged report stored, exactly once; nothing stored that was not acknowledged.
    assert report["outbox"] == 0 and report["acknowledged"] == len(acked) > VEHICLES * 3, report
    stored = _stored(db_url)
    acked_by: dict[str, list[datetime]] = defaultdict(list)
    for ident, fix in acked:
        acked_by[ident].append(fix)
    assert set(acked_by) == {s.identifier for s in fleet.specs}  # every vehicle got through
    for spec in fleet.specs:
        mine, theirs = sorted(acked_by[spec.identifier]), sorted(stored[spec.identifier])
        assert theirs == mine, spec
        assert len(set(theirs)) == len(theirs), spec
    assert sum(len(v) for v in stored.values()) == len(acked)


def _lock_holder(db_url: str) -> int | None:
    """The backend pid holding the sweeper's advisory lock, if any."""
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
                           " AND ((classid::bigint << 32) | objid::bigint) = %s AND database ="
                           " (SELECT oid FROM pg_database WHERE datname = current_database())",
                           (SWEEPER_LOCK,)).fetchone()
    return int(row[0]) if row else None


def _sweeps(proc: AvlProcess) -> int:
    return sum(1 for line in proc.log().splitlines() if "avl.diagnostics: sweep:" in line)


async def test_two_diagnostics_workers_one_sweeps_and_the_other_takes_over(db_url: str, tmp_path: Path) -> None:
    procs = [AvlProcess(f"diagnostics-{i}", "diagnostics", AvlProcess.environment(
        AVL_DATABASE_URL=db_url, AVL_DATA_DIR=str(tmp_path / f"diag-{i}"), AVL_SWEEP_INTERVAL_S="1",
        AVL_LOG_LEVEL="INFO", AVL_METRICS_PORT=str(free_port())), tmp_path / f"diagnostics-{i}.log") for i in range(2)]
    try:
        procs[0].start()
        await asyncio.to_thread(procs[0].wait_for_log, "this worker is the fleet sweeper", 40)
        procs[1].start()
        # The second worker is up (it claims queued checks every second) but does not sweep.
        await _until(lambda: _sweeps(procs[0]) >= 4, 40)
        await asyncio.sleep(3)
        assert procs[1].proc is not None and procs[1].proc.poll() is None, procs[1].log()
        assert _sweeps(procs[0]) >= 4 and _sweeps(procs[1]) == 0, (procs[0].log()[-2000:], procs[1].log()[-2000:])
        assert "fleet sweeper" not in procs[1].log()
        assert _lock_holder(db_url) is not None
        # The sweeper dies without cleaning up (SIGKILL): its session ends, the lock is released,
        # and the other worker becomes the sweeper within a few seconds.
        procs[0].stop(signal.SIGKILL)
        await asyncio.to_thread(procs[1].wait_for_log, "this worker is the fleet sweeper", 20)
        await _until(lambda: _sweeps(procs[1]) >= 2, 10)
        assert _sweeps(procs[1]) >= 2
    finally:
        codes = [p.stop() for p in procs]
    assert codes[1] == 0, procs[1].log()[-2000:]
    assert "Traceback" not in procs[1].log()
