"""Whitening: the paper's PCA checked against a direct computation, and its files on disk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from simpool_serve.service.engine import whitening as wh


def descriptors(n: int, d: int, seed: int = 0) -> np.ndarray:
    """L2-normalised vectors with a strongly uneven spectrum, as pooled features have."""
    rng = np.random.default_rng(seed)
    scales = np.geomspace(3.0, 0.01, d)
    x = rng.standard_normal((n, d)) * scales + rng.standard_normal(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def direct(x: np.ndarray, dims: int, power: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same PCA by another road: SVD of the centred data (eigenvalues = s² / N)."""
    x = x.astype(np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=True)
    values = np.zeros(x.shape[1])
    values[: len(s)] = s**2 / len(x)
    values = np.maximum(values, values.max() * 1e-5)
    return mean, np.diag(values[:dims] ** -power) @ vt[:dims], values[:dims]


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize(
    ("n", "d", "dims", "power"), [(300, 64, 32, 0.5), (40, 64, 39, 0.5), (200, 48, 48, 1.0)]
)
def test_fit_and_apply_match_a_direct_computation(n: int, d: int, dims: int, power: float) -> None:
    x = descriptors(n, d)
    w = wh.fit(x, dims=dims, power=power)
    mean, projection, values = direct(x, dims, power)
    np.testing.assert_allclose(w.mean, mean, atol=1e-12)
    np.testing.assert_allclose(w.eigenvalues, values, rtol=1e-7, atol=1e-12)
    # Components are defined up to sign: compare each row of W with the direct one, sign aligned.
    signs = np.sign(np.sum(w.projection * projection, axis=1))
    np.testing.assert_allclose(
        w.projection, projection * signs[:, None], rtol=1e-6, atol=1e-6 * np.abs(projection).max()
    )
    queries = descriptors(7, d, seed=1)
    expected = unit(((queries.astype(np.float64) - mean) @ projection.T) * signs)
    np.testing.assert_allclose(w.apply(queries), expected, atol=2e-6)
    assert w.apply(queries).dtype == np.float32
    np.testing.assert_allclose(w.apply(queries[0]), expected[0], atol=2e-6)


def test_whitened_training_set_has_unit_covariance() -> None:
    x = descriptors(500, 32)
    w = wh.fit(x, dims=16, power=0.5)
    z = (x.astype(np.float64) / np.linalg.norm(x, axis=1, keepdims=True) - w.mean) @ w.projection.T
    np.testing.assert_allclose(z.T @ z / len(z), np.eye(16), atol=1e-6)


def test_eigenvalues_are_floored_relative_to_the_largest() -> None:
    # 30 descriptors in 64 dimensions: at most 29 non-zero eigenvalues; the rest are floored.
    x = descriptors(30, 64)
    values = wh.fit(x, dims=29).eigenvalues
    assert values[0] == values.max() and np.all(np.diff(values) <= 0)
    rank_deficient = np.zeros((40, 16))
    rank_deficient[:, :3] = descriptors(40, 3)  # every vector in a 3-dimensional subspace
    w = wh.fit(rank_deficient, dims=8)
    assert np.all(w.eigenvalues[3:] == pytest.approx(w.eigenvalues[0] * 1e-5, rel=1e-9))
    assert np.isfinite(w.apply(rank_deficient)).all()


def test_dimensions_keep_the_first_components_then_normalise() -> None:
    x = descriptors(100, 32)
    w = wh.fit(x, dims=24)
    full = (x.astype(np.float64) / np.linalg.norm(x, axis=1, keepdims=True) - w.mean) @ w.projection.T
    np.testing.assert_allclose(w.apply(x, dimensions=8), unit(full[:, :8]), atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(w.apply(x, dimensions=8), axis=1), 1.0, atol=1e-6)
    for bad in (0, 25):
        with pytest.raises(wh.WhiteningError, match="between 1 and 24"):
            w.apply(x, dimensions=bad)
    with pytest.raises(wh.WhiteningError, match="dimension 31"):
        w.apply(x[:, :31])


def test_too_few_images_says_how_many_are_needed() -> None:
    x = descriptors(10, 64)
    wh.fit(x, dims=9)
    with pytest.raises(wh.TooFewImages, match="need at least 11 images; got 10") as info:
        wh.fit(x, dims=10)
    assert info.value.needed == 11
    with pytest.raises(wh.TooFewImages, match="at least 257 images"):
        wh.fit(descriptors(100, 384))  # the default, 256 dimensions
    with pytest.raises(wh.WhiteningError, match="more than the descriptor's 64"):
        wh.fit(descriptors(100, 64), dims=65)
    with pytest.raises(wh.WhiteningError, match="NaN"):
        wh.fit(np.full((20, 4), np.nan), dims=2)


def fitted(tmp_path: Path) -> tuple[wh.Whitening, dict]:
    w = wh.fit(descriptors(80, 32), dims=16)
    settings = wh.save(w, tmp_path, view="full", size=224, scales=[1, 2**-0.5, 0.5], count=80, power=0.5)
    return w, settings


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    w, settings = fitted(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["whitening.json", "whitening.npz"]  # no temp left
    on_disk = json.loads((tmp_path / "whitening.json").read_text())
    assert on_disk == settings
    assert {k: on_disk[k] for k in ("view", "size", "scales", "dims", "power", "count")} == {
        "view": "full",
        "size": 224,
        "scales": [1.0, 0.7071, 0.5],
        "dims": 16,
        "power": 0.5,
        "count": 80,
    }
    loaded = wh.load(tmp_path)
    x = descriptors(5, 32, seed=3)
    np.testing.assert_array_equal(loaded.apply(x), w.apply(x))
    assert loaded.settings == settings and wh.sha256_of(tmp_path) == settings["sha256"]
    assert loaded.mismatch("full", 224, [1, 0.70710678, 0.5]) is None
    detail = loaded.mismatch("full", 512, [1])
    assert detail is not None and "size=224" in detail and "size=512" in detail and "[1.0]" in detail


def test_missing_or_corrupt_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(wh.WhiteningMissing, match="simpool-whiten"):
        wh.load(tmp_path)
    fitted(tmp_path)
    npz = (tmp_path / "whitening.npz").read_bytes()
    (tmp_path / "whitening.npz").write_bytes(npz[: len(npz) // 2])
    with pytest.raises(wh.WhiteningError, match="does not match"):
        wh.load(tmp_path)
    (tmp_path / "whitening.npz").write_bytes(npz)
    wh.load(tmp_path)
    (tmp_path / "whitening.json").write_text("{not json")
    with pytest.raises(wh.WhiteningError, match="cannot read"):
        wh.load(tmp_path)
    (tmp_path / "whitening.json").unlink()
    with pytest.raises(wh.WhiteningError, match="cannot read"):
        wh.load(tmp_path)


def test_a_refit_replaces_both_files(tmp_path: Path) -> None:
    _, first = fitted(tmp_path)
    w = wh.fit(descriptors(80, 32, seed=5), dims=8)
    second = wh.save(w, tmp_path, view="crop", size=224, scales=[1], count=80, power=0.5)
    assert second["sha256"] != first["sha256"]
    assert wh.load(tmp_path).dims == 8
