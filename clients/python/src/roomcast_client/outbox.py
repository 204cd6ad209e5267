"""The client's connection half, one level down: the socket (`Conn`) and the request queue
(`Outbox`) that `RoomcastClient` builds on: requests wait in order, go out at most
`max_in_flight` unanswered at once, are matched to their reply by `re`, time out, and are
sent again after `rate_limited`. The session loop (hello, reconnects, resume) is in
`roomcast_client.client`; rooms talk to both through `roomcast_client.room.RoomHost`.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from .errors import RoomcastError
from .room import Link, Op, Room
from .state import CLIENT_GAVE_UP

log = logging.getLogger("roomcast.client")

Msg = dict[str, Any]


class Conn:
    """One WebSocket and what belongs to it: requests sent on it, its tasks, its timers."""

    def __init__(self, ws: ClientConnection, url: str) -> None:
        loop = asyncio.get_running_loop()
        self.ws = ws
        self.url = url
        self.pending: dict[int, Op] = {}
        self.in_flight = 0
        self.ended: asyncio.Future[tuple[int, str]] = loop.create_future()
        self.last_rx = loop.time()
        self.welcome: Msg | None = None
        self.welcomed_at: float | None = None
        self.socket_id: str | None = None
        self.wake = asyncio.Event()  # the writer has something to look at
        self.heartbeat_paused = False
        self.gave_up: tuple[int, str] | None = None
        self.tasks: list[asyncio.Task[None]] = []

    @property
    def done(self) -> bool:
        return self.ended.done()

    async def wait_ended(self) -> tuple[int, str]:
        """(close code, reason) once the socket has ended. Shielded: a waiter that is
        cancelled must not cancel `ended` for everyone else."""
        return await asyncio.shield(self.ended)

    def abort(self) -> None:
        """Drop the TCP connection without a close frame (as a network failure would)."""
        self.ws.transport.abort()

    def give_up(self, reason: str) -> None:
        """The client decides the socket is dead (silent link, no welcome in time)."""
        if not self.done:
            self.gave_up = (CLIENT_GAVE_UP, reason)
            self.abort()


class Outbox:
    """Requests waiting to go out, and those sent on the current socket (`Conn.pending`)."""

    def __init__(self, request_timeout: float, max_queue: int, max_in_flight: int, max_frame_bytes: int) -> None:
        self.request_timeout = float(request_timeout)
        self.max_queue = max_queue
        self.max_in_flight = max_in_flight
        self.max_frame_bytes = max_frame_bytes
        self._stopped = True  # close() was called (or never connected): no reconnects
        self._conn: Conn | None = None
        self._next_id = 0
        self._op_seq = 0
        self._priority_seq = 0
        self._outbox: list[Op] = []  # requests not sent yet, in order
        self._paused_until = 0.0

    @property
    def queued(self) -> int:
        """Requests waiting to go out (room requests included until their room is resumed)."""
        return sum(1 for op in self._outbox if not op.settled and not op.priority)

    def _enqueue(self, msg: Msg, kind: str, *, room: Room | None = None, key: tuple[str, ...] | None = None,
                 on_reply: Callable[[Link, Msg], Any] | None = None,
                 on_error: Callable[[RoomcastError], bool] | None = None,
                 priority: bool = False) -> asyncio.Future[Any]:
        """Queue a request; it goes out when the socket (and for room requests, the room) is
        ready. The future resolves with `on_reply(conn, reply)` (or the reply)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._stopped:
            future.set_exception(RoomcastError("closed", "not connected: call connect() first"))
            return future
        if room is not None and room.ended and kind != "resume":
            future.set_exception(room._over_error())
            return future
        size = len(orjson.dumps({**msg, "id": 2**53 - 1}))
        if self.max_frame_bytes and size > self.max_frame_bytes:
            future.set_exception(RoomcastError(
                "too_large", f"the message would be {size} bytes, over the {self.max_frame_bytes}-byte frame limit"))
            return future
        if not priority and self.queued >= self.max_queue:
            future.set_exception(RoomcastError("queue_full", f"{self.max_queue} requests are already waiting (max_queue)"))
            return future
        if priority:
            self._priority_seq += 1
            n = -(2**62) + self._priority_seq
        else:
            self._op_seq += 1
            n = self._op_seq
        self._insert(Op(n, msg, kind, room, key, future, on_reply, on_error, priority))
        self._kick()
        return future

    def _insert(self, op: Op) -> None:
        bisect.insort(self._outbox, op, key=lambda o: o.n)

    def _requeue(self, op: Op) -> None:
        """A request that must go again (lost with a socket, or rate limited)."""
        if op.settled:
            return
        if op.timer is not None:
            op.timer.cancel()
        op.timer, op.id, op.conn, op.socket_id = None, 0, None, None
        self._insert(op)
        self._kick()

    def _settle(self, op: Op, err: BaseException | None, value: Any = None) -> None:
        if op.timer is not None:
            op.timer.cancel()
            op.timer = None
        if op.future.done():
            return
        if err is not None:
            op.future.set_exception(err)
        else:
            op.future.set_result(value)

    def _kick(self) -> None:
        if self._conn is not None:
            self._conn.wake.set()

    def _live_conn(self) -> Conn | None:
        """The current socket if it is welcomed and open."""
        conn = self._conn
        return conn if conn is not None and conn.welcome is not None and not conn.done else None

    def _is_ready(self, op: Op, conn: Conn) -> bool:
        if op.room is None or op.kind == "resume":
            return True
        return op.room._ready and op.room._joined_conn is conn

    async def _writer(self, conn: Conn) -> None:
        """Send what is ready, in order, at most `max_in_flight` unanswered at once."""
        loop = asyncio.get_running_loop()
        while not conn.done:
            await conn.wake.wait()
            conn.wake.clear()
            while conn.welcome is not None and not conn.done and conn is self._conn:
                pause = self._paused_until - loop.time()
                if pause > 0:
                    loop.call_later(pause, conn.wake.set)
                    break
                if conn.in_flight >= self.max_in_flight:
                    break
                op = self._next_ready(conn)
                if op is None:
                    break
                await self._transmit(conn, op)

    def _next_ready(self, conn: Conn) -> Op | None:
        i = 0
        while i < len(self._outbox):
            op = self._outbox[i]
            if op.settled:
                del self._outbox[i]
                continue
            if self._is_ready(op, conn):
                del self._outbox[i]
                return op
            i += 1
        return None

    async def _transmit(self, conn: Conn, op: Op) -> None:
        self._next_id += 1
        op.id, op.conn, op.socket_id, op.timed_out = self._next_id, conn, conn.socket_id, False
        conn.pending[op.id] = op
        if op.kind != "hello":
            conn.in_flight += 1
        if op.room is not None and op.key is not None:
            op.room._inflight.append(op)
        op.timer = asyncio.get_running_loop().call_later(self.request_timeout, self._timed_out, conn, op)
        try:
            await conn.ws.send(orjson.dumps({**op.msg, "id": op.id}).decode())
        except ConnectionClosed:
            pass  # the socket's end decides what becomes of the request

    def _timed_out(self, conn: Conn, op: Op) -> None:
        op.timer = None
        if conn.pending.get(op.id) is not op or op.timed_out:
            return
        op.timed_out = True
        if op.kind != "hello":
            conn.in_flight -= 1
        self._settle(op, RoomcastError("timeout", f"no reply to {op.msg.get('type')} within {self.request_timeout}s"))
        self._kick()

    def _on_reply(self, conn: Conn, msg: Msg) -> None:
        op = conn.pending.pop(msg["re"], None) if isinstance(msg.get("re"), int) else None
        if op is None:
            return
        if op.timer is not None:
            op.timer.cancel()
            op.timer = None
        if not op.timed_out and op.kind != "hello":
            conn.in_flight -= 1
        room = op.room
        if room is not None and op.key is not None:
            room._drop_inflight(op)
        if msg.get("type") == "error":
            retry = msg.get("retry_after_ms")
            err = RoomcastError(str(msg.get("code", "internal")), str(msg.get("message", "error")),
                                retry if isinstance(retry, int) else None, reply=msg)
            if err.code == "rate_limited" and not op.settled and op.kind != "hello":
                # The gateway dropped the message: send it again after retry_after_ms.
                wait = (err.retry_after_ms if err.retry_after_ms is not None else 1000) / 1000
                self._paused_until = max(self._paused_until, asyncio.get_running_loop().time() + wait)
                self._requeue(op)
                return
            if op.on_error is not None and not op.settled and op.on_error(err):
                self._settle(op, None, None)
            else:
                self._settle(op, err)
            self._kick()
            return
        seq = msg.get("seq")
        if room is not None and op.key is not None and isinstance(seq, int) and not op.matched \
                and seq > room._last_accepted:
            room._acked.add(seq)
        if not op.settled:
            try:
                self._settle(op, None, op.on_reply(conn, msg) if op.on_reply is not None else msg)
            except Exception as exc:
                log.exception("roomcast: cannot apply the %s reply", msg.get("type"))
                self._settle(op, RoomcastError("internal", f"unexpected {msg.get('type')} reply: {exc!r}"))
        self._kick()

    def _drop_room_ops(self, room: Room, err: RoomcastError) -> None:
        for op in [o for o in self._outbox if o.room is room]:
            self._outbox.remove(op)
            self._settle(op, None if op.kind == "leave" else err)

    async def _heartbeat(self, conn: Conn) -> None:
        loop = asyncio.get_running_loop()
        welcome = conn.welcome or {}
        interval = max(0.01, int(welcome.get("heartbeat_interval_ms") or 25000) / 1000)
        silence = int(welcome.get("heartbeat_timeout_ms") or 60000) / 1000
        while not conn.done:
            await asyncio.sleep(interval)
            if conn.heartbeat_paused:
                continue
            if loop.time() - conn.last_rx > silence:
                log.info("roomcast: nothing from %s for %.1fs; giving the socket up", conn.url, silence)
                conn.give_up("no frame from the gateway within heartbeat_timeout_ms")
                return
            with contextlib.suppress(ConnectionClosed):
                await conn.ws.send('{"type":"ping"}')
