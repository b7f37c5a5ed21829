"""Access: hashed tokens, console sessions and logout, login throttling that a stranger cannot
turn into a lockout, one email normalisation, password rules, the pending password change,
account status enforcement, and which proxy headers are believed."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections import Counter
from pathlib import Path

import httpx
import psycopg
import pytest

from avl.admin import AdminError, set_account_status, set_password
from avl.config import Settings
from tests.api.conftest import Api, serve

PASSWORD = "tranvia-azul-1948"


def login_body(email: str, password: str) -> dict[str, str]:
    return {"email": email, "password": password}


def from_address(api: Api | str, address: str) -> httpx.AsyncClient:
    """A client whose connections come from ``address`` (127.0.0.2, 127.0.0.3, ...: all loopback)."""
    url = api if isinstance(api, str) else api.url
    return httpx.AsyncClient(base_url=url, timeout=60, transport=httpx.AsyncHTTPTransport(local_address=address))


def test_tokens_authenticate_and_unknown_ones_are_refused(api: Api) -> None:
    api.account("Flota Uno")
    token = api.token("client", "Despacho", account="Flota Uno")
    with api.client(token) as c:
        me = c.get("/api/v1/me").json()
    assert (me["role"], me["account_status"]) == ("client", "active")
    with api.client("avl_not-a-real-token") as c:
        r = c.get("/api/v1/me")
    assert r.status_code == 401 and r.json()["error"] == "unauthenticated"
    with api.client() as c:
        assert c.get("/api/v1/me").status_code == 401


def test_console_login_gives_a_session_and_logout_ends_it(api: Api) -> None:
    api.account("Flota Uno")
    email = api.user("client", "ana@flota.example", PASSWORD, account="Flota Uno")
    with api.client() as c:
        r = c.post("/api/v1/auth/login", json=login_body(email, PASSWORD))
        assert r.status_code == 200, r.text
        assert "secure" not in r.headers["set-cookie"].lower()  # plain HTTP here: a Secure cookie would be lost
        session = r.json()["token"]
        assert c.get("/api/v1/me").status_code == 200  # the cookie works too
    with api.client(session) as c:
        assert c.post("/api/v1/auth/logout").status_code == 204
        assert c.get("/api/v1/me").status_code == 401
    with psycopg.connect(api.db_url) as conn:
        hashes = [bytes(r[0]) for r in conn.execute("SELECT token_hash FROM api_tokens").fetchall()]
    assert session.encode() not in b"".join(hashes)


def test_logout_with_a_bearer_token_ends_that_token_and_leaves_the_cookies_session(api: Api) -> None:
    api.account("Flota Uno")
    email = api.user("client", "ana@flota.example", PASSWORD, account="Flota Uno")
    with api.client() as browser, api.client() as script:
        assert browser.post("/api/v1/auth/login", json=login_body(email, PASSWORD)).status_code == 200
        other = script.post("/api/v1/auth/login", json=login_body(email, PASSWORD)).json()["token"]
        # The browser's cookie jar holds its session; the request authenticates with the other token.
        r = browser.post("/api/v1/auth/logout", headers={"Authorization": f"Bearer {other}"})
        assert r.status_code == 204 and "set-cookie" not in r.headers
        assert browser.get("/api/v1/me").status_code == 200
    with api.client(other) as c:
        assert c.get("/api/v1/me").status_code == 401


async def test_a_burst_of_wrong_passwords_gets_five_tries_and_never_locks_the_owner_out(api: Api) -> None:
    api.account("Flota Uno")
    email = api.user("client", "luis@flota.example", PASSWORD, account="Flota Uno")
    async with from_address(api, "127.0.0.2") as attacker, from_address(api, "127.0.0.3") as owner:
        # Ten concurrent wrong passwords from one address: five are checked, the rest wait.
        burst = await asyncio.gather(*(attacker.post("/api/v1/auth/login", json=login_body(email, f"wrong-{i}"))
                                       for i in range(10)))
        assert Counter(r.status_code for r in burst) == {401: 5, 429: 5}
        refused = next(r for r in burst if r.status_code == 429)
        assert refused.json()["error"] == "too_many_attempts" and int(refused.headers["retry-after"]) > 0
        # Even the right password waits, from that address...
        r = await attacker.post("/api/v1/auth/login", json=login_body(email, PASSWORD))
        assert r.status_code == 429
        first_wait = int(r.headers["retry-after"])
        # ...but the owner, elsewhere, logs in.
        assert (await owner.post("/api/v1/auth/login", json=login_body(email, PASSWORD))).status_code == 200
        # Once the wait is over (moved into the past here), one more failure waits twice as long.
        with psycopg.connect(api.db_url) as conn:
            conn.execute("UPDATE login_throttle SET blocked_until = now() - interval '1 second'")
        assert (await attacker.post("/api/v1/auth/login", json=login_body(email, "wrong-again"))).status_code == 401
        r = await attacker.post("/api/v1/auth/login", json=login_body(email, PASSWORD))
        assert r.status_code == 429 and int(r.headers["retry-after"]) > first_wait


async def test_one_address_trying_many_emails_is_throttled_as_an_address(api: Api) -> None:
    api.account("Flota Uno")
    email = api.user("client", "eva@flota.example", PASSWORD, account="Flota Uno")
    async with from_address(api, "127.0.0.4") as sprayer, from_address(api, "127.0.0.5") as elsewhere:
        answers = await asyncio.gather(*(sprayer.post("/api/v1/auth/login", json=login_body(f"u{i}@flota.example", "x"))
                                         for i in range(30)))
        assert Counter(r.status_code for r in answers) == {401: 20, 429: 10}
        assert (await sprayer.post("/api/v1/auth/login", json=login_body(email, PASSWORD))).status_code == 429
        assert (await elsewhere.post("/api/v1/auth/login", json=login_body(email, PASSWORD))).status_code == 200


def test_an_unknown_email_is_answered_exactly_like_a_wrong_password(api: Api) -> None:
    api.account("Flota Uno")
    email = api.user("client", "ana@flota.example", PASSWORD, account="Flota Uno")
    with api.client() as c:
        wrong = c.post("/api/v1/auth/login", json=login_body(email, "not-the-password"))
        unknown = c.post("/api/v1/auth/login", json=login_body("nadie@flota.example", "not-the-password"))
    assert (wrong.status_code, wrong.json()) == (unknown.status_code, unknown.json()) == (
        401, {"error": "unauthenticated", "message": "wrong email or password"})


async def test_an_email_has_one_normal_form_for_login_and_throttle(api: Api) -> None:
    api.account("Flota Uno")
    api.user("client", "lockit@flota.example", PASSWORD, account="Flota Uno")
    async with from_address(api, "127.0.0.6") as c:
        # Case and compatibility forms (full-width letters) are the same user...
        r = await c.post("/api/v1/auth/login", json=login_body("ＬｏｃｋＩｔ@Flota.Example", PASSWORD))
        assert r.status_code == 200 and r.json()["user"]["email"] == "lockit@flota.example"
        # ...and the same throttle key: failures under one spelling hold back the others.
        for spelling in ("LOCKIT@flota.example", "lockit@FLOTA.example", "ｌｏｃｋｉｔ@flota.example",
                         "Lockit@flota.example", "lockit@flota.example"):
            assert (await c.post("/api/v1/auth/login", json=login_body(spelling, "wrong"))).status_code == 401
        assert (await c.post("/api/v1/auth/login", json=login_body("lockit@flota.example", PASSWORD))).status_code == 429
        # A dotted capital I is another email: it neither finds lockit's account nor escapes its throttle.
        r = await c.post("/api/v1/auth/login", json=login_body("lockİt@flota.example", PASSWORD))
        assert r.status_code == 401


def test_passwords_must_be_long_and_hard_to_guess(api: Api) -> None:
    api.account("Flota Uno")
    email = api.user("client", "ana@flota.example", PASSWORD, account="Flota Uno")
    admin = api.token("admin", "root")
    with api.client() as c:
        session = c.post("/api/v1/auth/login", json=login_body(email, PASSWORD)).json()["token"]
    with api.client(session) as c:
        for weak, why in (("12345678", "at least 12"), ("password", "at least 12"), ("x" * 129, "at most 128"),
                          ("password1234", "easy to guess"), ("qwertyuiopasdf", "easy to guess"),
                          ("aaaaaaaaaaaaaaaa", "easy to guess"), ("Ana@Flota.example", "email or name")):
            r = c.post("/api/v1/auth/password", json={"current_password": PASSWORD, "new_password": weak})
            assert r.status_code == 422 and r.json()["error"] == "invalid_request", (weak, r.text)
            assert r.json()["message"].startswith("new_password: ") and why in r.json()["message"], (weak, r.text)
        assert c.post("/api/v1/auth/password", json={"current_password": PASSWORD,
                                                     "new_password": "ocho caballos de mar"}).status_code == 204
    with api.client(admin) as c:
        r = c.post("/api/v1/admin/users", json={"name": "Leo", "email": "leo@flota.example", "role": "support",
                                                "password": "123456789012"})
        assert r.status_code == 422 and r.json()["message"].startswith("password: ")
    with psycopg.connect(api.db_url) as conn, pytest.raises(AdminError, match="easy to guess"):
        set_password(conn, email, "password123456")


def test_a_pending_password_change_holds_the_session_to_changing_it(api: Api) -> None:
    aid = api.account("Flota Uno")
    admin = api.token("admin", "root")
    with api.client(admin) as c:
        assert c.post("/api/v1/admin/users", json={"name": "Rosa", "email": "rosa@flota.example", "role": "client",
                                                   "account_id": aid, "password": "primera-clave-7"}).status_code == 201
    with api.client() as c:
        r = c.post("/api/v1/auth/login", json=login_body("rosa@flota.example", "primera-clave-7"))
        assert r.status_code == 200 and r.json()["must_change_password"] is True
        session = r.json()["token"]
    with api.client(session) as c:
        me = c.get("/api/v1/me").json()
        assert me["password_change_required"] is True
        for method, path in (("GET", "/api/v1/vehicles"), ("GET", "/api/v1/geofences"),
                             ("POST", "/api/v1/live/tickets")):
            r = c.request(method, path)
            assert r.status_code == 403 and r.json()["error"] == "password_change_required", (path, r.text)
        assert c.post("/api/v1/auth/password", json={"current_password": "primera-clave-7",
                                                     "new_password": "faro del norte 31"}).status_code == 204
        assert c.get("/api/v1/vehicles").status_code == 200
        assert c.get("/api/v1/me").json()["password_change_required"] is False


def test_a_password_change_ends_the_users_other_sessions_but_not_this_one_nor_api_tokens(api: Api) -> None:
    api.account("Flota Uno")
    email = api.user("client", "ana@flota.example", PASSWORD, account="Flota Uno")
    api_token = api.token("client", "ana", email=email, account="Flota Uno")
    sessions = []
    for _ in range(2):
        with api.client() as c:
            sessions.append(c.post("/api/v1/auth/login", json=login_body(email, PASSWORD)).json()["token"])
    with api.client(sessions[0]) as c:
        assert c.post("/api/v1/auth/password", json={"current_password": PASSWORD,
                                                     "new_password": "ocho caballos de mar"}).status_code == 204
        assert c.get("/api/v1/me").status_code == 200
    with api.client(sessions[1]) as c:
        assert c.get("/api/v1/me").status_code == 401
    with api.client(api_token) as c:
        assert c.get("/api/v1/me").status_code == 200
    # An administrator's reset (`avl` CLI) ends every session of the user.
    with psycopg.connect(api.db_url) as conn:
        set_password(conn, email, "nueve ranas verdes")
    with api.client(sessions[0]) as c:
        assert c.get("/api/v1/me").status_code == 401


def test_a_retired_accounts_users_are_blocked_and_a_suspended_one_can_still_log_in(api: Api) -> None:
    api.account("Retirada SA")
    api.account("Morosa SA")
    retired = api.token("client", "r", account="Retirada SA")
    api.user("client", "m@morosa.example", PASSWORD, account="Morosa SA")
    with psycopg.connect(api.db_url) as conn:
        set_account_status(conn, "Retirada SA", "retire")
        set_account_status(conn, "Morosa SA", "suspend")
    with api.client(retired) as c:
        r = c.get("/api/v1/me")
    assert r.status_code == 403 and r.json()["error"] == "account_retired"
    with api.client() as c:
        r = c.post("/api/v1/auth/login", json=login_body("m@morosa.example", PASSWORD))
        assert r.status_code == 200
        assert c.get("/api/v1/me").json()["account_status"] == "suspended"


def test_bad_requests_get_one_line_errors(api: Api) -> None:
    with api.client() as c:
        r = c.post("/api/v1/auth/login", json={"email": "x"})
    assert r.status_code == 422
    assert r.json() == {"error": "invalid_request", "message": "password: Field required"}


async def test_forwarded_headers_are_believed_only_from_configured_proxies(db_url: str) -> None:
    # Direct exposure (no AVL_TRUSTED_PROXIES): a local peer rotating X-Forwarded-For is still one address.
    with serve(db_url) as url:
        api = Api(url, db_url)
        api.account("Flota Uno")
        email = api.user("client", "ana@flota.example", PASSWORD, account="Flota Uno")
        async with from_address(url, "127.0.0.1") as c:
            codes = [(await c.post("/api/v1/auth/login", json=login_body(f"u{i}@flota.example", "wrong"),
                                   headers={"X-Forwarded-For": f"203.0.113.{i}"})).status_code for i in range(21)]
            assert codes == [401] * 20 + [429]
            r = await c.post("/api/v1/auth/login", json=login_body(email, PASSWORD),
                             headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.7"})
            assert r.status_code == 429
    # Behind a proxy at 127.0.0.7: its X-Forwarded-For names the client, its X-Forwarded-Proto the scheme.
    with serve(db_url, Settings(trusted_proxies="127.0.0.7")) as url:
        async with from_address(url, "127.0.0.7") as proxy, from_address(url, "127.0.0.8") as stranger:
            r = await proxy.post("/api/v1/auth/login", json=login_body(email, PASSWORD),
                                 headers={"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https"})
            assert r.status_code == 200
            assert "secure" in [p.strip().lower() for p in r.headers["set-cookie"].split(";")]
            # A peer that is not the proxy is not believed, about the address nor the scheme.
            for _ in range(5):
                await stranger.post("/api/v1/auth/login", json=login_body(email, "wrong"),
                                    headers={"X-Forwarded-For": "198.51.100.7"})
            r = await stranger.post("/api/v1/auth/login", json=login_body(email, PASSWORD),
                                    headers={"X-Forwarded-For": "198.51.100.9", "X-Forwarded-Proto": "https"})
            assert r.status_code == 429
            r = await proxy.post("/api/v1/auth/login", json=login_body(email, PASSWORD),
                                 headers={"X-Forwarded-For": "198.51.100.7"})
            assert r.status_code == 200 and "secure" not in r.headers["set-cookie"].lower()


def test_the_session_cookie_is_secure_when_served_over_tls(db_url: str, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    with serve(db_url, ssl_certfile=str(cert), ssl_keyfile=str(key)) as url:
        api = Api(url, db_url)
        api.account("Flota Uno")
        email = api.user("client", "ana@flota.example", PASSWORD, account="Flota Uno")
        with httpx.Client(base_url=url, verify=ssl.create_default_context(cafile=str(cert)), timeout=30) as c:
            r = c.post("/api/v1/auth/login", json=login_body(email, PASSWORD))
    assert r.status_code == 200 and url.startswith("https://")
    assert "secure" in [p.strip().lower() for p in r.headers["set-cookie"].split(";")]
