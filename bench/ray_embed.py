"""simpool-embed --engine ray against --local on the same folder, side by side, on this machine.

    python bench/ray_embed.py [--model-dir DIR] [--images 384]

Runs --local, then --engine ray, then --local again (the machine's speed drifts; the two local runs
bracket the Ray run), each as the installed console script, and prints wall-clock images/s, Ray's
steady rate (after its actors are up) and the ratios; then checks the vectors agree (cosine).
Without --model-dir it exports a random-init resnet18 first (about a minute).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

BIN = Path(sys.executable).parent


def make_images(root: Path, n: int, seed: int = 0) -> None:
    """n distinct 500x375 JPEGs: random crops and flips of scikit-image's photographs."""
    import skimage.data as data

    rng = np.random.default_rng(seed)
    names = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "brick", "clock", "moon")
    photos = [Image.fromarray(getattr(data, name)()).convert("RGB") for name in names]
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = photos[i % len(photos)]
        w, h = img.size
        cw, ch = int(w * rng.uniform(0.6, 1)), int(h * rng.uniform(0.6, 1))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = img.crop((x, y, x + cw, y + ch)).resize((500, 375), Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crop.save(root / f"{i:05d}.jpg", quality=90)


def timed(cmd: list[object]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return wall, proc.stderr


def vectors(table) -> dict[str, np.ndarray]:
    return {
        p: np.asarray(e, np.float32)
        for p, e in zip(table["path"].to_pylist(), table["embedding"].to_pylist(), strict=True)
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, help="a model folder (default: export a random-init resnet18)")
    p.add_argument("--images", type=int, default=384)
    p.add_argument("--workers", type=int, help="passed to --engine ray (default: its own, one per core)")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        work = Path(tmp)
        model = args.model_dir
        if model is None:
            model = work / "resnet18"
            export = [BIN / "simpool-export", "--arch", "resnet18", "--random-init", "--seed", "0"]
            timed([*export, "--name", "resnet18", "--out", model])
        src = work / "src"
        make_images(src, args.images)
        local = [BIN / "simpool-embed", src, "--local", model, "--no-progress"]
        ray = [BIN / "simpool-embed", src, "--engine", "ray", "--local", model, "--no-progress"]
        if args.workers:
            ray += ["--workers", str(args.workers)]

        local1, _ = timed([*local, "--out", work / "a.parquet"])
        ray_wall, ray_err = timed([*ray, "--out", work / "shards"])
        local2, _ = timed([*local, "--out", work / "b.parquet"])

        m = re.search(
            r"ray started in ([\d.]+) s, first rows after ([\d.]+) s, .*\(([\d.]+) images/s once up\)",
            ray_err,
        )
        if not m:
            raise SystemExit(f"no timing line from the Ray run:\n{ray_err}")
        ray_up, first_rows, steady = (float(g) for g in m.groups())
        local_rate = args.images / ((local1 + local2) / 2)
        a = vectors(pq.read_table(work / "a.parquet"))
        from simpool_serve.client.store import read_shards

        b = vectors(read_shards(work / "shards")[0])
        cos = min(float(a[k] @ b[k]) for k in a)

    n = args.images
    print(f"{n} images 500x375 JPEG, model {model.name}, {os.cpu_count()} CPUs")
    print("| run | wall s | images/s (wall) | vs --local |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| --local (1st) | {local1:.1f} | {n / local1:.1f} | |")
    print(f"| --local (2nd) | {local2:.1f} | {n / local2:.1f} | |")
    print(
        f"| --engine ray, end to end | {ray_wall:.1f} | {n / ray_wall:.1f}"
        f" | {n / ray_wall / local_rate:.2f}x |"
    )
    print(f"| --engine ray, once Ray was up | {n / steady:.1f} | {steady:.1f} | {steady / local_rate:.2f}x |")
    print(
        f"Ray: cluster up after {ray_up:.1f} s, first rows after {first_rows:.1f} s"
        " (actors start and load the model)"
    )
    print(f"min cosine --local vs ray over {len(a)} images: {cos:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
