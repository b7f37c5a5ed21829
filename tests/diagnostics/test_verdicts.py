"""The verdict rules after an SMS ping (the README's table, rows 6-12), and the SMS command table:
pure functions, checked row by row. The same rules run end to end over real SMPP in test_sms_ping.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from avl import gsm7
from diagnostics.checklist import notice_text
from diagnostics.commands import FAMILIES, FORBIDDEN, position_command, status_command
from diagnostics.model import Verdict
from diagnostics.steps.sms_ping import PingOutcome
from diagnostics.verdicts import after_ping

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
LONG, SHORT, THRESHOLD = 7200.0, 300.0, 1800.0


def sent(**kw: object) -> PingOutcome:
    return PingOutcome(sent=True, made_at=T0, sent_at=T0, **kw)  # type: ignore[arg-type]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_a_report_after_delivery_is_recovered_and_the_data_is_read_again() -> None:
    d = after_ping(sent(delivered_at=at(5), receipt="DELIVRD", report_at=at(9)), LONG, THRESHOLD)
    assert (d.verdict, d.reanalyse) == (Verdict.RECOVERED_AFTER_PING, True)


def test_a_report_before_delivery_is_not_an_answer_to_the_ping() -> None:
    d = after_ping(sent(delivered_at=at(5), receipt="DELIVRD", report_at=at(2)), LONG, THRESHOLD)
    assert d.verdict is Verdict.HEALTHY and d.reanalyse and "before the ping reached it" in d.why


@pytest.mark.parametrize("answer", ["Data Link: 0 GPRS: 0", "Command error!", "Unknown command"])
def test_any_answer_even_an_error_proves_the_sms_channel(answer: str) -> None:
    d = after_ping(sent(receipt="DELIVRD", delivered_at=at(3), replies=[answer]), LONG, THRESHOLD)
    assert d.verdict is Verdict.DATA_CHANNEL_FAULT


def test_an_answer_without_any_receipt_still_proves_the_sms_channel() -> None:
    d = after_ping(sent(replies=["STATUS ok"], problem="no delivery receipt from the SMSC within 120 s"), LONG,
                   THRESHOLD)
    assert d.verdict is Verdict.DATA_CHANNEL_FAULT


@pytest.mark.parametrize("receipt", ["UNDELIV", "REJECTD"])
def test_an_undeliverable_sms_is_a_line_fault_for_the_carrier(receipt: str) -> None:
    assert after_ping(sent(receipt=receipt), SHORT, THRESHOLD).verdict is Verdict.LINE_FAULT


def test_a_refused_number_is_a_line_fault() -> None:
    outcome = sent(problem="the SMSC did not take the SMS: invalid destination (ESME_RINVDSTADR 0x0b)",
                   refused_destination=True)
    assert after_ping(outcome, LONG, THRESHOLD).verdict is Verdict.LINE_FAULT


@pytest.mark.parametrize("receipt", ["EXPIRED", "DELIVRD"])
def test_no_answer_after_a_long_silence_is_unreachable(receipt: str) -> None:
    assert after_ping(sent(receipt=receipt), LONG, THRESHOLD).verdict is Verdict.UNREACHABLE


@pytest.mark.parametrize("outcome", [sent(receipt="EXPIRED"), sent(receipt="DELIVRD", replies=["x"])])
def test_a_short_silence_is_inconclusive_and_opens_nothing(outcome: PingOutcome) -> None:
    d = after_ping(outcome, SHORT, THRESHOLD)
    assert (d.verdict, d.ticket) == (Verdict.INCONCLUSIVE, False) and "checked again" in d.why


def test_an_smsc_problem_is_inconclusive_never_unreachable_and_opens_nothing() -> None:
    for problem in ("no SMS ping: the SMSC link is down (connection refused)",
                    "no delivery receipt from the SMSC within 120 s"):
        d = after_ping(sent(problem=problem), LONG, THRESHOLD)
        assert (d.verdict, d.ticket) == (Verdict.INCONCLUSIVE, False)


def test_no_sms_possible_is_inconclusive_a_call_to_the_customer_once_the_silence_is_long() -> None:
    lasting = PingOutcome(problem="no SMS ping: the terminal has no MSISDN", lasting=True)
    assert after_ping(lasting, LONG, THRESHOLD).ticket is True
    assert after_ping(lasting, SHORT, THRESHOLD).ticket is False
    assert after_ping(lasting, LONG, THRESHOLD).verdict is Verdict.INCONCLUSIVE


# The SMS commands -----------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", sorted(FAMILIES))
def test_every_command_is_a_query_never_an_output_or_configuration_command(protocol: str) -> None:
    for command in (status_command(protocol, "862170010000001"), position_command(protocol, "862170010000001")):
        assert command is not None
        assert not any(word in command.upper() for word in FORBIDDEN), command


def test_h02_is_not_sent_the_engine_stop_command_nor_addressed_to_device_000000() -> None:
    command = status_command("h02", "4209917484")
    assert command is not None and "S20" not in command and "000000" not in command


def test_the_devices_sms_password_is_used_where_the_family_needs_one() -> None:
    assert status_command("gl200", "862170010000001") == "AT+GTRTO=gl200,1,,,,,,FFFF$"
    assert status_command("gl200", "862170010000001", {"sms_password": "s3cr3t"}) == "AT+GTRTO=s3cr3t,1,,,,,,FFFF$"
    assert status_command("tk103", "012345678901", {"sms_password": "654321"}) == "check654321"
    assert status_command("meitrack", "012345678901") == "0000,A00"
    assert status_command("teltonika", "356307042441013") == "  getstatus"
    assert status_command("suntech", "907126119") == "ST300CMD;907126119;02;StatusReq"


def test_phones_and_gateways_take_no_sms_commands() -> None:
    assert status_command("osmand", "123456") is None and status_command("json", "123456") is None


@pytest.mark.parametrize("verdict", [Verdict.GPS_FAULT, Verdict.POWER_FAULT, Verdict.UNREACHABLE,
                                     Verdict.DATA_CHANNEL_FAULT, Verdict.LINE_FAULT])
def test_a_customer_notice_is_one_or_two_sms_in_spanish(verdict: Verdict) -> None:
    text = notice_text(verdict, "AB123CD", "AVL-2026-000042", "Centro de Instalacion Certificado Los Ruices, Caracas")
    assert len(text) <= 2 * 153 and gsm7.representable(text), text  # two GSM segments at most
    assert "AVL-2026-000042" in text and "AB123CD" in text and text.startswith("Vehiculo")
    assert ("centro de instalacion" in text) == (verdict in (Verdict.GPS_FAULT, Verdict.POWER_FAULT,
                                                              Verdict.UNREACHABLE))


def test_a_step_summary_reads_in_english_and_renders_in_the_readers_language() -> None:
    from diagnostics.model import Step, Text

    step = Step("sms_ping").done("fail", Text.concat([Text("checklist:sms.answered", reply="'Command error!'"),
                                                      Text("checklist:sms.receipt", receipt="DELIVRD"), "a plain note"]))
    assert step.summary == "the terminal answered by SMS ('Command error!') but sent no data; receipt DELIVRD; a plain note"
    assert step.render("es") == ("el equipo respondió por SMS ('Command error!') pero no envía datos; acuse DELIVRD;"
                                 " a plain note")
    assert step.as_json()["messages"][0] == {"key": "checklist:sms.answered", "params": {"reply": "'Command error!'"}}


def test_a_step_whose_evidence_holds_a_sentence_is_saved() -> None:
    """The SMS step records why a ping failed as a sentence in its evidence (here: the SMSC sent no
    receipt while it was down); saving the step copies it. A checklist once failed right there."""
    import copy
    import json
    import pickle

    from diagnostics.model import Step, Text

    why = Text("checklist:sms.no_receipt", seconds=60)
    step = Step("sms_ping").done("warn", why, attempts=[{"error": why}], error=why)
    saved = step.as_json()
    assert json.loads(json.dumps(saved))["evidence"] == {"attempts": [{"error": str(why)}], "error": str(why)}
    for again in (copy.copy(why), copy.deepcopy(why), pickle.loads(pickle.dumps(why))):
        assert (str(again), again.render("es"), again.parts) == (str(why), why.render("es"), why.parts)
