"""SimPool Serve against the servers a user would assemble instead, on the same graph and preprocessing.

The peers, each written as its own docs recommend (bench/peers/):
  LitServe  a `LitAPI` with batching: decode_request → batch → predict → unbatch → encode_response;
  mosec     a `Server` pipeline: decode worker processes (one per core), one batched inference worker.
Both run the same model.onnx with the service's session options and thread budget, and prepare images
with the service's own Pillow code (`simpool_serve.service.engine.preprocess`), so only the serving
differs; both batch up to 4 images with a 5 ms window, the service's CPU defaults. Each peer lives in
its own virtual environment under `--venv-dir` (created on the first run, with pinned versions; the
project's own packages are reached through a .pth file), never in the project's.

Each round runs every server in turn (a different one first each round): `hey` with `--clients`
concurrent clients for `--seconds` (images/s), then `--lone-pairs` lone requests, each paired with a
batch-1 run of the graph in this process after the same idle gap (the lone request's overhead is the
median of the pairs' differences). Every request is one 500x375 JPEG, base64 in JSON, answered with its
L2-normalised embedding; the answers of the three servers are compared before anything is measured.

    python bench/peers.py --model-dir model_repository --model resnet50_simpool
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from launch import free_port, serve
from traffic import Door, OneClient, bench_image, hey

from simpool_serve.service.engine.runner import OnnxRunner

HERE = Path(__file__).resolve().parent
OURS = "SimPool Serve"


@dataclass(frozen=True)
class Peer:
    name: str
    packages: tuple[str, ...]  # pinned, so a rerun measures the same peer
    script: str  # in bench/peers/
    path: str  # the route that answers

    def command(self, python: Path, port: int) -> list[str]:
        script = str(HERE / "peers" / self.script)
        if self.name == "mosec":
            return [
                str(python),
                script,
                "--address",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "error",
            ]
        return [str(python), script, "--port", str(port)]


PEERS = {
    "litserve": Peer("LitServe", ("litserve==0.2.19",), "litserve_server.py", "/predict"),
    "mosec": Peer("mosec", ("mosec==0.9.8", "numbin==0.5.1"), "mosec_server.py", "/inference"),
}


@dataclass(frozen=True)
class Server:
    name: str
    url: str
    door: Door
    pid: int  # stopped (SIGSTOP) while another server is measured
    group: bool  # the pid leads a process group of its own (a peer's workers): signal all of it

    def signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig) if self.group else os.kill(self.pid, sig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=Path("model_repository"))
    p.add_argument("--model", default="resnet50_simpool", help="the model folder served by all")
    p.add_argument("--peers", default="litserve,mosec", help=f"comma-separated: {', '.join(PEERS)}")
    p.add_argument("--venv-dir", type=Path, default=Path(tempfile.gettempdir()) / "simpool-peers")
    p.add_argument("--rounds", type=int, default=3, help="times every server is measured, in turns")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=8.0, help="load duration per server and round")
    p.add_argument("--lone-pairs", type=int, default=20, help="lone requests per server and round")
    p.add_argument("--lone-gap", type=float, default=0.25, help="idle seconds before each lone request")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="intra-op threads, every server")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    unknown = sorted(set(peer_names(args)) - set(PEERS))
    if unknown:
        p.error(f"unknown peers {unknown}; known: {sorted(PEERS)}")
    if args.rounds < 1 or args.lone_pairs < 1:
        p.error("--rounds and --lone-pairs must be at least 1")
    return args


def peer_names(args: argparse.Namespace) -> list[str]:
    return [n.strip() for n in args.peers.split(",") if n.strip()]


# -- the peers' environments -------------------------------------------------------------------------


def ensure_venv(key: str, peer: Peer, venv_dir: Path) -> Path:
    """The peer's virtual environment (created once; kept while its pins are unchanged); its python."""
    venv = venv_dir / key
    python = venv / "bin" / "python"
    stamp = venv / "simpool-peer.json"
    wanted = json.dumps({"packages": peer.packages, "python": platform.python_version()})
    if not (stamp.exists() and stamp.read_text() == wanted):
        print(f"creating {venv} with {' '.join(peer.packages)} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *peer.packages], check=True)
    # After pip (which must not see the project's packages), and on every run (the venv may have been
    # made from another checkout): the peer's own packages come first, then the project's environment
    # (numpy, Pillow, onnxruntime, simpool_serve) as this interpreter sees it.
    site_dir = Path(
        subprocess.check_output(
            [str(python), "-c", "import site; print(site.getsitepackages()[0])"], text=True
        ).strip()
    )
    (site_dir / "zz_simpool_project.pth").write_text(
        "".join(f"import site; site.addsitedir({d!r})\n" for d in project_site_dirs())
    )
    stamp.write_text(wanted)
    return python


def project_site_dirs() -> list[str]:
    import site

    return [d for d in site.getsitepackages() if Path(d).is_dir()]


@contextlib.contextmanager
def peer_server(peer: Peer, python: Path, folder: Path, threads: int, log: Path) -> Iterator[tuple[str, int]]:
    """The peer on a free loopback port (its URL and process group), the whole group stopped after."""
    port = free_port()
    env = {**os.environ, "SIMPOOL_PEER_MODEL": str(folder.resolve()), "SIMPOOL_PEER_THREADS": str(threads)}
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            peer.command(python, port),
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=log.parent,
            start_new_session=True,
        )
    try:
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGCONT)
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def ask(server: Server, timeout: float = 60) -> np.ndarray:
    """One request; the embedding it answers (raises on anything but 200)."""
    client = http.client.HTTPConnection(server.url.split("//")[1], timeout=timeout)
    try:
        client.request("POST", server.door.path, server.door.body, {"Content-Type": server.door.content_type})
        response = client.getresponse()
        body = response.read()
    finally:
        client.close()
    if response.status != 200:
        raise RuntimeError(f"{server.name}: HTTP {response.status}: {body[:200]!r}")
    answer = json.loads(body)
    return np.asarray(answer["embeddings"][0] if "embeddings" in answer else answer["embedding"], np.float32)


