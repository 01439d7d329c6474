"""A model folder and a model loaded from it: read, verified, warmed, its batcher running.

A `ModelFolder` is what a folder says (name, files, manifest, fingerprint); a `LoadedModel` is built
complete once its sessions are verified and warm and its batcher runs. Nothing fills either in
afterwards: a reload builds a new one (`repository.py` swaps them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simpool_serve.service.engine.batcher import Batcher
from simpool_serve.service.engine.config import EngineConfig
from simpool_serve.service.engine.errors import Incomplete
from simpool_serve.service.engine.plan import ThreadPlan
from simpool_serve.service.engine.providers import ProviderOptions
from simpool_serve.service.engine.runner import Graph, OnnxRunner, Runner, RunnerFactory
from simpool_serve.service.engine.verify import open_verified
from simpool_serve.service.engine.whitening import JSON as WHITENING_JSON
from simpool_serve.service.engine.whitening import NPZ as WHITENING_NPZ
from simpool_serve.service.engine.whitening import Whitening, WhiteningMissing
from simpool_serve.service.engine.whitening import load as load_whitening
from simpool_serve.service.metrics import Metrics
from simpool_serve.spec import LOGITS, Manifest, ManifestError, fingerprint, load_manifest

log = logging.getLogger("simpool_serve.models")

GRAPH = "model.onnx"
MANIFEST = "manifest.json"
# What a model is made of: a change to any of these is a new version. Nothing else in the folder counts
# (the TensorRT cache the service writes there, a user's notes).
MODEL_FILES = (GRAPH, MANIFEST, WHITENING_NPZ, WHITENING_JSON)
# Each file's (inode, size, mtime) or None: equal signatures, unchanged files.
Signature = tuple[tuple[int, int, int] | None, ...]


class FolderIncomplete(ManifestError, Incomplete):
    """A model folder without its manifest or graph (yet): an export or a copy in progress."""


def signature(folder: Path) -> Signature:
    """The model files' identities, by `stat` alone (a poll reads no graph that has not changed)."""
    out: list[tuple[int, int, int] | None] = []
    for name in MODEL_FILES:
        try:
            st = (folder / name).stat()
        except OSError:
            out.append(None)
        else:
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


@dataclass(frozen=True, eq=False)
class ModelFolder:
    """`NAME/model.onnx` + `NAME/manifest.json`; the folder name is the model's address."""

    name: str
    path: Path  # the model.onnx
    manifest: Manifest
    fingerprint: str

    @classmethod
    def read(cls, folder: Path, name: str | None = None) -> ModelFolder:
        if not (folder / MANIFEST).is_file():
            raise FolderIncomplete(f"{folder}: no manifest.json")
        if not (folder / GRAPH).is_file():
            raise FolderIncomplete(f"{folder}: manifest.json without model.onnx")
        manifest = load_manifest(folder / MANIFEST)
        return cls(name or folder.name, folder / GRAPH, manifest, fingerprint(manifest))


def folder_names(model_dir: Path) -> list[str]:
    """The model folders under `model_dir` (those with a manifest.json), sorted; [] when it is gone."""
    try:
        entries = sorted(model_dir.iterdir())
    except OSError:
        return []
    return [p.name for p in entries if p.is_dir() and (p / MANIFEST).is_file()]


def discover(model_dir: Path, *, allow_empty: bool = False) -> dict[str, ModelFolder]:
    """Reads every `NAME/manifest.json` (+ `model.onnx`) under `model_dir`; refuses a broken repository
    (and an empty one unless `allow_empty`)."""
    if not model_dir.is_dir():
        raise ManifestError(f"model directory {model_dir} does not exist")
    names = folder_names(model_dir)
    if not names and not allow_empty:
        raise ManifestError(f"no model folder (NAME/manifest.json + NAME/model.onnx) under {model_dir}")
    return {name: ModelFolder.read(model_dir / name) for name in names}


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
    """In a loading thread: read the graph once, verify those bytes, open the session(s) on them, and
    run each at every batch size."""
    size = folder.manifest.input_size
    manifest = folder.manifest
    min_side = (manifest.min_side or 16) if manifest.dynamic_size else None
    options = ProviderOptions.from_config(config, size, plan.accelerator_batch_size, min_side)
    started = time.perf_counter()
    graph = Graph.read(folder.path)
    runner = open_verified(
        graph,
        folder.manifest,
        config.providers,
        plan.intra_op_threads,
        config.ort_spinning,
        options=options,
        factory=factory,
    )
    lane_runner = None
    if plan.lanes > 1:  # the same graph and provider; only the thread count differs
        lane_runner = factory(graph, [runner.provider], plan.lane_threads, config.ort_spinning, options)
    del graph  # the sessions hold what they need; the file's bytes need not outlive the load
    verified = time.perf_counter()
    max_batch = plan.batch_size_for(runner.provider)
    for n in range(1, max_batch + 1):
        batch = np.zeros((n, size, size, 3), dtype=np.uint8)
        runner.run(batch)
        if lane_runner is not None:
            lane_runner.run(batch)
    log.info(
        "model verified and warmed",
        extra={
            "model": folder.name,
            "verify_seconds": round(verified - started, 3),  # read, sha256, sessions, output check
            "warm_seconds": round(time.perf_counter() - verified, 3),  # every batch size, every session
        },
    )
    return runner, lane_runner, max_batch


async def load_model(
    folder: ModelFolder,
    config: EngineConfig,
    plan: ThreadPlan,
    metrics: Metrics,
    executor: Executor,
    factory: RunnerFactory = OnnxRunner,
    loader: Executor | None = None,
) -> LoadedModel:
    """Opens, verifies and warms `folder` in `loader` (default: `executor`), then starts its batcher on
    this event loop, running its batches in `executor`."""
    whitening = _whitening(folder)  # before the sessions: a broken file fails the load at once
    loop = asyncio.get_running_loop()
    started = loop.time()
    runner, lane_runner, max_batch = await loop.run_in_executor(
        loader or executor, _open_and_warm, folder, config, plan, factory
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
