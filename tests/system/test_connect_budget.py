"""The device's connect and join budgets (CONNECT_RATE_PER_DEVICE, burst 10; JOIN_RATE, burst
20) taken in the same step as the hello's connection record and the join's device check
(issue 14), on the embedded gateway, one Redis and a Redis Cluster: beyond the budget a hello
is closed 4008 and records nothing, a join gets `rate_limited` with its retry_after_ms; with a
connect webhook the budget is taken first and a refused hello never reaches the backend."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from tests.harness import UNIT, Client, GatewayProcess, gateway, redis_of_kind, unique
from tests.system.test_webhooks import backend_server, calls_of

KINDS = ("embedded", "redis", "redis-cluster")
DEVICE_BURST = 10
JOIN_BURST = 20
SLOW = "0.01"  # tokens per second: nothing comes back during a test


@contextlib.contextmanager
def gateway_of(kind: str, env: dict[str, str]) -> Iterator[GatewayProcess]:
    with contextlib.ExitStack() as stack:
        if kind != "embedded":
            env = env | {"REDIS_URL": stack.enter_context(redis_of_kind(kind)).url}
        yield stack.enter_context(gateway(env))


async def say_hello(gw: GatewayProcess, device: str) -> dict[str, Any] | int:
    """One socket's hello: the welcome, or the close code."""
    async with Client.open(gw.url) as c:
        try:
            await c.send({"type": "hello", "id": "h", "device_id": device})
            return await c.expect(re="h")
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd is not None else -1


@pytest.mark.parametrize("kind", KINDS)
async def test_a_hello_beyond_the_device_budget_closes_4008_and_records_nothing(kind: str) -> None:
    with gateway_of(kind, {"CONNECT_RATE_PER_DEVICE": SLOW, "MAX_CONNECTIONS_PER_DEVICE": "100"}) as gw:
        device = unique("dev-often")
        replies = [await say_hello(gw, device) for _ in range(DEVICE_BURST + 2)]
        assert [r if isinstance(r, int) else r["type"] for r in replies] == ["welcome"] * DEVICE_BURST + [4008, 4008]
        welcomes = [r for r in replies if isinstance(r, dict)]
        assert [w["reconnect_count"] for w in welcomes] == list(range(DEVICE_BURST))
        # Another device has its own budget; the refused hellos were never connections.
        assert isinstance(await say_hello(gw, unique("dev-other")), dict)
        metrics = gw.metrics()
        assert metrics.get('roomcast_rate_limited_total{limit="connect_device"}', 0) == 2, metrics


@pytest.mark.parametrize("kind", KINDS)
async def test_with_a_connect_webhook_the_budget_is_taken_before_the_backend_is_asked(kind: str) -> None:
    with backend_server() as (backend, base), gateway_of(kind, {
            "CONNECT_RATE_PER_DEVICE": SLOW, "MAX_CONNECTIONS_PER_DEVICE": "100",
            "BACKEND_CONNECT_URL": base + "/connect", "BACKEND_TIMEOUT_MS": str(int(600 * UNIT))}) as gw:
        device = unique("dev-hooked")
        replies = [await say_hello(gw, device) for _ in range(DEVICE_BURST + 1)]
        assert [r if isinstance(r, int) else r["type"] for r in replies] == ["welcome"] * DEVICE_BURST + [4008]
        assert len([b for b in calls_of(backend, "/connect") if b["device_id"] == device]) == DEVICE_BURST


@pytest.mark.parametrize("kind", KINDS)
async def test_a_join_beyond_the_device_budget_is_rate_limited_on_any_socket(kind: str) -> None:
    with gateway_of(kind, {"JOIN_RATE": SLOW, "MAX_CONNECTIONS_PER_DEVICE": "100"}) as gw:
        room = unique("budget")
        async with Client.open(gw.url) as host, Client.open(gw.url) as a, Client.open(gw.url) as b:
            await host.hello(unique("dev-host"))
            created = await host.request({"type": "create_room", "room_id": room, "game_type": "quiz"})
            assert created["type"] == "room_created", created
            device = unique("dev-joiner")
            await a.hello(device)
            await b.hello(device)
            replies = [await (a, b)[i % 2].request({"type": "join", "room_id": room}) for i in range(JOIN_BURST + 1)]
            assert [r["type"] for r in replies[:JOIN_BURST]] == ["joined"] * JOIN_BURST
            limited = replies[-1]
            assert limited["type"] == "error" and limited["code"] == "rate_limited", limited
            assert limited["retry_after_ms"] > 1000, limited
            # Another device still joins.
            async with Client.open(gw.url) as other:
                await other.hello(unique("dev-other"))
                assert (await other.request({"type": "join", "room_id": room}))["type"] == "joined"
