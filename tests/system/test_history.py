"""History in Postgres, end to end: gateways, coordinator, Redis and a real Postgres.

What design invariant 5 promises, checked from the outside: every event and lifecycle
change of a game lands in the five tables of the requirements exactly once, Postgres is
never on the hot path (an outage delays rows, it loses none and slows no client), a row
that cannot be written is parked in the dead-letter stream without holding anything up,
old `since` values are served from `game_events`, and the cleanup jobs do their work.
Each test gets its own database so it can count rows exactly. The flush is
asynchronous: every check polls for the expected state within a bound derived from UNIT.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis

from roomcast.history.base import device_uuid
from roomcast.history.migrate import migrations
from roomcast.history.redis import dead_letters
from roomcast.privacy import Privacy
from roomcast.protocol import event_tail
from roomcast.redis import keys
from tests.harness import (
    REDIS_KINDS,
    UNIT,
    Client,
    Cluster,
    CoordinatorProcess,
    PostgresServer,
    ahttp_get,
    cluster,
    gateway,
    parse_metrics,
    redis_of_kind,
    unique,
)

pytestmark = pytest.mark.system

# Privacy at rest with fixed keys, so the test can compute exactly what must be stored.
PRIVACY_KEY = "history-test-hash-key"
ENCRYPTION_KEY = "t1:" + base64.b64encode(bytes(range(32))).decode()
PRIVACY = Privacy(PRIVACY_KEY, (ENCRYPTION_KEY,))
FAST = {
    "PRIVACY_HASH_KEY": PRIVACY_KEY,
    "PRIVACY_ENCRYPTION_KEYS": ENCRYPTION_KEY,
    "HISTORY_FLUSH_INTERVAL": "50",
    "HEARTBEAT_FLUSH_INTERVAL": "300",
    "CLEANUP_INTERVAL": "300",
    "COORDINATOR_LEASE_TTL": "1500",
    "RATE_MESSAGES_PER_SEC": "1000",
    "RATE_MESSAGES_BURST": "1000",
}
UA = "roomcast-history-test/1"
HOST_META = {"app": "quiz-web", "build": 412}
BURST = 1200  # events sent at once during the outage: more than the flusher reads per room per batch
OUTAGE_S = 20.0  # the Postgres outage of the cluster test (required length, not scaled)
SETTLE = 20 * UNIT  # bound for history to reach Postgres (covers the flusher's 5 s backoff)


# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    server = PostgresServer().init()
    try:
        yield server
    finally:
        server.destroy()


class Db:
    """One test database; a fresh connection per query (Postgres may be stopped between)."""

    def __init__(self, pg: PostgresServer, prefix: str) -> None:
        self.name = unique(prefix).replace("-", "_")
        self.dsn = pg.create_database(self.name)

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        conn = await asyncpg.connect(self.dsn, timeout=2 * UNIT)
        try:
            return [dict(r) for r in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    async def value(self, sql: str, *args: Any) -> Any:
        rows = await self.fetch(sql, *args)
        return next(iter(rows[0].values())) if rows else None

    async def execute(self, sql: str, *args: Any) -> None:
        conn = await asyncpg.connect(self.dsn, timeout=2 * UNIT)
        try:
            await conn.execute(sql, *args)
        finally:
            await conn.close()


def ms(column: str) -> str:
    """A timestamp column as epoch milliseconds (the unit of event `ts`)."""
    return f'(extract(epoch FROM "{column}") * 1000)::bigint AS "{column}"'


async def eventually(check: Callable[[], Awaitable[None]], timeout: float = SETTLE, what: str = "state") -> None:
    """Run `check` until it passes; after `timeout`, re-raise its last failure."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await check()
            return
        except (AssertionError, asyncpg.PostgresError, OSError) as exc:
            if time.monotonic() >= deadline:
                raise AssertionError(f"{what} not reached within {timeout:.1f}s: {exc}") from exc
        await asyncio.sleep(0.05 * UNIT)


async def scrape(http: str) -> dict[str, float]:
    status, body = await ahttp_get(http + "/metrics")
    assert status == 200, (status, body)
    return parse_metrics(body)


def cleanup_count(m: dict[str, float], what: str) -> float:
    """roomcast_cleanup_actions_total for one job (matched by label value)."""
    return sum(v for k, v in m.items()
               if k.startswith("roomcast_cleanup_actions_total{") and k.endswith(f'="{what}"}}'))


async def history_ready(db: Db, coord: CoordinatorProcess) -> None:
    """The coordinator holds the lease and has applied the schema."""

    async def check() -> None:
        assert (await scrape(coord.http)).get("roomcast_coordinator_leader") == 1
        assert await db.value("SELECT count(*) FROM roomcast_migrations") == len(migrations())

    await eventually(check, 15 * UNIT, "coordinator leader with schema")


async def flushed(coord_or_gateway_http: str) -> None:
    """Wait until the flusher reports an empty backlog (nothing left to write)."""

    async def check() -> None:
        m = await scrape(coord_or_gateway_http)
        assert m.get("roomcast_flush_backlog") == 0, m.get("roomcast_flush_backlog")

    await eventually(check, SETTLE, "empty flush backlog")


async def ack(client: Client, msg: dict[str, Any], timeout: float = 5 * UNIT) -> int:
    reply = await client.request(msg, timeout)
    assert reply["type"] == "ack", reply
    seq: int = reply["seq"]
    return seq


class Watch:
    """Reads one room's events from a client in arrival order and keeps every one."""

    def __init__(self, client: Client, room_id: str) -> None:
        self.client = client
        self.room_id = room_id
        self.events: list[dict[str, Any]] = []

    async def until(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 5 * UNIT) -> dict[str, Any]:
        for e in self.events:
            if pred(e):
                return e
        deadline = time.monotonic() + timeout
        while True:
            e = await self.client.expect(max(0.01, deadline - time.monotonic()), type="event", room_id=self.room_id)
            self.events.append(e)
            if pred(e):
                return e

    async def upto(self, seq: int, timeout: float = 5 * UNIT) -> None:
        await self.until(lambda e: e["seq"] >= seq, timeout)

    def kind(self, event_type: str, device_id: str | None = None) -> dict[str, Any]:
        return next(e for e in self.events if e["event_type"] == event_type
                    and (device_id is None or (e["payload"] or {}).get("device_id") == device_id))

    @property
    def seqs(self) -> list[int]:
        return [e["seq"] for e in self.events]


# ---------------------------------------------------------------- the scripted game


@dataclass
class Sock:
    socket_id: str
    device_id: str
    reconnect_count: int


@dataclass
class Game:
    room_id: str
    created: dict[str, Any]  # room_created.room
    host: str
    player: str
    spectator: str
    leaver: str
    sockets: list[Sock]  # in connection order
    events: list[dict[str, Any]]  # every event of the room, as the host received them
    game_data: dict[str, Any]  # what game_data must be at the end

    @property
    def devices(self) -> list[str]:
        return [self.host, self.player, self.spectator, self.leaver]

    def socket(self, device_id: str, nth: int = -1) -> str:
        return [s.socket_id for s in self.sockets if s.device_id == device_id][nth]


