"""Behaviour of the JT/T 808 decoder: the 7E framing and escaping, the platform's answers byte
for byte, registration and authentication codes (device passwords), integrity flags, field
mapping, bad input, the encoder round trip; and over real TCP into the database, each answer
checked, with and without a device password."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avl.records import Position
from ingest.protocols.base import DecodeError, FrameError, Session
from ingest.protocols.jt808 import (
    PROTOCOL,
    decode_reply,
    encode_auth,
    encode_batch,
    encode_heartbeat,
    encode_login,
    encode_message,
    encode_position,
    escape,
    unescape,
)
from tests.ingest.harness import register, running_ingest, settings_for, stored, track
from tests.ingest.protocols.framing import split_all
from tests.ingest.protocols.refusals import decode_error, set_device_password

NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
PHONE = "13511221122"  # the terminal number (its SIM's phone number), BCD 013511221122


def session(device: str | None = None, **options: str) -> Session:
    return Session(device=device, options=dict(options), now=lambda: NOW)


def position(**overrides: object) -> Position:
    values: dict[str, object] = dict(device=PHONE, fix_time=datetime(2024, 2, 1, 10, 11, 12, tzinfo=UTC), valid=True,
                                     latitude=10.48, longitude=-66.9, speed_kmh=36.5, course=123.0, altitude_m=900.0,
                                     satellites=9, ignition=True, power_mv=12600, odometer_m=123400)
    values.update(overrides)
    return Position(**values)  # type: ignore[arg-type]


def framed(frame: bytes) -> bytes:
    """The frame as the TCP framer hands it to the decoder (unescaped)."""
    [one], rest = split_all(PROTOCOL, frame)
    assert rest == b""
    return one


def reply_fields(reply: bytes | None) -> tuple[int, int, bytes]:
    assert reply is not None and reply[:1] == b"\x7e" and reply[-1:] == b"\x7e"
    return decode_reply(reply)


# Framing ------------------------------------------------------------------------------


def test_escaping_round_trips_and_the_framer_unescapes() -> None:
    assert escape(b"\x30\x7e\x08\x7d\x55") == b"\x30\x7d\x02\x08\x7d\x01\x55"
    assert unescape(b"\x30\x7d\x02\x08\x7d\x01\x55") == b"\x30\x7e\x08\x7d\x55"
    frames, rest = split_all(PROTOCOL, b"$$\x7e\x30\x7d\x02\x08\x7d\x01\x55\x7e\x7e\x01")
    assert frames == [b"\x7e\x30\x7e\x08\x7d\x55\x7e"]
    assert rest == b"\x7e\x01"  # the next frame has started: wait for its end


def test_back_to_back_frames_and_the_text_form() -> None:
    a, b = encode_heartbeat(PHONE, 1), encode_position(position(), 2)
    frames, rest = split_all(PROTOCOL, a + b + b"(794104004140,1,001,BASE,2,TIME)" + a[:5])
    assert frames == [unescape(a), unescape(b), b"(794104004140,1,001,BASE,2,TIME)"]
    assert rest == a[:5]


def test_an_endless_frame_is_cut_off() -> None:
    with pytest.raises(FrameError):
        PROTOCOL.split(b"\x7e" + b"\x01" * PROTOCOL.max_frame)


def test_an_escaped_frame_decodes_as_the_framed_one() -> None:
    """An MQTT payload is the frame as the unit sends it, still escaped."""
    p = position(latitude=8.289536, odometer_m=0x7E7D * 100)  # latitude 0x007E7D00: bytes 7E and 7D inside
    raw = encode_position(p, 0x7E7D)
    assert b"\x7d\x02" in raw and b"\x7d\x01" in raw
    a = PROTOCOL.decode(raw, session())
    b = PROTOCOL.decode(framed(raw), session())
    assert a.positions[0].latitude == b.positions[0].latitude == pytest.approx(8.289536)
    assert a.positions[0].odometer_m == b.positions[0].odometer_m == 0x7E7D * 100
    assert "crcMismatch" not in a.positions[0].attributes and a.reply == b.reply


# Answers byte for byte ------------------------------------------------------------------


def test_location_is_answered_with_a_general_response_echoing_serial_and_id() -> None:
    result = PROTOCOL.decode(framed(encode_position(position(), 0x0102)), session())
    # 8001, length 5, the terminal number, platform serial 0, then serial 0102, message 0200, result 0.
    body = bytes.fromhex("8001" "0005" "013511221122" "0000" "0102" "0200" "00")
    checksum = 0
    for byte in body:
        checksum ^= byte
    assert result.reply == b"\x7e" + escape(body + bytes((checksum,))) + b"\x7e"


def test_a_reply_is_escaped_where_its_bytes_are_delimiters() -> None:
    result = PROTOCOL.decode(framed(encode_position(position(), 0x7E7D)), session())
    assert result.reply is not None
    assert b"\x7e" not in result.reply[1:-1]
    assert reply_fields(result.reply) == (0x8001, 0, bytes.fromhex("7e7d020000"))


def test_registration_issues_a_code_and_its_refusal_says_already_registered() -> None:
    s = session()
    result = PROTOCOL.decode(framed(encode_login(PHONE, 7)), s)
    assert s.device == PHONE and result.positions == []
    assert reply_fields(result.reply) == (0x8100, 0, bytes.fromhex("0007" "00") + b"013511221122")
    # Sent instead when the device has a password (intake): result 3, no code.
    assert reply_fields(result.refusal) == (0x8100, 0, bytes.fromhex("0007" "03"))


def test_authentication_carries_its_code_as_the_credential() -> None:
    s = session()
    result = PROTOCOL.decode(framed(encode_auth(PHONE, "Auth-Code-7", 8)), s)
    assert s.credential == "Auth-Code-7" and result.positions == []
    assert reply_fields(result.reply) == (0x8001, 0, bytes.fromhex("0008" "0102" "00"))
    assert reply_fields(result.refusal) == (0x8001, 0, bytes.fromhex("0008" "0102" "01"))  # failed


def test_a_2019_edition_authentication() -> None:
    imei = "865478070102068"
    s = session()
    result = PROTOCOL.decode(framed(encode_auth(imei, "k3y", 9)), s)
    assert (s.device, s.credential) == (imei, "k3y")
    assert result.reply is not None and result.reply[3:6] == b"\x40\x05\x01"  # 2019 props and version


def test_corpus_authentication_codes() -> None:
    for frame, code in ((bytes.fromhex("7e0102000e013511221122000661757468656e7469636174696f6e3f7e"), "authentication"),
                        (bytes.fromhex("7e010200100940278494700084323031313131303831313333323139369f7e"),
                         "2011110811332196")):
        s = session()
        PROTOCOL.decode(frame, s)
        assert s.credential == code


def test_heartbeat_time_request_and_other_messages() -> None:
    assert reply_fields(PROTOCOL.decode(framed(encode_heartbeat(PHONE, 3)), session()).reply) == (
        0x8001, 0, bytes.fromhex("0003" "0002" "00"))
    sync = PROTOCOL.decode(framed(encode_message(0x0109, PHONE, 4, b"")), session())
    assert reply_fields(sync.reply) == (0x8109, 0, bytes.fromhex("07e8" "05" "06" "07" "08" "09" "00"))
    unknown = PROTOCOL.decode(framed(encode_message(0x0800, PHONE, 5, b"\x01\x02")), session())
    assert reply_fields(unknown.reply) == (0x8001, 0, bytes.fromhex("0005" "0800" "03"))  # "not supported"
    assert PROTOCOL.decode(framed(encode_message(0x0001, PHONE, 6, bytes(5))), session()).reply is None


def test_text_form_base_request_gets_the_time() -> None:
    result = PROTOCOL.decode(b"(794104004140,1,001,BASE,2,TIME)", session(PHONE))
    assert result.reply == b"(794104004140,1,001,BASE,2,20240506070809)" and result.positions == []


def test_vendor_location_is_answered_4401_only_when_asked() -> None:
    # Corpus frame (line 138 of the reference test), props bit 15 set.
    frame = bytes.fromhex("7e55018c418560090010174701022106242122348476113550490700001c06000000074e0000000000"
                          "000308100000100102020200000a030000000b0803363839363037650c0600000001000afa7e")
    assert PROTOCOL.decode(frame, session()).reply is not None
    quiet = bytearray(frame)
    quiet[3] &= 0x7F  # props bit 15 off (the XOR no longer matches: flagged, still decoded)
    result = PROTOCOL.decode(bytes(quiet), session())
    assert result.reply is None and result.positions[0].attributes["crcMismatch"] is True


# Integrity -------------------------------------------------------------------------------


def test_a_wrong_checksum_is_decoded_flagged_and_answered() -> None:
    frame = bytearray(framed(encode_position(position(), 1)))
    frame[-2] ^= 0xFF
    result = PROTOCOL.decode(bytes(frame), session())
    assert result.positions[0].attributes["crcMismatch"] is True and result.reply is not None


def test_a_body_shorter_than_declared_is_decoded_and_flagged() -> None:
    # Corpus frame (line 328 of the reference test): declares 50 body bytes, carries 40.
    frame = bytes.fromhex("7e02000032013511221122000700000000000c000301578cc006ca3a5c00470000000014072317201501"
                          "040000000030011631010bd07e")
    [p] = PROTOCOL.decode(frame, session()).positions
    assert p.attributes["crcMismatch"] is True and p.satellites == 11
    assert p.fix_time == datetime(2014, 7, 23, 9, 20, 15, tzinfo=UTC)  # 17:20:15 at GMT+8


# Fields -----------------------------------------------------------------------------------


def test_location_fields_and_the_default_gmt8_clock() -> None:
    p = position(alarm="sos", latitude=-10.5, longitude=66.25, valid=False)
    [q] = PROTOCOL.decode(framed(encode_position(p, 1)), session()).positions
    assert (q.fix_time, q.latitude, q.longitude, q.valid, q.alarm) == (p.fix_time, -10.5, 66.25, False, "sos")
    assert (q.speed_kmh, q.course, q.altitude_m, q.satellites, q.ignition, q.power_mv, q.odometer_m) == (
        36.5, 123.0, 900.0, 9, True, 12600, 123400)


def test_a_device_time_zone_option_moves_the_clock() -> None:
    raw = framed(encode_position(position(), 1))  # encoded at GMT+8
    [q] = PROTOCOL.decode(raw, session(timezone="UTC-4")).positions
    assert q.fix_time == position().fix_time + timedelta(hours=12)


def test_a_report_without_a_clock_is_a_status_record() -> None:
    body = bytes(4) + b"\x00\x00\x00\x01" + bytes(8 + 6) + bytes(6) + b"\x30\x01\x17"
    [q] = PROTOCOL.decode(framed(encode_message(0x0200, PHONE, 1, body)), session()).positions
    assert not q.located and q.fix_time == NOW and q.attributes["rssi"] == 0x17 and q.ignition is True


def test_batch_reports_are_all_kept_and_marked_archive() -> None:
    positions = track(PHONE, 3)
    result = PROTOCOL.decode(framed(encode_batch(positions, 9)), session())
    assert [q.fix_time for q in result.positions] == [p.fix_time for p in positions]
    assert all(q.attributes["archive"] for q in result.positions)
    assert reply_fields(result.reply)[2] == bytes.fromhex("0009" "0704" "00")


def test_model_specific_fields() -> None:
    # Corpus frame (line 391): an AOVX AL300's alarm word bit 16 is movement.
    frame = bytes.fromhex(
        "7e020000ec6710704387730579000100009058000e015baf2c029bb433001200000129250310035204300111310108f03402d4000"
        "20f720e0f00007d8b8e02d400020f720e0b00007d8b8c02d400020f720d0b00007d8b8a02d4000b092bf3030000c9a588f231414f"
        "56585f414c3330302d4c415f48322e305f4547393135554c4141425230334130344d30385f56322e312e303a763031f40e18ef3a"
        "6ae1c6be00bb252515d3b5f614021901cb006d0099052005dc002800000032000af70600000d6f003cf81d0408696710704387738"
        "9550327001051953711414c3330302d4c410000f912000f0000000100000000000b2503100352322a7e")
    assert PROTOCOL.decode(frame, session(model="AL300")).positions[0].alarm == "movement"
    assert PROTOCOL.decode(frame, session()).positions[0].alarm != "movement"


# Bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("frame", "message"), [
    (b"hello", "no 7E delimiter"),
    (b"\x7e\x02\x00\x00", "frame ends inside a field"),
    (b"\x7e\x02\x00\x00\x00\x01\x35\x11\x22\x11\x22\x00\x01\x7e", "ends before its checksum"),
    (bytes.fromhex("7e0200001c0135112211220001000000000000000398968000000000000000000000002402011811129a7e"),
     "out of range"),
])
def test_bad_frames_are_one_line_decode_errors(frame: bytes, message: str) -> None:
    assert message in decode_error(PROTOCOL, frame, session())


def test_a_text_result_needs_a_known_device() -> None:
    with pytest.raises(DecodeError, match="no login"):
        PROTOCOL.decode(b"(794104004140,RESULT,OK)", session())


# Encoder -------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2098, 12, 31)),
    st.floats(-89.9, 89.9), st.floats(-179.9, 179.9), st.floats(0, 6000), st.integers(0, 359),
    st.integers(-3000, 9000), st.booleans(), st.booleans(), st.integers(0, 0xFFFF),
    st.sampled_from([PHONE, "865478070102068", "77777"]),
)
def test_encoder_round_trip(when: datetime, lat: float, lon: float, speed: float, course: int, altitude: int,
                            valid: bool, ignition: bool, serial: int, device: str) -> None:
    p = position(device=device, fix_time=when.replace(microsecond=0, tzinfo=UTC), latitude=lat, longitude=lon,
                 speed_kmh=speed, course=float(course), altitude_m=float(altitude), valid=valid, ignition=ignition)
    s = session()
    result = PROTOCOL.decode(framed(encode_position(p, serial)), s)
    [q] = result.positions
    assert (q.device, q.fix_time, q.valid, q.ignition, q.course, q.altitude_m) == (
        device, p.fix_time, valid, ignition, course, altitude)
    assert q.latitude == pytest.approx(lat, abs=1e-6) and q.longitude == pytest.approx(lon, abs=1e-6)
    assert q.speed_kmh == pytest.approx(speed, abs=0.051)  # 0.1 km/h units, rounded
    assert "crcMismatch" not in q.attributes
    assert reply_fields(result.reply)[2] == serial.to_bytes(2, "big") + b"\x02\x00\x00"


# Over real sockets into the database --------------------------------------------------------


class Terminal:
    """One JT808 connection: sends frames, reads the platform's framed answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> Terminal:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, frame: bytes) -> tuple[int, bytes] | None:
        """The answer's (message id, body), or None when the server closed the connection."""
        self.writer.write(frame)
        await self.writer.drain()
        try:
            start = await asyncio.wait_for(self.reader.readuntil(b"\x7e"), 10)
            if start != b"\x7e":
                raise AssertionError(f"bytes before an answer: {start.hex()}")
            rest = await asyncio.wait_for(self.reader.readuntil(b"\x7e"), 10)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        msg_id, _, body = decode_reply(b"\x7e" + rest)
        return msg_id, body

    async def closed(self) -> bool:
        try:
            return await asyncio.wait_for(self.reader.read(), 10) == b""
        except ConnectionError:
            return True

    def close(self) -> None:
        self.writer.close()


