"""Model lifecycle through a real `simpool-serve` on loopback, over real exports.

A version written over the served folder as `simpool-export` writes it swaps in under load with no
failed request; explicit load and unload through Triton's HTTP and gRPC clients give the memory back;
removing a folder loses no accepted request, and a broken one changes nothing for the others."""

from __future__ import annotations

import json
import shutil
import threading
import time
from hashlib import sha256
from pathlib import Path

import httpx
import onnx
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from onnx import numpy_helper
from tritonclient.utils import InferenceServerException

from tests.helpers import Server, free_port, start_server


def rss_mb(server: Server) -> float:
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def metric(server: Server, line_start: str) -> float:
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


class Traffic:
    """Clients posting one photograph to /embed without pause, each answer kept with its send time."""

    def __init__(self, url: str, model: str, photo: bytes, clients: int = 4) -> None:
        self.url, self.model, self.photo = url, model, photo
        self.answers: list[tuple[float, float, int, str]] = []  # (sent, answered, status, fingerprint)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def _client(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as http:
            while not self._stop.is_set():
                sent = time.monotonic()
                r = http.post("/embed", files={"images": ("p.jpg", self.photo)}, data={"model": self.model})
                fingerprint = r.json().get("fingerprint", "") if r.status_code == 200 else r.text
                self.answers.append((sent, time.monotonic(), r.status_code, fingerprint))

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)


@pytest.fixture
def repo(model_repo: Path, tmp_path: Path) -> Path:
    """A private copy of the small models' repository: the tests write over and remove its folders."""
    return Path(shutil.copytree(model_repo, tmp_path / "repo"))


@pytest.fixture
def photo(photos: dict[str, Path]) -> bytes:
    return photos["chelsea.jpg"].read_bytes()


def another_version(graph: bytes) -> bytes:
    """The graph with its first convolution's weights scaled: another model with the same layout, so
    another fingerprint and other answers."""
    model = onnx.load_from_string(graph)
    weight = next(i for i in model.graph.initializer if len(i.dims) == 4)
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.5, weight.name))
    return model.SerializeToString()


def write_like_an_export(folder: Path, graph: bytes, manifest: dict[str, object]) -> None:
    """What `simpool-export --out folder` does to a served folder: the manifest goes first, the graph is
    rewritten in place, and the new manifest lands whole at the end (a rename)."""
    (folder / "manifest.json").unlink()
    with (folder / "model.onnx").open("wb") as fh:  # in place, in pieces, as onnx.save writes it
        for start in range(0, len(graph), 4 << 20):
            fh.write(graph[start : start + (4 << 20)])
            fh.flush()
            time.sleep(0.05)
    (folder / ".manifest.json.partial").write_text(json.dumps(manifest))
    (folder / ".manifest.json.partial").replace(folder / "manifest.json")


def test_a_version_written_over_the_served_folder_swaps_under_load(
    repo: Path, photo: bytes, tmp_path: Path
) -> None:
    folder = repo / "resnet18"
    graph = another_version((folder / "model.onnx").read_bytes())
    manifest = {
        **json.loads((folder / "manifest.json").read_text()),
        "onnx_sha256": sha256(graph).hexdigest(),
    }
    env = {"SIMPOOL_MODEL_CONTROL": "poll", "SIMPOOL_POLL_S": "0.5", "SIMPOOL_DEFAULT_MODEL": "resnet18"}
    with start_server(repo, tmp_path, env) as server, Traffic(server.url, "resnet18", photo) as traffic:
        old = httpx.get(f"{server.url}/models").json()["models"][0]["fingerprint"]
        time.sleep(1)
        write_like_an_export(folder, graph, manifest)
        written = time.monotonic()
        deadline = written + 60
        while not any(a[2] == 200 and a[3] != old for a in list(traffic.answers)):
            assert time.monotonic() < deadline, "the new version never answered"
            time.sleep(0.1)
        time.sleep(1)
    answers = traffic.answers
    assert {a[2] for a in answers} == {200}, [a for a in answers if a[2] != 200][:3]
    fingerprints = {a[3] for a in answers}
    assert len(fingerprints) == 2 and old in fingerprints, fingerprints
    switched = min(a[1] for a in answers if a[3] != old)  # the first answer of the new version
    assert all(a[3] != old for a in answers if a[0] > switched), "the old version answered after the switch"
    assert sum(1 for a in answers if a[0] > switched) > 0 and len(answers) > 20
    log = server.read_log().splitlines()
    assert sum("model version swapped in" in line for line in log) == 1
    assert sum("model version closed" in line and old in line for line in log) == 1  # drained, closed
    print(f"first answer of the new version {switched - written:.2f} s after its manifest landed")


