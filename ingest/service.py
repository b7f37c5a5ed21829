"""The ingest service: listeners for every enabled protocol, MQTT input, the writer, the
spool, metrics, and the upkeep (partitions, expired unknown-device sightings). ``run()`` is
what `avl ingest` runs."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable
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
from ingest.transports.mqtt import MqttInput, subscriber
from ingest.transports.tcp import SourceSlots, TcpListener
from ingest.transports.udp import UdpListener
from ingest.writer import Writer

log = logging.getLogger("avl.ingest")


# The writer thread waits for the interpreter lock after each database round trip while the event
# loop decodes; with the default 5 ms switch interval a 5,000-row batch (dozens of round trips and
# COPY chunks) took 2-3 times as long as alone. At 0.5 ms it takes about as long as alone.
SWITCH_INTERVAL_S = 0.0005


@dataclass
class IngestService:
    """One ingest process. ``spool_name``, ``upkeep``, ``slots`` and ``before_listening`` are what
    the workers of ``ingest.processes`` set: their own spool, the upkeep in one of them, connections
    per source counted together, no listening before every spool is replayed. Each writes its own heartbeat (instance ``host:pid``)."""

    settings: Settings
    database_url: str
    mqtt_url: str | None = None
    spool_name: str = "spool"
    upkeep: bool = True
    slots: SourceSlots | None = None
    # Awaited between the writer's start and the listeners' (ingest.processes: every process's spool first).
    before_listening: Callable[[Writer], Awaitable[None]] | None = None
    process: tuple[int, int] = (0, 1)  # this process (0-based) of how many: see ingest.transports.mqtt.subscriber
    writer: Writer | None = None
    intake: Intake | None = None
    tcp: dict[str, TcpListener] = field(default_factory=dict)
    udp: dict[str, UdpListener] = field(default_factory=dict)
    mqtt: MqttInput | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        s = self.settings
        spool = Spool(s.data_dir / "spool", name=self.spool_name)
        self.writer = Writer(self.database_url, spool, batch_max_rows=s.batch_max_rows, batch_max_ms=s.batch_max_ms,
                             queue_max_rows=s.queue_max_rows, retention_days=s.retention_days,
                             duplicate_window_s=s.duplicate_window_s)
        directory = DeviceDirectory(self.database_url)
        try:
            await directory.load()
        except psycopg.Error as exc:
            log.warning("device directory not loaded (%s); devices are looked up as they connect", first_line(exc))
        await self.writer.start()
        self.intake = Intake(self.writer, directory, s.retention_days, max_speed_kmh=s.jump_max_speed_kmh,
                             unknown_per_source_per_minute=s.unknown_per_source_per_minute,
                             duplicate_window_s=s.duplicate_window_s)
        if self.intake.jumps is not None:
            try:
                await self.intake.jumps.load(self.database_url)
            except psycopg.Error as exc:
                log.warning("latest positions not loaded for the jump check (%s); it starts from the next reports",
                            first_line(exc))
        if self.before_listening is not None:
            await self.before_listening(self.writer)
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
                                           proxy_protocol=s.proxy_protocol, allow=allow, slots=self.slots)
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
            if (sub := subscriber(s.mqtt_group, s.mqtt_client_id, *self.process)) is not None:
                self.mqtt = MqttInput(self.mqtt_url, self.intake, group=sub[0], client_id=sub[1])
                self._tasks.append(asyncio.create_task(self.mqtt.run(), name="avl-mqtt"))
        self._tasks.append(asyncio.create_task(directory.refresh_forever(), name="avl-directory"))
        if self.upkeep:
            self._tasks.append(asyncio.create_task(self._upkeep(), name="avl-upkeep"))
        self._tasks.append(asyncio.create_task(self._heartbeat(), name="avl-heartbeat"))
        listening = [f"{n} {'/'.join(x for x, d in (('tcp', self.tcp), ('udp', self.udp)) if n in d)}"
                     f" :{(self.tcp.get(n) or self.udp[n]).port}" for n in sorted(set(self.tcp) | set(self.udp))]
        log.info("ingest listening: %s%s", ", ".join(listening), f"; MQTT {self.mqtt.subscription}" if self.mqtt else "")

    async def _upkeep(self, every_s: float = 60.0) -> None:
        """Every minute the frames past the resend window (``recent_frames``); at start and then
        hourly expired unknown-device sightings, partitions ahead and retention (TimescaleDB runs
        its own jobs for those two)."""
        minutes = 0
        while True:
            jobs: list[tuple[Callable[[], None], str]] = [(self._expire_frames, "resend window")]
            if minutes % 60 == 0:
                jobs.append((self._expire_sightings, "unknown-device sightings"))
                if minutes:
                    jobs.append((self._apply_policies, "partitions"))
            for job, what in jobs:
                try:
                    await asyncio.to_thread(job)
                except (psycopg.Error, ConfigError) as exc:
                    log.warning("upkeep (%s) failed: %s", what, first_line(exc))
            await asyncio.sleep(every_s)
            minutes += 1

    def _expire_frames(self) -> None:
        with connect(self.database_url) as conn:
            conn.execute("DELETE FROM recent_frames WHERE first_at < now() - make_interval(secs => %s)",
                         (self.settings.duplicate_window_s,))
            conn.commit()

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


async def run(settings: Settings, database_url: str, mqtt_url: str | None, processes: int = 1,
              ready: asyncio.Event | None = None) -> None:
    """Runs until cancelled; then stops listening, drains the writer, and returns.

    ``processes``: 1, in this process (``avl serve``); more, or 0 for one per usable CPU, in that many
    worker processes on the shared ports (``avl ingest``, setting ``AVL_INGEST_PROCESSES``; see
    ``ingest.processes``). ``ready`` is set once every process listens."""
    from ingest.processes import process_count, run_processes

    if (count := process_count(processes)) > 1:
        await run_processes(settings, database_url, mqtt_url, count, ready)
        return
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    serve_metrics(settings)
    service = IngestService(settings, database_url, mqtt_url)
    await service.start()
    if ready is not None:
        ready.set()
    try:
        await asyncio.Event().wait()
    finally:
        await service.close()
