"""Sample reports for the protocol tests: a plausible Position to encode, and the fixes and times
hypothesis draws for encode/decode round trips."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import strategies as st

from avl.records import Position


def a_position(device: str, **fields: object) -> Position:
    """A report in Caracas with every typed field set; ``fields`` override any of them."""
    values: dict[str, object] = {
        "device": device, "fix_time": datetime(2026, 3, 1, 12, 30, 45, tzinfo=UTC), "valid": True,
        "latitude": 10.4801234, "longitude": -66.9034567, "speed_kmh": 57.0, "course": 123.45, "ignition": True,
        "satellites": 9, "altitude_m": 912.0, "odometer_m": 123456, "hdop": 0.9, "power_mv": 12600,
    }
    values.update(fields)
    return Position(**values)  # type: ignore[arg-type]


# Anywhere on Earth but null island (0,0 is "no fix" for several protocols).
coordinates = st.tuples(st.floats(-89.9, 89.9), st.floats(-179.9, 179.9)).filter(
    lambda c: abs(c[0]) > 1e-5 or abs(c[1]) > 1e-5)
# Whole seconds from 2020 on (the decoders' clocks are seconds).
fix_times = st.integers(0, 10**8).map(lambda s: datetime(2020, 1, 1, tzinfo=UTC) + timedelta(seconds=s))
