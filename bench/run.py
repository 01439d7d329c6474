"""The service against the graph it serves, side by side in one run: precisions and doors in one table.

For each model (say an fp32 export and its `--int8` export), on the same machine and thread budget:
  1. offline: the service's own runner called directly on preprocessed uint8 batches, one session at
     several batch sizes, and the service's CPU layout under load (lanes: batches on single-thread
     sessions at once); the best of them is the bar;
  2. under load: `simpool-serve` (one server per model, serving only it) under N concurrent clients
     per door, one 500x375 JPEG per request, sent by Debian's `hey`. The bar is measured again right
     before every row (this machine's speed drifts by several % over minutes) and each row's ratio
     is against it; rounds repeat the whole sequence, models and doors in turns, and the table gives
     the median ratio with its range;
  3. a lone request: one client, the server idle between requests; in each round every door sends one
     request and the graph runs batch 1, each after the same idle gap, in a rotating order, so the
     overhead (the median of the differences within rounds) compares like with like, and so do two
     doors (gRPC against REST multipart and v2 binary);
  4. with --tracing-door, a second server per model with OpenTelemetry tracing on at 100 % sampling,
     exporting OTLP/HTTP to a receiver in this process that discards what it gets: that door through
     it is one more row, in the same rounds, so its cost per request is paired with tracing off.

    python bench/run.py --model-dir model_repository --models resnet50_simpool,resnet50_simpool_int8
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import onnxruntime as ort
from launch import Served, serve
from traffic import DOOR_NAMES, Door, OneClient, bench_image, doors, hey

from simpool_serve.service.engine import ThreadPlan
from simpool_serve.service.engine.runner import OnnxRunner
from simpool_serve.service.settings import Settings
from simpool_serve.spec import Manifest, load_manifest


@dataclass(frozen=True)
class Offline:
    """A graph's offline table: images/s of one session per batch size, and of the lanes; `layout`
    is the best of them, which becomes the bar."""

    by_batch: dict[int, float]
    lanes_ips: float | None
    layout: tuple[str, int]  # ("solo", batch) or ("lanes", lane batch)

    @property
    def bar(self) -> float:
        return max([*self.by_batch.values(), self.lanes_ips or 0.0])


@dataclass(frozen=True)
class Graph:
    """One model's graph in this process: a session on all threads and, with lanes, one per lane."""

    name: str
    manifest: Manifest
    solo: OnnxRunner
    lane: OnnxRunner | None
    lanes: int
    lane_batch: int

    def pixels(self, batch: int) -> np.ndarray:
        s = self.manifest.input_size
        return np.random.default_rng(0).integers(0, 256, (batch, s, s, 3), dtype=np.uint8)

    def solo_ips(self, batch: int, seconds: float) -> float:
        x = self.pixels(batch)
        self.solo.run(x)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            self.solo.run(x)
            n += batch
        return n / (time.perf_counter() - t0)

    def lanes_now(self, seconds: float) -> float:
        """`lanes` threads calling the lane session at once, as the batcher does under load."""
        assert self.lane is not None
        lane, x = self.lane, self.pixels(self.lane_batch)
        lane.run(x)
        counts = [0] * self.lanes
        start = time.perf_counter()

        def work(i: int) -> None:
            while time.perf_counter() - start < seconds:
                lane.run(x)
                counts[i] += len(x)

        workers = [threading.Thread(target=work, args=(i,)) for i in range(self.lanes)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return sum(counts) / (time.perf_counter() - start)

    def measure(self, batch_sizes: list[int], seconds: float) -> Offline:
        """The offline table."""
        by_batch = {bs: self.solo_ips(bs, seconds) for bs in batch_sizes}
        best = max(by_batch, key=lambda b: by_batch[b])
        lanes_ips = self.lanes_now(seconds) if self.lane is not None else None
        if lanes_ips is not None and lanes_ips > by_batch[best]:
            return Offline(by_batch, lanes_ips, ("lanes", self.lane_batch))
        return Offline(by_batch, lanes_ips, ("solo", best))

    def bar_now(self, offline: Offline, seconds: float) -> tuple[float, float | None]:
        """The bar's layout measured again for the row about to run: images/s, and the CPU the graph
        took per image (core-ms, this process's CPU time over the images)."""
        if not seconds:
            return offline.bar, None
        kind, batch = offline.layout
        cpu = time.process_time()
        ips = self.lanes_now(seconds) if kind == "lanes" else self.solo_ips(batch, seconds)
        return ips, (time.process_time() - cpu) * 1e3 / (ips * seconds)

    def batch1_ms(self) -> float:
        x = self.pixels(1)
        start = time.perf_counter()
        self.solo.run(x)
        return (time.perf_counter() - start) * 1e3


TRACED = " + tracing"  # a door's row through the traced server


class Receiver:
    """An OTLP/HTTP receiver on loopback that answers every export with an empty success and keeps
    only counts (the traced server's exporter does all its work; nothing is decoded here)."""

    def __init__(self) -> None:
        self.exports = self.bytes = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                size = int(self.headers.get("content-length") or 0)
                self.rfile.read(size)
                receiver.exports += 1
                receiver.bytes += size
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")  # an empty ExportTraceServiceResponse
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def env(self) -> dict[str, str]:
        """A server's settings for tracing every request to this receiver."""
        return {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_TRACES_SAMPLER": "always_on",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.url,
        }


@contextlib.contextmanager
def servers(
    model_dir: Path, names: list[str], env: dict[str, str], tmp: Path, receiver: Receiver | None = None
) -> Iterator[dict[str, Served]]:
    """One server per model, each with a repository holding only that model (its own batcher and
    pool serve only it, as when it is served alone); with a receiver, a traced one too (`name + TRACED`)."""
    with contextlib.ExitStack() as stack:
        out = {}
        for name in names:
            repo = tmp / f"repo-{name}"
            repo.mkdir()
            (repo / name).symlink_to((model_dir / name).resolve())
            out[name] = stack.enter_context(serve(repo, env, tmp / f"serve-{name}.log"))
            if receiver is not None:
                log = tmp / f"serve-{name}-traced.log"
                out[name + TRACED] = stack.enter_context(serve(repo, {**env, **receiver.env()}, log))
        yield out


def server_of(up: dict[str, Served], name: str, door: Door) -> Served:
    """The server a row goes to: the traced one for a door's tracing row."""
    return up[name + TRACED] if door.name.endswith(TRACED) else up[name]


def send(server: Served, door: Door, body: Path, clients: int, seconds: float) -> dict:
    """`clients` concurrent clients of `door` for `seconds` (`hey`, or the gRPC load generator)."""
    return hey(server.url, door, body, clients, seconds, grpc_address=server.grpc_address)


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of a process so far (Linux /proc; empty elsewhere)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
                out[tid] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return out


def cpu_split(
    pid: int, before: dict[str, float], after: dict[str, float], images: int
) -> tuple[float | None, float | None]:
    """The server's CPU per image between two readings (core-ms): its event loop (the main thread)
    and every other thread (decoding and inference)."""
    if not after or not images:
        return None, None
    spent = {tid: cpu - before.get(tid, 0.0) for tid, cpu in after.items()}
    loop = spent.get(str(pid), 0.0)
    return loop * 1e3 / images, (sum(spent.values()) - loop) * 1e3 / images


def lone(graph: Graph, clients: dict[str, OneClient], doors: list[Door], pairs: int, gap_s: float) -> dict:
    """`pairs` rounds; in each, every door sends one lone request (`clients[door.name]`) and the graph
    runs batch 1, each after the same idle gap, in a rotating order. Per door: the medians of its
    time and of its difference to the graph's run of the same round, and the paired differences to
    every other door."""
    names = ["graph", *(d.name for d in doors)]
    by_name = {d.name: d for d in doors}
    rounds: list[dict[str, float]] = []
    for i in range(pairs + 2):  # the first two rounds warm every path
        got = {}
        for name in names[i % len(names) :] + names[: i % len(names)]:
            time.sleep(gap_s)
            got[name] = graph.batch1_ms() if name == "graph" else clients[name].seconds(by_name[name]) * 1e3
        if i >= 2:
            rounds.append(got)
    out = {}
    for d in doors:
        out[d.name] = {
            "graph_ms": statistics.median(r["graph"] for r in rounds),
            "lone_ms": statistics.median(r[d.name] for r in rounds),
            "lone_p90_ms": float(np.percentile([r[d.name] for r in rounds], 90)),
            "overhead_ms": statistics.median(r[d.name] - r["graph"] for r in rounds),
            "minus": {
                other.name: [r[d.name] - r[other.name] for r in rounds] for other in doors if other is not d
            },
        }
    return out


def _loaded_cells(rows: list[dict] | None, clients: int | None) -> str:
    if not rows:
        return " |  |  |  |  |  |  | "
    ratios = [r["ratio"] for r in rows]
    return (
        f"{clients} | {statistics.median(r['offline'] for r in rows):.1f} "
        f"| {statistics.median(r['images_per_s'] for r in rows):.1f} "
        f"| {statistics.median(ratios):.3f} ({min(ratios):.2f}-{max(ratios):.2f}) "
        f"| {statistics.median(r['p50_ms'] for r in rows):.0f} "
        f"| {statistics.median(r['p99_ms'] for r in rows):.0f} "
        f"| {_median(r['graph_cpu_ms'] for r in rows)} "
        f"| {_median(r['loop_cpu_ms'] + r['other_cpu_ms'] for r in rows if r['loop_cpu_ms'] is not None)} "
        f"({_median(r['loop_cpu_ms'] for r in rows)})"
    )


def _median(values: Iterable[float | None]) -> str:
    known = [v for v in values if v is not None]
    return f"{statistics.median(known):.1f}" if known else "-"


def _lone_cells(one: dict | None) -> str:
    if not one:
        return " |  | "
    return f"{one['lone_ms']:.1f} | {one['graph_ms']:.1f} | {one['overhead_ms']:+.1f}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=Path("model_repository"))
    p.add_argument("--models", default="resnet50_simpool", help="comma-separated model folders")
    p.add_argument("--doors", default="REST JSON", help=f"comma-separated, or 'all': {', '.join(DOOR_NAMES)}")
    p.add_argument("--concurrency", default="32", help="clients, comma-separated")
    p.add_argument("--rounds", type=int, default=3, help="times the whole sequence of rows runs")
    p.add_argument("--seconds", type=float, default=10.0, help="load duration of each row")
    p.add_argument("--offline-seconds", type=float, default=4.0, help="each offline measurement")
    p.add_argument("--recheck-seconds", type=float, default=4.0, help="bar before each row; 0: no")
    p.add_argument("--batch-sizes", default="1,2,4,8")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="intra-op threads, both sides")
    p.add_argument("--lanes", type=int, help="inference lanes, both sides (default: the service's choice)")
    p.add_argument("--lane-batch", type=int, default=4, help="batch size of the offline lanes")
    p.add_argument("--provider", default="CPUExecutionProvider", help="both sides (CUDA: add --lanes 1)")
    p.add_argument("--lone-pairs", type=int, default=20, help="lone requests per door (0: none)")
    p.add_argument("--lone-gap", type=float, default=0.25, help="idle seconds before each lone request")
    p.add_argument(
        "--tracing-door", default="", help="also this door through a server tracing 100 %% of requests"
    )
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra service setting")
    return p.parse_args(argv)


