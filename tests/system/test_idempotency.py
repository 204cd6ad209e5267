"""Exactly-once publish (design invariant 11): an `event` resent with the same
`idempotency_key` — after its ack was lost, from a new socket, on another replica — is acked
with the first seq and delivered once. Real gateway processes: two replicas over Redis, and
the embedded gateway."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import UNIT, Client, cluster, gateway, unique


@contextlib.contextmanager
def urls(mode: str) -> Iterator[tuple[str, str]]:
    """(url of replica A, url of replica B): two replicas over Redis, or one embedded gateway twice."""
    if mode == "cluster":
        with cluster(n_gateways=2, n_coordinators=1) as c:
            yield c.gateways[0].url, c.gateways[1].url
    else:
        with gateway() as gw:
            yield gw.url, gw.url


def answers(messages: list[dict[str, Any]], room: str) -> list[dict[str, Any]]:
    return [m for m in messages if m.get("type") == "event" and m.get("room_id") == room
            and m.get("event_type") == "answer"]


async def answers_upto(client: Client, room: str, seq: int) -> list[dict[str, Any]]:
    """Every `answer` event of the room this client received (and did not consume) up to
    `seq`, once that one has arrived, in arrival order; plus any that came after it."""
    last = await client.expect(type="event", room_id=room, seq=seq)
    rest = await client.drain(0.3 * UNIT)
    return sorted([*answers(rest, room), last], key=lambda e: e["seq"])


@pytest.mark.parametrize("mode", ["cluster", "embedded"])
async def test_a_resend_after_a_lost_ack_is_applied_once(mode: str) -> None:
    room = unique("idem")
    with urls(mode) as (url_a, url_b):
        async with Client.open(url_a) as alice, Client.open(url_b) as carol:
            await alice.hello(unique("dev-alice"))
            await carol.hello(unique("dev-carol"))
            created = await alice.request({"type": "create_room", "room_id": room, "game_type": "quiz"})
            assert created["type"] == "room_created", created
            assert (await carol.request({"type": "join", "room_id": room}))["type"] == "joined"
            bob_device = unique("dev-bob")
            async with Client.open(url_a) as bob:
                await bob.hello(bob_device)
                joined = await bob.request({"type": "join", "room_id": room})
                assert joined["type"] == "joined", joined
                # Bob sends; the gateway applies it, but the ack is "lost": the socket goes.
                await bob.send({"type": "event", "id": 7, "room_id": room, "event_type": "answer",
                                "payload": {"choice": "B"}, "idempotency_key": "answer-q1-bob"})
                first = await bob.expect(type="ack", re=7)
            # A new socket on the other replica resumes the room and sends the same thing again.
            async with Client.open(url_b) as bob2:
                welcome = await bob2.hello(bob_device)
                assert [r["room_id"] for r in welcome["rooms"]] == [room]
                rejoined = await bob2.request({"type": "join", "room_id": room, "since": first["seq"]})
                assert rejoined["type"] == "joined" and rejoined["recovered"], rejoined
                again = await bob2.request({"type": "event", "room_id": room, "event_type": "answer",
                                            "payload": {"choice": "B"}, "idempotency_key": "answer-q1-bob"})
                assert again == {"type": "ack", "re": again["re"], "seq": first["seq"]}
                # A new key is a new event, after it.
                other = await bob2.request({"type": "event", "room_id": room, "event_type": "answer",
                                            "payload": {"choice": "C"}, "idempotency_key": "answer-q2-bob"})
                assert other["type"] == "ack" and other["seq"] > first["seq"]
                # Delivered once: alice (replica A) and carol (replica B) each got both answers
                # once; bob's new socket, resumed after the first, only the second.
                for watcher in (alice, carol):
                    seen = await answers_upto(watcher, room, other["seq"])
                    assert [(e["seq"], e["payload"]) for e in seen] == [
                        (first["seq"], {"choice": "B"}), (other["seq"], {"choice": "C"})]
                assert [e["seq"] for e in await answers_upto(bob2, room, other["seq"])] == [other["seq"]]


@pytest.mark.parametrize("mode", ["cluster", "embedded"])
async def test_two_sockets_racing_with_one_key_on_two_replicas_make_one_event(mode: str) -> None:
    """The narrow race of the old clients: the old socket's send reaches its replica while the
    new socket's resend reaches the other one. The key decides in the seq's atomic step."""
    room = unique("race")
    with urls(mode) as (url_a, url_b):
        async with Client.open(url_a) as host:
            await host.hello(unique("dev-host"))
            await host.request({"type": "create_room", "room_id": room, "game_type": "quiz"})
            device = unique("dev-p")
            async with Client.open(url_a) as old, Client.open(url_b) as new:
                await old.hello(device)
                await new.hello(device)
                assert (await old.request({"type": "join", "room_id": room}))["type"] == "joined"
                assert (await new.request({"type": "join", "room_id": room}))["type"] == "joined"
                for n in range(5):
                    key = f"k-{n}"
                    msg = {"type": "event", "room_id": room, "event_type": "answer", "payload": {"n": n},
                           "idempotency_key": key}
                    acks = await asyncio.gather(old.request(msg), new.request(msg))
                    assert [a["type"] for a in acks] == ["ack", "ack"], acks
                    assert acks[0]["seq"] == acks[1]["seq"], acks
                seen = await answers_upto(host, room, acks[0]["seq"])
            assert [e["payload"] for e in seen] == [{"n": n} for n in range(5)]
            # ... and the room's history holds each once too.
            async with Client.open(url_b) as reader:
                await reader.hello(unique("dev-r"))
                await reader.request({"type": "join", "room_id": room, "since": 0, "role": "spectator"})
                replayed = await answers_upto(reader, room, acks[0]["seq"])
                assert [e["payload"] for e in replayed] == [{"n": n} for n in range(5)]
