"""A device cannot write for another: a connection (or an MQTT topic) bound to device A
refuses, unacknowledged, any report for device B, and nothing is stored for B.

Real TCP and a real broker; the service runs in the test process (so its refusal counter
can be read directly)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiomqtt
import psycopg
import pytest

from avl.embedded import LocalBroker
from ingest import metrics
from ingest.protocols import gl200, gt06, h02, json_report, suntech, teltonika, tk103
from tests.ingest.harness import register, running_ingest, settings_for, stored, track

A, B = "862170010000101", "862170010000202"


def _refused(protocol: str) -> float:
    """Identity refusals counted by intake (the TCP listener counts the same frame again, as
    reason "connection": the first word of the refusal)."""
    return metrics.REFUSED.labels(protocol, "identity")._value.get()


async def _reply(reader: asyncio.StreamReader, wait_s: float) -> bytes:
    try:
        return await asyncio.wait_for(reader.read(4096), wait_s)
    except TimeoutError:
        return b""


ENCODERS = {"gl200": gl200, "h02": h02, "tk103": tk103, "suntech": suntech}


@pytest.mark.parametrize("protocol", sorted(ENCODERS))
async def test_text_protocol_connection_cannot_report_for_another_device(db_url: str, tmp_path: Path,
                                                                         protocol: str) -> None:
    """Every frame of these protocols names its device: the second device on one connection is refused."""
    module = ENCODERS[protocol]
    ids = register(db_url, [(A, protocol), (B, protocol)])
    a1, a2 = track(A, 2)
    b1 = track(B, 1)[0]
    refused_before = _refused(protocol)
    async with running_ingest(settings_for(tmp_path), db_url) as svc:
        reader, writer = await asyncio.open_connection("127.0.0.1", svc.tcp[protocol].port)
        login = module.encode_login(A)
        if login:
            writer.write(login)
            await _reply(reader, 2)
        writer.write(module.encode_position(a1, 1))
        first = await _reply(reader, 2 if protocol in ("gl200", "h02") else 0.5)
        writer.write(module.encode_position(b1, 2))  # same connection, another device
        for_b = await _reply(reader, 1.0)
        # The server closes a connection that tried another device's identity: it is not trusted any more.
        closed = await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await asyncio.sleep(0.2)
    refusals = _refused(protocol) - refused_before
    stored_a, stored_b = len(stored(db_url, ids[A])), len(stored(db_url, ids[B]))
    print(f"\n{protocol}: A's report acknowledged {bool(first)} (stored {stored_a}), connection closed {closed},"
          f" B's report on A's connection acknowledged {bool(for_b)}, stored for B {stored_b}, refusals counted {refusals:.0f}")
    assert stored_b == 0 and not for_b, f"{protocol}: a connection bound to {A} stored a report for {B}"
    assert refusals == 1
    assert stored_a == 1 and closed
    if protocol in ("gl200", "h02"):  # the ones that acknowledge positions
        assert first


LOGIN = {"gt06": (gt06, 10), "teltonika": (teltonika, 1)}


def _report_frame(protocol: str, p: object, seq: int) -> tuple[bytes, int]:
    if protocol == "gt06":
        return gt06.encode_position(p, seq), 10  # type: ignore[arg-type]
    return teltonika.encode_batch([p]), 4  # type: ignore[list-item]


@pytest.mark.parametrize("protocol", sorted(LOGIN))
async def test_login_protocol_connection_cannot_switch_device_after_reporting(db_url: str, tmp_path: Path,
                                                                             protocol: str) -> None:
    """Login as A, report, log in again as B, report: B's report is refused."""
    module, login_reply = LOGIN[protocol]
    ids = register(db_url, [(A, protocol), (B, protocol)])
    a1 = track(A, 1)[0]
    b1 = track(B, 1)[0]
    refused_before = _refused(protocol)
    async with running_ingest(settings_for(tmp_path), db_url) as svc:
        reader, writer = await asyncio.open_connection("127.0.0.1", svc.tcp[protocol].port)
        writer.write(module.encode_login(A))
        await asyncio.wait_for(reader.readexactly(login_reply), 5)
        frame, size = _report_frame(protocol, a1, 2)
        writer.write(frame)
        ack_a = await asyncio.wait_for(reader.readexactly(size), 5)
        writer.write(module.encode_login(B))
        await _reply(reader, 1.0)  # a handshake reply is still sent (README), it stores nothing
        frame, size = _report_frame(protocol, b1, 3)
        writer.write(frame)
        ack_b = await _reply(reader, 1.0)
        writer.close()
    refusals = _refused(protocol) - refused_before
    stored_b = len(stored(db_url, ids[B]))
    print(f"\n{protocol}: A reported ({ack_a.hex()}), then logged in as B on the same connection: B's report"
          f" acknowledged {bool(ack_b)}, stored for B {stored_b}, refusals counted {refusals:.0f}")
    assert len(stored(db_url, ids[A])) == 1
    assert stored_b == 0 and not ack_b, f"{protocol}: a connection that reported as {A} stored a report for {B}"
    assert refusals == 1


