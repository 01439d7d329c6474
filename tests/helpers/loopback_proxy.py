"""A real HTTP server on loopback that stands between a client and simpool-serve.

It answers the first POSTs with 503 + Retry-After, can hold requests until the test
releases them (to interrupt a run at a known point), and forwards everything else
to the real service. Imported by the client and embedder tests; it holds no tests.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx


@dataclass
class ProxyScript:
    upstream: str | None  # None: no service behind, every POST gets 503
    fail_first: int = 0  # POSTs answered 503 before forwarding starts
    retry_after: str = "1"
    hold_after: int | None = None  # POSTs after this many wait for `release`
    release: threading.Event = field(default_factory=threading.Event)
    calls: list[tuple[str, str, int]] = field(default_factory=list)  # method, path, status answered
    posts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(script: ProxyScript) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

        def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            script.calls.append((self.command, self.path, status))
            with contextlib.suppress(OSError):  # the client may have gone (interrupted)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        def _forward(self, body: bytes | None) -> None:
            assert script.upstream is not None
            keep = ("content-type", "authorization")
            with httpx.Client(base_url=script.upstream, timeout=60) as up:
                r = up.request(
                    self.command,
                    self.path,
                    content=body,
                    headers={k: v for k, v in self.headers.items() if k.lower() in keep},
                )
            passed = {k: v for k, v in r.headers.items() if k.lower() in ("content-type", "retry-after")}
            self._answer(r.status_code, r.content, passed)

        def do_GET(self) -> None:
            if script.upstream is None:
                self._answer(503, b'{"detail": "not ready"}', {"Retry-After": script.retry_after})
            else:
                self._forward(None)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with script.lock:
                script.posts += 1
                n = script.posts
            if script.upstream is None or n <= script.fail_first:
                detail = b'{"detail": "queue full, retry later"}'
                self._answer(
                    503, detail, {"Retry-After": script.retry_after, "Content-Type": "application/json"}
                )
                return
            if script.hold_after is not None and n > script.hold_after:
                script.release.wait(timeout=120)
            self._forward(body)

    return Handler


@contextlib.contextmanager
def loopback_proxy(script: ProxyScript) -> Iterator[str]:
    """Serves `script` on 127.0.0.1 (a free port) and yields its URL."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(script))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        script.release.set()
        httpd.shutdown()
        httpd.server_close()
