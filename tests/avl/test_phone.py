"""Phone numbers: whatever way a number is written, it comes out as one E.164 form."""

from __future__ import annotations

import pytest

from avl.phone import display, is_country, national, normalise, same_number


@pytest.mark.parametrize(
    "text",
    [
        "+584140000077",
        "584140000077",  # as SMSCs and SIM records write it: country code, no "+"
        "04140000077",  # national, with the trunk prefix
        "4140000077",  # national significant number
        "0414-000.00.77",
        " +58 (414) 000 0077 ",
        "00584140000077",  # the international prefix instead of "+"
    ],
)
def test_every_spelling_of_a_venezuelan_mobile_is_one_number(text: str) -> None:
    assert normalise(text) == "+584140000077"


def test_national_input_is_read_in_the_default_country() -> None:
    assert normalise("3001234567", "CO") == "+573001234567"
    assert normalise("0212-5551234") == "+582125551234"  # a Caracas landline
    assert normalise("+573001234567") == "+573001234567"  # "+" ignores the default country


def test_numbers_of_possible_length_outside_the_known_ranges_are_kept() -> None:
    # 0499 is no Venezuelan range today, but the length is right: a new range or a test line.
    assert normalise("04990000001") == "+584990000001"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "phone number is empty"),
        ("   ", "phone number is empty"),
        ("call me", "phone number 'call me' is not a number"),
        ("2020", "phone number '2020' is not a valid number (read with default country VE)"),
        ("+58", "phone number '+58' is not a valid number (read with default country VE)"),
    ],
)
def test_what_is_not_a_number_is_refused_in_one_line(text: str, message: str) -> None:
    with pytest.raises(ValueError) as err:
        normalise(text)
    assert str(err.value) == message
    assert "\n" not in str(err.value)


def test_national_form_keeps_the_trunk_prefix() -> None:
    assert national("+584140000077") == "04140000077"
    assert national("584140000077") == "04140000077"
    assert national("+573001234567") is None  # a Colombian number has no Venezuelan national form
    assert national("+573001234567", "CO") == "3001234567"  # Colombia dials no trunk prefix


def test_display_is_international() -> None:
    assert display("04140000077") == "+58 414-0000077"
    assert display("+573001234567") == "+57 300 1234567"
    assert display(" n/a ") == "n/a"


def test_same_number_whatever_the_format() -> None:
    assert same_number("+584140000077", "584140000077")
    assert same_number("04140000077", "+58 414-0000077")
    assert not same_number("+584140000077", "+584140000078")
    assert not same_number("+584140000077", None)
    assert not same_number("", "")
    # Text that is not a number only matches the same digits.
    assert same_number("2020", "2020") and not same_number("2020", "2021")
    # A Colombian national number is another line than the Venezuelan one.
    assert not same_number("3001234567", "+583001234567", "CO")


def test_known_countries() -> None:
    assert is_country("VE") and is_country("co")
    assert not is_country("XX")
