"""The trivia demo (gateway/static/demo/) in real browsers against a 2-replica cluster.

tests/e2e/demo.spec.mjs drives headless Chromium (Debian's /usr/bin/chromium, through the
npm package playwright-core installed into tests/e2e/node_modules from its lock file) with three
isolated pages: the host on replica A, the player Ada on replica B, the player Grace on replica
A, each given both gateway URLs. They play three rounds; in round 2 this test SIGKILLs replica A
(the spec asks for it on stdout and waits for "killed" on stdin), the host and Grace fail over to
B and the round finishes; in round 3 Ada reloads her page and must show the same state. Every page
must then SHOW the same final scoreboard (DOM text). The final page is saved to
test-output/demo-scoreboard.png.

Needs Node >= 20 and Chromium (`./dev setup` installs Debian's chromium); the demo uses the
browser client clients/js/src/roomcast.js (served at /lib/roomcast.js).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.harness import OUTPUT, ROOT, UNIT, cluster, http_get

pytestmark = pytest.mark.system

E2E = ROOT / "tests" / "e2e"
CLIENT = ROOT / "clients" / "js" / "src" / "roomcast.js"
CHROMIUM = os.environ.get("ROOMCAST_CHROMIUM", "/usr/bin/chromium")
SCREENSHOT = OUTPUT / "demo-scoreboard.png"
RUN_TIMEOUT = 80 * UNIT  # the browser part; the spec gives itself 75 s


def _node_modules() -> None:
    """Install playwright-core from tests/e2e/package-lock.json unless it is already there."""
    node = shutil.which("node")
    assert node, "Node.js >= 20 is needed (node not found on PATH)"
    major = int(subprocess.run([node, "-p", "process.versions.node.split('.')[0]"], capture_output=True,
                               text=True, check=True, timeout=30).stdout.strip())
    assert major >= 20, f"Node.js >= 20 is needed, found {major}"
    installed = E2E / "node_modules" / "playwright-core" / "package.json"
    lock = json.loads((E2E / "package-lock.json").read_text())
    want = lock["packages"]["node_modules/playwright-core"]["version"]
    if installed.exists() and json.loads(installed.read_text()).get("version") == want:
        return
    npm = shutil.which("npm")
    assert npm, "npm is needed to install tests/e2e (playwright-core)"
    done = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=E2E,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"npm ci in tests/e2e failed:\n{done.stdout}\n{done.stderr}"


class Spec:
    """The Node process: JSON lines from its stdout, commands to its stdin."""

    def __init__(self, config: dict[str, Any], log: Path) -> None:
        self._log = open(log, "w")  # closed in stop()
        env = dict(os.environ, ROOMCAST_E2E=json.dumps(config))
        self.proc = subprocess.Popen(["node", "demo.spec.mjs"], cwd=E2E, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log)
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.seen: list[dict[str, Any]] = []

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if line:
                try:
                    self.lines.put(json.loads(line))
                except ValueError:
                    self.lines.put({"step": "noise", "text": line})
        self.lines.put(None)

    def next(self, deadline: float) -> dict[str, Any]:
        left = deadline - time.monotonic()
        try:
            msg = self.lines.get(timeout=max(left, 0.01))
        except queue.Empty:
            raise TimeoutError("the browser test took too long") from None
        if msg is None:
            raise RuntimeError(f"the browser test exited with {self.proc.wait()} before it finished")
        self.seen.append(msg)
        return msg

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stop(self) -> int:
        """Let the spec close its browser and exit; if it does not, SIGTERM (it then closes the
        browser itself); SIGKILL only if that hangs too."""
        for step in (self.proc.terminate, self.proc.kill):
            try:
                self.proc.wait(10 * UNIT)
                break
            except subprocess.TimeoutExpired:
                step()
        self.proc.wait()
        if self.proc.stdin:
            self.proc.stdin.close()
        if self.proc.stdout:
            self.proc.stdout.close()
        self._log.close()
        return self.proc.returncode


def test_trivia_demo_two_replicas_failover_and_reload() -> None:
    assert CLIENT.is_file(), f"the browser client {CLIENT.relative_to(ROOT)} is missing"
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} not found: run ./dev setup (installs Debian's chromium)"
    _node_modules()
    OUTPUT.mkdir(exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    log = OUTPUT / "demo-e2e.log"

    with cluster(2, 1) as c:
        a, b = c.gateways
        for gw in (a, b):  # the demo and the client are served by every replica
            status, body = http_get(gw.http + "/demo/")
            assert status == 200 and "roomcast trivia" in body, (status, body[:200])
            assert http_get(gw.http + "/lib/roomcast.js")[0] == 200
        config = {
            "a": {"http": a.http, "ws": a.url, "node": a.env["NODE_ID"]},
            "b": {"http": b.http, "ws": b.url, "node": b.env["NODE_ID"]},
            "screenshot": str(SCREENSHOT),
            "chromium": CHROMIUM,
            "timeScale": UNIT,
        }
        spec = Spec(config, log)
        deadline = time.monotonic() + RUN_TIMEOUT
        killed = False
        done: dict[str, Any] | None = None
        try:
            while done is None:
                msg = spec.next(deadline)
                if msg.get("step") == "error":
                    raise AssertionError(f"browser test failed: {msg['error']}\n--- log ---\n{log.read_text()[-6000:]}")
                if msg.get("need") == "kill-a":
                    a.kill()  # SIGKILL, mid-round
                    assert not a.alive()
                    killed = True
                    spec.send("killed")
                if msg.get("step") == "done":
                    done = msg
        except (TimeoutError, RuntimeError) as exc:
            raise AssertionError(f"{exc}\nsteps: {spec.seen}\n--- log ---\n{log.read_text()[-6000:]}") from None
        finally:
            rc = spec.stop()

    assert rc == 0, f"the browser test exited with {rc}"
    assert killed, "replica A was never killed"
    steps = [m.get("step") for m in spec.seen]
    assert steps.count("round") == 2 and "reload" in steps, steps
    boards = done["scoreboards"]
    expected = [["1.", "Ada", "3"], ["2.", "Grace", "1"]]
    assert boards["host"] == boards["Ada"] == boards["Grace"] == expected, boards
    assert done["conn"] == {"host": "connected", "Ada": "connected", "Grace": "connected"}, done["conn"]
    assert SCREENSHOT.is_file() and SCREENSHOT.stat().st_size > 10_000
