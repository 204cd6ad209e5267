"""Fan-out writes coalesced per pub/sub read (gateway/hub.py): a burst of events that reach a
room in one read of the subscriber connection goes out as one buffer per member. What users rely on stays:
every member gets every event once, in seq order, a member that leaves gets a gap-free run up
to its `left`, and the delivery counter counts deliveries. Embedded and cluster mode (Redis
pub/sub, where one read of the subscriber connection carries many events)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tests.harness import UNIT, Client, GatewayProcess, ahttp_get, gateway, parse_metrics, redis_server, unique

BURST = 300


@pytest.fixture(params=["embedded", "cluster"])
def gw(request: pytest.FixtureRequest) -> Iterator[GatewayProcess]:
    env = {"RATE_MESSAGES_PER_SEC": "100000", "RATE_MESSAGES_BURST": "100000"}
    if request.param == "embedded":
        with gateway(env) as g:
            yield g
        return
    with redis_server() as redis, gateway(env | {"REDIS_URL": redis.url}) as g:
        yield g


async def room_events(c: Client, room_id: str, until: Any, timeout: float = 10 * UNIT) -> list[dict[str, Any]]:
    """Every message of the room's events in arrival order, up to the first one `until` accepts."""
    got: list[dict[str, Any]] = []
    queued, c.inbox = c.inbox, []
    for msg in queued:
        if msg.get("type") == "event" and msg.get("room_id") == room_id:
            got.append(msg)
        if until(msg):
            return got
    async with asyncio.timeout(timeout):
        while True:
            msg = orjson.loads(await c.ws.recv())
            if msg.get("type") == "event" and msg.get("room_id") == room_id:
                got.append(msg)
            if until(msg):
                return got


def burst_of(events: list[dict[str, Any]]) -> list[int]:
    return [e["payload"]["i"] for e in events if e["event_type"] == "burst"]


def gap_free(events: list[dict[str, Any]]) -> bool:
    seqs = [e["seq"] for e in events]
    return seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else True


async def test_a_burst_reaches_every_member_once_in_order(gw: GatewayProcess) -> None:
    async with Client.open(gw.url) as pub, Client.open(gw.url) as r1, Client.open(gw.url) as r2, \
            Client.open(gw.url) as leaver:
        for c, name in ((pub, "pub"), (r1, "r1"), (r2, "r2"), (leaver, "leaver")):
            await c.hello(unique(f"dev-burst-{name}"))
        room_id = (await pub.request({"type": "create_room", "game_type": "t"}))["room"]["room_id"]
        for c in (r1, r2, leaver):
            assert (await c.request({"type": "join", "room_id": room_id}))["type"] == "joined"
        head = (await pub.request({"type": "event", "room_id": room_id, "event_type": "mark"}))["seq"]
        # The whole burst without waiting for acks: the gateway reads it in a few large reads,
        # and many events reach the room in one loop iteration.
        frames = [orjson.dumps({"type": "event", "room_id": room_id, "event_type": "burst", "payload": {"i": i}})
                  for i in range(BURST)]
        for f in frames:
            await pub.ws.send(f.decode())
        # The leaver leaves in the middle of it.
        await leaver.send({"type": "leave", "room_id": room_id, "id": 1})

        def last_burst(m: dict[str, Any]) -> bool:
            return m.get("event_type") == "burst" and m["payload"]["i"] == BURST - 1

        for c in (r1, r2):
            got = await room_events(c, room_id, last_burst)
            after = [e for e in got if e["seq"] > head]
            assert burst_of(after) == list(range(BURST))  # each once, in order
            assert gap_free(after)
        mine = await room_events(pub, room_id, last_burst)
        assert burst_of([e for e in mine if e["seq"] > head]) == list(range(BURST))

        left = await room_events(leaver, room_id, lambda m: m.get("type") == "left")
        before_left = [e for e in left if e["seq"] >= head]
        assert before_left and before_left[0]["seq"] == head and gap_free(before_left)
        assert burst_of(before_left) == list(range(len(burst_of(before_left))))
        assert await leaver.drain(0.3 * UNIT) == []  # nothing of the room after `left`


async def test_event_deliveries_counter_counts_each_delivery(gw: GatewayProcess) -> None:
    async with Client.open(gw.url) as pub, Client.open(gw.url) as reader:
        await pub.hello(unique("dev-count-pub"))
        await reader.hello(unique("dev-count-read"))
        room_id = (await pub.request({"type": "create_room", "game_type": "t"}))["room"]["room_id"]
        assert (await reader.request({"type": "join", "room_id": room_id}))["type"] == "joined"
        for i in range(50):
            await pub.send({"type": "event", "room_id": room_id, "event_type": "burst", "payload": {"i": i}})

        def last(m: dict[str, Any]) -> bool:
            return m.get("event_type") == "burst" and m["payload"]["i"] == 49

        got = [await room_events(c, room_id, last) for c in (pub, reader)]
        status, body = await ahttp_get(gw.http + "/metrics")
        assert status == 200
        delivered = parse_metrics(body)['roomcast_messages_out_total{type="event"}']
        assert delivered == sum(len(g) for g in got)
