"""Bringing up what a service stands on: the database (configured or embedded), the
broker (configured or embedded), the schema, and the retention policies."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from avl.config import ConfigError, Settings, redact_url
from avl.db import connect, policies
from avl.db.migrate import migrate
from avl.embedded import LocalBroker, LocalPostgres

log = logging.getLogger("avl")


@dataclass
class Runtime:
    settings: Settings
    database_url: str
    mqtt_url: str | None = None
    postgres: LocalPostgres | None = None
    broker: LocalBroker | None = None
    started: list[str] = field(default_factory=list)

    def close(self) -> None:
        """Stops what this runtime started (embedded broker and cluster), newest first."""
        if self.broker is not None:
            self.broker.stop()
            log.info("embedded MQTT broker stopped")
        if self.postgres is not None and self.postgres.started_here:
            self.postgres.stop()
            log.info("embedded PostgreSQL stopped")


def database_url(settings: Settings) -> tuple[str, LocalPostgres | None]:
    if settings.database_url is not None:
        return settings.database_url.get_secret_value(), None
    pg = LocalPostgres(settings.data_dir, settings.embedded_db_port)
    url = pg.start()
    log.info("embedded PostgreSQL at %s (data in %s)", url, pg.pgdata)
    return url, pg


def prepare(settings: Settings, *, broker: bool = False, migrate_schema: bool = True) -> Runtime:
    """Database up, schema migrated, policies applied; broker up when asked for."""
    url, pg = database_url(settings)
    rt = Runtime(settings=settings, database_url=url, postgres=pg)
    try:
        with connect(url) as conn:
            if migrate_schema:
                for name in migrate(conn):
                    log.info("migrated: %s", name)
                policies.apply(conn, retention_days=settings.retention_days,
                               compress_after_days=settings.compress_after_days,
                               partitions_ahead_days=settings.partitions_ahead_days)
        if broker:
            if settings.mqtt_url:
                rt.mqtt_url = settings.mqtt_url
            else:
                rt.broker = LocalBroker(settings.data_dir, settings.embedded_mqtt_port)
                rt.mqtt_url = rt.broker.start()
                log.info("embedded MQTT broker (%s) at %s", rt.broker.kind, rt.mqtt_url)
    except BaseException:
        rt.close()
        raise
    log.info("database: %s", redact_url(url))
    return rt


def check_port_free(host: str, port: int, setting: str) -> None:
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"{setting}: cannot listen on {host}:{port} ({exc.strerror})") from None
