"""Backends: the embedded in-memory one, or Redis for a cluster. Each is an async
context manager that builds the store, bus and presence for the Node and runs the
background tasks that keep them healthy (conventions 11)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import asyncpg

from roomcast.bus.memory import MemoryBus
from roomcast.bus.redis import RedisBus
from roomcast.device_tokens import PostgresTokenHistory
from roomcast.errors import GatewayError
from roomcast.history.base import StoredRoom
from roomcast.history.flusher import Flusher, FlusherMetrics
from roomcast.history.jobs import update_heartbeats
from roomcast.history.memory import MemoryHistorySource
from roomcast.history.postgres import PostgresWriter
from roomcast.history.read import HistoryReader, stored_room
from roomcast.housekeeping import cleanup_pass, migrate_when_reachable, show_room_counts, stop_tasks
from roomcast.limits.redis import RedisLimiter
from roomcast.metrics_util import RedirectsCollector
from roomcast.outage import OutageLog
from roomcast.presence.memory import MemoryPresence
from roomcast.presence.redis import RedisPresence
from roomcast.redis import keys
from roomcast.redis.batch import Batcher, cmd
from roomcast.redis.client import make_client
from roomcast.settings import Settings
from roomcast.store.memory import MemoryStore
from roomcast.store.redis import RedisStore

from .metrics import Metrics
from .node import Node, now_ms

log = logging.getLogger("roomcast.backend")
_CONSEQUENCE = "requests get `unavailable`, /readyz is false"


async def ensure_schema(settings: Settings) -> None:
    """Apply migrations (if AUTO_MIGRATE), retrying while Postgres is unreachable."""
    assert settings.database_url is not None
    if settings.auto_migrate:
        await migrate_when_reachable(settings.database_url)


class EmbeddedCleanup:
    """The embedded node's cleanup jobs (the coordinator's, from roomcast.housekeeping),
    every CLEANUP_INTERVAL; with history once its schema is ready (`pool` set)."""

    def __init__(self, settings: Settings, store: MemoryStore, metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.pool: asyncpg.Pool | None = None
        self.last = 0.0

    async def __call__(self, now: int) -> None:
        if time.monotonic() - self.last < self.settings.cleanup_interval_ms / 1000:
            return
        self.last = time.monotonic()
        try:
            await cleanup_pass(self.settings, now, self.store.close_abandoned, self.pool,
                               lambda action, n: self.metrics.cleanup.labels(action).inc(n))
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            log.warning("cleanup jobs: postgres unavailable (%s)", exc)


class EmbeddedHistory:
    """Embedded gateway with DATABASE_URL: the same flusher, writer and jobs as the
    coordinator, fed from the memory store's outbox, in this process."""

    def __init__(self, settings: Settings, store: MemoryStore, node: Node, metrics: Metrics,
                 cleanup: EmbeddedCleanup) -> None:
        assert settings.database_url is not None
        self.settings = settings
        self.store = store
        self.node = node
        self.cleanup = cleanup
        self.flush_metrics = FlusherMetrics(metrics.registry)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        s = self.settings
        assert s.database_url is not None
        self.pool = await asyncpg.create_pool(s.database_url, min_size=0, max_size=4)
        self.node.history = HistoryReader(self.pool)
        if self.node.device_tokens is not None:
            self.node.device_tokens.history = PostgresTokenHistory(self.pool)
        self.source = MemoryHistorySource(self.store)
        self.flusher = Flusher(self.source, PostgresWriter(self.pool), self.flush_metrics,
                               batch_rows=s.history_batch_rows, interval=s.history_flush_ms / 1000)
        self._tasks.append(asyncio.get_running_loop().create_task(self._run()))
        self._tasks.append(asyncio.get_running_loop().create_task(self._jobs()))

    async def _run(self) -> None:
        try:
            await ensure_schema(self.settings)
        except Exception:
            log.critical("cannot migrate the history schema; history is NOT being written", exc_info=True)
            self.node.metrics.backend_up.set(0)
            raise
        self.cleanup.pool = self.pool
        await self.flusher.run()

    async def _jobs(self) -> None:
        """The requirements' "on heartbeat: UPDATE last_heartbeat", in one batch per interval."""
        while True:
            await asyncio.sleep(self.settings.heartbeat_flush_ms / 1000)
            try:
                presence = self.node.presence
                if isinstance(presence, MemoryPresence):
                    await update_heartbeats(self.pool, presence.snapshot())
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                log.warning("history jobs: postgres unavailable (%s)", exc)

    async def close(self) -> None:
        """Flush what is left (bounded in time), then stop."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                while await self.source.backlog():
                    await self.flusher.run_once()
        await stop_tasks(self._tasks)
        self.cleanup.pool = None
        await self.pool.close()


def memory_node(settings: Settings, metrics: Metrics) -> Node:
    bus = MemoryBus()
    store = MemoryStore(
        bus,
        history=settings.room_history,
        room_ttl_ms=settings.room_ttl_ms,
        connection_ttl_ms=settings.connection_ttl_ms,
        participant_prune_ms=settings.participant_prune_ms,
        max_game_data_bytes=settings.max_game_data_bytes,
        history_mode=settings.database_url is not None,
        max_participants=settings.max_participants_per_room,
        history_bytes=settings.room_history_bytes,
        history_bytes_total=settings.history_bytes_total,
        max_rooms=settings.max_rooms,
        idempotency_window_ms=settings.idempotency_window_ms,
        idempotency_max_keys=settings.idempotency_max_keys,
    )

    def room_counts() -> None:
        metrics.rooms_by_game_type_seen = show_room_counts(
            ((room.status, room.game_type) for room in store.rooms.values()), metrics.rooms, metrics.rooms_by_type,
            metrics.rooms_by_game_type_seen)

    metrics.before_scrape.append(room_counts)
    # One set of buckets: those the store takes in its steps (connect, admit_join) and the node's.
    node = Node(settings, store, bus, MemoryPresence(), metrics, store.limits)
    node.upkeep_hooks.append(EmbeddedCleanup(settings, store, metrics))
    return node


class RedisLink:
    """Cluster mode: Redis store, bus and presence, plus health, registration and
    recovery after an outage (resubscribe, refill gaps, re-register local sockets)."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        assert settings.redis_url is not None
        self.settings = settings
        self.metrics = metrics
        self.client = make_client(settings.redis_url)
        self.batcher = Batcher(self.client, window_ms=settings.redis_batch_window_ms)
        metrics.registry.register(RedirectsCollector(self.batcher.redirects.counts))
        self.store = RedisStore(
            self.batcher,
            history=settings.room_history,
            room_ttl_ms=settings.room_ttl_ms,
            connection_ttl_ms=settings.connection_ttl_ms,
            max_game_data_bytes=settings.max_game_data_bytes,
            history_mode=settings.database_url is not None,
            max_participants=settings.max_participants_per_room,
            history_bytes=settings.room_history_bytes,
            max_rooms=settings.max_rooms,
            idempotency_window_ms=settings.idempotency_window_ms,
            idempotency_max_keys=settings.idempotency_max_keys,
        )
        self.presence = RedisPresence(self.batcher)
        self.bus = RedisBus(
            settings.redis_pubsub_url or settings.redis_url,
            settings.node_id,
            lambda channel, data: self.batcher.call(cmd("spublish", channel, data)),
            probe_interval=settings.pubsub_probe_ms / 1000,
            probe_timeout=settings.pubsub_probe_timeout_ms / 1000,
        )
        self.node = Node(settings, self.store, self.bus, self.presence, metrics, RedisLimiter(self.batcher))
        self.node.backend_ok = False
        self.node.hub.gap_source = self.store.read_since
        self.bus.on_resubscribed = self.node.hub.repair
        self.bus.on_state = self._bus_state
        metrics.before_scrape.append(lambda: metrics.observe_shards(self.bus.shard_stats()))
        self.node.on_stall = self._stalled
        self.redis_ok = False
        self.bus_ok = False
        self.outage = OutageLog(log, "redis")
        self.registration = OutageLog(log, "redis shard of ws:nodes")
        self._shard_keys: tuple[object, dict[str, str]] = (None, {})
        self._shards_down: set[str] = set()
        self.was_up = False
        self.reregister_due = False  # set when Redis came back; cleared once sockets are back
        self.closing = False
        self.up = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def _stalled(self, seconds: float) -> None:
        """This process was frozen: if for long enough that the coordinator may have timed
        out our sockets (their presence went stale), put them back (participant_reconnected)."""
        if seconds * 2 >= self.settings.heartbeat_timeout_ms / 1000:
            self.reregister_due = True

    def _bus_state(self, up: bool) -> None:
        self.bus_ok = up
        if up:
            self.metrics.pubsub_reconnects.inc(0)
            if keys.CONTROL_ROOM not in self.bus.wanted and not self.closing:
                # The server API's kick/disconnect reach every replica on this channel.
                self._tasks.append(asyncio.get_running_loop().create_task(self._subscribe_control()))
        else:
            self.metrics.pubsub_reconnects.inc()
            if not self.closing:
                self.outage.failed(f"pub/sub: {self.bus.last_error}", _CONSEQUENCE)
        self._update()

    async def _subscribe_control(self) -> None:
        for attempt in range(1_000_000):  # until subscribed (or the link closes and cancels it)
            if keys.CONTROL_ROOM in self.bus.wanted:
                return
            try:
                await self.bus.subscribe(keys.CONTROL_ROOM)
                return
            except GatewayError:
                await asyncio.sleep(min(0.1 * 2 ** min(attempt, 5), 2.0))

    def _update(self) -> None:
        ok = self.redis_ok and self.bus_ok
        was = self.node.backend_ok
        self.node.backend_ok = ok
        self.metrics.backend_up.set(1 if ok else 0)
        if ok:
            self.up.set()
        else:
            self.up.clear()
        if self.closing:
            return
        if ok and not was:
            if self.was_up:
                self.reregister_due = True
            self.outage.recovered("re-registering local sockets" if self.was_up else "")
            self.was_up = True

    def _shard_checks(self) -> dict[str, asyncio.Future[object]]:
        """Redis Cluster: one read per shard (a key in a slot its primary serves, as the bus's
        slot map has it), queued now, by shard label (its first slot range, as the bus labels it)."""
        m = self.bus.map
        if not self.batcher.cluster or m is None or not m.cluster:
            return {}
        if self._shard_keys[0] is not m:
            self._shard_keys = (m, {f"{r[0][0]}-{r[0][1]}": f"ws:probe:{{{m.tag_in(addr, 'h')}}}"
                                    for addr, r in m.primaries().items()})
        return {label: self.batcher.call(cmd("exists", key)) for label, key in self._shard_keys[1].items()}

    async def _heartbeat(self) -> None:
        """Every tick: ping Redis, register this replica (with a TTL), flush presence.

        On a Redis Cluster each shard is also checked: the replica stays ready while any shard
        answers (requests on a dead shard's rooms get `unavailable`, the others' work), and
        reports each shard in /readyz and roomcast_redis_shard_up. Registration and the ping go
        to the shard of ws:nodes; its failing alone does not make the replica unready."""
        s = self.settings
        interval = min(1.0, s.node_ttl_ms / 3000)
        while True:
            checks: dict[str, asyncio.Future[object]] = {}
            error: object = None
            try:
                started = time.perf_counter()
                b = self.batcher
                b.call(cmd("set", keys.node(s.node_id), str(now_ms()), px=s.node_ttl_ms))
                b.call(cmd("zadd", keys.NODES, {s.node_id: now_ms()}))
                replicas = b.call(cmd("zcount", keys.NODES, now_ms() - s.node_ttl_ms, "+inf"))
                checks = self._shard_checks()
                await b.call(cmd("ping"))
                self.metrics.replicas.set(int(await replicas))
                self.metrics.redis_rtt.observe(time.perf_counter() - started)
                if not self.redis_ok:
                    await self.batcher.load_scripts()
                self.redis_ok = True
                self.registration.recovered()
            except Exception as exc:  # any failure means not ready (but see the shards); logged once
                self.redis_ok = False
                error = exc
            shards = dict(zip(checks, [not isinstance(r, BaseException) for r in
                                       await asyncio.gather(*checks.values(), return_exceptions=True)], strict=True))
            self._observe_shards(shards)
            if not self.redis_ok:
                if self.was_up and any(shards.values()):
                    # Only some shards are down (failing over): still ready for the others' rooms.
                    self.registration.failed(error, "this replica's registration and ping wait for its shard")
                    self.redis_ok = True
                else:
                    self.outage.failed(error, _CONSEQUENCE)
            self._update()
            if self.reregister_due and self.node.backend_ok:
                # Until every local socket and room is back in Redis; retried each tick.
                self.reregister_due = not await self.node.reregister()
            await asyncio.sleep(interval)

    def _observe_shards(self, shards: dict[str, bool]) -> None:
        for gone in set(self.node.redis_shards) - set(shards):  # slots resharded: no stale series
            with contextlib.suppress(KeyError):
                self.metrics.redis_shard_up.remove(gone)
        self.node.redis_shards = shards
        for label, up in shards.items():
            self.metrics.redis_shard_up.labels(label).set(1 if up else 0)
            if up and label in self._shards_down:
                self._shards_down.discard(label)
                log.info("redis shard %s answers again", label)
            elif not up and label not in self._shards_down:
                self._shards_down.add(label)
                log.warning("redis shard %s does not answer: its rooms get `unavailable` until it or its "
                            "replica is back; the other shards' rooms are served", label)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.pool: asyncpg.Pool | None = None
        if self.settings.database_url is not None:
            # Only for replaying old ranges; the coordinator writes history.
            pool = self.pool = await asyncpg.create_pool(self.settings.database_url, min_size=0, max_size=4)
            self.node.history = HistoryReader(pool)
            if self.node.device_tokens is not None:
                self.node.device_tokens.history = PostgresTokenHistory(pool)

            async def lookup(room_id: str) -> StoredRoom | None:
                return await stored_room(pool, room_id)

            self.store.stored_room = lookup
        self._tasks.append(loop.create_task(self.bus.run()))
        self._tasks.append(loop.create_task(self._heartbeat()))
        # Wait briefly for Redis so a healthy cluster is ready at once; if Redis is down
        # we start anyway, not ready, and recover when it comes back.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.up.wait(), 3.0)

    async def close(self) -> None:
        self.closing = True
        with contextlib.suppress(Exception):
            await self.presence.flush()
        with contextlib.suppress(Exception):
            await self.batcher.call(cmd("zrem", keys.NODES, self.settings.node_id))
            await self.batcher.call(cmd("delete", keys.node(self.settings.node_id)))
        await stop_tasks(self._tasks)
        await self.batcher.aclose()
        if self.pool is not None:
            await self.pool.close()


@contextlib.asynccontextmanager
async def open_node(settings: Settings, metrics: Metrics | None = None) -> AsyncIterator[Node]:
    """The Node for these settings, with its backend running."""
    metrics = metrics or Metrics(node_id=settings.node_id)
    if settings.redis_url is None:
        node = memory_node(settings, metrics)
        if settings.database_url is None:
            yield node
            return
        assert isinstance(node.store, MemoryStore)
        cleanup = next(h for h in node.upkeep_hooks if isinstance(h, EmbeddedCleanup))
        history = EmbeddedHistory(settings, node.store, node, metrics, cleanup)
        await history.start()
        try:
            yield node
        finally:
            await history.close()
        return
    link = RedisLink(settings, metrics)
    await link.start()
    try:
        yield link.node
    finally:
        await link.close()
