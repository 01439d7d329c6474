"""simpool-embed --engine ray: a real local Ray (2 CPUs), the real model; parity, resume, SIGKILL."""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from simpool_serve.client import store
from simpool_serve.client.embed_cli import main
from simpool_serve.client.ray_job import Plan
from tests.helpers import BIN, cosine
from tests.integration.test_embed_cli import BROKEN, make_source, rows, summary

pytest.importorskip("ray.data")

ENV = {k: v for k, v in os.environ.items() if not k.startswith(("SIMPOOL_", "RAY_"))}


def embed_ray(src: Path, out: Path, model_repo: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [BIN / "simpool-embed", src, "--out", out, "--engine", "ray", "--local", model_repo]
    cmd += ["--model", "resnet18", "--no-progress", *extra]
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=240, env=ENV)


def shard_paths(out: Path) -> list[str]:
    return [
        p for shard in sorted(out.glob("part-*.parquet")) for p in pq.read_table(shard)["path"].to_pylist()
    ]


def test_plan_leaves_the_readers_a_share_of_the_cpus() -> None:
    two = Plan.for_cluster(cpus=2, gpus=0, workers=None, use_gpu=True)
    assert (two.workers, two.threads) == (2, 1)
    assert two.workers * two.actor_cpus + two.reader_cpus <= 2  # else no read task is ever scheduled
    one = Plan.for_cluster(cpus=16, gpus=0, workers=4, use_gpu=False)
    assert (one.workers, one.threads, one.actor_gpus) == (4, 4, 0)
    gpu = Plan.for_cluster(cpus=16, gpus=2, workers=None, use_gpu=True)
    assert (gpu.workers, gpu.threads, gpu.actor_gpus) == (2, 8, 1.0)


