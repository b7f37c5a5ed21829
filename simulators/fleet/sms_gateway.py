"""The fleet's handsets on the SMS network: one SMPP transceiver bind to the SMSC whose
``address_range`` is the fleet's MSISDNs, so every SMS to a terminal reaches it here.

Each deliver_sm goes to the terminal with that MSISDN, and our deliver_sm_resp is what
the network learns of the handset, which the SMSC turns into the delivery receipt:
- SIM suspended: a permanent error (the SMSC reports UNDELIV);
- powered off or out of coverage: a temporary error (the SMSC retries until it expires);
- otherwise delivered; the terminal's answer, if any, goes back as an SMS from its own
  number to the sender (a submit_sm from the handset side), and a position or status
  request also makes a terminal with a working data channel send a report right away.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import struct
from collections.abc import Callable

from avl import gsm7
from simulators.smsc.pdu import Bind, CommandId, Pdu, PduError, ShortMessage, Status, decode

log = logging.getLogger("simulators.fleet.sms")

DEFAULT_RANGE = r"^58414\d{7}$"


class SmsGateway:
    def __init__(self, terminals: Callable[[], dict[str, object]], host: str, port: int, *,
                 system_id: str = "fleet", password: str = "fleet-secret", address_range: str = DEFAULT_RANGE,
                 reconnect_s: float = 1.0) -> None:
        """``terminals()`` returns the current terminals by MSISDN (objects with ``on_sms(text)``,
        ``faults`` and optionally ``report_now()``)."""
        self.terminals = terminals
        self.host, self.port = host, port
        self.system_id, self.password, self.address_range = system_id, password, address_range
        self.reconnect_s = reconnect_s
        self.bound = asyncio.Event()
        self.received = 0
        self.answered = 0
        self._seq = itertools.count(1)
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, wait_s: float = 5.0) -> bool:
        self._task = asyncio.create_task(self._run(), name="fleet-sms-gateway")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.bound.wait(), wait_s)
        return self.bound.is_set()

    async def close(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._send(Pdu(CommandId.UNBIND, next(self._seq)))
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _send(self, pdu: Pdu) -> None:
        assert self._writer is not None
        self._writer.write(pdu.encode())

    async def _run(self) -> None:
        while True:
            try:
                reader, self._writer = await asyncio.open_connection(self.host, self.port)
                self._send(Pdu(CommandId.BIND_TRANSCEIVER, next(self._seq),
                               body=Bind(self.system_id, self.password, address_range=self.address_range)))
                while True:
                    header = await reader.readexactly(4)
                    (length,) = struct.unpack(">I", header)
                    if not 16 <= length <= 70_000:
                        raise ConnectionError(f"bad PDU length {length}")
                    pdu = decode(header + await reader.readexactly(length - 4))
                    await self._handle(pdu)
            except (OSError, asyncio.IncompleteReadError, ConnectionError, PduError) as exc:
                log.info("SMS gateway link to %s:%s down (%s); reconnecting", self.host, self.port, exc)
            finally:
                self.bound.clear()
                if self._writer is not None:
                    self._writer.close()
                    self._writer = None
            await asyncio.sleep(self.reconnect_s)

    async def _handle(self, pdu: Pdu) -> None:
        if pdu.command_id == CommandId.BIND_TRANSCEIVER_RESP:
            if pdu.status != Status.ESME_ROK:
                raise ConnectionError(f"bind refused: status {pdu.status:#x}")
            self.bound.set()
            log.info("SMS gateway bound to %s:%s for %s", self.host, self.port, self.address_range)
        elif pdu.command_id == CommandId.ENQUIRE_LINK:
            self._send(pdu.response())
        elif pdu.command_id == CommandId.DELIVER_SM and isinstance(pdu.body, ShortMessage):
            self.received += 1
            self._deliver(pdu, pdu.body)
        elif pdu.command_id == CommandId.UNBIND:
            self._send(pdu.response())
            raise ConnectionError("unbound by the SMSC")

    def _deliver(self, pdu: Pdu, sm: ShortMessage) -> None:
        terminal = self.terminals().get(sm.destination_addr.lstrip("+"))
        faults: set[str] = set(getattr(terminal, "faults", ()) or ())
        if terminal is None or "sim_suspended" in faults:
            self._send(pdu.response(Status.ESME_RX_P_APPN))  # no such subscriber / barred SIM
            return
        if faults & {"powered_off", "no_coverage"}:
            self._send(pdu.response(Status.ESME_RX_T_APPN))  # absent subscriber: the SMSC retries
            return
        self._send(pdu.response())
        text = _text(sm)
        answer = terminal.on_sms(text)  # type: ignore[attr-defined]
        if answer:
            self.answered += 1
            # Handsets speak the network's default alphabet (GSM 03.38), else UCS-2.
            if gsm7.representable(answer):
                body, coding = gsm7.encode(answer)[:160], 0
            else:
                body, coding = answer.encode("utf-16-be")[:140], 8
            reply = ShortMessage(source_addr=sm.destination_addr, dest_addr_ton=sm.source_addr_ton,
                                 destination_addr=sm.source_addr, short_message=body, data_coding=coding)
            self._send(Pdu(CommandId.SUBMIT_SM, next(self._seq), body=reply))
        report_now = getattr(terminal, "report_now", None)
        offline = getattr(terminal, "offline", lambda: False)
        if report_now is not None and not offline():
            report_now()


def _text(sm: ShortMessage) -> str:
    """What the handset reads: UCS-2 (8), Latin-1 (3), or the GSM default alphabet (0) as
    unpacked septets (octets above 0x7F cannot be septets: read as Latin-1)."""
    if sm.data_coding == 8:
        return sm.payload.decode("utf-16-be", errors="replace")
    if sm.data_coding == 0 and all(b < 0x80 for b in sm.payload):
        return gsm7.decode(sm.payload)
    return sm.payload.decode("latin-1")
