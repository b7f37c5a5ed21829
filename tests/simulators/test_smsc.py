"""The SMPP 3.4 SMSC simulator over real TCP: smpplib as the ESMEs, Net::SMPP (Perl) for interop."""

from __future__ import annotations

import contextlib
import logging
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import smpplib.client
import smpplib.consts
import smpplib.exceptions
import smpplib.smpp

from simulators.smsc import pdu as P
from simulators.smsc.server import SmscThread, build_parser, parse_accounts
from simulators.smsc.store import Kind, parse_smpp_time

GATEWAY_RANGE = r"^58414\d+$"
TERMINAL = "584140000001"
SERVER_NUMBER = "1234"
PERL_ESME = Path(__file__).parent / "perl" / "esme.pl"
RECEIPT_RE = re.compile(
    r"^id:(?P<id>\S+) sub:001 dlvr:(?P<dlvr>\d{3}) submit date:\d{10} done date:\d{10} "
    r"stat:(?P<stat>[A-Z]{7}) err:(?P<err>\d{3}) text:(?P<text>.*)$"
)

Answer = int | Callable[[Any], int]


class Esme(smpplib.client.Client):  # type: ignore[misc]
    """smpplib client that records every PDU it reads and answers deliver_sm with ``answer``."""

    def __init__(self, port: int, answer: Answer = smpplib.consts.SMPP_ESME_ROK) -> None:
        # Request/response calls (bind, submit) wait up to 5 s for the SMSC on a busy machine;
        # pump() polls with short reads instead.
        super().__init__("127.0.0.1", port, timeout=5.0, allow_unknown_opt_params=True)
        self.received: list[Any] = []
        self.answer = answer
        self.set_message_received_handler(self._on_deliver)
        self.set_message_sent_handler(lambda pdu, **kw: None)
        self.set_error_pdu_handler(lambda pdu: None)

    def read_pdu(self) -> Any:
        pdu = super().read_pdu()
        self.received.append(pdu)
        return pdu

    def _on_deliver(self, pdu: Any, **kw: Any) -> int:
        return self.answer(pdu) if callable(self.answer) else self.answer

    def pump(self, until: Callable[[], bool], timeout: float = 5.0) -> None:
        """Read and handle PDUs until ``until()`` holds."""
        deadline = time.monotonic() + timeout
        while not until():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; received {[p.command for p in self.received]}")
            self._socket.settimeout(0.1)
            try:
                self.read_once(auto_send_enquire_link=False)
            except TimeoutError:
                pass
            finally:
                self._socket.settimeout(5.0)

    def pump_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        self.pump(lambda: time.monotonic() > end, timeout=seconds + 1)

    def of(self, command: str) -> list[Any]:
        return [p for p in self.received if p.command == command]

    def delivers(self) -> list[Any]:
        return [p for p in self.of("deliver_sm") if not p.esm_class & 0x04]

    def receipts(self) -> list[Any]:
        return [p for p in self.of("deliver_sm") if p.esm_class & 0x04]

    def wait_for(self, command: str, count: int = 1, timeout: float = 5.0) -> list[Any]:
        self.pump(lambda: len(self.of(command)) >= count, timeout)
        return self.of(command)

    def submit(self, **kwargs: Any) -> Any:
        """submit_sm and wait for its response."""
        before = len(self.of("submit_sm_resp"))
        kwargs.setdefault("source_addr", SERVER_NUMBER)
        self.send_message(**kwargs)
        return self.wait_for("submit_sm_resp", before + 1)[-1]

    def close(self) -> None:
        if self._socket is not None:
            self.disconnect()


@pytest.fixture
def smsc() -> Iterator[SmscThread]:
    with SmscThread(default_validity=2.0, retry_interval=0.2, response_timeout=1.0, barred=["58499"]) as t:
        yield t


@pytest.fixture
def clients() -> Iterator[list[Esme]]:
    made: list[Esme] = []
    yield made
    for c in made:
        c.close()


def connect(smsc: SmscThread, clients: list[Esme], answer: Answer = 0) -> Esme:
    c = Esme(smsc.port, answer)
    c.connect()
    clients.append(c)
    return c


