"""Batch → graph: one ONNX Runtime session per model, with an explicit provider and thread budget."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort

from simpool_serve.service.engine.providers import ProviderOptions
from simpool_serve.service.engine.views import graph_scale
from simpool_serve.spec import INPUT, REQUIRED_OUTPUTS, SCALE_INPUT

log = logging.getLogger("simpool_serve.runner")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class Runner(Protocol):
    """What the engine needs of a graph: run a uint8 batch, and say its provider, input size and outputs."""

    provider: str
    input_size: int | None
    output_names: list[str]

    def run(self, images: np.ndarray, scale: float = 1.0) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True, eq=False)
class Graph:
    """A model.onnx read once: its bytes are what was hashed against the manifest and what every session
    opens, so a file rewritten between the check and the load can never be served under the old hash."""

    path: Path
    data: bytes = field(repr=False)

    @classmethod
    def read(cls, path: Path | str) -> Graph:
        path = Path(path)
        return cls(path, path.read_bytes())


# (graph, providers, intra-op threads, spinning, provider options) -> a runner; `OnnxRunner` itself in
# production. Taken as a parameter so a caller can wrap the real session (tests inject faults).
RunnerFactory = Callable[[Graph, list[str] | None, int, bool, ProviderOptions | None], Runner]


class ProviderError(RuntimeError):
    """A requested execution provider that this onnxruntime build cannot use."""


def choose_providers(requested: list[str] | None) -> list[str]:
    """CUDA first when this build has it, else CPU; an explicit list is taken as is or refused."""
    available = ort.get_available_providers()
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise ProviderError(f"providers {missing} are not in this onnxruntime (it has {available})")
        return list(requested)
    return [CUDA, CPU] if CUDA in available else [CPU]


class OnnxRunner:
    """Runs the graph on a uint8 batch; not thread-safe by design: one inference thread per model calls it."""

    def __init__(
        self,
        graph: Graph | Path | str,
        providers: list[str] | None,
        intra_op_threads: int,
        spinning: bool = True,
        options: ProviderOptions | None = None,
    ) -> None:
        wanted = choose_providers(providers)
        graph = graph if isinstance(graph, Graph) else Graph.read(graph)
        model_path = graph.path
        options = options or ProviderOptions()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, intra_op_threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Without spinning, every operator's parallel section must wake a sleeping worker; on an idle
        # (virtual) CPU that cost resnet50 at batch 1 +15 ms (21 -> 37 ms, bench/run.py). The spin is
        # bounded, so an idle server burns no CPU (measured: 0.03 s CPU over 2 s idle).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        # Spinning is for a run's own parallel sections: left on after a run, the idle workers burned a
        # core for ~50 ms after every request, the very time the answer is encoded and written.
        opts.add_session_config_entry("session.force_spinning_stop", "1")
        opts.log_severity_level = 3
        session_providers = options.session_providers(wanted, model_path.parent)
        self.session = ort.InferenceSession(graph.data, sess_options=opts, providers=session_providers)
        log.info("session", extra={"model_path": str(model_path), "providers": session_providers})
        active = self.session.get_providers()
        self.provider: str = active[0]
        if self.provider != wanted[0]:
            # onnxruntime drops a provider it fails to initialise (no GPU, driver mismatch): refuse that
            # when the provider was asked for explicitly, and say so loudly when it was our own choice.
            message = f"{model_path}: {wanted[0]} failed to start, onnxruntime fell back to {self.provider}"
            if providers:
                raise ProviderError(message)
            log.warning(message)
        inputs = self.session.get_inputs()
        if [i.name for i in inputs] != [INPUT]:
            names = [i.name for i in inputs]
            raise ValueError(f"{model_path}: one input named {INPUT} expected, not {names}")
        self.input_size = int(inputs[0].shape[1]) if isinstance(inputs[0].shape[1], int) else None
        self.output_names: list[str] = [o.name for o in self.session.get_outputs()]
        for required in REQUIRED_OUTPUTS:
            if required not in self.output_names:
                raise ValueError(f"{model_path}: graph has no '{required}' output ({self.output_names})")
        self.io_binding = options.io_binding and self.provider != CPU  # on CPU there is no copy to save

    def run(self, images: np.ndarray, scale: float = 1.0) -> dict[str, np.ndarray]:
        """uint8 [N, H, W, 3] → {"embedding": [N, D], "attention": [N, h, w], maybe "logits": [N, C]}.

        `scale` other than 1 is fed to the graph's optional scale input (the normalised image is
        rescaled by it inside the graph) as the float32 that sizes it as PyTorch does (`graph_scale`);
        1 leaves the input at its default.
        """
        if self.io_binding:
            return self._run_bound(images, scale)
        feed = {INPUT: images}
        if scale != 1.0:
            feed[SCALE_INPUT] = np.asarray(graph_scale(images.shape[1:3], scale), dtype=np.float32)
        outputs = self.session.run(self.output_names, feed)
        return dict(zip(self.output_names, outputs, strict=True))

    def _run_bound(self, images: np.ndarray, scale: float = 1.0) -> dict[str, np.ndarray]:
        """The input copied to the device once, the outputs written to host memory by the provider."""
        binding = self.session.io_binding()
        binding.bind_cpu_input(INPUT, np.ascontiguousarray(images))
        if scale != 1.0:
            binding.bind_cpu_input(SCALE_INPUT, np.asarray(graph_scale(images.shape[1:3], scale), np.float32))
        for name in self.output_names:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        values = binding.get_outputs()
        return {name: value.numpy() for name, value in zip(self.output_names, values, strict=True)}
