"""Bad input: every decoder fuzzed with mutations of real frames.

Seeds are the real-device corpus (``../shared/vectors/dev.jsonl``) and each protocol's own
encoders; hypothesis mutates them (bit flips, byte sets, truncation, insertion, deletion,
length fields set to edge values, duplicated chunks, splices, text fields replaced with
hostile values) and feeds the result to ``split()`` (as a TCP stream) and to ``decode()``
(as a datagram / MQTT payload / framed stream frame), on fresh sessions with the device
known, unknown, or after the frames that precede the seed in its reference test (logins).
The decoded records also go through the pipeline's ``route()`` and the spool encoder,
the way intake handles them.

Only ``DecodeError`` (``FrameError`` is one) may escape. Every call is bounded in time (a
SIGALRM guard turns a hang into a failure) and in memory (tracemalloc peak).

Inputs that ever broke a decoder are kept in ``regressions/<protocol>-<n>.bin`` and
replayed by ``test_regression_corpus``. A longer hypothesis run: ``-m soak``; a coverage-
guided run with atheris: ``bench/fuzz.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from avl.records import Position
from ingest.pipeline import Batch, route
from ingest.protocols import ALL_NAMES, DecodeError, DecodeResult, Session, get
from ingest.spool import encode
from tests.ingest.protocols.corpus import KNOWN_DEVICE, Frame, load, predecessors, session_for

REGRESSIONS = Path(__file__).with_name("regressions")
CALL_SECONDS = 2.0  # one split()/decode() call taking longer than this is a hang
PEAK_BYTES = 64 << 20  # memory one example may allocate at its peak (tracemalloc)
MAX_INPUT = 1 << 16
DEFAULT_EXAMPLES = int(os.environ.get("AVL_FUZZ_EXAMPLES", "120"))
SOAK_EXAMPLES = int(os.environ.get("AVL_FUZZ_SOAK_EXAMPLES", "5000"))


class Hang(BaseException):
    """Raised by the alarm inside a call that runs too long (not an Exception, so a
    decoder's own ``except Exception`` cannot swallow it)."""


class DecoderCrash(AssertionError):
    pass


# Seeds -------------------------------------------------------------------------------


@cache
def _corpus() -> tuple[list[Frame], dict[str, list[Frame]]]:
    frames = load()
    return frames, predecessors(frames)


def _track(device: str, n: int) -> list[Position]:
    start = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    return [Position(device=device, fix_time=start + timedelta(seconds=30 * i), valid=i % 3 != 0,
                     latitude=10.48 + i * 0.01, longitude=-66.90 - i * 0.01, speed_kmh=36.0 + i, course=float(i * 40),
                     altitude_m=900.0, satellites=9, hdop=0.9, ignition=True, power_mv=12600, battery_mv=4100,
                     odometer_m=12345, alarm="sos" if i == 2 else None, attributes={"rssi": 4})
            for i in range(n)]


def _encoded(name: str) -> list[bytes]:
    """Frames the protocol's own encoders make (a login and a few reports)."""
    import importlib

    module = importlib.import_module(f"ingest.protocols.{'json_report' if name == 'json' else name}")
    device = "356307042441013" if name != "calamp" else "4634061003"
    out: list[bytes] = []
    login = getattr(module, "encode_login", None)
    if login is not None:
        with contextlib.suppress(Exception):
            frame = login(device)
            if frame:
                out.append(frame)
    for i, p in enumerate(_track(device, 4)):
        with contextlib.suppress(Exception):
            out.append(module.encode_position(p, i + 1))
    if name == "teltonika":
        out.append(module.encode_batch(_track(device, 3)))
    if name == "json":
        out.append(json.dumps([json.loads(f) for f in out[:2]]).encode())
        out.append(b'{"time": 1764000000, "lat": 1, "lon": 2, "attributes": {"a": [1, {"b": null}]}}')
    return out


@cache
def seeds(name: str) -> tuple[tuple[bytes, tuple[bytes, ...], dict[str, Any], str], ...]:
    """(frame, frames before it, session options, transport) for ``name``."""
    frames, before = _corpus()
    out: list[tuple[bytes, tuple[bytes, ...], dict[str, Any], str]] = []
    for f in frames:
        if f.data["protocol"] != name:
            continue
        s = session_for(f)
        out.append((f.payload, tuple(b.payload for b in before.get(f.id, [])), dict(s.options), s.transport))
    protocol = get(name)
    transport = "mqtt" if name == "json" else ("http" if "http" in protocol.transports else
                                                ("tcp" if "tcp" in protocol.transports else "udp"))
    for frame in _encoded(name):
        out.append((frame, (), {}, transport))
    assert out, f"no seeds for {name}"
    return tuple(out)


# Mutations ---------------------------------------------------------------------------

_TEXT_FIELD = re.compile(rb"[^,;|:*#$&=\r\n()]+")
_HOSTILE_FIELDS = [b"", b"-", b"+", b".", b"0", b"-0", b"00", b"9" * 40, b"1e39", b"-1e309", b"nan", b"inf", b"-inf",
                   b"0x1F", b"FFFFFFFF", b"99999999999999999999", b"-2147483649", b"\xff\xfe", b"A" * 300, b"1.2.3",
                   b"291299", b"999999", b"000000", b"320299", b"20261301250000", b"ZZ", b"\x00", b",", b"=="]
_EDGE = [0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]


@st.composite
def _mutation(draw: st.DrawFn, data: bytearray, pool: tuple[bytes, ...]) -> None:
    n = len(data)
    op = draw(st.sampled_from(["flip", "set", "truncate", "behead", "insert", "delete", "length", "duplicate",
                               "splice", "field"]))
    if op == "flip" and n:
        i = draw(st.integers(0, n - 1))
        data[i] ^= 1 << draw(st.integers(0, 7))
    elif op == "set" and n:
        i = draw(st.integers(0, n - 1))
        data[i] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, 0x2C, 0x23, 0x24, 0x0D, 0x0A]) | st.integers(0, 255))
    elif op == "truncate" and n:
        del data[draw(st.integers(0, n - 1)):]
    elif op == "behead" and n:
        del data[: draw(st.integers(1, n))]
    elif op == "insert":
        i = draw(st.integers(0, n))
        data[i:i] = draw(st.binary(min_size=1, max_size=24) | st.sampled_from(
            [b",", b";", b"$", b"#", b"\r\n", b"*", b"|", b"\x78\x78", b"\x79\x79", b"\x0d\x0a", b"\x00" * 8]))
    elif op == "delete" and n:
        i = draw(st.integers(0, n - 1))
        del data[i:i + draw(st.integers(1, 16))]
    elif op == "length" and n:
        width = draw(st.sampled_from([1, 2, 4]))
        if n >= width:
            i = draw(st.integers(0, n - width))
            value = draw(st.sampled_from([*_EDGE, n - 1, n, n + 1, n - i, n - i - width, 2 * n]) | st.integers(0, 2**32 - 1))
            order = draw(st.sampled_from(["big", "little"]))
            data[i:i + width] = (value % (1 << (8 * width))).to_bytes(width, order)
    elif op == "duplicate" and n:
        i = draw(st.integers(0, n - 1))
        j = draw(st.integers(i + 1, min(n, i + 256)))
        k = draw(st.integers(0, n))
        data[k:k] = data[i:j]
    elif op == "splice":
        other = draw(st.sampled_from(pool))
        cut = draw(st.integers(0, len(other)))
        if draw(st.booleans()):
            data[:] = data[: draw(st.integers(0, n))] + other[cut:]
        else:
            data[:] = other[:cut] + data
    elif op == "field" and n:
        fields = list(_TEXT_FIELD.finditer(bytes(data)))
        if fields:
            m = draw(st.sampled_from(fields))
            data[m.start():m.end()] = draw(st.sampled_from(_HOSTILE_FIELDS) | st.binary(max_size=12))
    if len(data) > MAX_INPUT:
        del data[MAX_INPUT:]


