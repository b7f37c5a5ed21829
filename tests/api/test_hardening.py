"""Hostile input over real HTTP: malformed headers and paths, absurd dates, deeply nested JSON and
oversized bodies answer one-line 4xx errors (never a 500); the console's pages carry their
security headers however they are addressed."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import psycopg
import pytest

from avl.admin import DeviceSpec, add_device
from avl.config import Settings
from tests.api.conftest import Api


def raw_request(api: Api, request: bytes) -> bytes:
    """Sends bytes httpx would refuse to send (a header with a non-ASCII byte) and reads the answer."""
    host, port = api.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_a_bearer_header_of_whitespace_bytes_is_a_401_not_a_500(api: Api) -> None:
    # "Bearer " followed by a no-break space (0xA0): str.split() finds a single part.
    answer = raw_request(api, b"GET /api/v1/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xa0\r\n"
                              b"Connection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b'"unauthenticated"' in answer


def test_odd_ticket_references_distant_dates_and_deep_geometry_are_4xx(api: Api) -> None:
    api.account("Flota Uno")
    support = api.token("support", "mesa")
    client = api.token("client", "despacho", account="Flota Uno")
    with psycopg.connect(api.db_url) as conn:
        device = add_device(conn, DeviceSpec(identifier="356307040000011", protocol="teltonika", account="Flota Uno",
                                             plate="AA100AA"))["id"]
    with api.client(support) as c:
        # "²" is a digit to str.isdigit() but not to int().
        assert c.get("/api/v1/support/tickets/%C2%B2").status_code == 404
        r = c.post("/api/v1/support/tickets/%C2%B2/state", json={"state": "closed", "note": "x"})
        assert r.status_code in (404, 422) and "error" in r.json()
    with api.client(client) as c:
        r = c.get(f"/api/v1/vehicles/{device}/distance", params={"from": "9999-12-30", "to": "9999-12-31"})
        assert r.status_code == 422 and r.json()["error"] == "invalid_request", r.text
        # Coordinates nested 900 deep (the geometry library recurses), and a body nested 200,000 deep
        # (the JSON parser itself runs out of stack).
        for depth in (900, 200_000):
            r = c.post("/api/v1/geofences", content=b'{"name": "deep", "geometry": {"type": "Polygon", "coordinates": '
                       + b"[" * depth + b"[-66.9, 10.5]" + b"]" * depth + b"}}",
                       headers={"Content-Type": "application/json"})
            assert r.status_code == 422 and r.json()["error"] == "invalid_request", (depth, r.text)


def test_request_bodies_over_the_limit_are_refused_whether_announced_or_streamed(api: Api) -> None:
    api.account("Flota Uno")
    client = api.token("client", "despacho", account="Flota Uno")
    limit = Settings().api_max_body_bytes
    big = b'{"name": "' + b"x" * (limit + 1) + b'", "geometry": {}}'
    with api.client(client) as c:
        r = c.post("/api/v1/geofences", content=big, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["error"] == "body_too_large", r.text

        def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
            for i in range(0, len(big), 65536):
                yield big[i:i + 65536]

        r = c.post("/api/v1/geofences", content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["error"] == "body_too_large", r.text
        # A body within the limit still goes through to validation.
        r = c.post("/api/v1/geofences", json={"name": "small", "geometry": {}})
        assert r.status_code == 422


@pytest.mark.parametrize("path", ["/console/map", "/console/map.html", "/console/login.html",
                                  "/console/support.html", "/console/certify.html"])
def test_console_pages_carry_their_security_headers_however_they_are_addressed(api: Api, path: str) -> None:
    with api.client() as c:
        r = c.get(path)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["x-content-type-options"] == "nosniff"

