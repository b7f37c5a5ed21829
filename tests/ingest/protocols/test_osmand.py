"""Behaviour of the OsmAnd HTTP decoder: responses, records, request framing, bad input, round trip."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import partial

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avl.records import Position
from ingest.protocols.base import KNOTS_TO_KMH, DecodeError, FrameError, Session
from ingest.protocols.osmand import PROTOCOL, encode_login, encode_position
from tests.ingest.protocols.framing import split_all

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"


def session(**options: str) -> Session:
    return Session(transport="http", device=None, options=dict(options), now=lambda: NOW)


def get(query: str, headers: str = "") -> bytes:
    return f"GET /?{query} HTTP/1.1\r\nHost: example\r\n{headers}\r\n".encode()


def post(body: bytes, content_type: str) -> bytes:
    return (f"POST / HTTP/1.1\r\nHost: example\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


split_all = partial(split_all, PROTOCOL)


# Responses and records ----------------------------------------------------------------------


def test_query_report_is_answered_200_and_decoded() -> None:
    s = session()
    result = PROTOCOL.decode(get("id=dev1&lat=52.5&lon=13.25&timestamp=1714564800&speed=10&bearing=90"
                                 "&altitude=34.5&hdop=1.2&accuracy=5&batt=77"), s)
    assert result.reply == OK
    assert s.device == "dev1"
    [p] = result.positions
    assert p.device == "dev1"
    assert p.valid is True
    assert (p.latitude, p.longitude) == (52.5, 13.25)
    assert p.fix_time == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert p.speed_kmh == pytest.approx(10 * KNOTS_TO_KMH)
    assert p.course == 90.0
    assert p.altitude_m == 34.5
    assert p.hdop == 1.2
    assert p.attributes == {"accuracy": 5.0, "batteryLevel": 77.0}


def test_missing_id_is_answered_400_with_no_records_and_no_identity() -> None:
    s = session()
    result = PROTOCOL.decode(get("lat=52.5&lon=13.25&timestamp=1714564800"), s)
    assert result.positions == []
    assert result.reply is not None and result.reply.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert s.device is None


@pytest.mark.parametrize("query", [
    "id=dev1&lat=abc&lon=13",
    "id=dev1&lat=91&lon=13",
    "id=dev1&lat=52&lon=13&speed=fast",
    "id=dev1&lat=52&lon=13&timestamp=yesterday",
    "id=dev1&location=52",
    "id=dev1&lat=nan&lon=13",
    "id=&lat=52&lon=13",
])
def test_bad_values_are_answered_400_with_no_records(query: str) -> None:
    s = session()
    result = PROTOCOL.decode(get(query), s)
    assert result.positions == []
    assert result.reply is not None and result.reply.startswith(b"HTTP/1.1 400 ")
    assert s.device is None


def test_unknown_device_is_still_decoded() -> None:
    s = Session(transport="http", device="previous", now=lambda: NOW)
    [p] = PROTOCOL.decode(get("deviceid=never-seen&lat=1&lon=2"), s).positions
    assert p.device == "never-seen" and s.device == "never-seen"
    assert p.fix_time == NOW  # no timestamp: server time


def test_form_post_body_is_read_when_the_query_is_empty() -> None:
    result = PROTOCOL.decode(post(b"id=dev2&lat=-33.9&lon=18.4&timestamp=1714564800", "application/x-www-form-urlencoded"),
                             session())
    [p] = result.positions
    assert (p.device, p.latitude, p.longitude) == ("dev2", -33.9, 18.4)
    assert result.reply == OK


def test_json_post_with_a_batch_of_locations() -> None:
    body = json.dumps({
        "device_id": "phone-7",
        "location": [
            {"timestamp": "2024-05-01T10:00:00.500Z",
             "coords": {"latitude": 48.1, "longitude": 11.5, "speed": 10, "heading": 45, "accuracy": 4, "altitude": 520},
             "is_moving": True, "odometer": 1234.4, "event": "motionchange",
             "battery": {"level": 0.5, "is_charging": True}, "activity": {"type": "in_vehicle"},
             "extras": {"driver": "anna", "ignition": True}},
            {"timestamp": "2024-05-01T10:00:10Z",
             "coords": {"latitude": 48.2, "longitude": 11.6, "speed": -1, "heading": -1, "accuracy": -1, "altitude": 0},
             "battery": {"level": -1, "is_charging": False}},
        ],
    }).encode()
    result = PROTOCOL.decode(post(body, "application/json; charset=utf-8"), session())
    assert result.reply == OK
    first, second = result.positions
    assert first.device == "phone-7"
    assert first.fix_time == datetime(2024, 5, 1, 10, 0, 0, 500000, tzinfo=UTC)
    assert first.speed_kmh == pytest.approx(36.0)  # m/s
    assert first.course == 45 and first.altitude_m == 520
    assert first.odometer_m == 1234
    assert first.ignition is True
    assert first.attributes == {"accuracy": 4.0, "motion": True, "event": "motionchange", "batteryLevel": 50,
                                "charge": True, "activity": "in_vehicle", "driver": "anna"}
    # -1 means "unknown" in this format
    assert second.speed_kmh is None and second.course is None
    assert "accuracy" not in second.attributes and "batteryLevel" not in second.attributes


@pytest.mark.parametrize("body", [
    b"{not json",
    b"[]",
    b'{"location": {"coords": {"latitude": 1, "longitude": 2}}}',
    b'{"device_id": "x", "location": {"coords": {"latitude": "north", "longitude": 2}}}',
    b'{"device_id": "x", "location": {"timestamp": "soon"}}',
])
def test_bad_json_is_answered_400(body: bytes) -> None:
    result = PROTOCOL.decode(post(body, "application/json"), session())
    assert result.positions == []
    assert result.reply is not None and result.reply.startswith(b"HTTP/1.1 400 ")


@pytest.mark.parametrize(("value", "expected"), [
    ("1714564800", datetime(2024, 5, 1, 12, 0, tzinfo=UTC)),
    ("1714564800250", datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC)),
    ("2024-05-01T14:00:00%2B02:00", datetime(2024, 5, 1, 12, 0, tzinfo=UTC)),
    ("2024-05-01+12:00:00", datetime(2024, 5, 1, 12, 0, tzinfo=UTC)),
])
def test_timestamp_forms(value: str, expected: datetime) -> None:
    [p] = PROTOCOL.decode(get(f"id=d&lat=1&lon=2&timestamp={value}"), session()).positions
    assert p.fix_time == expected


def test_plain_local_timestamp_uses_the_device_timezone_option() -> None:
    [p] = PROTOCOL.decode(get("id=d&lat=1&lon=2&timestamp=2024-05-01+14:00:00"),
                          session(timezone="Europe/Berlin")).positions
    assert p.fix_time == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def test_report_without_location_is_a_status_record_with_network() -> None:
    [p] = PROTOCOL.decode(get("id=d&timestamp=1714564800&cell=262,2,100,200,-80&wifi=00-14-22-01-23-45,-70"),
                          session()).positions
    assert not p.located
    assert p.attributes["network"] == {
        "cellTowers": [{"mobileCountryCode": 262, "mobileNetworkCode": 2, "locationAreaCode": 100, "cellId": 200,
                        "signalStrength": -80}],
        "wifiAccessPoints": [{"macAddress": "00:14:22:01:23:45", "signalStrength": -70}],
    }


def test_other_keys_become_typed_fields_or_attributes() -> None:
    [p] = PROTOCOL.decode(get("id=d&lat=1&lon=2&ignition=true&power=12.6&rpm=933&motion=false&driverUniqueId=42"
                              "&note=hi+there&valid=false"), session()).positions
    assert p.ignition is True
    assert p.power_mv == 12600
    assert p.valid is False
    assert p.attributes == {"rpm": 933.0, "motion": False, "driverUniqueId": "42", "note": "hi there"}


def test_connection_close_is_honoured_in_the_response() -> None:
    result = PROTOCOL.decode(get("id=d&lat=1&lon=2", "Connection: close\r\n"), session())
    assert result.reply == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    http10 = PROTOCOL.decode(b"GET /?id=d&lat=1&lon=2 HTTP/1.0\r\n\r\n", session())
    assert http10.reply is not None and b"Connection: close" in http10.reply


def test_request_without_its_final_blank_line_decodes_the_same() -> None:
    raw = get("id=d&lat=1&lon=2&timestamp=1714564800")
    assert PROTOCOL.decode(raw.rstrip(b"\r\n"), session()).positions[0].fix_time == NOW


@pytest.mark.parametrize("raw", [b"", b"hello", b"\x16\x03\x01\x02\x00", b"get / http/1.1\r\n\r\n"])
def test_bytes_that_are_not_http_raise_decode_error(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        PROTOCOL.decode(raw, session())


def test_deeply_nested_json_is_answered_400() -> None:
    result = PROTOCOL.decode(post(b"[" * 50000, "application/json"), session())
    assert result.positions == [] and result.reply is not None and result.reply.startswith(b"HTTP/1.1 400 ")


def test_truncated_body_is_answered_400() -> None:
    raw = b"POST / HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{\"device_id\":"
    result = PROTOCOL.decode(raw, session())
    assert result.positions == [] and result.reply is not None and result.reply.startswith(b"HTTP/1.1 400 ")


# Framing -------------------------------------------------------------------------------


def test_split_two_pipelined_requests_plus_half_a_third() -> None:
    one = get("id=a&lat=1&lon=2")
    two = post(b'{"device_id":"b","location":{}}', "application/json")
    frames, rest = split_all(one + two + two[:30])
    assert frames == [one, two]
    assert rest == two[:30]


def test_split_waits_for_the_whole_body() -> None:
    two = post(b"id=b&lat=1&lon=2", "application/x-www-form-urlencoded")
    assert PROTOCOL.split(two[:-3]) == (None, 0)
    assert PROTOCOL.split(two) == (two, len(two))


def test_split_skips_blank_lines_between_requests() -> None:
    frames, rest = split_all(b"\r\n\r\n" + get("id=a"))
    assert frames == [get("id=a")] and rest == b""


@pytest.mark.parametrize("stream", [
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 999999\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: ten\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    b"garbage line\r\n",
])
def test_split_refuses_what_it_cannot_frame(stream: bytes) -> None:
    with pytest.raises(FrameError):
        PROTOCOL.split(stream)


def test_split_oversized_header_raises_frame_error() -> None:
    with pytest.raises(FrameError):
        PROTOCOL.split(b"GET /?" + b"a" * PROTOCOL.max_frame)


# Properties ----------------------------------------------------------------------------


@settings(max_examples=400)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_decode_errors(data: bytes) -> None:
    try:
        split_all(data)
    except DecodeError:
        pass
    for raw in (data, b"GET /?" + data + b" HTTP/1.1\r\n\r\n",
                b"POST / HTTP/1.1\r\nContent-Type: application/json\r\n\r\n" + data):
        try:
            PROTOCOL.decode(raw, session())
        except DecodeError:
            pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["device_id", "location", "coords", "latitude", "longitude", "speed", "heading",
                         "timestamp", "battery", "level", "extras", "odometer", "activity", "type", "x"]),
        inner, max_size=5),
    max_leaves=20,
)


@given(json_values)
def test_arbitrary_json_gets_a_response_not_an_exception(value: object) -> None:
    result = PROTOCOL.decode(post(json.dumps(value).encode(), "application/json"), session())
    assert result.reply is not None


@given(st.lists(st.tuples(st.sampled_from(["id", "lat", "lon", "location", "timestamp", "speed", "bearing", "cell",
                                           "wifi", "batt", "hdop", "power", "ignition", "odometer", "sat", "x"]),
                          st.text(max_size=12)), max_size=8))
def test_arbitrary_query_values_get_a_response_not_an_exception(pairs: list[tuple[str, str]]) -> None:
    from urllib.parse import urlencode

    result = PROTOCOL.decode(get(urlencode(pairs)), session())
    assert result.reply is not None


positions = st.builds(
    Position,
    device=st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=20)
    .filter(lambda d: d.strip() == d and d != ""),
    fix_time=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2037, 12, 31),
                          timezones=st.just(UTC)).map(lambda t: t.replace(microsecond=0)),
    valid=st.booleans(),
    latitude=st.floats(min_value=-90, max_value=90).filter(lambda v: v != 0),
    longitude=st.floats(min_value=-180, max_value=180),
    speed_kmh=st.none() | st.floats(min_value=0, max_value=1500),
    course=st.none() | st.floats(min_value=0, max_value=360),
    altitude_m=st.none() | st.floats(min_value=-400, max_value=9000),
    satellites=st.none() | st.integers(min_value=0, max_value=40),
    ignition=st.none() | st.booleans(),
    power_mv=st.none() | st.integers(min_value=0, max_value=60000),
)


@given(positions)
def test_encode_position_round_trips_through_split_and_decode(p: Position) -> None:
    frames, rest = split_all(encode_position(p))
    assert len(frames) == 1 and rest == b""
    s = session()
    result = PROTOCOL.decode(frames[0], s)
    assert result.reply == OK
    [q] = result.positions
    assert q.device == p.device == s.device
    assert q.fix_time == p.fix_time
    assert q.valid is p.valid
    assert q.latitude == p.latitude and q.longitude == p.longitude
    if p.speed_kmh is None:
        assert q.speed_kmh is None
    else:
        assert q.speed_kmh == pytest.approx(p.speed_kmh, rel=1e-9, abs=1e-9)
    assert q.course == p.course and q.altitude_m == p.altitude_m
    assert q.satellites == p.satellites and q.ignition is p.ignition and q.power_mv == p.power_mv


def test_osmand_has_no_login() -> None:
    assert encode_login("dev1") is None
