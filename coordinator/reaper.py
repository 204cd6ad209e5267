"""The reaper: cross-node heartbeat timeouts and pruning of long-disconnected participants."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from roomcast.presence.redis import RedisPresence
from roomcast.redis import keys
from roomcast.redis.batch import Batcher, cmd
from roomcast.store.base import Caller
from roomcast.store.redis import RedisStore

log = logging.getLogger("roomcast.reaper")


@dataclass
class ReapResult:
    timed_out: int = 0
    pruned: int = 0
    replicas: int = 0


class Reaper:
    def __init__(self, batcher: Batcher, store: RedisStore, *, heartbeat_timeout_ms: int,
                 prune_after_ms: int, node_ttl_ms: int) -> None:
        self.b = batcher
        self.store = store
        self.presence = RedisPresence(batcher)
        self.heartbeat_timeout_ms = heartbeat_timeout_ms
        self.prune_after_ms = prune_after_ms
        self.node_ttl_ms = node_ttl_ms

    async def run_once(self, now_ms: int) -> ReapResult:
        result = ReapResult()
        # 1. Sockets silent for longer than the heartbeat timeout (their gateway died,
        #    or lost Redis): status `timeout`, participants `disconnected`.
        for socket_id in await self.presence.expired(now_ms - self.heartbeat_timeout_ms):
            device = await self.b.call(cmd("get", keys.socket(socket_id)))
            if device is None:
                await self.b.call(cmd("zrem", keys.spread(keys.PRESENCE, self.b.bucket(socket_id)), socket_id))
                continue
            device_id = device.decode() if isinstance(device, bytes) else str(device)
            await self.store.disconnect(Caller(socket_id, device_id, None), "timeout", "timeout", now_ms)
            result.timed_out += 1
            log.info("socket %s of %s timed out", socket_id, device_id)
        # 2. Participants disconnected for longer than the prune delay: `participant_left`.
        #    In a cluster, every bucket of the prune queue (they are spread over the primaries).
        pages = [self.b.call(cmd("zrangebyscore", keys.spread(keys.DISCONNECTED, bucket), "-inf",
                                 now_ms - self.prune_after_ms, start=0, num=1000)) for bucket in self.b.buckets()]
        due = [item for page in pages for item in await page]
        for item in due:
            room_id, _, device_id = (item.decode() if isinstance(item, bytes) else str(item)).partition("|")
            if await self.store.prune(room_id, device_id, now_ms):
                result.pruned += 1
                log.info("pruned %s from room %s", device_id, room_id)
        # 3. The cluster view: replicas whose registration is fresh.
        await self.b.call(cmd("zremrangebyscore", keys.NODES, "-inf", now_ms - self.node_ttl_ms))
        result.replicas = int(await self.b.call(cmd("zcard", keys.NODES)))
        return result
