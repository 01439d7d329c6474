"""The pages a person opens in a browser: Swagger UI at `/docs`, ReDoc at `/redoc`, and `/`.

FastAPI's own pages load their JavaScript from a CDN, so they are blank on a machine without
internet access (where a model server often runs). These serve the same pages with the assets of
the `fastapi-offline` package, from the service itself.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from starlette.exceptions import HTTPException

ASSETS_PATH = "/docs/assets"
_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}
# Where `GET /` leads; the one line to change when another page becomes the front door.
HOME = "/ui"  # the explorer page, which links to /docs


def _assets_dir() -> Path:
    return Path(str(resources.files("fastapi_offline") / "static"))


def docs_router(title: str, openapi_url: str = "/openapi.json") -> APIRouter:
    """Swagger UI and ReDoc over the app's OpenAPI schema, every asset served from here."""
    router = APIRouter(include_in_schema=False)
    folder = _assets_dir()

    def urls(request: Request) -> tuple[str, str]:
        root = request.scope.get("root_path", "")  # behind a proxy that mounts the service under a path
        return f"{root}{openapi_url}", f"{root}{ASSETS_PATH}"

    @router.get("/docs")
    async def swagger(request: Request) -> HTMLResponse:
        schema, assets = urls(request)
        return get_swagger_ui_html(
            openapi_url=schema,
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{assets}/swagger-ui.css",
            swagger_favicon_url=f"{assets}/favicon.png",
        )

    @router.get("/redoc")
    async def redoc(request: Request) -> HTMLResponse:
        schema, assets = urls(request)
        return get_redoc_html(
            openapi_url=schema,
            title=f"{title} - ReDoc",
            redoc_js_url=f"{assets}/redoc.standalone.js",
            redoc_favicon_url=f"{assets}/favicon.png",
            with_google_fonts=False,
        )

    @router.get(ASSETS_PATH + "/{name}")
    async def asset(name: str) -> FileResponse:
        if name not in _ASSETS:  # a fixed list: no path is ever built from the request
            raise HTTPException(404, f"no asset {name[:64]!r}")
        return FileResponse(
            folder / name, media_type=_ASSETS[name], headers={"Cache-Control": "public, max-age=86400"}
        )

    return router


def home_router() -> APIRouter:
    """`GET /`: a person who opens the service's address lands on a page, not on a 404."""
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    @router.head("/")
    async def home(request: Request) -> RedirectResponse:
        return RedirectResponse(f"{request.scope.get('root_path', '')}{HOME}", status_code=307)

    return router
