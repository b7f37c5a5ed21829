"""Vehicle motion: delivery rounds between waypoints inside a city, evaluated lazily.

A vehicle's day is a sequence of phases generated on demand from its own seeded random
generator: park at the depot (ignition off), then a round of legs to delivery points and
back. A leg is an L-shaped street path (corners where the vehicle slows down and, at some,
waits at a light); each straight piece has a trapezoidal speed profile (accelerate,
cruise, brake). At a delivery point the vehicle stops a few minutes, with the engine off
about half the time.

``Motion.at(t)`` returns the true state at simulated time ``t`` (non-decreasing across
calls); ``Gnss`` turns it into what a receiver reports: noisy coordinates, satellites, HDOP,
a heading that follows the path. Both are cheap: no per-report allocation beyond the fix.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

EARTH_M = 6_371_000.0
M_PER_DEG_LAT = math.pi * EARTH_M / 180.0


@dataclass(frozen=True, slots=True)
class City:
    """A rectangle where routes are drawn; the default is the Caracas valley."""

    name: str = "Caracas"
    south: float = 10.455
    north: float = 10.515
    west: float = -66.990
    east: float = -66.800
    altitude_m: float = 900.0

    def random_point(self, rng: random.Random) -> tuple[float, float]:
        return rng.uniform(self.south, self.north), rng.uniform(self.west, self.east)


CARACAS = City()


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Equirectangular distance: accurate to well under 0.1% inside a city."""
    dy = (lat2 - lat1) * M_PER_DEG_LAT
    dx = (lon2 - lon1) * M_PER_DEG_LAT * math.cos(math.radians((lat1 + lat2) / 2))
    return math.hypot(dx, dy)


