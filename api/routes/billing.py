"""Billing over HTTP (the rules are ``avl.billing``'s).

- Fleet clients see their own account's balance (less what pending locate-now requests will cost:
  ``available``) and its movements; support and admin see any account's, and the audit trail of
  its state (who or what suspended, reconnected or retired it, why, through which door).
- The billing system (role ``billing``, or an admin) posts its events to ``POST /billing/events``,
  idempotent by its own ``reference``: a top-up, a payment overdue (suspends a post-paid account for
  non-payment), a payment received (reconnects an account suspended for non-payment), a retirement
  for non-payment or by payment. The same reference again answers ``200`` with what the first call
  did (``replayed``); with other content, ``409``.

Refusals are ``{"error": code, "message": one line}`` in the caller's language (their choice, else
``Accept-Language``, else ``AVL_LANGUAGE``); what is written down for everyone (an event's outcome, a
retired account's ticket notes) is in ``AVL_LANGUAGE``. A billable action of a pre-paid account
without balance is ``402 no_balance``.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Query, Request, Response
from psycopg import AsyncConnection
from pydantic import BaseModel, Field

from api.auth import language_of
from api.deps import ApiError, Db, User, not_found, require
from avl import billing, i18n
from avl.config import Settings, load_settings

router = APIRouter(prefix="/api/v1/billing", tags=["billing"])

T = TypeVar("T")
AccountReader = Annotated[User, require("client", "support")]
Staff = Annotated[User, require("support")]
BillingSystem = Annotated[User, require("billing")]


def settings_of(request: Request) -> Settings:
    """The settings the app was created with (``create_app(settings=...)``), else the environment's."""
    found = getattr(request.app.state, "settings", None)
    return found if isinstance(found, Settings) else load_settings()


def stored_lang(request: Request) -> str:
    """The language of what is written down for everyone (a ticket's note, an event's outcome): AVL_LANGUAGE."""
    return settings_of(request).language


async def caller_lang(request: Request, conn: AsyncConnection, user: User) -> str:
    """The language of an answer: the user's choice (``PUT /auth/language``), else the request's
    ``Accept-Language``, else AVL_LANGUAGE."""
    chosen = await language_of(conn, user.id)
    return chosen or i18n.language(request.headers.get("accept-language") or settings_of(request).language)


def actor_of(user: User) -> str:
    """Who, as the audit trail records it: ``admin ana@x``, ``billing xpert@x``."""
    return f"{user.role} {user.email}"


async def api_error(request: Request, conn: AsyncConnection, user: User, exc: billing.BillingError) -> ApiError:
    return ApiError(exc.status, exc.code, exc.message(await caller_lang(request, conn, user)))


async def call(request: Request, conn: AsyncConnection, user: User, steps: billing.Steps[T]) -> T:
    """Runs a billing operation for ``user``; a refusal becomes the API's one-line JSON error."""
    try:
        return await billing.arun(conn, steps)
    except billing.BillingError as exc:
        raise await api_error(request, conn, user, exc) from None


# Models --------------------------------------------------------------------------------------


class AccountBilling(BaseModel):
    id: int = Field(examples=[7])
    name: str = Field(examples=["Transportes Ávila"])
    billing: Literal["post_paid", "pre_paid"] = Field(examples=["pre_paid"])
    balance: Decimal = Field(description="pre-paid balance", examples=["25.00"])
    pending: Decimal = Field(description="what the account's pending locate-now requests will cost when answered",
                             examples=["1.00"])
    available: Decimal = Field(description="balance less pending: a billable action needs it above zero",
                               examples=["24.00"])
    status: Literal["active", "suspended", "retired"] = Field(examples=["active"])
    status_cause: str | None = Field(description="suspended: non_payment, no_balance, administrative; retired: "
                                                 "voluntary, non_payment, by_payment", examples=[None])
    status_reason: str | None = Field(examples=[None])
    status_changed_at: datetime
    created_at: datetime
    permanence_until: datetime = Field(description="end of the minimum permanence (AVL_MIN_PERMANENCE_MONTHS)")
    price_locate: Decimal = Field(description="price of a locate-now request answered (AVL_PRICE_LOCATE)",
                                  examples=["1.00"])


class LedgerEntry(BaseModel):
    id: int = Field(examples=[31])
    account_id: int = Field(examples=[7])
    at: datetime
    kind: Literal["topup", "debit", "adjustment"] = Field(examples=["topup"])
    amount: Decimal = Field(description="signed: a top-up adds, a debit takes", examples=["50.00"])
    balance_after: Decimal = Field(examples=["75.00"])
    reference: str | None = Field(description="the billing system's reference; `locate:<id>` for a locate-now debit",
                                  examples=["XP-2026-000123"])
    reason: str | None = Field(examples=["Tarjeta Única"])
    actor: str | None = Field(description="who or what (staff only)", examples=["billing xpert@cantv.example"])
    via: Literal["api", "cli", "billing", "system"] = Field(examples=["billing"])


class StatusChange(BaseModel):
    id: int = Field(examples=[4])
    account_id: int = Field(examples=[7])
    at: datetime
    from_status: str = Field(examples=["active"])
    to_status: str = Field(examples=["suspended"])
    cause: str | None = Field(description="non_payment, no_balance, administrative, voluntary, by_payment (to "
                                          "suspended/retired); payment, topup, administrative (to active)",
                              examples=["non_payment"])
    reason: str | None = Field(examples=["invoice 2026-11 overdue"])
    actor: str = Field(examples=["billing xpert@cantv.example"])
    via: Literal["api", "cli", "billing", "system"] = Field(examples=["billing"])
    reference: str | None = Field(description="the billing system's reference, the signed letter's, or the ledger "
                                              "entry's (`ledger:<id>`)", examples=["XP-2026-000124"])
    details: dict[str, Any] = Field(description="what it did: lines suspended or reactivated, SMS and locate-now "
                                                "requests cancelled, tickets closed, tokens revoked",
                                    examples=[{"lines_suspended": 2}])


