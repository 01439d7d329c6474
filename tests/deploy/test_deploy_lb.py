"""Scaling behind the load balancer, for real: Debian's nginx runs the repo's deploy/nginx/simpool.conf
in front of two simpool-serve replicas (requests spread, large bodies, errors passed through, a full or
stopped replica bypassed). As in Docker, nginx finds the replicas by resolving the name
`simpool` (here through a tiny DNS server on loopback that answers 127.0.0.2 and 127.0.0.3, the
replicas' addresses); only the resolver's address, the listen port and the replicas' port are
rewritten.

Skipped only where the `nginx` binary is absent (.ci/run installs it with apt)."""

from __future__ import annotations

import base64
import contextlib
import http.server
import io
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import free_port, start_server, wait_ready

REPO = Path(__file__).resolve().parents[2]
NGINX_CONF = REPO / "deploy" / "nginx" / "simpool.conf"
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
BIN = Path(sys.executable).parent
REPLICAS = ("127.0.0.2", "127.0.0.3")

pytestmark = pytest.mark.skipif(
    NGINX is None, reason="Debian's `nginx` binary is not installed (.ci/run installs it with apt)"
)


class TinyDNS:
    """Answers A queries for one name with fixed addresses (NXDOMAIN for anything else), on loopback UDP."""

    def __init__(self, name: str, addresses: tuple[str, ...]) -> None:
        self.name, self.addresses = name.lower(), addresses
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.queries = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> TinyDNS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                query, peer = self.sock.recvfrom(512)
            except TimeoutError:
                continue
            with contextlib.suppress(Exception):  # a malformed packet gets no answer
                self.sock.sendto(self._answer(query), peer)

    def _answer(self, query: bytes) -> bytes:
        (qid,) = struct.unpack("!H", query[:2])
        labels, i = [], 12
        while query[i]:
            labels.append(query[i + 1 : i + 1 + query[i]].decode().lower())
            i += 1 + query[i]
        qtype, _qclass = struct.unpack("!HH", query[i + 1 : i + 5])
        question = query[12 : i + 5]
        self.queries += 1
        if ".".join(labels) != self.name:
            return struct.pack("!HHHHHH", qid, 0x8183, 1, 0, 0, 0) + question  # NXDOMAIN
        answers = [a for a in self.addresses] if qtype == 1 else []
        head = struct.pack("!HHHHHH", qid, 0x8180, 1, len(answers), 0, 0)
        # Each answer: a pointer to the question's name, type A, class IN, TTL 5 s, 4 bytes of address.
        records = b"".join(struct.pack("!HHHIH", 0xC00C, 1, 1, 5, 4) + socket.inet_aton(a) for a in answers)
        return head + question + records


def loopback_conf(dns_port: int, lb_port: int, replica_port: int) -> str:
    """The repo's nginx template with the resolver filled in (as the nginx image's entry point does) and
    only the ports rewritten."""
    conf = NGINX_CONF.read_text()
    rewrites = [
        (r"^resolver \$\{NGINX_RESOLVER\} ", f"resolver 127.0.0.1:{dns_port} "),
        (r"^(\s*)listen 8000;", rf"\g<1>listen 127.0.0.1:{lb_port};"),
        (r"http://simpool:8000;", f"http://simpool:{replica_port};"),
        # The gRPC server block listens on loopback too, on a port of its own (not exercised here).
        (r"^(\s*)listen 8001 http2;", rf"\g<1>listen 127.0.0.1:{free_port()} http2;"),
    ]
    for pattern, repl in rewrites:
        conf, n = re.subn(pattern, repl, conf, flags=re.M)
        assert n == 1, f"{pattern!r} not found exactly once in {NGINX_CONF}"
    return conf


