"""MOVED/ASK redirects on a real Redis Cluster (3 primaries + 3 replicas), counted per node.

A room in use (host on one gateway, a member on another, events sent all along) has its slot
migrated to another primary the way `redis-cli --cluster reshard` does it: IMPORTING on the
target, MIGRATING on the source, MIGRATE of the slot's keys (from then on the source answers
ASK for the room's commands), then SETSLOT NODE (from then on the source answers MOVED to a
gateway whose slot map is stale). The gateway's `roomcast_redis_redirects_total` must count
both, by the source node, and no acked event may be lost: the member sees every seq in order.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from tests.harness import (
    UNIT,
    Client,
    RedisClusterServer,
    ahttp_get,
    cluster,
    parse_metrics,
    redis_of_kind,
    unique,
    wait_for,
)

pytestmark = [pytest.mark.system, pytest.mark.timeout(240)]


def _slot(redis: RedisClusterServer, key: str) -> int:
    return int(redis.primary_nodes()[0].cli("CLUSTER", "KEYSLOT", key))


async def _redirects(http: str) -> dict[tuple[str, str], float]:
    status, body = await ahttp_get(http + "/metrics")
    assert status == 200
    out: dict[tuple[str, str], float] = {}
    for name, value in parse_metrics(body).items():
        if name.startswith("roomcast_redis_redirects_total{"):
            labels = dict(part.split("=", 1) for part in name[name.index("{") + 1:-1].split(","))
            out[(labels["kind"].strip('"'), labels["node"].strip('"'))] = value
    return out


async def test_a_slot_moved_under_a_room_in_use_counts_ask_and_moved_and_loses_nothing() -> None:
    with redis_of_kind("redis-cluster") as redis, cluster(2, 1, {
            "RATE_MESSAGES_PER_SEC": "1000", "RATE_MESSAGES_BURST": "1000"}, redis=redis) as c:
        assert isinstance(redis, RedisClusterServer)
        room_id = unique("moving")
        src = redis.node_of(f"ws:room:{{{room_id}}}")
        dst = next(n for n in redis.primary_nodes() if n.port != src.port)
        slot = _slot(redis, f"ws:room:{{{room_id}}}")
        gw0, gw1 = c.gateways
        async with Client.open(gw0.url) as host, Client.open(gw1.url) as member:
            await host.hello(unique("host"))
            await member.hello(unique("member"))
            created = await host.request({"type": "create_room", "room_id": room_id, "game_type": "move"})
            assert created["type"] == "room_created", created
            joined = await member.request({"type": "join", "room_id": room_id})
            assert joined["type"] == "joined", joined
            # Every primary is exported at 0 from the start (rate() has data before a redirect).
            before = await _redirects(gw0.http)
            assert before.get(("moved", f"127.0.0.1:{src.port}")) == 0, before
            assert before.get(("ask", f"127.0.0.1:{dst.port}")) == 0, before

            acked: list[int] = []
            retried = 0
            answered = 0
            stop = asyncio.Event()

            async def publish() -> None:
                nonlocal retried, answered
                for n in range(5000):  # bounded; stopped once the slot has moved
                    if stop.is_set():
                        return
                    reply = await host.request({"type": "event", "room_id": room_id, "event_type": "tick",
                                                "payload": {"n": n}}, timeout=10 * UNIT)
                    answered += 1
                    if reply["type"] == "ack":
                        acked.append(reply["seq"])
                    else:
                        # While the slot migrates, the room's script (several keys, not all of which exist)
                        # gets TRYAGAIN on the importing node: retryable, the client sends again.
                        assert reply.get("code") == "unavailable", reply
                        retried += 1
                    await asyncio.sleep(0.005)

            got: list[dict[str, Any]] = []

            async def read() -> None:  # the member reads all along (a reader that stops is a slow consumer)
                with contextlib.suppress(ConnectionClosed):  # the end of the test closes it
                    for _ in range(100_000):
                        got.append(await member.expect(30 * UNIT, type="event", room_id=room_id))

            reader = asyncio.get_running_loop().create_task(read())
            task = asyncio.get_running_loop().create_task(publish())
            try:
                await wait_for(lambda: len(acked) >= 5, 10 * UNIT, what="events before the move")
                src_id, dst_id = src.cli("CLUSTER", "MYID"), dst.cli("CLUSTER", "MYID")
                assert dst.cli("CLUSTER", "SETSLOT", str(slot), "IMPORTING", src_id) == "OK"
                assert src.cli("CLUSTER", "SETSLOT", str(slot), "MIGRATING", dst_id) == "OK"
                for _ in range(100):
                    names = src.cli("CLUSTER", "GETKEYSINSLOT", str(slot), "1000").split()
                    if not names:
                        break
                    out = src.cli("MIGRATE", "127.0.0.1", str(dst.port), "", "0", "5000", "KEYS", *names)
                    assert out == "OK", out
                # The room's keys are on dst, its slot still src's: src answers ASK.
                n_ask = answered
                await wait_for(lambda: answered >= n_ask + 3, 10 * UNIT, what="events sent while the slot migrates")
                asks = (await _redirects(gw0.http)).get(("ask", f"127.0.0.1:{src.port}"), 0)
                assert asks > 0, await _redirects(gw0.http)
                for node in redis.primary_nodes():
                    assert node.cli("CLUSTER", "SETSLOT", str(slot), "NODE", dst_id) == "OK"
                n_moved = len(acked)
                await wait_for(lambda: len(acked) >= n_moved + 5, 10 * UNIT, what="events after the move")
                after = await _redirects(gw0.http)
                assert after.get(("moved", f"127.0.0.1:{src.port}"), 0) > 0, after
            finally:
                stop.set()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait_for(task, 15 * UNIT)
            assert redis.node_of(f"ws:room:{{{room_id}}}").port == dst.port
            last = await host.request({"type": "event", "room_id": room_id, "event_type": "end"})
            assert last["type"] == "ack", last
            # The member (on the other gateway) sees every event in order, gap-free: those
            # published on dst while its subscription was still on src are repaired from the stream.
            try:
                await wait_for(lambda: bool(got) and got[-1]["seq"] >= last["seq"], 10 * UNIT, what="the last event")
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader
            seqs = [e["seq"] for e in got]
            assert seqs == list(range(joined["seq"] + 1, last["seq"] + 1)), seqs
            assert set(acked) <= set(seqs)
            print(f"acked {len(acked)}, retried {retried}, redirects {after}")


async def test_a_redirect_that_bounces_between_two_nodes_is_retryable_not_internal() -> None:
    """While a slot's owner is switched node by node (SETSLOT NODE on each primary), the old
    owner can already answer MOVED to the new one while the new one, still IMPORTING, answers
    MOVED back. The batcher follows a few rounds; a command still redirected after them did not
    run: its caller gets `unavailable` (retryable), not the MOVED as an internal error."""
    from roomcast.errors import ErrorCode, GatewayError
    from roomcast.redis.batch import Batcher, cmd
    from roomcast.redis.client import make_client

    with redis_of_kind("redis-cluster") as redis:
        assert isinstance(redis, RedisClusterServer)
        batcher = Batcher(make_client(redis.url))
        try:
            assert await batcher.detect()
            key = unique("bounce")  # never written: its slot has no keys, so it may be reassigned
            src = redis.node_of(key)
            dst = next(n for n in redis.primary_nodes() if n.port != src.port)
            slot = _slot(redis, key)
            src_id, dst_id = src.cli("CLUSTER", "MYID"), dst.cli("CLUSTER", "MYID")
            assert dst.cli("CLUSTER", "SETSLOT", str(slot), "IMPORTING", src_id) == "OK"
            assert src.cli("CLUSTER", "SETSLOT", str(slot), "NODE", dst_id) == "OK"
            assert src.cli("GET", key).startswith("MOVED") and dst.cli("GET", key).startswith("MOVED")
            with pytest.raises(GatewayError) as exc:
                await batcher.call(cmd("get", key))
            assert exc.value.code is ErrorCode.UNAVAILABLE
            # The owner switch completes: the same command is answered.
            for node in redis.primary_nodes():
                assert node.cli("CLUSTER", "SETSLOT", str(slot), "NODE", dst_id) == "OK"
            assert await batcher.call(cmd("get", key)) is None
        finally:
            await batcher.aclose()
