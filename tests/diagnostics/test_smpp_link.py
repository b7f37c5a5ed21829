"""The SMPP client (diagnostics.smpp.SmppLink) against real SMSCs over TCP: our simulator
with the fleet's handset gateway, and a Perl SMSC on Debian's Net::SMPP
(tests/simulators/perl/smsc.pl) answering late, refusing numbers and throttling."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from avl import gsm7
from avl.embedded import free_port, wait_for_port
from diagnostics.smpp import Inbound, SmppError, SmppLink, encode_text
from simulators.fleet.sms_gateway import SmsGateway
from simulators.smsc.server import Smsc
from tests.simulators.test_smsc import _net_smpp

PERL_SMSC = Path(__file__).parents[1] / "simulators" / "perl" / "smsc.pl"
HANDSET = "+584140000077"


async def until(predicate: Callable[[], Any], timeout_s: float = 10.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class Inbox:
    """What the link hands the event loop, by kind."""

    def __init__(self, link: SmppLink) -> None:
        self.messages: list[Inbound] = []
        link.subscribe(self.messages.append)

    def receipt(self, message_id: str) -> Inbound | None:
        return next((m for m in self.messages if m.receipt_for == message_id), None)

    def replies(self, source: str) -> list[Inbound]:
        return [m for m in self.messages if m.receipt_for is None and m.source == source]


@contextlib.asynccontextmanager
async def busy_loop() -> AsyncIterator[None]:
    """Keeps the event loop busy, as the worker's is in production (ingest, sweeps, other
    checklists): 2 ms of work, then a turn of the loop. Against such a loop a thread that
    blocks in a read cannot take the GIL back for seconds (CPython 3.11): when the link read
    the SMSC in a thread, receipts, replies and submit_sm_resps sat in its socket until the
    loop went idle, and pings timed out."""
    stop = asyncio.Event()

    async def spin() -> None:
        while not stop.is_set():
            end = time.perf_counter() + 0.002
            while time.perf_counter() < end:
                pass
            await asyncio.sleep(0)

    task = asyncio.create_task(spin())
    try:
        yield
    finally:
        stop.set()
        await task


async def ping_in_a_row(link: SmppLink, numbers: list[str], count: int, reply: Callable[[str], str]) -> Inbox:
    """``count`` pings, each waiting for its receipt and its reply before the next, as the
    checklist's SMS step does; a lost submit_sm_resp raises."""
    inbox = Inbox(link)
    for n in range(count):
        number, text = numbers[n % len(numbers)], f"STATUS {n}"
        message_id = await link.send(number, text)
        await until(lambda: inbox.receipt(message_id) is not None, what=f"receipt of ping {n}")  # noqa: B023
        await until(lambda: any(r.text == reply(text) for r in inbox.replies(number)),  # noqa: B023
                    what=f"reply to ping {n}")
    return inbox


@contextlib.asynccontextmanager
async def link_to(port: int, **options: Any) -> AsyncIterator[SmppLink]:
    link = SmppLink("127.0.0.1", port, "avl", "avl-secret", **options)
    assert await link.start(), link.last_error
    try:
        yield link
    finally:
        await link.close()


# ---------------------------------------------------------------------- our SMSC simulator


@dataclass
class Handset:
    """A phone on the fleet's SMS gateway: answers every SMS with ``PONG <text>``."""

    faults: frozenset[str] = frozenset()
    received: list[str] = field(default_factory=list)

    def on_sms(self, text: str) -> str:
        self.received.append(text)
        return f"PONG {text}"


@contextlib.asynccontextmanager
async def simulated_network(handsets: dict[str, Handset], **smsc_options: Any) -> AsyncIterator[tuple[Smsc, int]]:
    smsc = Smsc(default_validity=5.0, retry_interval=0.2, response_timeout=2.0, **smsc_options)
    port = await smsc.start("127.0.0.1", 0)
    gateway = SmsGateway(lambda: {number.lstrip("+"): h for number, h in handsets.items()}, "127.0.0.1", port)
    try:
        assert await gateway.start(), "the handset gateway could not bind"
        yield smsc, port
    finally:
        await gateway.close()
        await smsc.stop()


def avl_sessions(smsc: Smsc) -> list[Any]:
    return [s for s in smsc.sessions if s.system_id == "avl"]


