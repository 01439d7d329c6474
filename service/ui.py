"""The explorer page at `/ui`: static files shipped in the package, served by the service itself.

The page only calls the public API, so it needs nothing here but its files. They are read once, when
the app is built (a few kB), and served with an ETag and `Cache-Control: no-cache`: a browser keeps
them and revalidates on each visit (a 304), so an upgraded server is never shown with stale assets.
The content-security policy lets the page reach this server only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException

_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
# Nothing from another host, no inline script; images only from this server or the user's own files.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    """The page's files, from the installed package (service/static/ui)."""
    folder = resources.files("simpool_serve.service").joinpath("static", "ui")
    assets = {}
    for name, media_type in _TYPES.items():
        body = folder.joinpath(name).read_bytes()
        assets[name] = Asset(body, media_type, f'"{hashlib.sha256(body).hexdigest()[:20]}"')
    return assets


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


def ui_router() -> APIRouter:
    """`GET /ui` (the page) and `GET /ui/<asset>`; `GET /` leads here (see docs_pages.HOME)."""
    assets = load_assets()
    router = APIRouter(include_in_schema=False)

    def serve(name: str, request: Request) -> Response:
        asset = assets[name]
        headers = {"ETag": asset.etag, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
        if name == "index.html":
            headers["Content-Security-Policy"] = CSP
            headers["Referrer-Policy"] = "no-referrer"
        if _matches(request.headers.get("if-none-match"), asset.etag):
            return Response(status_code=304, headers=headers)
        return Response(asset.body, media_type=asset.media_type, headers=headers)

    @router.get("/ui")
    async def page(request: Request) -> Response:
        return serve("index.html", request)

    @router.get("/ui/{name}")
    async def asset(name: str, request: Request) -> Response:
        if name not in assets or name == "index.html":
            raise HTTPException(404, "no such file of the explorer page")
        return serve(name, request)

    return router
