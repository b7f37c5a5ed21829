"""Per-device decoder options (``devices.options``) set by the operator with the `avl` command reach
the decoders of a running ingestor: over real sockets and MQTT, on a real database. A unit whose layout
or time format is an option decodes from its very first frame and is acknowledged; an option changed
while ingest runs applies to the device's next connection; the ``ack`` option makes the server answer
plain reports; over UDP each datagram gets the options of the device it names."""

from __future__ import annotations

import asyncio
import json
import struct
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import psycopg
import pytest

from avl.embedded import LocalBroker
from ingest.protocols import atrack, h02, t800x
from ingest.protocols.base import crc16_ibm
from tests.ingest.harness import eventually, exchange, register, running_ingest, settings_for, stored, track

AVL = str(Path(sys.executable).parent / "avl")
XIRGO, ATRACK, T800X = "4500123", "358683066267395", "357367031063979"
H02_ACK, H02_PLAIN = "1600068860", "1600068861"
FORM = "UID,EV,D,T,LT,LN,AL,GSPT,HD,SV,HP,BV,GS"


def avl(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([AVL, *args], env=env, capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def quarantined(database_url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT device_id, reason FROM positions_quarantine").fetchall()


def events(database_url: str, device_id: int) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT time, kind FROM device_events WHERE device_id = %s", (device_id,)).fetchall()


def xirgo_custom(fix_time: datetime, sequence: int) -> bytes:
    """A report in ``FORM``'s field order (dates MM/DD/YYYY), as a unit configured with it sends over UDP."""
    fields = [XIRGO, "6030", f"{fix_time:%m/%d/%Y}", f"{fix_time:%H:%M:%S}", "10.48120", "-66.90450", "905.0",
              "54.0", "1800", "9", "0.9", "12.6", "3", str(sequence)]
    return ("$$" + ",".join(fields) + "##").encode()


def atrack_long_date(p: Any, sequence: int) -> bytes:
    """An ATrack binary report with Y-M-D-h-m-s times (the unit's ``longDate`` setting)."""
    frame = atrack.encode_position(p, sequence)
    head, record = frame[6:16], frame[16:]
    t = p.fix_time
    record = struct.pack(">HBBBBB", t.year, t.month, t.day, t.hour, t.minute, t.second) + bytes(14) + record[12:]
    inner = struct.pack(">H", len(head) + len(record)) + head + record
    return b"@P" + struct.pack(">H", crc16_ibm(inner)) + inner


class UdpUnits(asyncio.DatagramProtocol):
    """One UDP socket several units report through (a carrier's NAT): what comes back, in order."""

    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.replies.put_nowait(data)


async def test_an_xirgo_unit_whose_form_is_set_in_the_database_decodes_and_is_acknowledged(
        db_url: str, avl_env: dict[str, str], tmp_path: Path) -> None:
    avl(avl_env, "account", "add", "Flota Opciones")
    added = json.loads(avl(avl_env, "device", "add", XIRGO, "--protocol", "xirgo", "--account", "Flota Opciones",
                           "--option", f"form={FORM}").stdout)
    assert added["options"] == {"form": FORM}
    fix_time = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=2)
    loop = asyncio.get_running_loop()
    async with running_ingest(settings_for(tmp_path), db_url) as svc:
        transport, unit = await loop.create_datagram_endpoint(UdpUnits, remote_addr=("127.0.0.1", svc.udp["xirgo"].port))
        try:
            transport.sendto(xirgo_custom(fix_time, 41))
            reply = await asyncio.wait_for(unit.replies.get(), 10)
        finally:
            transport.close()
    rows = stored(db_url, added["id"])
    print(f"\nxirgo custom form over UDP: answered {reply!r}; stored {rows}")
    assert reply == b"!UDP_ACK,6030,41"
    # Without the option the report matched neither fixed layout: acknowledged, and nothing kept.
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [(fix_time, pytest.approx(10.4812), pytest.approx(-66.9045),
                                                         pytest.approx(54.0))]


async def test_a_time_format_option_changed_while_ingest_runs_applies_to_the_next_connection(
        db_url: str, avl_env: dict[str, str], tmp_path: Path) -> None:
    ids = register(db_url, [(ATRACK, "atrack")])
    avl(avl_env, "device", "set-option", ATRACK, "longDate=true")
    first, second = track(ATRACK, 2)
    async with running_ingest(settings_for(tmp_path), db_url) as svc:
        port = svc.tcp["atrack"].port
        [ack] = await exchange(port, [atrack_long_date(first, 1)], [12])
        assert ack == atrack.ack(int(ATRACK), 1)
        # The unit is reconfigured to Unix times, and the operator says so while ingest runs.
        changed = json.loads((await asyncio.to_thread(avl, avl_env, "device", "set-option", ATRACK,
                                                      "longDate=false")).stdout)
        assert changed["options"] == {"longDate": False}
        # Until ingest hears of it, the unit's Unix-time report does not decode as a long date and is not
        # acknowledged: the unit reconnects and sends it again, as units do.
        answered: list[bytes] = []
        deadline = loop_time() + 15
        while not answered and loop_time() < deadline:
            try:
                answered = await exchange(port, [atrack.encode_position(second, 2)], [12], wait_s=1.0)
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                await asyncio.sleep(0.05)
    rows = stored(db_url, ids[ATRACK])
    print(f"\natrack longDate on, then off while running: answered {[a.hex() for a in answered]}; stored"
          f" {[(r[0], r[1]) for r in rows]}")
    assert answered == [atrack.ack(int(ATRACK), 2)]
    assert [(r[0], r[1], r[2]) for r in rows] == [(p.fix_time, pytest.approx(p.latitude), pytest.approx(p.longitude))
                                                  for p in (first, second)]
    assert quarantined(db_url) == [] and events(db_url, ids[ATRACK]) == []


def loop_time() -> float:
    return asyncio.get_running_loop().time()


async def _t800x_replies(port: int, report: Any, sequence: int) -> list[int]:
    """Login, a plain GPS report and a heartbeat on a new connection: the message types answered before
    the heartbeat's answer (answers come in order)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    kinds = []
    try:
        writer.write(t800x.encode_login(T800X, sequence) + t800x.encode_position(report, sequence + 1)
                     + t800x.encode_heartbeat(T800X, sequence + 2))
        await writer.drain()
        while not kinds or kinds[-1] != 0x03:
            answer = await asyncio.wait_for(reader.readexactly(15), 10)
            assert answer[5:7] == b"\x00\x01" and answer[7:].hex()[1:] == T800X  # 23 23 units: serial 1, the IMEI
            kinds.append(answer[2])
    finally:
        writer.close()
    return kinds


async def test_the_ack_option_makes_the_server_answer_plain_reports(
        db_url: str, avl_env: dict[str, str], tmp_path: Path) -> None:
    ids = register(db_url, [(T800X, "t800x")])
    reports = track(T800X, 8)
    async with running_ingest(settings_for(tmp_path), db_url) as svc:
        port = svc.tcp["t800x"].port
        without = await _t800x_replies(port, reports[0], 0)
        await asyncio.to_thread(avl, avl_env, "device", "set-option", T800X, "ack=true")
        with_ack: list[int] = []
        deadline, i = loop_time() + 15, 0
        while 0x02 not in with_ack and loop_time() < deadline:  # each a new connection, until ingest has heard
            i += 1
            with_ack = await _t800x_replies(port, reports[i % len(reports)], 10 * i)
    rows = stored(db_url, ids[T800X])
    print(f"\nt800x message types answered: without the option {without}, with ack=true {with_ack};"
          f" {len(rows)} reports stored")
    assert without == [0x01, 0x03]  # the login and the heartbeat; the plain report is stored, not answered
    assert with_ack == [0x01, 0x02, 0x03]
    assert len(rows) >= 2


async def test_over_udp_each_datagram_gets_the_options_of_the_device_it_names(
        db_url: str, avl_env: dict[str, str], tmp_path: Path) -> None:
    """Two H02 units behind one carrier address: only the one with ``ack`` gets its status reports answered,
    whichever reported last from that address."""
    ids = register(db_url, [(H02_ACK, "h02"), (H02_PLAIN, "h02")])
    avl(avl_env, "device", "set-option", H02_ACK, "ack=true", "model=ignored")
    avl(avl_env, "device", "set-option", H02_ACK, "model=")  # an empty value removes an option

    def link(device: str, moment: datetime) -> bytes:
        return f"*HQ,{device},LINK,{moment:%H%M%S},20,8,67,0,0,{moment:%d%m%y},FFFFFBFF#".encode()

    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    loop = asyncio.get_running_loop()
    got: list[bytes] = []
    async with running_ingest(settings_for(tmp_path), db_url) as svc:
        transport, units = await loop.create_datagram_endpoint(UdpUnits, remote_addr=("127.0.0.1", svc.udp["h02"].port))
        try:
            for i, device in enumerate((H02_ACK, H02_PLAIN, H02_ACK, H02_PLAIN)):
                moment = start + timedelta(seconds=30 * i)
                transport.sendto(link(device, moment))
                if device == H02_ACK:
                    got.append(await asyncio.wait_for(units.replies.get(), 10))
                    continue
                # The plain unit's status report is stored; a V1 report (always answered) then shows what came
                # back in between: nothing for the status report.
                assert await eventually(lambda d=device, n=i: len(events(db_url, ids[d])) == (n + 1) // 2)
                transport.sendto(h02.encode_position(track(device, 1, start + timedelta(seconds=30 * i + 5))[0]))
                got.append(await asyncio.wait_for(units.replies.get(), 10))
        finally:
            transport.close()
    kinds = [reply.split(b",")[:3] for reply in got]
    print(f"\nh02 over one UDP address, {H02_ACK} with ack=true and {H02_PLAIN} without: answers {got}")
    assert kinds == [[b"*HQ", H02_ACK.encode(), b"R12"], [b"*HQ", H02_PLAIN.encode(), b"V4"]] * 2
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT options FROM devices WHERE id = %s", (ids[H02_ACK],)).fetchone() == ({"ack": True},)


async def test_mqtt_messages_are_decoded_with_the_options_of_the_topics_device(
        db_url: str, avl_env: dict[str, str], tmp_path: Path, mqtt_broker: LocalBroker) -> None:
    ids = register(db_url, [(ATRACK, "atrack")])
    avl(avl_env, "device", "set-option", ATRACK, "longDate=true")
    reports = track(ATRACK, 2)
    async with running_ingest(settings_for(tmp_path, mqtt_group=f"g{tmp_path.name[-6:]}"), db_url,
                              mqtt_broker.url) as svc:
        assert svc.mqtt is not None
        await asyncio.wait_for(svc.mqtt.connected.wait(), 10)
        async with aiomqtt.Client("127.0.0.1", mqtt_broker.port) as pub:
            for i, p in enumerate(reports):
                await pub.publish(f"avl/in/atrack/{ATRACK}", atrack_long_date(p, i), qos=1)
        assert await eventually(lambda: svc.mqtt is not None and svc.mqtt.acked >= 2)
    rows = stored(db_url, ids[ATRACK])
    assert [r[0] for r in rows] == [p.fix_time for p in reports]
    assert events(db_url, ids[ATRACK]) == []


def test_set_option_names_the_device_and_refuses_what_it_cannot_set(db_url: str, avl_env: dict[str, str]) -> None:
    register(db_url, [("868120201234561", "gt06"), ("868120201234561", "h02")])
    missing = avl(avl_env, "device", "set-option", "999", "ack=true", check=False)
    ambiguous = avl(avl_env, "device", "set-option", "868120201234561", "timezone=-4", check=False)
    malformed = avl(avl_env, "device", "set-option", "868120201234561", "--protocol", "gt06", "timezone", check=False)
    too_long = avl(avl_env, "device", "set-option", "868120201234561", "--protocol", "gt06", f"model={'x' * 5000}",
                   check=False)
    for result, needle in ((missing, "device '999' not found"), (ambiguous, "name one with --protocol"),
                           (malformed, "is not key=value"), (too_long, "too long")):
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 1 and len(lines) == 1 and needle in lines[0], result.stderr
    done = json.loads(avl(avl_env, "device", "set-option", "868120201234561", "--protocol", "gt06", "timezone=-4",
                          "model=VL103").stdout)
    assert (done["protocol"], done["options"]) == ("gt06", {"timezone": "-4", "model": "VL103"})