@dataclass
class Run:
    """What one benchmark run measures, worked out from the command line once."""

    args: argparse.Namespace
    names: list[str]  # model folders
    door_names: list[str]
    clients: list[int]  # concurrency levels
    lane_threads: int

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Run:
        """Checks the command line; `args.lanes` becomes the service's own choice when not given."""
        if shutil.which("hey") is None:
            raise SystemExit("bench needs `hey` (Debian: apt-get install hey)")
        door_names = DOOR_NAMES if args.doors == "all" else [d.strip() for d in args.doors.split(",")]
        if args.tracing_door:
            door_names = [*door_names, args.tracing_door + TRACED]
        unknown = sorted({d.removesuffix(TRACED) for d in door_names} - set(DOOR_NAMES))
        if unknown:
            raise SystemExit(f"unknown doors {unknown}; known: {DOOR_NAMES}")
        if args.lanes is None:
            plan = ThreadPlan.resolve(Settings(providers=[args.provider], intra_op_threads=args.threads))
            args.lanes = plan.lanes
        return cls(
            args=args,
            names=[m for m in args.models.split(",") if m],
            door_names=door_names,
            clients=[int(c) for c in args.concurrency.split(",")],
            lane_threads=max(1, args.threads // args.lanes),
        )

    def service_env(self) -> dict[str, str]:
        """The servers' settings: the same provider and thread budget as the offline side."""
        a = self.args
        return {
            "SIMPOOL_PROVIDERS": a.provider,
            "SIMPOOL_INTRA_OP_THREADS": str(a.threads),
            "SIMPOOL_INFERENCE_LANES": str(a.lanes),
            "SIMPOOL_MAX_QUEUE": "1024",
            **dict(kv.split("=", 1) for kv in a.env),
        }


@dataclass
class Results:
    """Every figure of a run: the graphs and their offline tables, the loaded rows, the lone requests."""

    graphs: dict[str, Graph]
    offline: dict[str, Offline]
    loaded: dict[tuple[str, str, int], list[dict]] = field(default_factory=dict)
    lones: dict[tuple[str, str], dict] = field(default_factory=dict)
    receiver: Receiver | None = None


def open_graphs(run: Run) -> Results:
    """Each model's sessions in this process, and its offline table."""
    a = run.args
    graphs: dict[str, Graph] = {}
    offline: dict[str, Offline] = {}
    for name in run.names:
        folder = a.model_dir / name
        manifest = load_manifest(folder / "manifest.json")
        solo = OnnxRunner(folder / "model.onnx", [a.provider], a.threads)
        lane = OnnxRunner(folder / "model.onnx", [a.provider], run.lane_threads) if a.lanes > 1 else None
        graphs[name] = Graph(name, manifest, solo, lane, a.lanes, a.lane_batch)
        offline[name] = graphs[name].measure([int(b) for b in a.batch_sizes.split(",")], a.offline_seconds)
    return Results(graphs, offline)


def rows_of(model: str, jpeg: bytes, names: list[str]) -> list[Door]:
    """The model's rows in `names`' order: each door, and a door's tracing row (the same request)."""
    table = {d.name: d for d in doors(model, jpeg)}
    return [dataclasses.replace(table[n.removesuffix(TRACED)], name=n) for n in names]


def write_bodies(table: dict[str, list[Door]], tmp: Path) -> dict[tuple[str, str], Path]:
    """Each door's request body as a file, for `hey`."""
    bodies: dict[tuple[str, str], Path] = {}
    for name, ds in table.items():
        for i, door in enumerate(ds):
            bodies[name, door.name] = tmp / f"body-{name}-{i}"
            bodies[name, door.name].write_bytes(door.body)
    return bodies


def check_doors(
    up: dict[str, Served], table: dict[str, list[Door]], bodies: dict[tuple[str, str], Path], tmp: Path
) -> None:
    """Every door answers before anything is measured."""
    for name, ds in table.items():
        for door in ds:
            if send(server_of(up, name, door), door, bodies[name, door.name], 4, 2.0)["ok"] == 0:
                raise SystemExit(f"{name} {door.name}: no answer; see the logs in {tmp}")


def loaded_row(run: Run, res: Results, server: Served, name: str, door: Door, body: Path, c: int) -> dict:
    """One row under load: the bar measured just before, then `c` clients for `--seconds`."""
    bar, graph_cpu = res.graphs[name].bar_now(res.offline[name], run.args.recheck_seconds)
    before = thread_cpu(server.pid)
    row = send(server, door, body, c, run.args.seconds)
    loop, rest = cpu_split(server.pid, before, thread_cpu(server.pid), row["ok"])
    row.update(offline=bar, ratio=row["images_per_s"] / bar, graph_cpu_ms=graph_cpu)
    row.update(loop_cpu_ms=loop, other_cpu_ms=rest)
    return row


def run_rounds(
    run: Run,
    res: Results,
    up: dict[str, Served],
    table: dict[str, list[Door]],
    bodies: dict[tuple[str, str], Path],
) -> None:
    """The rounds: models and doors in turns, a different door first each round."""
    for r in range(run.args.rounds):
        for name, ds in table.items():
            for door in ds[r % len(ds) :] + ds[: r % len(ds)]:
                for c in run.clients:
                    server = server_of(up, name, door)
                    row = loaded_row(run, res, server, name, door, bodies[name, door.name], c)
                    res.loaded.setdefault((name, door.name, c), []).append(row)


def run_lones(run: Run, res: Results, up: dict[str, Served], table: dict[str, list[Door]]) -> None:
    for name, ds in table.items():
        clients = {key: OneClient(served.url, served.grpc_address) for key, served in up.items()}
        by_door = {d.name: clients[name + TRACED if d.name.endswith(TRACED) else name] for d in ds}
        for door_name, figures in lone(
            res.graphs[name], by_door, ds, run.args.lone_pairs, run.args.lone_gap
        ).items():
            res.lones[name, door_name] = figures
        for client in clients.values():
            client.close()


def print_offline(run: Run, res: Results) -> None:
    a = run.args
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; onnxruntime "
        f"{ort.__version__}; {a.provider}; intra-op threads {a.threads}, lanes {a.lanes}\n"
    )
    for name, g in res.graphs.items():
        o = res.offline[name]
        solo = ", ".join(f"batch {b}: {v:.1f}" for b, v in o.by_batch.items())
        if o.lanes_ips is not None:
            solo += (
                f"; {g.lanes} lanes x {run.lane_threads} thread(s), batch {g.lane_batch}: {o.lanes_ips:.1f}"
            )
        print(f"offline {name} ({g.manifest.precision or 'fp32'}), images/s: {solo}")


