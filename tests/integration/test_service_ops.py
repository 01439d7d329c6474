"""Operating `simpool-serve`: auth, limits, overload, deadlines, disconnects, SIGTERM (own processes)."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.helpers import BIN, Server, start_server
from tests.integration.test_service_http import metric_values, value
from tests.unit.test_service_stages import png_bomb


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ops-logs")


def wait_until(predicate, what: str, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# -- auth -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed(model_repo: Path, logs: Path) -> Iterator[tuple[Server, Path]]:
    """A server with both kinds of key: SIMPOOL_API_KEY and a keys file (which the tests rotate)."""
    keys = logs / "api-keys"
    keys.write_text("# the operators' key\nops:ops-key-a\n")
    env = {"SIMPOOL_API_KEY": "k3y-for-tests", "SIMPOOL_API_KEYS_FILE": str(keys)}
    with start_server(model_repo, logs, env) as server:
        yield server, keys


def test_api_key(keyed: tuple[Server, Path], photos: dict[str, Path]) -> None:
    image = {"images": photos["coffee.jpg"].read_bytes()}
    server, _ = keyed
    with server.client() as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 200
        assert c.get("/docs").status_code == 200 and c.get("/openapi.json").status_code == 200
        assert c.get("/", follow_redirects=True).status_code == 200  # the docs pages need no key
        assert c.get("/docs/assets/swagger-ui.css").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic k3y-for-tests"}):
            for r in (c.post("/embed", files=image, headers=headers), c.get("/models", headers=headers)):
                assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
                what = "wrong" if headers.get("Authorization", "").startswith("Bearer") else "missing"
                assert r.json()["detail"] == (
                    f"{what} API key: send it as the header `Authorization: Bearer <key>`"
                )
        assert c.get("/metrics").status_code == 401
        good = {"Authorization": "Bearer k3y-for-tests"}
        assert c.post("/embed", files=image, headers=good).status_code == 200
        assert c.get("/models", headers=good).status_code == 200
        text = c.get("/metrics", headers=good).text
        # Refused requests are counted without a key name; let in, with the name of SIMPOOL_API_KEY.
        assert 'simpool_requests_total{code="401",endpoint="/embed",key="none",model=""} 3.0' in text
        assert 'requests_total{code="200",endpoint="/embed",key="default",model="resnet18"} 1.0' in text
    assert "k3y-for-tests" not in server.read_log()


def test_keys_file_rotates_without_a_restart(keyed: tuple[Server, Path]) -> None:
    server, keys = keyed

    def status(key: str) -> int:
        return httpx.get(f"{server.url}/models", headers={"Authorization": f"Bearer {key}"}).status_code

    assert status("ops-key-a") == 200 and status("k3y-for-tests") == 200
    keys.write_text("# rotated\nops:ops-key-b\n")  # rewritten in place
    wait_until(lambda: status("ops-key-a") == 401, "the rotated-out key to be refused", timeout=2)
    assert status("ops-key-b") == 200
    keys.write_text("")  # emptied (a botched edit): the keys loaded before stay
    wait_until(lambda: "is empty" in server.read_log(), "a warning about the empty file", timeout=2)
    assert status("ops-key-b") == 200 and status("k3y-for-tests") == 200
    new = keys.with_name("api-keys.new")  # replaced by a rename, as a Secret volume updates: a new inode
    new.write_text("ci:ci-key-c\nbare-key-d\n")
    os.replace(new, keys)
    wait_until(lambda: status("ci-key-c") == 200, "the replaced file's key", timeout=2)
    assert status("ops-key-b") == 401 and status("bare-key-d") == 200 and status("k3y-for-tests") == 200

    with server.client(headers={"Authorization": "Bearer ci-key-c"}) as c:
        samples = metric_values(c)
    counted = {
        dict(labels)["key"]
        for (name, labels), v in samples.items()
        if name == "simpool_requests_total" and ("endpoint", "/models") in labels and v > 0
    }
    assert counted == {"ops", "default", "ci", "key2", "none"}, counted  # none: the refused requests
    lines = [json.loads(line) for line in server.read_log().splitlines() if line.startswith("{")]
    logged = {r["key"] for r in lines if r.get("msg") == "request" and r.get("endpoint") == "/models"}
    assert logged == counted
    warned = [r for r in lines if r["level"] == "warning" and "SIMPOOL_API_KEYS_FILE" in r["msg"]]
    assert len(warned) == 1 and "keeping the 2 key name(s) loaded before" in warned[0]["msg"], warned
    log = server.read_log()
    assert not any(key in log for key in ("ops-key-a", "ops-key-b", "ci-key-c", "bare-key-d"))


def test_an_unusable_keys_file_stops_the_start(model_repo: Path, tmp_path: Path) -> None:
    empty = tmp_path / "keys"
    empty.write_text("# nothing yet\n")
    for path in (empty, tmp_path / "missing"):
        done = serve_exit(model_repo, {"SIMPOOL_API_KEYS_FILE": str(path)})
        assert done.returncode == 3, done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith(f"simpool-serve: error: SIMPOOL_API_KEYS_FILE {path}")
        assert ("is empty" if path == empty else "cannot read it") in line


# -- limits, overload, disconnects ----------------------------------------------------------------

TIGHT = {
    "SIMPOOL_MAX_BATCH_SIZE": "1",
    "SIMPOOL_MAX_QUEUE": "64",
    "SIMPOOL_MAX_IMAGES_PER_REQUEST": "64",
    "SIMPOOL_MAX_IMAGE_PIXELS": "1000000",
    "SIMPOOL_MAX_IMAGE_BYTES": "1000000",
    "SIMPOOL_MAX_REQUEST_BYTES": "3000000",
}


EMBEDS = {"endpoint": "/embed", "model": "resnet18", "key": "none"}  # the labels of /embed's counts here


def tiny_png() -> bytes:
    """A small image: cheap to decode, so that the work is inference (one image per batch here)."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def tight(model_repo: Path, logs: Path) -> Iterator[Server]:
    with start_server(model_repo, logs, TIGHT) as server:
        yield server


