"""The explorer page at /ui: its files over HTTP, and what a person sees in a real headless Chromium.

The browser is Debian's chromium driven by Playwright (never a browser Playwright downloads). The page
talks to a real server on loopback that needs an API key, so the key prompt is part of the path.
Set SIMPOOL_UPDATE_DOCS_IMAGES=1 to write the screenshot into docs/img/explorer.png.
"""

from __future__ import annotations

import io
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from simpool_serve.service.engine.preprocess import geometry
from simpool_serve.spec import Manifest
from tests.helpers import REPO_ROOT, Server, start_server
from tests.helpers.browser import chromium

KEY = "explorer-test-key"
TIMEOUT_MS = 90_000  # two cores shared with other work: inference may queue


@pytest.fixture(scope="module")
def keyed_server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {
        "SIMPOOL_API_KEY": KEY,
        "SIMPOOL_DEFAULT_MODEL": "resnet18",
        "SIMPOOL_MAX_IMAGES_PER_REQUEST": "4",  # so that five images earn a 413
    }
    with start_server(model_repo, tmp_path_factory.mktemp("ui-logs"), env) as s:
        yield s


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


# -- the files, over HTTP --------------------------------------------------------------------------


def test_page_and_assets_are_served_with_validators(keyed_server: Server) -> None:
    with httpx.Client(base_url=keyed_server.url, timeout=30) as c:
        root = c.get("/", follow_redirects=False)
        page = c.get("/ui")  # open without the key: the page itself asks for it
        models = c.get("/models")
        again = c.get("/ui", headers={"If-None-Match": page.headers["etag"]})
        assets = {name: c.get(f"/ui/{name}") for name in ("app.js", "style.css", "icon.svg")}
        unknown = c.get("/ui/../service/app.py")
        missing = c.get("/ui/secret.txt")
    assert root.status_code == 307 and root.headers["location"] == "/ui"
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-cache" and page.headers["etag"]
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    assert models.status_code == 401
    assert again.status_code == 304 and again.content == b""
    assert assets["app.js"].headers["content-type"].startswith("text/javascript")
    assert assets["style.css"].headers["content-type"].startswith("text/css")
    assert all(r.status_code == 200 and r.headers["etag"] for r in assets.values())
    assert unknown.status_code == 404 and missing.status_code == 404
    assert missing.json() == {"detail": "no such file of the explorer page"}
    # Nothing on the page may come from another host.
    for text in [page.text, *(r.text for r in assets.values())]:
        assert not re.search(r"""(https?:)?//[a-z0-9.-]+\.[a-z]{2,}""", text.replace("http://www.w3.org", ""))


# -- in the browser --------------------------------------------------------------------------------


def api_answers(server: Server, paths: list[Path], model: str) -> dict[str, Any]:
    """What the page should show, asked of the API directly."""
    auth = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=server.url, timeout=120, headers=auth) as c:
        files = [("images", (p.name, p.read_bytes())) for p in paths]
        return {
            "models": {m["name"]: m for m in c.get("/models").json()["models"]},
            "attention": c.post("/attention", files=files, data={"model": model}).json(),
            "classify": c.post("/classify", files=files, data={"model": model}).json(),
            "embed": c.post("/embed", files=files, data={"model": model}).json(),
        }


def card_facts(page: Any) -> list[dict[str, Any]]:
    """Per card, what is on screen: the overlay canvas, the box and the photograph, in CSS pixels."""
    return page.evaluate(
        """() => [...document.querySelectorAll('.card')].map((card) => {
            const img = card.querySelector('img'), heat = card.querySelector('canvas.heat');
            const box = card.querySelector('.box');
            const rect = (el) => { const r = el.getBoundingClientRect();
                                   return [r.left, r.top, r.right, r.bottom]; };
            const pixels = heat.width ? [...heat.getContext('2d').getImageData(0, 0, heat.width,
                                         heat.height).data] : [];
            return {
                state: card.dataset.state, heatShown: !heat.hidden, boxShown: !box.hidden,
                grid: [heat.height, heat.width], pixels, opacity: getComputedStyle(heat).opacity,
                natural: [img.naturalWidth, img.naturalHeight], img: rect(img), heat: rect(heat),
                boxRect: rect(box), box: box.dataset.box ? JSON.parse(box.dataset.box) : null,
                classes: [...card.querySelectorAll('.classes li .label')].map((e) => e.textContent),
                scores: [...card.querySelectorAll('.classes li .score')].map((e) => e.textContent),
                text: card.innerText,
            };
        })"""
    )


def on_screen(img: list[float], natural: list[int], box: tuple[float, ...]) -> np.ndarray:
    """A box in the photograph's pixels → where it is drawn, in CSS pixels."""
    sx, sy = (img[2] - img[0]) / natural[0], (img[3] - img[1]) / natural[1]
    return np.array([img[0] + box[0] * sx, img[1] + box[1] * sy, img[0] + box[2] * sx, img[1] + box[3] * sy])


def view_shot(page: Any, index: int) -> np.ndarray:
    png = page.locator(".card .view").nth(index).screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64)


