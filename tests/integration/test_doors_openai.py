"""The OpenAI-compatible door of a real server on loopback, through the real `openai` SDK: its default
(base64) and float encodings, a single image or a list, the model list, errors as the SDK raises them."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from tests.helpers import DOOR_KEY, Server, cosine


def data_uri(path: Path) -> str:
    kind = {".jpg": "jpeg", ".png": "png", ".webp": "webp"}[path.suffix]
    return f"data:image/{kind};base64,{base64.b64encode(path.read_bytes()).decode()}"


def sdk(server: Server, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=60)


def test_sdk_default_float_and_list_match_rest(server: Server, photos: dict[str, Path]) -> None:
    paths = [photos["astronaut.jpg"], photos["logo.png"]]
    with server.client() as c:
        rest = c.post(
            "/embed", files=[("images", p.read_bytes()) for p in paths], data={"model": "vit_tiny"}
        ).json()
    client = sdk(server)
    default = client.embeddings.create(model="vit_tiny", input=data_uri(paths[0]))  # asks for base64
    assert default.model == "vit_tiny" and len(default.data) == 1 and default.data[0].index == 0
    vec = np.asarray(default.data[0].embedding)
    assert vec.shape == (192,) and abs(np.linalg.norm(vec) - 1) < 1e-5
    assert cosine(vec, rest["embeddings"][0]) > 0.99999
    plain_b64 = base64.b64encode(paths[1].read_bytes()).decode()
    listed = client.embeddings.create(
        model="vit_tiny", input=[data_uri(paths[0]), plain_b64], encoding_format="float"
    )
    assert [d.index for d in listed.data] == [0, 1]
    for d, want in zip(listed.data, rest["embeddings"], strict=True):
        assert cosine(d.embedding, want) > 0.99999
    assert listed.usage.prompt_tokens == 0
    assert listed.model_extra is not None and listed.model_extra["fingerprint"] == rest["fingerprint"]


def test_base64_encoding_is_little_endian_float32(server: Server, photos: dict[str, Path]) -> None:
    body = {"model": "resnet18", "input": data_uri(photos["coffee.jpg"]), "encoding_format": "base64"}
    with server.client() as c:
        answer = c.post("/v1/embeddings", json=body).json()
        rest = c.post("/embed", files={"images": photos["coffee.jpg"].read_bytes()}).json()
    vec = np.frombuffer(base64.b64decode(answer["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vec, rest["embeddings"][0], atol=1e-6)
    assert answer["object"] == "list" and answer["data"][0]["object"] == "embedding"


def test_models_listing(server: Server) -> None:
    listed = sdk(server).models.list()
    assert sorted(m.id for m in listed.data) == ["resnet18", "vit_tiny"]
    assert all(m.owned_by == "simpool-serve" and m.created > 0 for m in listed.data)
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]  # both doors are documented
    assert {"/v1/embeddings", "/v1/models", "/v2/models/{model}/infer", "/v2/health/ready"} <= set(paths)


def test_errors_in_openai_shape(server: Server, photos: dict[str, Path]) -> None:
    client = sdk(server)
    with pytest.raises(openai.BadRequestError, match="image 1") as bad:
        client.embeddings.create(model="resnet18", input=[data_uri(photos["coffee.jpg"]), "not*base64"])
    assert (
        bad.value.status_code == 400
        and bad.value.param == "input"
        and bad.value.type == "invalid_request_error"
    )
    with pytest.raises(openai.NotFoundError, match="unknown model 'gpt-9'") as missing:
        client.embeddings.create(model="gpt-9", input=data_uri(photos["coffee.jpg"]))
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.UnprocessableEntityError, match="dimensions"):
        client.embeddings.create(model="resnet18", input=data_uri(photos["coffee.jpg"]), dimensions=8)
    # Token arrays (LangChain's default) and plain text: 400 saying the model embeds images, and how.
    for text in ([[1, 2, 3]], [1, 2, 3], "a photo of a cat", ["hello"]):
        with server.client() as c:
            answer = c.post("/v1/embeddings", json={"model": "resnet18", "input": text})
        error = answer.json()["error"]
        assert answer.status_code == 400 and error["param"] == "input" and error["code"] == "text_input"
        assert "embed images" in error["message"] and "data:image/jpeg;base64" in error["message"]
    assert client.models.retrieve("vit_tiny").id == "vit_tiny"
    with pytest.raises(openai.NotFoundError) as gone:
        client.models.retrieve("gpt-9")
    assert gone.value.code == "model_not_found"


def test_api_key(keyed_server: Server, photos: dict[str, Path]) -> None:
    with pytest.raises(openai.AuthenticationError, match="API key") as err:
        sdk(keyed_server, "wrong").embeddings.create(model="resnet18", input=data_uri(photos["coffee.jpg"]))
    assert err.value.code == "invalid_api_key"
    answer = sdk(keyed_server, DOOR_KEY).embeddings.create(
        model="resnet18", input=data_uri(photos["coffee.jpg"])
    )
    assert len(answer.data[0].embedding) == 512
    assert httpx.get(f"{keyed_server.url}/v1/models").status_code == 401
