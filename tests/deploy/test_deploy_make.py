"""What `make serve` and `make install` would run on a fresh clone (`make -n`, nothing installed):
which extras each installs, that pip's progress is shown, and where `make serve` listens."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def make_n(tmp_path: Path, target: str, *args: str, **env: str) -> str:
    if shutil.which("make") is None:
        pytest.fail("make is missing")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SIMPOOL_", "MAKE"))}
    for name in ("HOST", "PORT"):
        clean.pop(name, None)
    proc = subprocess.run(
        ["make", "-n", target, f"VENV={tmp_path / 'venv'}", *args],
        cwd=REPO, env={**clean, **env}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def installed_extras(out: str) -> list[list[str]]:
    """The extras of every `pip install -e '.[...]'` line make would run."""
    return [m.split(",") for m in re.findall(r"pip install .*-e '\.\[([\w,]+)\]'", out)]


def test_make_serve_installs_only_serving_and_exporting(tmp_path: Path) -> None:
    out = make_n(tmp_path, "serve")
    assert installed_extras(out) == [["cpu", "export"]]
    assert "--quiet" not in out and "--progress-bar on" in out, "pip's progress is shown"
    assert "installing simpool-serve with the extras [cpu,export]" in out
    # GPU runtime: the same with onnxruntime-gpu.
    assert installed_extras(make_n(tmp_path, "serve", "RUNTIME=gpu")) == [["gpu", "export"]]


def test_make_install_installs_every_extra(tmp_path: Path) -> None:
    (extras,) = installed_extras(make_n(tmp_path, "install"))
    # All of them but `gpu`, the other onnxruntime (RUNTIME=gpu swaps the two).
    assert set(extras) == set(PYPROJECT["optional-dependencies"]) - {"gpu"}, extras


def test_make_serve_after_make_install_installs_nothing(tmp_path: Path) -> None:
    out = make_n(tmp_path, "install")
    full_stamp = re.findall(r"touch (\S+)", out)[-1]
    Path(full_stamp).parent.mkdir(parents=True)
    (tmp_path / "venv" / "bin").mkdir()
    (tmp_path / "venv" / "bin" / "python").touch()
    Path(full_stamp).touch()
    os.utime(full_stamp, (os.path.getmtime(REPO / "pyproject.toml") + 10,) * 2)
    assert installed_extras(make_n(tmp_path, "serve")) == []


def serve_line(out: str) -> str:
    (line,) = [line for line in out.splitlines() if "bin/simpool-serve " in line]
    return line


def test_make_serve_listens_where_simpool_host_and_port_say(tmp_path: Path) -> None:
    assert serve_line(make_n(tmp_path, "serve")).endswith("--host 0.0.0.0 --port 8000")
    env_set = make_n(tmp_path, "serve", SIMPOOL_PORT="9123", SIMPOOL_HOST="127.0.0.1")
    assert serve_line(env_set).endswith("--host 127.0.0.1 --port 9123")
    assert serve_line(make_n(tmp_path, "serve", "PORT=9001")).endswith("--host 0.0.0.0 --port 9001")
    # An unrelated HOST or PORT of the shell (tcsh exports HOST) changes nothing.
    assert serve_line(make_n(tmp_path, "serve", HOST="myhost", PORT="1")).endswith(
        "--host 0.0.0.0 --port 8000"
    )


def test_the_service_needs_no_embed_extra() -> None:
    """pyarrow and tqdm serve only simpool-embed: not in the core dependencies the image installs."""
    names = lambda reqs: {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower() for r in reqs}  # noqa: E731
    core = names(PYPROJECT["dependencies"])
    assert not core & {"pyarrow", "tqdm"}, core
    extras = PYPROJECT["optional-dependencies"]
    assert {"pyarrow", "tqdm"} <= names(extras["embed"]) and {"pyarrow", "tqdm"} <= names(extras["ray"])
    assert "pyarrow" in names(extras["vectordb"])
