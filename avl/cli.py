"""The ``avl`` command. Services are imported lazily so each subcommand loads only what it runs."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import json
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator
from datetime import date
from typing import Annotated, Any

import typer

from avl.config import ConfigError, Settings, load_settings

log = logging.getLogger("avl")

app = typer.Typer(help="AVL telemetry ingestion and fault-diagnosis server.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
account_app = typer.Typer(help="Corporate accounts: add, suspend (non-payment), reconnect, retire.", no_args_is_help=True)
device_app = typer.Typer(help="Terminals: register and list.", no_args_is_help=True)
center_app = typer.Typer(help="Installation centers.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens.", no_args_is_help=True)
app.add_typer(account_app, name="account")
app.add_typer(device_app, name="device")
app.add_typer(center_app, name="center")
app.add_typer(token_app, name="token")


def _settings() -> Settings:
    settings = load_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    return settings


@contextlib.contextmanager
def _db(settings: Settings) -> Iterator[Any]:
    """A connection (one transaction, committed on success) on a migrated database."""
    from avl.db import connect
    from avl.runtime import prepare

    rt = prepare(settings)
    try:
        with connect(rt.database_url) as conn:
            yield conn
    finally:
        rt.close()


def _print(row: Any) -> None:
    typer.echo(json.dumps(row, default=str, ensure_ascii=False))


# Services ------------------------------------------------------------------------


@app.command()
def migrate() -> None:
    """Apply pending schema migrations (safe to run again: a no-op when up to date)."""
    from avl.db import connect
    from avl.db.migrate import migrate as run
    from avl.db.migrate import storage_mode
    from avl.runtime import prepare

    settings = _settings()
    rt = prepare(settings, migrate_schema=False)
    try:
        with connect(rt.database_url) as conn:
            applied = run(conn)
            mode = storage_mode(conn)
        typer.echo(f"applied: {', '.join(applied)}" if applied else "schema up to date")
        typer.echo(f"positions storage: {mode}")
    finally:
        rt.close()


def available_components() -> list[str]:
    """The services this build has (later issues add ingest and diagnostics)."""
    found = ["api"]
    for name, module in (("ingest", "ingest.service"), ("diagnostics", "diagnostics.service")):
        if importlib.util.find_spec(module) is not None:
            found.append(name)
    return found


async def run_services(settings: Settings, database_url: str, mqtt_url: str | None, components: list[str],
                       extra: list[Callable[[], Coroutine[Any, Any, None]]] | None = None) -> None:
    """Runs the chosen services until SIGINT/SIGTERM or until one of them fails."""
    import uvicorn

    from avl.runtime import check_port_free

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:  # we handle signals ourselves
            yield

    coros: list[Coroutine[Any, Any, None]] = []
    server = None
    if "api" in components:
        from api.app import create_app

        check_port_free(settings.api_host, settings.api_port, "AVL_API_PORT")
        read_url = settings.database_read_url.get_secret_value() if settings.database_read_url else None
        config = uvicorn.Config(create_app(database_url, read_url=read_url), host=settings.api_host, port=settings.api_port,
                                log_level="warning", lifespan="on")
        server = _Server(config)
        coros.append(server.serve())
    if "ingest" in components:
        coros.append(importlib.import_module("ingest.service").run(settings, database_url, mqtt_url))
    if "diagnostics" in components:
        coros.append(importlib.import_module("diagnostics.service").run(settings, database_url, mqtt_url))
    for factory in extra or []:
        coros.append(factory())

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(c) for c in coros]
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
    if server is not None:
        server.should_exit = True  # uvicorn drains its connections and returns
    for t in tasks[1 if server is not None else 0:]:
        t.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    stopper.cancel()
    for r in results:
        if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
            raise r


def _serve(components: list[str]) -> None:
    from avl.runtime import prepare

    settings = _settings()
    rt = prepare(settings, broker="ingest" in components)
    try:
        log.info("serving %s; API on http://%s:%s", ", ".join(components), settings.api_host, settings.api_port)
        asyncio.run(run_services(settings, rt.database_url, rt.mqtt_url, components))
    finally:
        rt.close()


@app.command()
def serve() -> None:
    """Run ingest, diagnostics and the API together."""
    _serve(available_components())


@app.command("api")
def api_cmd() -> None:
    """Run the HTTP API (and web console) only."""
    _serve(["api"])


@app.command()
def ingest() -> None:
    """Run the device listeners and the writer only."""
    if "ingest" not in available_components():
        raise ConfigError("ingest: this build has no ingest service yet")
    _serve(["ingest"])


@app.command()
def diagnostics() -> None:
    """Run the diagnostics worker only."""
    if "diagnostics" not in available_components():
        raise ConfigError("diagnostics: this build has no diagnostics worker yet")
    _serve(["diagnostics"])


@app.command()
def demo() -> None:
    """The whole system on the embedded default: database, broker, SMSC, a demo fleet account
    whose vehicles are a virtual fleet on the real protocols, and the server."""
    from pydantic import SecretStr

    from avl import demo as demo_mod
    from avl.db import connect
    from avl.runtime import check_port_free, prepare

    settings = _settings()
    components = available_components()
    if settings.smpp_host is None:  # the demo brings its own SMSC
        check_port_free("127.0.0.1", settings.smpp_port, "AVL_SMPP_PORT")
        settings = settings.model_copy(update={"smpp_host": "127.0.0.1", "smpp_system_id": "avl",
                                               "smpp_password": SecretStr("avl-secret")})
    rt = prepare(settings, broker=True)
    try:
        with connect(rt.database_url) as conn:
            info = demo_mod.provision(conn, rt.database_url, settings, rt.mqtt_url)
        base = f"http://{settings.api_host}:{settings.api_port}"
        lines = [
            "",
            "AVL demo is running (Ctrl-C stops everything it started).",
            f"  web console:  {base}/console/login",
            f"  API:          {base}/api/v1   (OpenAPI docs: {base}/api/docs)",
            f"  health:       {base}/health",
            f"  database:     {rt.database_url}",
            f"  MQTT broker:  {rt.mqtt_url}",
            f"  SMSC (SMPP):  127.0.0.1:{settings.smpp_port}",
            f"  services:     {', '.join(components)}, virtual fleet ({demo_mod.VEHICLES} vehicles), SMSC",
            f"  demo account: {info['account']} with {info['devices']} devices",
            f"  console logins (password {info['password']}): "
            + ", ".join(f"{role} {email}" for role, email in info["logins"].items()),
            "  tokens (use as 'Authorization: Bearer <token>'):",
        ]
        lines += [f"    {role:<10} {token}" for role, token in info["tokens"].items()]
        lines += [f"  try: curl -H 'Authorization: Bearer {info['tokens']['client']}' {base}/api/v1/vehicles", ""]
        typer.echo("\n".join(lines))
        asyncio.run(run_services(settings, rt.database_url, rt.mqtt_url, components,
                                 demo_mod.extras(settings, rt.mqtt_url, settings.smpp_port)))
    finally:
        rt.close()
        typer.echo("demo stopped")


@app.command()
def decode(
    protocol: Annotated[str, typer.Option(help="protocol name, e.g. gt06, teltonika, gl200")],
    assume_device: Annotated[str | None, typer.Option(help="device id for sessions whose frames carry none")] = None,
) -> None:
    """Decode frames from stdin (JSON lines: kind, payload, optional session) to JSON lines on stdout."""
    from ingest.decode_cli import decode_lines
    from ingest.protocols import get

    try:
        decoder = get(protocol)
    except KeyError as exc:
        raise ConfigError(f"--protocol: {exc.args[0]}") from None
    for out in decode_lines(decoder, sys.stdin, assume_device):
        sys.stdout.write(out + "\n")
        sys.stdout.flush()


@app.command()
def diagnose(
    device: Annotated[str, typer.Argument(help="device id, identifier (IMEI/ESN) or MSISDN")],
    wait: Annotated[float | None, typer.Option(help="seconds to wait for the SMS ping (default AVL_SMS_WAIT_S)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the steps with all their evidence as JSON")] = False,
) -> None:
    """Run the fault checklist on one device now; print the steps, evidence and verdict."""
    from avl.runtime import prepare
    from diagnostics.cli import diagnose_now

    settings = _settings()
    rt = prepare(settings)
    try:
        report_text, evidence = asyncio.run(diagnose_now(settings, rt.database_url, settings.mqtt_url, device, wait))
    finally:
        rt.close()
    typer.echo(json.dumps(evidence, default=str, ensure_ascii=False, indent=2) if as_json else report_text)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def smsc(ctx: typer.Context) -> None:
    """Run the SMPP 3.4 SMSC simulator (options: --host --port --account ID:PW --barred PREFIX --throttle N ...)."""
    from simulators.smsc import main as smsc_main

    raise typer.Exit(smsc_main(list(ctx.args)))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def simulate(ctx: typer.Context) -> None:
    """Run a virtual fleet against a server (--vehicles N --protocols ... --interval S --server HOST [--faults SPEC]
    [--duration S] [--provision] ...; `python -m simulators.fleet --help` lists every option)."""
    from simulators.fleet.cli import main as simulate_main

    raise typer.Exit(simulate_main(list(ctx.args)))


# Administration ------------------------------------------------------------------


@account_app.command("add")
def account_add(
    name: str,
    billing: Annotated[str, typer.Option(help="post_paid or pre_paid")] = "post_paid",
    balance: Annotated[float, typer.Option(help="pre-paid balance")] = 0.0,
    plan: Annotated[str, typer.Option(help="plan code")] = "PLOCVEHC",
    contact: Annotated[str | None, typer.Option(help="contact person")] = None,
    contact_msisdn: Annotated[str | None, typer.Option(help="contact mobile number (SMS notices)")] = None,
    contact_email: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Add a corporate account."""
    from avl.admin import add_account

    with _db(_settings()) as conn:
        _print(add_account(conn, name, billing=billing, balance=balance, plan_code=plan, contact_name=contact,
                           contact_msisdn=contact_msisdn, contact_email=contact_email))


