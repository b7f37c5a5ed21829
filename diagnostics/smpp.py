"""The SMPP link to the SMSC (smpplib for the PDUs, asyncio for the socket): one transceiver
bind, kept up with enquire_link both ways and reconnects with back-off, used by the SMS ping
and the customer notices. Rules it keeps, each next to its code:

* The socket is read and written in the event loop, never in a thread of its own. A reader
  thread must take the GIL back after every blocking read, and a busy event loop, which
  releases and retakes the GIL at each of its own polls, keeps it from such a thread for
  seconds (CPython 3.11): receipts, replies and submit_sm_resps then waited in the socket
  until the loop went idle, and pings timed out.
* A submit_sm's response wait is registered before its first byte is written, in the same
  step of the loop that numbers it (:meth:`SmppLink._submit_once`): the reader can never
  see a response nobody waits for.
* A response with an error status fails that message only (:class:`SmppError`, one line with
  the status's name); the bind stays up. ``ESME_RTHROTTLED`` pauses every send on the link and
  retries the message; ``ESME_RMSGQFUL`` retries that message; both with doubling back-off,
  at most ``max_attempts`` tries (:data:`RETRIED`).
* Addresses are E.164 inside the project: destinations go out in the type of number the
  SMSC wants (``dest_ton``), and inbound source addresses come back as E.164.
* Text goes out in the SMSC's default alphabet for ``data_coding`` 0 when it fits, else UCS-2.

Every message in and out is recorded in ``sms_messages`` by the caller; the SMSC password
is never logged (PDUs are logged at DEBUG by command and sequence only).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import smpplib.consts
import smpplib.exceptions
import smpplib.smpp

from avl import gsm7
from avl.phone import DEFAULT_COUNTRY, national, normalise

if TYPE_CHECKING:
    from avl.config import Settings

log = logging.getLogger("avl.diagnostics.smpp")

_RECEIPT = re.compile(r"id:(?P<id>\S+).*?stat:(?P<stat>[A-Z]+)(?:\s+err:(?P<err>\d+))?", re.S)

ROK = smpplib.consts.SMPP_ESME_ROK
RTHROTTLED = smpplib.consts.SMPP_ESME_RTHROTTLED
RMSGQFUL = smpplib.consts.SMPP_ESME_RMSGQFUL
# Statuses of a submit_sm_resp that mean "later", not "never": the message is tried again.
# ESME_RTHROTTLED is about the bind (too many submits per second): every send on the link
# pauses. ESME_RMSGQFUL is about the destination (its queue at the SMSC is full): only that
# message waits. Anything else fails the message at once; a timeout is not retried either
# (the SMSC may have taken it: a retry could send the SMS twice).
RETRIED = frozenset({RTHROTTLED, RMSGQFUL})

TON = {"unknown": smpplib.consts.SMPP_TON_UNK, "international": smpplib.consts.SMPP_TON_INTL,
       "national": smpplib.consts.SMPP_TON_NATNL}
NPI_E164 = smpplib.consts.SMPP_NPI_ISDN
DATA_CODING_DEFAULT = 0
DATA_CODING_LATIN1 = 3
DATA_CODING_UCS2 = 8
# message_state TLV of a receipt -> the stat: word of the receipt text (SMPP 3.4, 5.2.28).
_MESSAGE_STATES = {1: "ENROUTE", 2: "DELIVRD", 3: "EXPIRED", 4: "DELETED", 5: "UNDELIV", 6: "ACCEPTD",
                   7: "UNKNOWN", 8: "REJECTD"}
_STATUS_NAMES = {value: name.removeprefix("SMPP_") for name, value in vars(smpplib.consts).items()
                 if name.startswith("SMPP_ESME_R") and isinstance(value, int)}


@dataclass(frozen=True)
class Inbound:
    """A deliver_sm: a delivery receipt (``receipt_for`` set) or a message from a handset.

    ``source`` is E.164 (``+584140000077``) when the SMSC gave a phone number, whatever its
    type of number; an alphanumeric sender is kept as it came."""

    source: str
    destination: str
    text: str
    received_at: datetime
    receipt_for: str | None = None
    receipt_status: str | None = None


class SmppError(Exception):
    """The SMSC did not take a message (or the link is down); ``str()`` is one line."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class SmppTimeout(SmppError, TimeoutError):
    """No submit_sm_resp in time (also a TimeoutError, as callers of the old link expect)."""


