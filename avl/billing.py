"""Accounts' money and service state: the pre-paid ledger (top-ups, debits, adjustments), the
billing system's events (payment overdue or received, top-ups, retirements), and suspension,
reconnection and retirement, each recorded with who or what did it and why.

The mechanics are database functions (migration 0011: ``avl_ledger_post``,
``avl_account_transition``, ``avl_settle_locates``), so every writer applies them alike in one
transaction, ingest's writer included (a report answering a locate-now request is billed as it is
stored). The rules a person is refused by are here, once: each operation is a generator of SQL
steps, run on a blocking connection by :func:`run` (the ``avl`` command) or on the API's async
one by :func:`arun`. Refusals are :class:`BillingError`, worded from the ``billing`` catalogue.

Rules, as the service runs them:
- A pre-paid account is suspended (``no_balance``) when a movement takes its balance to zero or
  below, and reconnected by the top-up that brings it back; billable actions are refused (402)
  while the balance, less what pending requests will cost, is not above zero.
- The billing system's events are idempotent by its reference: payment overdue suspends a
  post-paid account for non-payment; payment received reconnects only an account suspended for
  non-payment (not one suspended for another cause).
- Reconnection reactivates only the lines the account's suspension suspended.
- Retirement kinds: voluntary (the signed letter's reference, after the minimum permanence unless
  forced with a reason), non_payment, by_payment. A retired account is never reconnected.
"""

from __future__ import annotations

import calendar
from collections.abc import Generator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal, TypeVar

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from avl.admin import AdminError
from avl.i18n import DEFAULT_LANGUAGE, t

T = TypeVar("T")
Query = tuple[str, tuple[Any, ...]]
# An operation: yields the queries it needs, receives each one's rows, returns its result.
Steps = Generator[Query, list[dict[str, Any]], T]

Via = Literal["api", "cli", "billing", "system"]
SuspensionCause = Literal["non_payment", "administrative"]
RetirementKind = Literal["voluntary", "non_payment", "by_payment"]
EventKind = Literal["topup", "payment_overdue", "payment_received", "retirement"]
RETIREMENT_KINDS: tuple[str, ...] = ("voluntary", "non_payment", "by_payment")
CENTS = Decimal("0.01")


class BillingError(AdminError):
    """A refused operation: an HTTP status and error code for the API, and a ``billing`` catalogue
    message (``message(lang)``; ``str()`` is the default language's)."""

    def __init__(self, status: int, code: str, key: str, **params: Any) -> None:
        self.status, self.code, self.key, self.params = status, code, key, params
        super().__init__(self.message(DEFAULT_LANGUAGE))

    def message(self, lang: str) -> str:
        return t(f"billing:errors.{self.key}", lang, **self.params)


def money(value: Decimal | float | int | str) -> Decimal:
    return Decimal(str(value)).quantize(CENTS)


def permanence_until(created_at: datetime, months: int) -> datetime:
    """The end of the minimum permanence: ``months`` after creation (a day past the month's end is
    its last day, as PostgreSQL adds months)."""
    year, month = divmod(created_at.month - 1 + months, 12)
    year, month = created_at.year + year, month + 1
    return created_at.replace(year=year, month=month, day=min(created_at.day, calendar.monthrange(year, month)[1]))


# Running the steps -------------------------------------------------------------------------


def run(conn: psycopg.Connection, steps: Steps[T]) -> T:
    """An operation on a blocking connection, in one transaction (a savepoint inside the caller's)."""
    with conn.transaction():
        rows: list[dict[str, Any]] | None = None
        try:
            while True:
                query = steps.send(rows)  # type: ignore[arg-type]  # the first send is None: the generator's start
                with conn.cursor(row_factory=dict_row) as cur:
                    cur.execute(*query)
                    rows = cur.fetchall() if cur.description else []
        except StopIteration as done:
            result: T = done.value
            return result


async def arun(conn: AsyncConnection, steps: Steps[T]) -> T:
    """An operation on the API's async connection, in one transaction."""
    async with conn.transaction():
        rows: list[dict[str, Any]] | None = None
        try:
            while True:
                query = steps.send(rows)  # type: ignore[arg-type]
                async with conn.cursor(row_factory=dict_row) as cur:
                    await cur.execute(*query)
                    rows = await cur.fetchall() if cur.description else []
        except StopIteration as done:
            result: T = done.value
            return result


# Reading ----------------------------------------------------------------------------------

