"""Behaviour of the Wialon IPS decoder: answers byte for byte, fields, 2.0 checksums, the login
password, framing, bad input, the encoder round trip; and over real TCP, UDP and MQTT (a real
Mosquitto) into the database, each answer checked."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avl.embedded import LocalBroker
from avl.records import Position
from ingest.protocols.base import DecodeError, FrameError, Session, crc16_ibm
from ingest.protocols.wialon import PROTOCOL, encode_black_box, encode_login, encode_position
from tests.ingest.harness import (
    eventually,
    register,
    running_ingest,
    settings_for,
    stored,
    track,
    udp_exchange,
)
from tests.ingest.protocols.framing import split_all
from tests.ingest.protocols.refusals import decode_error, set_device_password

NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
IMEI = "865205030000042"
SD = b"#SD#300924;154245;5554.350052;N;3644.670410;E;2.92;NA;NA;NA;7A01"  # corpus: 2.0 with CRC
D = (b"#D#151216;135910;5321.1466;N;04441.7929;E;87;156;265.000000;12;1.000000;241;NA;NA;NA;"
     b"odo:2:0.000000,total_fuel:1:430087,can_fls:1:201")


def session(device: str | None = IMEI, transport: str = "tcp") -> Session:
    return Session(transport=transport, device=device, now=lambda: NOW)


def with_crc(kind: str, body: str) -> bytes:
    return f"#{kind}#{body}{crc16_ibm(body.encode()):04X}".encode()


# Answers ------------------------------------------------------------------------------


def test_login_is_answered_al1_and_names_the_device_and_its_password() -> None:
    s = session(None)
    result = PROTOCOL.decode(b"#L#123456789012345;test", s)
    assert result.reply == b"#AL#1\r\n"
    assert result.refusal == b"#AL#01\r\n"  # what intake sends when the password is wrong
    assert result.positions == []
    assert s.device == "123456789012345" and s.credential == "test"


def test_a_login_without_password_carries_no_credential() -> None:
    for frame in (b"#L#2002;NA", b"#L#2.0;42001300083;;CE45"):
        s = session(None)
        assert PROTOCOL.decode(frame, s).reply == b"#AL#1\r\n"
        assert s.credential is None
    assert s.device == "42001300083"


def test_a_2_0_login_with_password_and_checksum() -> None:
    s = session(None)
    assert PROTOCOL.decode(with_crc("L", "2.0;865205030000042;s3cret;"), s).reply == b"#AL#1\r\n"
    assert (s.device, s.credential, s.state["wialon.version"]) == (IMEI, "s3cret", "2.0")


@pytest.mark.parametrize(("frame", "reply"), [
    (b"#P#", b"#AP#\r\n"),
    (SD, b"#ASD#1\r\n"),  # Gurtam's answer to SD (the reference server sends #AD#1)
    (D, b"#AD#1\r\n"),
    (b"#M#driver says hello", b"#AM#1\r\n"),
])
def test_each_packet_gets_its_answer(frame: bytes, reply: bytes) -> None:
    assert PROTOCOL.decode(frame, session()).reply == reply


def test_black_box_is_answered_with_the_number_of_messages_stored() -> None:
    frame = (b"#B#110315;045857;5364.0167;N;06127.8262;E;0;155;965;7;2.40;4;0;;NA;Uext:2:13.2"
             b"|110315;045957;5364.0168;N;06127.8263;E;0;155;965;7|")
    result = PROTOCOL.decode(frame, session())
    assert result.reply == b"#AB#2\r\n"
    assert [p.attributes["archive"] for p in result.positions] == [True, True]
    assert result.positions[1].fix_time == datetime(2015, 3, 11, 4, 59, 57, tzinfo=UTC)


# Fields -------------------------------------------------------------------------------


def test_extended_data_fields() -> None:
    frame = b"#D#270413;205601;5544.6025;N;03739.6834;E;1;2;3;4;0.7;5;6;14.77,0.02,3.6;AB12;count1:1:564,fuel:2:45.8,hw:3:V4.5"
    [p] = PROTOCOL.decode(frame, session()).positions
    assert p.fix_time == datetime(2013, 4, 27, 20, 56, 1, tzinfo=UTC)
    assert p.latitude == pytest.approx(55 + 44.6025 / 60) and p.longitude == pytest.approx(37 + 39.6834 / 60)
    assert (p.speed_kmh, p.course, p.altitude_m, p.satellites, p.hdop, p.valid) == (1.0, 2.0, 3.0, 4, 0.7, True)
    assert p.attributes == {"input": 5, "output": 6, "adc1": 14.77, "adc2": 0.02, "adc3": 3.6,
                            "driverUniqueId": "AB12", "count1": 564, "fuel": 45.8, "hw": "V4.5"}


def test_params_with_reference_names_and_typed_fields() -> None:
    frame = b"#D#NA;NA;NA;NA;NA;NA;NA;NA;NA;NA;NA;NA;NA;;NA;SOS:1:0,temp:3:18,bat:3:99,pwr_ext:2:12.6,pwr_int:2:4.1"
    [p] = PROTOCOL.decode(frame, session()).positions
    assert not p.located and p.fix_time == NOW  # no date and time: server time, as the specification says
    assert p.attributes == {"sos": 0, "deviceTemp": 18, "batteryLevel": 99}
    assert (p.power_mv, p.battery_mv) == (12600, 4100)


def test_cell_towers_become_the_network_attribute() -> None:
    # The corpus frame whose reference value could not be evaluated (a DEVIATIONS entry): its towers.
    frame = (b"#D#NA;NA;NA;NA;NA;NA;NA;NA;NA;NA;NA;NA;NA;;NA;mnc1:1:02,mcc1:1:250,lac1:1:5901,cell_id1:1:45542,"
             b"mnc2:1:22,mcc2:1:222,lac2:1:2222,cell_id2:1:22222,mcc3:1:333")
    [p] = PROTOCOL.decode(frame, session()).positions
    assert p.attributes["network"] == {"cellTowers": [
        {"mobileCountryCode": 250, "mobileNetworkCode": 2, "locationAreaCode": 5901, "cellId": 45542},
        {"mobileCountryCode": 222, "mobileNetworkCode": 22, "locationAreaCode": 2222, "cellId": 22222},
    ]}
    assert p.attributes["mcc3"] == 333


def test_fractional_seconds_and_southern_western_hemispheres() -> None:
    [p] = PROTOCOL.decode(b"#SD#010224;101112.250;1030.0000;S;06654.0000;W;36.5;90;900;2", session()).positions
    assert p.fix_time == datetime(2024, 2, 1, 10, 11, 12, 250000, tzinfo=UTC)
    assert p.latitude == pytest.approx(-10.5) and p.longitude == pytest.approx(-66.9)
    assert p.valid is False  # fewer than 3 satellites


# 2.0 checksums ------------------------------------------------------------------------


def test_a_matching_checksum_is_not_flagged_and_not_a_field() -> None:
    [p] = PROTOCOL.decode(SD, session()).positions
    assert "crcMismatch" not in p.attributes
    assert p.satellites is None  # "NA" before the checksum, the checksum not taken for satellites


def test_a_wrong_checksum_is_stored_flagged_and_acknowledged() -> None:
    result = PROTOCOL.decode(SD[:-4] + b"7A02", session())
    assert result.reply == b"#ASD#1\r\n"
    assert result.positions[0].attributes["crcMismatch"] is True


def test_black_box_checksum_covers_the_messages() -> None:
    body = "010224;101112;1030.0;N;06654.0;W;1;2;3;4|010224;101212;1030.0;N;06654.0;W;1;2;3;4|"
    good = PROTOCOL.decode(with_crc("B", body), session())
    assert good.reply == b"#AB#2\r\n" and not any("crcMismatch" in p.attributes for p in good.positions)
    bad = PROTOCOL.decode(f"#B#{body}0000".encode(), session())
    assert all(p.attributes["crcMismatch"] for p in bad.positions)


# Transports ---------------------------------------------------------------------------


def test_udp_packets_name_their_sender() -> None:
    s = session(None, "udp")
    result = PROTOCOL.decode(b"2.0;865205030000042#SD#010224;101112;1030.0;N;06654.0;W;1;2;3;4", s)
    assert result.reply == b"#ASD#1\r\n" and result.positions[0].device == IMEI
    s = session(None, "udp")
    PROTOCOL.decode(b"865205030000042;pw#P#", s)
    assert (s.device, s.credential) == (IMEI, "pw")


def test_a_payload_of_several_lines_is_decoded_whole() -> None:
    payload = b"#L#865205030000042;NA\r\n" + D + b"\r\n" + SD + b"\r\n"
    result = PROTOCOL.decode(payload, session(None, "mqtt"))
    assert len(result.positions) == 2
    assert result.reply == b"#AL#1\r\n#AD#1\r\n#ASD#1\r\n"


def test_framing_splits_lines_and_keeps_partial_ones() -> None:
    stream = b"#L#1;NA\r\n\r\n#P#\r\n" + D + b"\r\n#SD#0102"
    frames, rest = split_all(PROTOCOL, stream)
    assert frames == [b"#L#1;NA", b"#P#", D]
    assert rest == b"#SD#0102"
    assert split_all(PROTOCOL, D + b"\n")[0] == [D]  # a bare LF ends a line too


def test_an_endless_line_is_cut_off() -> None:
    with pytest.raises(FrameError):
        PROTOCOL.split(b"#D#" + b"1" * PROTOCOL.max_frame)


# Bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(("frame", "message"), [
    (b"hello", "no #<type># packet head"),
    (b"#Q#1", "unsupported packet type 'Q'"),
    (b"#D#1;2;3", "D packet has 3 fields"),
    (b"#SD#320224;101112;1030.0;N;06654.0;W;1;2;3;4", "malformed packet"),
    (b"#SD#010224;101112;9930.0;N;06654.0;W;1;2;3;4", "out of range"),
    (b"#SD#010224;101112;1030.0;X;06654.0;W;1;2;3;4", "bad coordinate"),
    (b"#SD#010224;101112;1030.0;N;06654.0;W;fast;2;3;4", "speed 'fast' is not a number"),
    (b"#L#;pw", "login without a device id"),
])
def test_bad_packets_are_one_line_decode_errors(frame: bytes, message: str) -> None:
    assert message in decode_error(PROTOCOL, frame, session())


def test_a_report_before_login_is_refused_over_tcp() -> None:
    with pytest.raises(DecodeError, match="no login"):
        PROTOCOL.decode(D, session(None))


def test_a_bad_packet_does_not_change_who_the_session_is() -> None:
    s = session(IMEI)
    with pytest.raises(DecodeError):
        PROTOCOL.decode(b"#L#999;pw\r\n#Q#", s)
    assert (s.device, s.credential) == (IMEI, None)


# Encoder ------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2099, 12, 31)),
    st.floats(-89.9, 89.9), st.floats(-179.9, 179.9), st.floats(0, 500), st.integers(0, 359),
    st.integers(-400, 9000), st.integers(0, 40), st.one_of(st.none(), st.integers(0, 60000)),
)
def test_encoder_round_trip(when: datetime, lat: float, lon: float, speed: float, course: int, altitude: int,
                            satellites: int, power_mv: int | None) -> None:
    p = Position(device=IMEI, fix_time=when.replace(microsecond=0, tzinfo=UTC), valid=satellites >= 3, latitude=lat,
                 longitude=lon, speed_kmh=speed, course=float(course), altitude_m=float(altitude),
                 satellites=satellites, hdop=1.2, power_mv=power_mv)
    s = session(None)
    assert PROTOCOL.decode(encode_login(IMEI), s).reply == b"#AL#1\r\n"
    [frame], rest = split_all(PROTOCOL, encode_position(p))
    assert rest == b""
    result = PROTOCOL.decode(frame, s)
    assert result.reply == b"#AD#1\r\n"
    [q] = result.positions
    assert (q.device, q.fix_time, q.valid, q.satellites, q.hdop, q.power_mv) == (
        IMEI, p.fix_time, p.valid, satellites, 1.2, power_mv)
    assert q.latitude == pytest.approx(lat, abs=1e-6) and q.longitude == pytest.approx(lon, abs=1e-6)
    assert q.speed_kmh == pytest.approx(speed, abs=0.05) and q.course == course and q.altitude_m == altitude
    assert "crcMismatch" not in q.attributes


# Over real sockets into the database ----------------------------------------------------


async def _answers(port: int, lines: list[bytes], wait_s: float = 10.0) -> list[bytes]:
    """Sends each line on one connection and reads its answer line; b"" once the server has closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers = []
    try:
        for line in lines:
            writer.write(line)
            await writer.drain()
            answers.append(await asyncio.wait_for(reader.readline(), wait_s))
    finally:
        writer.close()
    return answers


