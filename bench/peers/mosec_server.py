"""mosec on the graph, as its docs write a pipeline: `Preprocess` worker processes decode and prepare
the images (one per core), a batched `Inference` worker runs the graph on up to 4 of them (5 ms window,
the service's own settings); numpy arrays pass between them with mosec's NumBin IPC mixin.

    SIMPOOL_PEER_MODEL=model_repository/resnet50_simpool python mosec_server.py --port 8000
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from mosec import Server, Worker
from mosec.mixin import NumBinIPCMixin

sys.path.insert(0, str(Path(__file__).parent))
import common


class Preprocess(NumBinIPCMixin, Worker):
    def __init__(self) -> None:
        super().__init__()
        self.manifest = common.manifest()

    def forward(self, data: dict) -> np.ndarray:
        return common.pixels(data["image"], self.manifest)


class Inference(NumBinIPCMixin, Worker):
    def __init__(self) -> None:
        super().__init__()
        self.session = common.session()

    def forward(self, data: list[np.ndarray]) -> list[dict]:
        return [{"embedding": row.tolist()} for row in common.embed(self.session, np.stack(data))]


if __name__ == "__main__":
    server = Server()
    server.append_worker(
        Preprocess, num=int(os.environ.get("SIMPOOL_PEER_DECODERS", "0")) or os.cpu_count() or 1
    )
    server.append_worker(
        Inference,
        num=1,
        max_batch_size=int(os.environ.get("SIMPOOL_PEER_MAX_BATCH", "4")),
        max_wait_time=int(os.environ.get("SIMPOOL_PEER_WAIT_MS", "5")),
    )
    server.run()
