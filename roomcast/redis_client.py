"""One place that makes redis-py clients, with failure behaviour suited to a gateway:
short timeouts and no hidden retries (a request that cannot reach Redis fails fast with
`unavailable`; the caller's client retries)."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry


def make_client(url: str) -> Redis:
    client: Redis = Redis.from_url(
        url,
        socket_timeout=2.0,
        socket_connect_timeout=1.0,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
        max_connections=64,
    )
    return client
