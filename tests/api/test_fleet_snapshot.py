"""The fleet list answered from the API process's memory (api/fleet_snapshot.py), over real HTTP on a
real database: the same bytes the database builds after every kind of change, a report committed
before a request in its answer (notified or not), device events committed out of id order, ETag and
304, tenancy, and the database answering while the listening connection is gone."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from api.fleet_snapshot import LISTEN_NAME
from avl.admin import DeviceSpec, add_device, hash_token, set_account_status
from avl.config import Settings
from tests.api.conftest import Api, serve
from tests.api.test_fleet import A2_IMEI, A3_IMEI, A_IMEI, B_IMEI, Fleet, at, make_fleet, send
from tests.ingest.harness import running_ingest, settings_for

VEHICLES = "/api/v1/vehicles"


@pytest.fixture
def fleet(api: Api) -> Fleet:
    return make_fleet(api)


@pytest.fixture
def database_api(db_url: str) -> Iterator[str]:
    """The same API on the same database with the snapshot off: the list built by PostgreSQL."""
    with serve(db_url, Settings(api_fleet_snapshot=False)) as url:
        yield url


def sql(fleet: Fleet, statement: str, *params: object) -> None:
    with psycopg.connect(fleet.api.db_url) as conn:
        conn.execute(statement, params)


def from_memory(r: httpx.Response) -> bool:
    """Whether the answer came from the snapshot (the database's answers carry a digest ETag, "d...")."""
    return r.status_code in (200, 304) and not r.headers["etag"].startswith('"d')


def until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def listener_pid(db_url: str) -> int | None:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s AND query LIKE 'LISTEN%%'",
                           (LISTEN_NAME,)).fetchone()
    return None if row is None else int(row[0])


