"""The model folder's `manifest.json`: what the service needs to preprocess, label and identify a model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ManifestError(ValueError):
    """A manifest that is missing, unreadable or lacks a field the service relies on."""


class Manifest(BaseModel):
    """The exporter's manifest; unknown fields are kept (and listed by `/models`), not refused."""

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
    created_at: str | None = None
    exporter_version: str | None = None

    def label(self, index: int) -> str:
        """The class name when the manifest has labels, else the index as text."""
        if self.labels is not None and 0 <= index < len(self.labels):
            return self.labels[index]
        return str(index)


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
    """The file's sha256, read in 1 MiB blocks (graphs are hundreds of MB); as the exporter computes it."""
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
