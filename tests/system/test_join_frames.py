"""What a joiner reads, frame by frame (issue 14, connects): the join's reply and the events
held while the join was in flight are written together (Hub.finish_join), and that must keep
the order protocol.md gives: `joined` (or `room_created`) first, then every event after its
seq exactly once, in order, the joiner's own participant_joined included; on the embedded
gateway, one Redis and a Redis Cluster."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tests.harness import UNIT, Client, GatewayProcess, gateway, redis_of_kind, unique

KINDS = ("embedded", "redis", "redis-cluster")
JOINERS = 12
EVENTS = 40  # sent by the host while the joiners join


@contextlib.contextmanager
def gateway_of(kind: str) -> Iterator[GatewayProcess]:
    with contextlib.ExitStack() as stack:
        env: dict[str, str] = {}
        if kind != "embedded":
            env["REDIS_URL"] = stack.enter_context(redis_of_kind(kind)).url
        yield stack.enter_context(gateway(env))


async def frames(c: Client, n: int) -> list[dict[str, Any]]:
    """The next n messages as they come off the socket (no filtering, no reordering)."""
    return [orjson.loads(await asyncio.wait_for(c.ws.recv(), 5 * UNIT)) for _ in range(n)]


@pytest.mark.parametrize("kind", KINDS)
async def test_the_reply_comes_first_then_the_joiners_own_participant_joined(kind: str) -> None:
    with gateway_of(kind) as gw:
        async with Client.open(gw.url) as host, Client.open(gw.url) as joiner:
            await host.hello(unique("host"))
            await joiner.hello(unique("joiner"))
            await host.send({"type": "create_room", "id": 1, "game_type": "trivia"})
            created, own = await frames(host, 2)
            assert created["type"] == "room_created" and created["re"] == 1, created
            room_id = created["room"]["room_id"]
            assert own["type"] == "event" and own["seq"] == 1 and own["event_type"] == "participant_joined"
            assert own["payload"]["device_id"] == host.welcome["device_id"]  # type: ignore[index]

            await joiner.send({"type": "join", "id": 2, "room_id": room_id})
            joined, own = await frames(joiner, 2)
            assert joined["type"] == "joined" and joined["re"] == 2 and joined["seq"] == 1, joined
            assert own["type"] == "event" and own["seq"] == 2 and own["event_type"] == "participant_joined", own
            assert own["payload"]["device_id"] == joiner.welcome["device_id"]  # type: ignore[index]
            # The room's member got it too, and nothing else came to the joiner meanwhile.
            ev = (await frames(host, 1))[0]
            assert ev["seq"] == 2 and ev["payload"]["device_id"] == own["payload"]["device_id"]
            assert await joiner.drain() == []


@pytest.mark.parametrize("kind", KINDS)
async def test_joiners_during_a_stream_of_events_get_each_later_event_once_in_order(kind: str) -> None:
    with gateway_of(kind) as gw:
        async with contextlib.AsyncExitStack() as stack:
            host = await stack.enter_async_context(Client.open(gw.url))
            await host.hello(unique("host"))
            room_id = (await host.request({"type": "create_room", "game_type": "trivia"}))["room"]["room_id"]
            joiners = [await stack.enter_async_context(Client.open(gw.url)) for _ in range(JOINERS)]
            for i, c in enumerate(joiners):
                await c.hello(unique(f"j{i}"))

            async def publish() -> None:
                for i in range(EVENTS):
                    await host.send({"type": "event", "id": 1000 + i, "room_id": room_id, "event_type": "tick"})
                    if i % 4 == 0:
                        await asyncio.sleep(0)

            async def join(c: Client) -> None:
                await c.send({"type": "join", "id": "j", "room_id": room_id})

            await asyncio.gather(publish(), *(join(c) for c in joiners))
            # The host's last ack: every event and join is sequenced before it is read.
            await host.expect(re=1000 + EVENTS - 1, timeout=10 * UNIT)
            await host.send({"type": "event", "id": "last", "room_id": room_id, "event_type": "last"})
            last = (await host.expect(re="last"))["seq"]
            assert last == 1 + JOINERS + EVENTS + 1  # the host's participant_joined, joins, ticks, last

            for c in joiners:
                first = (await frames(c, 1))[0]
                assert first["type"] == "joined" and first["re"] == "j", first
                head = first["seq"]
                seqs = []
                mine = 0
                while not seqs or seqs[-1] < last:
                    msg = (await frames(c, 1))[0]
                    assert msg["type"] == "event", msg  # nothing but the room's events follow
                    seqs.append(msg["seq"])
                    if msg["event_type"] == "participant_joined" and \
                            msg["payload"]["device_id"] == c.welcome["device_id"]:  # type: ignore[index]
                        mine += 1
                assert seqs == list(range(head + 1, last + 1)), (head, seqs)
                assert mine == 1  # its own participant_joined, once (head is before it)