@contextlib.asynccontextmanager
async def smsc_process(handsets: dict[str, Handset]) -> AsyncIterator[int]:
    """Our SMSC simulator in its own process, as a real SMSC is: it answers while our event
    loop is busy. The fleet's handset gateway (in our loop) binds to it."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulators.smsc", "--port", str(port), "--validity", "5", "--retry", "0.2",
        "--log-level", "WARNING", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        assert await asyncio.to_thread(wait_for_port, port, 30.0), "the SMSC simulator did not start"
        gateway = SmsGateway(lambda: {number.lstrip("+"): h for number, h in handsets.items()}, "127.0.0.1", port)
        try:
            assert await gateway.start(), "the handset gateway could not bind"
            yield port
        finally:
            await gateway.close()
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(proc.communicate(), 10)
    errors = stderr.decode(errors="replace")
    assert "Traceback" not in errors, errors


async def test_a_hundred_pings_in_a_row_none_lost() -> None:
    handsets = {f"+5841400001{n:02d}": Handset() for n in range(10)}
    async with smsc_process(handsets) as port, link_to(port) as link, busy_loop():
        inbox = await ping_in_a_row(link, list(handsets), 100, lambda text: f"PONG {text}")
        assert link.bound and link.binds == 1  # one bind throughout
    receipts = [m for m in inbox.messages if m.receipt_for]
    assert len({m.receipt_for for m in receipts}) == 100
    assert {m.receipt_status for m in receipts} == {"DELIVRD"}
    assert sum(len(h.received) for h in handsets.values()) == 100
    # Handsets' numbers come back in E.164 whatever the SMSC wrote.
    assert {m.source for m in inbox.messages} == set(handsets)


async def test_invalid_destination_fails_that_message_only() -> None:
    handsets = {HANDSET: Handset()}
    async with simulated_network(handsets, barred=["58499"]) as (smsc, port), link_to(port) as link:
        session = avl_sessions(smsc)
        with pytest.raises(SmppError) as err:
            await link.send("+584990000001", "STATUS")
        assert str(err.value) == "SMSC refused: invalid destination address (ESME_RINVDSTADR 0x0b)"
        assert link.bound
        assert await link.send(HANDSET, "STATUS")  # same bind, right away
        await until(lambda: handsets[HANDSET].received == ["STATUS"], what="the SMS at the handset")
        assert avl_sessions(smsc) == session and link.binds == 1


async def test_throttled_burst_is_retried_and_delivered() -> None:
    handsets = {f"+5841400002{n:02d}": Handset() for n in range(12)}
    async with simulated_network(handsets, throttle=4) as (smsc, port), \
            link_to(port, retry_backoff_s=0.2, max_attempts=8) as link:
        session = avl_sessions(smsc)
        ids = await asyncio.gather(*(link.send(number, "STATUS") for number in handsets))
        assert len(set(ids)) == 12
        await until(lambda: all(h.received == ["STATUS"] for h in handsets.values()), what="every handset's SMS")
        assert avl_sessions(smsc) == session and link.binds == 1


async def test_text_goes_out_in_the_smsc_alphabet() -> None:
    handsets = {HANDSET: Handset()}
    async with simulated_network(handsets) as (smsc, port):
        async with link_to(port) as gsm:
            plain = await gsm.send(HANDSET, "Señal @ 100% {ok}")
            accented = await gsm.send(HANDSET, "Ubicación ✓")
        async with link_to(port, default_alphabet="latin1") as latin1:
            latin = await latin1.send(HANDSET, "Señal @ 100%")
        stored = {key: smsc.store.get(message_id) for key, message_id in
                  (("plain", plain), ("accented", accented), ("latin", latin))}
    assert stored["plain"] is not None and stored["accented"] is not None and stored["latin"] is not None
    # GSM 03.38 septets, unpacked: ñ is 0x7d, @ is 0x00, braces are escaped into the extension table.
    assert (stored["plain"].data_coding, stored["plain"].payload) == (0, b"Se\x7dal \x00 100% \x1b\x28ok\x1b\x29")
    assert gsm7.decode(stored["plain"].payload) == "Señal @ 100% {ok}"
    assert (stored["accented"].data_coding, stored["accented"].payload) == (8, "Ubicación ✓".encode("utf-16-be"))
    assert (stored["latin"].data_coding, stored["latin"].payload) == (0, "Señal @ 100%".encode("latin-1"))


async def test_binds_with_over_a_thousand_descriptors_open() -> None:
    """The worker holds a socket per connected vehicle, so the link's own socket gets a
    descriptor above 1023, which select() cannot watch (a link reading with it never bound)."""
    handsets = {HANDSET: Handset()}
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        async with simulated_network(handsets) as (_, port), link_to(port) as link:
            inbox = Inbox(link)
            message_id = await link.send(HANDSET, "STATUS")
            await until(lambda: inbox.receipt(message_id) is not None, what="the receipt")
            await until(lambda: inbox.replies(HANDSET), what="the reply")
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_long_and_foreign_text_is_split_without_breaking_characters() -> None:
    [single], coding, esm = encode_text("x" * 160)
    assert (len(single), coding, esm) == (160, 0, 0)
    parts, coding, esm = encode_text("{" * 100)  # 200 septets: two parts, no escape pair cut in half
    assert (len(parts), coding, esm) == (2, 0, 0x40)
    # UDH: concatenation, one reference, 2 parts, part number.
    assert [(p[:3], p[3], p[4], p[5]) for p in parts] == [(b"\x05\x00\x03", parts[0][3], 2, n) for n in (1, 2)]
    assert [p[6:] for p in parts] == [b"\x1b\x28" * 76, b"\x1b\x28" * 24]
    parts, coding, _ = encode_text("ó" * 71)  # UCS-2: 70 characters fit one SMS, 71 do not
    assert coding == 8 and len(parts) == 2 and sum(len(p) - 6 for p in parts) == 142
    [latin], coding, _ = encode_text("€ Δ", "latin1")  # GSM, but not Latin-1: UCS-2
    assert coding == 8 and latin == "€ Δ".encode("utf-16-be")


# ---------------------------------------------------------------------- Net::SMPP (Perl)


class PerlSmsc:
    """tests/simulators/perl/smsc.pl in a process; ``lines`` is what it printed so far."""

    def __init__(self, *options: str, port: int = 0) -> None:
        self.proc = subprocess.Popen(["perl", str(PERL_SMSC), "--port", str(port), *options],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline().split()
        assert first[:1] == ["LISTEN"], (first, self.proc.stderr.read() if self.proc.stderr else "")
        self.port = int(first[1])
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def events(self, kind: str) -> list[list[str]]:
        return [line.split(" ") for line in list(self.lines) if line.split(" ", 1)[0] == kind]

    async def printed_up_to_unbind(self, count: int = 1) -> None:
        """Waits until ``lines`` holds what the SMSC printed up to its ``count``-th UNBIND. Lines
        come through a pipe and a thread, some printed after the SMSC answered (BIND, UNBIND):
        a link can be closed before they are read."""
        await until(lambda: len(self.events("UNBIND")) >= count, what=f"UNBIND {count} from the Perl SMSC")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(5)


@pytest.fixture
def perl_smsc() -> Iterator[Callable[..., PerlSmsc]]:
    _net_smpp()
    started: list[PerlSmsc] = []

    def start(*options: str, port: int = 0) -> PerlSmsc:
        smsc = PerlSmsc(*options, port=port)
        started.append(smsc)
        return smsc

    yield start
    for smsc in started:
        smsc.stop()


async def test_net_smpp_a_hundred_pings_in_a_row_none_lost(perl_smsc: Callable[..., PerlSmsc]) -> None:
    smsc = perl_smsc("--reply", "OK {text}")
    async with link_to(smsc.port) as link, busy_loop():
        inbox = await ping_in_a_row(link, [HANDSET], 100, lambda text: f"OK {text}")
        assert link.bound and link.binds == 1
    await smsc.printed_up_to_unbind()
    assert len({m.receipt_for for m in inbox.messages if m.receipt_for}) == 100
    assert len(smsc.events("SUBMIT")) == 100 and len(smsc.events("BIND")) == 1


async def test_net_smpp_late_answers_receipts_and_national_replies(perl_smsc: Callable[..., PerlSmsc]) -> None:
    smsc = perl_smsc("--resp-delay", "0.4", "--receipt-delay", "0.8", "--reply-delay", "1.2",
                     "--reply", "GPS:OK Data Link: 1", "--mo-ton", "2")
    async with link_to(smsc.port) as link:
        inbox = Inbox(link)
        ids = []
        for n in range(5):
            number = f"+58414000007{n}"
            message_id = await link.send(number, f"STATUS{n}#")
            ids.append(message_id)
            await until(lambda: inbox.receipt(message_id) is not None, what=f"receipt {n}")  # noqa: B023
            # The SMSC writes the handset's number nationally (TON 2, "0414..."): it comes back E.164.
            await until(lambda: inbox.replies(number), what=f"reply {n}")  # noqa: B023
    await smsc.printed_up_to_unbind()
    assert [inbox.receipt(i).receipt_status for i in ids] == ["DELIVRD"] * 5  # type: ignore[union-attr]
    assert [m[2] for m in smsc.events("MO")] == [f"0414000007{n}" for n in range(5)]
    assert [inbox.replies(f"+58414000007{n}")[0].text for n in range(5)] == ["GPS:OK Data Link: 1"] * 5
    submits = smsc.events("SUBMIT")
    # Destination: TON 1 / NPI 1, country code and number without "+"; text in GSM 7-bit, unpacked.
    assert [(s[3], s[4], s[5], s[6]) for s in submits] == [("1", "1", f"58414000007{n}", "0") for n in range(5)]
    assert bytes.fromhex(submits[0][9]) == b"STATUS0#"
    # Every deliver_sm (5 receipts, 5 replies) was acknowledged with ESME_ROK.
    assert [r[3] for r in smsc.events("DELIVER_RESP")] == ["0"] * 10
    assert len(smsc.events("BIND")) == 1 and smsc.events("UNBIND") == [["UNBIND", "1"]]  # unbound on close


async def test_net_smpp_invalid_destination_keeps_the_bind(perl_smsc: Callable[..., PerlSmsc]) -> None:
    smsc = perl_smsc("--invalid", "584140000099")
    async with link_to(smsc.port) as link:
        with pytest.raises(SmppError) as err:
            await link.send("+584140000099", "STATUS#")
        assert str(err.value) == "SMSC refused: invalid destination address (ESME_RINVDSTADR 0x0b)"
        assert await link.send(HANDSET, "STATUS#")
        assert link.bound and link.binds == 1
        assert not smsc.events("UNBIND") and not smsc.events("CLOSE")
    await smsc.printed_up_to_unbind()
    assert [s[7] for s in smsc.events("SUBMIT")] == ["11", "0"] and len(smsc.events("BIND")) == 1


async def test_net_smpp_throttled_and_queue_full_are_retried(perl_smsc: Callable[..., PerlSmsc]) -> None:
    smsc = perl_smsc("--throttle-every", "2", "--queue-full-every", "5")
    async with link_to(smsc.port, retry_backoff_s=0.05) as link:
        ids = [await link.send(f"+58414000007{n}", "STATUS#") for n in range(6)]
        assert link.bound and link.binds == 1
    await smsc.printed_up_to_unbind()
    assert len(set(ids)) == 6
    statuses = [s[7] for s in smsc.events("SUBMIT")]
    assert statuses.count("0") == 6 and "88" in statuses and "20" in statuses
    assert len(smsc.events("BIND")) == 1


async def test_net_smpp_retries_are_bounded(perl_smsc: Callable[..., PerlSmsc]) -> None:
    smsc = perl_smsc("--throttle-every", "1")
    async with link_to(smsc.port, retry_backoff_s=0.05, max_attempts=3) as link:
        with pytest.raises(SmppError) as err:
            await link.send(HANDSET, "STATUS#")
        assert str(err.value) == "SMSC refused: throttled (too many messages per second) (ESME_RTHROTTLED 0x58) " \
                                 "after 3 tries"
        assert link.bound and link.binds == 1
    await smsc.printed_up_to_unbind()
    assert len(smsc.events("SUBMIT")) == 3


async def test_net_smpp_destination_ton_and_alphabet_settings(perl_smsc: Callable[..., PerlSmsc]) -> None:
    smsc = perl_smsc()
    async with link_to(smsc.port, dest_ton="national", default_alphabet="latin1") as link:
        await link.send("+584140000077", "Señal", validity_s=3725)  # the SMSC gives up after 1 h 2 min 5 s
        await link.send("584140000078", "Ubicación ✓")  # digits without "+": country code first
        await link.send("+573001234567", "x")  # a Colombian number has no Venezuelan national form
    async with link_to(smsc.port, dest_ton="unknown") as link:
        await link.send("0414-000.00.77", "Señal")
    with pytest.raises(SmppError) as err:
        await SmppLink("127.0.0.1", smsc.port, "avl", "avl-secret").send("call me", "x")
    assert str(err.value) == "not sent: phone number 'call me' is not a number"
    await smsc.printed_up_to_unbind(2)
    got = [(s[3], s[4], s[5], s[6], s[9], s[10]) for s in smsc.events("SUBMIT")]
    assert got == [
        ("2", "1", "04140000077", "0", "Señal".encode("latin-1").hex(), "000000010205000R"),
        ("2", "1", "04140000078", "8", "Ubicación ✓".encode("utf-16-be").hex(), "-"),
        ("1", "1", "573001234567", "0", "78", "-"),
        ("0", "1", "584140000077", "0", "5365" + "7d" + "616c", "-"),  # GSM: ñ is 0x7d
    ]


async def test_net_smpp_enquire_link_both_ways(perl_smsc: Callable[..., PerlSmsc]) -> None:
    smsc = perl_smsc("--enquire", "0.6")
    async with link_to(smsc.port, enquire_link_s=0.2) as link:
        await until(lambda: smsc.events("ENQUIRE") and smsc.events("ENQUIRE_RESP"), what="enquire_link both ways")
        assert link.bound and link.binds == 1


async def test_link_lost_fails_waiting_sends_and_reconnects(perl_smsc: Callable[..., PerlSmsc]) -> None:
    first = perl_smsc("--resp-delay", "30")
    async with link_to(first.port, reconnect_s=0.1, max_reconnect_s=0.5) as link:
        waiting = asyncio.create_task(link.send(HANDSET, "STATUS#", timeout_s=60))
        await until(lambda: first.events("SUBMIT"), what="the submit at the SMSC")
        first.stop()  # the SMSC goes away with our message unanswered
        with pytest.raises(SmppError) as err:
            await asyncio.wait_for(waiting, 10)
        assert str(err.value).startswith("SMPP link lost (")
        await until(lambda: not link.bound, what="the link to notice")
        with pytest.raises(SmppError) as err:
            await link.send(HANDSET, "STATUS#")
        assert str(err.value).startswith(f"SMSC 127.0.0.1:{first.port} not bound (")
        second = perl_smsc(port=first.port)  # the SMSC is back: the link binds again by itself
        await until(lambda: link.bound, what="the rebind")
        assert link.binds == 2 and await link.send(HANDSET, "STATUS#")
        assert len(second.events("BIND")) == 1


async def test_a_hung_smsc_is_noticed_by_enquire_link(perl_smsc: Callable[..., PerlSmsc],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    smsc = perl_smsc()
    async with link_to(smsc.port, enquire_link_s=0.2, response_timeout_s=0.5, reconnect_s=0.1,
                       max_reconnect_s=0.2) as link:
        os.kill(smsc.proc.pid, signal.SIGSTOP)  # the TCP connection stays up, the SMSC answers nothing
        try:
            await until(lambda: not link.bound, what="the link to notice")
            assert "no enquire_link_resp within 0.5 s" in caplog.text
        finally:
            os.kill(smsc.proc.pid, signal.SIGCONT)
        await until(lambda: link.bound, what="the rebind")
        assert await link.send(HANDSET, "STATUS#")


async def test_close_is_clean(perl_smsc: Callable[..., PerlSmsc], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    smsc = perl_smsc("--reply", "OK", "--reply-delay", "0.1")
    link = SmppLink("127.0.0.1", smsc.port, "avl", "avl-secret", enquire_link_s=0.1)
    inbox = Inbox(link)
    assert await link.start()
    await link.send(HANDSET, "STATUS#")
    await until(lambda: inbox.replies(HANDSET), what="the reply")
    await link.close()
    assert link._task is not None and link._task.done()
    assert not link.bound
    await until(lambda: smsc.events("CLOSE"), what="the SMSC to see the connection close")
    assert smsc.events("UNBIND") == [["UNBIND", "1"]]
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not noisy, [r.getMessage() for r in noisy]
    # The password is never logged, not even in smpplib's PDU dumps.
    assert "avl-secr" not in caplog.text and b"avl-secr".hex() not in caplog.text
