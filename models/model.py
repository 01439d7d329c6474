"""A timm backbone with SimPool in place of its global pooling, in the paper's placements.

The backbone is built with ``num_classes=0, global_pool=''`` (and, for ViT, ``class_token=False``),
so it yields the final feature map or token sequence; SimPool pools it, and an optional linear
classifier follows. Where the final norm goes depends on how the paper trained the model:

- ``map``: CNNs (ResNet) pool the final feature map; there is no norm after the backbone.
- ``norm_then_pool``: supervised ViT (timm) applies the final norm to the tokens, then pools.
- ``pool_then_norm``: DINO ViT and ConvNeXt (supervised and DINO) pool, then normalise the pooled vector.

All parameters live under ``backbone.*`` (timm's own names, final norm included), ``pool.*`` and
``head.*``; that is the project's own state-dict layout.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import timm
import torch
from timm.models.convnext import ConvNeXt
from timm.models.resnet import ResNet
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.nn import functional as F

from simpool_serve.models.resample import resample_grid
from simpool_serve.models.simpool import SimPool

Family = Literal["resnet", "convnext", "vit"]
Placement = Literal["map", "norm_then_pool", "pool_then_norm"]

# The paper's γ: 2.0 for convolutional networks, 1.25 for transformers.
DEFAULT_GAMMA: dict[str, float] = {"resnet": 2.0, "convnext": 2.0, "vit": 1.25}


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a SimPool model (weights aside)."""

    arch: str
    num_classes: int = 0
    gamma: float | None = None
    use_beta: bool = False
    placement: Placement | None = None  # None: the supervised placement of the family
    image_size: int = 224

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def family_of(arch: str) -> Family:
    """The family of a timm architecture name, without building the model."""
    if not timm.models.is_model(arch):
        raise ValueError(f"unknown timm architecture {arch!r}")
    module = timm.models.model_entrypoint(arch).__module__.rsplit(".", 1)[-1]
    families: dict[str, Family] = {"vision_transformer": "vit", "convnext": "convnext", "resnet": "resnet"}
    if module not in families:
        raise ValueError(f"{arch!r} is not a timm ResNet, ConvNeXt or ViT (it is in timm.models.{module})")
    return families[module]


def create_backbone(arch: str, image_size: int = 224) -> tuple[nn.Module, Family]:
    """Builds the timm backbone without its pooling or classifier and says which family it is."""
    kwargs: dict[str, object] = {"pretrained": False, "num_classes": 0, "global_pool": ""}
    if family_of(arch) == "vit":
        kwargs.update(class_token=False, img_size=image_size)
    backbone = timm.create_model(arch, **kwargs)
    if isinstance(backbone, VisionTransformer):
        return backbone, "vit"
    if isinstance(backbone, ConvNeXt):
        return backbone, "convnext"
    if isinstance(backbone, ResNet):
        return backbone, "resnet"
    raise ValueError(f"{arch!r} is not a timm ResNet, ConvNeXt or ViT ({type(backbone).__name__})")


def default_placement(family: Family) -> Placement:
    return {"resnet": "map", "convnext": "pool_then_norm", "vit": "norm_then_pool"}[family]


class SimPoolModel(nn.Module):
    """timm backbone + SimPool (+ final norm where the placement says) + optional linear classifier."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone, self.family = create_backbone(config.arch, config.image_size)
        self.placement: Placement = config.placement or default_placement(self.family)
        if self.family == "resnet" and self.placement != "map":
            raise ValueError("ResNet pools the final feature map (placement 'map')")
        if self.family == "convnext" and self.placement != "pool_then_norm":
            raise ValueError("ConvNeXt pools, then normalises (placement 'pool_then_norm')")
        if self.family == "vit" and self.placement == "map":
            raise ValueError("ViT placement is 'norm_then_pool' (supervised) or 'pool_then_norm' (DINO)")
        dim = int(self.backbone.num_features)
        self.embedding_dim = dim
        self.pool = SimPool(dim, gamma=config.gamma, use_beta=config.use_beta)
        self.head = nn.Linear(dim, config.num_classes) if config.num_classes > 0 else None

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def _final_norm(self) -> nn.LayerNorm:
        norm = self.backbone.head.norm if self.family == "convnext" else self.backbone.norm
        assert isinstance(norm, nn.LayerNorm)  # timm's LayerNorm2d is a LayerNorm too
        return norm

    @property
    def pos_rule(self) -> str:
        """How a ViT resamples its position embedding to the token grid, as its checkpoint's code does:
        the paper's DINO ViT (pooled, then normalised) always applies DINO's rule; timm's models
        use timm's (the identity on the grid they were built for)."""
        return "dino" if self.family == "vit" and self.placement == "pool_then_norm" else "timm"

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone output before pooling: (B, C, h, w) for CNNs, (B, h·w, C) for ViT."""
        bb = self.backbone
        if self.family != "vit":
            return bb.forward_features(x)  # ConvNeXt: its norm sits in the head, not applied here
        tokens, _ = self._vit_tokens(x)
        return tokens

    def _vit_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """timm's forward_features at any H×W: the stride-16 patch convolution drops the remainder
        pixels (never padded), and the position embedding is resampled to the token grid."""
        bb = self.backbone
        patches = bb.patch_embed.proj(x)  # (B, C, h, w) with h = floor(H/16), w = floor(W/16)
        h, w = patches.shape[2], patches.shape[3]
        tokens = bb.patch_embed.norm(patches.flatten(2).transpose(1, 2))
        source = self._pos_grid()
        pos = resample_grid(bb.pos_embed, source, (h, w), self.pos_rule)
        tokens = bb.norm_pre(bb.pos_drop(tokens + pos.to(tokens.dtype)))
        tokens = bb.blocks(tokens)
        if self.placement == "norm_then_pool":
            tokens = bb.norm(tokens)  # DINO: the final norm comes after pooling
        return tokens, (h, w)

    def _pos_grid(self) -> tuple[int, int]:
        """The grid the stored position embedding covers (DINO keeps its checkpoint's square grid)."""
        n = int(self.backbone.pos_embed.shape[1])
        if self.pos_rule == "dino":
            side = math.isqrt(n)
            return side, side
        gh, gw = (int(g) for g in self.backbone.patch_embed.grid_size)
        return gh, gw

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """x: normalised images (B, 3, H, W) -> (embedding (B, D), attention (B, h, w), logits or None)."""
        if self.family == "vit":
            feats, (h, w) = self._vit_tokens(x)
        else:
            feats = self.features(x)
            h, w = feats.shape[2], feats.shape[3]  # the CNN's own grid, symbolic when exported
        pooled, attn = self.pool(feats)  # (B, D), (B, h·w)
        if self.placement == "pool_then_norm":
            norm = self._final_norm()
            pooled = F.layer_norm(pooled, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        attention = attn.reshape(attn.shape[0], h, w)
        logits = self.head(pooled) if self.head is not None else None
        return pooled, attention, logits


def build_model(config: ModelConfig, seed: int | None = None) -> SimPoolModel:
    """Builds the model in eval mode; with a seed, its random initialisation is reproducible."""
    if seed is not None:
        torch.manual_seed(seed)
    return SimPoolModel(config).eval()