def bind_server(smsc: SmscThread, clients: list[Esme], mode: str = "transceiver", **kw: Any) -> Esme:
    c = connect(smsc, clients)
    getattr(c, f"bind_{mode}")(system_id="avl", password="avl-secret", **kw)
    return c


def bind_gateway(smsc: SmscThread, clients: list[Esme], answer: Answer = 0) -> Esme:
    c = connect(smsc, clients, answer)
    c.bind_transceiver(system_id="fleet", password="fleet-secret", address_range=GATEWAY_RANGE)
    return c


def wait_state(smsc: SmscThread, message_id: str, state: P.MessageState, timeout: float = 5.0) -> None:
    assert smsc.smsc is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = smsc.smsc.store.get(message_id)
        if m is not None and m.state == state:
            return
        time.sleep(0.02)
    raise AssertionError(f"{message_id} not {state.name}: {smsc.smsc.store.get(message_id)}")


def parse_receipt(pdu: Any) -> re.Match[str]:
    m = RECEIPT_RE.match(pdu.short_message.decode())
    assert m, pdu.short_message
    return m


# ---------------------------------------------------------------------- binds and session


def test_bind_enquire_link_unbind(smsc: SmscThread, clients: list[Esme]) -> None:
    c = connect(smsc, clients)
    resp = c.bind_transceiver(system_id="avl", password="avl-secret")
    assert resp.status == 0 and resp.system_id == b"AVLSMSC"
    c.send_pdu(smpplib.smpp.make_pdu("enquire_link", client=c))
    assert c.wait_for("enquire_link_resp")[0].status == 0
    assert c.unbind().status == 0
    with pytest.raises(smpplib.exceptions.ConnectionError):  # the SMSC closes after unbind_resp
        for _ in range(20):
            try:
                c.read_pdu()
            except TimeoutError:
                pass


@pytest.mark.parametrize(
    ("system_id", "password", "status"),
    [
        ("avl", "wrong", smpplib.consts.SMPP_ESME_RINVPASWD),
        ("nobody", "avl-secret", smpplib.consts.SMPP_ESME_RINVSYSID),
    ],
)
def test_bad_binds(smsc: SmscThread, clients: list[Esme], system_id: str, password: str, status: int) -> None:
    c = connect(smsc, clients)
    with pytest.raises(smpplib.exceptions.PDUError) as err:
        c.bind_transceiver(system_id=system_id, password=password)
    assert err.value.args[1] == status
    # The connection survives a refused bind: a correct one then works.
    assert c.bind_transceiver(system_id="avl", password="avl-secret").status == 0


def test_bind_state_rules(smsc: SmscThread, clients: list[Esme]) -> None:
    c = connect(smsc, clients)
    c.state = smpplib.consts.SMPP_CLIENT_STATE_BOUND_TRX  # let smpplib send before binding
    assert c.submit(destination_addr=TERMINAL, short_message=b"x").status == smpplib.consts.SMPP_ESME_RINVBNDSTS
    c.state = smpplib.consts.SMPP_CLIENT_STATE_OPEN
    c.bind_transceiver(system_id="avl", password="avl-secret")
    c.state = smpplib.consts.SMPP_CLIENT_STATE_OPEN  # smpplib itself refuses to bind twice
    with pytest.raises(smpplib.exceptions.PDUError) as err:
        c.bind_transceiver(system_id="avl", password="avl-secret")
    assert err.value.args[1] == smpplib.consts.SMPP_ESME_RALYBND

    rx = bind_server(smsc, clients, mode="receiver")
    rx.state = smpplib.consts.SMPP_CLIENT_STATE_BOUND_TRX
    assert rx.submit(destination_addr=TERMINAL, short_message=b"x").status == smpplib.consts.SMPP_ESME_RINVBNDSTS
    bad = connect(smsc, clients)
    with pytest.raises(smpplib.exceptions.PDUError) as err:
        bad.bind_transceiver(system_id="fleet", password="fleet-secret", address_range="([")
    assert err.value.args[1] == smpplib.consts.SMPP_ESME_RBINDFAIL


# ---------------------------------------------------------------------- MT, receipts, MO


