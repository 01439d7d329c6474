"""SimPool models on timm backbones: every family and placement against an independent float64 run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch

from simpool_serve.models.model import ModelConfig, build_model, family_of
from tests.unit.test_simpool_head import layer_norm, rel_err, simpool_reference

CASES = [
    # arch, placement, gamma, grid (CNNs run at 128 px to keep the float64 runs quick)
    ("resnet18", None, 2.0, (4, 4)),
    ("resnet50", None, None, (4, 4)),
    ("convnext_tiny", None, 2.0, (4, 4)),
    ("vit_tiny_patch16_224", None, 1.25, (14, 14)),
    ("vit_tiny_patch16_224", "pool_then_norm", 1.25, (14, 14)),
    ("vit_small_patch16_224", "norm_then_pool", None, (14, 14)),
]


def dino_pos_embed(pos: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The paper's DINO ViT: bicubic with scale factor (g + 0.1) / 14, applied at every size."""
    side = int(math.sqrt(pos.shape[1]))
    grid = pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    factor = ((h // 16 + 0.1) / side, (w // 16 + 0.1) / side)
    out = torch.nn.functional.interpolate(grid, scale_factor=factor, mode="bicubic")
    return out.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1])


def reference_features(
    arch: str, norm: bool, sd: dict[str, torch.Tensor], x: torch.Tensor, dino: bool = False
) -> np.ndarray:
    """Backbone features from a freshly built timm model in float64 (not our wrapper's code path)."""
    kwargs = {"class_token": False} if family_of(arch) == "vit" else {}
    bb = timm.create_model(arch, num_classes=0, global_pool="", **kwargs).double().eval()
    bb.load_state_dict({k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.")})
    with torch.no_grad():
        if family_of(arch) != "vit":
            return bb.forward_features(x).numpy()
        pos = dino_pos_embed(bb.pos_embed, x.shape[2], x.shape[3]) if dino else bb.pos_embed
        t = bb.patch_embed(x) + pos
        for blk in bb.blocks:
            t = blk(t)
        return (bb.norm(t) if norm else t).numpy()


@pytest.mark.parametrize(("arch", "placement", "gamma", "grid"), CASES)
def test_model_matches_float64_reference(
    arch: str, placement: str | None, gamma: float | None, grid: tuple[int, int]
) -> None:
    config = ModelConfig(arch, num_classes=10, gamma=gamma, use_beta=gamma is not None, placement=placement)
    model = build_model(config, seed=3)
    with torch.no_grad():  # make β and the pool's norm matter
        model.pool.norm_patches.weight.uniform_(0.5, 1.5)
        if model.pool.beta is not None:
            model.pool.beta.fill_(0.2)
    size = 224 if model.family == "vit" else 128
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        emb, attn, logits = model(x)
    dim = model.embedding_dim
    assert emb.shape == (2, dim) and attn.shape == (2, *grid) and logits.shape == (2, 10)

    sd = {k: v.double() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    # A ViT pooled, then normalised, is the paper's DINO ViT: it resamples its pos_embed at every size.
    dino = model.family == "vit" and model.placement == "pool_then_norm"
    feats = reference_features(arch, model.placement == "norm_then_pool", sd, x.double(), dino)
    pool = {k[len("pool.") :]: v.numpy() for k, v in sd.items() if k.startswith("pool.")}
    ref_emb, ref_attn = simpool_reference(feats, pool, gamma, use_beta=gamma is not None)
    if model.placement == "pool_then_norm":
        key = "backbone.head.norm" if model.family == "convnext" else "backbone.norm"
        ref_emb = layer_norm(ref_emb, sd[f"{key}.weight"].numpy(), sd[f"{key}.bias"].numpy())
    ref_logits = ref_emb @ sd["head.weight"].numpy().T + sd["head.bias"].numpy()
    assert rel_err(emb.numpy(), ref_emb) < 1e-4
    assert rel_err(attn.reshape(2, -1).numpy(), ref_attn) < 1e-4
    assert rel_err(logits.numpy(), ref_logits) < 1e-4
    np.testing.assert_allclose(attn.sum(dim=(1, 2)).numpy(), 1.0, atol=1e-5)


def test_expected_placements() -> None:
    assert build_model(ModelConfig("resnet18")).placement == "map"
    assert build_model(ModelConfig("convnext_tiny")).placement == "pool_then_norm"
    assert build_model(ModelConfig("vit_tiny_patch16_224")).placement == "norm_then_pool"
    vit = build_model(ModelConfig("vit_tiny_patch16_224"))
    assert vit.backbone.cls_token is None  # SimPool replaces the [CLS] token
    assert vit.head is None and vit.num_classes == 0


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (ModelConfig("resnet18", placement="pool_then_norm"), "final feature map"),
        (ModelConfig("convnext_tiny", placement="map"), "pool_then_norm"),
        (ModelConfig("vit_tiny_patch16_224", placement="map"), "norm_then_pool"),
        (ModelConfig("efficientnet_b0"), "not a timm ResNet, ConvNeXt or ViT"),
        (ModelConfig("definitely_not_a_model"), "unknown timm architecture"),
    ],
)
def test_invalid_configs(config: ModelConfig, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_model(config)


@pytest.mark.parametrize("arch", ["resnet18", "vit_tiny_patch16_224"])
def test_rows_independent_of_batch_mates(arch: str) -> None:
    """The same image among different batch-mates gives the same row; alone, the same to fp32 noise."""
    model = build_model(ModelConfig(arch, num_classes=5, gamma=2.0), seed=0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 224, 224, generator=g)
    y = torch.randn(3, 3, 224, 224, generator=g) * 4.0 - 2.0
    y[1] = x[0]
    with torch.no_grad():
        a, b, alone = model(x), model(y), model(x[:1])
    for out_a, out_b, out_alone in zip(a, b, alone, strict=True):
        assert rel_err(out_b[1].numpy(), out_a[0].numpy()) < 1e-5
        assert rel_err(out_alone[0].numpy(), out_a[0].numpy()) < 1e-5
