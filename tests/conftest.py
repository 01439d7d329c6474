"""Shared fixtures: real photographs, small exported models, a real server on loopback.

Exports are session-scoped: each small model is traced once per test run.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

BIN = Path(sys.executable).parent
REPO_ROOT = Path(__file__).resolve().parent.parent

# The two small models every service test serves: a CNN with a classifier and a ViT without.
SMALL_MODELS: dict[str, list[str]] = {
    "resnet18": ["--arch", "resnet18", "--num-classes", "1000"],
    "vit_tiny": ["--arch", "vit_tiny_patch16_224", "--num-classes", "0"],
}


def run_export(out: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Runs the real `simpool-export` console script."""
    cmd = [str(BIN / "simpool-export"), "--out", str(out), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository with resnet18 (1000 classes) and vit_tiny (no classifier), random init."""
    root = tmp_path_factory.mktemp("model_repository")
    for name, args in SMALL_MODELS.items():
        run_export(root / name, *args, "--name", name, "--random-init", "--seed", "0")
    return root


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real photographs from scikit-image, written as files in several formats and sizes."""
    import skimage.data as data

    root = tmp_path_factory.mktemp("photos")
    out: dict[str, Path] = {}
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry"):
        img = Image.fromarray(getattr(data, name)())
        out[f"{name}.jpg"] = root / f"{name}.jpg"
        img.save(out[f"{name}.jpg"], quality=92)
    Image.fromarray(data.camera()).save(root / "camera.png")  # grayscale
    out["camera.png"] = root / "camera.png"
    Image.fromarray(data.logo()).save(root / "logo.png")  # RGBA
    out["logo.png"] = root / "logo.png"
    Image.fromarray(data.coffee()).save(root / "coffee.webp")
    out["coffee.webp"] = root / "coffee.webp"
    # The benchmark's size: 500x375.
    Image.fromarray(data.chelsea()).resize((500, 375), Image.BICUBIC).save(root / "chelsea_500x375.jpg")
    out["chelsea_500x375.jpg"] = root / "chelsea_500x375.jpg"
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)  # type: ignore[arg-type]

    def read_log(self) -> str:
        return self.log.read_text(errors="replace")


def wait_ready(
    url: str,
    timeout: float,
    died: Callable[[], str | None],
    late: Callable[[], str],
    interval: float = 0.2,
) -> None:
    """Polls `url` until it answers 200: every server a test starts (process, thread, nginx) waits here.
    Fails with `died()`'s message as soon as it returns one (the server stopped), `late()`'s at timeout."""
    deadline = time.monotonic() + timeout
    while True:
        if (why := died()) is not None:
            raise AssertionError(why)
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise AssertionError(late())
        time.sleep(interval)


@contextlib.contextmanager
def running_process(
    cmd: list[str],
    ready_url: str,
    log: Path,
    env: dict[str, str] | None = None,
    ready_timeout: float = 120,
    stop_timeout: float = 30,
    cwd: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Starts a real process (output to `log`), waits until `ready_url` answers 200, always stops it."""
    name = Path(cmd[0]).name

    def output() -> str:
        return log.read_text(errors="replace")

    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    try:
        wait_ready(
            ready_url,
            ready_timeout,
            died=lambda: None if proc.poll() is None else f"{name} exited ({proc.returncode}):\n{output()}",
            late=lambda: f"{name} not ready in {ready_timeout}s:\n{output()}",
        )
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def start_server(
    model_dir: Path,
    log_dir: Path,
    env: dict[str, str] | None = None,
    ready_timeout: float = 120,
    host: str = "127.0.0.1",
    port: int | None = None,
) -> Iterator[Server]:
    """Starts a real `simpool-serve` process on a loopback address and waits for /readyz."""
    port = port or free_port()
    log = log_dir / f"serve-{host}-{port}.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SIMPOOL_")}
    # gRPC off unless a test asks for it: every test server would otherwise bind the default 8001.
    full_env.update({"SIMPOOL_PROVIDERS": "CPUExecutionProvider", "SIMPOOL_GRPC_PORT": "0", **(env or {})})
    url = f"http://{host}:{port}"
    cmd = [str(BIN / "simpool-serve"), "--model-dir", str(model_dir), "--host", host, "--port", str(port)]
    with running_process(cmd, f"{url}/readyz", log, full_env, ready_timeout) as proc:
        yield Server(url=url, proc=proc, log=log)


@pytest.fixture(scope="session")
def server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One shared server over the small models, default settings (no API key)."""
    with start_server(
        model_repo, tmp_path_factory.mktemp("logs"), {"SIMPOOL_DEFAULT_MODEL": "resnet18"}
    ) as s:
        yield s


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


DOOR_KEY = "door-key-9"


@pytest.fixture(scope="session")
def keyed_server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server that wants an API key (`DOOR_KEY`) and takes at most 2 images per request; shared by
    the standard doors' tests (Open Inference Protocol, OpenAI)."""
    env = {
        "SIMPOOL_API_KEY": DOOR_KEY,
        "SIMPOOL_MAX_IMAGES_PER_REQUEST": "2",
        "SIMPOOL_DEFAULT_MODEL": "resnet18",
    }
    with start_server(model_repo, tmp_path_factory.mktemp("keyed-logs"), env) as s:
        yield s
