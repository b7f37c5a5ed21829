"""The SMPP link to the SMSC (smpplib): one transceiver bind, kept up with enquire_link and
reconnects, used by the SMS ping and the customer notices.

smpplib is blocking, so the link runs its reader in a thread and hands receipts and
mobile-originated messages to the asyncio loop. Every message in and out is recorded in
``sms_messages`` by the caller; the SMSC password is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import smpplib.client
import smpplib.consts
import smpplib.exceptions
import smpplib.gsm
import smpplib.smpp

log = logging.getLogger("avl.diagnostics.smpp")

_RECEIPT = re.compile(r"id:(?P<id>\S+).*?stat:(?P<stat>[A-Z]+)(?:\s+err:(?P<err>\d+))?", re.S)


@dataclass(frozen=True)
class Inbound:
    """A deliver_sm: a delivery receipt (``receipt_for`` set) or a message from a handset."""

    source: str
    destination: str
    text: str
    received_at: datetime
    receipt_for: str | None = None
    receipt_status: str | None = None


class SmppLink:
    def __init__(self, host: str, port: int, system_id: str, password: str, *, source_addr: str = "2020",
                 reconnect_s: float = 2.0) -> None:
        self.host, self.port = host, port
        self.system_id, self._password = system_id, password
        self.source_addr = source_addr
        self.reconnect_s = reconnect_s
        self._client: smpplib.client.Client | None = None
        self._bound = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listeners: list[Callable[[Inbound], None]] = []
        self._sent: dict[int, asyncio.Future[str]] = {}
        self._send_lock = threading.Lock()
        self.last_error: str | None = None

    @property
    def bound(self) -> bool:
        return self._bound.is_set()

    def subscribe(self, callback: Callable[[Inbound], None]) -> Callable[[], None]:
        """Calls ``callback`` (in the event loop) for every inbound message; returns an unsubscribe."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    async def start(self, wait_s: float = 5.0) -> bool:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="avl-smpp", daemon=True)
        self._thread.start()
        return await asyncio.to_thread(self._bound.wait, wait_s)

    async def close(self) -> None:
        self._stop.set()
        client = self._client
        if client is not None:
            # Send unbind without waiting for its response here: the reader thread owns the
            # socket's reads (smpplib's unbind() would block on a read it never gets).
            with contextlib.suppress(Exception):
                client.send_pdu(smpplib.smpp.make_pdu("unbind", client=client))
            await asyncio.sleep(0.1)
            with contextlib.suppress(Exception):
                client.disconnect()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5)

    async def send(self, destination: str, text: str, *, receipt: bool = True, timeout_s: float = 10.0) -> str:
        """Submits one SMS; returns the SMSC's message id. Raises SmppError when refused or unbound."""
        if not self.bound or self._client is None or self._loop is None:
            raise SmppError(f"SMSC {self.host}:{self.port} not bound ({self.last_error or 'connecting'})")
        client = self._client
        future: asyncio.Future[str] = self._loop.create_future()
        parts, encoding, msg_type = smpplib.gsm.make_parts(text)

        def submit() -> None:
            with self._send_lock:
                for part in parts[:1]:  # pings and notices are short: one part
                    pdu = client.send_message(
                        source_addr_ton=smpplib.consts.SMPP_TON_ALNUM if not self.source_addr.isdigit()
                        else smpplib.consts.SMPP_TON_UNK,
                        source_addr=self.source_addr, dest_addr_ton=smpplib.consts.SMPP_TON_INTL,
                        destination_addr=destination, short_message=part, data_coding=encoding, esm_class=msg_type,
                        registered_delivery=receipt)
                    self._sent[pdu.sequence] = future

        try:
            await asyncio.to_thread(submit)
        except (OSError, smpplib.exceptions.ConnectionError, smpplib.exceptions.PDUError) as exc:
            raise SmppError(f"submit to {destination} failed: {exc}") from None
        return await asyncio.wait_for(future, timeout_s)

    # The reader thread ----------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            client = smpplib.client.Client(self.host, self.port, timeout=30, allow_unknown_opt_params=True)
            client.set_message_received_handler(self._on_deliver)
            client.set_message_sent_handler(self._on_sent)
            try:
                client.connect()
                client.bind_transceiver(system_id=self.system_id, password=self._password)
                self._client = client
                self._bound.set()
                self.last_error = None
                log.info("SMPP bound to %s:%s as %s", self.host, self.port, self.system_id)
                client.listen(auto_send_enquire_link=True)
            except Exception as exc:  # any failure of the link: drop it and reconnect
                if self._stop.is_set():
                    break
                self.last_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                log.warning("SMPP link to %s:%s down: %s; reconnecting in %.0f s", self.host, self.port,
                            self.last_error, self.reconnect_s)
            finally:
                self._bound.clear()
                self._client = None
                with contextlib.suppress(Exception):
                    client.disconnect()
                self._fail_pending("SMPP link lost")
            self._stop.wait(self.reconnect_s)

    def _fail_pending(self, reason: str) -> None:
        if self._loop is None:
            return
        pending, self._sent = self._sent, {}
        for future in pending.values():
            self._loop.call_soon_threadsafe(_set_exception, future, SmppError(reason))

    def _on_sent(self, pdu: Any) -> None:
        future = self._sent.pop(pdu.sequence, None)
        if future is None or self._loop is None:
            return
        if pdu.status != smpplib.consts.SMPP_ESME_ROK:
            self._loop.call_soon_threadsafe(_set_exception, future, SmppError(f"SMSC refused: status {pdu.status:#x}"))
        else:
            message_id = pdu.message_id.decode() if isinstance(pdu.message_id, bytes) else str(pdu.message_id)
            self._loop.call_soon_threadsafe(_set_result, future, message_id)

    def _on_deliver(self, pdu: Any) -> None:
        text = _text(pdu)
        source = _str(pdu.source_addr)
        inbound: Inbound
        if pdu.esm_class & 0x3C == 0x04 or getattr(pdu, "receipted_message_id", None):
            match = _RECEIPT.search(text)
            receipted = _str(getattr(pdu, "receipted_message_id", None) or (match["id"] if match else ""))
            inbound = Inbound(source, _str(pdu.destination_addr), text, datetime.now(UTC), receipt_for=receipted,
                              receipt_status=match["stat"] if match else None)
        else:
            inbound = Inbound(source, _str(pdu.destination_addr), text, datetime.now(UTC))
        if self._loop is not None:
            for callback in list(self._listeners):
                self._loop.call_soon_threadsafe(callback, inbound)


class SmppError(Exception):
    """The SMSC did not take a message; ``str()`` is one line."""


def _str(value: Any) -> str:
    if value is None:
        return ""
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def _text(pdu: Any) -> str:
    raw = pdu.short_message or getattr(pdu, "message_payload", b"") or b""
    if isinstance(raw, str):
        return raw
    if getattr(pdu, "data_coding", 0) == smpplib.consts.SMPP_ENCODING_ISO10646:
        return raw.decode("utf-16-be", errors="replace")
    return raw.decode("latin-1")


def _set_result(future: asyncio.Future[str], value: str) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[str], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