def wait_done(page: Any, count: int) -> None:
    from playwright.sync_api import expect

    expect(page.locator(".card")).to_have_count(count)
    expect(page.locator('.card[data-state="loading"]')).to_have_count(0, timeout=TIMEOUT_MS)


def test_explorer_in_a_browser(
    keyed_server: Server, browser: Any, photos: dict[str, Path], tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    two = [photos["coffee.jpg"], photos["chelsea.jpg"]]
    want = api_answers(keyed_server, two, "resnet18")
    requests: list[str] = []
    console: list[tuple[str, str]] = []
    page_errors: list[str] = []
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.on("request", lambda r: requests.append(r.url))
    page.on("console", lambda m: console.append((m.type, m.text)))
    page.on("pageerror", lambda e: page_errors.append(str(e)))

    # `/` leads to the page; the server answers 401, so the page asks for the key (focused).
    page.goto(f"{keyed_server.url}/")
    assert page.url == f"{keyed_server.url}/ui"
    key = page.get_by_label("API key")
    expect(key).to_be_visible()
    expect(key).to_be_focused()
    expect(page.get_by_role("alert")).to_contain_text("API key")
    key.fill(KEY)
    key.press("Enter")
    model = page.get_by_label("Model", exact=True)
    expect(model).to_be_enabled()
    expect(page.locator("#model option")).to_have_count(2)
    model.select_option("resnet18")
    assert page.evaluate("sessionStorage.getItem('simpool-api-key')") == KEY

    # Two real photographs, picked with the file input (reached by its label, and focusable).
    picker = page.get_by_label("Choose images")
    picker.focus()
    expect(picker).to_be_focused()
    picker.set_input_files([str(p) for p in two])
    wait_done(page, 2)
    facts = card_facts(page)
    manifest = Manifest.model_validate(want["models"]["resnet18"])
    for i, card in enumerate(facts):
        assert card["state"] == "done", card["text"]
        natural = card["natural"]
        assert natural == list(Image.open(two[i]).size)
        # The overlay: the 7×7 attention drawn over the crop the model saw; its strongest cell is red.
        assert card["heatShown"] and card["grid"] == list(manifest.grid)
        att = np.array(want["attention"]["attention"][i])
        strongest = int(np.argmax(att))
        assert card["pixels"][4 * strongest : 4 * strongest + 4] == [220, 0, 0, 255]
        assert card["opacity"] == "0.55"
        crop = geometry(natural[0], natural[1], manifest).crop
        np.testing.assert_allclose(card["heat"], on_screen(card["img"], natural, crop), atol=1.5)
        # The box: the server's, drawn where it belongs on the photograph.
        box = want["attention"]["boxes"][i]
        assert card["boxShown"] and card["box"] == box
        np.testing.assert_allclose(card["boxRect"], on_screen(card["img"], natural, box), atol=1.5)
        # Five classes with their probabilities, as /classify answers; the fingerprint.
        preds = want["classify"]["predictions"][i]
        assert card["classes"] == [p["label"] for p in preds] and len(card["classes"]) == 5
        assert card["scores"] == [f"{100 * p['score']:.1f} %" for p in preds]
        assert want["attention"]["fingerprint"] in card["text"]
    # The similarity of the two, as the embeddings say.
    emb = want["embed"]["embeddings"]
    cells = page.locator("#similarity-table tbody td")
    expect(page.get_by_role("heading", name="Cosine similarity")).to_be_visible()
    sim = float(np.dot(emb[0], emb[1]))  # the embeddings are L2-normalised
    shown_sims = [float(t) for t in cells.all_inner_texts()]
    np.testing.assert_allclose(shown_sims, [1, sim, sim, 1], atol=0.0011)

    # The opacity slider changes what is seen: no overlay shows the photograph, full shows the heat map.
    slider = page.get_by_label("Attention overlay opacity")
    slider.fill("0")
    bare = view_shot(page, 0)
    slider.fill("100")
    full = view_shot(page, 0)
    assert np.abs(full - bare).mean() > 30
    slider.fill("55")

    # "Show the request": the equivalent curl, with the key as a variable, never its value.
    page.get_by_label("Show the request").check()
    shown = page.locator("#requests-text")
    expect(shown).to_be_visible()
    text = shown.inner_text()
    assert f"curl -s '{keyed_server.url}/attention'" in text
    assert "-F 'images=@coffee.jpg' -F 'images=@chelsea.jpg'" in text and "-F 'model=resnet18'" in text
    assert "$SIMPOOL_API_KEY" in text and KEY not in text
    page.get_by_label("Show the request").uncheck()

    shot = tmp_path / "explorer.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("SIMPOOL_UPDATE_DOCS_IMAGES") == "1":
        shutil.copy(shot, REPO_ROOT / "docs" / "img" / "explorer.png")

    # A phone-sized window: one column, nothing wider than the screen.
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert page.locator(".card").first.bounding_box()["width"] <= 390

    # Only the key prompt's 401 so far, nothing else in the console; nothing from another host.
    assert not page_errors
    errors = [text for kind, text in console if kind == "error"]
    assert all("status of 401" in t for t in errors), errors
    assert all(u.startswith((keyed_server.url + "/", f"blob:{keyed_server.url}/")) for u in requests), (
        requests
    )
    paths = {httpx.URL(u).path for u in requests if u.startswith("http")}
    assert {"/ui", "/ui/app.js", "/ui/style.css", "/models", "/attention", "/classify", "/embed"} <= paths
    context.close()


def test_explorer_errors_in_a_browser(
    keyed_server: Server, browser: Any, photos: dict[str, Path], tmp_path: Path
) -> None:
    """A bad file among good ones, too many images (413), a wrong key, a model without a classifier."""
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    context = browser.new_context(viewport={"width": 1000, "height": 800})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    console: list[tuple[str, str]] = []
    page_errors: list[str] = []
    page.on("console", lambda m: console.append((m.type, m.text)))
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    page.goto(f"{keyed_server.url}/ui")
    key = page.get_by_label("API key")
    key.fill("wrong")
    key.press("Enter")
    expect(page.get_by_role("alert")).to_contain_text("refused that API key")
    expect(key).to_be_focused()
    key.fill(KEY)
    key.press("Enter")
    expect(page.get_by_label("Model", exact=True)).to_be_enabled()

    notes = tmp_path / "notes.txt"
    notes.write_text("not a photograph\n")
    picker = page.get_by_label("Choose images")
    picker.set_input_files([str(photos["coffee.jpg"]), str(notes)])
    wait_done(page, 2)
    cards = page.locator(".card")
    expect(cards.nth(0)).to_have_attribute("data-state", "done")
    expect(cards.nth(1)).to_have_attribute("data-state", "error")
    expect(cards.nth(1)).to_contain_text("could not use this file: not an image in a supported format")
    expect(page.locator("#status")).to_contain_text("1 could not be read")

    five = ["astronaut.jpg", "coffee.jpg", "chelsea.jpg", "rocket.jpg", "camera.png"]
    picker.set_input_files([str(photos[n]) for n in five])
    expect(page.get_by_role("alert")).to_contain_text("Too much for one request (413)")
    expect(page.get_by_role("alert")).to_contain_text("over the limit of 4")

    # A model without a classifier: overlay, box and similarity, no class list.
    page.get_by_label("Model", exact=True).select_option("vit_tiny")
    picker.set_input_files([str(photos["coffee.jpg"]), str(photos["rocket.jpg"])])
    wait_done(page, 2)
    facts = card_facts(page)
    assert [f["state"] for f in facts] == ["done", "done"]
    assert all(f["grid"] == [14, 14] and f["boxShown"] and f["classes"] == [] for f in facts)
    expect(page.locator("#similarity-table tbody tr")).to_have_count(2)

    assert not page_errors
    errors = [text for kind, text in console if kind == "error"]
    assert all(re.search(r"status of (401|413)", t) for t in errors), errors
    context.close()


def test_explorer_says_untrained_shows_a_panorama_and_this_runs_request(
    keyed_server: Server, browser: Any, photos: dict[str, Path], tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    context = browser.new_context(viewport={"width": 1000, "height": 800})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{keyed_server.url}/ui")
    key = page.get_by_label("API key")
    key.fill(KEY)
    key.press("Enter")
    model = page.get_by_label("Model", exact=True)
    expect(model).to_be_enabled()
    model.select_option("resnet18")

    # The test models are exported with --random-init: /models says `weights: random`, the page says
    # so plainly, with the command that exports a trained one.
    note = page.get_by_role("note")
    expect(note).to_be_visible()
    expect(note).to_contain_text("resnet18 is untrained (random weights)")
    expect(note).to_contain_text("simpool-export --arch resnet18 --checkpoint PATH_OR_URL --name resnet18")

    # A 10000×10 panorama: its card shows the picture, not a line a fraction of a pixel high.
    ramp = np.tile(np.linspace(0, 255, 10000, dtype=np.uint8)[None, :, None], (10, 1, 3))
    panorama = tmp_path / "panorama.png"
    Image.fromarray(ramp).save(panorama)
    picker = page.get_by_label("Choose images")
    picker.set_input_files([str(panorama)])
    wait_done(page, 1)
    (card,) = card_facts(page)
    assert card["natural"] == [10000, 10], card["text"]
    height = card["img"][3] - card["img"][1]
    assert height >= 40, f"the panorama is drawn {height:.2f} px high"
    page.get_by_label("Attention overlay opacity").fill("0")
    shot = view_shot(page, 0)
    assert shot.shape[0] >= 40 and shot[:, -20:].mean() > 150 and shot[:, :20].mean() < 60  # the ramp

    # "Show the request": the calls of the current run only, not every earlier one.
    page.get_by_label("Show the request").check()
    shown = page.locator("#requests-text")
    expect(shown).to_contain_text("images=@panorama.png")
    picker.set_input_files([str(photos["coffee.jpg"])])
    wait_done(page, 1)
    expect(shown).to_contain_text("images=@coffee.jpg")
    text = shown.inner_text()
    assert "panorama.png" not in text and text.count("curl -s") == 2, text  # /attention and /classify
    context.close()
