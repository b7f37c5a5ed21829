"""The README's demo command as a new user runs it: `./scripts/demo` in a fresh copy of the
checkout, as this user (root in CI), with no AVL_* set, on the default ports.

The copy is the checkout as `git clone` plus the working tree would give it: every file git
tracks or would track (`git ls-files --cached --others --exclude-standard`), so uncommitted
changes are tested too and nothing ignored (var/, caches) comes along. It lives under a
directory of mode 0700, as a clone under /root does: as root, PostgreSQL runs as 'postgres',
which cannot reach it. Its `.venv` is a link to this checkout's, which `scripts/setup` built
(it skips pip while pyproject.toml is unchanged), so the test does not reinstall everything;
on a fresh machine the same command installs it all.

One demo serves every test here (they run in file order; the last one presses Ctrl-C).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import smpplib.client

from avl.config import Settings
from avl.db.migrate import available
from avl.embedded import LocalPostgres
from ingest.protocols import DEFAULT_PORTS

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = {name: info.default for name, info in Settings.model_fields.items()}
API = f"http://127.0.0.1:{DEFAULTS['api_port']}"
# Every TCP port the demo listens on with the defaults (device ports also take UDP).
SERVICE_PORTS = {"AVL_API_PORT": DEFAULTS["api_port"], "AVL_EMBEDDED_DB_PORT": DEFAULTS["embedded_db_port"],
                 "AVL_EMBEDDED_MQTT_PORT": DEFAULTS["embedded_mqtt_port"], "AVL_SMPP_PORT": DEFAULTS["smpp_port"],
                 "AVL_METRICS_PORT": DEFAULTS["metrics_port"]}


@dataclass
class Demo:
    checkout: Path
    proc: subprocess.Popen[str]
    stderr: Path
    env: dict[str, str]
    stdout: list[str] = field(default_factory=list)
    block: str = ""
    tokens: dict[str, str] = field(default_factory=dict)
    runtime: dict[str, Any] = field(default_factory=dict)
    certification: dict[str, Any] = field(default_factory=dict)

    def log(self) -> str:
        return self.stderr.read_text(encoding="utf-8", errors="replace")

    def avl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """An `avl` command in another terminal: same directory, no settings."""
        return subprocess.run([str(self.checkout / ".venv" / "bin" / "avl"), *args], cwd=self.checkout, env=self.env,
                              capture_output=True, text=True, timeout=120)


def _call(url: str, token: str | None = None, body: dict[str, Any] | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _tcp_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _udp_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _busy_ports() -> list[str]:
    busy = [f"{name} {port}" for name, port in SERVICE_PORTS.items() if not _tcp_free(port)]
    for protocol, port in sorted(DEFAULT_PORTS.items()):
        if not _tcp_free(port) or not _udp_free(port):
            busy.append(f"{protocol} {port}")
    return busy


def _copy_checkout(dest: Path) -> None:
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():  # a file deleted in the working tree is still in the index
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def _until(what: str, check: Any, timeout: float, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r})")


@pytest.fixture(scope="module")
def demo() -> Iterator[Demo]:
    setup = subprocess.run(["bash", "scripts/setup", "--check"], cwd=ROOT)
    assert setup.returncode == 0, "this checkout's .venv is not what scripts/setup last built: run scripts/setup"
    busy = _busy_ports()
    assert not busy, f"the demo uses the default ports; in use now: {', '.join(busy)}"
    base = Path(tempfile.mkdtemp(prefix="avl-demo-"))
    private = base / "home"  # like /root: nobody else may enter
    private.mkdir(mode=0o700)
    checkout = private / "avl"
    _copy_checkout(checkout)
    (checkout / ".venv").symlink_to(ROOT / ".venv")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("AVL_")}
    stderr = base / "demo.stderr"
    with open(stderr, "w") as err:
        # Its own process group, as a terminal's foreground job: Ctrl-C goes to the whole group.
        proc = subprocess.Popen(["./scripts/demo"], cwd=checkout, env=env, stdout=subprocess.PIPE, stderr=err,
                                text=True, start_new_session=True)
    d = Demo(checkout, proc, stderr, env)
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: d.stdout.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        _until("the demo's printed block", lambda: any(line.startswith("  try: curl") for line in d.stdout)
               or proc.poll() is not None, 240)
        d.block = "".join(d.stdout)
        assert "AVL demo is running" in d.block, d.block + d.log()
        d.tokens = dict(re.findall(r"^ {4}(client|support|installer|admin)\s+(avl_\S+)$", d.block, re.M))
        d.runtime = json.loads((checkout / "var" / "runtime.json").read_text())
        # The installer starts the certification of the vehicle waiting at the center now: it
        # needs a minute of reports, which the other tests' time gives it.
        installations = _call(f"{API}/api/v1/installers/installations", d.tokens["installer"])
        assert len(installations) == 1, installations
        d.certification = _call(f"{API}/api/v1/installers/certifications", d.tokens["installer"],
                                {"device_id": installations[0]["device_id"], "radius_m": 500})
        yield d
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        pgdata = d.runtime.get("postgres_data")
        if pgdata and not pgdata.startswith(str(base)):  # the cluster kept outside the private checkout
            cluster = LocalPostgres(checkout / "var", DEFAULTS["embedded_db_port"])
            cluster.pgdata = Path(pgdata)
            cluster.stop("immediate")  # still running only if the demo was killed
            shutil.rmtree(pgdata, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)


def test_the_block_names_the_logins_tokens_faults_and_the_waiting_vehicle(demo: Demo) -> None:
    assert set(demo.tokens) == {"client", "support", "installer", "admin"}, demo.block
    faults = re.findall(r"^ {4}([A-Z]{2}\d{3}[A-Z]{2})\s+(\w+)\s+(\S+)\s+(\w+)\s+from (\d\d:\d\d:\d\d) UTC", demo.block,
                        re.M)
    assert {f[3] for f in faults} == {"no_fix", "voltage_24v", "data_down", "powered_off"}, demo.block
    assert re.search(r"waiting for certification at .+: [A-Z]{2}\d{3}[A-Z]{2} \(teltonika", demo.block), demo.block
    assert "parked, every 50 s" in demo.block
    status = _call(f"{API}/health")
    assert (status["status"], status["storage"], status["schema_version"]) == (
        "ok", "native", max(m.version for m in available()))
    assert _call(f"{API}/api/v1/me", demo.tokens["client"])["role"] == "client"


def test_the_client_sees_the_fleet_move_on_every_protocol(demo: Demo) -> None:
    wanted = {"teltonika", "gt06", "gl200", "calamp", "h02", "osmand", "json"}

    def positions() -> dict[int, tuple[float, float]] | None:
        vehicles = _call(f"{API}/api/v1/vehicles", demo.tokens["client"])
        seen = {v["protocol"] for v in vehicles if v["position"]}
        if not wanted <= seen:
            return None
        return {v["id"]: (v["position"]["latitude"], v["position"]["longitude"]) for v in vehicles if v["position"]}

    first = _until("every protocol reporting", positions, 120)
    _until("a vehicle moving", lambda: {k for k, p in (positions() or {}).items() if first.get(k) not in (None, p)}, 60)
    with urllib.request.urlopen(f"http://127.0.0.1:{DEFAULTS['metrics_port']}/metrics", timeout=5) as response:
        assert 'avl_positions_total{destination="position",protocol="gt06"}' in response.read().decode()
    # Supply voltage from every family whose real terminals send it (a gt06 in 0x94 packets).
    with psycopg.connect(demo.runtime["database_url"]) as conn:
        with_power = {row[0] for row in conn.execute(
            "SELECT DISTINCT d.protocol FROM devices d WHERE EXISTS (SELECT 1 FROM positions p WHERE p.device_id = d.id"
            " AND p.power_mv > 0) OR EXISTS (SELECT 1 FROM device_events e WHERE e.device_id = d.id AND e.power_mv > 0)")}
    assert {"teltonika", "gt06", "gl200", "osmand", "json"} <= with_power, with_power


def test_avl_commands_in_another_terminal_use_the_running_demo(demo: Demo) -> None:
    listed = demo.avl("device", "list")
    assert listed.returncode == 0, listed.stderr
    devices = [json.loads(line) for line in listed.stdout.splitlines()]
    assert len(devices) == 12 and {d["account"] for d in devices} == {"Demo Logistics"}
    used = [line for line in listed.stderr.splitlines() if "database: " in line]
    assert len(used) == 1 and f"127.0.0.1:{DEFAULTS['embedded_db_port']}/avl (avl demo's" in used[0], listed.stderr
    made = demo.avl("token", "create", "--role", "client", "--account", "Demo Logistics", "--name", "Otra terminal")
    assert made.returncode == 0, made.stderr
    assert _call(f"{API}/api/v1/me", made.stdout.strip())["account_id"] is not None
    # The checklist from the command line, on the demo's database (and SMSC, for its SMS ping).
    waiting = re.search(r"waiting for certification at .+ \(teltonika (\d+)\)", demo.block)
    assert waiting, demo.block
    diagnosed = demo.avl("diagnose", waiting.group(1), "--wait", "20", "--json")
    assert diagnosed.returncode == 0 and "Traceback" not in diagnosed.stderr, diagnosed.stderr
    assert "(avl demo's" in diagnosed.stderr and json.loads(diagnosed.stdout), diagnosed.stderr


def test_sms_to_the_account_contact_lands_in_the_inbox(demo: Demo) -> None:
    smpp = demo.runtime["smpp"]
    client = smpplib.client.Client(smpp["host"], smpp["port"], timeout=5, allow_unknown_opt_params=True)
    client.connect()
    try:
        client.bind_transmitter(system_id=smpp["system_id"], password=smpp["password"])
        client.send_message(source_addr="2020", destination_addr="584120000000", short_message=b"Aviso de prueba")
        client.read_once()  # submit_sm_resp
        client.unbind()
    finally:
        client.disconnect()
    _until("the SMS inbox line", lambda: "SMS inbox of Flota Demo (584120000000): Aviso de prueba" in demo.log(), 30)


def test_a_certification_passes_for_the_vehicle_waiting_at_the_center(demo: Demo) -> None:
    url = f"{API}/api/v1/installers/certifications/{demo.certification['id']}"

    def green() -> Any:
        cert = _call(url, demo.tokens["installer"])
        assert not [c for c in cert["checks"] if c["status"] == "red"], cert["checks"]
        return cert if cert["all_green"] else None

    _until("every certification check green", green, 240, every=2)
    signed = _call(f"{url}/sign-off", demo.tokens["installer"], {"customer_signed_by": "Flota Demo",
                                                                       "customer_saw_vehicle": True})
    assert signed["result"] == "pass"


def test_ctrl_c_stops_everything_quietly_and_frees_every_port(demo: Demo) -> None:
    os.killpg(demo.proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
    assert demo.proc.wait(90) == 0, demo.log()
    log = demo.log()
    assert "Traceback" not in log, log
    assert not re.search(r" (WARNING|ERROR) .*(SMPP|SMSC|link)", log), log  # the SMSC was up before its clients
    assert "demo stopped" in "".join(demo.stdout)
    assert not (demo.checkout / "var" / "runtime.json").exists()
    assert not _busy_ports()
