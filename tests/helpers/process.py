"""Processes a test starts: the exporter, a server command; free ports and readiness waits."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent
REPO_ROOT = Path(__file__).resolve().parents[2]


def run_export(out: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Runs the real `simpool-export` console script."""
    cmd = [str(BIN / "simpool-export"), "--out", str(out), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_exports(jobs: Mapping[Path, Sequence[str]]) -> dict[Path, subprocess.CompletedProcess[str]]:
    """Runs one `simpool-export` per output folder, two at a time: most of an export is PyTorch's
    single-threaded tracing, so on two cores a pair takes little longer than one."""
    with ThreadPoolExecutor(2) as pool:
        futures = {out: pool.submit(run_export, out, *args) for out, args in jobs.items()}
    return {out: future.result() for out, future in futures.items()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(
    url: str,
    timeout: float,
    died: Callable[[], str | None],
    late: Callable[[], str],
    interval: float = 0.2,
) -> None:
    """Polls `url` until it answers 200: every server a test starts (process, thread, nginx) waits here.
    Fails with `died()`'s message as soon as it returns one (the server stopped), `late()`'s at timeout."""
    deadline = time.monotonic() + timeout
    while True:
        if (why := died()) is not None:
            raise AssertionError(why)
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise AssertionError(late())
        time.sleep(interval)


@contextlib.contextmanager
def running_process(
    cmd: list[str],
    ready_url: str,
    log: Path,
    env: dict[str, str] | None = None,
    ready_timeout: float = 120,
    stop_timeout: float = 30,
    cwd: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Starts a real process (output to `log`), waits until `ready_url` answers 200, always stops it."""
    name = Path(cmd[0]).name

    def output() -> str:
        return log.read_text(errors="replace")

    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    try:
        wait_ready(
            ready_url,
            ready_timeout,
            died=lambda: None if proc.poll() is None else f"{name} exited ({proc.returncode}):\n{output()}",
            late=lambda: f"{name} not ready in {ready_timeout}s:\n{output()}",
        )
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
