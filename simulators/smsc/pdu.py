"""SMPP 3.4 PDU encoding and decoding (the subset an SMSC simulator needs).

A PDU is a 16-octet header (command_length, command_id, command_status, sequence_number,
all big-endian unsigned 32-bit) followed by a body of mandatory parameters and then optional
TLVs (tag u16, length u16, value). C-Octet strings end in a NUL; the short message is an
octet string whose length is given by the preceding ``sm_length`` octet.

Decoding is strict about structure (truncated fields, bad TLV framing) and lenient about the
spec's maximum string lengths, which several real clients exceed; every structural problem
raises :class:`PduError` carrying the status code the SMSC should answer with.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum

HEADER = struct.Struct(">IIII")
HEADER_LENGTH = HEADER.size
# A generous ceiling on any C-Octet string we accept (the spec's own maxima are 6..65 octets).
CSTRING_CAP = 256


class CommandId(IntEnum):
    GENERIC_NACK = 0x80000000
    BIND_RECEIVER = 0x00000001
    BIND_RECEIVER_RESP = 0x80000001
    BIND_TRANSMITTER = 0x00000002
    BIND_TRANSMITTER_RESP = 0x80000002
    QUERY_SM = 0x00000003
    QUERY_SM_RESP = 0x80000003
    SUBMIT_SM = 0x00000004
    SUBMIT_SM_RESP = 0x80000004
    DELIVER_SM = 0x00000005
    DELIVER_SM_RESP = 0x80000005
    UNBIND = 0x00000006
    UNBIND_RESP = 0x80000006
    REPLACE_SM = 0x00000007
    REPLACE_SM_RESP = 0x80000007
    CANCEL_SM = 0x00000008
    CANCEL_SM_RESP = 0x80000008
    BIND_TRANSCEIVER = 0x00000009
    BIND_TRANSCEIVER_RESP = 0x80000009
    OUTBIND = 0x0000000B
    ENQUIRE_LINK = 0x00000015
    ENQUIRE_LINK_RESP = 0x80000015
    SUBMIT_MULTI = 0x00000021
    SUBMIT_MULTI_RESP = 0x80000021
    ALERT_NOTIFICATION = 0x00000102
    DATA_SM = 0x00000103
    DATA_SM_RESP = 0x80000103


RESPONSE_BIT = 0x80000000


class Status(IntEnum):
    ESME_ROK = 0x00
    ESME_RINVMSGLEN = 0x01
    ESME_RINVCMDLEN = 0x02
    ESME_RINVCMDID = 0x03
    ESME_RINVBNDSTS = 0x04
    ESME_RALYBND = 0x05
    ESME_RINVPRTFLG = 0x06
    ESME_RINVREGDLVFLG = 0x07
    ESME_RSYSERR = 0x08
    ESME_RINVSRCADR = 0x0A
    ESME_RINVDSTADR = 0x0B
    ESME_RINVMSGID = 0x0C
    ESME_RBINDFAIL = 0x0D
    ESME_RINVPASWD = 0x0E
    ESME_RINVSYSID = 0x0F
    ESME_RCANCELFAIL = 0x11
    ESME_RREPLACEFAIL = 0x13
    ESME_RMSGQFUL = 0x14
    ESME_RINVSERTYP = 0x15
    ESME_RINVNUMDESTS = 0x33
    ESME_RINVDLNAME = 0x34
    ESME_RINVDESTFLAG = 0x40
    ESME_RINVSUBREP = 0x42
    ESME_RINVESMCLASS = 0x43
    ESME_RCNTSUBDL = 0x44
    ESME_RSUBMITFAIL = 0x45
    ESME_RINVSRCTON = 0x48
    ESME_RINVSRCNPI = 0x49
    ESME_RINVDSTTON = 0x50
    ESME_RINVDSTNPI = 0x51
    ESME_RINVSYSTYP = 0x53
    ESME_RINVREPFLAG = 0x54
    ESME_RINVNUMMSGS = 0x55
    ESME_RTHROTTLED = 0x58
    ESME_RINVSCHED = 0x61
    ESME_RINVEXPIRY = 0x62
    ESME_RINVDFTMSGID = 0x63
    ESME_RX_T_APPN = 0x64
    ESME_RX_P_APPN = 0x65
    ESME_RX_R_APPN = 0x66
    ESME_RQUERYFAIL = 0x67
    ESME_RINVOPTPARSTREAM = 0xC0
    ESME_ROPTPARNOTALLWD = 0xC1
    ESME_RINVPARLEN = 0xC2
    ESME_RMISSINGOPTPARAM = 0xC3
    ESME_RINVOPTPARAMVAL = 0xC4
    ESME_RDELIVERYFAILURE = 0xFE
    ESME_RUNKNOWNERR = 0xFF


class Tag(IntEnum):
    """Optional parameter (TLV) tags used here."""

    DEST_ADDR_SUBUNIT = 0x0005
    SOURCE_PORT = 0x020A
    DESTINATION_PORT = 0x020B
    SAR_MSG_REF_NUM = 0x020C
    SAR_TOTAL_SEGMENTS = 0x020E
    SAR_SEGMENT_SEQNUM = 0x020F
    SC_INTERFACE_VERSION = 0x0210
    USER_MESSAGE_REFERENCE = 0x0204
    RECEIPTED_MESSAGE_ID = 0x001E
    MESSAGE_PAYLOAD = 0x0424
    MESSAGE_STATE = 0x0427
    NETWORK_ERROR_CODE = 0x0423


class MessageState(IntEnum):
    """message_state values (SMPP 3.4 section 5.2.28)."""

    ENROUTE = 1
    DELIVERED = 2
    EXPIRED = 3
    DELETED = 4
    UNDELIVERABLE = 5
    ACCEPTED = 6
    UNKNOWN = 7
    REJECTED = 8


# The 7-character stat: words of the delivery receipt text (SMPP 3.4 appendix B).
RECEIPT_STAT = {
    MessageState.ENROUTE: "ENROUTE",
    MessageState.DELIVERED: "DELIVRD",
    MessageState.EXPIRED: "EXPIRED",
    MessageState.DELETED: "DELETED",
    MessageState.UNDELIVERABLE: "UNDELIV",
    MessageState.ACCEPTED: "ACCEPTD",
    MessageState.UNKNOWN: "UNKNOWN",
    MessageState.REJECTED: "REJECTD",
}


class PduError(Exception):
    """A PDU could not be decoded; ``status`` is the command_status to answer with."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(f"{status.name}: {message}")
        self.status = status


