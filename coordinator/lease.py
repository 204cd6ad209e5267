"""A leader lease in Redis: SET NX PX to take it, a compare-and-renew script to keep it."""

from __future__ import annotations

import logging

from roomcast.redis import scripts as redis_scripts
from roomcast.redis.batch import Batcher, cmd

log = logging.getLogger("roomcast.lease")


class Lease:
    def __init__(self, batcher: Batcher, key: str, holder: str, ttl_ms: int) -> None:
        self.b = batcher
        self.key = key
        self.holder = holder
        self.ttl_ms = ttl_ms
        self.held = False
        self._renew = batcher.register(redis_scripts.LEASE_RENEW)

    async def tick(self) -> bool:
        """Take or renew the lease; return whether we hold it now."""
        if self.held:
            ok = bool(await self.b.eval(self._renew, [self.key], [self.holder, self.ttl_ms]))
            if not ok:
                log.warning("lost the lease %s", self.key)
        else:
            ok = bool(await self.b.call(cmd("set", self.key, self.holder, nx=True, px=self.ttl_ms)))
            if ok:
                log.info("took the lease %s: now active", self.key)
        self.held = ok
        return ok

    async def release(self) -> None:
        if self.held:
            await self.b.eval(self._renew, [self.key], [self.holder, 1])
            self.held = False
