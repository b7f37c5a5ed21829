"""The web console: static pages and vanilla-JS modules under ``web/`` (no build step),
served by the API app under ``/console``.

- ``/console/login``, ``/console/map`` (fleet clients), ``/console/support`` (support center),
  ``/console/certify`` (installation centers): each page asks ``/api/v1/me`` and shows only its
  own role's screen; every datum comes from the API with the session cookie, so the API's
  authorization is what protects the data, not the page.
- ``/console/config.js``: the console's runtime settings (an optional raster tile URL; without
  one the map draws the light vector basemap shipped in ``web/basemap``; no CDN, no public tile
  server at run time).
- Leaflet is vendored in ``web/vendor/leaflet`` (see ``web/VENDOR.md``).

``mount(app)`` adds these routes to an app made by ``api.app.create_app``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

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
    config: dict[str, Any] = {"tileUrl": tiles, "tileAttribution": tile_attribution}
    headers = {"Content-Security-Policy": _csp(tiles), "X-Content-Type-Options": "nosniff",
               "Referrer-Policy": "same-origin", "Cache-Control": "no-cache"}

    def page(name: str) -> Any:
        path = root / f"{name}.html"

        async def serve() -> FileResponse:
            return FileResponse(path, media_type="text/html; charset=utf-8", headers=headers)

        serve.__name__ = f"console_{name}"
        return serve

    for name in PAGES:
        app.add_api_route(f"/console/{name}", page(name), methods=["GET"], include_in_schema=False)

    async def config_js() -> Response:
        body = f"window.AVL_CONSOLE = {json.dumps(config)};\n"
        return Response(body, media_type="text/javascript; charset=utf-8", headers={"Cache-Control": "no-cache"})

    async def home() -> RedirectResponse:
        return RedirectResponse("/console/login", status_code=307)

    app.add_api_route("/console/config.js", config_js, methods=["GET"], include_in_schema=False)
    app.add_api_route("/console", home, methods=["GET"], include_in_schema=False)
    app.add_api_route("/console/", home, methods=["GET"], include_in_schema=False)
    if not any(getattr(r, "path", None) == "/" for r in app.routes):
        app.add_api_route("/", home, methods=["GET"], include_in_schema=False)
    app.mount("/console", StaticFiles(directory=root), name="console")
