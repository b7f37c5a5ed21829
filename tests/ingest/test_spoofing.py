"""Device spoofing defences, over real sockets into a running ingestor on a real database:
an allowlist of source networks per listener (TCP, UDP, HTTP, through the PROXY protocol),
a device password where the protocol carries one (calamp, osmand), the implausible-jump
quarantine, and no UDP reply larger than the datagram it answers."""

from __future__ import annotations

import asyncio
import logging
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from avl.records import Position
from ingest import metrics
from ingest.protocols import calamp, gl200, gt06, osmand
from tests.ingest.harness import (
    closed_unanswered,
    eventually,
    exchange,
    http_status,
    proxy_v2,
    register,
    running_ingest,
    settings_for,
    stored,
    track,
    udp_exchange,
)

IMEI, ESN, PHONE = "868120201234561", "4634040001", "phone-7"


def _count(counter: object, *labels: str) -> float:
    return counter.labels(*labels)._value.get()  # type: ignore[attr-defined]  # noqa: SLF001


def _set_password(database_url: str, device_id: int, password: str | None) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE devices SET password_sha256 = sha256(convert_to(%s, 'UTF8')) WHERE id = %s",
                     (password, device_id))


async def test_sources_outside_the_allowed_networks_get_nothing_on_tcp_udp_andhttp_status(
        db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ids = register(db_url, [(IMEI, "gt06"), (ESN, "calamp"), (PHONE, "osmand")])
    labels = [("gt06", "tcp"), ("calamp", "udp"), ("osmand", "http")]
    before = [_count(metrics.REFUSED_SOURCES, *x) for x in labels]
    caplog.set_level(logging.WARNING, logger="avl.ingest")
    # The tests connect from 127.0.0.1: outside the carrier's private range.
    async with running_ingest(settings_for(tmp_path, ingest_allow=["10.0.0.0/8"]), db_url) as svc:
        login_and_report = gt06.encode_login(IMEI) + gt06.encode_position(track(IMEI, 1)[0], 2)
        tcp_closed = [await closed_unanswered(svc.tcp["gt06"].port, login_and_report) for _ in range(3)]
        http = await http_status(svc.tcp["osmand"].port, osmand.encode_position(track(PHONE, 1)[0]))
        udp = await udp_exchange(svc.udp["calamp"].port, calamp.encode_position(track(ESN, 1)[0], 5), wait_s=1.5)
    refused = [_count(metrics.REFUSED_SOURCES, *x) - b for x, b in zip(labels, before, strict=True)]
    logged = [r for r in caplog.records if "not in the allowed networks" in r.getMessage() and "gt06" in r.getMessage()]
    print(f"\nfrom 127.0.0.1 with AVL_INGEST_ALLOW=10.0.0.0/8: gt06 connections closed unanswered {tcp_closed},"
          f" osmand answered {http!r}, calamp answered {udp!r}; refused counted {refused}; gt06 log lines {len(logged)}")
    assert tcp_closed == [True, True, True] and http == b"" and udp is None
    assert refused == [3, 1, 1]
    assert len(logged) == 1  # once per address per period, not once per connection
    assert all(stored(db_url, i) == [] for i in ids.values())
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM unknown_devices").fetchone() == (0,)


async def test_the_allowlist_checks_the_device_address_behind_the_proxy_protocol_with_per_protocol_overrides(
        db_url: str, tmp_path: Path) -> None:
    ids = register(db_url, [(IMEI, "gt06"), (PHONE, "osmand")])
    report = track(IMEI, 1)[0]
    settings = settings_for(tmp_path, ingest_allow=["10.0.0.0/8"], ingest_allow_by_protocol={"osmand": []},
                            proxy_protocol=True)
    async with running_ingest(settings, db_url) as svc:
        port = svc.tcp["gt06"].port
        # The balancer (127.0.0.1) is not in the list; the device behind it is.
        acks = await exchange(port, [proxy_v2("10.20.30.40", 40001) + gt06.encode_login(IMEI),
                                     gt06.encode_position(report, 2)], [10, 10])
        forged = await closed_unanswered(port, proxy_v2("203.0.113.9", 40002) + gt06.encode_login(IMEI))
        # Phones report from the internet: osmand's own (empty) list lets everyone in.
        phone = await http_status(svc.tcp["osmand"].port,
                            proxy_v2("203.0.113.9", 40003) + osmand.encode_position(track(PHONE, 1)[0]))
    print(f"\nbehind PROXY: device 10.20.30.40 acked {[a.hex() for a in acks]}, 203.0.113.9 closed {forged},"
          f" phone from 203.0.113.9 answered {phone!r}")
    assert [a[3] for a in acks] == [0x01, 0x22]
    assert forged and phone.startswith(b"HTTP/1.1 200")
    assert len(stored(db_url, ids[IMEI])) == 1 and len(stored(db_url, ids[PHONE])) == 1


async def test_a_phone_with_a_password_must_send_it(db_url: str, tmp_path: Path) -> None:
    ids = register(db_url, [(PHONE, "osmand"), (IMEI, "gt06")])
    p1, p2, p3, p4 = track(PHONE, 4)
    with psycopg.connect(db_url) as conn, pytest.raises(psycopg.errors.CheckViolation):
        # gt06 frames carry no password: one could never be checked, so the database refuses it.
        conn.execute("UPDATE devices SET password_sha256 = sha256('x') WHERE id = %s", (ids[IMEI],))
    refused_before = _count(metrics.REFUSED, "osmand", "password")
    async with running_ingest(settings_for(tmp_path), db_url) as svc:
        port = svc.tcp["osmand"].port
        assert (await http_status(port, osmand.encode_position(p1))).startswith(b"HTTP/1.1 200")
        _set_password(db_url, ids[PHONE], "s3cret-Phone")  # ingest hears of it at once (NOTIFY)
        deadline = asyncio.get_running_loop().time() + 10
        without = b""
        while not without.startswith(b"HTTP/1.1 401") and asyncio.get_running_loop().time() < deadline:
            without = await http_status(port, osmand.encode_position(p2))
            await asyncio.sleep(0.05)
        wrong = await http_status(port, osmand.encode_position(p2).replace(b" HTTP/1.1", b"&password=guess HTTP/1.1"))
        right = await http_status(port, osmand.encode_position(p2).replace(b" HTTP/1.1", b"&password=s3cret-Phone HTTP/1.1"))
        # HTTP Basic credentials (what a client configured with https://id:password@host/ sends) work too.
        basic = await http_status(port, osmand.encode_position(p3).replace(
            b"Host: x\r\n", b"Host: x\r\nAuthorization: Basic cGhvbmUtNzpzM2NyZXQtUGhvbmU=\r\n"))
        # A form POST carries it in the body.
        form = f"id={PHONE}&lat=10.49&lon=-66.88&timestamp={int(p4.fix_time.timestamp())}&password=s3cret-Phone"
        posted = await http_status(port, (f"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                                    f"Content-Length: {len(form)}\r\n\r\n{form}").encode())
    refusals = _count(metrics.REFUSED, "osmand", "password") - refused_before
    print(f"\nosmand with a password: none {without!r}, wrong {wrong!r}, right {right!r}, Basic {basic!r},"
          f" form {posted!r}; refusals counted {refusals:.0f}")
    assert without.startswith(b"HTTP/1.1 401") and wrong.startswith(b"HTTP/1.1 401")
    assert right.startswith(b"HTTP/1.1 200") and basic.startswith(b"HTTP/1.1 200") and posted.startswith(b"HTTP/1.1 200")
    assert refusals >= 2
    assert [r[0] for r in stored(db_url, ids[PHONE])] == [p1.fix_time, p2.fix_time, p3.fix_time, p4.fix_time]
    with psycopg.connect(db_url) as conn:
        raws = [bytes(r[0]) for r in conn.execute("SELECT raw FROM positions WHERE raw IS NOT NULL").fetchall()]
        attributes = conn.execute("SELECT attributes::text FROM positions").fetchall()
    # The password is never stored: not in the raw request, not in the attributes.
    assert raws and not any(b"s3cret" in raw or b"cGhvbmUtNzpzM2NyZXQtUGhvbmU" in raw for raw in raws)
    assert not any("s3cret" in a[0] or "password" in a[0] for a in attributes)


async def test_a_calamp_unit_with_an_authentication_word_must_send_it_in_every_datagram(db_url: str,
                                                                                         tmp_path: Path) -> None:
    ids = register(db_url, [(ESN, "calamp")])
    _set_password(db_url, ids[ESN], "a1b2c3d4")  # the authentication word, as hex
    p1, p2, p3 = track(ESN, 3)
    async with running_ingest(settings_for(tmp_path), db_url) as svc:
        port = svc.udp["calamp"].port
        none = await udp_exchange(port, calamp.encode_position(p1, 1), wait_s=1.5)
        wrong = await udp_exchange(port, calamp.encode_position(p1, 2, auth=bytes.fromhex("00000001")), wait_s=1.5)
        right = await udp_exchange(port, calamp.encode_position(p2, 3, auth=bytes.fromhex("a1b2c3d4")))
        again = await udp_exchange(port, calamp.encode_position(p3, 4), wait_s=1.5)  # the next datagram, without it
    print(f"\ncalamp with an authentication word: none {none!r}, wrong {wrong!r}, right {right!r}, next without {again!r}")
    assert none is None and wrong is None and again is None
    assert right is not None and struct.unpack(">H", right[2:4])[0] == 3
    assert [r[0] for r in stored(db_url, ids[ESN])] == [p2.fix_time]
    with psycopg.connect(db_url) as conn:
        raw = conn.execute("SELECT raw FROM positions").fetchone()
    assert raw is not None and bytes.fromhex("a1b2c3d4") not in bytes(raw[0])


def _at(base: datetime, seconds: float, lat: float, lon: float) -> Position:
    return Position(device=IMEI, fix_time=base + timedelta(seconds=seconds), valid=True, latitude=lat, longitude=lon,
                    speed_kmh=40.0, course=90.0, satellites=9, ignition=True)


async def test_an_implausible_jump_is_quarantined_and_acknowledged_while_late_and_far_data_is_normal(
        db_url: str, tmp_path: Path) -> None:
    ids = register(db_url, [(IMEI, "gl200")])
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=12)
    caracas = _at(t0, 0, 10.4806, -66.9036)
    madrid = _at(t0, 30, 40.4168, -3.7038)  # 7,000 km in 30 s: someone else's report
    caracas_later = _at(t0, 60, 10.4830, -66.9010)  # 400 m on: normal
    bogota_between = _at(t0, 45, 4.7110, -74.0721)  # out of order, between two trusted fixes: still impossible
    valencia_buffered = _at(t0, -3600, 10.1620, -68.0077)  # 125 km an hour earlier, flushed late: normal
    maracaibo_after_silence = _at(t0, 10 * 3600, 10.6545, -71.6406)  # 520 km after 10 h of silence: normal
    reports = [caracas, madrid, caracas_later, bogota_between, valencia_buffered, maracaibo_after_silence]
    before = _count(metrics.QUARANTINED, "gl200", "implausible_jump")
    async with running_ingest(settings_for(tmp_path), db_url) as svc:
        frames = [gl200.encode_position(p, i + 1) for i, p in enumerate(reports)]
        replies = await exchange(svc.tcp["gl200"].port, frames, [11] * len(frames))
    # After a restart the check starts from the latest trusted position, not from nothing.
    async with running_ingest(settings_for(tmp_path), db_url) as svc:
        late_madrid = _at(t0, 10 * 3600 + 60, 40.4168, -3.7038)
        replies += await exchange(svc.tcp["gl200"].port, [gl200.encode_position(late_madrid, 7)], [11])
    counted = _count(metrics.QUARANTINED, "gl200", "implausible_jump") - before
    with psycopg.connect(db_url) as conn:
        quarantined = conn.execute("SELECT reason, fix_time, (record->'jump'->>'speed_kmh')::float FROM"
                                   " positions_quarantine WHERE device_id = %s ORDER BY fix_time", (ids[IMEI],)).fetchall()
        latest = conn.execute("SELECT fix_time FROM latest_positions WHERE device_id = %s", (ids[IMEI],)).fetchone()
    kept = [r[0] for r in stored(db_url, ids[IMEI])]
    print(f"\njumps: replies {len(replies)}, quarantined {[(r[0], r[1].isoformat(), r[2]) for r in quarantined]},"
          f" stored {len(kept)}, counted {counted:.0f}")
    assert replies == [f"+SACK:{i:04X}$".encode() for i in range(1, 8)]  # every report acknowledged: it was received
    assert [(r[0], r[1]) for r in quarantined] == [("implausible_jump", madrid.fix_time),
                                                   ("implausible_jump", bogota_between.fix_time),
                                                   ("implausible_jump", late_madrid.fix_time)]
    assert all(r[2] > 1000 for r in quarantined)
    assert kept == sorted(p.fix_time for p in (caracas, caracas_later, valencia_buffered, maracaibo_after_silence))
    assert latest == (maracaibo_after_silence.fix_time,)
    assert counted == 3


def _quarantined(database_url: str, device_id: int) -> list[tuple[Any, ...]]:
    """(reason, fix time, the trusted fix it contradicted, its place in a run of agreeing reports)."""
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "SELECT reason, fix_time, record->'jump'->'from'->>'fix_time', (record->'jump'->>'agreeing_reports')::int"
            " FROM positions_quarantine WHERE device_id = %s ORDER BY fix_time", (device_id,)).fetchall()


@pytest.mark.parametrize("anchor_from", ["first report", "latest position at start"])
async def test_a_wrong_trusted_fix_is_given_up_after_a_few_reports_of_a_consistent_track(
        db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, anchor_from: str) -> None:
    ids = register(db_url, [(IMEI, "gl200")])
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=12)
    madrid = _at(t0, 0, 40.4168, -3.7038)  # a forged report (or a bad fix): trusted, being the first one seen
    drive = track(IMEI, 8, start=t0 + timedelta(minutes=10))  # the device's own, in Caracas, every 30 s
    before = _count(metrics.JUMP_REANCHORED, "gl200")
    caplog.set_level(logging.WARNING, logger="avl.ingest")
    replies = []
    async with running_ingest(settings_for(tmp_path), db_url) as svc:
        replies += await exchange(svc.tcp["gl200"].port, [gl200.encode_position(madrid, 1)], [11])
        if anchor_from == "first report":
            frames = [gl200.encode_position(p, i + 2) for i, p in enumerate(drive)]
            replies += await exchange(svc.tcp["gl200"].port, frames, [11] * len(frames))
    if anchor_from == "latest position at start":  # a restart: the check starts from latest_positions (Madrid)
        async with running_ingest(settings_for(tmp_path), db_url) as svc:
            frames = [gl200.encode_position(p, i + 2) for i, p in enumerate(drive)]
            replies += await exchange(svc.tcp["gl200"].port, frames, [11] * len(frames))
    reanchored = _count(metrics.JUMP_REANCHORED, "gl200") - before
    quarantined = _quarantined(db_url, ids[IMEI])
    kept = [r[0] for r in stored(db_url, ids[IMEI])]
    with psycopg.connect(db_url) as conn:
        latest = conn.execute("SELECT fix_time FROM latest_positions WHERE device_id = %s", (ids[IMEI],)).fetchone()
    logged = [r.getMessage() for r in caplog.records if "trusting them instead" in r.getMessage()]
    print(f"\nwrong trusted fix ({anchor_from}), then 8 reports of the device's own: quarantined"
          f" {[(r[0], r[1].isoformat(), r[3]) for r in quarantined]}, stored {len(kept)}, re-anchored {reanchored:.0f};"
          f" logged {logged}")
    assert replies == [f"+SACK:{i:04X}$".encode() for i in range(1, 10)]  # every report acknowledged
    # Two reports cost; the third agrees with them over 60 s: they are trusted from then on.
    assert quarantined == [("implausible_jump", drive[0].fix_time, madrid.fix_time.isoformat(), 1),
                           ("implausible_jump", drive[1].fix_time, madrid.fix_time.isoformat(), 2)]
    assert kept == [madrid.fix_time, *(p.fix_time for p in drive[2:])]
    assert latest == (drive[-1].fix_time,)
    assert reanchored == 1
    assert len(logged) == 1 and IMEI in logged[0] and "3 reports over 60 s" in logged[0]


