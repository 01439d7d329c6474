"""Soak: mixed traffic for a while, and whether the server's memory, descriptors and latency stay flat.

Clients send, at random, good and bad images to every endpoint of every door (REST /embed, /attention
JSON and PNG, /classify; /v2 infer; /v1/embeddings), and some leave mid-request. Every window the
server's RSS, open file descriptors and threads are read from /proc, with the window's p50/p99
latency and status codes; the end prints the table, writes it as JSON and plots it.

Goals (exit 1 when one is missed): RSS and descriptors over the second half at most +5 % over its
start (descriptors: +2 as well, they are few; in a reload soak, RSS as each window's lowest sample,
between swaps: during one, two versions are in memory by design), the second half's p99 at most 3x
the first's (after warm-up), and no 5xx.

With `--reload-every S` the server polls a copy of the model directory (SIMPOOL_MODEL_CONTROL=poll)
and the soak writes a new version of the model it sends to every S seconds, as `simpool-export`
writes one (manifest removed, graph rewritten, manifest written): every swap must happen, and no
request may fail because of one (a 404 or 503 is an unexpected answer like any other).

    python bench/soak.py --model-dir model_repository --duration 600   # starts simpool-serve
    python bench/soak.py --model-dir model_repository --duration 3600 --reload-every 180
    python bench/soak.py --url http://127.0.0.1:8000 --pid 1234       # a running server
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import random
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from launch import serve
from PIL import Image

WARM_UP = 0.1  # the first tenth of the run is warm-up: neither half of the goals


@dataclass
class Sample:
    t: float
    rss_mb: float
    fds: int
    threads: int


@dataclass
class Window:
    start: float
    latencies: list[float] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)


def photos() -> list[bytes]:
    """Real photographs as JPEG and PNG, at a few sizes (scikit-image's; no network)."""
    import skimage.data as data

    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        img = Image.fromarray(getattr(data, name)())
        for size, fmt in (((500, 375), "JPEG"), ((320, 240), "PNG")):
            buf = io.BytesIO()
            img.resize(size).save(buf, fmt)
            out.append(buf.getvalue())
    return out


BAD = [b"not an image at all", b"\xff\xd8\xff\xe0" + b"\0" * 200]  # text, a truncated JPEG header


def proc_sample(pid: int, t: float) -> Sample:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss_kb = int(fields["VmRSS"].split()[0])
    return Sample(t, rss_kb / 1024, len(os.listdir(f"/proc/{pid}/fd")), int(fields["Threads"]))


class Traffic:
    """The mix: each call picks one kind of request, sends it and records its status and latency."""

    def __init__(self, url: str, model: str, has_classifier: bool, images: list[bytes]) -> None:
        self.url = url
        self.model = model
        self.images = images
        self.kinds = [
            "embed",
            "embed_multipart",
            "embed_bad",
            "embed_skip",
            "attention",
            "attention_png",
            "v2_infer",
            "v1_embeddings",
            "disconnect",
        ] + (["classify"] if has_classifier else [])

    def b64(self, data: bytes) -> str:
        return base64.b64encode(data).decode()

    def request(self, kind: str, rng: random.Random) -> tuple[str, str, dict]:
        """(method path, expected outcome, httpx keyword arguments)."""
        some = [rng.choice(self.images) for _ in range(rng.randint(1, 3))]
        one = rng.choice(self.images)
        m = self.model
        if kind == "embed":
            return "/embed", "200", {"json": {"model": m, "images": [self.b64(i) for i in some]}}
        if kind == "embed_multipart":
            files = [("images", (f"{n}.img", i)) for n, i in enumerate(some)]
            return "/embed", "200", {"files": files, "data": {"model": m}}
        if kind == "embed_bad":
            return (
                "/embed",
                "400",
                {"json": {"model": m, "images": [self.b64(one), self.b64(rng.choice(BAD))]}},
            )
        if kind == "embed_skip":
            images = [self.b64(one), self.b64(rng.choice(BAD))]
            return "/embed", "200", {"json": {"model": m, "images": images, "on_error": "skip"}}
        if kind == "attention":
            return "/attention", "200", {"json": {"model": m, "images": [self.b64(one)]}}
        if kind == "attention_png":
            return "/attention?format=png", "200", {"json": {"model": m, "images": [self.b64(one)]}}
        if kind == "classify":
            return "/classify", "200", {"json": {"model": m, "images": [self.b64(i) for i in some]}}
        if kind == "v2_infer":
            body = {
                "inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": [self.b64(one)]}],
                "outputs": [{"name": "embedding"}],
            }
            return f"/v2/models/{m}/infer", "200", {"json": body}
        if kind == "v1_embeddings":
            return "/v1/embeddings", "200", {"json": {"model": m, "input": [self.b64(i) for i in some]}}
        # Leaves before its answer: the server must drop it cleanly (counted 499, never answered).
        return "/embed", "gone", {"json": {"model": m, "images": [self.b64(one)]}, "timeout": 0.02}


