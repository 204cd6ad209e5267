"""Python client for roomcast gateways (protocol v1, docs/protocol.md).

It behaves like the browser client (clients/js/src/roomcast.js), with Python names and times
in seconds:

```python
from roomcast.client import RoomcastClient

async with RoomcastClient(urls=["ws://127.0.0.1:8765/ws"], device_file="~/.roomcast-device") as client:
    room = await client.create_room(game_type="trivia", game_data={"round": 1})
    room.on("event", lambda ev: print(ev["seq"], ev["event_type"], ev["payload"]))
    seq = await room.send("answer", {"choice": 2})
    async for event in room.events():
        ...
```

- **Requests** carry an `id` and are matched to their reply by `re`; a reply must come within
  `request_timeout` of the request going out, or `RoomcastError("timeout")` is raised. An `error`
  reply raises `RoomcastError(code, message, retry_after_ms)`. A request made while
  disconnected waits (at most `max_queue` of them) and goes out on the next socket, a room's
  requests once that room is resumed; `rate_limited` replies are sent again after
  `retry_after_ms` (the whole queue pauses meanwhile).
- **Heartbeat**: after `welcome` a `ping` goes out every `heartbeat_interval_ms`; a socket on
  which nothing arrived for `heartbeat_timeout_ms` is given up (reported as close 4000).
- **Reconnects**, each on the next URL of `urls` (failover), after a delay set by the close
  code (`client_state.close_policy`, from `CloseCode.reconnect_advice`): 1001, 1012, 4009
  at once; 1013, 4008 after a longer backoff ("busy"); 1008, 1009 never (the client is then
  closed and emits `error` with code `policy_violation`); anything else (and a socket that
  could not be opened) with exponential backoff and full jitter within `backoff` seconds.
- **Resume**: every socket says `hello` with the same `device_id`; every room is joined again
  with `since` = its last taken seq and its `epoch`, and each event is delivered once, in seq
  order. When the gateway cannot replay (`recovered: false`) the room takes the snapshot of
  `joined` and emits `reset`. A room the device is still in that this client does not know
  (listed in `welcome.rooms`, e.g. after a restart with the same `device_file`) is joined and
  announced with the client event `room`.
- **Sends whose reply was lost** with a socket are looked for in the replay (same socket id,
  same content): found, the send resolves with that event's seq; not found, it is sent again.
  Nothing is applied twice. Only when the room cannot be replayed does it fail with
  `disconnected` (it may or may not have taken effect).

Client events (`client.on(name, callback)`; a callback may be a coroutine function):
`state` (connecting, open, reconnecting, closed), `welcome` (the welcome message), `open` (no
argument), `close` (`{"code", "reason", "will_reconnect"}` for every socket that ends or could
not open), `reconnecting` (`{"attempt", "delay"}`: attempt 0 is the first retry after a working
connection), `error` (a `RoomcastError`), `room` (a `Room` adopted from `welcome.rooms`).
Room events: see `Room`.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import inspect
import logging
import os
import random
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidURI
from websockets.typing import Origin, Subprotocol
from websockets.uri import parse_uri

from . import SUBPROTOCOL, __version__
from .client_room import Callback, Emitter, Op, Room, RoomcastError, RoomEvents, bad
from .client_state import (
    ABNORMAL_CLOSURE,
    CLIENT_GAVE_UP,
    RoomReplica,
    backoff_delay,
    close_policy,
    valid_device_id,
)
from .protocol import MAX_GAME_TYPE, ROOM_ID_RE

__all__ = ["CLIENT_GAVE_UP", "Room", "RoomEvents", "RoomcastClient", "RoomcastError"]

log = logging.getLogger("roomcast.client")

State = Literal["connecting", "open", "reconnecting", "closed"]
ClientEventName = Literal["welcome", "open", "close", "reconnecting", "error", "state", "room"]
Msg = dict[str, Any]
TokenSource = str | Callable[[], str | Awaitable[str | None] | None] | None

MAX_ORPHANS: Final = 1000  # events kept for a room whose created/joined reply has not come yet
STABLE_SESSION: Final = 1.0  # seconds a welcomed socket must last for the backoff to start over
_MAX_INCOMING: Final = 32 * 1024 * 1024  # list_rooms of 500 rooms with 32 KiB of game_data each fits
_REQUEUED_KINDS: Final = frozenset({"join", "list", "leave"})  # safe to send again on a new socket
_HEARTBEAT: Final = "roomcast-heartbeat"


class _Conn:
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


def _load_device(device_id: str | None, device_file: str | os.PathLike[str] | None) -> tuple[str, str | None]:
    """(device id, device token) from the arguments or `device_file` (made there on first use)."""
    if device_id is not None:
        if not valid_device_id(device_id):
            raise ValueError("device_id must be 8-128 characters of [A-Za-z0-9._:-]")
        return device_id, None
    path = Path(device_file).expanduser() if device_file is not None else None
    if path is not None and path.is_file():
        lines = path.read_text(encoding="utf-8").split()
        if lines and valid_device_id(lines[0]):
            return lines[0], lines[1] if len(lines) > 1 else None
        log.warning("roomcast: ignoring the invalid device id in %s", path)
    new = f"py-{uuid.uuid4().hex}"
    if path is not None:
        _store_device(path, new, None)
    return new, None


def _store_device(path: Path, device_id: str, token: str | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(device_id + "\n" + (token + "\n" if token else ""), encoding="utf-8")
    tmp.replace(path)


class RoomcastClient(Emitter):
    """A connection to roomcast gateway replicas that reconnects and resumes its rooms by itself.

    `urls`: one or more `ws://…/ws` URLs (each new socket tries the next). `device_id`: this
    device's id; by default a random one, kept in `device_file` when given (with the gateway's
    device token, if it gives one) so the device stays the same across restarts. `token`: the
    hello token (an HS256 JWT), or a function (sync or async) called before every hello.
    `request_timeout` (seconds): reply timeout of every request, and the time a new socket has
    to be welcomed. `max_queue`: most requests waiting to go out. `backoff`: (first delay
    ceiling, largest delay) in seconds. Keyword-only: `origin` (handshake Origin header),
    `metadata`, `fingerprint` (hello fields), `device_token` (hello.device_token),
    `max_in_flight` (requests sent and not yet answered), `max_frame_bytes` (a larger request is
    refused with `too_large`; the gateway would close with 1009), `gap_timeout` (seconds a
    missing seq may be awaited before the room is replayed on the same socket).
    """

    _names = ("welcome", "open", "close", "reconnecting", "error", "state", "room")

    def __init__(
        self,
        urls: str | Sequence[str],
        device_id: str | None = None,
        device_file: str | os.PathLike[str] | None = None,
        token: TokenSource = None,
        request_timeout: float = 5.0,
        max_queue: int = 1000,
        backoff: tuple[float, float] = (0.1, 5.0),
        *,
        origin: str | None = None,
        metadata: Msg | None = None,
        fingerprint: str | None = None,
        device_token: str | None = None,
        max_in_flight: int = 64,
        max_frame_bytes: int = 65536,
        gap_timeout: float = 3.0,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._callback_tasks: set[asyncio.Task[Any]] = set()
        super().__init__(self._callback_tasks)
        self.urls = [urls] if isinstance(urls, str) else list(dict.fromkeys(urls))
        if not self.urls:
            raise ValueError("give at least one gateway URL")
        for url in self.urls:
            try:
                parse_uri(url)
            except InvalidURI as exc:
                raise ValueError(f"not a WebSocket URL: {url!r}") from exc
        base, cap = backoff
        if request_timeout <= 0 or max_queue < 1 or max_in_flight < 1 or not 0 < base <= cap:
            raise ValueError("need request_timeout > 0, max_queue >= 1, max_in_flight >= 1, 0 < backoff[0] <= backoff[1]")
        self._device_file = Path(device_file).expanduser() if device_file is not None and device_id is None else None
        self.device_id, stored_token = _load_device(device_id, device_file)
        self.device_token = device_token or stored_token
        self.request_timeout = float(request_timeout)
        self.max_queue = max_queue
        self.max_in_flight = max_in_flight
        self.max_frame_bytes = max_frame_bytes
        self.gap_timeout = gap_timeout
        self.backoff = (float(base), float(cap))
        self.origin = origin
        self.metadata = metadata
        self.fingerprint = fingerprint
        self._token = token
        self._random = rand
        self.welcome: Msg | None = None
        self.rooms: dict[str, Room] = {}
        self._state: State = "closed"
        self._stopped = True  # close() was called (or never connected): no reconnects
        self._runner: asyncio.Task[None] | None = None
        self._conn: _Conn | None = None
        self._url_index = -1
        self._attempt = 0
        self._next_id = 0
        self._op_seq = 0
        self._priority_seq = 0
        self._outbox: list[Op] = []  # requests not sent yet, in order
        self._paused_until = 0.0
        self._waiters: list[asyncio.Future[Msg]] = []
        self._joins: dict[str, asyncio.Future[Any]] = {}
        self._orphans: dict[str, list[Msg]] = {}

    # ------------------------------------------------------------ public

    @property
    def state(self) -> State:
        return self._state

    @property
    def socket_id(self) -> str | None:
        conn = self._live_conn()
        return conn.socket_id if conn is not None else None

    @property
    def url(self) -> str:
        """The URL of the current (or last tried) gateway."""
        return self.urls[max(self._url_index, 0)]

    @property
    def queued(self) -> int:
        """Requests waiting to go out (room requests included until their room is resumed)."""
        return sum(1 for op in self._outbox if not op.settled and not op.priority)

    def on(self, name: ClientEventName | str, callback: Callback) -> Self:
        return super().on(name, callback)

    async def connect(self, timeout: float | None = None) -> Msg:
        """Open the connection; returns the welcome of the first socket that gets one. It
        keeps trying meanwhile (backoff, next URL); `timeout` only limits this wait. Raises
        `RoomcastError` if the client is closed before (a close code or hello error that says
        retrying cannot help: `policy_violation`, `unauthorized`…)."""
        conn = self._live_conn()
        if self._state == "open" and conn is not None and self.welcome is not None:
            return self.welcome
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Msg] = loop.create_future()
        self._waiters.append(waiter)
        if self._stopped:
            self._stopped = False
            self._attempt = 0
            self._set_state("connecting")
            self._runner = loop.create_task(self._run(), name="roomcast-client")
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except TimeoutError:
            raise RoomcastError("timeout", f"not connected within {timeout}s (still trying)") from None
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            if waiter.done() and not waiter.cancelled():
                waiter.exception()

    async def close(self) -> None:
        """Close the socket (1000) and stop reconnecting. Waiting requests fail with `closed`.
        Rooms are not left: `connect()` again resumes them."""
        if self._stopped and self._runner is None:
            return
        self._stopped = True
        had_socket = self._conn is not None and not self._conn.done
        runner, self._runner = self._runner, None
        if runner is not None and not runner.done():
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        if had_socket:
            self._emit("close", {"code": 1000, "reason": "client closed", "will_reconnect": False})
        self._shutdown(RoomcastError("closed", "the client was closed"))

    async def __aenter__(self) -> RoomcastClient:
        await self.connect()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def create_room(self, game_type: str, room_id: str | None = None, max_players: int | None = None,
                          game_data: Msg | None = None, password: str | None = None) -> Room:
        """Create a room; this device joins it as host."""
        if not isinstance(game_type, str) or not 1 <= len(game_type) <= MAX_GAME_TYPE:
            raise bad(f"game_type must be a string of 1-{MAX_GAME_TYPE} characters")
        if room_id is not None and (not isinstance(room_id, str) or ROOM_ID_RE.fullmatch(room_id) is None):
            raise bad("room_id must be 1-64 characters of [A-Za-z0-9_-]")
        if game_data is not None and not isinstance(game_data, dict):
            raise bad("game_data must be a JSON object")
        msg: Msg = {"type": "create_room", "game_type": game_type}
        for key, value in (("room_id", room_id), ("max_players", max_players), ("game_data", game_data),
                           ("password", password)):
            if value is not None:
                msg[key] = value

        def adopt(conn: _Conn, reply: Msg) -> Room:
            user_id = (conn.welcome or {}).get("user_id")
            room = Room(self, RoomReplica.from_created(reply["room"], self.device_id, user_id), password, held=True)
            room._joined_conn = conn
            room._ready = True
            self._adopt(room)
            return room

        room: Room = await self._enqueue(msg, "create", on_reply=adopt)
        try:
            # room_created carries no epoch: a join on the same socket tells it (and makes no event).
            again: Msg = {"type": "join", "room_id": room.id}
            if password is not None:
                again["password"] = password  # needed on every join of a password room
            joined: Msg = await self._enqueue(again, "epoch")
            if not room.ended and room.epoch is None:
                room._replica.epoch = joined.get("epoch")
        except RoomcastError:
            pass  # the next resume's joined tells the epoch
        finally:
            # Deliver the room's events once the caller could add its listeners.
            asyncio.get_running_loop().call_soon(room._release)
        return room

    async def join(self, room_id: str, role: str = "player", password: str | None = None) -> Room:
        """Join a room as `player` or `spectator` (a room this client is in is returned as is)."""
        if not isinstance(room_id, str) or ROOM_ID_RE.fullmatch(room_id) is None:
            raise bad("room_id must be 1-64 characters of [A-Za-z0-9_-]")
        existing = self.rooms.get(room_id)
        if existing is not None and not existing.ended:
            return existing
        pending = self._joins.get(room_id)
        if pending is None:
            msg: Msg = {"type": "join", "room_id": room_id, "role": role}
            if password is not None:
                msg["password"] = password
            pending = self._enqueue(msg, "join", on_reply=lambda c, m: self._room_from_joined(c, m, password, role))
            self._joins[room_id] = pending
            pending.add_done_callback(lambda f: self._joins.pop(room_id, None) if self._joins.get(room_id) is f else None)
        room: Room = await asyncio.shield(pending)
        asyncio.get_running_loop().call_soon(room._release)
        return room

    async def list_rooms(self, game_type: str | None = None, status: str | None = None,
                         limit: int | None = None) -> list[Msg]:
        """Rooms open to join, newest first (rooms with a password are never listed)."""
        msg: Msg = {"type": "list_rooms"}
        for key, value in (("game_type", game_type), ("status", status), ("limit", limit)):
            if value is not None:
                msg[key] = value
        rooms: list[Msg] = await self._enqueue(msg, "list", on_reply=lambda _c, m: m.get("rooms", []))
        return rooms

    # -- hooks for tests and debugging

    def pause_heartbeat(self, paused: bool = True) -> None:
        """Stop (or restart) pinging on the current socket, and stop watching it for silence:
        the gateway then closes it with 4002. A new socket pings again."""
        if self._conn is not None:
            self._conn.heartbeat_paused = paused

    def abort_connection(self) -> None:
        """Drop the current TCP connection without a close frame, like a network failure."""
        if self._conn is not None:
            self._conn.abort()

    # ------------------------------------------------------------ requests

    def _enqueue(self, msg: Msg, kind: str, *, room: Room | None = None, key: tuple[str, ...] | None = None,
                 on_reply: Callable[[_Conn, Msg], Any] | None = None,
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

    def _live_conn(self) -> _Conn | None:
        """The current socket if it is welcomed and open."""
        conn = self._conn
        return conn if conn is not None and conn.welcome is not None and not conn.done else None

    def _is_ready(self, op: Op, conn: _Conn) -> bool:
        if op.room is None or op.kind == "resume":
            return True
        return op.room._ready and op.room._joined_conn is conn

    async def _writer(self, conn: _Conn) -> None:
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

    def _next_ready(self, conn: _Conn) -> Op | None:
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

    async def _transmit(self, conn: _Conn, op: Op) -> None:
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

    def _timed_out(self, conn: _Conn, op: Op) -> None:
        op.timer = None
        if conn.pending.get(op.id) is not op or op.timed_out:
            return
        op.timed_out = True
        if op.kind != "hello":
            conn.in_flight -= 1
        self._settle(op, RoomcastError("timeout", f"no reply to {op.msg.get('type')} within {self.request_timeout}s"))
        self._kick()

    def _on_reply(self, conn: _Conn, msg: Msg) -> None:
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

    # ------------------------------------------------------------ rooms

    def _adopt(self, room: Room) -> None:
        self.rooms[room.id] = room
        for event in self._orphans.pop(room.id, []):
            room._receive(event)

    def _room_from_joined(self, conn: _Conn, joined: Msg, password: str | None, role: str) -> Room:
        room = Room(self, RoomReplica.from_joined(joined, self.device_id, role), password, held=True)
        room._joined_conn = conn
        room._ready = True
        self._adopt(room)
        return room

    def _adopt_listed(self, entry: Msg) -> None:
        """welcome.rooms lists a room this client does not know (a restart): join it."""
        room_id = str(entry.get("room_id"))
        role = entry.get("role")
        msg: Msg = {"type": "join", "room_id": room_id}
        if role in ("player", "spectator"):
            msg["role"] = role

        def adopted(conn: _Conn, joined: Msg) -> Room:
            room = self._room_from_joined(conn, joined, None, str(role or "player"))
            self._emit("room", room)
            asyncio.get_running_loop().call_soon(room._release)
            return room

        future = self._enqueue(msg, "join", on_reply=adopted, priority=True)
        self._joins[room_id] = future

        def done(f: asyncio.Future[Any]) -> None:
            if self._joins.get(room_id) is f:
                del self._joins[room_id]
            if not f.cancelled():
                f.exception()  # nobody awaits it; a failure just means the room is gone

        future.add_done_callback(done)

    # ------------------------------------------------------------ the connection loop

    def _set_state(self, state: State) -> None:
        if state != self._state:
            self._state = state
            self._emit("state", state)

    def _listener_failed(self, name: str, exc: Exception) -> None:
        if name != "error" and self._handlers["error"]:
            self._emit("error", exc)
        else:
            log.error("roomcast: a %r listener failed", name, exc_info=exc)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not self._stopped:
                code, reason, welcomed_at = await self._session()
                if self._stopped:
                    return  # closed for good while on that socket
                # The backoff starts over only after a socket that worked for a while: a replica
                # that welcomes and at once closes (with a "now" code too) is not hammered.
                if welcomed_at is not None and loop.time() - welcomed_at >= STABLE_SESSION:
                    self._attempt = 0
                policy = close_policy(code)
                if policy == "never":
                    self._emit("close", {"code": code, "reason": reason, "will_reconnect": False})
                    self._fatal(RoomcastError("policy_violation",
                                              f"the gateway refused the connection ({code} {reason})",
                                              close_code=code))
                    return
                self._emit("close", {"code": code, "reason": reason, "will_reconnect": True})
                attempt = self._attempt
                self._attempt += 1
                delay = backoff_delay(policy, attempt, *self.backoff, self._random())
                self._set_state("reconnecting")
                self._emit("reconnecting", {"attempt": attempt, "delay": delay})
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must not leave a silently dead client
            log.exception("roomcast: the client loop failed")
            self._fatal(RoomcastError("internal", f"the client loop failed: {exc!r}"))

    async def _session(self) -> tuple[int, str, float | None]:
        """One socket, from opening it to its end: (close code, reason, welcomed at)."""
        self._url_index = (self._url_index + 1) % len(self.urls)
        url = self.urls[self._url_index]
        try:
            ws = await connect(
                url,
                origin=Origin(self.origin) if self.origin is not None else None,
                subprotocols=[Subprotocol(SUBPROTOCOL)],
                compression=None,
                ping_interval=None,  # the protocol's own ping is the heartbeat
                open_timeout=self.request_timeout,
                close_timeout=1.0,
                max_size=_MAX_INCOMING,
                user_agent_header=f"roomcast-python/{__version__}",
            )
        except Exception as exc:  # refused, reset, 503 while draining, handshake timeout…
            log.info("roomcast: cannot open %s: %s", url, exc)
            return ABNORMAL_CLOSURE, str(exc), None
        conn = _Conn(ws, url)
        self._conn = conn
        loop = asyncio.get_running_loop()
        conn.tasks = [loop.create_task(self._read(conn), name="roomcast-reader"),
                      loop.create_task(self._writer(conn), name="roomcast-writer")]
        try:
            await self._handshake(conn)
            code, reason = await conn.wait_ended()
            return code, reason, conn.welcomed_at
        finally:
            await self._finish(conn)

    async def _handshake(self, conn: _Conn) -> None:
        """hello until welcome (or the socket ends, or a reply says stop)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.request_timeout
        while not conn.done:
            hello: Msg = {"type": "hello", "device_id": self.device_id}
            try:
                value: object = self._token() if callable(self._token) else self._token
                if inspect.isawaitable(value):
                    value = await value
                token = value if isinstance(value, str) and value else None
            except Exception as exc:
                self._fatal(RoomcastError("unauthorized", f"the token function failed: {exc!r}"))
                return
            for key, value in (("token", token), ("device_token", self.device_token),
                               ("fingerprint", self.fingerprint), ("metadata", self.metadata)):
                if value is not None:
                    hello[key] = value
            future: asyncio.Future[Any] = loop.create_future()
            op = Op(0, hello, "hello", None, None, future)
            await self._transmit(conn, op)
            try:
                welcome: Msg = await asyncio.wait_for(asyncio.shield(future), max(0.0, deadline - loop.time()))
            except TimeoutError:
                conn.give_up("no welcome in time")
                return
            except RoomcastError as err:
                if err.code == "timeout":
                    conn.give_up("no welcome in time")
                    return
                if err.code == "rate_limited":
                    await asyncio.sleep((err.retry_after_ms or 1000) / 1000)
                    continue
                if err.code != "disconnected":
                    self._fatal(err)
                return
            finally:
                if future.done() and not future.cancelled():
                    future.exception()
            self._on_welcome(conn, welcome)
            return

    def _on_welcome(self, conn: _Conn, welcome: Msg) -> None:
        loop = asyncio.get_running_loop()
        conn.welcome = welcome
        conn.welcomed_at = loop.time()
        conn.socket_id = welcome.get("socket_id")
        conn.last_rx = loop.time()
        self.welcome = welcome
        self._paused_until = 0.0
        token = welcome.get("device_token")
        if isinstance(token, str) and token != self.device_token:
            self.device_token = token
            if self._device_file is not None:
                with contextlib.suppress(OSError):
                    _store_device(self._device_file, self.device_id, token)
        conn.tasks.append(loop.create_task(self._heartbeat(conn), name=_HEARTBEAT))
        listed = {str(r.get("room_id")): r for r in welcome.get("rooms") or [] if isinstance(r, dict)}
        for room in list(self.rooms.values()):
            if room._leaving and room.id not in listed:
                room._end("left")  # the leave took effect before the socket went
                continue
            room._rejoin()
        for room_id, entry in listed.items():
            if room_id not in self.rooms and room_id not in self._joins:
                self._adopt_listed(entry)
        self._emit("welcome", welcome)
        self._set_state("open")
        self._emit("open")
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(welcome)
        self._kick()

    async def _finish(self, conn: _Conn) -> None:
        """The socket is over: close it if needed, stop its tasks, and sort out its requests."""
        if not conn.done:
            with contextlib.suppress(Exception):
                await conn.ws.close(1000, "client closed")
        conn.wake.set()  # the writer sees the socket is done
        for task in conn.tasks:
            if task.get_name() == _HEARTBEAT:
                task.cancel()
        for task in conn.tasks:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(task, 2.0)
        if self._conn is conn:
            self._conn = None
        self._socket_ended(conn)

    def _socket_ended(self, conn: _Conn) -> None:
        self._orphans.clear()
        lost = RoomcastError("disconnected", "the connection was lost before the reply")
        for op in conn.pending.values():
            if op.timer is not None:
                op.timer.cancel()
                op.timer = None
            if op.settled or op.kind == "hello":
                continue
            if op.key is not None and op.room is not None and not op.room.ended:
                continue  # uncertain: the resume settles it (found in the replay, or sent again)
            if op.kind in _REQUEUED_KINDS:
                self._requeue(op)
            else:
                self._settle(op, lost)  # create, epoch, resume
        conn.pending.clear()
        for op in [o for o in self._outbox if o.kind == "resume"]:
            self._outbox.remove(op)  # the next welcome resumes every room again
            self._settle(op, lost)
        for room in self.rooms.values():
            room._socket_lost()

    async def _read(self, conn: _Conn) -> None:
        loop = asyncio.get_running_loop()
        try:
            async for raw in conn.ws:
                conn.last_rx = loop.time()
                try:
                    msg = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    self._emit("error", RoomcastError("bad_frame", "the gateway sent a frame that is not JSON"))
                    continue
                if isinstance(msg, dict) and conn is self._conn:
                    self._dispatch(conn, msg)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("roomcast: the reader failed")
            conn.abort()
        finally:
            rcvd = conn.ws.protocol.close_rcvd
            if conn.gave_up is not None:
                code, reason = conn.gave_up
            elif rcvd is not None:
                code, reason = rcvd.code, rcvd.reason
            else:
                code, reason = ABNORMAL_CLOSURE, ""
            if not conn.ended.done():
                conn.ended.set_result((code, reason))
            for op in list(conn.pending.values()):
                if op.kind == "hello":  # the handshake learns at once (the rest waits for _finish)
                    self._settle(op, RoomcastError("disconnected", f"socket closed ({code} {reason})",
                                                   close_code=code))
            conn.wake.set()

    def _dispatch(self, conn: _Conn, msg: Msg) -> None:
        kind = msg.get("type")
        if kind == "event":
            room_id = str(msg.get("room_id"))
            room = self.rooms.get(room_id)
            if room is not None:
                room._receive(msg)
            else:  # a room whose created/joined reply has not come yet
                early = self._orphans.setdefault(room_id, [])
                if len(early) < MAX_ORPHANS:
                    early.append(msg)
            return
        if msg.get("re") is not None:
            self._on_reply(conn, msg)
            return
        if kind == "error":
            self._emit("error", RoomcastError(str(msg.get("code", "internal")), str(msg.get("message", "error")),
                                              reply=msg))

    async def _heartbeat(self, conn: _Conn) -> None:
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

    def _fatal(self, err: RoomcastError) -> None:
        """No reconnect: state closed, `error` emitted, everything waiting fails with `err`."""
        self._stopped = True
        conn = self._conn
        if conn is not None and not conn.done:
            closing = asyncio.get_running_loop().create_task(conn.ws.close(1000, "client gave up"))
            self._callback_tasks.add(closing)  # a reference until it is done (the loop keeps only a weak one)
            closing.add_done_callback(self._callback_tasks.discard)
            self._emit("close", {"code": 1000, "reason": err.message, "will_reconnect": False})
        self._set_state("closed")
        self._emit("error", err)
        self._shutdown(err)

    def _shutdown(self, err: RoomcastError) -> None:
        """State closed; every waiting request and connect() fails with `err`."""
        self._set_state("closed")
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(err)
        outbox, self._outbox = self._outbox, []
        for op in outbox:
            self._settle(op, err)
        conn = self._conn
        if conn is not None:
            for op in list(conn.pending.values()):
                self._settle(op, err)
        for room in self.rooms.values():
            for op in room._inflight:
                self._settle(op, err)
            room._inflight.clear()
            room._socket_lost()