@st.composite
def fuzz_case(draw: st.DrawFn, name: str) -> tuple[bytes, tuple[bytes, ...], dict[str, Any], str, str]:
    pool = seeds(name)
    frame, before, options, transport = draw(st.sampled_from(pool))
    data = bytearray(frame)
    for _ in range(draw(st.integers(1, 6))):
        draw(_mutation(data, tuple(p[0] for p in pool)))
    mode = draw(st.sampled_from(["known", "fresh", "after_login"]))
    return bytes(data), before, options, transport, mode


# The check ---------------------------------------------------------------------------


# Off under atheris, whose libFuzzer bounds time (-timeout) and memory (-rss_limit_mb) itself.
GUARD = True


@contextlib.contextmanager
def _bounded(what: str, data: bytes) -> Iterator[None]:
    """A call that raises anything but DecodeError, hangs, or allocates without bound fails."""
    def alarm(signum: int, frame: object) -> None:
        raise Hang(f"{what} ran longer than {CALL_SECONDS} s")

    if GUARD:
        previous = signal.signal(signal.SIGALRM, alarm)
        signal.setitimer(signal.ITIMER_REAL, CALL_SECONDS)
    tracing = GUARD and tracemalloc.is_tracing()
    if tracing:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
    started = time.perf_counter()
    try:
        yield
    except DecodeError:
        pass
    except Hang as exc:
        raise DecoderCrash(f"{exc}; input hex {data[:256].hex()}") from None
    except Exception as exc:
        raise DecoderCrash(f"{what} raised {type(exc).__name__}: {exc}; input ({len(data)} bytes) hex "
                           f"{data[:256].hex()}") from exc
    finally:
        if GUARD:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    elapsed = time.perf_counter() - started
    if GUARD and elapsed > CALL_SECONDS:
        raise DecoderCrash(f"{what} took {elapsed:.2f} s; input hex {data[:256].hex()}")
    if tracing:
        peak = tracemalloc.get_traced_memory()[1] - base
        if peak > PEAK_BYTES:
            raise DecoderCrash(f"{what} allocated {peak >> 20} MiB at its peak; input hex {data[:256].hex()}")