def wait_ready(server: Server, log: Path, deadline_s: float = 300) -> np.ndarray:
    """Until the server answers a real request (peers open their port before their workers are up)."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return ask(server, timeout=30)
        except (OSError, RuntimeError, http.client.HTTPException):
            if time.monotonic() > deadline:
                raise SystemExit(f"{server.name} not ready; see {log}") from None
            time.sleep(1.0)


# -- measuring ---------------------------------------------------------------------------------------


def lone(graph: OnnxRunner, pixels: np.ndarray, server: Server, pairs: int, gap_s: float) -> dict[str, float]:
    """`pairs` lone requests, each paired with a graph batch-1 run after the same idle gap, in turns."""
    client = OneClient(server.url)
    rows = []
    try:
        for i in range(pairs + 2):  # the first two pairs warm both paths
            got = [0.0, 0.0]
            for which in (0, 1) if i % 2 else (1, 0):
                time.sleep(gap_s)
                if which:
                    got[1] = client.seconds(server.door) * 1e3
                else:
                    start = time.perf_counter()
                    graph.run(pixels)
                    got[0] = (time.perf_counter() - start) * 1e3
            if i >= 2:
                rows.append(got)
    finally:
        client.close()
    return {
        "graph_ms": statistics.median(r[0] for r in rows),
        "lone_ms": statistics.median(r[1] for r in rows),
        "overhead_ms": statistics.median(r[1] - r[0] for r in rows),
    }


def measure(
    servers: list[Server], graph: OnnxRunner, pixels: np.ndarray, args: argparse.Namespace, tmp: Path
) -> dict[str, list[dict[str, float]]]:
    """The rounds: every server under load then alone, a different server first each round."""
    rows: dict[str, list[dict[str, float]]] = {s.name: [] for s in servers}
    for r in range(args.rounds):
        for server in servers[r % len(servers) :] + servers[: r % len(servers)]:
            with only(server, servers):
                rows[server.name].append(one_server(server, graph, pixels, args, tmp, r))
    return rows


@contextlib.contextmanager
def only(server: Server, servers: list[Server]) -> Iterator[None]:
    """The other servers frozen (SIGSTOP) while `server` is measured: an idle server may still
    take CPU (LitServe's worker polls its queue: 10 % of a core here), and on 2 cores that would
    slow whichever server is measured, and the graph's batch-1 it is paired with."""
    others = [s for s in servers if s is not server]
    try:
        for other in others:
            other.signal(signal.SIGSTOP)
        yield
    finally:
        for other in others:
            other.signal(signal.SIGCONT)


def one_server(
    server: Server, graph: OnnxRunner, pixels: np.ndarray, args: argparse.Namespace, tmp: Path, r: int
) -> dict[str, float]:
    """One server's round: under load, then lone requests."""
    body = tmp / f"body-{r}-{server.name.replace(' ', '_')}"
    body.write_bytes(server.door.body)
    loaded = hey(server.url, server.door, body, args.clients, args.seconds)
    row: dict[str, Any] = {"images_per_s": loaded["images_per_s"], "p50_ms": loaded["p50_ms"]}
    row["failed"] = loaded["requests"] - loaded["ok"]
    if row["failed"]:
        row["statuses"] = loaded["statuses"]  # what the failures were
    # The requests still queued when hey stopped drain before the lone ones: the slowest answer's time.
    time.sleep(min(15.0, (loaded["p99_ms"] if loaded["ok"] else 0.0) / 1e3 + 1.0))
    row.update(lone(graph, pixels, server, args.lone_pairs, args.lone_gap))
    print(
        f"round {r + 1}, {server.name}: {row['images_per_s']:.1f} images/s, "
        f"lone {row['lone_ms']:.1f} ms (graph {row['graph_ms']:.1f} ms); "
        f"{row['failed']} failed {row.get('statuses', '')}",
        flush=True,
    )
    return row


# -- the table ---------------------------------------------------------------------------------------


def _spread(values: list[float], fmt: str) -> str:
    mid = statistics.median(values)
    if len(values) == 1:
        return format(mid, fmt)
    return f"{format(mid, fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def table(rows: dict[str, list[dict[str, float]]], clients: int) -> str:
    """Markdown: per server, images/s and the lone request (median over rounds, range), and how the
    service compares round by round; then the graph's own batch-1."""
    ours = rows.get(OURS)
    lines = [
        f"| server | images/s, {clients} clients | lone request ms | over the graph's batch-1 ms "
        "| SimPool Serve images/s ÷ this | this lone ÷ SimPool Serve lone |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, runs in rows.items():
        ips = [r["images_per_s"] for r in runs]
        lone_ms = [r["lone_ms"] for r in runs]
        over = [r["overhead_ms"] for r in runs]
        if ours is None or name == OURS:
            vs_ips = vs_lone = "-"
        else:
            pairs = list(zip(ours, runs, strict=True))
            vs_ips = _spread([o["images_per_s"] / r["images_per_s"] for o, r in pairs], ".2f")
            vs_lone = _spread([r["lone_ms"] / o["lone_ms"] for o, r in pairs], ".2f")
        lines.append(
            f"| {name} | {_spread(ips, '.1f')} | {_spread(lone_ms, '.1f')} | {_spread(over, '+.1f')} "
            f"| {vs_ips} | {vs_lone} |"
        )
    graph = [r["graph_ms"] for runs in rows.values() for r in runs]
    lines.append(f"| the graph alone, batch 1 | | {_spread(graph, '.1f')} | | | |")
    return "\n".join(lines)


def machine(args: argparse.Namespace) -> str:
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"onnxruntime {ort.__version__}, CPU, {args.threads} intra-op threads everywhere; "
        f"{args.rounds} rounds of {args.seconds:g} s under load and {args.lone_pairs} lone requests "
        f"({args.lone_gap:g} s idle before each) per server"
    )


# -- main --------------------------------------------------------------------------------------------


def json_door(path: str, jpeg: bytes, model: str | None) -> Door:
    b64 = base64.b64encode(jpeg).decode()
    body = {"images": [b64], "model": model} if model else {"image": b64}
    return Door("JSON", path, json.dumps(body).encode(), "application/json")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder = args.model_dir / args.model
    pythons = {key: ensure_venv(key, PEERS[key], args.venv_dir) for key in peer_names(args)}
    jpeg = bench_image()
    graph = OnnxRunner(folder / "model.onnx", ["CPUExecutionProvider"], args.threads)
    size = graph.input_size or 224
    pixels = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    tmp = Path(tempfile.mkdtemp(prefix="simpool-peers-"))
    repo = tmp / "repo"
    repo.mkdir()
    (repo / args.model).symlink_to(folder.resolve())
    env = {
        "SIMPOOL_INTRA_OP_THREADS": str(args.threads),
        "SIMPOOL_GRPC_PORT": "0",
        "SIMPOOL_MAX_QUEUE": "1024",
    }
    with contextlib.ExitStack() as stack:
        ours = stack.enter_context(serve(repo, env, tmp / "simpool-serve.log"))
        servers = [Server(OURS, ours.url, json_door("/embed", jpeg, args.model), ours.pid, False)]
        for key, python in pythons.items():
            peer = PEERS[key]
            url, group = stack.enter_context(
                peer_server(peer, python, folder, args.threads, tmp / f"{key}.log")
            )
            servers.append(Server(peer.name, url, json_door(peer.path, jpeg, None), group, True))
        answers = {s.name: wait_ready(s, tmp / f"{s.name}.log") for s in servers}
        first = answers[OURS]
        for name, vector in answers.items():
            if not np.allclose(vector, first, atol=1e-5):
                raise SystemExit(
                    f"{name} answers another embedding (max diff {np.abs(vector - first).max():.2e})"
                )
        print(f"all {len(servers)} servers answer the same embedding; logs in {tmp}", flush=True)
        rows = measure(servers, graph, pixels, args, tmp)
    print(f"\n{args.model}: {machine(args)}\n")
    print(table(rows, args.clients))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(args), "rounds": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
