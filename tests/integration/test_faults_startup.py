"""A model folder whose model.onnx is truncated or replaced: `simpool-serve` refuses to start, naming the
folder and the reason, with exit code 3 (the documented start-up failure)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import BIN, free_port


def truncate(folder: Path, model_repo: Path) -> None:
    data = (folder / "model.onnx").read_bytes()
    (folder / "model.onnx").write_bytes(data[: len(data) // 2])


def truncate_and_rehash(folder: Path, model_repo: Path) -> None:
    """The hash check passes (the manifest names the cut file), so onnxruntime itself must refuse it."""
    truncate(folder, model_repo)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["onnx_sha256"] = hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))


def replace_with_other_model(folder: Path, model_repo: Path) -> None:
    shutil.copyfile(model_repo / "vit_tiny" / "model.onnx", folder / "model.onnx")


def replace_with_garbage(folder: Path, model_repo: Path) -> None:
    (folder / "model.onnx").write_bytes(b"not an onnx graph\n" * 100)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (truncate, "model.onnx is not the graph manifest.json describes"),
        (truncate_and_rehash, "onnxruntime cannot load model.onnx"),
        (replace_with_other_model, "model.onnx is not the graph manifest.json describes"),
        (replace_with_garbage, "model.onnx is not the graph manifest.json describes"),
    ],
    ids=["truncated", "truncated-rehashed", "replaced-by-another-model", "replaced-by-garbage"],
)
def test_damaged_graph_refuses_to_start(
    model_repo: Path, tmp_path: Path, damage: Callable[[Path, Path], None], reason: str
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(model_repo / "vit_tiny", repo / "vit_tiny")  # a good model beside it changes nothing
    folder = repo / "resnet18"
    shutil.copytree(model_repo / "resnet18", folder)
    damage(folder, model_repo)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMPOOL_")}
    env["SIMPOOL_PROVIDERS"] = "CPUExecutionProvider"
    env["SIMPOOL_GRPC_PORT"] = "0"
    cmd = [str(BIN / "simpool-serve"), "--model-dir", str(repo), "--port", str(free_port())]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 3, output
    # One line says why it exits: the folder, the reason and what to do.
    lines = output.splitlines()
    assert any(str(folder) in line and reason in line and "re-export" in line for line in lines), output
