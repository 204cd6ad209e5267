"""Limits over real sockets: frame size, rate limits, binary frames, game_data size, field limits."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from tests.harness import UNIT, Client, GatewayProcess, gateway, unique


async def room_of(c: Client, **fields: Any) -> str:
    reply = await c.request({"type": "create_room", "game_type": "limits", **fields})
    assert reply["type"] == "room_created", reply
    return str(reply["room"]["room_id"])


def padded(base: dict[str, Any], size: int, field: str = "pad") -> str:
    """`base` with a string field grown so that the encoded JSON is exactly `size` bytes."""
    msg = dict(base)
    msg[field] = ""
    room = size - len(orjson.dumps(msg))
    assert room >= 0
    msg[field] = "x" * room
    text = orjson.dumps(msg).decode()
    assert len(text.encode()) == size
    return text


# ---------------------------------------------------------------- frame size


async def test_frame_at_limit_is_accepted_and_over_it_closes_1009(gw: GatewayProcess) -> None:
    async with Client.open(gw.url) as c:
        await c.hello(unique("dev-frame"))
        room_id = await room_of(c)
        # Exactly 64 KiB: accepted (an unknown field is ignored).
        await c.send(padded({"type": "event", "id": "big", "room_id": room_id, "event_type": "blob"}, 65_536))
        ack = await c.expect(re="big")
        assert ack["type"] == "ack"
        # One byte more: the server closes with 1009.
        await c.send(padded({"type": "event", "id": "too-big", "room_id": room_id, "event_type": "blob"}, 65_537))
        assert await c.closed() == 1009
        assert not [m for m in c.inbox if m.get("re") == "too-big"]


async def test_max_frame_bytes_is_configurable() -> None:
    with gateway({"MAX_FRAME_BYTES": "2048"}) as g:
        async with Client.open(g.url) as c:
            await c.hello(unique("dev-frame"))
            await c.send(padded({"type": "ping", "id": 1}, 2048))
            assert (await c.expect(re=1))["type"] == "pong"
            await c.send(padded({"type": "ping", "id": 2}, 2049))
            assert await c.closed() == 1009
        # Before hello too.
        async with Client.open(g.url) as c:
            await c.send("x" * 4096)
            assert await c.closed() == 1009


# ---------------------------------------------------------------- rate limits


async def test_default_rate_limit_allows_50_per_second_with_bursts_of_100(gw: GatewayProcess) -> None:
    async with Client.open(gw.url) as c:
        await c.hello(unique("dev-rate"))
        # A burst of 100 at once ...
        for i in range(100):
            await c.send({"type": "ping", "id": f"burst-{i}"})
        # ... then a steady 50 per second for about two seconds.
        for i in range(100):
            await c.send({"type": "ping", "id": f"steady-{i}"})
            await asyncio.sleep(0.02)
        replies = [await c.expect(re=f"burst-{i}") for i in range(100)]
        replies += [await c.expect(re=f"steady-{i}") for i in range(100)]
    refused = [r for r in replies if r["type"] != "pong"]
    assert refused == []


async def test_tight_rate_limit_refuses_then_recovers() -> None:
    with gateway({"RATE_MESSAGES_PER_SEC": "5", "RATE_MESSAGES_BURST": "5"}) as g:
        async with Client.open(g.url) as c:
            await c.hello(unique("dev-rate"))  # message 1
            for i in range(2, 8):  # messages 2..7, back to back
                await c.send({"type": "ping", "id": i})
            replies = {i: await c.expect(re=i) for i in range(2, 8)}
            assert [replies[i]["type"] for i in range(2, 6)] == ["pong"] * 4
            limited = replies[6]
            assert limited["type"] == "error" and limited["code"] == "rate_limited", limited
            assert isinstance(limited["retry_after_ms"], int) and 0 < limited["retry_after_ms"] <= 1000
            assert replies[7]["type"] == "error" and replies[7]["code"] == "rate_limited"
            # A refused message does not close the socket; after the advised wait it is served again.
            await asyncio.sleep(max(limited["retry_after_ms"], replies[7]["retry_after_ms"]) / 1000 + 0.05 * UNIT)
            assert (await c.request({"type": "ping"}))["type"] == "pong"
            # Bad messages count too: with a full bucket, five refused-as-bad messages use it up.
            await asyncio.sleep(1.0 + 0.1 * UNIT)  # 5 tokens at 5/s: the bucket is full again
            for i in range(5):
                await c.send({"type": "nonsense", "id": f"n{i}"})
            await c.send({"type": "ping", "id": "after-bad"})
            assert [(await c.expect(re=f"n{i}"))["code"] for i in range(5)] == ["unknown_type"] * 5
            after = await c.expect(re="after-bad")
            assert after["type"] == "error" and after["code"] == "rate_limited"
            # A rate-limited frame whose id cannot be read gets no `re`.
            await c.send("not json")
            bad = await c.expect(type="error")
            assert bad["code"] == "rate_limited" and "re" not in bad


# ---------------------------------------------------------------- frame kinds and JSON


async def test_binary_frame_is_bad_request(gw: GatewayProcess) -> None:
    async with Client.open(gw.url) as c:
        await c.send(orjson.dumps({"type": "hello", "device_id": unique("dev-bin"), "id": 1}))
        reply = await c.expect(type="error")
        assert reply["code"] == "bad_request" and "re" not in reply
        await c.hello(unique("dev-bin"))
        await c.send(b"\x00\x01\x02")
        assert (await c.expect(type="error"))["code"] == "bad_request"
        assert (await c.request({"type": "ping"}))["type"] == "pong"


@pytest.mark.parametrize(
    "frame",
    ["not json", "{", "", "[]", "[1,2]", "null", "42", '"hello"', '{"type":"ping"', "{'type':'ping'}"],
)
async def test_malformed_frames_are_bad_request_without_re(gw: GatewayProcess, frame: str) -> None:
    async with Client.open(gw.url) as c:
        await c.hello(unique("dev-json"))
        await c.send(frame)
        reply = await c.expect(type="error")
        assert reply["code"] == "bad_request" and "re" not in reply
        assert (await c.request({"type": "ping"}))["type"] == "pong"


@pytest.mark.parametrize(
    ("msg", "code", "has_re"),
    [
        ({"id": 1}, "bad_request", True),
        ({"type": 5, "id": 1}, "bad_request", True),
        ({"type": None, "id": 1}, "bad_request", True),
        ({"type": "teleport", "id": 1}, "unknown_type", True),
        ({"type": "PING", "id": 1}, "unknown_type", True),
        ({"type": "ping", "id": "x" * 65}, "bad_request", False),
        ({"type": "ping", "id": True}, "bad_request", False),
        ({"type": "ping", "id": 1.5}, "bad_request", False),
        ({"type": "ping", "id": [1]}, "bad_request", False),
        ({"type": "ping", "id": None}, "bad_request", False),
    ],
)
async def test_type_and_id(gw: GatewayProcess, msg: dict[str, Any], code: str, has_re: bool) -> None:
    async with Client.open(gw.url) as c:
        await c.hello(unique("dev-type"))
        await c.send(msg)
        reply = await c.expect(type="error")
        assert reply["code"] == code, reply
        assert ("re" in reply) is has_re
        if has_re:
            assert reply["re"] == msg["id"]


async def test_ids_at_limit_are_echoed(gw: GatewayProcess) -> None:
    async with Client.open(gw.url) as c:
        await c.hello(unique("dev-ids"))
        for mid in ("i" * 64, 0, -1, 2**63 - 1, -(2**63), "", "ünïcödé"):
            await c.send({"type": "ping", "id": mid})
            reply = await c.expect(type="pong")
            assert reply["re"] == mid


# ---------------------------------------------------------------- game_data size


async def test_game_data_over_limit_is_bad_request(gw: GatewayProcess) -> None:
    limit = 32_768  # MAX_GAME_DATA_BYTES default
    async with Client.open(gw.url) as host, Client.open(gw.url) as late:
        await host.hello(unique("dev-gd"))
        await late.hello(unique("dev-gd"))
        at_limit = orjson.loads(padded({}, limit, "blob"))
        room_id = await room_of(host, game_data=at_limit)
        over = orjson.loads(padded({}, limit + 1, "blob"))
        reply = await host.request({"type": "create_room", "game_type": "limits", "game_data": over})
        assert reply["type"] == "error" and reply["code"] == "bad_request"
        # A patch that would grow it past the limit is refused and changes nothing.
        reply = await host.request({"type": "update_room", "room_id": room_id, "patch": {"more": 1}})
        assert reply["type"] == "error" and reply["code"] == "bad_request"
        # One that shrinks it is fine.
        ack = await host.request({"type": "update_room", "room_id": room_id, "patch": {"blob": "small", "k": 1}})
        assert ack["type"] == "ack"
        joined = await late.request({"type": "join", "room_id": room_id})
        assert joined["room"]["game_data"] == {"blob": "small", "k": 1}
        assert joined["seq"] == ack["seq"]  # the refused patch made no event


async def test_game_data_limit_is_configurable() -> None:
    with gateway({"MAX_GAME_DATA_BYTES": "64"}) as g:
        async with Client.open(g.url) as c:
            await c.hello(unique("dev-gd"))
            room_id = await room_of(c, game_data=orjson.loads(padded({}, 64, "d")))
            reply = await c.request({"type": "create_room", "game_type": "t", "game_data": {"d": "x" * 64}})
            assert reply["code"] == "bad_request"
            reply = await c.request({"type": "update_room", "room_id": room_id, "patch": {"e": 1}})
            assert reply["code"] == "bad_request"


# ---------------------------------------------------------------- field limits (each at least once)

R64 = "r" * 64
OK_ROOM = "room-of-the-test"  # replaced by a fresh room the test creates


def cases() -> list[Any]:
    """(message, ok?) pairs; the unit tests hold the full table, this is each limit once over the wire."""
    room = {"type": "create_room", "game_type": "g"}
    event = {"type": "event", "room_id": OK_ROOM, "event_type": "e"}
    join = {"type": "join", "room_id": OK_ROOM}
    out: list[tuple[dict[str, Any], bool]] = [
        # room_id: 1-64 of [A-Za-z0-9_-]
        ({**room, "room_id": R64}, True),
        ({**room, "room_id": "r" * 65}, False),
        ({**room, "room_id": ""}, False),
        ({**room, "room_id": "has space"}, False),
        ({**room, "room_id": "dot.ted"}, False),
        ({**room, "room_id": "ümlaut"}, False),
        ({**room, "room_id": 12}, False),
        ({**join, "room_id": "r" * 65}, False),
        ({"type": "leave", "room_id": "a/b"}, False),
        ({"type": "leave"}, False),
        # game_type: 1-100
        ({**room, "game_type": "g" * 100}, True),
        ({**room, "game_type": "g" * 101}, False),
        ({**room, "game_type": ""}, False),
        ({"type": "create_room"}, False),
        ({**room, "game_type": 7}, False),
        # max_players: 1-10000
        ({**room, "max_players": 1}, True),
        ({**room, "max_players": 10_000}, True),
        ({**room, "max_players": 0}, False),
        ({**room, "max_players": 10_001}, False),
        ({**room, "max_players": -3}, False),
        ({**room, "max_players": "4"}, False),
        ({**room, "max_players": 4.5}, False),
        ({**room, "max_players": True}, False),
        # game_data, payload, patch: JSON objects
        ({**room, "game_data": [1]}, False),
        ({**room, "game_data": "s"}, False),
        ({**event, "payload": [1]}, False),
        ({**event, "payload": 3}, False),
        ({**event, "payload": "text"}, False),
        ({**event, "payload": {}}, True),
        # password: 1-128
        ({**room, "password": "p" * 128}, True),
        ({**room, "password": "p" * 129}, False),
        ({**room, "password": ""}, False),
        ({**room, "password": 1234}, False),
        # event_type: 1-100, action: <= 255
        ({**event, "event_type": "e" * 100}, True),
        ({**event, "event_type": "e" * 101}, False),
        ({**event, "event_type": ""}, False),
        ({"type": "event", "room_id": OK_ROOM}, False),
        ({**event, "action": "a" * 255}, True),
        ({**event, "action": "a" * 256}, False),
        ({**event, "action": 1}, False),
        # role: player or spectator (<= 50)
        ({**join, "role": "r" * 51}, False),
        ({**join, "role": "host"}, False),
        ({**join, "role": "referee"}, False),
        ({**join, "role": 1}, False),
        # since / epoch
        ({**join, "since": -1}, False),
        ({**join, "since": "3"}, False),
        ({**join, "since": 2**31}, False),
        ({**join, "epoch": "e" * 65}, False),
        # update_room
        ({"type": "update_room", "room_id": OK_ROOM, "status": "closed"}, False),
        ({"type": "update_room", "room_id": OK_ROOM, "status": "paused"}, False),
        ({"type": "update_room", "room_id": OK_ROOM, "patch": "x"}, False),
        # list_rooms
        ({"type": "list_rooms", "limit": 0}, False),
        ({"type": "list_rooms", "limit": 501}, False),
        ({"type": "list_rooms", "limit": 500}, True),
        ({"type": "list_rooms", "status": "gone"}, False),
        ({"type": "list_rooms", "game_type": "g" * 101}, False),
        # U+0000 anywhere
        ({**event, "event_type": "nul\x00"}, False),
        ({**event, "payload": {"k": "v\x00"}}, False),
        ({**event, "payload": {"k\x00": 1}}, False),
        ({**event, "payload": {"deep": [{"x": ["\x00"]}]}}, False),
    ]
    return [pytest.param(msg, ok, id=f"{i}-{msg['type']}-{'ok' if ok else 'bad'}") for i, (msg, ok) in enumerate(out)]


@pytest.mark.parametrize(("msg", "ok"), cases())
async def test_field_limits(gw: GatewayProcess, msg: dict[str, Any], ok: bool) -> None:
    async with Client.open(gw.url) as c:
        await c.hello(unique("dev-fields"))
        if msg.get("room_id") == OK_ROOM:  # a room of our own, as host, to address
            msg = {**msg, "room_id": await room_of(c)}
        if msg["type"] == "create_room" and "room_id" in msg and ok:
            msg = {**msg, "room_id": msg["room_id"][:52] + unique("")[1:]}  # fresh id of the same length
        reply = await c.request(msg)
        if ok:
            assert reply["type"] != "error", reply
        else:
            assert reply["type"] == "error" and reply["code"] == "bad_request", reply
        assert (await c.request({"type": "ping"}))["type"] == "pong"