EVENT_TYPES = [
    "participant_joined", "participant_joined", "participant_joined", "participant_joined", "state_change",
    "answer", "answer", "state_change", "participant_left", "participant_disconnected", "reveal",
    "participant_reconnected", "answer", "state_change", "room_closed",
]


async def play_game(urls: list[str], tag: str, mid_game: Callable[[], Awaitable[None]] | None = None) -> Game:
    """create, joins on different replicas (a spectator too), events, update_room with
    patch and status, a leave, a device reconnecting on a new socket with `since`, close.
    Checks on the way that every client sees one gap-free order. `mid_game` runs once the
    room exists and has its first player; everything after it is played on regardless."""
    u0, u1, u2 = (urls * 3)[:3]
    room_id = unique(tag)
    host_dev, player_dev, spec_dev, leaver_dev = (unique(f"{tag}-{r}") for r in ("host", "player", "spec", "leaver"))
    sockets: list[Sock] = []
    async with contextlib.AsyncExitStack() as stack:

        async def connect(url: str, device: str, **hello: Any) -> Client:
            client = await stack.enter_async_context(Client.open(url, user_agent_header=UA))
            welcome = await client.hello(device, **hello)
            sockets.append(Sock(welcome["socket_id"], device, welcome["reconnect_count"]))
            return client

        host = await connect(u0, host_dev, fingerprint=f"fp-{host_dev}", metadata=HOST_META)
        created = await host.request({"type": "create_room", "room_id": room_id, "game_type": "quiz",
                                      "max_players": 4, "game_data": {"round": 0, "scores": {}, "cfg": {"time": 30}}})
        assert created["type"] == "room_created", created
        hw = Watch(host, room_id)
        player = await connect(u1, player_dev)
        joined = await player.request({"type": "join", "room_id": room_id})
        assert joined["type"] == "joined" and joined["role"] == "player", joined
        pw = Watch(player, room_id)
        if mid_game is not None:
            await mid_game()
        spec = await connect(u2, spec_dev)
        spec_joined = await spec.request({"type": "join", "room_id": room_id, "role": "spectator"})
        assert spec_joined["type"] == "joined" and spec_joined["role"] == "spectator", spec_joined
        sw = Watch(spec, room_id)
        leaver = await connect(u2, leaver_dev)
        assert (await leaver.request({"type": "join", "room_id": room_id}))["type"] == "joined"

        await ack(host, {"type": "update_room", "room_id": room_id, "status": "in_progress", "patch": {"round": 1}})
        await ack(player, {"type": "event", "room_id": room_id, "event_type": "answer", "action": "submit",
                           "payload": {"q": 1, "a": "B"}})
        await ack(leaver, {"type": "event", "room_id": room_id, "event_type": "answer", "action": "submit",
                           "payload": {"q": 1, "a": "C", "ms": 812}})
        await ack(host, {"type": "update_room", "room_id": room_id,
                         "patch": {"scores": {player_dev: 10}, "cfg": None}})
        assert (await leaver.request({"type": "leave", "room_id": room_id}))["type"] == "left"
        await leaver.ws.close()
        left = await hw.until(lambda e: e["event_type"] == "participant_left")

        # The player has seen everything so far; its socket drops; it misses two events.
        await pw.upto(left["seq"])
        last_seen = pw.seqs[-1]
        await player.ws.close()
        await hw.until(lambda e: e["event_type"] == "participant_disconnected")
        reveal = await ack(host, {"type": "event", "room_id": room_id, "event_type": "reveal",
                                  "payload": {"q": 1, "answer": "B"}})
        player2 = await connect(u0, player_dev)
        assert sockets[-1].reconnect_count == 1
        assert player2.welcome is not None
        assert player2.welcome["rooms"] == [{"room_id": room_id, "role": "player", "seq": reveal}]
        rejoined = await player2.request({"type": "join", "room_id": room_id, "since": last_seen,
                                          "epoch": joined["epoch"]})
        assert rejoined["type"] == "joined" and rejoined["recovered"] is True, rejoined
        assert rejoined["seq"] == reveal and rejoined["role"] == "player"
        p2w = Watch(player2, room_id)
        await p2w.upto(reveal + 1)
        assert p2w.seqs == list(range(last_seen + 1, reveal + 2))  # the missed two, then its own rejoin
        assert p2w.events[-1]["event_type"] == "participant_reconnected"

        await ack(player2, {"type": "event", "room_id": room_id, "event_type": "answer", "action": "submit",
                            "payload": {"q": 2, "a": "A"}})
        await ack(host, {"type": "update_room", "room_id": room_id, "status": "completed",
                         "patch": {"round": 2, "winner": player_dev}})
        final = await ack(host, {"type": "close_room", "room_id": room_id})
        for w in (hw, sw, p2w):
            await w.upto(final)

        # One order for everyone, gap-free, matching what the host saw.
        assert hw.seqs == list(range(1, final + 1))
        assert [e["event_type"] for e in hw.events] == EVENT_TYPES
        by_seq = {e["seq"]: e for e in hw.events}
        assert sw.events == [by_seq[s] for s in range(spec_joined["seq"] + 1, final + 1)]
        assert pw.events + p2w.events == [by_seq[s] for s in range(joined["seq"] + 1, final + 1)]

    return Game(room_id, created["room"], host_dev, player_dev, spec_dev, leaver_dev, sockets, hw.events,
                {"round": 2, "scores": {player_dev: 10}, "winner": player_dev})


