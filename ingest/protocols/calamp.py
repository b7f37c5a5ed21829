"""CalAmp LMDirect (LMU units, CDMA/ESN/MEID and GSM/IMEI) over UDP: event, locate, mini event and
user-data reports, with the 10-byte acknowledgement the unit retries until it receives.

Datagram (big-endian)
    [Options header, present when bit 7 of the first byte is set]
        u8 options: bit 0 mobile ID | 1 mobile ID type | 2 authentication | 3 routing |
                    4 forwarding | 5 response redirection | 6 options extension | 7 always set
        each present field: u8 length + bytes; the mobile ID is packed BCD/hex digits padded with
        ``f`` (e.g. ``46 43 58 63 40`` -> ESN "4643586340", ``35 33 ... 58 0f`` -> IMEI); the
        authentication field is the authentication word the unit is configured with (4 bytes)
    Message header: u8 service type (0 unacknowledged, 1 acknowledged request, 2 response) |
        u8 message type | u16 sequence number

Event report (2), locate report (8), user data (4)
    u32 update time (Unix s) | u32 time of fix | i32 lat*1e7 | i32 lon*1e7 | i32 altitude cm |
    u32 speed cm/s | i16 heading | u8 satellites | u8 fix status (bit 3 = invalid fix) |
    u16 carrier | i16 RSSI dBm | u8 comm state | u8 HDOP*10 | u8 inputs (bit 0 = ignition) |
    u8 unit status
    event report only: u8 event index | u8 event code
    event and locate: u8 accumulators (bits 0-5 count, bits 6-7 list type) | u8 append |
        [list type 1: u32 threshold, u32 mask] | count x u32 accumulator (acc0, acc1, ...)
    user data: u8 route | u8 message ID | u16 length | text (-> ``result``)

Mini event report (10)
    u32 update time | i32 lat*1e7 | i32 lon*1e7 | i16 heading | u8 speed km/h |
    u8 satellites (bits 0-3) and fix status (bit 5 = invalid fix) | u8 comm state | u8 inputs |
    u8 event code | u8 accumulator count (bits 0-5) | count x u32 accumulator

Reply: service type 1 -> ``02 01 <seq u16> <message type> 00 00 00 00 00`` (ACK message: service
    "response", type 1, the request's sequence and type, result 0, spare, 3 bytes app version),
    without options header. Other service types get no reply.

Decisions
    * The mobile ID sets ``session.device``; only trailing ``f`` padding nibbles are removed (the
      reference server removes every ``f``, which would corrupt hex identifiers).
    * The authentication word is the device's password: ``session.credential`` is its hex
      (lowercase), which intake checks against the device's; the raw bytes stored with the
      records have it zeroed.
    * ``fix_time`` is the update time, as the reference server does (the time of fix repeats for
      every report sent while GPS is lost). HDOP is scaled by 0.1 as the LMDirect manual says.
    * ID reports and other message types yield no record (still ACKed when requested).
    * LMDirect has no framing of its own: over TCP ``split`` raises FrameError (UDP only).
"""

from __future__ import annotations

import struct
from typing import Any, ClassVar

from avl.records import Position
from ingest.protocols.base import DecodeError, DecodeResult, FrameError, Protocol, Session, from_unix
from ingest.protocols.reader import Reader

SERVICE_UNACKNOWLEDGED = 0
SERVICE_ACKNOWLEDGED = 1
SERVICE_RESPONSE = 2

MSG_ACK = 1
MSG_EVENT_REPORT = 2
MSG_ID_REPORT = 3
MSG_USER_DATA = 4
MSG_LOCATE_REPORT = 8
MSG_MINI_EVENT_REPORT = 10

MOBILE_ID_ESN = 1
MOBILE_ID_IMEI = 2

CM_PER_S_TO_KMH = 0.036


# The fixed part of an event / locate / user-data report: update time, fix time, lat, lon, altitude,
# speed, heading, satellites, fix status, carrier, rssi, comm state, hdop, inputs, unit status.
_REPORT = struct.Struct(">IIiiiIhBBHhBBBB")
# ... and of a mini event report: update time, lat, lon, heading, speed, fix, comm state, inputs.
_MINI_EVENT = struct.Struct(">IiihBBBB")


