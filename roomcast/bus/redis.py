"""Bus over Redis pub/sub, with its own lean subscriber connection.

One TCP connection per replica carries SUBSCRIBE/UNSUBSCRIBE and the `message` pushes;
hiredis' C `Reader` parses the replies (it beat our own pure-Python RESP parser 4-9x in
`python -m loadtests.resp_ab`, docs/benchmarks.md), and each frame goes to the sink undecoded.

Health: every `probe_interval` the replica publishes to its own probe channel through
the command connection; if the probe does not come back through the subscription within
`probe_timeout`, the subscription is considered silently broken and is rebuilt. After
any reconnect every wanted room is resubscribed and `on_resubscribed` is told, so the
hub can fill the gap from the room streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import cast
from urllib.parse import unquote, urlparse

import hiredis

from roomcast.bus.base import EventSink
from roomcast.errors import ErrorCode, GatewayError
from roomcast.protocol import event_seq_of
from roomcast.redis import keys
from roomcast.redis.client import tls_context
from roomcast.redis.resp import RespError, encode_command

log = logging.getLogger("roomcast.bus")
_CONTROL = keys.CONTROL.encode()


def _drop(room_id: str, seq: int, frame: bytes) -> None:
    return None


class _Protocol(asyncio.Protocol):
    def __init__(self, bus: RedisBus) -> None:
        self.bus = bus
        self.reader = hiredis.Reader(protocolError=RespError, replyError=RespError)
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, so no isinstance check.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        sink = self.bus.sink
        while True:
            try:
                value = reader.gets()
            except RespError as exc:
                log.error("bad data on pub/sub connection: %s", exc)
                if self.transport is not None:
                    self.transport.close()
                return
            if value is False:
                return
            if type(value) is list and len(value) == 3 and value[0] == b"message":
                room_id = keys.room_of_channel(value[1])
                if room_id is not None:
                    frame = value[2]
                    sink(room_id, event_seq_of(frame), frame)
                elif value[1] == self.bus.probe_channel:
                    self.bus.probe_seen = time.monotonic()
                elif value[1] == _CONTROL and self.bus.on_control is not None:
                    self.bus.on_control(value[2])
            else:
                self.bus.control(value)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


class RedisBus:
    def __init__(
        self,
        url: str,
        node_id: str,
        publish: Callable[[str, bytes], Awaitable[object]],
        *,
        probe_interval: float = 1.0,
        probe_timeout: float = 3.0,
        subscribe_timeout: float = 3.0,
    ) -> None:
        u = urlparse(url)
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 6379
        self.username = unquote(u.username) if u.username else None
        self.password = unquote(u.password) if u.password else None
        self.ssl = tls_context(url)
        self.node_id = node_id
        self.probe_channel = keys.node_probe(node_id).encode()
        self._publish = publish
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self.subscribe_timeout = subscribe_timeout
        self.sink: EventSink = _drop
        self.wanted: set[str] = set()
        self._confirm: dict[bytes, list[asyncio.Future[None]]] = {}
        self._proto: _Protocol | None = None
        self.connected = asyncio.Event()
        self.probe_seen = 0.0
        self.reconnects = 0
        self.on_resubscribed: Callable[[list[str]], None] | None = None
        self.on_state: Callable[[bool], None] | None = None
        # The server API's control messages (keys.CONTROL), each as it arrives.
        self.on_control: Callable[[bytes], None] | None = None
        self._auth: asyncio.Future[None] | None = None
        self.last_error: object = "connection lost"  # why the last session ended, for on_state(False)

    def set_sink(self, sink: EventSink) -> None:
        self.sink = sink

    # ------------------------------------------------------------ subscriptions

    def control(self, value: object) -> None:
        auth = self._auth
        if auth is not None and not auth.done():
            # The first reply on a fresh connection answers AUTH.
            if isinstance(value, RespError):
                auth.set_exception(GatewayError(ErrorCode.UNAVAILABLE, f"pub/sub AUTH failed: {value}"))
            else:
                auth.set_result(None)
            return
        if type(value) is list and len(value) >= 2 and value[0] == b"subscribe":
            channel = value[1]
            assert isinstance(channel, bytes)
            for fut in self._confirm.pop(channel, []):
                if not fut.done():
                    fut.set_result(None)
        elif isinstance(value, RespError):
            log.error("pub/sub error reply: %s", value)

    def _send(self, *args: str | bytes) -> None:
        proto = self._proto
        if proto is None or proto.transport is None or not self.connected.is_set():
            raise GatewayError(ErrorCode.UNAVAILABLE, "redis pub/sub unavailable; retry")
        proto.transport.write(encode_command(*args))

    async def subscribe(self, room_id: str) -> None:
        """Returns once Redis confirmed the subscription (later publishes will arrive)."""
        self.wanted.add(room_id)
        channel = keys.channel(room_id).encode()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._confirm.setdefault(channel, []).append(fut)
        try:
            self._send(b"SUBSCRIBE", channel)
            await asyncio.wait_for(fut, self.subscribe_timeout)
        except (TimeoutError, GatewayError):
            self.wanted.discard(room_id)
            with contextlib.suppress(ValueError):
                self._confirm.get(channel, []).remove(fut)
            raise GatewayError(ErrorCode.UNAVAILABLE, "redis pub/sub unavailable; retry") from None

    async def unsubscribe(self, room_id: str) -> None:
        self.wanted.discard(room_id)
        with contextlib.suppress(GatewayError):
            self._send(b"UNSUBSCRIBE", keys.channel(room_id).encode())

    # ------------------------------------------------------------ connection loop

    async def run(self) -> None:
        """Keep the subscription alive until cancelled; reconnect with backoff."""
        delay = 0.1
        first = True
        while True:
            self.last_error = "connection lost"
            try:
                await self._session(first)
                delay = 0.1
            except (OSError, TimeoutError, GatewayError, RespError) as exc:
                # The gateway logs the outage once (on_state); each attempt only at debug.
                self.last_error = exc
                log.debug("pub/sub connection failed: %s", exc)
            finally:
                self.connected.clear()
                if self._proto is not None and self._proto.transport is not None:
                    self._proto.transport.close()
                self._proto = None
                for futs in self._confirm.values():
                    for fut in futs:
                        if not fut.done():
                            fut.set_exception(GatewayError(ErrorCode.UNAVAILABLE, "redis pub/sub lost"))
                self._confirm.clear()
                if self.on_state is not None:
                    self.on_state(False)
            first = False
            self.reconnects += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _session(self, first: bool) -> None:
        loop = asyncio.get_running_loop()
        _, proto = await asyncio.wait_for(
            loop.create_connection(lambda: _Protocol(self), self.host, self.port, ssl=self.ssl,
                                   server_hostname=self.host if self.ssl is not None else None),
            self.subscribe_timeout)
        self._proto = proto
        assert proto.transport is not None
        if self.password is not None:
            # The reply is checked: a refused AUTH would otherwise leave a connection on which
            # every SUBSCRIBE fails (NOAUTH) while the replica believes it is subscribed.
            self._auth = loop.create_future()
            auth = [b"AUTH", *([self.username.encode()] if self.username else []), self.password.encode()]
            proto.transport.write(encode_command(*auth))
            try:
                await asyncio.wait_for(asyncio.shield(self._auth), self.subscribe_timeout)
            finally:
                self._auth = None
        self.connected.set()
        # Resubscribe everything wanted (and the probe channel), then wait for confirmations.
        probe = asyncio.get_running_loop().create_future()
        self._confirm.setdefault(self.probe_channel, []).append(probe)
        self._send(b"SUBSCRIBE", self.probe_channel)
        control = loop.create_future()
        self._confirm.setdefault(_CONTROL, []).append(control)
        self._send(b"SUBSCRIBE", _CONTROL)
        rooms = sorted(self.wanted)
        futs = []
        for room_id in rooms:
            channel = keys.channel(room_id).encode()
            fut: asyncio.Future[None] = loop.create_future()
            self._confirm.setdefault(channel, []).append(fut)
            futs.append(fut)
            self._send(b"SUBSCRIBE", channel)
        await asyncio.wait_for(asyncio.gather(probe, control, *futs), self.subscribe_timeout + len(rooms) * 0.001)
        if not first:
            log.debug("pub/sub reconnected; resubscribed %d rooms", len(rooms))
        if self.on_state is not None:
            self.on_state(True)
        if not first and self.on_resubscribed is not None:
            self.on_resubscribed(rooms)
        self.probe_seen = time.monotonic()
        unanswered_since: float | None = None  # send time of the oldest probe not seen back
        while not proto.lost.done():
            now = time.monotonic()
            if unanswered_since is not None and self.probe_seen >= unanswered_since:
                unanswered_since = None
            if unanswered_since is not None and now - unanswered_since > self.probe_timeout:
                # Reported once by the gateway (on_state) as the reason of the outage.
                self.last_error = f"probe not seen for {now - unanswered_since:.1f}s"
                log.debug("pub/sub probe not seen for %.1fs: rebuilding the subscription", now - unanswered_since)
                return
            if unanswered_since is None:
                unanswered_since = now
            try:
                await self._publish(self.probe_channel.decode(), b"probe")
            except GatewayError:
                pass  # the command side is down; the missing probe will tell
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(proto.lost), self.probe_interval)
