"""A decoder's last line of defence: the value errors its arithmetic can raise on hostile input
(an impossible date, a number that does not parse) become the one-line ``DecodeError``."""

from __future__ import annotations

from collections.abc import Callable

from ingest.protocols.base import DecodeError, DecodeResult, Protocol, Session


def guarded(protocol: Protocol, decode: Callable[[bytes, Session], DecodeResult], frame: bytes, session: Session,
            what: str = "frame") -> DecodeResult:
    """``decode(frame, session)``, with ``ValueError``/``OverflowError`` refused as a malformed ``what``."""
    try:
        return decode(frame, session)
    except DecodeError:
        raise
    except (ValueError, OverflowError) as exc:  # UnicodeDecodeError is a ValueError
        raise protocol.error(f"malformed {what}: {exc}", frame) from exc
