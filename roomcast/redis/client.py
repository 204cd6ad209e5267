"""One place that makes redis-py clients, with failure behaviour suited to a gateway:
short timeouts and a single immediate retry (a pooled connection that died with a Redis
restart is replaced once; a Redis that is really down fails fast with `unavailable`).

Redis Cluster: `REDIS_URL` may name any one node. `is_cluster` asks the server
(`INFO cluster`, `cluster_enabled:1`); then `make_cluster_client` makes redis-py's
`RedisCluster` from the same URL (TLS and password included), which discovers the other
nodes, routes every command by slot, follows MOVED/ASK and waits out TRYAGAIN; on a dead
node or CLUSTERDOWN the Batcher fails that node's commands fast with `unavailable` (like a
single Redis that is down) and refreshes the slot map (at most every 0.25 s) until the
node's replica has taken over.
"""

from __future__ import annotations

import ssl
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import RedisSSLContext, parse_url
from redis.backoff import NoBackoff
from redis.crc import key_slot as _key_slot
from redis.retry import Retry

from roomcast.redis.client_redirects import Redirects, install


class UrlRedis(Redis):
    """A redis-py client that remembers its URL (to make the cluster client from it)."""

    url: str = ""


def make_client(url: str) -> UrlRedis:
    client = UrlRedis.from_url(
        url,
        socket_timeout=2.0,
        socket_connect_timeout=1.0,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=0,
        max_connections=64,
    )
    assert isinstance(client, UrlRedis)
    client.url = url
    return client


async def is_cluster(client: Redis) -> bool:
    """Whether the server behind `client` is a Redis Cluster node (`cluster_enabled:1`)."""
    info: dict[str, Any] = await client.info("cluster")
    return int(info.get("cluster_enabled", 0)) == 1


def make_cluster_client(url: str, redirects: Redirects | None = None) -> RedisCluster:
    """redis-py's RedisCluster from the URL of any one node. Coverage is not required:
    while one shard fails over, the others keep serving. With `redirects`, every MOVED/ASK
    reply its connections get is counted there (roomcast/redis/client_redirects.py)."""
    client: RedisCluster = RedisCluster.from_url(
        url,
        socket_timeout=2.0,
        socket_connect_timeout=1.0,
        # No retry inside redis-py: its retry closes every node's connections and re-asks the
        # first primary (maybe the dead one); the Batcher refreshes the slot map itself.
        retry=Retry(NoBackoff(), 0),
        require_full_coverage=False,
        health_check_interval=0,
        max_connections=64,
    )
    if redirects is not None:
        install(client, redirects)
    return client


def key_slot(key: str | bytes) -> int:
    """The Redis Cluster slot of a key (its hash tag's, if it has one)."""
    return int(_key_slot(key.encode() if isinstance(key, str) else key))


def tls_context(url: str) -> ssl.SSLContext | None:
    """The TLS context redis-py would use for `url` (None for redis://), for connections we
    open ourselves (the pub/sub subscriber). Built by redis-py's own RedisSSLContext from the
    same URL query parameters (ssl_ca_certs, ssl_cert_reqs, ssl_check_hostname, ssl_certfile,
    ssl_keyfile, ssl_ca_path), with the same defaults as its SSLConnection, so both kinds of
    connection verify the server alike."""
    if not url.startswith("rediss://"):
        return None
    kw = parse_url(url)

    def opt(name: str) -> str | None:
        value = kw.get(name)
        return None if value is None else str(value)

    ctx = RedisSSLContext(
        keyfile=opt("ssl_keyfile"),
        certfile=opt("ssl_certfile"),
        cert_reqs=opt("ssl_cert_reqs") or "required",
        ca_certs=opt("ssl_ca_certs"),
        ca_path=opt("ssl_ca_path"),
        check_hostname=bool(kw.get("ssl_check_hostname", True)),
        password=opt("ssl_password"),
    )
    return ctx.get()