def test_explicit_load_and_unload_with_triton_clients(repo: Path, photo: bytes, tmp_path: Path) -> None:
    grpc_port = free_port()
    env = {"SIMPOOL_MODEL_CONTROL": "explicit", "SIMPOOL_LOAD_MODELS": "vit_tiny",
           "SIMPOOL_GRPC_PORT": str(grpc_port)}  # fmt: skip
    with start_server(repo, tmp_path, env) as server:
        http = th.InferenceServerClient(server.url.removeprefix("http://"))
        states = {m["name"]: m["state"] for m in http.get_model_repository_index()}
        assert states == {"resnet18": "UNAVAILABLE", "vit_tiny": "READY"}
        assert not http.is_model_ready("resnet18")
        before = rss_mb(server)
        http.load_model("resnet18")  # returns once it serves
        assert http.is_model_ready("resnet18")
        r = httpx.post(f"{server.url}/embed", files={"images": ("p.jpg", photo)}, data={"model": "resnet18"})
        assert r.status_code == 200
        loaded = rss_mb(server)
        with Traffic(server.url, "resnet18", photo, clients=2) as traffic:
            time.sleep(0.5)
            asked = time.monotonic()
            http.unload_model("resnet18")  # returns once it is closed
            unloaded = time.monotonic()
            time.sleep(0.5)
        after = rss_mb(server)
        print(f"RSS before {before:.0f} MB, loaded {loaded:.0f} MB, after unloading {after:.0f} MB")
        assert after - before < 0.25 * (loaded - before), (before, loaded, after)
        answers = traffic.answers
        assert {a[2] for a in answers} == {200, 404}  # no request failed because of the unload
        assert all(a[2] == 200 for a in answers if a[1] < asked)
        assert all(a[2] == 404 for a in answers if a[0] > unloaded)
        assert metric(server, 'simpool_model_loads_total{model="resnet18",outcome="loaded"}') == 1
        # gRPC loads the same way; a missing folder is a 400 (INVALID_ARGUMENT) with the reason.
        client = tg.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        client.load_model("resnet18")
        assert client.is_model_ready("resnet18")
        with pytest.raises(InferenceServerException) as missing:
            client.load_model("nope")
        assert "no model folder 'nope'" in missing.value.message()
        with pytest.raises(InferenceServerException) as refused:
            http.load_model("nope")
        assert refused.value.status() == "400"
        # Unloading the default model: requests without a model get 404 saying so.
        http.unload_model("vit_tiny")
        r = httpx.post(f"{server.url}/embed", files={"images": ("p.jpg", photo)})
        assert r.status_code == 404 and "no default model is loaded" in r.json()["detail"]
        ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 200


def test_removing_a_folder_unloads_it_and_a_broken_one_changes_nothing(
    repo: Path, photo: bytes, tmp_path: Path
) -> None:
    env = {"SIMPOOL_MODEL_CONTROL": "poll", "SIMPOOL_POLL_S": "0.3", "SIMPOOL_DEFAULT_MODEL": "resnet18"}
    with start_server(repo, tmp_path, env) as server:
        broken = repo / "broken"  # complete (its manifest names its bytes), but no graph
        broken.mkdir()
        junk = b"not an ONNX graph" * 100
        manifest = json.loads((repo / "vit_tiny" / "manifest.json").read_text())
        (broken / "model.onnx").write_bytes(junk)
        (broken / "manifest.json").write_text(
            json.dumps({**manifest, "onnx_sha256": sha256(junk).hexdigest()})
        )
        with Traffic(server.url, "vit_tiny", photo, clients=2) as traffic:
            time.sleep(0.5)
            shutil.rmtree(repo / "vit_tiny")
            time.sleep(1.5)
        codes = [a[2] for a in traffic.answers]
        assert set(codes) <= {200, 404} and codes[0] == 200 and codes[-1] == 404, codes
        r = httpx.post(f"{server.url}/embed", files={"images": ("p.jpg", photo)})
        assert r.status_code == 200  # the others serve on
        assert httpx.get(f"{server.url}/readyz").status_code == 200
        index = {m["name"]: m for m in httpx.post(f"{server.url}/v2/repository/index").json()}
        assert set(index) == {"broken", "resnet18"}
        assert index["broken"]["state"] == "UNAVAILABLE" and "load failed" in index["broken"]["reason"]
        r = httpx.post(f"{server.url}/embed", files={"images": ("p.jpg", photo)}, data={"model": "broken"})
        assert r.status_code == 404 and "onnxruntime cannot load" in r.json()["detail"]
        assert metric(server, 'simpool_model_loads_total{model="broken",outcome="failed"}') == 1
        assert [m["name"] for m in httpx.get(f"{server.url}/models").json()["models"]] == ["resnet18"]
