"""The ``avl`` command. Services are imported lazily so each subcommand loads only what it runs."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import json
import logging
import re
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator
from datetime import date
from decimal import Decimal
from typing import Annotated, Any

import typer

from avl.config import ConfigError, Settings, load_settings

log = logging.getLogger("avl")

app = typer.Typer(help="AVL telemetry ingestion and fault-diagnosis server.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
account_app = typer.Typer(help="Corporate accounts: add, suspend, reconnect, retire; pre-paid top-ups and the ledger; the history of their state.", no_args_is_help=True)
device_app = typer.Typer(help="Terminals: register, list, and set their decoder options.", no_args_is_help=True)
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
    if settings.log_level != "DEBUG":  # smpplib's connection chatter ("unbind_resp" unhandled at every stop)
        logging.getLogger("smpp").setLevel(logging.ERROR)
    return settings


@contextlib.contextmanager
def _db(settings: Settings) -> Iterator[Any]:
    """A connection (one transaction, committed on success) on a migrated database."""
    from avl.db import connect
    from avl.runtime import adopt_running, prepare

    settings, source = adopt_running(settings)
    rt = prepare(settings, database_source=source)
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
    from avl.runtime import adopt_running, prepare

    settings, source = adopt_running(_settings())
    rt = prepare(settings, migrate_schema=False, database_source=source)
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
                       extra: list[Callable[[], Coroutine[Any, Any, None]]] | None = None,
                       on_started: Callable[[], Coroutine[Any, Any, None]] | None = None) -> None:
    """Runs the chosen services until SIGINT/SIGTERM or until one of them fails.

    Started in order (ingest listening, diagnostics, the API, then ``extra``), so a port in use
    fails before anything announces itself; ``on_started`` runs once all are up. Stopped in the
    reverse order: ``extra`` first (a virtual fleet), then the API, then the services."""
    import uvicorn

    from avl.runtime import check_port_free, wait_listening

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:  # we handle signals ourselves
            yield

    server = None
    if "api" in components:
        from api.app import create_app, uvicorn_options

        check_port_free(settings.api_host, settings.api_port, "AVL_API_PORT")
        read_url = settings.database_read_url.get_secret_value() if settings.database_read_url else None
        config = uvicorn.Config(create_app(database_url, read_url=read_url, settings=settings), host=settings.api_host,
                                port=settings.api_port, log_level="warning", lifespan="on", **uvicorn_options(settings))
        server = _Server(config)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # also when started with SIGINT ignored (a background job)
        loop.add_signal_handler(sig, stop.set)
    services: list[asyncio.Task[None]] = []
    extras: list[asyncio.Task[None]] = []
    api_task: asyncio.Task[None] | None = None
    stopper = asyncio.create_task(stop.wait())

    def failed() -> bool:
        return stop.is_set() or any(t.done() for t in services)

    try:
        if "ingest" in components:
            # `avl ingest` alone may use several processes (each listening itself: `ready` says when all
            # do); `avl serve` runs it in this one.
            processes = settings.ingest_processes if components == ["ingest"] else 1
            ready = asyncio.Event()
            services.append(asyncio.create_task(importlib.import_module("ingest.service").run(
                settings, database_url, mqtt_url, processes=processes, ready=ready)))
            if processes == 1:
                await wait_listening(settings, services[-1])
            else:
                await asyncio.wait([services[-1], asyncio.create_task(ready.wait())],
                                   return_when=asyncio.FIRST_COMPLETED)
        if "diagnostics" in components and not failed():
            services.append(asyncio.create_task(importlib.import_module("diagnostics.service").run(
                settings, database_url, mqtt_url)))
        if server is not None and not failed():
            api_task = asyncio.create_task(server.serve())
            while not server.started:  # uvicorn has no event for it
                done, _ = await asyncio.wait([api_task, stopper, *services], timeout=0.05,
                                             return_when=asyncio.FIRST_COMPLETED)
                if done:
                    break
        if not (failed() or (api_task is not None and api_task.done())):
            extras = [asyncio.create_task(factory()) for factory in extra or []]
            where = f"; API and web console on http://{settings.api_host}:{settings.api_port}" if server else ""
            log.info("running: %s%s", ", ".join(components), where)
            if on_started is not None:
                await on_started()
            await asyncio.wait([*services, *extras, *([api_task] if api_task else []), stopper],
                               return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in extras:
            t.cancel()
        results = await asyncio.gather(*extras, return_exceptions=True)
        if server is not None:
            server.should_exit = True  # uvicorn drains its connections and returns
        if api_task is not None:
            results += await asyncio.gather(api_task, return_exceptions=True)
        for t in services:
            t.cancel()
        results += await asyncio.gather(*services, return_exceptions=True)
        stopper.cancel()
    for r in results:
        if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
            raise r


def _serve(components: list[str]) -> None:
    from avl.runtime import prepare

    settings = _settings()
    rt = prepare(settings, broker="ingest" in components)
    try:
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
    from avl import demo as demo_mod

    demo_mod.run(_settings(), available_components())


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
    from avl.runtime import adopt_running, prepare
    from diagnostics.cli import diagnose_now

    settings, source = adopt_running(_settings())
    rt = prepare(settings, database_source=source)
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


@contextlib.contextmanager
def _billing() -> Iterator[tuple[Any, Settings]]:
    """A connection for an ``avl.billing`` operation; its refusals are one line in AVL_LANGUAGE."""
    from avl.admin import AdminError
    from avl.billing import BillingError

    settings = _settings()
    try:
        with _db(settings) as conn:
            yield conn, settings
    except BillingError as exc:
        raise AdminError(exc.message(settings.language)) from None


def _actor() -> str:
    import getpass

    return f"cli {getpass.getuser()}"


def _account_change(done: dict[str, Any]) -> None:
    _print({**done["account"], "change": done["change"]})


@account_app.command("suspend")
def account_suspend(
    account: str,
    cause: Annotated[str, typer.Option(help="non_payment (a payment reconnects it) or administrative")] = "non_payment",
    reason: Annotated[str | None, typer.Option(help="why, in words (default: the cause)")] = None,
) -> None:
    """Suspend an account and its lines: no live data, no locate-now, until reconnected."""
    from avl import billing

    if cause not in ("non_payment", "administrative"):
        raise ConfigError(f"--cause: non_payment or administrative, not {cause!r}")
    with _billing() as (conn, _):
        _account_change(billing.run(conn, billing.suspend(account, cause=cause, reason=reason,  # type: ignore[arg-type]
                                                          actor=_actor(), via="cli")))


@account_app.command("reconnect")
def account_reconnect(account: str, reason: Annotated[str | None, typer.Option()] = None) -> None:
    """Reconnect a suspended account (payment received), and the lines its suspension suspended."""
    from avl import billing

    with _billing() as (conn, _):
        _account_change(billing.run(conn, billing.reconnect(account, reason=reason, actor=_actor(), via="cli")))


@account_app.command("retire")
def account_retire(
    account: str,
    kind: Annotated[str, typer.Option(help="voluntary, non_payment or by_payment")],
    letter: Annotated[str | None, typer.Option(help="voluntary: the signed request letter's reference")] = None,
    force_reason: Annotated[str | None, typer.Option(
        help="voluntary before the minimum permanence (AVL_MIN_PERMANENCE_MONTHS): why it is retired anyway")] = None,
    reason: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Retire an account: web access blocked (tokens and sessions revoked), every line suspended,
    queued SMS and locate-now requests cancelled, open tickets closed; the data is kept."""
    from avl import billing

    if kind not in billing.RETIREMENT_KINDS:
        raise ConfigError(f"--kind: voluntary, non_payment or by_payment, not {kind!r}")
    with _billing() as (conn, settings):
        _account_change(billing.run(conn, billing.retire(
            account, kind, actor=_actor(), via="cli", reason=reason, letter=letter,  # type: ignore[arg-type]
            force_reason=force_reason, permanence_months=settings.min_permanence_months, lang=settings.language)))


