"""Step 3: is the terminal reporting properly? Analysis of its stored reports (numpy).

Looks at the last 24 h: age of the last report against the expected interval; gaps
(count, longest, share of expected reports received); share of valid fixes, satellites
and HDOP; a frozen position while the ignition is on or the speed is above zero; supply
voltage against the vehicle's declared 12/24 V; clock skew between fix and arrival;
buffered-data flushes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from diagnostics.context import Context, Device
from diagnostics.model import Step, Verdict
from ingest.pipeline import FLAG_BUFFERED

WINDOW = timedelta(hours=24)
# Supply voltage a terminal should see, by declared vehicle voltage (mV).
VOLTAGE_RANGE = {12: (11_000, 15_500), 24: (22_000, 30_500)}
ON_BACKUP_BELOW_MV = 6_000
FROZEN_MIN_REPORTS = 5
FROZEN_RADIUS_M = 3.0
CLOCK_SKEW_S = 300.0
MIN_VALID_SHARE = 0.5


@dataclass
class Series:
    """One device's reports in the window, as arrays (seconds since the epoch, degrees, mV)."""

    fix: np.ndarray
    received: np.ndarray
    valid: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    speed: np.ndarray
    satellites: np.ndarray
    hdop: np.ndarray
    ignition: np.ndarray  # 1 on, 0 off, nan unknown
    power: np.ndarray
    flags: np.ndarray

    @classmethod
    def from_rows(cls, rows: list[tuple[Any, ...]]) -> Series:
        def col(i: int, conv: Any = float) -> np.ndarray:
            return np.array([np.nan if r[i] is None else conv(r[i]) for r in rows], dtype=float)

        ts = lambda v: v.timestamp()  # noqa: E731
        return cls(col(0, ts), col(1, ts), col(2), col(3), col(4), col(5), col(6), col(7), col(8), col(9), col(10))


def analyse(s: Series, *, now: float, interval_s: float, declared_v: int | None,
            last_received: float | None, silent_factor: float) -> dict[str, Any]:
    """Pure analysis: figures and findings from the arrays."""
    n = len(s.fix)
    out: dict[str, Any] = {"reports_24h": n, "expected_interval_s": interval_s}
    age = None if last_received is None else now - last_received
    out["last_report_age_s"] = None if age is None else round(age, 1)
    out["silent"] = age is None or age > silent_factor * interval_s
    window = WINDOW.total_seconds()
    expected = window / interval_s
    if n:
        order = np.argsort(s.fix)
        fix = s.fix[order]
        gaps = np.diff(np.concatenate(([now - window], fix, [now])))
        big = gaps[gaps > 2 * interval_s]
        out["gaps"] = int(big.size)
        out["longest_gap_s"] = round(float(big.max()), 1) if big.size else 0.0
        out["received_share"] = round(min(1.0, n / expected), 3)
        out["valid_fix_share"] = round(float(np.nanmean(s.valid)), 3)
        out["satellites_mean"] = _r(np.nanmean(s.satellites)) if np.isfinite(s.satellites).any() else None
        out["hdop_mean"] = _r(np.nanmean(s.hdop)) if np.isfinite(s.hdop).any() else None
        skew = s.fix - s.received
        not_buffered = (s.flags.astype(int) & FLAG_BUFFERED) == 0
        out["clock_skew_s"] = _r(np.median(skew[not_buffered])) if not_buffered.any() else _r(np.median(skew))
        buffered = ~not_buffered
        out["buffered_reports"] = int(buffered.sum())
        # A flush is a burst of buffered reports arriving together.
        arrivals = np.sort(s.received[buffered])
        out["buffered_flushes"] = int((np.diff(arrivals) > 60).sum() + 1) if arrivals.size else 0
        out["frozen_position"] = _frozen(s, order)
        power = s.power[np.isfinite(s.power)]
        out["power_mv_median"] = int(np.median(power[-20:])) if power.size else None
    else:
        out.update(gaps=None, longest_gap_s=window, received_share=0.0, valid_fix_share=None, frozen_position=False,
                   power_mv_median=None, clock_skew_s=None, buffered_reports=0, buffered_flushes=0)
    findings: list[str] = []
    if out["silent"]:
        findings.append("silent")
    if n >= FROZEN_MIN_REPORTS and out["valid_fix_share"] is not None and out["valid_fix_share"] < MIN_VALID_SHARE:
        findings.append("no_valid_fix")
    if out["frozen_position"]:
        findings.append("frozen_position")
    power = out["power_mv_median"]
    if power is not None and declared_v in VOLTAGE_RANGE:
        low, high = VOLTAGE_RANGE[declared_v]
        if power < ON_BACKUP_BELOW_MV:
            findings.append("on_backup_battery")
        elif not low <= power <= high:
            findings.append("voltage_mismatch")
    if out["clock_skew_s"] is not None and abs(out["clock_skew_s"]) > CLOCK_SKEW_S:
        findings.append("clock_skew")
    out["findings"] = findings
    return out


