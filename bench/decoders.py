"""Decoder micro-benchmark: frames/s and µs per position for the binary decoders, with the
previous implementation timed in the same run.

    .venv/bin/python -m bench.decoders [--frames 2000] [--repeat 3] [--protocols teltonika,gt06]
        [--baseline REV|none] [--profile prof.txt] [--json out.json]

Workloads, per protocol (gt06, teltonika, meitrack, suntech, calamp, gl200):

* ``sim``: frames from the simulator encoders (the ones ``bench.ingest`` and the fleet simulator
  send: Teltonika codec 8 frames of 50 records, one position per frame elsewhere), each split
  from the stream (TCP protocols) and decoded on one session, as a connection does;
* ``corpus``: every real-device frame of the protocol in ``../shared/vectors`` (decoder stage),
  each on its own session prepared as the corpus test does (the frames before it replayed).

``--frames`` frames are decoded per workload, ``--repeat`` times; the best run counts. Beside them:
the CRC-16 functions on a 20-byte and a 2 KiB input, and the framers over 64 KiB of garbage
(``split`` called as the TCP transport does until the buffer is consumed).

The baseline is the protocol package of another git revision (default: ``1877cdb``, the last
commit with the per-decoder byte readers and the pure-Python CRCs), extracted with
``git archive`` and run by this same file in a child process on the same frames. Every frame's
decode result (records, reply; an error as just "error") must be the same in both: the run says
how many differ. ``--profile`` writes cProfile's top functions for the current tree's ``sim`` and
``corpus`` loops (py-spy works too: ``py-spy record -o prof.svg -- .venv/bin/python -m
bench.decoders --baseline none``).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import io
import json
import os
import pickle
import pstats
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROTOCOLS = ("teltonika", "gt06", "gl200", "meitrack", "suntech", "calamp")
KNOWN_DEVICE = "123456789012345"
FIXED_NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
TELTONIKA_BATCH = 50
GARBAGE = (("teltonika", b"\x00"), ("teltonika", b"\xff"), ("suntech", b"\x00"), ("gt06", b"\x00"))
GARBAGE_BYTES = 65536
CRC_SIZES = (20, 2048)

Frame = tuple[bytes, str, dict[str, Any], list[bytes]]  # payload, transport, options, frames before it


def _now() -> datetime:
    return FIXED_NOW


# Workloads (built in the parent, from the current tree) ---------------------------------------


def _sim_frames(name: str, count: int) -> list[Frame]:
    from bench.loadgen import track_position
    from ingest.protocols import calamp, gl200, gt06, meitrack, suntech, teltonika

    start = datetime(2026, 11, 28, 6, 0, tzinfo=UTC)

    def track(i: int) -> Any:
        p = track_position(i, start, name)
        p.device = KNOWN_DEVICE
        return p

    encoders: dict[str, Callable[[int], bytes]] = {
        "teltonika": lambda k: teltonika.encode_batch([track(i) for i in range(k * TELTONIKA_BATCH,
                                                                                 (k + 1) * TELTONIKA_BATCH)]),
        "gt06": lambda k: gt06.encode_position(track(k), (k + 2) & 0xFFFF),
        "gl200": lambda k: gl200.encode_position(track(k), k),
        "meitrack": lambda k: meitrack.encode_position(track(k), k),
        "suntech": lambda k: suntech.encode_position(track(k), k),
        "calamp": lambda k: calamp.encode_position(track(k), k),
    }
    transport = "udp" if name == "calamp" else "tcp"
    return [(encoders[name](k), transport, {}, []) for k in range(count)]


def _corpus_frames(name: str) -> list[Frame]:
    from tests.ingest.protocols.corpus import load, predecessors, session_for

    frames = [f for f in load() if f.data["protocol"] == name and f.data["stage"] == "decoder"]
    before = predecessors(frames)
    out: list[Frame] = []
    for f in frames:
        session = session_for(f)
        out.append((f.payload, session.transport, session.options, [b.payload for b in before[f.id]]))
    return out


def workloads(names: list[str]) -> tuple[list[dict[str, Any]], str | None]:
    note = None
    out = []
    for name in names:
        out.append({"protocol": name, "source": "sim", "frames": _sim_frames(name, 64)})
        try:
            corpus = _corpus_frames(name)
        except OSError as exc:
            note = f"corpus not read ({exc}): set AVL_VECTORS to the folder of dev.jsonl"
            continue
        if corpus:
            out.append({"protocol": name, "source": "corpus", "frames": corpus})
    return out, note


# The measurement (runs in this process for the current tree, in a child for the baseline) -----


def _digest(result: Any) -> str:
    if result is None:
        return "error"
    records = [(p.device, p.fix_time, p.protocol, p.valid, p.latitude, p.longitude, p.speed_kmh, p.course,
                p.altitude_m, p.satellites, p.hdop, p.ignition, p.power_mv, p.battery_mv, p.odometer_m, p.alarm,
                sorted(p.attributes.items()), p.raw) for p in result.positions]
    return hashlib.sha1(repr((records, result.reply)).encode()).hexdigest()[:16]


def _prepare(name: str, frames: list[Frame]) -> list[tuple[bytes, Any, bool]]:
    from ingest.protocols import DecodeError, Session, get

    protocol = get(name)
    items = []
    for payload, transport, options, before in frames:
        session = Session(transport=transport, remote="127.0.0.1:40000", device=KNOWN_DEVICE, options=dict(options),
                          now=_now)
        for earlier in before:
            try:
                protocol.decode(earlier, session)
            except DecodeError:
                pass
        items.append((payload, session, transport == "tcp"))
    return items


def _run(name: str, items: list[tuple[bytes, Any, bool]], count: int, split: bool) -> tuple[float, int, int]:
    from ingest.protocols import DecodeError, get

    protocol = get(name)
    decode, framer = protocol.decode, protocol.split
    sequence = (items * (count // len(items) + 1))[:count]
    positions = errors = 0
    gc.collect()
    started = time.perf_counter()
    for payload, session, stream in sequence:
        if split and stream:
            framer(payload)
        try:
            positions += len(decode(payload, session).positions)
        except DecodeError:
            errors += 1
    return time.perf_counter() - started, positions, errors


def _garbage(name: str, byte: bytes) -> tuple[float, int]:
    from ingest.protocols import DecodeError, get

    split = get(name).split
    buffer = byte * GARBAGE_BYTES
    calls = 0
    started = time.perf_counter()
    while buffer:
        try:
            _frame, consumed = split(buffer)
        except DecodeError:
            break
        calls += 1
        if consumed == 0:
            break
        buffer = buffer[consumed:]
    return time.perf_counter() - started, calls


def _crc_functions() -> dict[str, Callable[[bytes], int]]:
    from ingest.protocols.base import crc16_ibm, crc16_x25
    from ingest.protocols.crc16 import crc16_kermit, crc16_modbus

    try:
        from ingest.protocols.crc16 import crc16_ccitt_false
    except ImportError:  # the baseline revision keeps it in the gl200 binary module
        from ingest.protocols._gl200_binary import crc16_ccitt_false  # type: ignore[attr-defined]

    return {"crc16_ibm (teltonika, atrack)": crc16_ibm, "crc16_x25 (gt06, castel)": crc16_x25,
            "crc16_kermit (ruptela)": crc16_kermit, "crc16_modbus (galileo)": crc16_modbus,
            "crc16_ccitt_false (gl200)": crc16_ccitt_false}


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Every figure for the tree this process imports ``ingest`` from."""
    results: dict[str, Any] = {"workloads": [], "crc": [], "garbage": []}
    for load in spec["workloads"]:
        name = load["protocol"]
        from ingest.protocols import DecodeError, get

        items = _prepare(name, load["frames"])
        digests = []
        for payload, session, _stream in items:  # the first pass is the one compared between trees
            try:
                digests.append(_digest(get(name).decode(payload, session)))
            except DecodeError:
                digests.append(_digest(None))
        runs = [_run(name, items, spec["frames"], load["source"] == "sim") for _ in range(spec["repeat"])]
        seconds, positions, errors = min(runs)
        results["workloads"].append({"protocol": name, "source": load["source"], "frames": spec["frames"],
                                     "distinct_frames": len(items), "seconds": seconds, "positions": positions,
                                     "errors": errors, "digests": digests})
    blob = bytes(range(256)) * (max(CRC_SIZES) // 256 + 1)
    for label, function in _crc_functions().items():
        for size in CRC_SIZES:
            data = blob[:size]
            calls = max(200, 400_000 // size)
            best = min(_timed(function, data, calls) for _ in range(spec["repeat"]))
            results["crc"].append({"function": label, "bytes": size, "us_per_call": best / calls * 1e6,
                                   "check": function(b"123456789")})
    for name, byte in GARBAGE:
        if name in spec["protocols"]:
            seconds, calls = _garbage(name, byte)
            results["garbage"].append({"protocol": name, "byte": byte.hex(), "seconds": seconds, "calls": calls})
    return results


def _timed(function: Callable[[bytes], int], data: bytes, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        function(data)
    return time.perf_counter() - started


def profile(spec: dict[str, Any], path: Path) -> None:
    out = io.StringIO()
    for load in spec["workloads"]:
        items = _prepare(load["protocol"], load["frames"])
        profiler = cProfile.Profile()
        profiler.enable()
        _run(load["protocol"], items, spec["frames"], load["source"] == "sim")
        profiler.disable()
        out.write(f"=== {load['protocol']} {load['source']}: {spec['frames']} frames\n")
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
    path.write_text(out.getvalue())


# The baseline: another revision's protocol package, in a child process -----------------------


# The last commit with the per-decoder byte readers and the pure-Python CRCs (on main): a fixed
# revision, so the comparison means the same thing before and after this work is committed.
DEFAULT_BASELINE = "1877cdb3af0614118d1f59f34bf722fcbaa02da9"


def run_baseline(rev: str, spec: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-decoders-") as tmp:
        tree = Path(tmp)
        archive = subprocess.run(["git", "archive", rev, "ingest", "avl"], cwd=ROOT, capture_output=True)
        if archive.returncode != 0:  # not a git checkout, or a clone without that revision (shallow)
            message = archive.stderr.decode(errors="replace").strip().splitlines()
            raise RuntimeError(f"git archive: {message[0] if message else f'exit status {archive.returncode}'}")
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
        (tree / "bench").mkdir()
        for name in ("__init__.py", "decoders.py"):
            (tree / "bench" / name).write_bytes((ROOT / "bench" / name).read_bytes())
        (tree / "spec.pickle").write_bytes(pickle.dumps(spec))
        # cwd first on sys.path: the child imports ingest and avl from the extracted revision.
        subprocess.run([sys.executable, "-m", "bench.decoders", "--child", str(tree / "spec.pickle")], cwd=tree,
                       check=True, env={**os.environ, "PYTHONPATH": str(tree)})
        result: dict[str, Any] = json.loads((tree / "spec.pickle.json").read_text())
        return result


# Report ----------------------------------------------------------------------------------------


def _rate(w: dict[str, Any] | None) -> tuple[str, str]:
    if w is None:
        return "-", "-"
    per_position = f"{w['seconds'] / w['positions'] * 1e6:.1f}" if w["positions"] else "-"
    return f"{w['frames'] / w['seconds']:,.0f}", per_position


def _pairs(section: str, current: dict[str, Any], baseline: dict[str, Any] | None,
           key: Callable[[dict[str, Any]], Any]) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """Each row of a section of this tree's figures with the baseline's row for the same thing."""
    before = {key(row): row for row in (baseline or {}).get(section, [])}
    return [(row, before.get(key(row))) for row in current[section]]


def report(current: dict[str, Any], baseline: dict[str, Any] | None, rev: str | None) -> list[str]:
    lines = [f"{'protocol':<10} {'source':<7} {'frames':>6} {'pos/frame':>9} | {'before frames/s':>15} {'µs/pos':>7} |"
             f" {'after frames/s':>14} {'µs/pos':>7} | {'speed-up':>8}  same results"]
    for w, b in _pairs("workloads", current, baseline, lambda w: (w["protocol"], w["source"])):
        speedup = same = "-"
        if b:
            speedup = f"{b['seconds'] / w['seconds']:.2f}x"
            differ = sum(x != y for x, y in zip(w["digests"], b["digests"], strict=True))
            same = "yes" if differ == 0 else f"NO: {differ} of {len(w['digests'])} differ"
        (b_rate, b_pos), (a_rate, a_pos) = _rate(b), _rate(w)
        lines.append(f"{w['protocol']:<10} {w['source']:<7} {w['distinct_frames']:>6} {w['positions'] / w['frames']:>9.2f} |"
                     f" {b_rate:>15} {b_pos:>7} | {a_rate:>14} {a_pos:>7} | {speedup:>8}  {same}")
    lines += ["", f"{'CRC':<30} {'bytes':>6} | {'before µs/call':>14} | {'after µs/call':>13} | {'speed-up':>8}  check"]
    for c, b in _pairs("crc", current, baseline, lambda c: (c["function"], c["bytes"])):
        before_us = f"{b['us_per_call']:.3f}" if b else "-"
        speedup = f"{b['us_per_call'] / c['us_per_call']:.1f}x" if b else "-"
        check = "-" if b is None else ("same" if b["check"] == c["check"] else "DIFFERENT")
        lines.append(f"{c['function']:<30} {c['bytes']:>6} | {before_us:>14} | {c['us_per_call']:>13.3f} |"
                     f" {speedup:>8}  {check}")
    lines += ["", f"{'framer over 64 KiB of':<37} | {'before ms (splits)':>18} | {'after ms (splits)':>18}"]
    for g, b in _pairs("garbage", current, baseline, lambda g: (g["protocol"], g["byte"])):
        before_ms = f"{b['seconds'] * 1000:.1f} ({b['calls']})" if b else "-"
        after_ms = f"{g['seconds'] * 1000:.1f} ({g['calls']})"
        lines.append(f"{g['protocol'] + ' ' + g['byte'] + ' bytes':<37} | {before_ms:>18} | {after_ms:>18}")
    if rev:
        lines.append(f"\nbefore = revision {rev} (its ingest and avl packages, same frames, child process);"
                     " after = this tree.")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=2000, help="frames decoded per workload and run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per workload; the best counts")
    parser.add_argument("--protocols", default=",".join(PROTOCOLS))
    parser.add_argument("--baseline", default=None,
                        help=f"git revision to compare with (default {DEFAULT_BASELINE[:7]}), or 'none'")
    parser.add_argument("--profile", type=Path, help="write cProfile's top functions of the current tree here")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        spec = pickle.loads(args.child.read_bytes())
        Path(f"{args.child}.json").write_text(json.dumps(measure(spec), default=str))
        return 0

    names = [n.strip() for n in args.protocols.split(",") if n.strip()]
    unknown = sorted(set(names) - set(PROTOCOLS))
    if unknown:
        parser.error(f"--protocols: not measured here: {', '.join(unknown)} (choose from {', '.join(PROTOCOLS)})")
    loads, note = workloads(names)
    spec = {"workloads": loads, "frames": args.frames, "repeat": args.repeat, "protocols": names}
    rev = None if args.baseline == "none" else (args.baseline or DEFAULT_BASELINE)
    print(f"bench.decoders: {args.frames} frames per workload, best of {args.repeat}; load average"
          f" {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores; Python"
          f" {sys.version.split()[0]}", flush=True)
    if note:
        print(note)
    baseline = None
    if rev:
        try:
            baseline = run_baseline(rev, spec)
        except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
            print(f"baseline {rev}: not measured ({exc})")
            rev = None
    current = measure(spec)
    print("\n".join(report(current, baseline, rev)))
    if args.profile:
        profile(spec, args.profile)
        print(f"profile: {args.profile}")
    if args.json:
        args.json.write_text(json.dumps({"current": current, "baseline": baseline, "baseline_rev": rev,
                                         "load_average": os.getloadavg()}, default=str, indent=1))
    differ = any(x != y for w, b in zip(current["workloads"], (baseline or {}).get("workloads", []), strict=False)
                 for x, y in zip(w["digests"], b["digests"], strict=False))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
