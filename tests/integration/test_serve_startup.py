"""simpool-serve's start-up as a user meets it: one line per mistake, a clear log of loading and ready.

Every case runs the real console script; the mistakes are found before any model loads, so each
run takes about a second.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx

from tests.helpers import BIN, Server

PREFIX = "simpool-serve: error: "


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SIMPOOL_")}
    full_env.update({"SIMPOOL_PROVIDERS": "CPUExecutionProvider", "SIMPOOL_GRPC_PORT": "0", **(env or {})})
    cmd = [str(BIN / "simpool-serve"), "--host", "127.0.0.1", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=full_env)


def one_line_error(proc: subprocess.CompletedProcess[str], code: int) -> str:
    """The single `simpool-serve: error:` line, after checking that nothing else was said."""
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(PREFIX), proc.stderr
    return lines[0][len(PREFIX) :]


def test_repository_mistakes_name_what_to_change(model_repo: Path, tmp_path: Path) -> None:
    missing = one_line_error(serve("--model-dir", str(tmp_path / "nowhere"), "--port", "0"), 3)
    assert "nowhere does not exist" in missing and "--model-dir" in missing

    single = one_line_error(serve("--model-dir", str(model_repo / "resnet18"), "--port", "0"), 3)
    assert "single model's folder" in single and f"--model-dir {model_repo.resolve()}" in single

    (tmp_path / "empty").mkdir()
    empty = one_line_error(serve("--model-dir", str(tmp_path / "empty"), "--port", "0"), 3)
    assert empty.startswith("no model folder") and "simpool-export --out" in empty

    broken = tmp_path / "broken"
    shutil.copytree(model_repo / "vit_tiny", broken / "vit_tiny")
    (broken / "vit_tiny" / "manifest.json").write_text('{"name": "vit_tiny", ')
    corrupt = one_line_error(serve("--model-dir", str(broken), "--port", "0"), 3)
    assert "vit_tiny/manifest.json: cannot read manifest" in corrupt and "re-export" in corrupt
    (broken / "vit_tiny" / "manifest.json").write_text('{"name": "vit_tiny"}')
    fields = one_line_error(serve("--model-dir", str(broken), "--port", "0"), 3)
    assert "invalid manifest: arch: Field required" in fields

    unknown = serve("--model-dir", str(model_repo), "--default-model", "ghost", "--port", "0")
    ghost = one_line_error(unknown, 3)
    assert "--default-model ghost" in ghost and "one of: resnet18, vit_tiny" in ghost


def test_provider_setting_and_debug(model_repo: Path) -> None:
    provider = serve("--model-dir", str(model_repo), "--port", "0", env={"SIMPOOL_PROVIDERS": "NoSuchEP"})
    assert "NoSuchEP" in one_line_error(provider, 3) and "SIMPOOL_PROVIDERS" in one_line_error(provider, 3)

    setting = serve("--model-dir", str(model_repo), "--port", "0", env={"SIMPOOL_MAX_QUEUE": "0"})
    assert "SIMPOOL_MAX_QUEUE" in one_line_error(setting, 2)

    debug = serve("--model-dir", str(model_repo / "nowhere"), "--port", "0", "--log-level", "debug")
    assert debug.returncode == 3
    assert "Traceback" in debug.stderr and debug.stderr.strip().splitlines()[-1].startswith(PREFIX)


def test_a_busy_port_is_reported_before_any_model_loads(model_repo: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        busy = serve("--model-dir", str(model_repo), "--port", str(port))
        elapsed = time.monotonic() - started
    message = one_line_error(busy, 3)
    assert f"127.0.0.1:{port}" in message and "already in use" in message and "--port" in message
    assert "model loaded" not in busy.stderr and elapsed < 30


def log_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_the_log_says_when_models_load_and_when_ready(server: Server) -> None:
    msgs = [line["msg"] for line in log_lines(server.read_log())]
    listening = next(i for i, m in enumerate(msgs) if m.startswith("listening on http://127.0.0.1:"))
    loaded = [i for i, m in enumerate(msgs) if m == "model loaded"]
    ready = next(i for i, m in enumerate(msgs) if m.startswith("ready"))
    assert "loading 2 model(s): resnet18, vit_tiny" in msgs[listening]
    assert listening < min(loaded) and max(loaded) < ready
    assert "Application startup complete." not in msgs  # it used to come before the models loaded
    untrained = [m for m in msgs if "has random weights" in m]
    assert len(untrained) == 2 and not any("EVERY NETWORK INTERFACE" in m for m in msgs)


def test_untrained_models_on_every_interface_without_a_key_are_loud(model_repo: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMPOOL_")}
    env["SIMPOOL_PROVIDERS"] = "CPUExecutionProvider"
    env["SIMPOOL_GRPC_PORT"] = "0"
    log = tmp_path / "serve.log"
    cmd = [str(BIN / "simpool-serve"), "--model-dir", str(model_repo), "--host", "0.0.0.0", "--port", "0"]
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while "EVERY NETWORK INTERFACE" not in log.read_text() and proc.poll() is None:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    loud = [line for line in log_lines(log.read_text()) if "EVERY NETWORK INTERFACE" in line["msg"]]
    assert loud and loud[0]["level"] == "warning"
    assert "resnet18, vit_tiny" in loud[0]["msg"] and "SIMPOOL_API_KEY" in loud[0]["msg"]


def test_the_socket_is_listening_while_models_load(model_repo: Path, tmp_path: Path) -> None:
    """A client that connects during loading is answered (503 from /readyz), not refused."""
    host = "127.0.0.1"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMPOOL_")}
    env["SIMPOOL_PROVIDERS"] = "CPUExecutionProvider"
    with socket.socket() as probe:
        probe.bind((host, 0))
        port = probe.getsockname()[1]
    cmd = [str(BIN / "simpool-serve"), "--model-dir", str(model_repo), "--host", host, "--port", str(port)]
    log = tmp_path / "serve.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while "listening on" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        answer = httpx.get(f"http://{host}:{port}/readyz", timeout=30)  # loading 2 models takes seconds
        assert answer.status_code == 503 and "loading" in answer.json()["detail"]
    finally:
        proc.terminate()
        proc.wait(timeout=60)