def print_table(run: Run, res: Results, table: dict[str, list[Door]]) -> None:
    a, clients = run.args, run.clients
    print(
        f"\nunder load: {a.rounds} round(s) of {a.seconds:g} s per row, each against the bar measured "
        f"just before it ({a.recheck_seconds:g} s); lone: {a.lone_pairs} requests, "
        f"{a.lone_gap:g} s idle before each, paired with the graph's batch-1 run\n"
    )
    print(
        "| model | precision | door | clients | offline images/s | service images/s "
        "| service / offline (range) | p50 ms | p99 ms | graph CPU ms/image | service CPU ms/image (loop) "
        "| lone p50 ms | graph batch-1 ms | lone overhead ms |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, ds in table.items():
        precision = res.graphs[name].manifest.precision or "fp32"
        for door in ds:
            for c in clients if a.rounds else [None]:
                cells = _loaded_cells(res.loaded.get((name, door.name, c)), c)
                one = res.lones.get((name, door.name)) if c in (clients[0], None) else None
                print(f"| {name} | {precision} | {door.name} | {cells} | {_lone_cells(one)} |")
    print_paired(run, res, table)


PAIRED = ("REST multipart", "v2 binary")  # what the gRPC door and a tracing row are compared with


def print_paired(run: Run, res: Results, table: dict[str, list[Door]]) -> None:
    """Lone requests, door against door within each round: the median difference and its quartiles;
    under load, a tracing row against its door in the same round."""
    if not res.lones:
        return
    print("\nlone requests, paired within rounds (ms; median, quartiles in brackets):\n")
    print("| model | door | against | difference ms |")
    print("|---|---|---|---:|")
    for name, ds in table.items():
        for door in ds:
            minus = res.lones[name, door.name]["minus"]
            against = [door.name.removesuffix(TRACED)] if door.name.endswith(TRACED) else []
            against += [p for p in PAIRED if door.name == "gRPC"]
            for other in against:
                q1, q2, q3 = np.percentile(minus[other], [25, 50, 75])
                print(f"| {name} | {door.name} | {other} | {q2:+.2f} ({q1:+.2f} to {q3:+.2f}) |")
    for name, ds in table.items():
        for door in ds:
            if not door.name.endswith(TRACED) or not run.args.rounds:
                continue
            plain = door.name.removesuffix(TRACED)
            for c in run.clients:
                on, off = res.loaded[name, door.name, c], res.loaded[name, plain, c]
                ips = [a["images_per_s"] / b["images_per_s"] for a, b in zip(on, off, strict=True)]
                cpu = [
                    (a["loop_cpu_ms"] + a["other_cpu_ms"]) - (b["loop_cpu_ms"] + b["other_cpu_ms"])
                    for a, b in zip(on, off, strict=True)
                    if a["loop_cpu_ms"] is not None and b["loop_cpu_ms"] is not None
                ]
                print(
                    f"\n{name}, {c} clients, tracing on / off per round: images/s "
                    + ", ".join(f"{v:.3f}" for v in ips)
                    + "; server CPU ms/image on - off: "
                    + ", ".join(f"{v:+.2f}" for v in cpu)
                )
    if res.receiver is not None:
        print(f"\nOTLP receiver: {res.receiver.exports} exports, {res.receiver.bytes / 1e6:.1f} MB")


def write_json(path: Path, res: Results) -> None:
    figures = {
        "offline": {n: {"by_batch": o.by_batch, "lanes": o.lanes_ips} for n, o in res.offline.items()},
        "loaded": [
            {"model": n, "door": d, "clients": c, "rounds": rows} for (n, d, c), rows in res.loaded.items()
        ],
        "lone": [{"model": n, "door": d, **v} for (n, d), v in res.lones.items()],
    }
    path.write_text(json.dumps(figures, indent=2))


def main(argv: list[str] | None = None) -> int:
    run = Run.from_args(parse_args(argv))
    res = open_graphs(run)
    tmp = Path(tempfile.mkdtemp(prefix="simpool-bench-"))
    jpeg = bench_image()
    table = {name: rows_of(name, jpeg, run.door_names) for name in run.names}
    bodies = write_bodies(table, tmp)
    res.receiver = Receiver() if run.args.tracing_door else None
    with servers(run.args.model_dir, run.names, run.service_env(), tmp, res.receiver) as up:
        check_doors(up, table, bodies, tmp)
        run_rounds(run, res, up, table, bodies)
        if run.args.lone_pairs:
            run_lones(run, res, up, table)
    print_offline(run, res)
    print_table(run, res, table)
    if run.args.json:
        write_json(run.args.json, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
