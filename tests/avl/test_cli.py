"""The `avl` command against a real database: administration, and bad configuration."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

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
    assert json.loads(run(avl_env, "account", "retire", str(account["id"])).stdout)["status"] == "retired"
    with psycopg.connect(db_url) as conn:
        # Retiring suspends the cellular line of every terminal of the account.
        assert conn.execute("SELECT line_status FROM devices").fetchall() == [("suspended",)]
    refused = run(avl_env, "account", "reconnect", str(account["id"]), check=False)
    assert_one_line_error(refused, "retired")


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
