"""The gRPC door (the Open Inference Protocol's GRPCInferenceService and grpc.health.v1), driven by the
real `tritonclient.grpc` against a real `simpool-serve` subprocess on loopback, beside its HTTP doors.

tritonclient registers the `inference` protobuf package in this process; the server's copy lives in
its own process (and its own descriptor pool), so nothing here clashes.
"""

from __future__ import annotations

import base64
import io
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.helpers import BIN, REPO_ROOT, Server, cosine, free_port, start_server

KEY = "grpc-key-3"
AUTH = {"authorization": f"Bearer {KEY}"}
MAX_IMAGE_BYTES = 400_000


@dataclass
class GrpcServer:
    http: Server
    address: str
    keys_file: Path  # a second key, `ops`, beside KEY (SIMPOOL_API_KEY, named `default`)

    def client(self) -> tg.InferenceServerClient:
        return tg.InferenceServerClient(self.address)


@pytest.fixture(scope="module")
def served(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcServer]:
    port = free_port()
    logs = tmp_path_factory.mktemp("grpc-logs")
    keys_file = logs / "api-keys"
    keys_file.write_text("ops:grpc-ops-1\n")
    env = {
        "SIMPOOL_GRPC_PORT": str(port),
        "SIMPOOL_API_KEY": KEY,
        "SIMPOOL_API_KEYS_FILE": str(keys_file),
        "SIMPOOL_DEFAULT_MODEL": "resnet18",
        "SIMPOOL_MAX_IMAGES_PER_REQUEST": "4",
        "SIMPOOL_MAX_IMAGE_BYTES": str(MAX_IMAGE_BYTES),
        "SIMPOOL_MAX_BATCH_DELAY_MS": "20",
    }
    with start_server(model_repo, logs, env) as http:
        yield GrpcServer(http, f"127.0.0.1:{port}", keys_file)


def _bytes_input(files: list[bytes]) -> tg.InferInput:
    tensor = tg.InferInput("images", [len(files)], "BYTES")
    tensor.set_data_from_numpy(np.array(files, dtype=np.object_))
    return tensor


def _http_embedding(server: Server, data: bytes, model: str = "resnet18") -> np.ndarray:
    body = {
        "inputs": [
            {"name": "images", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(data).decode()]}
        ],
        "outputs": [{"name": "embedding"}],
    }
    r = httpx.post(f"{server.url}/v2/models/{model}/infer", json=body, headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["outputs"][0]["data"], np.float32)


def _pixels(path: Path, size: int = 224) -> np.ndarray:
    img = Image.open(path).convert("RGB").resize((size, size))
    return np.asarray(img, dtype=np.uint8)[None]


def _code(exc: BaseException) -> str:
    assert isinstance(exc, InferenceServerException)
    return str(exc.status())


# -- health, metadata, configuration -----------------------------------------------------------------


