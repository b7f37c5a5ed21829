"""Track geometry for the fleet API: simplification for drawing, trips and stops, distance
per day and geofence (zone) evaluation, all over a vehicle's reports in fix-time order.

Everything here is pure (numpy arrays in, plain records out); the routes fetch the reports
ordered by ``fix_time`` (never by arrival: buffered and out-of-order data is normal) and
store what must be stored.

Conventions, documented for clients in the routes:
- distances are great-circle (haversine, mean Earth radius);
- simplification projects the track to a local equirectangular frame in metres around its
  centre (good to well under a metre per kilometre for the spans a vehicle drives in a
  day) and runs Douglas-Peucker (shapely/GEOS) there, so the tolerance is in metres;
- motion: a report is *moving* when its ignition is not off and its speed is at least
  ``MOVING_KMH`` (the speed derived from the previous fix when the terminal sends none).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
import shapely  # type: ignore[import-untyped]
from shapely.geometry import mapping, shape  # type: ignore[import-untyped]
from shapely.geometry.base import BaseGeometry  # type: ignore[import-untyped]

EARTH_RADIUS_M = 6_371_008.8
MOVING_KMH = 5.0          # below this a report is stationary (GPS speed noise when parked is ~0-3 km/h)
MIN_STOP_S = 180          # a stationary stretch this long (or ignition off) ends a trip
MIN_TRIP_M = 200.0        # shorter "trips" are GPS drift or manoeuvring, folded into the stop
DRIFT_M = 50.0            # a jump this short between two stationary reports is drift, not distance
MAX_PLAUSIBLE_KMH = 300.0  # a segment implying more is a GPS glitch, left out of distances
MAX_ZONE_VERTICES = 10_000

Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]


class GeometryError(ValueError):
    """A zone geometry that cannot be used; ``str()`` is one line for the client."""


@dataclass
class Track:
    """A vehicle's usable fixes in fix-time order (``t`` is Unix seconds)."""

    times: list[datetime]
    t: Floats
    lat: Floats
    lon: Floats
    speed: Floats          # km/h, NaN when the terminal sent none
    ignition: npt.NDArray[np.int8]  # 1 on, 0 off, -1 unknown

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[Any]]) -> Track:
        """Rows of (fix_time, latitude, longitude, speed_kmh, ignition), already in fix-time order."""
        times = [r[0] for r in rows]
        n = len(rows)
        return cls(
            times=times,
            t=np.fromiter((r[0].timestamp() for r in rows), np.float64, n),
            lat=np.fromiter((r[1] for r in rows), np.float64, n),
            lon=np.fromiter((r[2] for r in rows), np.float64, n),
            speed=np.fromiter((math.nan if r[3] is None else r[3] for r in rows), np.float64, n),
            ignition=np.fromiter((-1 if r[4] is None else int(r[4]) for r in rows), np.int8, n),
        )

    def __len__(self) -> int:
        return len(self.times)


def haversine_m(lat1: Floats, lon1: Floats, lat2: Floats, lon2: Floats) -> Floats:
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(lon2 - lon1)
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    out: Floats = 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))
    return out


def segments_m(track: Track) -> Floats:
    """Length of each segment i-1 -> i (index 0 is 0)."""
    out = np.zeros(len(track))
    if len(track) > 1:
        out[1:] = haversine_m(track.lat[:-1], track.lon[:-1], track.lat[1:], track.lon[1:])
    return out


def local_frame(lat: Floats, lon: Floats) -> tuple[Floats, Floats]:
    """Metres east/north of the track's centre (equirectangular, scaled at the centre's latitude)."""
    lat0 = (float(lat.min()) + float(lat.max())) / 2
    lon0 = (float(lon.min()) + float(lon.max())) / 2
    x = np.radians(lon - lon0) * EARTH_RADIUS_M * math.cos(math.radians(lat0))
    y = np.radians(lat - lat0) * EARTH_RADIUS_M
    return x, y


# Simplification ----------------------------------------------------------------------------


