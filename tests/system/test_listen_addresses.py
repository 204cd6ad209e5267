"""Where the processes listen, and what they say when they start.

The coordinator has its own COORDINATOR_HOST (it used to take the gateway's GATEWAY_HOST), and
the embedded default starts without warnings about privacy keys that nothing would use."""

from __future__ import annotations

import contextlib
import socket

import pytest

from tests.harness import (
    UNIT,
    CoordinatorProcess,
    free_port,
    gateway,
    gateway_env,
    http_get,
    redis_server,
    wait_http_ready,
)

pytestmark = pytest.mark.system


def _listening(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), 0.5 * UNIT):
        return True
    return False


def test_coordinator_listens_on_coordinator_host_not_gateway_host() -> None:
    with redis_server() as redis:
        port = free_port()
        env = gateway_env({"REDIS_URL": redis.url, "NODE_ID": "coord-host", "COORDINATOR_PORT": str(port),
                           "GATEWAY_HOST": "127.0.0.3", "COORDINATOR_HOST": "127.0.0.1"})
        coord = CoordinatorProcess(port, env).start()  # waits for http://127.0.0.1:port/healthz
        try:
            assert http_get(coord.http + "/healthz")[0] == 200
            assert not _listening("127.0.0.3", port)
        finally:
            coord.stop()
        port = free_port()
        env = dict(env, COORDINATOR_PORT=str(port), COORDINATOR_HOST="127.0.0.2", GATEWAY_HOST="127.0.0.1")
        other = CoordinatorProcess(port, env).start(wait=False)
        try:
            assert other.proc is not None
            wait_http_ready(other.proc, f"http://127.0.0.2:{port}/healthz", "coordinator", other.log, 15 * UNIT)
            assert not _listening("127.0.0.1", port)
        finally:
            other.stop()


def test_embedded_default_starts_without_warnings() -> None:
    with gateway() as g:
        assert http_get(g.http + "/readyz")[0] == 200
        log = g.log()
    assert "listening on" in log
    assert " WARNING " not in log, log
