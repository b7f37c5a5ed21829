"""The live certification checks of a newly installed terminal (seed 004, steps 11-12).

While the installer and the customer watch, the server checks, from the reports stored
since the certification started, that the terminal:

- ``reporting_interval``: reports at its expected interval (and is not silent now);
- ``gps_fix``: has a valid fix (satellites and HDOP within limits, where the protocol reports them);
- ``ignition``: was seen with the ignition on and with it off;
- ``supply_voltage``: sees the supply voltage of the vehicle's 12/24 V declaration;
- ``sms_round_trip``: answered the status command SMS queued at the start;
- ``at_center``: is at the installation center (within the certification's radius).

Each check is green, red or pending, with its evidence. ``evaluate`` is pure (the figures
in, the checks out); ``load`` reads what it needs from the database.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from statistics import median
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from avl.i18n import t
from diagnostics.commands import status_command as family_status_command
from diagnostics.steps.reporting import ON_BACKUP_BELOW_MV, VOLTAGE_RANGE
from diagnostics.steps.sms_ping import FAILED_RECEIPTS
from ingest.pipeline import FLAG_BUFFERED, FLAG_NULL_ISLAND

CHECKS = ("reporting_interval", "gps_fix", "ignition", "supply_voltage", "sms_round_trip", "at_center")
GREEN, RED, PENDING = "green", "red", "pending"

MIN_REPORTS = 3  # fewest reports that show an interval
INTERVAL_TOLERANCE = 1.5  # median gap allowed, in expected intervals
SILENT_AFTER_INTERVALS = 3.0  # as the diagnostics sweep's default
MIN_SATELLITES = 4
MAX_HDOP = 5.0
FIX_WINDOW = 5  # the latest located reports the fix check looks at
SMS_REPLY_TIMEOUT = timedelta(minutes=10)
# Reports that prove nothing live: stored-and-forwarded data (possibly from before the
# installation) is left out of every check.
IGNORED_FLAGS = FLAG_BUFFERED


def status_command(protocol: str, identifier: str) -> str | None:
    """The protocol family's SMS status command (as the diagnostics SMS ping sends it)."""
    return family_status_command(protocol, identifier)


@dataclass
class Reading:
    """One report received since the start: a located position or a status event."""

    fix_time: datetime
    received_at: datetime
    located: bool
    valid: bool | None = None
    latitude: float | None = None
    longitude: float | None = None
    satellites: int | None = None
    hdop: float | None = None
    ignition: bool | None = None
    power_mv: int | None = None


@dataclass
class Sms:
    """The certification's SMS round trip, as the outbox and the worker recorded it."""

    msisdn: str | None
    command: str | None
    status: str | None = None  # the MT row's status: queued, submitted, DELIVRD, UNDELIV, failed, ...
    error: str | None = None
    queued_at: datetime | None = None
    reply: str | None = None
    reply_at: datetime | None = None


@dataclass
class Inputs:
    started_at: datetime
    now: datetime
    interval_s: int
    declared_v: int | None
    center: str
    center_lat: float
    center_lon: float
    radius_m: int
    readings: list[Reading]
    sms: Sms


@dataclass
class Check:
    name: str
    status: str  # green | red | pending
    summary: str  # in English, for the API
    evidence: dict[str, Any] = field(default_factory=dict)
    # The summary as keys of the ``certificate`` catalogue (``summary.<name>.<key>``) with their
    # parameters, joined by "; ": the certificate prints it in its own language. Snapshots
    # stored before the catalogue have none, and print the English summary.
    messages: list[list[Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "summary": self.summary, "evidence": self.evidence,
                "messages": self.messages}

    def text(self, lang: str) -> str:
        """The summary in ``lang`` (``es`` or ``en``)."""
        if not self.messages:
            return self.summary
        return "; ".join(t(f"certificate:summary.{self.name}.{key}", lang, **{k: _number(v, lang) for k, v in params.items()})
                         for key, params in self.messages)


def _number(value: Any, lang: str) -> str:
    """A parameter as printed: floats with one decimal (a decimal comma in Spanish)."""
    if isinstance(value, float):
        text = f"{value:.1f}"
        return text.replace(".", ",") if lang == "es" else text
    return str(value)


def _whole(value: float) -> int | float:
    """An int when ``value`` is one (8 satellites, not 8.0)."""
    return int(value) if float(value).is_integer() else round(float(value), 1)


def _check(name: str, status: str, evidence: dict[str, Any], *messages: tuple[str, dict[str, Any]]) -> Check:
    parts = [[key, params] for key, params in messages]
    check = Check(name, status, "", evidence, parts)
    check.summary = check.text("en")
    return check


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine, mean Earth radius)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    h = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * 6_371_008.8 * math.asin(math.sqrt(h))