async def test_a_lone_outlier_and_a_short_burst_in_a_good_track_stay_quarantined(db_url: str, tmp_path: Path) -> None:
    ids = register(db_url, [(IMEI, "gl200")])
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=12)
    drive = track(IMEI, 10, start=t0)  # the device's own, every 30 s
    outlier = _at(t0, 100, 40.4168, -3.7038)  # Madrid, between the device's 4th and 5th reports
    # Three reports that agree with each other (Bogota), but over 10 s only, between the 7th and 8th.
    burst = [_at(t0, 185 + 5 * i, 4.7110 + 0.0001 * i, -74.0721) for i in range(3)]
    reports = [*drive[:4], outlier, *drive[4:7], *burst, *drive[7:]]
    before = _count(metrics.JUMP_REANCHORED, "gl200")
    async with running_ingest(settings_for(tmp_path), db_url) as svc:
        frames = [gl200.encode_position(p, i + 1) for i, p in enumerate(reports)]
        replies = await exchange(svc.tcp["gl200"].port, frames, [11] * len(frames))
    reanchored = _count(metrics.JUMP_REANCHORED, "gl200") - before
    quarantined = _quarantined(db_url, ids[IMEI])
    kept = [r[0] for r in stored(db_url, ids[IMEI])]
    print(f"\na good track with a lone outlier and a 3-report burst over 10 s: quarantined"
          f" {[(r[0], r[1].isoformat(), r[2], r[3]) for r in quarantined]}, stored {len(kept)}, re-anchored {reanchored:.0f}")
    assert len(replies) == len(reports)
    # Each names why: the trusted fix it could not follow (the device's report before it), and how many
    # reports agreed with it so far.
    assert quarantined == [("implausible_jump", outlier.fix_time, drive[3].fix_time.isoformat(), 1),
                           *(("implausible_jump", b.fix_time, drive[6].fix_time.isoformat(), i + 1)
                             for i, b in enumerate(burst))]
    assert kept == [p.fix_time for p in drive]
    assert reanchored == 0