def test_mt_delivered_receipt_and_mo_reply(smsc: SmscThread, clients: list[Esme]) -> None:
    avl = bind_server(smsc, clients)
    gw = bind_gateway(smsc, clients)
    resp = avl.submit(destination_addr=TERMINAL, short_message=b"*POS? please report now", registered_delivery=1)
    assert resp.status == 0
    msg_id = resp.message_id.decode()

    gw.wait_for("deliver_sm")
    mt = gw.delivers()[0]
    assert (mt.source_addr, mt.destination_addr, mt.esm_class) == (SERVER_NUMBER.encode(), TERMINAL.encode(), 0)
    assert mt.short_message == b"*POS? please report now"

    receipt = avl.wait_for("deliver_sm")[0]
    assert receipt.esm_class == 0x04
    m = parse_receipt(receipt)
    assert (m["id"], m["stat"], m["dlvr"], m["err"]) == (msg_id, "DELIVRD", "001", "000")
    assert m["text"] == "*POS? please report "  # first 20 characters
    assert receipt.receipted_message_id == msg_id.encode()
    assert receipt.message_state == P.MessageState.DELIVERED
    assert (receipt.source_addr, receipt.destination_addr) == (TERMINAL.encode(), SERVER_NUMBER.encode())

    # The terminal answers: the gateway submits from the MSISDN; avl (no address_range) gets it
    # because it was the last to send that terminal an MT.
    reply = gw.submit(source_addr=TERMINAL, destination_addr=SERVER_NUMBER, short_message=b"POS 10.5,-66.9")
    assert reply.status == 0
    avl.wait_for("deliver_sm", 2)
    mo = avl.delivers()[0]
    assert (mo.source_addr, mo.destination_addr, mo.esm_class) == (TERMINAL.encode(), SERVER_NUMBER.encode(), 0)
    assert mo.short_message == b"POS 10.5,-66.9"

    assert smsc.smsc is not None
    store = smsc.smsc.store
    wait_state(smsc, reply.message_id.decode(), P.MessageState.DELIVERED)
    assert store.get(msg_id).state == P.MessageState.DELIVERED  # type: ignore[union-attr]
    assert store.get(reply.message_id.decode()).kind == Kind.MO  # type: ignore[union-attr]


def test_permanent_error_gives_undeliv(smsc: SmscThread, clients: list[Esme]) -> None:
    avl = bind_server(smsc, clients)
    gw = bind_gateway(smsc, clients, answer=smpplib.consts.SMPP_ESME_RINVDSTADR)  # SIM suspended
    resp = avl.submit(destination_addr=TERMINAL, short_message=b"hello", registered_delivery=1)
    gw.wait_for("deliver_sm")
    m = parse_receipt(avl.wait_for("deliver_sm")[0])
    assert (m["id"], m["stat"], m["dlvr"], m["err"]) == (resp.message_id.decode(), "UNDELIV", "000", "011")
    assert avl.receipts()[0].message_state == P.MessageState.UNDELIVERABLE


def test_temporary_error_retries_until_expired(smsc: SmscThread, clients: list[Esme]) -> None:
    avl = bind_server(smsc, clients)
    gw = bind_gateway(smsc, clients, answer=0x64)  # ESME_RX_T_APPN: handset powered off
    resp = avl.submit(destination_addr=TERMINAL, short_message=b"are you there", registered_delivery=1)
    gw.pump_for(1.0)
    assert len(gw.delivers()) >= 3  # retried every 0.2 s
    m = parse_receipt(avl.wait_for("deliver_sm", timeout=5)[0])
    assert (m["id"], m["stat"]) == (resp.message_id.decode(), "EXPIRED")
    assert smsc.smsc is not None
    assert smsc.smsc.store.get(m["id"]).attempts >= 3  # type: ignore[union-attr]


def test_no_gateway_bound_stores_then_delivers(smsc: SmscThread, clients: list[Esme]) -> None:
    avl = bind_server(smsc, clients)
    gw = bind_gateway(smsc, clients)
    gw.unbind()  # the fleet goes away; its address_range stays known
    resp = avl.submit(destination_addr=TERMINAL, short_message=b"queued", registered_delivery=1)
    assert resp.status == 0
    time.sleep(0.5)
    assert smsc.smsc is not None
    assert smsc.smsc.store.get(resp.message_id.decode()).state == P.MessageState.ENROUTE  # type: ignore[union-attr]
    gw2 = bind_gateway(smsc, clients)
    gw2.wait_for("deliver_sm")
    assert gw2.delivers()[0].short_message == b"queued"
    assert parse_receipt(avl.wait_for("deliver_sm")[0])["stat"] == "DELIVRD"


