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

from diagnostics.steps.reporting import ON_BACKUP_BELOW_MV, VOLTAGE_RANGE
from diagnostics.steps.sms_ping import COMMANDS, FAILED_RECEIPTS
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
    template = COMMANDS.get(protocol)
    return template.format(identifier=identifier) if template else None


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
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "summary": self.summary, "evidence": self.evidence}


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
    expected = inp.interval_s
    elapsed = (inp.now - inp.started_at).total_seconds()
    ev: dict[str, Any] = {"reports": len(located), "expected_interval_s": expected}
    if not located:
        if elapsed > SILENT_AFTER_INTERVALS * expected:
            return Check("reporting_interval", RED, f"no report in the {elapsed:.0f} s since the start", ev)
        return Check("reporting_interval", PENDING, "waiting for the first report", ev)
    newest = max(r.received_at for r in located)
    age = (inp.now - newest).total_seconds()
    ev["last_report_age_s"] = round(age, 1)
    if len(located) >= 2:
        gaps = [(b.fix_time - a.fix_time).total_seconds() for a, b in zip(located, located[1:], strict=False)]
        ev["median_gap_s"] = round(median(gaps), 1)
        ev["longest_gap_s"] = round(max(gaps), 1)
    if age > SILENT_AFTER_INTERVALS * expected:
        return Check("reporting_interval", RED, f"silent for {age:.0f} s (expected every {expected} s)", ev)
    if len(located) < MIN_REPORTS:
        return Check("reporting_interval", PENDING, f"{len(located)} of {MIN_REPORTS} reports needed to see the interval", ev)
    if ev["median_gap_s"] > INTERVAL_TOLERANCE * expected:
        return Check("reporting_interval", RED, f"reports every {ev['median_gap_s']:.0f} s, expected every {expected} s", ev)
    return Check("reporting_interval", GREEN, f"{len(located)} reports, every {ev['median_gap_s']:.0f} s"
                 f" (expected {expected} s)", ev)


def _fix(located: list[Reading]) -> Check:
    recent = located[-FIX_WINDOW:]
    if not recent:
        return Check("gps_fix", PENDING, "waiting for a located report")
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
    problems = []
    if len(valid) < len(recent):
        problems.append(f"{len(recent) - len(valid)} of the last {len(recent)} fixes invalid")
    if sats and median(sats) < MIN_SATELLITES:
        problems.append(f"{median(sats):g} satellites (at least {MIN_SATELLITES} needed)")
    if hdops and median(hdops) > MAX_HDOP:
        problems.append(f"HDOP {median(hdops):.1f} (at most {MAX_HDOP:g})")
    if problems:
        # A receiver still acquiring its first fix gets a few reports' grace.
        status = RED if len(recent) >= MIN_REPORTS else PENDING
        return Check("gps_fix", status, "; ".join(problems), ev)
    quality = ", ".join(part for part in (f"{median(sats):g} satellites" if sats else "",
                                          f"HDOP {median(hdops):.1f}" if hdops else "") if part)
    return Check("gps_fix", GREEN, f"valid fix in the last {len(recent)} reports" + (f" ({quality})" if quality else ""), ev)


def _ignition(readings: list[Reading]) -> Check:
    on = [r.fix_time for r in readings if r.ignition is True]
    off = [r.fix_time for r in readings if r.ignition is False]
    ev = {"on_seen_at": min(on).isoformat() if on else None, "off_seen_at": min(off).isoformat() if off else None}
    if on and off:
        return Check("ignition", GREEN, "ignition seen on and off", ev)
    missing = " and ".join(w for w, seen in (("on", on), ("off", off)) if not seen)
    return Check("ignition", PENDING, f"turn the ignition {missing}: not seen yet", ev)


def _voltage(inp: Inputs) -> Check:
    powers = [r.power_mv for r in inp.readings if r.power_mv is not None and r.power_mv > 10]
    ev: dict[str, Any] = {"declared_v": inp.declared_v, "readings": len(powers)}
    if inp.declared_v not in VOLTAGE_RANGE:
        return Check("supply_voltage", RED, "the vehicle has no declared supply voltage (12 or 24 V)", ev)
    low, high = VOLTAGE_RANGE[inp.declared_v]
    ev["accepted_mv"] = [low, high]
    if not powers:
        return Check("supply_voltage", PENDING, "waiting for a report with the supply voltage", ev)
    measured = int(median(powers))
    ev["measured_mv_median"] = measured
    if measured < ON_BACKUP_BELOW_MV:
        return Check("supply_voltage", RED, f"{measured / 1000:.1f} V: running on the backup battery, not on vehicle power", ev)
    if not low <= measured <= high:
        return Check("supply_voltage", RED, f"{measured / 1000:.1f} V does not match the {inp.declared_v} V declaration", ev)
    return Check("supply_voltage", GREEN, f"{measured / 1000:.1f} V on a {inp.declared_v} V vehicle", ev)


def _sms(inp: Inputs) -> Check:
    sms = inp.sms
    ev: dict[str, Any] = {"msisdn": sms.msisdn, "command": sms.command, "status": sms.status,
                          "queued_at": sms.queued_at.isoformat() if sms.queued_at else None,
                          "reply": sms.reply, "reply_at": sms.reply_at.isoformat() if sms.reply_at else None}
    if not sms.msisdn:
        return Check("sms_round_trip", RED, "the terminal has no MSISDN: no SMS round trip possible", ev)
    if sms.command is None:
        return Check("sms_round_trip", RED, "this protocol takes no SMS status command", ev)
    if sms.reply_at is not None:
        return Check("sms_round_trip", GREEN, f"the terminal answered: {sms.reply!r}"[:200], ev)
    if sms.status in FAILED_RECEIPTS or sms.status == "failed":
        return Check("sms_round_trip", RED, f"the status SMS was not delivered ({sms.status}"
                     + (f": {sms.error}" if sms.error else "") + ")", ev)
    if inp.now - inp.started_at > SMS_REPLY_TIMEOUT:
        return Check("sms_round_trip", RED, f"no SMS answer within {SMS_REPLY_TIMEOUT.seconds // 60} minutes", ev)
    return Check("sms_round_trip", PENDING, f"status SMS {sms.status or 'queued'}; waiting for the terminal's answer", ev)


def _at_center(inp: Inputs, located: list[Reading]) -> Check:
    ev: dict[str, Any] = {"center": inp.center, "radius_m": inp.radius_m}
    fixes = [r for r in located if r.valid and r.latitude is not None and r.longitude is not None]
    if not fixes:
        return Check("at_center", PENDING, "waiting for a valid fix", ev)
    last = fixes[-1]
    assert last.latitude is not None and last.longitude is not None
    meters = distance_m(last.latitude, last.longitude, inp.center_lat, inp.center_lon)
    ev.update(distance_m=round(meters), latitude=last.latitude, longitude=last.longitude,
              fix_time=last.fix_time.isoformat())
    if meters > inp.radius_m:
        where = f"{meters / 1000:.1f} km" if meters >= 1000 else f"{meters:.0f} m"
        return Check("at_center", RED, f"the vehicle is {where} from {inp.center} (at most {inp.radius_m} m)", ev)
    return Check("at_center", GREEN, f"the vehicle is {meters:.0f} m from {inp.center}", ev)


# Loading -------------------------------------------------------------------------------------------------------------

CERT_SQL = """
SELECT c.*, d.identifier, d.protocol, d.msisdn, d.report_interval_s, d.account_id, d.installed_at,
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
