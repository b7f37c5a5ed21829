"""Behaviour of the t800x (T800x / TLW) decoder: answers byte for byte, report fields, the message
kinds of each marker family, several messages in one frame, the model option, framing, bad
input, the encoder; and over real TCP and UDP into the database, each answer checked.

Frames marked "reference test" are device captures from the reference server's unit tests
(github.com/traccar/traccar, Apache License 2.0), as the corpus in ../shared/vectors is."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avl.records import Position
from ingest.protocols.base import Session
from ingest.protocols.t800x import PROTOCOL, encode_heartbeat, encode_login, encode_position
from tests.ingest.harness import register, running_ingest, settings_for, stored, track, udp_exchange
from tests.ingest.protocols.checks import assert_one_line_error, courses, fix_times, latitudes, longitudes
from tests.ingest.protocols.framing import split_all

IMEI = "357367031063979"
NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
LOGIN_2323 = bytes.fromhex("232301001500020357367031063979150208625010")
HEARTBEAT_2323 = bytes.fromhex("232303000f00000357367031063979")
GPS_2323 = bytes.fromhex("232302004200150357367031063979003c03842307d000004a0000050100004001009500940000000285ab0015"
                         "10281350477f710d4452819342d1ba944101160038")
# reference test: a 23 23 report without a fix, three cells instead
NO_FIX_2323 = bytes.fromhex("232302004200000357367031063979003c03842307d00000800000050100000001009400940000000"
                            "2a0b90015102814590694015a00620cf698620cf49e620cf498")
ALARM_2525 = bytes.fromhex("252514005901c00867730050941347001e46501e03e80064f2c0001401000041000000000000000000ffff"
                           "ffff160000034ec40021100719073800000000c2fb90c21291fd400000000003961237ffff0000002effff"
                           "ffffff")
GPS_2525 = bytes.fromhex("252502004400010880616898888888000a00ff2001000020409600989910101010055501550000101005050005"
                         "051010050558866b4276d6e342912ab441111500051010")
NETWORK_2525 = bytes.fromhex("2525110055000208677300508924902206262035310c540045004c00430045004c0004454447450847534d"
                             "20313930300f323134303734323036373835323839143839333430373131373930303936383037363846")
DRIVING_2626 = bytes.fromhex("2626050040031208696160625731520525050817271100000000844d74c260f80bc2000000000360250508"
                             "172716ffffffffffffffffffffffff0270ffff0360")
LOGIN_2727 = bytes.fromhex("2727010017000108806168988888881016010207110111")
# reference test: the answer to a command, UTF-16LE text
COMMAND_2525 = bytes.fromhex(
    "2525810128000108664250328959160149004d00450049003a003800360036003400320035003000330032003800390035003900310036"
    "002c005300450054002000560045005200530049004f004e0020004f004b002c00560065007200730069006f006e003a0042006100730069"
    "0063003a00560031002e0030002e0030002c004100500050003a00560034002e0032002e0033002c004200550049004c0044003a0032003000"
    "310039002d00300033002d00330030002c00300038003a00300035002c0050004c0054003a0032003500300033004100560045002c004800"
    "57003a00560032002e0031002c004d004f00440045004c003a002c004d004f00440045004d003a0042003900470036004d00410052003000"
    "32004100300037004d00310047002300")


def session(device: str | None = None, transport: str = "tcp", **options: object) -> Session:
    return Session(transport=transport, device=device, options=dict(options), now=lambda: NOW)


def echo(head: bytes, serial: bytes, imei: str, alarm: bytes = b"") -> bytes:
    """The answer a unit expects, built by hand: marker and type, length 15/16, serial, IMEI, [alarm]."""
    return head + (15 + len(alarm)).to_bytes(2, "big") + serial + bytes.fromhex("0" + imei) + alarm


# Answers ------------------------------------------------------------------------------------


def test_login_identifies_the_unit_and_is_answered_with_serial_1_in_the_2323_family() -> None:
    s = session()
    result = PROTOCOL.decode(LOGIN_2323, s)
    assert s.device == IMEI and result.positions == []
    # The frame's serial is 0x0002; the 23 23 units are answered with 1.
    assert result.reply == echo(b"\x23\x23\x01", b"\x00\x01", IMEI)


def test_other_families_are_answered_with_their_own_serial() -> None:
    s = session()
    result = PROTOCOL.decode(LOGIN_2727, s)
    assert s.device == "880616898888888"
    assert result.reply == echo(b"\x27\x27\x01", b"\x00\x01", "880616898888888")
    assert PROTOCOL.decode(NETWORK_2525, s).reply == echo(b"\x25\x25\x11", b"\x00\x02", "867730050892490")


def test_heartbeat_is_answered_and_keeps_nothing() -> None:
    result = PROTOCOL.decode(HEARTBEAT_2323, session())
    assert result.positions == [] and result.reply == echo(b"\x23\x23\x03", b"\x00\x01", IMEI)


def test_plain_gps_reports_are_answered_only_with_the_ack_option() -> None:
    assert PROTOCOL.decode(GPS_2323, session()).reply is None
    assert PROTOCOL.decode(GPS_2323, session(ack="true")).reply == echo(b"\x23\x23\x02", b"\x00\x01", IMEI)
    assert PROTOCOL.decode(GPS_2525, session(ack=True)).reply == echo(b"\x25\x25\x02", b"\x00\x01", "880616898888888")


def test_alarms_are_always_answered_with_their_alarm_byte() -> None:
    result = PROTOCOL.decode(ALARM_2525, session())
    assert result.reply == echo(b"\x25\x25\x14", b"\x01\xc0", "867730050941347", b"\x16")
    p = encode_position(track(IMEI, 1)[0], 7, alarm=3)
    result = PROTOCOL.decode(p, session())
    assert result.reply == echo(b"\x23\x23\x04", b"\x00\x01", IMEI, b"\x03")
    assert result.positions[0].alarm == "sos"


# Fields -------------------------------------------------------------------------------------


def test_gps_report_fields() -> None:
    [p] = PROTOCOL.decode(GPS_2323, session()).positions
    assert (p.device, p.fix_time, p.valid) == (IMEI, datetime(2015, 10, 28, 13, 50, 47, tzinfo=UTC), True)
    assert p.latitude == pytest.approx(18.591219, abs=1e-5) and p.longitude == pytest.approx(73.752579, abs=1e-5)
    assert (p.speed_kmh, p.course, p.satellites, p.ignition, p.odometer_m) == (11.6, 56.0, 10, True, 165291)
    assert p.altitude_m == pytest.approx(565.77, abs=0.01)
    assert p.attributes["index"] == 0x15 and p.attributes["batteryLevel"] == 100


def test_a_report_without_fix_is_a_status_record_with_its_cells() -> None:
    [p] = PROTOCOL.decode(NO_FIX_2323, session()).positions
    assert not p.located and p.fix_time == datetime(2015, 10, 28, 14, 59, 6, tzinfo=UTC)
    towers = p.attributes["network"]["cellTowers"]
    assert len(towers) == 3 and towers[0]["mobileCountryCode"] == 404 and towers[0]["mobileNetworkCode"] == 90


def test_power_battery_and_extended_io_of_a_2525_report() -> None:
    [p] = PROTOCOL.decode(ALARM_2525, session()).positions
    assert (p.power_mv, p.battery_mv, p.ignition, p.satellites) == (12370, 3960, True, 18)
    assert p.attributes["alarmCode"] == 0x16 and p.alarm is None  # a code the table does not name


def test_network_message_names_operator_and_sim() -> None:
    [p] = PROTOCOL.decode(NETWORK_2525, session()).positions
    assert not p.located and p.fix_time == datetime(2022, 6, 26, 20, 35, 31, tzinfo=UTC)
    assert p.attributes == {"operator": "TELCEL", "networkTechnology": "EDGE", "networkBand": "GSM 1900",
                            "iccid": "8934071179009680768F"}


def test_harsh_driving_gives_the_samples_before_and_after_with_the_alarm_on_the_last() -> None:
    first, last = PROTOCOL.decode(DRIVING_2626, session()).positions
    assert first.located and first.latitude == pytest.approx(-34.99255, abs=1e-5) and first.alarm is None
    assert not last.located and last.speed_kmh == 27.0 and last.alarm == "acceleration"
    assert last.attributes["rpm"] == 864


def test_command_answer_is_kept_as_result() -> None:
    [p] = PROTOCOL.decode(COMMAND_2525, session()).positions
    assert p.attributes["result"].startswith("IMEI:866425032895916,SET VERSION OK,")
    assert p.fix_time == NOW


def test_model_tlw2_2bl_reads_the_battery_voltage_of_plain_reports() -> None:
    [plain] = PROTOCOL.decode(GPS_2525, session()).positions
    [tlw] = PROTOCOL.decode(GPS_2525, session(model="TLW2-2BL")).positions
    assert (plain.power_mv, plain.battery_mv) == (10100, None)
    assert (tlw.power_mv, tlw.battery_mv) == (None, 10100)


# Several messages in one frame (corpus: 7 x 89 bytes) ----------------------------------------


def test_a_frame_of_several_messages_yields_every_report_and_every_answer() -> None:
    messages = [encode_position(p, i) for i, p in enumerate(track(IMEI, 3))]
    result = PROTOCOL.decode(b"".join(messages), session(ack=1))
    assert [p.fix_time for p in result.positions] == [p.fix_time for p in track(IMEI, 3)]
    assert result.reply == echo(b"\x23\x23\x02", b"\x00\x01", IMEI) * 3


def test_a_message_repeated_in_one_frame_is_one_report() -> None:
    result = PROTOCOL.decode(GPS_2323 * 2, session(ack=1))
    assert len(result.positions) == 1 and result.reply == echo(b"\x23\x23\x02", b"\x00\x01", IMEI)


# Framing ------------------------------------------------------------------------------------


def test_framing_splits_a_stream_skips_garbage_and_keeps_a_partial_message() -> None:
    stream = b"\x00junk" + LOGIN_2323 + GPS_2323 + HEARTBEAT_2323 + ALARM_2525[:40]
    frames, rest = split_all(PROTOCOL, stream)
    assert frames == [LOGIN_2323, GPS_2323, HEARTBEAT_2323] and rest == ALARM_2525[:40]
    frames, rest = split_all(PROTOCOL, rest + ALARM_2525[40:])
    assert frames == [ALARM_2525] and rest == b""


def test_a_head_with_an_impossible_length_is_skipped() -> None:
    frames, rest = split_all(PROTOCOL, b"\x23\x23\x02\x00\x03" + LOGIN_2323)
    assert frames == [LOGIN_2323] and rest == b""


# Bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("frame", "message"), [
    (LOGIN_2323[:10], "shorter than its 15-byte head"),
    (b"\x24\x24" + LOGIN_2323[2:], "unknown marker 2424"),
    (LOGIN_2323[:7] + b"\xab" * 8 + LOGIN_2323[15:], "is not BCD"),
    (LOGIN_2323[:3] + b"\x00\x40" + LOGIN_2323[5:], "does not fit the frame"),
    (GPS_2323[:3] + b"\x00\x20" + GPS_2323[5:0x20], "frame ends inside a field"),
    (LOGIN_2323 + b"\x23\x23\x01", "are not a message"),
])
def test_bad_messages_are_one_line_decode_errors(frame: bytes, message: str) -> None:
    assert_one_line_error(PROTOCOL, frame, session(), message)


# Encoder ------------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(fix_times, latitudes, longitudes, st.floats(0, 999), courses, st.integers(0, 31), st.booleans())
def test_encoder_round_trip(when: datetime, lat: float, lon: float, speed: float, course: int, satellites: int,
                            ignition: bool) -> None:
    p = Position(device=IMEI, fix_time=when, valid=True, latitude=lat,
                 longitude=lon, speed_kmh=speed, course=float(course), altitude_m=120.0, satellites=satellites,
                 ignition=ignition, power_mv=12340, odometer_m=5000)
    [q] = PROTOCOL.decode(encode_position(p, 9), session()).positions
    assert (q.device, q.fix_time, q.valid, q.satellites, q.ignition, q.power_mv, q.odometer_m) == (
        IMEI, p.fix_time, True, satellites, ignition, 12340, 5000)
    assert q.latitude == pytest.approx(lat, abs=1e-4) and q.longitude == pytest.approx(lon, abs=1e-4)
    assert q.speed_kmh == pytest.approx(speed, abs=0.05) and q.course == course


# Over real sockets into the database ------------------------------------------------------------


async def test_tcp_login_reports_and_alarm_are_stored_and_answered_after_commit(db_url: str, tmp_path: Path) -> None:
    ids = register(db_url, [(IMEI, "t800x")])
    p1, p2, p3 = track(IMEI, 3)
    async with running_ingest(settings_for(tmp_path), db_url) as svc:
        reader, writer = await asyncio.open_connection("127.0.0.1", svc.tcp["t800x"].port)
        try:
            writer.write(encode_login(IMEI, 5))
            login = await asyncio.wait_for(reader.readexactly(15), 10)
            # Plain reports get no answer; the alarm after them is answered once all three are stored.
            writer.write(encode_position(p1, 6) + encode_position(p2, 7))
            writer.write(encode_position(p3, 8, alarm=1)[:30])
            await writer.drain()
            writer.write(encode_position(p3, 8, alarm=1)[30:])
            alarm = await asyncio.wait_for(reader.readexactly(16), 10)
            rows_at_answer = stored(db_url, ids[IMEI])
            writer.write(encode_heartbeat(IMEI, 9))
            heartbeat = await asyncio.wait_for(reader.readexactly(15), 10)
        finally:
            writer.close()
    assert login == echo(b"\x23\x23\x01", b"\x00\x01", IMEI)
    assert alarm == echo(b"\x23\x23\x04", b"\x00\x01", IMEI, b"\x01")
    assert heartbeat == echo(b"\x23\x23\x03", b"\x00\x01", IMEI)
    assert [r[0] for r in rows_at_answer] == [p1.fix_time, p2.fix_time, p3.fix_time]
    assert rows_at_answer[2][1] == pytest.approx(p3.latitude, abs=1e-4)


async def test_udp_datagram_of_two_messages_is_stored_and_the_alarm_answered(db_url: str, tmp_path: Path) -> None:
    ids = register(db_url, [(IMEI, "t800x")])
    p1, p2 = track(IMEI, 2)
    async with running_ingest(settings_for(tmp_path), db_url) as svc:
        reply = await udp_exchange(svc.udp["t800x"].port, encode_position(p1, 1) + encode_position(p2, 2, alarm=3))
    assert reply == echo(b"\x23\x23\x04", b"\x00\x01", IMEI, b"\x03")
    assert [r[0] for r in stored(db_url, ids[IMEI])] == [p1.fix_time, p2.fix_time]
