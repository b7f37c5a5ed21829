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
from typing import Any

from avl.db.migrate import available
from avl.embedded import free_port, port_in_use
from ingest.protocols import DEFAULT_PORTS

AVL = str(Path(sys.executable).parent / "avl")


def _get(url: str, token: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status, json.loads(response.read())


def test_demo_serves_a_migrated_embedded_database_and_stops_cleanly(workdir: Path) -> None:
    data = workdir / "demo"
    db_port, mqtt_port, api_port, metrics_port = free_port(), free_port(), free_port(), free_port()
    ports = {name: free_port() for name in DEFAULT_PORTS}
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVL_")}
    env.update({"AVL_DATA_DIR": str(data), "AVL_EMBEDDED_DB_PORT": str(db_port), "AVL_INGEST_HOST": "127.0.0.1",
                "AVL_SMPP_PORT": str(free_port()),
                "AVL_EMBEDDED_MQTT_PORT": str(mqtt_port), "AVL_API_PORT": str(api_port),
                "AVL_PORTS": json.dumps(ports), "AVL_METRICS_PORT": str(metrics_port)})
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
        latest = max(m.version for m in available())
        assert (status, health["status"], health["storage"], health["schema_version"]) == (200, "ok", "native", latest)
        status, me = _get(f"http://127.0.0.1:{api_port}/api/v1/me", token.group(1))
        assert me["role"] == "client"
        assert port_in_use(db_port) and port_in_use(mqtt_port)
        # The virtual fleet reports over the real wire protocols and the client sees it move.
        reporting: set[str] = set()
        wanted = {"teltonika", "gt06", "gl200", "calamp", "h02", "osmand", "json"}
        for _ in range(120):
            _, vehicles = _get(f"http://127.0.0.1:{api_port}/api/v1/vehicles", token.group(1))
            reporting = {v["protocol"] for v in vehicles if v["position"]}
            if wanted <= reporting:
                break
            time.sleep(0.5)
        assert wanted <= reporting, reporting
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
            metrics = response.read().decode()
        assert 'avl_positions_total{destination="position",protocol="gt06"}' in metrics
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest
    assert "demo stopped" in rest and "Traceback" not in rest
    # Everything it started is gone: database, broker, API.
    assert not port_in_use(db_port) and not port_in_use(mqtt_port) and not port_in_use(api_port)
