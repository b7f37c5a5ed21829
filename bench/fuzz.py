"""Coverage-guided fuzzing of every decoder with atheris (libFuzzer for Python).

    .venv/bin/pip install atheris          # a manylinux wheel: no clang needed
    .venv/bin/python bench/fuzz.py --seconds 120            # every protocol, 120 s each
    .venv/bin/python bench/fuzz.py --protocols gt06,json --seconds 600

Each protocol runs in its own process (libFuzzer exits the process when it finds a crash
or its time is up), seeded with the real-device corpus and the protocol's encoders,
with the decoder modules instrumented for coverage. The check is the one the test suite
uses (tests/ingest/protocols/test_fuzz.py: ``exercise``): split() and decode() on fresh
sessions, the records through route() and the spool encoder; only DecodeError may escape.
libFuzzer bounds each input's time (-timeout) and the process's memory (-rss_limit_mb).

Crash inputs are copied to tests/ingest/protocols/regressions/<protocol>-<n>.bin (new
contents only), where test_regression_corpus replays them.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# bench/ingest.py would shadow the ingest package: the project root comes first instead.
sys.path[0] = str(ROOT)
REGRESSIONS = ROOT / "tests" / "ingest" / "protocols" / "regressions"
MODES = ("known", "fresh")


def _child(name: str, seconds: int, workdir: Path) -> None:
    import atheris

    module = "json_report" if name == "json" else name
    with atheris.instrument_imports(include=["ingest.protocols"]):
        import importlib

        importlib.import_module("ingest.protocols.base")
        importlib.import_module(f"ingest.protocols.{module}")
        if name == "gl200":
            importlib.import_module("ingest.protocols._gl200_text")
            importlib.import_module("ingest.protocols._gl200_binary")
    from tests.ingest.protocols import test_fuzz

    test_fuzz.GUARD = False  # libFuzzer's -timeout and -rss_limit_mb bound time and memory
    corpus = workdir / "corpus"
    corpus.mkdir(exist_ok=True)
    for frame, _before, _options, _transport in test_fuzz.seeds(name):
        for i in range(len(MODES)):
            data = bytes([i]) + frame
            (corpus / hashlib.sha1(data).hexdigest()).write_bytes(data)

    def one_input(data: bytes) -> None:
        if not data:
            return
        test_fuzz.exercise(name, data[1:], (), {}, None, MODES[data[0] % len(MODES)])

    # libFuzzer stops at the first finding (its fork mode, which would go on, does not work
    # under atheris: every job exits 126), so fix a finding and run again to look further.
    flags = [f"-max_total_time={seconds}", "-timeout=5", "-rss_limit_mb=2048", "-max_len=8192",
             f"-artifact_prefix={workdir}/", "-print_final_stats=1"]
    atheris.Setup([sys.argv[0], *flags, str(corpus)], one_input)
    atheris.Fuzz()


def _save(name: str, workdir: Path) -> list[Path]:
    REGRESSIONS.mkdir(parents=True, exist_ok=True)
    known = {hashlib.sha1(p.read_bytes()).digest() for p in REGRESSIONS.glob("*.bin")}
    saved = []
    for artifact in sorted(workdir.glob("*-*")):
        if not artifact.name.startswith(("crash-", "timeout-", "oom-", "slow-unit-")) or not artifact.is_file():
            continue
        data = artifact.read_bytes()[1:]  # the first byte chose the session mode
        digest = hashlib.sha1(data).digest()
        if digest in known:
            continue
        known.add(digest)
        n = 1
        while (REGRESSIONS / f"{name}-{n}.bin").exists():
            n += 1
        target = REGRESSIONS / f"{name}-{n}.bin"
        target.write_bytes(data)
        saved.append(target)
    return saved


def main() -> int:
    from ingest.protocols import ALL_NAMES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocols", default=",".join(ALL_NAMES))
    parser.add_argument("--seconds", type=int, default=60, help="fuzzing time per protocol")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.seconds, Path(args.workdir))
        return 0
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("atheris is not installed: .venv/bin/pip install atheris", file=sys.stderr)
        return 2
    failed = []
    for name in args.protocols.split(","):
        workdir = Path(tempfile.mkdtemp(prefix=f"avl-fuzz-{name}-"))
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = subprocess.run([sys.executable, __file__, "--child", name, "--seconds", str(args.seconds),
                               "--workdir", str(workdir)], env=env, capture_output=True, text=True)
        stats = [line for line in proc.stderr.splitlines() if line.startswith(("stat::", "#", "==", "Done"))]
        execs = next((line.split(":")[-1].strip() for line in stats if "number_of_executed_units" in line), "?")
        cov = next((line for line in reversed(stats) if " cov: " in line), "")
        saved = _save(name, workdir)
        status = "ok" if proc.returncode == 0 and not saved else f"FOUND {len(saved)} (exit {proc.returncode})"
        print(f"{name}: {status}; executions {execs}; {cov.strip()[:100]}")
        if proc.returncode != 0 and not saved:
            print(proc.stderr[-3000:], file=sys.stderr)
        for path in saved:
            print(f"  saved {path.relative_to(ROOT)}")
        if saved or proc.returncode != 0:
            failed.append(name)
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"atheris: {len(failed)} protocol(s) with findings: {', '.join(failed) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
