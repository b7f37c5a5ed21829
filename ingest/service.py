"""The ingest service: listeners for every enabled protocol, MQTT input, the writer, the
spool, metrics, and the upkeep (partitions, expired unknown-device sightings). ``run()`` is
what `avl ingest` runs."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass, field

import psycopg
from psycopg.types.json import Jsonb

from avl.config import ConfigError, Settings
from avl.db import connect, first_line, policies
from avl.observability import serve_metrics
from ingest import metrics
from ingest.intake import Intake
from ingest.pipeline import DeviceDirectory
from ingest.protocols import get
from ingest.spool import Spool
from ingest.transports.mqtt import MqttInput
from ingest.transports.tcp import TcpListener
from ingest.transports.udp import UdpListener
from ingest.writer import Writer

log = logging.getLogger("avl.ingest")


@dataclass
class IngestService:
    settings: Settings
    database_url: str
    mqtt_url: str | None = None
    writer: Writer | None = None
    intake: Intake | None = None
    tcp: dict[str, TcpListener] = field(default_factory=dict)
    udp: dict[str, UdpListener] = field(default_factory=dict)
    mqtt: MqttInput | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        s = self.settings
        spool = Spool(s.data_dir / "spool")
        self.writer = Writer(self.database_url, spool, batch_max_rows=s.batch_max_rows, batch_max_ms=s.batch_max_ms,
                             queue_max_rows=s.queue_max_rows, retention_days=s.retention_days)
        directory = DeviceDirectory(self.database_url)
        try:
            await directory.load()
        except psycopg.Error as exc:
            log.warning("device directory not loaded (%s); devices are looked up as they connect", first_line(exc))
        await self.writer.start()
        self.intake = Intake(self.writer, directory, s.retention_days, max_speed_kmh=s.jump_max_speed_kmh,
                             unknown_per_source_per_minute=s.unknown_per_source_per_minute)
        if self.intake.jumps is not None:
            try:
                await self.intake.jumps.load(self.database_url)
            except psycopg.Error as exc:
                log.warning("latest positions not loaded for the jump check (%s); it starts from the next reports",
                            first_line(exc))
        try:
            for name in s.protocols:
                port = s.port_for(name)
                if port == 0:
                    continue
                protocol = get(name)
                allow = s.ingest_allow_by_protocol.get(name, s.ingest_allow)
                stream = "http" if "http" in protocol.transports else ("tcp" if "tcp" in protocol.transports else None)
                if stream:
                    listener = TcpListener(protocol, self.intake, s.ingest_host, port, transport=stream,
                                           idle_timeout_s=s.idle_timeout_s, max_frame=s.max_frame_bytes,
                                           max_per_source=s.max_connections_per_source,
                                           proxy_protocol=s.proxy_protocol, allow=allow)
                    await listener.start()
                    self.tcp[name] = listener
                if s.udp and "udp" in protocol.transports:
                    udp = UdpListener(protocol, self.intake, s.ingest_host, port, max_frame=s.max_frame_bytes,
                                      allow=allow)
                    await udp.start()
                    self.udp[name] = udp
        except OSError as exc:
            await self.close()
            raise ConfigError(f"AVL_PORTS: cannot listen for {name} on {s.ingest_host}:{port} ({exc.strerror})") from None
        if self.mqtt_url:
            self.mqtt = MqttInput(self.mqtt_url, self.intake, group=s.mqtt_group, client_id=s.mqtt_client_id)
            self._tasks.append(asyncio.create_task(self.mqtt.run(), name="avl-mqtt"))
        self._tasks.append(asyncio.create_task(directory.refresh_forever(), name="avl-directory"))
        self._tasks.append(asyncio.create_task(self._upkeep(), name="avl-upkeep"))
        self._tasks.append(asyncio.create_task(self._heartbeat(), name="avl-heartbeat"))
        listening = [f"{n} {'/'.join(x for x, d in (('tcp', self.tcp), ('udp', self.udp)) if n in d)}"
                     f" :{(self.tcp.get(n) or self.udp[n]).port}" for n in sorted(set(self.tcp) | set(self.udp))]
        log.info("ingest listening: %s%s", ", ".join(listening), f"; MQTT {self.mqtt.subscription}" if self.mqtt else "")

    async def _upkeep(self) -> None:
        """Expired unknown-device sightings at start, then hourly with partitions ahead and
        retention (TimescaleDB runs its own jobs for those)."""
        while True:
            try:
                await asyncio.to_thread(self._expire_sightings)
            except (psycopg.Error, ConfigError) as exc:
                log.warning("unknown-device sightings not expired: %s", first_line(exc))
            await asyncio.sleep(3600)
            try:
                await asyncio.to_thread(self._apply_policies)
            except (psycopg.Error, ConfigError) as exc:
                log.warning("partition upkeep failed: %s", exc)

    def _expire_sightings(self) -> None:
        with connect(self.database_url) as conn:
            cur = conn.execute("DELETE FROM unknown_devices WHERE last_seen < now() - make_interval(days => %s)",
                               (self.settings.unknown_retention_days,))
            conn.commit()
        if cur.rowcount > 0:
            metrics.UNKNOWN_EXPIRED.inc(cur.rowcount)
            log.info("unknown devices: %s sightings older than %s days deleted", cur.rowcount,
                     self.settings.unknown_retention_days)

    async def _heartbeat(self, every_s: float = 5.0) -> None:
        """Tells the platform-health check this process is alive, and how far behind it is."""
        instance = f"{socket.gethostname()}:{os.getpid()}"
        while True:
            assert self.writer is not None
            details = {
                "queue_rows": self.writer.queued_rows,
                "queue_max_rows": self.settings.queue_max_rows,
                "spool_bytes": self.writer.spool.pending_bytes,
                "database_up": self.writer.database_up,
                "connections": sum(sum(t.per_source.values()) for t in self.tcp.values()),
                "mqtt_connected": bool(self.mqtt and self.mqtt.connected.is_set()),
                "rows_written": self.writer.stats.rows,
            }
            try:
                async with await psycopg.AsyncConnection.connect(self.database_url, autocommit=True,
                                                                 connect_timeout=3) as conn:
                    await conn.execute(
                        "INSERT INTO platform_status (component, instance, details) VALUES ('ingest', %s, %s)"
                        " ON CONFLICT (component, instance) DO UPDATE SET updated_at = now(), details = EXCLUDED.details",
                        (instance, Jsonb(details)))
            except psycopg.Error as exc:
                log.debug("heartbeat not written: %s", first_line(exc))
            await asyncio.sleep(every_s)

    def _apply_policies(self) -> None:
        s = self.settings
        with connect(self.database_url) as conn:
            policies.apply(conn, retention_days=s.retention_days, compress_after_days=s.compress_after_days,
                           partitions_ahead_days=s.partitions_ahead_days)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        listeners: list[TcpListener | UdpListener] = [*self.tcp.values(), *self.udp.values()]
        for listener in listeners:
            await listener.close()
        if self.writer is not None:
            await self.writer.close()
            self.writer.spool.close()


async def run(settings: Settings, database_url: str, mqtt_url: str | None) -> None:
    """Runs until cancelled; then stops listening, drains the writer, and returns."""
    serve_metrics(settings)
    service = IngestService(settings, database_url, mqtt_url)
    await service.start()
    try:
        await asyncio.Event().wait()
    finally:
        await service.close()
