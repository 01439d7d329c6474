"""The thread budget, worked out once from the engine's configuration and the cores, then only read.

The rules live in `EngineConfig` (`resolved_*`, each explained there); the plan applies them once, in the
event loop's thread (`available_cores()` reads the calling thread's affinity, which a pool thread need
not share), so that pools, sessions and batchers all size themselves from the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from simpool_serve.service.engine.config import EngineConfig, available_cores
from simpool_serve.service.engine.runner import CPU, CUDA, choose_providers


@dataclass(frozen=True, slots=True)
class ThreadPlan:
    cores: int
    gpu: bool  # the first provider the models ask for is an accelerator
    decode_workers: int  # threads of the decode pool (it also runs inference when `shared_pool`)
    intra_op_threads: int  # per model, of the session that runs a batch on every thread
    lanes: int  # batches one model runs at once under load
    lane_threads: int  # intra-op threads of each lane's session
    shared_pool: bool  # decoding and inference share one pool (CPU, single-thread lanes)
    cpu_batch_size: int  # most images per batch on CPU
    accelerator_batch_size: int  # ... and on any other provider

    @classmethod
    def resolve(cls, config: EngineConfig) -> ThreadPlan:
        gpu = choose_providers(config.providers)[0] != CPU
        lanes = config.resolved_inference_lanes(gpu=gpu)
        shared = config.shared_compute_pool(gpu=gpu)
        workers = config.resolved_decode_workers(gpu=gpu)
        return cls(
            cores=available_cores(),
            gpu=gpu,
            # Shared: one thread per core-sized job, decode or inference.
            decode_workers=max(workers, lanes) if shared else workers,
            intra_op_threads=config.resolved_intra_op_threads(gpu=gpu),
            lanes=lanes,
            lane_threads=config.lane_threads(gpu=gpu),
            shared_pool=shared,
            cpu_batch_size=config.resolved_max_batch_size(CPU),
            accelerator_batch_size=config.resolved_max_batch_size(CUDA),
        )

    def batch_size_for(self, provider: str) -> int:
        """The largest batch on the provider a session really got (CUDA may have fallen back to CPU)."""
        return self.cpu_batch_size if provider == CPU else self.accelerator_batch_size
