"""The client's room half: `Room`, its event iterator, and the request record `Op`.

A `Room` takes the room's event frames from the client's reader, puts them in seq order
(dropping duplicates, holding back anything after a gap), delivers each once to the app,
and resumes the room on every new socket. It sends its requests through `RoomHost`, the
interface the connection half (`roomcast_client.client.RoomcastClient`) implements; this
module imports nothing of that half, not even for type checking.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol, Self

from .emitter import Callback, Emitter
from .errors import RoomcastError, bad
from .protocol import MAX_ACTION, MAX_EVENT_TYPE, RESERVED_EVENT_TYPES, SETTABLE_STATUSES
from .state import RoomReplica, backoff_delay, event_key, request_key

log = logging.getLogger("roomcast.client")

Msg = dict[str, Any]
RoomEventName = Literal["event", "reset", "closed"]

# Error replies after which a room cannot be resumed: it is over for this device.
ROOM_GONE: Final = frozenset({"not_found", "room_closed", "forbidden", "room_full"})


class Link(Protocol):
    """One socket of the client as the room half sees it. Rooms only compare links by
    identity (is the room joined on the current socket? was a request sent on it?); a reply
    callback may read the socket's `welcome`."""

    @property
    def welcome(self) -> Msg | None: ...


class RoomHost(Protocol):
    """What a `Room` needs from the connection half, and all it uses of it.

    Contract (every call is made on the event loop's thread and returns at once):

    - `_enqueue(msg, kind, room=…, key=…, on_reply=…, on_error=…, priority=…)` queues one
      request and returns its future. The request goes out once a socket is welcomed and,
      for a room request other than kind "resume", once that room is `_ready` and
      `_joined_conn` is that socket. `priority` requests go before every other one and do
      not count against `max_queue`. The future resolves with `on_reply(link, reply)` (or
      the reply itself), with None when `on_error(err)` returns True for an `error` reply, or
      fails with a `RoomcastError` (that reply, timeout, closed, queue_full, too_large,
      disconnected…); a request for an ended room fails at once with `room._over_error()`.
      A keyed request (`key`, from `state.request_key`) is appended to `room._inflight` when
      it is sent and removed from it (`room._drop_inflight`) when answered; if its socket is
      lost before the reply the host neither fails nor resends it: the room settles it when
      the replay shows its event, or hands it back with `_requeue`. An ack's seq the room has
      not taken yet is added to `room._acked`.
    - `_settle(op, err, value)` resolves `op.future` once (with `value`, or fails it with
      `err`); later calls do nothing. `_requeue(op)` puts an unsettled request back in the
      queue for the current or next socket. `_kick()` says a room became ready: look at
      the queue again.
    - `_live_conn()` is the current socket if it is welcomed and open, else None.
    - `_forget_room(room)` stops routing events to a room that is over; then
      `_drop_room_ops(room, err)` fails its requests still waiting to go (a leave succeeds).
    - `_listener_failed(name, exc)` reports a listener that raised; coroutine listeners'
      tasks are kept in `_callback_tasks`.
    - `max_queue`, `gap_timeout`, `backoff` and `_random` are the client's settings: the
      most events a room holds back or queues for `events()`, seconds a missing seq is
      awaited, the (base, cap) of the resume retry backoff, and its uniform [0, 1) source.
    """

    _callback_tasks: set[asyncio.Task[Any]]
    _random: Callable[[], float]

    @property
    def max_queue(self) -> int: ...

    @property
    def gap_timeout(self) -> float: ...

    @property
    def backoff(self) -> tuple[float, float]: ...

    def _enqueue(self, msg: Msg, kind: str, *, room: Room | None = None, key: tuple[str, ...] | None = None,
                 on_reply: Callable[[Link, Msg], Any] | None = None,
                 on_error: Callable[[RoomcastError], bool] | None = None,
                 priority: bool = False) -> asyncio.Future[Any]: ...

    def _settle(self, op: Op, err: BaseException | None, value: Any = None) -> None: ...

    def _requeue(self, op: Op) -> None: ...

    def _kick(self) -> None: ...

    def _live_conn(self) -> Link | None: ...

    def _forget_room(self, room: Room) -> None: ...

    def _drop_room_ops(self, room: Room, err: RoomcastError) -> None: ...

    def _listener_failed(self, name: str, exc: Exception) -> None: ...