def _amount(value: str) -> Decimal:
    try:
        amount = Decimal(value)
        if amount.is_finite() and amount == amount.quantize(Decimal("0.01")):
            return amount
    except ArithmeticError:
        pass
    raise ConfigError(f"AMOUNT: {value!r} is not an amount with at most two decimals (e.g. 50 or 50.00)")


@account_app.command("topup")
def account_topup(
    account: str,
    amount: Annotated[str, typer.Argument(help="amount to add, e.g. 50.00")],
    reference: Annotated[str | None, typer.Option(help="the payment's reference: the same one again is not added twice")]
    = None,
    reason: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Top up a pre-paid balance (reconnects an account suspended because its balance ran out)."""
    from avl import billing

    with _billing() as (conn, _):
        _print(billing.run(conn, billing.topup(account, _amount(amount), reference=reference, reason=reason,
                                               actor=_actor(), via="cli")))


@account_app.command("adjust")
def account_adjust(
    account: str,
    amount: Annotated[str, typer.Option(help="signed amount, e.g. --amount -1.00 to take back a charge")],
    reason: Annotated[str, typer.Option(help="why")],
    reference: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Correct a pre-paid balance, either sign, with a reason."""
    from avl import billing

    with _billing() as (conn, _):
        _print(billing.run(conn, billing.adjust(account, _amount(amount), reason=reason, reference=reference,
                                                actor=_actor(), via="cli")))


@account_app.command("ledger")
def account_ledger(account: str, limit: Annotated[int, typer.Option(min=1)] = 50) -> None:
    """The balance and its movements, newest first (one JSON line each, the account first)."""
    from avl import billing

    with _billing() as (conn, _):
        found = billing.run(conn, billing.summary(billing.run(conn, billing.account(account))["id"]))
        _print(found)
        for row in billing.run(conn, billing.ledger(found["id"], limit=limit)):
            _print(row)


@account_app.command("history")
def account_history(account: str, limit: Annotated[int, typer.Option(min=1)] = 50) -> None:
    """Who or what changed the account's state, why and when, newest first."""
    from avl import billing

    with _billing() as (conn, _):
        found = billing.run(conn, billing.account(account))
        for row in billing.run(conn, billing.status_changes(found["id"], limit=limit)):
            _print(row)


@center_app.command("add")
def center_add(
    name: str,
    lat: Annotated[float, typer.Option(help="latitude (WGS84)")],
    lon: Annotated[float, typer.Option(help="longitude (WGS84)")],
    address: Annotated[str | None, typer.Option()] = None,
    phone: Annotated[str | None, typer.Option()] = None,
    hours: Annotated[str | None, typer.Option(help="opening hours, e.g. 'Lu-Vi 8:00-17:00, Sa 8:00-12:00'")] = None,
) -> None:
    """Add a certified installation center."""
    from avl.admin import add_center

    with _db(_settings()) as conn:
        _print(add_center(conn, name, lat, lon, address=address, phone=phone, hours=hours))


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
    interval: Annotated[int, typer.Option(help="expected report interval while moving, seconds")] = 60,
    parked_interval: Annotated[int | None, typer.Option(
        help="expected report interval parked (ignition off), seconds; default: learned from its reports")] = None,
    sms_password: Annotated[str | None, typer.Option(
        help="the terminal's SMS command password, where its family needs one (default: the factory one)")] = None,
    center: Annotated[str | None, typer.Option(help="installation center id or name")] = None,
    installed: Annotated[str | None, typer.Option(help="installation date YYYY-MM-DD")] = None,
    option: Annotated[list[str] | None, typer.Option(
        help="a decoder option key=value, repeatable, e.g. --option form=UID,EV,D,T,LT,LN (README: Ingest)")] = None,
) -> None:
    """Register a terminal (and its vehicle)."""
    from avl.admin import AdminError, DeviceSpec, add_device, set_device_options

    try:
        installed_at = date.fromisoformat(installed) if installed else None
    except ValueError:
        raise AdminError(f"--installed: {installed!r} is not a date (YYYY-MM-DD)") from None
    options = _decoder_options(option or [], "--option")
    spec = DeviceSpec(identifier=identifier, protocol=protocol, account=account, msisdn=msisdn, plate=plate,
                      supply_voltage_v=voltage, vehicle_kind=kind, model=model, firmware=firmware,
                      report_interval_s=interval, center=center, installed_at=installed_at,
                      parked_interval_s=parked_interval, sms_password=sms_password)
    with _db(_settings()) as conn:
        device = add_device(conn, spec)
        if options:
            device["options"] = set_device_options(conn, identifier, options, protocol=protocol)["options"]
        _print(device)


