"""The RoomStore contract (roomcast/store/base.py), run against every backend.

Conventions 5: one contract suite, so the embedded default and the cluster cannot drift
apart. To run it against another backend, add one entry to BACKENDS: an async context
manager (given the test's fixture request, to reach session resources) that yields a
`Backend`: store, bus, a `settle` that waits until events published so far have reached
the bus sink, and the backend's upkeep (`prune`, `expire`). Time is passed explicitly
(`now_ms`); no test sleeps.

Backends: "memory" (the embedded default) and "redis" (the cluster's store, bus and the
coordinator's reaper, against one ephemeral redis-server per test session, started only
if a redis test runs, flushed before each test).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from coordinator.reaper import Reaper
from roomcast import protocol
from roomcast.bus.base import Bus, EventSink
from roomcast.bus.memory import MemoryBus
from roomcast.bus.redis import RedisBus
from roomcast.errors import ErrorCode, GatewayError
from roomcast.redis import keys
from roomcast.redis.batch import Batcher, cmd
from roomcast.redis.client import make_client
from roomcast.store.base import (
    REPLAY_CHUNK,
    Budget,
    Caller,
    ConnectionInfo,
    ConnectResult,
    DeviceRoom,
    JoinResult,
    NewRoom,
    RoomOwner,
    RoomStore,
    Service,
)
from roomcast.store.memory import MemoryStore
from roomcast.store.redis import RedisStore
from tests.harness import UNIT, RedisClusterServer, RedisServer

T0 = 1_700_000_000_000
HISTORY = 10
PRUNE_MS = 60_000
ROOM_TTL_MS = 120_000
CONNECTION_TTL_MS = 30_000
MAX_GAME_DATA_BYTES = 200
IDEM_WINDOW_MS = 600_000
IDEM_MAX_KEYS = 5

ROOM = "room-1"
ROOM_KEYS = {"room_id", "game_type", "status", "max_players", "current_players", "game_data",
             "created_at", "created_by", "seq"}
EVENT_KEYS = {"type", "room_id", "seq", "event_type", "action", "payload", "from", "ts"}


# ---------------------------------------------------------------- backends


@dataclass
class Backend:
    store: RoomStore
    bus: Bus
    settle: Callable[[], Awaitable[None]]
    # Upkeep as of `now_ms` that prunes participants disconnected for PRUNE_MS or longer
    # (memory: `sweep`; Redis: a pass of the coordinator's reaper).
    prune: Callable[[int], Awaitable[None]]
    # Let time pass up to `now_ms` for records that expire by age: closed rooms ROOM_TTL_MS
    # after closing, connection records of devices with no open socket CONNECTION_TTL_MS
    # after their last disconnect (memory: `sweep`; Redis: key TTLs, see `_RedisClock`).
    expire: Callable[[int], Awaitable[None]]
    # False if history is trimmed lazily (Redis `XADD MAXLEN ~`): events beyond HISTORY
    # may still be kept and replayed, which the contract allows.
    exact_history: bool = True
    # How many member records the backend holds for a room (left ones included, if kept).
    member_records: Callable[[str], Awaitable[int]] | None = None


async def _nothing_to_wait_for() -> None:
    return None


@contextlib.asynccontextmanager
async def memory_backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    bus = MemoryBus()
    store = MemoryStore(
        bus,
        history=HISTORY,
        room_ttl_ms=ROOM_TTL_MS,
        connection_ttl_ms=CONNECTION_TTL_MS,
        participant_prune_ms=PRUNE_MS,
        max_game_data_bytes=MAX_GAME_DATA_BYTES,
        idempotency_window_ms=IDEM_WINDOW_MS,
        idempotency_max_keys=IDEM_MAX_KEYS,
    )

    async def member_records(room_id: str) -> int:
        return len(store.rooms[room_id].participants)

    yield Backend(store, bus, _nothing_to_wait_for, store.sweep, store.sweep, member_records=member_records)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One ephemeral redis-server for the session; requested only by redis-backed tests."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServer]:
    """One Redis Cluster (3 primaries + 3 replicas) for the session; the same contract runs on it."""
    server = RedisClusterServer().start()
    try:
        yield server
    finally:
        server.stop()


def _drop(room_id: str, seq: int, frame: bytes) -> None:
    return None


class _SettlingBus:
    """The RedisBus as the tests see it, noting the highest seq delivered per room so
    `settle` can wait for exactly the events published so far (each room's `seq`)."""

    SETTLE_TIMEOUT = 5 * UNIT

    def __init__(self, bus: RedisBus, client: Redis) -> None:
        self.bus = bus
        self.client = client
        self.rooms: set[str] = set()
        self.delivered: dict[str, int] = {}
        self.arrived = asyncio.Event()
        self._sink: EventSink = _drop
        bus.set_sink(self._deliver)

    def _deliver(self, room_id: str, seq: int, frame: bytes) -> None:
        self.delivered[room_id] = max(seq, self.delivered.get(room_id, 0))
        self.arrived.set()
        self._sink(room_id, seq, frame)

    def set_sink(self, sink: EventSink) -> None:
        self._sink = sink

    async def subscribe(self, room_id: str) -> None:
        await self.bus.subscribe(room_id)
        self.rooms.add(room_id)

    async def unsubscribe(self, room_id: str) -> None:
        self.rooms.discard(room_id)
        await self.bus.unsubscribe(room_id)

    async def settle(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.SETTLE_TIMEOUT
        while True:
            self.arrived.clear()
            rooms = sorted(self.rooms)
            pipe = self.client.pipeline(transaction=False)
            for r in rooms:
                pipe.hget(keys.room(r), "seq")
            heads = [int(h or 0) for h in await pipe.execute()]
            behind = {r: (self.delivered.get(r, 0), h) for r, h in zip(rooms, heads, strict=True)
                      if self.delivered.get(r, 0) < h}
            if not behind:
                return
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"events not delivered within {self.SETTLE_TIMEOUT}s: (delivered, seq) {behind}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), left)


class _RedisClock:
    """Redis expires records by key TTLs in real time, set when the record ends. `expire`
    checks that every TTL is the configured lifetime, then stands in for the clock: it
    deletes the keys whose lifetime, counted from the test time the record ended (which the
    record keeps: a room's `closed_at`, a connection's `disconnected_at`), is over."""

    SLACK_MS = int(10_000 * UNIT)  # real time that may pass between setting a TTL and reading it

    def __init__(self, client: Redis) -> None:
        self.client = client

    async def _ttl(self, key: str, lifetime: int) -> bool:
        ttl = int(await self.client.pttl(key))
        if ttl < 0:
            return False  # -1: kept until removed; -2: no such key
        assert lifetime - self.SLACK_MS < ttl <= lifetime, f"{key}: PTTL {ttl}, expected about {lifetime}"
        return True

    async def expire(self, now_ms: int) -> None:
        due: list[str] = []
        async for raw in self.client.scan_iter(match="ws:*", count=1000):
            key = raw.decode()
            if key.startswith("ws:room:{"):
                room_id = key[len("ws:room:{") : key.index("}")]
                if await self._ttl(key, ROOM_TTL_MS):
                    closed_at = await self.client.hget(keys.room(room_id), "closed_at")
                    assert closed_at is not None, f"{key} expires but room {room_id} is not closed"
                    if now_ms - int(closed_at) >= ROOM_TTL_MS:
                        due.append(key)
            elif key.startswith("ws:connections:{") and key.endswith("}"):
                if await self._ttl(key, CONNECTION_TTL_MS):
                    fields = await self.client.hmget(key, "sockets", "disconnected_at")
                    assert fields[0] is not None and int(fields[0]) <= 0, f"{key} expires with an open socket"
                    assert fields[1] is not None, f"{key} expires but has no disconnected_at"
                    if now_ms - int(fields[1]) >= CONNECTION_TTL_MS:
                        due.append(key)
            elif key.startswith("ws:socket:"):
                # socket -> device, read only by the reaper's heartbeat timeouts (not part
                # of this contract): check its lifetime, leave it to Redis.
                await self._ttl(key, CONNECTION_TTL_MS)
            else:
                assert int(await self.client.pttl(key)) < 0, f"unexpected TTL on {key}"
        if due:
            await self.client.delete(*due)


@contextlib.asynccontextmanager
async def redis_backend(request: pytest.FixtureRequest, fixture: str = "redis_server") -> AsyncIterator[Backend]:
    server: RedisServer | RedisClusterServer = request.getfixturevalue(fixture)
    single = make_client(server.url)
    batcher = Batcher(single)
    if await batcher.detect():
        assert isinstance(server, RedisClusterServer)
        server.flushall()
    else:
        await single.flushall()
    client = batcher.client  # the test reads Redis as the store does (routed by slot on a cluster)
    store = RedisStore(
        batcher,
        history=HISTORY,
        room_ttl_ms=ROOM_TTL_MS,
        connection_ttl_ms=CONNECTION_TTL_MS,
        max_game_data_bytes=MAX_GAME_DATA_BYTES,
        idempotency_window_ms=IDEM_WINDOW_MS,
        idempotency_max_keys=IDEM_MAX_KEYS,
    )
    await batcher.load_scripts()
    # Heartbeat timeouts are the reaper's other job; none of these tests heartbeats, so
    # they are kept out of the way.
    reaper = Reaper(batcher, store, heartbeat_timeout_ms=10**12, prune_after_ms=PRUNE_MS, node_ttl_ms=10_000)

    async def prune(now_ms: int) -> None:
        await reaper.run_once(now_ms)

    bus = RedisBus(server.url, "contract-test", lambda ch, data: batcher.call(cmd("spublish", ch, data)))
    task = asyncio.get_running_loop().create_task(bus.run())
    try:
        await asyncio.wait_for(bus.connected.wait(), 5 * UNIT)
        settling = _SettlingBus(bus, client)

        async def member_records(room_id: str) -> int:
            return int(await client.hlen(keys.members(room_id)))

        yield Backend(store, settling, settling.settle, prune, _RedisClock(client).expire, exact_history=False,
                      member_records=member_records)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await batcher.aclose()


def redis_cluster_backend(request: pytest.FixtureRequest) -> contextlib.AbstractAsyncContextManager[Backend]:
    return redis_backend(request, "redis_cluster")


BACKENDS: dict[str, Callable[[pytest.FixtureRequest], contextlib.AbstractAsyncContextManager[Backend]]] = {
    "memory": memory_backend,
    "redis": redis_backend,
    "redis-cluster": redis_cluster_backend,
}


class EventLog:
    """Every event the bus delivers for the rooms watched, in delivery order."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.delivered: list[tuple[str, int, bytes]] = []
        backend.bus.set_sink(self._sink)

    def _sink(self, room_id: str, seq: int, frame: bytes) -> None:
        self.delivered.append((room_id, seq, frame))

    async def watch(self, room_id: str) -> None:
        await self.backend.bus.subscribe(room_id)

    async def frames(self, room_id: str) -> list[bytes]:
        await self.backend.settle()
        return [frame for r, _, frame in self.delivered if r == room_id]

    async def events(self, room_id: str = ROOM, after: int = 0) -> list[dict[str, Any]]:
        out = []
        for frame in await self.frames(room_id):
            event = orjson.loads(frame)
            if event["seq"] > after:
                out.append(event)
        return out

    async def types(self, room_id: str = ROOM, after: int = 0) -> list[str]:
        return [e["event_type"] for e in await self.events(room_id, after)]

    async def last(self, room_id: str = ROOM) -> dict[str, Any]:
        return (await self.events(room_id))[-1]

    def check(self) -> None:
        """Each frame is a well-formed event of its room; seqs start at 1 and have no gap."""
        by_room: dict[str, list[int]] = {}
        for room_id, seq, frame in self.delivered:
            event = orjson.loads(frame)
            assert set(event) == EVENT_KEYS
            assert (event["type"], event["room_id"], event["seq"]) == ("event", room_id, seq)
            assert protocol.event_seq_of(frame) == seq
            assert protocol.event_type_of(frame) == event["event_type"]
            by_room.setdefault(room_id, []).append(seq)
        for room_id, seqs in by_room.items():
            assert seqs == list(range(1, len(seqs) + 1)), f"seqs of {room_id}: {seqs}"


@pytest.fixture(params=list(BACKENDS))
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    async with BACKENDS[request.param](request) as b:
        yield b


@pytest.fixture
def store(backend: Backend) -> RoomStore:
    return backend.store


@pytest.fixture
async def log(backend: Backend) -> AsyncIterator[EventLog]:
    events = EventLog(backend)
    yield events
    await backend.settle()
    events.check()


# ---------------------------------------------------------------- helpers


def person(name: str, socket: int = 1, user_id: str | None = None) -> Caller:
    return Caller(f"sock-{name}-{socket}", f"device-{name}", user_id)


HOST = person("host")
P1, P2, P3 = person("p1"), person("p2"), person("p3")
SPEC = person("spec")


async def hello(store: RoomStore, *callers: Caller, now: int = T0) -> ConnectResult:
    result = ConnectResult(0, [])
    for c in callers:
        result = await store.connect(c, ConnectionInfo(ip="127.0.0.1"), now)
    return result


async def create(
    store: RoomStore,
    log: EventLog,
    room_id: str = ROOM,
    *,
    host: Caller = HOST,
    game_type: str = "trivia",
    max_players: int = 4,
    game_data: dict[str, Any] | None = None,
    password_hash: str | None = None,
    now: int = T0,
    connect: bool = True,
) -> JoinResult:
    await log.watch(room_id)
    if connect:
        await hello(store, host, now=now)
    new = NewRoom(room_id, game_type, max_players, {} if game_data is None else game_data, password_hash)
    return await store.create_room(host, new, now)


async def join(
    store: RoomStore, c: Caller, room_id: str = ROOM, role: str = "player", *,
    since: int | None = None, epoch: str | None = None, now: int = T0,
) -> JoinResult:
    return await store.join(c, room_id, role, since, epoch, now)


async def refused(code: ErrorCode, action: Awaitable[Any]) -> None:
    with pytest.raises(GatewayError) as info:
        await action
    assert info.value.code is code


async def publish(store: RoomStore, c: Caller, event_type: str = "move", payload: dict[str, Any] | None = None,
                  room_id: str = ROOM, now: int = T0, key: str | None = None) -> int:
    return await store.publish(c, room_id, protocol.event_tail(event_type, None, payload, c.sender(), now), now,
                               idempotency_key=key)


async def replayed(store: RoomStore, result: JoinResult, room_id: str = ROOM, chunk: int = 3) -> list[bytes]:
    """The frames a gateway replays after `result`: `replay`, then, from
    `replay_rest_after`, read_since in chunks of `chunk` (the way the gateway reads them)."""
    assert len(result.replay) <= REPLAY_CHUNK
    out = list(result.replay)
    if result.replay_rest_after is None:
        return out
    last = result.replay_rest_after
    for _ in range(10_000):
        part = await store.read_since(room_id, last, result.seq, chunk)
        assert len(part) <= chunk
        if not part:
            break
        out += [f for _, f in part]
        last = part[-1][0]
    return out


async def list_page(store: RoomStore, game_type: str | None, status: str | None, limit: int) -> list[dict[str, Any]]:
    return (await store.list_rooms(game_type, status, limit)).rooms


def participant(result: JoinResult, c: Caller) -> dict[str, Any]:
    [p] = [p for p in result.participants if p["device_id"] == c.device_id]
    return p


async def room_state(store: RoomStore, log: EventLog, room_id: str = ROOM) -> JoinResult:
    """The room as a new spectator sees it (a spectator takes no place, so it changes no count)."""
    watcher = person("watcher")
    await hello(store, watcher)
    state = await join(store, watcher, room_id, "spectator")
    await store.leave(watcher, room_id, T0)
    return state


# ---------------------------------------------------------------- create_room


async def test_create_room_makes_the_caller_host(store: RoomStore, log: EventLog) -> None:
    result = await create(store, log, game_type="quiz", max_players=6, game_data={"round": 1})
    assert result.role == "host"
    assert result.seq == 0
    assert result.recovered is False and await replayed(store, result) == []
    assert isinstance(result.epoch, str) and result.epoch
    assert set(result.room) == ROOM_KEYS
    assert result.room == {
        "room_id": ROOM, "game_type": "quiz", "status": "waiting", "max_players": 6, "current_players": 1,
        "game_data": {"round": 1}, "created_at": T0, "created_by": HOST.device_id, "seq": 0,
    }
    assert [(p["device_id"], p["role"], p["status"]) for p in result.participants] == [
        (HOST.device_id, "host", "active")
    ]
    [event] = await log.events()
    assert event == {
        "type": "event", "room_id": ROOM, "seq": 1, "event_type": "participant_joined", "action": None,
        "payload": {"device_id": HOST.device_id, "role": "host"}, "from": HOST.sender(), "ts": T0,
    }


async def test_create_existing_room_is_conflict(store: RoomStore, log: EventLog) -> None:
    await create(store, log)
    await hello(store, P1)
    await refused(ErrorCode.CONFLICT, store.create_room(P1, NewRoom(ROOM, "other", 2, {}, None), T0 + 1))
    assert await log.types() == ["participant_joined"]
    state = await room_state(store, log)
    assert (state.room["game_type"], state.room["created_by"]) == ("trivia", HOST.device_id)


async def test_create_with_too_large_game_data_is_bad_request(store: RoomStore, log: EventLog) -> None:
    await log.watch(ROOM)
    big = {"blob": "x" * MAX_GAME_DATA_BYTES}
    await refused(ErrorCode.BAD_REQUEST, store.create_room(HOST, NewRoom(ROOM, "t", 4, big, None), T0))
    await refused(ErrorCode.NOT_FOUND, join(store, P1))
    assert await log.events() == []


# ---------------------------------------------------------------- join


async def test_join_makes_participant_joined_after_the_returned_head(store: RoomStore, log: EventLog) -> None:
    created = await create(store, log)
    await hello(store, P1)
    result = await join(store, P1, now=T0 + 5)
    assert result.seq == 1  # the head when the join took effect: its own event comes after
    assert result.room["seq"] == 1
    assert result.epoch == created.epoch
    assert result.role == "player"
    assert result.room["current_players"] == 2
    assert participant(result, P1)["role"] == "player"
    assert participant(result, HOST)["role"] == "host"
    event = await log.last()
    assert (event["seq"], event["event_type"], event["ts"]) == (2, "participant_joined", T0 + 5)
    assert event["payload"] == {"device_id": P1.device_id, "role": "player"}
    assert event["from"] == P1.sender()


async def test_capacity_counts_host_and_players_not_spectators(store: RoomStore, log: EventLog) -> None:
    await create(store, log, max_players=2)
    await hello(store, P1, P2, SPEC)
    assert (await join(store, SPEC, role="spectator")).role == "spectator"
    full = await join(store, P1)
    assert full.room["current_players"] == 2
    before = await log.types()
    await refused(ErrorCode.ROOM_FULL, join(store, P2))
    assert await log.types() == before  # a refused join changes nothing
    # Spectators still get in, and do not count.
    spec2 = person("spec2")
    result = await join(store, spec2, role="spectator")
    assert result.room["current_players"] == 2
    assert {p["device_id"] for p in result.participants} == {
        HOST.device_id, P1.device_id, SPEC.device_id, spec2.device_id
    }


async def test_a_place_is_freed_by_leave(store: RoomStore, log: EventLog) -> None:
    await create(store, log, max_players=2)
    await hello(store, P1, P2)
    await join(store, P1)
    await refused(ErrorCode.ROOM_FULL, join(store, P2))
    await store.leave(P1, ROOM, T0)
    assert (await join(store, P2)).room["current_players"] == 2


async def test_rejoin_on_the_same_socket_keeps_role_and_emits_nothing(store: RoomStore, log: EventLog) -> None:
    await create(store, log, max_players=2)
    await hello(store, P1)
    await join(store, P1, role="spectator")
    before = await log.types()
    again = await join(store, P1, role="player")
    assert again.role == "spectator"
    assert participant(again, P1)["role"] == "spectator"
    assert again.room["current_players"] == 1
    host_again = await join(store, HOST, role="player")
    assert host_again.role == "host"
    assert await log.types() == before


async def test_rejoin_from_a_new_socket_takes_no_new_place(store: RoomStore, log: EventLog) -> None:
    await create(store, log, max_players=2)
    await hello(store, P1)
    await join(store, P1)
    p1_tab2 = person("p1", socket=2)
    await hello(store, p1_tab2)
    again = await join(store, p1_tab2, role="spectator")  # the room is full: no new place is needed
    assert again.role == "player"
    assert again.room["current_players"] == 2
    assert len(again.participants) == 2
    # Never a second participant_joined: the new socket replaces the old one, which the
    # gateway may not yet know is lost, so it counts as a reconnection.
    assert await log.types(after=2) == ["participant_reconnected"]
    assert participant(again, P1)["status"] == "active"


async def test_join_closed_room_is_room_closed(store: RoomStore, log: EventLog) -> None:
    await create(store, log)
    await store.close_room(HOST, ROOM, T0)
    await hello(store, P1)
    await refused(ErrorCode.ROOM_CLOSED, join(store, P1))
    await refused(ErrorCode.ROOM_CLOSED, join(store, HOST))


async def test_join_unknown_room_is_not_found(store: RoomStore, log: EventLog) -> None:
    await hello(store, P1)
    await refused(ErrorCode.NOT_FOUND, join(store, P1, "no-such-room"))


async def test_join_after_leave_is_a_new_join(store: RoomStore, log: EventLog) -> None:
    await create(store, log)
    await hello(store, P1)
    await join(store, P1, role="spectator")
    await store.leave(P1, ROOM, T0)
    result = await join(store, P1, role="player")
    assert result.role == "player"
    assert (await log.last())["event_type"] == "participant_joined"


async def test_password_hash_is_kept_for_the_gateway(store: RoomStore, log: EventLog) -> None:
    await create(store, log, password_hash="scrypt$hash")
    await create(store, log, "open-room")
    assert await store.password_hash(ROOM) == "scrypt$hash"
    assert await store.password_hash("open-room") is None
    assert await store.password_hash("no-such-room") is None


# ---------------------------------------------------------------- disconnect and reconnect


async def test_disconnect_makes_participant_disconnected_once(store: RoomStore, log: EventLog) -> None:
    await create(store, log)
    await hello(store, P1)
    await join(store, P1)
    await store.disconnect(P1, "disconnected", "close", T0 + 10)
    event = await log.last()
    assert event["event_type"] == "participant_disconnected"
    assert event["payload"] == {"device_id": P1.device_id, "role": "player", "reason": "close"}
    assert event["from"] is None
    assert event["ts"] == T0 + 10
    state = await room_state(store, log)
    assert participant(state, P1)["status"] == "disconnected"
    assert state.room["current_players"] == 2  # a disconnected participant keeps its place
    count = len(await log.events())
    await store.disconnect(P1, "disconnected", "close", T0 + 20)
    await store.disconnect(P1, "timeout", "timeout", T0 + 30)
    assert len(await log.events()) == count


async def test_timeout_reason_is_carried(store: RoomStore, log: EventLog) -> None:
    await create(store, log)
    await store.disconnect(HOST, "timeout", "timeout", T0)
    event = await log.last()
    assert (event["event_type"], event["payload"]) == (
        "participant_disconnected", {"device_id": HOST.device_id, "role": "host", "reason": "timeout"}
    )


async def test_disconnect_of_a_replaced_socket_changes_nothing(store: RoomStore, log: EventLog) -> None:
    await create(store, log)
    await hello(store, P1)
    await join(store, P1)
    p1_tab2 = person("p1", socket=2)
    await hello(store, p1_tab2)
    await join(store, p1_tab2)
    count = len(await log.events())
    await store.disconnect(P1, "disconnected", "close", T0)  # the old socket no longer holds the place
    assert len(await log.events()) == count
    assert participant(await room_state(store, log), P1)["status"] == "active"


async def test_ending_an_ended_socket_again_leaves_the_device_alone(
    backend: Backend, store: RoomStore, log: EventLog
) -> None:
    """Both the gateway and the reaper may end the same socket: the second time must not
    count as the end of the device's other, still open, socket."""
    await hello(store, P1)
    tab2 = person("p1", socket=2)
    await hello(store, tab2)
    await store.disconnect(P1, "timeout", "timeout", T0)
    await store.disconnect(P1, "disconnected", "close", T0 + 1)
    await backend.expire(T0 + 100 * CONNECTION_TTL_MS)  # tab2 is open: the record is kept
    assert (await hello(store, person("p1", socket=3))).reconnect_count == 2


async def test_disconnect_without_rooms_emits_nothing(store: RoomStore, log: EventLog) -> None:
    await create(store, log)
    await hello(store, P1)
    await store.disconnect(P1, "disconnected", "close", T0)
    assert await log.types() == ["participant_joined"]


async def test_rejoin_after_disconnect_is_reconnected_with_same_role(store: RoomStore, log: EventLog) -> None:
    await create(store, log, max_players=2)
    await hello(store, P1, SPEC)
    await join(store, P1)
    await join(store, SPEC, role="spectator")
    await store.disconnect(P1, "disconnected", "close", T0)
    await store.disconnect(SPEC, "timeout", "timeout", T0)
    p1_back, spec_back = person("p1", socket=2), person("spec", socket=2)
    await hello(store, p1_back, spec_back, P2)
    await refused(ErrorCode.ROOM_FULL, join(store, P2))  # the disconnected player keeps its place
    head = (await log.last())["seq"]
    result = await join(store, p1_back, role="spectator", now=T0 + 99)
    assert result.seq == head
    assert result.role == "player"
    assert participant(result, P1)["status"] == "active"
    event = await log.last()
    assert (event["seq"], event["event_type"], event["ts"]) == (head + 1, "participant_reconnected", T0 + 99)
    assert event["payload"] == {"device_id": P1.device_id, "role": "player"}
    assert event["from"] == p1_back.sender()
    assert (await join(store, spec_back, role="player")).role == "spectator"
    assert (await log.last())["payload"] == {"device_id": SPEC.device_id, "role": "spectator"}


async def test_participant_stays_active_while_any_joined_socket_is_open(
    backend: Backend, store: RoomStore, log: EventLog
) -> None:
    """Issue 10 #5: the later of two joined sockets ends; the earlier one keeps the place."""
    await create(store, log)
    await hello(store, P1)
    await join(store, P1)
    tab2 = person("p1", socket=2)
    await hello(store, tab2)
    await join(store, tab2)
    count = len(await log.events())
    await store.disconnect(tab2, "disconnected", "close", T0 + 1)
    assert len(await log.events()) == count  # P1's first socket is still in the room
    assert participant(await room_state(store, log), P1)["status"] == "active"
    await backend.prune(T0 + 10 * PRUNE_MS)
    assert participant(await room_state(store, log), P1)["status"] == "active"
    assert await publish(store, P1) > 0  # the open socket still acts in the room
    await refused(ErrorCode.NOT_MEMBER, publish(store, tab2))  # the ended one does not
    await store.disconnect(P1, "disconnected", "close", T0 + 2)  # its last joined socket
    event = await log.last()
    assert (event["event_type"], event["payload"]["device_id"]) == ("participant_disconnected", P1.device_id)
    assert participant(await room_state(store, log), P1)["status"] == "disconnected"


async def test_a_socket_acts_only_in_rooms_it_joined(store: RoomStore, log: EventLog) -> None:
    """Issue 10 #5: another socket of a member's device has not joined: it may not act there."""
    await create(store, log)
    await hello(store, P1)
    await join(store, P1)
    p1_tab2, host_tab2 = person("p1", socket=2), person("host", socket=2)
    await hello(store, p1_tab2, host_tab2)
    count = len(await log.events())
    await refused(ErrorCode.NOT_MEMBER, store.leave(p1_tab2, ROOM, T0))
    await refused(ErrorCode.NOT_MEMBER, publish(store, p1_tab2))
    await refused(ErrorCode.NOT_MEMBER, store.update_room(host_tab2, ROOM, "in_progress", None, T0))
    await refused(ErrorCode.NOT_MEMBER, store.close_room(host_tab2, ROOM, T0))
    assert len(await log.events()) == count
    state = await room_state(store, log)
    assert participant(state, P1)["status"] == "active"
    assert state.room["status"] == "waiting"


async def test_leave_from_one_of_two_joined_sockets_keeps_the_participant(store: RoomStore, log: EventLog) -> None:
    await create(store, log)
    await hello(store, P1)
    await join(store, P1)
    tab2 = person("p1", socket=2)
    await hello(store, tab2)
    await join(store, tab2)
    count = len(await log.events())
    await store.leave(tab2, ROOM, T0)
    assert len(await log.events()) == count
    await refused(ErrorCode.NOT_MEMBER, publish(store, tab2))
    await refused(ErrorCode.NOT_MEMBER, store.leave(tab2, ROOM, T0))
    assert participant(await room_state(store, log), P1)["status"] == "active"
    await publish(store, P1)
    await store.leave(P1, ROOM, T0)  # the last one: the participant leaves
    assert (await log.last())["event_type"] == "participant_left"


async def test_members_who_left_are_not_kept(backend: Backend, store: RoomStore, log: EventLog) -> None:
    """Issue 10 #8: 50 passes through one room leave one member record (the host)."""
    await create(store, log, max_players=2)
    for i in range(50):
        c = person(f"visitor{i}")
        await hello(store, c)
        await join(store, c, role="spectator" if i % 2 else "player")
        await store.leave(c, ROOM, T0)
    assert backend.member_records is not None
    assert await backend.member_records(ROOM) == 1
    again = person("visitor0", socket=2)
    await hello(store, again)
    result = await join(store, again, now=T0 + 5)  # a rejoin after leave is a new join
    assert participant(result, again)["joined_at"] == T0 + 5
    assert (await log.last())["event_type"] == "participant_joined"
    await store.disconnect(again, "disconnected", "close", T0 + 6)
    await backend.prune(T0 + 6 + PRUNE_MS)
    assert (await log.last())["payload"]["reason"] == "pruned"
    assert await backend.member_records(ROOM) == 1


# ---------------------------------------------------------------- leave


async def test_leave_makes_participant_left(store: RoomStore, log: EventLog) -> None:
    await create(store, log)
    await hello(store, P1)
    await join(store, P1)
    await store.leave(P1, ROOM, T0 + 3)
    event = await log.last()
    assert event["event_type"] == "participant_left"
    assert event["payload"] == {"device_id": P1.device_id, "role": "player", "reason": "leave"}
    assert event["from"] == P1.sender()
    state = await room_state(store, log)
    assert P1.device_id not in {p["device_id"] for p in state.participants}
    assert state.room["current_players"] == 1


async def test_leave_when_not_a_member(store: RoomStore, log: EventLog) -> None:
    await create(store, log)
    await hello(store, P1)
    await refused(ErrorCode.NOT_MEMBER, store.leave(P1, ROOM, T0))
    await join(store, P1)
    await store.leave(P1, ROOM, T0)
    count = len(await log.events())
    await refused(ErrorCode.NOT_MEMBER, store.leave(P1, ROOM, T0))
    assert len(await log.events()) == count
    await refused(ErrorCode.NOT_FOUND, store.leave(P1, "no-such-room", T0))


# ---------------------------------------------------------------- publish


async def test_publish_assigns_gap_free_seqs(store: RoomStore, log: EventLog) -> None:
    await create(store, log)
    await hello(store, P1, P2)
    await join(store, P1)
    seqs = [await publish(store, P1, "move", {"n": n}) for n in range(3)]
    await join(store, P2)
    seqs += [await publish(store, P2, "answer", {"a": "b"}), await publish(store, HOST, "tick")]
    assert seqs == [3, 4, 5, 7, 8]
    events = await log.events()
    assert [e["seq"] for e in events] == list(range(1, 9))
    assert [e["event_type"] for e in events[2:5]] == ["move"] * 3
    assert [e["payload"] for e in events[2:5]] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert events[6]["from"] == P2.sender()


async def test_publish_frame_is_tail_with_room_and_seq(store: RoomStore, log: EventLog) -> None:
    await create(store, log)
    tail = protocol.event_tail("chat", "say", {"text": "hi"}, HOST.sender(), T0 + 1)
    seq = await store.publish(HOST, ROOM, tail, T0 + 1)
    assert (await log.frames(ROOM))[-1] == protocol.event_frame(ROOM, seq, tail)


async def test_publish_needs_membership(store: RoomStore, log: EventLog) -> None:
    await create(store, log)
    await hello(store, P1)
    await refused(ErrorCode.NOT_MEMBER, publish(store, P1))
    await join(store, P1)
    await store.leave(P1, ROOM, T0)
    await refused(ErrorCode.NOT_MEMBER, publish(store, P1))
    await refused(ErrorCode.NOT_FOUND, publish(store, P1, room_id="no-such-room"))
    assert "move" not in await log.types()


# ---------------------------------------------------------------- idempotency keys


async def test_a_key_used_again_gets_the_first_seq_and_makes_no_event(store: RoomStore, log: EventLog) -> None:
    await create(store, log)
    await hello(store, P1)
    await join(store, P1)
    first = await publish(store, P1, "answer", {"a": 1}, key="k-1")
    # A resend (another payload, even) from another socket of the device, later: not applied.
    P1b = person("p1", socket=2)
    await hello(store, P1b)
    await join(store, P1b)
    assert await publish(store, P1b, "answer", {"a": 2}, now=T0 + 1000, key="k-1") == first
    assert await publish(store, P1, "answer", {"a": 3}, key="k-1") == first
    events = await log.events()
    assert [e["payload"] for e in events if e["event_type"] == "answer"] == [{"a": 1}]
    # Another key, or none, is a new event; the same key in another room too.
    assert await publish(store, P1, "answer", key="k-2") == events[-1]["seq"] + 1
    assert await publish(store, P1, "answer") == events[-1]["seq"] + 2
    await create(store, log, "room-2", host=P1, connect=False)
    assert await publish(store, P1, "answer", room_id="room-2", key="k-1") == 2


async def test_a_key_is_shared_by_the_room_not_by_the_sender(store: RoomStore, log: EventLog) -> None:
    await create(store, log)
    await hello(store, P1)
    await join(store, P1)
    first = await publish(store, HOST, "tick", key="shared")
    assert await publish(store, P1, "move", key="shared") == first
    assert "move" not in await log.types()


async def test_a_refused_publish_notes_no_key(store: RoomStore, log: EventLog) -> None:
    await create(store, log)
    await hello(store, P1)
    await refused(ErrorCode.NOT_MEMBER, publish(store, P1, key="k"))
    await join(store, P1)
    seq = await publish(store, P1, key="k")
    assert (await log.last())["seq"] == seq and (await log.last())["from"] == P1.sender()


async def test_a_key_is_forgotten_after_the_window(store: RoomStore, log: EventLog) -> None:
    await create(store, log)
    first = await publish(store, HOST, key="k")
    assert await publish(store, HOST, now=T0 + IDEM_WINDOW_MS - 1, key="k") == first
    again = await publish(store, HOST, now=T0 + IDEM_WINDOW_MS, key="k")
    assert again == first + 1
    # ... and the new use starts a new window.
    assert await publish(store, HOST, now=T0 + IDEM_WINDOW_MS + 10, key="k") == again


async def test_a_room_remembers_at_most_max_keys_the_newest(store: RoomStore, log: EventLog) -> None:
    await create(store, log)
    seqs = [await publish(store, HOST, key=f"k{i}") for i in range(IDEM_MAX_KEYS + 2)]
    # the newest IDEM_MAX_KEYS are remembered, the two oldest are not
    for i in range(2, IDEM_MAX_KEYS + 2):
        assert await publish(store, HOST, key=f"k{i}") == seqs[i]
    head = seqs[-1]
    assert await publish(store, HOST, key="k0") == head + 1


async def test_a_closed_room_forgets_its_keys(backend: Backend, store: RoomStore, log: EventLog) -> None:
    await create(store, log)
    await publish(store, HOST, key="k")
    await store.close_room(HOST, ROOM, T0)
    if isinstance(store, RedisStore):
        assert not await store.b.call(cmd("exists", keys.idempotency(ROOM), keys.idempotency_at(ROOM)))
    else:
        assert isinstance(store, MemoryStore) and ROOM not in store.idem


# ---------------------------------------------------------------- update_room


async def test_update_room_applies_merge_patch_and_makes_state_change(store: RoomStore, log: EventLog) -> None:
    await create(store, log, game_data={"round": 1, "scores": {"a": 1, "b": 2}})
    patch = {"round": 2, "scores": {"a": None, "c": 3}}
    seq = await store.update_room(HOST, ROOM, "in_progress", patch, T0 + 7)
    event = await log.last()
    assert event["seq"] == seq == 2
    assert event["event_type"] == "state_change"
    assert event["payload"] == {"status": "in_progress", "patch": patch}
    assert event["from"] == HOST.sender()
    state = await room_state(store, log)
    assert state.room["game_data"] == {"round": 2, "scores": {"b": 2, "c": 3}}
    assert state.room["status"] == "in_progress"


@pytest.mark.parametrize(
    ("status", "patch", "payload"),
    [("completed", None, {"status": "completed"}), (None, {"x": 1}, {"patch": {"x": 1}})],
)
async def test_update_room_payload_has_only_what_changed(
    store: RoomStore, log: EventLog, status: str | None, patch: dict[str, Any] | None, payload: dict[str, Any]
) -> None:
    await create(store, log)
    await store.update_room(HOST, ROOM, status, patch, T0)
    assert (await log.last())["payload"] == payload


async def test_update_room_is_host_only(store: RoomStore, log: EventLog) -> None:
    await create(store, log, game_data={"k": 1})
    await hello(store, P1, P2)
    await join(store, P1)
    before = await log.types()
    await refused(ErrorCode.FORBIDDEN, store.update_room(P1, ROOM, "in_progress", {"k": 2}, T0))
    await refused(ErrorCode.NOT_MEMBER, store.update_room(P2, ROOM, "in_progress", {"k": 2}, T0))
    await refused(ErrorCode.NOT_FOUND, store.update_room(HOST, "no-such-room", "active", None, T0))
    assert await log.types() == before
    state = await room_state(store, log)
    assert (state.room["status"], state.room["game_data"]) == ("waiting", {"k": 1})


async def test_game_data_size_limit_applies_after_a_patch(store: RoomStore, log: EventLog) -> None:
    await create(store, log, game_data={"keep": "me"})
    before = await log.types()
    too_big = {"blob": "x" * MAX_GAME_DATA_BYTES}
    await refused(ErrorCode.BAD_REQUEST, store.update_room(HOST, ROOM, "in_progress", too_big, T0))
    assert await log.types() == before
    state = await room_state(store, log)
    assert (state.room["status"], state.room["game_data"]) == ("waiting", {"keep": "me"})
    # Just under the limit is fine, and a patch that removes data always fits.
    fits = {"blob": "x" * (MAX_GAME_DATA_BYTES - 40)}
    await store.update_room(HOST, ROOM, None, fits, T0)
    await store.update_room(HOST, ROOM, None, {"blob": None}, T0)
    assert (await room_state(store, log)).room["game_data"] == {"keep": "me"}


async def test_update_room_checks_room_and_caller_before_size(store: RoomStore, log: EventLog) -> None:
    await create(store, log)
    await hello(store, P1, P2)
    await join(store, P1)
    too_big = {"blob": "x" * MAX_GAME_DATA_BYTES}
    await refused(ErrorCode.FORBIDDEN, store.update_room(P1, ROOM, None, too_big, T0))
    await refused(ErrorCode.NOT_MEMBER, store.update_room(P2, ROOM, None, too_big, T0))
    await refused(ErrorCode.NOT_FOUND, store.update_room(HOST, "no-such-room", None, too_big, T0))
    await store.close_room(HOST, ROOM, T0)
    await refused(ErrorCode.ROOM_CLOSED, store.update_room(HOST, ROOM, None, too_big, T0))


# ---------------------------------------------------------------- close_room


async def test_close_room_is_the_last_event(store: RoomStore, log: EventLog) -> None:
    await create(store, log)
    await hello(store, P1, SPEC)
    await join(store, P1)
    await join(store, SPEC, role="spectator")
    seq = await store.close_room(HOST, ROOM, T0 + 50)
    event = await log.last()
    assert (event["seq"], event["event_type"], event["payload"], event["from"]) == (
        seq, "room_closed", None, HOST.sender()
    )
    await refused(ErrorCode.ROOM_CLOSED, publish(store, HOST))
    await refused(ErrorCode.ROOM_CLOSED, publish(store, P1))
    await refused(ErrorCode.ROOM_CLOSED, store.update_room(HOST, ROOM, "active", None, T0))
    await refused(ErrorCode.ROOM_CLOSED, store.close_room(HOST, ROOM, T0))
    await store.disconnect(P1, "disconnected", "close", T0 + 60)
    assert (await log.last())["seq"] == seq  # nothing follows room_closed


async def test_close_room_removes_members(store: RoomStore, log: EventLog) -> None:
    await create(store, log)
    await hello(store, P1)
    await join(store, P1)
    await store.close_room(HOST, ROOM, T0)
    await refused(ErrorCode.NOT_MEMBER, store.leave(P1, ROOM, T0))
    assert (await hello(store, person("p1", socket=2))).rooms == []
    assert (await hello(store, person("host", socket=2))).rooms == []


async def test_close_room_is_host_only(store: RoomStore, log: EventLog) -> None:
    await create(store, log)
    await hello(store, P1, P2)
    await join(store, P1)
    await refused(ErrorCode.FORBIDDEN, store.close_room(P1, ROOM, T0))
    await refused(ErrorCode.NOT_MEMBER, store.close_room(P2, ROOM, T0))
    await refused(ErrorCode.NOT_FOUND, store.close_room(HOST, "no-such-room", T0))
    assert "room_closed" not in await log.types()
    await publish(store, P1)


# ---------------------------------------------------------------- list_rooms


async def test_list_rooms(store: RoomStore, log: EventLog) -> None:
    await create(store, log, "r-old", game_type="quiz", now=T0)
    await create(store, log, "r-secret", game_type="quiz", password_hash="scrypt$x", now=T0 + 1)
    await create(store, log, "r-puzzle", game_type="puzzle", now=T0 + 2)
    await create(store, log, "r-closed", game_type="quiz", now=T0 + 3)
    await create(store, log, "r-new", game_type="quiz", now=T0 + 4)
    await store.close_room(HOST, "r-closed", T0 + 5)
    await store.update_room(HOST, "r-new", "in_progress", None, T0 + 6)

    def ids(rooms: list[dict[str, Any]]) -> list[str]:
        return [r["room_id"] for r in rooms]

    listed = await list_page(store, None, None, 50)
    assert ids(listed) == ["r-new", "r-puzzle", "r-old"]  # newest first; no password or closed rooms
    for room in listed:
        assert set(room) == ROOM_KEYS
    assert "scrypt$x" not in orjson.dumps(listed).decode()
    assert ids(await list_page(store, "quiz", None, 50)) == ["r-new", "r-old"]
    assert ids(await list_page(store, None, "waiting", 50)) == ["r-puzzle", "r-old"]
    assert ids(await list_page(store, None, "in_progress", 50)) == ["r-new"]
    assert ids(await list_page(store, None, "closed", 50)) == ["r-closed"]
    assert ids(await list_page(store, "puzzle", "closed", 50)) == []
    assert ids(await list_page(store, "chess", None, 50)) == []
    assert ids(await list_page(store, None, None, 2)) == ["r-new", "r-puzzle"]
    assert ids(await list_page(store, None, None, 1)) == ["r-new"]


async def test_list_rooms_pages_through_every_room_once(store: RoomStore, log: EventLog) -> None:
    """Issue 10 #8: pages of `limit`, each after the cursor of the one before; rooms created in
    the same ms are ordered by id; a room that changes status moves to its new status."""
    for i in range(23):
        await create(store, log, f"r-{i:02d}", game_type="quiz" if i % 3 else "puzzle", now=T0 + i // 2)
    await create(store, log, "r-secret", password_hash="scrypt$x", now=T0 + 30)
    expected = sorted(((T0 + i // 2, f"r-{i:02d}") for i in range(23)), reverse=True)

    async def all_pages(game_type: str | None, status: str | None, limit: int) -> list[str]:
        out: list[str] = []
        after = None
        for _ in range(100):
            page = await store.list_rooms(game_type, status, limit, after)
            assert len(page.rooms) <= limit
            out += [r["room_id"] for r in page.rooms]
            if page.next_after is None:
                return out
            assert len(page.rooms) == limit
            after = page.next_after
        raise AssertionError("no last page")

    assert await all_pages(None, None, 5) == [r for _, r in expected]
    assert await all_pages(None, None, 23) == [r for _, r in expected]
    assert await all_pages("puzzle", "waiting", 2) == [r for _, r in expected if int(r[2:]) % 3 == 0]
    await store.update_room(HOST, "r-04", "in_progress", None, T0 + 40)
    await store.close_room(HOST, "r-05", T0 + 41)
    assert await all_pages(None, "in_progress", 3) == ["r-04"]
    assert await all_pages("quiz", "closed", 3) == ["r-05"]
    assert await all_pages(None, "waiting", 4) == [r for _, r in expected if r not in ("r-04", "r-05")]
    assert await all_pages(None, None, 4) == [r for _, r in expected if r != "r-05"]


async def test_redis_rooms_from_before_the_status_indexes_are_listed(redis_server: RedisServer) -> None:
    """An upgrade: rooms made before list_rooms read indexes (only in `ws:rooms`) are indexed
    once, by the first list_rooms of the cluster."""
    client = make_client(redis_server.url)
    await client.flushall()
    try:
        batcher = Batcher(client)
        store = RedisStore(batcher, history=HISTORY)
        await batcher.load_scripts()
        for i in range(3):
            await store.connect(HOST, ConnectionInfo(), T0)
            await store.create_room(HOST, NewRoom(f"old-{i}", "quiz", 4, {}, None), T0 + i)
        await store.update_room(HOST, "old-1", "in_progress", None, T0 + 5)
        index_keys = [k async for k in client.scan_iter(match="ws:rooms:*")]
        await client.delete(*index_keys)  # as before the upgrade: only ws:rooms
        upgraded = RedisStore(batcher, history=HISTORY)
        page = await upgraded.list_rooms(None, None, 10)
        assert [r["room_id"] for r in page.rooms] == ["old-2", "old-1", "old-0"]
        assert [r["room_id"] for r in (await upgraded.list_rooms("quiz", "in_progress", 10)).rooms] == ["old-1"]
    finally:
        await client.aclose()


async def test_closing_a_room_keeps_its_place_in_the_list(store: RoomStore, log: EventLog) -> None:
    await create(store, log, "r-a", now=T0)
    await create(store, log, "r-b", now=T0 + 1)
    await store.close_room(HOST, "r-b", T0 + 2)
    await store.close_room(HOST, "r-a", T0 + 3)
    listed = await list_page(store, None, "closed", 50)
    assert [r["room_id"] for r in listed] == ["r-b", "r-a"]  # newest created first, not last closed


async def test_list_rooms_reports_current_players(store: RoomStore, log: EventLog) -> None:
    await create(store, log, max_players=5)
    await hello(store, P1, SPEC)
    await join(store, P1)
    await join(store, SPEC, role="spectator")
    [room] = await list_page(store, None, None, 50)
    assert (room["current_players"], room["max_players"]) == (2, 5)
    assert room["seq"] == 3


# ---------------------------------------------------------------- replay (join with since)


async def _room_with_events(store: RoomStore, log: EventLog, count: int) -> JoinResult:
    """A room with the host, P1 (joined) and client events up to seq `count`."""
    created = await create(store, log)
    await hello(store, P1)
    await join(store, P1)
    while (await log.last())["seq"] < count:
        await publish(store, HOST)
    return created


async def test_replay_returns_exactly_the_missed_frames(store: RoomStore, log: EventLog) -> None:
    created = await _room_with_events(store, log, 6)
    await store.disconnect(P1, "disconnected", "close", T0)  # seq 7
    await publish(store, HOST, "after", {"n": 8})  # seq 8
    back = person("p1", socket=2)
    await hello(store, back)
    result = await join(store, back, since=5, epoch=created.epoch)
    assert result.seq == 8
    assert result.recovered is True
    frames = await log.frames(ROOM)
    replay = await replayed(store, result)
    assert replay == frames[5:8]  # seqs 6, 7, 8
    assert [protocol.event_seq_of(f) for f in replay] == [6, 7, 8]
    assert (await log.last())["event_type"] == "participant_reconnected"  # seq 9: live, not replayed


async def test_replay_to_a_new_joiner(store: RoomStore, log: EventLog) -> None:
    created = await _room_with_events(store, log, 4)
    await hello(store, P2)
    result = await join(store, P2, since=0, epoch=created.epoch)
    assert (result.recovered, result.seq) == (True, 4)
    assert await replayed(store, result) == (await log.frames(ROOM))[:4]


async def test_since_equal_to_head_is_recovered_with_nothing(store: RoomStore, log: EventLog) -> None:
    created = await _room_with_events(store, log, 5)
    await hello(store, P2)
    result = await join(store, P2, since=5, epoch=created.epoch)
    assert (result.recovered, await replayed(store, result), result.seq) == (True, [], 5)


async def test_since_without_epoch_is_replayed(store: RoomStore, log: EventLog) -> None:
    await _room_with_events(store, log, 5)
    await hello(store, P2)
    result = await join(store, P2, since=3)
    assert result.recovered is True
    assert [protocol.event_seq_of(f) for f in await replayed(store, result)] == [4, 5]


async def test_without_since_nothing_is_recovered(store: RoomStore, log: EventLog) -> None:
    await _room_with_events(store, log, 5)
    await hello(store, P2)
    result = await join(store, P2)
    assert (result.recovered, await replayed(store, result)) == (False, [])


@pytest.mark.parametrize(
    ("since", "recovered"),
    [
        (0, False),
        (5, False),
        (24 - HISTORY - 1, False),  # one event more than history keeps
        (24 - HISTORY, True),  # exactly what history keeps
        (20, True),
    ],
)
async def test_since_older_than_history_is_not_recovered(
    backend: Backend, store: RoomStore, log: EventLog, since: int, recovered: bool
) -> None:
    created = await _room_with_events(store, log, 24)
    await hello(store, P2)
    result = await join(store, P2, since=since, epoch=created.epoch)
    replay = await replayed(store, result)
    frames = await log.frames(ROOM)
    if result.recovered:  # never silently incomplete: everything after `since`, in order
        assert replay == frames[since:24]
    elif since == 0:  # since 0: the whole kept history, though older events are gone
        assert replay and replay == frames[24 - len(replay):24]
        assert len(replay) >= HISTORY
    else:
        assert replay == []
    if backend.exact_history or recovered:
        assert result.recovered is recovered


async def test_since_zero_replays_the_kept_history_of_a_longer_room(
    backend: Backend, store: RoomStore, log: EventLog
) -> None:
    """Issue 10 #7: `since: 0` on a room with more events than are kept replays what is kept
    (in order, up to the head, not recovered), rather than nothing."""
    created = await _room_with_events(store, log, 3 * HISTORY)
    await hello(store, P2)
    result = await join(store, P2, since=0, epoch=created.epoch)
    assert result.seq == 3 * HISTORY
    assert result.recovered is False  # seq 1 is gone
    replay = await replayed(store, result)
    seqs = [protocol.event_seq_of(f) for f in replay]
    assert seqs == list(range(seqs[0], 3 * HISTORY + 1)) and seqs[0] > 1
    assert len(replay) >= HISTORY
    assert replay == (await log.frames(ROOM))[seqs[0] - 1 : 3 * HISTORY]


@pytest.mark.parametrize("since", [3, 5])
async def test_wrong_epoch_is_not_recovered(store: RoomStore, log: EventLog, since: int) -> None:
    created = await _room_with_events(store, log, 5)
    await hello(store, P2)
    result = await join(store, P2, since=since, epoch=created.epoch + "-old")
    assert (result.recovered, await replayed(store, result)) == (False, [])
    assert result.epoch == created.epoch


async def test_since_beyond_head_is_not_recovered(store: RoomStore, log: EventLog) -> None:
    created = await _room_with_events(store, log, 5)
    await hello(store, P2)
    result = await join(store, P2, since=6, epoch=created.epoch)
    assert (result.recovered, await replayed(store, result), result.seq) == (False, [], 5)


# ---------------------------------------------------------------- connect


async def test_reconnect_count_counts_earlier_connections(store: RoomStore, log: EventLog) -> None:
    counts = []
    for n in range(1, 5):
        sock = person("p1", socket=n)
        counts.append((await store.connect(sock, ConnectionInfo(), T0 + n)).reconnect_count)
        if n % 2:
            await store.disconnect(sock, "disconnected", "close", T0 + n)
    assert counts == [0, 1, 2, 3]
    assert (await store.connect(P2, ConnectionInfo(), T0)).reconnect_count == 0


async def test_connect_lists_rooms_the_device_is_still_in(store: RoomStore, log: EventLog) -> None:
    await create(store, log, "room-a")
    await create(store, log, "room-b", host=P2)
    await create(store, log, "room-c", host=P3)
    await hello(store, P1)
    await join(store, P1, "room-b", "spectator")
    await join(store, P1, "room-c")
    await store.leave(P1, "room-c", T0)
    await create(store, log, "room-d", host=P1, connect=False)
    await store.disconnect(P1, "disconnected", "close", T0 + 1)
    result = await hello(store, person("p1", socket=2), now=T0 + 2)
    assert result.reconnect_count == 1
    assert sorted(result.rooms, key=lambda r: r.room_id) == [
        DeviceRoom("room-b", "spectator", (await log.last("room-b"))["seq"]),
        DeviceRoom("room-d", "host", (await log.last("room-d"))["seq"]),
    ]
    assert DeviceRoom("room-b", "spectator", 3).wire() == {"room_id": "room-b", "role": "spectator", "seq": 3}


# ---------------------------------------------------------------- upkeep: pruning and expiry


async def test_disconnected_participant_is_pruned(backend: Backend, store: RoomStore, log: EventLog) -> None:
    await create(store, log)
    await hello(store, P1, P2)
    await join(store, P1, role="spectator")
    await join(store, P2)
    await store.disconnect(P1, "disconnected", "close", T0 + 1000)
    await backend.prune(T0 + 1000 + PRUNE_MS - 1)
    assert (await log.last())["event_type"] == "participant_disconnected"
    await backend.prune(T0 + 1000 + PRUNE_MS)
    event = await log.last()
    assert event["event_type"] == "participant_left"
    assert event["payload"] == {"device_id": P1.device_id, "role": "spectator", "reason": "pruned"}
    assert event["from"] is None
    assert event["ts"] == T0 + 1000 + PRUNE_MS
    count = len(await log.events())
    await backend.prune(T0 + 10 * PRUNE_MS)  # active participants are never pruned; nothing twice
    assert len(await log.events()) == count
    back = person("p1", socket=2)
    assert (await hello(store, back, now=T0 + 10 * PRUNE_MS)).rooms == []
    assert (await join(store, back)).role == "player"
    assert (await log.last())["event_type"] == "participant_joined"


async def test_reconnected_participant_is_not_pruned(backend: Backend, store: RoomStore, log: EventLog) -> None:
    await create(store, log)
    await hello(store, P1)
    await join(store, P1)
    await store.disconnect(P1, "disconnected", "close", T0)
    back = person("p1", socket=2)
    await hello(store, back)
    await join(store, back, now=T0 + 1)
    await backend.prune(T0 + 2 * PRUNE_MS)
    assert (await log.last())["event_type"] == "participant_reconnected"


async def test_closed_room_is_removed_after_room_ttl(backend: Backend, store: RoomStore, log: EventLog) -> None:
    await create(store, log)
    await hello(store, P1)
    await store.close_room(HOST, ROOM, T0 + 10)
    await backend.expire(T0 + 10 + ROOM_TTL_MS - 1)
    await refused(ErrorCode.ROOM_CLOSED, join(store, P1))
    assert [r["room_id"] for r in await list_page(store, None, "closed", 50)] == [ROOM]
    await backend.expire(T0 + 10 + ROOM_TTL_MS)
    await refused(ErrorCode.NOT_FOUND, join(store, P1))
    assert await list_page(store, None, "closed", 50) == []


async def test_open_room_does_not_expire(backend: Backend, store: RoomStore, log: EventLog) -> None:
    await create(store, log)
    await backend.expire(T0 + 100 * ROOM_TTL_MS)
    assert [r["room_id"] for r in await list_page(store, None, None, 50)] == [ROOM]


async def test_device_records_expire(backend: Backend, store: RoomStore, log: EventLog) -> None:
    await hello(store, P1, now=T0)
    await store.disconnect(P1, "disconnected", "close", T0)
    await backend.expire(T0 + CONNECTION_TTL_MS - 1)
    second = person("p1", socket=2)
    assert (await hello(store, second, now=T0 + CONNECTION_TTL_MS - 1)).reconnect_count == 1
    await store.disconnect(second, "disconnected", "close", T0 + CONNECTION_TTL_MS)
    await backend.expire(T0 + 2 * CONNECTION_TTL_MS)
    assert (await hello(store, person("p1", socket=3), now=T0 + 2 * CONNECTION_TTL_MS)).reconnect_count == 0


async def test_device_with_an_open_socket_does_not_expire(backend: Backend, store: RoomStore, log: EventLog) -> None:
    await hello(store, P1, now=T0)
    await backend.expire(T0 + 100 * CONNECTION_TTL_MS)
    assert (await hello(store, person("p1", socket=2))).reconnect_count == 1


async def test_device_still_in_a_room_keeps_its_record(backend: Backend, store: RoomStore, log: EventLog) -> None:
    """A disconnected participant not yet pruned can still resume: welcome lists its room."""
    await create(store, log)
    await hello(store, P1)
    await join(store, P1)
    await store.disconnect(P1, "disconnected", "close", T0)
    await backend.expire(T0 + CONNECTION_TTL_MS)  # CONNECTION_TTL_MS < PRUNE_MS
    result = await hello(store, person("p1", socket=2), now=T0 + CONNECTION_TTL_MS)
    assert [(r.room_id, r.role) for r in result.rooms] == [(ROOM, "player")]


# ---------------------------------------------------------------- device tokens, memory bounds


async def test_device_token_hash_is_set_once_then_only_compared_and_swapped(store: RoomStore, log: EventLog) -> None:
    day = 86_400_000
    assert await store.device_token_hash("dev-t") is None
    assert await store.set_device_token_hash("dev-t", "h1", None, day)
    assert not await store.set_device_token_hash("dev-t", "h2", None, day)  # a second first issue loses
    assert not await store.set_device_token_hash("dev-t", "h2", "wrong", day)
    assert await store.device_token_hash("dev-t") == "h1"
    assert await store.set_device_token_hash("dev-t", "h2", "h1", day)  # rotation
    assert await store.device_token_hash("dev-t") == "h2"
    await store.touch_device_token("dev-t", day)
    assert await store.set_device_token_hash("dev-t", None, "h2", day)  # taken back
    assert await store.device_token_hash("dev-t") is None
    assert await store.device_token_hash("dev-other") is None


async def test_kept_history_is_bounded_in_bytes_and_keeps_the_newest(store: RoomStore, log: EventLog) -> None:
    await create(store, log)
    big = "x" * 40_000  # four of these pass the default ROOM_HISTORY_MAX_BYTES (128 KiB)
    seqs = [await publish(store, HOST, "blob", {"b": big}) for _ in range(6)]
    kept = await store.read_since(ROOM, 0)
    assert [s for s, _ in kept] == seqs[-len(kept):] and 1 <= len(kept) <= 3
    assert sum(len(f) for _, f in kept) <= 131_072
    # A client that missed only the kept events is recovered; one further back is not.
    await hello(store, P1)
    assert (await join(store, P1, since=kept[0][0] - 1)).recovered
    await store.leave(P1, ROOM, T0)
    assert not (await join(store, P1, since=0)).recovered
    # A frame alone over the bound is still kept: the newest event always is.
    await store.publish(HOST, ROOM, protocol.event_tail("blob", None, {"b": "y" * 140_000}, HOST.sender(), T0), T0)
    assert len(await store.read_since(ROOM, 0)) == 1


async def test_rooms_count_against_their_owners_while_they_exist(store: RoomStore, log: EventLog) -> None:
    owner, other = RoomOwner("address:a", 2, "address"), RoomOwner("address:b", 2, "address")
    await hello(store, HOST, P1)
    for room_id in ("r-a1", "r-a2"):
        await store.create_room(HOST, NewRoom(room_id, "t", 4, {}, None, owners=(owner,)), T0)
    with pytest.raises(GatewayError) as info:
        await store.create_room(HOST, NewRoom("r-a3", "t", 4, {}, None, owners=(owner,)), T0)
    assert info.value.code is ErrorCode.FORBIDDEN and "address" in info.value.message
    await store.create_room(P1, NewRoom("r-b1", "t", 4, {}, None, owners=(other,)), T0)  # another owner
    await store.close_room(HOST, "r-a1", T0)  # closed but kept: still counts
    await refused(ErrorCode.FORBIDDEN, store.create_room(HOST, NewRoom("r-a3", "t", 4, {}, None, owners=(owner,)), T0))


# ---------------------------------------------------------------- the server API (a service)

SVC = Service("quizmaster")


async def service_room(store: RoomStore, log: EventLog, room_id: str = ROOM, max_players: int = 2,
                       now: int = T0) -> JoinResult:
    await log.watch(room_id)
    return await store.create_service_room(SVC, NewRoom(room_id, "quiz", max_players, {"round": 0}, None), now)


async def test_a_service_room_has_no_member_no_host_and_no_event(store: RoomStore, log: EventLog) -> None:
    result = await service_room(store, log)
    assert result.room == {
        "room_id": ROOM, "game_type": "quiz", "status": "waiting", "max_players": 2, "current_players": 0,
        "game_data": {"round": 0}, "created_at": T0, "created_by": "service:quizmaster", "seq": 0,
    }
    assert result.participants == [] and result.seq == 0 and result.epoch
    assert await log.events() == []
    await refused(ErrorCode.CONFLICT, service_room(store, log))
    await hello(store, HOST)
    await refused(ErrorCode.CONFLICT, store.create_room(HOST, NewRoom(ROOM, "x", 2, {}, None), T0))
    assert await store.room_info(ROOM) == (result.room, [])
    await refused(ErrorCode.NOT_FOUND, store.room_info("nope"))


async def test_the_service_holds_no_seat(store: RoomStore, log: EventLog) -> None:
    await service_room(store, log, max_players=2)
    await hello(store, P1, P2, P3, SPEC)
    await join(store, P1)
    await join(store, P2)
    await refused(ErrorCode.ROOM_FULL, join(store, P3))
    await join(store, SPEC, role="spectator")
    room, participants = await store.room_info(ROOM)
    assert room["current_players"] == 2 and room["seq"] == 3
    assert [(p["device_id"], p["role"]) for p in participants] == [
        (P1.device_id, "player"), (P2.device_id, "player"), (SPEC.device_id, "spectator")]


async def test_service_publish_update_close_come_from_the_service(store: RoomStore, log: EventLog) -> None:
    await service_room(store, log)
    await hello(store, P1)
    await join(store, P1)
    tail = protocol.event_tail("question", "ask", {"q": 1}, SVC.sender(), T0 + 1)
    assert await store.service_publish(SVC, ROOM, tail, T0 + 1) == 2
    ev = await log.last()
    assert (ev["event_type"], ev["action"], ev["payload"]) == ("question", "ask", {"q": 1})
    assert ev["from"] == {"service": "quizmaster", "socket_id": None, "device_id": None, "user_id": None}
    # A player cannot change a service room (it has no host), the service can.
    await refused(ErrorCode.FORBIDDEN, store.update_room(P1, ROOM, "in_progress", None, T0 + 2))
    assert await store.service_update(SVC, ROOM, "in_progress", {"round": 1}, T0 + 2) == 3
    ev = await log.last()
    assert ev["event_type"] == "state_change" and ev["payload"] == {"status": "in_progress", "patch": {"round": 1}}
    assert ev["from"] == SVC.sender()
    room, _ = await store.room_info(ROOM)
    assert (room["status"], room["game_data"]) == ("in_progress", {"round": 1})
    await refused(ErrorCode.BAD_REQUEST, store.service_update(SVC, ROOM, None, {"x": "y" * MAX_GAME_DATA_BYTES}, T0))
    assert await store.service_close(SVC, ROOM, T0 + 3) == 4
    assert (await log.last())["event_type"] == "room_closed"
    room, participants = await store.room_info(ROOM)
    assert room["status"] == "closed" and participants == []
    await refused(ErrorCode.ROOM_CLOSED, store.service_publish(SVC, ROOM, tail, T0 + 4))
    await refused(ErrorCode.ROOM_CLOSED, store.service_close(SVC, ROOM, T0 + 4))
    await refused(ErrorCode.NOT_FOUND, store.service_publish(SVC, "nope", tail, T0 + 4))
    assert await store.device_room_count(P1.device_id) == 0


async def test_kick_removes_every_socket_and_never_hands_a_service_room_a_host(
        store: RoomStore, log: EventLog) -> None:
    await service_room(store, log, max_players=3)
    p1b = person("p1", socket=2)
    await hello(store, P1, p1b, P2)
    await join(store, P1)
    await join(store, p1b)
    await join(store, P2)
    seq = await store.kick(SVC, ROOM, P1.device_id, T0 + 1)
    ev = await log.last()
    assert ev["seq"] == seq and ev["event_type"] == "participant_left"
    assert ev["payload"] == {"device_id": P1.device_id, "role": "player", "reason": "kicked"}
    assert ev["from"] == SVC.sender()
    for sock in (P1, p1b):  # both of its sockets are out
        await refused(ErrorCode.NOT_MEMBER, publish(store, sock))
    await refused(ErrorCode.NOT_MEMBER, store.kick(SVC, ROOM, P1.device_id, T0 + 2))
    assert await store.device_room_count(P1.device_id) == 0
    await store.kick(SVC, ROOM, P2.device_id, T0 + 2)
    assert "host_changed" not in await log.types()
    room, participants = await store.room_info(ROOM)
    assert participants == [] and room["current_players"] == 0
    await join(store, P1)  # a kicked device may come back (the backend decides: disconnect, webhooks)


async def test_kicking_a_player_rooms_host_hands_the_room_over(store: RoomStore, log: EventLog) -> None:
    await create(store, log)
    await hello(store, P1)
    await join(store, P1)
    seq = await store.kick(SVC, ROOM, HOST.device_id, T0 + 1)
    events = await log.events(after=seq - 1)
    assert [(e["event_type"], e["payload"]["device_id"]) for e in events] == [
        ("participant_left", HOST.device_id), ("host_changed", P1.device_id)]
    assert events[0]["payload"]["reason"] == "kicked"


# ---------------------------------------------------------------- admission (issue 14): budgets taken in the step
# The device budgets that `connect` and `admit_join` take in the same step as their own work:
# a short budget refuses and changes nothing.

ADMIT_INFO = ConnectionInfo(ip="127.0.0.1")


def device_budget(device_id: str, what: str, rate: float = 1.0, burst: int = 2) -> Budget:
    return Budget(keys.device_limit(device_id, what), rate, burst)


async def test_connect_takes_its_budget_and_refuses_without_recording(store: RoomStore, log: EventLog) -> None:
    a, b, c = person("d", 1), person("d", 2), person("d", 3)
    first = await store.connect(a, ADMIT_INFO, T0, device_budget(a.device_id, "connect"))
    second = await store.connect(b, ADMIT_INFO, T0, device_budget(a.device_id, "connect"))
    assert (first.wait_ms, first.reconnect_count, first.open_sockets) == (0, 0, 1)
    assert (second.wait_ms, second.reconnect_count, second.open_sockets) == (0, 1, 2)
    # The burst (2) is spent: the third is refused, with the wait until a token is back (1/s).
    third = await store.connect(c, ADMIT_INFO, T0, device_budget(a.device_id, "connect"))
    assert third.wait_ms == 1000
    # Nothing was recorded for it: the next connect counts two earlier ones and three sockets.
    later = await store.connect(c, ADMIT_INFO, T0 + 1000, device_budget(a.device_id, "connect"))
    assert (later.wait_ms, later.reconnect_count, later.open_sockets) == (0, 2, 3)
    # Without a budget nothing is taken (the gateway took it on its own beforehand).
    free = await store.connect(person("d", 4), ADMIT_INFO, T0 + 1000)
    assert (free.wait_ms, free.reconnect_count) == (0, 3)


async def test_connect_budgets_are_per_device(store: RoomStore, log: EventLog) -> None:
    for n in (1, 2):
        assert (await store.connect(person("x", n), ADMIT_INFO, T0, device_budget("device-x", "connect", burst=2))).wait_ms == 0
    assert (await store.connect(person("x", 3), ADMIT_INFO, T0, device_budget("device-x", "connect", burst=2))).wait_ms > 0
    assert (await store.connect(person("y", 1), ADMIT_INFO, T0, device_budget("device-y", "connect", burst=2))).wait_ms == 0


async def test_connect_lists_the_rooms_the_device_is_in(store: RoomStore, log: EventLog) -> None:
    await create(store, log)
    await hello(store, P1)
    await join(store, P1)
    again = await store.connect(person("p1", 2), ADMIT_INFO, T0, device_budget(P1.device_id, "connect"))
    assert [(r.room_id, r.role) for r in again.rooms] == [(ROOM, "player")]


async def test_admit_join_takes_the_budget_counts_rooms_and_reads_the_password(
    store: RoomStore, log: EventLog
) -> None:
    await create(store, log, password_hash="scrypt$hash")
    await hello(store, P1)
    check = await store.admit_join(P1.device_id, ROOM, device_budget(P1.device_id, "join", burst=2), True, T0)
    assert (check.wait_ms, check.rooms, check.password_hash) == (0, 0, "scrypt$hash")
    # The host is in the room: it does not count against the host's cap when rejoining it.
    host = await store.admit_join(HOST.device_id, ROOM, device_budget(HOST.device_id, "join"), True, T0)
    assert (host.wait_ms, host.rooms) == (0, 0)
    other = await store.admit_join(HOST.device_id, "room-2", device_budget(HOST.device_id, "join"), True, T0)
    assert (other.rooms, other.password_hash) == (1, None)
    # Spent: refused with the wait, nothing else looked at.
    short = await store.admit_join(HOST.device_id, ROOM, device_budget(HOST.device_id, "join"), True, T0)
    assert (short.wait_ms, short.rooms, short.password_hash) == (1000, -1, None)
    # Not counting (a rejoin from the same socket): rooms -1.
    assert (await store.admit_join(P1.device_id, ROOM, device_budget(P1.device_id, "join"), False, T0)).rooms == -1


async def test_a_device_budget_is_one_bucket_for_connect_and_join(store: RoomStore, log: EventLog) -> None:
    """connect and join budgets of one device are separate buckets (keys.device_limit)."""
    for n in (1, 2):
        assert (await store.connect(person("z", n), ADMIT_INFO, T0, device_budget("device-z", "connect", burst=2))).wait_ms == 0
    assert (await store.admit_join("device-z", ROOM, device_budget("device-z", "join", burst=2), True, T0)).wait_ms == 0
