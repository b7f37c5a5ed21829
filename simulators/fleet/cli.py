"""``avl simulate``: run a virtual fleet against a server.

    avl simulate --vehicles 100 --protocols teltonika,gt06,gl200,h02,calamp,osmand,json \\
                 --interval 30 --server 127.0.0.1 [--ports gt06=6023,...] [--mqtt mqtt://host:1883] \\
                 [--faults powered_off:2,no_fix:1@60-600,<imei>=voltage_24v] [--duration 600] \\
                 [--time-scale 1] [--control-port 8099] [--provision --database-url URL]

Prints a summary line every ``--summary-every`` seconds on stderr and a final report on
stdout (``--json`` for JSON). Exit status 0, or 2 with a one-line error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import resource
import signal
import sys
import time
from typing import Any

from ingest.protocols import DEFAULT_PORTS
from simulators.fleet.codecs import PROTOCOLS
from simulators.fleet.faults import FaultSpecError
from simulators.fleet.fleet import Fleet, FleetConfig
from simulators.fleet.terminals import Behaviour


class UsageError(Exception):
    pass


def _ports(value: str) -> dict[str, int]:
    value = value.strip()
    if not value:
        return {}
    try:
        if value.startswith("{"):
            raw = json.loads(value)
        else:
            raw = dict(item.split("=", 1) for item in value.split(","))
        ports = {str(k).strip(): int(v) for k, v in raw.items()}
    except (ValueError, AttributeError):
        raise UsageError(f"--ports {value!r}: expected proto=port,... or a JSON object") from None
    unknown = set(ports) - set(DEFAULT_PORTS)
    if unknown:
        raise UsageError(f"--ports: unknown protocol(s) {', '.join(sorted(unknown))}")
    return ports


def _addresses(value: str) -> tuple[str, ...]:
    out: list[str] = []
    for item in filter(None, (v.strip() for v in value.split(","))):
        try:
            if "-" in item:
                first, last = (ipaddress.ip_address(x.strip()) for x in item.split("-", 1))
                if int(last) < int(first) or int(last) - int(first) > 65535:
                    raise ValueError
                out += [str(ipaddress.ip_address(n)) for n in range(int(first), int(last) + 1)]
            else:
                out.append(str(ipaddress.ip_address(item)))
        except ValueError:
            raise UsageError(f"--bind {item!r}: expected an address or FIRST-LAST range") from None
    return tuple(out)


def _gap(value: str | None) -> tuple[float, float] | None:
    if not value:
        return None
    try:
        every, length = (float(x) for x in value.split(":", 1))
    except ValueError:
        raise UsageError(f"--coverage-gap {value!r}: expected EVERY:LENGTH in seconds") from None
    if not 0 < length < every:
        raise UsageError("--coverage-gap: LENGTH must be positive and shorter than EVERY")
    return every, length


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="avl simulate", description="Run a virtual fleet of AVL terminals against a server.")
    p.add_argument("--vehicles", type=int, default=10, help="number of vehicles (1-100000)")
    p.add_argument("--protocols", default=",".join(PROTOCOLS), help=f"comma-separated, round-robin ({','.join(PROTOCOLS)})")
    p.add_argument("--interval", type=float, default=30.0, help="report interval, simulated seconds")
    p.add_argument("--server", default="127.0.0.1", help="server host")
    p.add_argument("--ports", default="", help="per-protocol port overrides: gt06=6023,... or JSON")
    p.add_argument("--mqtt", default=os.environ.get("AVL_MQTT_URL"), help="MQTT broker URL for json (default mqtt://SERVER:1883)")
    p.add_argument("--faults", default="", help="e.g. powered_off:2,no_fix:1@60-600,<identifier>=voltage_24v")
    p.add_argument("--duration", type=float, default=None, help="real seconds to run (default: until Ctrl-C)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--time-scale", type=float, default=1.0, help="simulated seconds per real second")
    p.add_argument("--ack-timeout", type=float, default=10.0, help="real seconds to wait for an ACK")
    p.add_argument("--backoff", type=float, default=1.0, help="first reconnect delay, real seconds (doubles, max 60)")
    p.add_argument("--coverage-gap", default=None, help="EVERY:LENGTH simulated seconds out of coverage, per vehicle")
    p.add_argument("--bind", default="", help="local source addresses (a,b or FIRST-LAST), spread over vehicles")
    p.add_argument("--control-port", type=int, default=None, help="serve the control API on this port (0: any)")
    p.add_argument("--control-host", default="127.0.0.1")
    p.add_argument("--summary-every", type=float, default=5.0, help="seconds between summary lines (0: none)")
    p.add_argument("--drain", type=float, default=10.0, help="seconds to let terminals flush when stopping")
    p.add_argument("--manifest", action="store_true", help="print the fleet's manifest (JSON lines) and exit")
    p.add_argument("--provision", action="store_true", help="register the fleet's terminals before running")
    p.add_argument("--database-url", default=os.environ.get("AVL_DATABASE_URL"), help="for --provision")
    p.add_argument("--account", default="Simulated Fleet", help="account for --provision")
    p.add_argument("--smsc", default=None, help="HOST:PORT of an SMPP SMSC: the fleet's handsets bind to it and answer SMS")
    p.add_argument("--smsc-account", default="fleet:fleet-secret", help="SYSTEM_ID:PASSWORD of the handset gateway bind")
    p.add_argument("--json", action="store_true", help="final report as JSON")
    return p


def config_from(args: argparse.Namespace) -> FleetConfig:
    if args.interval <= 0 or args.time_scale <= 0 or args.ack_timeout <= 0 or args.backoff <= 0:
        raise UsageError("--interval, --time-scale, --ack-timeout and --backoff must be positive")
    behaviour = Behaviour(ack_timeout_s=args.ack_timeout, backoff_base_s=args.backoff,
                          coverage_gap=_gap(args.coverage_gap), keep_acked=False)
    protocols = tuple(p.strip() for p in args.protocols.split(",") if p.strip())
    return FleetConfig(vehicles=args.vehicles, protocols=protocols, interval_s=args.interval, server=args.server,
                       ports=_ports(args.ports), mqtt_url=args.mqtt, seed=args.seed, time_scale=args.time_scale,
                       faults=args.faults, bind=_addresses(args.bind), behaviour=behaviour)


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed and soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else needed, hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        print(f"avl simulate: warning: open-file limit {soft} is below the {needed} this fleet needs "
              "(raise it with ulimit -n)", file=sys.stderr)


def format_report(report: dict[str, Any], cpu_s: float, max_rss_mb: float) -> str:
    lines = [
        f"vehicles {report['vehicles']}, {report['wall_s']} s real ({report['simulated_s']} s simulated), "
        f"CPU {cpu_s:.1f} s ({100 * cpu_s / max(report['wall_s'], 1e-9):.0f}% of one core), max RSS {max_rss_mb:.0f} MB",
        f"sent {report['sent']}, acknowledged {report['acknowledged']} ({report['acks_per_s']}/s), "
        f"retransmitted {report['retransmitted']}, buffered {report['buffered']}, still unacknowledged in outboxes "
        f"{report['outbox']}, reconnects {report['reconnects']}, connect failures {report['connect_failures']}, "
        f"heartbeats {report['heartbeats']}, dropped {report['dropped']}",
        f"{'protocol':<10} {'sent':>9} {'acked':>9} {'retrans':>8} {'buffered':>8} {'reconn':>7}",
    ]
    for name, s in report["protocols"].items():
        lines.append(f"{name:<10} {s['sent']:>9} {s['acknowledged']:>9} {s['retransmitted']:>8} {s['buffered']:>8} "
                     f"{s['reconnects']:>7}")
    for fault, idents in sorted(report["faults_active"].items()):
        lines.append(f"fault {fault}: {len(idents)} vehicle(s) {', '.join(idents[:5])}{' ...' if len(idents) > 5 else ''}")
    return "\n".join(lines)


async def _run(args: argparse.Namespace, fleet: Fleet) -> dict[str, Any]:
    from simulators.fleet.control import ControlServer

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    control = None
    gateway = None
    await fleet.start(args.duration)
    try:
        if args.smsc:
            from simulators.fleet.sms_gateway import SmsGateway

            host, _, port = args.smsc.rpartition(":")
            system_id, _, password = args.smsc_account.partition(":")
            gateway = SmsGateway(fleet.by_msisdn, host or "127.0.0.1", int(port), system_id=system_id,
                                 password=password)
            bound = await gateway.start()
            print(f"avl simulate: SMS gateway {'bound to' if bound else 'connecting to'} {args.smsc}", file=sys.stderr)
        if args.control_port is not None:
            control = ControlServer(fleet, args.control_host, args.control_port)
            await control.start()
            print(f"avl simulate: control API on http://{args.control_host}:{control.port}/", file=sys.stderr)
        end = loop.time() + args.duration if args.duration else float("inf")
        while not stop.is_set() and loop.time() < end:
            step = min(args.summary_every or 3600.0, end - loop.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(step):
                    await stop.wait()
            if args.summary_every:
                print(fleet.summary_line(), file=sys.stderr, flush=True)
    finally:
        if gateway is not None:
            await gateway.close()
        if control is not None:
            await control.close()
        await fleet.stop(args.drain)
    return fleet.report()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=os.environ.get("AVL_LOG_LEVEL", "WARNING").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        fleet = Fleet(config_from(args))
        if args.manifest:
            for row in fleet.manifest():
                print(json.dumps(row))
            return 0
        if args.provision:
            if not args.database_url:
                raise UsageError("--provision needs --database-url (or AVL_DATABASE_URL)")
            added = fleet.provision(args.database_url, args.account)
            print(f"avl simulate: registered {added} terminal(s) in account {args.account!r}", file=sys.stderr)
        _raise_fd_limit(args.vehicles + 256)
        t0 = time.process_time()
        report = asyncio.run(_run(args, fleet))
        cpu = time.process_time() - t0
    except (UsageError, FaultSpecError, ValueError) as exc:
        print(f"avl simulate: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # one line, as every avl command
        if type(exc).__module__.startswith("psycopg") or type(exc).__name__ == "AdminError":
            print(f"avl simulate: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
            return 2
        raise
    max_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report.update(cpu_s=round(cpu, 1), max_rss_mb=round(max_rss_mb))
    print(json.dumps(report) if args.json else format_report(report, cpu, max_rss_mb))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
