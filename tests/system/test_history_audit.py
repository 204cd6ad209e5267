"""Defects of issue 10 (the audit of the history against the requirements), end to end:
gateways, coordinator, a Redis that is restarted empty, and a real Postgres.

- a password room Redis lost comes back from history with its password (never without);
- the requirements' "Queries Needed", run verbatim, give the right numbers after rooms close
  (a completed game stays `completed`);
- a quiet room whose members are connected is not "abandoned";
- device metadata, refused sockets, `last_heartbeat` in `ws:connections:{device_id}`, and one
  meaning of `reconnect_count` for the welcome and the column.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest

from roomcast.redis import keys
from tests.harness import UNIT, Client, Cluster, PostgresServer, cluster, gateway, unique
from tests.integration.test_schema import REQUIRED_QUERIES
from tests.system.test_history import FAST, PRIVACY, SETTLE, Db, Watch, ack, eventually, flushed, history_ready, ms, pg

pytestmark = pytest.mark.system
__all__ = ["pg"]  # the module's Postgres server fixture, shared with test_history

PASSWORD = "open sesame 42"


async def join_when_redis_is_back(client: Client, msg: dict[str, Any]) -> dict[str, Any]:
    """A join right after Redis restarted: `unavailable` while the gateway reconnects."""
    reply: dict[str, Any] = {}
    for _ in range(100):
        reply = await client.request(msg)
        if reply.get("code") != "unavailable":
            return reply
        await asyncio.sleep(0.1 * UNIT)
    return reply


# ---------------------------------------------------------------- 1: passwords survive Redis


async def lose_redis(c: Cluster, db: Db, rooms: list[str], password: str | None = PASSWORD,
                     before_loss: Callable[[], Awaitable[None]] | None = None) -> tuple[str, int]:
    """Create `rooms` (with `password`), send a private event to the first, wait until history
    has it, then restart Redis empty. Returns the host's device and the last seq."""
    host_dev = unique("pw-host")
    async with Client.open(c.gateways[0].url) as host:
        await host.hello(host_dev)
        for room_id in rooms:
            created = await host.request({"type": "create_room", "room_id": room_id, "game_type": "poker",
                                          **({"password": password} if password else {})})
            assert created["type"] == "room_created", created
        last = await ack(host, {"type": "event", "room_id": rooms[0], "event_type": "hand",
                                "payload": {"cards": "private"}})

        async def persisted() -> None:
            assert await db.value("SELECT max(sequence_number) FROM game_events WHERE room_id = $1",
                                  rooms[0]) == last
            assert await db.value("SELECT count(*) FROM game_rooms WHERE room_id = ANY($1::varchar[])",
                                  rooms) == len(rooms)

        await eventually(persisted, SETTLE, "the rooms in history")
        if before_loss is not None:
            await before_loss()
        c.redis.stop()
        c.redis.start()
        assert await host.closed(15 * UNIT) == 1012
    return host_dev, last


async def test_password_room_lost_by_redis_comes_back_with_its_password(pg: PostgresServer) -> None:
    db = Db(pg, "pwrestore")
    with cluster(2, 1, FAST | {"DATABASE_URL": db.dsn}) as c:
        await history_ready(db, c.coordinators[0])
        secret = unique("secret")
        host_dev, last = await lose_redis(c, db, [secret])
        async with Client.open(c.gateways[1].url) as intruder:
            await intruder.hello(unique("intruder"))
            refused = await join_when_redis_is_back(intruder, {"type": "join", "room_id": secret, "since": 0})
            assert (refused["type"], refused.get("code")) == ("error", "forbidden"), refused
            wrong = await intruder.request({"type": "join", "room_id": secret, "since": 0, "password": "guess"})
            assert (wrong["type"], wrong.get("code")) == ("error", "forbidden"), wrong
            listed = await intruder.request({"type": "list_rooms", "game_type": "poker"})
            assert listed["type"] == "rooms" and listed["rooms"] == [], listed
            assert all(e.get("type") != "event" for e in await intruder.drain())

        async with Client.open(c.gateways[0].url) as back:
            await back.hello(host_dev)
            joined = await back.request({"type": "join", "room_id": secret, "since": 0, "password": PASSWORD})
            assert joined["type"] == "joined" and joined["role"] == "host", joined
            replay = await back.events(secret, last)
            assert [e["seq"] for e in replay] == list(range(1, last + 1))
            assert replay[-1]["payload"] == {"cards": "private"}
        # What history keeps is the salted hash, never the password.
        stored = await db.value("SELECT password_hash FROM roomcast_room_access WHERE room_id = $1", secret)
        assert stored and PASSWORD not in stored


