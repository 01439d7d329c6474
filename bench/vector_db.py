"""LanceDB's approximate index against FAISS on >= 100,000 SimPool vectors: recall@10, queries/s, build, disk.

    python bench/vector_db.py [--model-dir DIR] [--real 600] [--total 100000] [--queries 500]

Vectors: real embeddings of augmented photographs (random crops, flips, colour and blur of
scikit-image's pictures, embedded in-process by the model), plus synthetic vectors of the same
distribution: each a real vector mixed with a second one and Gaussian noise of the real set's
per-dimension spread, normalised. Queries are fresh vectors made the same way (not in the base).
Ground truth is exact inner-product search (numpy). Queries run one at a time (a search service's
pattern); build = load + index training.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from simpool_serve.client import vectordb

BIN = Path(sys.executable).parent
K = 10


def augmented_photos(n: int, seed: int = 0) -> list[bytes]:
    import io

    import skimage.data as data

    names = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "brick", "clock", "moon")
    names += ("camera", "coins", "grass", "gravel", "hubble_deep_field", "retina", "page", "text")
    photos = [Image.fromarray(getattr(data, name)()).convert("RGB") for name in names]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = photos[i % len(photos)]
        w, h = img.size
        s = rng.uniform(0.3, 1.0)
        cw, ch = int(w * s), int(h * s)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = img.crop((x, y, x + cw, y + ch)).resize((256, 256), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crop = ImageEnhance.Color(crop).enhance(rng.uniform(0.5, 1.5))
        crop = ImageEnhance.Brightness(crop).enhance(rng.uniform(0.7, 1.3))
        if rng.random() < 0.3:
            crop = crop.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2)))
        buf = io.BytesIO()
        crop.save(buf, "JPEG", quality=int(rng.integers(70, 95)))
        out.append(buf.getvalue())
    return out


def embed_real(model_dir: Path, n: int) -> tuple[np.ndarray, str, str]:
    from simpool_serve.client.backends import LocalBackend

    async def run() -> tuple[list[np.ndarray], str, str]:
        backend = await LocalBackend.open(model_dir, model=None)
        try:
            images = augmented_photos(n)
            vecs = []
            for i in range(0, n, 32):
                outcomes = await backend.embed(images[i : i + 32])
                vecs += [o.embedding for o in outcomes if o.embedding is not None]
            return vecs, backend.model, backend.fingerprint
        finally:
            await backend.aclose()

    vecs, model, fingerprint = asyncio.run(run())
    return np.stack(vecs).astype(np.float32), model, fingerprint


def synthetic(real: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Mixtures of two real vectors plus noise of the real set's per-dimension spread, normalised."""
    sigma = real.std(axis=0, keepdims=True)
    a = real[rng.integers(0, len(real), n)]
    b = real[rng.integers(0, len(real), n)]
    w = rng.uniform(0.0, 0.5, (n, 1)).astype(np.float32)
    x = (
        (1 - w) * a
        + w * b
        + rng.normal(0, 1, a.shape).astype(np.float32) * sigma * rng.uniform(0.3, 1.0, (n, 1))
    )
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact_topk(base: np.ndarray, queries: np.ndarray) -> np.ndarray:
    scores = queries @ base.T
    idx = np.argpartition(-scores, K, axis=1)[:, :K]
    return idx


def recall(found: list[set[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(f & set(t)) / K for f, t in zip(found, truth, strict=True)]))


