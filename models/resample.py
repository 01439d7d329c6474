"""Position-embedding resampling as interpolation matrices built from the token grid's size.

A ViT served at any H×W needs its position embedding resampled to the token grid in the forward
pass. ``F.interpolate`` with a scale factor or a size makes the ONNX exporters fix the grid to the
example input's, so the same two rules are written here as matrices (``M_h · P · M_wᵀ``) whose
entries are computed from the symbolic grid size: the exported graph stays dynamic.

- :func:`dino_matrix`: the paper's DINO ViT (``interpolate_pos_encoding``): bicubic (A = −0.75),
  ``align_corners=False``, ``scale_factor = (g + 0.1) / n``, edge samples clamped, as
  ``F.interpolate(..., scale_factor=..., mode="bicubic")`` computes it.
- :func:`timm_matrix`: timm's ``resample_abs_pos_embed``: bicubic to ``size=g`` with antialiasing
  (Keys' kernel with A = −0.5, widened when shrinking, weights renormalised). At g = n it is the
  identity, as timm skips the resample there.
"""

from __future__ import annotations

import torch

Size = int | torch.SymInt


def _cubic(t: torch.Tensor, a: float) -> torch.Tensor:
    """Keys' cubic convolution kernel at distances t."""
    t = t.abs()
    near = ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0
    far = ((a * t - 5.0 * a) * t + 8.0 * a) * t - 4.0 * a
    return torch.where(t <= 1.0, near, torch.where(t < 2.0, far, torch.zeros_like(t)))


def _positions(like: torch.Tensor, out_len: Size) -> tuple[torch.Tensor, torch.Tensor]:
    """Output indices 0..g-1 and g itself, both as float tensors (g stays symbolic when exported)."""
    index = torch.arange(out_len, dtype=like.dtype, device=like.device)
    return index, torch.ones_like(index).sum()


def dino_matrix(in_len: int, out_len: Size, like: torch.Tensor) -> torch.Tensor:
    """(g, n) matrix of DINO's bicubic resample from n to g = out_len positions."""
    index, g = _positions(like, out_len)
    src = (index + 0.5) * (in_len / (g + 0.1)) - 0.5  # F.interpolate uses 1 / scale_factor
    base = torch.floor(src)
    frac = src - base
    columns = torch.arange(in_len, dtype=like.dtype, device=like.device)
    matrix = torch.zeros(index.shape[0], in_len, dtype=like.dtype, device=like.device)
    for k in (-1, 0, 1, 2):
        weight = _cubic(frac - k, -0.75)
        tap = torch.clamp(base + k, 0, in_len - 1)  # PyTorch clamps the taps at the borders
        matrix = matrix + weight[:, None] * (tap[:, None] == columns[None, :]).to(like.dtype)
    return matrix


def timm_matrix(in_len: int, out_len: Size, like: torch.Tensor) -> torch.Tensor:
    """(g, n) matrix of timm's antialiased bicubic resample from n to g = out_len positions."""
    index, g = _positions(like, out_len)
    scale = in_len / g
    stretch = torch.clamp(scale, min=1.0)  # the kernel widens only when shrinking
    center = scale * (index + 0.5)
    columns = torch.arange(in_len, dtype=like.dtype, device=like.device)
    weights = _cubic((columns[None, :] - center[:, None] + 0.5) / stretch, -0.5)
    return weights / weights.sum(dim=1, keepdim=True)


def resample_grid(
    pos: torch.Tensor,
    source: tuple[int, int],
    target: tuple[int | torch.SymInt, int | torch.SymInt],
    rule: str,
) -> torch.Tensor:
    """pos (1, n_h·n_w, C) on the source grid -> (1, g_h·g_w, C) on the target grid."""
    build = dino_matrix if rule == "dino" else timm_matrix
    dim = pos.shape[-1]
    grid = pos.reshape(source[0], source[1], dim).permute(2, 0, 1)  # (C, n_h, n_w)
    rows = build(source[0], target[0], pos)  # (g_h, n_h)
    cols = build(source[1], target[1], pos)  # (g_w, n_w)
    out = torch.matmul(torch.matmul(rows, grid), cols.transpose(0, 1))  # (C, g_h, g_w)
    return out.permute(1, 2, 0).reshape(1, -1, dim)