# How a person reads the statuses an SMSC gives most (the rest: smpplib's descriptions).
_STATUS_TEXT = {
    smpplib.consts.SMPP_ESME_RINVMSGLEN: "invalid message length",
    smpplib.consts.SMPP_ESME_RINVBNDSTS: "not bound to send this",
    smpplib.consts.SMPP_ESME_RSYSERR: "system error",
    smpplib.consts.SMPP_ESME_RINVSRCADR: "invalid source address",
    smpplib.consts.SMPP_ESME_RINVDSTADR: "invalid destination address",
    smpplib.consts.SMPP_ESME_RBINDFAIL: "bind failed",
    smpplib.consts.SMPP_ESME_RINVPASWD: "invalid password",
    smpplib.consts.SMPP_ESME_RINVSYSID: "invalid system_id",
    RMSGQFUL: "message queue full",
    smpplib.consts.SMPP_ESME_RSUBMITFAIL: "submit failed",
    smpplib.consts.SMPP_ESME_RINVSRCTON: "invalid source type of number",
    smpplib.consts.SMPP_ESME_RINVDSTTON: "invalid destination type of number",
    smpplib.consts.SMPP_ESME_RINVDSTNPI: "invalid destination numbering plan",
    RTHROTTLED: "throttled (too many messages per second)",
    smpplib.consts.SMPP_ESME_RX_P_APPN: "rejected by the destination (permanent)",
    smpplib.consts.SMPP_ESME_RX_T_APPN: "rejected by the destination (temporary)",
}


def status_text(status: int) -> str:
    """``invalid destination address (ESME_RINVDSTADR 0x0b)``."""
    name = _STATUS_NAMES.get(status, "vendor-specific status")
    text = _STATUS_TEXT.get(status) or smpplib.consts.DESCRIPTIONS.get(status, "error").lower()
    return f"{text} ({name} {status:#04x})"


