"""The HTTP side of the gateway port (/healthz, /readyz, /metrics) and the `gateway` command."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

import pytest

from roomcast.settings import SPECS
from tests.harness import (
    ROOT,
    UNIT,
    Client,
    GatewayProcess,
    ahttp_get,
    free_port,
    gateway,
    gateway_env,
    http_get,
    parse_metrics,
    unique,
    wait_for,
)


def test_healthz_and_readyz(gw: GatewayProcess) -> None:
    assert http_get(gw.http + "/healthz") == (200, "ok\n")
    status, body = http_get(gw.http + "/readyz")
    assert status == 200 and body.strip()
    assert http_get(gw.http + "/healthz?probe=k8s")[0] == 200


@pytest.mark.parametrize("path", ["/", "/nope", "/ws/extra", "/metricsx", "/healthz/x"])
def test_unknown_path_is_404(gw: GatewayProcess, path: str) -> None:
    assert http_get(gw.http + path)[0] == 404


def test_plain_http_get_on_ws_path_is_refused(gw: GatewayProcess) -> None:
    # Not a WebSocket upgrade: the server answers with an HTTP error, never 200 and never a hang.
    status, _ = http_get(gw.http + "/ws")
    assert 400 <= status < 500


async def scrape(gw: GatewayProcess, url: str | None = None) -> dict[str, float]:
    status, body = await ahttp_get(url or gw.http + "/metrics")
    assert status == 200
    assert "# TYPE roomcast_connections gauge" in body
    return parse_metrics(body)


async def test_metrics_reflect_what_clients_did() -> None:
    with gateway() as g:
        m = await scrape(g)
        assert m["roomcast_connections"] == 0
        assert m.get('roomcast_messages_in_total{type="event"}', 0) == 0
        async with Client.open(g.url) as a, Client.open(g.url) as b:
            await a.hello(unique("dev-ma"))
            await b.hello(unique("dev-mb"))
            room = (await a.request({"type": "create_room", "game_type": "m"}))["room"]["room_id"]
            assert (await b.request({"type": "join", "room_id": room}))["type"] == "joined"
            for i in range(3):
                assert (await b.request({"type": "event", "room_id": room, "event_type": "e", "payload": {"i": i}}))[
                    "type"] == "ack"
            assert (await a.request({"type": "update_room", "room_id": room, "status": "in_progress"}))["type"] == "ack"
            other = (await a.request({"type": "create_room", "game_type": "m"}))["room"]["room_id"]
            assert (await a.request({"type": "close_room", "room_id": other}))["type"] == "ack"
            # Two refused requests: one not_member, one bad_request.
            assert (await b.request({"type": "event", "room_id": other, "event_type": "e"}))["code"] == "not_member"
            await b.send("{not json")
            assert (await b.expect(type="error"))["code"] == "bad_request"
            # Every delivery has happened once both have seen room_closed / the last state_change.
            await a.expect(type="event", room_id=other, event_type="room_closed")
            await b.expect(type="event", room_id=room, event_type="state_change")

            m = await scrape(g)
            assert m["roomcast_connections"] == 2
            assert m['roomcast_messages_in_total{type="hello"}'] == 2
            assert m['roomcast_messages_in_total{type="event"}'] == 4
            assert m['roomcast_messages_in_total{type="create_room"}'] == 2
            assert m['roomcast_messages_in_total{type="invalid"}'] == 1
            assert m['roomcast_messages_out_total{type="welcome"}'] == 2
            assert m['roomcast_messages_out_total{type="ack"}'] == 5
            assert m['roomcast_messages_out_total{type="error"}'] == 2
            assert m['roomcast_messages_out_total{type="room_created"}'] == 2
            assert m['roomcast_messages_out_total{type="joined"}'] == 1
            # Deliveries: room 1 has 6 events (a's join, b's join, 3 events, state_change), the first
            # reaching a alone; room 2 has 2 events reaching a alone: 1 + 5*2 + 2.
            assert m['roomcast_messages_out_total{type="event"}'] == 13
            assert m['roomcast_errors_total{code="not_member"}'] == 1
            assert m['roomcast_errors_total{code="bad_request"}'] == 1
            assert m['roomcast_errors_total{code="forbidden"}'] == 0
            assert m["roomcast_fanout_latency_seconds_count"] == 8  # one observation per event fanned out
            assert m['roomcast_fanout_latency_seconds_bucket{le="+Inf"}'] == 8
            assert m["roomcast_fanout_latency_seconds_sum"] > 0
            assert m['roomcast_rooms{status="in_progress"}'] == 1
            assert m['roomcast_rooms{status="closed"}'] == 1
            assert m['roomcast_rooms{status="waiting"}'] == 0
            await a.request({"type": "create_room", "game_type": "m"})
            m = await scrape(g)
            assert m['roomcast_rooms{status="waiting"}'] == 1
            assert m["roomcast_ready"] == 1

        async def all_closed() -> bool:
            return (await scrape(g))["roomcast_connections"] == 0

        await wait_for(all_closed, what="roomcast_connections back to 0")
        m = await scrape(g)
        assert m['roomcast_connections_closed_total{code="1000"}'] == 2


async def test_metrics_port_serves_the_same_registry() -> None:
    mport = free_port()
    with gateway({"METRICS_PORT": str(mport)}) as g:
        url = f"http://127.0.0.1:{mport}/metrics"
        async with Client.open(g.url) as c:
            await c.hello(unique("dev-mport"))
            room = (await c.request({"type": "create_room", "game_type": "t"}))["room"]["room_id"]
            await c.request({"type": "create_room", "game_type": "t"})
            await c.request({"type": "update_room", "room_id": room, "status": "in_progress"})
            # Scraped only on the metrics port: gauges computed at scrape time are current here too.
            m = await scrape(g, url)
            assert m["roomcast_connections"] == 1
            assert m['roomcast_messages_in_total{type="hello"}'] == 1
            assert m['roomcast_rooms{status="waiting"}'] == 1
            assert m['roomcast_rooms{status="in_progress"}'] == 1
            await c.request({"type": "close_room", "room_id": room})
            m = await scrape(g, url)
            assert m['roomcast_rooms{status="in_progress"}'] == 0
            assert m['roomcast_rooms{status="closed"}'] == 1
        # The main port keeps serving /metrics too.
        assert "roomcast_connections" in (await scrape(g))


def run_gateway(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], env=gateway_env(env), cwd=ROOT,
                          capture_output=True, text=True, timeout=30 * UNIT)


def test_help_lists_every_setting() -> None:
    done = run_gateway({}, "--help")
    assert done.returncode == 0, done.stderr
    missing = [spec.env for spec in SPECS if spec.env not in done.stdout]
    assert missing == []
    for spec in SPECS:
        if spec.flag:
            assert spec.flag in done.stdout


BAD_SETTINGS: list[tuple[dict[str, str], list[str], str]] = [
    ({"WEBSOCKET_HEARTBEAT_TIMEOUT": "abc"}, [], "WEBSOCKET_HEARTBEAT_TIMEOUT"),
    ({"GATEWAY_PORT": "99999"}, [], "GATEWAY_PORT"),
    ({"MAX_SEND_BUFFER": "100"}, [], "MAX_SEND_BUFFER"),
    ({"LOG_LEVEL": "LOUD"}, [], "LOG_LEVEL"),
    ({"REQUIRE_AUTH": "true"}, [], "REQUIRE_AUTH"),  # without AUTH_JWT_SECRET
    ({"WEBSOCKET_HEARTBEAT_TIMEOUT": "10000", "WEBSOCKET_HEARTBEAT_INTERVAL": "10000"}, [],
     "WEBSOCKET_HEARTBEAT_INTERVAL"),
    ({}, ["--heartbeat-timeout", "soon"], "WEBSOCKET_HEARTBEAT_TIMEOUT"),
]


@pytest.fixture(scope="module")
def bad_runs() -> list[tuple[int, str]]:
    """Start every bad-settings gateway at once (each should exit at start), collect (code, stderr)."""
    procs = [
        subprocess.Popen([sys.executable, "-m", "gateway", *args],
                         env=gateway_env({"GATEWAY_PORT": str(free_port()), **env}), cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for env, args, _ in BAD_SETTINGS
    ]
    out = []
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=30 * UNIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        out.append((proc.returncode, err))
    return out


@pytest.mark.parametrize("case", range(len(BAD_SETTINGS)), ids=[f"{c[2]}-{i}" for i, c in enumerate(BAD_SETTINGS)])
def test_bad_setting_exits_2_with_one_line(bad_runs: list[tuple[int, str]], case: int) -> None:
    code, err = bad_runs[case]
    var = BAD_SETTINGS[case][2]
    assert code == 2, (code, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert var in lines[0]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_closes_clients_1001_and_exits_0(sig: int) -> None:
    with gateway() as g:
        async with Client.open(g.url) as a, Client.open(g.url) as b:
            await a.hello(unique("dev-sig"))
            await b.hello(unique("dev-sig"))
            room = (await a.request({"type": "create_room", "game_type": "t"}))["room"]["room_id"]
            await b.request({"type": "join", "room_id": room})
            g.signal(sig)
            assert await a.closed() == 1001
            assert await b.closed() == 1001
        assert g.proc is not None
        assert await asyncio.to_thread(g.proc.wait, 10 * UNIT) == 0
        log = g.log()
        assert "Traceback" not in log
        # Once stopped, the port is closed.
        with pytest.raises(OSError):
            http_get(g.http + "/healthz", timeout=1)
