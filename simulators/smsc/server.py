"""An asyncio SMPP 3.4 SMSC simulator.

Routing model
-------------
Every ESME binds with a system_id/password from ``accounts``. An ESME bound as receiver or
transceiver with an ``address_range`` (a regular expression matched at the start of the
number, as SMPP 3.4 intends) owns the numbers it matches:

* The virtual fleet binds as the *handset gateway* with e.g. ``^58414\\d+$``: a submit_sm
  (MT) to one of those MSISDNs reaches it as a deliver_sm (esm_class 0). Its deliver_sm_resp
  decides the fate: ESME_ROK = delivered; a temporary error (ESME_RX_T_APPN: handset off / no
  coverage, or a timeout) = retry every ``retry_interval`` until the validity period runs out
  (EXPIRED); any other error (ESME_RINVDSTADR: SIM suspended / unknown) = UNDELIVERABLE.
* A submit_sm from a session whose own address_range matches its source_addr is a handset's
  SMS (MO): it is routed to the receiver whose address_range matches the destination, else to
  the ESME that last sent an MT to that handset, stored until one is bound.
* registered_delivery bit 0 (or 1, "on failure") earns the originator a delivery receipt:
  deliver_sm, esm_class 0x04, the appendix B text and the receipted_message_id and
  message_state TLVs, itself stored and forwarded until the originator has a receiver bound.

Destinations that are barred, not a number, or that no known address_range (current or past
binds, plus configured ``routes``) could match are refused at submit time with ESME_RINVDSTADR.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import os
import re
import signal
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from simulators.smsc.pdu import (
    BIND_COMMANDS,
    HEADER_LENGTH,
    RESPONSE_BIT,
    Bind,
    BindResp,
    CommandId,
    MessageIdResp,
    MessageState,
    Pdu,
    PduError,
    QuerySm,
    QuerySmResp,
    ShortMessage,
    Status,
    Tag,
    command_name,
    decode,
    decode_header,
    status_name,
)
from simulators.smsc.store import Kind, Message, MessageStore, parse_smpp_time

log = logging.getLogger("simulators.smsc")

DEFAULT_ACCOUNTS: dict[str, str] = {"avl": "avl-secret", "fleet": "fleet-secret"}
# SMPP 3.4 passwords are at most 8 octets; spec-abiding clients (smpplib) cut longer ones.
PASSWORD_MAX = 8
# Statuses from a receiver that mean "try again later" rather than "never".
TEMPORARY_STATUSES = frozenset(
    {Status.ESME_RX_T_APPN, Status.ESME_RMSGQFUL, Status.ESME_RTHROTTLED, Status.ESME_RSYSERR}
)
_NUMBER = re.compile(r"^\+?[0-9]{1,20}$")


class BindMode(StrEnum):
    TRANSMITTER = "transmitter"
    RECEIVER = "receiver"
    TRANSCEIVER = "transceiver"


_BIND_MODES = {
    CommandId.BIND_TRANSMITTER: BindMode.TRANSMITTER,
    CommandId.BIND_RECEIVER: BindMode.RECEIVER,
    CommandId.BIND_TRANSCEIVER: BindMode.TRANSCEIVER,
}


class Session:
    """One ESME connection."""

    _ids = itertools.count(1)

    def __init__(self, smsc: Smsc, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.smsc = smsc
        self.reader = reader
        self.writer = writer
        self.id = next(self._ids)
        self.peer = str(writer.get_extra_info("peername"))
        self.mode: BindMode | None = None
        self.system_id = ""
        self.address_range: re.Pattern[str] | None = None
        self.pending: dict[int, asyncio.Future[Pdu]] = {}
        self.closed = False
        self._seq = itertools.count(1)
        self._submits: deque[float] = deque()

    def __repr__(self) -> str:
        return f"<session {self.id} {self.system_id or '-'} {self.mode or 'open'} {self.peer}>"

    @property
    def can_receive(self) -> bool:
        return not self.closed and self.mode in (BindMode.RECEIVER, BindMode.TRANSCEIVER)

    @property
    def can_transmit(self) -> bool:
        return not self.closed and self.mode in (BindMode.TRANSMITTER, BindMode.TRANSCEIVER)

    def owns(self, address: str) -> bool:
        return self.address_range is not None and self.address_range.match(address) is not None

    def throttled(self, limit: int | None) -> bool:
        """Count one submit; True if it exceeds ``limit`` per rolling second."""
        if limit is None:
            return False
        now = time.monotonic()
        while self._submits and now - self._submits[0] >= 1.0:
            self._submits.popleft()
        if len(self._submits) >= limit:
            return True
        self._submits.append(now)
        return False

    async def send(self, pdu: Pdu) -> None:
        if self.closed:
            raise ConnectionError("session closed")
        log.debug("%r <- %s seq=%d status=%s", self, pdu.name, pdu.sequence, status_name(pdu.status))
        try:
            self.writer.write(pdu.encode())
            await self.writer.drain()
        except (ConnectionError, RuntimeError) as exc:
            self.close()
            raise ConnectionError(str(exc)) from exc

    async def request(self, command_id: CommandId, body: ShortMessage | None, response_within: float) -> Pdu:
        """Send a request and wait for its response (or generic_nack)."""
        seq = next(self._seq)
        future: asyncio.Future[Pdu] = asyncio.get_running_loop().create_future()
        self.pending[seq] = future
        try:
            await self.send(Pdu(command_id, seq, 0, body))
            return await asyncio.wait_for(future, response_within)
        finally:
            self.pending.pop(seq, None)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for future in self.pending.values():
            if not future.done():
                future.set_exception(ConnectionError("session closed"))
        with contextlib.suppress(Exception):
            self.writer.close()


class Smsc:
    """The SMSC: accounts, sessions, routing and the message store."""

    def __init__(
        self,
        accounts: Mapping[str, str] | None = None,
        *,
        barred: Iterable[str] = (),
        routes: Iterable[str] = (),
        throttle: int | None = None,
        default_validity: float = 24 * 3600.0,
        retry_interval: float = 30.0,
        response_timeout: float = 10.0,
        max_pdu_length: int = 70_000,
        system_id: str = "AVLSMSC",
    ) -> None:
        self.accounts = dict(DEFAULT_ACCOUNTS if accounts is None else accounts)
        self.barred = tuple(barred)
        self.throttle = throttle
        self.default_validity = timedelta(seconds=default_validity)
        self.retry_interval = retry_interval
        self.response_timeout = response_timeout
        self.max_pdu_length = max_pdu_length
        self.system_id = system_id
        self.store = MessageStore()
        self.sessions: list[Session] = []
        # address_range pattern text -> compiled; every range a receiver ever bound with, plus routes.
        self.known_ranges: dict[str, re.Pattern[str]] = {r: re.compile(r) for r in routes}
        # handset MSISDN -> system_id of the ESME that last sent it an MT (where its replies go).
        self.last_mt_sender: dict[str, str] = {}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()  # deliveries
        self._connections: set[asyncio.Task[Any]] = set()
        self._bind_event = asyncio.Event()
        self._stopping = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 2775) -> int:
        """Listen; returns the bound port (useful with port 0)."""
        self._bind_event = asyncio.Event()  # bind it to the running loop
        self._server = await asyncio.start_server(self._connection, host, port)
        bound = int(self._server.sockets[0].getsockname()[1])
        log.info("SMSC listening on %s:%d", host, bound)
        return bound

    async def stop(self) -> None:
        self._stopping = True
        if self._server is not None:
            self._server.close()
        # Cancel deliveries before closing sessions: a response future failing at the same
        # moment as the cancel can swallow the cancellation (asyncio.wait_for in 3.11).
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for session in list(self.sessions):
            session.close()
        if self._connections:  # closed sessions end their read loops by themselves
            await asyncio.wait(self._connections, timeout=2)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ connection loop

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = Session(self, reader, writer)
        self.sessions.append(session)
        task = asyncio.current_task()
        if task is not None:  # so that stop() can wait for connection handlers
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)
        log.info("%r connected", session)
        try:
            await self._read_loop(session)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except Exception:  # never let one connection take the server down
            log.exception("%r failed", session)
        finally:
            session.close()
            if session in self.sessions:
                self.sessions.remove(session)
            log.info("%r disconnected", session)

    async def _read_loop(self, session: Session) -> None:
        while not session.closed:
            head = await session.reader.readexactly(4)
            (length,) = struct.unpack(">I", head)
            if length < HEADER_LENGTH or length > self.max_pdu_length:
                # Cannot resynchronise on a stream whose framing is untrustworthy: nack and close.
                log.warning("%r bad command_length %d: closing", session, length)
                with contextlib.suppress(ConnectionError):
                    await session.send(Pdu(CommandId.GENERIC_NACK, 0, Status.ESME_RINVCMDLEN))
                return
            data = head + await session.reader.readexactly(length - 4)
            try:
                pdu = decode(data)
            except PduError as exc:
                await self._undecodable(session, data, exc)
                continue
            log.debug("%r -> %s seq=%d status=%s", session, pdu.name, pdu.sequence, status_name(pdu.status))
            await self._dispatch(session, pdu)

    async def _undecodable(self, session: Session, data: bytes, exc: PduError) -> None:
        _, command_id, status, seq = decode_header(data)
        log.warning("%r undecodable %s: %s", session, command_name(command_id), exc)
        if command_id & RESPONSE_BIT:
            # A response's verdict is its header status, whatever is wrong with its body.
            future = session.pending.get(seq)
            if future is not None and not future.done():
                future.set_result(Pdu(command_id, seq, status))
            return
        if exc.status == Status.ESME_RINVCMDID:
            await session.send(Pdu(CommandId.GENERIC_NACK, seq, Status.ESME_RINVCMDID))
        else:
            await session.send(Pdu(command_id | RESPONSE_BIT, seq, exc.status))

    async def _dispatch(self, session: Session, pdu: Pdu) -> None:
        cid = pdu.command_id
        if pdu.is_response:  # includes generic_nack
            future = session.pending.get(pdu.sequence)
            if future is not None and not future.done():
                future.set_result(pdu)
            else:
                log.warning("%r unexpected %s seq=%d", session, pdu.name, pdu.sequence)
            return
        if cid == CommandId.ENQUIRE_LINK:
            await session.send(pdu.response())
        elif cid in BIND_COMMANDS:
            await self._bind(session, pdu)
        elif cid == CommandId.UNBIND:
            if session.mode is None:
                await session.send(pdu.response(Status.ESME_RINVBNDSTS))
                return
            await session.send(pdu.response())
            log.info("%r unbound", session)
            session.close()
        elif cid == CommandId.SUBMIT_SM:
            await self._submit(session, pdu)
        elif cid == CommandId.QUERY_SM:
            await self._query(session, pdu)
        elif cid == CommandId.DELIVER_SM:
            # deliver_sm flows SMSC -> ESME only.
            await session.send(pdu.response(Status.ESME_RINVBNDSTS, MessageIdResp()))
        else:
            await session.send(Pdu(CommandId.GENERIC_NACK, pdu.sequence, Status.ESME_RINVCMDID))

    # ------------------------------------------------------------------ bind

    def _password_ok(self, system_id: str, password: str) -> bool:
        expected = self.accounts[system_id]
        return password == expected or (len(expected) > PASSWORD_MAX and password == expected[:PASSWORD_MAX])

    async def _bind(self, session: Session, pdu: Pdu) -> None:
        bind = pdu.body
        assert isinstance(bind, Bind)
        mode = _BIND_MODES[CommandId(pdu.command_id)]

        async def fail(status: Status, why: str) -> None:
            log.warning("%r %s bind as %r refused: %s (%s)", session, mode, bind.system_id, status.name, why)
            await session.send(pdu.response(status, BindResp(self.system_id)))

        if session.mode is not None:
            return await fail(Status.ESME_RALYBND, "already bound")
        if bind.system_id not in self.accounts:
            return await fail(Status.ESME_RINVSYSID, "unknown system_id")
        if not self._password_ok(bind.system_id, bind.password):
            return await fail(Status.ESME_RINVPASWD, "wrong password")
        address_range: re.Pattern[str] | None = None
        if bind.address_range:
            try:
                address_range = re.compile(bind.address_range)
            except re.error as exc:
                return await fail(Status.ESME_RBINDFAIL, f"address_range is not a regex: {exc}")
        session.mode = mode
        session.system_id = bind.system_id
        session.address_range = address_range
        await session.send(pdu.response(Status.ESME_ROK, BindResp(self.system_id, {Tag.SC_INTERFACE_VERSION: b"\x34"})))
        log.info("%r bound, address_range=%r", session, bind.address_range)
        if address_range is not None and session.can_receive:
            self.known_ranges.setdefault(bind.address_range, address_range)
        # Wake deliveries waiting for a receiver.
        self._bind_event.set()
        self._bind_event = asyncio.Event()

    # ------------------------------------------------------------------ submit

    def _routable(self, destination: str) -> bool:
        return any(p.match(destination) for p in self.known_ranges.values()) or any(
            s.can_receive and s.owns(destination) for s in self.sessions
        )

    async def _submit(self, session: Session, pdu: Pdu) -> None:
        sm = pdu.body
        assert isinstance(sm, ShortMessage)

        async def refuse(status: Status, why: str) -> None:
            log.info("%r submit_sm to %r refused: %s (%s)", session, sm.destination_addr, status.name, why)
            await session.send(pdu.response(status))

        if not session.can_transmit:
            return await refuse(Status.ESME_RINVBNDSTS, f"bound as {session.mode or 'nothing'}")
        if session.throttled(self.throttle):
            return await refuse(Status.ESME_RTHROTTLED, f"over {self.throttle} submits/s")
        if sm.short_message and Tag.MESSAGE_PAYLOAD in sm.tlvs:
            return await refuse(Status.ESME_RINVMSGLEN, "both short_message and message_payload")
        destination = sm.destination_addr
        if not _NUMBER.match(destination):
            return await refuse(Status.ESME_RINVDSTADR, "not a number")
        bare = destination.lstrip("+")
        if any(bare.startswith(prefix.lstrip("+")) for prefix in self.barred):
            return await refuse(Status.ESME_RINVDSTADR, "barred")
        now = datetime.now(UTC)
        try:
            expires = parse_smpp_time(sm.validity_period, now) or now + self.default_validity
        except PduError as exc:
            return await refuse(exc.status, str(exc))
        is_mo = session.owns(sm.source_addr)
        fallback = self.last_mt_sender.get(sm.source_addr) if is_mo else None
        if not self._routable(destination) and fallback is None:
            return await refuse(Status.ESME_RINVDSTADR, "no route")

        extra = {
            tag: value
            for tag, value in sm.tlvs.items()
            if tag
            in (
                Tag.SAR_MSG_REF_NUM,
                Tag.SAR_TOTAL_SEGMENTS,
                Tag.SAR_SEGMENT_SEQNUM,
                Tag.SOURCE_PORT,
                Tag.DESTINATION_PORT,
                Tag.USER_MESSAGE_REFERENCE,
            )
        }
        message = Message(
            message_id=self.store.next_id(),
            kind=Kind.MO if is_mo else Kind.MT,
            source_addr=sm.source_addr,
            destination_addr=destination,
            payload=sm.payload,
            data_coding=sm.data_coding,
            origin_system_id=session.system_id,
            submit_time=now,
            expires_at=expires,
            registered_delivery=sm.registered_delivery,
            esm_class=sm.esm_class & 0xC0,  # keep UDHI / reply path, message type = default
            protocol_id=sm.protocol_id,
            priority_flag=sm.priority_flag,
            service_type=sm.service_type,
            source_addr_ton=sm.source_addr_ton,
            source_addr_npi=sm.source_addr_npi,
            dest_addr_ton=sm.dest_addr_ton,
            dest_addr_npi=sm.dest_addr_npi,
            use_payload_tlv=not sm.short_message and Tag.MESSAGE_PAYLOAD in sm.tlvs,
            extra_tlvs=extra,
            fallback_system_id=fallback,
        )
        if not is_mo:
            self.last_mt_sender[destination] = session.system_id
        self.store.add(message)
        await session.send(pdu.response(Status.ESME_ROK, MessageIdResp(message.message_id)))
        self._spawn(self._deliver(message))

    async def _query(self, session: Session, pdu: Pdu) -> None:
        query = pdu.body
        assert isinstance(query, QuerySm)
        if not session.can_transmit:
            return await session.send(pdu.response(Status.ESME_RINVBNDSTS))
        message = self.store.get(query.message_id)
        if message is None or message.origin_system_id != session.system_id:
            return await session.send(pdu.response(Status.ESME_RQUERYFAIL))
        final_date = ""
        if message.done_time is not None:
            final_date = message.done_time.strftime("%y%m%d%H%M%S") + "000+"
        await session.send(
            pdu.response(
                Status.ESME_ROK,
                QuerySmResp(message.message_id, final_date, message.state, message.error_code & 0xFF),
            )
        )

    # ------------------------------------------------------------------ delivery

    def _receiver_for(self, message: Message) -> Session | None:
        receivers = [s for s in self.sessions if s.can_receive]
        if message.route_by_range:
            for s in receivers:
                if s.owns(message.destination_addr):
                    return s
        if message.fallback_system_id is not None:
            for s in receivers:
                if s.system_id == message.fallback_system_id:
                    return s
        return None

    async def _wait_for_bind(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._bind_event.wait(), max(seconds, 0.0))

    def _finish(self, message: Message, state: MessageState, error_code: int = 0, to: str | None = None) -> None:
        message.state = state
        message.error_code = error_code
        message.done_time = datetime.now(UTC)
        message.delivered_to = to
        suffix = f" to {to}" if to else ""
        self.store.event(
            message, f"{state.name} after {message.attempts} attempt(s){suffix} err={status_name(error_code)}"
        )

    async def _deliver(self, message: Message) -> None:
        """Deliver one message as deliver_sm, retrying until final; then the receipt."""
        while not self._stopping:
            remaining = (message.expires_at - datetime.now(UTC)).total_seconds()
            if remaining <= 0:
                self._finish(message, MessageState.EXPIRED)
                break
            receiver = self._receiver_for(message)
            if receiver is None:
                if not message.history or message.history[-1] != "no receiver bound: stored":
                    self.store.event(message, "no receiver bound: stored")
                await self._wait_for_bind(min(self.retry_interval, remaining))
                continue
            message.attempts += 1
            status = await self._attempt(receiver, message)
            if status == Status.ESME_ROK:
                self._finish(message, MessageState.DELIVERED, to=receiver.system_id)
                break
            if status is not None and status not in TEMPORARY_STATUSES:
                self._finish(message, MessageState.UNDELIVERABLE, status, to=receiver.system_id)
                break
            why = "no response" if status is None else status_name(status)
            self.store.event(message, f"attempt {message.attempts} to {receiver.system_id}: {why}; will retry")
            if receiver.closed:  # its receiver went away: retry as soon as one binds again
                await self._wait_for_bind(min(self.retry_interval, remaining))
            else:
                await asyncio.sleep(min(self.retry_interval, remaining))
        if message.final:
            self._maybe_receipt(message)

    async def _attempt(self, receiver: Session, message: Message) -> int | None:
        """One deliver_sm; the response status, or None for timeout / lost connection / nack."""
        tlvs = dict(message.extra_tlvs)
        short_message = message.payload
        if message.use_payload_tlv or len(message.payload) > 254:
            tlvs[Tag.MESSAGE_PAYLOAD] = message.payload
            short_message = b""
        body = ShortMessage(
            service_type=message.service_type,
            source_addr_ton=message.source_addr_ton,
            source_addr_npi=message.source_addr_npi,
            source_addr=message.source_addr,
            dest_addr_ton=message.dest_addr_ton,
            dest_addr_npi=message.dest_addr_npi,
            destination_addr=message.destination_addr,
            esm_class=message.esm_class,
            protocol_id=message.protocol_id,
            priority_flag=message.priority_flag,
            data_coding=message.data_coding,
            short_message=short_message,
            tlvs=tlvs,
        )
        self.store.event(message, f"deliver_sm attempt {message.attempts} to {receiver!r}")
        try:
            resp = await receiver.request(CommandId.DELIVER_SM, body, self.response_timeout)
        except (TimeoutError, ConnectionError):
            return None
        if resp.command_id == CommandId.GENERIC_NACK:
            return None
        return resp.status

    def _maybe_receipt(self, message: Message) -> None:
        wanted = message.registered_delivery & 0x03
        if message.kind == Kind.RECEIPT or wanted not in (1, 2):
            return
        if wanted == 2 and message.state == MessageState.DELIVERED:
            return
        now = datetime.now(UTC)
        receipt = Message(
            message_id=self.store.next_id(),
            kind=Kind.RECEIPT,
            source_addr=message.destination_addr,
            destination_addr=message.source_addr,
            payload=message.receipt_text().encode("latin-1", "replace"),
            data_coding=0,
            origin_system_id=self.system_id,
            submit_time=now,
            expires_at=now + self.default_validity,
            esm_class=0x04,
            source_addr_ton=message.dest_addr_ton,
            source_addr_npi=message.dest_addr_npi,
            dest_addr_ton=message.source_addr_ton,
            dest_addr_npi=message.source_addr_npi,
            extra_tlvs={
                Tag.RECEIPTED_MESSAGE_ID: message.message_id.encode() + b"\x00",
                Tag.MESSAGE_STATE: bytes((message.state,)),
            },
            fallback_system_id=message.origin_system_id,
            route_by_range=False,
            receipt_for=message.message_id,
        )
        self.store.add(receipt)
        self._spawn(self._deliver(receipt))


# ---------------------------------------------------------------------- running it


async def serve(host: str = "127.0.0.1", port: int = 2775, *, smsc: Smsc | None = None, **options: Any) -> None:
    """Run an SMSC until cancelled. ``options`` are :class:`Smsc` keyword arguments."""
    smsc = smsc or Smsc(**options)
    await smsc.start(host, port)
    try:
        await asyncio.Event().wait()
    finally:
        await smsc.stop()


class SmscThread:
    """An SMSC on its own event loop in a daemon thread (for blocking clients such as smpplib).

    >>> with SmscThread(throttle=5) as t:  # doctest: +SKIP
    ...     client = smpplib.client.Client("127.0.0.1", t.port)
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **options: Any) -> None:
        self.host = host
        self._requested_port = port
        self._options = options
        self.loop = asyncio.new_event_loop()
        self.smsc: Smsc | None = None
        self.port = 0
        self._thread = threading.Thread(target=self.loop.run_forever, name="smsc", daemon=True)

    def start(self) -> SmscThread:
        self._thread.start()

        async def boot() -> tuple[Smsc, int]:
            smsc = Smsc(**self._options)
            return smsc, await smsc.start(self.host, self._requested_port)

        self.smsc, self.port = asyncio.run_coroutine_threadsafe(boot(), self.loop).result(10)
        return self

    def stop(self) -> None:
        if self.smsc is not None:
            asyncio.run_coroutine_threadsafe(self.smsc.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def __enter__(self) -> SmscThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="avl smsc", description="SMPP 3.4 SMSC simulator")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=2775)
    p.add_argument(
        "--account",
        action="append",
        default=[],
        metavar="SYSTEM_ID:PASSWORD",
        help="ESME account (repeatable; default avl:avl-secret and fleet:fleet-secret)",
    )
    p.add_argument(
        "--barred",
        action="append",
        default=[],
        metavar="PREFIX",
        help="refuse destinations starting with PREFIX (repeatable)",
    )
    p.add_argument(
        "--route",
        action="append",
        default=[],
        metavar="REGEX",
        help="accept destinations matching REGEX even before any receiver has bound for them",
    )
    p.add_argument("--throttle", type=int, default=None, metavar="N", help="max submit_sm per second per bind")
    p.add_argument(
        "--validity",
        type=float,
        default=24 * 3600.0,
        metavar="SECONDS",
        help="default validity period when submit_sm carries none",
    )
    p.add_argument("--retry", type=float, default=30.0, metavar="SECONDS", help="retry interval")
    p.add_argument("--log-level", default="INFO")
    return p


