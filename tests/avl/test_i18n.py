"""The message catalogues: every key in every language, the same placeholders, and formatting."""

from __future__ import annotations

import re

import pytest

from avl.i18n import LANGUAGES, MessageError, catalogue, language, namespaces, t

PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")


@pytest.mark.parametrize("namespace", namespaces())
def test_every_key_exists_in_every_language_with_the_same_placeholders(namespace: str) -> None:
    books = {lang: catalogue(lang, namespace) for lang in LANGUAGES}
    keys = {lang: set(book) for lang, book in books.items()}
    for lang in LANGUAGES:
        missing = keys["es"] - keys[lang] | keys[lang] - keys["es"]
        assert not missing, f"{namespace}: keys not in both es and {lang}: {sorted(missing)}"
    for key in books["es"]:
        found = {lang: set(PLACEHOLDER.findall(book[key])) for lang, book in books.items()}
        assert len({frozenset(v) for v in found.values()}) == 1, f"{namespace}:{key}: placeholders differ: {found}"


def test_a_message_is_formatted_in_the_language_asked_for() -> None:
    assert t("notices:line_fault", "es", vehicle="AB1", number="AVL-1").startswith("Vehiculo AB1: su linea")
    assert t("notices:line_fault", "en-US", vehicle="AB1", number="AVL-1").startswith("Vehicle AB1: its line")


def test_unknown_keys_and_missing_placeholders_are_named() -> None:
    with pytest.raises(MessageError, match="notices:nope"):
        t("notices:nope", "es")
    with pytest.raises(MessageError, match="vehicle"):
        t("notices:line_fault", "es", number="AVL-1")


def test_accept_language_picks_a_supported_language_else_spanish() -> None:
    assert (language("en-GB,en;q=0.9"), language("fr-FR, es;q=0.5"), language("de"), language(None)) == \
        ("en", "es", "es", "es")
