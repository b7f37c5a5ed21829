"""The simulator's JT808 and Wialon terminals against the decoders: what a simulated unit sends
decodes to the reports it meant, and the server's answers parse back to the ACKs it waits for."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avl.records import Position
from ingest.protocols import get
from ingest.protocols.base import DecodeResult, Session
from simulators.fleet.codecs import PENDING_CODECS, Codec, Frame
from tests.ingest.protocols.framing import split_all

DEVICES = {"jt808": "13511221122", "wialon": "865205030000042"}


def _exchange(codec: Codec, frame: Frame, session: Session, login_pending: bool = False) -> tuple[DecodeResult, bool]:
    """Frames ``frame`` as the TCP listener does, decodes it, and parses the answers as the unit does:
    the result, and whether the unit sees its frame acknowledged."""
    protocol = get(codec.name)
    frames, rest = split_all(protocol, frame.data)
    assert rest == b"" and len(frames) == 1
    result = protocol.decode(frames[0], session)
    acks, used = codec.parse(bytearray(result.reply or b""), login_pending)
    assert used == len(result.reply or b"")
    return result, acks == [(frame.key, True)]


_reports = st.lists(st.tuples(
    st.floats(-89.9, 89.9), st.floats(-179.9, 179.9), st.floats(0, 250), st.integers(0, 359), st.booleans(),
    st.one_of(st.none(), st.integers(9000, 30000))), min_size=1, max_size=20)


@pytest.mark.parametrize("name", sorted(PENDING_CODECS))
@settings(max_examples=60, deadline=None)
@given(reports=_reports, seq=st.integers(2, 0xFFFE), buffered=st.booleans())
def test_a_simulated_unit_is_decoded_and_acknowledged(name: str, reports: list[tuple[float, float, float, int, bool,
                                                                                       int | None]],
                                                      seq: int, buffered: bool) -> None:
    codec = PENDING_CODECS[name]
    device = DEVICES[name]
    start = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    positions = [Position(device=device, fix_time=start + timedelta(seconds=30 * i), valid=True, latitude=lat,
                          longitude=lon, speed_kmh=speed, course=float(course), altitude_m=900.0, satellites=9,
                          ignition=ignition, power_mv=power)
                 for i, (lat, lon, speed, course, ignition, power) in enumerate(reports)]
    session = Session(device=None)
    login = codec.login(device, 1)
    assert login is not None
    result, acked = _exchange(codec, login, session, login_pending=True)
    assert acked and session.device == device

    result, acked = _exchange(codec, codec.encode(positions, seq, buffered), session)
    assert acked
    assert [(q.device, q.fix_time, q.power_mv) for q in result.positions] == [
        (device, p.fix_time, p.power_mv) for p in positions]
    for p, q in zip(positions, result.positions, strict=True):
        assert q.latitude == pytest.approx(p.latitude, abs=1e-6) and q.longitude == pytest.approx(p.longitude, abs=1e-6)
        assert q.speed_kmh == pytest.approx(p.speed_kmh, abs=0.051) and q.course == p.course

    heartbeat = codec.heartbeat(positions[-1], seq + 1)
    assert heartbeat is not None
    assert _exchange(codec, heartbeat, session)[1]


def test_a_refused_answer_is_not_an_acknowledgement() -> None:
    jt808, wialon = PENDING_CODECS["jt808"], PENDING_CODECS["wialon"]
    refusal = get("jt808").decode(split_all(get("jt808"), jt808.login("13511221122", 3).data)[0][0], Session()).refusal
    assert refusal is not None
    assert jt808.parse(bytearray(refusal), True) == ([((0x0102, 3), False)], len(refusal))
    assert wialon.parse(bytearray(b"#AL#01\r\n#AD#1\r\n#AB#0\r\n#AP#\r\n#AD"), False) == (
        [(None, False), (None, True), (None, False), (None, True)], 28)
