"""Faults a simulated terminal can suffer, and the ``--faults`` specification.

Each fault changes what the terminal does the way the real failure does in the field:

==================  =====================================================================
powered_off         no power at all: connection dropped, no reports, no SMS answers
no_fix              GPS has no fix: reports go on with the last known position, not valid
antenna_fault       GPS antenna cut: the last fix repeats frozen (valid, speed 0) while the
                    ignition is on and the vehicle moves
data_down           data channel (GPRS/APN) down, SMS alive: reports are buffered, SMS answered
sim_suspended       line suspended by the carrier: no data and no SMS (reports buffered)
no_coverage         out of cellular coverage: reports buffered, flushed when back
voltage_24v         a 24 V supply on a vehicle declared 12 V: power ~27.6 V
voltage_0v          main supply cut (0 V), running on its backup battery (battery voltage falls)
clock_skew          the terminal's clock is off (default -4 h: local Caracas time sent as UTC)
duplicates          every frame is sent twice (the server must absorb the copy)
garbage             line noise: random bytes go out before frames
slow_reader         never reads the socket: its ACKs pile up at the server
==================  =====================================================================

Specification (``--faults``), comma-separated items:

* ``FAULT:COUNT`` -- the fault on COUNT vehicles (picked deterministically from the seed,
  vehicles without another fault first);
* ``IDENTIFIER=FAULT[+FAULT...]`` -- on that vehicle;
* either may end in ``@START`` or ``@START-END`` (simulated seconds after the fleet starts)
  to schedule it; ``clock_skew`` takes an optional offset in seconds: ``clock_skew/3600:1``.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

FAULTS: tuple[str, ...] = (
    "powered_off", "no_fix", "antenna_fault", "data_down", "sim_suspended", "no_coverage",
    "voltage_24v", "voltage_0v", "clock_skew", "duplicates", "garbage", "slow_reader",
)
DEFAULT_CLOCK_SKEW_S = -4 * 3600.0
# Faults that keep the terminal off the data network (reports are buffered meanwhile).
OFFLINE = frozenset({"powered_off", "data_down", "sim_suspended", "no_coverage"})


class FaultSpecError(ValueError):
    """A ``--faults`` item that cannot be understood; ``str()`` names it."""


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """One fault for one vehicle (or COUNT vehicles), optionally scheduled in simulated seconds."""

    fault: str
    identifier: str | None = None
    count: int = 0
    start_s: float = 0.0
    end_s: float | None = None
    value: float | None = None


_ITEM = re.compile(r"^(?:(?P<ident>[^=]+)=)?(?P<faults>[a-z0-9_+/.\-]+?)(?::(?P<count>\d+))?"
                   r"(?:@(?P<start>\d+(?:\.\d+)?)(?:-(?P<end>\d+(?:\.\d+)?))?)?$")


def _fault(name: str, item: str) -> tuple[str, float | None]:
    base, _, value = name.partition("/")
    if base not in FAULTS:
        raise FaultSpecError(f"--faults {item!r}: unknown fault {base!r}; known: {', '.join(FAULTS)}")
    if value:
        try:
            return base, float(value)
        except ValueError:
            raise FaultSpecError(f"--faults {item!r}: {value!r} is not a number") from None
    return base, None


def parse_spec(spec: str) -> list[FaultPlan]:
    """``powered_off:2,no_fix:1@60,356307042441013=voltage_24v+clock_skew/-3600`` -> plans."""
    plans: list[FaultPlan] = []
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        m = _ITEM.match(item)
        if m is None:
            raise FaultSpecError(f"--faults {item!r}: expected FAULT:COUNT or IDENTIFIER=FAULT (optionally @START[-END])")
        start = float(m["start"]) if m["start"] else 0.0
        end = float(m["end"]) if m["end"] else None
        if end is not None and end <= start:
            raise FaultSpecError(f"--faults {item!r}: the fault must end after it starts")
        ident = m["ident"]
        if ident is None:
            if m["count"] is None:
                raise FaultSpecError(f"--faults {item!r}: give a vehicle count (FAULT:COUNT) or IDENTIFIER=FAULT")
            if "+" in m["faults"]:
                raise FaultSpecError(f"--faults {item!r}: one fault per FAULT:COUNT item")
            name, value = _fault(m["faults"], item)
            plans.append(FaultPlan(name, count=int(m["count"]), start_s=start, end_s=end, value=value))
        else:
            if m["count"] is not None:
                raise FaultSpecError(f"--faults {item!r}: IDENTIFIER=FAULT takes no count")
            for part in m["faults"].split("+"):
                name, value = _fault(part, item)
                plans.append(FaultPlan(name, identifier=ident.strip(), start_s=start, end_s=end, value=value))
    return plans


def assign(plans: list[FaultPlan], identifiers: list[str], seed: int) -> list[FaultPlan]:
    """Resolves counted plans to identifiers: a seeded shuffle, vehicles with no fault first."""
    known = set(identifiers)
    order = list(identifiers)
    random.Random(f"faults:{seed}").shuffle(order)
    used: set[str] = set()
    resolved: list[FaultPlan] = []
    for plan in plans:
        if plan.identifier is not None:
            if plan.identifier not in known:
                raise FaultSpecError(f"--faults: no vehicle {plan.identifier!r} in this fleet")
            resolved.append(plan)
            used.add(plan.identifier)
    for plan in plans:
        if plan.identifier is not None:
            continue
        if plan.count > len(order):
            raise FaultSpecError(f"--faults: {plan.fault}:{plan.count} but the fleet has {len(order)} vehicles")
        free = [i for i in order if i not in used] + [i for i in order if i in used]
        for ident in free[: plan.count]:
            resolved.append(FaultPlan(plan.fault, identifier=ident, start_s=plan.start_s, end_s=plan.end_s,
                                      value=plan.value))
            used.add(ident)
    return resolved