def ack(sequence: int, message_type: int) -> bytes:
    """The LMDirect ACK for an acknowledged request."""
    return struct.pack(">BBHBBB3s", SERVICE_RESPONSE, MSG_ACK, sequence & 0xFFFF, message_type & 0xFF, 0, 0, b"\0\0\0")


class CalAmpProtocol(Protocol):
    name: ClassVar[str] = "calamp"
    port: ClassVar[int] = 5082
    transports: ClassVar[frozenset[str]] = frozenset({"udp"})
    max_frame: ClassVar[int] = 1500

    def split(self, buffer: bytes) -> tuple[bytes | None, int]:
        raise FrameError(self.name, "calamp is UDP only: LMDirect has no stream framing, TCP is not supported",
                         buffer[:64])

    def decode(self, frame: bytes, session: Session) -> DecodeResult:
        try:
            return self._decode(frame, session)
        except DecodeError:
            raise
        except (IndexError, ValueError, struct.error, OverflowError) as exc:
            raise self.error(f"truncated or malformed datagram: {exc}", frame) from exc

    def _decode(self, frame: bytes, session: Session) -> DecodeResult:
        if not frame:
            raise self.error("empty datagram", frame)
        if len(frame) > self.max_frame:
            raise self.error(f"datagram of {len(frame)} bytes is larger than {self.max_frame}", frame[:64])
        buf = Reader(frame, self.name)
        if buf.peek() & 0x80:
            frame = self._options_header(buf, session, frame)
        if buf.remaining < 4:
            raise self.error("truncated message header", frame)
        service, message_type, sequence = buf.u8(), buf.u8(), buf.u16()
        if session.device is None:
            raise self.error("no mobile ID in the options header and the source is not identified", frame)
        reply = ack(sequence, message_type) if service == SERVICE_ACKNOWLEDGED else None
        if message_type in (MSG_EVENT_REPORT, MSG_LOCATE_REPORT, MSG_USER_DATA):
            return DecodeResult([self._report(buf, message_type, session, frame)], reply)
        if message_type == MSG_MINI_EVENT_REPORT:
            return DecodeResult([self._mini_event(buf, session, frame)], reply)
        return DecodeResult(reply=reply)

    def _options_header(self, buf: Reader, session: Session, frame: bytes) -> bytes:
        """Reads the options header; returns the frame to keep as raw (authentication word zeroed)."""
        options = buf.u8()
        mobile_id: str | None = None
        for bit in range(7):
            if options & (1 << bit):
                length = buf.u8()
                start = buf.pos
                value = buf.take(length)
                if bit == 0:
                    mobile_id = value.hex().rstrip("f")
                elif bit == 2:
                    session.credential = value.hex()
                    frame = frame[:start] + bytes(length) + frame[start + length:]
        if mobile_id:
            session.device = mobile_id
        return frame

    def _report(self, buf: Reader, message_type: int, session: Session, frame: bytes) -> Position:
        (update_time, _fix_time, lat, lon, altitude, speed, heading, satellites, fix_status, carrier, rssi, modem,
         hdop, inputs, unit_status) = buf.unpack(_REPORT)
        p = self.position(
            session, from_unix(update_time), frame,
            valid=not fix_status & 0x08,
            latitude=lat * 1e-7,
            longitude=lon * 1e-7,
            altitude_m=altitude * 0.01,
            speed_kmh=speed * CM_PER_S_TO_KMH,
            course=_course(heading),
            satellites=satellites,
            hdop=hdop * 0.1,
            ignition=bool(inputs & 0x01),
        )
        attrs = p.attributes
        attrs.update(carrier=carrier, rssi=rssi, modem=modem, input=inputs, status=unit_status)
        if message_type == MSG_EVENT_REPORT:
            buf.u8()  # event index
            attrs["event"] = buf.u8()
        if message_type == MSG_USER_DATA:
            buf.u8()  # route
            buf.u8()  # message ID
            attrs["result"] = buf.take(buf.u16()).decode("latin-1").strip()
        elif buf.remaining:  # some firmware ends the report before the accumulator section
            acc_type, acc_count = buf.peek() >> 6, buf.u8() & 0x3F
            if buf.remaining:
                attrs["append"] = buf.u8()
            if acc_type == 1:
                buf.skip(8)  # threshold and mask
            _accumulators(buf, acc_count, attrs)
        return p

    def _mini_event(self, buf: Reader, session: Session, frame: bytes) -> Position:
        update_time, lat, lon, heading, speed, fix, modem, inputs = buf.unpack(_MINI_EVENT)
        p = self.position(
            session, from_unix(update_time), frame,
            valid=not fix & 0x20,
            latitude=lat * 1e-7,
            longitude=lon * 1e-7,
            speed_kmh=float(speed),
            course=_course(heading),
            satellites=fix & 0x0F,
            ignition=bool(inputs & 0x01),
        )
        p.attributes.update(modem=modem, input=inputs, event=buf.u8())
        if buf.remaining:
            acc_type, acc_count = buf.peek() >> 6, buf.u8() & 0x3F
            if acc_type == 1:
                buf.take(8)
            _accumulators(buf, acc_count, p.attributes)
        return p


