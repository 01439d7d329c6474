"""The SimPool head (Psomas et al., ICCV 2023): attention-based global pooling.

Written from the paper's equations in timm's style. It differs from the paper's reference code in
one deliberate way: the γ-pooling subtracts the minimum of each image's values (a scalar per image)
instead of the minimum over the whole batch. At batch size 1 the two agree; with this choice every
output row depends only on its own input, which a serving system that batches requests needs.

Parameter names (``norm_patches``, ``wq``, ``wk``, ``beta``) match the paper's released checkpoints.
"""

from __future__ import annotations

import torch
from torch import nn


class SimPool(nn.Module):
    """Pools a feature map (B, C, H, W) or a token sequence (B, N, C) into one vector per image.

    The query is the global average of the features; keys and values are the LayerNorm'd features.
    Attention is a softmax over the N = H·W locations of the scaled query-key products. Without γ the
    pooled vector is the attention-weighted mean of the values; with γ it is a generalised mean with
    exponent γ, optionally shifted by a learned β.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 1,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        gamma: float | None = None,
        use_beta: bool = False,
        eps: float = 1e-6,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        factory = {"device": device, "dtype": dtype}
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale if qk_scale is not None else self.head_dim**-0.5
        self.gamma = gamma
        self.eps = eps
        self.norm_patches = nn.LayerNorm(dim, eps=1e-6, **factory)
        self.wq = nn.Linear(dim, dim, bias=qkv_bias, **factory)
        self.wk = nn.Linear(dim, dim, bias=qkv_bias, **factory)
        # β exists only together with γ, as in the paper's code.
        self.beta: nn.Parameter | None = (
            nn.Parameter(torch.zeros(1, **factory)) if gamma is not None and use_beta else None
        )

    @property
    def use_beta(self) -> bool:
        return self.beta is not None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (pooled (B, C), attention (B, N)); the attention is averaged over heads."""
        if x.dim() == 4:  # CNN map (B, C, H, W) -> tokens (B, H·W, C)
            b, c, h, w = x.shape
            x = x.reshape(b, c, h * w).permute(0, 2, 1)
        elif x.dim() != 3:
            raise ValueError(f"SimPool expects (B, C, H, W) or (B, N, C), got shape {tuple(x.shape)}")
        b, n, c = x.shape
        nh, hd = self.num_heads, self.head_dim

        gap = x.mean(dim=1, keepdim=True)  # (B, 1, C): the query starts as global average pooling
        kv = self.norm_patches(x)  # (B, N, C)
        q = self.wq(gap).reshape(b, 1, nh, hd).permute(0, 2, 1, 3)  # (B, nh, 1, hd)
        k = self.wk(kv).reshape(b, n, nh, hd).permute(0, 2, 1, 3)  # (B, nh, N, hd)
        v = kv.reshape(b, n, nh, hd).permute(0, 2, 1, 3)  # (B, nh, N, hd)

        attn = (q @ k.transpose(-2, -1)) * self.scale  # (B, nh, 1, N)
        attn = attn.softmax(dim=-1)

        if self.gamma is None:
            pooled = attn @ v  # (B, nh, 1, hd)
        else:
            # Per-image minimum over all tokens and channels: a scalar per image, never across the batch.
            v_min = v.reshape(b, nh * n * hd).amin(dim=1).reshape(b, 1, 1, 1)
            shifted = (v - v_min + self.eps).pow(self.gamma)  # (B, nh, N, hd), all positive
            pooled = (attn @ shifted).pow(1.0 / self.gamma)  # (B, nh, 1, hd)
            if self.beta is not None:
                pooled = pooled + self.beta
        pooled = pooled.permute(0, 2, 1, 3).reshape(b, c)  # (B, C)
        attention = attn.mean(dim=1).reshape(b, n)  # (B, N)
        return pooled, attention

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, gamma={self.gamma}, use_beta={self.use_beta}"