class SmppLink:
    """One transceiver bind. ``start()``, then ``send()`` from the same event loop; ``close()`` unbinds."""

    def __init__(self, host: str, port: int, system_id: str, password: str, *, source_addr: str = "2020",
                 reconnect_s: float = 2.0, max_reconnect_s: float = 60.0, default_alphabet: str = "gsm0338",
                 dest_ton: str = "international", default_country: str = DEFAULT_COUNTRY,
                 enquire_link_s: float = 30.0, response_timeout_s: float = 10.0, retry_backoff_s: float = 1.0,
                 max_attempts: int = 5) -> None:
        if default_alphabet not in ("gsm0338", "latin1"):
            raise ValueError(f"SMSC default alphabet {default_alphabet!r}: want gsm0338 or latin1")
        if dest_ton not in TON:
            raise ValueError(f"destination type of number {dest_ton!r}: want {', '.join(TON)}")
        self.host, self.port = host, port
        self.system_id, self._password = system_id, password
        self.source_addr = source_addr
        self.reconnect_s, self.max_reconnect_s = reconnect_s, max_reconnect_s
        self.default_alphabet, self.dest_ton, self.default_country = default_alphabet, dest_ton, default_country
        self.enquire_link_s, self.response_timeout_s = enquire_link_s, response_timeout_s
        self.retry_backoff_s, self.max_attempts = retry_backoff_s, max(1, max_attempts)
        self.last_error: str | None = None
        self.binds = 0  # successful binds since start(): a reconnect shows here
        self._writer: asyncio.StreamWriter | None = None  # set while bound
        self._numbers = _Sequence()  # the bound session's sequence numbers
        self._bound = asyncio.Event()
        self._stop = asyncio.Event()
        self._stop_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listeners: list[Callable[[Inbound], None]] = []
        self._pending: dict[int, asyncio.Future[tuple[int, str]]] = {}
        self._last_heard = 0.0  # loop time of the last PDU from the SMSC
        self._enquiring_since: float | None = None  # loop time of our unanswered enquire_link
        self._paused_until = 0.0  # loop time before which no submit goes out (ESME_RTHROTTLED)

    @classmethod
    def from_settings(cls, settings: Settings) -> SmppLink:
        """The link ``AVL_SMPP_*`` describe (``AVL_SMPP_HOST`` must be set)."""
        if not settings.smpp_host:
            raise ValueError("AVL_SMPP_HOST: not set, no SMSC to bind to")
        return cls(settings.smpp_host, settings.smpp_port, settings.smpp_system_id,
                   settings.smpp_password.get_secret_value(), source_addr=settings.sms_source_addr,
                   default_alphabet=settings.smpp_default_alphabet, dest_ton=settings.smpp_dest_ton,
                   default_country=settings.phone_default_country)

    @property
    def bound(self) -> bool:
        return self._bound.is_set()

    def subscribe(self, callback: Callable[[Inbound], None]) -> Callable[[], None]:
        """Calls ``callback`` (in the event loop) for every inbound message; returns an unsubscribe."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    async def start(self, wait_s: float = 5.0) -> bool:
        """Starts binding (and rebinding whenever the link drops); True if bound within ``wait_s``."""
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name="avl-smpp")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._bound.wait(), wait_s)
        return self.bound

    async def close(self) -> None:
        """Unbinds (waiting briefly for unbind_resp), disconnects, fails what still waits."""
        self._stop_at = asyncio.get_running_loop().time()
        self._stop.set()
        if self._task is not None:
            if self._writer is not None and self._bound.is_set():
                # The reader sees unbind_resp and ends the session (or gives up after 2 s).
                self._write(self._writer, smpplib.smpp.make_pdu("unbind", client=self._numbers))
                await asyncio.wait({self._task}, timeout=5)
            if not self._task.done():  # connecting, binding or waiting to reconnect
                self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._fail_pending("SMPP link closed")

    # Sending ------------------------------------------------------------------------

    async def send(self, destination: str, text: str, *, receipt: bool = True, timeout_s: float = 10.0,
                   validity_s: float | None = None) -> str:
        """Submits one SMS to ``destination`` (E.164; national input is read in the default
        country); returns the SMSC's message id (of the first part, for a long text).
        ``validity_s``: the SMSC gives up (receipt EXPIRED) after this long; None: its default.

        Raises :class:`SmppError` when the SMSC refuses it or the link is down, and
        :class:`SmppTimeout` when no submit_sm_resp comes within ``timeout_s``."""
        address, ton = self.destination(destination)
        parts, data_coding, esm_class = encode_text(text, self.default_alphabet)
        fields = {"dest_addr_ton": ton, "destination_addr": address, "data_coding": data_coding,
                  "esm_class": esm_class, "registered_delivery": int(receipt)}
        if validity_s is not None:
            fields["validity_period"] = relative_time(validity_s)
        ids = [await self._submit(address, {**fields, "short_message": part}, timeout_s) for part in parts]
        return ids[0]

    def destination(self, number: str) -> tuple[str, int]:
        """The destination_addr and TON for ``number`` as the SMSC wants them (NPI is always 1)."""
        try:
            e164 = normalise(number, self.default_country)
        except ValueError as exc:
            raise SmppError(f"not sent: {exc}", smpplib.consts.SMPP_ESME_RINVDSTADR) from None
        if self.dest_ton == "national":
            # A number of another country has no national form: it goes out international.
            digits = national(e164, self.default_country)
            if digits is not None:
                return digits, TON["national"]
            return e164[1:], TON["international"]
        return e164[1:], TON[self.dest_ton]

    async def _submit(self, address: str, fields: dict[str, Any], timeout_s: float) -> str:
        """One submit_sm, tried again after ESME_RTHROTTLED / ESME_RMSGQFUL (see RETRIED)."""
        loop = asyncio.get_running_loop()
        for attempt in itertools.count(1):
            pause = self._paused_until - loop.time()
            if pause > 0:  # the SMSC throttled this bind: nothing goes out before then
                await asyncio.sleep(pause)
            status, message_id = await self._submit_once(address, fields, timeout_s)
            if status == ROK:
                return message_id
            if status not in RETRIED or attempt >= self.max_attempts:
                tries = f" after {attempt} tries" if attempt > 1 else ""
                raise SmppError(f"SMSC refused: {status_text(status)}{tries}", status)
            delay = self.retry_backoff_s * 2 ** (attempt - 1) * random.uniform(1.0, 1.25)
            log.info("SMSC %s:%s answered %s for %s: trying again in %.1f s (try %d of %d)", self.host, self.port,
                     _STATUS_NAMES.get(status, hex(status)), address, delay, attempt + 1, self.max_attempts)
            if status == RTHROTTLED:
                self._paused_until = max(self._paused_until, loop.time() + delay)
            else:
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _submit_once(self, address: str, fields: dict[str, Any], timeout_s: float) -> tuple[int, str]:
        """(status, message_id) of one submit_sm with these ``fields``."""
        writer = self._writer
        if self._loop is None:
            raise SmppError(f"SMSC {self.host}:{self.port} not bound (link not started)")
        if writer is None or not self._bound.is_set():
            raise SmppError(f"SMSC {self.host}:{self.port} not bound ({self.last_error or 'connecting'})")
        future: asyncio.Future[tuple[int, str]] = self._loop.create_future()
        try:
            pdu = smpplib.smpp.make_pdu(
                "submit_sm", client=self._numbers, source_addr_ton=self._source_ton(),
                source_addr_npi=self._source_npi(), source_addr=self.source_addr, dest_addr_npi=NPI_E164, **fields)
            data = pdu.generate()
        except (ValueError, TypeError, smpplib.exceptions.PDUError) as exc:
            raise SmppError(f"submit to {address} failed: {_one_line(exc)}") from None
        # Registered before the PDU is on the wire, with no await in between: its response
        # cannot come first.
        self._pending[pdu.sequence] = future
        try:
            writer.write(data)
            log.debug("-> submit_sm seq=%d to %s", pdu.sequence, address)
            return await asyncio.wait_for(_answer(writer, future), timeout_s)
        except TimeoutError:
            raise SmppTimeout(f"no answer from SMSC {self.host}:{self.port} to the SMS for {address} "
                              f"within {timeout_s:g} s") from None
        finally:
            self._pending.pop(pdu.sequence, None)

    def _source_ton(self) -> int:
        return int(smpplib.consts.SMPP_TON_UNK if self.source_addr.isdigit() else smpplib.consts.SMPP_TON_ALNUM)

    def _source_npi(self) -> int:
        return int(NPI_E164 if self.source_addr.isdigit() else smpplib.consts.SMPP_NPI_UNK)

    # The session ------------------------------------------------------------------------

    async def _run(self) -> None:
        delay = self.reconnect_s
        while not self._stop.is_set():
            writer: asyncio.StreamWriter | None = None
            try:
                reader, writer = await self._connect()
                await self._bind(reader, writer)
                self._writer = writer
                self._bound.set()
                self.binds += 1
                self.last_error = None
                delay = self.reconnect_s
                log.info("SMPP bound to %s:%s as %s", self.host, self.port, self.system_id)
                await self._serve(reader, writer)
            except Exception as exc:  # any failure of the link: drop it and reconnect
                if not self._stop.is_set():
                    self.last_error = _one_line(exc)
                    log.warning("SMPP link to %s:%s down: %s; reconnecting in %.0f s", self.host, self.port,
                                self.last_error, delay)
            finally:
                self._bound.clear()
                self._writer = None
                self._fail_pending("SMPP link closed" if self._stop.is_set() else
                                   f"SMPP link lost ({self.last_error or 'connection lost'})")
                if writer is not None:
                    writer.close()
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(writer.wait_closed(), 1.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            delay = min(delay * 2, self.max_reconnect_s)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.response_timeout_s)
        except TimeoutError:
            raise _LinkDown(f"no answer to connect within {self.response_timeout_s:g} s") from None
        except OSError as exc:  # "Connection refused", not asyncio's "Connect call failed (...)"
            raise _LinkDown(os.strerror(exc.errno) if exc.errno and exc.errno > 0 else
                            exc.strerror or _one_line(exc)) from None

    async def _bind(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._numbers = _Sequence()
        self._write(writer, smpplib.smpp.make_pdu("bind_transceiver", client=self._numbers,
                                                  system_id=self.system_id, password=self._password))
        try:
            (_, command_id, status, _), _ = await asyncio.wait_for(_read_pdu(reader), self.response_timeout_s)
        except TimeoutError:
            raise _LinkDown("no answer to bind_transceiver") from None
        if command_id != 0x80000009 or status != ROK:  # bind_transceiver_resp (or generic_nack)
            raise _LinkDown(f"bind as {self.system_id} refused: "
                            f"{status_text(status or smpplib.consts.SMPP_ESME_RBINDFAIL)}")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Reads and answers PDUs until the session ends; raises _LinkDown when it breaks."""
        loop = asyncio.get_running_loop()
        self._last_heard, self._enquiring_since = loop.time(), None
        # A read is never cancelled half-way (that would lose a PDU's header): the reading runs
        # in its own task, and this one wakes every 0.2 s for the enquire_link and the close.
        reading = loop.create_task(self._read_all(reader, writer), name="avl-smpp-reader")
        try:
            while True:
                await asyncio.wait({reading}, timeout=0.2)
                if reading.done():
                    return reading.result()
                now = loop.time()
                if self._stop.is_set() and now - self._stop_at > 2.0:
                    return None  # no unbind_resp: give up on it
                if self._enquiring_since is not None and now - self._enquiring_since > self.response_timeout_s:
                    raise _LinkDown(f"no enquire_link_resp within {self.response_timeout_s:g} s")
                if self._enquiring_since is None and now - self._last_heard >= self.enquire_link_s \
                        and not self._stop.is_set():
                    self._write(writer, smpplib.smpp.make_pdu("enquire_link", client=self._numbers))
                    self._enquiring_since = now
        finally:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)

    async def _read_all(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        while True:
            header, raw = await _read_pdu(reader)
            self._last_heard, self._enquiring_since = loop.time(), None  # anything heard shows the link lives
            if not self._handle(writer, header, raw):
                return

    def _write(self, writer: asyncio.StreamWriter, pdu: Any) -> None:
        writer.write(pdu.generate())
        log.debug("-> %s seq=%d", pdu.command, pdu.sequence)

    def _handle(self, writer: asyncio.StreamWriter, header: tuple[int, int, int, int], raw: bytes) -> bool:
        """Acts on one PDU; False when the session is over."""
        _, command_id, status, sequence = header
        try:
            pdu = smpplib.smpp.parse_pdu(raw, client=_NO_SEQUENCE, allow_unknown_opt_params=True)
        except Exception as exc:  # unknown command or a body smpplib cannot read
            log.warning("SMSC %s:%s sent an unreadable PDU (command %#010x): %s", self.host, self.port, command_id,
                        _one_line(exc))
            if command_id & 0x80000000:
                self._resolve(sequence, status or smpplib.consts.SMPP_ESME_RSYSERR, "")
            elif command_id == 0x00000005:  # deliver_sm: a temporary error, so the SMSC tries again
                self._respond(writer, "deliver_sm_resp", sequence, smpplib.consts.SMPP_ESME_RX_T_APPN)
            else:
                self._respond(writer, "generic_nack", sequence, smpplib.consts.SMPP_ESME_RINVCMDID)
            return True
        command = pdu.command
        log.debug("<- %s seq=%d status=%#04x", command, sequence, status)
        if command == "submit_sm_resp":
            self._resolve(sequence, status, _str(getattr(pdu, "message_id", None)))
        elif command == "generic_nack":
            if not self._resolve(sequence, status or smpplib.consts.SMPP_ESME_RSYSERR, ""):
                log.warning("SMSC %s:%s sent generic_nack (%s) for seq %d", self.host, self.port,
                            status_text(status), sequence)
        elif command == "deliver_sm":
            self._on_deliver(writer, pdu)
        elif command == "enquire_link":
            self._respond(writer, "enquire_link_resp", sequence)
        elif command == "unbind":
            self._respond(writer, "unbind_resp", sequence)
            if not self._stop.is_set():
                raise _LinkDown("the SMSC unbound the link")
            return False
        elif command == "unbind_resp":  # ours, from close()
            return False
        elif command == "enquire_link_resp" or command == "alert_notification":
            pass
        elif pdu.is_request():
            self._respond(writer, "generic_nack", sequence, smpplib.consts.SMPP_ESME_RINVCMDID)
        return True

    def _respond(self, writer: asyncio.StreamWriter, command: str, sequence: int, status: int = ROK) -> None:
        resp = smpplib.smpp.make_pdu(command, client=_NO_SEQUENCE, status=status)
        resp.sequence = sequence
        self._write(writer, resp)

    def _resolve(self, sequence: int, status: int, message_id: str) -> bool:
        future = self._pending.pop(sequence, None)
        if future is None:
            if status == ROK:
                log.warning("SMSC %s:%s accepted message %s (seq %d) after its sender stopped waiting", self.host,
                            self.port, message_id, sequence)
            return False
        if not future.done():
            future.set_result((status, message_id))
        return True

    def _fail_pending(self, reason: str) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(SmppError(reason))

    def _on_deliver(self, writer: asyncio.StreamWriter, pdu: Any) -> None:
        try:
            inbound = self._inbound(pdu)
        except Exception as exc:  # answer "try later" rather than lose it or drop the link
            log.warning("deliver_sm from %s not understood: %s", _str(pdu.source_addr), _one_line(exc))
            self._respond(writer, "deliver_sm_resp", pdu.sequence, smpplib.consts.SMPP_ESME_RX_T_APPN)
            return
        self._respond(writer, "deliver_sm_resp", pdu.sequence)
        if self._loop is not None:  # each listener on its own: one that raises cannot stop the reader
            for callback in list(self._listeners):
                self._loop.call_soon(callback, inbound)

    def _inbound(self, pdu: Any) -> Inbound:
        text = decode_text(pdu, self.default_alphabet)
        source = self.source_number(_str(pdu.source_addr), pdu.source_addr_ton or 0)
        destination = _str(pdu.destination_addr)
        now = datetime.now(UTC)
        receipted = _str(getattr(pdu, "receipted_message_id", None)).rstrip("\x00")
        if (pdu.esm_class or 0) & 0x3C == 0x04 or receipted:
            match = _RECEIPT.search(text)
            state = getattr(pdu, "message_state", None)
            status = match["stat"] if match else _MESSAGE_STATES.get(state) if isinstance(state, int) else None
            return Inbound(source, destination, text, now, receipt_for=receipted or (match["id"] if match else ""),
                           receipt_status=status)
        return Inbound(source, destination, text, now)

    def source_number(self, address: str, ton: int) -> str:
        """E.164 for an address the SMSC sent with type of number ``ton``; else the address as it came."""
        if ton == smpplib.consts.SMPP_TON_ALNUM or not address:
            return address
        digits = address.lstrip("+")
        spelled = "+" + digits if ton == smpplib.consts.SMPP_TON_INTL else address
        try:
            return normalise(spelled, self.default_country)
        except ValueError:
            return address


# Text ------------------------------------------------------------------------------

# Octets in one SMS, and in each part of a concatenated one (after its 6-octet UDH).
_SINGLE, _PART = {DATA_CODING_DEFAULT: 160, DATA_CODING_UCS2: 140}, {DATA_CODING_DEFAULT: 153, DATA_CODING_UCS2: 134}
_UDHI = 0x40


def encode_text(text: str, alphabet: str = "gsm0338") -> tuple[list[bytes], int, int]:
    """(parts, data_coding, esm_class) of ``text`` for an SMSC whose ``data_coding`` 0 is
    ``alphabet``.

    GSM 03.38 text goes out as data_coding 0: unpacked septets (extension characters escaped)
    for a ``gsm0338`` SMSC, Latin-1 octets for a ``latin1`` one (which then converts it to GSM
    for the air, so text must be in both). Anything else is UCS-2 (data_coding 8). A text
    longer than one SMS becomes a concatenated SMS (UDH, esm_class 0x40); characters are never
    split between parts."""
    units: list[bytes] | None = None
    if all(ch in gsm7.ENCODE for ch in text):
        if alphabet == "gsm0338":
            units = [gsm7.ENCODE[ch] for ch in text]
        elif all(ord(ch) < 0x100 for ch in text):
            units = [ch.encode("latin-1") for ch in text]
    data_coding = DATA_CODING_DEFAULT
    if units is None:
        data_coding = DATA_CODING_UCS2
        encoded = text.encode("utf-16-be")
        units = []
        i = 0
        while i < len(encoded):  # keep surrogate pairs together
            size = 4 if 0xD8 <= encoded[i] <= 0xDB else 2
            units.append(encoded[i:i + size])
            i += size
    whole = b"".join(units)
    if len(whole) <= _SINGLE[data_coding]:
        return [whole], data_coding, 0
    chunks: list[bytes] = []
    current = b""
    for unit in units:
        if len(current) + len(unit) > _PART[data_coding]:
            chunks.append(current)
            current = b""
        current += unit
    chunks.append(current)
    if len(chunks) > 255:
        raise SmppError(f"text of {len(text)} characters is too long for one concatenated SMS")
    reference = random.randrange(256)
    return ([bytes((0x05, 0x00, 0x03, reference, len(chunks), n)) + chunk for n, chunk in enumerate(chunks, 1)],
            data_coding, _UDHI)


def relative_time(seconds: float) -> str:
    """An SMPP relative time (``YYMMDDhhmmss000R``, 3.4 section 7.1.1.2), whole seconds, at
    least one, at most 99 days."""
    total = min(max(1, round(seconds)), 99 * 86400)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"0000{days:02d}{hours:02d}{minutes:02d}{secs:02d}000R"


def decode_text(pdu: Any, alphabet: str = "gsm0338") -> str:
    """The text of a deliver_sm (its UDH, if any, left out)."""
    raw: Any = pdu.short_message or getattr(pdu, "message_payload", None) or b""
    if isinstance(raw, str):
        return raw
    if (pdu.esm_class or 0) & _UDHI and raw:
        raw = raw[1 + raw[0]:]
    data_coding = pdu.data_coding or 0
    if data_coding == DATA_CODING_UCS2:
        return str(raw.decode("utf-16-be", errors="replace"))
    if data_coding == DATA_CODING_DEFAULT and alphabet == "gsm0338" and all(b < 0x80 for b in raw):
        return gsm7.decode(raw)
    # Latin-1 (3), IA5 (1), an SMSC whose default is Latin-1, or octets that cannot be septets.
    return str(raw.decode("latin-1"))


# Plumbing ---------------------------------------------------------------------------


class _LinkDown(Exception):
    """The link must be dropped and rebound; ``str()`` says why."""


class _Sequence:
    """smpplib's sequence generator for one session: 1, 2, ... 0x7FFFFFFF, 1, ..."""

    MAX = 0x7FFFFFFF

    def __init__(self) -> None:
        self.sequence = 0

    def next_sequence(self) -> int:
        self.sequence = self.sequence % self.MAX + 1
        return self.sequence


class _NoSequenceClient:
    """Parsing a request PDU makes smpplib number it; parsed PDUs keep the SMSC's number, so
    they must not consume ours (nor may responses, which carry the request's)."""

    sequence = 0

    @staticmethod
    def next_sequence() -> int:
        return 0


_NO_SEQUENCE = _NoSequenceClient()


async def _read_pdu(reader: asyncio.StreamReader) -> tuple[tuple[int, int, int, int], bytes]:
    try:
        head = await reader.readexactly(16)
        header: tuple[int, int, int, int] = struct.unpack(">IIII", head)
        if not 16 <= header[0] <= 70_000:  # framing cannot be trusted any more
            raise _LinkDown(f"PDU with command_length {header[0]}")
        return header, head + await reader.readexactly(header[0] - 16)
    except asyncio.IncompleteReadError:
        raise _LinkDown("the SMSC closed the connection") from None


async def _answer(writer: asyncio.StreamWriter, future: asyncio.Future[tuple[int, str]]) -> tuple[int, str]:
    """The response, once the submit is written out (a lost connection fails ``future`` itself)."""
    with contextlib.suppress(OSError):
        await writer.drain()
    return await future


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if text:
        return text.splitlines()[0]
    return "timed out" if isinstance(exc, TimeoutError) else "connection lost"


def _str(value: Any) -> str:
    if value is None:
        return ""
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)