async def test_no_udp_reply_is_larger_than_the_datagram_it_answers(db_url: str, tmp_path: Path) -> None:
    register(db_url, [(ESN, "calamp")])
    before = _count(metrics.UDP_REPLIES_DROPPED, "calamp")
    async with running_ingest(settings_for(tmp_path), db_url) as svc:
        loop = asyncio.get_running_loop()
        replies: asyncio.Queue[bytes] = asyncio.Queue()

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: object) -> None:
                replies.put_nowait(data)

        transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", svc.udp["calamp"].port))
        try:
            transport.sendto(calamp.encode_position(track(ESN, 1)[0], 1))  # identifies this source
            first = await asyncio.wait_for(replies.get(), 10)
            # 4 bytes (an acknowledged ID report, service 1, type 3) that the protocol answers with a
            # 10-byte ACK: from a forged source, that would make the listener an amplifier.
            transport.sendto(struct.pack(">BBH", 1, 3, 9))
            await eventually(lambda: _count(metrics.UDP_REPLIES_DROPPED, "calamp") > before)
            try:
                second: bytes | None = await asyncio.wait_for(replies.get(), 1.0)
            except TimeoutError:
                second = None
        finally:
            transport.close()
    dropped = _count(metrics.UDP_REPLIES_DROPPED, "calamp") - before
    print(f"\ncalamp: report answered with {len(first)} bytes; a 4-byte request answered with {second!r}; dropped {dropped:.0f}")
    assert len(first) == 10 and second is None and dropped == 1
