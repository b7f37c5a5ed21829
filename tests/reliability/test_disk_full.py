"""The spool's disk full while the database is away: the ingest stops acknowledging
(devices keep their data) instead of lying, and once the database is back the devices
resend and everything acknowledged is stored.

The spool lives on a small tmpfs (1 MiB, most of it taken by another file) mounted over ``AVL_DATA_DIR/spool`` (needs root, or
CAP_SYS_ADMIN; skipped with the reason otherwise). The service has no setting for the
spool's own size limit (``Spool(max_bytes=...)``), so a full disk is the only way to fill
it from outside.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from avl.embedded import LocalPostgres
from ingest.spool import Spool, SpoolError, decode, encode
from tests.ingest.harness import register
from tests.reliability.harness import (
    ADAPTERS,
    IngestProcess,
    Ledger,
    device,
    drain,
    imei,
    missing_acknowledged,
    read_spool,
    restart_postgres,
    stored_by_device,
    wait_for,
)

PROTOCOLS = ["teltonika", "gt06", "gl200"]


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the full-disk test ({result.stderr.strip() or result.returncode});"
                    " needs root or CAP_SYS_ADMIN")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _free(path: Path) -> int:
    return shutil.disk_usage(path).free


def _acked_set(ledger: Ledger) -> set[tuple[str, datetime]]:
    return {(ident, t) for ident, times in ledger.acked.items() for t in times}


async def _quiet(ledger: Ledger, quiet_s: float, timeout_s: float) -> bool:
    """Waits until no ACK has arrived for ``quiet_s`` while devices keep sending."""
    deadline = time.monotonic() + timeout_s
    last, since = ledger.acked_count, time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        if ledger.acked_count != last:
            last, since = ledger.acked_count, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return True
    return False


async def _disk_full(pg: LocalPostgres, url: str, tmp_path: Path, *, free_space_while_down: bool,
                     per_protocol: int) -> None:
    fleet = [(imei(i, "87"), proto) for n, proto in enumerate(PROTOCOLS)
             for i in range(n * 1000, n * 1000 + per_protocol)]
    ids = register(url, fleet)
    ident_of = {v: k for k, v in ids.items()}
    data_dir = tmp_path / "data"
    with tmpfs(data_dir / "spool", "1m") as spool_dir:
        filler = spool_dir / "other-files"  # whatever else shares the disk (logs, ...)
        filler.write_bytes(os.urandom(640 * 1024))
        # One process, one spool file: "nothing acknowledged once acknowledgements stopped" is what this
        # measures. With several, each file's last block has its own slack, so another process may still
        # append (and fsync, and truly acknowledge) a small batch after the first one was refused.
        ingest = IngestProcess(url, data_dir, PROTOCOLS, env={"AVL_INGEST_PROCESSES": "1"})
        await asyncio.to_thread(ingest.start)
        ledger = Ledger()
        stop, give_up = asyncio.Event(), asyncio.Event()
        tasks = [asyncio.create_task(device(ADAPTERS[proto](), ingest.ports[proto], ident, stop, ledger,
                                            give_up=give_up)) for ident, proto in fleet]
        wedged = False
        freed_acks = 0
        try:
            await asyncio.sleep(1.5)
            pg.kill()
            await asyncio.sleep(1.0)
            mark = _acked_set(ledger)
            full = await _quiet(ledger, 2.0, 30)  # the spool fills up; then acknowledgements stop
            acked_at_full, sent_at_full = ledger.acked_count, ledger.frames_sent
            await asyncio.sleep(3.0)  # devices keep trying against the full disk
            lied = ledger.acked_count - acked_at_full
            tries_while_full = ledger.frames_sent - sent_at_full
            free_when_full = _free(spool_dir)
            spooled, _, _ = read_spool(data_dir)
            from_spool = _acked_set(ledger) - mark
            not_in_spool = from_spool - {(ident_of[d], t) for d, t in spooled}
            if free_space_while_down:
                # Someone frees space on the disk while the database is still away: the spool
                # takes batches again, and acknowledges them.
                filler.unlink()
                before = ledger.acked_count
                await asyncio.sleep(2.0)
                freed_acks = ledger.acked_count - before
            await asyncio.to_thread(restart_postgres, pg)
            drained = await drain(tasks, stop, give_up, 15)
            if not drained:
                # Wedged: SIGKILL and restart it to find out whether anything acknowledged was lost.
                wedged = True
                ingest.kill()
                stop, give_up = asyncio.Event(), asyncio.Event()
                tasks = [asyncio.create_task(device(ADAPTERS[proto](), ingest.ports[proto], ident, stop, ledger,
                                                    give_up=give_up)) for ident, proto in fleet]
                await asyncio.to_thread(ingest.start)
                await drain(tasks, stop, give_up, 20)
            await wait_for(lambda: (spool_dir / "spool.log").stat().st_size == 0, 15)
        finally:
            give_up.set()
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            ingest.stop()
            ingest.kill()
    idents = [i for i, _ in fleet]
    stored = stored_by_device(url, idents)
    lost = missing_acknowledged(ledger, stored)
    log = ingest.log_text()
    errors = [line for line in log.splitlines()
              if (" ERROR " in line or "Error" in line) and "No space left" not in line]
    crash = errors[-1] if errors else "nothing logged after the ENOSPC refusals"
    print(f"\nspool disk full{' then space freed' if free_space_while_down else ''} ({len(fleet)} devices):"
          f" acknowledged from the spool before it filled {len(from_spool)}; while full for 3 s: {tries_while_full}"
          f" frames sent, {lied} acknowledged, {free_when_full} bytes free;"
          f"{f' after space was freed {freed_acks} acknowledged;' if free_space_while_down else ''}"
          f" after the database came back: {'WEDGED (restarted to check)' if wedged else 'resumed'};"
          f" frames sent {ledger.frames_sent}, acknowledged {ledger.acked_count}, stored {stored.total},"
          f" duplicates {stored.duplicates}, acknowledged but missing {sum(map(len, lost.values()))}"
          f"{f'; ingest log: {crash.strip()[:160]}' if wedged else ''}")
    assert full, "acknowledgements never stopped: the spool never filled"
    assert lied == 0, f"{lied} reports acknowledged while the spool's disk was full"
    assert tries_while_full > 0
    assert not not_in_spool, "acknowledged from the spool but not in its file"
    assert not lost, (f"{sum(map(len, lost.values()))} acknowledged reports lost"
                      f"{' (acknowledged after space was freed on the disk)' if free_space_while_down else ''}:"
                      f" {dict(list(lost.items())[:2])}")
    assert stored.duplicates == 0
    assert not wedged, ("after the database came back, nothing was acknowledged for 15 s: the writer is wedged"
                        f" (ingest log: {crash.strip()[:300]})")


async def test_full_spool_disk_stops_acks_and_loses_nothing(killable_db: tuple[LocalPostgres, str],
                                                            tmp_path: Path) -> None:
    pg, url = killable_db
    await _disk_full(pg, url, tmp_path, free_space_while_down=False, per_protocol=1)


@pytest.mark.soak
async def test_full_spool_disk_then_space_freed_loses_nothing(killable_db: tuple[LocalPostgres, str],
                                                              tmp_path: Path) -> None:
    pg, url = killable_db
    await _disk_full(pg, url, tmp_path, free_space_while_down=True, per_protocol=1)


def _rows(n: int, base: int) -> list[tuple[object, ...]]:
    from datetime import UTC, timedelta

    t0 = datetime(2026, 11, 24, tzinfo=UTC)
    return [(1, t0 + timedelta(seconds=base + i), t0, True, 10.5, -66.9, 30.0, 90.0, 900.0, 9, 0.9, True, 12600, 4100,
             i, None, 0, "teltonika", "{}", os.urandom(64)) for i in range(n)]


def test_spool_after_a_failed_append_keeps_every_acknowledged_record(tmp_path: Path) -> None:
    """Spool level: appends fail with ENOSPC, space comes back, appends succeed (and are
    acknowledged); replaying must give back every appended record, in order, and none
    of the refused ones' bytes may shift them."""
    from ingest.pipeline import Batch

    with tmpfs(tmp_path / "disk", "64k") as disk:
        filler = disk / "other-files"
        filler.write_bytes(os.urandom(40 * 1024))
        spool = Spool(disk / "spool")
        appended: list[int] = []
        refused = 0
        base = 0
        for _ in range(100):
            try:
                spool.append(encode(Batch(positions=_rows(7, base))))
                appended.append(base)
            except SpoolError:
                refused += 1
                if refused >= 3:
                    break
            base += 7
        filler.unlink()  # space comes back
        for _ in range(3):
            spool.append(encode(Batch(positions=_rows(2, base))))  # acknowledged
            appended.append(base)
            base += 2
        replayed: list[datetime] = []
        try:
            while (record := spool.peek()) is not None:
                replayed.append(decode(record[0]).positions[0][1])  # the batch's first fix time
                spool.advance(record[1])
        except (OSError, SpoolError) as exc:
            pytest.fail(f"replay failed after a refused append: {type(exc).__name__}: {exc}")
        finally:
            spool.close()
    from datetime import UTC, timedelta

    t0 = datetime(2026, 11, 24, tzinfo=UTC)
    want = [t0 + timedelta(seconds=b) for b in appended]
    print(f"\nspool on a 64 KiB disk: {len(appended)} records appended (acknowledged), {refused} refused for ENOSPC,"
          f" {len(replayed)} replayed; acknowledged but not replayed {len(set(want) - set(replayed))},"
          f" replayed but never acknowledged {len(set(replayed) - set(want))}")
    assert replayed == want, "replay does not give back exactly the acknowledged records in order"