def _frozen(s: Series, order: np.ndarray) -> bool:
    """The last reports with ignition on or speed > 0 all at the same spot: the antenna is not tracking."""
    moving = (s.ignition[order] == 1) | (s.speed[order] > 3)
    lat, lon = s.lat[order][moving][-10:], s.lon[order][moving][-10:]
    if lat.size < FROZEN_MIN_REPORTS:
        return False
    spread_m = max(np.ptp(lat) * 111_320, np.ptp(lon) * 111_320 * np.cos(np.radians(np.nanmean(lat))))
    return bool(spread_m < FROZEN_RADIUS_M)


def _r(x: Any) -> float:
    return round(float(x), 2)


SERIES_SQL = """
SELECT fix_time, received_at, valid, latitude, longitude, speed_kmh, satellites, hdop,
       CASE WHEN ignition IS NULL THEN NULL WHEN ignition THEN 1 ELSE 0 END, power_mv, flags
FROM positions WHERE device_id = %s AND fix_time > %s ORDER BY fix_time
"""


async def check(ctx: Context, device: Device) -> tuple[Step, Verdict | None, dict[str, Any]]:
    """Returns the step, a verdict when the data alone decides it, and the figures."""
    step = Step("reporting")
    now = datetime.now(UTC)
    cur = await ctx.conn.execute(SERIES_SQL, (device.id, now - WINDOW))
    rows = await cur.fetchall()
    figures = analyse(Series.from_rows(rows), now=now.timestamp(), interval_s=float(device.report_interval_s),
                      declared_v=device.supply_voltage_v,
                      last_received=device.last_received_at.timestamp() if device.last_received_at else None,
                      silent_factor=ctx.settings.silent_after_intervals)
    findings = figures["findings"]
    if "silent" in findings:
        age = figures["last_report_age_s"]
        summary = "never reported" if age is None else f"silent for {age:.0f} s (expected every {device.report_interval_s} s)"
        return step.done("fail", summary, **figures), None, figures
    if "frozen_position" in findings or "no_valid_fix" in findings:
        what = "frozen position while moving" if "frozen_position" in findings else \
            f"only {figures['valid_fix_share']:.0%} valid fixes"
        return step.done("fail", f"reporting, but GPS is not usable: {what}", **figures), Verdict.GPS_FAULT, figures
    if "on_backup_battery" in findings or "voltage_mismatch" in findings:
        declared = f"{device.supply_voltage_v} V declared"
        what = "on its backup battery (no vehicle power)" if "on_backup_battery" in findings else \
            f"supply {figures['power_mv_median'] / 1000:.1f} V"
        return step.done("fail", f"reporting, but {what}; {declared}", **figures), Verdict.POWER_FAULT, figures
    status = "warn" if findings else "ok"
    summary = f"{figures['reports_24h']} reports in 24 h, last {figures['last_report_age_s']:.0f} s ago"
    if findings:
        summary += f" (note: {', '.join(findings)})"
    return step.done(status, summary, **figures), Verdict.HEALTHY, figures
