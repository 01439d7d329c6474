"""A real `simpool-serve` process on loopback, and the small models the service tests serve."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.helpers.process import BIN, free_port, running_process

# The two small models every service test serves: a CNN with a classifier and a ViT without.
SMALL_MODELS: dict[str, list[str]] = {
    "resnet18": ["--arch", "resnet18", "--num-classes", "1000"],
    "vit_tiny": ["--arch", "vit_tiny_patch16_224", "--num-classes", "0"],
}

# The API key of the keyed server the standard doors' tests share.
DOOR_KEY = "door-key-9"


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)  # type: ignore[arg-type]

    def read_log(self) -> str:
        return self.log.read_text(errors="replace")


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
