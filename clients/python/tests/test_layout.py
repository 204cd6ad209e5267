"""The client's modules form no import cycle, counting imports made only for type checking,
none imports the server, and none outgrows a reviewable size."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "roomcast_client"
MODULES = {p.stem: p for p in sorted(PACKAGE.glob("*.py"))}
SERVER = {"roomcast", "gateway", "coordinator"}
MAX_LINES = 600


def imports_of(path: Path) -> tuple[set[str], set[str]]:
    """(modules of the package that `path` imports, top-level names of the other imports),
    anywhere in the file: under `if TYPE_CHECKING:` and inside functions too. The package
    itself is "__init__"."""
    inside: set[str] = set()
    outside: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top, _, rest = alias.name.partition(".")
                if top == "roomcast_client":
                    inside.add(rest.split(".")[0] or "__init__")
                else:
                    outside.add(top)
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level == 0 and not target.startswith("roomcast_client"):
                outside.add(target.split(".")[0])
                continue
            target = target.removeprefix("roomcast_client").lstrip(".") if node.level == 0 else target
            if target:
                inside.add(target.split(".")[0])
            else:  # from . import x: a submodule, or a name of the package itself
                inside.update(a.name if a.name in MODULES else "__init__" for a in node.names)
    if path.stem == "__init__":
        inside.discard("__init__")
    return inside, outside


GRAPH = {name: imports_of(path)[0] for name, path in MODULES.items()}


def test_the_scan_sees_imports() -> None:
    """Not blind: the client imports the room half, and the room half the pure core."""
    assert {"room", "outbox", "state", "protocol"} <= GRAPH["client"]
    assert {"state", "protocol"} <= GRAPH["room"]
    assert "client" in GRAPH["__init__"]  # under TYPE_CHECKING


def test_no_import_cycle() -> None:
    def visit(name: str, path: list[str]) -> None:
        for dep in sorted(GRAPH.get(name, ())):
            assert dep not in path, f"import cycle: {' -> '.join([*path, dep])}"
            visit(dep, [*path, dep])

    for name in GRAPH:
        visit(name, [name])


def test_the_room_half_does_not_know_the_connection_half() -> None:
    assert not GRAPH["room"] & {"client", "outbox", "__init__"}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_server_import(name: str) -> None:
    assert not imports_of(MODULES[name])[1] & SERVER


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_size(name: str) -> None:
    lines = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{name}.py has {lines} lines; split it"
