"""The Open Inference Protocol door of a real server on loopback, through the real `tritonclient[http]`:
health, metadata, the model's Triton config, inference with BYTES images and UINT8 pixels in JSON and
binary, outputs selection, errors as the client raises them, API key and limits, metrics per route."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

from simpool_serve.service.engine.preprocess import decode_image
from simpool_serve.service.oip.model_config import triton_config
from simpool_serve.spec import fingerprint, load_manifest
from tests.helpers import DOOR_KEY, Server, cosine


def triton_client(server: Server, **kwargs: object) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=60, **kwargs)


def images_input(files: list[bytes], binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("images", [len(files)], "BYTES")
    if binary:
        tensor.set_data_from_numpy(np.array(files, dtype=np.object_))
    else:  # JSON BYTES are text: base64 of the file, as REST's JSON images
        tensor.set_data_from_numpy(np.array([base64.b64encode(f) for f in files], dtype=np.object_), False)
    return tensor


def pixels_input(pixels: np.ndarray, binary: bool = True, name: str = "pixels") -> triton.InferInput:
    tensor = triton.InferInput(name, list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels, binary_data=binary)
    return tensor


def preprocessed(model_repo: Path, name: str, paths: list[Path]) -> np.ndarray:
    """The service's own preprocessing, in this process: what `images` becomes before the graph."""
    manifest = load_manifest(model_repo / name / "manifest.json")
    return np.stack([decode_image(p.read_bytes(), manifest, 10**8) for p in paths])


def test_health_metadata_and_config(server: Server, model_repo: Path) -> None:
    client = triton_client(server)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("resnet18") and client.is_model_ready("vit_tiny", model_version="1")
    assert not client.is_model_ready("no_such_model")
    meta = client.get_server_metadata()
    assert meta["name"] == "simpool-serve" and "binary_tensor_data" in meta["extensions"]
    for name in ("resnet18", "vit_tiny"):
        manifest = load_manifest(model_repo / name / "manifest.json")
        model = client.get_model_metadata(name)
        assert model == client.get_model_metadata(name, model_version="1")
        assert (
            model["name"] == name and model["versions"] == ["1"] and model["platform"] == "onnxruntime_onnx"
        )
        assert model["parameters"] == {"fingerprint": fingerprint(manifest)}
        s = manifest.input_size
        assert model["inputs"] == [
            {"name": "images", "datatype": "BYTES", "shape": [-1]},
            {"name": "pixels", "datatype": "UINT8", "shape": [-1, s, s, 3]},
        ]
        outputs = {o["name"]: o["shape"] for o in model["outputs"]}
        assert outputs["embedding"] == [-1, manifest.embedding_dim]
        assert outputs["attention"] == [-1, *manifest.grid]
        assert ("logits" in outputs) is (name == "resnet18")
        config = client.get_model_config(name)
        assert config == triton_config(manifest, name)  # what --triton-repo writes
        parsed = json_format.ParseDict(config, mc.ModelConfig())
        assert parsed.max_batch_size > 0 and parsed.input[0].data_type == mc.TYPE_UINT8
    with pytest.raises(InferenceServerException, match="no version '2'") as err:
        client.get_model_metadata("resnet18", model_version="2")
    assert err.value.status() == "404"
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        client.get_model_config("nope")


def test_images_and_pixels_give_the_rest_embedding(
    server: Server, model_repo: Path, photos: dict[str, Path]
) -> None:
    paths = [photos["astronaut.jpg"], photos["camera.png"], photos["coffee.webp"]]
    files = [p.read_bytes() for p in paths]
    with server.client() as c:
        rest = c.post("/embed", files=[("images", (p.name, p.read_bytes())) for p in paths]).json()
        raw = c.post("/embed", files=[("images", f) for f in files], data={"normalize": "false"}).json()
        logits_rest = c.post("/classify", files={"images": files[0]}, data={"top_k": "1"}).json()
    client = triton_client(server)
    pixels = preprocessed(model_repo, "resnet18", paths)
    answers = {
        "images binary": client.infer("resnet18", [images_input(files)]),
        "images json": client.infer("resnet18", [images_input(files, binary=False)]),
        "pixels binary": client.infer("resnet18", [pixels_input(pixels)]),
        "pixels json": client.infer("resnet18", [pixels_input(pixels, binary=False)]),
        # The graph's own input, as a client written for Triton serving `--triton-repo` sends it.
        "images UINT8": client.infer("resnet18", [pixels_input(pixels, name="images")]),
    }
    for how, result in answers.items():
        emb = result.as_numpy("embedding")
        assert emb.shape == (3, 512) and emb.dtype == np.float32, how
        np.testing.assert_allclose(emb, np.array(raw["embeddings"]), rtol=1e-4, atol=1e-5)  # not normalised
        for row, want in zip(emb, rest["embeddings"], strict=True):
            assert cosine(row, want) > 0.99999, how
        attention = result.as_numpy("attention")
        assert attention.shape == (3, 7, 7)
        np.testing.assert_allclose(attention.sum(axis=(1, 2)), 1.0, rtol=1e-4)
        assert int(np.argmax(result.as_numpy("logits")[0])) == logits_rest["predictions"][0][0]["index"]
        assert result.get_response()["parameters"]["fingerprint"] == rest["fingerprint"]


