"""Keyed token buckets in Redis, shared by every replica: one small Lua step per check,
so the budget is the same whichever replica a client reaches. The script is
`roomcast.limits.base.take_tokens` in Lua (compared with it by a contract test).

`TAKE_BUCKET` (roomcast/redis/scripts.py) is that step as a Lua function, so that a store
script can take from a bucket in the same atomic step as its own work (the hello's CONNECT
takes the device's connect budget, the join's ADMIT_JOIN its join budget): the bucket key
must then be in the script's slot, which a device's buckets are (`keys.device_limit`)."""

from __future__ import annotations

from roomcast.redis.batch import Batcher
from roomcast.redis.scripts import TAKE_BUCKET

# KEYS[1] bucket hash {tokens, at}; ARGV: rate (tokens/s), burst, now_ms, cost
BUCKET = TAKE_BUCKET + r"""
return take_bucket(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
"""


def bucket_key(name: str) -> str:
    """The Redis key of bucket `name`: a name that is already a key of the layout (a
    device's bucket, `ws:...{device}...`) is used as it is, in its owner's slot; any other
    name is its own hash tag."""
    return name if name.startswith("ws:") else f"ws:rl:{{{name}}}"


class RedisLimiter:
    def __init__(self, batcher: Batcher) -> None:
        self.b = batcher
        self.script = batcher.register(BUCKET)

    async def take(self, key: str, rate: float, burst: int, now_ms: int, cost: int = 1) -> int:
        wait = await self.b.eval(self.script, [bucket_key(key)], [rate, burst, now_ms, cost])
        return int(wait)
