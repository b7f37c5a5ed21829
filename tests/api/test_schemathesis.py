"""Property-based tests of the whole HTTP API from its own OpenAPI document (schemathesis, over
real HTTP against the served app, on a database holding two accounts' real data): no operation
answers a server error, every response matches what its operation documents (body schema and
content type), and every status code it answers is one it documents.

Schemathesis runs as its command line (``st run``) in a subprocess, once as a fleet client and
once as an admin (who may call everything), through all its phases: the documented examples,
boundary coverage, fuzzing with valid and invalid data, and stateful sequences inferred from the
responses. Each run is shared by the three tests of its role; its JSON report gives the failures
by kind, its text output (shown on failure) each one's response and a curl command.

Known inputs that broke the API are pinned below as plain requests, so they stay covered
whatever the fuzzer's seed draws.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import uvicorn

from api.app import create_app
from avl.embedded import free_port
from tests.api.conftest import Api
from tests.api.test_tenancy_walk import build

pytest.importorskip("schemathesis", reason="schemathesis is in the test extras: pip install -e '.[test]'")

CHECKS = ["not_a_server_error", "response_schema_conformance", "content_type_conformance", "status_code_conformance"]
SERVER_ERRORS = {"ST101", "ST102"}          # 5xx (also on an undeclared request Content-Type)
UNDOCUMENTED_STATUS = {"ST103"}
# Everything else those checks report is a response unlike its documentation: body schema (ST108),
# content type (ST104-ST106), undecodable body (ST109-ST111).
EXAMPLES = 10  # per operation and phase: both runs take about 30 s in all
SEED = int(os.environ.get("AVL_SCHEMATHESIS_SEED", "20261124"))  # fixed: a failure reproduces; change it to explore
# Operations that would end the run's own authentication: logging out revokes the token in use,
# and revoking "a token" (the stateful phase finds ids in GET /admin/tokens) may revoke it too.
EXCLUDED = ["POST /api/v1/auth/logout", "POST /api/v1/admin/tokens/{token_id}/revoke"]
# One worker: with several, CPython 3.11 sometimes fails compiling in threads ("AST constructor
# recursion depth mismatch", from hypothesis describing a filter lambda), a runtime error of the tool.
COMMAND = ["--checks", ",".join(CHECKS), "--max-examples", str(EXAMPLES), "--seed", str(SEED), "--workers", "1",
           "--request-timeout", "20", "--no-color"]


@dataclass
class Run:
    role: str
    report: dict[str, Any]
    output: str

    def failures(self, codes: set[str] | None = None) -> list[dict[str, Any]]:
        """The report's failures of these kinds (all but ``SERVER_ERRORS | UNDOCUMENTED_STATUS``: None)."""
        known = SERVER_ERRORS | UNDOCUMENTED_STATUS
        return [f for f in self.report["failures"] if (f["code"] in codes if codes else f["code"] not in known)]

    def explain(self, failures: list[dict[str, Any]]) -> str:
        """The failures, then each failing case of those kinds from the text output."""
        codes = {f["code"] for f in failures}
        lines = [f"{f['code']} {f['title']} ({f['count']}): " + ", ".join(f["operations"]) for f in failures]
        cases = [case for case in _cases(self.output) if any(f"- {code} " in case for code in codes)]
        return "\n".join(lines) + "\n\n" + "\n".join(cases)[:20000]


def _cases(output: str) -> list[str]:
    """Each failing test case of the text output's FAILURES section, under its operation."""
    start, end = output.find(" FAILURES ="), output.find(" WARNINGS =")
    if start < 0:
        return []
    section = output[start:end if end > start else output.find(" SUMMARY =")]
    parts = re.split(r"\n_{3,} (.+?) _{3,}\n", section)
    return [f"--- {parts[i]}\n" + case.strip()
            for i in range(1, len(parts), 2) for case in re.split(r"(?:^|\n)(?=\d+\. Test Case ID: )", parts[i + 1])
            if case.strip()]