async def test_room_whose_password_history_does_not_know_is_not_restored(pg: PostgresServer) -> None:
    db = Db(pg, "pwlegacy")
    with cluster(1, 1, FAST | {"DATABASE_URL": db.dsn}) as c:
        await history_ready(db, c.coordinators[0])
        legacy, public = unique("legacy"), unique("public")

        async def forget_hash() -> None:  # as if last flushed before migration 0004
            async def kept() -> None:
                assert await db.value("SELECT count(*) FROM roomcast_room_access WHERE room_id = $1", legacy) == 1

            await eventually(kept, SETTLE, "the room's access row")
            await db.execute("DELETE FROM roomcast_room_access WHERE room_id = $1", legacy)

        await lose_redis(c, db, [legacy], before_loss=forget_hash)
        await lose_redis(c, db, [public], password=None)
        async with Client.open(c.gateways[0].url) as someone:
            await someone.hello(unique("someone"))
            lost = await join_when_redis_is_back(someone, {"type": "join", "room_id": legacy, "since": 0})
            assert (lost["type"], lost.get("code")) == ("error", "room_closed"), lost
            assert all(e.get("type") != "event" for e in await someone.drain())
            # A room without a password comes back as before.
            joined = await someone.request({"type": "join", "room_id": public, "since": 0})
            assert joined["type"] == "joined", joined
            listed = await someone.request({"type": "list_rooms", "game_type": "poker"})
            assert [r["room_id"] for r in listed["rooms"]] == [public], listed


# ---------------------------------------------------------------- 9: the requirements' queries


