"""The shared core stays pure (conventions 1 and 2): importing it pulls in no event loop,
no network client and nothing of the gateway shell. Each check runs in a fresh interpreter
so that modules other tests imported cannot hide an import."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CORE_MODULES = ["roomcast.protocol", "roomcast.errors", "roomcast.merge_patch", "roomcast.room", "roomcast.settings",
                "roomcast.client_state"]
# asyncio and uvloop: event loops; websockets: socket I/O; redis, asyncpg: backends;
# gateway: the shell, which imports core and never the other way round.
FORBIDDEN = ["asyncio", "uvloop", "websockets", "redis", "asyncpg", "gateway"]

_PROBE = """
import importlib, json, sys
forbidden = {forbidden!r}
before = sorted(m for m in forbidden if m in sys.modules)
for name in {modules!r}:
    importlib.import_module(name)
after = sorted({{m.split(".")[0] for m in sys.modules}} & set(forbidden))
print(json.dumps({{"before": before, "after": after}}))
"""


def loaded_by(modules: list[str]) -> tuple[list[str], list[str]]:
    """(forbidden modules loaded before the import, forbidden modules loaded after it)."""
    code = _PROBE.format(forbidden=FORBIDDEN, modules=modules)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    result = json.loads(out.stdout)
    return result["before"], result["after"]


def test_core_imports_no_io() -> None:
    before, after = loaded_by(CORE_MODULES)
    assert before == [], f"the interpreter itself preloads {before}; this check would be blind"
    assert after == []


@pytest.mark.parametrize("module", CORE_MODULES)
def test_each_core_module_imports_no_io(module: str) -> None:
    assert loaded_by([module])[1] == []


def test_probe_detects_an_io_import() -> None:
    """The probe is not blind: the gateway's session module does use asyncio and websockets."""
    after = loaded_by(["gateway.session"])[1]
    assert {"asyncio", "websockets", "gateway"} <= set(after)
