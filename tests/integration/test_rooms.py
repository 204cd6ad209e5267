"""Rooms over real sockets: create, join, leave, events, update, close, list, passwords, limits."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

from roomcast.room import JOIN_CODE_ALPHABET
from tests.harness import UNIT, Client, GatewayProcess, gateway, unique, wait_for

ROOM_KEYS = {"room_id", "game_type", "status", "max_players", "current_players", "game_data", "created_at",
             "created_by", "seq"}


@contextlib.asynccontextmanager
async def clients(gw: GatewayProcess, n: int, tag: str = "dev") -> AsyncIterator[list[Client]]:
    """n welcomed clients, each with its own device."""
    async with contextlib.AsyncExitStack() as stack:
        out = []
        for i in range(n):
            c = await stack.enter_async_context(Client.open(gw.url))
            await c.hello(unique(f"{tag}{i}"))
            out.append(c)
        yield out


def device(c: Client) -> str:
    assert c.welcome is not None
    return str(c.welcome["device_id"])


async def create(c: Client, **fields: Any) -> dict[str, Any]:
    reply = await c.request({"type": "create_room", "game_type": "trivia", **fields})
    assert reply["type"] == "room_created", reply
    return reply["room"]  # type: ignore[no-any-return]


async def join(c: Client, room_id: str, **fields: Any) -> dict[str, Any]:
    reply = await c.request({"type": "join", "room_id": room_id, **fields})
    assert reply["type"] == "joined", reply
    return reply


async def error(c: Client, msg: dict[str, Any], code: str) -> dict[str, Any]:
    reply = await c.request(msg)
    assert reply["type"] == "error" and reply["code"] == code, reply
    assert isinstance(reply["message"], str) and reply["message"]
    return reply


# ---------------------------------------------------------------- create


async def test_create_room_with_id(gw: GatewayProcess) -> None:
    async with clients(gw, 1) as (host,):
        room_id = unique("room")
        reply = await host.request({"type": "create_room", "room_id": room_id, "game_type": "quiz",
                                    "max_players": 4, "game_data": {"round": 1, "deck": ["a", "b"]}})
        assert reply["type"] == "room_created"
        room = reply["room"]
        assert set(room) == ROOM_KEYS
        assert room["room_id"] == room_id
        assert room["game_type"] == "quiz"
        assert room["status"] in ("active", "waiting")
        assert room["max_players"] == 4
        assert room["current_players"] == 1
        assert room["game_data"] == {"round": 1, "deck": ["a", "b"]}
        assert room["created_by"] == device(host)
        assert isinstance(room["created_at"], int) and room["created_at"] > 0
        # The creator is the host and sees its own participant_joined (the room's first event).
        ev = await host.expect(type="event", room_id=room_id)
        assert ev["seq"] == room["seq"] + 1 == 1
        assert ev["event_type"] == "participant_joined"
        assert ev["payload"] == {"device_id": device(host), "role": "host"}
        assert ev["from"]["device_id"] == device(host)
        assert ev["from"]["socket_id"] == host.welcome["socket_id"]  # type: ignore[index]
        assert isinstance(ev["ts"], int) and ev["action"] is None


async def test_create_room_without_id_makes_join_code(gw: GatewayProcess) -> None:
    async with clients(gw, 2) as (host, guest):
        codes = set()
        for _ in range(3):
            room = await create(host)
            assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", room["room_id"])
            assert len(room["room_id"]) <= 12
            assert set(room["room_id"]) <= set(JOIN_CODE_ALPHABET)
            codes.add(room["room_id"])
        assert len(codes) == 3
        # The code is the room's id: others join with it.
        joined = await join(guest, codes.pop())
        assert joined["role"] == "player"


async def test_create_room_defaults(gw: GatewayProcess) -> None:
    async with clients(gw, 1) as (host,):
        room = await create(host)
    assert room["max_players"] == 16  # DEFAULT_MAX_PLAYERS
    assert room["game_data"] == {}


async def test_create_existing_room_is_conflict(gw: GatewayProcess) -> None:
    room_id = unique("room")
    async with clients(gw, 2) as (a, b):
        await create(a, room_id=room_id, game_data={"v": 1})
        await error(b, {"type": "create_room", "room_id": room_id, "game_type": "other"}, "conflict")
        await error(a, {"type": "create_room", "room_id": room_id, "game_type": "trivia"}, "conflict")
        # Nothing changed: the room is still a's, with its data, and b is not in it.
        joined = await join(b, room_id)
        assert joined["room"]["created_by"] == device(a)
        assert joined["room"]["game_data"] == {"v": 1}
        assert joined["room"]["game_type"] == "trivia"
        assert [p["role"] for p in joined["participants"]] == ["host", "player"]


# ---------------------------------------------------------------- join


async def test_join_reply_and_participants(gw: GatewayProcess) -> None:
    async with clients(gw, 3) as (host, p1, spec):
        room = await create(host, room_id=unique("room"), max_players=3)
        room_id = room["room_id"]
        j1 = await join(p1, room_id)
        assert set(j1) >= {"type", "re", "room", "participants", "seq", "epoch", "recovered"}
        assert j1["seq"] == 1 and j1["room"]["seq"] == 1
        assert j1["recovered"] is False
        assert j1["role"] == "player"
        assert isinstance(j1["epoch"], str) and j1["epoch"]
        assert j1["room"]["current_players"] == 2
        parts = {p["device_id"]: p for p in j1["participants"]}
        assert parts[device(host)]["role"] == "host"
        assert parts[device(p1)]["role"] == "player"
        assert all(p["status"] == "active" for p in parts.values())
        # The joiner gets its own participant_joined (seq 2 > joined.seq); so does the host.
        ev = await p1.expect(type="event", room_id=room_id)
        assert ev["seq"] == 2 and ev["event_type"] == "participant_joined"
        assert ev["payload"] == {"device_id": device(p1), "role": "player"}
        assert (await host.expect(type="event", room_id=room_id, seq=2))["payload"]["device_id"] == device(p1)

        js = await join(spec, room_id, role="spectator")
        assert js["role"] == "spectator" and js["seq"] == 2 and js["epoch"] == j1["epoch"]
        assert js["room"]["current_players"] == 2  # spectators do not count
        assert {p["device_id"]: p["role"] for p in js["participants"]} == {
            device(host): "host", device(p1): "player", device(spec): "spectator"}
        for c in (host, p1, spec):
            ev = await c.expect(type="event", room_id=room_id, seq=3)
            assert ev["event_type"] == "participant_joined"
            assert ev["payload"] == {"device_id": device(spec), "role": "spectator"}


async def test_spectators_do_not_count_toward_max_players(gw: GatewayProcess) -> None:
    async with clients(gw, 6) as (host, p1, p2, s1, s2, s3):
        room_id = (await create(host, max_players=2))["room_id"]
        await join(p1, room_id)
        err = await error(p2, {"type": "join", "room_id": room_id}, "room_full")
        assert "re" in err
        # Spectators still get in, however many.
        for s in (s1, s2, s3):
            assert (await join(s, room_id, role="spectator"))["room"]["current_players"] == 2
        await error(p2, {"type": "join", "room_id": room_id, "role": "player"}, "room_full")
        # A place frees up when a player leaves.
        assert (await p1.request({"type": "leave", "room_id": room_id}))["type"] == "left"
        assert (await join(p2, room_id))["room"]["current_players"] == 2


async def test_max_players_one_is_just_the_host(gw: GatewayProcess) -> None:
    async with clients(gw, 2) as (host, p):
        room_id = (await create(host, max_players=1))["room_id"]
        await error(p, {"type": "join", "room_id": room_id}, "room_full")
        await join(p, room_id, role="spectator")


async def test_rejoin_keeps_role_and_place(gw: GatewayProcess) -> None:
    async with clients(gw, 3) as (host, p1, late):
        room_id = (await create(host, max_players=2))["room_id"]
        await join(p1, room_id)
        await error(late, {"type": "join", "room_id": room_id}, "room_full")
        # The same device on a new socket rejoins a full room: it keeps its place and role,
        # whatever role it asks for now.
        async with Client.open(gw.url) as p1b:
            welcome = await p1b.hello(device(p1))
            assert welcome["rooms"] == [{"room_id": room_id, "role": "player", "seq": 2}]
            again = await join(p1b, room_id, role="spectator")
            assert again["role"] == "player"
            assert again["room"]["current_players"] == 2
            assert [p["device_id"] for p in again["participants"]].count(device(p1)) == 1
        # The host rejoining from a second socket stays host.
        async with Client.open(gw.url) as host2:
            await host2.hello(device(host))
            assert (await join(host2, room_id, role="player"))["role"] == "host"
        await error(late, {"type": "join", "room_id": room_id}, "room_full")


async def test_join_unknown_room_is_not_found(gw: GatewayProcess) -> None:
    async with clients(gw, 1) as (c,):
        await error(c, {"type": "join", "room_id": unique("nope")}, "not_found")
        await error(c, {"type": "leave", "room_id": unique("nope")}, "not_found")
        for msg in (
            {"type": "event", "room_id": unique("nope"), "event_type": "x"},
            {"type": "update_room", "room_id": unique("nope"), "status": "active"},
            {"type": "close_room", "room_id": unique("nope")},
        ):
            reply = await c.request(msg)
            assert reply["type"] == "error" and reply["code"] in ("not_found", "not_member"), reply


# ---------------------------------------------------------------- leave and events


async def test_leave(gw: GatewayProcess) -> None:
    async with clients(gw, 2) as (host, p):
        room_id = (await create(host))["room_id"]
        await join(p, room_id)
        reply = await p.request({"type": "leave", "room_id": room_id})
        assert reply == {"type": "left", "re": reply["re"], "room_id": room_id}
        ev = await host.expect(type="event", room_id=room_id, event_type="participant_left")
        assert ev["payload"]["device_id"] == device(p)
        assert ev["payload"]["role"] == "player"
        assert ev["payload"].get("reason") in (None, "leave")
        # No longer a member.
        await error(p, {"type": "event", "room_id": room_id, "event_type": "x"}, "not_member")
        await error(p, {"type": "leave", "room_id": room_id}, "not_member")
        # And it gets no more events of the room.
        ack = await host.request({"type": "event", "room_id": room_id, "event_type": "after"})
        await host.expect(type="event", seq=ack["seq"])
        assert [m for m in await p.drain() if m.get("type") == "event" and m["seq"] >= ack["seq"]] == []
        # Leaving does not end the device's right to join again: it joins as a new participant.
        again = await join(p, room_id)
        assert again["room"]["current_players"] == 2
        ev = await p.expect(type="event", room_id=room_id, event_type="participant_joined")
        assert ev["payload"]["device_id"] == device(p)


async def test_event_broadcast_to_every_member_including_sender(gw: GatewayProcess) -> None:
    async with clients(gw, 4) as (host, p1, spec, outsider):
        room_id = (await create(host))["room_id"]
        await join(p1, room_id)
        await join(spec, room_id, role="spectator")
        head = (await host.expect(type="event", room_id=room_id, event_type="participant_joined",
                                  seq=3))["seq"]
        ack = await p1.request({"type": "event", "room_id": room_id, "event_type": "answer",
                                "action": "submit", "payload": {"choice": "B", "ms": 1234}})
        assert ack == {"type": "ack", "re": ack["re"], "seq": head + 1}
        for c in (host, p1, spec):
            ev = await c.expect(type="event", room_id=room_id, seq=ack["seq"])
            assert ev == {
                "type": "event", "room_id": room_id, "seq": head + 1, "event_type": "answer", "action": "submit",
                "payload": {"choice": "B", "ms": 1234},
                "from": {"socket_id": p1.welcome["socket_id"], "device_id": device(p1),  # type: ignore[index]
                         "user_id": None},
                "ts": ev["ts"],
            }
        # Spectators may not send game events unless the room allows it.
        refused = await spec.request({"type": "event", "room_id": room_id, "event_type": "cheer"})
        assert refused["type"] == "error" and refused["code"] == "forbidden"
        # Players may; action and payload are optional.
        ack2 = await p1.request({"type": "event", "room_id": room_id, "event_type": "cheer"})
        assert ack2["seq"] == head + 2
        ev = await host.expect(type="event", room_id=room_id, seq=head + 2)
        assert ev["action"] is None and ev["payload"] is None
        # A non-member may not send.
        await error(outsider, {"type": "event", "room_id": room_id, "event_type": "x"}, "not_member")
        assert [m for m in await outsider.drain() if m.get("type") == "event"] == []


async def test_reserved_event_types_are_refused(gw: GatewayProcess) -> None:
    async with clients(gw, 1) as (host,):
        room_id = (await create(host))["room_id"]
        for kind in ("participant_joined", "participant_left", "participant_disconnected",
                     "participant_reconnected", "state_change", "room_closed"):
            await error(host, {"type": "event", "room_id": room_id, "event_type": kind}, "bad_request")
        # Nothing was appended: the next event follows the host's participant_joined.
        assert (await host.request({"type": "event", "room_id": room_id, "event_type": "ok"}))["seq"] == 2


# ---------------------------------------------------------------- update_room


async def test_update_room_host_only(gw: GatewayProcess) -> None:
    async with clients(gw, 2) as (host, p):
        room_id = (await create(host))["room_id"]
        await join(p, room_id)
        await error(p, {"type": "update_room", "room_id": room_id, "status": "in_progress"}, "forbidden")
        await error(p, {"type": "update_room", "room_id": room_id, "patch": {"x": 1}}, "forbidden")
        ack = await host.request({"type": "update_room", "room_id": room_id, "status": "in_progress"})
        assert ack["type"] == "ack" and ack["seq"] == 3
        for c in (host, p):
            ev = await c.expect(type="event", room_id=room_id, seq=3)
            assert ev["event_type"] == "state_change"
            assert ev["payload"] == {"status": "in_progress"}
            assert ev["from"]["device_id"] == device(host)


async def test_update_room_merge_patch_and_status(gw: GatewayProcess) -> None:
    game_type = unique("patchgame")
    async with clients(gw, 3) as (host, p, late):
        room_id = (await create(host, game_type=game_type,
                                game_data={"round": 1, "scores": {"a": 1, "b": 2}, "deck": [1, 2, 3],
                                           "gone": True}))["room_id"]
        await join(p, room_id)
        patch = {"round": 2, "scores": {"b": None, "c": 5}, "deck": [9], "gone": None, "new": {"k": "v"}}
        ack = await host.request({"type": "update_room", "room_id": room_id, "patch": patch, "status": "in_progress"})
        assert ack["type"] == "ack"
        ev = await p.expect(type="event", room_id=room_id, seq=ack["seq"])
        assert ev["event_type"] == "state_change"
        assert ev["payload"] == {"status": "in_progress", "patch": patch}
        expected = {"round": 2, "scores": {"a": 1, "c": 5}, "deck": [9], "new": {"k": "v"}}
        # A later join sees the patched game_data and new status in its snapshot.
        joined = await join(late, room_id)
        assert joined["room"]["game_data"] == expected
        assert joined["room"]["status"] == "in_progress"
        assert joined["room"]["seq"] == joined["seq"] == ack["seq"]
        # Room discovery shows the same.
        listed = (await late.request({"type": "list_rooms", "game_type": game_type}))["rooms"]
        assert [(r["room_id"], r["game_data"], r["status"]) for r in listed] == [(room_id, expected, "in_progress")]
        # Each status can be set, one after another.
        for status in ("waiting", "active", "completed"):
            ack = await host.request({"type": "update_room", "room_id": room_id, "status": status})
            assert ack["type"] == "ack"
            ev = await late.expect(type="event", room_id=room_id, seq=ack["seq"])
            assert ev["payload"] == {"status": status}
        listed = (await late.request({"type": "list_rooms", "game_type": game_type, "status": "completed"}))["rooms"]
        assert [r["room_id"] for r in listed] == [room_id]


async def test_update_room_refuses_closed_status_and_empty_update(gw: GatewayProcess) -> None:
    async with clients(gw, 1) as (host,):
        room_id = (await create(host))["room_id"]
        await error(host, {"type": "update_room", "room_id": room_id, "status": "closed"}, "bad_request")
        await error(host, {"type": "update_room", "room_id": room_id, "status": "bogus"}, "bad_request")
        await error(host, {"type": "update_room", "room_id": room_id}, "bad_request")
        await error(host, {"type": "update_room", "room_id": room_id, "patch": [1]}, "bad_request")
        # The room is still open and unchanged.
        ack = await host.request({"type": "event", "room_id": room_id, "event_type": "still-open"})
        assert ack["type"] == "ack" and ack["seq"] == 2


# ---------------------------------------------------------------- close_room


async def test_close_room(gw: GatewayProcess) -> None:
    async with clients(gw, 3) as (host, p, spec):
        room_id = (await create(host))["room_id"]
        await join(p, room_id)
        await join(spec, room_id, role="spectator")
        await error(p, {"type": "close_room", "room_id": room_id}, "forbidden")
        await error(spec, {"type": "close_room", "room_id": room_id}, "forbidden")
        ack = await host.request({"type": "close_room", "room_id": room_id})
        assert ack["type"] == "ack"
        for c in (host, p, spec):
            ev = await c.expect(type="event", room_id=room_id, seq=ack["seq"])
            assert ev["event_type"] == "room_closed"
            assert ev["from"]["device_id"] == device(host)
        # room_closed is the room's last event: nothing follows it on any socket.
        for c in (host, p, spec):
            late = [m for m in await c.drain() if m.get("type") == "event" and m["seq"] > ack["seq"]]
            assert late == []
        # Members were removed: nobody can send any more.
        for c in (host, p, spec):
            reply = await c.request({"type": "event", "room_id": room_id, "event_type": "x"})
            assert reply["type"] == "error" and reply["code"] in ("not_member", "room_closed"), reply
        await error(host, {"type": "close_room", "room_id": room_id}, "not_member")
        reply = await host.request({"type": "update_room", "room_id": room_id, "status": "active"})
        assert reply["type"] == "error" and reply["code"] in ("not_member", "room_closed")
        # Joining a closed room is refused, for old members and newcomers alike.
        await error(p, {"type": "join", "room_id": room_id}, "room_closed")
        async with clients(gw, 1) as (newcomer,):
            await error(newcomer, {"type": "join", "room_id": room_id}, "room_closed")
        # A closed room's id is still taken.
        await error(host, {"type": "create_room", "room_id": room_id, "game_type": "t"}, "conflict")
        # The device's welcome no longer lists it.
        async with Client.open(gw.url) as again:
            assert (await again.hello(device(p)))["rooms"] == []


# ---------------------------------------------------------------- list_rooms


async def test_list_rooms_filters_limit_and_passwords(gw: GatewayProcess) -> None:
    game = unique("listgame")
    other_game = unique("listother")
    async with clients(gw, 1) as (host,):
        r1 = (await create(host, game_type=game, game_data={"n": 1}))["room_id"]
        r2 = (await create(host, game_type=game))["room_id"]
        r3 = (await create(host, game_type=game))["room_id"]
        secret = (await create(host, game_type=game, password="hunter2-secret"))["room_id"]
        other = (await create(host, game_type=other_game))["room_id"]
        await host.request({"type": "update_room", "room_id": r2, "status": "in_progress"})
        await host.request({"type": "close_room", "room_id": r3})

        reply = await host.request({"type": "list_rooms", "game_type": game})
        assert reply["type"] == "rooms"
        rooms = reply["rooms"]
        ids = [r["room_id"] for r in rooms]
        assert set(ids) == {r1, r2}  # not the password room, not the closed one, not the other game
        # Newest first: by created_at, rooms created in the same ms by room_id (both descending).
        assert ids == [r["room_id"] for r in sorted(rooms, key=lambda r: (r["created_at"], r["room_id"]), reverse=True)]
        assert rooms[0]["created_at"] >= rooms[1]["created_at"]
        for r in rooms:
            assert set(r) == ROOM_KEYS
        by_id = {r["room_id"]: r for r in rooms}
        assert by_id[r1]["game_data"] == {"n": 1} and by_id[r1]["game_type"] == game
        assert by_id[r2]["status"] == "in_progress"
        # Passwords and their hashes never appear.
        raw = str(reply)
        assert "hunter2" not in raw and "scrypt" not in raw and "password" not in raw

        in_progress = (await host.request({"type": "list_rooms", "game_type": game, "status": "in_progress"}))["rooms"]
        assert [r["room_id"] for r in in_progress] == [r2]
        closed = (await host.request({"type": "list_rooms", "game_type": game, "status": "closed"}))["rooms"]
        assert [r["room_id"] for r in closed] == [r3]
        limited = (await host.request({"type": "list_rooms", "game_type": game, "limit": 1}))["rooms"]
        assert len(limited) == 1 and limited[0]["room_id"] in (r1, r2)
        assert [r["room_id"] for r in (await host.request({"type": "list_rooms", "game_type": other_game}))["rooms"]
                ] == [other]
        assert (await host.request({"type": "list_rooms", "game_type": unique("none")}))["rooms"] == []
        # Without filters: all public rooms across games, up to the limit.
        everything = (await host.request({"type": "list_rooms", "limit": 500}))["rooms"]
        all_ids = {r["room_id"] for r in everything}
        assert {r1, r2, other} <= all_ids and secret not in all_ids and r3 not in all_ids
        assert all(r["status"] != "closed" for r in everything)


# ---------------------------------------------------------------- passwords


async def test_password_rooms(gw: GatewayProcess) -> None:
    async with clients(gw, 2) as (host, guest):
        room = await create(host, password="open sesame")
        assert "password" not in room
        room_id = room["room_id"]
        await error(guest, {"type": "join", "room_id": room_id}, "forbidden")
        await error(guest, {"type": "join", "room_id": room_id, "password": "open sesamE"}, "forbidden")
        joined = await join(guest, room_id, password="open sesame")
        assert "password" not in joined["room"]
        assert joined["room"]["current_players"] == 2
        ev = await host.expect(type="event", room_id=room_id, event_type="participant_joined", seq=2)
        assert ev["payload"]["device_id"] == device(guest)


# ---------------------------------------------------------------- membership checks


async def test_not_member(gw: GatewayProcess) -> None:
    async with clients(gw, 2) as (host, outsider):
        room_id = (await create(host))["room_id"]
        for msg in (
            {"type": "event", "room_id": room_id, "event_type": "x"},
            {"type": "leave", "room_id": room_id},
        ):
            await error(outsider, msg, "not_member")
        for msg in (
            {"type": "update_room", "room_id": room_id, "status": "active"},
            {"type": "close_room", "room_id": room_id},
        ):
            reply = await outsider.request(msg)
            assert reply["type"] == "error" and reply["code"] in ("not_member", "forbidden"), reply
        # The room is untouched.
        assert (await host.request({"type": "event", "room_id": room_id, "event_type": "x"}))["seq"] == 2


async def test_max_rooms_per_connection() -> None:
    with gateway({"MAX_ROOMS_PER_CONNECTION": "2"}) as g:
        async with clients(g, 2) as (a, b):
            r1 = (await create(a))["room_id"]
            r2 = (await create(b))["room_id"]
            r3 = (await create(b))["room_id"]
            await join(a, r2)
            # A third room is refused, whether created or joined.
            await error(a, {"type": "create_room", "game_type": "t"}, "forbidden")
            await error(a, {"type": "create_room", "room_id": unique("r"), "game_type": "t"}, "forbidden")
            await error(a, {"type": "join", "room_id": r3}, "forbidden")
            # Re-joining a room the socket is already in is not a new room.
            assert (await join(a, r1))["role"] == "host"
            # Leaving frees a slot.
            assert (await a.request({"type": "leave", "room_id": r2}))["type"] == "left"
            assert (await join(a, r3))["role"] == "player"
            # So does a room closing.
            await error(a, {"type": "create_room", "game_type": "t"}, "forbidden")
            assert (await a.request({"type": "close_room", "room_id": r1}))["type"] == "ack"
            await a.expect(type="event", room_id=r1, event_type="room_closed")
            await create(a)
            # The limit is per socket, not per device: a second socket of the device has its own budget.
            async with Client.open(g.url) as a2:
                await a2.hello(device(a))
                await join(a2, r2)
                await create(a2)


async def test_disconnected_participant_is_pruned_and_closed_room_expires() -> None:
    with gateway({"PARTICIPANT_PRUNE_AFTER": "1000", "WEBSOCKET_ROOM_TTL": "1000"}) as g:
        async with clients(g, 1) as (host,):
            # A closed room is kept for WEBSOCKET_ROOM_TTL, then forgotten (checked at the end).
            closed_id = (await create(host))["room_id"]
            assert (await host.request({"type": "close_room", "room_id": closed_id}))["type"] == "ack"
            await error(host, {"type": "join", "room_id": closed_id}, "room_closed")

            room_id = (await create(host, max_players=2))["room_id"]
            dev = unique("dev-pruned")
            async with Client.open(g.url) as p:
                await p.hello(dev)
                joined = await join(p, room_id)
            gone = await host.expect(type="event", room_id=room_id, event_type="participant_disconnected")
            assert gone["payload"]["device_id"] == dev
            # While disconnected it keeps its place ...
            async with clients(g, 1) as (late,):
                await error(late, {"type": "join", "room_id": room_id}, "room_full")
            # ... until it is pruned.
            left = await host.expect(timeout=5 * UNIT, type="event", room_id=room_id, event_type="participant_left")
            assert left["payload"] == {"device_id": dev, "role": "player", "reason": "pruned"}
            assert left["seq"] > gone["seq"]
            async with Client.open(g.url) as p:
                welcome = await p.hello(dev)
                assert welcome["rooms"] == []  # no longer a participant
                again = await join(p, room_id, since=joined["seq"], epoch=joined["epoch"])
                # It comes back as a new participant (participant_joined, not _reconnected).
                ev = await p.expect(type="event", room_id=room_id, seq=again["seq"] + 1)
                assert ev["event_type"] == "participant_joined"

            async def expired() -> bool:
                reply = await host.request({"type": "join", "room_id": closed_id})
                assert reply["type"] == "error", reply
                return bool(reply["code"] == "not_found")

            await wait_for(expired, timeout=5 * UNIT, interval=0.1 * UNIT, what="closed room expiry")
            # Its id is free again.
            created = await create(host, room_id=closed_id)
            assert created["seq"] == 0 and created["current_players"] == 1
