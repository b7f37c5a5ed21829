"""Queclink @Track (GL/GV/GB/GT series), TCP and UDP port 5004: text and binary reports.

Three wire forms share the port; the first bytes tell them apart:

    +RESP:GTxxx,...,<send time>,<count>$   text report (``+BUFF:`` = buffered history,
    +BUFF:GTxxx,...                        ``+ACK:`` = command / heartbeat acknowledgement);
    +ACK:GTxxx,...                         framed by ``$`` (or NUL); layouts in _gl200_text
    +RSP +BSP +EVT +BVT +INF +BNF +HBD     HEX binary; a length field at a header-dependent
    +CRD +BRD +LGN, +ACK<not ':'>          offset (9, 7, 5, 6 or 6) gives the whole frame size
                                           incl. the CRC-16 and 0D 0A; layouts in _gl200_binary
    2B|2D 00 <len16> ...  2B 10 <len8>     Protocol Pro report / heartbeat, ends in CRC-8 + '$'

Identity: every frame carries the IMEI (text field 2, binary unique-id field); there is no
login, so each frame sets ``session.device`` itself.

Replies (the transport sends them once the frame's records are durable):

* ``+ACK:GTHBD,<ver>,<imei>,...,<count>`` (heartbeat) -> ``+SACK:GTHBD,<ver>,<count>$``
  (no record), exactly as the reference server answers it.
* Decision for this server: every ``+RESP``/``+BUFF`` text report whose last field is a
  4-hex count number gets ``+SACK:<count>$``, echoing the count byte for byte. The reference
  server sends it only when ``gl200.ack`` is enabled; we always send it because we only ever
  acknowledge durable data: a device configured for SACK retransmits a report until the
  SACK arrives (so nothing is lost if we crash before the write), and a device not
  configured for SACK ignores it.
* Binary frames and other ``+ACK:`` acknowledgements get no reply (as in the reference).

CRC policy: HEX frames carry CRC-16/CCITT-FALSE over type..count number and Protocol Pro
frames CRC-8 (poly 0x31, init 0xFF) over header..count number; both are verified, and a
mismatch still decodes but flags every record ``crcMismatch``. Text reports carry no CRC.

Deviations from the reference decoder (deliberate): ``valid`` is False when the GNSS
accuracy (hdop) field is 0 ("fix failed, last known position"); the HEX unique id is read
as the vendor documents it (two IMEI digits per byte); HEX speed is integer km/h + tenths
byte; a report whose specialised layout does not parse falls back to the generic scan.
"""

from __future__ import annotations

from datetime import UTC, datetime

from avl.records import Position
from ingest.protocols import _gl200_binary as binary
from ingest.protocols import _gl200_text as textual
from ingest.protocols.base import DecodeError, DecodeResult, Protocol, Session, text

_PLUS = 0x2B
_MINUS = 0x2D
_MIN_HEX_LENGTH = 12
_MIN_PRO_LENGTH = 8


