"""Rate limits: one token-bucket formula, a per-socket bucket and the `Limiter` contract.

`take_tokens` is the formula every bucket of roomcast uses: the per-socket message rate
(`TokenBucket`, in process), the embedded node's keyed buckets (`roomcast.limits.memory`)
and, as Lua (`roomcast.limits.redis.BUCKET`, the same steps line by line; a contract test
compares the two on real Redis), the cluster-wide buckets every replica shares.
A bucket holds at most `burst` tokens and gains `rate` per second; taking `cost` tokens
succeeds when that many are there, else it says how long until they will be.
"""

from __future__ import annotations

import math
from typing import Protocol


def take_tokens(tokens: float, elapsed_ms: float, rate: float, burst: float, cost: int) -> tuple[float, int]:
    """Refill `tokens` for `elapsed_ms`, then take `cost` of them. Returns (tokens now,
    0 if taken or else the ms until `cost` tokens will be there). cost=0 only peeks whether
    one token is available; a negative cost gives tokens back, up to the burst."""
    tokens = min(burst, tokens + max(0.0, elapsed_ms) * rate / 1000)
    if cost == 0:
        return tokens, 0 if tokens >= 1 else max(1, math.ceil((1 - tokens) * 1000 / rate))
    if cost < 0:
        return min(burst, tokens - cost), 0
    if tokens >= cost:
        return tokens - cost, 0
    return tokens, max(1, math.ceil((cost - tokens) * 1000 / rate))


class TokenBucket:
    """One socket's message rate, in process: `take(now)` (seconds, monotonic) returns 0 or
    the ms to wait."""

    __slots__ = ("at", "burst", "rate", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.at = now

    def take(self, now: float) -> int:
        self.tokens, wait = take_tokens(self.tokens, (now - self.at) * 1000, self.rate, self.burst, 1)
        self.at = now
        return wait


class Limiter(Protocol):
    """Buckets keyed by what is limited, shared by every replica (Redis) or the one node.
    Buckets expire once full again, so idle keys cost nothing."""

    async def take(self, key: str, rate: float, burst: int, now_ms: int, cost: int = 1) -> int:
        """0 if allowed, else ms to wait. `rate` is tokens per second. cost=0 only peeks
        whether one token is available, taking nothing; a negative cost gives tokens back
        (at most up to the burst) and always returns 0."""
        ...
