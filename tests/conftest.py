"""Shared fixtures: real photographs, small exported models, a real server on loopback.

Exports are session-scoped: each small model is traced once per test run. The code behind them lives
in `tests.helpers`, which tests import directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import DOOR_KEY, SMALL_MODELS, Server, run_exports, start_server, write_photos


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository with resnet18 (1000 classes) and vit_tiny (no classifier), random init."""
    root = tmp_path_factory.mktemp("model_repository")
    seeded = ("--random-init", "--seed", "0")
    run_exports({root / name: (*args, "--name", name, *seeded) for name, args in SMALL_MODELS.items()})
    return root


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real photographs from scikit-image, written as files in several formats and sizes."""
    return write_photos(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="session")
def server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One shared server over the small models, default settings (no API key)."""
    with start_server(
        model_repo, tmp_path_factory.mktemp("logs"), {"SIMPOOL_DEFAULT_MODEL": "resnet18"}
    ) as s:
        yield s


@pytest.fixture(scope="session")
def keyed_server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server that wants an API key (`DOOR_KEY`) and takes at most 2 images per request; shared by
    the standard doors' tests (Open Inference Protocol, OpenAI)."""
    env = {
        "SIMPOOL_API_KEY": DOOR_KEY,
        "SIMPOOL_MAX_IMAGES_PER_REQUEST": "2",
        "SIMPOOL_DEFAULT_MODEL": "resnet18",
    }
    with start_server(model_repo, tmp_path_factory.mktemp("keyed-logs"), env) as s:
        yield s
