"""Billing and the account lifecycle through the `avl` command, on a real database: pre-paid
top-ups and their ledger, suspension at zero and reconnection by a top-up, lines remembered,
voluntary retirement's letter and minimum permanence, and the audit trail of every change."""

from __future__ import annotations

import getpass
import json
from decimal import Decimal
from typing import Any

import psycopg

from tests.avl.test_cli import assert_one_line_error, run


def lines(env: dict[str, str], *args: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in run(env, *args).stdout.splitlines()]


def one(env: dict[str, str], *args: str) -> dict[str, Any]:
    (row,) = lines(env, *args)
    return row


def history(env: dict[str, str], account: str) -> list[tuple[Any, ...]]:
    """The account's status changes, oldest first: (from, to, cause, actor, via)."""
    return [(c["from_status"], c["to_status"], c["cause"], c["actor"], c["via"])
            for c in reversed(lines(env, "account", "history", account))]


ME = f"cli {getpass.getuser()}"


def test_a_top_up_is_added_once_per_reference_and_the_ledger_adds_up(avl_env: dict[str, str], db_url: str) -> None:
    run(avl_env, "account", "add", "Prepago Norte", "--billing", "pre_paid", "--balance", "10")
    first = one(avl_env, "account", "topup", "prepago norte", "50.00", "--reference", "TU-000981",
                "--reason", "Tarjeta Única")
    assert (first["replayed"], first["account"]["balance"], first["entry"]["balance_after"]) == (False, "60.00", "60.00")
    again = one(avl_env, "account", "topup", "Prepago Norte", "50", "--reference", "TU-000981")
    assert (again["replayed"], again["entry"]["id"], again["account"]["balance"]) == (True, first["entry"]["id"], "60.00")
    # The same reference for another amount is a mistake, said in one line (Spanish by default).
    assert_one_line_error(run(avl_env, "account", "topup", "Prepago Norte", "20", "--reference", "TU-000981",
                              check=False), "TU-000981", "ya se usó")
    account, *movements = lines(avl_env, "account", "ledger", "Prepago Norte")
    assert account["balance"] == "60.00" and account["available"] == "60.00"
    assert [(m["kind"], m["amount"], m["balance_after"], m["reference"], m["actor"]) for m in movements] == [
        ("topup", "50.00", "60.00", "TU-000981", ME),
        ("adjustment", "10.00", "10.00", None, "account creation")]  # the opening balance
    with psycopg.connect(db_url) as conn:  # the balance is the ledger's sum
        assert conn.execute("SELECT sum(amount) FROM account_ledger").fetchone() == (Decimal("60.00"),)

    run(avl_env, "account", "add", "Pospago Sur")
    assert_one_line_error(run(avl_env, "account", "topup", "Pospago Sur", "10", check=False), "postpago")
    assert_one_line_error(run(avl_env, "account", "topup", "Prepago Norte", "0", check=False), "mayor que cero")
    assert_one_line_error(run(avl_env, "account", "topup", "Prepago Norte", "1.005", check=False), "AMOUNT")
    english = run({**avl_env, "AVL_LANGUAGE": "en"}, "account", "topup", "Pospago Sur", "10", check=False)
    assert_one_line_error(english, "post-paid")


def test_a_pre_paid_account_is_suspended_at_zero_and_reconnected_by_its_top_up(avl_env: dict[str, str],
                                                                                db_url: str) -> None:
    run(avl_env, "account", "add", "Prepago Este", "--billing", "pre_paid", "--balance", "3")
    run(avl_env, "device", "add", "356307042441021", "--protocol", "teltonika", "--account", "Prepago Este",
        "--msisdn", "04140001021", "--plate", "PE100AA")
    empty = one(avl_env, "account", "adjust", "Prepago Este", "--amount", "-3.00", "--reason", "reintegro al cliente")
    assert (empty["suspended"], empty["account"]["balance"], empty["account"]["status"],
            empty["account"]["status_cause"]) == (True, "0.00", "suspended", "no_balance")
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT line_status, line_suspended_by FROM devices").fetchall() == [("suspended", "account")]
    # Not reconnected by hand while there is nothing to spend: a top-up does it.
    assert_one_line_error(run(avl_env, "account", "reconnect", "Prepago Este", check=False), "al recargarla")
    back = one(avl_env, "account", "topup", "Prepago Este", "20", "--reference", "TU-1")
    assert (back["reconnected"], back["account"]["status"], back["account"]["status_cause"]) == (True, "active", None)
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT line_status, line_suspended_by FROM devices").fetchall() == [("active", None)]
    assert history(avl_env, "Prepago Este") == [("active", "suspended", "no_balance", "system", "system"),
                                                ("suspended", "active", "topup", ME, "cli")]
    changes = lines(avl_env, "account", "history", "Prepago Este")
    ledger = lines(avl_env, "account", "ledger", "Prepago Este")[1:]
    # Each change names the ledger entry that made it.
    assert [c["reference"] for c in changes] == [f"ledger:{ledger[0]['id']}", f"ledger:{ledger[1]['id']}"]
    assert changes[1]["details"] == {"lines_suspended": 1}


