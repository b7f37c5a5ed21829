"""Domain records shared by every service: what a decoder produces and the writer stores."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(slots=True)
class Position:
    """One decoded report of one device.

    A report with ``latitude``/``longitude`` set is a located position and goes to the
    positions table; a report without them (heartbeat with status, alarm without fix,
    command result) is a status record and goes to the device events table.

    Typed fields carry what every protocol has in common; everything else a protocol
    sends lives in ``attributes`` under the reference server's attribute names
    (``batteryLevel``, ``rssi``, ``io239``...), so operators moving from it find the
    same keys.
    """

    device: str
    fix_time: datetime
    protocol: str = ""
    valid: bool = False
    latitude: float | None = None
    longitude: float | None = None
    speed_kmh: float | None = None
    course: float | None = None
    altitude_m: float | None = None
    satellites: int | None = None
    hdop: float | None = None
    ignition: bool | None = None
    power_mv: int | None = None
    battery_mv: int | None = None
    odometer_m: int | None = None
    alarm: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    raw: bytes = b""
    received_at: datetime | None = None

    @property
    def located(self) -> bool:
        return self.latitude is not None and self.longitude is not None
