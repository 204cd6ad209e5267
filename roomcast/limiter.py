"""Rate limits shared by every replica: token buckets keyed by what is limited.

`take(key, rate, burst)` returns 0 if allowed (a token was taken) or the milliseconds
until one will be. The Redis implementation runs one small Lua script per check, so the
budget is the same whichever replica a client reaches; the memory one serves the
embedded single node. Buckets expire once full again, so idle keys cost nothing.
"""

from __future__ import annotations

import math
from typing import Protocol

from .redis_batch import Batcher

BUCKET = r"""
-- KEYS[1] bucket hash {tokens, at}; ARGV: rate (tokens/s), burst, now_ms, cost
local rate, burst, now, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local v = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(v[1]), tonumber(v[2])
if not tokens then tokens, at = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
local wait = 0
if cost == 0 then  -- a peek: would one token be available?
  if tokens < 1 then wait = math.ceil((1 - tokens) * 1000 / rate) end
elseif cost < 0 then  -- a refund: give tokens back, up to the burst
  tokens = math.min(burst, tokens - cost)
elseif tokens >= cost then tokens = tokens - cost else wait = math.ceil((cost - tokens) * 1000 / rate) end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) * 1000 / rate) + 1000)
return wait
"""


class Limiter(Protocol):
    async def take(self, key: str, rate: float, burst: int, now_ms: int, cost: int = 1) -> int:
        """0 if allowed, else ms to wait. `rate` is tokens per second. cost=0 only peeks
        whether one token is available, taking nothing; a negative cost gives tokens back
        (at most up to the burst) and always returns 0."""
        ...


class MemoryLimiter:
    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, int]] = {}

    async def take(self, key: str, rate: float, burst: int, now_ms: int, cost: int = 1) -> int:
        tokens, at = self._buckets.get(key, (float(burst), now_ms))
        tokens = min(float(burst), tokens + max(0, now_ms - at) * rate / 1000)
        wait = 0
        if cost == 0:  # a peek: would one token be available?
            if tokens < 1:
                wait = max(1, math.ceil((1 - tokens) * 1000 / rate))
        elif cost < 0:  # a refund
            tokens = min(float(burst), tokens - cost)
        elif tokens >= cost:
            tokens -= cost
        else:
            wait = max(1, math.ceil((cost - tokens) * 1000 / rate))
        self._buckets[key] = (tokens, now_ms)
        if len(self._buckets) > 100_000:
            self._forget_full(now_ms, rate)
        return wait

    def _forget_full(self, now_ms: int, rate: float) -> None:
        self._buckets = {k: (t, at) for k, (t, at) in self._buckets.items() if now_ms - at < 3_600_000}


class RedisLimiter:
    def __init__(self, batcher: Batcher) -> None:
        self.b = batcher
        self.script = batcher.register(BUCKET)

    async def take(self, key: str, rate: float, burst: int, now_ms: int, cost: int = 1) -> int:
        wait = await self.b.eval(self.script, [f"ws:rl:{{{key}}}"], [rate, burst, now_ms, cost])
        return int(wait)
