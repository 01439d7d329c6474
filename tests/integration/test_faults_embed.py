"""`simpool-embed` under faults: killed with SIGKILL mid-run then re-run, and the output disk filling up.

A re-run after a kill finds a readable file, skips every image the killed run saved, and ends with
every image exactly once; a full disk leaves the previous output as it was and says so.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import skimage.data as data
from PIL import Image

from tests.helpers import BIN, Server

COUNT = 120


def make_images(root: Path, count: int, offset: int = 0) -> list[str]:
    """`count` distinct small JPEGs (crops of a real photograph), in two folders."""
    photo = data.astronaut()
    names = []
    for i in range(offset, offset + count):
        y, x = divmod(i * 7, 400)
        name = f"{'a' if i % 2 else 'b'}/img{i:04d}.jpg"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(photo[y : y + 96, x : x + 96])).save(root / name, quality=90)
        names.append(name)
    return names


def embed(server: Server, source: Path, out: Path, *extra: str) -> list[str]:
    return [
        str(BIN / "simpool-embed"),
        str(source),
        "--out",
        str(out),
        "--url",
        server.url,
        "--no-progress",
        *extra,
    ]


def summary(text: str) -> tuple[int, int, int]:
    found = re.search(r"(\d+) embedded, (\d+) unchanged, (\d+) failed", text)
    assert found, text
    return int(found.group(1)), int(found.group(2)), int(found.group(3))


def test_sigkill_mid_run_then_rerun(server: Server, tmp_path: Path) -> None:
    source = tmp_path / "src"
    names = make_images(source, COUNT)
    out = tmp_path / "index.parquet"
    cmd = embed(server, source, out, "--batch", "1", "--concurrency", "1", "--checkpoint-every", "0.2")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not (out.exists() and pq.read_metadata(out).num_rows >= 10):
            assert proc.poll() is None, "finished before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint written"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    saved = pq.read_table(out)  # readable: the file is only ever replaced whole
    done = saved.column("path").to_pylist()
    assert 10 <= len(done) < COUNT and len(set(done)) == len(done)
    before = {p: e for p, e in zip(done, saved.column("embedding").to_pylist(), strict=True)}

    rerun = subprocess.run(embed(server, source, out), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    embedded, unchanged, failed = summary(rerun.stdout)
    # Nothing the killed run saved was embedded again; everything else was.
    assert (embedded, unchanged, failed) == (COUNT - len(done), len(done), 0)
    final = pq.read_table(out)
    paths = final.column("path").to_pylist()
    assert sorted(paths) == sorted(names)  # every image exactly once
    kept = {p: e for p, e in zip(paths, final.column("embedding").to_pylist(), strict=True) if p in before}
    assert kept == before  # the saved rows are carried over as they were
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 96 KiB tmpfs: room for one small index, not for a larger one beside it."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_keeps_the_previous_output(server: Server, tmp_path: Path, small_disk: Path) -> None:
    source = tmp_path / "src"
    make_images(source, 8)
    out = small_disk / "index.parquet"
    first = subprocess.run(embed(server, source, out), capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    previous = out.read_bytes()

    make_images(source, 60, offset=8)  # 68 rows of 512 floats no longer fit beside the old file
    second = subprocess.run(embed(server, source, out), capture_output=True, text=True, timeout=300)
    output = second.stdout + second.stderr
    assert second.returncode == 2, output
    assert "Traceback" not in output, output
    error = [line for line in second.stderr.splitlines() if line.startswith("simpool-embed: error:")]
    assert len(error) == 1, output
    assert "No space left on device" in error[0] and str(out) in error[0], error
    assert "unchanged" in error[0], error  # it says the previous output is still there
    assert out.read_bytes() == previous  # intact, byte for byte
    assert pq.read_table(out).num_rows == 8
    assert [p.name for p in small_disk.iterdir()] == ["index.parquet"]  # no half-written temp file left