def simplify_indices(lat: Floats, lon: Floats, tolerance_m: float) -> npt.NDArray[np.intp]:
    """Indices of the points Douglas-Peucker keeps at ``tolerance_m`` metres (first and last always)."""
    n = len(lat)
    if n <= 2 or tolerance_m <= 0:
        return np.arange(n)
    x, y = local_frame(lat, lon)
    simple = shapely.LineString(np.column_stack([x, y])).simplify(tolerance_m, preserve_topology=False)
    kept = shapely.get_coordinates(simple)
    if len(kept) < 2:  # every point in one place: the line collapses
        return np.array([0, n - 1])
    # DP keeps a subsequence of the input vertices, with their exact coordinates: walk both.
    out = np.empty(len(kept), dtype=np.intp)
    i = 0
    for j, (kx, ky) in enumerate(kept):
        while i < n and not (x[i] == kx and y[i] == ky):
            i += 1
        if i == n:  # cannot happen with GEOS's DP; fall back to keeping everything
            return np.arange(n)
        out[j] = i
        i += 1
    out[-1] = n - 1
    return out


def simplify_capped(lat: Floats, lon: Floats, tolerance_m: float, cap: int) -> tuple[npt.NDArray[np.intp], float]:
    """Simplify at ``tolerance_m``; while more than ``cap`` points remain, double the tolerance.

    Returns the kept indices and the tolerance finally used (what the drawing is faithful to).
    """
    cap = max(cap, 2)
    tolerance = tolerance_m
    kept = simplify_indices(lat, lon, tolerance)
    while len(kept) > cap:
        tolerance = max(tolerance * 2, 1.0)
        kept = simplify_indices(lat, lon, tolerance)
    return kept, tolerance


# Trips and stops ---------------------------------------------------------------------------


@dataclass
class Trip:
    start: int
    end: int
    distance_m: float
    max_speed_kmh: float | None
    ongoing: bool


@dataclass
class Stop:
    start: int                # arrival fix
    end: int                  # departure fix (or the last fix when still stopped)
    ignition_off: bool
    ongoing: bool


def moving_mask(track: Track, seg: Floats | None = None) -> Bools:
    seg = segments_m(track) if seg is None else seg
    speed = track.speed.copy()
    missing = np.isnan(speed)
    if missing.any():
        dt = np.diff(track.t, prepend=track.t[:1])
        with np.errstate(divide="ignore", invalid="ignore"):
            derived = np.where(dt > 0, seg / dt * 3.6, 0.0)
        speed[missing] = derived[missing]
    result: Bools = (track.ignition != 0) & (speed >= MOVING_KMH)
    return result


def trips_and_stops(track: Track, *, min_stop_s: float = MIN_STOP_S,
                    min_trip_m: float = MIN_TRIP_M) -> tuple[list[Trip], list[Stop]]:
    """Trips (from the departure fix to the arrival fix) and the stops between them.

    A trip starts at the last fix before the first moving one (where the vehicle left
    from). It ends at the first stationary fix after the last moving one, once the vehicle
    has stayed stationary ``min_stop_s`` or its ignition went off; data ending before that
    leaves the trip ``ongoing``. Trips shorter than ``min_trip_m`` are folded into the stop.
    Stops are the stretches between trips (and before the first / after the last one) that
    last at least ``min_stop_s``; ``ignition_off`` when any report in them had ignition off.
    """
    n = len(track)
    if n == 0:
        return [], []
    seg = segments_m(track)
    moving = moving_mask(track, seg)
    raw: list[tuple[int, int, bool]] = []
    start = -1
    last_moving = -1
    for i in range(n):
        if start < 0:
            if moving[i]:
                start = max(i - 1, 0)
                last_moving = i
        elif moving[i]:
            last_moving = i
        elif track.ignition[i] == 0 or track.t[i] - track.t[last_moving + 1] >= min_stop_s:
            raw.append((start, last_moving + 1, False))
            start = -1
    if start >= 0:
        ended = last_moving + 1 if last_moving + 1 < n else n - 1
        raw.append((start, ended, True))
    speeds = np.nan_to_num(track.speed, nan=0.0)
    trips = []
    for a, b, ongoing in raw:
        distance = float(seg[a + 1:b + 1].sum())
        if distance < min_trip_m:
            continue
        top = float(speeds[a:b + 1].max()) if np.isfinite(track.speed[a:b + 1]).any() else None
        trips.append(Trip(a, b, distance, top, ongoing))
    # Stretches between trips, and before the first / after the last one (no trips: all of it).
    if not trips:
        edges = [(0, n - 1)]
    else:
        edges = [(0, trips[0].start)] if trips[0].start > 0 else []
        edges += [(trips[k].end, trips[k + 1].start) for k in range(len(trips) - 1)]
        if not trips[-1].ongoing:
            edges.append((trips[-1].end, n - 1))
    stops = []
    for a, b in edges:
        if track.t[b] - track.t[a] < min_stop_s:
            continue
        stops.append(Stop(a, b, bool((track.ignition[a:b + 1] == 0).any()), b == n - 1))
    return trips, stops


