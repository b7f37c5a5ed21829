"""Step 3: is the terminal reporting properly? Analysis of its stored reports (numpy).

The window is the last 24 h, or less when the device started reporting within it. Terminals
report every N s while moving and less often parked (ignition off), so everything is judged
against the cadence of the state the vehicle was last in: the installer's declaration for
the parked cadence, else what the device's own history shows (learned here and kept in
``device_cadence`` for the sweep), else the declared interval (moving) or the parked default.

Findings: silent (no frame for ``silent_after_intervals`` expected intervals), no usable fix
in the recent reports made with the ignition on, a frozen position while moving, supply
voltage against the declared 12/24 V (or 0 V: on the backup battery); noted only: gaps,
clock skew, buffered-data flushes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from diagnostics.context import Context, Device
from diagnostics.model import Step, Text, Verdict
from ingest.pipeline import FLAG_BUFFERED

WINDOW = timedelta(hours=24)
# Supply voltage a terminal should see, by declared vehicle voltage (mV).
VOLTAGE_RANGE = {12: (11_000, 15_500), 24: (22_000, 30_500)}
ON_BACKUP_BELOW_MV = 6_000
POWER_RECENT = 5  # the supply is judged on the median of the last few readings
FROZEN_MIN_REPORTS = 5
FROZEN_RADIUS_M = 3.0
CLOCK_SKEW_S = 300.0
MIN_VALID_SHARE = 0.5
# "No usable fix in the recent reports": the newest reports made while driving (ignition on or
# unknown and moving) have had no usable fix for at least NO_FIX_MIN_REPORTS reports spanning
# NO_FIX_MIN_S (a tunnel or a multi-storey car park does not last that long). Reports made
# parked are neither held against the receiver (a garage has no sky) nor count for it.
NO_FIX_MIN_REPORTS = 3
NO_FIX_MIN_S = 300.0
# A learned cadence needs this many gaps of the state.
CADENCE_MIN_SAMPLES = 6
PARKED_MAX_SPEED_KMH = 3.0
FLAG_NULL_ISLAND = 4


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

    def parked(self) -> np.ndarray:
        """Per report: the vehicle was parked (ignition off, or unknown ignition and standing still)."""
        unknown = np.isnan(self.ignition)
        parked: np.ndarray = (self.ignition == 0) | (unknown & ~(self.speed > PARKED_MAX_SPEED_KMH))
        return parked


@dataclass(frozen=True)
class Cadence:
    """Expected seconds between reports, moving and parked, and where each figure comes from."""

    moving_s: float
    parked_s: float
    moving_source: str  # learned | declared
    parked_source: str  # declared | learned | default
    learned_moving_s: float | None = None
    learned_parked_s: float | None = None
    moving_samples: int = 0
    parked_samples: int = 0

    def expected(self, parked: bool) -> float:
        return self.parked_s if parked else self.moving_s


def learn_cadence(s: Series) -> tuple[float | None, int, float | None, int]:
    """Medians of the gaps between consecutive reports (by fix time), split by the state of the
    earlier report: (moving_s, moving samples, parked_s, parked samples)."""
    if s.fix.size < 2:
        return None, 0, None, 0
    order = np.argsort(s.fix, kind="stable")
    fix = s.fix[order]
    gaps = np.diff(fix)
    parked = s.parked()[order][:-1]
    keep = gaps > 0.5  # two reports in the same second are one event (an ignition edge and a report)
    moving_gaps, parked_gaps = gaps[keep & ~parked], gaps[keep & parked]
    moving = float(np.median(moving_gaps)) if moving_gaps.size else None
    parked_s = float(np.median(parked_gaps)) if parked_gaps.size else None
    return moving, int(moving_gaps.size), parked_s, int(parked_gaps.size)


def cadence_for(device: Device, s: Series, default_parked_s: float) -> Cadence:
    moving, n_moving, parked, n_parked = learn_cadence(s)
    if moving is not None and n_moving >= CADENCE_MIN_SAMPLES:
        moving_s, moving_source = moving, "learned"
    elif device.learned_moving_s is not None and device.learned_moving_samples >= CADENCE_MIN_SAMPLES:
        moving_s, moving_source = device.learned_moving_s, "learned"
    else:
        moving_s, moving_source = float(device.report_interval_s), "declared"
    if device.parked_interval_s:
        parked_s, parked_source = float(device.parked_interval_s), "declared"
    elif parked is not None and n_parked >= CADENCE_MIN_SAMPLES:
        parked_s, parked_source = parked, "learned"
    elif device.learned_parked_s is not None and device.learned_parked_samples >= CADENCE_MIN_SAMPLES:
        parked_s, parked_source = device.learned_parked_s, "learned"
    else:
        parked_s, parked_source = max(default_parked_s, moving_s), "default"
    # Parked is never expected more often than moving: a terminal does not report faster standing still.
    parked_s = max(parked_s, moving_s)
    return Cadence(moving_s, parked_s, moving_source, parked_source, moving, parked, n_moving, n_parked)


def analyse(s: Series, *, now: float, cadence: Cadence, declared_v: int | None, last_received: float | None,
            last_parked: bool, silent_factor: float, window_start: float) -> dict[str, Any]:
    """Pure analysis: figures and findings from the arrays."""
    n = len(s.fix)
    expected_now = cadence.expected(last_parked)
    out: dict[str, Any] = {
        "reports_24h": n, "window_s": round(now - window_start, 1), "state": "parked" if last_parked else "moving",
        "expected_interval_s": round(expected_now, 1),
        "moving_interval_s": round(cadence.moving_s, 1), "moving_interval_source": cadence.moving_source,
        "parked_interval_s": round(cadence.parked_s, 1), "parked_interval_source": cadence.parked_source,
    }
    age = None if last_received is None else now - last_received
    out["last_report_age_s"] = None if age is None else round(age, 1)
    out["silent"] = age is None or age > silent_factor * expected_now
    window = max(1.0, now - window_start)
    if n:
        order = np.argsort(s.fix, kind="stable")
        fix = s.fix[order]
        parked = s.parked()[order]
        # Each gap is judged against the cadence of the state the vehicle was in when it began.
        edges = np.concatenate(([window_start], fix, [now]))
        states = np.concatenate(([parked[0]], parked))
        expected = np.where(states, cadence.parked_s, cadence.moving_s)
        gaps = np.diff(edges)
        big = gaps > 2 * expected
        out["gaps"] = int(big.sum())
        out["longest_gap_s"] = round(float(gaps[big].max()), 1) if big.any() else 0.0
        expected_reports = float(np.sum(np.maximum(gaps, 0) / expected))
        out["received_share"] = round(min(1.0, n / max(1.0, expected_reports)), 3)
        usable = (s.valid == 1) & ((s.flags.astype(int) & FLAG_NULL_ISLAND) == 0)
        out["valid_fix_share"] = round(float(usable.mean()), 3)
        driving = np.flatnonzero(~parked)
        good = usable[order][driving]
        last_good = int(np.flatnonzero(good)[-1]) if good.any() else -1
        streak = driving[last_good + 1:]
        out["no_fix_streak_reports"] = int(streak.size)
        out["no_fix_streak_s"] = round(float(fix[streak[-1]] - fix[streak[0]]), 1) if streak.size else 0.0
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
        power = s.power[order][np.isfinite(s.power[order])]
        out["power_mv_median"] = int(np.median(power[-POWER_RECENT:])) if power.size else None
    else:
        out.update(gaps=None, longest_gap_s=round(window, 1), received_share=0.0, valid_fix_share=None,
                   no_fix_streak_reports=0, no_fix_streak_s=0.0, frozen_position=False, power_mv_median=None,
                   clock_skew_s=None, buffered_reports=0, buffered_flushes=0)
    findings: list[str] = []
    if out["silent"]:
        findings.append("silent")
    if out["no_fix_streak_reports"] >= NO_FIX_MIN_REPORTS and out["no_fix_streak_s"] >= NO_FIX_MIN_S:
        findings.append("no_valid_fix")
    elif out["valid_fix_share"] is not None and n >= FROZEN_MIN_REPORTS and out["valid_fix_share"] < MIN_VALID_SHARE:
        findings.append("few_valid_fixes")  # noted: parked without sky view, or an intermittent antenna
    if out["frozen_position"]:
        findings.append("frozen_position")
    power_mv = out["power_mv_median"]
    if power_mv is not None and declared_v in VOLTAGE_RANGE:
        low, high = VOLTAGE_RANGE[declared_v]
        if power_mv < ON_BACKUP_BELOW_MV:
            findings.append("on_backup_battery")
        elif not low <= power_mv <= high:
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
FROM positions WHERE device_id = %s AND fix_time > %s AND fix_time <= %s ORDER BY fix_time
"""
# Whether the device reported before the window: if not, the window starts at its first report.
BEFORE_SQL = "SELECT 1 FROM positions WHERE device_id = %s AND fix_time <= %s LIMIT 1"
SAVE_CADENCE_SQL = """
INSERT INTO device_cadence (device_id, moving_interval_s, parked_interval_s, moving_samples, parked_samples)
VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (device_id) DO UPDATE SET
    moving_interval_s = coalesce(EXCLUDED.moving_interval_s, device_cadence.moving_interval_s),
    parked_interval_s = coalesce(EXCLUDED.parked_interval_s, device_cadence.parked_interval_s),
    moving_samples = greatest(EXCLUDED.moving_samples, CASE WHEN EXCLUDED.moving_interval_s IS NULL
                              THEN device_cadence.moving_samples ELSE 0 END),
    parked_samples = greatest(EXCLUDED.parked_samples, CASE WHEN EXCLUDED.parked_interval_s IS NULL
                              THEN device_cadence.parked_samples ELSE 0 END),
    learned_at = now()
"""