async def client_loop(
    traffic: Traffic, seed: int, until: float, started: float, windows: list[Window], width: float
) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=traffic.url, timeout=60) as http:
        while time.monotonic() < until:
            kind = rng.choice(traffic.kinds)
            path, expected, kw = traffic.request(kind, rng)
            t0 = time.monotonic()
            try:
                answer = await http.post(path, **kw)
                code = str(answer.status_code)
                if expected != "gone" and code != expected:
                    code = f"{code} ({kind}: expected {expected})"
            except httpx.TimeoutException:
                code = "gone" if expected == "gone" else f"timeout ({kind})"
            except httpx.HTTPError as exc:
                code = f"error ({kind}: {type(exc).__name__})"
            t1 = time.monotonic()
            window = windows[min(len(windows) - 1, int((t0 - started) / width))]
            window.codes[code] += 1
            if code != "gone":
                window.latencies.append(t1 - t0)


async def sampler(pid: int, until: float, started: float, samples: list[Sample], every: float) -> None:
    while True:
        samples.append(proc_sample(pid, time.monotonic() - started))
        if time.monotonic() >= until:
            return
        await asyncio.sleep(min(every, max(0.0, until - time.monotonic())))


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def steady(samples: list[Sample], width: float) -> list[Sample]:
    """Each window's lowest RSS sample: in a reload soak a swap holds two versions for a few seconds by
    design (the new one warms beside the old), so growth is judged between swaps."""
    by_window: dict[int, Sample] = {}
    for s in samples:
        i = int(s.t // width)
        if i not in by_window or s.rss_mb < by_window[i].rss_mb:
            by_window[i] = s
    return [by_window[i] for i in sorted(by_window)]


def report(
    samples: list[Sample], windows: list[Window], width: float, duration: float, reloads: bool = False
) -> dict:
    rows = []
    for i, w in enumerate(windows):
        end = (i + 1) * width
        here = [s for s in samples if i * width <= s.t <= end] or samples[-1:]
        last = here[-1]
        rows.append(
            {
                "t_s": round(end),
                "requests": sum(w.codes.values()),
                "p50_ms": round(1000 * percentile(w.latencies, 50), 1),
                "p99_ms": round(1000 * percentile(w.latencies, 99), 1),
                "rss_mb": round(last.rss_mb, 1),
                "rss_peak_mb": round(max(s.rss_mb for s in here), 1),
                "fds": last.fds,
                "threads": last.threads,
                "codes": dict(sorted(w.codes.items())),
            }
        )
    half = duration / 2
    [s for s in samples if WARM_UP * duration <= s.t < half] or samples[:1]
    second = [s for s in samples if s.t >= half] or samples[-1:]
    lat_first = [
        x for i, w in enumerate(windows) if WARM_UP * duration <= i * width < half for x in w.latencies
    ]
    lat_second = [x for i, w in enumerate(windows) if i * width >= half for x in w.latencies]
    codes: Counter[str] = Counter()
    for w in windows:
        codes.update(w.codes)
    judged = steady(second, width) if reloads else second
    rss_growth = max(s.rss_mb for s in judged) / judged[0].rss_mb - 1
    fd_top = max(s.fds for s in second)
    p99_first, p99_second = percentile(lat_first, 99), percentile(lat_second, 99)
    bad = {c: n for c, n in codes.items() if c not in ("200", "400", "gone")}
    goals = {
        "rss_second_half_growth_pct": round(100 * rss_growth, 2),
        "rss_flat": rss_growth <= 0.05,
        "fds_second_half": [second[0].fds, fd_top],
        "fds_flat": fd_top <= second[0].fds * 1.05 + 2,
        "p99_first_half_ms": round(1000 * p99_first, 1),
        "p99_second_half_ms": round(1000 * p99_second, 1),
        "p99_stable": p99_second <= 3 * p99_first,
        "unexpected": bad,
        "no_5xx": not any(c.startswith("5") for c in bad),
        "all_expected": not bad,
    }
    return {"windows": rows, "goals": goals, "codes": dict(codes)}


def print_table(result: dict, meta: dict) -> None:
    print(
        f"soak: {meta['duration_s']:.0f} s, {meta['clients']} clients, model {meta['model']}, "
        f"{meta['machine']}"
    )
    print(
        "| t (s) | requests | p50 (ms) | p99 (ms) | RSS (MB) | RSS peak (MB) | fds | threads | status codes |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in result["windows"]:
        codes = ", ".join(f"{c}: {n}" for c, n in r["codes"].items())
        print(
            f"| {r['t_s']} | {r['requests']} | {r['p50_ms']} | {r['p99_ms']} | {r['rss_mb']} "
            f"| {r['rss_peak_mb']} | {r['fds']} | {r['threads']} | {codes} |"
        )
    g = result["goals"]

    def verdict(ok: bool) -> str:
        return "ok" if ok else "MISSED"

    print(
        f"goals: RSS {g['rss_second_half_growth_pct']:+.2f} % over the second half "
        f"({verdict(g['rss_flat'])}), "
        f"fds {g['fds_second_half'][0]} -> max {g['fds_second_half'][1]} ({verdict(g['fds_flat'])}), "
        f"p99 {g['p99_first_half_ms']} -> {g['p99_second_half_ms']} ms ({verdict(g['p99_stable'])}), "
        f"unexpected answers {g['unexpected'] or 'none'}"
    )
    if "reloads" in g:
        r = g["reloads"]
        done = verdict(g["all_swapped"])
        print(f"reloads: {r['written']} versions written, {r['swapped']} swapped in ({done})")


def plot(result: dict, samples: list[Sample], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    t = [s.t for s in samples]
    a.plot(t, [s.rss_mb for s in samples], label="RSS (MB)")
    a.set_ylabel("RSS (MB)")
    a2 = a.twinx()
    a2.plot(t, [s.fds for s in samples], color="tab:orange", label="fds")
    a2.plot(t, [s.threads for s in samples], color="tab:green", label="threads")
    a2.set_ylabel("fds, threads")
    a2.legend(loc="lower right")
    w = result["windows"]
    b.plot([r["t_s"] for r in w], [r["p50_ms"] for r in w], marker="o", label="p50")
    b.plot([r["t_s"] for r in w], [r["p99_ms"] for r in w], marker="o", label="p99")
    b.set_ylabel("latency (ms)")
    b.legend()
    for code in sorted({c for r in w for c in r["codes"]}):
        c.plot([r["t_s"] for r in w], [r["codes"].get(code, 0) for r in w], marker=".", label=code)
    c.set_ylabel("answers per window")
    c.set_xlabel("time (s)")
    c.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


class Swapper:
    """Writes a new version of one model folder every `every` seconds, as an export does. Versions are
    the same computation with another `doc_string` in the graph: other bytes, so another fingerprint,
    and answers that stay comparable."""

    def __init__(self, folder: Path, every: float) -> None:
        import onnx

        self.folder = folder
        self.every = every
        self.graph = onnx.load(folder / "model.onnx")
        self.manifest = json.loads((folder / "manifest.json").read_text())
        self.written = 0

    def write(self) -> None:
        from reload import write_version

        self.written += 1
        # with the export's own pause between the graph and the manifest, in small
        write_version(self.folder, self.graph, self.manifest, f"soak version {self.written}", pause=0.5)

    async def run(self, until: float) -> None:
        while time.monotonic() + self.every < until:
            await asyncio.sleep(self.every)
            await asyncio.to_thread(self.write)


def swaps_done(url: str, model: str) -> int:
    """Reloads the server counted for `model` (simpool_model_loads_total{outcome="reloaded"})."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    pattern = rf'simpool_model_loads_total{{model="{re.escape(model)}",outcome="reloaded"}} ([0-9.e+]+)'
    found = re.search(pattern, text)
    return int(float(found.group(1))) if found else 0


def pick_model(url: str, wanted: str | None) -> tuple[str, bool]:
    models = httpx.get(f"{url}/models", timeout=30).json()["models"]
    chosen = next(m for m in models if (m["name"] == wanted if wanted else m["default"]))
    return chosen["name"], chosen["num_classes"] > 0


def soak(url: str, pid: int, args: argparse.Namespace, model_dir: Path | None = None) -> dict:
    """`model_dir`: the folder the server polls, where a reload soak writes new versions."""
    model, has_classifier = pick_model(url, args.model)
    traffic = Traffic(url, model, has_classifier, photos())
    width = args.duration / args.windows
    windows = [Window(i * width) for i in range(args.windows)]
    samples: list[Sample] = []
    swapper = Swapper(model_dir / model, args.reload_every) if model_dir and args.reload_every else None

    async def main() -> None:
        started = time.monotonic()
        until = started + args.duration
        await asyncio.gather(
            sampler(pid, until, started, samples, min(5.0, width / 2)),
            *(client_loop(traffic, i, until, started, windows, width) for i in range(args.clients)),
            *([swapper.run(until)] if swapper else []),
        )
        samples.append(proc_sample(pid, time.monotonic() - started))

    asyncio.run(main())
    result = report(samples, windows, width, args.duration, reloads=swapper is not None)
    meta = {
        "duration_s": args.duration,
        "clients": args.clients,
        "model": model,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
    }
    if swapper is not None:
        time.sleep(3 * args.poll_s)  # the last version written is picked up by the next rescan
        done = swaps_done(url, model)
        result["goals"]["reloads"] = {"written": swapper.written, "swapped": done}
        result["goals"]["all_swapped"] = done >= swapper.written
    result["meta"] = meta
    print_table(result, meta)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "soak.json").write_text(json.dumps(result, indent=1))
        plot(result, samples, args.out / "soak.png")
        print(f"wrote {args.out / 'soak.json'} and {args.out / 'soak.png'}")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--url", help="a running server (then --pid names its process)")
    where.add_argument(
        "--model-dir", type=Path, default=Path("model_repository"), help="start a server on this"
    )
    p.add_argument("--pid", type=int, help="the running server's process id (with --url)")
    p.add_argument("--model", help="model to send to (default: the server's default)")
    p.add_argument("--duration", type=float, default=600.0, help="seconds of traffic (default 600)")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    p.add_argument("--windows", type=int, default=10, help="rows of the table (default 10)")
    p.add_argument("--out", type=Path, default=Path("bench/soak-out"), help="where soak.json and soak.png go")
    p.add_argument(
        "--reload-every",
        type=float,
        default=0.0,
        help="write a new version of the model every this many seconds (with --model-dir; 0: never)",
    )
    p.add_argument("--poll-s", type=float, default=1.0, help="the server's SIMPOOL_POLL_S in a reload soak")
    args = p.parse_args(argv)
    if args.url:
        if args.pid is None:
            p.error("--url needs --pid (the server's process, read from /proc)")
        if args.reload_every:
            p.error("--reload-every needs --model-dir (the soak copies it and writes the new versions)")
        result = soak(args.url, args.pid, args)
    else:
        env = {
            "SIMPOOL_PROVIDERS": os.environ.get("SIMPOOL_PROVIDERS", "CPUExecutionProvider"),
            "SIMPOOL_GRPC_PORT": os.environ.get("SIMPOOL_GRPC_PORT", "0"),  # its traffic is HTTP's
        }
        with tempfile.TemporaryDirectory() as tmp:
            served = args.model_dir
            if args.reload_every:
                served = Path(tmp) / "models"
                shutil.copytree(args.model_dir, served, ignore=shutil.ignore_patterns("trt_cache"))
                env |= {"SIMPOOL_MODEL_CONTROL": "poll", "SIMPOOL_POLL_S": str(args.poll_s)}
            with serve(served, env, Path(tmp) / "serve.log") as server:
                result = soak(server.url, server.pid, args, served if args.reload_every else None)
    g = result["goals"]
    ok = g["rss_flat"] and g["fds_flat"] and g["p99_stable"] and g["all_expected"]
    return 0 if ok and g.get("all_swapped", True) else 1


if __name__ == "__main__":
    sys.exit(main())
