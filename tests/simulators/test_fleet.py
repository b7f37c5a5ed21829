"""The virtual fleet against a real ingest service (real TCP/UDP/HTTP/MQTT, a real database):
every acknowledged report stored once and in order, buffered reports flushed with their
fix times, faults visible in the stored data the way they look in the field."""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import subprocess
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from avl.embedded import LocalBroker, free_port
from ingest.pipeline import FLAG_BUFFERED
from simulators.fleet import FAULTS, PROTOCOLS, Behaviour, Fleet, FleetConfig, luhn_valid, make_specs, parse_spec
from simulators.fleet.cli import main as cli_main
from simulators.fleet.control import ControlServer
from simulators.fleet.faults import FaultSpecError, assign
from simulators.fleet.motion import Gnss, Motion, bearing_deg, distance_m
from tests.ingest.harness import running_ingest, settings_for

ROOT = Path(__file__).resolve().parents[2]


def _behaviour(**overrides: Any) -> Behaviour:
    values: dict[str, Any] = {"ack_timeout_s": 3.0, "backoff_base_s": 0.2, "backoff_max_s": 1.0,
                              "connect_timeout_s": 3.0}
    values.update(overrides)
    return Behaviour(**values)


def _config(settings: Any, mqtt_url: str, **overrides: Any) -> FleetConfig:
    ports = {name: (settings.ports[name]) for name in settings.ports}
    values: dict[str, Any] = {"server": "127.0.0.1", "ports": ports, "mqtt_url": mqtt_url, "interval_s": 30.0,
                              "time_scale": 30.0, "behaviour": _behaviour()}
    values.update(overrides)
    return FleetConfig(**values)


def _rows(db_url: str) -> dict[str, list[tuple[Any, ...]]]:
    """identifier -> its stored positions in arrival order (received_at, then fix_time)."""
    out: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    with psycopg.connect(db_url) as conn:
        for row in conn.execute(
                "SELECT d.identifier, p.fix_time, p.received_at, p.valid, p.latitude, p.longitude, p.ignition,"
                " p.power_mv, p.flags, p.raw, p.speed_kmh FROM positions p JOIN devices d ON d.id = p.device_id"
                " ORDER BY d.identifier, p.received_at, p.fix_time").fetchall():
            out[row[0]].append(row[1:])
    return out