# An account with what billing needs: the balance less what its pending locate-now requests will
# cost when answered (available).
ACCOUNT_SQL = """
SELECT a.id, a.name, a.billing, a.balance, a.status, a.status_cause, a.status_reason, a.status_changed_at,
       a.plan_code, a.created_at, coalesce(p.pending, 0) AS pending, a.balance - coalesce(p.pending, 0) AS available
FROM accounts a
LEFT JOIN LATERAL (SELECT sum(q.price) AS pending FROM locate_requests q
                   LEFT JOIN sms_messages m ON m.id = q.sms_id
                   WHERE q.account_id = a.id AND q.billable AND q.answered_at IS NULL AND q.cancelled_at IS NULL
                     AND q.answer_by > now() AND coalesce(m.status, 'queued') <> ALL (%s)) p ON true
"""
# Receipts (and the outbox's own status) saying the SMS will never reach the terminal.
SMS_FAILED = ["failed", "UNDELIV", "EXPIRED", "REJECTD", "DELETED", "cancelled"]


def account(ref: str | int, *, lock: bool = False) -> Steps[dict[str, Any]]:
    """An account by id or (case-insensitive) name; ``lock``: held until the transaction ends."""
    by_id = isinstance(ref, int) or str(ref).isdigit()
    where = " WHERE a.id = %s" if by_id else " WHERE lower(a.name) = lower(%s)"
    if lock:
        yield ("SELECT 1 FROM accounts a" + where + " FOR UPDATE", (int(ref) if by_id else str(ref),))
    rows = yield (ACCOUNT_SQL + where, (SMS_FAILED, int(ref) if by_id else str(ref)))
    if not rows:
        raise BillingError(404, "not_found", "account_not_found", account=ref)
    return rows[0]


def settle(account_id: int | None) -> Steps[int]:
    """Settles the locate-now requests answered since the last look (normally done as the answer
    is stored; this catches what that left, e.g. an account locked at that moment)."""
    rows = yield ("SELECT avl_settle_locates(%s) AS settled", (account_id,))
    return int(rows[0]["settled"])


def summary(account_id: int) -> Steps[dict[str, Any]]:
    yield from settle(account_id)
    return (yield from account(account_id))


def ledger(account_id: int, *, limit: int = 100, before: int | None = None) -> Steps[list[dict[str, Any]]]:
    """Movements, newest first (``before``: an entry id, for the next page)."""
    yield from account(account_id)
    yield from settle(account_id)
    return (yield ("SELECT * FROM account_ledger WHERE account_id = %s AND (%s::bigint IS NULL OR id < %s)"
                   " ORDER BY id DESC LIMIT %s", (account_id, before, before, limit)))


def status_changes(account_id: int, *, limit: int = 100) -> Steps[list[dict[str, Any]]]:
    """The audit trail of the account's state, newest first."""
    yield from account(account_id)
    return (yield ("SELECT * FROM account_status_changes WHERE account_id = %s ORDER BY id DESC LIMIT %s",
                   (account_id, limit)))


# The pre-paid ledger ---------------------------------------------------------------------------


def topup(ref: str | int, amount: Decimal, *, reference: str | None, reason: str | None, actor: str,
          via: Via) -> Steps[dict[str, Any]]:
    """Adds to a pre-paid balance; the same reference again is the same top-up (not added twice).
    Reconnects the account when it was suspended for an exhausted balance."""
    amount = money(amount)
    if amount <= 0:
        raise BillingError(422, "invalid_request", "amount_positive", amount=amount)
    return (yield from _post(ref, "topup", amount, reference, reason, actor, via))


def adjust(ref: str | int, amount: Decimal, *, reason: str, reference: str | None, actor: str,
           via: Via) -> Steps[dict[str, Any]]:
    """A correction of a pre-paid balance (a refund, a charge reversed), either sign, with a reason."""
    amount = money(amount)
    if amount == 0:
        raise BillingError(422, "invalid_request", "amount_nonzero")
    if not reason or not reason.strip():
        raise BillingError(422, "invalid_request", "reason_required")
    return (yield from _post(ref, "adjustment", amount, reference, reason, actor, via))


def _post(ref: str | int, kind: str, amount: Decimal, reference: str | None, reason: str | None, actor: str,
          via: Via) -> Steps[dict[str, Any]]:
    found = yield from account(ref, lock=True)
    if found["billing"] != "pre_paid":
        raise BillingError(409, "not_pre_paid", "not_pre_paid", account=found["name"])
    posted = (yield ("SELECT * FROM avl_ledger_post(%s, %s, %s, %s, %s, %s, %s)",
                     (found["id"], kind, amount, reference or None, reason, actor, via)))[0]
    entry = (yield ("SELECT * FROM account_ledger WHERE id = %s", (posted["entry_id"],)))[0]
    if posted["replayed"] and (entry["kind"], entry["amount"]) != (kind, amount):
        raise BillingError(409, "reference_conflict", "reference_conflict", reference=reference, account=found["name"],
                           kind=entry["kind"], amount=entry["amount"])
    after = yield from account(found["id"])
    changed = posted["status_change_id"] is not None
    return {"entry": entry, "replayed": posted["replayed"], "reconnected": changed and after["status"] == "active",
            "suspended": changed and after["status"] == "suspended", "account": after}


