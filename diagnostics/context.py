"""What the checklist's steps share: settings, the database, the SMS link, the device."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from avl import phone
from avl.config import Settings
from diagnostics.smpp import SmppLink


class DiagnoseError(Exception):
    """The checklist cannot run for this device (unknown id, no account); one line."""


class RateLimiter:
    """A token bucket: ``rate`` per minute, waits at most ``max_wait_s`` for a token."""

    def __init__(self, per_minute: int) -> None:
        self.capacity = float(per_minute)
        self.tokens = float(per_minute)
        self.rate_s = per_minute / 60.0
        self.updated = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self, max_wait_s: float) -> bool:
        deadline = time.monotonic() + max_wait_s
        async with self._lock:
            while True:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate_s)
                self.updated = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return True
                wait = (1 - self.tokens) / self.rate_s
                if now + wait > deadline:
                    return False
                await asyncio.sleep(wait)


@dataclass
class Device:
    id: int
    identifier: str
    protocol: str
    msisdn: str | None
    line_status: str
    report_interval_s: int
    installed_at: date | None
    account_id: int | None
    account_name: str | None
    account_status: str | None
    status_reason: str | None
    billing: str | None
    balance: Any
    contact_msisdn: str | None
    plate: str | None
    supply_voltage_v: int | None
    fix_time: datetime | None
    last_received_at: datetime | None
    latitude: float | None
    longitude: float | None
    status_cause: str | None = None  # non_payment | no_balance | administrative | voluntary | by_payment
    ignition: bool | None = None
    speed_kmh: float | None = None
    parked_interval_s: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    # What the checklist learned earlier of the device's cadence (device_cadence).
    learned_moving_s: float | None = None
    learned_moving_samples: int = 0
    learned_parked_s: float | None = None
    learned_parked_samples: int = 0


DEVICE_SQL = """
SELECT d.id, d.identifier, d.protocol, d.msisdn, d.line_status, d.report_interval_s, d.installed_at,
       a.id AS account_id, a.name AS account_name, a.status AS account_status, a.status_reason, a.status_cause,
       a.billing, a.balance,
       a.contact_msisdn, v.plate, v.supply_voltage_v,
       l.fix_time, l.last_received_at, l.latitude, l.longitude, l.ignition, l.speed_kmh,
       d.parked_interval_s, d.options,
       c.moving_interval_s AS learned_moving_s, coalesce(c.moving_samples, 0) AS learned_moving_samples,
       c.parked_interval_s AS learned_parked_s, coalesce(c.parked_samples, 0) AS learned_parked_samples
FROM devices d
LEFT JOIN accounts a ON a.id = d.account_id
LEFT JOIN vehicles v ON v.id = d.vehicle_id
LEFT JOIN latest_positions l ON l.device_id = d.id
LEFT JOIN device_cadence c ON c.device_id = d.id
"""


async def load_device(conn: psycopg.AsyncConnection, ref: str | int, *,
                      default_country: str = phone.DEFAULT_COUNTRY) -> Device:
    """A device by id, identifier or MSISDN (in any spelling: ``+58414...``, ``0414-...``)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        if isinstance(ref, int) or (str(ref).isdigit() and len(str(ref)) < 9):
            await cur.execute(DEVICE_SQL + " WHERE d.id = %s", (int(ref),))
        else:
            try:
                msisdn = phone.normalise(str(ref), default_country)
            except ValueError:
                msisdn = str(ref)
            await cur.execute(DEVICE_SQL + " WHERE d.identifier = %s OR d.msisdn = %s ORDER BY d.identifier = %s DESC,"
                              " d.id LIMIT 1", (str(ref), msisdn, str(ref)))
        row = await cur.fetchone()
    if row is None:
        raise DiagnoseError(f"device {ref!r} not found")
    return Device(**row)


@dataclass
class Context:
    settings: Settings
    database_url: str
    conn: psycopg.AsyncConnection
    smpp: SmppLink | None = None
    mqtt_url: str | None = None
    sms_limiter: RateLimiter = field(default_factory=lambda: RateLimiter(60))
    # How SMS pings go out: "bind" (``smpp``, this process's own link), "outbox" (queued for the
    # diagnostics worker that holds the bind) or "off"; ``sms_note`` says which, for people.
    sms_via: str = ""
    sms_note: str = ""
    # Overrides for tests and the CLI.
    sms_wait_s: float | None = None

    def __post_init__(self) -> None:
        if not self.sms_via:
            self.sms_via = "bind" if self.smpp is not None else "off"
        if not self.sms_note:
            self.sms_note = (f"its own SMPP bind to {self.smpp.host}:{self.smpp.port}" if self.smpp is not None
                             else "no SMSC configured (AVL_SMPP_HOST)")

    @property
    def wait_s(self) -> float:
        return self.sms_wait_s if self.sms_wait_s is not None else self.settings.sms_wait_s