def test_request_limits(tight: Server, photos: dict[str, Path]) -> None:
    photo = photos["coffee.jpg"].read_bytes()
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (700, 800, 3), dtype=np.uint8))
    buf = io.BytesIO()
    noise.save(buf, "PNG")  # 0.56 megapixels, but 1.7 MB
    big = Image.fromarray(np.zeros((1100, 1000, 3), np.uint8))
    buf2 = io.BytesIO()
    big.save(buf2, "PNG")  # 1.1 megapixels, a few kB

    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b"x" * 100_000

    with tight.client() as c:
        cases = {
            "count": c.post("/embed", files=[("images", tiny_png())] * 65),
            "image bytes": c.post("/embed", files={"images": buf.getvalue()}),
            "pixels": c.post("/embed", files=[("images", photo), ("images", buf2.getvalue())]),
            "bomb": c.post("/embed", json={"images": [b64(png_bomb(9000, 9000))]}),
            "declared body": c.post("/embed", json={"images": ["A" * 3_100_000]}),
            "streamed body": c.post("/embed", content=chunks(), headers={"content-type": "application/json"}),
        }
        ok = c.post("/embed", files=[("images", photo)] * 8)
    expect = {
        "count": "65 images",
        "image bytes": "image 0",
        "pixels": "image 1",
        "bomb": "81000000 pixels",
        "declared body": "3000000",
        "streamed body": "3000000",
    }
    for name, needle in expect.items():
        r = cases[name]
        assert r.status_code == 413, (name, r.text)
        assert needle in r.json()["detail"], (name, r.json())
    assert ok.status_code == 200 and len(ok.json()["embeddings"]) == 8


def test_overload_answers_503_with_retry_after(tight: Server, photos: dict[str, Path]) -> None:
    files = [("images", tiny_png())] * 64  # a full queue per request
    with tight.client() as c:
        before = metric_values(c)

    def call(_: int) -> httpx.Response:
        with tight.client() as c:
            return c.post("/embed", files=files)

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(call, range(12)))
    codes = [r.status_code for r in answers]
    assert set(codes) == {200, 503}, codes
    for r in answers:
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) >= 1 and "full" in r.json()["detail"]
    with tight.client() as c:
        after = metric_values(c)
        assert c.get("/readyz").status_code == 200  # overload is not unreadiness
    for code in (200, 503):
        got = value(after, "simpool_requests_total", **EMBEDS, code=str(code))
        was = value(before, "simpool_requests_total", **EMBEDS, code=str(code))
        assert got - was == codes.count(code)


def test_disconnected_client_has_its_images_dropped(tight: Server) -> None:
    files = [("images", tiny_png())] * 64
    with tight.client() as c:
        before = metric_values(c)
    impatient = httpx.Client(base_url=tight.url, timeout=httpx.Timeout(60, read=0.05))
    with impatient, pytest.raises(httpx.ReadTimeout):
        impatient.post("/embed", files=files)

    def recorded() -> bool:
        now = metric_values(httpx.Client(base_url=tight.url))
        return value(now, "simpool_requests_total", **EMBEDS, code="499") > value(
            before, "simpool_requests_total", **EMBEDS, code="499"
        )

    wait_until(recorded, "the disconnect to be recorded")
    time.sleep(0.3)  # let any batch that was already running finish
    with tight.client() as c:
        after = metric_values(c)
    ran = value(after, "simpool_batch_size_sum", model="resnet18") - value(
        before, "simpool_batch_size_sum", model="resnet18"
    )
    assert ran < 64  # the images still queued when the client left never ran
    assert value(after, "simpool_failures_total", model="resnet18", reason="disconnected") >= 1


# -- deadline -------------------------------------------------------------------------------------


