"""Several ingest processes take the MQTT input together: every process subscribes to one shared
subscription (``$share/<group>/avl/in/#``) with its own persistent session, the broker hands each
message to one of them, and each is stored once and acknowledged only after commit, also when a
publisher keeps thousands of QoS 1 messages in flight."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import uuid
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import psycopg

from avl.embedded import LocalBroker
from ingest.processes import spool_name
from ingest.protocols import json_report
from ingest.service import IngestService
from ingest.transports.mqtt import subscriber
from tests.ingest.harness import eventually, register, settings_for, track

DEVICES = 40
PER_DEVICE = 500  # 20,000 messages: several times the broker's in-flight window (1,000) and aiomqtt's old queue


def _stored(db_url: str) -> tuple[int, int]:
    """(rows, distinct device and fix time) of the gateways' reports."""
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*), count(DISTINCT (p.device_id, p.fix_time)) FROM positions p"
                           " JOIN devices d ON d.id = p.device_id WHERE d.identifier LIKE 'gw-shared-%'").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _writing(db_url: str) -> int:
    """Ingest processes whose heartbeat says they have written rows."""
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM platform_status WHERE component = 'ingest'"
                           " AND (details->>'rows_written')::int > 0").fetchone()
    return int(row[0]) if row else 0


def _services(tmp_path: Path, db_url: str, broker: LocalBroker, group: str, client_id: str) -> list[IngestService]:
    """Two ingest processes' services as ``ingest.processes`` makes them: MQTT input only here."""
    return [IngestService(settings_for(tmp_path / f"ingest-{i}", protocols=["osmand"], ports={"osmand": 0}, udp=False,
                                       mqtt_group=group, mqtt_client_id=client_id),
                          db_url, broker.url, spool_name=spool_name(i), process=(i, 2))
            for i in range(2)]


def _avl_ingest(env: dict[str, str], err_path: Path) -> subprocess.Popen[str]:
    with open(err_path, "w") as err:
        return subprocess.Popen([str(Path(sys.executable).parent / "avl"), "ingest"], env=env,
                                stdout=subprocess.DEVNULL, stderr=err, text=True)


async def _forget(broker: LocalBroker, client_ids: list[str]) -> None:
    """Ends the persistent sessions: the broker would keep queueing a share of every message for them."""
    for client_id in client_ids:
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier=client_id, clean_session=True):
            pass


def test_with_a_group_several_processes_share_one_subscription_each_with_its_own_session() -> None:
    assert subscriber("fleet", "avl-a", 0, 3) == ("fleet", "avl-a")
    assert subscriber("fleet", "avl-a", 2, 3) == ("fleet", "avl-a-3")
    # Without one, the first process alone takes the input on a plain subscription (it survives a broker restart).
    assert subscriber("", "avl-a", 0, 2) == ("", "avl-a")
    assert subscriber("", "avl-a", 1, 2) is None


