"""`--triton-repo DIR`: the exported graph as a Triton model repository entry, `DIR/NAME/config.pbtxt` +
`DIR/NAME/1/model.onnx`, for clusters that already run Triton (docs/deploy.md says what each side gives up).

The configuration comes from the same builder the service's `/v2/models/{m}/config` answers with.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from simpool_serve.service.oip.model_config import to_pbtxt, triton_config
from simpool_serve.spec import load_manifest


def write_triton_entry(
    repo: Path, name: str, model_dir: Path, *, max_batch_size: int, tensorrt: bool
) -> Path:
    """Copies `model_dir/model.onnx` into version 1 of model `name` and writes its config; returns the entry.

    The manifest is read back from disk (not taken from the exporter's dict) so that the entry describes
    exactly what a service reading `model_dir` would serve.
    """
    manifest = load_manifest(model_dir / "manifest.json")
    entry = repo / name
    version = entry / "1"
    try:
        version.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create --triton-repo {repo}: {exc.strerror or exc}") from None
    shutil.copyfile(model_dir / "model.onnx", version / "model.onnx")
    config = triton_config(manifest, name, max_batch_size=max_batch_size, tensorrt=tensorrt)
    (entry / "config.pbtxt").write_text(to_pbtxt(config))
    return entry
