"""One place that makes redis-py clients, with failure behaviour suited to a gateway:
short timeouts and a single immediate retry (a pooled connection that died with a Redis
restart is replaced once; a Redis that is really down fails fast with `unavailable`)."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry


def make_client(url: str) -> Redis:
    client: Redis = Redis.from_url(
        url,
        socket_timeout=2.0,
        socket_connect_timeout=1.0,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=0,
        max_connections=64,
    )
    return client