async def check_game(db: Db, g: Game) -> None:
    """Exactly the rows the game must leave, in all five tables."""
    conns = await db.fetch(
        f"""SELECT socket_id, device_id, user_id, status::text AS status, reconnect_count, ip_address, user_agent,
                   metadata::text AS metadata, {ms("connected_at")}, {ms("disconnected_at")}, {ms("last_heartbeat")}
              FROM websocket_connections WHERE device_id = ANY($1::varchar[])""", g.devices)
    assert sorted((r["socket_id"], r["device_id"], r["reconnect_count"], r["status"]) for r in conns) == sorted(
        (s.socket_id, s.device_id, s.reconnect_count, "disconnected") for s in g.sockets), conns
    for r in conns:
        assert r["user_id"] is None and r["ip_address"] == PRIVACY.address("127.0.0.1"), r
        assert PRIVACY.decrypt(r["user_agent"]) == UA, r  # encrypted at rest
        assert r["disconnected_at"] is not None, r
        assert r["connected_at"] <= r["last_heartbeat"] <= r["disconnected_at"], r
    by_socket = {r["socket_id"]: r for r in conns}
    assert orjson.loads(by_socket[g.socket(g.host)]["metadata"]) == PRIVACY.device_info(HOST_META)
    first, second = by_socket[g.socket(g.player, 0)], by_socket[g.socket(g.player, 1)]
    assert first["disconnected_at"] <= second["connected_at"]

    sessions = {r["device_id"]: r for r in await db.fetch(
        f"""SELECT device_id, user_id, {ms("first_seen")}, {ms("last_seen")}, total_connections, total_reconnections,
                   browser_fingerprint, metadata::text AS metadata
              FROM device_sessions WHERE device_id = ANY($1::varchar[])""", g.devices)}
    assert sorted(sessions) == sorted(g.devices)
    for dev, row in sessions.items():
        mine = [r for r in conns if r["device_id"] == dev]
        assert (row["total_connections"], row["total_reconnections"]) == (len(mine), len(mine) - 1), row
        assert row["first_seen"] == min(r["connected_at"] for r in mine), row
        assert row["last_seen"] == max(r["disconnected_at"] for r in mine), row
        assert row["user_id"] is None
    assert sessions[g.host]["browser_fingerprint"] == PRIVACY.hash(f"fp-{g.host}")
    assert orjson.loads(sessions[g.host]["metadata"]) == PRIVACY.device_info(HOST_META)
    assert sessions[g.player]["total_connections"] == 2

    closed = g.events[-1]
    assert closed["event_type"] == "room_closed"
    rooms = await db.fetch(
        f"""SELECT room_id, status::text AS status, game_type, game_data::text AS game_data, max_players,
                   current_players, created_by, {ms("created_at")}, {ms("updated_at")}, {ms("closed_at")}
              FROM game_rooms WHERE room_id = $1""", g.room_id)
    assert len(rooms) == 1, rooms
    room = rooms[0]
    # The game completed before the room closed: it stays `completed` (closed_at says it closed).
    assert (room["status"], room["game_type"], room["max_players"], room["current_players"]) == (
        "completed", "quiz", 4, 0), room
    assert orjson.loads(room["game_data"]) == g.game_data
    assert room["created_by"] == device_uuid(g.host)
    assert room["created_at"] == g.created["created_at"]
    assert room["closed_at"] == room["updated_at"] == closed["ts"], room

    joined_at = {e["payload"]["device_id"]: e["ts"] for e in g.events if e["event_type"] == "participant_joined"}
    left_at = next(e["ts"] for e in g.events if e["event_type"] == "participant_left")
    parts = await db.fetch(
        f"""SELECT device_id, role, status::text AS status, socket_id, user_id, {ms("joined_at")}, {ms("left_at")}
              FROM room_participants WHERE room_id = $1""", g.room_id)
    assert sorted((p["device_id"], p["role"], p["status"], p["socket_id"], p["joined_at"], p["left_at"])
                  for p in parts) == sorted([
        (g.host, "host", "left", g.socket(g.host), joined_at[g.host], closed["ts"]),
        (g.player, "player", "left", g.socket(g.player), joined_at[g.player], closed["ts"]),  # its new socket
        (g.spectator, "spectator", "left", g.socket(g.spectator), joined_at[g.spectator], closed["ts"]),
        (g.leaver, "player", "left", g.socket(g.leaver), joined_at[g.leaver], left_at),
    ]), parts

    rows = await db.fetch(
        f"""SELECT sequence_number, event_type, action, payload::text AS payload, socket_id, device_id, user_id,
                   {ms("timestamp")}
              FROM game_events WHERE room_id = $1 ORDER BY sequence_number""", g.room_id)
    got = [(r["sequence_number"], r["event_type"], r["action"], None if r["payload"] is None else
            orjson.loads(r["payload"]), r["socket_id"], r["device_id"], r["user_id"], r["timestamp"]) for r in rows]
    want = [(e["seq"], e["event_type"], e["action"], e["payload"], (e["from"] or {}).get("socket_id"),
             (e["from"] or {}).get("device_id") or (e["payload"] or {}).get("device_id"), None, e["ts"])
            for e in g.events]
    assert got == want


async def table_counts(db: Db) -> dict[str, int]:
    out = {}
    for table in ("websocket_connections", "device_sessions", "game_rooms", "room_participants", "game_events"):
        out[table] = await db.value(f"SELECT count(*) FROM {table}")
    return out


# ---------------------------------------------------------------- (a) a game through three replicas


@pytest.mark.parametrize("kind", REDIS_KINDS)
async def test_scripted_game_leaves_exactly_the_expected_rows(pg: PostgresServer, kind: str) -> None:
    """On one Redis and on a Redis Cluster (where the flusher reads every bucket of the
    dirty set and of the lifecycle stream, on every primary)."""
    db = Db(pg, "game")
    with redis_of_kind(kind) as redis, cluster(3, 1, FAST | {"DATABASE_URL": db.dsn}, redis=redis) as c:
        coord = c.coordinators[0]
        await history_ready(db, coord)
        game = await play_game([g.url for g in c.gateways], "game")
        await eventually(lambda: check_game(db, game), what="the game's rows")
        # Quiescent: nothing more is coming, and what is there is still exactly right.
        await flushed(coord.http)
        await check_game(db, game)
        assert await table_counts(db) == {"websocket_connections": 5, "device_sessions": 4, "game_rooms": 1,
                                          "room_participants": 4, "game_events": len(EVENT_TYPES)}
        m = await scrape(coord.http)
        assert m['roomcast_flush_rows_total{table="game_events"}'] == len(EVENT_TYPES)
        assert m["roomcast_postgres_up"] == 1
        assert m.get("roomcast_flush_dead_letters_total") == 0


# ---------------------------------------------------------------- (b) a Postgres outage mid-game


