"""Checks a running compose stack from the outside, as its users and operators meet it (run.sh runs it).

Healthchecks: the compose file's own probes, run through `podman healthcheck run` (podman schedules
them with systemd timers, which this machine lacks). Requests: through nginx on the published port
only. Monitoring: the stack's own Prometheus, over its HTTP API. Shutdown: SIGTERM to one replica
while clients keep sending; every request must be answered, the replica's accepted ones by itself.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import numpy as np
import skimage.data
from PIL import Image

# The compose file's default models, as `make models` exports them: name -> embedding dim.
MODELS = {"resnet50_simpool": 2048, "vit_small_simpool": 384}
LB, PROMETHEUS = "http://127.0.0.1:8000", "http://127.0.0.1:9090"  # the stack's default ports
# One nginx access log line (deploy/nginx/simpool.conf's `simpool` format).
LB_LINE = re.compile(
    r'"(?P<request>[^"]*)" (?P<status>\d+) .*upstream=(?P<addrs>.*?) upstream_status=(?P<codes>.*?) '
    r"upstream_time=.* msec=(?P<msec>[\d.]+)"
)


def podman(*args: str, check: bool = True) -> str:
    return subprocess.run(["podman", *args], check=check, capture_output=True, text=True, timeout=180).stdout


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    service: str

    def ip(self) -> str:
        networks = json.loads(podman("inspect", "--format", "{{json .NetworkSettings.Networks}}", self.id))
        (net,) = networks.values()
        return str(net["IPAddress"])

    def state(self) -> dict:
        return json.loads(podman("inspect", "--format", "{{json .State}}", self.id))

    def logs(self) -> str:
        proc = subprocess.run(["podman", "logs", self.id], capture_output=True, text=True, timeout=60)
        return proc.stdout + proc.stderr


def containers(project: str, service: str | None = None) -> list[Container]:
    filters = ["--filter", f"label=com.docker.compose.project={project}"]
    if service:
        filters += ["--filter", f"label=com.docker.compose.service={service}"]
    rows = json.loads(podman("ps", "--all", "--format", "json", *filters) or "[]")
    found = [Container(r["Id"], r["Names"][0], r["Labels"]["com.docker.compose.service"]) for r in rows]
    return sorted(found, key=lambda c: c.name)


def wait_until(what: str, probe: Callable[[], object], timeout: float, every: float = 1.0) -> object:
    """probe() until it returns something truthy; its last exception or value is shown on timeout."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            if result := probe():
                return result
            last = result
        except (httpx.HTTPError, AssertionError, KeyError, ValueError) as exc:
            last = exc
        time.sleep(every)
    raise SystemExit(f"compose-test: timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def wait_healthy(project: str, timeout: float) -> None:
    start = time.monotonic()
    for c in containers(project):

        def healthy(c: Container = c) -> bool:
            return subprocess.run(["podman", "healthcheck", "run", c.id], capture_output=True).returncode == 0

        wait_until(f"{c.name}'s healthcheck", healthy, timeout, every=2)
        print(f"  {c.name}: healthy ({time.monotonic() - start:.0f} s)")


def jpeg(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).convert("RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


PHOTOS = {name: jpeg(getattr(skimage.data, name)()) for name in ("astronaut", "coffee", "chelsea")}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def check_api(lb: httpx.Client) -> dict[str, int]:
    """One request of each kind through nginx; returns the 200 answers sent per endpoint."""
    sent = {"/embed": 0, "/attention": 0, "/classify": 0}
    listed = lb.get("/models").raise_for_status().json()["models"]
    assert {m["name"] for m in listed} == set(MODELS), listed
    default = next(m["name"] for m in listed if m["default"])
    assert default == "resnet50_simpool", default

    photos = list(PHOTOS.values())
    for model, dim in MODELS.items():
        r = lb.post("/embed", json={"images": [b64(p) for p in photos], "model": model}).raise_for_status()
        body = r.json()
        emb = np.asarray(body["embeddings"], dtype=np.float32)
        assert body["model"] == model and body["dim"] == dim and emb.shape == (len(photos), dim), body.keys()
        assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4) and body["fingerprint"]
        assert not np.allclose(emb[0], emb[1]), "two photographs, one embedding"
        sent["/embed"] += 1
    dims = list(MODELS.values())
    print(f"  /embed: {len(photos)} photographs x {len(MODELS)} models, L2-normalised, dims {dims}")

    coffee = skimage.data.coffee()
    r = lb.post("/attention", params={"format": "png"}, files={"images": ("coffee.jpg", PHOTOS["coffee"])})
    r.raise_for_status()
    assert r.headers["content-type"] == "image/png", r.headers
    overlay = Image.open(io.BytesIO(r.content))
    assert overlay.format == "PNG" and overlay.size == (coffee.shape[1], coffee.shape[0]), overlay.size
    sent["/attention"] += 1
    body = lb.post("/attention", json={"images": [b64(PHOTOS["chelsea"])]}).raise_for_status().json()
    maps = np.asarray(body["attention"])
    assert maps.shape == (1, *body["grid"]) and np.isclose(maps.sum(), 1, atol=1e-3), maps.shape
    sent["/attention"] += 1
    size = "x".join(map(str, overlay.size))
    print(f"  /attention?format=png: a {size} PNG overlay of the {size} photograph; JSON grid {body['grid']}")

    r = lb.post("/classify", json={"images": [b64(p) for p in photos], "top_k": 3})
    body = r.raise_for_status().json()
    for preds in body["predictions"]:
        scores = [p["score"] for p in preds]
        assert len(preds) == 3 and scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-5
    sent["/classify"] += 1
    print(f"  /classify: top-3 of {len(photos)} photographs")
    return sent


def check_prometheus(prom: httpx.Client, replicas: list[Container], sent: dict[str, int]) -> None:
    def query(q: str) -> list[dict]:
        body = prom.get("/api/v1/query", params={"query": q}).raise_for_status().json()
        assert body["status"] == "success", body
        return body["data"]["result"]

    want = {f"{c.ip()}:8000" for c in replicas}

    def every_replica_up() -> bool:
        up = {r["metric"]["instance"]: r["value"][1] for r in query('up{job="simpool"}')}
        assert set(up) == want, f"targets {sorted(up)}, replicas {sorted(want)}"
        return all(v == "1" for v in up.values())

    wait_until("Prometheus to scrape every replica", every_replica_up, timeout=120, every=2)
    print(f'  up{{job="simpool"}} == 1 for {len(want)} replicas: {", ".join(sorted(want))}')

    def counted() -> dict[str, float] | None:
        rows = query('sum by (endpoint) (simpool_requests_total{code="200"})')
        got = {r["metric"]["endpoint"]: float(r["value"][1]) for r in rows}
        return got if all(got.get(e, 0) >= n for e, n in sent.items()) else None

    got = wait_until("Prometheus to count the requests sent", counted, timeout=90, every=2)
    assert isinstance(got, dict)
    print(
        '  simpool_requests_total{code="200"} summed over replicas: '
        + ", ".join(f"{e} {got[e]:.0f} (sent {n})" for e, n in sent.items())
    )


@dataclass
class Outcome:
    start: float
    end: float
    status: int | None
    error: str = ""


def check_sigterm(base_url: str, replicas: list[Container], lb_container: Container) -> None:
    """SIGTERM to one replica under load: no request is lost; the replica answers what it accepted."""
    victim, other = replicas[0], replicas[1]
    victim_ip, other_ip = victim.ip(), other.ip()
    images = [b64(p) for p in PHOTOS.values()] * 2
    outcomes: list[Outcome] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=base_url, timeout=120) as http:
            while not stop.is_set():
                t = time.time()
                try:
                    r = http.post("/embed", json={"images": images})
                    detail = "" if r.is_success else r.text[:200]
                    outcomes.append(Outcome(t, time.time(), r.status_code, detail))
                except httpx.HTTPError as exc:
                    outcomes.append(Outcome(t, time.time(), None, repr(exc)))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(6)]
    for t in threads:
        t.start()
    wait_until("traffic to flow", lambda: len(outcomes) >= 12, timeout=120, every=0.2)
    started_at = victim.state()["StartedAt"]
    t_kill = time.time()
    podman("kill", "--signal", "TERM", victim.id)

    def victim_exited() -> bool:
        s = victim.state()
        return s["Status"] != "running" or s["StartedAt"] != started_at  # exited, or already restarted

    wait_until(f"{victim.name} to exit after SIGTERM", victim_exited, timeout=90, every=0.2)
    t_exit = time.time()
    time.sleep(3)  # traffic goes on, to the other replica only
    stop.set()
    for t in threads:
        t.join(timeout=150)

    failed = [o for o in outcomes if o.status != 200]
    assert not failed, f"{len(failed)} of {len(outcomes)} requests failed: {failed[:3]}"
    logs = victim.logs()
    assert "finishing accepted requests" in logs, f"{victim.name} did not log the SIGTERM:\n{logs[-2000:]}"
    assert "Cancel" not in logs, f"{victim.name} cancelled accepted requests:\n{logs[-2000:]}"
    state = victim.state()
    if state["Status"] != "running":
        assert state["ExitCode"] == 0, f"{victim.name} exited {state['ExitCode']}"

    # nginx's log says who answered each request, and every try it made.
    drained = rerouted = to_other = 0
    lb_logs = lb_container.logs()
    for m in LB_LINE.finditer(lb_logs):
        if float(m["msec"]) < t_kill or "/embed" not in m["request"]:
            continue
        tries = list(zip(m["addrs"].split(", "), m["codes"].split(", "), strict=True))
        drained += (f"{victim_ip}:8000", "200") in tries
        to_other += (f"{other_ip}:8000", "200") in tries
        rerouted += any(a.startswith(victim_ip) and c != "200" for a, c in tries)
    lost = [
        line
        for line in lb_logs.splitlines()
        if victim_ip in line and re.search(r"prematurely closed|reset by peer|timed out", line)
    ]
    assert not lost, "nginx saw the replica drop accepted requests:\n" + "\n".join(lost[:5])
    assert drained >= 1, f"no request was in flight at {victim.name} when it got SIGTERM"
    assert to_other >= 1, f"no request went to {other.name} after the SIGTERM"
    print(
        f"  SIGTERM to {victim.name} under 6 clients: it exited {t_exit - t_kill:.1f} s later; "
        f"{len(outcomes)} requests, all 200. After the signal: {drained} answered by {victim.name} "
        f"(accepted before it), {to_other} by {other.name}, {rerouted} retried by nginx after a refused "
        "connection; no connection dropped mid-request"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--project", required=True, help="compose project name")
    p.add_argument("--replicas", type=int, required=True, help="simpool replicas the stack should have")
    p.add_argument("--sigterm", action="store_true", help="then SIGTERM one replica under load (needs 2)")
    args = p.parse_args()

    wait_healthy(args.project, timeout=300)
    replicas = containers(args.project, "simpool")
    (lb_container,) = containers(args.project, "lb")
    assert len(replicas) == args.replicas, [c.name for c in replicas]
    with httpx.Client(base_url=LB, timeout=120) as lb:
        sent = check_api(lb)
    with httpx.Client(base_url=PROMETHEUS, timeout=30) as prom:
        check_prometheus(prom, replicas, sent)
    if args.sigterm:
        check_sigterm(LB, replicas, lb_container)
    return 0


if __name__ == "__main__":
    sys.exit(main())