def test_deadline_gives_504_and_drops_the_images(model_repo: Path, logs: Path) -> None:
    """200 small images decode quickly but need far longer than the 0.3 s deadline to run one by one."""
    env = {
        "SIMPOOL_REQUEST_TIMEOUT_S": "0.3",
        "SIMPOOL_MAX_BATCH_SIZE": "1",
        "SIMPOOL_MAX_IMAGES_PER_REQUEST": "256",
    }
    tiny = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tiny, "PNG")
    many = [("images", tiny.getvalue())] * 200
    with start_server(model_repo, logs, env) as server, server.client() as c:
        r = c.post("/embed", files=many)
        assert r.status_code == 504 and "deadline" in r.json()["detail"]
        wait_until(
            lambda: value(metric_values(c), "simpool_queue_depth", model="resnet18") == 0,
            "the queue to empty",
        )
        time.sleep(0.2)  # a batch that was running when the deadline passed
        m = metric_values(c)
        assert value(m, "simpool_batch_size_sum", model="resnet18") < 200  # the rest never ran
        assert value(m, "simpool_failures_total", model="resnet18", reason="timeout") == 1
        assert c.get("/readyz").status_code == 200  # and the server is fine

        # A body that trickles in is bounded by the same deadline (no connection held open forever).
        url = httpx.URL(server.url)
        with socket.create_connection((url.host, url.port), timeout=10) as sock:
            sock.sendall(
                b"POST /embed HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                b'Content-Length: 100000\r\n\r\n{"images": ["'
            )
            started = time.monotonic()
            reply = b""
            while b"not received" not in reply and (chunk := sock.recv(65536)):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 504") and b"not received in time" in reply, reply[:300]
        assert time.monotonic() - started < 5
        assert c.get("/readyz").status_code == 200


# -- graceful shutdown ----------------------------------------------------------------------------


def test_sigterm_answers_accepted_requests_and_exits_0(
    model_repo: Path, logs: Path, photos: dict[str, Path]
) -> None:
    files = [("images", photos["chelsea.jpg"].read_bytes())] * 6
    with start_server(model_repo, logs, {"SIMPOOL_MAX_BATCH_SIZE": "1"}) as server:
        answers: list[httpx.Response] = []
        lock = threading.Lock()

        def call() -> None:
            with server.client() as c:
                r = c.post("/embed", files=files)
            with lock:
                answers.append(r)

        threads = [threading.Thread(target=call) for _ in range(6)]
        for t in threads:
            t.start()

        def all_queued() -> bool:  # every image decoded: the server holds all 6 requests
            m = metric_values(httpx.Client(base_url=server.url))
            return value(m, "simpool_stage_duration_seconds_count", model="resnet18", stage="decode") >= 36

        wait_until(all_queued, "all requests to be accepted")
        server.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=120)
        assert server.proc.wait(timeout=60) == 0
        assert [r.status_code for r in answers] == [200] * 6
        assert all(len(r.json()["embeddings"]) == 6 for r in answers)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/healthz", timeout=2)
    assert "shutting down" in server.read_log()


def test_sub_second_shutdown_grace_is_not_zero(monkeypatch: pytest.MonkeyPatch, model_repo: Path) -> None:
    """uvicorn cancels accepted requests at once on a grace of 0: 0.5 s must stay 0.5 s, not int() 0."""
    from simpool_serve.service import cli

    seen: dict[str, object] = {}

    class Stop(Exception):
        pass

    def config(app: object, **kwargs: object) -> None:
        seen.update(kwargs)
        raise Stop

    monkeypatch.setenv("SIMPOOL_SHUTDOWN_GRACE_S", "0.5")
    monkeypatch.setattr(cli.uvicorn, "Config", config)
    monkeypatch.setattr(cli.logs, "configure", lambda level: None)
    with pytest.raises(Stop):
        cli.main(["--model-dir", str(model_repo), "--host", "127.0.0.1", "--port", "0"])
    assert seen["timeout_graceful_shutdown"] == 0.5


# -- start-up failures ----------------------------------------------------------------------------


def serve_exit(model_dir: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Runs simpool-serve on a repository it cannot serve; it must stop by itself with a reason."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SIMPOOL_")}
    full_env.update({"SIMPOOL_PROVIDERS": "CPUExecutionProvider", **(env or {})})
    cmd = [str(BIN / "simpool-serve"), "--model-dir", str(model_dir), "--host", "127.0.0.1", "--port", "0"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=full_env)


def test_unservable_repositories_exit_non_zero(model_repo: Path, tmp_path: Path) -> None:
    missing = serve_exit(tmp_path / "nowhere")
    assert missing.returncode == 3 and "does not exist" in missing.stderr
    broken = tmp_path / "repo"
    shutil.copytree(model_repo / "vit_tiny", broken / "vit_tiny")
    (broken / "vit_tiny" / "model.onnx").write_bytes(b"this is not an onnx graph")
    corrupt = serve_exit(broken)
    assert corrupt.returncode == 3 and "loading the models failed" in corrupt.stderr
    bad_setting = serve_exit(model_repo, {"SIMPOOL_MAX_BATCH_SIZE": "zero"})
    assert bad_setting.returncode == 2 and "SIMPOOL_MAX_BATCH_SIZE" in bad_setting.stderr
    no_default = serve_exit(model_repo, {"SIMPOOL_DEFAULT_MODEL": "ghost"})
    assert no_default.returncode == 3 and "ghost" in no_default.stderr
