"""Step 1: the customer's corporate account is operational (and the terminal's line).

If not, the verdict is the account's and the checklist stops: no SMS, no vehicle sent
to an installation center.
"""

from __future__ import annotations

from decimal import Decimal

from diagnostics.context import Device
from diagnostics.model import Step, Text, Verdict


def check(device: Device) -> tuple[Step, Verdict | None]:
    step = Step("account")
    evidence = {"account": device.account_name, "status": device.account_status, "status_cause": device.status_cause,
                "status_reason": device.status_reason,
                "billing": device.billing, "balance": str(device.balance) if device.balance is not None else None,
                "line_status": device.line_status}
    if device.account_status == "retired":
        return step.done("fail", Text("checklist:account.retired", account=device.account_name), **evidence), Verdict.ACCOUNT_RETIRED
    if device.account_status == "suspended" and device.status_cause == "no_balance":
        return step.done("fail", Text("checklist:account.no_balance_suspended", account=device.account_name), **evidence), \
            Verdict.NO_BALANCE
    if device.account_status == "suspended":
        reason = device.status_reason or "non-payment"
        return step.done("fail", Text("checklist:account.suspended", account=device.account_name, reason=reason), **evidence), \
            Verdict.ACCOUNT_SUSPENDED
    if device.billing == "pre_paid" and Decimal(str(device.balance or 0)) <= 0:
        return step.done("fail", Text("checklist:account.no_balance", account=device.account_name), **evidence), Verdict.NO_BALANCE
    if device.line_status != "active":
        return step.done("fail", Text("checklist:account.line_suspended", msisdn=device.msisdn), **evidence), \
            Verdict.LINE_SUSPENDED
    return step.done("ok", Text("checklist:account.ok", account=device.account_name), **evidence), None
