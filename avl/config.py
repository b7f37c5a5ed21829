"""One typed settings object for every service: environment variables ``AVL_*`` first,
then an optional TOML file (``AVL_CONFIG``), then the defaults below.

Every field's description is the documentation: the README's configuration table is
generated from it and a test checks the two agree.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from ingest.protocols import DEFAULT_PORTS


class ConfigError(Exception):
    """Bad configuration: ``str()`` is one line naming the setting."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AVL_", extra="forbid", validate_default=True)

    # Storage -------------------------------------------------------------------------
    database_url: SecretStr | None = Field(
        None,
        description="PostgreSQL/TimescaleDB URL (`postgresql://user:pass@host:5432/db`). "
        "Unset: `avl` starts and owns a local cluster under `data_dir`.",
    )
    database_read_url: SecretStr | None = Field(
        None, description="A read replica for the API's history, trips, distance and exports "
        "(unset: the primary). Live data, logins and writes always use the primary."
    )
    data_dir: Path = Field(
        Path("var"),
        description="Directory for the embedded database cluster, the embedded broker and the ingest spool.",
    )
    embedded_db_port: int = Field(54329, description="TCP port (127.0.0.1) of the embedded PostgreSQL cluster.")
    retention_days: int = Field(
        400, ge=1, description="Positions older than this are dropped (TimescaleDB retention policy or daily partitions)."
    )
    compress_after_days: int = Field(7, ge=1, description="TimescaleDB only: compress position chunks older than this.")
    partitions_ahead_days: int = Field(
        7, ge=1, description="Plain PostgreSQL only: daily position partitions created ahead of today."
    )
    # Broker --------------------------------------------------------------------------
    mqtt_url: str | None = Field(
        None,
        description="MQTT broker (`mqtt://user:pass@host:1883`). Unset: `avl` starts Mosquitto "
        "(or an embedded Python broker when Mosquitto is not installed).",
    )
    embedded_mqtt_port: int = Field(18830, description="TCP port (127.0.0.1) of the embedded MQTT broker.")
    mqtt_group: str = Field(
        "", description="Shared-subscription group when several ingest processes split the MQTT input "
        "(`$share/<group>/avl/in/#`); empty: a plain persistent subscription (one ingest process)."
    )
    # API -------------------------------------------------------------------------------
    api_host: str = Field("127.0.0.1", description="Address the HTTP API and web console listen on.")
    api_port: int = Field(8080, ge=1, le=65535, description="Port of the HTTP API and web console.")
    console_tile_url: str | None = Field(
        None, description="Raster tile URL for the web console's map (`https://tiles.example/{z}/{x}/{y}.png`); "
        "unset: the light vector basemap shipped with the app (no public tile server)."
    )
    # Ingest ----------------------------------------------------------------------------
    ingest_host: str = Field("0.0.0.0", description="Address the device listeners (TCP/UDP/HTTP) bind to.")
    protocols: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: sorted(DEFAULT_PORTS),
        description="Protocols to listen for (comma-separated in the environment).",
    )
    ports: dict[str, int] = Field(
        default_factory=dict,
        description="Per-protocol port overrides, e.g. `{\"gt06\": 6023}` (JSON in the environment). "
        "Port 0 turns that protocol's listeners off.",
    )
    udp: bool = Field(True, description="Also listen on UDP for the protocols that have a datagram form.")
    idle_timeout_s: float = Field(600.0, gt=0, description="Close a device connection silent for this long.")
    max_frame_bytes: int = Field(65536, ge=256, description="Largest frame accepted from a device before it is cut off.")
    max_connections_per_source: int = Field(
        256, ge=1, description="Device connections allowed from one source address at once."
    )
    proxy_protocol: bool = Field(
        False, description="Device TCP/HTTP connections start with a PROXY protocol v1/v2 header (behind HAProxy "
        "`send-proxy-v2`), giving each device's own address."
    )
    batch_max_rows: int = Field(5000, ge=1, description="Largest batch the writer commits at once.")
    batch_max_ms: float = Field(20.0, gt=0, description="Longest a report waits for its batch to fill.")
    queue_max_rows: int = Field(
        50000, ge=1, description="Reports waiting for the writer before listeners stop reading sockets."
    )
    metrics_host: str = Field("127.0.0.1", description="Address the Prometheus metrics endpoint listens on.")
    metrics_port: int = Field(
        9108, ge=0, le=65535, description="Port of this process's Prometheus metrics (ingest and diagnostics); 0: off."
    )
    mqtt_client_id: str | None = Field(
        None, description="MQTT client id of this ingest process (persistent session); unset: `avl-ingest-<hostname>`. "
        "Give each process on a host its own."
    )
    # Diagnostics -------------------------------------------------------------------
    smpp_host: str | None = Field(None, description="SMSC host for SMS pings (unset: SMS pings are disabled).")
    smpp_port: int = Field(2775, description="SMSC port.")
    smpp_system_id: str = Field("avl", description="SMPP system_id for bind_transceiver.")
    smpp_password: SecretStr = Field(SecretStr(""), description="SMPP password (never logged).")
    sms_source_addr: str = Field("2020", description="Sender address (short code) of SMS pings and customer notices.")
    sms_wait_s: float = Field(
        120.0, gt=0, description="How long an SMS ping waits for a receipt, a reply and a fresh report."
    )
    sms_ping_period_s: float = Field(3600.0, ge=0, description="At most one SMS ping per device in this period.")
    sms_rate_per_minute: int = Field(60, ge=1, description="Global limit of SMS sent per minute.")
    sweep_interval_s: float = Field(300.0, gt=0, description="How often the diagnostics worker sweeps the fleet.")
    silent_after_intervals: float = Field(
        3.0, gt=0, description="A device is silent when its last report is older than this many report intervals."
    )
    storm_share: float = Field(
        0.3, gt=0, le=1, description="Share of active devices silent together that is a platform/network incident."
    )
    storm_min_devices: int = Field(20, ge=1, description="Fewest silent devices that can make an incident.")
    diagnostics_concurrency: int = Field(8, ge=1, description="Checklists run at once by the diagnostics worker.")
    # Logging -----------------------------------------------------------------------
    log_level: str = Field("INFO", description="Log level: DEBUG, INFO, WARNING, ERROR.")

    @field_validator("protocols", mode="before")
    @classmethod
    def _split_protocols(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()]
        return value

    @field_validator("protocols")
    @classmethod
    def _known_protocols(cls, value: list[str]) -> list[str]:
        unknown = [p for p in value if p not in DEFAULT_PORTS]
        if unknown:
            raise ValueError(f"unknown protocol(s) {', '.join(unknown)}; known: {', '.join(sorted(DEFAULT_PORTS))}")
        return value

    @field_validator("ports")
    @classmethod
    def _known_ports(cls, value: dict[str, int]) -> dict[str, int]:
        for name, port in value.items():
            if name not in DEFAULT_PORTS:
                raise ValueError(f"unknown protocol {name!r}")
            if not 0 <= port <= 65535:
                raise ValueError(f"{name}: port {port} out of range")
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return value.upper()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlSource(settings_cls))

    def port_for(self, protocol: str) -> int:
        return self.ports.get(protocol, DEFAULT_PORTS[protocol])


