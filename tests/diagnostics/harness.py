"""A fleet account with devices, an ingest service fed real frames, and a checklist context."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg

from avl.admin import DeviceSpec, add_account, add_center, add_device, set_account_status
from avl.config import Settings
from avl.records import Position
from diagnostics import checklist
from diagnostics.context import Context
from diagnostics.model import Report
from diagnostics.smpp import SmppLink
from ingest.protocols import gl200
from tests.ingest.harness import exchange

CENTERS = [("Centro Chacao", 10.4961, -66.8530), ("Centro Los Ruices", 10.4903, -66.8283),
           ("Centro Valencia", 10.1620, -68.0077)]


def provision(db_url: str, *, account: str = "Flota Diagnóstico", billing: str = "post_paid", balance: float = 0,
              devices: list[dict[str, Any]]) -> dict[str, int]:
    with psycopg.connect(db_url) as conn:
        add_account(conn, account, billing=billing, balance=balance, contact_msisdn="584120000000")
        for name, lat, lon in CENTERS:
            if not conn.execute("SELECT 1 FROM installation_centers WHERE name = %s", (name,)).fetchone():
                add_center(conn, name, lat, lon)
        ids = {}
        for d in devices:
            spec = DeviceSpec(account=account, center="Centro Chacao", report_interval_s=d.get("interval", 30),
                              installed_at=d.get("installed", date.today() - timedelta(days=90)),
                              **{k: v for k, v in d.items() if k not in ("interval", "installed")})
            ids[spec.identifier] = add_device(conn, spec)["id"]
        return ids


def set_status(db_url: str, account: str, action: str) -> None:
    with psycopg.connect(db_url) as conn:
        set_account_status(conn, account, action)


def reports(imei: str, count: int, *, minutes_ago: float, step_s: int = 30, **fields: Any) -> list[Position]:
    """``count`` reports ending ``minutes_ago`` ago, driving north-east from Altamira, Caracas."""
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=minutes_ago)
    base: dict[str, Any] = {"valid": True, "speed_kmh": 35.0, "course": 45.0, "altitude_m": 900.0, "satellites": 9,
                            "ignition": True, "power_mv": 12800}
    base.update(fields)
    out = []
    for i in range(count):
        moved = 0.0 if fields.get("frozen") else i * 0.0003
        p = Position(device=imei, fix_time=end - timedelta(seconds=step_s * (count - 1 - i)),
                     latitude=10.4970 + moved, longitude=-66.8460 + moved,
                     **{k: v for k, v in base.items() if k != "frozen"})
        out.append(p)
    return out


async def send_gl200(port: int, positions: list[Position]) -> None:
    frames = [gl200.encode_position(p, i + 1) for i, p in enumerate(positions)]
    await exchange(port, frames, [11] * len(frames))


@contextlib.asynccontextmanager
async def context(settings: Settings, db_url: str, smpp: SmppLink | None = None,
                  sms_wait_s: float = 5.0) -> AsyncIterator[Context]:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        yield Context(settings, db_url, conn, smpp=smpp, sms_wait_s=sms_wait_s)


async def diagnose(settings: Settings, db_url: str, device: str, smpp: SmppLink | None = None,
                   sms_wait_s: float = 5.0) -> Report:
    async with context(settings, db_url, smpp, sms_wait_s) as ctx:
        return await checklist.run(ctx, device, requested_by="test")


def tickets(db_url: str) -> list[dict[str, Any]]:
    with psycopg.connect(db_url, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute("SELECT t.*, (SELECT string_agg(pending, ' | ') FROM ticket_activities a"
                            " WHERE a.ticket_id = t.id) AS pending FROM tickets t ORDER BY id").fetchall()


def sms_count(db_url: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM sms_messages").fetchone()
        return int(row[0]) if row else 0


def step(report: Report, name: str) -> Any:
    return next(s for s in report.steps if s.name == name)
