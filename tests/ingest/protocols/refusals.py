"""What the protocol tests check of a refusal: a bad frame's error is one line naming the
protocol; and a device given a password as an operator does."""

from __future__ import annotations

import psycopg
import pytest

from ingest.protocols.base import DecodeError, Protocol, Session


def decode_error(protocol: Protocol, frame: bytes, session: Session) -> str:
    """The DecodeError ``frame`` raises, as the one line a person reads; fails when it decodes."""
    with pytest.raises(DecodeError) as info:
        protocol.decode(frame, session)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{protocol.name}: "), message
    return message


def set_device_password(database_url: str, device_id: int, password: str) -> None:
    """Gives the device a password, as an operator does (its SHA-256 in devices.password_sha256)."""
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE devices SET password_sha256 = sha256(convert_to(%s, 'UTF8')) WHERE id = %s",
                     (password, device_id))


