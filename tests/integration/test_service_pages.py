"""What a person meets in a browser or with curl: the docs pages offline, `/`, and plain messages."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from tests.helpers import Server


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
        assert home.status_code == 307 and home.headers["location"] == "/ui"  # the explorer page


def test_a_url_instead_of_an_image_says_urls_are_not_fetched(server: Server, photos: dict[str, Path]) -> None:
    good = base64.b64encode(photos["coffee.jpg"].read_bytes()).decode()
    with server.client() as c:
        r = c.post("/embed", json={"images": [good, "https://example.com/cat.jpg"]})
    assert r.status_code == 400
    assert r.json()["detail"] == (
        "image 1: URLs are not fetched; send the image bytes (base64, a data URI or a file part)"
    )


def test_metrics_have_no_created_series(server: Server) -> None:
    with server.client() as c:
        c.get("/healthz")
        text = c.get("/metrics").text
    assert "simpool_requests_total{" in text and "simpool_request_duration_seconds_bucket{" in text
    assert "_created" not in text
