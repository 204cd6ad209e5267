"""The node's shared state and helpers (NodeBase), which its parts build on: the handshake
and admission (gateway/handshake.py), the room commands (gateway/rooms.py) and the node
itself (gateway/node.py: dispatch, socket lifecycle, upkeep, drain)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from roomcast import protocol as p
from roomcast.bus.base import Bus
from roomcast.device_tokens import DeviceTokens
from roomcast.errors import GatewayError, ProtocolError
from roomcast.limits.base import Limiter
from roomcast.limits.memory import MemoryLimiter
from roomcast.presence.base import Presence
from roomcast.privacy import Privacy
from roomcast.settings import Settings
from roomcast.store.base import RoomStore

from . import auth
from .frames import text_frame
from .hub import Hub
from .metrics import Metrics
from .session import Session
from .webhooks import Webhooks

log = logging.getLogger("roomcast.node")


class HistorySource(Protocol):
    """Old event ranges from Postgres (roomcast.history.read.HistoryReader)."""

    async def events(self, room_id: str, after: int, upto: int) -> list[tuple[int, bytes]]: ...

    async def count(self, room_id: str, after: int, upto: int) -> int: ...


def now_ms() -> int:
    return int(time.time() * 1000)


class NodeBase:
    """What every part of the node shares: its settings, backends, local sessions and hub,
    the tasks it runs, and how it replies and counts (gateway/node.py puts the parts together)."""

    def __init__(
        self,
        settings: Settings,
        store: RoomStore,
        bus: Bus,
        presence: Presence,
        metrics: Metrics,
        limiter: Limiter | None = None,
    ) -> None:
        self.settings = settings
        # hello.token checks; key files are read here, once (None: every token is refused).
        self.verifier = auth.Verifier.from_settings(settings)
        self.limiter: Limiter = limiter or MemoryLimiter()
        # Device tokens (DEVICE_TOKEN_SECRET): the backend sets `history` when Postgres is on.
        self.device_tokens = None if settings.device_token_secret is None else DeviceTokens(
            store, settings.device_token_secret, settings.require_device_token, settings.device_token_ttl_ms)
        self.privacy = Privacy(settings.privacy_hash_key, settings.privacy_encryption_keys, settings.ip_storage,
                               settings.user_agent_storage, persistent=settings.database_url is not None)
        # Backend webhooks (BACKEND_CONNECT_URL, BACKEND_JOIN_URL), if configured.
        self.webhooks = None if not (settings.backend_connect_url or settings.backend_join_url) else Webhooks(
            settings.backend_connect_url, settings.backend_join_url, settings.backend_webhook_secret,
            settings.backend_timeout_ms, metrics, settings.node_id)
        self.store = store
        self.bus = bus
        self.presence = presence
        self.metrics = metrics
        self.hub = Hub(bus, metrics, settings.log_events)
        self.sessions: dict[str, Session] = {}
        self.device_sockets: dict[str, int] = {}
        # Reads old event ranges from Postgres, when history is configured.
        self.history: HistorySource | None = None
        # Extra periodic work (each gets now_ms), run with the store sweep.
        self.upkeep_hooks: list[Callable[[int], Awaitable[object]]] = []
        self.ready = True  # false once draining
        # Monotonic time since which the event loop could read every socket: moved on after
        # a stall (process frozen, long pause), so data that waited unread counts as heard.
        self.readable_since = 0.0
        # Called with the stall's length (s) after one: the backend may re-register sockets.
        self.on_stall: Callable[[float], None] | None = None
        self.backend_ok = True  # false while a required backend (Redis) is unreachable
        # Redis Cluster: each shard (slot range label) -> whether its primary answers (/readyz lists it).
        self.redis_shards: dict[str, bool] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        metrics.ready.set(1)

    # ------------------------------------------------------------ helpers

    def track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    def reply(self, session: Session, kind: str, message: dict[str, Any]) -> None:
        """Send a direct reply; its `re` is dropped when the request had no id."""
        session.write_frame(self.reply_frame(kind, message))

    def reply_frame(self, kind: str, message: dict[str, Any]) -> bytes:
        """A direct reply as a WebSocket frame, counted as sent: the caller writes it (now, or
        together with what follows it: Hub.finish_join)."""
        if "re" in message and message["re"] is None:
            del message["re"]
        counter = self.metrics.out_by_type.get(kind)
        if counter is not None:
            counter.inc()
        return text_frame(p.encode(message))

    def error(self, session: Session, exc: GatewayError, re: Any = None, has_re: bool = False) -> None:
        if isinstance(exc, ProtocolError):
            re, has_re = exc.re, exc.has_re
        session.send(p.error_message(exc.code.value, exc.message, re=re, has_re=has_re,
                                     retry_after_ms=exc.retry_after_ms))
        self.metrics.errors_by_code[exc.code.value].inc()
        self.metrics.out_by_type["error"].inc()

    def _bucket(self, what: str, key: str) -> str:
        """Bucket names hold a hash, never a raw address or device id. Every replica must
        name a bucket alike, or the budget would not be shared: keyed with PRIVACY_HASH_KEY
        when it is set (the same on every replica); without it the privacy hash key is
        random per process, so the hash is unkeyed then."""
        if self.settings.privacy_hash_key:
            return f"{what}:{self.privacy.hash(key)[3:35]}"
        return f"{what}:{hashlib.sha256(b'roomcast-bucket:' + key.encode()).hexdigest()[:32]}"

    async def limited(self, what: str, key: str, rate: float, burst: int, cost: int = 1) -> int:
        """Take from a cluster-wide bucket; 0 if allowed, else ms to wait (counted)."""
        wait = await self.limiter.take(self._bucket(what, key), rate, burst, now_ms(), cost)
        if wait:
            self.metrics.rate_limited.labels(what).inc()
        return wait