class _TomlSource(PydanticBaseSettingsSource):
    """Reads the file named by ``AVL_CONFIG`` (keys as in the table, without the prefix)."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        self._values: dict[str, Any] = {}
        path = os.environ.get("AVL_CONFIG")
        if path:
            try:
                with open(path, "rb") as f:
                    self._values = tomllib.load(f)
            except OSError as exc:
                raise ConfigError(f"AVL_CONFIG: cannot read {path}: {exc.strerror}") from None
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"AVL_CONFIG: {path} is not valid TOML: {exc}") from None

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in self._values.items()}


def load_settings(**overrides: Any) -> Settings:
    """The settings, or a ConfigError whose message names the first bad setting."""
    try:
        return Settings(**overrides)
    except SettingsError as exc:
        # pydantic-settings: 'error parsing value for field "ports" from source "EnvSettingsSource"'
        field = str(exc).split('"')[1] if '"' in str(exc) else "?"
        raise ConfigError(f"AVL_{field.upper()}: not valid JSON") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ".".join(str(p) for p in err["loc"]) or "?"
        setting = f"AVL_{name.split('.')[0].upper()}"
        raise ConfigError(f"{setting}: {err['msg']} (got {err.get('input')!r})") from None


def redact_url(url: str) -> str:
    """A database or broker URL with its password replaced, for messages and logs."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def settings_table() -> str:
    """The README's configuration table, generated from the fields above."""
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for name, info in Settings.model_fields.items():
        default = info.get_default(call_default_factory=True)
        if isinstance(default, SecretStr):
            default = default.get_secret_value() or ""
        if isinstance(default, list):
            default = ",".join(default)
        shown = "unset" if default is None else (f"`{default}`" if default not in ("", {}) else "empty")
        rows.append(f"| `AVL_{name.upper()}` | {shown} | {info.description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(settings_table())