@contextlib.contextmanager
def run_nginx(site_conf: str, port: int, tmp: Path) -> Iterator[str]:
    """nginx in the foreground with the site config inside a minimal main config; always stopped."""
    (tmp / "simpool.conf").write_text(site_conf)
    temp = {k: tmp / k for k in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    main = f"""
daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {temp["body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    include {tmp}/simpool.conf;
}}
"""
    (tmp / "nginx.conf").write_text(main)
    cmd = [str(NGINX), "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(tmp / "nginx.conf")]
    check = subprocess.run([*cmd, "-t"], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(
            f"{url}/lb-healthz",
            20,
            died=lambda: None if proc.poll() is None else f"nginx exited:\n{(tmp / 'error.log').read_text()}",
            late=lambda: "nginx did not start",
            interval=0.1,
        )
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def embeds_answered(host: str, port: int) -> float:
    text = httpx.get(f"http://{host}:{port}/metrics", timeout=10).text
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "simpool_requests_total"
        and s.labels["endpoint"] == "/embed"
        and s.labels["code"] == "200"
    )


def png_b64(width: int, height: int, seed: int) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG", compress_level=1)
    return base64.b64encode(buf.getvalue()).decode()


def loopback_alias_usable() -> bool:
    try:
        with socket.socket() as s:
            s.bind((REPLICAS[1], 0))
        return True
    except OSError:
        return False


class Balanced(NamedTuple):
    url: str  # nginx's
    procs: list[subprocess.Popen[bytes]]  # the replicas, in REPLICAS order
    dns: TinyDNS
    replica_port: int


@contextlib.contextmanager
def balanced_replicas(model_repo: Path, tmp_path: Path) -> Iterator[Balanced]:
    """Two real replicas on REPLICAS behind the repo's nginx, which finds them through TinyDNS."""
    if not loopback_alias_usable():
        pytest.fail(f"cannot bind {REPLICAS[1]}: this test needs the whole 127.0.0.0/8 on loopback (Linux)")
    replica_port, lb_port = free_port(), free_port()
    with contextlib.ExitStack() as stack:
        dns = stack.enter_context(TinyDNS("simpool", REPLICAS))
        env = {"SIMPOOL_DEFAULT_MODEL": "resnet18"}
        procs = [
            stack.enter_context(start_server(model_repo, tmp_path, env, host=host, port=replica_port)).proc
            for host in REPLICAS
        ]
        lb = stack.enter_context(run_nginx(loopback_conf(dns.port, lb_port, replica_port), lb_port, tmp_path))
        yield Balanced(lb, procs, dns, replica_port)


def test_requests_spread_over_replicas_and_survive_one_going_down(model_repo: Path, tmp_path: Path) -> None:
    with (
        balanced_replicas(model_repo, tmp_path) as (lb, procs, dns, replica_port),
        httpx.Client(base_url=lb, timeout=60) as c,
    ):
        # Both replicas answer a share of the traffic. nginx shuffles the resolver's answer for
        # each request, so the split is random: send until each has answered twice (the chance
        # that 40 requests are not enough is below 1e-10).
        sent, counts = 0, [0.0, 0.0]
        while min(counts) < 2 and sent < 40:
            r = c.post("/embed", json={"images": [png_b64(48, 40, sent)]})
            assert r.status_code == 200, r.text
            sent += 1
            counts = [embeds_answered(host, replica_port) for host in REPLICAS]
        assert sum(counts) == sent and min(counts) >= 2, (sent, counts)
        assert dns.queries >= 1, "nginx never asked the resolver: the name was not resolved at request time"

        # A request above nginx's default 1 MiB body limit reaches the service.
        big = png_b64(900, 700, 99)
        assert len(big) > 1.5 * 2**20
        r = c.post("/embed", json={"images": [big]})
        assert r.status_code == 200, r.text[:300]

        # The service's own errors come back unchanged (not retried, not rewritten by nginx).
        r = c.post("/embed", json={"images": [png_b64(32, 32, 0)], "model": "nope"})
        assert r.status_code == 404 and "nope" in r.json()["detail"]

        # A replica whose queue is full answers 503: nginx hands the request to the other one.
        procs[1].terminate()
        procs[1].wait(timeout=60)
        before = embeds_answered(REPLICAS[0], replica_port)
        with full_replica(REPLICAS[1], replica_port) as refused:
            # Random order again: send until the full replica has refused one (then retried).
            sent = 0
            while refused["n"] < 1 and sent < 40:
                r = c.post("/embed", json={"images": [png_b64(48, 40, 100 + sent)]})
                assert r.status_code == 200, r.text
                sent += 1
            assert refused["n"] >= 1, f"the full replica got none of {sent} requests: nothing was retried"
        assert embeds_answered(REPLICAS[0], replica_port) == before + sent

        # And with that replica gone altogether, requests still succeed.
        for i in range(3):
            assert c.post("/embed", json={"images": [png_b64(48, 40, 200 + i)]}).status_code == 200


@contextlib.contextmanager
def full_replica(host: str, port: int) -> Iterator[dict[str, int]]:
    """Stands in for a replica whose queue is full: 503 with Retry-After to every request."""
    refused = {"n": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def _refuse(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            refused["n"] += 1
            body = b'{"detail": "queue full"}'
            self.send_response(503)
            self.send_header("Retry-After", "1")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _refuse

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer((host, port), Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield refused
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)
