"""The tree shows the architecture, and keeps showing it (issue 11, conventions 2, 3 and 15).

Read from the source with `ast`, so a type-only import (under TYPE_CHECKING) or an import
inside a function counts like any other:
- no import cycle anywhere in roomcast/, gateway/, coordinator/, loadtests/ and the client;
- dependencies point inward: roomcast/ imports neither shell (gateway/, coordinator/), the
  coordinator never imports the gateway, the client nothing of the server;
- per-folder rules: the protocol pulls in no asyncio, redis or asyncpg, even indirectly;
  store, bus and presence no asyncpg; loadtests/ nothing of tests/;
- one folder per role, its contract (`base.py`) beside its backends, and a short list of
  pure-core modules at the top of roomcast/;
- no module over ~600 lines.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENT_SRC = ROOT / "clients" / "python" / "src"
TREES = {"roomcast": ROOT, "gateway": ROOT, "coordinator": ROOT, "loadtests": ROOT, "roomcast_client": CLIENT_SRC}
MAX_LINES = 640  # "about 600"

ROLE_FOLDERS = {
    "store": {"base", "memory", "redis"},
    "bus": {"base", "memory", "redis"},
    "presence": {"base", "memory", "redis"},
    "limits": {"base", "memory", "redis"},
    "history": {"base", "memory", "redis", "postgres", "read", "flusher", "jobs", "migrate"},
    "redis": {"batch", "client", "keys", "scripts", "resp"},
}
# The pure core and a few small shared helpers; anything else belongs in a role folder.
TOP_LEVEL = {"__init__", "protocol", "errors", "room", "settings", "merge_patch", "privacy", "device_tokens",
             "docgen", "outage", "http_mini", "metrics_util", "housekeeping"}


def module_files() -> dict[str, Path]:
    out = {}
    for top, base in TREES.items():
        for path in sorted((base / top).rglob("*.py")):
            if "node_modules" in path.parts:
                continue
            rel = path.relative_to(base).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            out[".".join(parts)] = path
    return out


MODULES = module_files()


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    is_pkg = MODULES[module].name == "__init__.py"
    base = module.split(".")
    base = base if is_pkg else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


@cache
def imports_of(module: str) -> tuple[set[str], set[str]]:
    """(internal modules, external top-level packages) that `module` imports, anywhere in it."""
    tree = ast.parse(MODULES[module].read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            names.add(target)
            names.update(f"{target}.{a.name}" for a in node.names)
    internal, external = set(), set()
    for name in names:
        if name in MODULES:
            internal.add(name)
        elif name.split(".")[0] in TREES or name.split(".")[0] == "tests":
            # `from pkg import Name`: Name is not a module; the package itself is the edge
            parent = name.rpartition(".")[0]
            if name.split(".")[0] == "tests":
                external.add("tests")
            elif parent in MODULES and parent != module:
                internal.add(parent)
        else:
            external.add(name.split(".")[0])
    internal.discard(module)
    return internal, external


def closure(module: str) -> tuple[set[str], set[str]]:
    """Everything `module` pulls in, directly or through other modules of ours."""
    seen, todo, external = {module}, [module], set()
    while todo:
        internal, ext = imports_of(todo.pop())
        external |= ext
        for m in internal - seen:
            seen.add(m)
            todo.append(m)
    return seen - {module}, external


def cycles(graph: dict[str, set[str]]) -> Iterator[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    counter = [0]

    def visit(v: str) -> Iterator[list[str]]:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, set())):
            if w not in index:
                yield from visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                yield sorted(comp)

    for v in sorted(graph):
        if v not in index:
            yield from visit(v)


def test_the_graph_is_read_at_all() -> None:
    """Not blind: known edges are seen, type-only ones included."""
    assert "roomcast.store.base" in imports_of("roomcast.store.redis")[0]
    assert "redis" in imports_of("roomcast.redis.client")[1]
    assert len(MODULES) > 60


def test_no_import_cycles() -> None:
    found = list(cycles({m: imports_of(m)[0] for m in MODULES}))
    assert found == [], f"import cycles: {found}"


def test_the_cycle_check_is_not_blind() -> None:
    assert list(cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})) == [["a", "b", "c"]]
    assert list(cycles({"a": {"b"}, "b": set()})) == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("roomcast.")))
def test_the_shared_core_imports_no_shell(module: str) -> None:
    internal, _ = closure(module)
    shell = sorted(m for m in internal if m.split(".")[0] in ("gateway", "coordinator", "loadtests"))
    assert shell == [], f"{module} imports {shell}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("coordinator")))
def test_the_coordinator_never_imports_the_gateway(module: str) -> None:
    assert not [m for m in closure(module)[0] if m.startswith("gateway")]


def test_the_protocol_imports_no_asyncio_redis_or_asyncpg() -> None:
    _, external = closure("roomcast.protocol")
    assert not external & {"asyncio", "redis", "asyncpg", "uvloop", "websockets", "hiredis"}, external


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.split(".")[:2] in (
    ["roomcast", "store"], ["roomcast", "bus"], ["roomcast", "presence"])))
def test_store_bus_and_presence_import_no_asyncpg(module: str) -> None:
    internal, external = closure(module)
    assert "asyncpg" not in external, (module, sorted(m for m in internal if "asyncpg" in imports_of(m)[1]))


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("roomcast_client")))
def test_the_client_imports_nothing_of_the_server(module: str) -> None:
    internal, external = closure(module)
    assert not [m for m in internal if not m.startswith("roomcast_client")]
    assert not external & {"roomcast", "gateway", "coordinator", "redis", "asyncpg", "uvloop"}


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("loadtests")))
def test_loadtests_import_nothing_of_tests(module: str) -> None:
    assert "tests" not in imports_of(module)[1]


def test_one_folder_per_role_with_its_contract_beside_its_backends() -> None:
    pkg = ROOT / "roomcast"
    for folder, modules in ROLE_FOLDERS.items():
        found = {p.stem for p in (pkg / folder).glob("*.py")} - {"__init__"}
        # a backend may grow helper modules of its own, named after it (redis_index.py)
        extra = {m for m in found - modules if m.split("_")[0] not in modules}
        assert modules <= found and not extra, (folder, sorted(modules - found), sorted(extra))
    top = {p.stem for p in pkg.glob("*.py")}
    assert top == TOP_LEVEL, sorted(top ^ TOP_LEVEL)
    dirs = {p.name for p in pkg.iterdir() if p.is_dir() and not p.name.startswith("__")}
    assert dirs == set(ROLE_FOLDERS), sorted(dirs)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_over_about_600_lines(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module].relative_to(ROOT)} has {lines} lines"
