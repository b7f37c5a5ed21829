"""Acceptance: every frame of the real-device corpus decodes as the reference server requires."""

from __future__ import annotations

from datetime import datetime

import pytest

from tests.ingest.protocols.corpus import (
    Frame,
    attribute_value,
    first_frame,
    has_attributes,
    implausible,
    load,
    predecessors,
    replay,
    same_value,
)

FRAMES = load()
BEFORE = predecessors(FRAMES)

# Frames where this server deliberately differs from the reference, and what it does instead.
# Each is asserted: the frame must decode to a status record (reports without a GPS fix).
DEVIATIONS = {
    # A cell-tower-only report (no GPS fix). The reference fills in the device's last known
    # location (0,0 in its test) so the frame "yields a position"; we store what the device
    # sent: a status record with its cell data, no made-up coordinates.
    "tk103-Tk103-testDecode-12-0da443369bfb331d": "status record with cell data, no location",
    # A Wialon D packet of cell towers only. The reference's expected value is a Network object
    # the extractor could not evaluate (recorded as null); we keep the two towers it names in
    # attributes.network.cellTowers (asserted in test_wialon.py), so "network is null" cannot hold.
    "wialon-Wialon-testDecode-24-bda50d4d4bf48b70": "status record with cell towers, no location",
    # An ATrack binary report with GPS time 0, RTC time 201 s and coordinates 0,0: the unit has
    # never had a fix. The reference stores a valid position at 0,0 on 1970-01-01 (its expected
    # values); we store a status record (inputs, odometer, event) without a location, at the
    # receive time (asserted in test_atrack.py).
    "atrack-Atrack-testDecode-23-5124145965409abc": "status record, the unit has no fix (time 0, 0,0)",
}


def _params(stage: str) -> list[object]:
    return [pytest.param(f, id=f.id) for f in FRAMES if f.data["stage"] == stage]


@pytest.mark.parametrize("frame", _params("decoder"))
def test_frame_decodes_as_the_reference_requires(frame: Frame) -> None:
    d = frame.data
    result = replay(frame, BEFORE[frame.id])
    if frame.id in DEVIATIONS:
        assert result.positions and not any(p.located for p in result.positions), DEVIATIONS[frame.id]
        assert all(has_attributes(p) for p in result.positions), DEVIATIONS[frame.id]
        return
    located = [p for p in result.positions if p.located]
    assertion = d["assertion"]
    check_location = d.get("check_location", True) is not False

    if assertion == "null":
        assert located == [], f"expected no position, got {located}"
        return
    if assertion == "notnull":
        assert result.positions or result.reply is not None, "expected something decoded"
        return
    if assertion in ("position", "positions"):
        records = located if check_location else result.positions
        assert records, "expected at least one position"
        if assertion == "position" and check_location:
            assert len(records) == 1, f"expected one position, got {len(records)}"
        for p in records:
            problem = implausible(p, check_location)
            assert problem is None, problem
        expected = d.get("expected")
        if expected:
            p = records[0]
            tolerance = expected.get("tolerance_deg", 1e-5)
            assert p.fix_time == datetime.fromisoformat(expected["time"].replace("Z", "+00:00"))
            assert p.valid is expected["valid"]
            assert p.latitude is not None and p.longitude is not None
            assert abs(p.latitude - expected["latitude"]) <= tolerance
            assert abs(p.longitude - expected["longitude"]) <= tolerance
        return
    if assertion == "attributes":
        assert any(has_attributes(p) for p in result.positions), "expected a record with attributes"
        return
    if assertion == "attribute":
        want = d["expected_attribute"]
        assert result.positions, "expected a record"
        # The reference checks the first record of the frame.
        actual = attribute_value(result.positions[0], want["key"])
        assert same_value(actual, want["value"]), f"{want['key']}: got {actual!r}, want {want['value']!r}"
        return
    raise AssertionError(f"unknown assertion {assertion}")


@pytest.mark.parametrize("frame", _params("frame"))
def test_stream_framing_matches_the_reference(frame: Frame) -> None:
    d = frame.data
    got = first_frame(d["protocol"], frame.payload)
    if d["assertion"] == "null" or not d.get("expected_frame"):
        assert got is None, f"expected no frame, got {got!r}"
        return
    expected = bytes.fromhex(d["expected_frame"]) if d["kind"] == "binary" else d["expected_frame"].encode("latin-1")
    assert got is not None, "expected a frame"
    assert got.rstrip(b"\r\n") == expected.rstrip(b"\r\n")


def test_every_protocol_of_the_corpus_has_a_decoder_and_its_reference_port() -> None:
    from ingest.protocols import DEFAULT_PORTS

    corpus = {f.data["protocol"] for f in FRAMES}
    assert corpus - set(DEFAULT_PORTS) == set(), "protocols in ../shared/vectors without a decoder"
    reference = {"gps103": 5001, "jt600": 5014, "jt808": 5015, "cellocator": 5033, "galileo": 5034, "wialon": 5039,
                 "atrack": 5044, "ruptela": 5046, "xirgo": 5081, "castel": 5086, "t800x": 5094, "startek": 5222}
    assert {name: DEFAULT_PORTS[name] for name in reference} == reference
