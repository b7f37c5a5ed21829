"""The `avl` command against a real database: administration, and bad configuration."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

AVL = str(Path(sys.executable).parent / "avl")


def run(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([AVL, *args], env=env, capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0]


def test_account_lifecycle_suspend_reconnect_retire(avl_env: dict[str, str], db_url: str) -> None:
    account = json.loads(run(avl_env, "account", "add", "Transportes Ávila", "--billing", "pre_paid",
                             "--balance", "25.5", "--contact-msisdn", "584121112233").stdout)
    assert account["status"] == "active" and account["billing"] == "pre_paid"
    run(avl_env, "device", "add", "356307042441013", "--protocol", "teltonika", "--account", "Transportes Ávila",
        "--msisdn", "584140001122", "--plate", "AB123CD", "--voltage", "24", "--kind", "truck")
    suspended = json.loads(run(avl_env, "account", "suspend", "transportes ávila").stdout)
    assert (suspended["status"], suspended["status_reason"]) == ("suspended", "non-payment")
    assert json.loads(run(avl_env, "account", "reconnect", str(account["id"])).stdout)["status"] == "active"
    assert json.loads(run(avl_env, "account", "retire", str(account["id"]), "--kind", "non_payment").stdout)["status"] \
        == "retired"
    with psycopg.connect(db_url) as conn:
        # Retiring suspends the cellular line of every terminal of the account.
        assert conn.execute("SELECT line_status FROM devices").fetchall() == [("suspended",)]
    refused = run(avl_env, "account", "reconnect", str(account["id"]), check=False)
    assert_one_line_error(refused, "retirada")  # AVL_LANGUAGE: es by default


def test_device_registration_and_listing(avl_env: dict[str, str]) -> None:
    run(avl_env, "account", "add", "Flota Norte")
    run(avl_env, "center", "add", "Centro Chacao", "--lat", "10.4961", "--lon", "-66.853")
    run(avl_env, "device", "add", "4634040001", "--protocol", "calamp", "--account", "Flota Norte",
        "--plate", "AE400LM", "--center", "Centro Chacao", "--installed", "2026-11-01", "--interval", "30")
    rows = [json.loads(line) for line in run(avl_env, "device", "list").stdout.splitlines()]
    assert [(r["identifier"], r["protocol"], r["account"], r["plate"], r["report_interval_s"]) for r in rows] == [
        ("4634040001", "calamp", "Flota Norte", "AE400LM", 30)
    ]
    dup = run(avl_env, "device", "add", "4634040001", "--protocol", "calamp", check=False)
    assert_one_line_error(dup, "already registered")
    bad = run(avl_env, "device", "add", "123", "--protocol", "nosuch", check=False)
    assert_one_line_error(bad, "unknown protocol")


def test_token_is_shown_once_and_stored_hashed(avl_env: dict[str, str], db_url: str) -> None:
    run(avl_env, "account", "add", "Flota Sur")
    token = run(avl_env, "token", "create", "--role", "client", "--name", "Despacho", "--account", "Flota Sur").stdout.strip()
    assert token.startswith("avl_") and len(token) > 40
    with psycopg.connect(db_url) as conn:
        stored = conn.execute("SELECT token_hash FROM api_tokens").fetchall()
    assert len(stored) == 1 and token.encode() not in stored[0][0]
    refused = run(avl_env, "token", "create", "--role", "client", "--name", "x", check=False)
    assert_one_line_error(refused, "--account")


def test_migrate_command_is_idempotent(avl_env: dict[str, str]) -> None:
    assert "schema up to date" in run(avl_env, "migrate").stdout


def test_unreachable_database_fails_fast_naming_the_setting(avl_env: dict[str, str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**avl_env, "AVL_DATABASE_URL": f"postgresql://avl:secret@127.0.0.1:{port}/avl"}
    result = run(env, "migrate", check=False)
    assert_one_line_error(result, "AVL_DATABASE_URL", "cannot connect")
    assert "secret" not in result.stderr


def test_api_port_in_use_fails_fast_naming_the_setting(avl_env: dict[str, str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        env = {**avl_env, "AVL_API_PORT": str(s.getsockname()[1])}
        result = run(env, "api", check=False)
    assert_one_line_error(result, "AVL_API_PORT")


def test_unwritable_data_dir_fails_fast_naming_the_setting(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVL_")}
    env["AVL_DATA_DIR"] = str(blocker / "data")  # a directory under a regular file cannot exist
    result = run(env, "migrate", check=False)
    assert_one_line_error(result, "AVL_DATA_DIR", "not writable")


def test_invalid_setting_fails_fast(avl_env: dict[str, str]) -> None:
    result = run({**avl_env, "AVL_PROTOCOLS": "gt06,bogus"}, "migrate", check=False)
    assert_one_line_error(result, "AVL_PROTOCOLS", "bogus")


@pytest.mark.parametrize("args", [["account", "suspend", "no such account"], ["center", "add", "X", "--lat", "99", "--lon", "0"]])
def test_refused_admin_operations_are_one_line(avl_env: dict[str, str], args: list[str]) -> None:
    assert_one_line_error(run(avl_env, *args, check=False))


def test_device_port_in_use_fails_fast_naming_the_setting(avl_env: dict[str, str]) -> None:
    from avl.embedded import free_port
    from ingest.protocols import DEFAULT_PORTS

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        ports = {name: free_port() for name in DEFAULT_PORTS}
        ports["gt06"] = s.getsockname()[1]
        env = {**avl_env, "AVL_PORTS": json.dumps(ports), "AVL_INGEST_HOST": "127.0.0.1", "AVL_METRICS_PORT": "0",
               "AVL_MQTT_URL": f"mqtt://127.0.0.1:{free_port()}"}
        result = run(env, "ingest", check=False)
    assert_one_line_error(result, "AVL_PORTS", "gt06")


def _quiet_ports() -> dict[str, str]:
    """Every listener on a free port (so nothing here collides with a real service)."""
    from avl.embedded import free_port
    from ingest.protocols import DEFAULT_PORTS

    return {"AVL_PORTS": json.dumps({name: free_port() for name in DEFAULT_PORTS}), "AVL_INGEST_HOST": "127.0.0.1",
            "AVL_METRICS_PORT": "0", "AVL_API_PORT": str(free_port()), "AVL_LOG_LEVEL": "INFO"}


def test_a_port_in_use_is_the_only_thing_serve_says(avl_env: dict[str, str]) -> None:
    from avl.embedded import free_port

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        env = {**avl_env, **_quiet_ports(), "AVL_MQTT_URL": f"mqtt://127.0.0.1:{free_port()}"}
        ports = json.loads(env["AVL_PORTS"])
        ports["gt06"] = s.getsockname()[1]
        env["AVL_PORTS"] = json.dumps(ports)
        result = run(env, "serve", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("avl: error: AVL_PORTS:") and "gt06" in lines[-1]
    # Nothing claimed to be serving (the API, ingest) before the error.
    assert not [line for line in lines if "running:" in line or "API" in line or "serving" in line], result.stderr


def test_ingest_alone_announces_no_api_and_stops_on_sigterm(avl_env: dict[str, str], mqtt_broker: Any,
                                                            tmp_path: Path) -> None:
    env = {**avl_env, **_quiet_ports(), "AVL_MQTT_URL": mqtt_broker.url}
    err_path = tmp_path / "stderr"
    with open(err_path, "w") as err:
        proc = subprocess.Popen([AVL, "ingest"], env=env, stdout=subprocess.DEVNULL, stderr=err, text=True)
    try:
        deadline = time.monotonic() + 60
        while "running: ingest" not in err_path.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    log = err_path.read_text()
    assert "running: ingest" in log and proc.returncode == 0, log
    assert "API" not in log and "8080" not in log and "Traceback" not in log, log


def test_commands_beside_a_running_demo_use_its_database_and_say_so(avl_env: dict[str, str], db_url: str,
                                                                     tmp_path: Path) -> None:
    from avl.runtime import RUNTIME_FILE

    data = tmp_path / "demo-data"
    data.mkdir()
    parts = psycopg.conninfo.conninfo_to_dict(db_url)
    with_password = f"postgresql://{parts['user']}:s3cret@{parts['host']}:{parts['port']}/{parts['dbname']}"  # trust auth
    runtime = {"pid": os.getpid(), "command": "avl demo", "database_url": with_password, "mqtt_url": None}
    (data / RUNTIME_FILE).write_text(json.dumps(runtime))
    env = {k: v for k, v in avl_env.items() if k != "AVL_DATABASE_URL"}
    env.update({"AVL_DATA_DIR": str(data), "AVL_LOG_LEVEL": "INFO"})
    run(avl_env, "account", "add", "Flota del Demo")
    listed = run(env, "account", "suspend", "Flota del Demo")
    assert json.loads(listed.stdout)["status"] == "suspended"
    named = [line for line in listed.stderr.splitlines() if "database: " in line]
    assert len(named) == 1 and "avl:***@" in named[0] and "s3cret" not in listed.stderr, listed.stderr
    assert f"(avl demo's, pid {os.getpid()}, from {data / RUNTIME_FILE})" in named[0]
    assert not (data / "postgres").exists()  # no cluster of its own was started


def test_a_runtime_file_left_by_a_dead_demo_is_ignored(tmp_path: Path) -> None:
    from avl.config import load_settings
    from avl.runtime import RUNTIME_FILE, adopt_running

    gone = subprocess.Popen(["true"])  # a pid that no longer runs
    gone.wait()
    (tmp_path / RUNTIME_FILE).write_text(json.dumps({"pid": gone.pid, "database_url": "postgresql://x@h/db"}))
    settings = load_settings(data_dir=tmp_path, database_url=None)
    assert adopt_running(settings) == (settings, None)


def test_numbers_are_stored_in_e164_and_a_device_takes_its_parked_cadence_and_sms_password(avl_env: dict[str, str],
                                                                                           db_url: str) -> None:
    run(avl_env, "account", "add", "Flota Este", "--contact-msisdn", "0412-111 2233")
    run(avl_env, "device", "add", "862170010009001", "--protocol", "gl200", "--account", "Flota Este",
        "--msisdn", "0414 000 1122", "--interval", "30", "--parked-interval", "300", "--sms-password", "gv300x")
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT contact_msisdn FROM accounts").fetchone() == ("+584121112233",)
        assert conn.execute("SELECT msisdn, report_interval_s, parked_interval_s, options->>'sms_password'"
                            " FROM devices").fetchone() == ("+584140001122", 30, 300, "gv300x")
    taken = run(avl_env, "device", "add", "862170010009002", "--protocol", "gl200", "--msisdn", "584140001122",
                check=False)
    assert_one_line_error(taken, "+584140001122 already belongs to another device")
    bad = run(avl_env, "device", "add", "862170010009003", "--protocol", "gl200", "--msisdn", "call me", check=False)
    assert_one_line_error(bad, "MSISDN", "not a number")


def test_diagnose_json_prints_the_whole_run(avl_env: dict[str, str]) -> None:
    run(avl_env, "account", "add", "Flota Oeste")
    run(avl_env, "device", "add", "862170010009004", "--protocol", "gl200", "--account", "Flota Oeste",
        "--msisdn", "04140009004")
    result = json.loads(run(avl_env, "diagnose", "0414-0009004", "--json").stdout)  # found by its number
    assert set(result) >= {"run_id", "verdict", "explanation", "why", "steps", "ticket", "sms_via"}
    assert result["run_id"] >= 1 and result["identifier"] == "862170010009004"
    # No ingest process runs in this test: the platform step finds none, a platform incident.
    assert result["verdict"] == "platform_incident" and result["ticket"]["number"].startswith("AVL-")
    assert [s["name"] for s in result["steps"]] == ["account", "platform"]
