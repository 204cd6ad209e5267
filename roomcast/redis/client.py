"""One place that makes redis-py clients, with failure behaviour suited to a gateway:
short timeouts and a single immediate retry (a pooled connection that died with a Redis
restart is replaced once; a Redis that is really down fails fast with `unavailable`)."""

from __future__ import annotations

import ssl

from redis.asyncio import Redis
from redis.asyncio.connection import RedisSSLContext, parse_url
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