@dataclass
class Analysis:
    figures: dict[str, Any]
    cadence: Cadence

    @property
    def findings(self) -> list[str]:
        return list(self.figures["findings"])

    @property
    def silent(self) -> bool:
        return "silent" in self.figures["findings"]

    @property
    def silence_s(self) -> float | None:
        age = self.figures["last_report_age_s"]
        return None if age is None else float(age)


async def analyse_device(ctx: Context, device: Device, now: datetime | None = None) -> Analysis:
    """Reads the device's window and analyses it; keeps what it learned of the cadence."""
    now = now or datetime.now(UTC)
    start = now - WINDOW
    cur = await ctx.conn.execute(SERIES_SQL, (device.id, start, now + timedelta(days=1)))
    rows = await cur.fetchall()
    series = Series.from_rows(rows)
    if rows:
        before = await (await ctx.conn.execute(BEFORE_SQL, (device.id, start))).fetchone()
        if before is None:
            start = min(rows[0][0], rows[0][1])  # its first report (by fix time, or arrival if earlier)
    cadence = cadence_for(device, series, ctx.settings.parked_interval_s)
    if cadence.moving_samples >= CADENCE_MIN_SAMPLES or cadence.parked_samples >= CADENCE_MIN_SAMPLES:
        await ctx.conn.execute(SAVE_CADENCE_SQL, (
            device.id,
            cadence.learned_moving_s if cadence.moving_samples >= CADENCE_MIN_SAMPLES else None,
            cadence.learned_parked_s if cadence.parked_samples >= CADENCE_MIN_SAMPLES else None,
            cadence.moving_samples, cadence.parked_samples))
    last_parked = _last_parked(device, series)
    figures = analyse(series, now=now.timestamp(), cadence=cadence, declared_v=device.supply_voltage_v,
                      last_received=device.last_received_at.timestamp() if device.last_received_at else None,
                      last_parked=last_parked, silent_factor=ctx.settings.silent_after_intervals,
                      window_start=start.timestamp())
    return Analysis(figures, cadence)


