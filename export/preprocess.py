"""The preprocessing a model expects, written into its manifest for the service to apply.

Supervised models were trained and evaluated with the paper's copy of timm's train script, which takes
mean, std, interpolation and the evaluation crop (crop_pct) from the architecture's pretrained config
(its resolve_data_config; e.g. resnet50 and convnext_small 0.95, vit_small_patch16_224 0.9), so we read
them from timm's config. DINO models were evaluated with torchvision's ImageNet mean/std, bicubic
resizing of the shorter side to 256 and a 224 crop (crop_pct 0.875). The crop fraction is kept for
every input size: resize = floor(S / crop_pct), as timm computes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import timm

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_PCT = 0.875


@dataclass(frozen=True)
class Preprocessing:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int
    resize: int
    interpolation: str  # "bilinear" or "bicubic"


def preprocessing_for(arch: str, input_size: int, dino: bool) -> Preprocessing:
    """mean/std on the 0..1 scale and the eval transform (resize shorter side, centre crop)."""
    if dino:
        resize = math.floor(input_size / CROP_PCT)
        return Preprocessing(IMAGENET_MEAN, IMAGENET_STD, input_size, resize, "bicubic")
    cfg = timm.models.get_pretrained_cfg(arch) or {}
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    resize = math.floor(input_size / float(cfg.get("crop_pct") or CROP_PCT))
    mean = tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in cfg.get("std", IMAGENET_STD))
    interpolation = cfg.get("interpolation", "bicubic")
    if interpolation not in ("bilinear", "bicubic"):
        interpolation = "bicubic"
    return Preprocessing(mean, std, input_size, resize, interpolation)  # type: ignore[arg-type]
