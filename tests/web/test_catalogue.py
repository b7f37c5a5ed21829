"""Every message key the console's pages and modules name literally is in the catalogues, in both
languages (the keys built at run time are checked in the browser: ``screen`` fails on any key
i18next did not find), and the server hands the catalogues to the browser. No browser needed."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from avl.i18n import LANGUAGES, catalogue
from tests.api.conftest import Api

WEB = Path(__file__).resolve().parents[2] / "web"
# t("key"), t("key", {...}); data-i18n="key", data-i18n-placeholder="key"...
LITERAL = re.compile(r"""\bt\(\s*"([A-Za-z0-9_.:]+)"|data-i18n(?:-[a-z-]+)?="([A-Za-z0-9_.]+)\"""")


def keys_named() -> set[str]:
    found: set[str] = set()
    for path in [*WEB.glob("*.html"), *WEB.glob("js/*.js")]:
        for m in LITERAL.finditer(path.read_text(encoding="utf-8")):
            found.add(m[1] or m[2])
    return found


def known(lang: str, key: str) -> bool:
    namespace, _, name = key.rpartition(":")  # "tickets:state.open", or a console key
    return name in catalogue(lang, namespace or "console")


@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_key_the_console_names_is_in_the_catalogue(lang: str) -> None:
    named = keys_named()
    assert len(named) > 200, "the pattern no longer finds the console's keys"
    missing = sorted(key for key in named if not known(lang, key))
    assert missing == [], f"{lang}: keys the console uses that the catalogue lacks: {missing}"


def test_the_catalogues_are_served_to_the_browser_and_config_js_names_the_login_pages_language(console: Api) -> None:
    with httpx.Client(base_url=console.url) as c:
        for lang in LANGUAGES:
            r = c.get(f"/console/i18n/{lang}/console.json")
            assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
            assert r.json()["brand"] == catalogue(lang, "console")["brand"]
        for missing in ("/console/i18n/fr/console.json", "/console/i18n/es/nope.json", "/console/i18n/es/..json"):
            r = c.get(missing)
            assert r.status_code == 404 and r.json()["error"] == "not_found", missing
        for accept, lang in (("en-GB,en;q=0.9", "en"), ("es-VE,es;q=0.9", "es"), ("de-DE", "es"), (None, "es")):
            r = c.get("/console/config.js", headers={"Accept-Language": accept} if accept else {})
            assert f'"language": "{lang}"' in r.text and r.headers["vary"] == "Accept-Language", (accept, r.text)
