"""The README's Protocols examples run as written against a real server (only the address, the model
name and the image path are swapped for the test's)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT, Server


def protocol_examples() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("## Protocols", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_has_both_examples() -> None:
    blocks = protocol_examples()
    assert len(blocks) == 2
    assert "tritonclient" in blocks[0] and "openai" in blocks[1]


@pytest.mark.parametrize("index", [0, 1], ids=["tritonclient", "openai"])
def test_readme_example_runs(server: Server, photos: dict[str, Path], index: int) -> None:
    code = protocol_examples()[index]
    address = server.url.removeprefix("http://")
    code = code.replace("localhost:8000", address).replace("vit_small_simpool", "vit_tiny")
    code = code.replace('"cat.jpg"', repr(str(photos["chelsea.jpg"])))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    expected = ["(1, 192) (1, 14, 14)", "192 "][index]  # vit_tiny: 192 dimensions, a 14x14 grid
    assert proc.stdout.startswith(expected), proc.stdout
    assert re.search(r"\b[0-9a-f]{16}\b", proc.stdout), "the fingerprint is printed"
