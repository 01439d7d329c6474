"""The Open Inference Protocol codec, without HTTP: request bodies built by the real tritonclient, answers
read back by it; malformed bodies get 422/413 with a message saying what was wrong."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import serialize_byte_tensor

from simpool_serve.service.engine import EngineError, Limits
from simpool_serve.service.http_status import status_of
from simpool_serve.service.oip import codec
from simpool_serve.service.oip.codec import Images, OutputChoice, Pixels
from simpool_serve.service.refusals import Refusal


def body_of(inputs: list, outputs: list | None = None, **kwargs: object) -> tuple[bytes, int]:
    body, json_size = triton.InferenceServerClient.generate_request_body(inputs, outputs, **kwargs)
    return body, len(body) if json_size is None else json_size


def limits(max_images: int = 64, max_request_bytes: int = 1000) -> Limits:
    return Limits(max_images, max_request_bytes, max_image_bytes=10**6, max_image_pixels=10**8)


def parse(body: bytes, json_size: int | None = None, max_images: int = 64) -> codec.InferRequest:
    return codec.parse_request(body, len(body) if json_size is None else json_size, limits(max_images))


def images_input(
    files: list[bytes], binary: bool = True, shape: list[int] | None = None
) -> triton.InferInput:
    arr = np.array(files, dtype=np.object_).reshape(shape or [len(files)])
    tensor = triton.InferInput("images", list(arr.shape), "BYTES")
    tensor.set_data_from_numpy(arr, binary_data=binary)
    return tensor


def test_binary_bytes_images_as_the_client_sends_them() -> None:
    files = [b"\xff\xd8first", b"", b"\x89PNG\x00\x00second"]  # zero bytes and an empty file survive
    body, size = body_of([images_input(files)], request_id="r-7", parameters={"normalize": True})
    req = parse(body, size)
    assert req.tensor == Images(list(files))
    assert req.id == "r-7" and req.normalize is True
    # No `outputs`: tritonclient asks for everything in binary.
    assert req.outputs is None and req.binary_output is True
    assert req.choose_outputs(["embedding", "attention"]) == [
        OutputChoice("embedding", True),
        OutputChoice("attention", True),
    ]


def test_images_n_by_1_and_json_strings() -> None:
    body, size = body_of([images_input([b"aGVsbG8=", b"d29ybGQ="], binary=False, shape=[2, 1])])
    assert size == len(body)  # all JSON: no binary part
    req = parse(body)
    assert req.tensor == Images(["aGVsbG8=", "d29ybGQ="])  # base64 text, decoded later like REST JSON
    assert req.count == 2


def test_pixels_binary_and_json_give_the_same_array() -> None:
    """UINT8 `images` (the graph's input, as Triton serving the export takes it) is `pixels` by another
    name."""
    rng = np.random.default_rng(0)
    px = rng.integers(0, 256, size=(2, 8, 8, 3), dtype=np.uint8)
    arrays = []
    for name in ("pixels", "images"):
        for binary in (True, False):
            tensor = triton.InferInput(name, list(px.shape), "UINT8")
            tensor.set_data_from_numpy(px, binary_data=binary)
            req = parse(*body_of([tensor]))
            assert isinstance(req.tensor, Pixels)
            arrays.append(req.tensor.array)
    for array in arrays:
        np.testing.assert_array_equal(array, px)


def test_outputs_selection_and_per_output_binary() -> None:
    outputs = [
        triton.InferRequestedOutput("attention", binary_data=False),
        triton.InferRequestedOutput("embedding", binary_data=True),
    ]
    req = parse(*body_of([images_input([b"x"])], outputs))
    assert req.choose_outputs(["embedding", "attention", "logits"]) == [
        OutputChoice("attention", False),
        OutputChoice("embedding", True),
    ]
    req = parse(*body_of([images_input([b"x"])], [triton.InferRequestedOutput("logits")]))
    with pytest.raises(EngineError, match="unknown output 'logits'") as err:
        req.choose_outputs(["embedding", "attention"])
    assert status_of(err.value) == 422


def test_answer_round_trips_through_the_client_json_and_binary() -> None:
    emb = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    att = np.full((2, 2, 2), 0.25, dtype=np.float32)
    body, size = codec.encode_response(
        "m", "req-1", "fp", [(OutputChoice("embedding", True), emb), (OutputChoice("attention", False), att)]
    )
    assert size is not None and size < len(body)
    result = triton.InferenceServerClient.parse_response_body(body, header_length=size)
    np.testing.assert_array_equal(result.as_numpy("embedding").reshape(2, 3), emb)
    np.testing.assert_array_equal(result.as_numpy("attention"), att)  # JSON floats: exact float32
    answer = result.get_response()
    assert answer["id"] == "req-1" and answer["model_version"] == "1"
    assert answer["parameters"] == {"fingerprint": "fp"}

    body, size = codec.encode_response("m", None, "fp", [(OutputChoice("embedding", False), emb)])
    assert size is None
    answer = json.loads(body)
    assert answer["outputs"] == [
        {"name": "embedding", "datatype": "FP32", "shape": [2, 3], "data": answer["outputs"][0]["data"]}
    ]
    np.testing.assert_array_equal(np.asarray(answer["outputs"][0]["data"], np.float32), emb.ravel())
    assert len(answer["id"]) == 32  # a fresh id when the request had none


def test_bytes_serialisation_matches_the_clients() -> None:
    files = [b"a", b"", b"\x00" * 300]
    ours = codec.serialize_bytes(files)
    assert ours == serialize_byte_tensor(np.array(files, dtype=np.object_)).item()
    assert codec.deserialize_bytes(ours, 10) == files


def test_gzip_body_is_inflated_within_the_limit() -> None:
    body = b'{"inputs": []}' * 10
    assert codec.inflate(gzip.compress(body), "gzip", limits()) == body
    with pytest.raises(EngineError) as err:
        codec.inflate(gzip.compress(b"\x00" * 10_000_000), "gzip", limits(max_request_bytes=1_000_000))
    assert status_of(err.value) == 413
    with pytest.raises(Refusal) as refused:
        codec.inflate(body, "br", limits())
    assert status_of(refused.value) == 415


def _json(obj: object, tail: bytes = b"") -> tuple[bytes, int]:
    head = json.dumps(obj).encode()
    return head + tail, len(head)


BYTES_1 = {"name": "images", "datatype": "BYTES", "shape": [1]}


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (_json({"inputs": []}), 422, "inputs"),
        (_json({"inputs": [BYTES_1, BYTES_1]}), 422, "exactly one input"),
        (_json({"inputs": [{**BYTES_1, "name": "x", "data": ["a"]}]}), 422, "unknown input 'x'"),
        (_json({"inputs": [{**BYTES_1, "datatype": "FP32", "data": [1]}]}), 422, "must be BYTES .* or UINT8"),
        (_json({"inputs": [{**BYTES_1, "datatype": "UINT8", "data": [1]}]}), 422, r"\[N, S, S, 3\]"),
        (_json({"inputs": [{**BYTES_1, "shape": [1, 2], "data": ["a", "b"]}]}), 422, r"\[N\] or \[N, 1\]"),
        (_json({"inputs": [{**BYTES_1, "shape": [2], "data": ["a"]}]}), 422, "says 2 images"),
        (_json({"inputs": [{**BYTES_1, "shape": [0], "data": []}]}), 422, "holds no image"),
        (_json({"inputs": [{**BYTES_1, "shape": [65], "data": ["a"] * 65}]}), 413, "over the limit of 64"),
        (_json({"inputs": [{**BYTES_1, "data": [1]}]}), 422, "must be strings"),
        (_json({"inputs": [BYTES_1]}), 422, "neither data nor binary_data_size"),
        (_json({"inputs": [{**BYTES_1, "parameters": {"binary_data_size": 9}}]}, b"\x05\0\0\0ab"), 422, "9"),
        (
            _json({"inputs": [{**BYTES_1, "parameters": {"binary_data_size": 6}}]}, b"\x05\0\0\0ab"),
            422,
            "remain",
        ),
        (_json({"inputs": [{**BYTES_1, "data": ["a"]}]}, b"extra"), 422, "no input declares"),
        (
            _json({"inputs": [{**BYTES_1, "data": ["a"]}], "parameters": {"normalize": "yes"}}),
            422,
            "normalize",
        ),
        (
            _json(
                {
                    "inputs": [
                        {"name": "pixels", "datatype": "UINT8", "shape": [1, 2, 2, 3], "data": [300] * 12}
                    ]
                }
            ),
            422,
            "0..255",
        ),
        (
            _json(
                {
                    "inputs": [
                        {"name": "pixels", "datatype": "FP32", "shape": [1, 2, 2, 3], "data": [0.0] * 12}
                    ]
                }
            ),
            422,
            "must be UINT8",
        ),
        (
            _json(
                {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 2, 3, 3], "data": [0] * 18}]}
            ),
            422,
            r"\[N, S, S, 3\]",
        ),
        ((b"{not json", 9), 422, "Invalid JSON"),
    ],
)
def test_malformed_requests(body: tuple[bytes, int], status: int, message: str) -> None:
    with pytest.raises(EngineError, match=message) as err:
        codec.parse_request(body[0], body[1], limits())
    assert status_of(err.value) == status


def test_header_length_must_lie_within_the_body() -> None:
    assert codec.header_length(None, 10) == 10
    assert codec.header_length("4", 10) == 4
    for bad in ("11", "-1", "x"):
        with pytest.raises(EngineError, match="Inference-Header-Content-Length"):
            codec.header_length(bad, 10)
