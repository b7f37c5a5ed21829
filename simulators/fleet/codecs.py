"""Per-protocol terminal behaviour on the wire: login, report frames, heartbeats, and reading
the server's ACKs. Frames come from the ingest protocol modules' encoders, so the simulator
speaks exactly what the decoders accept.

ACK matching is either *keyed* (the ACK names the frame: gt06 serial, gl200 count number,
calamp sequence) or *in order* (teltonika record count, h02 V4, HTTP status): the server
answers a connection's frames in order, so each ACK belongs to the oldest unanswered frame.

Supply voltage goes where the family's real terminals send it: Teltonika IO 66, Queclink GTFRI,
OsmAnd ``power``, the JSON gateway's ``power_mv``, and a Concox 0x94 information packet after
each gt06 location; H02 ``V1`` reports and CalAmp event reports without accumulators carry none.
"""

from __future__ import annotations

import struct
from collections.abc import Hashable
from dataclasses import dataclass
from datetime import UTC

from avl.records import Position
from ingest.protocols import calamp, gl200, gt06, h02, json_report, jt808, osmand, teltonika, wialon
from ingest.protocols.base import crc16_x25

# A parsed ACK: (key, accepted). Keyed codecs give the frame's key; in-order codecs give None.
Ack = tuple[Hashable | None, bool]


@dataclass(slots=True)
class Frame:
    data: bytes
    key: Hashable | None  # what the ACK carries (keyed codecs), or None (in-order codecs)
    expects_ack: bool = True


class Codec:
    name: str = ""
    transport: str = "tcp"  # tcp | udp | http | mqtt
    keyed: bool = False
    batch_max: int = 1  # reports per frame when flushing a backlog
    heartbeat_acked: bool = False

    def login(self, device: str, seq: int) -> Frame | None:
        return None

    def encode(self, positions: list[Position], seq: int, buffered: bool) -> Frame:
        raise NotImplementedError

    def heartbeat(self, p: Position, seq: int) -> Frame | None:
        return None

    def parse(self, buf: bytearray, login_pending: bool) -> tuple[list[Ack], int]:
        """ACKs at the start of ``buf`` and how many bytes they used (partial ACKs wait)."""
        return [], 0


class Teltonika(Codec):
    name = "teltonika"
    batch_max = 255

    def login(self, device: str, seq: int) -> Frame:
        return Frame(teltonika.encode_login(device), None)

    def encode(self, positions: list[Position], seq: int, buffered: bool) -> Frame:
        return Frame(teltonika.encode_batch(positions), None)

    def heartbeat(self, p: Position, seq: int) -> Frame:
        return Frame(b"\xff", None, expects_ack=False)  # keep-alive byte: no reply

    def parse(self, buf: bytearray, login_pending: bool) -> tuple[list[Ack], int]:
        if login_pending:
            return ([(None, buf[0] == 1)], 1) if buf else ([], 0)
        n = len(buf) // 4
        return [(None, struct.unpack_from(">I", buf, 4 * i)[0] > 0) for i in range(n)], 4 * n


