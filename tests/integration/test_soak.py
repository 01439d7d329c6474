"""The soak, one minute of it: mixed traffic on every door against the shared server, whose RSS and
descriptors must stay flat over the second half, p99 stable, and every answer the expected one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO_ROOT, Server


def test_one_minute_soak_meets_the_goals(server: Server, tmp_path: Path) -> None:
    cmd = [sys.executable, str(REPO_ROOT / "bench" / "soak.py"), "--url", server.url]
    cmd += ["--pid", str(server.proc.pid), "--duration", "60", "--clients", "4", "--windows", "6"]
    cmd += ["--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    result = json.loads((tmp_path / "soak.json").read_text())
    goals = result["goals"]
    assert goals["no_5xx"] and goals["all_expected"], (goals["unexpected"], done.stdout)
    assert goals["rss_flat"] and goals["fds_flat"], done.stdout
    assert goals["p99_stable"], done.stdout
    assert done.returncode == 0, done.stdout + done.stderr
    codes = result["codes"]
    assert codes.get("200", 0) > 50 and codes.get("400", 0) > 0 and codes.get("gone", 0) > 0, codes
    assert (tmp_path / "soak.png").stat().st_size > 10_000