def _check_result(name: str, result: object, session: Session, data: bytes) -> None:
    if not isinstance(result, DecodeResult):
        raise DecoderCrash(f"{name}: decode returned {type(result).__name__}, not DecodeResult")
    if result.reply is not None and not isinstance(result.reply, bytes | bytearray):
        raise DecoderCrash(f"{name}: reply is {type(result.reply).__name__}; input hex {data[:256].hex()}")
    batch = Batch()
    now = datetime.now(UTC)
    for p in result.positions:
        if not isinstance(p, Position) or not isinstance(p.device, str) or not p.device:
            raise DecoderCrash(f"{name}: a record with no device: {p!r}; input hex {data[:256].hex()}")
        if not isinstance(p.fix_time, datetime) or p.fix_time.tzinfo is None:
            raise DecoderCrash(f"{name}: a record with a naive or missing fix time: {p!r}; input hex {data[:256].hex()}")
        # What intake does with it next: route to a table, and the spool's encoding.
        try:
            route(p, 1, now, now - timedelta(days=400), batch)
        except Exception as exc:
            raise DecoderCrash(f"{name}: route() raised {type(exc).__name__}: {exc} on {p!r}; "
                               f"input hex {data[:256].hex()}") from exc
    try:
        encode(batch)
    except Exception as exc:
        raise DecoderCrash(f"{name}: the spool cannot encode the rows ({type(exc).__name__}: {exc}); "
                           f"input hex {data[:256].hex()}") from exc


def _session(options: dict[str, Any], transport: str, mode: str) -> Session:
    return Session(transport=transport, remote="127.0.0.1:40000", device=KNOWN_DEVICE if mode == "known" else None,
                   options=dict(options))


