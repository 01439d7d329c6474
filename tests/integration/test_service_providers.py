"""GPU provider options as the service builds them from its settings (checked on CPU: the dicts, the
session's start-up log, and the I/O-binding path against a plain run on a real session)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydantic
import pytest

from simpool_serve.service.engine.providers import CPU, CUDA, TENSORRT, ProviderOptions
from simpool_serve.service.engine.runner import OnnxRunner
from simpool_serve.service.settings import Settings


def test_cuda_options_are_chosen_for_serving() -> None:
    opts = ProviderOptions.from_config(Settings(), input_size=224, max_batch=32).cuda()
    assert opts == {
        "device_id": "0",
        "cudnn_conv_algo_search": "HEURISTIC",
        "arena_extend_strategy": "kSameAsRequested",
        "do_copy_in_default_stream": "1",
    }


def test_settings_reach_the_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key, value in {
        "SIMPOOL_CUDA_DEVICE_ID": "1",
        "SIMPOOL_CUDA_CONV_ALGO_SEARCH": "default",
        "SIMPOOL_CUDA_MEM_LIMIT_MB": "2048",
        "SIMPOOL_TRT_FP16": "false",
        "SIMPOOL_TRT_CACHE": "false",
        "SIMPOOL_IO_BINDING": "true",
    }.items():
        monkeypatch.setenv(key, value)
    options = ProviderOptions.from_config(Settings(), input_size=256, max_batch=8)
    assert options.io_binding is True
    cuda = options.cuda()
    assert cuda["device_id"] == "1" and cuda["cudnn_conv_algo_search"] == "DEFAULT"
    assert cuda["gpu_mem_limit"] == str(2048 * 2**20)
    trt = options.tensorrt(tmp_path)
    assert trt["trt_fp16_enable"] == "False" and "trt_engine_cache_enable" not in trt
    assert trt["trt_profile_max_shapes"] == "images:8x256x256x3"


def test_unknown_algorithm_search_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIMPOOL_CUDA_CONV_ALGO_SEARCH", "fastest")
    with pytest.raises(pydantic.ValidationError, match="cuda_conv_algo_search"):
        Settings()


def test_tensorrt_profile_covers_every_batch_and_caches_in_the_model_folder(tmp_path: Path) -> None:
    trt = ProviderOptions.from_config(Settings(), input_size=224, max_batch=32).tensorrt(tmp_path / "m")
    cache = str(tmp_path / "m" / "trt_cache")
    assert trt == {
        "device_id": "0",
        "trt_fp16_enable": "True",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": cache,
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": cache,
        "trt_profile_min_shapes": "images:1x224x224x3",
        "trt_profile_opt_shapes": "images:32x224x224x3",
        "trt_profile_max_shapes": "images:32x224x224x3",
    }


def test_session_list_pairs_each_provider_with_its_options(tmp_path: Path) -> None:
    options = ProviderOptions(input_size=224, max_batch=4)
    listed = options.session_providers([TENSORRT, CUDA, CPU], tmp_path)
    assert [name for name, _ in listed] == [TENSORRT, CUDA, CPU]
    assert listed[0][1] == options.tensorrt(tmp_path) and listed[1][1] == options.cuda()
    assert listed[2][1] == {}


def test_runner_logs_its_providers_and_binding_matches_plain_run(
    model_repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = model_repo / "resnet18" / "model.onnx"
    with caplog.at_level(logging.INFO, logger="simpool_serve.runner"):
        runner = OnnxRunner(path, [CPU], 1, options=ProviderOptions(io_binding=True))
    record = next(r for r in caplog.records if r.getMessage() == "session")
    assert record.providers == [(CPU, {})] and record.model_path == str(path)  # type: ignore[attr-defined]
    assert runner.io_binding is False  # on CPU there is no device copy to save
    x = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    plain, bound = runner.run(x), runner._run_bound(x)
    assert plain.keys() == bound.keys()
    for name in plain:
        np.testing.assert_array_equal(plain[name], bound[name])


def test_tensorrt_profile_of_a_graph_of_any_size_spans_every_view(tmp_path: Path) -> None:
    """From the smallest side the graph takes to SIMPOOL_MAX_VIEW_SIZE, tuned for the crop's size."""
    settings = Settings(max_view_size=512)
    options = ProviderOptions.from_config(settings, input_size=224, max_batch=8, min_side=16)
    trt = options.tensorrt(tmp_path / "m")
    assert trt["trt_profile_min_shapes"] == "images:1x16x16x3"
    assert trt["trt_profile_opt_shapes"] == "images:8x224x224x3"
    assert trt["trt_profile_max_shapes"] == "images:8x512x512x3"
