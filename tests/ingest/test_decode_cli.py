"""`avl decode`: JSON lines in, one JSON line out per input line, sessions shared by key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ingest.protocols import gt06, teltonika
from tests.ingest.harness import track

AVL = str(Path(sys.executable).parent / "avl")


def decode(protocol: str, lines: list[dict[str, object] | str], *extra: str) -> list[dict[str, object]]:
    stdin = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n"
    result = subprocess.run([AVL, "decode", "--protocol", protocol, *extra], input=stdin, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_a_session_shares_the_login_with_later_frames() -> None:
    imei = "868120201234561"
    p = track(imei, 1)[0]
    out = decode("gt06", [
        {"kind": "binary", "payload": gt06.encode_login(imei).hex(), "session": "a"},
        {"kind": "binary", "payload": gt06.encode_position(p, 2).hex(), "session": "a"},
        {"kind": "binary", "payload": gt06.encode_position(p, 3).hex(), "session": "b"},
    ])
    assert out[0]["positions"] == [] and out[0]["reply"] is not None
    (pos,) = out[1]["positions"]
    assert pos["device"] == imei and pos["time"] == p.fix_time.isoformat().replace("+00:00", "Z")
    assert abs(pos["latitude"] - p.latitude) < 1e-5 and pos["valid"] is True
    assert out[1]["reply"].startswith("78780522")
    assert "no login" in out[2]["error"]  # session b never logged in


def test_assume_device_identifies_sessions_without_a_login() -> None:
    p = track("868120201234561", 1)[0]
    out = decode("gt06", [{"kind": "binary", "payload": gt06.encode_position(p, 2).hex()}], "--assume-device", "4242")
    assert out[0]["positions"][0]["device"] == "4242"


def test_bad_lines_get_an_error_line_and_decoding_goes_on() -> None:
    batch = teltonika.encode_batch(track("356307042441013", 2))
    out = decode("teltonika", [
        "not json",
        {"kind": "binary", "payload": "zz"},
        {"kind": "binary", "payload": "000000000000ffff08"},
        {"kind": "binary", "payload": teltonika.encode_login("356307042441013").hex(), "session": "s"},
        {"kind": "binary", "payload": batch.hex(), "session": "s"},
    ])
    assert [o["error"] is not None for o in out] == [True, True, True, False, False]
    assert "teltonika:" in out[2]["error"]
    assert len(out[4]["positions"]) == 2 and out[4]["reply"] == "00000002"


def test_unknown_protocol_is_one_line() -> None:
    result = subprocess.run([AVL, "decode", "--protocol", "nosuch"], input="", capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--protocol" in result.stderr
