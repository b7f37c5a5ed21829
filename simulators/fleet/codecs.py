"""Per-protocol terminal behaviour on the wire: login, report frames, heartbeats, and reading
the server's ACKs. Frames come from the ingest protocol modules' encoders, so the simulator
speaks exactly what the decoders accept.

ACK matching is either *keyed* (the ACK names the frame: gt06 serial, gl200 count number,
calamp sequence) or *in order* (teltonika record count, h02 V4, HTTP status): the server
answers a connection's frames in order, so each ACK belongs to the oldest unanswered frame.
"""

from __future__ import annotations

import struct
from collections.abc import Hashable
from dataclasses import dataclass
from datetime import UTC

from avl.records import Position
from ingest.protocols import calamp, gl200, gt06, h02, json_report, osmand, teltonika

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
        return Frame(gt06.encode_position(positions[0], seq), (0x22, seq))

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


CODECS: dict[str, Codec] = {c.name: c for c in (Teltonika(), Gt06(), Gl200(), H02(), OsmAnd(), CalAmp(), Json())}
PROTOCOLS: tuple[str, ...] = tuple(CODECS)
