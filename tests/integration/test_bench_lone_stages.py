"""bench/lone_stages.py against a real server on the tests' tiny model: every probe still finds the
function it wraps, the stages come in the order a request passes them, and they add up to the whole."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers.tiny_model import write_tiny_repository

REPO = Path(__file__).resolve().parents[2]


def test_the_stages_of_a_lone_request_are_in_order_and_add_up(tmp_path: Path) -> None:
    models = write_tiny_repository(tmp_path / "models")
    out = tmp_path / "stages.json"
    cmd = [sys.executable, str(REPO / "bench" / "lone_stages.py"), "--model-dir", str(models)]
    cmd += ["--model", "tiny_cls", "--pairs", "3", "--gap", "0.02", "--json", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| **lone minus the graph's batch 1 (paired)** |" in done.stdout
    rounds = json.loads(out.read_text())
    assert len(rounds) == 3
    for stages in rounds:
        parts = {k: v for k, v in stages.items() if k not in ("total", "the graph's batch 1 in this process")}
        assert len(parts) == 16 and all(v >= 0 for v in parts.values()), parts  # each boundary after the last
        assert stages["the graph (batch 1)"] > 0
        assert abs(sum(parts.values()) - stages["total"]) < 1e-3
