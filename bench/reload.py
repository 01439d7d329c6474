"""A reload's timeline under traffic: how long a new version takes to be verified, warmed and swapped
in, when its first answer comes, and when the old version has drained and closed.

The server polls a copy of the model directory (SIMPOOL_MODEL_CONTROL=poll); clients post a photograph
to the model without pause; the bench writes a new version of it as `simpool-export` does (manifest
removed, graph rewritten, manifest renamed into place) and reads the timeline from the server's log
and the answers' fingerprints. Each round alternates two versions of the graph (another doc_string:
other bytes, the same computation). Every answer must be 200.

    python bench/reload.py --model-dir model_repository --model resnet50_simpool --rounds 3
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
import onnx
from launch import serve
from PIL import Image


def photo() -> bytes:
    import skimage.data as data

    buf = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buf, "JPEG", quality=90)
    return buf.getvalue()


class Clients:
    """Posting without pause; each answer as (sent, answered, status, fingerprint) on the wall clock."""

    def __init__(self, url: str, model: str, image: bytes, n: int) -> None:
        self.answers: list[tuple[float, float, int, str]] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(url, model, image), daemon=True) for _ in range(n)
        ]

    def _run(self, url: str, model: str, image: bytes) -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            while not self._stop.is_set():
                sent = time.time()
                r = http.post("/embed", files={"images": ("p.jpg", image)}, data={"model": model})
                fingerprint = r.json().get("fingerprint", "") if r.status_code == 200 else ""
                self.answers.append((sent, time.time(), r.status_code, fingerprint))

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=120)


def write_version(
    folder: Path, graph: onnx.ModelProto, manifest: dict, tag: str, pause: float = 0.0
) -> tuple[float, str]:
    """A new version of the folder's model (`graph` with `tag` as its doc_string: other bytes, the same
    computation), written as an export writes it: manifest removed, graph rewritten in place, `pause`,
    then the new manifest renamed into place. Returns when it landed and the graph's sha256."""
    graph.doc_string = tag
    data = graph.SerializeToString()
    sha = hashlib.sha256(data).hexdigest()
    (folder / "manifest.json").unlink()
    (folder / "model.onnx").write_bytes(data)
    time.sleep(pause)
    partial = folder / ".manifest.json.partial"
    partial.write_text(json.dumps({**manifest, "onnx_sha256": sha}))
    os.replace(partial, folder / "manifest.json")
    return time.time(), sha


def log_events(log: Path, model: str, since: float) -> dict[str, dict]:
    """The first of each lifecycle line for `model` at or after `since` (wall clock)."""
    wanted = ("model verified and warmed", "model version swapped in", "model version closed")
    found: dict[str, dict] = {}
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        event = json.loads(line)
        if event.get("model") != model or event.get("msg") not in wanted or event["msg"] in found:
            continue
        ts = datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()
        if ts >= since:
            found[event["msg"]] = {**event, "t": ts}
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=Path("model_repository"))
    p.add_argument("--model", default="resnet50_simpool")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--poll-s", type=float, default=1.0)
    args = p.parse_args(argv)
    image = photo()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        served = Path(tmp) / "models"
        shutil.copytree(args.model_dir / args.model, served / args.model)
        folder = served / args.model
        graph = onnx.load(folder / "model.onnx")
        manifest = json.loads((folder / "manifest.json").read_text())
        env = {"SIMPOOL_MODEL_CONTROL": "poll", "SIMPOOL_POLL_S": str(args.poll_s), "SIMPOOL_GRPC_PORT": "0",
               "SIMPOOL_PROVIDERS": os.environ.get("SIMPOOL_PROVIDERS", "CPUExecutionProvider")}  # fmt: skip
        log = Path(tmp) / "serve.log"
        with serve(served, env, log) as server:
            clients = Clients(server.url, args.model, image, args.clients)
            clients.start()
            try:
                for i in range(args.rounds):
                    time.sleep(3)
                    landed, _ = write_version(folder, graph, manifest, f"reload bench {i}")
                    deadline = time.time() + 300
                    while "model version closed" not in (events := log_events(log, args.model, landed)):
                        if time.time() > deadline:
                            raise SystemExit(f"round {i}: no swap within 300 s:\n{log.read_text()[-3000:]}")
                        time.sleep(0.2)
                    swapped = events["model version swapped in"]
                    first_new = min(
                        (a[1] for a in list(clients.answers) if a[3] == swapped["fingerprint"]), default=None
                    )
                    warmed = events["model verified and warmed"]
                    closed = events["model version closed"]
                    rows.append(
                        {
                            "verify_s": warmed["verify_seconds"],
                            "warm_s": warmed["warm_seconds"],
                            "landed_to_swapped_s": swapped["t"] - landed,
                            "first_new_answer_s": (first_new - landed) if first_new else float("nan"),
                            "drain_s": closed["drain_seconds"],
                            "close_s": closed["close_seconds"],
                        }
                    )
            finally:
                clients.stop()
    codes = sorted({a[2] for a in clients.answers})
    where = f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    print(f"reload timeline: {args.model}, {args.clients} clients, poll every {args.poll_s} s, {where}")
    print("(seconds; landed_to_* count from the new manifest's rename)")
    cols = list(rows[0])
    print("| round | " + " | ".join(cols) + " |")
    print("| ---: | " + " | ".join("---:" for _ in cols) + " |")
    for i, r in enumerate(rows):
        print(f"| {i} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |")
    print("| median | " + " | ".join(f"{statistics.median(r[c] for r in rows):.3f}" for c in cols) + " |")
    print(f"answers: {len(clients.answers)}, status codes {codes}")
    return 0 if codes == [200] else 1


if __name__ == "__main__":
    sys.exit(main())