async def test_tcp_reports_are_stored_and_answered_after_commit(db_url: str, tmp_path: Path) -> None:
    ids = register(db_url, [(IMEI, "wialon")])
    p1, p2, p3, p4 = track(IMEI, 4)
    black_box = encode_black_box([p3, p4])
    async with running_ingest(settings_for(tmp_path), db_url) as svc:
        port = svc.tcp["wialon"].port
        answers = await _answers(port, [encode_login(IMEI), encode_position(p1), encode_position(p2), b"#P#\r\n",
                                        black_box])
        # The unit resends what it was not sure of: stored once.
        again = await _answers(port, [encode_login(IMEI), encode_position(p1)])
    assert answers == [b"#AL#1\r\n", b"#AD#1\r\n", b"#AD#1\r\n", b"#AP#\r\n", b"#AB#2\r\n"]
    assert again == [b"#AL#1\r\n", b"#AD#1\r\n"]
    rows = stored(db_url, ids[IMEI])
    assert [r[0] for r in rows] == [p.fix_time for p in (p1, p2, p3, p4)]
    assert rows[0][1] == pytest.approx(p1.latitude, abs=1e-6)


async def test_a_wrong_password_is_answered_al01_and_the_connection_closed(db_url: str, tmp_path: Path) -> None:
    ids = register(db_url, [(IMEI, "wialon")])
    set_device_password(db_url, ids[IMEI], "s3cret-Unit")
    p1, p2 = track(IMEI, 2)
    async with running_ingest(settings_for(tmp_path), db_url) as svc:
        port = svc.tcp["wialon"].port
        wrong = await _answers(port, [encode_login(IMEI, "guess"), encode_position(p1)])
        none = await _answers(port, [encode_login(IMEI), encode_position(p1)])
        right = await _answers(port, [encode_login(IMEI, "s3cret-Unit"), encode_position(p2)])
        udp_wrong = await udp_exchange(svc.udp["wialon"].port, f"{IMEI};guess".encode() + encode_position(p1))
        udp_right = await udp_exchange(svc.udp["wialon"].port, f"{IMEI};s3cret-Unit".encode() + encode_position(p1))
    print(f"\nwialon password: wrong {wrong}, none {none}, right {right}, udp wrong {udp_wrong!r}, right {udp_right!r}")
    assert wrong == [b"#AL#01\r\n", b""] and none == [b"#AL#01\r\n", b""]
    assert right == [b"#AL#1\r\n", b"#AD#1\r\n"]
    assert udp_wrong is None and udp_right == b"#AD#1\r\n"  # a UDP datagram carries its password each time
    assert [r[0] for r in stored(db_url, ids[IMEI])] == [p1.fix_time, p2.fix_time]