def new_idempotency_key() -> str:
    """A fresh `idempotency_key` for one send: 128 random bits, 22 characters of [A-Za-z0-9_-]."""
    return secrets.token_urlsafe(16)


@dataclass(eq=False)
class Op:
    """One request: waiting in the client's outbox, or sent and not yet answered."""

    n: int  # order in the outbox (priority requests first)
    msg: Msg
    kind: str  # hello, event, update, close, leave, join, create, epoch, list, resume
    room: Room | None
    key: tuple[str, ...] | None  # content key of a request that makes one event
    future: asyncio.Future[Any]
    on_reply: Callable[[Link, Msg], Any] | None = None
    on_error: Callable[[RoomcastError], bool] | None = None
    priority: bool = False
    id: int = 0
    conn: Link | None = None
    socket_id: str | None = None
    timer: asyncio.TimerHandle | None = None
    timed_out: bool = False
    matched: bool = False

    @property
    def settled(self) -> bool:
        return self.future.done()


class RoomEvents:
    """`room.events()`: an async iterator over the room's events from the moment it was
    made, in order; it ends when the room ends (closed, left or lost). It holds at most
    `max_queue` events: a reader that falls further behind gets `RoomcastError("overflow")`.
    `close()` (or leaving an `async with`) stops it early."""

    def __init__(self, room: Room, limit: int) -> None:
        self._room = room
        self._limit = limit
        self._items: deque[Msg] = deque()
        self._end: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    def _push(self, item: Msg) -> None:
        if self._end is not None:
            return
        if len(self._items) >= self._limit:
            self._finish(RoomcastError("overflow", f"events() of room {self._room.id!r} fell {self._limit} behind"))
            return
        self._items.append(item)
        self._wake()

    def _finish(self, end: BaseException) -> None:
        if self._end is None:
            self._end = end
            self._room._streams.discard(self)
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def close(self) -> None:
        self._items.clear()
        self._finish(StopAsyncIteration())

    def __aiter__(self) -> RoomEvents:
        return self

    async def __anext__(self) -> Msg:
        while True:
            if self._items:
                return self._items.popleft()
            if self._end is not None:
                if isinstance(self._end, StopAsyncIteration):
                    raise StopAsyncIteration
                raise self._end
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    async def __aenter__(self) -> RoomEvents:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class Room(Emitter):
    """One room this client is in. Made by `client.create_room()`, `client.join()`, or by a
    (re)connect that finds the device still in a room (`client.on("room", …)`).

    Events: `event` (each event message, once, in seq order), `reset` (the new `state`, when a
    resume could not replay the missed events), `closed` (the `room_closed` event, or when the
    room was found closed or gone on a resume, a stand-in with `seq: None` and `reason`).
    Leaving emits nothing; `ended` is then true.
    """

    _names = ("event", "reset", "closed")

    def __init__(self, client: RoomHost, replica: RoomReplica, password: str | None, *, held: bool) -> None:
        super().__init__(client._callback_tasks)
        self._client = client
        self._replica = replica
        self._password = password
        self._last_accepted = replica.seq  # highest seq taken for delivery (dedupe, `since`)
        self._buffer: dict[int, Msg] = {}  # events after a gap, or that came while (re)joining
        self._deliver_queue: deque[tuple[str, Msg]] = deque()
        self._held = held  # a new room waits until its creator could add listeners
        self._pumping = False
        self._inflight: list[Op] = []  # keyed requests sent and not answered, in send order
        self._acked: set[int] = set()  # seqs acked before their event came
        self._joined_conn: Link | None = None  # the socket the room is joined on
        self._ready = False  # joined and resumed: its queued requests may go
        self._joining = False
        self._resume_target: int | None = None
        self._leaving = False
        self._ended: str | None = None
        self._gap_timer: asyncio.TimerHandle | None = None
        self._retry_timer: asyncio.TimerHandle | None = None
        self._retries = 0
        self._streams: set[RoomEvents] = set()

    # -- what the room is now

    @property
    def id(self) -> str:
        return self._replica.room_id

    @property
    def role(self) -> str:
        return self._replica.role

    @property
    def seq(self) -> int:
        """The seq of the last event delivered to the app."""
        return self._replica.seq

    @property
    def epoch(self) -> str | None:
        return self._replica.epoch

    @property
    def state(self) -> Msg:
        """The room object (protocol.md section 5), kept current by the delivered events."""
        return self._replica.state

    @property
    def participants(self) -> list[Msg]:
        return self._replica.participants

    @property
    def ended(self) -> bool:
        """True once the room was closed, left, or lost."""
        return self._ended is not None

    @property
    def ended_reason(self) -> str | None:
        """"left", "room_closed", or the error code that refused a resume."""
        return self._ended

    def __repr__(self) -> str:
        return f"<Room {self.id} role={self.role} seq={self.seq} epoch={self.epoch}>"

    def on(self, name: RoomEventName | str, callback: Callback) -> Self:
        return super().on(name, callback)

    # -- requests

    async def send(self, event_type: str, payload: Msg | None = None, action: str | None = None) -> int:
        """Send an event to the room; returns its seq. Waits in the client's queue (at most
        `max_queue`) while disconnected and goes out once the room is resumed."""
        if not isinstance(event_type, str) or not 1 <= len(event_type) <= MAX_EVENT_TYPE:
            raise bad(f"event_type must be a string of 1-{MAX_EVENT_TYPE} characters")
        if event_type in RESERVED_EVENT_TYPES:
            raise bad(f"event type {event_type!r} is reserved for the server")
        if payload is not None and not isinstance(payload, dict):
            raise bad("payload must be a JSON object")
        if action is not None and (not isinstance(action, str) or len(action) > MAX_ACTION):
            raise bad(f"action must be a string of at most {MAX_ACTION} characters")
        msg: Msg = {"type": "event", "room_id": self.id, "event_type": event_type}
        if action is not None:
            msg["action"] = action
        if payload is not None:
            msg["payload"] = payload
        # The same key goes with every resend of this send: the gateway applies it once.
        msg["idempotency_key"] = new_idempotency_key()
        seq: int = await self._client._enqueue(msg, "event", room=self, key=request_key(msg),
                                               on_reply=lambda _c, m: m["seq"])
        return seq

    async def update(self, status: str | None = None, patch: Msg | None = None) -> int:
        """Host only: set the status and/or merge-patch game_data (RFC 7386); returns the seq
        of the `state_change` event."""
        if status is None and patch is None:
            raise bad("update needs status or patch")
        if status is not None and status not in SETTABLE_STATUSES:
            raise bad(f"status must be one of {', '.join(SETTABLE_STATUSES)} (use close() to close)")
        if patch is not None and not isinstance(patch, dict):
            raise bad("patch must be a JSON object")
        msg: Msg = {"type": "update_room", "room_id": self.id}
        if status is not None:
            msg["status"] = status
        if patch is not None:
            msg["patch"] = patch
        seq: int = await self._client._enqueue(msg, "update", room=self, key=request_key(msg),
                                               on_reply=lambda _c, m: m["seq"])
        return seq

    async def close(self) -> int:
        """Host only: close the room for everyone; returns the seq of `room_closed`."""
        msg: Msg = {"type": "close_room", "room_id": self.id}
        seq: int = await self._client._enqueue(msg, "close", room=self, key=request_key(msg),
                                               on_reply=lambda _c, m: m["seq"])
        return seq

    async def leave(self) -> None:
        """Leave the room (the device gives up its place)."""
        if self._ended is not None:
            return
        self._leaving = True

        def gone(err: RoomcastError) -> bool:
            if err.code in ("not_member", "not_found"):
                self._end("left")
                return True
            return False

        await self._client._enqueue({"type": "leave", "room_id": self.id}, "leave", room=self,
                                    on_reply=lambda _c, _m: self._end("left"), on_error=gone)

    def events(self) -> RoomEvents:
        """The room's events from now on, as an async iterator (see `RoomEvents`)."""
        stream = RoomEvents(self, self._client.max_queue)
        if self._ended is None:
            self._streams.add(stream)
        else:
            stream.close()
        return stream

    def _over_error(self) -> RoomcastError:
        if self._ended == "left":
            return RoomcastError("not_member", f"left room {self.id!r}")
        return RoomcastError(self._ended or "closed", f"room {self.id!r} is over ({self._ended})")

    def _listener_failed(self, name: str, exc: Exception) -> None:
        self._client._listener_failed(f"room {name}", exc)

    # -- event intake (called by the client's reader, in frame order)

    def _receive(self, event: Msg) -> None:
        seq = event.get("seq")
        if self._ended is not None or not isinstance(seq, int):
            return
        if seq <= self._last_accepted:
            return  # a duplicate
        if self._joining or seq != self._last_accepted + 1:
            if len(self._buffer) >= self._client.max_queue:
                self._buffer.clear()  # far behind: ask for the replay instead of holding more
                self._rejoin()
                return
            self._buffer[seq] = event
            if not self._joining:
                self._arm_gap_timer()
            return
        self._take(event)
        self._drain_buffer()

    def _drain_buffer(self) -> None:
        for seq in [s for s in self._buffer if s <= self._last_accepted]:
            del self._buffer[seq]
        while (following := self._buffer.pop(self._last_accepted + 1, None)) is not None:
            self._take(following)
            if self._ended is not None:
                return
        if self._buffer and not self._joining:
            self._arm_gap_timer()
        else:
            self._clear_gap_timer()

    def _take(self, event: Msg) -> None:
        """Take the next event in order: settle the request that made it, queue its delivery."""
        seq: int = event["seq"]
        self._last_accepted = seq
        sender = event.get("from")
        if seq in self._acked:
            self._acked.discard(seq)  # its request was acked already
        elif self._inflight and isinstance(sender, dict) and sender.get("socket_id"):
            key = event_key(event)
            op = next((o for o in self._inflight if o.socket_id == sender["socket_id"] and o.key == key), None)
            if key is not None and op is not None:
                self._inflight.remove(op)
                op.matched = True
                self._client._settle(op, None, seq)
        self._deliver_queue.append(("event", event))
        if self._resume_target is not None and self._last_accepted >= self._resume_target:
            self._complete_resume()
        self._pump()

    def _pump(self) -> None:
        if self._held or self._pumping:
            return
        self._pumping = True
        try:
            while self._deliver_queue:
                kind, item = self._deliver_queue.popleft()
                if kind == "reset":
                    self._replica.reset(item)
                    self._emit("reset", self.state)
                else:
                    self._deliver(item)
        finally:
            self._pumping = False

    def _release(self) -> None:
        self._held = False
        self._pump()

    def _deliver(self, event: Msg) -> None:
        if not self._replica.apply_event(event):
            log.error("roomcast: room %s: event %s does not follow %s", self.id, event.get("seq"), self.seq)
            return
        self._emit("event", event)
        for stream in list(self._streams):
            stream._push(event)
        if event.get("event_type") == "room_closed":
            self._end("room_closed", event)

    def _arm_gap_timer(self) -> None:
        if self._gap_timer is not None or self._ended is not None:
            return
        self._gap_timer = asyncio.get_running_loop().call_later(self._client.gap_timeout, self._gap_expired)

    def _gap_expired(self) -> None:
        self._gap_timer = None
        # A missing seq that does not come: ask for the replay on this socket.
        if self._buffer and not self._joining and self._joined_conn is self._client._live_conn():
            log.warning("roomcast: room %s: seq %d missing; asking for the replay", self.id, self._last_accepted + 1)
            self._rejoin()

    def _clear_gap_timer(self) -> None:
        if self._gap_timer is not None:
            self._gap_timer.cancel()
        self._gap_timer = None

    # -- joins and resume

    def _rejoin(self) -> None:
        """Join again with `since` on the current socket: after a reconnect, or after a gap."""
        client = self._client
        conn = client._live_conn()
        if conn is None:
            return
        self._joining = True
        self._ready = False
        self._clear_gap_timer()
        msg = self._replica.join_message(self._last_accepted, self._password)
        future = client._enqueue(msg, "resume", room=self, priority=True,
                                 on_reply=lambda c, m: self._on_rejoined(m, c))

        def done(f: asyncio.Future[Any]) -> None:
            if f.cancelled() or f.exception() is None:
                return
            err = f.exception()
            if self._ended is not None or client._live_conn() is not conn:
                return  # a new socket resumes again
            if isinstance(err, RoomcastError) and err.code in ROOM_GONE:
                self._end(err.code)
                return
            # unavailable, internal, timeout: try again on this socket after a backoff delay
            base, cap = client.backoff
            delay = backoff_delay("backoff", min(self._retries, 6), base, cap, client._random())
            self._retries += 1
            self._retry_timer = asyncio.get_running_loop().call_later(max(delay, 0.05), retry)

        def retry() -> None:
            self._retry_timer = None
            if self._ended is None and client._live_conn() is conn:
                self._rejoin()

        future.add_done_callback(done)

    def _on_rejoined(self, joined: Msg, conn: Link) -> None:
        if self._ended is not None or conn is not self._client._live_conn():
            return
        self._joining = False
        self._retries = 0
        self._joined_conn = conn
        previous_epoch = self._replica.epoch
        self._replica.epoch = joined.get("epoch") or self._replica.epoch
        same_epoch = bool(previous_epoch) and joined.get("epoch") == previous_epoch
        if joined.get("role"):
            self._replica.role = joined["role"]
        if joined.get("recovered") is True:
            self._resume_target = int(joined["seq"])
            self._drain_buffer()
            if self._resume_target is not None and self._last_accepted >= self._resume_target:
                self._complete_resume()
            return
        # Not recoverable: the app reloads from the snapshot; delivery carries on from joined.seq.
        log.info("roomcast: room %s: not recovered; reset to seq %s", self.id, joined.get("seq"))
        self._last_accepted = int(joined["seq"])
        self._acked.clear()
        # Events taken but not yet delivered belong to the old view: the snapshot covers them.
        self._deliver_queue = deque(item for item in self._deliver_queue if item[0] != "event")
        self._deliver_queue.append(("reset", joined))
        for op in list(self._inflight):
            if op.conn is not conn:
                self._inflight.remove(op)
                if op.settled:
                    continue
                if same_epoch and op.msg.get("idempotency_key"):
                    # Same room, same epoch: the gateway still knows the key, so sending it again
                    # is safe (applied once, acked with the first seq if it was applied already).
                    self._client._requeue(op)
                    continue
                self._client._settle(op, RoomcastError(
                    "disconnected", "the connection was lost before the reply and the room could not be "
                                    "replayed: the request may or may not have taken effect"))
        self._resume_target = None
        self._ready = True
        self._pump()
        self._drain_buffer()
        self._client._kick()

    def _complete_resume(self) -> None:
        """Every event up to joined.seq is in: requests the gateway never got go again."""
        self._resume_target = None
        conn = self._client._live_conn()
        for op in [o for o in self._inflight if o.conn is not conn]:
            self._inflight.remove(op)
            if not op.settled:
                self._client._requeue(op)
        self._ready = True
        self._client._kick()

    def _drop_inflight(self, op: Op) -> None:
        if op in self._inflight:
            self._inflight.remove(op)

    def _socket_lost(self) -> None:
        self._ready = False
        self._joined_conn = None
        self._joining = False
        self._resume_target = None
        self._clear_gap_timer()
        if self._retry_timer is not None:
            self._retry_timer.cancel()
            self._retry_timer = None

    def _end(self, reason: str, event: Msg | None = None) -> None:
        """The room is over for this client: "left", "room_closed", or the error code that
        refused its resume."""
        if self._ended is not None:
            return
        self._ended = reason
        self._socket_lost()
        client = self._client
        client._forget_room(self)
        err = self._over_error()
        for op in list(self._inflight):
            self._inflight.remove(op)
            if op.kind == "close" and reason == "room_closed" and event is not None:
                client._settle(op, None, event["seq"])
            else:
                client._settle(op, err)
        client._drop_room_ops(self, err)
        for stream in list(self._streams):
            stream._finish(StopAsyncIteration())  # readers still get what they have not read
        if reason != "left":
            if event is None:
                if reason == "room_closed":
                    self.state["status"] = "closed"
                event = {"type": "event", "room_id": self.id, "seq": None, "event_type": "room_closed",
                         "action": None, "payload": None, "from": None, "ts": int(time.time() * 1000),
                         "reason": reason}
            self._emit("closed", event)
