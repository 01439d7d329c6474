"""INT8 vs FP32, side by side in one run: offline images/s, batch-1 and batch-4 latency, cosine.

For each pair of model folders (the fp32 export and its `--int8` export), both graphs are loaded
into onnxruntime (CPU, the same thread count) and measured in alternating rounds (fp32, int8, int8,
fp32, ...): a shared virtual machine's speed drifts over minutes, and alternating puts both sides
under the same drift. The ratio is the median of the per-round ratios. The cosine is between the two
graphs' embeddings of photographs prepared by the service's own decode and crop: crops and flips of
scikit-image's photographs (a fixed seed of their own, so not the crops a test calibrated on).

Two speed measures per round: images/s of a session with the service's thread count (wall time,
what a user sees, but moved by every other job on a shared machine), and process CPU time per
image of a one-thread session (the compute each image costs, which other jobs hardly move).

With `--fusions`, a ViT pair is also measured after onnxruntime's transformer optimizer
(`onnxruntime.transformers.optimizer`, model_type `vit`): the fp32 graph fused, and the INT8 graph
quantized again from the fused fp32 graph (its own calibration folder given by `--calibration`).

    python bench/int8.py --pair model_repository/resnet50_simpool model_repository/resnet50_int8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from simpool_serve.service.engine.preprocess import decode_image
from simpool_serve.spec import Manifest, load_manifest

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina")


def held_out_photos(manifest: Manifest, per_photo: int, seed: int = 12345) -> np.ndarray:
    """Random crops and flips of real photographs, prepared as the service prepares requests."""
    import io

    import skimage.data

    rng = np.random.default_rng(seed)
    out = []
    for name in PHOTOS:
        img = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        w, h = img.size
        for k in range(per_photo):
            scale, aspect = rng.uniform(0.45, 1.0), rng.uniform(0.75, 1.33)
            cw, ch = min(w, int(w * (scale * aspect) ** 0.5)), min(h, int(h * (scale / aspect) ** 0.5))
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            crop = img.crop((x, y, x + cw, y + ch))
            if k % 2:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            buf = io.BytesIO()
            crop.save(buf, format="JPEG", quality=90)
            out.append(decode_image(buf.getvalue(), manifest, 10**8))
    return np.stack(out)


def session(path: Path, threads: int, spinning: bool = True) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def throughput(sess: ort.InferenceSession, x: np.ndarray, seconds: float) -> float:
    sess.run(None, {"images": x})
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sess.run(None, {"images": x})
        n += len(x)
    return n / (time.perf_counter() - t0)


def cpu_ms_per_image(sess: ort.InferenceSession, x: np.ndarray, seconds: float) -> float:
    """Process CPU time per image on a one-thread session: unlike wall time, it hardly moves when other
    jobs take turns on the same cores (what is left: their effect on caches)."""
    sess.run(None, {"images": x})
    n, c0, t0 = 0, time.process_time(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sess.run(None, {"images": x})
        n += len(x)
    return (time.process_time() - c0) * 1e3 / n


def latency_ms(sess: ort.InferenceSession, x: np.ndarray, runs: int) -> float:
    sess.run(None, {"images": x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, {"images": x})
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def cosines(a: ort.InferenceSession, b: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    ea = a.run(["embedding"], {"images": x})[0].astype(np.float64)
    eb = b.run(["embedding"], {"images": x})[0].astype(np.float64)
    return (ea * eb).sum(1) / (np.linalg.norm(ea, axis=1) * np.linalg.norm(eb, axis=1))


def compare(
    label: str, fp32: Path, int8: Path, photos: np.ndarray, args: argparse.Namespace
) -> dict[str, object]:
    """Alternating rounds of both graphs; returns the row of the table."""
    a, b = session(fp32, args.threads), session(int8, args.threads)
    single = {"fp32": session(fp32, 1, spinning=False), "int8": session(int8, 1, spinning=False)}
    x4 = photos[: args.batch]
    cpu: dict[str, list[float]] = {"fp32": [], "int8": []}
    rates: dict[str, list[float]] = {"fp32": [], "int8": []}
    lat1: dict[str, list[float]] = {"fp32": [], "int8": []}
    lat4: dict[str, list[float]] = {"fp32": [], "int8": []}
    for r in range(args.rounds):
        order = [("fp32", a), ("int8", b)] if r % 2 == 0 else [("int8", b), ("fp32", a)]
        for name, sess in order:
            rates[name].append(throughput(sess, x4, args.seconds))
            cpu[name].append(cpu_ms_per_image(single[name], x4, args.seconds))
            lat1[name].append(latency_ms(sess, photos[:1], args.latency_runs))
            lat4[name].append(latency_ms(sess, x4, args.latency_runs // 2))
    ratios = [i / f for i, f in zip(rates["int8"], rates["fp32"], strict=True)]
    cpu_ratios = [f / i for i, f in zip(cpu["int8"], cpu["fp32"], strict=True)]
    cos = cosines(a, b, photos)
    row = {
        "model": label,
        "fp32_images_s": statistics.median(rates["fp32"]),
        "int8_images_s": statistics.median(rates["int8"]),
        "ratio": statistics.median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
        "fp32_cpu_ms": statistics.median(cpu["fp32"]),
        "int8_cpu_ms": statistics.median(cpu["int8"]),
        "cpu_ratio": statistics.median(cpu_ratios),
        "cpu_ratio_range": [min(cpu_ratios), max(cpu_ratios)],
        "fp32_b1_ms": statistics.median(lat1["fp32"]),
        "int8_b1_ms": statistics.median(lat1["int8"]),
        "fp32_b4_ms": statistics.median(lat4["fp32"]),
        "int8_b4_ms": statistics.median(lat4["int8"]),
        "min_cosine": float(cos.min()),
        "mean_cosine": float(cos.mean()),
        "photos": len(photos),
    }
    print(
        f"{label}: fp32 {row['fp32_images_s']:.1f} vs int8 {row['int8_images_s']:.1f} images/s "
        f"(x{row['ratio']:.2f}); CPU ms/image {row['fp32_cpu_ms']:.1f} vs {row['int8_cpu_ms']:.1f} "
        f"(x{row['cpu_ratio']:.2f}); cosine min {row['min_cosine']:.4f}",
        flush=True,
    )
    return row


def fused(src: Path, dst: Path, manifest: Manifest) -> dict[str, int]:
    """onnxruntime's transformer fusions (attention, LayerNorm, GELU) of a ViT graph."""
    from onnxruntime.transformers import optimizer

    heads = {192: 3, 384: 6, 768: 12, 1024: 16}[manifest.embedding_dim]
    model = optimizer.optimize_model(
        str(src), model_type="vit", num_heads=heads, hidden_size=manifest.embedding_dim, opt_level=1
    )
    model.save_model_to_file(str(dst))
    return {k: v for k, v in model.get_fused_operator_statistics().items() if v}


