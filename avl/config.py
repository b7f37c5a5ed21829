"""One typed settings object for every service: environment variables ``AVL_*`` first,
then an optional TOML file (``AVL_CONFIG``), then the defaults below.

Every field's description is the documentation: the README's configuration table is
generated from it and a test checks the two agree.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import tomllib
from collections.abc import Iterable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from avl.phone import is_country
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
        description="Directory for the embedded database cluster, the embedded broker and the ingest spool "
        "(a relative path is taken from the directory `avl` starts in).",
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
        "(`$share/<group>/avl/in/#`); empty: a plain persistent subscription (the first ingest process alone)."
    )
    # API -------------------------------------------------------------------------------
    api_host: str = Field("127.0.0.1", description="Address the HTTP API and web console listen on.")
    api_port: int = Field(8080, ge=1, le=65535, description="Port of the HTTP API and web console.")
    console_tile_url: str | None = Field(
        None, description="Raster tile URL for the web console's map (`https://tiles.example/{z}/{x}/{y}.png`); "
        "unset: the light vector basemap shipped with the app (no public tile server)."
    )
    trusted_proxies: str = Field(
        "", description="Reverse proxies (comma-separated addresses or CIDRs) whose `X-Forwarded-For` and "
        "`X-Forwarded-Proto` the API believes; empty: none, the peer's own address is the client's."
    )
    api_max_body_bytes: int = Field(
        1_048_576, ge=1024, description="Largest request body the API reads; a larger one is refused with 413."
    )
    api_fleet_snapshot: bool = Field(
        True, description="Serve the fleet list (`GET /api/v1/vehicles`) from a per-account snapshot in the API "
        "process, kept current by the database's notifications and checked against it on every request (while the "
        "API's listening connection is down the database builds it); false: the database builds the list on each "
        "request."
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
    ingest_allow: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Source networks allowed to reach the device listeners (TCP, UDP, HTTP), as CIDRs "
        "(comma-separated in the environment), e.g. the carrier's private APN ranges; behind the PROXY protocol the "
        "device's own address is checked. Others are closed (TCP) or not answered (UDP), and counted. Empty: everyone.",
    )
    ingest_allow_by_protocol: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Per-protocol allowlists replacing `AVL_INGEST_ALLOW` for those protocols, e.g. "
        "`{\"osmand\": []}` lets phones report from anywhere (JSON in the environment; `[]`: everyone).",
    )
    jump_max_speed_kmh: float = Field(
        1000.0, ge=0, description="A report that implies a faster move from the device's trusted fixes nearest to it "
        "in fix time is quarantined as `implausible_jump` (still acknowledged, not trusted); 0: no check."
    )
    unknown_per_source_per_minute: int = Field(
        30, ge=1, description="New unregistered-device identifiers recorded per source address per minute; more are "
        "counted and not recorded."
    )
    unknown_retention_days: int = Field(
        3, ge=1, description="Unregistered-device sightings not seen for this long are deleted."
    )
    ingest_processes: int = Field(
        0, ge=0, description="Processes `avl ingest` runs on the shared device ports (`SO_REUSEPORT`), each with its "
        "own writer and spool (`spool.log`, `spool-<n>.log` in `AVL_DATA_DIR/spool`); the first one alone takes the "
        "MQTT input, or, with `AVL_MQTT_GROUP` set, all of them through that shared subscription, each with its own "
        "client id (`-<n>` added after the first). A dead one is restarted. 0: one per CPU the command may use (CPU "
        "affinity and cgroup quota). `avl serve` runs ingest inside its own process."
    )
    duplicate_window_s: float = Field(
        300.0, ge=0, description="A report without a time of its own (an H02 report with an empty time, OsmAnd without "
        "`timestamp`, a command result, a heartbeat) whose frame arrives again from the same device within this long "
        "is a resend: acknowledged and stored once. 0: every arrival is stored."
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
    smpp_default_alphabet: str = Field(
        "gsm0338", pattern="^(gsm0338|latin1)$",
        description="What the SMSC takes `data_coding` 0 to mean: `gsm0338` (the GSM 7-bit default alphabet, sent as "
        "unpacked septets) or `latin1`. Text outside it goes out as UCS-2.",
    )
    smpp_dest_ton: str = Field(
        "international", pattern="^(international|national|unknown)$",
        description="Type of number of SMS destinations (NPI 1, E.164): `international` (TON 1, country code and "
        "number without `+`), `national` (TON 2, the national number with its trunk prefix, for numbers of "
        "`AVL_PHONE_DEFAULT_COUNTRY`) or `unknown` (TON 0, digits as for international). `1`, `2`, `0` also work.",
    )
    phone_default_country: str = Field(
        "VE", description="Country (ISO 3166 code) of phone numbers written without a country code: national input "
        "is read in it, and national-format addresses from the SMSC too.",
    )
    sweep_interval_s: float = Field(300.0, gt=0, description="How often the diagnostics worker sweeps the fleet.")
    silent_after_intervals: float = Field(
        3.0, gt=0, description="A device is silent when its last report is older than this many report intervals."
    )
    storm_share: float = Field(
        0.3, gt=0, le=1, description="Share of active devices silent together that is a platform/network incident."
    )
    storm_min_devices: int = Field(20, ge=1, description="Fewest silent devices that can make an incident.")
    diagnostics_concurrency: int = Field(8, ge=1, description="Checklists run at once by the diagnostics worker.")
    parked_interval_s: float = Field(
        600.0, gt=0, description="Expected report interval of a parked vehicle (ignition off) when the device has "
        "none declared (`avl device add --parked-interval`) and none learned from its own history yet."
    )
    unreachable_after_s: float = Field(
        1800.0, ge=0, description="Shortest silence the checklist judges a terminal fault (`unreachable`, "
        "`data_channel_fault`); a shorter one (a coverage gap?) is `inconclusive` and checked again later."
    )
    sweep_grace_s: float = Field(
        180.0, ge=0, description="After an ingest process (re)starts, the sweep leaves silent devices alone this long "
        "(terminals reconnect with a backoff): a restart is not a storm of silent devices."
    )
    quality_recheck_s: float = Field(
        21600.0, gt=0, description="The sweep also checks devices that report but whose latest report has no usable "
        "fix while driving or a supply voltage off its declaration; each at most once in this period."
    )
    diagnose_sms: str = Field(
        "auto", pattern="^(auto|outbox|bind|off)$",
        description="How `avl diagnose` (another process than the worker) sends its SMS ping: `outbox` (queued for "
        "the diagnostics worker, which holds the SMSC bind), `bind` (its own bind to `AVL_SMPP_HOST`), `off`, or "
        "`auto` (the outbox when a worker with a bound SMSC is alive, else its own bind).",
    )
    # Billing -----------------------------------------------------------------------
    price_locate: Decimal = Field(
        Decimal("1.00"), ge=0, max_digits=12, decimal_places=2,
        description="Price of a client's locate-now request (\"Solicitud de Posición\"), quoted when asked and charged "
        "once, when a position answers it (a pre-paid balance is debited; post-paid: a billable event for the invoice).",
    )
    locate_answer_window_s: float = Field(
        600.0, gt=0, description="A locate-now request is answered by a position arriving after its SMS was delivered "
        "and within this long of the request; unanswered by then it is `expired` and not billed.",
    )
    min_permanence_months: int = Field(
        12, ge=0, description="Minimum permanence from an account's creation: a voluntary retirement before it is "
        "refused unless forced with a reason (`avl account retire --force-reason`).",
    )
    # People ------------------------------------------------------------------------
    language: str = Field(
        "es", pattern="^(es|en)$", description="Language of what customers read without a preference of their own: "
        "SMS notices, ticket instructions, the printable certificate (`es`: Spanish, Venezuela; `en`: English)."
    )
    customer_timezone: str = Field(
        "America/Caracas", description="Time zone (IANA name) of the dates customers read: the deadline to bring a "
        "vehicle in, in SMS notices and ticket instructions."
    )
    # Logging -----------------------------------------------------------------------
    log_level: str = Field("INFO", description="Log level: DEBUG, INFO, WARNING, ERROR.")

    @field_validator("protocols", "ingest_allow", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
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

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        # Once, here: every child process (initdb as 'postgres' from /, the broker) gets absolute paths.
        return Path(os.path.abspath(value.expanduser()))

    @field_validator("ingest_allow")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return _cidrs(value)

    @field_validator("ingest_allow_by_protocol")
    @classmethod
    def _networks_by_protocol(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for name in value:
            if name not in DEFAULT_PORTS:
                raise ValueError(f"unknown protocol {name!r}")
        return {name: _cidrs(networks) for name, networks in value.items()}

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return value.upper()

    @field_validator("smpp_dest_ton", mode="before")
    @classmethod
    def _ton_by_number(cls, value: Any) -> Any:
        return {"0": "unknown", "1": "international", "2": "national"}.get(str(value).strip(), value)

    @field_validator("customer_timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value.strip())
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (an IANA name, e.g. America/Caracas)") from None
        return value.strip()

    @field_validator("phone_default_country")
    @classmethod
    def _country(cls, value: str) -> str:
        if not is_country(value.strip()):
            raise ValueError(f"unknown country code {value!r} (ISO 3166, e.g. VE)")
        return value.strip().upper()

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


def _cidrs(values: list[str]) -> list[str]:
    """Validated, normalised networks (a bare address is its /32 or /128)."""
    out = []
    for value in values:
        try:
            out.append(str(ipaddress.ip_network(value.strip(), strict=False)))
        except ValueError:
            raise ValueError(f"{value.strip()!r} is not an IP network (a CIDR such as 10.64.0.0/10)") from None
    return out


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
            for key in self._values:
                if key not in settings_cls.model_fields:  # named as written in the file, not as AVL_*
                    raise ConfigError(f"{path}: {_unknown(key, settings_cls.model_fields)}")

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in self._values.items()}


# AVL_* environment variables that are not settings: the settings file's name, and knobs of the
# tests, benchmarks and deployment scripts, which commands they start inherit.
NOT_SETTINGS = frozenset({"AVL_CONFIG", "AVL_TEST_DATABASE_URL", "AVL_PG_BINDIR", "AVL_CHROMIUM", "AVL_VECTORS",
                          "AVL_SCHEMATHESIS_SEED", "AVL_DOMAIN", "AVL_IMAGE"})
NOT_SETTINGS_PREFIXES = ("AVL_TEST_", "AVL_SOAK_", "AVL_FUZZ_", "AVL_BENCH_")


def _unknown(name: str, known: Iterable[str]) -> str:
    """``NAME: unknown setting; did you mean CLOSEST?`` (the suggestion when one is close)."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    return f"{name}: unknown setting" + (f"; did you mean {close[0]}?" if close else " (see the README's settings)")


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """A ConfigError for the first ``AVL_*`` environment variable that is not a setting (a typo
    would otherwise be ignored silently and the default used)."""
    env = os.environ if environ is None else environ
    known = [f"AVL_{name.upper()}" for name in Settings.model_fields]
    for key in sorted(env):
        name = key.upper()
        if not name.startswith("AVL_") or name in known or name in NOT_SETTINGS or name.startswith(NOT_SETTINGS_PREFIXES):
            continue
        raise ConfigError(_unknown(name, known))


def _named(field: str, overrides: dict[str, Any]) -> str:
    """Where a bad value came from: its environment variable, else its key in the settings file."""
    env_name = f"AVL_{field.upper()}"
    config = os.environ.get("AVL_CONFIG")
    if field in overrides or not config or any(key.upper() == env_name for key in os.environ):
        return env_name
    return f"{config}: {field}"


def load_settings(**overrides: Any) -> Settings:
    """The settings, or a ConfigError whose message names the first bad setting."""
    check_environment()
    try:
        return Settings(**overrides)
    except SettingsError as exc:
        # pydantic-settings: 'error parsing value for field "ports" from source "EnvSettingsSource"'
        field = str(exc).split('"')[1] if '"' in str(exc) else "?"
        raise ConfigError(f"AVL_{field.upper()}: not valid JSON") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ".".join(str(p) for p in err["loc"]) or "?"
        setting = _named(name.split(".")[0], overrides)
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