@pytest.mark.parametrize("protocol", sorted(LOGIN))
async def test_login_protocol_connection_cannot_switch_device_before_reporting(db_url: str, tmp_path: Path,
                                                                              protocol: str) -> None:
    """Login as A (identified: README "bound to the first device it identifies as"), then log
    in as B and report: B's report must be refused too."""
    module, login_reply = LOGIN[protocol]
    ids = register(db_url, [(A, protocol), (B, protocol)])
    b1 = track(B, 1)[0]
    async with running_ingest(settings_for(tmp_path), db_url) as svc:
        reader, writer = await asyncio.open_connection("127.0.0.1", svc.tcp[protocol].port)
        writer.write(module.encode_login(A))
        await asyncio.wait_for(reader.readexactly(login_reply), 5)
        writer.write(module.encode_login(B))
        await _reply(reader, 1.0)
        frame, _ = _report_frame(protocol, b1, 3)
        writer.write(frame)
        ack_b = await _reply(reader, 1.0)
        writer.close()
    stored_b = len(stored(db_url, ids[B]))
    print(f"\n{protocol}: logged in as A, then as B on the same connection, then reported: acknowledged"
          f" {bool(ack_b)}, stored for B {stored_b}")
    assert stored_b == 0 and not ack_b, (f"{protocol}: a connection that logged in as {A} then as {B} stored a"
                                         f" report for {B}: the binding happens at the first report, not at login")


async def test_mqtt_topic_binds_the_device(db_url: str, tmp_path: Path, mqtt_broker: LocalBroker) -> None:
    """avl/in/<protocol>/A can only carry A: a json report has no device field to name B, a
    device frame naming B (gl200) or a login as B (gt06) on A's topic stores nothing for B."""
    register(db_url, [(A, "json"), (B, "json"), (A, "gl200"), (B, "gl200"), (A, "gt06"), (B, "gt06")])
    a, b = track(A, 1)[0], track(B, 1)[0]
    forged_json = json.loads(json_report.encode_position(b))
    forged_json["device"] = B
    refused_before = _refused("gl200") + _refused("gt06")
    settings = settings_for(tmp_path, mqtt_group=f"id{tmp_path.name[-6:]}", mqtt_client_id=f"id-{tmp_path.name[-8:]}")
    async with running_ingest(settings, db_url, mqtt_broker.url) as svc:
        assert svc.mqtt is not None
        await asyncio.wait_for(svc.mqtt.connected.wait(), 10)
        async with aiomqtt.Client("127.0.0.1", mqtt_broker.port) as pub:
            await pub.publish(f"avl/in/json/{A}", json_report.encode_position(a), qos=1)
            await pub.publish(f"avl/in/json/{A}", json.dumps(forged_json).encode(), qos=1)
            await pub.publish(f"avl/in/gl200/{A}", gl200.encode_position(b, 1), qos=1)
            await pub.publish(f"avl/in/gt06/{A}", gt06.encode_login(B) or b"", qos=1)
            await pub.publish(f"avl/in/gt06/{A}", gt06.encode_position(b, 2), qos=1)
        for _ in range(50):
            if svc.mqtt.received >= 5:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        received = svc.mqtt.received
    refusals = _refused("gl200") + _refused("gt06") - refused_before
    with psycopg.connect(db_url) as conn:
        by_device = dict(conn.execute("SELECT d.identifier || '/' || d.protocol, count(*) FROM positions p"
                                      " JOIN devices d ON d.id = p.device_id GROUP BY 1").fetchall())
    print(f"\nMQTT: {received} messages on {A}'s topics (one its own, four for {B}); stored per device/protocol"
          f" {by_device}; refusals counted {refusals:.0f}")
    assert by_device.get(f"{A}/json") == 1
    assert not any(k.startswith(B) for k in by_device), f"a report for {B} was stored from {A}'s topic"
    assert received == 5 and refusals == 2