async def test_postgres_outage_mid_game_delays_rows_but_loses_none(pg: PostgresServer) -> None:
    db = Db(pg, "outage")
    # A short replay window: the stream must still keep everything Postgres has not got.
    env = FAST | {"DATABASE_URL": db.dsn, "ROOM_HISTORY_MAXLEN": "10", "RATE_MESSAGES_PER_SEC": "5000",
                  "RATE_MESSAGES_BURST": "5000"}
    with cluster(2, 1, env) as c:
        coord = c.coordinators[0]
        g0, g1 = c.gateways
        await history_ready(db, coord)
        room_id = unique("pump")
        host_dev, watch_dev = unique("pump-host"), unique("pump-watch")
        r = aioredis.Redis(host="127.0.0.1", port=c.redis.port)
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(r.aclose)
            host = await stack.enter_async_context(Client.open(g0.url))
            watcher = await stack.enter_async_context(Client.open(g1.url))
            await host.hello(host_dev)
            assert (await host.request({"type": "create_room", "room_id": room_id, "game_type": "race"}))[
                "type"] == "room_created"
            await watcher.hello(watch_dev)
            assert (await watcher.request({"type": "join", "room_id": room_id}))["type"] == "joined"
            ww = Watch(watcher, room_id)
            sent = 0

            async def tick() -> int:
                """One event; it must reach the other replica's client live, Postgres or not."""
                nonlocal sent
                n, sent = sent, sent + 1
                seq = await ack(host, {"type": "event", "room_id": room_id, "event_type": "tick", "action": "t",
                                       "payload": {"n": n}}, 2 * UNIT)
                got = await ww.until(lambda e: e["seq"] == seq, 2 * UNIT)
                assert got["payload"] == {"n": n}
                return seq

            for _ in range(5):
                head = await tick()

            async def pre() -> None:
                assert await db.value("SELECT count(*) FROM game_events WHERE room_id = $1", room_id) == head

            await eventually(pre, what="events before the outage")
            flushed_head = head
            before = await scrape(coord.http)
            assert before["roomcast_postgres_up"] == 1

            stopped = 0.0

            async def outage() -> None:
                nonlocal stopped
                await asyncio.to_thread(pg.stop)
                stopped = time.monotonic()

            try:
                # Postgres goes away mid-game; the rest of the game (connections, a spectator,
                # events, update_room, a leave, a reconnect with `since`, close) goes on.
                game = await play_game([g0.url, g1.url], "dark", outage)
                assert stopped, "the outage did not start"
                # A burst larger than one flush chunk of a room (1000 events), delivered live.
                for _ in range(BURST):
                    await host.send({"type": "event", "room_id": room_id, "event_type": "tick", "action": "t",
                                     "payload": {"n": sent}})
                    sent += 1
                head = (await ww.until(lambda e: e["payload"] == {"n": sent - 1}, 10 * UNIT))["seq"]
                await host.drain()  # the burst's acks
                saw_down, next_scrape = False, 0.0
                while time.monotonic() - stopped < OUTAGE_S:
                    head = await tick()
                    if not saw_down and time.monotonic() >= next_scrape:
                        saw_down = (await scrape(coord.http)).get("roomcast_postgres_up") == 0
                        next_scrape = time.monotonic() + 0.5
                    await asyncio.sleep(0.05)
                during = await scrape(coord.http)
                # Nothing was written meanwhile: the database was really gone, and the
                # lifecycle records of the outage wait in Redis (kept to replay them below).
                with pytest.raises(OSError):
                    await db.fetch("SELECT 1")
                waiting = await r.xrange(keys.LIFECYCLE, "-", "+")
                kept = await r.xrange(keys.stream(room_id), f"{flushed_head + 1}-0", "+")
                assert len(kept) == head - flushed_head > 10  # the backlog waits in Redis, untrimmed
            finally:
                await asyncio.to_thread(pg.start)
            assert saw_down, "roomcast_postgres_up never showed the outage"
            assert during["roomcast_postgres_up"] == 0
            assert during["roomcast_flush_failures_total"] > before.get("roomcast_flush_failures_total", 0)
            assert sent > BURST + 100 and ww.seqs == list(range(2, head + 1))  # live all along, gap-free

            async def pump_rows() -> None:
                rows = await db.fetch("SELECT sequence_number, event_type, payload::text AS payload FROM game_events"
                                      " WHERE room_id = $1 ORDER BY sequence_number", room_id)
                seqs = [r["sequence_number"] for r in rows]
                assert seqs == list(range(1, head + 1)), (len(seqs), head)  # all there, none twice
                ticks = [orjson.loads(r["payload"])["n"] for r in rows if r["event_type"] == "tick"]
                assert ticks == list(range(sent))

            await eventually(pump_rows, what="every event of the outage")
            await eventually(lambda: check_game(db, game), what="the game played during the outage")
            await flushed(coord.http)
            await pump_rows()
            await check_game(db, game)
            conns = await db.fetch("SELECT device_id, status::text AS status FROM websocket_connections"
                                   " WHERE device_id = ANY($1::varchar[])", [host_dev, watch_dev])
            assert sorted((r["device_id"], r["status"]) for r in conns) == sorted(
                [(host_dev, "active"), (watch_dev, "active")])
            assert await db.value("SELECT count(*) FROM websocket_connections") == 2 + len(game.sockets)
            after = await scrape(coord.http)
            assert after["roomcast_postgres_up"] == 1
            assert after.get("roomcast_flush_dead_letters_total") == 0

            # Redelivery, as after a crash between the Postgres commit and the Redis ack:
            # the same lifecycle records again, and both rooms read again from seq 1.
            game_sockets = {s.socket_id for s in game.sockets}
            replay = [fields for _id, fields in waiting if fields[b"socket_id"].decode() in game_sockets]
            # At least every socket's disconnect, and the connects of the sockets opened in the dark.
            must = {(b"disconnect", s.socket_id.encode()) for s in game.sockets} | {
                (b"connect", s.socket_id.encode()) for s in game.sockets[2:]}
            assert must <= {(f[b"kind"], f[b"socket_id"]) for f in replay}
            counts = await table_counts(db)
            for fields in replay:
                await r.xadd(keys.LIFECYCLE, fields)
            await r.hset(keys.FLUSH_CURSOR, mapping={room_id: 0, game.room_id: 0})
            await r.sadd(keys.FLUSH_DIRTY, room_id, game.room_id)

            async def replayed() -> None:
                assert await r.xlen(keys.LIFECYCLE) == 0 and await r.scard(keys.FLUSH_DIRTY) == 0
                assert int(await r.hget(keys.FLUSH_CURSOR, room_id) or 0) == head

            await eventually(replayed, what="the redelivered batch consumed")
            await flushed(coord.http)
            assert await table_counts(db) == counts  # none twice
            await pump_rows()
            await check_game(db, game)


# ---------------------------------------------------------------- (c) dead letters

# Append one entry to a room the way the gateways do (next seq, stream entry, publish) and
# mark the room dirty. ARGV: room_id, tail, now, field ('f' is the frame; another name makes
# an entry without one, which is then not published).
INJECT_EVENT = """
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HSET', KEYS[1], 'updated_at', ARGV[3])
local frame = '{"type":"event","room_id":"' .. ARGV[1] .. '","seq":' .. seq .. ',' .. ARGV[2]
redis.call('XADD', KEYS[2], seq .. '-0', ARGV[4], frame)
if ARGV[4] == 'f' then redis.call('SPUBLISH', 'ws:room:{' .. ARGV[1] .. '}:events', frame) end
redis.call('SADD', KEYS[3], ARGV[1])
return seq
"""