def _status(action: str, account: str, reason: str | None) -> None:
    from avl.admin import set_account_status

    with _db(_settings()) as conn:
        _print(set_account_status(conn, account, action, reason))


@account_app.command("suspend")
def account_suspend(account: str, reason: Annotated[str, typer.Option()] = "non-payment") -> None:
    """Suspend an account (non-payment): no live data until reconnected."""
    _status("suspend", account, reason)


@account_app.command("reconnect")
def account_reconnect(account: str) -> None:
    """Reconnect a suspended account (payment received)."""
    _status("reconnect", account, None)


@account_app.command("retire")
def account_retire(account: str, reason: Annotated[str, typer.Option()] = "service retired") -> None:
    """Retire an account: web access blocked, every terminal's line suspended."""
    _status("retire", account, reason)


@center_app.command("add")
def center_add(
    name: str,
    lat: Annotated[float, typer.Option(help="latitude (WGS84)")],
    lon: Annotated[float, typer.Option(help="longitude (WGS84)")],
    address: Annotated[str | None, typer.Option()] = None,
    phone: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Add a certified installation center."""
    from avl.admin import add_center

    with _db(_settings()) as conn:
        _print(add_center(conn, name, lat, lon, address=address, phone=phone))


@device_app.command("add")
def device_add(
    identifier: Annotated[str, typer.Argument(help="what the terminal sends: IMEI, ESN/MEID or vendor id")],
    protocol: Annotated[str, typer.Option(help="protocol name, e.g. teltonika, gt06, calamp")],
    account: Annotated[str | None, typer.Option(help="account id or name")] = None,
    msisdn: Annotated[str | None, typer.Option(help="SIM phone number")] = None,
    plate: Annotated[str | None, typer.Option(help="vehicle plate (creates the vehicle)")] = None,
    voltage: Annotated[int, typer.Option(help="declared supply voltage, 12 or 24")] = 12,
    kind: Annotated[str, typer.Option(help="vehicle kind: car, van, truck, bus, motorcycle, other")] = "car",
    model: Annotated[str | None, typer.Option()] = None,
    firmware: Annotated[str | None, typer.Option()] = None,
    interval: Annotated[int, typer.Option(help="expected report interval, seconds")] = 60,
    center: Annotated[str | None, typer.Option(help="installation center id or name")] = None,
    installed: Annotated[str | None, typer.Option(help="installation date YYYY-MM-DD")] = None,
) -> None:
    """Register a terminal (and its vehicle)."""
    from avl.admin import AdminError, DeviceSpec, add_device

    try:
        installed_at = date.fromisoformat(installed) if installed else None
    except ValueError:
        raise AdminError(f"--installed: {installed!r} is not a date (YYYY-MM-DD)") from None
    spec = DeviceSpec(identifier=identifier, protocol=protocol, account=account, msisdn=msisdn, plate=plate,
                      supply_voltage_v=voltage, vehicle_kind=kind, model=model, firmware=firmware,
                      report_interval_s=interval, center=center, installed_at=installed_at)
    with _db(_settings()) as conn:
        _print(add_device(conn, spec))


@device_app.command("list")
def device_list(account: Annotated[str | None, typer.Option(help="only this account")] = None) -> None:
    """List terminals with their account, vehicle and last report."""
    from avl.admin import list_devices

    with _db(_settings()) as conn:
        for row in list_devices(conn, account):
            _print(row)


@token_app.command("create")
def token_create(
    role: Annotated[str, typer.Option(help="client, support, installer or admin")],
    name: Annotated[str, typer.Option(help="user name")] = "api",
    email: Annotated[str | None, typer.Option()] = None,
    account: Annotated[str | None, typer.Option(help="account (client role)")] = None,
    center: Annotated[str | None, typer.Option(help="installation center (installer role)")] = None,
) -> None:
    """Create an API token (shown once; only its hash is stored)."""
    from avl.admin import create_token

    with _db(_settings()) as conn:
        user, token = create_token(conn, role, name=name, email=email, account=account, center=center)
    typer.echo(token)
    typer.echo(f"user {user['id']} ({user['email']}, role {user['role']})", err=True)


def main() -> None:
    """Entry point: every failure a person can fix is one line on stderr, never a traceback."""
    import psycopg

    from avl.admin import AdminError
    from avl.db import first_line
    from diagnostics.context import DiagnoseError

    try:
        app(standalone_mode=True)
    except ConfigError as exc:
        typer.echo(f"avl: error: {exc}", err=True)
        sys.exit(2)
    except (AdminError, DiagnoseError) as exc:
        typer.echo(f"avl: {exc}", err=True)
        sys.exit(1)
    except psycopg.Error as exc:
        typer.echo(f"avl: database error: {first_line(exc)}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