# Distance per day --------------------------------------------------------------------------


@dataclass
class Day:
    day: date
    distance_m: float = 0.0
    reports: int = 0
    max_speed_kmh: float | None = None


def counted_segments(track: Track) -> Floats:
    """Segment lengths that count as distance: no drift between stationary fixes, no glitches."""
    seg = segments_m(track)
    if len(track) < 2:
        return seg
    stationary = np.nan_to_num(track.speed, nan=0.0) < MOVING_KMH
    drift = np.zeros(len(track), dtype=bool)
    drift[1:] = stationary[1:] & stationary[:-1] & (seg[1:] < DRIFT_M)
    dt = np.diff(track.t, prepend=track.t[:1])
    with np.errstate(divide="ignore", invalid="ignore"):
        glitch = (dt > 0) & (seg / np.where(dt > 0, dt, 1.0) * 3.6 > MAX_PLAUSIBLE_KMH)
    seg[drift | glitch] = 0.0
    seg[0] = 0.0
    return seg


def distance_per_day(track: Track, first: date, last: date, tz: ZoneInfo) -> list[Day]:
    """Distance driven on each local day from ``first`` to ``last`` (a segment counts on its end's day)."""
    days = {first + timedelta(days=k): Day(first + timedelta(days=k)) for k in range((last - first).days + 1)}
    seg = counted_segments(track)
    for i, when in enumerate(track.times):
        d = days.get(when.astimezone(tz).date())
        if d is None:
            continue
        d.distance_m += float(seg[i])
        d.reports += 1
        s = track.speed[i]
        if not math.isnan(s) and (d.max_speed_kmh is None or s > d.max_speed_kmh):
            d.max_speed_kmh = float(s)
    return list(days.values())


# Geofences ---------------------------------------------------------------------------------