async def test_register_authenticate_and_report_over_tcp(db_url: str, tmp_path: Path) -> None:
    ids = register(db_url, [(PHONE, "jt808")])
    p1, p2, p3, p4 = track(PHONE, 4)
    async with running_ingest(settings_for(tmp_path), db_url) as svc:
        t = await Terminal.connect(svc.tcp["jt808"].port)
        try:
            registered = await t.send(encode_login(PHONE, 1))
            authenticated = await t.send(encode_auth(PHONE, "013511221122", 2))
            located = await t.send(encode_position(p1, 3))
            batch = await t.send(encode_batch([p2, p3], 4))
            beat = await t.send(encode_heartbeat(PHONE, 5))
        finally:
            t.close()
        # The unit did not see an answer and resends on a new connection: stored once.
        t = await Terminal.connect(svc.tcp["jt808"].port)
        try:
            again = await t.send(encode_position(p1, 3))
            last = await t.send(encode_position(p4, 6))
        finally:
            t.close()
    assert registered == (0x8100, bytes.fromhex("0001" "00") + b"013511221122")
    assert authenticated == (0x8001, bytes.fromhex("0002" "0102" "00"))
    assert located == again == (0x8001, bytes.fromhex("0003" "0200" "00"))
    assert batch == (0x8001, bytes.fromhex("0004" "0704" "00"))
    assert beat == (0x8001, bytes.fromhex("0005" "0002" "00"))
    assert last == (0x8001, bytes.fromhex("0006" "0200" "00"))
    rows = stored(db_url, ids[PHONE])
    assert [r[0] for r in rows] == [p.fix_time for p in (p1, p2, p3, p4)]
    assert rows[0][1] == pytest.approx(p1.latitude, abs=1e-6) and rows[0][4] is True