@device_app.command("set-option")
def device_set_option(
    identifier: Annotated[str, typer.Argument(help="what the terminal sends: IMEI, ESN/MEID or vendor id")],
    options: Annotated[list[str], typer.Argument(
        help="key=value, one or more (README: Ingest lists each protocol's options); key= removes the option",
        show_default=False)],
    protocol: Annotated[str | None, typer.Option(
        help="the device's protocol, when its identifier is registered for several")] = None,
) -> None:
    """Set a terminal's decoder options (layout, time zone, ack...): ingest applies them from its next frame."""
    from avl.admin import set_device_options

    changes = _decoder_options(options, "set-option")
    with _db(_settings()) as conn:
        _print(set_device_options(conn, identifier, changes, protocol=protocol))


def _decoder_options(pairs: list[str], where: str) -> dict[str, Any]:
    """``key=value`` pairs as decoder options: ``true``/``false`` are yes/no, anything else is text (as
    the unit's own configuration spells it); an empty value (``key=``) is None, which removes the option."""
    from avl.admin import AdminError

    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", key) is None:
            raise AdminError(f"{where}: {pair!r} is not key=value (a key is letters, digits and _)")
        value = value.strip()
        options[key] = None if not value else {"true": True, "false": False}.get(value.lower(), value)
    return options


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
