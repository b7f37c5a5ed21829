"""Where device bytes come from: the allowlist of source networks a listener admits
(``AVL_INGEST_ALLOW``), a per-source budget, and logging a source once per period, so a
scanner or a flood costs a counter increment, not a log line or a database row each time.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable

from ingest import metrics

log = logging.getLogger("avl.ingest")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Iterable[str]) -> list[Network]:
    """CIDRs (or bare addresses) to networks; ValueError names the first bad one."""
    networks: list[Network] = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{value.strip()!r} is not an IP network (CIDR such as 10.64.0.0/10)") from None
    return networks


def address_of(remote: str) -> str:
    """``host:port`` (as sessions name their peer) to the host."""
    host, colon, _ = remote.rpartition(":")
    return host if colon else remote


class OncePer:
    """True for a key at most once per ``period_s`` (bounded: the oldest keys are forgotten)."""

    def __init__(self, period_s: float = 600.0, max_keys: int = 10_000) -> None:
        self.period_s = period_s
        self.max_keys = max_keys
        self._last: OrderedDict[str, float] = OrderedDict()

    def __call__(self, key: str) -> bool:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.period_s:
            return False
        self._last[key] = now
        self._last.move_to_end(key)
        while len(self._last) > self.max_keys:
            self._last.popitem(last=False)
        return True


class SourceBudget:
    """At most ``per_minute`` takes per source address in each minute (a fixed window per source)."""

    def __init__(self, per_minute: int, max_sources: int = 100_000) -> None:
        self.per_minute = per_minute
        self.max_sources = max_sources
        self._windows: dict[str, tuple[float, int]] = {}

    def take(self, source: str) -> bool:
        now = time.monotonic()
        start, used = self._windows.get(source, (now, 0))
        if now - start >= 60.0:
            start, used = now, 0
        if used >= self.per_minute:
            return False
        if len(self._windows) >= self.max_sources and source not in self._windows:
            # Forget windows that are over; a flood of distinct sources cannot grow this without bound.
            self._windows = {k: v for k, v in self._windows.items() if now - v[0] < 60.0}
            if len(self._windows) >= self.max_sources:
                return False
        self._windows[source] = (start, used + 1)
        return True


class SourceGate:
    """One listener's allowlist: admits a source address or counts, logs (once per address per
    period) and refuses it. No networks: everyone is admitted."""

    def __init__(self, protocol: str, transport: str, networks: Iterable[str] = ()) -> None:
        self.protocol = protocol
        self.transport = transport
        self.networks = parse_networks(networks)
        self._verdicts: OrderedDict[str, bool] = OrderedDict()
        self._logged = OncePer()

    def admits(self, address: str) -> bool:
        if not self.networks:
            return True
        allowed = self._verdicts.get(address)
        if allowed is None:
            allowed = self._verdicts[address] = self._allowed(address)
            if len(self._verdicts) > 10_000:
                self._verdicts.popitem(last=False)
        if allowed:
            return True
        metrics.REFUSED_SOURCES.labels(self.protocol, self.transport).inc()
        if self._logged(address):
            log.warning("%s %s: source %s is not in the allowed networks (AVL_INGEST_ALLOW); refused"
                        " (logged once per %.0f s per address)", self.protocol, self.transport, address,
                        self._logged.period_s)
        return False

    def _allowed(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # a dual-stack socket shows IPv4 peers as ::ffff:a.b.c.d
        return any(ip in network for network in self.networks)
