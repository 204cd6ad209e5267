"""Node: this replica. Carries out each client message against the store, hub and bus.

The Node owns the local sessions, the hub and the periodic upkeep (hello and heartbeat
timeouts, presence flushes, store sweeps). It never touches a socket directly: sessions
write frames, the server shell feeds it messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from roomcast import protocol as p
from roomcast.bus.base import Bus
from roomcast.errors import CloseCode, ErrorCode, GatewayError, ProtocolError
from roomcast.limits.base import Limiter
from roomcast.presence.base import Presence
from roomcast.settings import Settings
from roomcast.store.base import RoomStore

from .handshake import Handshake
from .metrics import Metrics
from .node_base import HistorySource, NodeBase, now_ms
from .rooms import RoomCommands
from .session import Session

log = logging.getLogger("roomcast.node")

__all__ = ["HistorySource", "Node", "NodeBase", "now_ms"]


class Node(Handshake, RoomCommands):
    """This replica: one client frame in (`handle`), its reply and effects out."""

    def __init__(
        self,
        settings: Settings,
        store: RoomStore,
        bus: Bus,
        presence: Presence,
        metrics: Metrics,
        limiter: Limiter | None = None,
    ) -> None:
        super().__init__(settings, store, bus, presence, metrics, limiter)
        self.hub.on_room_closed = self._room_closed
        self._handlers: dict[type, Callable[[Session, Any], Awaitable[None]]] = {
            p.Ping: self._ping,
            p.CreateRoom: self._create_room,
            p.Join: self._join,
            p.Leave: self._leave,
            p.Event: self._event,
            p.UpdateRoom: self._update_room,
            p.CloseRoom: self._close_room,
            p.ListRooms: self._list_rooms,
        }

    # ------------------------------------------------------------ socket lifecycle

    def open_session(self, session: Session) -> int | None:
        """Admit a new socket; return a close code if it must be refused."""
        s = self.settings
        if not self.ready:
            return CloseCode.GOING_AWAY
        if s.allowed_origins and session.origin is not None and session.origin not in s.allowed_origins:
            return CloseCode.POLICY
        if s.max_connections and len(self.sessions) >= s.max_connections:
            return CloseCode.TRY_AGAIN_LATER
        self.sessions[session.socket_id] = session
        self.metrics.connections.set(len(self.sessions))
        self.metrics.connections_opened.inc()
        return None

    async def close_session(self, session: Session, code: int | None) -> None:
        """The socket is gone: leave the hub, and end its connection in the store."""
        if self.sessions.pop(session.socket_id, None) is None:
            return
        session.closing = True
        self.metrics.connections.set(len(self.sessions))
        self.metrics.closed(code)
        for room_id in list(session.rooms):
            await self.hub.remove(room_id, session)
        session.rooms.clear()
        caller = session.caller
        if caller is None:
            return
        self.presence.remove(caller.socket_id)
        self._release_device(caller.device_id)
        reason = "timeout" if session.close_status == "timeout" else "close"
        try:
            await self.store.disconnect(caller, session.close_status, reason, now_ms())
        except GatewayError as exc:
            # During an outage (logged once by the backend) the reaper ends it later, if Redis kept it.
            (log.warning if self.backend_ok else log.debug)(
                "could not record disconnect of %s: %s", caller.socket_id, exc.message)

    async def handle(self, session: Session, data: str | bytes) -> None:
        """One client frame. Never raises for bad input: it answers with an error."""
        now = time.monotonic()
        session.last_seen = now
        if session.caller is not None:
            # Any frame is a heartbeat, valid or not: presence agrees with our own timer.
            self.presence.touch(session.socket_id, now_ms(), session.device_id)
        # Every frame takes from the message rate, binary ones too (they get an error reply).
        wait_ms = session.bucket.take(now)
        if wait_ms:
            self.metrics.rate_limited.labels("messages").inc()
            self.error(session, GatewayError(ErrorCode.RATE_LIMITED, "too many messages", retry_after_ms=wait_ms),
                       *(p.peek_id(data) if isinstance(data, str) else (None, False)))
            return
        if isinstance(data, bytes):
            self.metrics.in_invalid.inc()
            self.error(session, GatewayError(ErrorCode.BAD_REQUEST, "binary frames are not supported; send text"))
            return
        try:
            msg = p.parse(data, self.settings.max_payload_depth)
        except ProtocolError as exc:
            self.metrics.in_invalid.inc()
            self.error(session, exc)
            return
        self.metrics.in_by_type[msg.TYPE].inc()
        try:
            if not self.backend_ok and type(msg) is not p.Ping:
                raise GatewayError(ErrorCode.UNAVAILABLE, "backend unavailable; retry shortly")
            if type(msg) is p.Hello:
                await self._hello(session, msg)
            elif session.caller is None:
                raise GatewayError(ErrorCode.HELLO_REQUIRED, "send hello first")
            else:
                await self._handlers[type(msg)](session, msg)
        except GatewayError as exc:
            if exc.code is ErrorCode.NOT_FOUND and getattr(msg, "room_id", None) in session.rooms:
                # A room this socket is in can only be missing if the backend lost it (Redis
                # restarted empty): until re-registration closes the socket with 1012, retry.
                exc = GatewayError(ErrorCode.UNAVAILABLE, "room state is being recovered; retry shortly")
            self.error(session, exc, msg.id, msg.id is not None)
        except Exception:
            log.exception("internal error handling %s", type(msg).__name__)
            self.error(session, GatewayError(ErrorCode.INTERNAL, "internal error"), msg.id, msg.id is not None)

    # ------------------------------------------------------------ upkeep

    def tick_interval(self) -> float:
        s = self.settings
        return min(1.0, max(0.05, min(s.hello_timeout_ms, s.heartbeat_timeout_ms) / 10_000))

    def check_timeouts(self, now: float) -> None:
        """Close sockets that sent no hello in time (4001) or went silent (4002)."""
        hello_s = self.settings.hello_timeout_ms / 1000
        silent_s = self.settings.heartbeat_timeout_ms / 1000
        readable = self.readable_since
        for session in list(self.sessions.values()):
            if session.closing:
                continue
            if session.caller is None:
                if now - max(session.opened, readable) > hello_s:
                    session.close(CloseCode.HELLO_TIMEOUT, "no hello in time")
            elif now - max(session.last_seen, readable) > silent_s:
                self.metrics.heartbeat_timeouts.inc()
                session.close(CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout", status="timeout")

    def stall_threshold(self, interval: float) -> float:
        """A late tick counts as a stall (timeouts restart) only beyond a quarter of the
        shortest timeout: a shorter stall cannot make a client that pings at the advised
        interval (5/12 of the timeout) look silent, and a merely busy loop must still close
        silent sockets."""
        s = self.settings
        return max(interval + 0.05, min(s.hello_timeout_ms, s.heartbeat_timeout_ms) / 4000)

    async def run_upkeep(self) -> None:
        """Background loop; runs until cancelled."""
        last_sweep = 0.0
        last_tick = time.monotonic()
        while True:
            interval = self.tick_interval()
            await asyncio.sleep(interval)
            now = time.monotonic()
            stalled = now - last_tick - interval
            if stalled > self.stall_threshold(interval):
                # The loop stalled: what clients sent meanwhile may still sit unread in the
                # socket buffers. Judge silence from now on, after the readers had their turn.
                log.warning("event loop stalled for %.1fs; heartbeat timeouts count from now", stalled)
                self.readable_since = now
                if self.on_stall is not None:
                    self.on_stall(stalled)
            else:
                self.check_timeouts(now)
            last_tick = now
            try:
                await self.presence.flush()
                if now - last_sweep >= 1.0:
                    last_sweep = now
                    await self.store.sweep(now_ms())
                    for hook in self.upkeep_hooks:
                        await hook(now_ms())
            except GatewayError as exc:
                # An outage (of Redis, or of one Redis Cluster shard) is logged once, by the backend.
                if self.backend_ok and all(self.redis_shards.values()):
                    log.warning("upkeep: %s", exc.message)

    @property
    def accepting(self) -> bool:
        """What /readyz reports: not draining and the backend is reachable."""
        return self.ready and self.backend_ok

    async def reregister(self) -> bool:
        """After a backend outage: put every local socket and its rooms back.

        A participant the reaper marked disconnected meanwhile comes back with
        `participant_reconnected`; a socket whose room no longer exists (the backend
        lost its state) is closed with 1012 so its client reconnects and reloads.
        """
        restored = lost = 0
        for session in list(self.sessions.values()):
            caller = session.caller
            if caller is None or session.closing:
                continue
            try:
                await self.store.restore(caller, now_ms())
                for room_id, role in list(session.rooms.items()):
                    try:
                        result = await self.store.join(caller, room_id, role, None, None, now_ms())
                    except GatewayError as exc:
                        if exc.code is ErrorCode.UNAVAILABLE:
                            raise
                        log.debug("room %s is gone after the outage (%s); closing %s with 1012",
                                  room_id, exc.code.value, caller.socket_id)
                        session.close(CloseCode.SERVICE_RESTART, "room state lost; reconnect and resume")
                        lost += 1
                        break
                    local = self.hub.rooms.get(room_id)
                    if local is not None and local.epoch is not None and result.epoch != local.epoch:
                        # Restored from history under a new epoch: seqs may repeat, so the
                        # client must rejoin and reload (it gets `recovered: false`).
                        log.debug("room %s came back under a new epoch; closing %s with 1012",
                                  room_id, caller.socket_id)
                        session.close(CloseCode.SERVICE_RESTART, "room restored under a new epoch; rejoin")
                        lost += 1
                        break
                restored += 1
            except GatewayError as exc:
                log.warning("re-registering sockets stopped (%s); will try again", exc.message)
                return False
        log.debug("re-registered %d sockets", restored)
        if lost:  # one line, however many sockets
            log.info("after the outage: %d sockets closed with 1012 (their room was lost or came back "
                     "under a new epoch); they reconnect and resume", lost)
        return True

    async def drain(self, window_s: float = 0.0) -> None:
        """Stop taking sockets (readiness false first), then close every open one.

        With a window (rolling updates), sockets are closed with 1012 spread evenly over
        it, so their clients do not all reconnect to the other replicas at once; without
        one, all are closed at once with 1001.
        """
        self.ready = False
        self.metrics.ready.set(0)
        self.metrics.draining.set(1)
        sessions = [s for s in self.sessions.values() if not s.closing]
        code = CloseCode.SERVICE_RESTART if window_s > 0 else CloseCode.GOING_AWAY
        reason = "service restart: reconnect and resume" if window_s > 0 else "server going away"
        loop = asyncio.get_running_loop()
        started = loop.time()
        n = len(sessions)
        self.metrics.drain_remaining.set(n)
        if n:
            log.info("draining %d sockets with %d over %.1fs", n, int(code), window_s)
        for i, session in enumerate(sessions):
            due = started + window_s * i / n
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            session.close(code, reason)
            self.metrics.drain_remaining.set(n - i - 1)
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        with contextlib.suppress(GatewayError):
            await self.presence.flush()  # what we owe the backend
        if self.webhooks is not None:
            await self.webhooks.close()
        self.metrics.drain_remaining.set(0)
