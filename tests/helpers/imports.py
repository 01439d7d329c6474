"""The import graph of the product's own modules, read from their source with `ast` (nothing is imported).

Absolute and relative imports count, at module level or inside functions (a lazy import still runs);
only those under `if TYPE_CHECKING:` do not, since they never run. Importing `a.b.c` also runs the
`__init__` of `a` and `a.b`, so parent packages are edges too. Modules are found on disk through
pyproject's package-dir mapping (the repository's folders are the installed package's sub-packages).
"""

from __future__ import annotations

import ast
import tomllib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from tests.helpers.process import REPO_ROOT


def package_dirs(repo: Path = REPO_ROOT) -> dict[str, Path]:
    """pyproject's `[tool.setuptools.package-dir]`: package name → folder."""
    config = tomllib.loads((repo / "pyproject.toml").read_text())
    return {name: repo / folder for name, folder in config["tool"]["setuptools"]["package-dir"].items()}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run (everything but the body of `if TYPE_CHECKING:`)."""
    found: list[ast.Import | ast.ImportFrom] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return found


@dataclass
class ImportGraph:
    """Edges from each own module to the modules it imports (own ones by full name, others by top name)."""

    roots: dict[str, Path]  # package name → folder
    _edges: dict[str, set[str]] = field(default_factory=dict)

    def file_of(self, module: str) -> Path | None:
        """The source file of an own module, or None (another distribution's, or not a module at all)."""
        owners = [p for p in self.roots if module == p or module.startswith(p + ".")]
        if not owners:
            return None
        package = max(owners, key=len)
        rest = module[len(package) :].lstrip(".")
        base = self.roots[package].joinpath(*rest.split(".")) if rest else self.roots[package]
        for candidate in (base / "__init__.py", base.with_suffix(".py")):
            if candidate.is_file():
                return candidate
        return None

    def modules_under(self, package: str) -> list[str]:
        """`package` and every module below it, by full name."""
        folder = self.file_of(package)
        assert folder is not None and folder.name == "__init__.py", f"{package} is not a package"
        names = []
        for path in sorted(folder.parent.rglob("*.py")):
            rel = path.relative_to(folder.parent).with_suffix("").parts
            rel = rel[:-1] if rel[-1] == "__init__" else rel
            names.append(".".join((package, *rel)))
        return names

    def imports(self, module: str) -> set[str]:
        """What `module` imports directly: own modules (and their parent packages) and other top names."""
        if module not in self._edges:
            self._edges[module] = self._read(module)
        return self._edges[module]

    def _read(self, module: str) -> set[str]:
        path = self.file_of(module)
        if path is None:
            return set()
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets: set[str] = set()
        for node in _import_nodes(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
                continue
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - (node.level - 1)])
                base = f"{anchor}.{base}" if base else anchor
            targets.add(base)
            # `from pkg import name` imports the submodule pkg.name when there is one.
            targets.update(f"{base}.{a.name}" for a in node.names if self.file_of(f"{base}.{a.name}"))
        out: set[str] = set()
        for target in targets:
            if self.file_of(target) is None:
                out.add(target.split(".")[0])
                continue
            parts = target.split(".")
            out.update(
                ".".join(parts[:i]) for i in range(1, len(parts) + 1) if self.file_of(".".join(parts[:i]))
            )
        out.discard(module)
        return out

    def chains(self, start: str, bad: Callable[[str], bool]) -> list[list[str]]:
        """For each module reachable from `start` for which `bad(name)` holds: the shortest import chain."""
        parent: dict[str, str | None] = {start: None}
        queue, found = deque([start]), []
        while queue:
            current = queue.popleft()
            for nxt in sorted(self.imports(current)):
                if nxt in parent:
                    continue
                parent[nxt] = current
                if bad(nxt):
                    chain, at = [], nxt
                    while at is not None:
                        chain.append(at)
                        at = parent[at]
                    found.append(chain[::-1])
                elif self.file_of(nxt) is not None:
                    queue.append(nxt)
        return found


@cache
def product_graph() -> ImportGraph:
    return ImportGraph(package_dirs())