async def test_requirements_queries_run_verbatim_give_the_right_numbers_after_rooms_close(
        pg: PostgresServer) -> None:
    db = Db(pg, "queries")
    game = unique("quiz")
    with cluster(1, 1, FAST | {"DATABASE_URL": db.dsn}) as c:
        gw, coord = c.gateways[0], c.coordinators[0]
        await history_ready(db, coord)
        host_dev = unique("q-host")
        rooms = {name: unique(name) for name in ("done-fast", "done-slow", "abandoned", "open-done",
                                                 "live", "live-closed")}
        async with Client.open(gw.url) as first:
            await first.hello(host_dev)  # an earlier connection of the host: one reconnection
        async with Client.open(gw.url) as host:
            await host.hello(host_dev)
            for room_id in rooms.values():
                created = await host.request({"type": "create_room", "room_id": room_id, "game_type": game})
                assert created["type"] == "room_created", created

            async def status(name: str, value: str) -> None:
                await ack(host, {"type": "update_room", "room_id": rooms[name], "status": value})

            async def close(name: str) -> None:
                await ack(host, {"type": "close_room", "room_id": rooms[name]})

            # Completed, then closed at once (both in one flush, most likely).
            await status("done-fast", "in_progress")
            await status("done-fast", "completed")
            await close("done-fast")
            # Completed, flushed as completed, closed later.
            await status("done-slow", "completed")
            await status("open-done", "completed")  # completed, still open
            await status("abandoned", "in_progress")  # closed mid-game: not completed
            await status("live", "active")
            await status("live-closed", "active")
            await flushed(coord.http)

            async def slow_completed() -> None:
                assert await db.value("SELECT status::text FROM game_rooms WHERE room_id = $1",
                                      rooms["done-slow"]) == "completed"

            await eventually(slow_completed, what="done-slow completed in Postgres")
            await close("done-slow")
            await close("abandoned")
            await close("live-closed")

            async def all_closed() -> None:
                closed = {r["room_id"] for r in await db.fetch(
                    "SELECT room_id FROM game_rooms WHERE closed_at IS NOT NULL")}
                assert closed == {rooms[n] for n in ("done-fast", "done-slow", "abandoned", "live-closed")}, closed

            await eventually(all_closed, what="the closes in Postgres")
            await flushed(coord.http)

            statuses = {r["room_id"]: r["status"] for r in await db.fetch(
                "SELECT room_id, status::text AS status FROM game_rooms")}
            assert statuses == {rooms["done-fast"]: "completed", rooms["done-slow"]: "completed",
                                rooms["abandoned"]: "closed", rooms["open-done"]: "completed",
                                rooms["live"]: "active", rooms["live-closed"]: "closed"}, statuses

            reconnections, active_conns, active_rooms, participants, daily, completion = REQUIRED_QUERIES
            # "Game completion rate": three completed games of six, closed or not.
            rows = await db.fetch(completion[0])
            assert [(r["game_type"], r["total_games"], r["completed_games"]) for r in rows] == [(game, 6, 3)]
            # "Get active rooms": the one still active; the closed one is not.
            rows = await db.fetch(active_rooms[0])
            assert [r["room_id"] for r in rows] == [rooms["live"]]
            # "Get room participants": nobody active in a closed room; the host in the live one.
            assert await db.fetch(participants[0], rooms["done-fast"]) == []
            rows = await db.fetch(participants[0], rooms["live"])
            assert [(r["device_id"], r["role"]) for r in rows] == [(host_dev, "host")]
            # "Get reconnection count for device": the first connection ended.
            assert (await db.fetch(reconnections[0], host_dev))[0]["reconnect_count"] == 1
            # "Get active connections": the host's open socket only.
            rows = await db.fetch(active_conns[0])
            assert host.welcome is not None
            assert [r["socket_id"] for r in rows] == [host.welcome["socket_id"]]
            # "Daily connection stats": two connections of one device, on the UTC day(s) they had.
            rows = await db.fetch(daily[0])
            days = Counter(r["connected_at"].date() for r in await db.fetch(
                "SELECT connected_at FROM websocket_connections"))
            assert sum(days.values()) == 2
            assert [(r["date"], r["total_connections"], r["unique_devices"]) for r in rows] == [
                (day, n, 1) for day, n in sorted(days.items(), reverse=True)], rows


# ---------------------------------------------------------------- 11: quiet rooms are not abandoned

ABANDONED_MS = 3000


async def check_abandoned_only_without_connected_members(url: str) -> None:
    quiet = unique("quiet")
    async with Client.open(url) as host, Client.open(url) as member:
        await host.hello(unique("qa-host"))
        created = await host.request({"type": "create_room", "room_id": quiet, "game_type": "lobby"})
        assert created["type"] == "room_created", created
        await member.hello(unique("qa-member"))
        assert (await member.request({"type": "join", "room_id": quiet}))["type"] == "joined"
        host.start_pinging(0.3)  # connected and pinging, nobody sends an event
        member.start_pinging(0.3)
        watch = Watch(host, quiet)
        with pytest.raises(TimeoutError):
            await watch.until(lambda e: e["event_type"] == "room_closed", 2.5 * ABANDONED_MS / 1000)
        listed = await member.request({"type": "list_rooms", "game_type": "lobby"})
        assert quiet in [r["room_id"] for r in listed["rooms"]], listed
    # Everyone gone: the room closes once it has been idle for ABANDONED_ROOM_AFTER.
    async with Client.open(url) as observer:
        await observer.hello(unique("qa-observer"))
        deadline = time.monotonic() + ABANDONED_MS / 1000 + 10 * UNIT
        while True:
            listed = await observer.request({"type": "list_rooms", "game_type": "lobby", "status": "closed"})
            if quiet in [r["room_id"] for r in listed["rooms"]]:
                break
            assert time.monotonic() < deadline, "the deserted room was not closed"
            await asyncio.sleep(0.6)  # list_rooms budget: 2/s per device (LIST_ROOMS_RATE)


