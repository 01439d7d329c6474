"""The model repository's integrity: a model.onnx must be the graph its manifest.json describes.

The fingerprint hashes the manifest, so a folder whose graph and manifest disagree would answer
under another model's fingerprint; every refusal here goes through the real load path (real
exported graphs, real onnxruntime sessions), and the good repository must still load.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from simpool_serve.service.app import create_app
from simpool_serve.service.engine import Engine, LoadedModel
from simpool_serve.service.engine.verify import ModelMismatchError
from simpool_serve.service.metrics import Metrics
from simpool_serve.service.settings import Settings
from simpool_serve.spec import load_manifest
from tests.helpers import BIN


def copy_model(model_repo: Path, name: str, repo: Path, as_name: str | None = None) -> Path:
    folder = repo / (as_name or name)
    shutil.copytree(model_repo / name, folder)
    return folder


def edit_manifest(folder: Path, **fields: Any) -> None:
    path = folder / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def settings_for(repo: Path) -> Settings:
    return Settings(model_dir=repo, max_batch_size=1, providers=["CPUExecutionProvider"])


def load_repository(repo: Path) -> tuple[Mapping[str, LoadedModel], Exception | None]:
    """The engine loads the repository as the app's lifespan does; returns the models loaded and the error."""
    settings = settings_for(repo)

    async def scenario() -> tuple[Mapping[str, LoadedModel], Exception | None]:
        engine = Engine.from_config(settings.engine_config(), Metrics(1))
        try:
            await engine.load()
        except Exception as exc:
            return engine.models, exc
        else:
            return engine.models, None  # what serves before the close retires every model
        finally:
            await engine.close()

    return asyncio.run(asyncio.wait_for(scenario(), timeout=60))


def test_good_repository_loads(model_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    for name in ("resnet18", "vit_tiny"):
        copy_model(model_repo, name, repo)
    models, error = load_repository(repo)
    assert error is None
    assert sorted(models) == ["resnet18", "vit_tiny"]  # each one complete: sessions, batcher
    assert models["resnet18"].has_logits and not models["vit_tiny"].has_logits


def test_swapped_graph_is_refused_before_its_session(model_repo: Path, tmp_path: Path) -> None:
    """The reviewer's case: another model's model.onnx next to a manifest (here vit's in resnet18's)."""
    folder = copy_model(model_repo, "resnet18", tmp_path / "repo")
    shutil.copyfile(model_repo / "vit_tiny" / "model.onnx", folder / "model.onnx")
    models, error = load_repository(tmp_path / "repo")
    assert isinstance(error, ModelMismatchError)
    message = str(error)
    graph_sha = load_manifest(model_repo / "vit_tiny" / "manifest.json").onnx_sha256
    manifest_sha = load_manifest(folder / "manifest.json").onnx_sha256
    assert str(folder) in message and "model.onnx is not the graph manifest.json describes" in message
    assert graph_sha[:12] in message and manifest_sha[:12] in message
    assert "re-export" in message and "together" in message
    assert "resnet18" not in models  # refused before a session was created


@pytest.mark.parametrize(
    ("model", "lie", "expected"),
    [
        ("vit_tiny", {"embedding_dim": 2048}, "embedding is [192] wide, embedding_dim says 2048"),
        ("vit_tiny", {"grid": [7, 7]}, "attention is [14, 14], grid says [7, 7]"),
        ("vit_tiny", {"num_classes": 1000}, "no logits output, num_classes says 1000"),
        ("resnet18", {"num_classes": 0}, "logits [1000] wide, num_classes says 0"),
        ("resnet18", {"num_classes": 10}, "logits [1000] wide, num_classes says 10"),
    ],
    ids=["embedding_dim", "grid", "classes-without-logits", "logits-without-classes", "logits-width"],
)
def test_manifest_that_misdescribes_its_graph_is_refused(
    model_repo: Path, tmp_path: Path, model: str, lie: dict[str, Any], expected: str
) -> None:
    """The hash is right (the graph is the exported one) but an edited field contradicts its outputs."""
    folder = copy_model(model_repo, model, tmp_path / "repo")
    edit_manifest(folder, **lie)
    _, error = load_repository(tmp_path / "repo")
    assert isinstance(error, ModelMismatchError)
    assert str(folder) in str(error) and expected in str(error) and "re-export" in str(error)


def test_refusal_shows_in_readyz_and_the_log(
    model_repo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Without a fatal hook the app stays up, not ready, with the reason in /readyz (as any load failure)."""
    repo = tmp_path / "repo"
    copy_model(model_repo, "vit_tiny", repo)
    edit_manifest(repo / "vit_tiny", embedding_dim=2048)
    app = create_app(settings_for(repo))

    async def scenario() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://test") as client,
        ):
            deadline = time.monotonic() + 30
            while True:
                answer = await client.get("/readyz")
                if "loading failed" in answer.text or time.monotonic() > deadline:
                    return answer
                await asyncio.sleep(0.05)

    answer = asyncio.run(scenario())
    assert answer.status_code == 503
    detail = answer.json()["detail"]
    assert detail.startswith("model loading failed: ModelMismatchError:")
    assert "embedding_dim says 2048" in detail
    failed = [r for r in caplog.records if r.getMessage() == "loading the models failed"]
    assert failed and "embedding_dim says 2048" in failed[0].error  # type: ignore[attr-defined]
    assert failed[0].exc_info is None  # the traceback only at debug level


def test_simpool_serve_exits_3_naming_the_folder(model_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    copy_model(model_repo, "vit_tiny", repo)
    folder = copy_model(model_repo, "resnet18", repo)
    shutil.copyfile(repo / "vit_tiny" / "model.onnx", folder / "model.onnx")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMPOOL_")}
    env["SIMPOOL_PROVIDERS"] = "CPUExecutionProvider"
    cmd = [str(BIN / "simpool-serve"), "--model-dir", str(repo), "--host", "127.0.0.1", "--port", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 3
    assert f"{folder}: model.onnx is not the graph manifest.json describes" in proc.stderr
