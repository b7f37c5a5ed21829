"""bench.ingest runs end to end with tiny settings and reports consistent, positive figures.

Speed is measured by the benchmark, never asserted here."""

from __future__ import annotations

import json
from pathlib import Path

from bench.ingest import main


def test_ingest_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    results = main(["--connections", "4", "--duration", "2", "--warmup", "0.5", "--naive-rows", "100",
                    "--json", str(out)])

    e2e = results["end_to_end"]
    assert e2e["connections"] == 4
    assert e2e["positions_acked"] > 0
    assert e2e["positions_stored"] == e2e["positions_acked"], "every ACKed position is stored, and only those"
    assert e2e["unacked_frames"] == 0 and e2e["errors"] == []
    assert e2e["positions_per_s"] > 0
    for protocol in ("teltonika", "gt06"):
        figures = e2e["protocols"][protocol]
        assert figures["connections"] == 2
        assert figures["window_positions"] > 0
        assert 0 < figures["latency"]["p50_ms"] <= figures["latency"]["p99_ms"]
    assert 0 < e2e["latency"]["p50_ms"] <= e2e["latency"]["p99_ms"]
    assert e2e["ingest_memory_mib"]["hwm"] > 0 and e2e["ingest_memory_mib"]["rss_after_drain"] > 0
    assert e2e["ingest_exit_code"] == 0

    assert results["bare_copy"]["rows"] == e2e["positions_stored"]
    assert results["bare_copy"]["rows_per_s"] > 0
    assert results["naive"]["rows"] == 100
    assert results["naive"]["rows_per_s"] > 0
    assert results["ratios"]["end_to_end_over_bare_copy"] > 0
    assert results["ratios"]["end_to_end_over_naive"] > 0
    assert results["machine"]["postgres"]["fsync"] == "on"
    assert results["ok"] is True
    assert json.loads(out.read_text())["end_to_end"]["positions_stored"] == e2e["positions_stored"]


def test_diagnosis_benchmark_smoke() -> None:
    # One vehicle of each fault kind among 40, a 40-second live tail: the run completes and reports on all.
    from bench.diagnosis import EXPECTED
    from bench.diagnosis import main as diagnosis

    r = diagnosis(["--vehicles", "40", "--faulty", "0.2", "--live-s", "40", "--sweep-s", "5", "--sms-wait-s", "20",
                   "--seed", "3"])
    assert r["vehicles"] == 40 and r["injected_faults"] == len(EXPECTED)
    assert sum(sum(row.values()) for row in r["matrix"].values()) == 40
    assert set(r["matrix"]) == {"healthy", *EXPECTED}
    # Whatever the verdicts of so short a run, no vehicle is sent to a workshop for nothing.
    assert r["false_field_service_tickets"] == 0 and r["platform_tickets"] == 0
    assert r["matrix"]["account_suspended"] == {"account_suspended": 1}