def bearing_deg(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    dy = (lat2 - lat1) * M_PER_DEG_LAT
    dx = (lon2 - lon1) * M_PER_DEG_LAT * math.cos(math.radians((lat1 + lat2) / 2))
    return math.degrees(math.atan2(dx, dy)) % 360.0


@dataclass(slots=True)
class State:
    """The true state of a vehicle at one instant."""

    latitude: float
    longitude: float
    speed_kmh: float
    course: float
    ignition: bool
    moving: bool
    odometer_m: float
    phase: str  # drive | light | delivery | parked


@dataclass(slots=True)
class _Phase:
    """One stretch of a vehicle's day. Drives go straight from (lat0, lon0) to (lat1, lon1)
    with a speed profile v0 -> accelerate -> cruise -> brake -> v1 (m/s, 1.2 m/s2)."""

    kind: str  # drive | light | delivery | parked
    start: float
    duration: float
    lat0: float
    lon0: float
    lat1: float = 0.0
    lon1: float = 0.0
    length_m: float = 0.0
    v0: float = 0.0
    vp: float = 0.0
    v1: float = 0.0
    t1: float = 0.0  # end of acceleration
    t2: float = 0.0  # end of cruise
    ignition: bool = True
    course: float = 0.0

    @property
    def end(self) -> float:
        return self.start + self.duration


ACCEL = 1.2  # m/s2, a delivery van in town


def _profile(length: float, v0: float, v1: float, cruise: float) -> tuple[float, float, float, float, float]:
    """(v1, peak, t1, t2, duration) of a straight run: v0 -> peak -> v1 over ``length``."""
    a = ACCEL
    v1 = min(v1, math.sqrt(v0 * v0 + 2 * a * length))
    cruise = max(cruise, v0, v1)
    d_up = (cruise * cruise - v0 * v0) / (2 * a)
    d_down = (cruise * cruise - v1 * v1) / (2 * a)
    if d_up + d_down > length:
        peak = math.sqrt((2 * a * length + v0 * v0 + v1 * v1) / 2)
        peak = max(peak, v0, v1)
        d_up = (peak * peak - v0 * v0) / (2 * a)
        d_down = (peak * peak - v1 * v1) / (2 * a)
        cruise_len = max(0.0, length - d_up - d_down)
    else:
        peak, cruise_len = cruise, length - d_up - d_down
    t1 = (peak - v0) / a
    t2 = t1 + (cruise_len / peak if peak > 0 else 0.0)
    return v1, peak, t1, t2, t2 + (peak - v1) / a


@dataclass
class Motion:
    """A vehicle's movement over simulated time (epoch seconds) from its own seed.

    Planned lazily, one straight piece of street at a time, so a vehicle holds only a
    handful of phases however long it runs (100,000 vehicles fit in memory)."""

    rng: random.Random
    city: City = CARACAS
    start: float = 0.0
    deliveries: tuple[int, int] = (3, 8)
    depot: tuple[float, float] = (0.0, 0.0)
    odometer_m: float = 0.0
    _phases: deque[_Phase] = field(default_factory=deque)
    _agenda: deque[tuple[Any, ...]] = field(default_factory=deque)
    _course: float = 0.0
    _t: float = 0.0  # where planning stands: time, place and speed at the end of the last phase
    _lat: float = 0.0
    _lon: float = 0.0
    _v: float = 0.0

    def __post_init__(self) -> None:
        if self.depot == (0.0, 0.0):
            self.depot = self.city.random_point(self.rng)
        self._course = self.rng.uniform(0, 360)
        self._t = self.start
        # Vehicles start at different points of their day: some parked, most on a round.
        self.starts_parked = self.rng.random() < 0.2
        if self.starts_parked:
            self._agenda.append(("park", self.rng.uniform(60, 1800)))
            self._lat, self._lon = self.depot
        else:
            # Start somewhere in town, on the way to the first delivery.
            self._lat, self._lon = self.city.random_point(self.rng)

    # Planning ---------------------------------------------------------------------

    def _plan_round(self) -> None:
        """Deliveries at random points, back to the depot, park there (ignition off)."""
        for _ in range(self.rng.randint(*self.deliveries)):
            self._agenda.append(("leg", *self.city.random_point(self.rng)))
            self._agenda.append(("delivery", self.rng.uniform(120, 900), self.rng.random() < 0.5))
        self._agenda.append(("leg", *self.depot))
        self._agenda.append(("park", self.rng.uniform(1800, 5400)))

    def _refill(self) -> None:
        rng = self.rng
        while not self._phases:
            if not self._agenda:
                self._plan_round()
            item = self._agenda.popleft()
            kind = item[0]
            if kind == "leg":
                # An L-shaped street path with a jog: along one axis, across, then along again.
                lat, lon, lat2, lon2 = self._lat, self._lon, item[1], item[2]
                if rng.random() < 0.5:
                    mid = lat + (lat2 - lat) * rng.uniform(0.3, 0.7)
                    corners = [(mid, lon), (mid, lon2), (lat2, lon2)]
                else:
                    mid = lon + (lon2 - lon) * rng.uniform(0.3, 0.7)
                    corners = [(lat, mid), (lat2, mid), (lat2, lon2)]
                street = rng.uniform(30, 60) / 3.6
                pieces = [("piece", clat, clon, street, n == 2) for n, (clat, clon) in enumerate(corners)]
                self._agenda.extendleft(reversed(pieces))
            elif kind == "piece":
                self._plan_piece(item[1], item[2], item[3], item[4])
            elif kind == "delivery":
                self._stop("delivery", item[1], item[2])
            else:
                self._stop("parked", item[1], False)

    def _stop(self, kind: str, duration: float, ignition: bool) -> None:
        self._phases.append(_Phase(kind, self._t, duration, self._lat, self._lon, ignition=ignition,
                                   course=self._course))
        self._t += duration
        self._v = 0.0

    def _plan_piece(self, lat2: float, lon2: float, street: float, final: bool) -> None:
        """A straight piece cut in blocks of 150-600 m: per block a cruise speed, and at its end
        a light (stop and wait), a turn (slow down) or just the next block."""
        rng = self.rng
        lat, lon = self._lat, self._lon
        length = distance_m(lat, lon, lat2, lon2)
        if length < 5:
            self._lat, self._lon = lat2, lon2
            return
        course = bearing_deg(lat, lon, lat2, lon2)
        blocks = max(1, round(length / rng.uniform(150, 600)))
        block_len = length / blocks
        v = self._v
        for k in range(blocks):
            f0, f1 = k / blocks, (k + 1) / blocks
            cruise = max(4.0, street * rng.uniform(0.7, 1.2))
            last = k == blocks - 1
            light = False
            if last and final:
                v_end = 0.0  # arrived
            elif rng.random() < 0.2:
                v_end, light = 0.0, True
            elif last:
                v_end = rng.uniform(2.5, 4.5)  # turning the corner
            else:
                v_end = cruise * rng.uniform(0.5, 1.0)
            v_end, peak, t1, t2, duration = _profile(block_len, v, v_end, cruise)
            b_lat, b_lon = lat + (lat2 - lat) * f1, lon + (lon2 - lon) * f1
            self._phases.append(_Phase("drive", self._t, duration, lat + (lat2 - lat) * f0, lon + (lon2 - lon) * f0,
                                       b_lat, b_lon, block_len, v, peak, v_end, t1, t2, course=course))
            self._t += duration
            v = v_end
            if light:
                wait = rng.uniform(10, 75)
                self._phases.append(_Phase("light", self._t, wait, b_lat, b_lon, course=course))
                self._t += wait
        self._course = course
        self._lat, self._lon, self._v = lat2, lon2, v

    # Evaluation -------------------------------------------------------------------

    def at(self, t: float) -> State:
        """The state at ``t``; ``t`` must not go back in time between calls."""
        phases = self._phases
        if not phases:
            self._refill()
        while t >= phases[0].end:
            done = phases.popleft()
            if done.kind == "drive":
                self.odometer_m += done.length_m
            if not phases:
                self._refill()
        phase = phases[0]
        return self._evaluate(phase, max(t, phase.start))

    def _evaluate(self, phase: _Phase, t: float) -> State:
        if phase.kind != "drive":
            return State(phase.lat0, phase.lon0, 0.0, phase.course, phase.ignition, False, self.odometer_m, phase.kind)
        tau = min(t - phase.start, phase.duration)
        a, v0, vp = ACCEL, phase.v0, phase.vp
        if tau <= phase.t1:
            speed, done = v0 + a * tau, v0 * tau + a * tau * tau / 2
        else:
            d1 = (vp * vp - v0 * v0) / (2 * a)
            if tau <= phase.t2:
                speed, done = vp, d1 + vp * (tau - phase.t1)
            else:
                dt = tau - phase.t2
                speed, done = vp - a * dt, d1 + vp * (phase.t2 - phase.t1) + vp * dt - a * dt * dt / 2
        f = min(1.0, max(0.0, done / phase.length_m))
        lat = phase.lat0 + (phase.lat1 - phase.lat0) * f
        lon = phase.lon0 + (phase.lon1 - phase.lon0) * f
        return State(lat, lon, max(0.0, speed) * 3.6, phase.course, True, speed > 0.3, self.odometer_m + done, "drive")


@dataclass
class Gnss:
    """What the receiver reports of a true state: noise, satellites, HDOP."""

    rng: random.Random
    altitude_m: float = 900.0
    satellites: int = 9
    sigma_m: float = 2.5

    def __post_init__(self) -> None:
        self.satellites = self.rng.randint(7, 11)

    def read(self, state: State) -> tuple[float, float, float, float, int, float, float]:
        """(lat, lon, speed km/h, course, satellites, hdop, altitude m) as the receiver reports it."""
        rng = self.rng
        self.satellites = max(4, min(14, self.satellites + rng.choice((-1, 0, 0, 0, 1))))
        sats = self.satellites
        if rng.random() < 0.03:  # urban canyon: a few satellites blocked for this fix
            sats = max(4, sats - rng.randint(2, 4))
        hdop = round(max(0.6, 9.0 / sats + rng.gauss(0, 0.08)), 1)
        sigma = self.sigma_m * hdop
        lat = state.latitude + rng.gauss(0, sigma) / M_PER_DEG_LAT
        lon = state.longitude + rng.gauss(0, sigma) / (M_PER_DEG_LAT * math.cos(math.radians(state.latitude)))
        if state.moving and state.speed_kmh > 2:
            speed = max(0.0, state.speed_kmh + rng.gauss(0, 0.8))
            course = (state.course + rng.gauss(0, 2.0)) % 360
        else:
            speed, course = 0.0, state.course
        altitude = self.altitude_m + 40 * math.sin(state.longitude * 50) + rng.gauss(0, 3 * hdop)
        return round(lat, 6), round(lon, 6), round(speed, 1), round(course, 1), sats, hdop, round(altitude, 1)