def fusion_rows(
    fp32_dir: Path, int8_dir: Path, photos: np.ndarray, args: argparse.Namespace, tmp: Path
) -> list[dict]:
    from simpool_serve.export.calibration import split_folder
    from simpool_serve.export.quantize import quantize_graph

    manifest = load_manifest(fp32_dir / "manifest.json")
    fp32_fused = tmp / "fp32_fused.onnx"
    stats = fused(fp32_dir / "model.onnx", fp32_fused, manifest)
    print(f"fused fp32 graph: {stats}", flush=True)
    int8_fused_from_fused = tmp / "int8_from_fused.onnx"
    split = split_folder(args.calibration, None)
    quantize_graph(fp32_fused, int8_fused_from_fused, split.calibration, manifest)
    int8_after = tmp / "int8_fused.onnx"
    stats8 = fused(int8_dir / "model.onnx", int8_after, manifest)
    print(f"fusions found in the INT8 (QDQ) graph: {stats8}", flush=True)
    ref = fp32_dir / "model.onnx"
    return [
        compare(f"{manifest.name}: fp32 vs fp32 fused", ref, fp32_fused, photos, args),
        compare(f"{manifest.name}: fp32 vs int8 of fused fp32", ref, int8_fused_from_fused, photos, args),
        compare(f"{manifest.name}: fp32 vs int8, then fused", ref, int8_after, photos, args),
    ]


def cpu_features() -> str:
    text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if "Model name" in ln), "?")
    flags = sorted({f for f in text.split() if f.startswith(("avx512_vnni", "avx_vnni", "amx"))})
    return f"{model}, {os.cpu_count()} vCPU, {' '.join(flags) or 'no VNNI/AMX'}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", nargs=2, action="append", required=True, metavar=("FP32_DIR", "INT8_DIR"))
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--rounds", type=int, default=4, help="alternating rounds per pair")
    p.add_argument("--seconds", type=float, default=4.0, help="throughput run per graph per round")
    p.add_argument("--batch", type=int, default=4, help="batch of the throughput runs")
    p.add_argument("--latency-runs", type=int, default=20)
    p.add_argument("--photos-per-image", type=int, default=4, help="held-out crops per photograph")
    p.add_argument("--fusions", action="store_true", help="also try the transformer fusions on ViT pairs")
    p.add_argument("--calibration", type=Path, help="calibration folder for the fused INT8 (--fusions)")
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)

    print(f"machine: {cpu_features()}; onnxruntime {ort.__version__}, {platform.python_version()}")
    print(f"load average at start: {os.getloadavg()[0]:.1f} (this machine is shared with other jobs)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fp32_dir, int8_dir in args.pair:
            manifest = load_manifest(Path(fp32_dir) / "manifest.json")
            photos = held_out_photos(manifest, args.photos_per_image)
            label = f"{manifest.arch}"
            rows.append(
                compare(label, Path(fp32_dir) / "model.onnx", Path(int8_dir) / "model.onnx", photos, args)
            )
            if args.fusions and manifest.arch.startswith("vit"):
                rows += fusion_rows(Path(fp32_dir), Path(int8_dir), photos, args, Path(tmp))
    print(f"load average at end: {os.getloadavg()[0]:.1f}\n")
    print(
        f"| model | images/s fp32 / int8 ({args.threads} threads) | ratio (range) "
        "| CPU ms/image fp32 / int8 (1 thread) | ratio (range) "
        "| batch 1 ms fp32 / int8 | batch 4 ms fp32 / int8 | cosine min / mean |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        lo, hi = r["ratio_range"]
        clo, chi = r["cpu_ratio_range"]
        print(
            f"| {r['model']} | {r['fp32_images_s']:.1f} / {r['int8_images_s']:.1f} | "
            f"{r['ratio']:.2f} ({lo:.2f}-{hi:.2f}) | {r['fp32_cpu_ms']:.1f} / {r['int8_cpu_ms']:.1f} | "
            f"{r['cpu_ratio']:.2f} ({clo:.2f}-{chi:.2f}) | {r['fp32_b1_ms']:.1f} / {r['int8_b1_ms']:.1f} | "
            f"{r['fp32_b4_ms']:.1f} / {r['int8_b4_ms']:.1f} | "
            f"{r['min_cosine']:.4f} / {r['mean_cosine']:.4f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
