"""loadtests/ stands on its own: none of its modules imports the test suite (`tests`), and its
modules form no import cycle, counting imports made only for type checking or inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent.parent / "loadtests"
FILES = sorted(p for p in PACKAGE.rglob("*.py") if "node_modules" not in p.parts)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in FILES}


def imported(path: Path) -> set[str]:
    """Every absolute module name `path` imports, anywhere in the file (relative imports resolved;
    `from . import x` counts as the submodule x when there is one)."""
    name = module_name(path)
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    out: set[str] = set()

    def sibling(name: str) -> str:
        # A plain `import x` of a module next to this file: how the locustfile imports its helpers
        # (Locust loads it by path, with its directory on sys.path).
        return f"{package}.{name}" if name not in MODULES and f"{package}.{name}" in MODULES else name

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(sibling(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = sibling(node.module or "")
            out.add(target)
            out.update(f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES)
    return out


GRAPH = {name: {m for m in imported(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def test_the_scan_sees_imports() -> None:
    """Not blind: bench imports its client pieces and the cluster and flusher phases (inside a
    function), the locustfile its helpers."""
    assert {"loadtests.procs", "loadtests.wsclient", "loadtests.cluster", "loadtests.flusher"} <= GRAPH["loadtests.bench"]
    assert "loadtests.procstat" in GRAPH["loadtests.cluster"]
    assert {"loadtests.visibility", "loadtests.publishers", "loadtests.scrape"} <= GRAPH["loadtests.flusher"]
    # The locustfile's helpers, imported by plain name from next to it.
    assert {"loadtests.locust_protocol", "loadtests.locust_knobs"} <= GRAPH["loadtests.locustfile"]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_import_of_the_test_suite(name: str) -> None:
    bad = sorted(m for m in imported(MODULES[name]) if m == "tests" or m.startswith("tests."))
    assert not bad, f"{name} imports {bad}: loadtests/ must not depend on tests/"


def test_no_import_cycle() -> None:
    def visit(name: str, path: list[str]) -> None:
        for dep in sorted(GRAPH.get(name, ())):
            assert dep not in path, f"import cycle: {' -> '.join([*path, dep])}"
            visit(dep, [*path, dep])

    for name in GRAPH:
        visit(name, [name])
