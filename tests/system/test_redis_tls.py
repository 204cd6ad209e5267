"""Redis over TLS: `rediss://` URLs (with redis-py's query parameters) for every Redis
connection of gateways and the coordinator, the pub/sub subscriber included, against a real
TLS-only `redis-server` whose certificates the test makes; and the subscriber's AUTH reply
is checked (a wrong password is an error, not a silently deaf subscription)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import (
    UNIT,
    Client,
    GatewayProcess,
    RedisClusterServer,
    RedisServer,
    ahttp_get,
    cluster,
    free_port,
    gateway_env,
    make_tls_files,
    unique,
    wait_for,
)

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    files = make_tls_files(Path(tmp_path_factory.mktemp("tls")))
    server = RedisServer(tls=files, password="s3cret-pass").start()
    try:
        yield server
    finally:
        server.stop()


def test_tls_server_refuses_plaintext(tls_redis: RedisServer) -> None:
    # The fixture really is TLS-only: a plaintext client gets nothing useful back.
    plain = RedisServer(port=tls_redis.port)
    assert plain.cli("PING") != "PONG"
    assert tls_redis.cli("PING") == "PONG"


async def test_event_crosses_replicas_over_tls(tls_redis: RedisServer) -> None:
    room = unique("tls")
    with cluster(n_gateways=2, n_coordinators=1, redis=tls_redis) as c:
        a, b = c.gateways
        async with Client.open(a.url) as ca, Client.open(b.url) as cb:
            await ca.hello(unique("dev-a"))
            await cb.hello(unique("dev-b"))
            created = await ca.request({"type": "create_room", "room_id": room, "game_type": "quiz"})
            assert created["type"] == "room_created", created
            joined = await cb.request({"type": "join", "room_id": room})
            assert joined["type"] == "joined", joined
            await ca.expect(type="event", event_type="participant_joined")
            ack = await ca.request({"type": "event", "room_id": room, "event_type": "move", "payload": {"x": 1}})
            assert ack["type"] == "ack", ack
            got = await cb.expect(type="event", event_type="move")
            assert got["seq"] == ack["seq"] and got["payload"] == {"x": 1}
        # The coordinator works over TLS too: it holds the lease and reports ready.
        coord = c.coordinators[0]
        status, body = await ahttp_get(coord.http + "/readyz")
        assert status == 200, body
        assert "SSL" not in a.log() + b.log() + coord.log()


async def test_subscriber_auth_failure_is_reported(tls_redis: RedisServer) -> None:
    # Commands use the right password, the subscription a wrong one: the gateway must say so
    # and stay unready, instead of sitting on a subscription that never delivers.
    wrong = tls_redis.url.replace("s3cret-pass", "wrong-pass")
    env = gateway_env({"REDIS_URL": tls_redis.url, "REDIS_PUBSUB_URL": wrong})
    port = free_port()
    env["GATEWAY_PORT"] = str(port)
    g = GatewayProcess(port, env).start(wait=False)
    try:
        async def healthy() -> bool:
            with contextlib.suppress(OSError):
                return (await ahttp_get(g.http + "/healthz"))[0] == 200
            return False

        await wait_for(healthy, timeout=15 * UNIT)
        await wait_for(lambda: "pub/sub AUTH failed" in g.log(), timeout=10 * UNIT)
        assert "wrong-pass" not in g.log()  # the secret is never logged
        status, _ = await ahttp_get(g.http + "/readyz")
        assert status == 503
    finally:
        g.stop()


async def test_event_crosses_replicas_over_tls_on_a_redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A TLS-only Redis Cluster with a password: the rediss:// URL of one node is enough
    (cluster mode detected, the other nodes found and reached over TLS with the same options)."""
    files = make_tls_files(Path(tmp_path_factory.mktemp("tls-cluster")))
    server = RedisClusterServer(tls=files, password="s3cret-pass").start()
    try:
        assert RedisServer(port=server.port).cli("PING") != "PONG"  # TLS only
        room = unique("tls-rc")
        with cluster(n_gateways=2, n_coordinators=1, redis=server) as c:
            a, b = c.gateways
            async with Client.open(a.url) as ca, Client.open(b.url) as cb:
                await ca.hello(unique("dev-a"))
                await cb.hello(unique("dev-b"))
                created = await ca.request({"type": "create_room", "room_id": room, "game_type": "quiz"})
                assert created["type"] == "room_created", created
                joined = await cb.request({"type": "join", "room_id": room})
                assert joined["type"] == "joined", joined
                ack = await ca.request({"type": "event", "room_id": room, "event_type": "move", "payload": {"x": 1}})
                assert ack["type"] == "ack", ack
                got = await cb.expect(type="event", event_type="move")
                assert got["seq"] == ack["seq"]
            assert "Redis Cluster mode" in a.log()
            status, body = await ahttp_get(c.coordinators[0].http + "/readyz")
            assert status == 200, body
        assert server.cli("EXISTS", f"ws:room:{{{room}}}") == "1"
    finally:
        server.stop()
