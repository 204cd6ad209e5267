"""Keyed token buckets in process: the embedded single node's `Limiter`."""

from __future__ import annotations

from roomcast.limits.base import take_tokens


class MemoryLimiter:
    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, int]] = {}

    async def take(self, key: str, rate: float, burst: int, now_ms: int, cost: int = 1) -> int:
        tokens, at = self._buckets.get(key, (float(burst), now_ms))
        tokens, wait = take_tokens(tokens, now_ms - at, rate, float(burst), cost)
        self._buckets[key] = (tokens, now_ms)
        if len(self._buckets) > 100_000:
            self._forget_full(now_ms)
        return wait

    def _forget_full(self, now_ms: int) -> None:
        self._buckets = {k: (t, at) for k, (t, at) in self._buckets.items() if now_ms - at < 3_600_000}
