"""A lean pipelined connection for the Batcher's hot commands (script calls) on one Redis.

Why not redis-py here: a py-spy profile of the publishing side (`python -m loadtests.emit_bench`,
docs/benchmarks.md "Redis cost per event (issue 13)") put redis-py's per-call machinery
(Pipeline objects, command packing through its Encoder, response callbacks, an asyncio timeout
per reply read, the connection pool) at about as much CPU as the send syscall itself; with this
connection the publishing process spent 170 instead of 234 µs of CPU per event (emit_bench, 1
publish per batch at 1,000/s, medians of 3 interleaved runs, load average 9-11). A batch made
only of FCALL/EVALSHA calls and plain commands given as their arguments (batch.RawCommand: the
connect path's SET, ZADD, HMGET, SADD...) is written here as one buffer (resp.encode_command) and
its replies are parsed by hiredis' C Reader, as the pub/sub bus does. Everything else stays on
redis-py. In cluster mode each primary's lane has such a connection of its own for the same kind
of batch; its MOVED/ASK/TRYAGAIN replies are turned into redis-py's exceptions and followed
through redis-py (batch.py, `_send`).

One batch in flight at a time (the Batcher's own rule), so the connection only counts replies.
A batch goes out either from a coroutine (`execute`, which connects first if needed) or, on an
open connection, from a plain callback (`send`: its replies are handed to a function, the
Batcher's fast path on one Redis).
A connection error or a reply that takes longer than `timeout` closes the connection and fails the
batch with redis-py's ConnectionError/TimeoutError (the Batcher turns those into `unavailable`);
the next batch reconnects. Error replies come back as redis-py ResponseError values, in place.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

import hiredis
from redis._parsers.base import BaseParser
from redis.asyncio.connection import parse_url
from redis.exceptions import AskError, MovedError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from roomcast.redis.client import tls_context
from roomcast.redis.client_redirects import Redirects
from roomcast.redis.resp import RespError, encode_command

# redis-py's own mapping of an error reply to its exception classes (MOVED -> MovedError...).
_parse_error: Callable[[str], Exception] = BaseParser.parse_error


class _Proto(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader(protocolError=RespError, replyError=ResponseError)
        self.transport: asyncio.Transport | None = None
        self.want = 0
        self.replies: list[Any] = []
        # The batch in flight (`LeanConnection.send`): called with its replies (or the failure) from here.
        self.on_done: Callable[[list[Any] | Exception], None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        replies = self.replies
        try:
            while True:
                value = reader.gets()
                if value is False:
                    break
                replies.append(value)
        except RespError as exc:
            self._fail(RedisConnectionError(f"bad reply from Redis: {exc}"))
            return
        if len(replies) < self.want:
            return
        on_done = self._take_on_done()
        if on_done is not None:
            self.replies = []
            on_done(replies)

    def _fail(self, exc: Exception) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        on_done = self._take_on_done()
        if on_done is not None:
            on_done(exc)

    def _take_on_done(self) -> Callable[[list[Any] | Exception], None] | None:
        """The `send` batch's callback, once: cleared with its timer before it is called."""
        on_done, self.on_done = self.on_done, None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        return on_done

    def timed_out(self, timeout: float) -> None:
        self.timer = None
        self._fail(RedisTimeoutError(f"no reply from Redis within {timeout}s"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}"))


class LeanConnection:
    """One connection to the Redis of `url` (redis:// or rediss://, password, user and db
    from the URL, as redis-py reads them; `usable` says whether a URL is one of those)."""

    @staticmethod
    def usable(url: str) -> bool:
        return url.startswith(("redis://", "rediss://"))

    def __init__(self, url: str, timeout: float = 2.0, connect_timeout: float = 1.0,
                 host: str | None = None, port: int | None = None) -> None:
        """`host`/`port`: another node than the URL's, with the URL's credentials and TLS
        settings (a Redis Cluster node, batch.py)."""
        kw = parse_url(url)  # redis-py's own reading of the URL (db also as ?db=, quoting)
        self.host = host or str(kw.get("host") or "127.0.0.1")
        self.port = port or int(kw.get("port") or 6379)
        self.username = str(kw["username"]) if kw.get("username") else None
        self.password = str(kw["password"]) if kw.get("password") else None
        self.db = int(kw.get("db") or 0)
        self.ssl = tls_context(url)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._proto: _Proto | None = None

    async def _connect(self) -> _Proto:
        loop = asyncio.get_running_loop()
        try:
            _, proto = await asyncio.wait_for(loop.create_connection(
                _Proto, self.host, self.port, ssl=self.ssl,
                server_hostname=self.host if self.ssl is not None else None), self.connect_timeout)
        except (OSError, TimeoutError) as exc:
            # " connecting to ": nothing was sent (batch._not_run reads this, as in redis-py's message).
            raise RedisConnectionError(f"Error connecting to {self.host}:{self.port}: {exc}") from exc
        hello: list[bytes] = []
        if self.password is not None:
            auth = [b"AUTH", *([self.username.encode()] if self.username else []), self.password.encode()]
            hello.append(encode_command(*auth))
        if self.db:
            hello.append(encode_command(b"SELECT", self.db))
        if hello:
            for reply in await self._roundtrip(proto, hello):
                if isinstance(reply, ResponseError):
                    proto._fail(RedisConnectionError(f"Redis refused the connection setup: {reply}"))
                    raise RedisConnectionError(f"Redis refused the connection setup: {reply}")
        return proto

    async def _roundtrip(self, proto: _Proto, commands: list[bytes]) -> list[Any]:
        """`send`, awaited: the replies, or redis-py's ConnectionError/TimeoutError raised."""
        done: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()

        def settle(out: list[Any] | Exception) -> None:
            if done.done():  # the caller was cancelled meanwhile
                return
            if isinstance(out, Exception):
                done.set_exception(out)
            else:
                done.set_result(out)

        self.send(proto, commands, settle)
        return await done

    def ready(self) -> _Proto | None:
        """The connection, if it is open and no batch is in flight on it (else None: `execute`
        connects first)."""
        proto = self._proto
        if proto is None or proto.closed or proto.on_done is not None:
            return None
        return proto

    def send(self, proto: _Proto, commands: list[bytes],
             on_done: Callable[[list[Any] | Exception], None]) -> None:
        """`execute` without a coroutine, on the connection `ready` gave: the commands go out
        now as one write, and `on_done` gets their replies (or, as `execute` would raise it,
        redis-py's ConnectionError/TimeoutError) from the connection's read callback. The reply's
        deadline is a timer handle, not asyncio.wait_for (a waiter future and callbacks per
        batch); `_roundtrip` awaits the same path (docs/benchmarks.md, "Session 7")."""
        proto.replies = []
        proto.want = len(commands)
        proto.on_done = on_done
        proto.timer = asyncio.get_running_loop().call_later(self.timeout, proto.timed_out, self.timeout)
        assert proto.transport is not None
        proto.transport.write(b"".join(commands))

    async def execute(self, commands: list[bytes]) -> list[Any]:
        """Send the encoded commands as one write; their replies, in order (error replies as
        ResponseError values). Raises redis-py's ConnectionError/TimeoutError if Redis fails."""
        proto = self._proto
        if proto is None or proto.closed:
            self._proto = None
            proto = self._proto = await self._connect()
        return await self._roundtrip(proto, commands)

    async def execute_like_redis_py(self, commands: list[tuple[Any, ...]], redirects: Redirects,
                                    node: str) -> list[Any]:
        """`execute` of these commands' arguments, answered as a redis-py pipeline would answer
        (Redis Cluster, batch.py): error replies become redis-py's exception types (MovedError,
        AskError, TryAgainError, ClusterDownError, NoScriptError...), MOVED/ASK counted for `node`."""
        out = await self.execute([encode_command(*args) for args in commands])
        for i, reply in enumerate(out):
            if isinstance(reply, ResponseError):
                exc = _parse_error(str(reply))
                if isinstance(exc, AskError):  # MovedError is a kind of AskError
                    redirects.seen("moved" if isinstance(exc, MovedError) else "ask", node)
                out[i] = exc
        return out

    def close(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.closed = True
            self._proto.transport.close()
        self._proto = None
