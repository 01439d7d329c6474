"""What tracing every request costs the server, per request: two servers, tracing off and on.

The server with tracing on exports OTLP/HTTP, sampling 100 %, to a receiver in this process that
answers and discards. One client sends lone REST multipart requests to each server in alternating
blocks; per block, the server's CPU (all threads, from /proc, the exporter's flush included) and the
median latency. With a tiny graph (tests/helpers/tiny_model.py writes one) the graph's own CPU does
not drown what tracing adds; `bench/run.py --tracing-door` measures the same under load on a real one.

    python bench/tracing_cost.py --model-dir DIR --model NAME --blocks 10 --requests 100
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from launch import serve
from run import Receiver
from traffic import OneClient, bench_image, doors


def process_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--blocks", type=int, default=10, help="blocks per server, alternating")
    p.add_argument("--requests", type=int, default=100, help="lone requests per block")
    args = p.parse_args(argv)
    receiver = Receiver()
    (door,) = [d for d in doors(args.model, bench_image()) if d.name == "REST multipart"]
    with (
        tempfile.TemporaryDirectory() as tmp,
        serve(args.model_dir, {}, Path(tmp) / "off.log") as off,
        serve(args.model_dir, receiver.env(), Path(tmp) / "on.log") as on,
    ):
        servers = {"off": off, "on": on}
        clients = {k: OneClient(s.url) for k, s in servers.items()}
        for client in clients.values():  # warm both
            for _ in range(20):
                client.seconds(door)
        cpu: dict[str, list[float]] = {"off": [], "on": []}
        latency: dict[str, list[float]] = {"off": [], "on": []}
        for block in range(args.blocks):
            for k in ("off", "on") if block % 2 else ("on", "off"):
                before = process_cpu(servers[k].pid)
                times = [clients[k].seconds(door) * 1e3 for _ in range(args.requests)]
                time.sleep(0.5)  # the exporter's batch flush lands in this block
                cpu[k].append((process_cpu(servers[k].pid) - before) * 1e3 / args.requests)
                latency[k].append(statistics.median(times))
    med = {k: (statistics.median(cpu[k]), statistics.median(latency[k])) for k in cpu}
    cost = [a - b for a, b in zip(cpu["on"], cpu["off"], strict=True)]
    slower = [a - b for a, b in zip(latency["on"], latency["off"], strict=True)]
    print(f"model {args.model}: {args.blocks} blocks of {args.requests} lone requests per server")
    print(f"server CPU ms/request, off: {med['off'][0]:.2f}, on: {med['on'][0]:.2f}")
    print(
        "  on - off per block: "
        + ", ".join(f"{v:+.2f}" for v in cost)
        + f" (median {statistics.median(cost):+.2f})"
    )
    print(f"latency p50 ms, off: {med['off'][1]:.2f}, on: {med['on'][1]:.2f}")
    print(
        "  on - off per block: "
        + ", ".join(f"{v:+.2f}" for v in slower)
        + f" (median {statistics.median(slower):+.2f})"
    )
    print(f"OTLP receiver: {receiver.exports} exports, {receiver.bytes / 1e3:.0f} kB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
