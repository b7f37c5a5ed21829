"""Request field types the routers share."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field

from avl import phone


def _e164(value: str) -> str:
    # The configured default country is not known here: national input is read as Venezuelan, as
    # everywhere else by default (avl.phone.DEFAULT_COUNTRY); international input is unambiguous.
    return phone.normalise(value)


# A phone number in any common spelling ("0414-0000077", "584140000077", "+58 414 0000077"), stored in E.164.
Msisdn = Annotated[str, Field(min_length=3, max_length=32, examples=["+584140000001"]), AfterValidator(_e164)]