# Suspension, reconnection, retirement --------------------------------------------------------


def _transition(found: dict[str, Any], status: str, cause: str, reason: str | None, actor: str, via: Via,
                reference: str | None = None, details: dict[str, Any] | None = None,
                note: str | None = None) -> Steps[dict[str, Any]]:
    rows = yield ("SELECT avl_account_transition(%s, %s, %s, %s, %s, %s, %s, %s, %s) AS id",
                  (found["id"], status, cause, reason, actor, via, reference, Jsonb(details or {}), note))
    return (yield ("SELECT * FROM account_status_changes WHERE id = %s", (rows[0]["id"],)))[0]


def _not_retired(found: dict[str, Any]) -> None:
    if found["status"] == "retired":
        raise BillingError(409, "account_retired", "account_retired", account=found["name"])


def suspend(ref: str | int, *, cause: SuspensionCause = "non_payment", reason: str | None = None, actor: str,
            via: Via, reference: str | None = None) -> Steps[dict[str, Any]]:
    """Suspends the account and its active lines; an account already suspended stays as it is
    (``change``: None)."""
    found = yield from account(ref, lock=True)
    _not_retired(found)
    change = None
    if found["status"] != "suspended":
        default = "non-payment" if cause == "non_payment" else "administrative"
        change = yield from _transition(found, "suspended", cause, reason or default, actor, via, reference)
    return {"account": (yield from account(found["id"])), "change": change}


def reconnect(ref: str | int, *, cause: Literal["payment", "administrative"] = "payment", reason: str | None = None,
              actor: str, via: Via, reference: str | None = None) -> Steps[dict[str, Any]]:
    """Reconnects a suspended account and the lines its suspension suspended (a line suspended on
    its own stays so). A pre-paid account without balance is reconnected by a top-up, not by hand."""
    found = yield from account(ref, lock=True)
    _not_retired(found)
    change = None
    if found["status"] == "suspended":
        if found["billing"] == "pre_paid" and found["balance"] <= 0:
            raise BillingError(409, "no_balance", "reconnect_no_balance", account=found["name"], balance=found["balance"])
        change = yield from _transition(found, "active", cause, reason, actor, via, reference)
    return {"account": (yield from account(found["id"])), "change": change}


def retire(ref: str | int, kind: RetirementKind, *, actor: str, via: Via, reason: str | None = None,
           letter: str | None = None, force_reason: str | None = None, permanence_months: int = 12,
           reference: str | None = None, lang: str = DEFAULT_LANGUAGE,
           now: datetime | None = None) -> Steps[dict[str, Any]]:
    """Retires the service: web access blocked (tokens and sessions revoked), every line
    suspended, queued SMS and locate-now requests cancelled (never sent, never billed), open
    tickets closed with a note. The data is kept for billing claims until retention."""
    if kind not in RETIREMENT_KINDS:
        raise BillingError(422, "invalid_request", "retirement_kind_required")
    found = yield from account(ref, lock=True)
    if found["status"] == "retired":
        raise BillingError(409, "account_retired", "already_retired", account=found["name"])
    details: dict[str, Any] = {"kind": kind}
    if kind == "voluntary":
        letter = (letter or "").strip() or None
        if letter is None:
            raise BillingError(422, "letter_required", "letter_required")
        details["letter"] = letter
        until = permanence_until(found["created_at"], permanence_months)
        if (now or datetime.now(UTC)) < until:
            if not (force_reason and force_reason.strip()):
                raise BillingError(409, "minimum_permanence", "permanence", account=found["name"],
                                   months=permanence_months, until=until.date().isoformat())
            details.update(forced=True, force_reason=force_reason.strip(), permanence_until=until.isoformat())
            reason = reason or t("billing:retirement.forced", lang, reason=force_reason.strip())
    label = t(f"billing:kind.{kind}", lang)
    change = yield from _transition(found, "retired", kind, reason or label, actor, via, letter or reference, details,
                                    t("billing:retirement.ticket_note", lang, kind=label))
    return {"account": (yield from account(found["id"])), "change": change}


# The billing system --------------------------------------------------------------------------


