"""Phone numbers in E.164 (``+584140000077``): one normal form for what people type, what
devices and SIM records hold, and what an SMSC sends, so that "is this the same number"
has one answer. Built on ``phonenumbers`` (Google's libphonenumber metadata).
"""

from __future__ import annotations

import re

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumber, PhoneNumberFormat, ValidationResult

DEFAULT_COUNTRY = "VE"
# Separators people and spreadsheets put in numbers; anything else (letters) is not a number.
_SEPARATORS = re.compile(r"[\s().\-/]")
_DIALLED = re.compile(r"\+?[0-9]{2,20}")


def normalise(text: str, default_country: str = DEFAULT_COUNTRY) -> str:
    """The E.164 form of ``text``; raises ValueError (one line) when it is not a phone number.

    National input (``0414-0000077``, ``4140000077``) is read in ``default_country``; international
    input may start with ``+``, the international prefix (``00``) or just the country code
    (``584140000077``, as SMSCs and SIM records often write it). A number valid in the numbering
    plan wins; failing that, one of a possible length for its country (ranges not yet in the
    metadata); short codes and anything else are refused.
    """
    raw = text.strip()
    if not raw:
        raise ValueError("phone number is empty")
    dialled = _SEPARATORS.sub("", raw)
    if not _DIALLED.fullmatch(dialled):
        raise ValueError(f"phone number {raw!r} is not a number")
    # Digits without "+" are read as a national number first, then as country code + number.
    candidates = [dialled] if dialled.startswith("+") else [dialled, "+" + dialled]
    possible: list[PhoneNumber] = []
    for candidate in candidates:
        try:
            number = phonenumbers.parse(candidate, default_country)
        except NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return phonenumbers.format_number(number, PhoneNumberFormat.E164)
        if phonenumbers.is_possible_number_with_reason(number) == ValidationResult.IS_POSSIBLE:
            possible.append(number)
    if possible:
        return phonenumbers.format_number(possible[0], PhoneNumberFormat.E164)
    raise ValueError(f"phone number {raw!r} is not a valid number (read with default country {default_country})")


def national(e164: str, default_country: str = DEFAULT_COUNTRY) -> str | None:
    """The digits as dialled inside ``default_country`` (trunk prefix included, ``04140000077``);
    None when the number belongs to another country (it has no national form there).
    Raises ValueError as :func:`normalise` does."""
    number = phonenumbers.parse(normalise(e164, default_country), default_country)
    if phonenumbers.region_code_for_number(number) != default_country.upper():
        return None
    return re.sub(r"\D", "", phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL))


def display(text: str, default_country: str = DEFAULT_COUNTRY) -> str:
    """How a person reads a number: international format (``+58 414-0000077``); text that is
    not a number is shown as it is."""
    try:
        e164 = normalise(text, default_country)
    except ValueError:
        return text.strip()
    return phonenumbers.format_number(phonenumbers.parse(e164), PhoneNumberFormat.INTERNATIONAL)


def same_number(a: str | None, b: str | None, default_country: str = DEFAULT_COUNTRY) -> bool:
    """Whether two spellings name the same line (``+584140000077``, ``584140000077`` and
    ``0414-0000077`` do). Text that is not a number matches only the same digits."""
    if not a or not b:
        return False
    try:
        return normalise(a, default_country) == normalise(b, default_country)
    except ValueError:
        digits_a, digits_b = re.sub(r"\D", "", a), re.sub(r"\D", "", b)
        return bool(digits_a) and digits_a == digits_b


def is_country(code: str) -> bool:
    """Whether ``code`` is a region the numbering metadata knows (``VE``, ``CO``, ...)."""
    return code.upper() in phonenumbers.SUPPORTED_REGIONS


__all__ = ["DEFAULT_COUNTRY", "display", "is_country", "national", "normalise", "same_number"]
