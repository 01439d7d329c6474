"""The README's commands, run as written, as a newcomer would run them from a fresh clone.

The blocks marked `<!-- readme-test -->` (shell), `<!-- readme-test: python -->` and
`<!-- readme-test: server -->` (the serving command, started here) are executed in a folder laid out
like a clone after `make install` + `make models`: `.venv` (this venv), `examples/`, and a
`model_repository/` holding the README's model names (the small test models under those names).
PATH does not include the venv, as in a shell where it was never activated. Only the port changes
(a free one instead of 8000) and the server listens on loopback instead of every interface.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import BIN, REPO_ROOT, free_port, running_process

MARKED = re.compile(r"<!-- readme-test(?::\s*(\w+))? -->\n```\w+\n(.*?)```", re.S)


def marked_blocks() -> list[tuple[str, str]]:
    """(kind, code) of every marked block: kind is `shell`, `python` or `server`."""
    text = (REPO_ROOT / "README.md").read_text()
    return [(kind or "shell", code) for kind, code in MARKED.findall(text)]


def adapt(code: str, port: int) -> str:
    return (
        code.replace(":8000", f":{port}")
        .replace("--port 8000", f"--port {port}")
        .replace("0.0.0.0", "127.0.0.1")
    )


def clean_env() -> dict[str, str]:
    """No SIMPOOL_* from the caller, and PATH without this venv (nobody activated it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMPOOL_")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if Path(p) != BIN)
    env["SIMPOOL_PROVIDERS"] = "CPUExecutionProvider"
    return env


@pytest.fixture(scope="module")
def clone(model_repo: Path, photos: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clone")
    (root / ".venv").symlink_to(BIN.parent)
    (root / "examples").symlink_to(REPO_ROOT / "examples")
    repo = root / "model_repository"
    repo.mkdir()
    (repo / "resnet50_simpool").symlink_to(model_repo / "resnet18")
    (repo / "vit_small_simpool").symlink_to(model_repo / "vit_tiny")
    for name, dest in [("chelsea.jpg", "cat.jpg"), ("coffee.jpg", "a.jpg"), ("camera.png", "b.png")]:
        shutil.copy(photos[name], root / dest)
    shutil.copy(photos["chelsea_500x375.jpg"], root / "query.jpg")
    (root / "photos").mkdir()
    for name in ("astronaut.jpg", "rocket.jpg", "coffee.webp", "logo.png"):
        shutil.copy(photos[name], root / "photos" / name)
    return root


@pytest.fixture(scope="module")
def readme_server(clone: Path) -> Iterator[int]:
    servers = [code for kind, code in marked_blocks() if kind == "server"]
    assert len(servers) == 1, "the README marks its serving command with <!-- readme-test: server -->"
    port = free_port()
    cmd = ["bash", "-c", "exec " + adapt(servers[0], port).split("#")[0].strip()]
    log = clone / "serve.log"
    with running_process(cmd, f"http://127.0.0.1:{port}/readyz", log, clean_env(), cwd=clone):
        yield port


def test_the_readme_marks_what_a_newcomer_runs() -> None:
    kinds = [kind for kind, _ in marked_blocks()]
    assert kinds.count("server") == 1 and kinds.count("python") >= 1 and kinds.count("shell") >= 2


def test_the_readme_blocks_run_as_written(clone: Path, readme_server: int) -> None:
    for kind, code in marked_blocks():
        if kind == "server":
            continue
        script = adapt(code, readme_server)
        cmd = (
            [".venv/bin/python", "-c", script]
            if kind == "python"
            else ["bash", "-euo", "pipefail", "-c", script]
        )
        done = subprocess.run(cmd, cwd=clone, env=clean_env(), capture_output=True, text=True, timeout=300)
        said = f"{script}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
        assert done.returncode == 0, said
        assert "Traceback" not in done.stderr and '"detail"' not in done.stdout, said
    assert (clone / "attention.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (clone / "photos.parquet").is_file() and (clone / "work" / "index" / "index.faiss").is_file()