async def _until_stored(db_url: str, expected: int, wait_s: float = 20.0) -> None:
    """MQTT reports are acknowledged by the broker: wait for ingest to commit them."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        with psycopg.connect(db_url) as conn:
            row = conn.execute("SELECT count(*) FROM positions").fetchone()
        if row is not None and row[0] >= expected:
            return
        await asyncio.sleep(0.3)


# Identity, motion, faults, SMS: no server needed -----------------------------------------


def test_fleet_identity_is_deterministic_and_well_formed() -> None:
    specs = make_specs(700, PROTOCOLS, 30, seed=7)
    assert [s.identifier for s in specs] == [s.identifier for s in make_specs(700, PROTOCOLS, 30, seed=7)]
    assert [s.identifier for s in specs] != [s.identifier for s in make_specs(700, PROTOCOLS, 30, seed=8)]
    assert len({s.identifier for s in specs}) == len({s.msisdn for s in specs}) == len({s.plate for s in specs}) == 700
    for s in specs:
        assert s.msisdn.startswith("58414") and len(s.msisdn) == 12
        if s.protocol in ("teltonika", "gt06", "gl200", "h02"):
            assert len(s.identifier) == 15 and luhn_valid(s.identifier)
        elif s.protocol == "calamp":
            assert len(s.identifier) == 10 and s.identifier.isdigit()
        elif s.protocol == "json":
            assert s.identifier.startswith("gw-")
    assert {s.protocol for s in specs} == set(PROTOCOLS)
    assert {s.supply_voltage_v for s in specs} == {12, 24}
    manifest = Fleet(FleetConfig(vehicles=3, protocols=("gt06",))).manifest()
    assert set(manifest[0]) >= {"identifier", "protocol", "msisdn", "plate", "supply_voltage_v", "report_interval_s"}


def test_motion_looks_like_a_vehicle_in_caracas() -> None:
    motion, gnss = Motion(random.Random(3), start=0.0), Gnss(random.Random(4))
    states = [motion.at(float(t)) for t in range(0, 4 * 3600, 10)]
    assert all(10.4 < s.latitude < 10.56 and -67.05 < s.longitude < -66.75 for s in states)
    moving = [s for s in states if s.moving]
    assert moving and max(s.speed_kmh for s in states) < 90
    assert any(s.phase == "delivery" for s in states) and any(not s.ignition for s in states)
    assert all(s.ignition for s in states if s.moving)
    # Heading follows the displacement.
    for a, b in zip(states, states[1:], strict=False):
        if a.moving and b.moving and a.course == b.course and distance_m(a.latitude, a.longitude, b.latitude, b.longitude) > 20:
            diff = abs((bearing_deg(a.latitude, a.longitude, b.latitude, b.longitude) - a.course + 180) % 360 - 180)
            assert diff < 1.0
    # Odometer never goes back; the receiver's noise is metres, with plausible satellites and HDOP.
    assert all(b.odometer_m >= a.odometer_m for a, b in zip(states, states[1:], strict=False))
    fixes = [gnss.read(s) for s in states[:200]]
    errors = [distance_m(s.latitude, s.longitude, f[0], f[1]) for s, f in zip(states, fixes, strict=False)]
    assert 0.5 < sum(errors) / len(errors) < 15
    assert all(4 <= f[4] <= 14 and 0.5 <= f[5] <= 3.0 for f in fixes)


def test_fault_spec() -> None:
    plans = parse_spec("powered_off:2, no_fix:1@60-600, 356307042441013=voltage_24v+clock_skew/-3600")
    assert [(p.fault, p.count, p.identifier, p.start_s, p.end_s, p.value) for p in plans] == [
        ("powered_off", 2, None, 0.0, None, None), ("no_fix", 1, None, 60.0, 600.0, None),
        ("voltage_24v", 0, "356307042441013", 0.0, None, None),
        ("clock_skew", 0, "356307042441013", 0.0, None, -3600.0)]
    resolved = assign(parse_spec("powered_off:2,no_fix:1"), ["a", "b", "c"], seed=1)
    assert len({p.identifier for p in resolved}) == 3  # vehicles without a fault first
    for bad in ("melted:1", "powered_off", "x=melted", "no_fix:1@9-3", "powered_off:9"):
        with pytest.raises(FaultSpecError):
            assign(parse_spec(bad), ["a", "b", "c"], seed=1)
    assert set(FAULTS) >= {"powered_off", "no_fix", "antenna_fault", "data_down", "sim_suspended", "voltage_24v",
                           "voltage_0v", "clock_skew", "duplicates", "garbage", "slow_reader"}


async def test_sms_hook_answers_in_each_family_syntax_and_faults_silence_it() -> None:
    fleet = Fleet(FleetConfig(vehicles=7, time_scale=10))
    await fleet.start()
    try:
        for t in fleet.terminals.values():  # nothing to reach: keep them offline
            t.set_fault("data_down")
        await asyncio.sleep(0.2)
        by_proto = {t.spec.protocol: t for t in fleet.terminals.values()}
        tel, gt, cal, gl, h2 = (by_proto[p] for p in ("teltonika", "gt06", "calamp", "gl200", "h02"))
        assert (tel.on_sms("  getgps") or "").startswith("GPS:1 Sat:")
        assert "Data Link: 0" in (tel.on_sms("  getstatus") or "")  # data channel down, SMS still answered
        assert (gt.on_sms("WHERE#") or "").startswith("Lat:N10.")
        assert "GPRS:Link Down" in (gt.on_sms("STATUS#") or "")
        assert (cal.on_sms("!R0") or "").startswith(f"ESN:{cal.identifier} GPS:3D")
        assert (gl.on_sms("AT+GTRTO=gv300,1,,,,,,FFFF$") or "").startswith("+RESP:GTRTL,060100," + gl.identifier)
        assert "maps.google.com" in (h2.on_sms("WHERE") or "")
        assert all(t.on_sms("WHERE") for t in fleet.terminals.values())  # the generic position request
        assert tel.on_sms("  frobnicate") == "Unknown command"
        before = len(gl.outbox)
        gl.report_now()  # a position request: one report at once (buffered here: no data channel)
        await asyncio.sleep(0.1)
        assert len(gl.outbox) >= before + 1 and gl.outbox[-1].buffered
        gt.set_fault("no_fix")
        assert "Searching satellite" in (gt.on_sms("STATUS#") or "")
        tel.set_fault("voltage_24v")
        assert "ExtV:2" in (tel.on_sms("  getinfo") or "")
        tel.set_fault("powered_off")
        assert tel.on_sms("  getgps") is None and not tel.sms_reachable
        cal.set_fault("sim_suspended")
        assert cal.on_sms("!R0") is None and not cal.sms_reachable
    finally:
        await fleet.stop(drain_s=0)


# Against a running ingestor ---------------------------------------------------------------


async def test_a_fleet_of_every_protocol_is_stored_once_in_order_including_buffered_reports(
        db_url: str, tmp_path: Path, mqtt_broker: LocalBroker) -> None:
    settings = settings_for(tmp_path, mqtt_group=f"g{tmp_path.name[-6:]}")
    # 14 vehicles, two per protocol; one of each goes out of coverage for 4 simulated minutes.
    config = _config(settings, mqtt_broker.url, vehicles=14, seed=11)
    fleet = Fleet(config)
    gap = [s.identifier for s in fleet.specs[: len(PROTOCOLS)]]
    config.faults = [p for ident in gap for p in parse_spec(f"{ident}=no_coverage@90-330")]
    fleet = Fleet(config)
    assert fleet.provision(db_url, "Flota Simulada") == 14
    async with running_ingest(settings, db_url, mqtt_broker.url) as svc:
        assert svc.mqtt is not None
        await asyncio.wait_for(svc.mqtt.connected.wait(), 10)
        report = await fleet.run(duration_s=16, drain_s=10)
        acked = fleet.acked_reports()
        await _until_stored(db_url, len(acked))
    rows = _rows(db_url)
    acked_by: dict[str, list[datetime]] = defaultdict(list)
    for ident, fix in acked:
        acked_by[ident].append(fix)
    assert report["outbox"] == 0 and report["acknowledged"] == len(acked) > 14 * 10
    for spec in fleet.specs:
        stored = [r[0] for r in rows[spec.identifier]]
        mine = acked_by[spec.identifier]
        assert mine, spec
        # Every acknowledged report stored, exactly once, nothing else stored.
        assert sorted(stored) == sorted(mine) and len(set(stored)) == len(stored), spec
        # Delivered in fix-time order, the buffered backlog included.
        assert stored == sorted(stored), spec
    for protocol, stats in report["protocols"].items():
        assert stats["buffered"] > 0, protocol
        assert stats["acknowledged"] == stats["sent"], protocol  # nothing given up on
    origin = fleet.clock.origin if fleet.clock else 0.0
    for ident in gap:
        terminal = fleet.terminals[ident]
        in_gap = [r for r in rows[ident] if origin + 95 <= r[0].timestamp() <= origin + 325]
        assert in_gap, ident  # reports made out of coverage reached the database later...
        assert terminal.stats.buffered >= len(in_gap) - 1, ident
        # ... all together once back in coverage (the gap ends 330 simulated s = 11 real s after the start).
        back = datetime.fromtimestamp(fleet.started_wall + 330 / 30, UTC)
        assert all(r[1] >= back - timedelta(seconds=1) for r in in_gap), ident
        if terminal.spec.protocol == "gl200":
            assert any(bytes(r[8]).startswith(b"+BUFF:GTFRI") for r in in_gap)
        if terminal.spec.protocol == "teltonika":
            batch_sizes = defaultdict(int)
            for r in in_gap:
                batch_sizes[r[1]] += 1
            assert max(batch_sizes.values()) > 1  # the backlog went out as multi-record batches
    assert all(r[7] & FLAG_BUFFERED for ident in gap for r in rows[ident] if r[1].timestamp() - r[0].timestamp() > 300)
    # Ignition off while parked, heading and speed that look like driving.
    everything = [r for ident in rows for r in rows[ident]]
    assert any(r[5] is False for r in everything) and any(r[5] is True and r[9] > 10 for r in everything)


async def test_faults_show_in_the_stored_data_and_the_control_api_changes_them_while_running(
        db_url: str, tmp_path: Path, mqtt_broker: LocalBroker) -> None:
    settings = settings_for(tmp_path, mqtt_group=f"g{tmp_path.name[-6:]}")
    specs = make_specs(14, PROTOCOLS, 30.0, seed=6)
    by_proto: dict[str, list[str]] = defaultdict(list)
    for s in specs:
        by_proto[s.protocol].append(s.identifier)
    twelve_volt = [s.identifier for s in specs if s.identifier in (by_proto["gl200"][1], by_proto["json"][1])
                   and s.supply_voltage_v == 12]
    faults = {
        "no_fix": by_proto["gt06"][0],
        "voltage_24v": twelve_volt[0],
        "clock_skew": by_proto["calamp"][0],
        "powered_off@200": by_proto["h02"][0],
        "duplicates": by_proto["gl200"][0],
        "garbage": by_proto["gt06"][1],
        "slow_reader": by_proto["h02"][1],
        "data_down": by_proto["osmand"][0],
    }
    spec = ",".join(f"{ident}={fault}" for fault, ident in faults.items())
    fleet = Fleet(_config(settings, mqtt_broker.url, vehicles=14, seed=6, faults=spec))
    fleet.provision(db_url, "Flota Fallas")
    control_target = by_proto["json"][0]
    async with running_ingest(settings, db_url, mqtt_broker.url) as svc:
        assert svc.mqtt is not None
        await asyncio.wait_for(svc.mqtt.connected.wait(), 10)
        control = ControlServer(fleet)
        await fleet.start(duration_s=16)
        # The antenna fault on a teltonika vehicle that starts its day driving (before its first report).
        antenna = next(i for i in by_proto["teltonika"] if not fleet.terminals[i].motion.starts_parked
                       and i not in faults.values())
        faults["antenna_fault"] = antenna
        fleet.set_fault(antenna, "antenna_fault")
        await control.start()
        try:
            await asyncio.sleep(8)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{control.port}") as http:
                vehicles = (await http.get("/vehicles")).json()
                assert len(vehicles) == 14 and {v["identifier"] for v in vehicles} == {s.identifier for s in specs}
                reply = await http.post(f"/vehicles/{control_target}/faults", json={"fault": "no_fix", "on": True})
                assert reply.status_code == 200 and "no_fix" in reply.json()["faults"]
                switched_at = fleet.clock.now() if fleet.clock else 0.0
                bad = await http.post(f"/vehicles/{control_target}/faults", json={"fault": "melted"})
                assert bad.status_code == 400
                stats = (await http.get("/stats")).json()
                assert stats["vehicles"] == 14 and stats["sent"] > 0
                sms = await http.post(f"/vehicles/{by_proto['teltonika'][1]}/sms", json={"text": "  getgps"})
                assert sms.json()["reply"].startswith("GPS:1")
            await asyncio.sleep(8)
        finally:
            await control.close()
            await fleet.stop(drain_s=8)
        acked = fleet.acked_reports()
        await _until_stored(db_url, len(acked))
    rows = _rows(db_url)
    origin = fleet.clock.origin if fleet.clock else 0.0
    t = fleet.terminals

    no_fix = rows[faults["no_fix"]]
    assert no_fix and all(r[2] is False for r in no_fix)  # valid = false
    antenna = rows[faults["antenna_fault"]]
    assert len({(r[3], r[4]) for r in antenna}) == 1 and any(r[5] for r in antenna)  # frozen, ignition on
    assert t[faults["antenna_fault"]].motion.odometer_m > 500  # ... while the vehicle really moved
    assert all(r[6] >= 24_000 for r in rows[faults["voltage_24v"]])
    healthy_power = [r[6] for s in specs if s.supply_voltage_v == 12 and s.identifier not in faults.values()
                     for r in rows[s.identifier] if r[6] is not None]
    assert healthy_power and max(healthy_power) < 15_000
    skewed = rows[faults["clock_skew"]]
    assert skewed and all(abs((r[1] - r[0]).total_seconds() - 4 * 3600) < 1200 for r in skewed)
    powered = rows[faults["powered_off@200"]]
    assert powered and max(r[0].timestamp() for r in powered) <= origin + 200
    assert t[faults["powered_off@200"]].stats.sent > 0
    dup = t[faults["duplicates"]]
    assert dup.stats.duplicates > 0 and len(rows[faults["duplicates"]]) == dup.stats.acknowledged
    noisy = t[faults["garbage"]]
    assert noisy.stats.garbage > 0 and len(rows[faults["garbage"]]) == noisy.stats.acknowledged > 0
    slow = t[faults["slow_reader"]]
    assert slow.stats.acknowledged == 0 and slow.stats.unacknowledged > 0
    assert len(rows[faults["slow_reader"]]) > 0  # the server stored them; the terminal never read its ACKs
    down = t[faults["data_down"]]
    assert rows[faults["data_down"]] == [] and down.stats.buffered > 0 and down.on_sms("WHERE")
    switched = rows[control_target]
    before = [r for r in switched if r[0].timestamp() < switched_at - 31]
    after = [r for r in switched if r[0].timestamp() > switched_at + 1]
    assert before and all(r[2] for r in before) and after and not any(r[2] for r in after)


# The command -------------------------------------------------------------------------------


def test_cli_manifest_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["--vehicles", "3", "--protocols", "gt06,calamp", "--manifest"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [m["protocol"] for m in lines] == ["gt06", "calamp", "gt06"]
    assert cli_main(["--protocols", "nope", "--manifest"]) == 2
    assert "unknown nope" in capsys.readouterr().err
    assert cli_main(["--faults", "melted:1", "--manifest"]) == 2
    assert cli_main(["--ports", "gt06=x"]) == 2


async def test_cli_runs_a_fleet_against_the_ingestor(db_url: str, tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    ports = ",".join(f"{k}={v}" for k, v in settings.ports.items())
    args = ["--vehicles", "6", "--protocols", "teltonika,gt06,gl200,h02,calamp,osmand", "--interval", "10",
            "--time-scale", "10", "--ports", ports, "--duration", "4", "--summary-every", "1", "--provision",
            "--database-url", db_url, "--json", "--ack-timeout", "3", "--drain", "5"]
    async with running_ingest(settings, db_url):
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "simulators.fleet", *args, cwd=ROOT,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    report = json.loads(out)
    summary = [line for line in err.decode().splitlines() if line.startswith("t=")]
    assert summary and "acknowledged=" in summary[-1] and "buffered=" in summary[-1]
    assert report["acknowledged"] == report["sent"] > 6
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM positions").fetchone()
    assert row == (report["acknowledged"],)


# Load (not in the default run: ./scripts/test -m soak) ------------------------------------


@pytest.mark.soak
def test_ten_thousand_vehicles_from_one_command(db_url: str, tmp_path: Path, mqtt_broker: LocalBroker) -> None:
    """10,000 terminals of every protocol, one simulator process, against `avl ingest` in another."""
    vehicles = int(os.environ.get("AVL_SOAK_VEHICLES", "10000"))
    duration = float(os.environ.get("AVL_SOAK_SECONDS", "180"))
    interval = float(os.environ.get("AVL_SOAK_INTERVAL", "30"))
    fleet = Fleet(FleetConfig(vehicles=vehicles, interval_s=interval))
    t0 = time.monotonic()
    fleet.provision(db_url, "Soak Fleet")
    provision_s = time.monotonic() - t0
    ports = {name: free_port() for name in ("gl200", "gt06", "h02", "teltonika", "osmand", "calamp")}
    env = {**os.environ, "AVL_DATABASE_URL": db_url, "AVL_MQTT_URL": mqtt_broker.url, "AVL_DATA_DIR": str(tmp_path),
           "AVL_PORTS": json.dumps(ports), "AVL_PROTOCOLS": ",".join(ports), "AVL_METRICS_PORT": "0",
           "AVL_MAX_CONNECTIONS_PER_SOURCE": str(vehicles + 100), "AVL_LOG_LEVEL": "WARNING",
           "AVL_INGEST_HOST": "127.0.0.1", "AVL_MQTT_GROUP": f"soak{tmp_path.name[-6:]}"}
    server = subprocess.Popen([str(ROOT / ".venv/bin/avl"), "ingest"], env=env, cwd=ROOT)
    try:
        time.sleep(5)
        args = [sys.executable, "-m", "simulators.fleet", "--vehicles", str(vehicles), "--interval", str(interval),
                "--ports", ",".join(f"{k}={v}" for k, v in ports.items()), "--mqtt", mqtt_broker.url,
                "--duration", str(duration), "--summary-every", "15", "--json", "--drain", "30",
                *os.environ.get("AVL_SOAK_ARGS", "").split()]
        sim = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=duration + 300)
        assert sim.returncode == 0, sim.stderr[-3000:]
        report = json.loads(sim.stdout)
        server_cpu = _cpu_seconds(server.pid)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # MQTT reports: acknowledged by the broker, committed soon after
            with psycopg.connect(db_url) as conn:
                row = conn.execute("SELECT count(*), count(DISTINCT device_id) FROM positions").fetchone()
            assert row is not None
            if row[0] >= report["acknowledged"]:
                break
            time.sleep(1)
    finally:
        server.terminate()
        server.wait(30)
    sys.stderr.write(sim.stderr[-4000:] + "\n")
    sys.stderr.write(f"provision {provision_s:.0f}s; server CPU {server_cpu:.0f}s; stored {row[0]} rows of {row[1]}"
                     f" devices; report {json.dumps(report)}\n")
    assert report["running"] == vehicles
    assert row[0] == report["acknowledged"]  # every acknowledged report stored, once
    assert report["acknowledged"] >= 0.9 * vehicles * (duration / interval) * 0.5
    assert math.isfinite(report["acks_per_s"]) and report["acks_per_s"] > 0


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

