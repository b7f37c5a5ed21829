"""A small world for SMS tests: database, ingest, the SMSC simulator, a virtual fleet whose
handsets are bound to the SMSC, all on real sockets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avl.config import Settings
from ingest.service import IngestService
from simulators.fleet import Fleet, FleetConfig
from simulators.fleet.sms_gateway import SmsGateway
from simulators.smsc.server import Smsc
from tests.ingest.harness import running_ingest, settings_for


@dataclass
class World:
    settings: Settings
    ingest: IngestService
    smsc: Smsc
    smsc_port: int
    fleets: list[Fleet]
    gateway: SmsGateway

    def spec(self, protocol: str, fleet: int = 0) -> Any:
        return next(s for s in self.fleets[fleet].specs if s.protocol == protocol)


@contextlib.asynccontextmanager
async def sms_world(db_url: str, tmp_path: Path, fleets: list[dict[str, Any]], *, validity_s: float = 4.0,
                    **settings: Any) -> AsyncIterator[World]:
    """``fleets``: FleetConfig keyword arguments, one fleet each (use distinct seeds)."""
    smsc = Smsc(default_validity=validity_s, retry_interval=0.5, response_timeout=2.0)
    port = await smsc.start("127.0.0.1", 0)
    config = settings_for(tmp_path, smpp_host="127.0.0.1", smpp_port=port, smpp_system_id="avl",
                          smpp_password="avl-secret", **settings)
    try:
        async with running_ingest(config, db_url) as svc:
            started = []
            for kw in fleets:
                fleet = Fleet(FleetConfig(server="127.0.0.1", ports={n: svc.tcp[n].port if n in svc.tcp else
                                                                      svc.udp[n].port for n in (*svc.tcp, *svc.udp)},
                                          **kw))
                fleet.provision(db_url, account=f"SMS fleet {kw.get('seed', 1)}")
                started.append(fleet)

            def handsets() -> dict[str, Any]:
                return {m: t for f in started for m, t in f.by_msisdn().items()}

            gateway = SmsGateway(handsets, "127.0.0.1", port)
            assert await gateway.start(), "the fleet's handsets could not bind to the SMSC"
            for fleet in started:
                await fleet.start()
            try:
                yield World(config, svc, smsc, port, started, gateway)
            finally:
                await gateway.close()
                for fleet in started:
                    await fleet.stop(drain_s=1.0)
    finally:
        await smsc.stop()


async def wait_for(predicate: Any, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.05)
