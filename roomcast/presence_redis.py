"""Presence in the `ws:presence` sorted set (score = last heartbeat ms), batched per node.

Heartbeats are collected in memory and written with one ZADD per flush (design
invariant 4); `expired` serves the coordinator's reaper.
"""

from __future__ import annotations

from . import keys
from .redis_batch import Batcher, cmd


class RedisPresence:
    def __init__(self, batcher: Batcher) -> None:
        self.b = batcher
        self._pending: dict[str, int] = {}

    def touch(self, socket_id: str, now_ms: int) -> None:
        self._pending[socket_id] = now_ms

    def remove(self, socket_id: str) -> None:
        self._pending.pop(socket_id, None)

    async def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        # XX: only refresh sockets that are still registered (a closed socket stays gone).
        await self.b.call(cmd("zadd", keys.PRESENCE, batch, xx=True))

    async def expired(self, older_than_ms: int) -> list[str]:
        found = await self.b.call(cmd("zrangebyscore", keys.PRESENCE, "-inf", f"({older_than_ms}", start=0, num=1000))
        return [f.decode() if isinstance(f, bytes) else str(f) for f in found]