def _course(heading: int) -> float | None:
    return float(heading) if 0 <= heading <= 360 else None


def _accumulators(buf: Reader, count: int, attrs: dict[str, Any]) -> None:
    for i in range(count):
        if buf.remaining < 4:
            break
        attrs[f"acc{i}"] = buf.u32()


# Encoders (device simulator) ------------------------------------------------------------


def _options_header(device: str, auth: bytes | None = None) -> bytes:
    digits = device.lower()
    if not digits or any(c not in "0123456789abcdef" for c in digits):
        raise ValueError(f"CalAmp mobile ID must be decimal or hex digits, got {device!r}")
    if len(digits) % 2:
        digits += "f"
    mobile_id = bytes.fromhex(digits)
    id_type = MOBILE_ID_IMEI if len(device) == 15 else MOBILE_ID_ESN
    header = bytes([0x87 if auth else 0x83, len(mobile_id)]) + mobile_id + bytes([1, id_type])
    return header + bytes([len(auth)]) + auth if auth else header


def _header(p: Position, message_type: int, sequence: int, auth: bytes | None = None) -> bytes:
    return _options_header(p.device, auth) + struct.pack(">BBH", SERVICE_ACKNOWLEDGED, message_type, sequence & 0xFFFF)


def _clamp(value: float, low: int, high: int) -> int:
    return max(low, min(high, round(value)))


def encode_login(device: str) -> bytes | None:
    """LMDirect has no login: the options header of every datagram carries the mobile ID."""
    return None


def encode_position(p: Position, sequence: int = 0, auth: bytes | None = None) -> bytes:
    """An acknowledged event report (service type 1, message type 2) for ``p``, with the
    authentication word ``auth`` in the options header when given."""
    seconds = int(p.fix_time.timestamp())
    body = struct.pack(
        ">IIiiiIhBBHhBBBBBBBB",
        seconds,
        seconds,
        round((p.latitude or 0.0) * 1e7),
        round((p.longitude or 0.0) * 1e7),
        round((p.altitude_m or 0.0) * 100),
        _clamp((p.speed_kmh or 0.0) / CM_PER_S_TO_KMH, 0, 0xFFFFFFFF),
        round(p.course or 0) % 360,
        _clamp(p.satellites or 0, 0, 255),
        0 if p.valid else 0x08,
        0,  # carrier
        -70,  # RSSI dBm
        0x0F,  # comm state: available, network, data service, session
        _clamp((p.hdop if p.hdop is not None else 1.0) * 10, 0, 255),
        0x01 if p.ignition else 0x00,
        0,  # unit status
        0,  # event index
        0,  # event code
        0,  # no accumulators
        0,  # append
    )
    return _header(p, MSG_EVENT_REPORT, sequence, auth) + body


def encode_mini_event(p: Position, sequence: int = 0) -> bytes:
    """An acknowledged mini event report (message type 10) for ``p`` (speed in whole km/h)."""
    body = struct.pack(
        ">IiihBBBBBB",
        int(p.fix_time.timestamp()),
        round((p.latitude or 0.0) * 1e7),
        round((p.longitude or 0.0) * 1e7),
        round(p.course or 0) % 360,
        _clamp(p.speed_kmh or 0.0, 0, 255),
        _clamp(p.satellites or 0, 0, 15) | (0 if p.valid else 0x20),
        0x0F,  # comm state
        0x01 if p.ignition else 0x00,
        0,  # event code
        0,  # no accumulators
    )
    return _header(p, MSG_MINI_EVENT_REPORT, sequence) + body


PROTOCOL = CalAmpProtocol()