def test_validity_period_expiry_without_gateway(smsc: SmscThread, clients: list[Esme]) -> None:
    avl = bind_server(smsc, clients)
    bind_gateway(smsc, clients).unbind()
    # Relative validity of one second (SMPP time format YYMMDDhhmmsstnnR).
    resp = avl.submit(
        destination_addr=TERMINAL, short_message=b"x", registered_delivery=1, validity_period="000000000001000R"
    )
    m = parse_receipt(avl.wait_for("deliver_sm", timeout=4)[0])
    assert (m["id"], m["stat"]) == (resp.message_id.decode(), "EXPIRED")
    bad = avl.submit(destination_addr=TERMINAL, short_message=b"x", validity_period="tomorrow")
    assert bad.status == smpplib.consts.SMPP_ESME_RINVEXPIRY


def test_unroutable_and_barred_destinations(smsc: SmscThread, clients: list[Esme]) -> None:
    avl = bind_server(smsc, clients)
    bind_gateway(smsc, clients)
    for destination in ("7770001", "584990000001", "not-a-number"):
        resp = avl.submit(destination_addr=destination, short_message=b"x")
        assert resp.status == smpplib.consts.SMPP_ESME_RINVDSTADR, destination
    assert smsc.smsc is not None and smsc.smsc.store.all() == []


def test_throttling(clients: list[Esme]) -> None:
    with SmscThread(throttle=3, routes=[GATEWAY_RANGE]) as t:
        avl = bind_server(t, clients)
        statuses = [avl.submit(destination_addr=TERMINAL, short_message=b"x").status for _ in range(5)]
        assert statuses[:3] == [0, 0, 0]
        assert statuses[3:] == [smpplib.consts.SMPP_ESME_RTHROTTLED] * 2
        time.sleep(1.05)
        assert avl.submit(destination_addr=TERMINAL, short_message=b"x").status == 0
        for c in clients:
            c.close()
        clients.clear()


def test_transmitter_gets_receipt_only_once_a_receiver_binds(smsc: SmscThread, clients: list[Esme]) -> None:
    tx = bind_server(smsc, clients, mode="transmitter")
    gw = bind_gateway(smsc, clients)
    resp = tx.submit(destination_addr=TERMINAL, short_message=b"hi", registered_delivery=1)
    gw.wait_for("deliver_sm")
    tx.pump_for(0.4)
    assert tx.of("deliver_sm") == []
    rx = bind_server(smsc, clients, mode="receiver")
    assert parse_receipt(rx.wait_for("deliver_sm")[0])["id"] == resp.message_id.decode()


def test_mo_by_address_range_and_store_and_forward(smsc: SmscThread, clients: list[Esme]) -> None:
    gw = bind_gateway(smsc, clients)
    # Nobody has bound for 1234 yet and nobody sent this terminal an MT: unroutable.
    assert gw.submit(source_addr=TERMINAL, destination_addr=SERVER_NUMBER, short_message=b"x").status == (
        smpplib.consts.SMPP_ESME_RINVDSTADR
    )
    avl = bind_server(smsc, clients, address_range=f"^{SERVER_NUMBER}$")
    avl.unbind()
    resp = gw.submit(
        source_addr=TERMINAL, destination_addr=SERVER_NUMBER, short_message=b"ALARM panic button", registered_delivery=1
    )
    assert resp.status == 0
    time.sleep(0.3)
    avl2 = bind_server(smsc, clients, address_range=f"^{SERVER_NUMBER}$")
    mo = avl2.wait_for("deliver_sm")[0]
    assert (mo.source_addr, mo.short_message) == (TERMINAL.encode(), b"ALARM panic button")
    # The gateway asked for a receipt on its MO.
    assert parse_receipt(gw.wait_for("deliver_sm")[0])["stat"] == "DELIVRD"


