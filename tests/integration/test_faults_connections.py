"""2,000 idle keep-alive connections and slowly sent bodies: /healthz and a real /embed still answer
within a second, a trickled body gets 504 at the request deadline, idle connections close after the
keep-alive timeout; the server lifts its own open-file limit so the connections fit."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import resource
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import BIN, free_port, running_process

IDLE = 2000
SLOW = 20
KEEP_ALIVE_S = 15
DEADLINE_S = 6
JSON = {"Content-Type": "application/json"}


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def soft_nofile(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-file limit in /proc")


@pytest.fixture(scope="module")
def low_limit_server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A server started with the usual soft limit of 1024 open files (under a higher hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < IDLE + SLOW + 200:
        pytest.skip(f"hard open-file limit {hard} is too low for {IDLE} connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this process holds the client sockets
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMPOOL_")}
    env |= {
        "SIMPOOL_PROVIDERS": "CPUExecutionProvider",
        "SIMPOOL_GRPC_PORT": "0",
        "SIMPOOL_KEEP_ALIVE_TIMEOUT_S": str(KEEP_ALIVE_S),
        "SIMPOOL_REQUEST_TIMEOUT_S": str(DEADLINE_S),
        "SIMPOOL_DEFAULT_MODEL": "resnet18",
    }
    hard_text = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    cmd = ["prlimit", f"--nofile=1024:{hard_text}", "--", str(BIN / "simpool-serve")]
    cmd += ["--model-dir", str(model_repo), "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("conn-logs") / "serve.log"
    try:
        with running_process(cmd, f"{url}/readyz", log, env) as proc:
            yield url, proc.pid
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def idle_connection(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A keep-alive connection that has had one answer and now sends nothing."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    length = next(
        int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")
    )
    await reader.readexactly(length)
    return reader, writer


async def slow_body(port: int, stop: asyncio.Event) -> bytes:
    """POST /embed announcing 200 kB and sending 16 bytes every 0.2 s; returns the status line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /embed HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 200000\r\n\r\n"
    )
    status = asyncio.ensure_future(reader.readline())
    try:
        while not status.done() and not stop.is_set():
            with contextlib.suppress(ConnectionError):
                writer.write(b" " * 16)
                await writer.drain()
            await asyncio.wait([status], timeout=0.2)
        return await asyncio.wait_for(status, timeout=30)
    finally:
        writer.close()


def test_idle_connections_and_slow_bodies_leave_the_server_responsive(
    low_limit_server: tuple[str, int], photos: dict[str, Path]
) -> None:
    url, pid = low_limit_server
    port = int(url.rsplit(":", 1)[1])
    body = json.dumps({"images": [base64.b64encode(photos["coffee.jpg"].read_bytes()).decode()]})

    async def scenario() -> None:
        assert soft_nofile(pid) > 1024  # the server lifted its own limit
        stop = asyncio.Event()
        slow = [asyncio.ensure_future(slow_body(port, stop)) for _ in range(SLOW)]
        opened_at = time.monotonic()
        idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        for start in range(0, IDLE, 200):  # a few hundred handshakes at a time: the listen backlog
            idle += await asyncio.gather(*(idle_connection(port) for _ in range(start, start + 200)))
        opened_s = time.monotonic() - opened_at
        assert opened_s < KEEP_ALIVE_S, f"opening {IDLE} connections took {opened_s:.1f} s"
        assert fds(pid) >= IDLE + SLOW  # every one of them is held open by the server
        health, embed = [], []
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            for _ in range(5):
                t = time.perf_counter()
                assert (await client.get("/healthz")).status_code == 200
                health.append(time.perf_counter() - t)
                t = time.perf_counter()
                answer = await client.post(
                    "/embed", content=body, headers={"Content-Type": "application/json"}
                )
                assert answer.status_code == 200 and len(answer.json()["embeddings"]) == 1
                embed.append(time.perf_counter() - t)
        # Median of five: the machine running the suite is shared; one slow sample is not the server.
        assert statistics.median(health) < 1.0, health
        assert statistics.median(embed) < 1.0, embed
        # The trickled bodies end at the request deadline, answered 504.
        statuses = await asyncio.wait_for(asyncio.gather(*slow), timeout=DEADLINE_S + 60)
        stop.set()
        assert all(s.startswith(b"HTTP/1.1 504") for s in statuses), statuses
        # The idle connections are closed by the server after the keep-alive timeout.
        closed = await asyncio.wait_for(
            asyncio.gather(*(reader.read() for reader, _ in idle)), timeout=KEEP_ALIVE_S + 60
        )
        assert all(data == b"" for data in closed)
        for _, writer in idle:
            writer.close()
        deadline = time.monotonic() + 30
        while fds(pid) > 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert fds(pid) <= 200

    asyncio.run(scenario())
