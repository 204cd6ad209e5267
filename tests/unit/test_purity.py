"""The shared core stays pure (conventions 1 and 2): importing it pulls in no event loop,
no network client and nothing of the gateway shell. Each check runs in a fresh interpreter
so that modules other tests imported cannot hide an import."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CORE_MODULES = ["roomcast.protocol", "roomcast.errors", "roomcast.merge_patch", "roomcast.room", "roomcast.settings"]
# asyncio and uvloop: event loops; websockets: socket I/O; redis, asyncpg: backends;
# gateway: the shell, which imports core and never the other way round.
FORBIDDEN = ["asyncio", "uvloop", "websockets", "redis", "asyncpg", "gateway"]
# The Python client (clients/python, its own distribution): its pure core is pure the same way,
# and no part of it imports the server (roomcast, gateway, coordinator) or the server's backends.
CLIENT_CORE_MODULES = ["roomcast_client.protocol", "roomcast_client.state"]
SERVER = ["roomcast", "gateway", "coordinator", "redis", "asyncpg", "uvloop"]

_PROBE = """
import importlib, json, sys
forbidden = {forbidden!r}
before = sorted(m for m in forbidden if m in sys.modules)
for name in {modules!r}:
    importlib.import_module(name)
after = sorted({{m.split(".")[0] for m in sys.modules}} & set(forbidden))
print(json.dumps({{"before": before, "after": after}}))
"""


def loaded_by(modules: list[str], forbidden: list[str] = FORBIDDEN) -> tuple[list[str], list[str]]:
    """(forbidden modules loaded before the import, forbidden modules loaded after it)."""
    code = _PROBE.format(forbidden=forbidden, modules=modules)
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


@pytest.mark.parametrize("module", CLIENT_CORE_MODULES)
def test_each_client_core_module_imports_no_io_and_no_server(module: str) -> None:
    before, after = loaded_by([module], FORBIDDEN + SERVER)
    assert before == []
    assert after == []


def test_the_client_imports_nothing_of_the_server() -> None:
    before, after = loaded_by(["roomcast_client", "roomcast_client.client"], SERVER)
    assert before == []
    assert after == []
    # the probe sees the client's own I/O half, so it would see an import of the server too
    assert {"asyncio", "websockets"} <= set(loaded_by(["roomcast_client.client"])[1])