def evaluate(inp: Inputs) -> list[Check]:
    located = sorted((r for r in inp.readings if r.located), key=lambda r: r.fix_time)
    return [_interval(inp, located), _fix(located), _ignition(inp.readings), _voltage(inp),
            _sms(inp), _at_center(inp, located)]


def _interval(inp: Inputs, located: list[Reading]) -> Check:
    name, expected = "reporting_interval", inp.interval_s
    elapsed = (inp.now - inp.started_at).total_seconds()
    ev: dict[str, Any] = {"reports": len(located), "expected_interval_s": expected}
    if not located:
        if elapsed > SILENT_AFTER_INTERVALS * expected:
            return _check(name, RED, ev, ("no_report", {"elapsed": round(elapsed)}))
        return _check(name, PENDING, ev, ("waiting", {}))
    newest = max(r.received_at for r in located)
    age = (inp.now - newest).total_seconds()
    ev["last_report_age_s"] = round(age, 1)
    if len(located) >= 2:
        gaps = [(b.fix_time - a.fix_time).total_seconds() for a, b in zip(located, located[1:], strict=False)]
        ev["median_gap_s"] = round(median(gaps), 1)
        ev["longest_gap_s"] = round(max(gaps), 1)
    if age > SILENT_AFTER_INTERVALS * expected:
        return _check(name, RED, ev, ("silent", {"age": round(age), "expected": expected}))
    if len(located) < MIN_REPORTS:
        return _check(name, PENDING, ev, ("need_reports", {"count": len(located), "needed": MIN_REPORTS}))
    gap = round(ev["median_gap_s"])
    if ev["median_gap_s"] > INTERVAL_TOLERANCE * expected:
        return _check(name, RED, ev, ("too_slow", {"gap": gap, "expected": expected}))
    return _check(name, GREEN, ev, ("ok", {"count": len(located), "gap": gap, "expected": expected}))


def _fix(located: list[Reading]) -> Check:
    name, recent = "gps_fix", located[-FIX_WINDOW:]
    if not recent:
        return _check(name, PENDING, {}, ("waiting", {}))
    valid = [r for r in recent if r.valid]
    sats = [r.satellites for r in recent if r.satellites is not None]
    hdops = [r.hdop for r in recent if r.hdop is not None and r.hdop > 0]
    ev: dict[str, Any] = {"reports": len(recent), "valid": len(valid),
                          "satellites_median": median(sats) if sats else None,
                          "hdop_median": round(median(hdops), 2) if hdops else None,
                          "limits": {"satellites_min": MIN_SATELLITES, "hdop_max": MAX_HDOP}}
    not_reported = [what for what, values in (("satellites", sats), ("HDOP", hdops)) if not values]
    if not_reported:
        ev["not_reported_by_protocol"] = not_reported
    problems: list[tuple[str, dict[str, Any]]] = []
    if len(valid) < len(recent):
        problems.append(("invalid", {"bad": len(recent) - len(valid), "count": len(recent)}))
    if sats and median(sats) < MIN_SATELLITES:
        problems.append(("few_satellites", {"satellites": _whole(median(sats)), "needed": MIN_SATELLITES}))
    if hdops and median(hdops) > MAX_HDOP:
        problems.append(("high_hdop", {"hdop": round(float(median(hdops)), 1), "limit": _whole(MAX_HDOP)}))
    if problems:
        # A receiver still acquiring its first fix gets a few reports' grace.
        return _check(name, RED if len(recent) >= MIN_REPORTS else PENDING, ev, *problems)
    quality: dict[str, Any] = {"count": len(recent)}
    if sats:
        quality["satellites"] = _whole(median(sats))
    if hdops:
        quality["hdop"] = round(float(median(hdops)), 1)
    key = {(True, True): "ok_both", (True, False): "ok_satellites", (False, True): "ok_hdop"}.get(
        (bool(sats), bool(hdops)), "ok")
    return _check(name, GREEN, ev, (key, quality))