def exercise(name: str, data: bytes, before: tuple[bytes, ...] = (), options: dict[str, Any] | None = None,
             transport: str | None = None, mode: str = "known", stream_limit: int = MAX_INPUT) -> None:
    """Feeds ``data`` to ``name``'s split() and decode() the ways ingest does. Raises
    DecoderCrash when anything but DecodeError escapes, or a call hangs or blows up memory."""
    protocol = get(name)
    options = options or {}
    if transport is None:
        transport = "mqtt" if name == "json" else sorted(protocol.transports)[0]

    # Whole: a datagram, an MQTT payload, or a frame the stream framer handed over.
    session = _session(options, transport, mode)
    if mode == "after_login":
        for earlier in before:
            with _bounded(f"{name}.decode (preceding frame)", earlier):
                _check_result(name, protocol.decode(earlier, session), session, earlier)
    with _bounded(f"{name}.decode", data):
        _check_result(name, protocol.decode(data, session), session, data)

    # As a stream: frames cut by split(), each decoded in turn on one connection's session.
    if not ({"tcp", "http"} & protocol.transports):
        return
    session = _session(options, "http" if "http" in protocol.transports else "tcp", mode)
    buffer = data[:stream_limit]
    for _ in range(len(buffer) + 2):
        if not buffer:
            break
        with _bounded(f"{name}.split", buffer):
            frame, consumed = None, 0
            frame, consumed = protocol.split(buffer)
            if not isinstance(consumed, int) or not 0 <= consumed <= len(buffer):
                raise DecoderCrash(f"{name}.split consumed {consumed!r} of {len(buffer)} bytes; hex {buffer[:256].hex()}")
            if consumed == 0 and frame is not None:
                raise DecoderCrash(f"{name}.split returned a frame but consumed nothing; hex {buffer[:256].hex()}")
        if consumed == 0:  # needs more bytes (or raised FrameError: the connection would be cut)
            break
        buffer = buffer[consumed:]
        if frame is not None:
            with _bounded(f"{name}.decode (framed)", frame):
                _check_result(name, protocol.decode(frame, session), session, frame)
    else:
        raise DecoderCrash(f"{name}.split made no progress on {len(data)} bytes; hex {data[:256].hex()}")


# Tests -------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _tracing() -> Iterator[None]:
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    yield
    if started:
        tracemalloc.stop()


def _fuzz(name: str, examples: int) -> None:
    count = [0]

    @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(fuzz_case(name))
    def run(case: tuple[bytes, tuple[bytes, ...], dict[str, Any], str, str]) -> None:
        data, before, options, transport, mode = case
        count[0] += 1
        exercise(name, data, before, options, transport, mode)

    started = time.perf_counter()
    run()
    print(f"\nfuzz {name}: {count[0]} inputs from {len(seeds(name))} seeds in {time.perf_counter() - started:.1f} s,"
          " no crash, hang or runaway memory")


@pytest.mark.parametrize("name", ALL_NAMES)
def test_decoders_survive_mutated_frames(name: str) -> None:
    _fuzz(name, DEFAULT_EXAMPLES)


@pytest.mark.soak
@pytest.mark.parametrize("name", ALL_NAMES)
def test_decoders_survive_mutated_frames_long(name: str) -> None:
    _fuzz(name, SOAK_EXAMPLES)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_seeds_themselves_pass_the_check(name: str) -> None:
    """The harness accepts what the decoders are meant to accept (no false alarms)."""
    for frame, before, options, transport in seeds(name):
        for mode in ("known", "fresh", "after_login"):
            exercise(name, frame, before, options, transport, mode)


def _regression_files() -> list[Path]:
    return sorted(REGRESSIONS.glob("*.bin")) if REGRESSIONS.is_dir() else []


@pytest.mark.parametrize("path", _regression_files(), ids=lambda p: p.name)
def test_regression_corpus(path: Path) -> None:
    """Inputs that once crashed, hung or blew up a decoder (``<protocol>-<n>.bin``)."""
    name = path.name.rsplit("-", 1)[0]
    assert name in ALL_NAMES, f"{path.name}: unknown protocol {name!r}"
    data = path.read_bytes()
    for mode in ("known", "fresh"):
        exercise(name, data, (), {}, None, mode)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_large_and_endless_inputs_are_bounded(name: str) -> None:
    """256 KiB of one byte, of a frame's start repeated, of one frame repeated: whole (a
    datagram or an MQTT payload) and as a stream of 16 KiB (the TCP listener's cost of a
    garbage stream is measured over real TCP in tests/reliability/test_load.py)."""
    pool = seeds(name)
    size = 1 << 18
    inputs = {"zeros": b"\x00" * size, "ones": b"\xff" * size, "nines": b"9" * size,
              "frame repeated": (pool[-1][0] * (size // max(1, len(pool[-1][0])) + 1))[:size]}
    if name != "json":  # json: its header repeated is deep nesting, kept in regressions/json-1.bin
        inputs["header repeated"] = (pool[0][0][:8] * (size // 8))[:size]
    timings = []
    for label, data in inputs.items():
        started = time.perf_counter()
        exercise(name, data, (), {}, None, "known", stream_limit=1 << 14)
        timings.append(f"{label} {time.perf_counter() - started:.2f} s")
    print(f"\nlarge inputs {name}: " + ", ".join(timings))
