"""The unit tier's promise, kept by the tier itself: a test here that starts a process fails."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def no_subprocess(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Starting a process (an export, a server, a tool) belongs in tests/integration or tests/deploy."""

    def refuse(self: subprocess.Popen, args: object, *rest: object, **kw: object) -> None:
        raise AssertionError(f"unit tests start no process (tried: {args!r}); move the test to integration")

    monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse)
    yield


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tests that build models in torch (imported by their module) run them on one thread.

    Their models are small, and on a loaded machine torch's OpenMP workers spin waiting for each other:
    tests/unit/test_models.py took 40 s of CPU (120 s wall) with two threads on two busy cores. The
    count is put back afterwards, since torch's setting is process-wide.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