def test_same_rows_as_local_then_resumes(
    model_repo: Path, photos: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = make_source(photos, tmp_path / "src")
    local, out = tmp_path / "local.parquet", tmp_path / "shards"
    assert main([str(src), "--out", str(local), "--local", str(model_repo), "--model", "resnet18"]) == 1
    capsys.readouterr()

    proc = embed_ray(src, out, model_repo, "--batch", "3", "--shard-rows", "4")
    assert proc.returncode == 1, proc.stderr
    assert summary(proc.stdout) == (len(photos), 0, 2)
    assert all(name in proc.stdout for name in BROKEN)
    assert "images/s" in proc.stderr
    a, (b, warnings) = rows(local), store.read_output(out)
    assert not warnings and b.num_rows == len(a)
    for row in b.to_pylist():
        want = a[row["path"]]
        assert (row["sha256"], row["model"], row["fingerprint"]) == (
            want["sha256"],
            want["model"],
            want["fingerprint"],
        )
        if row["path"] in BROKEN:
            assert row["error"] and row["embedding"] is None
        else:
            assert row["error"] is None and cosine(row["embedding"], want["embedding"]) >= 0.9999, row["path"]
    sizes = [pq.read_metadata(shard).num_rows for shard in out.glob("part-*.parquet")]
    assert sum(sizes) == 11 and max(sizes) <= 4  # --shard-rows
    fingerprint = a["coffee.webp"]["fingerprint"].encode()
    assert pq.read_schema(next(out.glob("part-*"))).metadata[b"simpool.fingerprint"] == fingerprint
    # The actors' engines are closed, not left with pending batcher tasks.
    assert "Task was destroyed" not in proc.stderr and "pending" not in proc.stderr, proc.stderr

    # Re-run as it is: the two broken files fail again, and each file is still one row of the folder,
    # read as one dataset (as on the single-file path), not an old error row beside a new one.
    proc = embed_ray(src, out, model_repo)
    assert proc.returncode == 1, proc.stderr
    assert summary(proc.stdout) == (0, len(photos), 2)
    assert "Task was destroyed" not in proc.stderr, proc.stderr
    folder = pq.read_table(out).to_pylist()
    assert len(folder) == len(a) and sorted(r["path"] for r in folder) == sorted(a)
    assert {r["path"] for r in folder if r["error"]} == BROKEN
    assert pq.read_schema(next(out.glob("part-*"))).metadata[b"simpool.fingerprint"] == fingerprint

    # Re-run after a change: one file edited, the broken ones gone; only the edited file is embedded.
    changed = next(p for p in a if p.endswith("coffee.jpg"))
    shutil.copy(photos["astronaut.jpg"], src / changed)
    for name in BROKEN:
        (src / name).unlink()
    before = set(out.glob("part-*.parquet"))
    proc = embed_ray(src, out, model_repo)
    assert proc.returncode == 0, proc.stderr
    assert summary(proc.stdout) == (1, len(photos) - 1, 0)
    assert "Task was destroyed" not in proc.stderr, proc.stderr  # seen on successful runs
    (new_shard,) = set(out.glob("part-*.parquet")) - before
    assert pq.read_table(new_shard)["path"].to_pylist() == [changed]
    latest = {r["path"]: r for r in store.read_output(out)[0].to_pylist()}
    astronaut = next(p for p in a if p.endswith("astronaut.jpg"))
    assert cosine(latest[changed]["embedding"], a[astronaut]["embedding"]) >= 0.9999


def test_sigkill_loses_nothing_reported_and_rerun_embeds_each_image_once(
    model_repo: Path, photos: dict[str, Path], tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(40):  # enough single-image shards that the run is still going when it is killed
        name, path = sorted(photos.items())[i % len(photos)]
        shutil.copy(path, src / f"{i:02d}-{name}")
    out = tmp_path / "shards"
    # The source as a URI: read through pyarrow's filesystem layer, as a bucket would be.
    cmd = [BIN / "simpool-embed", src.as_uri(), "--out", out, "--engine", "ray"]
    cmd += ["--local", model_repo / "resnet18"]
    cmd += ["--batch", "1", "--shard-rows", "1", "--workers", "1", "--no-progress"]
    proc = subprocess.Popen([str(c) for c in cmd], stderr=subprocess.PIPE, text=True, env=ENV)
    reported: list[str] = []
    try:
        deadline = time.monotonic() + 180
        assert proc.stderr is not None
        for line in proc.stderr:
            if "wrote part-" in line:
                reported.append(line.split("wrote ", 1)[1].split(" ", 1)[0])
                if len(reported) == 3:
                    proc.send_signal(signal.SIGKILL)
                    break
            assert time.monotonic() < deadline, "no shard reported"
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL and len(reported) == 3
    on_disk = sorted(p.name for p in out.glob("part-*.parquet"))
    assert set(reported) <= set(on_disk) and len(on_disk) < 40
    done = shard_paths(out)  # every shard reads whole

    proc2 = embed_ray(src, out, model_repo / "resnet18")
    assert proc2.returncode == 0, proc2.stderr
    assert summary(proc2.stdout) == (40 - len(done), len(done), 0)
    counts = collections.Counter(shard_paths(out))
    assert set(counts) == {p.name for p in src.iterdir()} and set(counts.values()) == {1}
    assert not list(out.glob(".*.tmp"))


def test_an_actor_going_away_leaves_no_pending_batcher_task(
    model_repo: Path,
    photos: dict[str, Path],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What Ray does at the end of a run, in-process: the actor is dropped; its engine must be closed
    (else asyncio reports "Task was destroyed but it is pending!" for each batcher)."""
    import gc

    import pyarrow as pa

    from simpool_serve.client.ray_job import EmbedActor

    # The actor sizes its session through the environment, as in a Ray worker: restored after the test.
    monkeypatch.setenv("SIMPOOL_INTRA_OP_THREADS", "1")
    actor = EmbedActor(str(model_repo / "resnet18"), None, threads=1, known={}, descriptor={})
    batch = pa.table(
        {
            "path": ["coffee.jpg"],
            "data": [photos["coffee.jpg"].read_bytes()],
            "read_error": pa.nulls(1, pa.string()),
        }
    )
    assert actor(batch).column("error").to_pylist() == [None]
    with caplog.at_level("ERROR", logger="asyncio"):
        del actor
        gc.collect()
    assert not [r for r in caplog.records if "destroyed but it is pending" in r.getMessage()], caplog.text