def du(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def bench_lancedb(work: Path, base: np.ndarray, queries: np.ndarray, truth: np.ndarray, model: str, fp: str):
    import pyarrow as pa

    rows = pa.table(
        {
            "path": [f"img/{i:07d}.jpg" for i in range(len(base))],
            "sha256": [""] * len(base),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(base.ravel()), base.shape[1]),
        }
    )
    results = []
    for params in (
        vectordb.IndexParams(),
        vectordb.IndexParams(nprobes=10),
        vectordb.IndexParams(kind="IVF_FLAT", refine_factor=1),
    ):
        label = f"{params.kind}, sqrt(n) lists, nprobes {params.nprobes}, refine {params.refine_factor}"
        db = work / "lancedb"
        shutil.rmtree(db, ignore_errors=True)
        start = time.perf_counter()
        vectordb.build(str(db), rows, model, fp, params=params, index=True)
        build = time.perf_counter() - start
        index = vectordb.VectorIndex(str(db), params=params)
        index.search(queries[:5], fp, K)  # open the index files once
        start = time.perf_counter()
        hits = index.search(queries, fp, K)
        qps = len(queries) / (time.perf_counter() - start)
        found = [{int(h.path[4:11]) for h in hs} for hs in hits]
        results.append((f"LanceDB {label}", recall(found, truth), qps, build, du(db)))
    return results


def bench_faiss(work: Path, base: np.ndarray, queries: np.ndarray, truth: np.ndarray):
    import faiss

    d = base.shape[1]
    results = []
    configs = [
        (
            "HNSW32, efConstruction 80, efSearch 64",
            lambda: faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT),
            {"efSearch": 64},
        ),
        ("HNSW32, efConstruction 80, efSearch 128", None, {"efSearch": 128}),
        (
            "IVF316,Flat, nprobe 16",
            lambda: faiss.index_factory(d, "IVF316,Flat", faiss.METRIC_INNER_PRODUCT),
            {"nprobe": 16},
        ),
    ]
    index = None
    build = 0.0
    for label, make, search in configs:
        if make is not None:
            index = make()
            if hasattr(index, "hnsw"):
                index.hnsw.efConstruction = 80
            faiss.omp_set_num_threads(os.cpu_count() or 1)
            start = time.perf_counter()
            index.train(base)
            index.add(base)
            build = time.perf_counter() - start
            faiss.write_index(index, str(work / "faiss.index"))
        faiss.omp_set_num_threads(1)  # one query at a time: threads only add hand-offs
        ps = faiss.ParameterSpace()
        for key, value in search.items():
            ps.set_index_parameter(index, key, value)
        start = time.perf_counter()
        found = [set(index.search(q[None], K)[1][0].tolist()) for q in queries]
        qps = len(queries) / (time.perf_counter() - start)
        size = (work / "faiss.index").stat().st_size / 2**20
        results.append((f"FAISS {label}", recall(found, truth), qps, build, size))
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, help="a model folder (default: export a random-init resnet18)")
    p.add_argument("--real", type=int, default=600, help="augmented photographs embedded by the model")
    p.add_argument("--total", type=int, default=100_000, help="vectors in the index (real + synthetic)")
    p.add_argument("--queries", type=int, default=500)
    args = p.parse_args()
    rng = np.random.default_rng(1)

    with tempfile.TemporaryDirectory(prefix="bench-vdb-") as tmp:
        work = Path(tmp)
        model_dir = args.model_dir
        if model_dir is None:
            model_dir = work / "resnet18"
            cmd = [BIN / "simpool-export", "--arch", "resnet18", "--random-init", "--seed", "0"]
            subprocess.run([str(c) for c in [*cmd, "--name", "resnet18", "--out", model_dir]], check=True)
        start = time.perf_counter()
        real, model, fp = embed_real(model_dir, args.real)
        embed_s = time.perf_counter() - start
        base = np.concatenate([real, synthetic(real, args.total - len(real), rng)])
        queries = synthetic(real, args.queries, rng)
        truth = exact_topk(base, queries)
        rows = bench_lancedb(work, base, queries, truth, model, fp) + bench_faiss(work, base, queries, truth)

    print(
        f"{len(base)} vectors (dim {base.shape[1]}, {len(real)} real from {model},"
        f" embedded in {embed_s:.0f} s),"
        f" {len(queries)} queries one at a time, recall@{K} against exact search"
    )
    print("| index | recall@10 | queries/s | build s | disk MiB |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, rec, qps, build, size in rows:
        print(f"| {label} | {rec:.3f} | {qps:.0f} | {build:.1f} | {size:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
