"""What every peer server shares with SimPool Serve: the graph's session and the service's own
preprocessing (Pillow, `simpool_serve.service.engine.preprocess`), so that only the serving differs.

Read from the environment (a peer's own command line belongs to it; mosec parses `sys.argv`):
SIMPOOL_PEER_MODEL (a model folder: model.onnx + manifest.json) and SIMPOOL_PEER_THREADS (intra-op
threads, as the service is given).
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from simpool_serve.service.engine.preprocess import decode_image
from simpool_serve.spec import EMBEDDING, INPUT, MAX_IMAGE_PIXELS, Manifest, load_manifest


def model_folder() -> Path:
    return Path(os.environ["SIMPOOL_PEER_MODEL"])


def manifest() -> Manifest:
    return load_manifest(model_folder() / "manifest.json")


def session() -> ort.InferenceSession:
    """The session the service runs a batch on every thread with: the same options (intra-op threads,
    one inter-op thread, sequential, every graph optimisation, spinning allowed within a run)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(os.environ.get("SIMPOOL_PEER_THREADS", "0")) or (os.cpu_count() or 1)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1")
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(
        str(model_folder() / "model.onnx"), sess_options=opts, providers=["CPUExecutionProvider"]
    )


def pixels(b64: str, m: Manifest) -> np.ndarray:
    """A request's base64 JPEG → uint8 [S, S, 3], exactly as the service prepares it."""
    return decode_image(base64.b64decode(b64, validate=True), m, MAX_IMAGE_PIXELS)


def embed(sess: ort.InferenceSession, batch: np.ndarray) -> np.ndarray:
    """uint8 [N, S, S, 3] → L2-normalised float32 embeddings [N, D] (the service's default answer)."""
    (vectors,) = sess.run([EMBEDDING], {INPUT: batch})
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