def test_health_metadata_and_config(served: GrpcServer) -> None:
    client = served.client()
    assert client.is_server_live() and client.is_server_ready()  # probes: no key needed
    assert client.is_model_ready("vit_tiny")
    meta = client.get_server_metadata(headers=AUTH)
    assert meta.name == "simpool-serve" and "binary_tensor_data" in meta.extensions
    model = client.get_model_metadata("resnet18", headers=AUTH, as_json=True)
    assert model["platform"] == "onnxruntime_onnx" and model["versions"] == ["1"]
    assert {"name": "images", "datatype": "BYTES", "shape": ["-1"]} in model["inputs"]
    assert {"name": "pixels", "datatype": "UINT8", "shape": ["-1", "224", "224", "3"]} in model["inputs"]
    assert [o["name"] for o in model["outputs"]] == ["embedding", "attention", "logits"]
    http_config = httpx.get(f"{served.http.url}/v2/models/resnet18/config", headers=AUTH).json()
    config = client.get_model_config("resnet18", headers=AUTH, as_json=True)["config"]
    assert config["name"] == "resnet18" and config["max_batch_size"] == http_config["max_batch_size"]
    assert config["input"][0]["dims"] == [str(d) for d in http_config["input"][0]["dims"]]
    with grpc.insecure_channel(served.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            # The health service follows readiness within its poll (0.5 s) of /readyz turning 200.
            deadline = time.monotonic() + 5
            while True:
                answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
                if answer.status == health_pb2.HealthCheckResponse.SERVING or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_repository_index_and_refused_lifecycle(served: GrpcServer) -> None:
    client = served.client()
    index = client.get_model_repository_index(headers=AUTH, as_json=True)["models"]
    assert [(m["name"], m["version"], m["state"]) for m in index] == [
        ("resnet18", "1", "READY"),
        ("vit_tiny", "1", "READY"),
    ]
    http = th.InferenceServerClient(served.http.url.removeprefix("http://"))
    assert [m["state"] for m in http.get_model_repository_index(headers=AUTH)] == ["READY", "READY"]
    raw = httpx.post(f"{served.http.url}/v2/repository/index", headers=AUTH)
    assert raw.json() == [{"name": m["name"], "version": "1", "state": "READY", "reason": ""} for m in index]
    with pytest.raises(InferenceServerException) as refused:
        client.load_model("resnet18", headers=AUTH)
    assert _code(refused.value) == "StatusCode.PERMISSION_DENIED"
    assert "model control mode is 'none'" in refused.value.message()
    with pytest.raises(InferenceServerException) as refused:
        client.unload_model("resnet18", headers=AUTH)
    assert _code(refused.value) == "StatusCode.PERMISSION_DENIED"
    r = httpx.post(f"{served.http.url}/v2/repository/models/resnet18/unload", headers=AUTH)
    assert r.status_code == 403 and "model control mode" in r.json()["error"]


# -- inference ---------------------------------------------------------------------------------------


def test_infer_bytes_matches_http(served: GrpcServer, photos: dict[str, Path]) -> None:
    data = [photos["chelsea.jpg"].read_bytes(), photos["camera.png"].read_bytes()]
    result = served.client().infer(
        "resnet18",
        [_bytes_input(data)],
        outputs=[tg.InferRequestedOutput("embedding"), tg.InferRequestedOutput("attention")],
        request_id="req-7",
        headers=AUTH,
    )
    response = result.get_response()
    assert response.id == "req-7" and response.model_version == "1"
    http_meta = httpx.get(f"{served.http.url}/v2/models/resnet18", headers=AUTH).json()
    assert response.parameters["fingerprint"].string_param == http_meta["parameters"]["fingerprint"]
    embedding, attention = result.as_numpy("embedding"), result.as_numpy("attention")
    assert embedding.shape == (2, 512) and attention.shape == (2, 7, 7)
    for i, file in enumerate(data):
        assert cosine(embedding[i], _http_embedding(served.http, file)) > 0.99999
    assert np.allclose(attention.sum(axis=(1, 2)), 1, atol=1e-4)


def test_infer_pixels_raw_and_typed(served: GrpcServer, photos: dict[str, Path]) -> None:
    pixels = _pixels(photos["astronaut.jpg"])
    tensor = tg.InferInput("pixels", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    raw = served.client().infer("resnet18", [tensor], headers=AUTH, parameters={"normalize": True})
    raw_embedding = raw.as_numpy("embedding")
    assert raw_embedding.shape == (1, 512) and abs(np.linalg.norm(raw_embedding) - 1) < 1e-5
    assert raw.as_numpy("logits").shape == (1, 1000)
    assert len(raw.get_response().raw_output_contents) == 3
    # The graph's own input name, as a client written for Triton serving `--triton-repo` sends it.
    triton_style = tg.InferInput("images", list(pixels.shape), "UINT8")
    triton_style.set_data_from_numpy(pixels)
    same = served.client().infer("resnet18", [triton_style], headers=AUTH, parameters={"normalize": True})
    np.testing.assert_allclose(same.as_numpy("embedding"), raw_embedding, rtol=1e-6, atol=1e-7)

    # Typed contents (no raw_input_contents), through tritonclient's own protobuf stubs: typed answers.
    request = service_pb2.ModelInferRequest(model_name="resnet18")
    request.parameters["normalize"].bool_param = True
    typed = request.inputs.add(name="pixels", datatype="UINT8", shape=list(pixels.shape))
    typed.contents.uint_contents.extend(pixels.ravel().tolist())
    request.outputs.add(name="embedding")
    bytes_request = service_pb2.ModelInferRequest(model_name="resnet18")
    files = bytes_request.inputs.add(name="images", datatype="BYTES", shape=[1])
    files.contents.bytes_contents.append(photos["astronaut.jpg"].read_bytes())
    bytes_request.outputs.add(name="embedding")
    with grpc.insecure_channel(served.address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        answer = stub.ModelInfer(request, metadata=tuple(AUTH.items()), timeout=60)
        from_file = stub.ModelInfer(bytes_request, metadata=tuple(AUTH.items()), timeout=60)
    assert not answer.raw_output_contents and list(answer.outputs[0].shape) == [1, 512]
    typed_embedding = np.asarray(answer.outputs[0].contents.fp32_contents, np.float32)
    assert np.allclose(typed_embedding, raw_embedding.ravel(), atol=1e-6)
    file_embedding = np.asarray(from_file.outputs[0].contents.fp32_contents, np.float32)
    assert (
        cosine(file_embedding, _http_embedding(served.http, photos["astronaut.jpg"].read_bytes())) > 0.99999
    )


# -- errors, key, deadline -----------------------------------------------------------------------------


def _infer_error(
    served: GrpcServer, model: str, tensor: tg.InferInput, **kwargs: object
) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        served.client().infer(model, [tensor], **kwargs)  # type: ignore[arg-type]
    return caught.value


def test_errors_map_onto_grpc_codes(served: GrpcServer, photos: dict[str, Path]) -> None:
    good = photos["chelsea.jpg"].read_bytes()
    unknown = _infer_error(served, "nope", _bytes_input([good]), headers=AUTH)
    assert _code(unknown) == "StatusCode.NOT_FOUND" and "unknown model 'nope'" in unknown.message()
    bad = _infer_error(served, "resnet18", _bytes_input([good, b"not an image"]), headers=AUTH)
    assert _code(bad) == "StatusCode.INVALID_ARGUMENT" and bad.message().startswith("image 1:")
    big = _infer_error(served, "resnet18", _bytes_input([b"\x89PNG" + bytes(MAX_IMAGE_BYTES)]), headers=AUTH)
    assert _code(big) == "StatusCode.INVALID_ARGUMENT" and "SIMPOOL_MAX_IMAGE_BYTES" in big.message()
    many = _infer_error(served, "resnet18", _bytes_input([good] * 5), headers=AUTH)
    assert _code(many) == "StatusCode.INVALID_ARGUMENT" and "SIMPOOL_MAX_IMAGES_PER_REQUEST" in many.message()
    floats = tg.InferInput("images", [1, 2], "FP32")
    floats.set_data_from_numpy(np.zeros((1, 2), np.float32))
    wrong = _infer_error(served, "resnet18", floats, headers=AUTH)
    assert _code(wrong) == "StatusCode.INVALID_ARGUMENT" and "BYTES" in wrong.message()
    no_logits = _infer_error(
        served, "vit_tiny", _bytes_input([good]), outputs=[tg.InferRequestedOutput("logits")], headers=AUTH
    )
    assert _code(no_logits) == "StatusCode.INVALID_ARGUMENT"
    version = _infer_error(served, "resnet18", _bytes_input([good]), model_version="2", headers=AUTH)
    assert _code(version) == "StatusCode.NOT_FOUND"


def test_key_is_required_except_for_health(served: GrpcServer, photos: dict[str, Path]) -> None:
    tensor = _bytes_input([photos["chelsea.jpg"].read_bytes()])
    missing = _infer_error(served, "resnet18", tensor)
    assert _code(missing) == "StatusCode.UNAUTHENTICATED" and "authorization: Bearer" in missing.message()
    wrong = _infer_error(served, "resnet18", tensor, headers={"authorization": "Bearer nope"})
    assert _code(wrong) == "StatusCode.UNAUTHENTICATED" and "wrong API key" in wrong.message()
    with pytest.raises(InferenceServerException) as caught:
        served.client().get_model_metadata("resnet18")
    assert _code(caught.value) == "StatusCode.UNAUTHENTICATED"
    assert served.client().is_server_ready() and served.client().is_model_ready("resnet18")


def test_keys_file_names_and_rotates_grpc_callers(served: GrpcServer) -> None:
    client = served.client()

    def call(key: str) -> str:
        try:
            client.get_model_metadata("resnet18", headers={"authorization": f"Bearer {key}"})
        except InferenceServerException as exc:
            return _code(exc)
        return "OK"

    assert call("grpc-ops-1") == "OK"
    served.keys_file.write_text("ops:grpc-ops-2\n")
    deadline = time.monotonic() + 2
    while call("grpc-ops-1") == "OK":
        assert time.monotonic() < deadline, "the rotated-out key still works 2 s after the file changed"
        time.sleep(0.02)
    assert call("grpc-ops-1") == "StatusCode.UNAUTHENTICATED"
    assert call("grpc-ops-2") == "OK" and call(KEY) == "OK"
    text = httpx.get(f"{served.http.url}/metrics", headers=AUTH).text
    for key, code in (("ops", "200"), ("default", "200"), ("none", "401")):
        assert f'{{code="{code}",endpoint="grpc:ModelMetadata",key="{key}",model=""}}' in text, key
    assert "grpc-ops-" not in served.http.read_log()


def test_deadline_is_the_calls(served: GrpcServer) -> None:
    # Four 12-megapixel PNGs take far longer than 0.1 s to decode on this machine.
    buf = io.BytesIO()
    Image.linear_gradient("L").resize((4000, 3000)).convert("RGB").save(buf, "PNG")
    files = [buf.getvalue()] * 4
    late = _infer_error(served, "resnet18", _bytes_input(files), headers=AUTH, client_timeout=0.1)
    assert _code(late) == "StatusCode.DEADLINE_EXCEEDED"
    after = served.client().infer("resnet18", [_bytes_input(files[:1])], headers=AUTH, client_timeout=60)
    assert after.as_numpy("embedding").shape == (1, 512)
    metrics = ""
    for _ in range(50):  # the server ends the late call on its own clock
        metrics = httpx.get(f"{served.http.url}/metrics", headers=AUTH).text
        if 'endpoint="grpc:ModelInfer"' in metrics and 'code="504"' in metrics:
            break
        time.sleep(0.1)
    assert any(
        'endpoint="grpc:ModelInfer"' in line and 'code="504"' in line
        for line in metrics.splitlines()
        if line.startswith("simpool_requests_total")
    ), metrics


# -- one engine for both protocols -----------------------------------------------------------------


def _batch_sizes(server: Server) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics", headers=AUTH).text
    out = {}
    for line in text.splitlines():
        if line.startswith('simpool_batch_size_bucket{le="1.0",model="resnet18"}'):
            out["le1"] = float(line.split()[-1])
        if line.startswith('simpool_batch_size_count{model="resnet18"}'):
            out["count"] = float(line.split()[-1])
    return out


def test_grpc_and_http_batch_together(served: GrpcServer, photos: dict[str, Path]) -> None:
    names = ["astronaut.jpg", "coffee.jpg", "chelsea.jpg", "rocket.jpg"]
    files = {n: photos[n].read_bytes() for n in names}
    expected = {n: _http_embedding(served.http, files[n]) for n in names}
    before = _batch_sizes(served.http)
    start = threading.Barrier(16)

    def over_grpc(i: int) -> float:
        name = names[i % len(names)]
        client = served.client()
        start.wait()
        result = client.infer(
            "resnet18",
            [_bytes_input([files[name]])],
            outputs=[tg.InferRequestedOutput("embedding")],
            headers=AUTH,
        )
        return cosine(result.as_numpy("embedding")[0], expected[name])

    def over_http(i: int) -> float:
        name = names[i % len(names)]
        start.wait()
        return cosine(_http_embedding(served.http, files[name]), expected[name])

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(over_grpc, i) for i in range(8)] + [
            pool.submit(over_http, i) for i in range(8)
        ]
        similarities = [f.result(timeout=120) for f in futures]
    assert min(similarities) > 0.99999
    after = _batch_sizes(served.http)
    batches = after["count"] - before["count"]
    single = after["le1"] - before["le1"]
    assert batches < 16 and single < batches, (before, after)  # some batch held several requests' images


# -- start-up --------------------------------------------------------------------------------------


def test_busy_grpc_port_is_a_one_line_startup_error(model_repo: Path) -> None:
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # gRPC's default; ours refuses to share
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"SIMPOOL_PROVIDERS": "CPUExecutionProvider", "SIMPOOL_GRPC_PORT": str(port)}
        cmd = [str(BIN / "simpool-serve"), "--model-dir", str(model_repo), "--port", str(free_port())]
        base = {k: v for k, v in os.environ.items() if not k.startswith("SIMPOOL_")}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=base | env)
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        f"simpool-serve: error: cannot listen for gRPC on 127.0.0.1:{port}: the port is already in use "
        "(another simpool-serve?); stop that process or choose another --grpc-port "
        "(SIMPOOL_GRPC_PORT; 0 turns gRPC off)"
    ], proc.stderr


