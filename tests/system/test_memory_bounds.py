"""Memory is bounded: kept history by bytes per room (and in total, embedded), rooms per
address, per user and overall, so abuse inside every documented limit cannot grow a
gateway or Redis past the ceiling docs/security.md states.

The audit's abuse: a few devices from one address create rooms and fill each with 64 KB
events, every room keeping its last 1,000 (64 MB a room), with nothing bounding the
rooms; the memory stayed after they left. Here the same loop, bounded in count and time,
runs against a real embedded gateway (its RSS from /proc/<pid>/status) and against a real
Redis (INFO memory used_memory), and the growth must stay under the documented ceiling for
the settings used, with a generous margin.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from roomcast.redis import keys
from tests.harness import (
    UNIT,
    Client,
    GatewayProcess,
    PostgresServer,
    RedisServer,
    cluster,
    gateway,
    redis_server,
    unique,
)

pytestmark = pytest.mark.system

MiB = 1 << 20
DEVICES = 4
PER_ADDRESS = 12  # MAX_ROOMS_PER_ADDRESS for the test (the default is 100)
ROOM_BYTES = 131_072  # ROOM_HISTORY_MAX_BYTES default
GAME_DATA = 32_768  # MAX_GAME_DATA_BYTES default
EVENTS_PER_DEVICE = 400
PAYLOAD = 60_000  # each event frame is just under MAX_FRAME_BYTES (64 KiB)
RATE = 90.0  # events per second per socket after the burst: under RATE_MESSAGES_PER_SEC (100)
BURST = 150  # under RATE_MESSAGES_BURST (200)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def used_memory(redis: RedisServer) -> int:
    for line in redis.cli("INFO", "memory").splitlines():
        if line.startswith("used_memory:"):
            return int(line.split(":")[1])
    raise AssertionError("no used_memory")


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as r:
        yield r


@contextlib.asynccontextmanager
async def device(g: GatewayProcess) -> AsyncIterator[Client]:
    async with Client.open(g.url) as c:
        await c.hello(unique("dev-abuse"))
        yield c


async def create(c: Client, **fields: Any) -> dict[str, Any]:
    return await c.request({"type": "create_room", "game_type": "abuse", **fields})


async def flood(c: Client, rooms: list[str]) -> int:
    """Send EVENTS_PER_DEVICE big events round-robin over `rooms`, inside the message rate,
    reading everything that comes back (acks, the own events) so no buffer overflows."""
    acked = 0
    done = asyncio.Event()

    async def reader() -> None:
        nonlocal acked
        with contextlib.suppress(ConnectionClosed):
            while acked < EVENTS_PER_DEVICE:
                msg = await c.recv(timeout=30 * UNIT)
                if msg.get("type") == "ack":
                    acked += 1
                elif msg.get("type") == "error":
                    raise AssertionError(msg)
        done.set()

    task = asyncio.get_running_loop().create_task(reader())
    started = time.monotonic()
    blob = "x" * PAYLOAD
    for i in range(EVENTS_PER_DEVICE):
        if i >= BURST:
            due = started + (i - BURST + 1) / RATE
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)
        await c.send({"type": "event", "id": i, "room_id": rooms[i % len(rooms)], "event_type": "blob",
                      "payload": {"b": blob}})
    await asyncio.wait_for(done.wait(), 60 * UNIT)
    await task
    return acked


async def abuse(g: GatewayProcess) -> tuple[int, list[dict[str, Any]]]:
    """DEVICES devices of one address create rooms until refused, then flood them.
    Returns the number of rooms made and the refusals."""
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(device(g)) for _ in range(DEVICES)]
        owned: list[list[str]] = [[] for _ in clients]
        refusals: list[dict[str, Any]] = []
        for i, c in enumerate(clients):
            for _ in range(10):  # the create burst of one device (ROOM_CREATE_RATE burst 10)
                reply = await create(c)
                if reply["type"] != "room_created":
                    refusals.append(reply)
                    break
                owned[i].append(reply["room"]["room_id"])
        results = await asyncio.gather(*[flood(c, rooms) for c, rooms in zip(clients, owned, strict=True) if rooms])
        assert all(n == EVENTS_PER_DEVICE for n in results), results
    return sum(map(len, owned)), refusals


def ceiling_bytes() -> int:
    """docs/security.md, for these settings: every room that can exist here (PER_ADDRESS)
    holds at most ROOM_HISTORY_MAX_BYTES of frames (+128 per event, embedded) and
    MAX_GAME_DATA_BYTES of game data; plus, per open socket, one frame being read and its
    send buffer (MAX_SEND_BUFFER, 1 MiB)."""
    per_room = ROOM_BYTES + 1000 * 128 + GAME_DATA
    return PER_ADDRESS * per_room + DEVICES * (65_536 + MiB)


MARGIN = 40 * MiB  # allocator slack, import-time caches warmed by the first requests, etc.


async def warm_up(g: GatewayProcess) -> None:
    async with device(g) as c:
        reply = await create(c)
        assert reply["type"] == "room_created"
        room = reply["room"]["room_id"]
        for i in range(20):
            await c.request({"type": "event", "room_id": room, "event_type": "blob",
                             "payload": {"b": "y" * PAYLOAD, "n": i}})
        await c.request({"type": "close_room", "room_id": room})


async def test_embedded_gateway_memory_stays_under_the_documented_ceiling() -> None:
    env = {"MAX_ROOMS_PER_ADDRESS": str(PER_ADDRESS + 1)}  # +1: the warm-up room
    with gateway(env) as g:
        assert g.proc is not None
        await warm_up(g)
        before = rss_bytes(g.proc.pid)
        made, refusals = await abuse(g)
        after = rss_bytes(g.proc.pid)
    growth = after - before
    assert growth < ceiling_bytes() + MARGIN, f"RSS grew {growth / MiB:.0f} MiB (ceiling {ceiling_bytes() / MiB:.0f})"
    assert made == PER_ADDRESS, made
    assert refusals and all(r["code"] == "forbidden" and "address" in r["message"] for r in refusals), refusals


async def test_redis_memory_stays_under_the_documented_ceiling(redis: RedisServer) -> None:
    env = {"REDIS_URL": redis.url, "MAX_ROOMS_PER_ADDRESS": str(PER_ADDRESS + 1)}
    with gateway(env) as g:
        await warm_up(g)
        before = used_memory(redis)
        made, refusals = await abuse(g)
        after = used_memory(redis)
    # Redis holds only the rooms: MAX_ROOMS_PER_ADDRESS x (ROOM_HISTORY_MAX_BYTES + game data).
    ceiling = PER_ADDRESS * (ROOM_BYTES + GAME_DATA)
    growth = after - before
    assert growth < ceiling + 8 * MiB, f"used_memory grew {growth / MiB:.0f} MiB (ceiling {ceiling / MiB:.1f})"
    assert made == PER_ADDRESS, made
    assert refusals and all(r["code"] == "forbidden" and "address" in r["message"] for r in refusals), refusals


@pytest.mark.parametrize("mode", ["embedded", "redis"])
async def test_room_caps_have_clear_errors(redis: RedisServer, mode: str) -> None:
    env = {"MAX_ROOMS": "6", "MAX_ROOMS_PER_USER": "3", "WEBSOCKET_ROOM_TTL": "1000"}
    if mode == "redis":
        redis.cli("FLUSHALL")
        env["REDIS_URL"] = redis.url
    with gateway(env) as g:
        async with device(g) as a, device(g) as b, device(g) as c:
            mine = [await create(a) for _ in range(3)]
            assert all(r["type"] == "room_created" for r in mine), mine
            over = await create(a)  # the device's 4th room (anonymous: the user is the device)
            assert over["code"] == "forbidden" and "device" in over["message"], over
            theirs = [await create(b) for _ in range(3)]
            assert all(r["type"] == "room_created" for r in theirs), theirs
            full = await create(c)  # 6 rooms exist: MAX_ROOMS
            assert full["code"] == "unavailable" and "MAX_ROOMS" in full["message"], full
            # A closed room still counts while its state is kept (WEBSOCKET_ROOM_TTL), then not.
            room = mine[0]["room"]["room_id"]
            assert (await a.request({"type": "close_room", "room_id": room}))["type"] == "ack"
            assert (await create(c))["code"] == "unavailable"
            deadline = time.monotonic() + 10 * UNIT
            while True:
                reply = await create(c)
                if reply["type"] == "room_created" or time.monotonic() > deadline:
                    break
                assert reply["code"] == "unavailable", reply
                await asyncio.sleep(0.5)  # within c's create budget (burst 10, 0.5/s)
            assert reply["type"] == "room_created", reply


# ---------------------------------------------------------------- history mode (Postgres)


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    server = PostgresServer().init()
    try:
        yield server
    finally:
        server.destroy()


def stream_bytes(redis: RedisServer, room_id: str) -> tuple[int, int]:
    """(entries, bytes of their frames) of the room's Redis stream."""
    size = redis.cli("EVAL", "local t = 0 for _, e in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do "
                             "t = t + #e[2][2] end return t", "1", keys.stream(room_id))
    return int(redis.cli("XLEN", keys.stream(room_id))), int(size)


