"""`avl ingest` on several processes: the shared device ports take reports in every process, each
report stored once and acknowledged after commit; a dead process is started again."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg

from avl.embedded import free_port
from ingest.processes import absorb_spools, spool_name
from ingest.protocols import DEFAULT_PORTS, gt06
from ingest.spool import Spool
from tests.ingest.harness import closed_unanswered, eventually, register, track

AVL = str(Path(sys.executable).parent / "avl")


def _pids_answering(db_url: str) -> set[int]:
    """The ingest processes with a heartbeat (each writes its own, instance ``host:pid``)."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT instance FROM platform_status WHERE component = 'ingest'").fetchall()
    return {int(r[0].rsplit(":", 1)[1]) for r in rows}


def _start(env: dict[str, str], err_path: Path) -> subprocess.Popen[str]:
    with open(err_path, "w") as err:
        return subprocess.Popen([AVL, "ingest"], env=env, stdout=subprocess.DEVNULL, stderr=err, text=True)


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)


def _pids_writing(db_url: str) -> set[int]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT instance FROM platform_status WHERE component = 'ingest'"
                            " AND (details->>'rows_written')::int > 0").fetchall()
    return {int(r[0].rsplit(":", 1)[1]) for r in rows}


async def _send(port: int, imei: str, frames: list[bytes]) -> list[bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        replies = []
        for frame in [gt06.encode_login(imei), *frames]:
            writer.write(frame)
            await writer.drain()
            replies.append(await asyncio.wait_for(reader.readexactly(10), 30))
        return replies
    finally:
        writer.close()


async def test_two_ingest_processes_share_the_ports_and_store_each_report_once(avl_env: dict[str, str], db_url: str,
                                                                              tmp_path: Path) -> None:
    devices = [f"8681202000{i:05d}" for i in range(40)]
    ids = register(db_url, [(d, "gt06") for d in devices])
    ports = {name: free_port() for name in DEFAULT_PORTS}
    env = {**avl_env, "AVL_PORTS": json.dumps(ports), "AVL_INGEST_HOST": "127.0.0.1", "AVL_METRICS_PORT": "0",
           "AVL_INGEST_PROCESSES": "2", "AVL_MQTT_URL": f"mqtt://127.0.0.1:{free_port()}", "AVL_LOG_LEVEL": "INFO",
           "AVL_UDP": "false", "AVL_MAX_CONNECTIONS_PER_SOURCE": "50"}
    err_path = tmp_path / "stderr"
    proc = _start(env, err_path)
    try:
        assert await eventually(lambda: "running: ingest" in err_path.read_text() or proc.poll() is not None, 90)
        assert "running: ingest" in err_path.read_text(), err_path.read_text()
        assert await eventually(lambda: len(_pids_answering(db_url)) == 2, 30), err_path.read_text()
        workers = _pids_answering(db_url)

        # Each device: its reports on one connection, then the same again (it saw no ACK in time).
        positions = {d: track(d, 3) for d in devices}
        frames = {d: [gt06.encode_position(p, n + 2) for n, p in enumerate(positions[d])] for d in devices}
        for _ in range(2):
            results = await asyncio.gather(*(_send(ports["gt06"], d, frames[d]) for d in devices))
            assert all([r[3] for r in replies] == [0x01, 0x22, 0x22, 0x22] for replies in results)

        with psycopg.connect(db_url) as conn:
            counts = dict(conn.execute("SELECT device_id, count(*) FROM positions GROUP BY device_id").fetchall())
        assert counts == {ids[d]: 3 for d in devices}
        # The connections went to both processes: each wrote rows with its own writer.
        assert await eventually(lambda: len(_pids_writing(db_url)) == 2, 30), _pids_writing(db_url)
        log = err_path.read_text()
        assert "[0]: ingest listening" in log and "[1]: ingest listening" in log, log

        # The limit of connections per source is the host's, whichever process took each connection.
        held = [await asyncio.open_connection("127.0.0.1", ports["gt06"]) for _ in range(50)]
        try:
            for reader, writer in held:
                writer.write(gt06.encode_login(devices[0]))
                await asyncio.wait_for(reader.readexactly(10), 30)
            assert await closed_unanswered(ports["gt06"], gt06.encode_login(devices[0]))
        finally:
            for _, writer in held:
                writer.close()
        assert "refusing connection from 127.0.0.1" in err_path.read_text()

        # A process that dies is started again; the service keeps taking reports.
        os.kill(max(workers), signal.SIGKILL)
        assert await eventually(lambda: "starting it again" in err_path.read_text(), 30), err_path.read_text()
        assert await eventually(lambda: len(_pids_answering(db_url) - workers) >= 1, 30), err_path.read_text()
        later = track(devices[0], 2, start=positions[devices[0]][-1].fix_time)[1:]
        replies = await _send(ports["gt06"], devices[0], [gt06.encode_position(later[0], 9)])
        assert replies[1][3] == 0x22
    finally:
        _stop(proc)
    log = err_path.read_text()
    assert proc.returncode == 0 and "Traceback" not in log, log
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM positions WHERE device_id = %s",
                            (ids[devices[0]],)).fetchone() == (4,)
    spools = sorted(p.name for p in (Path(avl_env["AVL_DATA_DIR"]) / "spool").glob("*.log"))
    assert spools == ["spool-1.log", "spool.log"]


def test_spools_of_processes_that_no_longer_run_are_replayed_by_the_first(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    old = Spool(directory, name=spool_name(3))
    for n in range(3):
        old.append(f"record {n}".encode())
    old.close()
    first = Spool(directory, name=spool_name(0))
    first.append(b"its own")
    first.close()
    absorb_spools(directory, 2)  # this run has processes 0 and 1
    first = Spool(directory, name=spool_name(0))
    offset, records = first.read_offset, []
    while (record := first.peek(offset)) is not None:
        payload, offset = record
        records.append(payload)
    first.close()
    assert records == [b"its own", b"record 0", b"record 1", b"record 2"]
    assert not list(directory.glob("spool-3.*"))