def test_server_stubs_and_tritonclient_share_a_process() -> None:
    code = (
        "import tritonclient.grpc\n"
        "from simpool_serve.service.grpc.stubs import grpc_service_pb2 as pb\n"
        "from tritonclient.grpc import service_pb2\n"
        "assert pb.ModelInferRequest is not service_pb2.ModelInferRequest\n"
        "print(pb.ModelInferRequest.FromString(service_pb2.ModelInferRequest(model_name='m').SerializeToString()))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and 'model_name: "m"' in proc.stdout, proc.stderr


def test_committed_stubs_are_what_the_proto_generates(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    from simpool_serve.service.grpc import gen_stubs

    stubs = Path(gen_stubs.__file__).parent / "stubs"
    for path in gen_stubs.generate(tmp_path):
        assert path.read_text() == (stubs / path.name).read_text(), f"{path.name}: run gen_stubs and commit"


# KServe's client registers the same `inference` package as tritonclient (both in protobuf's global
# pool), so it runs in its own process. Its dependencies (pandas < 3, kubernetes, cryptography, ...)
# are not in the dev extra: .ci/run installs the client into a pip --target folder outside .venv (the
# one below, or KSERVE_PYTHONPATH), which the test puts on the subprocess's PYTHONPATH.
KSERVE_CLIENT = Path.home() / ".cache" / "simpool-ci" / "kserve-client"
_KSERVE = """
import asyncio, sys
try:
    import grpc, numpy as np
    from kserve import InferenceGRPCClient, InferInput, InferRequest
    from kserve.protocol.infer_type import RequestedOutput
except ImportError as exc:
    print(exc); sys.exit(77)

async def main(address, key, photo):
    auth = (("authorization", f"Bearer {key}"),)
    async with InferenceGRPCClient(address, timeout=60) as client:
        assert await client.is_server_live() and await client.is_server_ready()
        assert await client.is_model_ready("resnet18")
        files = InferInput("images", [1], "BYTES")
        files.set_data_from_numpy(np.array([open(photo, "rb").read()], dtype=np.object_))
        request = InferRequest("resnet18", [files], request_id="k-1", parameters={"normalize": True},
                               request_outputs=[RequestedOutput("embedding")])
        answer = await client.infer(request, headers=auth)
        embedding = answer.outputs[0].as_numpy()
        assert answer.id == "k-1" and answer.outputs[0].name == "embedding", answer
        assert embedding.shape == (1, 512) and abs(np.linalg.norm(embedding) - 1) < 1e-5
        pixels = InferInput("pixels", [1, 224, 224, 3], "UINT8", data=[7] * (224 * 224 * 3))  # typed
        typed = await client.infer(InferRequest("resnet18", [pixels]), headers=auth)
        assert [o.name for o in typed.outputs] == ["embedding", "attention", "logits"], typed
        assert typed.outputs[2].as_numpy().shape == (1, 1000)
        try:
            await client.infer(request)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAUTHENTICATED, exc
        else:
            raise AssertionError("no key, yet answered")
        print("kserve ok", answer.parameters["fingerprint"])

asyncio.run(main(*sys.argv[1:]))
"""


def test_kserve_grpc_client(served: GrpcServer, photos: dict[str, Path]) -> None:
    folder = Path(os.environ.get("KSERVE_PYTHONPATH") or KSERVE_CLIENT)
    env = dict(os.environ)
    if folder.is_dir():
        env["PYTHONPATH"] = str(folder)
    cmd = [sys.executable, "-c", _KSERVE, served.address, KEY, str(photos["chelsea.jpg"])]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    if proc.returncode == 77:
        pytest.skip(
            f"kserve is not importable ({proc.stdout.strip()}) with {folder} on PYTHONPATH; install it "
            "as .ci/run does (its kserve block: pip install --no-deps --target <folder> kserve==0.21.0 ...) "
            "into that folder, or point KSERVE_PYTHONPATH at one"
        )
    assert proc.returncode == 0 and "kserve ok" in proc.stdout, proc.stdout + proc.stderr


def test_api_doc_grpc_example_runs(served: GrpcServer, photos: dict[str, Path]) -> None:
    """docs/api.md's tritonclient.grpc example, as written (address, model, image and key swapped in)."""
    text = (REPO_ROOT / "docs" / "api.md").read_text()
    section = text.split("## Open Inference Protocol over gRPC", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    code = code.replace("localhost:8001", served.address).replace("vit_small_simpool", "vit_tiny")
    code = code.replace('"cat.jpg"', repr(str(photos["chelsea.jpg"])))
    code = code.replace('# headers={"authorization": "Bearer <key>"}', f"headers={AUTH!r},  #")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert re.fullmatch(r"\(1, 192\) [0-9a-f]{16}\n", proc.stdout), proc.stdout  # vit_tiny: 192 dimensions


def test_sigterm_drains_grpc_with_http(model_repo: Path, tmp_path: Path) -> None:
    """At SIGTERM the gRPC door stops taking calls with uvicorn (not after its drain), answers the call
    in flight, and the process exits 0."""
    port = free_port()
    env = {"SIMPOOL_GRPC_PORT": str(port), "SIMPOOL_SHUTDOWN_GRACE_S": "20"}
    buf = io.BytesIO()
    Image.linear_gradient("L").resize((4000, 3000)).convert("RGB").save(buf, "PNG")
    with start_server(model_repo, tmp_path, env) as http:
        client = tg.InferenceServerClient(f"127.0.0.1:{port}")
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(client.infer, "resnet18", [_bytes_input([buf.getvalue()] * 4)])
            time.sleep(0.3)  # the call is decoding
            http.proc.terminate()
            answer = in_flight.result(timeout=60)
        assert answer.as_numpy("embedding").shape == (4, 512)
        assert http.proc.wait(timeout=60) == 0
    log = http.read_log()
    assert log.index('"gRPC stopped"') < log.index('"stopped"'), log[-2000:]
