"""The SimPool head against an independent float64 formula, on both input kinds and every γ/β path.

The formula (`simpool_reference`) is NumPy, written from the paper's equations; the model and
checkpoint tests import it from here as their yardstick.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simpool_serve.models.simpool import SimPool

DIM = 24


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    mu = x.mean(axis=-1, keepdims=True)
    var = x.var(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * weight + bias


def simpool_reference(
    x: np.ndarray,
    params: dict[str, np.ndarray],
    gamma: float | None,
    use_beta: bool = False,
    eps: float = 1e-6,
    batch_min: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """x: (B, C, H, W) or (B, N, C). Returns pooled (B, C) and attention (B, N), in float64.

    With `batch_min` the γ-pooling shift is the minimum over the whole batch, as in the paper's code.
    """
    x = np.asarray(x, np.float64)
    if x.ndim == 4:
        b, c, h, w = x.shape
        x = x.reshape(b, c, h * w).transpose(0, 2, 1)
    b, _n, c = x.shape
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    gap = x.mean(axis=1)  # (B, C)
    values = layer_norm(x, p["norm_patches.weight"], p["norm_patches.bias"])  # (B, N, C)
    q = gap @ p["wq.weight"].T + p.get("wq.bias", 0.0)  # (B, C)
    k = values @ p["wk.weight"].T + p.get("wk.bias", 0.0)  # (B, N, C)
    scores = np.einsum("bnc,bc->bn", k, q) / np.sqrt(c)
    scores -= scores.max(axis=1, keepdims=True)
    attn = np.exp(scores)
    attn /= attn.sum(axis=1, keepdims=True)
    if gamma is None:
        pooled = np.einsum("bn,bnc->bc", attn, values)
    else:
        shift = values.min() if batch_min else values.reshape(b, -1).min(axis=1).reshape(b, 1, 1)
        pooled = np.einsum("bn,bnc->bc", attn, (values - shift + eps) ** gamma) ** (1.0 / gamma)
        if use_beta:
            pooled = pooled + p["beta"]
    return pooled, attn


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    """max|got - ref| / max|ref|: the measure the export parity gate uses."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def make_head(gamma: float | None, use_beta: bool, seed: int = 0, bias: bool = False) -> SimPool:
    torch.manual_seed(seed)
    head = SimPool(DIM, gamma=gamma, use_beta=use_beta, qkv_bias=bias).double().eval()
    with torch.no_grad():  # non-trivial norm and β so that every parameter matters
        head.norm_patches.weight.uniform_(0.5, 1.5)
        head.norm_patches.bias.normal_(0.0, 0.3)
        if head.beta is not None:
            head.beta.fill_(0.37)
    return head


def params(head: SimPool) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in head.state_dict().items()}


def inputs(kind: str, batch: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (batch, DIM, 5, 3) if kind == "map" else (batch, 11, DIM)
    return torch.randn(shape, generator=g, dtype=torch.float64) * 2.0 + 0.5


PATHS = [(None, False), (2.0, False), (1.25, True), (3.0, True)]


@pytest.mark.parametrize("kind", ["map", "tokens"])
@pytest.mark.parametrize(("gamma", "use_beta"), PATHS)
@pytest.mark.parametrize("batch", [1, 2, 5])
def test_matches_float64_formula(kind: str, gamma: float | None, use_beta: bool, batch: int) -> None:
    head = make_head(gamma, use_beta)
    x = inputs(kind, batch)
    with torch.no_grad():
        pooled, attn = head(x)
    n = 15 if kind == "map" else 11
    assert pooled.shape == (batch, DIM)
    assert attn.shape == (batch, n)
    ref_pooled, ref_attn = simpool_reference(x.numpy(), params(head), gamma, use_beta)
    assert rel_err(pooled.numpy(), ref_pooled) < 1e-12
    assert rel_err(attn.numpy(), ref_attn) < 1e-12
    np.testing.assert_allclose(attn.sum(dim=1).numpy(), np.ones(batch), atol=1e-12)


def test_qkv_bias_and_float32() -> None:
    head = make_head(2.0, False, bias=True)
    with torch.no_grad():
        head.wq.bias.normal_()
        head.wk.bias.normal_()
    x = inputs("tokens", 3)
    ref_pooled, ref_attn = simpool_reference(x.numpy(), params(head), 2.0)
    with torch.no_grad():
        pooled, attn = head.float()(x.float())
    assert pooled.dtype == torch.float32
    assert rel_err(pooled.numpy(), ref_pooled) < 1e-5
    assert rel_err(attn.numpy(), ref_attn) < 1e-5


def test_beta_exists_only_with_gamma() -> None:
    assert SimPool(DIM, gamma=None, use_beta=True).beta is None
    assert "beta" not in SimPool(DIM, gamma=None, use_beta=True).state_dict()
    assert set(SimPool(DIM, gamma=1.25, use_beta=True).state_dict()) == {
        "norm_patches.weight",
        "norm_patches.bias",
        "wq.weight",
        "wk.weight",
        "beta",
    }


@pytest.mark.parametrize("kind", ["map", "tokens"])
@pytest.mark.parametrize(("gamma", "use_beta"), PATHS)
def test_rows_independent_of_batch_mates(kind: str, gamma: float | None, use_beta: bool) -> None:
    """Mixed batch: one input at a very different scale must not change the others' rows."""
    head = make_head(gamma, use_beta).float()
    x = inputs(kind, 4).float()
    x[2] = x[2] * 50.0 - 30.0  # a batch-mate whose minimum is far below everyone else's
    with torch.no_grad():
        pooled, attn = head(x)
        for i in range(4):
            alone_pooled, alone_attn = head(x[i : i + 1])
            assert rel_err(pooled[i].numpy(), alone_pooled[0].numpy()) < 1e-5
            assert rel_err(attn[i].numpy(), alone_attn[0].numpy()) < 1e-5


def test_equals_paper_batch_min_at_batch_one() -> None:
    """At batch size 1 the per-image minimum is the paper's whole-batch minimum; at 3 it is not."""
    head = make_head(2.0, False)
    p = params(head)
    one = inputs("map", 1)
    with torch.no_grad():
        pooled, _ = head(one)
    paper, _ = simpool_reference(one.numpy(), p, 2.0, batch_min=True)
    assert rel_err(pooled.numpy(), paper) < 1e-12
    three = inputs("map", 3)
    three[1] *= 10.0
    paper3, _ = simpool_reference(three.numpy(), p, 2.0, batch_min=True)
    with torch.no_grad():
        pooled3, _ = head(three)
    assert rel_err(pooled3.numpy(), paper3) > 1e-6  # the paper's code mixes rows; ours does not


def test_rejects_other_ranks() -> None:
    with pytest.raises(ValueError, match="expects"):
        SimPool(DIM)(torch.zeros(2, DIM))
