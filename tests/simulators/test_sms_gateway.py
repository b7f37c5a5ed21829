"""SMS commands sent through the SMSC reach the simulated terminals and their replies come
back; a suspended SIM is undeliverable and a powered-off terminal never gets it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from diagnostics.smpp import Inbound, SmppLink
from tests.simulators.sms_world import sms_world


async def test_commands_reach_terminals_and_their_answers_come_back(db_url: str, tmp_path: Path) -> None:
    async with sms_world(db_url, tmp_path, [{"vehicles": 4, "protocols": ("teltonika", "gt06", "calamp", "gl200"),
                                             "interval_s": 1.0, "seed": 11}], validity_s=2.0) as world:
        fleet = world.fleets[0]
        sim, off = world.spec("calamp"), world.spec("gl200")
        fleet.terminals[sim.identifier].set_fault("sim_suspended", True)
        fleet.terminals[off.identifier].set_fault("powered_off", True)
        link = SmppLink("127.0.0.1", world.smsc_port, "avl", "avl-secret")
        inbox: asyncio.Queue[Inbound] = asyncio.Queue()
        link.subscribe(inbox.put_nowait)
        assert await link.start()
        try:
            sent = {
                "teltonika": await link.send(world.spec("teltonika").msisdn, "  getstatus"),
                "gt06": await link.send(world.spec("gt06").msisdn, "WHERE#"),
                "sim": await link.send(sim.msisdn, "!R0"),
                "off": await link.send(off.msisdn, "AT+GTRTO=gl200,1,,,,,,FFFF$"),
            }
            receipts: dict[str, str] = {}
            replies: dict[str, str] = {}
            deadline = asyncio.get_running_loop().time() + 10
            while (len(receipts) < 4 or len(replies) < 2) and asyncio.get_running_loop().time() < deadline:
                msg = await asyncio.wait_for(inbox.get(), 10)
                if msg.receipt_for:
                    receipts[msg.receipt_for] = msg.receipt_status or ""
                else:
                    replies[msg.source] = msg.text
        finally:
            await link.close()
    assert receipts[sent["teltonika"]] == "DELIVRD" and receipts[sent["gt06"]] == "DELIVRD"
    assert receipts[sent["sim"]] == "UNDELIV"  # suspended SIM: the network refuses it
    assert receipts[sent["off"]] == "EXPIRED"  # powered off: retried until the validity ran out
    # The link gives the handsets' numbers in E.164.
    assert replies["+" + world.spec("teltonika").msisdn].startswith("Data Link: ")
    assert "Lat:" in replies["+" + world.spec("gt06").msisdn]
    assert "+" + sim.msisdn not in replies and "+" + off.msisdn not in replies
