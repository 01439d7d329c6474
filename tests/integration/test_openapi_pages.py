"""The OpenAPI description and the pages drawn from it, as a person meets them in a real Chromium.

Every `$ref` resolves; ReDoc renders every operation without its "Something went wrong"; Swagger UI's
example for `/v2/models/{model}/infer` is a real request that answers 200 when a person presses
"Execute". The browser is Debian's chromium driven by Playwright, as in test_ui.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from simpool_serve.service.oip.schemas import INFER_EXAMPLE
from tests.helpers import Server
from tests.helpers.browser import chromium

TIMEOUT_MS = 90_000


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def operations(spec: dict[str, Any]) -> list[tuple[str, str]]:
    verbs = {"get", "post", "put", "delete", "patch"}
    return [(path, verb) for path, item in spec["paths"].items() for verb in item if verb in verbs]


def test_every_reference_resolves_and_the_infer_example_runs(server: Server) -> None:
    spec = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
    schemas = spec["components"]["schemas"]
    found = list(refs(spec))
    assert found  # the answers' models are referenced
    for ref in found:
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas, ref
    body = spec["paths"]["/v2/models/{model}/infer"]["post"]["requestBody"]["content"]["application/json"]
    assert body["example"] == INFER_EXAMPLE and body["schema"]["properties"]["inputs"]["items"]["properties"]
    answer = httpx.post(f"{server.url}/v2/models/resnet18/infer", json=body["example"], timeout=60)
    assert answer.status_code == 200 and answer.json()["outputs"][0]["name"] == "embedding"


@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    with chromium() as browser:
        yield browser.new_page()


def test_redoc_renders_every_operation(server: Server, page: Any) -> None:
    spec = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
    page.goto(f"{server.url}/redoc", timeout=TIMEOUT_MS)
    page.wait_for_selector("[data-section-id^='operation/']", state="attached", timeout=TIMEOUT_MS)
    assert "Something went wrong" not in page.content()
    sections = page.locator("[data-section-id^='operation/']")
    rendered = {sections.nth(i).get_attribute("data-section-id") for i in range(sections.count())}
    assert len(rendered) == len(operations(spec)), rendered


def test_swagger_executes_the_infer_example(server: Server, page: Any) -> None:
    page.goto(f"{server.url}/docs", timeout=TIMEOUT_MS)
    operation = page.locator(".opblock", has_text="/v2/models/{model}/infer").first
    operation.locator(".opblock-summary").click()
    operation.get_by_role("button", name="Try it out").click()
    operation.locator("input[placeholder='model']").fill("resnet18")
    operation.get_by_role("button", name="Execute").click()
    status = operation.locator(".live-responses-table .response .response-col_status").first
    status.wait_for(timeout=TIMEOUT_MS)
    assert status.inner_text().strip() == "200"