async def test_history_mode_trims_by_bytes_only_what_postgres_holds(pg: PostgresServer) -> None:
    db = unique("membound").replace("-", "_")
    env = {"DATABASE_URL": pg.create_database(db), "HISTORY_FLUSH_INTERVAL": "50"}
    with cluster(1, 1, env) as c:
        g = c.gateways[0]
        async with device(g) as host:
            room = (await create(host))["room"]["room_id"]
            sent = 60  # 60 x 60 KB: 27 times ROOM_HISTORY_MAX_BYTES
            for i in range(sent):
                reply = await host.request({"type": "event", "room_id": room, "event_type": "blob",
                                            "payload": {"b": "x" * PAYLOAD, "i": i}})
                assert reply["type"] == "ack", reply
            head = reply["seq"]
            # Everything reaches Postgres (nothing unflushed was dropped) ...
            deadline = time.monotonic() + 20 * UNIT
            while pg.psql(db, f"SELECT count(*) FROM game_events WHERE room_id = '{room}'") != str(head):
                assert time.monotonic() < deadline, "history did not reach Postgres"
                await asyncio.sleep(0.1)
            # ... and once it is there, the next event trims Redis to the byte bound.
            await host.request({"type": "event", "room_id": room, "event_type": "tick"})
            entries, size = stream_bytes(c.redis, room)
            assert size <= ROOM_BYTES + PAYLOAD + 1000 and entries < 10, (entries, size)
            # A client that missed everything still gets all of it (the old part from Postgres).
            async with device(g) as late:
                joined = await late.request({"type": "join", "room_id": room, "since": 0})
                assert joined["type"] == "joined" and joined["recovered"] is True, joined
                events = await late.events(room, joined["seq"], timeout=20 * UNIT)
                assert [e["seq"] for e in events] == list(range(1, joined["seq"] + 1))