def _last_parked(device: Device, s: Series) -> bool:
    """The state the vehicle was last seen in (its newest report by fix time)."""
    if s.fix.size:
        return bool(s.parked()[int(np.argmax(s.fix))])
    if device.ignition is not None:
        return not device.ignition
    return not (device.speed_kmh or 0) > PARKED_MAX_SPEED_KMH


def data_verdict(analysis: Analysis, device: Device) -> tuple[str, Text, Verdict] | None:
    """The verdict the stored data alone gives for a device that reports: (status, summary, verdict)."""
    findings = analysis.findings
    figures = analysis.figures
    if "frozen_position" in findings:
        return "fail", Text("checklist:reporting.gps_frozen"), Verdict.GPS_FAULT
    if "no_valid_fix" in findings:
        return "fail", Text("checklist:reporting.gps_no_fix", reports=figures["no_fix_streak_reports"],
                            minutes=round(figures["no_fix_streak_s"] / 60)), Verdict.GPS_FAULT
    if "on_backup_battery" in findings:
        return "fail", Text("checklist:reporting.power_backup", declared=device.supply_voltage_v), Verdict.POWER_FAULT
    if "voltage_mismatch" in findings:
        return "fail", Text("checklist:reporting.power_mismatch", volts=f"{figures['power_mv_median'] / 1000:.1f}",
                            declared=device.supply_voltage_v), Verdict.POWER_FAULT
    return None


async def check(ctx: Context, device: Device) -> tuple[Step, Verdict | None, Analysis]:
    """Returns the step, a verdict when the data alone decides it (None: silent), and the analysis."""
    step = Step("reporting")
    analysis = await analyse_device(ctx, device)
    figures = analysis.figures
    if analysis.silent:
        age = figures["last_report_age_s"]
        summary = Text("checklist:reporting.never") if age is None else Text(
            f"checklist:reporting.silent_{figures['state']}", age=round(age), expected=round(figures["expected_interval_s"]))
        return step.done("fail", summary, **figures), None, analysis
    decided = data_verdict(analysis, device)
    if decided is not None:
        status, summary, verdict = decided
        return step.done(status, summary, **figures), verdict, analysis
    notes = [f for f in figures["findings"] if f != "silent"]
    summary = Text(f"checklist:reporting.ok_{figures['state']}", reports=figures["reports_24h"],
                   hours=f"{figures['window_s'] / 3600:.1f}", age=round(figures["last_report_age_s"]),
                   expected=round(figures["expected_interval_s"]))
    if notes:
        summary = Text.concat([summary, Text("checklist:reporting.notes", findings=", ".join(notes))])
    return step.done("warn" if notes else "ok", summary, **figures), Verdict.HEALTHY, analysis
