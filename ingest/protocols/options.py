"""Per-device decoder options (``Session.options``, the reference server's per-device attributes
such as ``atrack.longDate``) read the same way by every decoder that has them."""

from __future__ import annotations

from ingest.protocols.base import Session

_TRUE = frozenset({"1", "true", "yes", "on"})


def flag(session: Session, name: str, default: bool = False) -> bool:
    """A yes/no option: a bool, a number, or the text true/false, yes/no, on/off, 1/0."""
    value = session.options.get(name)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in _TRUE


def text(session: Session, name: str) -> str | None:
    """A text option, or None when it is absent or empty."""
    value = session.options.get(name)
    if value is None:
        return None
    value = str(value).strip()
    return value or None
