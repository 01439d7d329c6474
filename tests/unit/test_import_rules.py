"""Which parts of the product may import what, checked on the source (ast) with imports followed
through the product's own modules: the engine stays free of web frameworks, servers, HTTP clients,
gRPC, the export stack, the doors and the server's settings; the service stays free of torch and timm.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.imports import ImportGraph, product_graph

ENGINE = "simpool_serve.service.engine"
SERVICE = "simpool_serve.service"
# What the engine never needs: a web framework or server, an HTTP or gRPC stack, the export stack.
ENGINE_FORBIDDEN = frozenset({"fastapi", "starlette", "uvicorn", "httpx", "grpc", "torch", "timm"})
EXPORT_STACK = frozenset({"torch", "timm", "torchvision"})
# The doors and the server around the engine: modules (and packages, with everything below them).
DOORS = tuple(
    f"{SERVICE}.{name}"
    for name in (
        "app",
        "cli",
        "preflight",
        "auth",
        "handlers",
        "observe",
        "parsing",
        "schemas",
        "docs_pages",
        "ui",
        "routes",
        "oip",
        "openai",
        "grpc",
    )
)
SETTINGS = f"{SERVICE}.settings"


def is_door(module: str) -> bool:
    return any(module == d or module.startswith(d + ".") for d in DOORS)


def violations(starts: list[str], bad: object) -> list[str]:
    graph = product_graph()
    found = {" -> ".join(chain) for start in starts for chain in graph.chains(start, bad)}  # type: ignore[arg-type]
    return sorted(found)


def test_the_engine_imports_no_web_framework_http_grpc_or_torch() -> None:
    found = violations(product_graph().modules_under(ENGINE), lambda m: m in ENGINE_FORBIDDEN)
    assert not found, "the engine reaches:\n" + "\n".join(found)


def test_the_engine_imports_no_door() -> None:
    found = violations(product_graph().modules_under(ENGINE), is_door)
    assert not found, "the engine reaches door modules:\n" + "\n".join(found)


def test_the_engine_does_not_read_the_servers_settings() -> None:
    found = violations(product_graph().modules_under(ENGINE), lambda m: m == SETTINGS)
    assert not found, "the engine reaches the server's settings:\n" + "\n".join(found)


def test_the_service_never_imports_torch_or_timm() -> None:
    found = violations(product_graph().modules_under(SERVICE), lambda m: m in EXPORT_STACK)
    assert not found, "the service reaches the export stack:\n" + "\n".join(found)


# -- the checker itself --------------------------------------------------------------------------


@pytest.fixture
def toy(tmp_path: Path) -> ImportGraph:
    """A package `toy` written to disk: relative, lazy, from-package and TYPE_CHECKING imports."""
    files = {
        "toy/__init__.py": "",
        "toy/core/__init__.py": "from . import inner\n",
        "toy/core/inner.py": "def f():\n    from ..web import routes\n",
        "toy/core/typed.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import fastapi\n",
        "toy/core/plain.py": "import numpy as np\nfrom toy import util\n",
        "toy/util.py": "import starlette.requests\n",
        "toy/web/__init__.py": "",
        "toy/web/routes.py": "import fastapi\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return ImportGraph({"toy": tmp_path / "toy"})


def test_the_checker_follows_relative_lazy_and_transitive_imports(toy: ImportGraph) -> None:
    assert toy.modules_under("toy.core") == ["toy.core", "toy.core.inner", "toy.core.plain", "toy.core.typed"]
    assert toy.imports("toy.core.inner") == {"toy", "toy.web", "toy.web.routes"}
    assert toy.chains("toy.core", lambda m: m == "fastapi") == [
        ["toy.core", "toy.core.inner", "toy.web.routes", "fastapi"]
    ]
    assert toy.chains("toy.core.plain", lambda m: m == "starlette") == [
        ["toy.core.plain", "toy.util", "starlette"]
    ]
    assert toy.imports("toy.core.typed") == {"typing"}  # not fastapi: that import never runs


def test_the_checker_sees_the_real_doors() -> None:
    """A positive control on the product itself: the app does reach FastAPI and the settings."""
    graph = product_graph()
    assert graph.chains(f"{SERVICE}.app", lambda m: m == "fastapi")
    assert graph.chains(f"{SERVICE}.app", lambda m: m == SETTINGS)
    assert f"{ENGINE}.batcher" in graph.modules_under(ENGINE)
