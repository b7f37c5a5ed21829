"""The virtual fleet: vehicles that move like vehicles, with terminals that behave like
terminals, on the real wire protocols, with faults injectable at start or while running.

Python API: ``Fleet``/``FleetConfig`` (``fleet.py``), the control API (``control.py``), the
``avl simulate`` command (``cli.py``: ``main(argv) -> int``; also ``python -m simulators.fleet``).
"""

from simulators.fleet.codecs import PROTOCOLS
from simulators.fleet.faults import FAULTS, FaultPlan, FaultSpecError, parse_spec
from simulators.fleet.fleet import Fleet, FleetConfig, luhn_valid, make_specs
from simulators.fleet.terminals import Behaviour, Stats, Terminal, VehicleSpec

__all__ = ["FAULTS", "PROTOCOLS", "Behaviour", "FaultPlan", "FaultSpecError", "Fleet", "FleetConfig", "Stats",
           "Terminal", "VehicleSpec", "luhn_valid", "make_specs", "parse_spec"]