def test_ucs2_and_message_payload(smsc: SmscThread, clients: list[Esme]) -> None:
    avl = bind_server(smsc, clients)
    gw = bind_gateway(smsc, clients)
    text = "Ubicación ✓"
    resp = avl.submit(destination_addr=TERMINAL, short_message=text.encode("utf-16-be"), data_coding=8)
    gw.wait_for("deliver_sm")
    assert gw.delivers()[0].data_coding == 8
    assert gw.delivers()[0].short_message.decode("utf-16-be") == text
    assert smsc.smsc is not None
    assert smsc.smsc.store.get(resp.message_id.decode()).text == text  # type: ignore[union-attr]

    long_text = b"A" * 200 + b"B" * 50
    avl.submit(destination_addr=TERMINAL, message_payload=long_text)
    gw.wait_for("deliver_sm", 2)
    second = gw.delivers()[1]
    assert second.message_payload == long_text and not second.short_message


def test_query_sm(smsc: SmscThread, clients: list[Esme]) -> None:
    avl = bind_server(smsc, clients)
    gw = bind_gateway(smsc, clients)
    resp = avl.submit(destination_addr=TERMINAL, short_message=b"q")
    gw.wait_for("deliver_sm")
    wait_state(smsc, resp.message_id.decode(), P.MessageState.DELIVERED)
    avl.query_message(message_id=resp.message_id.decode(), source_addr=SERVER_NUMBER)
    q = avl.wait_for("query_sm_resp")[0]
    assert q.status == 0 and q.message_state == P.MessageState.DELIVERED
    avl.query_message(message_id="9999999999", source_addr=SERVER_NUMBER)
    assert avl.wait_for("query_sm_resp", 2)[1].status == smpplib.consts.SMPP_ESME_RQUERYFAIL


# ---------------------------------------------------------------------- garbage


def _raw(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=3)
    return s


def _read_pdu(s: socket.socket) -> tuple[int, int, int, bytes]:
    head = b""
    while len(head) < 16:
        chunk = s.recv(16 - len(head))
        if not chunk:
            raise ConnectionError("closed")
        head += chunk
    length, cid, status, seq = struct.unpack(">IIII", head)
    body = b""
    while len(body) < length - 16:
        body += s.recv(length - 16 - len(body))
    return cid, status, seq, body


def test_garbage_is_nacked_and_server_keeps_serving(smsc: SmscThread, clients: list[Esme]) -> None:
    avl = bind_server(smsc, clients)

    with _raw(smsc.port) as s:  # not SMPP at all: absurd command_length -> generic_nack, close
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_pdu(s)[:2] == (P.CommandId.GENERIC_NACK, P.Status.ESME_RINVCMDLEN)
        assert s.recv(1) == b""

    with _raw(smsc.port) as s:
        s.sendall(struct.pack(">IIII", 16, 0x00000777, 0, 41))  # unknown command id
        assert _read_pdu(s)[:3] == (P.CommandId.GENERIC_NACK, P.Status.ESME_RINVCMDID, 41)
        s.sendall(struct.pack(">IIII", 8, 0x15, 0, 42))  # command_length below the header size
        assert _read_pdu(s)[:2] == (P.CommandId.GENERIC_NACK, P.Status.ESME_RINVCMDLEN)
        assert s.recv(1) == b""

    with _raw(smsc.port) as s:
        bind = P.Pdu(P.CommandId.BIND_TRANSCEIVER, 1, 0, P.Bind("avl", "avl-secret")).encode()
        s.sendall(bind)
        assert _read_pdu(s)[:2] == (P.CommandId.BIND_TRANSCEIVER_RESP, 0)
        truncated = P.Pdu(P.CommandId.SUBMIT_SM, 2).encode()[:16] + b"\x00\x01\x01584"  # body cut short
        s.sendall(struct.pack(">I", len(truncated)) + truncated[4:])
        cid, status, seq, _ = _read_pdu(s)
        assert (cid, seq) == (P.CommandId.SUBMIT_SM_RESP, 2) and status != 0
        bad_tlv = P.Pdu(P.CommandId.SUBMIT_SM, 3, 0, P.ShortMessage(destination_addr=TERMINAL)).encode() + b"\x04"
        s.sendall(struct.pack(">I", len(bad_tlv)) + bad_tlv[4:])
        assert _read_pdu(s)[:3] == (P.CommandId.SUBMIT_SM_RESP, P.Status.ESME_RINVOPTPARSTREAM, 3)
        s.sendall(P.Pdu(P.CommandId.ENQUIRE_LINK, 4).encode())  # the session still works
        assert _read_pdu(s)[:3] == (P.CommandId.ENQUIRE_LINK_RESP, 0, 4)

    # Oversized PDUs are refused before their body is read.
    with _raw(smsc.port) as s:
        s.sendall(struct.pack(">IIII", 10_000_000, 0x4, 0, 5))
        assert _read_pdu(s)[:2] == (P.CommandId.GENERIC_NACK, P.Status.ESME_RINVCMDLEN)

    avl.send_pdu(smpplib.smpp.make_pdu("enquire_link", client=avl))
    assert avl.wait_for("enquire_link_resp")[0].status == 0