class Gl200Protocol(Protocol):
    name = "gl200"
    port = 5004
    transports = frozenset({"tcp", "udp"})
    max_frame = 8192

    # Framing ----------------------------------------------------------------------

    def split(self, buffer: bytes) -> tuple[bytes | None, int]:
        if not buffer:
            return None, 0
        if buffer[0] not in (_PLUS, _MINUS):
            for index in range(1, len(buffer)):
                if buffer[index] in (_PLUS, _MINUS):
                    return None, index
            return None, len(buffer)
        if len(buffer) < 2:
            return None, 0
        if binary.is_pro(buffer):
            return self._split_binary(buffer, _MIN_PRO_LENGTH)
        if buffer[0] == _MINUS:
            return None, 1  # '-' only starts a buffered Protocol Pro frame
        if len(buffer) < 5:
            return None, 0  # "+ACK" is binary unless a ':' follows
        if binary.is_hex(buffer):
            return self._split_binary(buffer, _MIN_HEX_LENGTH)
        return self._split_text(buffer)

    def _split_binary(self, buffer: bytes, minimum: int) -> tuple[bytes | None, int]:
        length = binary.declared_length(buffer)
        if length is None:
            return None, 0
        if length < minimum:
            return None, 1  # not a real header: resynchronise
        if length > self.max_frame:
            raise self.too_long(buffer)
        if len(buffer) < length:
            return None, 0
        return buffer[:length], length

    def _split_text(self, buffer: bytes) -> tuple[bytes | None, int]:
        ends = [i for i in (buffer.find(b"$"), buffer.find(b"\x00")) if i >= 0]
        if not ends:
            if len(buffer) > self.max_frame:
                raise self.too_long(buffer)
            return None, 0
        end = min(ends)
        if end > self.max_frame:
            raise self.too_long(buffer)
        return buffer[:end], end + 1

    # Decoding ---------------------------------------------------------------------

    def decode(self, frame: bytes, session: Session) -> DecodeResult:
        if not frame:
            raise self.error("empty frame", frame)
        try:
            return self._decode(frame, session)
        except DecodeError:
            raise
        except Exception as exc:  # struct/index/value errors from a malformed frame
            raise self.error(f"malformed frame: {type(exc).__name__}: {exc}", frame) from exc

    def _decode(self, frame: bytes, session: Session) -> DecodeResult:
        def make(device: str | None, when: datetime) -> Position:
            if device:
                session.device = device
            return self.position(session, when, frame)

        def identify(device: str) -> None:
            session.device = device

        model = session.options.get("model")
        ctx = textual.Context(make=make, identify=identify, now=session.now,
                              model_override=str(model) if model else None)
        if binary.is_pro(frame):
            positions, crc_ok = binary.decode_pro(ctx, frame)
            return DecodeResult(_flag(positions, crc_ok), None)
        if binary.is_hex(frame):
            positions, crc_ok = binary.decode_hex(ctx, frame)
            return DecodeResult(_flag(positions, crc_ok), None)
        sentence = text(frame).strip("\r\n\x00 ")
        sentence = sentence.removesuffix("$")
        positions, reply = textual.decode(ctx, sentence)
        return DecodeResult(positions, reply)


def _flag(positions: list[Position], crc_ok: bool) -> list[Position]:
    if not crc_ok:
        for p in positions:
            p.attributes["crcMismatch"] = True
    return positions


# Encoders for the device simulator --------------------------------------------------


def encode_login(device: str) -> bytes | None:
    """@Track has no login: every report carries the IMEI."""
    return None


def encode_position(p: Position, sequence: int = 0, *, buffered: bool = False) -> bytes:
    """A GV300-style ``+RESP:GTFRI`` report (``+BUFF:GTFRI`` when ``buffered``) of ``p``.

    Carries time (1 s), validity (hdop 0 = no fix), lat/lon (1e-6 deg), speed (0.1 km/h),
    course (1 deg), altitude (0.1 m), power (mV, decoded only above 10 mV), odometer
    (0.1 km), battery level and ignition (device status); not satellites.
    ``p.device`` must be a 15-digit IMEI (or a 14-hex-digit MEID).
    """
    device = p.device
    if not ((len(device) == 15 and device.isdigit())
            or (len(device) == 14 and all(c in "0123456789abcdefABCDEF" for c in device))):
        raise ValueError(f"gl200 needs a 15-digit IMEI as device id, got {device!r}")
    header = "+BUFF" if buffered else "+RESP"
    when = p.fix_time.astimezone(UTC).strftime("%Y%m%d%H%M%S")
    power = "" if p.power_mv is None else str(max(0, p.power_mv))
    if p.valid:
        hdop = f"{min(max(p.hdop if p.hdop is not None else 1.0, 0.1), 99.9):.1f}"
    else:
        hdop = "0"
    location = ""
    if p.latitude is not None and p.longitude is not None:
        speed = min(max(p.speed_kmh or 0.0, 0.0), 999.9)
        course = round(p.course or 0.0) % 360
        altitude = min(max(p.altitude_m or 0.0, -99999.9), 99999.9)
        location = (f"{speed:.1f},{course},{altitude:.1f},{p.longitude:.6f},{p.latitude:.6f},{when}")
    else:
        location = ",,,,,"
    odometer = "" if p.odometer_m is None else f"{p.odometer_m / 1000:.1f}"
    level = p.attributes.get("batteryLevel")
    battery = str(level) if isinstance(level, int) and 0 <= level <= 100 else ""
    status = "" if p.ignition is None else ("220000" if p.ignition else "120000")
    count = f"{sequence & 0xFFFF:04X}"
    line = (f"{header}:GTFRI,060100,{device},,{power},10,1,{hdop},{location},,,,,00,"
            f"{odometer},,,,{battery},{status},,,,{when},{count}$")
    return line.encode("ascii")


PROTOCOL = Gl200Protocol()
