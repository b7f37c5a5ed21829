"""Database access shared by every service: connections, migrations, retention policies."""

from __future__ import annotations

import psycopg

from avl.config import ConfigError, redact_url


def connect(url: str, *, autocommit: bool = False, timeout_s: float = 10.0) -> psycopg.Connection:
    """A connection, or a ConfigError naming AVL_DATABASE_URL and why it failed (one line)."""
    try:
        return psycopg.connect(url, autocommit=autocommit, connect_timeout=max(1, int(timeout_s)))
    except psycopg.OperationalError as exc:
        raise ConfigError(f"AVL_DATABASE_URL: cannot connect to {redact_url(url)}: {first_line(exc)}") from None
    except psycopg.ProgrammingError as exc:  # malformed conninfo
        raise ConfigError(f"AVL_DATABASE_URL: invalid URL: {first_line(exc)}") from None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
