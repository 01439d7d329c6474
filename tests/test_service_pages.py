"""What a person meets in a browser or with curl: the docs pages offline, `/`, and plain messages."""

from __future__ import annotations

import re

from conftest import Server


def test_docs_pages_load_every_asset_from_the_service(server: Server) -> None:
    with server.client() as c:
        for page in ("/docs", "/redoc"):
            html = c.get(page)
            assert html.status_code == 200 and "text/html" in html.headers["content-type"]
            assert not re.search(r"https?://", html.text), f"{page} refers to another host"
            assets = re.findall(r'(?:src|href)="([^"]+)"', html.text)
            assert assets and all(a.startswith("/docs/assets/") for a in assets), assets
            for asset in assets:
                answer = c.get(asset)
                assert answer.status_code == 200 and len(answer.content) > 1000, asset
        assert "openapi" in c.get("/openapi.json").json()
        assert c.get("/docs/assets/../../etc/passwd").status_code == 404
        assert c.get("/docs/assets/manifest.json").status_code == 404
        home = c.get("/", follow_redirects=False)
        assert home.status_code == 307 and home.headers["location"] == "/docs"
