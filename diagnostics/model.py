"""What a checklist run produces: its steps with their evidence, and a verdict."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class Verdict(StrEnum):
    """The documented set of outcomes of the fault checklist."""

    HEALTHY = "healthy"
    ACCOUNT_SUSPENDED = "account_suspended"  # suspended for non-payment
    ACCOUNT_RETIRED = "account_retired"
    NO_BALANCE = "no_prepaid_balance"
    LINE_SUSPENDED = "line_suspended"  # the terminal's cellular line is not active
    PLATFORM_INCIDENT = "platform_incident"
    RECOVERED_AFTER_PING = "recovered_after_ping"
    DATA_CHANNEL_FAULT = "data_channel_fault"  # answers SMS, sends no data
    GPS_FAULT = "gps_fault"
    POWER_FAULT = "power_fault"
    UNREACHABLE = "unreachable"


ACCOUNT_VERDICTS = {Verdict.ACCOUNT_SUSPENDED, Verdict.ACCOUNT_RETIRED, Verdict.NO_BALANCE, Verdict.LINE_SUSPENDED}
# Faults of the terminal itself: these open a ticket and send the vehicle to an installation center.
TERMINAL_FAULTS = {Verdict.DATA_CHANNEL_FAULT, Verdict.GPS_FAULT, Verdict.POWER_FAULT, Verdict.UNREACHABLE}

EXPLANATION = {
    Verdict.HEALTHY: "The terminal reports at its expected interval with a valid fix and correct power.",
    Verdict.ACCOUNT_SUSPENDED: "The corporate account is suspended (non-payment); service resumes automatically on payment.",
    Verdict.ACCOUNT_RETIRED: "The service was retired for this account; web access and lines are blocked.",
    Verdict.NO_BALANCE: "The pre-paid account has no balance; service resumes when it is topped up.",
    Verdict.LINE_SUSPENDED: "The terminal's cellular line is suspended.",
    Verdict.PLATFORM_INCIDENT: "The location platform itself is degraded; this is not a fault of the terminal.",
    Verdict.RECOVERED_AFTER_PING: "The terminal was silent, answered the SMS ping with a fresh report and is reporting again.",
    Verdict.DATA_CHANNEL_FAULT: "The terminal answers SMS but sends no data: its data channel (APN/GPRS) is down.",
    Verdict.GPS_FAULT: "The terminal reports, but without a usable GPS fix (no fix or a frozen position while moving).",
    Verdict.POWER_FAULT: "The terminal's supply voltage does not match the vehicle's declaration (or it runs on its backup battery).",
    Verdict.UNREACHABLE: "The terminal neither reports nor answers SMS.",
}


@dataclass
class Step:
    name: str  # account | platform | reporting | sms_ping | action
    status: str = "running"  # running | ok | fail | warn | skipped
    summary: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    finished_at: datetime | None = None

    def done(self, status: str, summary: str, /, **evidence: Any) -> Step:
        self.status, self.summary = status, summary
        self.evidence.update(evidence)
        self.finished_at = datetime.now(UTC)
        return self

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["started_at"] = self.started_at.isoformat()
        data["finished_at"] = self.finished_at.isoformat() if self.finished_at else None
        return data


@dataclass
class Report:
    device_id: int
    identifier: str
    steps: list[Step] = field(default_factory=list)
    verdict: Verdict | None = None
    ticket: dict[str, Any] | None = None
    run_id: int | None = None

    @property
    def explanation(self) -> str:
        return EXPLANATION[self.verdict] if self.verdict else ""
