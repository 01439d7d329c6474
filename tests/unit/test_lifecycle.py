"""Model lifecycle in the engine, over tiny graphs: a reload swaps versions atomically, requests finish
on the version they started on, a folder being written keeps the serving version, a failed load
keeps it too, and removed or unloaded models go away. Real onnxruntime sessions, no HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from simpool_serve.service.engine import Engine, EngineError, Kind
from tests.helpers.engine import build_engine, infer, run
from tests.helpers.tiny_model import write_tiny_model, write_tiny_repository


def pixels(n: int = 2) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def loads(engine: Engine, model: str, outcome: str) -> float:
    return engine.metrics.model_loads.labels(model, outcome)._value.get()


def entry(engine: Engine, name: str) -> tuple[str, str]:
    found = {e.name: (e.state, e.reason) for e in engine.repository()}
    return found[name]


def write_broken(folder: Path, like: Path) -> None:
    """A folder whose manifest names its graph's bytes, but the bytes are no ONNX graph: complete, and
    yet it cannot load."""
    folder.mkdir(parents=True, exist_ok=True)
    junk = b"this is not an ONNX graph" * 40
    (folder / "model.onnx").write_bytes(junk)
    manifest = json.loads((like / "manifest.json").read_text())
    manifest["onnx_sha256"] = hashlib.sha256(junk).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))


async def sleep_until(done: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not done():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.01)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return write_tiny_repository(tmp_path / "repo")


def test_a_reload_swaps_while_a_held_version_finishes_on_itself(repo: Path) -> None:
    async def scenario() -> None:
        engine = build_engine(repo, model_control="explicit", load_models=["tiny_cls"])
        try:
            await engine.load()
            with engine.lease("tiny_cls") as old:
                write_tiny_model(repo / "tiny_cls", seed=7)  # a new version of the folder
                new = await engine.load_model("tiny_cls")
                assert new is engine.model("tiny_cls") and new.fingerprint != old.fingerprint
                # The held version still runs: its batcher is not closed while the lease is out.
                held = await infer(engine, old, pixels=pixels())
                assert held.model is old and old.batcher.alive
                fresh = await infer(engine, new, pixels=pixels())
                assert not np.allclose(held.outputs[0]["embedding"], fresh.outputs[0]["embedding"])
            await sleep_until(lambda: not old.batcher.alive)
            assert loads(engine, "tiny_cls", "loaded") == 1 and loads(engine, "tiny_cls", "reloaded") == 1
        finally:
            await engine.close()

    run(scenario())


def test_poll_keeps_the_version_while_the_folder_is_written_or_broken(repo: Path) -> None:
    async def scenario() -> None:
        engine = build_engine(repo, model_control="poll")
        try:
            await engine.load()
            first = engine.model("tiny_cls").fingerprint
            repo_ = engine._repository
            # An export in progress: the manifest gone, the graph being rewritten. Nothing changes.
            (repo / "tiny_cls" / "manifest.json").unlink()
            await repo_.rescan()
            assert engine.model("tiny_cls").fingerprint == first
            state, reason = entry(engine, "tiny_cls")
            assert state == "READY" and "incomplete" in reason
            # A graph whose bytes are not the manifest's yet: still incomplete, not a failure.
            write_tiny_model(repo / "tiny_cls", seed=9)
            (repo / "tiny_cls" / "model.onnx").write_bytes(b"half a graph")
            await repo_.rescan()
            assert engine.model("tiny_cls").fingerprint == first
            assert loads(engine, "tiny_cls", "failed") == 0
            # Complete: the new version serves.
            write_tiny_model(repo / "tiny_cls", seed=9)
            await repo_.rescan()
            assert engine.model("tiny_cls").fingerprint != first
            assert entry(engine, "tiny_cls") == ("READY", "")
            # Complete but broken: counted, noted, and the serving version stays.
            serving = engine.model("tiny_cls").fingerprint
            write_broken(repo / "tiny_cls", like=repo / "tiny_emb")
            await repo_.rescan()
            assert engine.model("tiny_cls").fingerprint == serving
            assert loads(engine, "tiny_cls", "failed") == 1
            state, reason = entry(engine, "tiny_cls")
            assert state == "READY" and "loading the new one failed" in reason and "onnxruntime" in reason
            await repo_.rescan()  # the same broken files are not tried again
            assert loads(engine, "tiny_cls", "failed") == 1
            assert engine.not_ready_reason() is None
        finally:
            await engine.close()

    run(scenario())


def test_poll_loads_new_folders_and_unloads_removed_ones(repo: Path) -> None:
    async def scenario() -> None:
        engine = build_engine(repo, model_control="poll")
        try:
            await engine.load()
            write_broken(repo / "broken", like=repo / "tiny_cls")
            shutil.copytree(repo / "tiny_emb", repo / "copy")
            await engine._repository.rescan()
            assert sorted(engine.models) == ["copy", "tiny_cls", "tiny_emb"]
            state, reason = entry(engine, "broken")
            assert state == "UNAVAILABLE" and reason.startswith("load failed")
            with pytest.raises(EngineError) as missing:
                engine.model("broken")
            assert missing.value.kind is Kind.NOT_FOUND and "load failed" in missing.value.detail
            assert engine.not_ready_reason() is None  # a broken folder does not make the server unready
            emb = engine.model("tiny_emb")
            shutil.rmtree(repo / "tiny_emb")
            await engine._repository.rescan()
            with pytest.raises(EngineError) as gone:
                engine.model("tiny_emb")
            assert gone.value.kind is Kind.NOT_FOUND
            await sleep_until(lambda: not emb.batcher.alive)
            assert "tiny_emb" not in [e.name for e in engine.repository()]
        finally:
            await engine.close()

    run(scenario())


def test_explicit_mode_and_the_default_model(repo: Path) -> None:
    async def scenario() -> None:
        engine = build_engine(repo, model_control="explicit", load_models=["tiny_emb"])
        try:
            await engine.load()
            assert sorted(engine.models) == ["tiny_emb"] and engine.default == "tiny_emb"
            assert entry(engine, "tiny_cls") == ("UNAVAILABLE", "not loaded")
            await engine.load_model("tiny_cls")
            assert sorted(engine.models) == ["tiny_cls", "tiny_emb"]
            with pytest.raises(EngineError) as unknown:
                await engine.load_model("nope")
            assert unknown.value.kind is Kind.LOAD_FAILED and "no model folder 'nope'" in unknown.value.detail
            with pytest.raises(EngineError) as escape:
                await engine.load_model("../repo")
            assert escape.value.kind is Kind.LOAD_FAILED
            assert await engine.unload_model("tiny_emb") and not await engine.unload_model("tiny_emb")
            with pytest.raises(EngineError) as no_default:
                engine.model(None)
            assert no_default.value.kind is Kind.NOT_FOUND
            assert "no default model is loaded" in no_default.value.detail
            assert engine.not_ready_reason() is None
        finally:
            await engine.close()

    run(scenario())


def test_a_failed_explicit_load_says_why_and_keeps_the_version(repo: Path) -> None:
    async def scenario() -> None:
        engine = build_engine(repo, model_control="explicit", load_models=["tiny_cls"])
        try:
            await engine.load()
            before = engine.model("tiny_cls")
            write_broken(repo / "tiny_cls", like=repo / "tiny_cls")
            with pytest.raises(EngineError) as failed:
                await engine.load_model("tiny_cls")
            assert failed.value.kind is Kind.LOAD_FAILED and "onnxruntime cannot load" in failed.value.detail
            assert engine.model("tiny_cls") is before and before.batcher.alive
            answer = await infer(engine, before, pixels=pixels(1))
            assert answer.fingerprint == before.fingerprint
        finally:
            await engine.close()

    run(scenario())


def test_the_mode_setting_is_read_as_the_server_reads_it() -> None:
    """`SIMPOOL_MODEL_CONTROL=Poll` is `poll` for the server's settings as for the engine's own."""
    from simpool_serve.service.settings import Settings

    assert Settings(model_control="Poll", load_models="a, b").model_control == "poll"
    assert Settings(load_models="a, b").load_models == ["a", "b"]