def billing_event(reference: str, kind: EventKind, account_id: int, *, actor: str, amount: Decimal | None = None,
                  retirement_kind: RetirementKind | None = None, note: str | None = None,
                  permanence_months: int = 12, lang: str = DEFAULT_LANGUAGE) -> Steps[dict[str, Any]]:
    """One event of the billing system, applied once: the same reference again answers what the
    first did (``replayed``); with other content it is refused. ``outcome``: applied | unchanged."""
    amount = money(amount) if amount is not None else None
    yield ("SELECT pg_advisory_xact_lock(hashtext('avl billing event ' || %s))", (reference,))
    seen = yield ("SELECT * FROM billing_system_events WHERE reference = %s", (reference,))
    if seen:
        first = seen[0]
        if (first["kind"], first["account_id"], first["amount"], first["retirement_kind"]) != \
                (kind, account_id, amount, retirement_kind):
            raise BillingError(409, "reference_conflict", "event_conflict", reference=reference, kind=first["kind"],
                               account=first["account_id"])
        return {**first, "replayed": True, "account": (yield from account(account_id))}
    found = yield from account(account_id, lock=True)
    ledger_id = change_id = None
    outcome = "applied"
    if kind == "topup":
        if amount is None:
            raise BillingError(422, "invalid_request", "amount_required")
        posted = yield from topup(account_id, amount, reference=reference, reason=note, actor=actor, via="billing")
        ledger_id = posted["entry"]["id"]
        balance = posted["account"]["balance"]
        detail = t("billing:outcome.topped_up_reconnected" if posted["reconnected"] else "billing:outcome.topped_up",
                   lang, amount=amount, balance=balance)
    elif found["status"] == "retired":
        outcome, detail = "unchanged", t("billing:outcome.retired_account", lang)
    elif kind in ("payment_overdue", "payment_received"):
        overdue = kind == "payment_overdue"
        if overdue and found["billing"] != "post_paid":
            raise BillingError(409, "not_post_paid", "not_post_paid", account=found["name"])
        why_not = _payment_news_unchanged(found, overdue)
        if why_not:
            outcome = "unchanged"
            detail = t(f"billing:outcome.{why_not}", lang, cause=_cause(found["status_cause"], lang))
        else:
            done = yield from (
                suspend(account_id, cause="non_payment", reason=note, actor=actor, via="billing", reference=reference)
                if overdue else
                reconnect(account_id, cause="payment", reason=note, actor=actor, via="billing", reference=reference))
            change_id = done["change"]["id"]
            detail = t("billing:outcome.suspended" if overdue else "billing:outcome.reconnected", lang)
    else:  # retirement
        if retirement_kind is None:
            raise BillingError(422, "invalid_request", "retirement_kind_required")
        if retirement_kind == "voluntary":
            raise BillingError(422, "invalid_request", "voluntary_by_billing")
        done = yield from retire(account_id, retirement_kind, actor=actor, via="billing", reason=note,
                                 reference=reference, permanence_months=permanence_months, lang=lang)
        change_id = done["change"]["id"]
        detail = t("billing:outcome.retired", lang, kind=t(f"billing:kind.{retirement_kind}", lang))
    rows = yield ("INSERT INTO billing_system_events (reference, kind, account_id, amount, retirement_kind, note,"
                  " received_by, outcome, detail, ledger_id, status_change_id)"
                  " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING *",
                  (reference, kind, account_id, amount, retirement_kind, note, actor, outcome, detail, ledger_id,
                   change_id))
    return {**rows[0], "replayed": False, "account": (yield from account(account_id))}


def _payment_news_unchanged(found: dict[str, Any], overdue: bool) -> str | None:
    """Why a payment overdue (or received) changes nothing: the account is suspended already (or
    active, or suspended for another cause than non-payment, which a payment does not lift)."""
    if overdue:
        return "already_suspended" if found["status"] == "suspended" else None
    if found["status"] == "active":
        return "already_active"
    return None if found["status_cause"] == "non_payment" else "not_for_payment"


def _cause(cause: str | None, lang: str) -> str:
    return t(f"billing:cause.{cause}", lang) if cause else "-"


# Billable actions ------------------------------------------------------------------------------


def billable_account(account_id: int) -> Steps[dict[str, Any]]:
    """Before a billable action: the account with its answered requests settled, locked until the
    action is recorded (so concurrent requests cannot together spend more than the balance)."""
    yield from settle(account_id)
    return (yield from account(account_id, lock=True))


def balance_refusal(found: dict[str, Any]) -> BillingError | None:
    """402 ``no_balance`` for a pre-paid account with nothing available (its balance less what its
    pending requests will cost), else None."""
    if found["billing"] == "pre_paid" and found["available"] <= 0:
        return BillingError(402, "no_balance", "no_balance", account=found["name"], available=found["available"])
    return None
