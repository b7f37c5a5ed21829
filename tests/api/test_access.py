"""Access: hashed tokens, console sessions, login rate limit, account status enforcement."""

from __future__ import annotations

import psycopg

from avl.admin import set_account_status
from tests.api.conftest import Api


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
    email = api.user("client", "ana@flota.example", "s3cret-pass", account="Flota Uno")
    with api.client() as c:
        r = c.post("/api/v1/auth/login", json={"email": email, "password": "s3cret-pass"})
        assert r.status_code == 200, r.text
        session = r.json()["token"]
        assert c.get("/api/v1/me").status_code == 200  # the cookie works too
    with api.client(session) as c:
        assert c.post("/api/v1/auth/logout").status_code == 204
        assert c.get("/api/v1/me").status_code == 401
    with psycopg.connect(api.db_url) as conn:
        hashes = [bytes(r[0]) for r in conn.execute("SELECT token_hash FROM api_tokens").fetchall()]
    assert session.encode() not in b"".join(hashes)


def test_login_is_rate_limited(api: Api) -> None:
    api.account("Flota Uno")
    email = api.user("client", "luis@flota.example", "right-password", account="Flota Uno")
    with api.client() as c:
        codes = [c.post("/api/v1/auth/login", json={"email": email, "password": "wrong"}).status_code for _ in range(6)]
        assert codes == [401] * 5 + [429]
        # Even the right password waits now.
        assert c.post("/api/v1/auth/login", json={"email": email, "password": "right-password"}).status_code == 429


def test_a_retired_accounts_users_are_blocked_and_a_suspended_one_can_still_log_in(api: Api) -> None:
    api.account("Retirada SA")
    api.account("Morosa SA")
    retired = api.token("client", "r", account="Retirada SA")
    api.user("client", "m@morosa.example", "password-1", account="Morosa SA")
    with psycopg.connect(api.db_url) as conn:
        set_account_status(conn, "Retirada SA", "retire")
        set_account_status(conn, "Morosa SA", "suspend")
    with api.client(retired) as c:
        r = c.get("/api/v1/me")
    assert r.status_code == 403 and r.json()["error"] == "account_retired"
    with api.client() as c:
        r = c.post("/api/v1/auth/login", json={"email": "m@morosa.example", "password": "password-1"})
        assert r.status_code == 200
        assert c.get("/api/v1/me").json()["account_status"] == "suspended"


def test_bad_requests_get_one_line_errors(api: Api) -> None:
    with api.client() as c:
        r = c.post("/api/v1/auth/login", json={"email": "x"})
    assert r.status_code == 422
    assert r.json() == {"error": "invalid_request", "message": "password: Field required"}