def test_outputs_selection_normalize_and_request_id(server: Server, photos: dict[str, Path]) -> None:
    client = triton_client(server)
    files = [photos["rocket.jpg"].read_bytes()]
    result = client.infer(
        "vit_tiny",
        [images_input(files)],
        outputs=[triton.InferRequestedOutput("embedding", binary_data=False)],
        request_id="abc-123",
        parameters={"normalize": True},
    )
    answer = result.get_response()
    assert answer["id"] == "abc-123" and answer["model_name"] == "vit_tiny" and answer["model_version"] == "1"
    assert [o["name"] for o in answer["outputs"]] == ["embedding"]
    assert "data" in answer["outputs"][0]  # JSON, as asked
    assert result.get_output("attention") is None
    np.testing.assert_allclose(np.linalg.norm(result.as_numpy("embedding"), axis=1), 1.0, rtol=1e-5)
    binary = client.infer(
        "vit_tiny",
        [images_input(files)],
        model_version="1",
        outputs=[triton.InferRequestedOutput("attention", binary_data=True)],
        request_compression_algorithm="gzip",  # the body arrives gzipped and is inflated
    )
    assert binary.get_response()["outputs"][0]["parameters"]["binary_data_size"] == 4 * 14 * 14
    assert binary.as_numpy("attention").shape == (1, 14, 14)


@pytest.mark.parametrize(
    ("model", "make_input", "status", "message"),
    [
        ("resnet18", lambda f: images_input([f, b"not an image"]), "400", "image 1"),
        ("no_such", lambda f: images_input([f]), "404", "unknown model 'no_such'"),
        (
            "resnet18",
            lambda f: pixels_input(np.zeros((1, 32, 32, 3), np.uint8)),
            "422",
            r"\[N, 224, 224, 3\]",
        ),
        ("resnet18", lambda f: triton.InferInput("x", [1], "BYTES"), "422", "unknown input 'x'"),
    ],
)
def test_errors_reach_the_client_with_our_message(
    server: Server, photos: dict[str, Path], model: str, make_input: object, status: str, message: str
) -> None:
    tensor = make_input(photos["coffee.jpg"].read_bytes())  # type: ignore[operator]
    if tensor.name() == "x":
        tensor.set_data_from_numpy(np.array([b"a"], dtype=np.object_))
    with pytest.raises(InferenceServerException, match=message) as err:
        triton_client(server).infer(model, [tensor])
    assert err.value.status() == status


def test_logits_of_a_model_without_a_classifier_is_refused(server: Server, photos: dict[str, Path]) -> None:
    with pytest.raises(InferenceServerException, match="logits") as err:
        triton_client(server).infer(
            "vit_tiny",
            [images_input([photos["coffee.jpg"].read_bytes()])],
            outputs=[triton.InferRequestedOutput("logits")],
        )
    assert err.value.status() == "422"


def test_raw_protocol_as_kserve_sends_it(server: Server, photos: dict[str, Path]) -> None:
    """KServe's client posts JSON (`content-type: application/json`) and reads an answer without the
    header-length header as all JSON; every error body has `error`."""
    data = base64.b64encode(photos["chelsea.jpg"].read_bytes()).decode()
    body = {
        "id": "3f2c",  # KServe's client always sends an id and the model name, and may send parameters
        "model_name": "resnet18",
        "inputs": [{"name": "images", "shape": [1, 1], "datatype": "BYTES", "data": [[data]]}],
    }
    with server.client() as c:
        ok = c.post("/v2/models/resnet18/versions/1/infer", json=body)
        unknown_path = c.get("/v2/models/resnet18/nothing")
        bad_json = c.post(
            "/v2/models/resnet18/infer", content=b"{", headers={"content-type": "application/json"}
        )
        ready = c.get("/v2/health/ready")
    assert ok.status_code == 200 and "inference-header-content-length" not in ok.headers
    answer = ok.json()
    assert {o["name"] for o in answer["outputs"]} == {"embedding", "attention", "logits"}
    assert len(answer["outputs"][0]["data"]) == 512 and answer["id"] == "3f2c"
    assert unknown_path.status_code == 404 and "error" in unknown_path.json()
    assert bad_json.status_code == 422 and "Invalid JSON" in bad_json.json()["error"]
    assert ready.json() == {"ready": True}


def test_api_key_and_limits(keyed_server: Server, photos: dict[str, Path]) -> None:
    files = [photos["coffee.jpg"].read_bytes()]
    anonymous = triton_client(keyed_server)
    assert anonymous.is_server_live() and anonymous.is_server_ready() and anonymous.is_model_ready("resnet18")
    with pytest.raises(InferenceServerException, match="API key") as err:
        anonymous.infer("resnet18", [images_input(files)])
    assert err.value.status() == "401"
    with pytest.raises(InferenceServerException, match="API key"):
        anonymous.get_model_metadata("resnet18")
    auth = {"Authorization": f"Bearer {DOOR_KEY}"}
    keyed = triton_client(keyed_server)
    answer = keyed.infer("resnet18", [images_input(files)], headers=auth)
    assert answer.as_numpy("embedding").shape == (1, 512)
    with pytest.raises(InferenceServerException, match="over the limit of 2") as err:
        keyed.infer("resnet18", [images_input(files * 3)], headers=auth)
    assert err.value.status() == "413"


def test_metrics_label_each_route(server: Server, photos: dict[str, Path]) -> None:
    client = triton_client(server)
    client.infer("resnet18", [images_input([photos["coffee.jpg"].read_bytes()])])
    client.is_model_ready("resnet18")
    text = httpx.get(f"{server.url}/metrics").text
    assert '{code="200",endpoint="/v2/models/{model}/infer",key="none",model="resnet18"}' in text
    assert 'endpoint="/v2/models/{model}/ready"' in text
