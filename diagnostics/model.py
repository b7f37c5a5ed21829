"""What a checklist run produces: its steps with their evidence, and a verdict."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from avl.i18n import t


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
    LINE_FAULT = "line_fault"  # the SMS was undeliverable: the line or the network (a carrier check)
    UNREACHABLE = "unreachable"
    INCONCLUSIVE = "inconclusive"  # the remote tests could not decide: a support task, never a workshop visit


ACCOUNT_VERDICTS = {Verdict.ACCOUNT_SUSPENDED, Verdict.ACCOUNT_RETIRED, Verdict.NO_BALANCE, Verdict.LINE_SUSPENDED}
# Faults of the terminal itself: these open a ticket and send the vehicle to an installation center
# (a data channel is first reconfigured remotely).
TERMINAL_FAULTS = {Verdict.DATA_CHANNEL_FAULT, Verdict.GPS_FAULT, Verdict.POWER_FAULT, Verdict.UNREACHABLE}
# Verdicts that open a ticket: the terminal's faults, a line for the carrier to check, a customer to call.
TICKET_VERDICTS = TERMINAL_FAULTS | {Verdict.LINE_FAULT, Verdict.INCONCLUSIVE}

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
    Verdict.LINE_FAULT: "The SMS to the terminal was undeliverable: its line or the network needs a check with the carrier.",
    Verdict.UNREACHABLE: "The terminal neither reports nor answers SMS, and has been silent long enough to rule out a coverage gap.",
    Verdict.INCONCLUSIVE: "The remote tests could not decide (no SMS test was possible or the silence is still short): "
                          "support calls the customer; no workshop visit.",
}


class Text(str):
    """A sentence people read, kept as the catalogue keys it was made of (``avl/i18n/*/checklist.json``):
    as a string it is the English text (logs, JSON, the tests); ``render(lang)`` gives it in a reader's
    language, and the console renders ``parts`` in its user's."""

    parts: tuple[dict[str, Any], ...]

    def __new__(cls, key: str, /, **params: Any) -> Text:
        made = str.__new__(cls, t(key, "en", **params))
        made.parts = ({"key": key, "params": params},)
        return made

    @classmethod
    def concat(cls, texts: Sequence[str]) -> Text:
        """Several sentences as one ("; " between them); plain strings are kept as they are."""
        made = str.__new__(cls, "; ".join(texts))
        made.parts = tuple(p for x in texts for p in (x.parts if isinstance(x, Text) else
                                                      ({"key": "checklist:raw", "params": {"text": str(x)}},)))
        return made

    def render(self, lang: str) -> str:
        return "; ".join(t(p["key"], lang, **p["params"]) for p in self.parts)

    # Immutable, like the string it is. ``dataclasses.asdict`` deep-copies what a step's evidence holds, and
    # ``str``'s default copy would call ``__new__`` with the English text as if it were a catalogue key.
    def __copy__(self) -> Text:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Text:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return _text, (str(self), self.parts)


def _text(text: str, parts: tuple[dict[str, Any], ...]) -> Text:
    made = str.__new__(Text, text)
    made.parts = parts
    return made


@dataclass
class Step:
    name: str  # account | platform | reporting | sms_ping | action
    status: str = "running"  # running | ok | fail | warn | skipped
    summary: str = ""  # in English; ``messages`` has it as catalogue keys, for any language
    evidence: dict[str, Any] = field(default_factory=dict)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    finished_at: datetime | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)

    def done(self, status: str, summary: str, /, **evidence: Any) -> Step:
        self.status, self.summary = status, str(summary)
        self.messages = list(summary.parts) if isinstance(summary, Text) else \
            [{"key": "checklist:raw", "params": {"text": str(summary)}}]
        self.evidence.update(evidence)
        self.finished_at = datetime.now(UTC)
        return self

    def render(self, lang: str) -> str:
        return "; ".join(t(m["key"], lang, **m["params"]) for m in self.messages) if self.messages else self.summary

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

    why: str = ""  # the rule that decided the verdict, in this run's terms
    sms_via: str = ""

    @property
    def explanation(self) -> str:
        return EXPLANATION[self.verdict] if self.verdict else ""

    def as_json(self) -> dict[str, Any]:
        """Everything about the run: what `avl diagnose --json` prints."""
        ticket = None
        if self.ticket is not None:
            ticket = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in self.ticket.items()
                      if k in ("id", "number", "type", "category", "state", "reused", "instruction", "recurrence_of",
                               "dead_on_arrival", "sla_due_at", "centers")}
        return {"run_id": self.run_id, "device_id": self.device_id, "identifier": self.identifier,
                "verdict": self.verdict.value if self.verdict else None, "explanation": self.explanation,
                "why": self.why, "sms_via": self.sms_via, "ticket": ticket,
                "steps": [s.as_json() for s in self.steps]}
