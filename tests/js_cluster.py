"""A cluster of two gateways for the JS client's integration tests (clients/js/test/integration).

Two ways to run them, with the same cluster settings (`JS_CLUSTER_ENV`):

- tests/system/test_js_client.py starts the cluster with `tests.harness.cluster`, runs node with
  ROOMCAST_URLS set and, when the node output has a line `ROOMCAST_KILL <node-id>`, kills that
  gateway with SIGKILL (`run_node`).
- `node --test clients/js/test/` without ROOMCAST_URLS: the JS tests start this module
  (`python -m tests.js_cluster`), which prints one JSON line `{"urls": [...], "nodes": [...]}`,
  then reads commands from stdin: `kill <node-id>` (answered `killed <node-id>`). End of stdin
  stops everything.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping

from tests.harness import Cluster, GatewayProcess, cluster

# Short heartbeat timeout: a muted client gets 4002 within ~2.5 s, and the coordinator times out
# the sockets of a killed replica as fast. Browser-style Origin checks for the 1008 test; small
# connection limits for 4008 and 1013. Device tokens are required, so every resume also proves that
# the client sends back welcome.device_token. Every test socket comes from 127.0.0.1: the
# per-address connect rate is lifted so that it never closes one with 4008.
JS_CLUSTER_ENV: dict[str, str] = {
    "WEBSOCKET_HEARTBEAT_TIMEOUT": "1500",
    "ALLOWED_ORIGINS": "http://roomcast.test",
    "MAX_CONNECTIONS_PER_DEVICE": "3",
    "MAX_CONNECTIONS": "40",
    "DEVICE_TOKEN_SECRET": "js-client-tests-device-token-secret",
    "REQUIRE_DEVICE_TOKEN": "true",
    "CONNECT_RATE_PER_ADDRESS": "1000",
}

KILL_LINE = re.compile(r"ROOMCAST_KILL (\S+)")


def gateway_by_node(c: Cluster, node_id: str) -> GatewayProcess:
    for g in c.gateways:
        if g.env.get("NODE_ID") == node_id:
            return g
    raise KeyError(node_id)


def urls_env(c: Cluster) -> dict[str, str]:
    return {
        "ROOMCAST_URLS": ",".join(g.url for g in c.gateways),
        "ROOMCAST_NODES": ",".join(g.env["NODE_ID"] for g in c.gateways),
    }


def run_node(cmd: list[str], c: Cluster, env: Mapping[str, str], cwd: str, timeout: float,
             echo: Callable[[str], None] = lambda line: None) -> tuple[int, str, list[str]]:
    """Run `cmd`, reading its output line by line; kill the gateway named on a ROOMCAST_KILL
    line. Returns (exit code, output, killed node ids). Kills `cmd` if it outlives `timeout`."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    lines: list[str] = []
    killed: list[str] = []
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            echo(line.rstrip("\n"))
            m = KILL_LINE.search(line)
            if m and m.group(1) not in killed:
                gateway_by_node(c, m.group(1)).kill()  # SIGKILL, like a crashed replica
                killed.append(m.group(1))
        rc = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return rc, "".join(lines), killed


def main() -> int:
    # SIGTERM (the JS side ending badly) stops the cluster like end of stdin does
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with cluster(2, 1, JS_CLUSTER_ENV) as c:
        print(json.dumps({"urls": [g.url for g in c.gateways], "nodes": [g.env["NODE_ID"] for g in c.gateways]}),
              flush=True)
        for raw in sys.stdin:
            words = raw.split()
            if len(words) == 2 and words[0] == "kill":
                gateway_by_node(c, words[1]).kill()
                print(f"killed {words[1]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
