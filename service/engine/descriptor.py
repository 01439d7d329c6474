"""What vector a request asks for: the view, its size, the scales, a region, whitening, dimensions.

`crop` (the default) is the classification protocol: §3's resize and centre crop. `full` is the paper's
retrieval protocol (DINO's `multi_scale`): the whole upright image at its own aspect ratio, shrunk to
`size` on its longer side, described at each of `scales` inside the graph, the descriptors averaged
and L2-normalised, optionally PCA-whitened (`whitening.py`). `Descriptor` is what a door decoded;
`resolve` checks it against a model and gives the `Resolved` settings with their own fingerprint, so
that vectors are comparable exactly when their fingerprints are equal.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from simpool_serve.service.engine.errors import EngineError, Kind
from simpool_serve.service.engine.whitening import Whitening
from simpool_serve.spec import Manifest

View = Literal["crop", "full"]
ATTENTION = "attention"  # the region rule: the box of the image's own attention
Scale = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
Box = tuple[float, float, float, float]


class Descriptor(BaseModel):
    """The descriptor fields of a request, as every door takes them (validated, not yet resolved)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    view: View = Field("crop", description="`crop`: resize + centre crop; `full`: the whole image.")
    size: int | None = Field(None, ge=32, description="Longer side of a `full` view; default input_size.")
    scales: tuple[Scale, ...] | None = Field(
        None, min_length=1, max_length=4, description="One descriptor per scale, averaged; default [1]."
    )
    region: Box | Literal["attention"] | None = Field(
        None,
        description="[x0, y0, x1, y1] in the upright original's pixels, or `attention`: the box of the "
        "image's own SimPool attention (full view, scale 1).",
    )
    whiten: bool = Field(False, description="Apply the model's fitted whitening (simpool-whiten).")
    dimensions: int | None = Field(None, ge=1, description="Keep this many whitened components.")

    @field_validator("scales", "region", mode="before")
    @classmethod
    def _json_text(cls, value: object) -> object:
        """A list that travels as text (a v2 or gRPC parameter, a form field) is JSON."""
        if isinstance(value, str) and value.lstrip().startswith("["):
            try:
                return tuple(json.loads(value))
            except (ValueError, TypeError):
                return value  # validation then says what is wrong
        return tuple(value) if isinstance(value, list) else value

    @classmethod
    def from_parameters(cls, params: Mapping[str, Any]) -> Descriptor:
        """The descriptor fields among a request's parameters (v2, gRPC); others are not ours."""
        return cls.model_validate({k: v for k, v in params.items() if k in cls.model_fields})

    @property
    def normalized_only(self) -> bool:
        """Answers are L2-normalised whenever any retrieval field is given."""
        return (
            self.scales is not None or self.region is not None or self.whiten or self.dimensions is not None
        )


CROP = Descriptor()


@dataclass(frozen=True, slots=True)
class Resolved:
    """A descriptor checked against a model, defaults filled in, and its fingerprint."""

    view: View
    size: int
    scales: tuple[float, ...]
    region: Box | Literal["attention"] | None
    whiten: bool
    dimensions: int | None
    fingerprint: str

    @property
    def is_crop(self) -> bool:
        """The §3 answer, exactly: the graph's own crop, one scale, nothing after."""
        return self.view == "crop" and self.scales == (1.0,) and not self.whiten

    @property
    def box(self) -> Box | None:
        """The explicit box, if the request gave one."""
        return self.region if isinstance(self.region, tuple) else None

    @property
    def by_attention(self) -> bool:
        return self.region == ATTENTION


def _invalid(detail: str, reason: str = "malformed") -> EngineError:
    return EngineError(Kind.INVALID, detail, reason)


def resolve(
    descriptor: Descriptor,
    *,
    model: str,
    manifest: Manifest,
    graph_fingerprint: str,
    max_view_size: int,
    whitening: Whitening | None,
) -> Resolved:
    """`descriptor` for this model, or INVALID (422) saying what to change."""
    d = descriptor
    if d.view == "crop" and (d.size is not None or d.region is not None):
        raise _invalid("size and region apply to view=full (the crop view is the model's input_size)")
    size = d.size if d.size is not None else manifest.input_size
    if size > max_view_size:
        raise _invalid(f"size {size} is over the limit of {max_view_size} (SIMPOOL_MAX_VIEW_SIZE)")
    scales = tuple(round(float(s), 4) for s in (d.scales or (1.0,)))
    _check_graph(d, scales, model, manifest)
    whiten = d.whiten or d.dimensions is not None
    if whiten:
        _check_whitening(d, size, scales, model, whitening)
    fingerprint = graph_fingerprint
    if d.view != "crop" or scales != (1.0,) or whiten:
        ident = {
            "graph": graph_fingerprint,
            "view": d.view,
            "size": size if d.view == "full" else None,
            "scales": list(scales),
            # An explicit box is not part of it: a query cut to its box matches an index of uncut images.
            "region": ATTENTION if d.region == ATTENTION else None,
            "whitening": whitening.settings.get("sha256") if whiten and whitening is not None else None,
            "dimensions": d.dimensions,
        }
        blob = json.dumps(ident, sort_keys=True, separators=(",", ":")).encode()
        fingerprint = hashlib.sha256(blob).hexdigest()[:16]
    return Resolved(d.view, size, scales, d.region, whiten, d.dimensions, fingerprint)


def _check_graph(d: Descriptor, scales: tuple[float, ...], model: str, manifest: Manifest) -> None:
    """A graph exported before graphs took any size (or a scale) cannot give this descriptor."""
    if d.view == "full" and not manifest.dynamic_size:
        raise _invalid(
            f"model {model!r} was exported with a fixed input size, so it has no full view; "
            "re-export it with this version of simpool-export",
            "static_graph",
        )
    if scales != (1.0,) and manifest.scale_input is None:
        raise _invalid(
            f"model {model!r} has no in-graph scale input; re-export it with this version of simpool-export",
            "static_graph",
        )


def _check_whitening(
    d: Descriptor, size: int, scales: tuple[float, ...], model: str, whitening: Whitening | None
) -> None:
    """The model's whitening exists, was fitted for this view, size and scales, and has the
    components asked for."""
    if whitening is None:
        asked = f"dimensions {d.dimensions} need" if d.dimensions is not None else "whiten needs"
        raise _invalid(
            f"{asked} a fitted whitening, and model {model!r} has none; fit one with "
            f"`simpool-whiten MODEL_DIR/{model} --images DIR`",
            "no_whitening",
        )
    mismatch = whitening.mismatch(d.view, size, scales)
    if mismatch is not None:
        raise _invalid(f"model {model!r}: {mismatch}; fit it again with simpool-whiten", "whitening_mismatch")
    if d.dimensions is not None and d.dimensions > whitening.dims:
        raise _invalid(
            f"dimensions {d.dimensions}: the whitening of model {model!r} has {whitening.dims} components",
            "no_whitening",
        )