async def test_udp_packets_are_stored_and_answered(db_url: str, tmp_path: Path) -> None:
    ids = register(db_url, [(IMEI, "wialon")])
    [p] = track(IMEI, 1)
    async with running_ingest(settings_for(tmp_path), db_url) as svc:
        reply = await udp_exchange(svc.udp["wialon"].port, b"2.0;" + IMEI.encode() + encode_position(p))
    assert reply == b"#AD#1\r\n"
    assert [r[0] for r in stored(db_url, ids[IMEI])] == [p.fix_time]


async def test_wialon_over_mqtt_takes_the_device_from_the_topic(db_url: str, tmp_path: Path,
                                                                mqtt_broker: LocalBroker) -> None:
    ids = register(db_url, [(IMEI, "wialon"), ("865205030000043", "wialon")])
    p1, p2, p3 = track(IMEI, 3)
    [other] = track("865205030000043", 1)
    async with running_ingest(settings_for(tmp_path, mqtt_group=f"g{tmp_path.name[-6:]}"), db_url,
                              mqtt_broker.url) as svc:
        assert svc.mqtt is not None
        await asyncio.wait_for(svc.mqtt.connected.wait(), 10)
        async with aiomqtt.Client("127.0.0.1", mqtt_broker.port) as pub:
            # An export with no login: the topic names the unit.
            await pub.publish(f"avl/in/wialon/{IMEI}", encode_position(p1), qos=1)
            # A unit's whole session in one message: login, a report, a black box.
            await pub.publish(f"avl/in/wialon/{IMEI}", encode_login(IMEI) + encode_position(p2)
                              + encode_black_box([p3]), qos=1)
            # A payload that logs in as another unit is refused (and acknowledged: resending cannot help).
            await pub.publish(f"avl/in/wialon/{IMEI}", encode_login("865205030000043") + encode_position(other), qos=1)
        assert await eventually(lambda: svc.mqtt is not None and svc.mqtt.acked >= 3)
    assert [r[0] for r in stored(db_url, ids[IMEI])] == [p1.fix_time, p2.fix_time, p3.fix_time]
    assert stored(db_url, ids["865205030000043"]) == []
