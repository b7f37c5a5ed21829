"""The web console: static pages and vanilla-JS modules under ``web/`` (no build step),
served by the API app under ``/console``.

- ``/console/login``, ``/console/map`` (fleet clients), ``/console/support`` (support center),
  ``/console/certify`` (installation centers): each page asks ``/api/v1/me`` and shows only its
  own role's screen; every datum comes from the API with the session cookie, so the API's
  authorization is what protects the data, not the page.
- ``/console/config.js``: the console's runtime settings (an optional raster tile URL; without
  one the map draws the light vector basemap shipped in ``web/basemap``; no CDN, no public tile
  server at run time).
- ``/console/i18n/<lang>/<namespace>.json``: the message catalogues of ``avl/i18n`` (the console's
  words are in the ``console`` namespace), loaded by i18next in the browser: Spanish (es-VE) by
  default, English by the user's choice (``users.language``, on ``/api/v1/me``); the login page
  follows the browser's ``Accept-Language`` (``config.js`` says which).
- Leaflet, its plugins and i18next are vendored in ``web/vendor`` (see ``web/VENDOR.md``).

``mount(app)`` adds these routes to an app made by ``api.app.create_app``.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import Scope

from avl import i18n
from ingest.protocols import ALL_NAMES

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
PAGES = ("login", "map", "support", "certify")
TILE_URL_ENV = "AVL_CONSOLE_TILE_URL"


def _csp(tile_url: str | None) -> str:
    img = "'self' data:"
    if tile_url:
        parts = urlsplit(tile_url)
        if parts.scheme in ("http", "https") and parts.netloc:
            img += f" {parts.scheme}://{parts.netloc.replace('{s}', '*')}"
    return ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
            f"img-src {img}; connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'self'; form-action 'self'")


def mount(app: FastAPI, *, tile_url: str | None = None, tile_attribution: str | None = None,
          web_dir: Path | None = None) -> None:
    """Serves the console under ``/console`` (and redirects ``/`` there). ``tile_url``: an optional
    raster tile server (``https://tiles.example/{z}/{x}/{y}.png``); default the environment's
    ``AVL_CONSOLE_TILE_URL``, else none (the vector basemap alone)."""
    root = web_dir or WEB_DIR
    if not (root / "login.html").is_file():
        raise RuntimeError(f"web console assets not found in {root}")
    tiles = tile_url if tile_url is not None else (os.environ.get(TILE_URL_ENV) or None)
    config: dict[str, Any] = {"tileUrl": tiles, "tileAttribution": tile_attribution, "languages": list(i18n.LANGUAGES),
                              "protocols": sorted(ALL_NAMES)}
    headers = {"Content-Security-Policy": _csp(tiles), "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
               "Referrer-Policy": "same-origin", "Cache-Control": "no-cache"}

    def page(name: str) -> Any:
        path = root / f"{name}.html"

        async def serve() -> FileResponse:
            return FileResponse(path, media_type="text/html; charset=utf-8", headers=headers)

        serve.__name__ = f"console_{name}"
        return serve

    for name in PAGES:
        app.add_api_route(f"/console/{name}", page(name), methods=["GET"], include_in_schema=False)

    async def config_js(request: Request) -> Response:
        # The login page's language, before anyone is logged in: the browser's Accept-Language.
        here = {**config, "language": i18n.language(request.headers.get("accept-language"))}
        body = f"window.AVL_CONSOLE = {json.dumps(here)};\n"
        return Response(body, media_type="text/javascript; charset=utf-8",
                        headers={"Cache-Control": "no-cache", "Vary": "Accept-Language"})

    async def messages(lang: str, namespace: str) -> Response:
        if lang not in i18n.LANGUAGES or namespace not in i18n.namespaces():
            return JSONResponse({"error": "not_found", "message": f"messages {lang}/{namespace} not found"},
                                status_code=404)
        path = resources.files(i18n).joinpath(lang, f"{namespace}.json")
        return Response(path.read_bytes(), media_type="application/json; charset=utf-8",
                        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

    async def home() -> RedirectResponse:
        return RedirectResponse("/console/login", status_code=307)

    app.add_api_route("/console/config.js", config_js, methods=["GET"], include_in_schema=False)
    app.add_api_route("/console/i18n/{lang}/{namespace}.json", messages, methods=["GET"], include_in_schema=False)
    app.add_api_route("/console", home, methods=["GET"], include_in_schema=False)
    app.add_api_route("/console/", home, methods=["GET"], include_in_schema=False)
    if not any(getattr(r, "path", None) == "/" for r in app.routes):
        app.add_api_route("/", home, methods=["GET"], include_in_schema=False)
    app.mount("/console", _Static(directory=root, headers=headers), name="console")


class _Static(StaticFiles):
    """The console's files with the pages' security headers on every one of them: ``/console/map.html``
    is the same page as ``/console/map`` and must not be framable or run under a weaker policy."""

    def __init__(self, *, directory: Path, headers: dict[str, str]) -> None:
        super().__init__(directory=directory)
        self.security_headers = headers

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(self.security_headers)
        return response
