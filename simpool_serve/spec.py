"""What export, service, client, bench and tests agree on: graph tensor names, the manifest, the
fingerprint and the default limits.

Nothing here imports torch, onnxruntime or a web framework, so every part of the product (and a
test) can import it; docs/export.md and docs/api.md describe the same things for users.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# -- the graph's tensors ---------------------------------------------------------------------------

INPUT = "images"  # uint8 [N, H, W, 3]: RGB pixels (S×S for the crop view); normalised in the graph
# Optional float32 scalar (default 1.0, an initializer): the normalised image is rescaled bilinearly
# by it inside the graph before the backbone. Graphs whose manifest lacks `scale_input` have no such input.
SCALE_INPUT = "scale"
EMBEDDING = "embedding"  # float32 [N, D], not L2-normalised
ATTENTION = "attention"  # float32 [N, h, w], each map sums to 1
LOGITS = "logits"  # float32 [N, C], only when the model has a classifier
REQUIRED_OUTPUTS = (EMBEDDING, ATTENTION)
OUTPUTS = (EMBEDDING, ATTENTION, LOGITS)  # in the graph's order

# The dynamo exporter's native opset (LayerNormalization, ReduceMin with axes as an input); onnxruntime
# >= 1.14 runs it. `simpool-export --opset 14..17` uses the TorchScript exporter instead.
DEFAULT_OPSET = 18

# -- default limits (the service's settings and the client start from the same numbers) -----------

MAX_IMAGES_PER_REQUEST = 64
MAX_IMAGE_BYTES = 20 * 2**20
MAX_REQUEST_BYTES = 100 * 2**20
MAX_IMAGE_PIXELS = 50_000_000

# Formats the service decodes (Pillow's names; JPEG includes MPO, as cameras write it) and the file
# extensions they are saved with (what `simpool-embed` picks up from a folder).
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


# -- manifest.json ---------------------------------------------------------------------------------


class ManifestError(ValueError):
    """A manifest that is missing, unreadable or lacks a field the service relies on."""


class Quantization(BaseModel):
    """How an INT8 graph was made and how closely it answers as its fp32 graph (held-out images)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    method: str
    calibration_images: int = Field(ge=1)
    calibration_sha256: str
    min_cosine: float
    top1_agreement: float | None = None


class Manifest(BaseModel):
    """`manifest.json` beside a `model.onnx`. The exporter writes it through this model and the
    service reads it back through it; fields beyond these are kept (and listed by `/models`)."""

    model_config = ConfigDict(extra="allow", frozen=True, protected_namespaces=())

    name: str
    arch: str
    embedding_dim: int = Field(ge=1)
    num_classes: int = Field(ge=0, description="0 when the graph has no `logits` output.")
    input_size: int = Field(ge=1)
    grid: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: int = Field(ge=1, description="Shorter side before the centre crop.")
    interpolation: Literal["bilinear", "bicubic"]
    gamma: float | None = None
    weights: str | None = None
    checkpoint_sha256: str | None = None
    onnx_sha256: str
    labels: list[str] | None = None
    opset: int | None = None
    precision: str | None = None
    quantization: Quantization | None = None
    created_at: str | None = None
    exporter_version: str | None = None
    # Graphs of any size (absent, hence false/null, in folders exported before they existed):
    dynamic_size: bool = Field(
        False, description="The graph takes any H×W: `images` is [N, H, W, 3] with symbolic N, H and W."
    )
    scale_input: str | None = Field(
        None, description="Name of the optional float32 scalar input that rescales the normalised image."
    )
    min_side: int | None = Field(
        None, ge=1, description="Smallest side, after the scale, the backbone takes: 32 (CNN) or 16 (ViT)."
    )

    def label(self, index: int) -> str:
        """The class name when the manifest has labels, else the index as text."""
        if self.labels is not None and 0 <= index < len(self.labels):
            return self.labels[index]
        return str(index)

    def to_json(self) -> str:
        """The file's text: indented, the extra fields included, a final newline."""
        return json.dumps(self.model_dump(mode="json"), indent=2) + "\n"


def load_manifest(path: Path | str) -> Manifest:
    """Reads and validates a manifest, with a message that names the file and the field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Manifest.model_validate(data)
    except (OSError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read manifest: {exc}") from exc
    except ValidationError as exc:
        fields = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'manifest'}: {e['msg']}" for e in exc.errors()
        )
        raise ManifestError(f"{path}: invalid manifest: {fields}") from exc


def sha256_file(path: Path) -> str:
    """The file's sha256, read in 1 MiB blocks (graphs are hundreds of MB): `onnx_sha256`,
    `checkpoint_sha256` and the `sha256` column of `simpool-embed` are all computed with it."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(manifest: Manifest) -> str:
    """A short stable hash of the graph and the preprocessing: equal fingerprints give equal embeddings.

    A retrieval index stores it to notice that the model (or how images are prepared for it) changed.
    """
    ident = {
        "onnx_sha256": manifest.onnx_sha256,
        "resize": manifest.resize,
        "interpolation": manifest.interpolation,
        "input_size": manifest.input_size,
        "mean": [round(float(x), 8) for x in manifest.mean],
        "std": [round(float(x), 8) for x in manifest.std],
    }
    blob = json.dumps(ident, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
