"""The browser client in clients/js: its type check, its unit tests (a fake WebSocket) and its
integration tests against a live cluster of two gateway replicas, Redis and a coordinator.

The integration run reads node's output line by line: on `ROOMCAST_KILL <node-id>` it kills that
gateway with SIGKILL (the JS test then checks that the client resumed on the other replica).
Needs node and npm (Debian packages nodejs and npm; `./dev test` installs them).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from roomcast.errors import CloseCode
from roomcast.protocol import RESERVED_EVENT_TYPES
from tests.harness import ROOT, UNIT, cluster
from tests.js_cluster import JS_CLUSTER_ENV, run_node, urls_env

JS = ROOT / "clients" / "js"
pytestmark = [pytest.mark.system, pytest.mark.timeout(600)]


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed (Debian packages nodejs and npm; `./dev test` installs them)")
    return node


def _websocket_flags(node: str) -> list[str]:
    """Node 20.10+ has a built-in WebSocket behind --experimental-websocket (Node 22+: always on).
    Without one, the tests use the `ws` devDependency."""
    probe = "process.exit(typeof WebSocket === 'function' ? 0 : 1)"
    for flags in ([], ["--experimental-websocket"]):
        if subprocess.run([node, *flags, "-e", probe], capture_output=True, timeout=30).returncode == 0:
            return flags
    return []


@pytest.fixture(scope="module")
def node() -> Iterator[str]:
    """node, with clients/js/node_modules installed from package-lock.json (npm ci) if missing
    or older than the lock file."""
    node = _node()
    stamp = JS / "node_modules" / ".package-lock.json"
    lock = JS / "package-lock.json"
    if not stamp.exists() or stamp.stat().st_mtime < lock.stat().st_mtime:
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm is not installed (Debian package npm; `./dev test` installs it)")
        out = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS, capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
    yield node


def _counts(tap: str) -> dict[str, int]:
    """The summary of node --test's TAP output (`# pass 7` …)."""
    return {k: int(v) for k, v in re.findall(r"^# (tests|pass|fail|cancelled|skipped|todo) (\d+)$", tap, re.M)}


def _assert_green(rc: int, out: str, at_least: int) -> dict[str, int]:
    counts = _counts(out)
    tail = out[-6000:]
    assert rc == 0, tail
    assert counts.get("fail") == 0 and counts.get("cancelled") == 0, tail
    assert counts.get("skipped") == 0 and counts.get("todo") == 0, tail
    assert counts.get("pass", 0) >= at_least, counts
    assert "generated asynchronous activity after the test ended" not in out, tail
    return counts


def _unit_files() -> list[str]:
    return sorted(str(p.relative_to(JS)) for p in (JS / "test").glob("*.test.js"))


def test_typecheck(node: str) -> None:
    """tsc: roomcast.js type-checked with its JSDoc (--checkJs), and the API as documented
    compiled against roomcast.d.ts."""
    tsc = JS / "node_modules" / "typescript" / "bin" / "tsc"
    for project in ("tsconfig.json", "test/types/tsconfig.json"):
        out = subprocess.run([node, str(tsc), "-p", project], cwd=JS, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr


def test_unit(node: str) -> None:
    """The unit tests: a fake WebSocket, no network."""
    out = subprocess.run([node, "--test", "--test-reporter=tap", *_unit_files()], cwd=JS, capture_output=True,
                         text=True, timeout=120)
    counts = _assert_green(out.returncode, out.stdout + out.stderr, at_least=50)
    print(counts)


def test_integration_two_replicas(node: str) -> None:
    """The integration tests against two replicas; the last one has replica gw-0 killed."""
    files = sorted(str(p.relative_to(JS)) for p in (JS / "test" / "integration").glob("*.test.js"))
    assert files
    with cluster(2, 1, JS_CLUSTER_ENV) as c:
        env = dict(os.environ, **urls_env(c))
        cmd = [node, *_websocket_flags(node), "--test", "--test-reporter=tap", *files]
        rc, out, killed = run_node(cmd, c, env, cwd=str(JS), timeout=120 * UNIT, echo=print)
        assert killed == ["gw-0"], out[-4000:]
        assert not c.gateways[0].alive() and c.gateways[1].alive()
    counts = _assert_green(rc, out, at_least=7)
    print(counts)


def test_package_layout() -> None:
    """What npm would publish: the module, its types and the README, nothing else."""
    pkg = json.loads((JS / "package.json").read_text())
    assert pkg["type"] == "module" and pkg["version"] == "0.1.0" and pkg["license"] == "Apache-2.0"
    assert "dependencies" not in pkg, "the client has no runtime dependencies"
    assert pkg["exports"]["."] == {"types": "./src/roomcast.d.ts", "default": "./src/roomcast.js"}
    for f in pkg["files"]:
        assert (JS / f).is_file(), f
    # the gateway serves the same files at /lib/
    for name in ("roomcast.js", "roomcast.d.ts"):
        link = ROOT / "gateway" / "static" / "lib" / name
        assert Path(os.path.realpath(link)) == JS / "src" / name


def test_client_agrees_with_the_gateway(node: str) -> None:
    """The client's close-code policy follows the gateway's reconnect advice (roomcast.errors),
    and it refuses to send exactly the gateway's reserved event types (roomcast.protocol)."""
    script = (
        "const m = await import('./src/roomcast.js');"
        f"const codes = {json.dumps([int(c) for c in CloseCode])};"
        "console.log(JSON.stringify({policy: Object.fromEntries(codes.map((c) => [c, m.closePolicy(c)])),"
        " reserved: m.RESERVED_EVENT_TYPES}));"
    )
    out = subprocess.run([node, "--input-type=module", "-e", script], cwd=JS, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert set(got["reserved"]) == set(RESERVED_EVENT_TYPES)
    for code in CloseCode:
        policy = got["policy"][str(int(code))]
        advice = code.reconnect_advice
        if code == CloseCode.TOO_BIG:
            # "never resend that frame": the client refuses oversized requests itself (too_large),
            # reconnects, and fails the requests of that socket that the replay does not show
            assert policy == "backoff", code
        elif advice == "backoff":
            assert policy in ("backoff", "busy"), code  # busy: backoff from a longer first delay
        else:
            assert policy == advice, code
    assert got["policy"]["1013"] == got["policy"]["4008"] == "busy"
