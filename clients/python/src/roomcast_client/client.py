"""Python client for roomcast gateways (protocol v1, docs/protocol.md): the connection half.

`RoomcastClient` owns the sockets: it opens one (on the next URL of `urls`), says hello,
reconnects after the delay the close code asks for, resumes every room on each new socket
and hands each room its event frames. Its request queue is `roomcast_client.outbox.Outbox`;
the rooms (`roomcast_client.room.Room`) reach it only through the `RoomHost` interface.
clients/python/README.md describes the behaviour (requests, heartbeat, reconnects, resume,
sends whose reply was lost) and the events.

Client events (`client.on(name, callback)`: state, welcome, open, close, reconnecting, error,
room) and room events: clients/python/README.md, "Events".
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import random
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidURI
from websockets.typing import Origin, Subprotocol
from websockets.uri import parse_uri

from .device import load_device, store_device
from .emitter import Callback, Emitter
from .errors import RoomcastError, bad
from .outbox import Conn, Outbox
from .protocol import CLIENT_VERSION, MAX_GAME_TYPE, ROOM_ID_RE, SUBPROTOCOL
from .room import Link, Op, Room, RoomEvents
from .state import ABNORMAL_CLOSURE, CLIENT_GAVE_UP, RoomReplica, backoff_delay, close_policy

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


class RoomcastClient(Outbox, Emitter):
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
        Emitter.__init__(self, self._callback_tasks)
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
        self.device_id, stored_token = load_device(device_id, device_file)
        self.device_token = device_token or stored_token
        Outbox.__init__(self, request_timeout, max_queue, max_in_flight, max_frame_bytes)
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
        self._runner: asyncio.Task[None] | None = None
        self._url_index = -1
        self._attempt = 0
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

        def adopt(conn: Link, reply: Msg) -> Room:
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

    # ------------------------------------------------------------ rooms

    def _forget_room(self, room: Room) -> None:
        """The room is over: its events are no longer routed to it (RoomHost)."""
        if self.rooms.get(room.id) is room:
            del self.rooms[room.id]
        self._orphans.pop(room.id, None)

    def _adopt(self, room: Room) -> None:
        self.rooms[room.id] = room
        for event in self._orphans.pop(room.id, []):
            room._receive(event)

    def _room_from_joined(self, conn: Link, joined: Msg, password: str | None, role: str) -> Room:
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

        def adopted(conn: Link, joined: Msg) -> Room:
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
                user_agent_header=f"roomcast-python/{CLIENT_VERSION}",
            )
        except Exception as exc:  # refused, reset, 503 while draining, handshake timeout…
            log.info("roomcast: cannot open %s: %s", url, exc)
            return ABNORMAL_CLOSURE, str(exc), None
        conn = Conn(ws, url)
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

    async def _handshake(self, conn: Conn) -> None:
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
                if err.code == "unavailable":
                    # The gateway's backend (Redis, or the game backend's connect webhook) cannot
                    # decide now: a new socket after the usual backoff, not a refusal.
                    conn.give_up(f"hello not answered for now: {err}")
                    return
                if err.code != "disconnected":
                    self._fatal(err)
                return
            finally:
                if future.done() and not future.cancelled():
                    future.exception()
            self._on_welcome(conn, welcome)
            return

    def _on_welcome(self, conn: Conn, welcome: Msg) -> None:
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
                    store_device(self._device_file, self.device_id, token)
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

    async def _finish(self, conn: Conn) -> None:
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

    def _socket_ended(self, conn: Conn) -> None:
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

    async def _read(self, conn: Conn) -> None:
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

    def _dispatch(self, conn: Conn, msg: Msg) -> None:
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