def by_id(body: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {v["identifier"]: v for v in body}


class Compare:
    """Every variant of the list for a token, from memory and from the database, byte for byte."""

    def __init__(self, fleet: Fleet, database_url: str) -> None:
        self.fleet, self.database_url = fleet, database_url

    def __call__(self, token: str, **params: str) -> list[dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=self.fleet.api.url, headers=headers, timeout=30) as memory, \
                httpx.Client(base_url=self.database_url, headers=headers, timeout=30) as database:
            until(lambda: from_memory(memory.get(VEHICLES)), "the list to be answered from memory")
            for variant in ({}, {"form": "compact"}, {"status": "online"}, {"status": "offline", "form": "compact"}):
                mine, theirs = memory.get(VEHICLES, params={**params, **variant}), database.get(
                    VEHICLES, params={**params, **variant})
                assert from_memory(mine), variant
                assert mine.status_code == theirs.status_code == 200, (mine.text, theirs.text)
                assert mine.content == theirs.content, (variant, mine.text, theirs.text)
            full = memory.get(VEHICLES, params=params)
            assert full.content == database.get(VEHICLES, params=params).content
            out: list[dict[str, Any]] = full.json()
            return out


def test_the_list_from_memory_is_the_databases_after_inserts_updates_and_deletes(fleet: Fleet,
                                                                               database_api: str) -> None:
    same, ids = Compare(fleet, database_api), fleet.ids
    assert {v["identifier"] for v in same(fleet.a)} == {A_IMEI, A2_IMEI, A3_IMEI}
    # Reports: a fresh valid fix, one without a valid fix, one old fix (plain SQL: nobody is told).
    for device, valid, age in ((ids[A_IMEI], True, 5), (ids[A2_IMEI], False, 5), (ids[B_IMEI], True, 3600)):
        sql(fleet, "INSERT INTO latest_positions (device_id, fix_time, received_at, last_received_at, valid, latitude,"
                   " longitude, speed_kmh, alarm) VALUES (%s, now() - make_interval(secs => %s), now(), now(), %s,"
                   " 10.49, -66.88, 12.5, 'sos \"quoted\"')", device, age, valid)
    vehicles = by_id(same(fleet.a))
    assert (vehicles[A_IMEI]["status"], vehicles[A2_IMEI]["status"]) == ("online", "gps_not_updated")
    assert by_id(same(fleet.support))[B_IMEI]["status"] == "gps_not_updated"
    # Updates: the vehicle moves; its plate is renamed; a device's report interval changes.
    sql(fleet, "UPDATE latest_positions SET latitude = 10.5123, fix_time = now() WHERE device_id = %s", ids[A_IMEI])
    sql(fleet, "UPDATE vehicles SET plate = 'AA999ZZ', description = 'grúa \\ nueva' WHERE id = "
               "(SELECT vehicle_id FROM devices WHERE id = %s)", ids[A_IMEI])
    sql(fleet, "UPDATE devices SET report_interval_s = 600 WHERE id = %s", ids[A2_IMEI])
    vehicles = by_id(same(fleet.a))
    assert vehicles[A_IMEI]["plate"] == "AA999ZZ" and vehicles[A_IMEI]["position"]["latitude"] == 10.5123
    # Deletes: a latest position goes; a vehicle is taken off its terminal; a device changes account.
    sql(fleet, "DELETE FROM latest_positions WHERE device_id = %s", ids[A2_IMEI])
    sql(fleet, "UPDATE devices SET vehicle_id = NULL WHERE id = %s", ids[A3_IMEI])
    sql(fleet, "UPDATE devices SET account_id = (SELECT account_id FROM devices WHERE id = %s) WHERE id = %s",
        ids[B_IMEI], ids[A_IMEI])
    assert {v["identifier"] for v in same(fleet.a)} == {A2_IMEI, A3_IMEI}
    assert {v["identifier"] for v in same(fleet.b)} == {A_IMEI, B_IMEI}
    # A vehicle added; a status report without a fix; the account suspended, then restored.
    with psycopg.connect(fleet.api.db_url) as conn:
        new = add_device(conn, DeviceSpec(identifier="356307040000052", protocol="teltonika", account="Flota A",
                                          plate="AA300AA", report_interval_s=30))["id"]
    sql(fleet, "INSERT INTO device_events (device_id, time, kind) VALUES (%s, now(), 'status')", ids[A3_IMEI])
    vehicles = by_id(same(fleet.a))
    assert vehicles["356307040000052"]["id"] == new and vehicles[A3_IMEI]["status"] == "gps_not_updated"
    with psycopg.connect(fleet.api.db_url) as conn:
        set_account_status(conn, "Flota A", "suspend")
    assert {v["status"] for v in same(fleet.a)} == {"account_blocked"}
    assert all(v["position"] is None for v in same(fleet.a))
    same(fleet.support)
    with psycopg.connect(fleet.api.db_url) as conn:
        set_account_status(conn, "Flota A", "reconnect")
    assert "account_blocked" not in {v["status"] for v in same(fleet.a)}


async def test_a_report_committed_is_in_the_next_answer(fleet: Fleet, tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    with fleet.api.client(fleet.a) as c:
        until(lambda: from_memory(c.get(VEHICLES)), "the list to be answered from memory")
        async with running_ingest(settings_for(tmp_path), fleet.api.db_url) as svc:
            for k in range(3):  # each ACK means committed: the very next request has it
                when = now - timedelta(seconds=20 - k)
                await send(svc, A_IMEI, [at(A_IMEI, when, 10.49 + k * 1e-3, -66.88)])
                r = c.get(VEHICLES)
                assert from_memory(r)
                a = by_id(r.json())[A_IMEI]
                assert a["position"]["time"] == when.isoformat().replace("+00:00", "Z")
                assert a["position"]["latitude"] == pytest.approx(10.49 + k * 1e-3)
        # Written by plain SQL, without a notification: the next answer has it all the same.
        sql(fleet, "UPDATE latest_positions SET latitude = 11.25 WHERE device_id = %s", fleet.ids[A_IMEI])
        assert by_id(c.get(VEHICLES).json())[A_IMEI]["position"]["latitude"] == 11.25


def test_device_events_committed_out_of_id_order_are_not_missed(fleet: Fleet) -> None:
    with fleet.api.client(fleet.a) as c:
        until(lambda: from_memory(c.get(VEHICLES)), "the list to be answered from memory")
        assert by_id(c.get(VEHICLES).json())[A3_IMEI]["status"] == "offline"  # never heard from
        with psycopg.connect(fleet.api.db_url) as slow, psycopg.connect(fleet.api.db_url, autocommit=True) as fast:
            # The slow transaction takes the lower event id, the fast one a higher id and commits first.
            slow.execute("INSERT INTO device_events (device_id, time, kind) VALUES (%s, now(), 'status')",
                         (fleet.ids[A3_IMEI],))
            fast.execute("INSERT INTO device_events (device_id, time, kind) VALUES (%s, now(), 'status')",
                         (fleet.ids[A2_IMEI],))
            r = c.get(VEHICLES)
            assert from_memory(r) and by_id(r.json())[A2_IMEI]["status"] == "gps_not_updated"
            assert by_id(r.json())[A3_IMEI]["status"] == "offline"
            slow.commit()
        r = c.get(VEHICLES)
        assert from_memory(r)
        a3 = by_id(r.json())[A3_IMEI]
        assert (a3["status"], a3["status_detail"]) == ("gps_not_updated", "reports arrive without a position")
        assert a3["last_report_at"] is not None


def test_an_unchanged_list_is_a_304_and_a_change_a_new_etag(fleet: Fleet, database_api: str) -> None:
    for url in (fleet.api.url, database_api):
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {fleet.a}"}, timeout=30) as c:
            if url == fleet.api.url:
                until(lambda: from_memory(c.get(VEHICLES)), "the list to be answered from memory")
            first = c.get(VEHICLES)
            etag = first.headers["etag"]
            assert first.headers["cache-control"] == "private, no-cache"
            again = c.get(VEHICLES, headers={"If-None-Match": etag})
            assert (again.status_code, again.content, again.headers["etag"]) == (304, b"", etag)
            assert c.get(VEHICLES, headers={"If-None-Match": f'"other", W/{etag}'}).status_code == 304
            compact = c.get(VEHICLES, params={"form": "compact"}, headers={"If-None-Match": etag})
            assert compact.status_code == 200 and compact.headers["etag"] != etag  # another form, another tag
            assert compact.json()["fields"][:3] == ["id", "identifier", "protocol"]
            assert len(compact.json()["vehicles"]) == len(first.json()) == 3
            sql(fleet, "UPDATE vehicles SET plate = plate || 'X' WHERE account_id = "
                       "(SELECT account_id FROM devices WHERE id = %s)", fleet.ids[A_IMEI])
            changed = c.get(VEHICLES, headers={"If-None-Match": etag})
            assert changed.status_code == 200 and changed.headers["etag"] != etag
            assert by_id(changed.json())[A_IMEI]["plate"].endswith("X")


def test_tenancy_another_accounts_tag_revoked_and_suspended_access(fleet: Fleet) -> None:
    with fleet.api.client(fleet.a) as a, fleet.api.client(fleet.b) as b:
        until(lambda: from_memory(a.get(VEHICLES)), "the list to be answered from memory")
        etag_a = a.get(VEHICLES).headers["etag"]
        # B sending A's tag gets B's own list, never a 304 on A's.
        r = b.get(VEHICLES, headers={"If-None-Match": etag_a})
        assert r.status_code == 200 and [v["identifier"] for v in r.json()] == [B_IMEI]
        assert [v[1] for v in b.get(VEHICLES, params={"form": "compact"}).json()["vehicles"]] == [B_IMEI]
        # A client cannot ask for another account's list.
        assert {v["identifier"] for v in b.get(VEHICLES, params={"account_id": 1}).json()} == {B_IMEI}
        sql(fleet, "INSERT INTO latest_positions (device_id, fix_time, received_at, last_received_at, valid,"
                   " latitude, longitude) VALUES (%s, now(), now(), now(), true, 10.5, -66.9)", fleet.ids[B_IMEI])
        assert b.get(VEHICLES).json()[0]["position"]["latitude"] == 10.5
        # Suspended: the vehicles without positions, in both forms, and no 304 on the tag of the list with them.
        etag_b = b.get(VEHICLES).headers["etag"]
        with psycopg.connect(fleet.api.db_url) as conn:
            set_account_status(conn, "Flota B", "suspend")
        r = b.get(VEHICLES, headers={"If-None-Match": etag_b})
        assert r.status_code == 200 and r.json()[0]["position"] is None
        assert r.json()[0]["status"] == "account_blocked"
        assert b.get(VEHICLES, params={"form": "compact"}).json()["vehicles"][0][8:] == [None] * 8
        # Revoked: refused as before, whatever tag it sends.
        sql(fleet, "UPDATE api_tokens SET revoked_at = now() WHERE token_hash = %s", hash_token(fleet.a))
        assert a.get(VEHICLES, headers={"If-None-Match": etag_a}).status_code == 401
        assert a.get(VEHICLES, params={"form": "compact"}).status_code == 401


def test_without_its_listening_connection_the_list_is_the_databases_and_resyncs_after(fleet: Fleet) -> None:
    ids = fleet.ids
    with fleet.api.client(fleet.a) as c:
        until(lambda: from_memory(c.get(VEHICLES)), "the list to be answered from memory")
        pid = listener_pid(fleet.api.db_url)
        assert pid is not None
        sql(fleet, "SELECT pg_terminate_backend(%s)", pid)
        until(lambda: listener_pid(fleet.api.db_url) != pid, "the listening connection to end")
        # Changes nobody is told of (no listener, plain SQL): every answer has them.
        sql(fleet, "INSERT INTO latest_positions (device_id, fix_time, received_at, last_received_at, valid,"
                   " latitude, longitude) VALUES (%s, now(), now(), now(), true, 10.5, -66.9)", ids[A_IMEI])
        sql(fleet, "UPDATE vehicles SET plate = 'AA777AA' WHERE id = (SELECT vehicle_id FROM devices WHERE id = %s)",
            ids[A2_IMEI])
        vehicles = by_id(c.get(VEHICLES).json())
        assert vehicles[A_IMEI]["position"]["latitude"] == 10.5
        assert vehicles[A2_IMEI]["plate"] == "AA777AA"
        # The connection comes back: the list is from memory again, loaded afresh.
        until(lambda: listener_pid(fleet.api.db_url) not in (None, pid), "the listening connection to be back")
        until(lambda: from_memory(c.get(VEHICLES)), "the list to be answered from memory again")
        sql(fleet, "UPDATE latest_positions SET latitude = 10.75 WHERE device_id = %s", ids[A_IMEI])
        r = c.get(VEHICLES)
        assert from_memory(r)
        vehicles = by_id(r.json())
        assert vehicles[A_IMEI]["position"]["latitude"] == 10.75
        assert vehicles[A2_IMEI]["plate"] == "AA777AA"