async def test_unwritable_rows_are_dead_lettered_and_hold_nothing_up(pg: PostgresServer) -> None:
    db = Db(pg, "dead")
    with cluster(1, 1, FAST | {"DATABASE_URL": db.dsn}) as c:
        coord, gw = c.coordinators[0], c.gateways[0]
        await history_ready(db, coord)
        r = aioredis.Redis(host="127.0.0.1", port=c.redis.port)
        room_id, host_dev = unique("dl"), unique("dl-host")
        good, bad_uuid, bad_long = unique("inj-ok"), unique("inj-uuid"), unique("inj-long")
        long_device = "d" * 300
        try:
            async with Client.open(gw.url) as host:
                await host.hello(host_dev)
                assert (await host.request({"type": "create_room", "room_id": room_id, "game_type": "g"}))[
                    "type"] == "room_created"
                await ack(host, {"type": "event", "room_id": room_id, "event_type": "move", "payload": {"n": 1}})
                now = int(time.time() * 1000)
                # One transaction, so the flusher reads the good and the bad records in one batch.
                async with r.pipeline(transaction=True) as pipe:
                    common = {"ip": "", "user_agent": "", "fingerprint": "", "metadata": "{}", "ts": now}
                    pipe.xadd(keys.LIFECYCLE, {"kind": "connect", "socket_id": good, "device_id": "inj-device-ok",
                                               "user_id": ""} | common)
                    pipe.xadd(keys.LIFECYCLE, {"kind": "connect", "socket_id": bad_uuid, "device_id": "inj-device-b",
                                               "user_id": "not-a-uuid"} | common)
                    pipe.xadd(keys.LIFECYCLE, {"kind": "connect", "socket_id": bad_long, "device_id": long_device,
                                               "user_id": ""} | common)
                    pipe.xadd(keys.LIFECYCLE, {"kind": "disconnect", "status": "disconnected", "socket_id": good,
                                               "device_id": "inj-device-ok", "ts": now + 5, "reason": "close"})
                    await pipe.execute()

                async def inject(tail: str, field: str = "f") -> int:
                    return int(await r.eval(INJECT_EVENT, 3, keys.room(room_id), keys.stream(room_id),
                                            keys.FLUSH_DIRTY, room_id, tail, str(now), field))

                # Room entries that cannot be written: an event_type longer than its column,
                # a frame of the wrong shape (payload a list), an entry with no frame at all.
                too_long = await inject(event_tail("x" * 150, None, {"n": 2}, None, now).decode())
                bad_shape = await inject(f'"event_type":"tick","action":null,"payload":[1,2],"from":null,"ts":{now}}}')
                no_frame = await inject(event_tail("tick", None, {"n": 3}, None, now).decode(), "junk")
                after_bad = await ack(host, {"type": "event", "room_id": room_id, "event_type": "move",
                                             "payload": {"n": 4}})
                final = await ack(host, {"type": "close_room", "room_id": room_id})
                assert [too_long, bad_shape, no_frame, after_bad] == list(range(too_long, too_long + 4))

            async def check() -> None:
                letters = dead_letters(await r.xrange(keys.DEADLETTER, "-", "+"))
                assert len(letters) == 5, letters
                by_ref = {}
                for d in letters:  # lifecycle letters by socket, room letters by seq
                    ref = orjson.loads(d["data"])["socket_id"] if d["source"] == "lifecycle" else d["ref"]
                    by_ref[f"{d['source']}/{ref}"] = d
                uuid_letter = by_ref[f"lifecycle/{bad_uuid}"]
                assert uuid_letter["error"].startswith("ValueError") and "UUID" in uuid_letter["error"], uuid_letter
                long_letter = by_ref[f"lifecycle/{bad_long}"]
                assert "value too long" in long_letter["error"], long_letter
                assert orjson.loads(long_letter["data"])["device_id"] == long_device
                room_letter = by_ref[f"room:{room_id}/{too_long}"]
                assert "value too long" in room_letter["error"], room_letter
                assert '"x' in room_letter["data"]
                assert by_ref[f"room:{room_id}/{bad_shape}"]["error"].startswith("TypeError"), letters
                assert by_ref[f"room:{room_id}/{no_frame}"]["error"].startswith("JSONDecodeError"), letters
                # Everything else of the same moment is written.
                seqs = [row["sequence_number"] for row in await db.fetch(
                    "SELECT sequence_number FROM game_events WHERE room_id = $1 ORDER BY 1", room_id)]
                assert seqs == [s for s in range(1, final + 1) if s not in (too_long, bad_shape, no_frame)]
                conns = await db.fetch("SELECT socket_id, device_id, status::text AS status FROM websocket_connections")
                assert sorted((x["device_id"], x["status"]) for x in conns) == sorted(
                    [(host_dev, "disconnected"), ("inj-device-ok", "disconnected")]), conns
                assert await db.value("SELECT status::text FROM game_rooms WHERE room_id = $1", room_id) == "closed"
                # Nothing is left pending in the lifecycle group, and nothing waits in the stream.
                pending = await r.xpending(keys.LIFECYCLE, keys.FLUSH_GROUP)
                assert pending["pending"] == 0, pending
                assert await r.xlen(keys.LIFECYCLE) == 0

            await eventually(check, what="dead letters and the rest written")
            m = await scrape(coord.http)
            assert m["roomcast_flush_dead_letters_total"] == 5
            assert m["roomcast_postgres_up"] == 1
        finally:
            await r.aclose()


# ---------------------------------------------------------------- (d) an old `since` served from Postgres


async def test_join_since_older_than_the_stream_is_served_from_game_events(pg: PostgresServer) -> None:
    db = Db(pg, "since")
    maxlen = 10
    with cluster(2, 1, FAST | {"DATABASE_URL": db.dsn, "ROOM_HISTORY_MAXLEN": str(maxlen)}) as c:
        coord = c.coordinators[0]
        g0, g1 = c.gateways
        await history_ready(db, coord)
        room_id, player_dev = unique("since"), unique("since-p")
        r = aioredis.Redis(host="127.0.0.1", port=c.redis.port)
        try:
            async with Client.open(g0.url) as host:
                await host.hello(unique("since-h"))
                assert (await host.request({"type": "create_room", "room_id": room_id, "game_type": "g"}))[
                    "type"] == "room_created"
                hw = Watch(host, room_id)
                async with Client.open(g1.url) as player:
                    await player.hello(player_dev)
                    joined = await player.request({"type": "join", "room_id": room_id})
                    for n in range(3):
                        head = await ack(host, {"type": "event", "room_id": room_id, "event_type": "move",
                                                "action": "step", "payload": {"n": n}})
                    pw = Watch(player, room_id)
                    await pw.upto(head)
                    since = pw.seqs[-1]
                for n in range(3, 43):  # the player misses these (and its own disconnect)
                    head = await ack(host, {"type": "event", "room_id": room_id, "event_type": "move",
                                            "action": "step", "payload": {"n": n, "board": [n, n + 1]}})
                await hw.upto(head)
                assert head - since > 2 * maxlen

                async def trimmed() -> None:
                    assert await db.value("SELECT max(sequence_number) FROM game_events WHERE room_id = $1",
                                          room_id) == head
                    first = await r.xrange(keys.stream(room_id), "-", "+", count=1)
                    assert first and int(first[0][0].split(b"-")[0]) > since + 1, first
                    assert await r.xlen(keys.stream(room_id)) <= maxlen

                await eventually(trimmed, what="events flushed and the stream trimmed")

                async with Client.open(g0.url) as back:
                    await back.hello(player_dev)
                    rejoined = await back.request({"type": "join", "room_id": room_id, "since": since,
                                                   "epoch": joined["epoch"]})
                    assert rejoined["type"] == "joined" and rejoined["recovered"] is True, rejoined
                    assert rejoined["seq"] == head
                    bw = Watch(back, room_id)
                    await bw.upto(head)
                    by_seq = {e["seq"]: e for e in hw.events}
                    # Exactly the missed events, in order, as the live clients saw them.
                    assert bw.events == [by_seq[s] for s in range(since + 1, head + 1)]
                    # Then live, with no gap: its own rejoin, then new events.
                    for n in range(100, 103):
                        last = await ack(host, {"type": "event", "room_id": room_id, "event_type": "move",
                                                "payload": {"n": n}})
                    await bw.upto(last)
                    assert bw.seqs == list(range(since + 1, last + 1))
                    assert bw.events[head - since]["event_type"] == "participant_reconnected"
                    assert [e for e in await back.drain() if e.get("type") == "event"] == []  # nothing twice
                # `since: 0`: every event from seq 1, the older ones from Postgres, streamed.
                async with Client.open(g1.url) as newcomer:
                    await newcomer.hello(unique("since-new"))
                    fresh = await newcomer.request({"type": "join", "room_id": room_id, "since": 0})
                    assert fresh["type"] == "joined" and fresh["recovered"] is True, fresh
                    nw = Watch(newcomer, room_id)
                    await nw.upto(fresh["seq"])
                    assert nw.seqs == list(range(1, fresh["seq"] + 1))
                    assert nw.events[: head] == [by_seq[s] for s in range(1, head + 1)]
        finally:
            await r.aclose()


