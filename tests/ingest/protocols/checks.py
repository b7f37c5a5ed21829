"""Checks the protocol tests share: a bad frame is refused with one line naming the protocol, and
the fixes an encoder round trip is drawn from."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import strategies as st

from ingest.protocols import Protocol
from ingest.protocols.base import DecodeError, Session

# Whole seconds, UTC, in the years a two-digit device year can hold.
fix_times = st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2098, 12, 31)).map(
    lambda t: t.replace(microsecond=0, tzinfo=UTC))
latitudes = st.floats(-89.9, 89.9)
longitudes = st.floats(-179.9, 179.9)
courses = st.integers(0, 359)


def assert_one_line_error(protocol: Protocol, frame: bytes, session: Session, message: str) -> None:
    """``frame`` is refused with a DecodeError: one line, naming the protocol, saying ``message``."""
    with pytest.raises(DecodeError) as info:
        protocol.decode(frame, session)
    text = str(info.value)
    assert text.startswith(f"{protocol.name}: ") and message in text and "\n" not in text, text