# ---------------------------------------------------------------------- codec, options


def test_pdu_roundtrip() -> None:
    sm = P.ShortMessage(
        source_addr="1234",
        destination_addr=TERMINAL,
        registered_delivery=1,
        short_message=b"hi",
        tlvs={P.Tag.USER_MESSAGE_REFERENCE: b"\x00\x07"},
    )
    pdu = P.Pdu(P.CommandId.SUBMIT_SM, 9, 0, sm)
    back = P.decode(pdu.encode())
    assert back == pdu
    # smpplib decodes what we encode.
    parsed = smpplib.smpp.parse_pdu(pdu.encode(), sequence=9, allow_unknown_opt_params=True)
    assert (parsed.command, parsed.destination_addr, parsed.short_message) == ("submit_sm", TERMINAL.encode(), b"hi")
    # An error response may have no body.
    assert P.decode(P.Pdu(P.CommandId.SUBMIT_SM_RESP, 1, P.Status.ESME_RTHROTTLED).encode()).body is None


def test_smpp_time_formats() -> None:
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert parse_smpp_time("", now) is None
    assert parse_smpp_time("000001020000000R", now) == now + timedelta(days=1, hours=2)
    # 13:00 local at UTC+1h (4 quarter hours ahead) is 12:00 UTC.
    assert parse_smpp_time("240501130000004+", now) == now
    with pytest.raises(P.PduError):
        parse_smpp_time("240531250000000+", now)


def test_cli_options() -> None:
    args = build_parser().parse_args(["--port", "2776", "--account", "a:b", "--barred", "999", "--throttle", "4"])
    assert (args.port, args.barred, args.throttle) == (2776, ["999"], 4)
    assert parse_accounts(args.account) == {"a": "b"}
    assert parse_accounts([]) is None


# ---------------------------------------------------------------------- interop: Net::SMPP (Perl)


def _net_smpp() -> None:
    if not shutil.which("perl"):
        pytest.skip("perl is not installed")
    if subprocess.run(["perl", "-MNet::SMPP", "-e", "1"], capture_output=True).returncode != 0:
        if shutil.which("apt-get"):
            for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "libnet-smpp-perl"]):
                subprocess.run(cmd, capture_output=True, timeout=300)
        if subprocess.run(["perl", "-MNet::SMPP", "-e", "1"], capture_output=True).returncode != 0:
            pytest.skip("Net::SMPP (Debian libnet-smpp-perl) is not installed and could not be installed")