# ---------------------------------------------------------------- (f) embedded mode


async def test_embedded_gateway_persists_history_and_survives_a_postgres_outage(pg: PostgresServer) -> None:
    db = Db(pg, "embedded")
    env = {k: v for k, v in FAST.items() if k != "COORDINATOR_LEASE_TTL"} | {"DATABASE_URL": db.dsn}
    with gateway(env) as gw:
        game = await play_game([gw.url], "emb")
        await eventually(lambda: check_game(db, game), what="the embedded game's rows")
        assert await table_counts(db) == {"websocket_connections": 5, "device_sessions": 4, "game_rooms": 1,
                                          "room_participants": 4, "game_events": len(EVENT_TYPES)}
        before = await scrape(gw.http)
        assert before["roomcast_postgres_up"] == 1

        await asyncio.to_thread(pg.stop)
        stopped = time.monotonic()
        try:
            dark = await play_game([gw.url], "emb-dark")

            async def down() -> None:
                assert (await scrape(gw.http))["roomcast_postgres_up"] == 0

            await eventually(down, 5 * UNIT, "roomcast_postgres_up 0")
            await asyncio.sleep(max(0.0, 3.0 - (time.monotonic() - stopped)))  # keep it down a few seconds
        finally:
            await asyncio.to_thread(pg.start)
        during = await scrape(gw.http)
        assert during["roomcast_flush_failures_total"] > before.get("roomcast_flush_failures_total", 0)
        await eventually(lambda: check_game(db, dark), what="the game played during the outage")
        await flushed(gw.http)
        await check_game(db, game)
        await check_game(db, dark)
        assert await table_counts(db) == {"websocket_connections": 10, "device_sessions": 8, "game_rooms": 2,
                                          "room_participants": 8, "game_events": 2 * len(EVENT_TYPES)}
        assert (await scrape(gw.http))["roomcast_postgres_up"] == 1


async def test_postgres_up_shows_an_outage_with_nothing_to_write(pg: PostgresServer) -> None:
    """An idle cluster (no gateway at all): the gauge must still follow Postgres."""
    db = Db(pg, "idle")
    with cluster(0, 1, FAST | {"DATABASE_URL": db.dsn}) as c:
        coord = c.coordinators[0]
        await history_ready(db, coord)

        def gauge_is(value: float) -> Callable[[], Awaitable[None]]:
            async def check() -> None:
                assert (await scrape(coord.http))["roomcast_postgres_up"] == value

            return check

        await eventually(gauge_is(1), 5 * UNIT, "roomcast_postgres_up 1")
        before = await scrape(coord.http)
        await asyncio.to_thread(pg.stop)
        try:
            await eventually(gauge_is(0), 5 * UNIT, "roomcast_postgres_up 0 while idle")
            for _ in range(10):  # and it stays down while Postgres is: no flapping back to 1
                await gauge_is(0)()
                await asyncio.sleep(0.1)
            during = await scrape(coord.http)
        finally:
            await asyncio.to_thread(pg.start)
        # Nothing was waiting to be written, so no batch failed.
        assert during.get("roomcast_flush_failures_total") == before.get("roomcast_flush_failures_total") == 0
        await eventually(gauge_is(1), SETTLE, "roomcast_postgres_up 1 after the outage")


async def test_rooms_can_still_be_created_while_postgres_is_down(pg: PostgresServer) -> None:
    """Postgres is not on the hot path: a server-drawn join code works during an outage (its
    reuse check against history is skipped); a client-chosen id gets a retryable error."""
    db = Db(pg, "createdown")
    with cluster(1, 1, FAST | {"DATABASE_URL": db.dsn}) as c:
        await history_ready(db, c.coordinators[0])
        async with Client.open(c.gateways[0].url) as host:
            await host.hello(unique("host"))
            await asyncio.to_thread(pg.stop)
            try:
                made = await host.request({"type": "create_room", "game_type": "g"})
                assert made["type"] == "room_created", made
                chosen = await host.request({"type": "create_room", "room_id": unique("chosen"), "game_type": "g"})
                assert chosen["type"] == "error" and chosen["code"] == "unavailable", chosen
                ack = await host.request({"type": "event", "room_id": made["room"]["room_id"], "event_type": "go"})
                assert ack["type"] == "ack"
            finally:
                await asyncio.to_thread(pg.start)
            room_id = made["room"]["room_id"]

            async def persisted() -> None:
                assert await db.value("SELECT count(*) FROM game_events WHERE room_id = $1", room_id) == 2

            await eventually(persisted, SETTLE, "the room's events in history after the outage")


# ---------------------------------------------------------------- (e) cleanup jobs

ABANDONED_MS = 3000
PRUNE_MS = 1000


@pytest.fixture(scope="module", params=REDIS_KINDS)
def cleanup(pg: PostgresServer, request: pytest.FixtureRequest) -> Iterator[tuple[Cluster, Db]]:
    """The coordinator's jobs on one Redis and on a Redis Cluster (every bucket, every primary)."""
    db = Db(pg, "cleanup")
    env = FAST | {"DATABASE_URL": db.dsn, "ABANDONED_ROOM_AFTER": str(ABANDONED_MS),
                  "PARTICIPANT_PRUNE_AFTER": str(PRUNE_MS)}
    with redis_of_kind(request.param) as redis, cluster(1, 1, env, redis=redis) as c:
        yield c, db


