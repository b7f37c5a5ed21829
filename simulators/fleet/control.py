"""The fleet's control API: a tiny HTTP/1.1 JSON server (stdlib asyncio, one request per
connection) to look at the fleet and inject faults while it runs.

    GET  /vehicles                      every vehicle: manifest, active faults, link, outbox, stats
    GET  /vehicles/<identifier>         one vehicle
    GET  /stats                         fleet-wide and per-protocol counters
    POST /vehicles/<identifier>/faults  {"fault": "powered_off", "on": true, "value": null}
    POST /vehicles/<identifier>/sms     {"text": "getgps"} -> {"reply": "..." | null}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any
from urllib.parse import unquote

from simulators.fleet.faults import FAULTS
from simulators.fleet.fleet import Fleet

log = logging.getLogger("avl.simulate.control")

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 413: "Payload Too Large"}


class ControlServer:
    def __init__(self, fleet: Fleet, host: str = "127.0.0.1", port: int = 0) -> None:
        self.fleet = fleet
        self.host = host
        self.port = port
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = (lines[0].split(" ") + ["", ""])[:3]
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip() or 0)
                if length > 65536:
                    status, body = 413, {"error": "request body too large"}
                else:
                    raw = await reader.readexactly(length) if length else b""
                    status, body = self.route(method, path.split("?", 1)[0], raw)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            status, body = 400, {"error": "malformed request"}
        data = json.dumps(body, default=str).encode()
        writer.write(f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    def route(self, method: str, path: str, raw: bytes) -> tuple[int, Any]:
        parts = [unquote(p) for p in path.strip("/").split("/") if p]
        fleet = self.fleet
        if parts == ["stats"] and method == "GET":
            return 200, {**fleet.stats(), "summary": fleet.summary_line()}
        if parts == ["vehicles"] and method == "GET":
            return 200, [t.snapshot() for t in fleet.terminals.values()] if fleet.terminals else fleet.manifest()
        if len(parts) >= 2 and parts[0] == "vehicles":
            terminal = fleet.terminals.get(parts[1])
            if terminal is None:
                return 404, {"error": f"no vehicle {parts[1]!r} in this fleet"}
            if len(parts) == 2 and method == "GET":
                return 200, terminal.snapshot()
            if len(parts) == 3 and parts[2] in ("faults", "sms"):
                if method != "POST":
                    return 405, {"error": "use POST"}
                try:
                    request = json.loads(raw or b"{}")
                except ValueError:
                    return 400, {"error": "body is not JSON"}
                if not isinstance(request, dict):
                    return 400, {"error": "body must be a JSON object"}
                if parts[2] == "sms":
                    return 200, {"reply": terminal.on_sms(str(request.get("text", "")))}
                fault = request.get("fault")
                if fault not in FAULTS:
                    return 400, {"error": f"unknown fault {fault!r}; known: {', '.join(FAULTS)}"}
                value = request.get("value")
                if value is not None and not isinstance(value, int | float):
                    return 400, {"error": "value must be a number"}
                terminal.set_fault(fault, bool(request.get("on", True)), value)
                log.info("vehicle %s: %s %s", terminal.identifier, fault, "on" if request.get("on", True) else "off")
                return 200, terminal.snapshot()
        return 404, {"error": f"no route {method} {path}"}