def parse_accounts(specs: Sequence[str]) -> dict[str, str] | None:
    if not specs:
        return None
    accounts: dict[str, str] = {}
    for spec in specs:
        system_id, sep, password = spec.partition(":")
        if not sep or not system_id:
            raise SystemExit(f"--account wants SYSTEM_ID:PASSWORD, got {spec!r}")
        accounts[system_id] = password
    return accounts


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options: dict[str, Any] = {
        "accounts": parse_accounts(args.account),
        "barred": args.barred,
        "routes": args.route,
        "throttle": args.throttle,
        "default_validity": args.validity,
        "retry_interval": args.retry,
    }
    try:
        asyncio.run(_serve_until_signalled(args.host, args.port, options))
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        print(f"avl smsc: --port: cannot listen on {args.host}:{args.port} ({reason})", file=sys.stderr)
        return 2
    return 0


async def _serve_until_signalled(host: str, port: int, options: dict[str, Any]) -> None:
    """Serves until SIGINT or SIGTERM. Handlers are installed explicitly: a process started as a
    shell's background job inherits SIGINT ignored, and Python then raises no KeyboardInterrupt."""
    smsc = Smsc(**options)
    await smsc.start(host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await smsc.stop()


__all__ = ["BindMode", "Session", "Smsc", "SmscThread", "main", "serve"]
