"""LitServe on the graph, as its docs write a batched CPU server: a `LitAPI` whose `decode_request`
prepares each image, `batch`/`predict`/`unbatch` run the graph on up to 4 images (5 ms window, the
service's own settings), and `encode_response` writes JSON; one worker process (`--workers`).

    SIMPOOL_PEER_MODEL=model_repository/resnet50_simpool python litserve_server.py --port 8000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import litserve as ls
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import common


class SimPoolAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.manifest = common.manifest()
        self.session = common.session()

    def decode_request(self, request: dict) -> np.ndarray:
        return common.pixels(request["image"], self.manifest)

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return common.embed(self.session, x)

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, output: np.ndarray) -> dict:
        return {"embedding": output.tolist()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--workers", type=int, default=1, help="inference worker processes")
    p.add_argument("--max-batch-size", type=int, default=4)
    p.add_argument("--batch-timeout", type=float, default=0.005, help="seconds")
    a = p.parse_args()
    api = SimPoolAPI(max_batch_size=a.max_batch_size, batch_timeout=a.batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=a.workers)
    server.run(host="127.0.0.1", port=a.port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