async def test_quiet_room_with_connected_members_is_not_abandoned_cluster(pg: PostgresServer) -> None:
    db = Db(pg, "abandon")
    env = FAST | {"DATABASE_URL": db.dsn, "ABANDONED_ROOM_AFTER": str(ABANDONED_MS)}
    with cluster(1, 1, env) as c:
        await history_ready(db, c.coordinators[0])
        await check_abandoned_only_without_connected_members(c.gateways[0].url)


async def test_quiet_room_with_connected_members_is_not_abandoned_embedded() -> None:
    with gateway({"ABANDONED_ROOM_AFTER": str(ABANDONED_MS), "CLEANUP_INTERVAL": "300"}) as gw:
        await check_abandoned_only_without_connected_members(gw.url)


# ---------------------------------------------------------------- 12: data details


async def test_connection_data_details(pg: PostgresServer) -> None:
    db = Db(pg, "conndata")
    env = FAST | {"DATABASE_URL": db.dsn, "MAX_CONNECTIONS_PER_DEVICE": "1", "WEBSOCKET_CONNECTION_TTL": "1000",
                  "HEARTBEAT_FLUSH_INTERVAL": "200"}
    with cluster(2, 1, env) as c:
        coord = c.coordinators[0]
        await history_ready(db, coord)
        dev = unique("details")
        meta = {"app": "quiz-web", "build": 7}
        async with Client.open(c.gateways[0].url) as a:
            wa = await a.hello(dev, metadata=meta)
            assert wa["reconnect_count"] == 0
            # A second socket on the other replica is over the cluster-wide limit: 4008.
            async with Client.open(c.gateways[1].url) as b:
                await b.send({"type": "hello", "id": 1, "device_id": dev})
                assert await b.closed(5 * UNIT) == 4008
            # The device's record follows its heartbeats (batched per node).
            connected = int(c.redis.cli("HGET", keys.connection(dev), "last_heartbeat"))
            async with a.keepalive(0.1):
                async def advanced() -> None:
                    beat = int(c.redis.cli("HGET", keys.connection(dev), "last_heartbeat"))
                    assert beat >= connected + 1000, (connected, beat)

                await eventually(advanced, 5 * UNIT, "last_heartbeat in ws:connections")
        # Within the record's TTL: one reconnection (the refused socket does not count). The
        # cluster-wide count drops when replica 0 has handled the close, which may come after the
        # client saw its close handshake: until then a new socket would be over the limit (4008).
        async def closed_everywhere() -> None:
            assert c.redis.cli("HGET", keys.connection(dev), "sockets") == "0"

        await eventually(closed_everywhere, 5 * UNIT, "the device's socket count back to 0")
        async with Client.open(c.gateways[1].url) as again:
            wb = await again.hello(dev)  # no metadata this time
            assert wb["reconnect_count"] == 1, wb
        # After the record expired, the count starts again, in the welcome and in the row.
        await asyncio.sleep(2.0)
        async with Client.open(c.gateways[0].url) as later:
            wc = await later.hello(dev)
            assert wc["reconnect_count"] == 0, wc

        async def rows() -> None:
            got = {r["socket_id"]: r for r in await db.fetch(
                f"SELECT socket_id, reconnect_count, status::text AS status, {ms('connected_at')},"
                f" {ms('last_heartbeat')} FROM websocket_connections WHERE device_id = $1", dev)}
            want = {wa["socket_id"]: 0, wb["socket_id"]: 1, wc["socket_id"]: 0}
            assert {s: r["reconnect_count"] for s, r in got.items()} == want, got
            assert all(r["status"] == "disconnected" for r in got.values()), got
            session = (await db.fetch("SELECT total_connections, total_reconnections, metadata::text AS metadata"
                                      " FROM device_sessions WHERE device_id = $1", dev))[0]
            assert (session["total_connections"], session["total_reconnections"]) == (3, 2), session
            assert orjson.loads(session["metadata"]) == PRIVACY.device_info(meta), session  # the first hello's

        await eventually(rows, SETTLE, "the device's connection rows")
