"""The coordinator service: one lease, and while holding it the reaper, the history
flusher and the cleanup jobs. Standbys keep trying for the lease."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import asyncpg
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from roomcast.errors import GatewayError
from roomcast.history.flusher import Flusher, FlusherMetrics
from roomcast.history.jobs import update_heartbeats
from roomcast.history.postgres import PostgresWriter
from roomcast.history.redis import RedisHistorySource
from roomcast.housekeeping import cleanup_pass, migrate_when_reachable, show_room_counts, stop_tasks
from roomcast.http_mini import serve_http
from roomcast.metrics_util import RedirectsCollector
from roomcast.outage import OutageLog
from roomcast.redis import keys
from roomcast.redis.batch import Batcher, cmd
from roomcast.redis.client import make_client
from roomcast.settings import Settings
from roomcast.store.redis import RedisStore

from .lease import Lease
from .reaper import Reaper

log = logging.getLogger("roomcast.coordinator")


class CoordinatorMetrics:
    def __init__(self, history: bool = False) -> None:
        r = self.registry = CollectorRegistry()
        self.leader = Gauge("roomcast_coordinator_leader", "1 while this coordinator holds the lease.", registry=r)
        self.replicas = Gauge("roomcast_cluster_replicas", "Gateway replicas registered and alive.", registry=r)
        self.timeouts = Counter("roomcast_reaper_timeouts", "Sockets marked timeout by the reaper.", registry=r)
        self.pruned = Counter("roomcast_reaper_pruned", "Disconnected participants pruned.", registry=r)
        self.runs = Counter("roomcast_reaper_runs", "Reaper passes completed.", registry=r)
        self.redis_up = Gauge("roomcast_backend_up", "1 while Redis is reachable.", registry=r)
        self.cleanup = Counter("roomcast_cleanup_actions", "What the cleanup jobs did, by action.", ["action"],
                               registry=r)
        self.rooms = Gauge("roomcast_rooms", "Rooms in the cluster by status (set by the active coordinator).",
                           ["status"], registry=r)
        self.rooms_by_type = Gauge(
            "roomcast_rooms_by_game_type", "Open rooms by game type (the 20 most common; the rest as 'other').",
            ["game_type"], registry=r)
        self.game_types_seen: set[str] = set()
        self.flush: FlusherMetrics | None = FlusherMetrics(r) if history else None


class Coordinator:
    def __init__(self, settings: Settings) -> None:
        assert settings.redis_url is not None
        self.settings = settings
        self.metrics = CoordinatorMetrics(history=settings.database_url is not None)
        self.client = make_client(settings.redis_url)
        self.batcher = Batcher(self.client)
        self.metrics.registry.register(RedirectsCollector(self.batcher.redirects.counts))
        history_mode = settings.database_url is not None
        self.store = RedisStore(self.batcher, history=settings.room_history, room_ttl_ms=settings.room_ttl_ms,
                                connection_ttl_ms=settings.connection_ttl_ms, history_mode=history_mode,
                                history_bytes=settings.room_history_bytes, max_rooms=settings.max_rooms)
        self.reaper = Reaper(self.batcher, self.store, heartbeat_timeout_ms=settings.heartbeat_timeout_ms,
                             prune_after_ms=settings.participant_prune_ms, node_ttl_ms=settings.node_ttl_ms)
        self.lease = Lease(self.batcher, keys.REAPER_LEASE, settings.node_id, settings.lease_ttl_ms)
        self.redis_ok = False
        self.outage = OutageLog(log, "redis")
        self.pool: asyncpg.Pool | None = None
        self.flusher: Flusher | None = None
        self.schema_ready = asyncio.Event()
        self.stop = asyncio.Event()
        self.exit_code = 0
        self._tasks: list[asyncio.Task[Any]] = []

    def routes(self) -> dict[str, Any]:
        def metrics_route() -> tuple[int, str, bytes]:
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.metrics.registry)

        def ready() -> tuple[int, str, bytes]:
            return (200, "text/plain", b"ready\n") if self.redis_ok else (503, "text/plain", b"redis down\n")

        return {"/healthz": lambda: (200, "text/plain", b"ok\n"), "/readyz": ready, "/metrics": metrics_route}

    async def run(self) -> int:
        s = self.settings
        http = await serve_http(s.coordinator_host, s.coordinator_port, self.routes())
        log.info("coordinator %s on http://%s:%d (lease %s, ttl %d ms, history %s)", s.node_id, s.coordinator_host,
                 s.coordinator_port, keys.REAPER_LEASE, s.lease_ttl_ms, "on" if s.database_url else "off")
        loop = asyncio.get_running_loop()
        if s.database_url is not None:
            self.pool = await asyncpg.create_pool(s.database_url, min_size=0, max_size=4)
            source = RedisHistorySource(self.batcher, s.node_id, keep=s.room_history, room_ttl_ms=s.room_ttl_ms)
            assert self.metrics.flush is not None
            self.flusher = Flusher(source, PostgresWriter(self.pool), self.metrics.flush,
                                   batch_rows=s.history_batch_rows, interval=s.history_flush_ms / 1000)
            self._tasks.append(loop.create_task(self._history()))
        self._tasks.append(loop.create_task(self._jobs()))
        try:
            await self._lease_loop()
        finally:
            log.info("stopping")
            await stop_tasks(self._tasks)
            with contextlib.suppress(Exception):
                await self.lease.release()
            http.close()
            await self.batcher.aclose()
            if self.pool is not None:
                await self.pool.close()
        return self.exit_code

    async def _lease_loop(self) -> None:
        s = self.settings
        # Often enough that a timeout is noticed within a fraction of itself, and that a
        # standby takes over soon after the active one's lease lapses.
        interval = min(s.reaper_interval_ms, s.heartbeat_timeout_ms / 5, s.lease_ttl_ms / 3) / 1000
        while not self.stop.is_set():
            try:
                if not self.redis_ok:
                    await self.batcher.load_scripts()
                leader = await self.lease.tick()
                self.metrics.leader.set(1 if leader else 0)
                if leader:
                    result = await self.reaper.run_once(int(time.time() * 1000))
                    self.metrics.timeouts.inc(result.timed_out)
                    self.metrics.pruned.inc(result.pruned)
                    self.metrics.replicas.set(result.replicas)
                    self.metrics.runs.inc()
                self.redis_ok = True
                self.outage.recovered()
            except (GatewayError, OSError, TimeoutError, RedisConnectionError, RedisTimeoutError) as exc:
                # Once per outage (then a summary now and then), never a traceback per attempt.
                self.outage.failed(exc, "reaper and cleanup paused")
                self.redis_ok = False
                self.lease.held = False
                self.metrics.leader.set(0)
            except Exception:
                log.exception("reaper pass failed")
                self.redis_ok = False
            self.metrics.redis_up.set(1 if self.redis_ok else 0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), interval)

    async def _history(self) -> None:
        assert self.flusher is not None
        s = self.settings
        if s.auto_migrate:
            try:
                await migrate_when_reachable(s.database_url or "")
            except Exception:
                # A schema that cannot be migrated must not be flushed into: stop loudly.
                log.critical("migrations failed; stopping the coordinator (set AUTO_MIGRATE=false if the "
                             "schema is managed elsewhere)", exc_info=True)
                self.exit_code = 1
                self.stop.set()
                return
        self.schema_ready.set()
        while True:
            try:
                await self.flusher.run(active=lambda: self.lease.held and self.redis_ok)
            except (GatewayError, OSError) as exc:  # redis trouble: the lease loop notices too
                self.outage.failed(exc, "reaper and cleanup paused")  # the flusher pauses with them
                await asyncio.sleep(1.0)

    async def _room_stats(self) -> None:
        """Cluster-wide room counts by status and game type, for dashboards."""
        pages = [self.batcher.call(cmd("zrange", keys.spread(keys.ROOM_INDEX, bucket), 0, -1))
                 for bucket in self.batcher.buckets()]
        ids = [r for page in pages for r in await page]
        futs = [self.batcher.call(cmd("hmget", keys.room(r.decode() if isinstance(r, bytes) else r),
                                      "status", "game_type")) for r in ids]
        rooms = []
        for fut in futs:
            status, game_type = await fut
            if status is not None:
                rooms.append((status.decode(), game_type.decode()))
        self.metrics.game_types_seen = show_room_counts(rooms, self.metrics.rooms, self.metrics.rooms_by_type,
                                                        self.metrics.game_types_seen)

    async def _jobs(self) -> None:
        """Cleanup jobs and the heartbeat batch, while holding the lease."""
        s = self.settings
        last_cleanup = last_beats = last_stats = 0.0
        tick = min(s.cleanup_interval_ms, s.heartbeat_flush_ms, 1000) / 1000
        while True:
            await asyncio.sleep(tick)
            if not (self.lease.held and self.redis_ok):
                continue
            now = time.monotonic()
            now_ms = int(time.time() * 1000)
            try:
                if now - last_stats >= 5.0:
                    last_stats = now
                    await self._room_stats()
                if now - last_cleanup >= s.cleanup_interval_ms / 1000:
                    last_cleanup = now
                    await cleanup_pass(s, now_ms, self.store.close_abandoned,
                                       self.pool if self.schema_ready.is_set() else None,
                                       lambda action, n: self.metrics.cleanup.labels(action).inc(n))
                if self.pool is not None and self.schema_ready.is_set() and now - last_beats >= s.heartbeat_flush_ms / 1000:
                    last_beats = now
                    pages = [self.batcher.call(cmd("zrange", keys.spread(keys.PRESENCE, bucket), 0, -1, withscores=True))
                             for bucket in self.batcher.buckets()]
                    beats = {(k.decode() if isinstance(k, bytes) else str(k)): int(v)
                             for page in pages for k, v in await page}
                    n = await update_heartbeats(self.pool, beats)
                    self.metrics.cleanup.labels("heartbeats").inc(n)
            except (GatewayError, RedisConnectionError, RedisTimeoutError) as exc:
                self.outage.failed(exc, "reaper and cleanup paused")  # logged once per outage
            except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
                log.warning("cleanup jobs: %s", getattr(exc, "message", exc))