class BillingEventIn(BaseModel):
    reference: str = Field(min_length=1, max_length=100, description="the billing system's own reference: the key "
                           "that makes this call idempotent", examples=["XP-2026-000124"])
    kind: Literal["topup", "payment_overdue", "payment_received", "retirement"] = Field(examples=["payment_overdue"])
    account_id: int = Field(ge=1, examples=[7])
    amount: Decimal | None = Field(default=None, gt=0, max_digits=12, decimal_places=2,
                                   description="topup: the amount", examples=["50.00"])
    retirement_kind: Literal["non_payment", "by_payment"] | None = Field(
        default=None, description="retirement: its kind (a voluntary one is recorded by an admin with the letter)",
        examples=[None])
    note: str | None = Field(default=None, max_length=300, examples=["invoice 2026-11 overdue"])


class BillingEventOut(BaseModel):
    reference: str = Field(examples=["XP-2026-000124"])
    kind: str = Field(examples=["payment_overdue"])
    account_id: int = Field(examples=[7])
    amount: Decimal | None = Field(examples=[None])
    retirement_kind: str | None = Field(examples=[None])
    note: str | None = Field(examples=["invoice 2026-11 overdue"])
    received_at: datetime
    received_by: str = Field(examples=["billing xpert@cantv.example"])
    outcome: Literal["applied", "unchanged"] = Field(examples=["applied"])
    detail: str = Field(examples=["Account suspended for non-payment."])
    ledger_id: int | None = Field(examples=[None])
    status_change_id: int | None = Field(examples=[4])
    replayed: bool = Field(description="this reference was received before: nothing was done again", examples=[False])
    account: AccountBilling


def account_out(row: dict[str, Any], settings: Settings) -> AccountBilling:
    return AccountBilling(**row, price_locate=settings.price_locate,
                          permanence_until=billing.permanence_until(row["created_at"], settings.min_permanence_months))


# Routes --------------------------------------------------------------------------------------


def _account_id(user: User, account_id: int | None) -> int:
    """A client's own account (another's looks missing); staff name the account."""
    if user.role == "client":
        assert user.account_id is not None
        if account_id is not None and account_id != user.account_id:
            raise not_found(f"account {account_id}")
        return user.account_id
    if account_id is None:
        raise ApiError(422, "invalid_request", "account_id: staff name the account (?account_id=)")
    return account_id


AccountId = Annotated[int | None, Query(ge=1, description="staff: the account (clients: their own)", examples=[7])]


@router.get("/account", response_model=AccountBilling, summary="An account's balance and service state",
            responses={404: {"description": "no such account (or another's)"}})
async def get_account(request: Request, user: AccountReader, conn: Db, account_id: AccountId = None) -> AccountBilling:
    settings = settings_of(request)
    return account_out(await call(request, conn, user, billing.summary(_account_id(user, account_id))), settings)


@router.get("/ledger", response_model=list[LedgerEntry], summary="An account's balance movements, newest first",
            responses={404: {"description": "no such account (or another's)"}})
async def get_ledger(request: Request, user: AccountReader, conn: Db, account_id: AccountId = None,
                     limit: Annotated[int, Query(ge=1, le=500)] = 100,
                     before: Annotated[int | None, Query(ge=1, description="entries older than this id (next page)")]
                     = None) -> list[LedgerEntry]:
    rows = await call(request, conn, user, billing.ledger(_account_id(user, account_id), limit=limit, before=before))
    staff = user.role != "client"
    return [LedgerEntry(**{**r, "actor": r["actor"] if staff else None}) for r in rows]


@router.get("/status-changes", response_model=list[StatusChange],
            summary="The audit trail of an account's state: who or what changed it, why, newest first",
            responses={404: {"description": "no such account"}})
async def get_status_changes(request: Request, user: Staff, conn: Db,
                             account_id: Annotated[int, Query(ge=1, examples=[7])],
                             limit: Annotated[int, Query(ge=1, le=500)] = 100) -> list[StatusChange]:
    return [StatusChange(**r) for r in await call(request, conn, user, billing.status_changes(account_id, limit=limit))]


@router.post("/events", response_model=BillingEventOut, status_code=201,
             summary="The billing system's event: top-up, payment overdue or received, retirement (idempotent)",
             responses={200: {"description": "this reference was received before: what it did then"},
                        404: {"description": "no such account"},
                        409: {"description": "the reference was used with other content, or the event does not fit "
                                             "the account (an overdue notice for a pre-paid account, a top-up for a "
                                             "post-paid one, a retirement of a retired one)"}})
async def post_event(body: BillingEventIn, request: Request, response: Response, user: BillingSystem,
                     conn: Db) -> BillingEventOut:
    settings = settings_of(request)
    done = await call(request, conn, user, billing.billing_event(
        body.reference, body.kind, body.account_id, actor=actor_of(user), amount=body.amount,
        retirement_kind=body.retirement_kind, note=body.note, permanence_months=settings.min_permanence_months,
        lang=stored_lang(request)))
    if done["replayed"]:
        response.status_code = 200
    return BillingEventOut(**{**done, "account": account_out(done["account"], settings)})
