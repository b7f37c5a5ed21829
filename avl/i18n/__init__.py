"""Messages people read, one catalogue per language: Spanish (Venezuela) first, English by choice.

The catalogues are i18next resource files, one JSON object per namespace and language
(``avl/i18n/<lang>/<namespace>.json``: ``notices``, ``tickets``, ``certificate``, ``api``,
``console``...), with ``{{name}}`` placeholders. The server formats them with :func:`t`; the web
console loads the same files with i18next (``/console/i18n/<lang>/<namespace>.json``), so a text
is written once for both. ``tests/avl/test_i18n.py`` fails when a key is missing in a language.
"""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources
from typing import Any

LANGUAGES = ("es", "en")
DEFAULT_LANGUAGE = "es"
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


class MessageError(KeyError):
    """A message key or placeholder that does not exist; ``str()`` names it."""

    def __str__(self) -> str:
        return str(self.args[0])


def namespaces() -> list[str]:
    return sorted(p.name.removesuffix(".json") for p in resources.files(__name__).joinpath(DEFAULT_LANGUAGE).iterdir()
                  if p.name.endswith(".json"))


@cache
def catalogue(lang: str, namespace: str) -> dict[str, str]:
    """One namespace of one language, flattened to dotted keys (``"gps_fault.title"``)."""
    if lang not in LANGUAGES:
        raise MessageError(f"language {lang!r}: not one of {', '.join(LANGUAGES)}")
    path = resources.files(__name__).joinpath(lang, f"{namespace}.json")
    if not path.is_file():
        raise MessageError(f"message namespace {namespace!r} does not exist ({lang})")
    return _flatten(json.loads(path.read_text(encoding="utf-8")))


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)
    return out


def language(value: str | None) -> str:
    """A supported language for ``value`` (``es-VE``, ``en;q=0.8``, ``EN``...), else the default."""
    if value:
        for part in value.split(","):
            code = part.split(";")[0].strip().lower()[:2]
            if code in LANGUAGES:
                return code
    return DEFAULT_LANGUAGE


def t(key: str, lang: str = DEFAULT_LANGUAGE, /, **params: Any) -> str:
    """The message ``namespace:key`` in ``lang``, its ``{{placeholders}}`` filled from ``params``."""
    namespace, _, name = key.partition(":")
    if not name:
        raise MessageError(f"message key {key!r}: write it as namespace:key")
    text = catalogue(language(lang), namespace).get(name)
    if text is None:
        raise MessageError(f"message {key!r} does not exist ({lang})")

    def fill(m: re.Match[str]) -> str:
        if m[1] not in params:
            raise MessageError(f"message {key!r} needs {{{{{m[1]}}}}}")
        return str(params[m[1]])

    return _PLACEHOLDER.sub(fill, text)
