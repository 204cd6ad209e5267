"""Presence in the `ws:presence` sorted set (score = last heartbeat ms), batched per node.

Heartbeats are collected in memory and written with one ZADD per flush (design
invariant 4), together with the `last_heartbeat` field of each device's
`ws:connections:{device_id}` (the requirements' "on heartbeat: UPDATE last_heartbeat"),
in the same pipeline; `expired` serves the coordinator's reaper. In a Redis Cluster the set
is spread over buckets by socket id (keys.spread): one ZADD per bucket per flush.
"""

from __future__ import annotations

import asyncio

from roomcast.redis import keys
from roomcast.redis.batch import Batcher, cmd

# KEYS[1] ws:connections:{device_id}; ARGV[1] heartbeat ms. Only an existing record (one
# that expired stays gone), and only forwards (the device may have sockets on other nodes).
HEARTBEAT = r"""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if tonumber(ARGV[1]) > tonumber(redis.call('HGET', KEYS[1], 'last_heartbeat') or '0') then
  redis.call('HSET', KEYS[1], 'last_heartbeat', ARGV[1])
end
return 1
"""


class RedisPresence:
    def __init__(self, batcher: Batcher) -> None:
        self.b = batcher
        self._pending: dict[str, int] = {}
        self._devices: dict[str, int] = {}  # device_id -> latest heartbeat since the last flush
        # Devices whose record a hello wrote since the last flush (last_heartbeat = then): a
        # heartbeat of theirs in the same window would cost a script and say about the same.
        self._fresh: set[str] = set()
        self.s_heartbeat = batcher.register(HEARTBEAT)

    def touch(self, socket_id: str, now_ms: int, device_id: str | None = None) -> None:
        self._pending[socket_id] = now_ms
        if device_id is not None and device_id not in self._fresh:
            self._devices[device_id] = now_ms

    def recorded(self, device_id: str) -> None:
        self._fresh.add(device_id)
        self._devices.pop(device_id, None)

    def remove(self, socket_id: str) -> None:
        self._pending.pop(socket_id, None)

    async def flush(self) -> None:
        self._fresh.clear()
        if not self._pending and not self._devices:
            return
        batch, self._pending = self._pending, {}
        devices, self._devices = self._devices, {}
        futs = [self.b.eval(self.s_heartbeat, [keys.connection(d)], [beat]) for d, beat in devices.items()]
        by_bucket: dict[str, dict[str, int]] = {}
        for socket_id, beat in batch.items():
            by_bucket.setdefault(keys.spread(keys.PRESENCE, self.b.bucket(socket_id)), {})[socket_id] = beat
        for key, beats in by_bucket.items():
            # XX: only refresh sockets that are still registered (a closed socket stays gone).
            futs.append(self.b.call(cmd("zadd", key, beats, xx=True)))
        await asyncio.gather(*futs)  # one pipeline

    async def expired(self, older_than_ms: int) -> list[str]:
        """Sockets silent since before `older_than_ms`: up to 1000 per bucket (every primary)."""
        pages = [self.b.call(cmd("zrangebyscore", keys.spread(keys.PRESENCE, bucket), "-inf", f"({older_than_ms}",
                                 start=0, num=1000)) for bucket in self.b.buckets()]
        return [f.decode() if isinstance(f, bytes) else str(f) for page in pages for f in await page]
