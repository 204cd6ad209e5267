"""roomcast.limiter.MemoryLimiter: take, peek (cost 0) and refund (negative cost), with
explicit clock values. The Redis script is the same algorithm; tests/system/test_security.py
spends and refunds its buckets across two replicas."""

from __future__ import annotations

from roomcast.limiter import BUCKET, MemoryLimiter

T0 = 1_700_000_000_000


async def test_burst_then_wait_then_refill() -> None:
    lim = MemoryLimiter()
    assert [await lim.take("k", 2.0, 3, T0) for _ in range(3)] == [0, 0, 0]
    assert await lim.take("k", 2.0, 3, T0) == 500  # one token every 500 ms
    assert 0 < await lim.take("k", 2.0, 3, T0 + 499) <= 2
    assert await lim.take("k", 2.0, 3, T0 + 500) == 0


async def test_peek_takes_nothing() -> None:
    lim = MemoryLimiter()
    for _ in range(5):
        assert await lim.take("k", 1.0, 1, T0, cost=0) == 0
    assert await lim.take("k", 1.0, 1, T0) == 0
    assert await lim.take("k", 1.0, 1, T0, cost=0) == 1000


async def test_refund_gives_a_token_back_up_to_the_burst() -> None:
    lim = MemoryLimiter()
    assert await lim.take("k", 0.001, 2, T0) == 0
    assert await lim.take("k", 0.001, 2, T0) == 0
    assert await lim.take("k", 0.001, 2, T0) > 0
    assert await lim.take("k", 0.001, 2, T0, cost=-1) == 0
    assert await lim.take("k", 0.001, 2, T0) == 0  # the refunded token
    assert await lim.take("k", 0.001, 2, T0) > 0
    # Refunds never lift a bucket above its burst.
    fresh = MemoryLimiter()
    for _ in range(5):
        await fresh.take("f", 0.001, 2, T0, cost=-1)
    assert [await fresh.take("f", 0.001, 2, T0) for _ in range(3)][2] > 0


async def test_keys_are_independent() -> None:
    lim = MemoryLimiter()
    assert await lim.take("a", 1.0, 1, T0) == 0
    assert await lim.take("a", 1.0, 1, T0) > 0
    assert await lim.take("b", 1.0, 1, T0) == 0


def test_redis_script_knows_refunds() -> None:
    assert "cost < 0" in BUCKET
