"""Bringing up what a service stands on: the database (configured or embedded), the
broker (configured or embedded), the schema, and the retention policies; and the
runtime file through which a running demo tells other `avl` commands where it is."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

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
    database_source: str = ""

    def close(self) -> None:
        """Stops what this runtime started (embedded broker and cluster), newest first."""
        if self.broker is not None:
            self.broker.stop()
            log.info("embedded MQTT broker stopped")
        if self.postgres is not None and self.postgres.started_here:
            self.postgres.stop()
            log.info("embedded PostgreSQL stopped")


def prepare(settings: Settings, *, broker: bool = False, migrate_schema: bool = True,
            database_source: str | None = None) -> Runtime:
    """Database up, schema migrated, policies applied; broker up when asked for.
    ``database_source`` says where the database URL came from, for the log line naming it.
    Whatever it started is stopped again if it fails or is interrupted (Ctrl-C) half way."""
    rt = Runtime(settings=settings, database_url="")
    try:
        if settings.database_url is not None:
            rt.database_url = settings.database_url.get_secret_value()
            source = database_source or "AVL_DATABASE_URL"
        else:
            rt.postgres = LocalPostgres(settings.data_dir, settings.embedded_db_port)
            rt.database_url = rt.postgres.start()
            log.info("embedded PostgreSQL at %s (data in %s)", rt.database_url, rt.postgres.pgdata)
            source = database_source or f"embedded cluster in {rt.postgres.pgdata}"
        rt.database_source = source
        url = rt.database_url
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
    log.info("database: %s (%s)", redact_url(url), source)
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


def listening_ports() -> set[int] | None:
    """TCP ports this process listens on (Linux: its socket descriptors matched in /proc/net/tcp
    and tcp6), or None where /proc cannot tell."""
    try:
        mine: set[str] = set()
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):  # e.g. the descriptor listdir itself used
                mine.add(os.readlink(f"/proc/self/fd/{fd}"))
        ports: set[int] = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table, encoding="ascii") as f:
                for line in f.readlines()[1:]:
                    fields = line.split()
                    if fields[3] == "0A" and f"socket:[{fields[9]}]" in mine:  # 0A: LISTEN
                        ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        return ports
    except (OSError, IndexError, ValueError):
        return None


async def wait_listening(settings: Settings, task: asyncio.Task[None], timeout_s: float = 60.0) -> None:
    """Returns once the ingest service in this process listens on its TCP ports, or its task has
    ended (a port in use), so nothing announces itself before ingest is really up. It looks,
    without connecting: a probe would be a connection from an address ingest may refuse."""
    from ingest.protocols import get

    wanted = {settings.port_for(name) for name in settings.protocols
              if settings.port_for(name) and {"tcp", "http"} & set(get(name).transports)}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not task.done() and loop.time() < deadline:
        bound = await asyncio.to_thread(listening_ports)  # off the loop: 50-170 ms with ~20k sockets
        if bound is None or wanted <= bound:
            return
        await asyncio.wait([task], timeout=0.05)


# The runtime file ------------------------------------------------------------------

RUNTIME_FILE = "runtime.json"


def runtime_path(settings: Settings) -> Path:
    return settings.data_dir / RUNTIME_FILE


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def write_runtime(settings: Settings, info: dict[str, Any]) -> Path:
    """Writes what other `avl` commands need to reach this process's services (the database,
    the broker, the SMSC) into the data directory, readable by its owner only (SMPP password)."""
    path = runtime_path(settings)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"pid": os.getpid(), **info}, f, indent=2)
    os.replace(tmp, path)
    return path


def remove_runtime(settings: Settings) -> None:
    path = runtime_path(settings)
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text(encoding="utf-8")).get("pid") == os.getpid():
            path.unlink()


def read_runtime(settings: Settings) -> dict[str, Any] | None:
    """The runtime file of a process still running, else None (a stale file is ignored)."""
    try:
        info = json.loads(runtime_path(settings).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not isinstance(info.get("pid"), int) or not _alive(info["pid"]):
        return None
    return info


def adopt_running(settings: Settings) -> tuple[Settings, str | None]:
    """For commands run beside a demo: with AVL_DATABASE_URL unset and a demo running on this
    data directory, its database, broker and SMSC (for what is not set explicitly). Returns the
    settings to use and, when adopted, where the database came from."""
    if settings.database_url is not None:
        return settings, None
    info = read_runtime(settings)
    if info is None or not isinstance(info.get("database_url"), str):
        return settings, None
    update: dict[str, Any] = {"database_url": SecretStr(info["database_url"])}
    if settings.mqtt_url is None and info.get("mqtt_url"):
        update["mqtt_url"] = info["mqtt_url"]
    smpp = info.get("smpp")
    if settings.smpp_host is None and isinstance(smpp, dict):
        update.update(smpp_host=smpp["host"], smpp_port=smpp["port"], smpp_system_id=smpp["system_id"],
                      smpp_password=SecretStr(smpp["password"]))
    source = f"{info.get('command', 'avl')}'s, pid {info['pid']}, from {runtime_path(settings)}"
    return settings.model_copy(update=update), source
