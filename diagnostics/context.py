"""What the checklist's steps share: settings, the database, the SMS link, the device."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

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


DEVICE_SQL = """
SELECT d.id, d.identifier, d.protocol, d.msisdn, d.line_status, d.report_interval_s, d.installed_at,
       a.id AS account_id, a.name AS account_name, a.status AS account_status, a.status_reason, a.billing, a.balance,
       a.contact_msisdn, v.plate, v.supply_voltage_v,
       l.fix_time, l.last_received_at, l.latitude, l.longitude
FROM devices d
LEFT JOIN accounts a ON a.id = d.account_id
LEFT JOIN vehicles v ON v.id = d.vehicle_id
LEFT JOIN latest_positions l ON l.device_id = d.id
"""


async def load_device(conn: psycopg.AsyncConnection, ref: str | int) -> Device:
    """A device by id, identifier or MSISDN."""
    async with conn.cursor(row_factory=dict_row) as cur:
        if isinstance(ref, int) or (str(ref).isdigit() and len(str(ref)) < 9):
            await cur.execute(DEVICE_SQL + " WHERE d.id = %s", (int(ref),))
        else:
            await cur.execute(DEVICE_SQL + " WHERE d.identifier = %s OR d.msisdn = %s ORDER BY d.id LIMIT 1",
                              (str(ref), str(ref)))
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
    # Overrides for tests and the CLI.
    sms_wait_s: float | None = None

    @property
    def wait_s(self) -> float:
        return self.sms_wait_s if self.sms_wait_s is not None else self.settings.sms_wait_s
