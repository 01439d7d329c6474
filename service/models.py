"""The model repository: discover model folders, then load and warm each one (Triton-style)."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simpool_serve.service.batcher import Batcher
from simpool_serve.service.manifest import Manifest, ManifestError, fingerprint, load_manifest, sha256_file
from simpool_serve.service.metrics import Metrics
from simpool_serve.service.providers import ProviderOptions
from simpool_serve.service.runner import CPU, OnnxRunner, choose_providers
from simpool_serve.service.settings import Settings

log = logging.getLogger("simpool_serve.models")


class ModelMismatchError(ValueError):
    """A model.onnx that is not the graph its manifest.json describes.

    The fingerprint hashes the manifest, so serving such a folder would answer under another model's
    fingerprint, and a retrieval index would mix vectors of different computations.
    """


@dataclass(eq=False)
class ServedModel:
    """One model: its manifest, and once loaded its runners, inference threads and batcher.

    `runner` runs a batch on all of the model's intra-op threads; `lane_runner` (CPU, several lanes)
    is a second session on a share of them, which the batcher calls from several threads at once.
    """

    name: str
    path: Path
    manifest: Manifest
    fingerprint: str
    executor: Executor | None = field(default=None, repr=False)  # set by the Service (its threads)
    runner: OnnxRunner | None = None
    lane_runner: OnnxRunner | None = None
    batcher: Batcher | None = None

    @property
    def has_logits(self) -> bool:
        return (
            self.manifest.num_classes > 0 and self.runner is not None and "logits" in self.runner.output_names
        )


def discover(model_dir: Path) -> dict[str, ServedModel]:
    """Reads every `NAME/manifest.json` (+ `model.onnx`) under `model_dir`; refuses a broken repository."""
    if not model_dir.is_dir():
        raise ManifestError(f"model directory {model_dir} does not exist")
    models: dict[str, ServedModel] = {}
    for folder in sorted(p for p in model_dir.iterdir() if p.is_dir()):
        if not (folder / "manifest.json").is_file():
            continue
        if not (folder / "model.onnx").is_file():
            raise ManifestError(f"{folder}: manifest.json without model.onnx")
        manifest = load_manifest(folder / "manifest.json")
        # The folder name is the model's address; the manifest's name is informative.
        models[folder.name] = ServedModel(
            name=folder.name,
            path=folder / "model.onnx",
            manifest=manifest,
            fingerprint=fingerprint(manifest),
        )
    if not models:
        raise ManifestError(f"no model folder (NAME/manifest.json + NAME/model.onnx) under {model_dir}")
    return models


def default_model(models: dict[str, ServedModel], wanted: str | None) -> str:
    if wanted is not None:
        if wanted not in models:
            raise ManifestError(f"default model {wanted!r} is not in the repository ({sorted(models)})")
        return wanted
    return sorted(models)[0]


def uses_gpu(settings: Settings) -> bool:
    """Whether the first provider the models will ask for is an accelerator (sizes the thread pools)."""
    return choose_providers(settings.providers)[0] != CPU


def check_graph_file(path: Path, manifest: Manifest) -> None:
    """Refuses a model.onnx whose bytes are not the ones the manifest's `onnx_sha256` names."""
    actual = sha256_file(path)
    expected = manifest.onnx_sha256.strip().lower()
    if actual != expected:
        raise ModelMismatchError(
            f"{path.parent}: model.onnx is not the graph manifest.json describes "
            f"(its sha256 is {actual[:12]}..., the manifest's onnx_sha256 is {expected[:12]}...); "
            "re-export the model, or copy model.onnx and manifest.json together"
        )


def check_outputs(path: Path, manifest: Manifest, outputs: dict[str, np.ndarray]) -> None:
    """Refuses a graph whose real output shapes (batch of 1) contradict the manifest's fields.

    The hash proves the file; this proves the manifest's description of it, which `/embed` (`dim`),
    `/attention` (`grid`) and `/classify` (`num_classes`, labels) answer with.
    """
    m = manifest
    wrong: list[str] = []
    width = outputs["embedding"].shape[1:]
    if width != (m.embedding_dim,):
        wrong.append(f"embedding is {list(width)} wide, embedding_dim says {m.embedding_dim}")
    grid = outputs["attention"].shape[1:]
    if grid != tuple(m.grid):
        wrong.append(f"attention is {list(grid)}, grid says {list(m.grid)}")
    logits = outputs.get("logits")
    if m.num_classes > 0 and (logits is None or logits.shape[1:] != (m.num_classes,)):
        got = "no logits output" if logits is None else f"logits {list(logits.shape[1:])} wide"
        wrong.append(f"{got}, num_classes says {m.num_classes}")
    elif m.num_classes == 0 and logits is not None:
        wrong.append(f"logits {list(logits.shape[1:])} wide, num_classes says 0 (no classifier)")
    if wrong:
        raise ModelMismatchError(
            f"{path.parent}: manifest.json does not describe model.onnx: {'; '.join(wrong)}; "
            "re-export the model rather than editing its manifest"
        )