def _ignition(readings: list[Reading]) -> Check:
    on = [r.fix_time for r in readings if r.ignition is True]
    off = [r.fix_time for r in readings if r.ignition is False]
    ev = {"on_seen_at": min(on).isoformat() if on else None, "off_seen_at": min(off).isoformat() if off else None}
    if on and off:
        return _check("ignition", GREEN, ev, ("ok", {}))
    key = "waiting_off" if on else "waiting_on" if off else "waiting_both"
    return _check("ignition", PENDING, ev, (key, {}))


def _voltage(inp: Inputs) -> Check:
    name = "supply_voltage"
    powers = [r.power_mv for r in inp.readings if r.power_mv is not None and r.power_mv > 10]
    ev: dict[str, Any] = {"declared_v": inp.declared_v, "readings": len(powers)}
    if inp.declared_v not in VOLTAGE_RANGE:
        return _check(name, RED, ev, ("undeclared", {}))
    low, high = VOLTAGE_RANGE[inp.declared_v]
    ev["accepted_mv"] = [low, high]
    if not powers:
        return _check(name, PENDING, ev, ("waiting", {}))
    measured = int(median(powers))
    ev["measured_mv_median"] = measured
    volts = {"volts": round(measured / 1000, 1), "declared": inp.declared_v}
    if measured < ON_BACKUP_BELOW_MV:
        return _check(name, RED, ev, ("backup", volts))
    if not low <= measured <= high:
        return _check(name, RED, ev, ("mismatch", volts))
    return _check(name, GREEN, ev, ("ok", volts))


