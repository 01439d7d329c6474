"""Is this model.onnx the graph its manifest.json describes? Checked before anything answers with it.

The fingerprint hashes the manifest, so serving a folder whose graph is another would answer under
another model's fingerprint, and a retrieval index would mix vectors of different computations.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from simpool_serve.service.engine.errors import Incomplete
from simpool_serve.service.engine.providers import ProviderOptions
from simpool_serve.service.engine.runner import Graph, OnnxRunner, ProviderError, Runner, RunnerFactory
from simpool_serve.spec import ATTENTION, EMBEDDING, LOGITS, Manifest


class ModelMismatchError(ValueError):
    """A model.onnx that is not the graph its manifest.json describes."""


class GraphIncomplete(ModelMismatchError, Incomplete):
    """A model.onnx whose bytes are not the ones its manifest names: another graph, or one still being
    written (`poll` waits for the folder to be complete)."""


class GraphLoadError(ValueError):
    """A model.onnx that onnxruntime cannot open (truncated, corrupt, not ONNX)."""


def check_graph(graph: Graph, manifest: Manifest) -> None:
    """Refuses a model.onnx whose bytes are not the ones the manifest's `onnx_sha256` names."""
    actual = hashlib.sha256(graph.data).hexdigest()
    expected = manifest.onnx_sha256.strip().lower()
    if actual != expected:
        raise GraphIncomplete(
            f"{graph.path.parent}: model.onnx is not the graph manifest.json describes "
            f"(its sha256 is {actual[:12]}..., the manifest's onnx_sha256 is {expected[:12]}...); "
            "re-export the model, or copy model.onnx and manifest.json together"
        )


def check_outputs(path: Path, manifest: Manifest, outputs: dict[str, np.ndarray]) -> None:
    """Refuses a graph whose real output shapes (batch of 1) contradict the manifest's fields.

    The hash proves the file; this proves the manifest's description of it, which the answers
    (`dim`, `grid`, `num_classes`, labels) are made of.
    """
    m = manifest
    wrong: list[str] = []
    width = outputs[EMBEDDING].shape[1:]
    if width != (m.embedding_dim,):
        wrong.append(f"embedding is {list(width)} wide, embedding_dim says {m.embedding_dim}")
    grid = outputs[ATTENTION].shape[1:]
    if grid != tuple(m.grid):
        wrong.append(f"attention is {list(grid)}, grid says {list(m.grid)}")
    logits = outputs.get(LOGITS)
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
    graph: Graph,
    manifest: Manifest,
    providers: list[str] | None,
    threads: int,
    spinning: bool = True,
    options: ProviderOptions | None = None,
    factory: RunnerFactory = OnnxRunner,
) -> Runner:
    """A session on `graph`, once its bytes are the graph the manifest names and its input size and
    output shapes (one batch-1 run) are the ones the manifest describes. The bytes hashed are the bytes
    opened: the file is read once, before both."""
    check_graph(graph, manifest)  # first: a wrong graph is refused before its session
    path = graph.path
    try:
        runner = factory(graph, providers, threads, spinning, options)
    except ProviderError:
        raise
    except Exception as exc:  # onnxruntime's own errors (InvalidProtobuf, Fail, ...) share no base class
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise GraphLoadError(
            f"{path.parent}: onnxruntime cannot load model.onnx ({first}); the file is truncated or not "
            "an ONNX graph: re-export the model"
        ) from exc
    size = manifest.input_size
    if runner.input_size is not None and runner.input_size != size:
        raise ValueError(f"{path}: graph takes {runner.input_size}px images, manifest says {size}")
    check_outputs(path, manifest, runner.run(np.zeros((1, size, size, 3), dtype=np.uint8)))
    return runner