def schemathesis(api: Api, token: str, report_dir: Path) -> tuple[dict[str, Any], str]:
    """Runs ``st run`` against the served API; returns its JSON report and its text output."""
    command = [sys.executable, "-m", "schemathesis.cli", "run", f"{api.url}/api/v1/openapi.json",
               "--header", f"Authorization: Bearer {token}", *COMMAND, "--report", "json",
               "--report-dir", str(report_dir)]
    for operation in EXCLUDED:  # each of these paths has this one method only
        command += ["--exclude-path", operation.split(" ", 1)[1]]
    report_dir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(command, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false", "COLUMNS": "120"})
    output = done.stdout + done.stderr
    (report_dir / "output.txt").write_text(output)
    reports = sorted(report_dir.glob("*.json"))
    assert reports, f"schemathesis wrote no report (exit {done.returncode}):\n{output[-4000:]}"
    return json.loads(reports[-1].read_text()), output


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # running in a thread
        pass


def _wait_started(server: uvicorn.Server) -> None:
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "API did not start"


@pytest.fixture(scope="module", params=["client", "admin"])
async def run(request: pytest.FixtureRequest, pg_server: str, template_db: str,
              tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Run]:
    """One schemathesis run per role over its own served API and database (as the ``api``
    fixture serves them, but once for the three tests below)."""
    name = f"avl_st_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    db_url = psycopg.conninfo.make_conninfo(pg_server, dbname=name)
    port = free_port()
    server = _Server(uvicorn.Config(create_app(db_url), host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    try:
        _wait_started(server)
        api = Api(f"http://127.0.0.1:{port}", db_url)
        tmp = tmp_path_factory.mktemp(f"schemathesis-{request.param}")
        world = await build(api, tmp)
        report, output = schemathesis(api, world.a.token if request.param == "client" else world.admin, tmp / "report")
        tested = report["operations"]
        print(f"\nschemathesis {report['schemathesis_version']} as {request.param}: {tested['tested']} of"
              f" {tested['total']} operations ({len(EXCLUDED)} excluded), {report['test_cases']['generated']} test"
              " cases, phases " + ", ".join(f"{n} {p['status']}" for n, p in report["phases"].items())
              + f", seed {report['seed']}, {report['running_time']:.1f} s")
        for f in report["failures"]:
            print(f"  {f['code']} {f['title']} ({f['count']}): " + ", ".join(f["operations"]))
        yield Run(request.param, report, output)
    finally:
        server.should_exit = True
        thread.join(10)
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_schemathesis_tests_every_operation_but_the_excluded(run: Run) -> None:
    report = run.report
    assert report["complete"] and not report["errors"], run.output[-6000:]
    tested = report["operations"]
    assert tested["tested"] == tested["selected"] == tested["total"] - len(EXCLUDED), run.output[-3000:]


def test_no_operation_answers_a_server_error(run: Run) -> None:
    found = run.failures(SERVER_ERRORS)
    assert not found, run.explain(found)


def test_every_response_matches_the_schema_and_content_type_its_operation_documents(run: Run) -> None:
    found = run.failures()
    assert not found, run.explain(found)


def test_every_status_code_an_operation_answers_is_documented(run: Run) -> None:
    found = run.failures(UNDOCUMENTED_STATUS)
    assert not found, run.explain(found)


# Inputs schemathesis found breaking the API, pinned (any seed) --------------------------------

BEYOND_BIGINT = "28459887926872780800"  # > 2**63 - 1: PostgreSQL's bigint
PINNED = [
    # (role, method, path, query, JSON body or raw bytes)
    ("client", "GET", f"/api/v1/vehicles/{BEYOND_BIGINT}", None, None),
    ("client", "GET", "/api/v1/geofence-alerts", {"device_id": BEYOND_BIGINT}, None),
    ("admin", "GET", "/api/v1/geofences", {"account_id": BEYOND_BIGINT}, None),
    ("admin", "GET", "/api/v1/admin/devices", {"offset": BEYOND_BIGINT}, None),
    ("admin", "GET", "/api/v1/admin/vehicles", {"offset": BEYOND_BIGINT}, None),
    ("admin", "GET", "/api/v1/admin/users", {"account_id": "-" + BEYOND_BIGINT}, None),
    ("admin", "GET", "/api/v1/installers/installations", {"center_id": BEYOND_BIGINT}, None),
    ("admin", "GET", "/api/v1/support/fleet/health", {"account_id": BEYOND_BIGINT}, None),
    # A NUL character: PostgreSQL text cannot hold one.
    ("anonymous", "POST", "/api/v1/auth/login", None, {"email": "ana\u0000@flota.example", "password": "x"}),
    ("client", "POST", "/api/v1/geofences", None, {"name": "Zona\u0000roja", "geometry": {
        "type": "Polygon", "coordinates": [[[-66.91, 10.5], [-66.89, 10.5], [-66.89, 10.52], [-66.91, 10.5]]]}}),
    ("admin", "GET", "/api/v1/support/devices", {"q": "AB\u0000"}, None),
    ("admin", "GET", "/api/v1/support/tickets", {"q": "AB\u0000"}, None),
    ("admin", "GET", "/api/v1/support/tickets/AVL%00", None, None),
    ("admin", "POST", "/api/v1/admin/accounts", None, {"name": "Flota\u0000"}),
    ("admin", "POST", "/api/v1/admin/users", None, {"name": "Ana\u0000", "email": "ana@flota.example", "role": "admin"}),
    ("admin", "POST", "/api/v1/admin/vehicles", None, {"account_id": 1, "plate": "AB\u0000123", "supply_voltage_v": 12}),
    ("admin", "POST", "/api/v1/admin/tokens", None, {"user_id": 1, "name": "panel\u0000"}),
    # A body that is not UTF-8 JSON: bad input like any other (422 invalid_request), not a 400.
    ("admin", "POST", "/api/v1/admin/accounts", None, b"\xff{"),
]


def _pinned_id(method: str, path: str, query: dict[str, str] | None, body: Any) -> str:
    what = "undecodable body" if isinstance(body, bytes) else "NUL" if "\\u0000" in json.dumps([path, query, body]) or "%00" in path \
        else "beyond bigint"
    return f"{method} {path.replace(BEYOND_BIGINT, '{id}')}{'?' + ','.join(query) if query else ''} {what}"


@pytest.mark.parametrize(("role", "method", "path", "query", "body"), PINNED,
                         ids=[_pinned_id(*case[1:]) for case in PINNED])
async def test_out_of_range_integers_nul_characters_and_undecodable_bodies_are_refused_as_bad_input(
        api: Api, tmp_path: Path, role: str, method: str, path: str, query: dict[str, str] | None,
        body: Any) -> None:
    api.account("Flota Uno")
    token = {"client": api.token("client", "despacho", account="Flota Uno"), "admin": api.token("admin", "raiz"),
             "anonymous": None}[role]
    with api.client(token) as c:
        if isinstance(body, bytes):
            r = c.request(method, path, params=query, content=body, headers={"Content-Type": "application/json"})
        else:
            r = c.request(method, path, params=query, json=body)
    # An identifier nothing can have is missing (404) or invalid (422); anything else is invalid input.
    allowed = {404, 422} if BEYOND_BIGINT in path or "%00" in path else {422}
    assert r.status_code in allowed, f"{method} {r.request.url} -> {r.status_code} {r.text}"
    assert r.json()["error"] in ("invalid_request", "not_found")