async def test_two_processes_on_a_shared_subscription_store_every_pipelined_message_once_and_ack_it(
        db_url: str, tmp_path: Path, mqtt_broker: LocalBroker) -> None:
    gateways = [f"gw-shared-{i:03d}" for i in range(DEVICES)]
    register(db_url, [(g, "json") for g in gateways])
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    messages = [(f"avl/in/json/{g}", json_report.encode_position(p))
                for g in gateways for p in track(g, PER_DEVICE, start=start, step_s=10)]
    group, client_id = f"g{uuid.uuid4().hex[:8]}", f"avl-test-{uuid.uuid4().hex[:8]}"
    services = _services(tmp_path, db_url, mqtt_broker, group, client_id)
    async with AsyncExitStack() as stack:
        for svc in services:
            await svc.start()
            stack.push_async_callback(svc.close)
        inputs = [svc.mqtt for svc in services]
        assert all(m is not None for m in inputs)
        mqtt = [m for m in inputs if m is not None]
        for m in mqtt:
            await asyncio.wait_for(m.connected.wait(), 20)
        assert {m.subscription for m in mqtt} == {f"$share/{group}/avl/in/#"}
        assert len({m.client_id for m in mqtt}) == 2
        # A pipelined publisher: every message in flight at once, each publish done at the broker's PUBACK.
        async with aiomqtt.Client("127.0.0.1", mqtt_broker.port, max_inflight_messages=len(messages)) as pub:
            await asyncio.gather(*(pub.publish(topic, payload, qos=1, timeout=120)
                                   for topic, payload in messages))
        assert await eventually(lambda: _stored(db_url)[0] >= len(messages), 120), _stored(db_url)
        assert await eventually(lambda: all(m.acked == m.received for m in mqtt), 30), [(m.received, m.acked) for m in mqtt]
        received = [m.received for m in mqtt]
    assert _stored(db_url) == (len(messages), len(messages)), "a message stored twice or not at all"
    assert sum(received) == len(messages) and min(received) > 0, received  # split between the two, none twice
    # Nothing is left unacknowledged in either persistent session: back again, the broker redelivers nothing.
    again = _services(tmp_path, db_url, mqtt_broker, group, client_id)
    async with AsyncExitStack() as stack:
        for svc in again:
            await svc.start()
            stack.push_async_callback(svc.close)
        for svc in again:
            assert svc.mqtt is not None
            await asyncio.wait_for(svc.mqtt.connected.wait(), 20)
        await asyncio.sleep(1.0)
        assert [svc.mqtt.received for svc in again if svc.mqtt is not None] == [0, 0]
    await _forget(mqtt_broker, [client_id, f"{client_id}-2"])
    assert _stored(db_url) == (len(messages), len(messages))


async def test_avl_ingest_on_two_processes_with_a_group_takes_the_mqtt_input_in_both(avl_env: dict[str, str], db_url: str,
                                                                       tmp_path: Path, mqtt_broker: LocalBroker) -> None:
    gateways = [f"gw-shared-{i:03d}" for i in range(10)]
    register(db_url, [(g, "json") for g in gateways])
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    messages = [(f"avl/in/json/{g}", json_report.encode_position(p))
                for g in gateways for p in track(g, 200, start=start, step_s=10)]
    group, client_id = f"g{uuid.uuid4().hex[:8]}", f"avl-test-{uuid.uuid4().hex[:8]}"
    env = {**avl_env, "AVL_INGEST_PROCESSES": "2", "AVL_MQTT_URL": mqtt_broker.url, "AVL_MQTT_GROUP": group,
           "AVL_MQTT_CLIENT_ID": client_id,
           "AVL_PROTOCOLS": "osmand", "AVL_PORTS": json.dumps({"osmand": 0}), "AVL_UDP": "false",
           "AVL_METRICS_PORT": "0", "AVL_LOG_LEVEL": "INFO"}
    err_path = tmp_path / "stderr"
    proc = _avl_ingest(env, err_path)
    try:
        subscribed = [f"subscribed to $share/{group}/avl/in/# as {who}\n" for who in (client_id, f"{client_id}-2")]
        assert await eventually(lambda: all(line in err_path.read_text() for line in subscribed)
                                or proc.poll() is not None, 90), err_path.read_text()
        assert proc.poll() is None, err_path.read_text()
        async with aiomqtt.Client("127.0.0.1", mqtt_broker.port, max_inflight_messages=len(messages)) as pub:
            await asyncio.gather(*(pub.publish(topic, payload, qos=1, timeout=120) for topic, payload in messages))
        assert await eventually(lambda: _stored(db_url)[0] >= len(messages), 120), _stored(db_url)
        both_wrote = await eventually(lambda: _writing(db_url) == 2, 30)  # as their heartbeats say
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        await _forget(mqtt_broker, [client_id, f"{client_id}-2"])
    assert proc.returncode == 0, err_path.read_text()[-3000:]
    assert _stored(db_url) == (len(messages), len(messages))
    assert both_wrote, "one of the processes stored none of the messages"
