"""roomcast.limits: MemoryLimiter's take, peek (cost 0) and refund (negative cost), with
explicit clock values; and one formula for every bucket: the per-socket TokenBucket and the
Redis script give what `take_tokens` gives. tests/system/test_security.py spends and refunds
the cluster-wide buckets across two replicas."""

from __future__ import annotations

from roomcast.limits.base import TokenBucket, take_tokens
from roomcast.limits.memory import MemoryLimiter
from roomcast.limits.redis import BUCKET, RedisLimiter
from roomcast.redis.batch import Batcher
from roomcast.redis.client import make_client
from tests.harness import RedisServer

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


# ---------------------------------------------------------------- one formula, three buckets


def test_the_socket_bucket_is_the_shared_formula() -> None:
    """TokenBucket (per socket, seconds) and take_tokens (ms) agree step by step."""
    bucket = TokenBucket(rate=4.0, burst=3, now=10.0)
    tokens, at = 3.0, 10.0
    answers = []
    for now_s in (10.0, 10.0, 10.0, 10.0, 10.1, 10.3, 10.3, 11.0, 11.0, 20.0):
        tokens, expected = take_tokens(tokens, (now_s - at) * 1000, 4.0, 3.0, 1)
        at = now_s
        answers.append(bucket.take(now_s))
        assert answers[-1] == expected
    assert answers[:4] == [0, 0, 0, 250] and answers[-1] == 0


async def test_the_redis_bucket_is_the_shared_formula() -> None:
    """The Lua script behind every cluster-wide bucket gives the same answers as
    take_tokens for the same sequence of takes, peeks and refunds (real Redis)."""
    server = RedisServer().start()
    client = make_client(server.url)
    try:
        lim = RedisLimiter(Batcher(client))
        steps = [(T0, 1), (T0, 1), (T0, 1), (T0, 1), (T0 + 1, 0), (T0 + 250, 1), (T0 + 250, -1), (T0 + 250, 1),
                 (T0 + 251, 2), (T0 + 900, 3), (T0 + 5000, 0), (T0 + 5000, 3), (T0 + 5001, 1)]
        for rate, burst in ((4.0, 3), (0.5, 2), (1000.0, 100)):
            key = f"k-{rate}-{burst}"
            tokens, at = float(burst), T0
            for now, cost in steps:
                tokens, expected = take_tokens(tokens, now - at, rate, float(burst), cost)
                at = now
                assert await lim.take(key, rate, burst, now, cost) == expected, (rate, burst, now, cost)
    finally:
        await client.aclose()
        server.stop()
