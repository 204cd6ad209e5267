"""Keyed token buckets in Redis, shared by every replica: one small Lua step per check,
so the budget is the same whichever replica a client reaches. The script is
`roomcast.limits.base.take_tokens` in Lua (compared with it by a contract test)."""

from __future__ import annotations

from roomcast.redis.batch import Batcher

BUCKET = r"""
-- KEYS[1] bucket hash {tokens, at}; ARGV: rate (tokens/s), burst, now_ms, cost
local rate, burst, now, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local v = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(v[1]), tonumber(v[2])
if not tokens then tokens, at = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
local wait = 0
if cost == 0 then  -- a peek: would one token be available?
  if tokens < 1 then wait = math.max(1, math.ceil((1 - tokens) * 1000 / rate)) end
elseif cost < 0 then  -- a refund: give tokens back, up to the burst
  tokens = math.min(burst, tokens - cost)
elseif tokens >= cost then tokens = tokens - cost else wait = math.max(1, math.ceil((cost - tokens) * 1000 / rate)) end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) * 1000 / rate) + 1000)
return wait
"""


class RedisLimiter:
    def __init__(self, batcher: Batcher) -> None:
        self.b = batcher
        self.script = batcher.register(BUCKET)

    async def take(self, key: str, rate: float, burst: int, now_ms: int, cost: int = 1) -> int:
        wait = await self.b.eval(self.script, [f"ws:rl:{{{key}}}"], [rate, burst, now_ms, cost])
        return int(wait)
