"""The engine over tiny in-memory ONNX graphs: loading, verifying, running pixels and encoded photos,
and every way a request can be refused; real onnxruntime sessions, no HTTP, no export."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from simpool_serve.service.engine import EngineError, Kind
from simpool_serve.service.engine.preprocess import decode_image
from simpool_serve.service.engine.verify import ModelMismatchError
from tests.helpers.engine import NOT_READY, build_engine, engine_over, infer, run
from tests.helpers.tiny_model import write_tiny_model, write_tiny_repository


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_repository(tmp_path_factory.mktemp("tiny_repo"))


@pytest.fixture(scope="module")
def jpegs() -> list[bytes]:
    import skimage.data as data

    out = []
    for name in ("astronaut", "coffee", "chelsea"):
        buf = io.BytesIO()
        Image.fromarray(getattr(data, name)()).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def session_run(folder: Path, pixels: np.ndarray) -> dict[str, np.ndarray]:
    """The graph run directly with onnxruntime: what the engine must answer."""
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"images": pixels}), strict=True))


def random_pixels(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_repository_loads_and_the_engine_is_ready(repo: Path) -> None:
    async def scenario() -> None:
        engine = build_engine(repo)
        assert engine.not_ready_reason() == "models are loading"
        with pytest.raises(EngineError) as early:
            engine.model("tiny_cls")
        assert early.value.kind is NOT_READY
        try:
            await engine.load()
            assert engine.not_ready_reason() is None
            assert sorted(engine.models) == ["tiny_cls", "tiny_emb"]
            assert engine.model(None).name == "tiny_cls"  # the first by name is the default
            assert engine.model("tiny_cls").has_logits and not engine.model("tiny_emb").has_logits
        finally:
            await engine.close()

    run(scenario())


def test_pixels_give_the_graphs_own_answer_in_any_batch(repo: Path) -> None:
    """Rows are routed back by position: 7 images over batches of at most 4 equal one direct run."""
    pixels = random_pixels(7)
    expected = session_run(repo / "tiny_cls", pixels)

    async def scenario() -> list:
        async with engine_over(repo) as engine:
            model = engine.model("tiny_cls")
            answer = await infer(engine, model, pixels=pixels)
            return answer.outputs

    outputs = run(scenario())
    assert len(outputs) == 7
    for i, out in enumerate(outputs):
        assert out is not None
        for name in ("embedding", "attention", "logits"):
            np.testing.assert_allclose(out[name], expected[name][i], rtol=1e-5, atol=1e-6)
        assert out["attention"].shape == (4, 4)
        assert out["attention"].sum() == pytest.approx(1.0, abs=1e-5)


def test_encoded_photos_are_decoded_as_the_preprocessing_says(repo: Path, jpegs: list[bytes]) -> None:
    async def scenario() -> tuple:
        async with engine_over(repo) as engine:
            model = engine.model("tiny_emb")
            answer = await infer(engine, model, images=jpegs)
            return answer, model.manifest

    answer, manifest = run(scenario())
    pixels = np.stack([decode_image(j, manifest, 10**8) for j in jpegs])
    expected = session_run(repo / "tiny_emb", pixels)
    assert answer.failures == []
    assert answer.geometries is not None and answer.geometries[0].width == 512
    for i, out in enumerate(answer.outputs):
        np.testing.assert_allclose(out["embedding"], expected["embedding"][i], rtol=1e-5, atol=1e-6)
        assert "logits" not in out


def test_bad_image_fails_the_request_or_is_skipped(repo: Path, jpegs: list[bytes]) -> None:
    images = [jpegs[0], b"not an image", jpegs[1]]

    async def scenario() -> tuple:
        async with engine_over(repo) as engine:
            model = engine.model("tiny_cls")
            with pytest.raises(EngineError) as failed:
                await infer(engine, model, images=images)
            skipped = await infer(engine, model, images=images, on_error="skip")
            return failed.value, skipped

    failed, skipped = run(scenario())
    assert failed.kind is Kind.BAD_IMAGE and failed.detail.startswith("image 1:")
    assert [f.index for f in skipped.failures] == [1] and skipped.failures[0].kind is Kind.BAD_IMAGE
    assert skipped.outputs[1] is None and skipped.outputs[0] is not None and skipped.outputs[2] is not None


def test_requests_the_engine_refuses(repo: Path) -> None:
    async def scenario() -> dict[str, EngineError]:
        errors: dict[str, EngineError] = {}
        async with engine_over(repo, max_images_per_request=2) as engine:
            cls, emb = engine.model("tiny_cls"), engine.model("tiny_emb")
            cases = {
                "unknown": lambda: engine.model("no_such_model"),
                "too_many": lambda: infer(engine, cls, pixels=random_pixels(3)),
                "no_logits": lambda: infer(engine, emb, pixels=random_pixels(1), outputs=("logits",)),
                "wrong_size": lambda: infer(engine, cls, pixels=random_pixels(1, 31)),
                "wrong_dtype": lambda: infer(engine, cls, pixels=random_pixels(1).astype(np.float32)),
                "both": lambda: infer(engine, cls, images=[b""], pixels=random_pixels(1)),
            }
            for name, call in cases.items():
                try:
                    result = call()
                    if hasattr(result, "__await__"):
                        await result
                except EngineError as exc:
                    errors[name] = exc
        return errors

    errors = run(scenario())
    assert {k: e.kind for k, e in errors.items()} == {
        "unknown": Kind.NOT_FOUND,
        "too_many": Kind.TOO_LARGE,
        "no_logits": Kind.INVALID,
        "wrong_size": Kind.INVALID,
        "wrong_dtype": Kind.INVALID,
        "both": Kind.INVALID,
    }
    assert "over the limit of 2" in errors["too_many"].detail
    assert "no classifier" in errors["no_logits"].detail


def test_a_passed_deadline_is_a_timeout_and_gives_the_places_back(repo: Path, jpegs: list[bytes]) -> None:
    async def scenario() -> tuple[EngineError, int]:
        async with engine_over(repo, max_queue=4) as engine:
            model = engine.model("tiny_cls")
            loop_now = engine.deadline() - 3600  # long past
            with pytest.raises(EngineError) as late:
                await infer(engine, model, images=jpegs, deadline=loop_now)
            # Every place came back: a request filling the whole queue is admitted.
            answer = await infer(engine, model, pixels=random_pixels(4))
            return late.value, len(answer.outputs)

    late, answered = run(scenario())
    assert late.kind is Kind.TIMEOUT
    assert answered == 4


def test_attention_png_is_the_original_size(repo: Path, jpegs: list[bytes]) -> None:
    async def scenario() -> bytes:
        async with engine_over(repo) as engine:
            model = engine.model("tiny_cls")
            return await engine.attention_png(model, jpegs[1], deadline=engine.deadline())

    png = run(scenario())
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.size == (600, 400)  # coffee


def test_a_manifest_that_misdescribes_its_graph_is_refused(tmp_path: Path) -> None:
    """The sha256 matches but the manifest claims another width: refused before serving, and said so."""
    folder = tmp_path / "repo" / "liar"
    write_tiny_model(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "embedding_dim": 9}))

    async def scenario() -> tuple[Exception, str | None]:
        engine = build_engine(tmp_path / "repo")
        try:
            with pytest.raises(ModelMismatchError) as exc:
                await engine.load()
            return exc.value, engine.not_ready_reason()
        finally:
            await engine.close()

    error, reason = run(scenario())
    assert "embedding is [8] wide, embedding_dim says 9" in str(error)
    assert reason is not None and "model loading failed" in reason


def test_a_swapped_graph_is_refused_by_its_hash(tmp_path: Path) -> None:
    write_tiny_model(tmp_path / "repo" / "a", seed=0)
    write_tiny_model(tmp_path / "other", seed=5)
    (tmp_path / "repo" / "a" / "model.onnx").write_bytes((tmp_path / "other" / "model.onnx").read_bytes())

    async def scenario() -> Exception:
        engine = build_engine(tmp_path / "repo")
        try:
            with pytest.raises(ModelMismatchError) as exc:
                await engine.load()
            return exc.value
        finally:
            await engine.close()

    assert "is not the graph manifest.json describes" in str(run(scenario()))
