"""Starts a real `simpool-serve` for a benchmark and waits for /readyz: one launcher for every bench
script, so that they all measure a server started the same way (loopback, a free port, output to a log).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Served:
    url: str
    pid: int  # read from /proc by the soak
    grpc_address: str | None = None  # host:port of its gRPC door (None: SIMPOOL_GRPC_PORT=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(
    model_dir: Path, env: dict[str, str], log: Path, program: list[str] | None = None
) -> Iterator[Served]:
    """The server runs with this process's environment plus `env`; a start-up failure exits with its log.
    Its gRPC door gets a free port of its own (8001 may be taken), unless `env` names one. `program`
    replaces the `simpool-serve` command (one that takes its arguments, as `bench/lone_stages.py`'s)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"SIMPOOL_GRPC_PORT": str(free_port()), **env}
    grpc_port = int(env["SIMPOOL_GRPC_PORT"])
    cmd = [*(program or [str(BIN / "simpool-serve")]), "--model-dir", str(model_dir), "--host", "127.0.0.1"]
    cmd += ["--port", str(port)]
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **env})
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"simpool-serve exited:\n{log.read_text()}")
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(f"{url}/readyz", timeout=2).status == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"simpool-serve not ready:\n{log.read_text()}")
            time.sleep(0.3)
        yield Served(url, proc.pid, f"127.0.0.1:{grpc_port}" if grpc_port else None)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