def test_reconnection_restores_only_the_lines_the_account_suspension_suspended(avl_env: dict[str, str],
                                                                               db_url: str) -> None:
    run(avl_env, "account", "add", "Flota Lineas")
    for imei, plate in (("356307042441039", "FL100AA"), ("356307042441047", "FL200AA")):
        run(avl_env, "device", "add", imei, "--protocol", "teltonika", "--account", "Flota Lineas", "--plate", plate)
    with psycopg.connect(db_url) as conn:  # the carrier suspends one SIM on its own (as the admin API's PATCH does)
        conn.execute("UPDATE devices SET line_status = 'suspended' WHERE identifier = '356307042441047'")

    def lines_now() -> list[tuple[str, str, str | None]]:
        with psycopg.connect(db_url) as conn:
            return conn.execute("SELECT identifier, line_status, line_suspended_by FROM devices ORDER BY id").fetchall()

    suspended = one(avl_env, "account", "suspend", "Flota Lineas")
    assert (suspended["status"], suspended["status_reason"], suspended["change"]["details"]) == \
        ("suspended", "non-payment", {"lines_suspended": 1})
    assert lines_now() == [("356307042441039", "suspended", "account"), ("356307042441047", "suspended", "line")]
    assert one(avl_env, "account", "suspend", "Flota Lineas")["change"] is None  # already suspended: nothing recorded
    reconnected = one(avl_env, "account", "reconnect", "Flota Lineas", "--reason", "pago recibido")
    assert reconnected["change"]["details"] == {"lines_reactivated": 1}
    assert lines_now() == [("356307042441039", "active", None), ("356307042441047", "suspended", "line")]
    assert history(avl_env, "Flota Lineas") == [("active", "suspended", "non_payment", ME, "cli"),
                                                ("suspended", "active", "payment", ME, "cli")]


def test_voluntary_retirement_needs_the_signed_letter_and_the_minimum_permanence(avl_env: dict[str, str],
                                                                                  db_url: str) -> None:
    run(avl_env, "account", "add", "Flota Nueva")
    run(avl_env, "device", "add", "356307042441054", "--protocol", "teltonika", "--account", "Flota Nueva")
    no_kind = run(avl_env, "account", "retire", "Flota Nueva", check=False)
    assert no_kind.returncode != 0 and "--kind" in no_kind.stderr
    assert_one_line_error(run(avl_env, "account", "retire", "Flota Nueva", "--kind", "voluntary", check=False), "carta")
    early = run(avl_env, "account", "retire", "Flota Nueva", "--kind", "voluntary", "--letter", "CR-2026-118",
                check=False)
    with psycopg.connect(db_url) as conn:
        created = conn.execute("SELECT created_at FROM accounts").fetchone()
    assert created is not None
    until = created[0].replace(year=created[0].year + 1).date().isoformat()
    assert_one_line_error(early, "12 meses", until)  # refused with the date it becomes possible
    retired = one(avl_env, "account", "retire", "Flota Nueva", "--kind", "voluntary", "--letter", "CR-2026-118",
                  "--force-reason", "cierre de la empresa")
    assert (retired["status"], retired["status_cause"]) == ("retired", "voluntary")
    assert retired["change"]["reference"] == "CR-2026-118"
    assert {k: retired["change"]["details"][k] for k in ("kind", "letter", "forced", "force_reason", "lines_suspended")} \
        == {"kind": "voluntary", "letter": "CR-2026-118", "forced": True, "force_reason": "cierre de la empresa",
            "lines_suspended": 1}
    assert_one_line_error(run(avl_env, "account", "reconnect", "Flota Nueva", check=False), "retirada")

    # The permanence is a setting: with none, a voluntary retirement with its letter goes through.
    run(avl_env, "account", "add", "Flota Libre")
    done = one({**avl_env, "AVL_MIN_PERMANENCE_MONTHS": "0"}, "account", "retire", "Flota Libre", "--kind",
               "voluntary", "--letter", "CR-2026-119")
    assert (done["status"], done["change"]["details"].get("forced")) == ("retired", None)
    by_payment = one(avl_env, "account", "add", "Flota Pago")
    assert one(avl_env, "account", "retire", str(by_payment["id"]), "--kind", "by_payment")["status_cause"] == "by_payment"
    assert history(avl_env, "Flota Pago") == [("active", "retired", "by_payment", ME, "cli")]