def _perl(port: int, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["perl", str(PERL_ESME), "--port", str(port), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_net_smpp_sender_gets_receipt_and_mo(smsc: SmscThread, clients: list[Esme]) -> None:
    _net_smpp()
    gw = bind_gateway(smsc, clients)
    perl = _perl(
        smsc.port,
        "--mode",
        "sender",
        "--from",
        SERVER_NUMBER,
        "--to",
        TERMINAL,
        "--text",
        "hello from Net::SMPP",
        "--expect",
        "2",
    )
    gw.wait_for("deliver_sm", timeout=10)
    assert gw.delivers()[0].short_message == b"hello from Net::SMPP"
    assert gw.submit(source_addr=TERMINAL, destination_addr=SERVER_NUMBER, short_message=b"pong").status == 0
    out, err = perl.communicate(timeout=20)
    assert perl.returncode == 0, err
    lines = out.splitlines()
    assert lines[0] == "BIND 0"
    submit = lines[1].split()
    assert submit[:2] == ["SUBMIT", "0"]
    receipt = next(line for line in lines if line.startswith("RECEIPT "))
    _, rid, state, text = receipt.split(" ", 3)
    assert (rid, state) == (submit[2], str(int(P.MessageState.DELIVERED)))
    assert RECEIPT_RE.match(text) and "stat:DELIVRD" in text
    assert f"DELIVER {TERMINAL} {SERVER_NUMBER} 0 pong" in lines
    assert lines[-1] == "UNBIND 0"


def test_net_smpp_as_gateway(smsc: SmscThread, clients: list[Esme]) -> None:
    _net_smpp()
    perl = _perl(
        smsc.port,
        "--mode",
        "gateway",
        "--system_id",
        "fleet",
        "--password",
        "fleet-secret",
        "--range",
        GATEWAY_RANGE,
        "--reply",
        "OK from perl handset",
    )
    assert perl.stdout is not None
    assert perl.stdout.readline().strip() == "BIND 0"
    assert perl.stdout.readline().strip() == "READY"
    avl = bind_server(smsc, clients)
    resp = avl.submit(destination_addr=TERMINAL, short_message=b"to the perl handset", registered_delivery=1)
    assert resp.status == 0
    avl.wait_for("deliver_sm", 2, timeout=10)
    assert parse_receipt(avl.receipts()[0])["stat"] == "DELIVRD"
    assert avl.delivers()[0].short_message == b"OK from perl handset"
    out, err = perl.communicate(timeout=20)
    assert perl.returncode == 0, err
    assert f"DELIVER {SERVER_NUMBER} {TERMINAL} 0 to the perl handset" in out.splitlines()


def test_net_smpp_bad_password(smsc: SmscThread) -> None:
    _net_smpp()
    perl = _perl(smsc.port, "--password", "nope")
    out, err = perl.communicate(timeout=20)
    assert out.splitlines() == [f"BIND {int(P.Status.ESME_RINVPASWD)}"], err


def test_random_frames_never_crash_the_server(
    smsc: SmscThread, clients: list[Esme], caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(3434)
    commands = [int(c) for c in P.CommandId] + [0x7, 0x12345]
    for _ in range(30):
        with _raw(smsc.port) as s:
            if rng.random() < 0.5:  # start bound, so submit_sm bodies get decoded
                s.sendall(P.Pdu(P.CommandId.BIND_TRANSCEIVER, 1, 0, P.Bind("avl", "avl-secret")).encode())
                _read_pdu(s)
            for seq in range(2, 12):
                body = rng.randbytes(rng.randrange(0, 80))
                if rng.random() < 0.5:  # a valid-looking submit_sm prefix with a damaged tail
                    full = P.ShortMessage(source_addr="1", destination_addr=TERMINAL, short_message=b"abc").encode()
                    body = full[: rng.randrange(len(full) + 1)] + body[:3]
                    cid = int(P.CommandId.SUBMIT_SM)
                else:
                    cid = rng.choice(commands)
                s.sendall(struct.pack(">IIII", 16 + len(body), cid, 0, seq) + body)
            s.settimeout(0.1)
            with contextlib.suppress(OSError):
                while s.recv(4096):
                    pass
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    avl = bind_server(smsc, clients)
    avl.send_pdu(smpplib.smpp.make_pdu("enquire_link", client=avl))
    assert avl.wait_for("enquire_link_resp")[0].status == 0


def test_cli_runs_the_smsc() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulators.smsc", "--port", str(port), "--account", "x:y", "--route", "^5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        client = Esme(port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.connect()
                break
            except smpplib.exceptions.ConnectionError:
                client.disconnect()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert client.bind_transmitter(system_id="x", password="y").status == 0
        assert client.submit(destination_addr="5550001", short_message=b"x").status == 0
        client.close()
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0, out
    assert "SMSC listening on" in out