def _sms(inp: Inputs) -> Check:
    name, sms = "sms_round_trip", inp.sms
    ev: dict[str, Any] = {"msisdn": sms.msisdn, "command": sms.command, "status": sms.status,
                          "queued_at": sms.queued_at.isoformat() if sms.queued_at else None,
                          "reply": sms.reply, "reply_at": sms.reply_at.isoformat() if sms.reply_at else None}
    if not sms.msisdn:
        return _check(name, RED, ev, ("no_msisdn", {}))
    if sms.command is None:
        return _check(name, RED, ev, ("no_command", {}))
    if sms.reply_at is not None:
        return _check(name, GREEN, ev, ("answered", {"reply": repr(sms.reply)[:180]}))
    if sms.status in FAILED_RECEIPTS or sms.status == "failed":
        if sms.error:
            return _check(name, RED, ev, ("undelivered_error", {"status": sms.status, "error": sms.error}))
        return _check(name, RED, ev, ("undelivered", {"status": sms.status}))
    if inp.now - inp.started_at > SMS_REPLY_TIMEOUT:
        return _check(name, RED, ev, ("timeout", {"minutes": SMS_REPLY_TIMEOUT.seconds // 60}))
    return _check(name, PENDING, ev, ("waiting", {"status": sms.status or "queued"}))


def _at_center(inp: Inputs, located: list[Reading]) -> Check:
    name = "at_center"
    ev: dict[str, Any] = {"center": inp.center, "radius_m": inp.radius_m}
    fixes = [r for r in located if r.valid and r.latitude is not None and r.longitude is not None]
    if not fixes:
        return _check(name, PENDING, ev, ("waiting", {}))
    last = fixes[-1]
    assert last.latitude is not None and last.longitude is not None
    meters = distance_m(last.latitude, last.longitude, inp.center_lat, inp.center_lon)
    ev.update(distance_m=round(meters), latitude=last.latitude, longitude=last.longitude,
              fix_time=last.fix_time.isoformat())
    where = {"center": inp.center, "radius": inp.radius_m, "meters": round(meters), "km": round(meters / 1000, 1)}
    if meters > inp.radius_m:
        return _check(name, RED, ev, ("too_far_km" if meters >= 1000 else "too_far_m", where))
    return _check(name, GREEN, ev, ("ok", where))


# Loading -------------------------------------------------------------------------------------------------------------

CERT_SQL = """
SELECT c.*, d.identifier, d.protocol, d.msisdn, d.report_interval_s, d.account_id, d.vehicle_id, d.installed_at,
       d.purchased_at, d.proof_of_purchase,
       v.plate, v.supply_voltage_v, v.kind AS vehicle_kind, a.name AS account_name,
       ic.name AS center_name, ic.latitude AS center_lat, ic.longitude AS center_lon, ic.address AS center_address,
       u.name AS installer_name
FROM certifications c
JOIN devices d ON d.id = c.device_id
LEFT JOIN vehicles v ON v.id = d.vehicle_id
LEFT JOIN accounts a ON a.id = d.account_id
JOIN installation_centers ic ON ic.id = c.installation_center_id
LEFT JOIN users u ON u.id = c.installer_user_id
"""

# Positions are partitioned by fix time: the day bound lets the planner skip old partitions.
POSITIONS_SQL = """
SELECT fix_time, received_at, valid AND (flags & %s) = 0 AS valid, latitude, longitude, satellites, hdop, ignition, power_mv
FROM positions WHERE device_id = %s AND fix_time > %s - interval '1 day' AND received_at >= %s AND received_at <= %s
  AND (flags & %s) = 0
ORDER BY fix_time
"""
EVENTS_SQL = """
SELECT time, received_at, ignition, power_mv FROM device_events
WHERE device_id = %s AND time > %s - interval '1 day' AND received_at >= %s AND received_at <= %s
  AND (ignition IS NOT NULL OR power_mv IS NOT NULL)
"""


async def load(conn: AsyncConnection, cert: dict[str, Any], now: datetime) -> Inputs:
    """What the checks need, for the certification row ``cert`` (as ``CERT_SQL`` returns it)."""
    started = cert["started_at"]
    readings: list[Reading] = []
    async with conn.cursor() as cur:
        await cur.execute(POSITIONS_SQL, (FLAG_NULL_ISLAND, cert["device_id"], started, started, now, IGNORED_FLAGS))
        for fix, received, valid, lat, lon, sats, hdop, ignition, power in await cur.fetchall():
            readings.append(Reading(fix, received, True, valid, lat, lon, sats, hdop, ignition, power))
        await cur.execute(EVENTS_SQL, (cert["device_id"], started, started, now))
        for when, received, ignition, power in await cur.fetchall():
            readings.append(Reading(when, received, False, ignition=ignition, power_mv=power))
    sms = Sms(msisdn=cert["msisdn"], command=status_command(cert["protocol"], cert["identifier"]))
    async with conn.cursor(row_factory=dict_row) as cur:
        if cert["sms_message_id"] is not None:
            await cur.execute("SELECT status, error, created_at FROM sms_messages WHERE id = %s", (cert["sms_message_id"],))
            mt = await cur.fetchone()
            if mt is not None:
                sms.status, sms.error, sms.queued_at = mt["status"], mt["error"], mt["created_at"]
        if sms.msisdn:
            # The worker records the terminal's answer as an MO message with the device set; an
            # answer from the terminal's number counts even if it could not be attributed.
            await cur.execute(
                "SELECT body, created_at FROM sms_messages WHERE direction = 'mo' AND (device_id = %s OR msisdn = %s)"
                " AND created_at >= %s AND created_at <= %s ORDER BY created_at LIMIT 1",
                (cert["device_id"], sms.msisdn, started, now))
            reply = await cur.fetchone()
            if reply is not None:
                sms.reply, sms.reply_at = reply["body"], reply["created_at"]
    return Inputs(started_at=started, now=now, interval_s=int(cert["report_interval_s"]),
                  declared_v=cert["supply_voltage_v"], center=cert["center_name"], center_lat=cert["center_lat"],
                  center_lon=cert["center_lon"], radius_m=int(cert["radius_m"]), readings=readings, sms=sms)
