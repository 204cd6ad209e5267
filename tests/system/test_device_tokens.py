"""REQUIRE_DEVICE_TOKEN cannot be beaten by waiting for a device's records to expire.

The token used to be a fixed HMAC of the device id, handed to whoever said `hello` while
the id was unknown, and an id became unknown again once its connection record expired
(WEBSOCKET_CONNECTION_TTL): whoever had seen the id then received the victim's own token.
Now the token is random, given once (first hello of a new id, or a rotation), its hash
outlives the connection record (DEVICE_TOKEN_TTL, and Postgres with history), and an id
is known while history knows it. Real gateway processes, embedded and on a real Redis,
and a real Postgres for the history cases.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import time
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from roomcast.history.migrate import migrate
from tests.harness import UNIT, Client, GatewayProcess, PostgresServer, RedisServer, gateway, redis_server, unique

pytestmark = pytest.mark.system

CONNECTION_TTL_MS = 1000  # the shortest WEBSOCKET_CONNECTION_TTL allowed
ENV = {
    "DEVICE_TOKEN_SECRET": "device-token-test-secret",
    "REQUIRE_DEVICE_TOKEN": "true",
    "WEBSOCKET_CONNECTION_TTL": str(CONNECTION_TTL_MS),
    "CONNECT_RATE_PER_DEVICE": "100",
}


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as r:
        yield r


@pytest.fixture(scope="module", params=["embedded", "redis"])
def backend(request: pytest.FixtureRequest) -> dict[str, str]:
    return {"REDIS_URL": request.getfixturevalue("redis").url} if request.param == "redis" else {}


@pytest.fixture(scope="module")
def gw(backend: dict[str, str]) -> Iterator[GatewayProcess]:
    with gateway(ENV | backend) as g:
        yield g
    assert "Traceback" not in g.log(), g.log()[-3000:]


async def hello(g: GatewayProcess, device: str, **extra: Any) -> dict[str, Any]:
    """One socket: hello, the reply (welcome or error), then close."""
    async with Client.open(g.url) as c:
        try:
            return await c.request({"type": "hello", "device_id": device, **extra})
        except ConnectionClosed as exc:
            return {"type": "closed", "code": exc.rcvd.code if exc.rcvd else None}


def refused(reply: dict[str, Any]) -> bool:
    return reply.get("type") == "error" and reply.get("code") == "unauthorized" and "device_token" not in reply


async def test_device_stays_known_after_its_connection_record_expired(gw: GatewayProcess) -> None:
    victim = unique("dev-victim")
    first = await hello(gw, victim)
    assert first["type"] == "welcome", first
    token = first["device_token"]
    assert isinstance(token, str)
    # The victim goes away; its connection record outlives the socket by the TTL, then is
    # gone (the memory store sweeps each second; Redis expires the key).
    await asyncio.sleep(CONNECTION_TTL_MS / 1000 + 2.5 * UNIT)
    # Someone who saw the id says hello without (or with a made-up) token: refused, no token.
    for extra in ({}, {"device_token": "A" * 43}, {"device_token": token[:-1]}):
        assert refused(await hello(gw, victim, **extra)), extra
    # The first holder's token still works, and it was no longer connected: the
    # attempts above came after the connection record expired (reconnect_count restarts).
    back = await hello(gw, victim, device_token=token)
    assert back["type"] == "welcome" and back["reconnect_count"] == 0, back
    assert "device_token" not in back  # given once: a later welcome does not carry it
    assert len(token) >= 43  # 256 random bits, base64url


async def test_tokens_are_random_per_device_and_per_issue(gw: GatewayProcess, backend: dict[str, str]) -> None:
    a, b = unique("dev-a"), unique("dev-b")
    ta, tb = (await hello(gw, a))["device_token"], (await hello(gw, b))["device_token"]
    assert ta != tb
    # The same id first seen by another deployment (same secret, its own state) gets
    # another token: the token is not a function of the id.
    with separate_redis("REDIS_URL" in backend) as r, gateway(ENV | env_of(r)) as other:
        again = await hello(other, a)
        assert again["type"] == "welcome" and again["device_token"] != ta
        assert refused(await hello(other, a, device_token=ta))


@contextlib.contextmanager
def separate_redis(wanted: bool) -> Iterator[RedisServer | None]:
    """A Redis of its own (for a second deployment), when the test runs on Redis."""
    if not wanted:
        yield None
        return
    with redis_server() as r:
        yield r


def env_of(server: RedisServer | None) -> dict[str, str]:
    return {} if server is None else {"REDIS_URL": server.url}


async def test_rotation_replaces_the_token(gw: GatewayProcess) -> None:
    device = unique("dev-rot")
    old = (await hello(gw, device))["device_token"]
    rotated = await hello(gw, device, device_token=old, rotate_token=True)
    assert rotated["type"] == "welcome", rotated
    new = rotated["device_token"]
    assert isinstance(new, str) and new != old
    assert refused(await hello(gw, device, device_token=old))  # the old one is dead
    assert (await hello(gw, device, device_token=new))["type"] == "welcome"
    assert refused(await hello(gw, device, rotate_token=True))  # rotation needs the token
    assert refused(await hello(gw, unique("dev-none"), rotate_token=True))


async def test_a_refused_first_hello_keeps_no_token(gw: GatewayProcess) -> None:
    # The first hello of a new id is refused after the token check (metadata too large):
    # no token may be stored for it, or the id would be taken by nobody.
    device = unique("dev-refused")
    bad = await hello(gw, device, metadata={"a": list(range(500))})
    assert bad["type"] == "error" and bad["code"] == "bad_request", bad
    good = await hello(gw, device)
    assert good["type"] == "welcome" and isinstance(good.get("device_token"), str), good


async def test_two_first_hellos_racing_get_one_token(gw: GatewayProcess) -> None:
    device = unique("dev-race")
    replies = await asyncio.gather(*[hello(gw, device) for _ in range(6)])
    tokens = [r["device_token"] for r in replies if r["type"] == "welcome"]
    assert len(tokens) == 1, replies  # the id has one holder; the others are refused
    assert all(refused(r) for r in replies if r["type"] != "welcome"), replies


# ---------------------------------------------------------------- with history (Postgres)


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    server = PostgresServer().init()
    try:
        yield server
    finally:
        server.destroy()


async def wait_until(check: Any, what: str, timeout: float = 15 * UNIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} not reached in {timeout:.0f}s"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("mode", ["embedded", "redis"])
async def test_history_keeps_devices_known_when_the_fast_state_is_lost(pg: PostgresServer, mode: str) -> None:
    db = unique("tokens").replace("-", "_")
    dsn = pg.create_database(db)
    env = ENV | {"DATABASE_URL": dsn, "HISTORY_FLUSH_INTERVAL": "50"}
    if mode == "redis":
        await migrate(dsn)  # in cluster mode the coordinator (or a migration Job) does it
    with separate_redis(mode == "redis") as r:
        env |= env_of(r)
        device = unique("dev-hist")
        with gateway(env) as g:
            # Until the gateway has applied the migrations, hellos that need Postgres get a
            # retryable `unavailable` (a client retries it).
            first = await hello(g, device)
            deadline = time.monotonic() + 15 * UNIT
            while first.get("code") == "unavailable" and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                first = await hello(g, device)
            assert first["type"] == "welcome", first
            token = first["device_token"]
            await wait_until(lambda: pg.psql(db, f"SELECT count(*) FROM roomcast_device_tokens "
                                                 f"WHERE device_id = '{device}'") == "1", "token row")
            stored = pg.psql(db, f"SELECT token_hash FROM roomcast_device_tokens WHERE device_id = '{device}'")
            assert token not in stored and len(stored) == 64  # a hash, never the token
        # Everything fast is lost: the embedded gateway restarts (its memory is gone), Redis
        # is flushed. The id is still known, through Postgres; its holder still gets in.
        if r is not None:
            r.cli("FLUSHALL")
        with gateway(env) as g:
            assert refused(await hello(g, device))
            assert (await hello(g, device, device_token=token))["type"] == "welcome"
            # A device only history knows (device_sessions, e.g. from before tokens were on):
            # known too, so nobody is handed a token for it.
            legacy = unique("dev-old")
            pg.psql(db, "INSERT INTO device_sessions (device_id, first_seen, last_seen) VALUES "
                        f"('{legacy}', now(), now())")
            assert refused(await hello(g, legacy))
            # Such a device may upgrade once with the HMAC token of earlier versions; it gets
            # a random token, and the HMAC is dead from then on.
            mac = hmac.new(ENV["DEVICE_TOKEN_SECRET"].encode(), b"roomcast-device:" + legacy.encode(),
                           hashlib.sha256).digest()
            old_token = base64.urlsafe_b64encode(mac[:24]).decode()
            upgraded = await hello(g, legacy, device_token=old_token)
            assert upgraded["type"] == "welcome" and upgraded["device_token"] != old_token, upgraded
            assert refused(await hello(g, legacy, device_token=old_token))
            assert (await hello(g, legacy, device_token=upgraded["device_token"]))["type"] == "welcome"
