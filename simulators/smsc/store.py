"""The SMSC's in-memory message store, SMPP time formats and delivery-receipt text."""

from __future__ import annotations

import itertools
import logging
import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from simulators.smsc.pdu import RECEIPT_STAT, MessageState, PduError, Status

log = logging.getLogger("simulators.smsc")

FINAL_STATES = frozenset(
    {
        MessageState.DELIVERED,
        MessageState.EXPIRED,
        MessageState.UNDELIVERABLE,
        MessageState.DELETED,
        MessageState.REJECTED,
    }
)


class Kind(StrEnum):
    MT = "MT"  # from an application ESME towards a handset (via the handset gateway)
    MO = "MO"  # from a handset (submitted by the gateway) towards an application ESME
    RECEIPT = "RECEIPT"  # a delivery receipt the SMSC generated


def decode_text(payload: bytes, data_coding: int) -> str:
    """Best-effort text of a message: UCS2 (8) as UTF-16BE, everything else as latin-1.

    (The GSM 7-bit default alphabet is treated as ASCII/latin-1: SMPP clients send it unpacked
    and the simulator never needs the handful of characters where the two differ.)
    """
    if data_coding == 8:
        return payload.decode("utf-16-be", "replace")
    return payload.decode("latin-1")


_ABSOLUTE = re.compile(r"^(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d)(\d{2})([+-])$")
_RELATIVE = re.compile(r"^(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d)(\d{2})R$")


def parse_smpp_time(value: str, now: datetime) -> datetime | None:
    """An SMPP 3.4 time (section 7.1.1): absolute ``YYMMDDhhmmsstnnp`` or relative ``...R``.

    Returns None for the empty string (\"use the SMSC default\"); raises PduError
    (ESME_RINVEXPIRY) for anything malformed.
    """
    if not value:
        return None
    m = _RELATIVE.match(value)
    if m:
        yy, mo, dd, hh, mi, ss = (int(g) for g in m.groups()[:6])
        return now + timedelta(days=yy * 365 + mo * 30 + dd, hours=hh, minutes=mi, seconds=ss)
    m = _ABSOLUTE.match(value)
    if m:
        yy, mo, dd, hh, mi, ss, tenths, quarters = (int(g) for g in m.groups()[:8])
        sign = 1 if m.group(9) == "+" else -1
        try:
            local = datetime(2000 + yy, mo, dd, hh, mi, ss, tenths * 100_000)
        except ValueError as exc:
            raise PduError(Status.ESME_RINVEXPIRY, f"bad time {value!r}: {exc}") from None
        # nn is the offset from UTC in quarter hours; p tells on which side.
        return (local - sign * timedelta(minutes=15 * quarters)).replace(tzinfo=UTC)
    raise PduError(Status.ESME_RINVEXPIRY, f"bad SMPP time {value!r}")


def receipt_date(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%y%m%d%H%M")


@dataclass
class Message:
    message_id: str
    kind: Kind
    source_addr: str
    destination_addr: str
    payload: bytes
    data_coding: int
    origin_system_id: str
    submit_time: datetime
    expires_at: datetime
    registered_delivery: int = 0
    esm_class: int = 0
    protocol_id: int = 0
    priority_flag: int = 0
    service_type: str = ""
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    dest_addr_ton: int = 0
    dest_addr_npi: int = 0
    # Whether the payload came in the message_payload TLV (forwarded the same way).
    use_payload_tlv: bool = False
    extra_tlvs: dict[int, bytes] = field(default_factory=dict)
    # Route to this ESME's receiver sessions when no address_range matches the destination
    # (the sender of a receipt; the last MT sender to a terminal for its MO replies).
    fallback_system_id: str | None = None
    # Receipts go to their system id only, never by address_range.
    route_by_range: bool = True
    state: MessageState = MessageState.ENROUTE
    error_code: int = 0
    attempts: int = 0
    done_time: datetime | None = None
    delivered_to: str | None = None
    receipt_for: str | None = None
    history: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return decode_text(self.payload, self.data_coding)

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    def receipt_text(self) -> str:
        done = self.done_time or self.submit_time
        return (
            f"id:{self.message_id} sub:001 dlvr:{1 if self.state == MessageState.DELIVERED else 0:03d} "
            f"submit date:{receipt_date(self.submit_time)} done date:{receipt_date(done)} "
            f"stat:{RECEIPT_STAT[self.state]} err:{self.error_code % 1000:03d} text:{self.text[:20]}"
        )


class MessageStore:
    """Every message the SMSC accepted, by message id, with its state and history.

    Written only from the SMSC's event loop; the lock makes snapshots safe to take from a test
    thread.
    """

    def __init__(self) -> None:
        self._messages: dict[str, Message] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def next_id(self) -> str:
        return f"{next(self._ids):010d}"

    def add(self, message: Message) -> None:
        with self._lock:
            self._messages[message.message_id] = message
        self.event(message, f"accepted {message.kind} {message.source_addr}->{message.destination_addr}")

    def event(self, message: Message, what: str) -> None:
        with self._lock:
            message.history.append(what)
        log.info("smsc msg %s: %s", message.message_id, what)

    def get(self, message_id: str) -> Message | None:
        with self._lock:
            return self._messages.get(message_id)

    def all(self) -> list[Message]:
        with self._lock:
            return list(self._messages.values())

    def by_state(self, state: MessageState) -> list[Message]:
        return [m for m in self.all() if m.state == state]

    def pending(self) -> list[Message]:
        return [m for m in self.all() if not m.final]
