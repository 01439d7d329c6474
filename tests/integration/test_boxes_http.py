"""Boxes through the API: /attention answers them, validates `box_mass` and documents both."""

from __future__ import annotations

import base64
import math
from pathlib import Path

import numpy as np
import pytest

from simpool_serve.service.engine.boxes import attention_box
from simpool_serve.service.engine.preprocess import decode
from simpool_serve.spec import Manifest
from tests.helpers import Server
from tests.unit.test_boxes import coffee, jpeg, sideways


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_attention_answers_carry_boxes(server: Server, photos: dict[str, Path]) -> None:
    upright = coffee()
    with server.client() as c:
        answer = c.post(
            "/attention",
            json={"images": [b64(jpeg(upright)), b64(sideways(upright)), "bad"], "on_error": "skip"},
        ).json()
        everything = c.post(
            "/attention",
            files=[("images", jpeg(upright)), ("images", sideways(upright))],
            data={"box_mass": "1"},
        ).json()
        models = {m["name"]: m for m in c.get("/models").json()["models"]}
    geo = decode(jpeg(upright), Manifest.model_validate(models[answer["model"]]), 10**8)[1]
    first, turned, bad = answer["boxes"]
    assert bad is None and answer["errors"][0]["index"] == 2
    assert first == attention_box(np.array(answer["attention"][0]), geo, 0.6)
    x0, y0, x1, y1 = turned
    assert 0 <= x0 < x1 <= 600 and 0 <= y0 < y1 <= 400  # upright coordinates
    # All the mass: one region, the whole grid, so the box is the crop on the upright photograph
    # (widened to whole pixels).
    left, top, right, bottom = geo.crop
    crop = [math.floor(left), math.floor(top), math.ceil(right), math.ceil(bottom)]
    assert everything["boxes"] == [crop, crop]


@pytest.mark.parametrize("value", [0, -0.5, 1.5, "0.5", None, True])
def test_box_mass_is_validated(server: Server, photos: dict[str, Path], value: object) -> None:
    with server.client() as c:
        r = c.post("/attention", json={"images": [b64(photos["coffee.jpg"].read_bytes())], "box_mass": value})
    assert r.status_code == 422, r.text
    assert "box_mass" in r.json()["detail"]


def test_box_mass_form_field(server: Server, photos: dict[str, Path]) -> None:
    with server.client() as c:
        bad = c.post(
            "/attention", files={"images": photos["coffee.jpg"].read_bytes()}, data={"box_mass": "x"}
        )
        nan = c.post(
            "/attention", files={"images": photos["coffee.jpg"].read_bytes()}, data={"box_mass": "nan"}
        )
        ok = c.post(
            "/attention", files={"images": photos["coffee.jpg"].read_bytes()}, data={"box_mass": "0.3"}
        )
        openapi = c.get("/openapi.json").json()
    assert bad.status_code == 422 and nan.status_code == 422
    assert ok.status_code == 200 and len(ok.json()["boxes"]) == 1
    # The field and the answer are documented in the OpenAPI description.
    body = openapi["paths"]["/attention"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["box_mass"]["exclusiveMinimum"] == 0
    assert "boxes" in openapi["components"]["schemas"]["AttentionOut"]["required"]
