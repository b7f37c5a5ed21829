"""The verdict rules of the checklist, in one place (the README's table is this module).

| # | Situation (first rule that applies wins)                                       | Verdict                 |
|---|--------------------------------------------------------------------------------|-------------------------|
| 1 | account retired / suspended / pre-paid without balance / line suspended        | the account's verdict   |
| 2 | the platform is degraded (ingest, database, broker; never the SMSC)            | `platform_incident`     |
| 3 | reporting, a frozen position or no usable fix in its recent reports with the   | `gps_fault`             |
|   | ignition on                                                                    |                         |
| 4 | reporting, supply voltage off its 12/24 V declaration, or 0 V (backup battery) | `power_fault`           |
| 5 | reporting at the cadence of its state (moving, or parked)                      | `healthy`               |
| 6 | silent; a report arrives after the ping was delivered (rules 3-4 then apply)   | `recovered_after_ping`  |
| 7 | silent; it reported again before the ping reached it (rules 3-5 then apply)    | `healthy`               |
| 8 | silent; the SMSC refused the number (ESME_RINVDSTADR) or the receipt is        | `line_fault`            |
|   | UNDELIV / REJECTD: the line or the network, a check with the carrier           |                         |
| 9 | silent for less than `AVL_UNREACHABLE_AFTER_S`, any other outcome              | `inconclusive` (again)  |
|10 | silent; any SMS answer, even an error: SMS works, data does not                | `data_channel_fault`    |
|11 | silent; receipt EXPIRED or DELIVRD, no answer, no report                       | `unreachable`           |
|12 | no SMS test possible (no number, no SMS commands, no SMSC) or the SMSC failed  | `inconclusive`          |
|   | (link down, refused, no receipt)                                               |                         |

An `inconclusive` verdict never sends a vehicle to a workshop: with a lasting cause (rule 12:
no number, no commands, no SMSC) and a long silence it is a support task to call the customer;
otherwise nothing is opened and the sweep checks again.
"""

from __future__ import annotations

from dataclasses import dataclass

from diagnostics.model import Verdict
from diagnostics.steps.sms_ping import PingOutcome

LINE_RECEIPTS = {"UNDELIV", "REJECTD"}
NO_ANSWER_RECEIPTS = {"EXPIRED", "DELIVRD"}


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    why: str
    # Re-read the stored data before concluding (a report arrived): rules 3-5 may apply.
    reanalyse: bool = False
    # A ticket may be opened for it (inconclusive: only with a lasting cause and a long silence).
    ticket: bool = True


def after_ping(outcome: PingOutcome, silence_s: float | None, unreachable_after_s: float) -> Decision:
    """Rules 6-12: what a silent terminal's SMS ping outcome means."""
    if outcome.fresh_after_delivery:
        return Decision(Verdict.RECOVERED_AFTER_PING, "a fresh report arrived after the ping was delivered",
                        reanalyse=True)
    if outcome.reported_since_sent:
        return Decision(Verdict.HEALTHY, "it reported again before the ping reached it (not in answer to it)",
                        reanalyse=True)
    if outcome.refused_destination or outcome.receipt in LINE_RECEIPTS:
        what = "the SMSC refused the number" if outcome.refused_destination else f"the SMS was {outcome.receipt}"
        return Decision(Verdict.LINE_FAULT, f"{what}: the line or the network needs a check with the carrier")
    long_silence = silence_s is None or silence_s >= unreachable_after_s
    if outcome.replies:
        if not long_silence:
            return _again(silence_s, "it answers SMS; its data may come back")
        return Decision(Verdict.DATA_CHANNEL_FAULT, "the terminal answered by SMS but sends no data")
    if outcome.problem is not None:
        return Decision(Verdict.INCONCLUSIVE, outcome.problem, ticket=outcome.lasting and long_silence)
    if outcome.receipt in NO_ANSWER_RECEIPTS:
        if not long_silence:
            return _again(silence_s, f"receipt {outcome.receipt}, no answer: out of coverage, or off")
        what = "was not delivered before it expired" if outcome.receipt == "EXPIRED" else \
            "was delivered but the terminal neither answered nor reported"
        return Decision(Verdict.UNREACHABLE, f"the SMS {what}")
    return Decision(Verdict.INCONCLUSIVE, f"receipt {outcome.receipt or 'none'}, no answer, no report", ticket=False)


def _again(silence_s: float | None, what: str) -> Decision:
    return Decision(Verdict.INCONCLUSIVE, f"silent for only {silence_s or 0:.0f} s: {what}; checked again later",
                    ticket=False)
