"""Room scripts as Redis Functions, on a real redis-server (single Redis and Redis Cluster): they
are loaded again when Redis forgot them (FUNCTION FLUSH, a restart), the EVALSHA fallback works,
the lean connection (roomcast/redis/batch_lean.py) survives a dead Redis, and emit's trims stay exact
with its one read and one write of the room hash per event."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator

import pytest

from loadtests.services import RedisClusterServer, RedisServer
from roomcast.errors import ErrorCode, GatewayError
from roomcast.protocol import event_tail
from roomcast.redis import keys
from roomcast.redis.batch import Batcher
from roomcast.redis.client import make_client
from roomcast.store.base import Caller, ConnectionInfo, NewRoom, Service
from roomcast.store.redis import RedisStore
from tests.harness import REDIS_KINDS, UNIT, redis_of_kind

HOST = Caller("sock-h", "dev-h", None)


@contextlib.asynccontextmanager
async def store_on(server: RedisServer | RedisClusterServer, **kw: int) -> AsyncIterator[RedisStore]:
    batcher = Batcher(make_client(server.url))
    store = RedisStore(batcher, **kw)
    await batcher.load_scripts()
    try:
        yield store
    finally:
        await batcher.aclose()


async def publish(store: RedisStore, room: str, i: int, size: int = 20) -> int:
    tail = event_tail("move", None, {"i": i, "pad": "x" * size}, HOST.sender(), 1000 + i)
    return await store.publish(HOST, room, tail, 1000 + i)


async def make_room(store: RedisStore, room: str) -> None:
    await store.connect(HOST, ConnectionInfo(), 1000)
    await store.create_room(HOST, NewRoom(room, "quiz", 8, {}, None), 1000)


def cli_all(server: RedisServer | RedisClusterServer, *args: str) -> None:
    if isinstance(server, RedisClusterServer):
        server.cli_all(*args)
    else:
        server.cli(*args)


@pytest.mark.parametrize("kind", REDIS_KINDS)
async def test_functions_are_loaded_again_after_function_flush(kind: str) -> None:
    with redis_of_kind(kind) as server:
        async with store_on(server) as store:
            assert store.b.functions is True
            await make_room(store, "fn-room")
            assert await publish(store, "fn-room", 1) == 2  # seq 1 is participant_joined
            cli_all(server, "FUNCTION", "FLUSH")
            # Forgotten: the call is not run (no seq taken), the libraries are loaded again and it is rerun.
            assert await publish(store, "fn-room", 2) == 3
            assert await publish(store, "fn-room", 3) == 4


@pytest.mark.parametrize("kind", REDIS_KINDS)
async def test_calls_made_while_forgotten_scripts_are_reloaded_keep_their_order(kind: str) -> None:
    """A batch that finds its functions gone is rerun after the reload; the publishes made
    meanwhile (queued behind it, some in later loop ticks) follow it, in call order."""
    with redis_of_kind(kind) as server:
        async with store_on(server) as store:
            await make_room(store, "fn-order")
            assert await publish(store, "fn-order", 1) == 2
            cli_all(server, "FUNCTION", "FLUSH")
            calls = []
            for i in range(12):
                calls.append(asyncio.ensure_future(publish(store, "fn-order", 10 + i)))
                if i % 3 == 2:
                    await asyncio.sleep(0)  # the next ones in a later tick, while the first batch is out
            assert await asyncio.gather(*calls) == list(range(3, 15))
            assert await publish(store, "fn-order", 99) == 15


async def test_functions_are_loaded_again_after_a_restart() -> None:
    server = RedisServer().start()
    try:
        async with store_on(server) as store:
            await make_room(store, "fn-restart")
            await publish(store, "fn-restart", 1)
            server.stop()
            with pytest.raises(GatewayError) as err:  # the lean connection: Redis is down
                await publish(store, "fn-restart", 2)
            assert err.value.code is ErrorCode.UNAVAILABLE
            server.start()  # same port, empty: no room, no function
            for _ in range(int(50 * UNIT)):
                with contextlib.suppress(GatewayError):
                    await store.b.call(lambda p: p.ping())
                    break
                await asyncio.sleep(0.1)
            await make_room(store, "fn-restart")
            assert await publish(store, "fn-restart", 3) == 2
    finally:
        server.stop()


async def test_a_frozen_redis_fails_the_batch_in_flight_and_the_next_call_reconnects() -> None:
    """Redis stopped (SIGSTOP) with a publish in flight on the lean connection: that publish
    fails with `unavailable` once the reply is overdue, and after SIGCONT the next one is
    served on a new connection (the overdue one may have run meanwhile: a retry carries an
    idempotency key for that)."""
    server = RedisServer().start()
    try:
        async with store_on(server) as store:
            await make_room(store, "fn-frozen")
            before = await publish(store, "fn-frozen", 1)
            assert server.proc is not None
            os.kill(server.proc.pid, signal.SIGSTOP)
            try:
                with pytest.raises(GatewayError) as err:
                    await asyncio.wait_for(publish(store, "fn-frozen", 2), 10 * UNIT)
                assert err.value.code is ErrorCode.UNAVAILABLE  # at the reply's deadline, not a hang
            finally:
                os.kill(server.proc.pid, signal.SIGCONT)
            assert await publish(store, "fn-frozen", 3) > before
    finally:
        server.stop()


async def test_evalsha_fallback_reloads_scripts() -> None:
    """A Redis without Functions: the same scripts by EVALSHA, loaded again after SCRIPT FLUSH."""
    server = RedisServer().start()
    try:
        batcher = Batcher(make_client(server.url))
        batcher.functions = False
        store = RedisStore(batcher)
        await batcher.load_scripts()
        try:
            await make_room(store, "sha-room")
            assert server.cli("FUNCTION", "LIST") == ""
            assert await publish(store, "sha-room", 1) == 2
            server.cli("SCRIPT", "FLUSH")
            assert await publish(store, "sha-room", 2) == 3
        finally:
            await batcher.aclose()
    finally:
        server.stop()


async def test_an_error_reply_fails_only_its_own_call() -> None:
    server = RedisServer().start()
    try:
        async with store_on(server) as store:
            await make_room(store, "err-room")
            # One batch: a publish to a room that does not exist (a script 'err' reply), one that works.
            missing = asyncio.ensure_future(publish(store, "nope", 1))
            ok = asyncio.ensure_future(publish(store, "err-room", 1))
            with pytest.raises(GatewayError) as err:
                await missing
            assert err.value.code is ErrorCode.NOT_FOUND
            assert await ok == 2
    finally:
        server.stop()


@pytest.mark.parametrize("kind", REDIS_KINDS)
async def test_trims_stay_exact(kind: str) -> None:
    """Count bound: exactly the last `history` events are kept; byte bound: the kept frames'
    total never passes it and `hbytes` is their exact total; seq and entry ids unchanged."""
    with redis_of_kind(kind) as server:
        async with store_on(server, history=10, history_bytes=10**6) as store:
            await make_room(store, "trim-n")
            for i in range(25):
                await publish(store, "trim-n", i)
            entries = await store.b.call(lambda p: p.xrange(keys.stream("trim-n")))
            assert [e[0] for e in entries] == [f"{s}-0".encode() for s in range(17, 27)]
            hbytes = int(await store.b.call(lambda p: p.hget(keys.room("trim-n"), "hbytes")))
            assert hbytes == sum(len(e[1][b"f"]) for e in entries)
        async with store_on(server, history=1000, history_bytes=1500) as store:
            await make_room(store, "trim-b")
            for i in range(40):
                await publish(store, "trim-b", i, size=60)
                entries = await store.b.call(lambda p: p.xrange(keys.stream("trim-b")))
                total = sum(len(e[1][b"f"]) for e in entries)
                assert total <= 1500
                assert int(await store.b.call(lambda p: p.hget(keys.room("trim-b"), "hbytes"))) == total
            seqs = [int(e[0].split(b"-")[0]) for e in entries]
            assert seqs == list(range(seqs[0], 42)) and len(seqs) < 40
            assert int(await store.b.call(lambda p: p.hget(keys.room("trim-b"), "seq"))) == 41


async def test_every_event_keeps_the_room_from_being_abandoned() -> None:
    """emit writes updated_at with seq in its one HSET: the abandoned-room rule still sees the
    last event (a publish, a disconnect, a server API publish)."""
    server = RedisServer().start()
    try:
        async with store_on(server) as store:
            await make_room(store, "idle")
            await publish(store, "idle", 500)  # at 1500
            await store.disconnect(HOST, "disconnected", "gone", 2000)  # participant_disconnected at 2000
            assert await store.close_abandoned(idle_before_ms=1800, now_ms=9000) == []
            tail = event_tail("tick", None, {}, Service("game").sender(), 3000)
            assert await store.service_publish(Service("game"), "idle", tail, 3000) == 4
            assert await store.close_abandoned(idle_before_ms=2500, now_ms=9000) == []
            assert await store.close_abandoned(idle_before_ms=3001, now_ms=9000) == ["idle"]
    finally:
        server.stop()


async def test_a_user_without_function_rights_gets_evalsha() -> None:
    """A Redis whose ACL denies FUNCTION (as some managed services do): the scripts run by EVALSHA."""
    server = RedisServer().start()
    try:
        server.cli("ACL", "SETUSER", "app", "on", ">pw", "~*", "&*", "+@all", "-function")
        batcher = Batcher(make_client(f"redis://app:pw@127.0.0.1:{server.port}/0"))
        store = RedisStore(batcher)
        await batcher.load_scripts()
        try:
            assert batcher.functions is False
            await make_room(store, "acl-room")
            assert await publish(store, "acl-room", 1) == 2
        finally:
            await batcher.aclose()
    finally:
        server.stop()