def open_verified(
    path: Path,
    manifest: Manifest,
    providers: list[str] | None,
    threads: int,
    spinning: bool = True,
    options: ProviderOptions | None = None,
) -> OnnxRunner:
    """A session on `path`, once the file is the graph the manifest names and its input size and output
    shapes (one batch-1 run) are the ones the manifest describes. The service and `simpool-embed --local`
    both open graphs this way: both answer under the manifest's fingerprint."""
    check_graph_file(path, manifest)  # first: a wrong graph is refused before its session
    runner = OnnxRunner(path, providers, threads, spinning=spinning, options=options)
    size = manifest.input_size
    if runner.input_size is not None and runner.input_size != size:
        raise ValueError(f"{path}: graph takes {runner.input_size}px images, manifest says {size}")
    check_outputs(path, manifest, runner.run(np.zeros((1, size, size, 3), dtype=np.uint8)))
    return runner


def _load_and_warm(
    model: ServedModel, settings: Settings, threads: int, lane_threads: int | None
) -> tuple[OnnxRunner, OnnxRunner | None, int]:
    """In an inference thread: verify the graph, create the session(s), run each at every batch size.

    The thread counts come resolved from the event loop: `available_cores()` reads the calling
    thread's affinity, which an inference thread need not share.
    """
    size = model.manifest.input_size
    wanted = settings.resolved_max_batch_size(choose_providers(settings.providers)[0])
    options = ProviderOptions.from_settings(settings, size, wanted)
    runner = open_verified(
        model.path, model.manifest, settings.providers, threads, settings.ort_spinning, options
    )
    lane_runner = None
    if lane_threads is not None:  # the same graph and provider; only the thread count differs
        lane_runner = OnnxRunner(
            model.path, [runner.provider], lane_threads, spinning=settings.ort_spinning, options=options
        )
    max_batch = settings.resolved_max_batch_size(runner.provider)
    for n in range(1, max_batch + 1):
        batch = np.zeros((n, size, size, 3), dtype=np.uint8)
        runner.run(batch)
        if lane_runner is not None:
            lane_runner.run(batch)
    return runner, lane_runner, max_batch


async def load_all(models: dict[str, ServedModel], settings: Settings, metrics: Metrics) -> None:
    """Creates the sessions one at a time (peak memory of one load), warms them, starts the batchers."""
    loop = asyncio.get_running_loop()
    gpu = uses_gpu(settings)
    threads = settings.resolved_intra_op_threads(gpu=gpu)
    lanes = settings.resolved_inference_lanes(gpu=gpu)
    lane_threads = settings.lane_threads(gpu=gpu) if lanes > 1 else None
    for model in models.values():
        assert model.executor is not None, "the Service gives each model its threads"
        started = loop.time()
        runner, lane_runner, max_batch = await loop.run_in_executor(
            model.executor, _load_and_warm, model, settings, threads, lane_threads
        )
        model.runner, model.lane_runner = runner, lane_runner
        model.batcher = Batcher(
            model.name,
            runner.run,
            model.executor,
            lane_run=lane_runner.run if lane_runner else None,
            lanes=lanes,
            max_batch_size=max_batch,
            max_delay_s=settings.max_batch_delay_ms / 1000.0,
            max_queue=settings.max_queue,
            metrics=metrics,
        )
        model.batcher.start()
        metrics.model_info.labels(model.name, runner.provider, model.fingerprint).set(1)
        log.info(
            "model loaded",
            extra={
                "model": model.name,
                "provider": runner.provider,
                "fingerprint": model.fingerprint,
                "max_batch_size": max_batch,
                "inference_lanes": lanes,
                "seconds": round(loop.time() - started, 3),
            },
        )