def parse_zone(geojson: dict[str, Any]) -> tuple[BaseGeometry, tuple[float, float, float, float]]:
    """A GeoJSON Polygon/MultiPolygon (WGS84 lon/lat) as a valid shapely geometry and its
    bounding box (min_lon, min_lat, max_lon, max_lat); GeometryError says what is wrong."""
    kind = geojson.get("type")
    if kind not in ("Polygon", "MultiPolygon"):
        raise GeometryError(f"type must be Polygon or MultiPolygon, not {kind!r}")
    _check_nesting(geojson.get("coordinates"), 2 if kind == "Polygon" else 3, kind)
    try:
        geom = shape(geojson)
    except (ValueError, TypeError, AttributeError, IndexError, shapely.errors.GEOSException) as exc:
        raise GeometryError(f"coordinates are not a {kind}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    if geom.is_empty:
        raise GeometryError("the polygon is empty")
    if shapely.get_num_coordinates(geom) > MAX_ZONE_VERTICES:
        raise GeometryError(f"at most {MAX_ZONE_VERTICES} vertices")
    coords = shapely.get_coordinates(geom)
    if not np.isfinite(coords).all():
        raise GeometryError("coordinates must be finite numbers")
    min_lon, min_lat, max_lon, max_lat = geom.bounds
    if not (-180 <= min_lon <= max_lon <= 180 and -90 <= min_lat <= max_lat <= 90):
        raise GeometryError("coordinates must be [longitude, latitude] in WGS84 degrees")
    if not geom.is_valid:
        raise GeometryError(f"invalid polygon: {shapely.is_valid_reason(geom)}")
    if geom.area <= 0:
        raise GeometryError("the polygon has no area")
    return geom, (min_lon, min_lat, max_lon, max_lat)


def _check_nesting(coordinates: Any, levels: int, kind: str) -> None:
    """Rings of [lon, lat] positions exactly ``levels`` lists deep, checked level by level (no
    recursion: a body nested thousands deep must be a 422, not a RecursionError)."""
    items = [coordinates]
    for _ in range(levels):
        if not all(isinstance(item, list) for item in items):
            raise GeometryError(f"coordinates are not a {kind}: expected nested lists of [longitude, latitude]")
        items = [inner for item in items for inner in item]
    for position in items:
        if not (isinstance(position, list) and 2 <= len(position) <= 3
                and all(isinstance(v, int | float) and not isinstance(v, bool) for v in position)):
            raise GeometryError(f"coordinates are not a {kind}: a position is [longitude, latitude]")


def as_geojson(geom: BaseGeometry) -> dict[str, Any]:
    out: dict[str, Any] = dict(mapping(geom))
    return out


@dataclass
class Zone:
    id: int
    name: str
    kind: str  # allowed | forbidden
    dwell_s: int | None
    geometry: BaseGeometry
    bbox: tuple[float, float, float, float]

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Zone:
        geom = shape(row["geometry"])
        shapely.prepare(geom)
        return cls(row["id"], row["name"], row["kind"], row["dwell_s"], geom,
                   (row["min_lon"], row["min_lat"], row["max_lon"], row["max_lat"]))

    def contains(self, lat: Floats, lon: Floats) -> Bools:
        """Which points are in the zone (its boundary counts as in); the bounding box pre-filters."""
        min_lon, min_lat, max_lon, max_lat = self.bbox
        out = np.zeros(len(lat), dtype=bool)
        near = (lon >= min_lon) & (lon <= max_lon) & (lat >= min_lat) & (lat <= max_lat)
        if near.any():
            out[near] = shapely.intersects_xy(self.geometry, lon[near], lat[near])
        return out


@dataclass
class ZoneEvent:
    zone: Zone
    event: str  # enter | exit | dwell
    index: int
    duration_s: float | None = None  # exit: time inside; dwell: time inside when raised


@dataclass
class ZoneAlert:
    zone: Zone
    kind: str  # forbidden_enter | allowed_exit
    index: int


@dataclass
class Evaluation:
    events: list[ZoneEvent] = field(default_factory=list)
    inside_at_start: list[Zone] = field(default_factory=list)
    alerts: list[ZoneAlert] = field(default_factory=list)


def evaluate_zones(track: Track, zones: Sequence[Zone]) -> Evaluation:
    """Enter / exit / dwell events of ``track`` for each zone, in fix-time order, and the alerts.

    The first fix of the track sets the starting state: a zone it is already in is listed in
    ``inside_at_start`` (no enter event: the entry was before the range). Enter is raised at
    the first fix inside, exit at the first fix outside, dwell at the first fix that has been
    inside for ``dwell_s`` since the enter (or since the start). Alerts: entering a forbidden
    zone; leaving an allowed zone to a point outside every allowed zone (a detour).
    """
    out = Evaluation()
    n = len(track)
    if n == 0 or not zones:
        return out
    inside = {z.id: z.contains(track.lat, track.lon) for z in zones}
    allowed = [z for z in zones if z.kind == "allowed"]
    in_allowed = np.zeros(n, dtype=bool)
    for z in allowed:
        in_allowed |= inside[z.id]
    for z in zones:
        ins = inside[z.id]
        if ins[0]:
            out.inside_at_start.append(z)
        change = np.flatnonzero(ins[1:] != ins[:-1]) + 1
        # Runs of consecutive inside fixes: [run_start, run_end) by index.
        starts = ([0] if ins[0] else []) + [int(i) for i in change if ins[i]]
        for a in starts:
            following = change[change > a]
            b = int(following[0]) if len(following) else n  # first fix outside, or the end
            if a > 0:
                out.events.append(ZoneEvent(z, "enter", a))
                if z.kind == "forbidden":
                    out.alerts.append(ZoneAlert(z, "forbidden_enter", a))
            if z.dwell_s:
                reached = np.flatnonzero(track.t[a:b] - track.t[a] >= z.dwell_s)
                if len(reached):
                    k = a + int(reached[0])
                    out.events.append(ZoneEvent(z, "dwell", k, float(track.t[k] - track.t[a])))
            if b < n:
                out.events.append(ZoneEvent(z, "exit", b, float(track.t[b] - track.t[a])))
                if z.kind == "allowed" and not in_allowed[b]:
                    out.alerts.append(ZoneAlert(z, "allowed_exit", b))
    order = {"exit": 0, "enter": 1, "dwell": 2}  # at one fix: leave one zone, then enter the next
    out.events.sort(key=lambda e: (e.index, order[e.event], e.zone.id))
    out.alerts.sort(key=lambda a: (a.index, a.zone.id))
    return out


def iso(when: datetime) -> str:
    """UTC ISO 8601 with a Z (what every time in the API and the exports looks like)."""
    when = when.astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if when.microsecond else "%Y-%m-%dT%H:%M:%SZ")
