"""The model repository: folders found at start-up, then models loaded and warmed one at a time.

A `ModelFolder` is what the repository says (name, files, manifest, fingerprint); a `LoadedModel` is
built complete once its sessions are verified and warm and its batcher runs. Nothing fills either in
afterwards: the engine keeps the folders it found and the models it has loaded side by side.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simpool_serve.service.engine.batcher import Batcher
from simpool_serve.service.engine.config import EngineConfig
from simpool_serve.service.engine.plan import ThreadPlan
from simpool_serve.service.engine.providers import ProviderOptions
from simpool_serve.service.engine.runner import OnnxRunner, Runner, RunnerFactory
from simpool_serve.service.engine.verify import open_verified
from simpool_serve.service.engine.whitening import Whitening, WhiteningMissing
from simpool_serve.service.engine.whitening import load as load_whitening
from simpool_serve.service.metrics import Metrics
from simpool_serve.spec import LOGITS, Manifest, ManifestError, fingerprint, load_manifest

log = logging.getLogger("simpool_serve.models")


@dataclass(frozen=True, eq=False)
class ModelFolder:
    """`NAME/model.onnx` + `NAME/manifest.json`; the folder name is the model's address."""

    name: str
    path: Path  # the model.onnx
    manifest: Manifest
    fingerprint: str

    @classmethod
    def read(cls, folder: Path, name: str | None = None) -> ModelFolder:
        if not (folder / "model.onnx").is_file():
            raise ManifestError(f"{folder}: manifest.json without model.onnx")
        manifest = load_manifest(folder / "manifest.json")
        return cls(name or folder.name, folder / "model.onnx", manifest, fingerprint(manifest))


def discover(model_dir: Path) -> dict[str, ModelFolder]:
    """Reads every `NAME/manifest.json` (+ `model.onnx`) under `model_dir`; refuses a broken repository."""
    if not model_dir.is_dir():
        raise ManifestError(f"model directory {model_dir} does not exist")
    folders = [p for p in sorted(model_dir.iterdir()) if p.is_dir() and (p / "manifest.json").is_file()]
    if not folders:
        raise ManifestError(f"no model folder (NAME/manifest.json + NAME/model.onnx) under {model_dir}")
    return {f.name: ModelFolder.read(f) for f in folders}


def default_model(folders: dict[str, ModelFolder], wanted: str | None) -> str:
    if wanted is not None:
        if wanted not in folders:
            raise ManifestError(f"default model {wanted!r} is not in the repository ({sorted(folders)})")
        return wanted
    return sorted(folders)[0]


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A model ready to answer: verified, warmed at every batch size, its batcher running.

    `runner` runs a batch on all of the model's intra-op threads; `lane_runner` (CPU, several lanes)
    is a second session on a share of them, which the batcher calls from several threads at once.
    `executor` runs its batches: its own threads, or the engine's shared compute pool.
    """

    folder: ModelFolder
    runner: Runner
    lane_runner: Runner | None
    batcher: Batcher
    executor: Executor = field(repr=False)
    whitening: Whitening | None = None  # fitted by simpool-whiten, read with the graph

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def manifest(self) -> Manifest:
        return self.folder.manifest

    @property
    def fingerprint(self) -> str:
        return self.folder.fingerprint

    @property
    def provider(self) -> str:
        return self.runner.provider

    @property
    def output_names(self) -> tuple[str, ...]:
        """The graph's outputs, in its order (`embedding`, `attention`, and `logits` with a classifier)."""
        return tuple(self.runner.output_names)

    @property
    def has_logits(self) -> bool:
        return self.manifest.num_classes > 0 and LOGITS in self.runner.output_names


def _open_and_warm(
    folder: ModelFolder, config: EngineConfig, plan: ThreadPlan, factory: RunnerFactory
) -> tuple[Runner, Runner | None, int]:
    """In an inference thread: verify the graph, create the session(s), run each at every batch size."""
    size = folder.manifest.input_size
    manifest = folder.manifest
    min_side = (manifest.min_side or 16) if manifest.dynamic_size else None
    options = ProviderOptions.from_config(config, size, plan.accelerator_batch_size, min_side)
    runner = open_verified(
        folder.path,
        folder.manifest,
        config.providers,
        plan.intra_op_threads,
        config.ort_spinning,
        options=options,
        factory=factory,
    )
    lane_runner = None
    if plan.lanes > 1:  # the same graph and provider; only the thread count differs
        lane_runner = factory(folder.path, [runner.provider], plan.lane_threads, config.ort_spinning, options)
    max_batch = plan.batch_size_for(runner.provider)
    for n in range(1, max_batch + 1):
        batch = np.zeros((n, size, size, 3), dtype=np.uint8)
        runner.run(batch)
        if lane_runner is not None:
            lane_runner.run(batch)
    return runner, lane_runner, max_batch


async def load_model(
    folder: ModelFolder,
    config: EngineConfig,
    plan: ThreadPlan,
    metrics: Metrics,
    executor: Executor,
    factory: RunnerFactory = OnnxRunner,
) -> LoadedModel:
    """Opens, verifies and warms `folder` in `executor`, then starts its batcher on this event loop."""
    whitening = _whitening(folder)  # before the sessions: a broken file fails the load at once
    loop = asyncio.get_running_loop()
    started = loop.time()
    runner, lane_runner, max_batch = await loop.run_in_executor(
        executor, _open_and_warm, folder, config, plan, factory
    )
    batcher = Batcher(
        folder.name,
        runner.run,
        executor,
        lane_run=lane_runner.run if lane_runner else None,
        lanes=plan.lanes,
        max_batch_size=max_batch,
        max_delay_s=config.max_batch_delay_ms / 1000.0,
        max_queue=config.max_queue,
        metrics=metrics,
    )
    batcher.start()
    metrics.model_info.labels(folder.name, runner.provider, folder.fingerprint).set(1)
    log.info(
        "model loaded",
        extra={
            "model": folder.name,
            "provider": runner.provider,
            "fingerprint": folder.fingerprint,
            "max_batch_size": max_batch,
            "inference_lanes": plan.lanes,
            "seconds": round(loop.time() - started, 3),
        },
    )
    return LoadedModel(folder, runner, lane_runner, batcher, executor, whitening)


def _whitening(folder: ModelFolder) -> Whitening | None:
    """The folder's fitted whitening; None when it has none (a broken one fails the load)."""
    try:
        return load_whitening(folder.path.parent)
    except WhiteningMissing:
        return None