class Gt06(Codec):
    name = "gt06"
    keyed = True
    heartbeat_acked = True

    def login(self, device: str, seq: int) -> Frame:
        data = gt06.encode_login(device)
        assert data is not None
        return Frame(data, (0x01, 1))

    def encode(self, positions: list[Position], seq: int, buffered: bool) -> Frame:
        data = gt06.encode_position(positions[0], seq)
        # The 0x22 location packet has no voltage; Concox units report the external supply in
        # 0x94 information packets (no reply). One follows each report, in the same write.
        if positions[0].power_mv is not None:
            data += self.supply_voltage(positions[0].power_mv, seq)
        return Frame(data, (0x22, seq))

    @staticmethod
    def supply_voltage(power_mv: int, seq: int) -> bytes:
        """A 78 78 0x94 information packet: external supply voltage, i16 in 10 mV."""
        body = bytes([7, gt06.MSG_INFO]) + max(-0x8000, min(0x7FFF, power_mv // 10)).to_bytes(2, "big", signed=True)
        body += (seq & 0xFFFF).to_bytes(2, "big")
        return gt06.HEADER_BASIC + body + crc16_x25(body).to_bytes(2, "big") + gt06.CRLF

    def heartbeat(self, p: Position, seq: int) -> Frame:
        return Frame(gt06.encode_heartbeat(p, seq), (0x13, seq))

    def parse(self, buf: bytearray, login_pending: bool) -> tuple[list[Ack], int]:
        acks: list[Ack] = []
        i = 0
        while len(buf) - i >= 5:
            if buf[i] != 0x78 or buf[i + 1] != 0x78:
                i += 1  # not a reply: skip
                continue
            size = buf[i + 2] + 5
            if len(buf) - i < size:
                break
            acks.append(((buf[i + 3], int.from_bytes(buf[i + 4:i + 6], "big")), True))
            i += size
        return acks, i


class Gl200(Codec):
    name = "gl200"
    keyed = True
    heartbeat_acked = True

    def encode(self, positions: list[Position], seq: int, buffered: bool) -> Frame:
        return Frame(gl200.encode_position(positions[0], seq, buffered=buffered), f"{seq & 0xFFFF:04X}")

    def heartbeat(self, p: Position, seq: int) -> Frame:
        when = p.fix_time.astimezone(UTC).strftime("%Y%m%d%H%M%S")
        count = f"{seq & 0xFFFF:04X}"
        return Frame(f"+ACK:GTHBD,060100,{p.device},,{when},{count}$".encode("ascii"), "HBD" + count)

    def parse(self, buf: bytearray, login_pending: bool) -> tuple[list[Ack], int]:
        acks: list[Ack] = []
        end = buf.rfind(b"$") + 1
        for line in bytes(buf[:end]).split(b"$"):
            if line.startswith(b"+SACK:GTHBD,"):
                acks.append(("HBD" + line.rsplit(b",", 1)[-1].decode("latin-1"), True))
            elif line.startswith(b"+SACK:"):
                acks.append((line[6:].decode("latin-1"), True))
        return acks, end


class H02(Codec):
    name = "h02"
    heartbeat_acked = True

    def encode(self, positions: list[Position], seq: int, buffered: bool) -> Frame:
        return Frame(h02.encode_position(positions[0], seq), None)

    def heartbeat(self, p: Position, seq: int) -> Frame:
        level = p.attributes.get("batteryLevel", 100)
        return Frame(f"*HQ,{p.device},HTBT,{level}#".encode("ascii"), None)

    def parse(self, buf: bytearray, login_pending: bool) -> tuple[list[Ack], int]:
        end = buf.rfind(b"#") + 1
        return [(None, True) for line in bytes(buf[:end]).split(b"#") if line.startswith(b"*")], end


class OsmAnd(Codec):
    name = "osmand"
    transport = "http"

    def encode(self, positions: list[Position], seq: int, buffered: bool) -> Frame:
        return Frame(osmand.encode_position(positions[0]), None)

    def parse(self, buf: bytearray, login_pending: bool) -> tuple[list[Ack], int]:
        acks: list[Ack] = []
        i = 0
        while True:
            head_end = buf.find(b"\r\n\r\n", i)
            if head_end < 0:
                break
            head = bytes(buf[i:head_end]).decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip() or 0)
            if len(buf) < head_end + 4 + length:
                break
            status = head.split(" ", 2)
            acks.append((None, len(status) > 1 and status[1] == "200"))
            i = head_end + 4 + length
        return acks, i


class CalAmp(Codec):
    name = "calamp"
    transport = "udp"
    keyed = True

    def encode(self, positions: list[Position], seq: int, buffered: bool) -> Frame:
        return Frame(calamp.encode_position(positions[0], seq), seq & 0xFFFF)

    def parse(self, buf: bytearray, login_pending: bool) -> tuple[list[Ack], int]:
        # One datagram: 02 01 <seq u16> <message type> ...
        if len(buf) >= 4 and buf[0] == 2 and buf[1] == 1:
            return [(int.from_bytes(buf[2:4], "big"), True)], len(buf)
        return [], len(buf)


class Json(Codec):
    name = "json"
    transport = "mqtt"
    heartbeat_acked = True

    def encode(self, positions: list[Position], seq: int, buffered: bool) -> Frame:
        return Frame(json_report.encode_position(positions[0]), None)

    def heartbeat(self, p: Position, seq: int) -> Frame:
        status = Position(device=p.device, fix_time=p.fix_time, ignition=p.ignition, power_mv=p.power_mv,
                          battery_mv=p.battery_mv)
        return Frame(json_report.encode_position(status), None)


class Jt808(Codec):
    """A JT/T 808 terminal that already holds its authentication code (the standard's reconnect:
    authenticate, then report); the platform's general responses name the frame they answer."""

    name = "jt808"
    keyed = True
    batch_max = 20  # a 0704 batch of 20 reports stays within the 1023-byte body
    heartbeat_acked = True

    def __init__(self, code: str | None = None) -> None:
        self.code = code  # the authentication code; None: the terminal number (what registration issues)

    def login(self, device: str, seq: int) -> Frame:
        code = self.code or device.rjust(12 if len(device) <= 12 else 20, "0")
        return Frame(jt808.encode_auth(device, code, seq), (jt808.MSG_TERMINAL_AUTH, seq))

    def encode(self, positions: list[Position], seq: int, buffered: bool) -> Frame:
        if len(positions) == 1 and not buffered:
            return Frame(jt808.encode_position(positions[0], seq), (jt808.MSG_LOCATION_REPORT, seq))
        return Frame(jt808.encode_batch(positions, seq, buffered), (jt808.MSG_LOCATION_BATCH, seq))

    def heartbeat(self, p: Position, seq: int) -> Frame:
        return Frame(jt808.encode_heartbeat(p.device, seq), (jt808.MSG_HEARTBEAT, seq))

    def parse(self, buf: bytearray, login_pending: bool) -> tuple[list[Ack], int]:
        acks: list[Ack] = []
        i = 0
        while True:
            start = buf.find(b"\x7e", i)
            if start < 0:
                return acks, len(buf)  # nothing that starts an answer
            end = buf.find(b"\x7e", start + 1)
            if end < 0:
                return acks, start  # a partial answer waits for its end
            if end == start + 1:
                i = end  # "7E 7E": a lost end, then this start
                continue
            i = end + 1
            try:
                msg_id, _, body = jt808.decode_reply(bytes(buf[start:end + 1]))
            except ValueError:
                continue
            if msg_id == jt808.MSG_GENERAL_RESPONSE and len(body) >= 5:
                acks.append(((int.from_bytes(body[2:4], "big"), int.from_bytes(body[0:2], "big")), body[4] == 0))
            elif msg_id == jt808.MSG_TERMINAL_REGISTER_RESPONSE and len(body) >= 3:
                acks.append(((jt808.MSG_TERMINAL_REGISTER, int.from_bytes(body[0:2], "big")), body[2] == 0))


class Wialon(Codec):
    """A Wialon IPS 2.0 unit: login, ``#D#`` reports (a ``#B#`` black box for a backlog), ``#P#``
    pings; the server answers each line in order."""

    name = "wialon"
    batch_max = 100
    heartbeat_acked = True

    def __init__(self, password: str | None = None) -> None:
        self.password = password

    def login(self, device: str, seq: int) -> Frame:
        return Frame(wialon.encode_login(device, self.password), None)

    def encode(self, positions: list[Position], seq: int, buffered: bool) -> Frame:
        if len(positions) == 1 and not buffered:
            return Frame(wialon.encode_position(positions[0], seq), None)
        return Frame(wialon.encode_black_box(positions), None)

    def heartbeat(self, p: Position, seq: int) -> Frame:
        return Frame(b"#P#\r\n", None)

    def parse(self, buf: bytearray, login_pending: bool) -> tuple[list[Ack], int]:
        end = buf.rfind(b"\n") + 1
        acks: list[Ack] = []
        for line in bytes(buf[:end]).split(b"\n"):
            line = line.strip()
            if line.startswith(b"#A"):
                answer = line.rsplit(b"#", 1)[-1]
                acks.append((None, line.startswith(b"#AP#") or (answer.isdigit() and answer not in (b"0", b"01"))))
        return acks, end


# Not in CODECS yet: the fleet gives each protocol a model and an identifier rule (fleet.py's MODELS
# and TAC); jt808 wants a phone-number-like terminal number. Listed here until it does.
PENDING_CODECS: dict[str, Codec] = {c.name: c for c in (Jt808(), Wialon())}

CODECS: dict[str, Codec] = {c.name: c for c in (Teltonika(), Gt06(), Gl200(), H02(), OsmAnd(), CalAmp(), Json())}
PROTOCOLS: tuple[str, ...] = tuple(CODECS)