async def test_a_device_with_a_password_must_authenticate_with_it(db_url: str, tmp_path: Path) -> None:
    ids = register(db_url, [(PHONE, "jt808")])
    set_device_password(db_url, ids[PHONE], "Auth-Code-7")
    p1, p2 = track(PHONE, 2)
    async with running_ingest(settings_for(tmp_path), db_url) as svc:
        port = svc.tcp["jt808"].port
        outcomes = {}
        for name, frames in (("register", [encode_login(PHONE, 1)]),
                             ("wrong code", [encode_auth(PHONE, "013511221122", 2)]),
                             ("no code", [encode_position(p1, 3)])):
            t = await Terminal.connect(port)
            try:
                answers = [await t.send(frame) for frame in frames]
                outcomes[name] = (answers, await t.closed())
            finally:
                t.close()
        t = await Terminal.connect(port)
        try:
            right = await t.send(encode_auth(PHONE, "Auth-Code-7", 4))
            reports = [await t.send(encode_position(p, 5 + i)) for i, p in enumerate((p1, p2))]
        finally:
            t.close()
    print(f"\njt808 with a password: {outcomes}, right code {right}, reports {reports}")
    # A spoofer knowing the phone number gets no code, and is refused and cut off.
    assert outcomes["register"] == ([(0x8100, bytes.fromhex("0001" "03"))], True)
    assert outcomes["wrong code"] == ([(0x8001, bytes.fromhex("0002" "0102" "01"))], True)
    assert outcomes["no code"] == ([None], True)
    assert right == (0x8001, bytes.fromhex("0004" "0102" "00"))
    assert reports == [(0x8001, bytes.fromhex("0005" "0200" "00")), (0x8001, bytes.fromhex("0006" "0200" "00"))]
    assert [r[0] for r in stored(db_url, ids[PHONE])] == [p1.fix_time, p2.fix_time]