@contextlib.asynccontextmanager
async def ticking(client: Client, room_id: str, every: float = 0.4) -> AsyncIterator[None]:
    """Keep a room busy with an event every `every` seconds."""

    async def run() -> None:
        while True:
            await client.send({"type": "event", "room_id": room_id, "event_type": "tick"})
            await asyncio.sleep(every)

    task = asyncio.get_running_loop().create_task(run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_cleanup_closes_abandoned_rooms_only(cleanup: tuple[Cluster, Db]) -> None:
    """Abandoned = no connected member and no event for ABANDONED_ROOM_AFTER: a quiet room
    whose members are online stays open; once they are gone it closes."""
    c, db = cleanup
    gw, coord = c.gateways[0], c.coordinators[0]
    await history_ready(db, coord)
    idle, busy = unique("idle"), unique("busy")
    host_dev, member_dev = unique("ab-host"), unique("ab-member")
    before = cleanup_count(await scrape(coord.http), "abandoned_rooms")
    async with Client.open(gw.url) as keeper:
        await keeper.hello(unique("ab-keeper"))
        assert (await keeper.request({"type": "create_room", "room_id": busy, "game_type": "g"}))["type"] == "room_created"
        async with ticking(keeper, busy):
            async with Client.open(gw.url) as host, Client.open(gw.url) as member:
                await host.hello(host_dev)
                assert (await host.request({"type": "create_room", "room_id": idle, "game_type": "g"}))[
                    "type"] == "room_created"
                await member.hello(member_dev)
                assert (await member.request({"type": "join", "room_id": idle}))["type"] == "joined"
                host.start_pinging(0.3)  # online and pinging, but nobody sends an event
                member.start_pinging(0.3)
                hw = Watch(host, idle)
                with pytest.raises(TimeoutError):
                    await hw.until(lambda e: e["event_type"] == "room_closed", 2 * ABANDONED_MS / 1000)
            # Both gone (disconnected, then pruned): the room closes ABANDONED_MS after its last event.

            async def closed_idle() -> dict[str, Any]:
                listed = await keeper.request({"type": "list_rooms", "game_type": "g", "status": "closed"})
                return {x["room_id"]: x for x in listed["rooms"]}

            deadline = time.monotonic() + ABANDONED_MS / 1000 + 10 * UNIT
            while idle not in await closed_idle():
                assert time.monotonic() < deadline, "the deserted room was not closed"
                await asyncio.sleep(0.6)  # list_rooms budget: 2/s per device (LIST_ROOMS_RATE)
            # The busy room, idle for no interval, is still open.
            listed = await keeper.request({"type": "list_rooms", "game_type": "g"})
            assert busy in [x["room_id"] for x in listed["rooms"]]
            assert idle not in [x["room_id"] for x in listed["rooms"]]

    async def check() -> None:
        events = await db.fetch(f"SELECT event_type, payload, {ms('timestamp')} FROM game_events WHERE room_id = $1"
                                " ORDER BY sequence_number", idle)
        closed = events[-1]
        assert closed["event_type"] == "room_closed" and orjson.loads(closed["payload"]) == {"reason": "abandoned"}
        assert closed["timestamp"] - events[-2]["timestamp"] >= ABANDONED_MS, events
        rooms = {x["room_id"]: x for x in await db.fetch(
            f"SELECT room_id, status::text AS status, current_players, {ms('closed_at')} FROM game_rooms"
            " WHERE room_id = ANY($1::varchar[])", [idle, busy])}
        assert (rooms[idle]["status"], rooms[idle]["closed_at"], rooms[idle]["current_players"]) == (
            "closed", closed["timestamp"], 0), rooms
        assert rooms[busy]["status"] == "waiting" and rooms[busy]["closed_at"] is None, rooms
        parts = await db.fetch(f"SELECT device_id, status::text AS status, {ms('left_at')} FROM room_participants"
                               " WHERE room_id = $1", idle)
        assert sorted((p["device_id"], p["status"]) for p in parts) == sorted(
            [(host_dev, "left"), (member_dev, "left")]), parts
        assert all(p["left_at"] <= closed["timestamp"] for p in parts), parts

    await eventually(check, what="the abandoned room closed in Postgres")
    after = cleanup_count(await scrape(coord.http), "abandoned_rooms")
    assert after >= before + 1


async def test_cleanup_prunes_long_disconnected_participants(cleanup: tuple[Cluster, Db]) -> None:
    c, db = cleanup
    gw, coord = c.gateways[0], c.coordinators[0]
    await history_ready(db, coord)
    room_id, host_dev, gone_dev = unique("prune"), unique("pr-host"), unique("pr-gone")
    async with Client.open(gw.url) as host:
        await host.hello(host_dev)
        assert (await host.request({"type": "create_room", "room_id": room_id, "game_type": "g"}))[
            "type"] == "room_created"
        hw = Watch(host, room_id)
        async with ticking(host, room_id):  # the room stays busy: only the prune job acts here
            async with Client.open(gw.url) as gone:
                await gone.hello(gone_dev)
                assert (await gone.request({"type": "join", "room_id": room_id}))["type"] == "joined"
            dropped = await hw.until(lambda e: e["event_type"] == "participant_disconnected")
            assert dropped["payload"] == {"device_id": gone_dev, "role": "player", "reason": "close"}
            pruned = await hw.until(lambda e: e["event_type"] == "participant_left", PRUNE_MS / 1000 + 5 * UNIT)
            assert pruned["payload"] == {"device_id": gone_dev, "role": "player", "reason": "pruned"}
            assert pruned["from"] is None
            assert pruned["ts"] - dropped["ts"] >= PRUNE_MS

            async def check() -> None:
                parts = {p["device_id"]: p for p in await db.fetch(
                    f"SELECT device_id, status::text AS status, {ms('left_at')} FROM room_participants"
                    " WHERE room_id = $1", room_id)}
                assert (parts[gone_dev]["status"], parts[gone_dev]["left_at"]) == ("left", pruned["ts"]), parts
                assert (parts[host_dev]["status"], parts[host_dev]["left_at"]) == ("active", None), parts
                assert await db.value("SELECT current_players FROM game_rooms WHERE room_id = $1", room_id) == 1

            await eventually(check, what="the pruned participant in Postgres")
        await host.drain()  # read what the ticker's acks left queued, so the close is quick


async def test_cleanup_archives_only_old_connection_rows(cleanup: tuple[Cluster, Db]) -> None:
    """"Archive old connections (> 30 days)": rows older than CONNECTION_RETENTION_DAYS move,
    unchanged, to websocket_connections_archive; recent ones stay where they are."""
    c, db = cleanup
    coord = c.coordinators[0]
    await history_ready(db, coord)
    tag = unique("ret")
    insert = """INSERT INTO websocket_connections (socket_id, device_id, connected_at, disconnected_at, status,
                                                   ip_address, metadata, reconnect_count)
                VALUES ($1::varchar, $2, (now() AT TIME ZONE 'utc') - make_interval(days => $3),
                        (now() AT TIME ZONE 'utc') - make_interval(days => $3) + interval '1 hour',
                        $4::connection_status, 'ip-' || $1::varchar, jsonb_build_object('s', $1::varchar), $3)"""
    rows = {f"{tag}-old-40": (40, "disconnected"), f"{tag}-old-31": (31, "timeout"),
            f"{tag}-new-29": (29, "disconnected"), f"{tag}-new-0": (0, "disconnected")}
    before = cleanup_count(await scrape(coord.http), "old_connections")
    originals: dict[str, dict[str, Any]] = {}
    for socket_id, (days, status) in rows.items():  # the job may run at any moment: RETURNING
        originals[socket_id] = (await db.fetch(insert + " RETURNING *", socket_id, f"{tag}-dev", days, status))[0]

    async def table(name: str) -> dict[str, dict[str, Any]]:
        return {r["socket_id"]: r for r in await db.fetch(f"SELECT * FROM {name} WHERE device_id = $1",
                                                          f"{tag}-dev")}

    async def archived(old: list[str]) -> None:
        assert sorted(await table("websocket_connections")) == sorted([f"{tag}-new-29", f"{tag}-new-0"])
        moved = await table("websocket_connections_archive")
        assert sorted(moved) == sorted(old)
        for socket_id in old:  # every column as it was, id included
            assert moved[socket_id] == originals[socket_id], (moved[socket_id], originals[socket_id])

    await eventually(lambda: archived([f"{tag}-old-40", f"{tag}-old-31"]), 10 * UNIT, "old connection rows archived")
    # One more old row: once it is archived too, a later pass has run and kept the recent ones.
    originals[f"{tag}-old-35"] = (await db.fetch(insert + " RETURNING *", f"{tag}-old-35", f"{tag}-dev", 35,
                                                 "disconnected"))[0]
    await eventually(lambda: archived([f"{tag}-old-40", f"{tag}-old-31", f"{tag}-old-35"]), 10 * UNIT,
                     "a second retention pass")
    after = cleanup_count(await scrape(coord.http), "old_connections")
    assert after >= before + 3


async def test_last_heartbeat_advances_in_batches_while_clients_ping(cleanup: tuple[Cluster, Db]) -> None:
    c, db = cleanup
    gw, coord = c.gateways[0], c.coordinators[0]
    await history_ready(db, coord)
    log_table = unique("hb_log").replace("-", "_")
    # Record every change of last_heartbeat, with the transaction that made it.
    await db.execute(f"""
        CREATE TABLE {log_table} (socket_id varchar, hb timestamp, tx bigint DEFAULT txid_current());
        CREATE FUNCTION {log_table}_fn() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.last_heartbeat IS DISTINCT FROM OLD.last_heartbeat THEN
                INSERT INTO {log_table} (socket_id, hb) VALUES (NEW.socket_id, NEW.last_heartbeat);
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER {log_table}_trg AFTER UPDATE ON websocket_connections
            FOR EACH ROW EXECUTE FUNCTION {log_table}_fn();""")
    before = cleanup_count(await scrape(coord.http), "heartbeats")
    try:
        async with Client.open(gw.url) as a, Client.open(gw.url) as b:
            sa = (await a.hello(unique("hb-a")))["socket_id"]
            sb = (await b.hello(unique("hb-b")))["socket_id"]

            async def rows_exist() -> None:
                n = await db.value("SELECT count(*) FROM websocket_connections WHERE socket_id = ANY($1::varchar[])",
                                   [sa, sb])
                assert n == 2

            await eventually(rows_exist, what="both connection rows")
            started = time.monotonic()
            pings, last_ping_ms = 0, 0
            while time.monotonic() - started < 2.0:
                for client in (a, b):
                    assert (await client.request({"type": "ping"}))["type"] == "pong"
                last_ping_ms = int(time.time() * 1000)
                pings += 1
                await asyncio.sleep(0.05)
            elapsed = time.monotonic() - started

            async def caught_up() -> None:
                hb = await db.value(f"SELECT {ms('last_heartbeat')} FROM websocket_connections WHERE socket_id = $1", sa)
                assert hb >= last_ping_ms - 50, (hb, last_ping_ms)

            await eventually(caught_up, 5 * UNIT, "last_heartbeat at the latest ping")
            log = await db.fetch(f"SELECT socket_id, {ms('hb')}, tx FROM {log_table}"
                                 " WHERE socket_id = ANY($1::varchar[]) ORDER BY tx", [sa, sb])
        for sock in (sa, sb):
            beats = [r["hb"] for r in log if r["socket_id"] == sock]
            assert len(beats) >= 3, beats  # it advances while the client pings...
            assert beats == sorted(set(beats)), beats  # ...only forwards...
            assert len(beats) <= pings / 3, (len(beats), pings)  # ...in batches, not once per ping
            assert len(beats) <= (elapsed + 5 * UNIT) / 0.3 + 1
        # One statement per batch: both sockets' rows change in the same transaction.
        by_tx: dict[int, set[str]] = {}
        for r in log:
            by_tx.setdefault(r["tx"], set()).add(r["socket_id"])
        assert sum(1 for s in by_tx.values() if s == {sa, sb}) >= 2, by_tx
        after = cleanup_count(await scrape(coord.http), "heartbeats")
        assert after > before
    finally:
        await db.execute(f"DROP TRIGGER {log_table}_trg ON websocket_connections")


async def test_room_lost_by_redis_continues_its_sequence_from_history(pg: PostgresServer) -> None:
    """Redis restarted without persistence: the room comes back from Postgres with its seq
    continuing after the last persisted event, under a new epoch; no sequence_number is reused."""
    db = Db(pg, "restore")
    with cluster(2, 1, FAST | {"DATABASE_URL": db.dsn}) as c:
        coord = c.coordinators[0]
        await history_ready(db, coord)
        room_id = unique("restore")
        host_dev, player_dev = unique("host"), unique("player")
        async with Client.open(c.gateways[0].url) as host, Client.open(c.gateways[1].url) as player:
            await host.hello(host_dev)
            created = await host.request({"type": "create_room", "room_id": room_id, "game_type": "trivia",
                                          "game_data": {"round": 1}})
            old_epoch = created["epoch"]
            await player.hello(player_dev)
            await player.request({"type": "join", "room_id": room_id})
            last = 0
            for n in range(5):
                last = await ack(host, {"type": "event", "room_id": room_id, "event_type": "tick", "payload": {"n": n}})

            async def persisted() -> None:
                assert await db.value("SELECT max(sequence_number) FROM game_events WHERE room_id = $1",
                                      room_id) == last

            await eventually(persisted, SETTLE, "the events in history")
            # Redis loses everything (restart without persistence).
            c.redis.stop()
            c.redis.start()
            # Sockets in a room that is gone are told to reconnect (1012).
            assert await host.closed(15 * UNIT) == 1012
        async with Client.open(c.gateways[1].url) as back:
            await back.hello(host_dev)
            for _ in range(100):  # the gateway may still be re-establishing Redis
                rejoined = await back.request({"type": "join", "room_id": room_id, "since": last,
                                               "epoch": old_epoch})
                if rejoined["type"] == "joined":
                    break
                assert rejoined["code"] == "unavailable", rejoined
                await asyncio.sleep(0.1)
            assert rejoined["type"] == "joined", rejoined
            assert rejoined["epoch"] != old_epoch and rejoined["recovered"] is False
            assert rejoined["room"]["game_data"] == {"round": 1} and rejoined["role"] == "host"
            # The sequence continues from history (re-registration may have added events since).
            assert rejoined["seq"] >= last
            nxt = await ack(back, {"type": "event", "room_id": room_id, "event_type": "tick", "payload": {"n": 99}})
            assert nxt > last

            async def continued() -> None:
                rows = await db.fetch("SELECT sequence_number, event_type FROM game_events WHERE room_id = $1 "
                                      "ORDER BY sequence_number", room_id)
                seqs = [r["sequence_number"] for r in rows]
                assert seqs == list(range(1, nxt + 1)), seqs  # gap-free, nothing reused or dropped
                assert rows[-1]["event_type"] == "tick"

            await eventually(continued, SETTLE, "history continuing after the restore")
