"""HEAD gets the status and headers of GET and no body (RFC 9110 section 9.3.2), on every HTTP
endpoint: the gateway's main port, its separate metrics port, and the coordinator's port.
Raw sockets, so that an HTTP client library cannot hide body bytes the server sent."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from tests.harness import UNIT, Cluster, GatewayProcess, cluster, free_port, gateway

pytestmark = pytest.mark.system


def raw_request(port: int, method: str, path: str) -> tuple[str, dict[str, str], bytes]:
    """(status line, headers, every byte after the headers until the server closed)."""
    request = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
    data = b""
    deadline = time.monotonic() + 5 * UNIT
    with socket.create_connection(("127.0.0.1", port), timeout=5 * UNIT) as sock:
        sock.sendall(request)
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        else:
            raise TimeoutError(f"{method} {path}: the server did not close the connection")
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, f"{method} {path}: no end of headers in {data[:200]!r}"
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status, headers, body


def assert_head_like_get(port: int, path: str, *, same_body: bool = True) -> None:
    get_status, get_headers, get_body = raw_request(port, "GET", path)
    status, headers, body = raw_request(port, "HEAD", path)
    assert body == b"", f"HEAD {path} got {len(body)} body bytes: {body[:80]!r}"
    assert status == get_status
    assert headers.get("content-type") == get_headers.get("content-type")
    length = headers.get("content-length")
    assert length is not None and length.isdigit(), headers
    if same_body:
        assert int(length) == len(get_body) > 0
    else:  # /metrics changes between two scrapes: only its order of magnitude is the same
        assert int(length) > 0 and len(get_body) > 0


@pytest.fixture(scope="module")
def gw() -> Iterator[GatewayProcess]:
    with gateway({"METRICS_PORT": str(free_port())}) as g:
        yield g


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/lib/roomcast.js", "/demo/", "/no-such-page"])
def test_gateway_head_has_no_body(gw: GatewayProcess, path: str) -> None:
    assert_head_like_get(gw.port, path)


def test_gateway_head_metrics_has_no_body(gw: GatewayProcess) -> None:
    assert_head_like_get(gw.port, "/metrics", same_body=False)
    assert_head_like_get(int(gw.env["METRICS_PORT"]), "/metrics", same_body=False)


def test_gateway_head_of_the_websocket_path_is_refused_without_body(gw: GatewayProcess) -> None:
    status, headers, body = raw_request(gw.port, "HEAD", "/ws")
    assert status.startswith("HTTP/1.1 405 ")
    assert headers.get("allow") == "GET"
    assert body == b""


@pytest.fixture(scope="module")
def coordinated() -> Iterator[Cluster]:
    with cluster(n_gateways=0, n_coordinators=1) as c:
        yield c


@pytest.mark.parametrize("path", ["/healthz", "/no-such-page"])
def test_coordinator_head_has_no_body(coordinated: Cluster, path: str) -> None:
    assert_head_like_get(coordinated.coordinators[0].port, path)


def test_coordinator_head_metrics_has_no_body(coordinated: Cluster) -> None:
    assert_head_like_get(coordinated.coordinators[0].port, "/metrics", same_body=False)
