"""`avl demo` on the embedded default: its own PostgreSQL and broker, a demo account, the
server answering its health endpoint; Ctrl-C stops everything it started."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from avl.embedded import free_port, port_in_use

AVL = str(Path(sys.executable).parent / "avl")


def _get(url: str, token: str | None = None) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status, json.loads(response.read())


def test_demo_serves_a_migrated_embedded_database_and_stops_cleanly(workdir: Path) -> None:
    data = workdir / "demo"
    db_port, mqtt_port, api_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVL_")}
    env.update({"AVL_DATA_DIR": str(data), "AVL_EMBEDDED_DB_PORT": str(db_port),
                "AVL_EMBEDDED_MQTT_PORT": str(mqtt_port), "AVL_API_PORT": str(api_port)})
    proc = subprocess.Popen([AVL, "demo"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            output.append(line)
            if line.startswith("  try: curl"):
                break
        text = "".join(output)
        assert "AVL demo is running" in text, text
        token = re.search(r"client\s+(avl_\S+)", text)
        assert token, text
        for _ in range(100):
            try:
                status, health = _get(f"http://127.0.0.1:{api_port}/health")
                break
            except OSError:
                time.sleep(0.1)
        assert (status, health["status"], health["storage"], health["schema_version"]) == (200, "ok", "native", 3)
        status, me = _get(f"http://127.0.0.1:{api_port}/api/v1/me", token.group(1))
        assert me["role"] == "client"
        assert port_in_use(db_port) and port_in_use(mqtt_port)
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest
    assert "demo stopped" in rest and "Traceback" not in rest
    # Everything it started is gone: database, broker, API.
    assert not port_in_use(db_port) and not port_in_use(mqtt_port) and not port_in_use(api_port)
