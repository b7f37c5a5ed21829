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


def test_decoders_benchmark_smoke(tmp_path: Path) -> None:
    # The command as the README gives it, this tree only, a few frames: every protocol decodes its
    # simulator frames without an error, and the figures add up.
    import subprocess
    import sys

    from bench.decoders import PROTOCOLS, TELTONIKA_BATCH

    out = tmp_path / "decoders.json"
    run = subprocess.run([sys.executable, "-m", "bench.decoders", "--baseline", "none", "--frames", "20",
                          "--repeat", "1", "--json", str(out)], cwd=Path(__file__).resolve().parents[2],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("bench.decoders: 20 frames per workload, best of 1; load average")
    figures = json.loads(out.read_text())
    assert figures["baseline"] is None and figures["baseline_rev"] is None

    sim = {w["protocol"]: w for w in figures["current"]["workloads"] if w["source"] == "sim"}
    assert set(sim) == set(PROTOCOLS)
    for name, w in sim.items():
        per_frame = TELTONIKA_BATCH if name == "teltonika" else 1
        assert w["frames"] == 20 and w["errors"] == 0 and w["positions"] == 20 * per_frame, name
        assert w["seconds"] > 0 and len(w["digests"]) == w["distinct_frames"] > 0
        assert f"{name:<10} sim" in run.stdout
    for w in figures["current"]["workloads"]:  # the corpus ones too, when ../shared/vectors is there
        assert w["seconds"] > 0 and w["positions"] >= 0 and 0 <= w["errors"] <= w["frames"]

    checks = {c["function"].split()[0]: c["check"] for c in figures["current"]["crc"]}
    assert checks == {"crc16_ibm": 0xBB3D, "crc16_x25": 0x906E, "crc16_kermit": 0x2189, "crc16_modbus": 0x4B37,
                      "crc16_ccitt_false": 0x29B1}
    assert all(c["us_per_call"] > 0 for c in figures["current"]["crc"])
    assert {(g["protocol"], g["byte"]) for g in figures["current"]["garbage"]} == {
        ("teltonika", "00"), ("teltonika", "ff"), ("suntech", "00"), ("gt06", "00")}
    assert all(g["calls"] >= 1 and g["seconds"] > 0 for g in figures["current"]["garbage"])


def test_sweep_and_mqtt_benchmarks_smoke(tmp_path: Path) -> None:
    # bench.sweep on a small fleet: the first sweep, the later ones and the whole-read baseline agree (it asserts
    # that itself) and each later sweep re-reads only what changed.
    from bench.mqtt import main as mqtt
    from bench.sweep import main as sweep

    (s,) = sweep(["--sizes", "3000", "--repeat", "2", "--json", str(tmp_path / "sweep.json")])
    assert s["devices"] > 3000 and s["first_sweep_s"] > 0 and s["sweep_s"] > 0 and s["whole_read_sweep_s"] > 0
    assert 0 < s["changed_devices"] < s["devices"]
    # bench.mqtt with one and two ingest processes (the second on a shared subscription): every PUBACKed
    # message stored once.
    r = mqtt(["--processes", "1,2", "--devices", "20", "--duration", "2", "--warmup", "1", "--inflight", "200",
              "--backlog", "2000", "--drain", "30"])
    assert r["ok"] is True, r["runs"]
    one, two = r["runs"]
    assert one["subscription"] == "avl/in/#" and two["subscription"].startswith("$share/")
    assert all(x["messages_per_s"] > 0 and x["pubacks"] == x["stored"] > 0 for x in r["runs"])
