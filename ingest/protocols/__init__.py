"""The protocol registry: name -> decoder, with each protocol's default port.

Default ports are the reference open-source server's, so devices configured for it
need no change. Modules are imported on first use.
"""

from __future__ import annotations

import importlib
from functools import cache

from ingest.protocols.base import DecodeError, DecodeResult, FrameError, Protocol, Session

__all__ = ["DecodeError", "DecodeResult", "FrameError", "Protocol", "Session", "NAMES", "ALL_NAMES", "MQTT_ONLY",
           "DEFAULT_PORTS", "get"]

DEFAULT_PORTS: dict[str, int] = {
    "tk103": 5002,
    "gl200": 5004,
    "enfora": 5008,
    "suntech": 5011,
    "h02": 5013,
    "meitrack": 5020,
    "gt06": 5023,
    "teltonika": 5027,
    "osmand": 5055,
    "calamp": 5082,
    "atrack": 5044,
    "cellocator": 5033,
    "ruptela": 5046,
    "galileo": 5034,
    "wialon": 5039,
    "gps103": 5001,
    "t800x": 5094,
    "castel": 5086,
    "jt600": 5014,
    "startek": 5222,
    "xirgo": 5081,
    "jt808": 5015,
}
NAMES: tuple[str, ...] = tuple(sorted(DEFAULT_PORTS))
# Formats with no port of their own: the project's JSON reports, over MQTT only.
MQTT_ONLY: tuple[str, ...] = ("json",)
ALL_NAMES: tuple[str, ...] = NAMES + MQTT_ONLY
_MODULES = {**{name: name for name in NAMES}, "json": "json_report"}


@cache
def get(name: str) -> Protocol:
    """The decoder for ``name``; raises KeyError naming the known protocols."""
    if name not in _MODULES:
        raise KeyError(f"unknown protocol {name!r}; known: {', '.join(ALL_NAMES)}")
    module = importlib.import_module(f"ingest.protocols.{_MODULES[name]}")
    protocol: Protocol = module.PROTOCOL
    return protocol
