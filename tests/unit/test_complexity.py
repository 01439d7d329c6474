"""No function of the product over cyclomatic complexity 25 (radon's measure): past that, a function
has more paths than a reader or a test can follow, and it should be split."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from radon.complexity import cc_visit
from radon.visitors import Class, Function

from tests.helpers import REPO_ROOT

PRODUCT = ("models", "export", "service", "client", "simpool_serve", "bench")
LIMIT = 25


def functions(blocks: list[Function | Class]) -> Iterator[Function]:
    """Every function: top-level ones, methods, and functions nested in either (radon lists methods
    both under their class and on their own, so each is given once)."""
    seen: set[tuple[int, str]] = set()
    stack = list(blocks)
    while stack:
        block = stack.pop()
        if isinstance(block, Class):
            stack.extend([*block.methods, *block.inner_classes])
            continue
        stack.extend(block.closures)
        if (block.lineno, block.name) not in seen:
            seen.add((block.lineno, block.name))
            yield block


def too_complex(root: Path, folders: tuple[str, ...], limit: int) -> list[str]:
    found = []
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            for fn in functions(cc_visit(path.read_text())):
                if fn.complexity > limit:
                    found.append(f"{path.relative_to(root)}:{fn.lineno} {fn.fullname} ({fn.complexity})")
    return found


def test_no_product_function_is_over_the_limit() -> None:
    found = too_complex(REPO_ROOT, PRODUCT, LIMIT)
    assert not found, f"over cyclomatic complexity {LIMIT}:\n" + "\n".join(found)


def branchy(name: str, indent: int) -> str:
    """A function of 30 `if`s (complexity 31), at `indent`."""
    pad = " " * indent
    body = "".join(f"{pad}    if x == {i}:\n{pad}        return {i}\n" for i in range(30))
    return f"{pad}def {name}(x):\n{body}{pad}    return -1\n"


def test_the_measure_sees_methods_and_nested_functions(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    source = "class C:\n    def method(self, x):\n" + branchy("inner", 8) + "        return inner(x)\n\n"
    (tmp_path / "pkg" / "m.py").write_text(source + branchy("flat", 0))
    found = [line.split(" ", 1)[1] for line in too_complex(tmp_path, ("pkg",), LIMIT)]
    assert sorted(found) == ["flat (31)", "inner (31)"], found