def status_name(status: int) -> str:
    try:
        return Status(status).name
    except ValueError:
        return f"0x{status:08X}"


def command_name(command_id: int) -> str:
    try:
        return CommandId(command_id).name.lower()
    except ValueError:
        return f"0x{command_id:08X}"


# --------------------------------------------------------------------------- primitives


class _Reader:
    """Sequential reader over a PDU body; every overrun becomes a PduError."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def u8(self, name: str) -> int:
        if self.pos >= len(self.data):
            raise PduError(Status.ESME_RINVCMDLEN, f"body ends before {name}")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def cstring(self, name: str, bad: Status = Status.ESME_RINVPARLEN) -> str:
        end = self.data.find(b"\x00", self.pos, self.pos + CSTRING_CAP + 1)
        if end < 0:
            if self.data.find(b"\x00", self.pos) < 0:
                raise PduError(Status.ESME_RINVCMDLEN, f"{name} is not NUL-terminated")
            raise PduError(bad, f"{name} is longer than {CSTRING_CAP} octets")
        raw = self.data[self.pos : end]
        self.pos = end + 1
        return raw.decode("latin-1")

    def octets(self, length: int, name: str) -> bytes:
        if self.pos + length > len(self.data):
            raise PduError(Status.ESME_RINVCMDLEN, f"body ends inside {name}")
        raw = self.data[self.pos : self.pos + length]
        self.pos += length
        return raw

    def tlvs(self) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        while self.pos < len(self.data):
            if self.remaining() < 4:
                raise PduError(Status.ESME_RINVOPTPARSTREAM, "truncated TLV header")
            tag, length = struct.unpack_from(">HH", self.data, self.pos)
            self.pos += 4
            if self.pos + length > len(self.data):
                raise PduError(Status.ESME_RINVOPTPARSTREAM, f"TLV 0x{tag:04X} overruns the PDU")
            out[tag] = self.data[self.pos : self.pos + length]
            self.pos += length
        return out


def _cstr(value: str) -> bytes:
    return value.encode("latin-1", "replace") + b"\x00"


def encode_tlvs(tlvs: dict[int, bytes]) -> bytes:
    return b"".join(struct.pack(">HH", tag, len(value)) + value for tag, value in tlvs.items())


# --------------------------------------------------------------------------- bodies


@dataclass
class Bind:
    """bind_transmitter / bind_receiver / bind_transceiver."""

    system_id: str = ""
    password: str = ""
    system_type: str = ""
    interface_version: int = 0x34
    addr_ton: int = 0
    addr_npi: int = 0
    address_range: str = ""

    def encode(self) -> bytes:
        return (
            _cstr(self.system_id)
            + _cstr(self.password)
            + _cstr(self.system_type)
            + bytes((self.interface_version, self.addr_ton, self.addr_npi))
            + _cstr(self.address_range)
        )

    @classmethod
    def decode(cls, data: bytes) -> Bind:
        r = _Reader(data)
        system_id = r.cstring("system_id", Status.ESME_RINVSYSID)
        password = r.cstring("password", Status.ESME_RINVPASWD)
        system_type = r.cstring("system_type", Status.ESME_RINVSYSTYP)
        version = r.u8("interface_version")
        ton = r.u8("addr_ton")
        npi = r.u8("addr_npi")
        address_range = r.cstring("address_range", Status.ESME_RBINDFAIL)
        return cls(system_id, password, system_type, version, ton, npi, address_range)


@dataclass
class BindResp:
    system_id: str = ""
    tlvs: dict[int, bytes] = field(default_factory=dict)

    def encode(self) -> bytes:
        return _cstr(self.system_id) + encode_tlvs(self.tlvs)

    @classmethod
    def decode(cls, data: bytes) -> BindResp:
        r = _Reader(data)
        system_id = r.cstring("system_id")
        return cls(system_id, r.tlvs())


@dataclass
class ShortMessage:
    """The common body of submit_sm and deliver_sm (identical layouts in SMPP 3.4)."""

    service_type: str = ""
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    source_addr: str = ""
    dest_addr_ton: int = 0
    dest_addr_npi: int = 0
    destination_addr: str = ""
    esm_class: int = 0
    protocol_id: int = 0
    priority_flag: int = 0
    schedule_delivery_time: str = ""
    validity_period: str = ""
    registered_delivery: int = 0
    replace_if_present_flag: int = 0
    data_coding: int = 0
    sm_default_msg_id: int = 0
    short_message: bytes = b""
    tlvs: dict[int, bytes] = field(default_factory=dict)

    def encode(self) -> bytes:
        if len(self.short_message) > 254:
            raise ValueError("short_message longer than 254 octets: use the message_payload TLV")
        return (
            _cstr(self.service_type)
            + bytes((self.source_addr_ton, self.source_addr_npi))
            + _cstr(self.source_addr)
            + bytes((self.dest_addr_ton, self.dest_addr_npi))
            + _cstr(self.destination_addr)
            + bytes((self.esm_class, self.protocol_id, self.priority_flag))
            + _cstr(self.schedule_delivery_time)
            + _cstr(self.validity_period)
            + bytes(
                (
                    self.registered_delivery,
                    self.replace_if_present_flag,
                    self.data_coding,
                    self.sm_default_msg_id,
                    len(self.short_message),
                )
            )
            + self.short_message
            + encode_tlvs(self.tlvs)
        )

    @classmethod
    def decode(cls, data: bytes) -> ShortMessage:
        r = _Reader(data)
        m = cls()
        m.service_type = r.cstring("service_type", Status.ESME_RINVSERTYP)
        m.source_addr_ton = r.u8("source_addr_ton")
        m.source_addr_npi = r.u8("source_addr_npi")
        m.source_addr = r.cstring("source_addr", Status.ESME_RINVSRCADR)
        m.dest_addr_ton = r.u8("dest_addr_ton")
        m.dest_addr_npi = r.u8("dest_addr_npi")
        m.destination_addr = r.cstring("destination_addr", Status.ESME_RINVDSTADR)
        m.esm_class = r.u8("esm_class")
        m.protocol_id = r.u8("protocol_id")
        m.priority_flag = r.u8("priority_flag")
        m.schedule_delivery_time = r.cstring("schedule_delivery_time", Status.ESME_RINVSCHED)
        m.validity_period = r.cstring("validity_period", Status.ESME_RINVEXPIRY)
        m.registered_delivery = r.u8("registered_delivery")
        m.replace_if_present_flag = r.u8("replace_if_present_flag")
        m.data_coding = r.u8("data_coding")
        m.sm_default_msg_id = r.u8("sm_default_msg_id")
        sm_length = r.u8("sm_length")
        m.short_message = r.octets(sm_length, "short_message")
        m.tlvs = r.tlvs()
        return m

    @property
    def payload(self) -> bytes:
        """The message octets, from short_message or else the message_payload TLV."""
        return self.short_message or self.tlvs.get(Tag.MESSAGE_PAYLOAD, b"")


@dataclass
class MessageIdResp:
    """submit_sm_resp / deliver_sm_resp / data_sm_resp: a message_id (empty for deliver_sm_resp)."""

    message_id: str = ""

    def encode(self) -> bytes:
        return _cstr(self.message_id)

    @classmethod
    def decode(cls, data: bytes) -> MessageIdResp:
        r = _Reader(data)
        return cls(r.cstring("message_id", Status.ESME_RINVMSGID))


@dataclass
class QuerySm:
    message_id: str = ""
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    source_addr: str = ""

    def encode(self) -> bytes:
        return _cstr(self.message_id) + bytes((self.source_addr_ton, self.source_addr_npi)) + _cstr(self.source_addr)

    @classmethod
    def decode(cls, data: bytes) -> QuerySm:
        r = _Reader(data)
        message_id = r.cstring("message_id", Status.ESME_RINVMSGID)
        ton = r.u8("source_addr_ton")
        npi = r.u8("source_addr_npi")
        return cls(message_id, ton, npi, r.cstring("source_addr", Status.ESME_RINVSRCADR))


@dataclass
class QuerySmResp:
    message_id: str = ""
    final_date: str = ""
    message_state: int = 0
    error_code: int = 0

    def encode(self) -> bytes:
        return _cstr(self.message_id) + _cstr(self.final_date) + bytes((self.message_state, self.error_code))

    @classmethod
    def decode(cls, data: bytes) -> QuerySmResp:
        r = _Reader(data)
        message_id = r.cstring("message_id")
        final_date = r.cstring("final_date")
        return cls(message_id, final_date, r.u8("message_state"), r.u8("error_code"))


Body = Bind | BindResp | ShortMessage | MessageIdResp | QuerySm | QuerySmResp

BIND_COMMANDS = (CommandId.BIND_RECEIVER, CommandId.BIND_TRANSMITTER, CommandId.BIND_TRANSCEIVER)

_BODY_TYPES: dict[
    int, type[Bind] | type[BindResp] | type[ShortMessage] | type[MessageIdResp] | type[QuerySm] | type[QuerySmResp]
] = {
    CommandId.BIND_RECEIVER: Bind,
    CommandId.BIND_TRANSMITTER: Bind,
    CommandId.BIND_TRANSCEIVER: Bind,
    CommandId.BIND_RECEIVER_RESP: BindResp,
    CommandId.BIND_TRANSMITTER_RESP: BindResp,
    CommandId.BIND_TRANSCEIVER_RESP: BindResp,
    CommandId.SUBMIT_SM: ShortMessage,
    CommandId.DELIVER_SM: ShortMessage,
    CommandId.SUBMIT_SM_RESP: MessageIdResp,
    CommandId.DELIVER_SM_RESP: MessageIdResp,
    CommandId.DATA_SM_RESP: MessageIdResp,
    CommandId.QUERY_SM: QuerySm,
    CommandId.QUERY_SM_RESP: QuerySmResp,
}

# Commands with no body at all.
_EMPTY = {
    CommandId.GENERIC_NACK,
    CommandId.UNBIND,
    CommandId.UNBIND_RESP,
    CommandId.ENQUIRE_LINK,
    CommandId.ENQUIRE_LINK_RESP,
    CommandId.CANCEL_SM_RESP,
    CommandId.REPLACE_SM_RESP,
}


@dataclass
class Pdu:
    command_id: int
    sequence: int
    status: int = 0
    body: Body | None = None
    # The undecoded body, kept for commands this module does not model (e.g. data_sm).
    raw_body: bytes = b""

    @property
    def is_response(self) -> bool:
        return bool(self.command_id & RESPONSE_BIT)

    @property
    def name(self) -> str:
        return command_name(self.command_id)

    def encode(self) -> bytes:
        body = self.body.encode() if self.body is not None else self.raw_body
        return HEADER.pack(HEADER_LENGTH + len(body), self.command_id, self.status, self.sequence) + body

    def response(self, status: int = Status.ESME_ROK, body: Body | None = None) -> Pdu:
        """The response to this request (same sequence number)."""
        return Pdu(self.command_id | RESPONSE_BIT, self.sequence, int(status), body)


def decode_header(data: bytes) -> tuple[int, int, int, int]:
    """(command_length, command_id, command_status, sequence_number) of the first 16 octets."""
    if len(data) < HEADER_LENGTH:
        raise PduError(Status.ESME_RINVCMDLEN, "shorter than a PDU header")
    length, command_id, status, sequence = HEADER.unpack_from(data)
    return length, command_id, status, sequence


def decode(data: bytes) -> Pdu:
    """Decode one complete PDU (header included).

    Unknown command ids raise PduError(ESME_RINVCMDID); the caller still knows the sequence
    number from :func:`decode_header` for the generic_nack.
    """
    length, command_id, status, sequence = decode_header(data)
    if length != len(data):
        raise PduError(Status.ESME_RINVCMDLEN, f"command_length {length} but {len(data)} octets")
    try:
        cid = CommandId(command_id)
    except ValueError:
        raise PduError(Status.ESME_RINVCMDID, f"unknown command_id 0x{command_id:08X}") from None
    body_bytes = data[HEADER_LENGTH:]
    pdu = Pdu(cid, sequence, status)
    body_type = _BODY_TYPES.get(cid)
    if body_type is not None:
        # Error responses may legitimately carry no body.
        if body_bytes or not (cid & RESPONSE_BIT):
            pdu.body = body_type.decode(body_bytes)
    elif cid in _EMPTY:
        if body_bytes:
            raise PduError(Status.ESME_RINVCMDLEN, f"{pdu.name} must have no body")
    else:
        pdu.raw_body = body_bytes
    return pdu
