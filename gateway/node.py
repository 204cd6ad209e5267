"""Node: this replica. Carries out each client message against the store, hub and bus.

The Node owns the local sessions, the hub and the periodic upkeep (hello and heartbeat
timeouts, presence flushes, store sweeps). It never touches a socket directly: sessions
write frames, the server shell feeds it messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from roomcast import protocol as p
from roomcast.device_tokens import DeviceTokens
from roomcast.errors import CloseCode, ErrorCode, GatewayError, ProtocolError
from roomcast.limiter import Limiter, MemoryLimiter
from roomcast.privacy import MetadataTooLarge, Privacy
from roomcast.room import new_join_code
from roomcast.settings import Settings
from roomcast.store import (
    REPLAY_CHUNK,
    Bus,
    Caller,
    ConnectionInfo,
    JoinResult,
    NewRoom,
    Presence,
    RoomOwner,
    RoomStore,
)

from . import auth, passwords
from .hub import Hub
from .metrics import Metrics
from .session import Session
from .webhooks import Webhooks

log = logging.getLogger("roomcast.node")


class HistorySource(Protocol):
    """Old event ranges from Postgres (roomcast.history_read.HistoryReader)."""

    async def events(self, room_id: str, after: int, upto: int) -> list[tuple[int, bytes]]: ...

    async def count(self, room_id: str, after: int, upto: int) -> int: ...


def now_ms() -> int:
    return int(time.time() * 1000)


class Node:
    def __init__(
        self,
        settings: Settings,
        store: RoomStore,
        bus: Bus,
        presence: Presence,
        metrics: Metrics,
        limiter: Limiter | None = None,
    ) -> None:
        self.settings = settings
        # hello.token checks; key files are read here, once (None: every token is refused).
        self.verifier = auth.Verifier.from_settings(settings)
        self.limiter: Limiter = limiter or MemoryLimiter()
        # Device tokens (DEVICE_TOKEN_SECRET): the backend sets `history` when Postgres is on.
        self.device_tokens = None if settings.device_token_secret is None else DeviceTokens(
            store, settings.device_token_secret, settings.require_device_token, settings.device_token_ttl_ms)
        self.privacy = Privacy(settings.privacy_hash_key, settings.privacy_encryption_keys, settings.ip_storage,
                               settings.user_agent_storage, persistent=settings.database_url is not None)
        # Backend webhooks (BACKEND_CONNECT_URL, BACKEND_JOIN_URL), if configured.
        self.webhooks = None if not (settings.backend_connect_url or settings.backend_join_url) else Webhooks(
            settings.backend_connect_url, settings.backend_join_url, settings.backend_webhook_secret,
            settings.backend_timeout_ms, metrics, settings.node_id)
        self.store = store
        self.bus = bus
        self.presence = presence
        self.metrics = metrics
        self.hub = Hub(bus, metrics, settings.log_events)
        self.hub.on_room_closed = self._room_closed
        self.sessions: dict[str, Session] = {}
        self.device_sockets: dict[str, int] = {}
        # Reads old event ranges from Postgres, when history is configured.
        self.history: HistorySource | None = None
        # Extra periodic work (each gets now_ms), run with the store sweep.
        self.upkeep_hooks: list[Callable[[int], Awaitable[object]]] = []
        self.ready = True  # false once draining
        # Monotonic time since which the event loop could read every socket: moved on after
        # a stall (process frozen, long pause), so data that waited unread counts as heard.
        self.readable_since = 0.0
        # Called with the stall's length (s) after one: the backend may re-register sockets.
        self.on_stall: Callable[[float], None] | None = None
        self.backend_ok = True  # false while a required backend (Redis) is unreachable
        self._tasks: set[asyncio.Task[Any]] = set()
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
        metrics.ready.set(1)

    # ------------------------------------------------------------ helpers

    def track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    def reply(self, session: Session, kind: str, message: dict[str, Any]) -> None:
        """Send a direct reply; its `re` is dropped when the request had no id."""
        if "re" in message and message["re"] is None:
            del message["re"]
        session.send(p.encode(message))
        counter = self.metrics.out_by_type.get(kind)
        if counter is not None:
            counter.inc()

    def error(self, session: Session, exc: GatewayError, re: Any = None, has_re: bool = False) -> None:
        if isinstance(exc, ProtocolError):
            re, has_re = exc.re, exc.has_re
        session.send(p.error_message(exc.code.value, exc.message, re=re, has_re=has_re,
                                     retry_after_ms=exc.retry_after_ms))
        self.metrics.errors_by_code[exc.code.value].inc()
        self.metrics.out_by_type["error"].inc()

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

    def _bucket(self, what: str, key: str) -> str:
        """Bucket names hold a hash, never a raw address or device id. Every replica must
        name a bucket alike, or the budget would not be shared: keyed with PRIVACY_HASH_KEY
        when it is set (the same on every replica); without it the privacy hash key is
        random per process, so the hash is unkeyed then."""
        if self.settings.privacy_hash_key:
            return f"{what}:{self.privacy.hash(key)[3:35]}"
        return f"{what}:{hashlib.sha256(b'roomcast-bucket:' + key.encode()).hexdigest()[:32]}"

    async def limited(self, what: str, key: str, rate: float, burst: int, cost: int = 1) -> int:
        """Take from a cluster-wide bucket; 0 if allowed, else ms to wait (counted)."""
        wait = await self.limiter.take(self._bucket(what, key), rate, burst, now_ms(), cost)
        if wait:
            self.metrics.rate_limited.labels(what).inc()
        return wait

    async def admit_address(self, session: Session) -> bool:
        """Per-address connection rate, checked as a socket opens (close 4008 beyond)."""
        if session.ip is None:
            return True
        s = self.settings
        rate = s.connect_rate_per_address
        return not await self.limited("connect_address", session.ip, rate, max(1, int(rate * 5)))

    def _release_device(self, device_id: str) -> None:
        left = self.device_sockets.get(device_id, 1) - 1
        if left > 0:
            self.device_sockets[device_id] = left
        else:
            self.device_sockets.pop(device_id, None)

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
        self.metrics.in_by_type[_TYPE_NAMES[type(msg)]].inc()
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

    # ------------------------------------------------------------ handshake

    async def _hello(self, session: Session, msg: p.Hello) -> None:
        s = self.settings
        if session.caller is not None:
            raise GatewayError(ErrorCode.BAD_REQUEST, "hello was already accepted on this socket")
        user_id = None
        if msg.token is not None:
            if self.verifier is None:
                raise GatewayError(ErrorCode.UNAUTHORIZED, "this gateway accepts no tokens")
            try:
                user_id = self.verifier.verify(msg.token, time.time())
            except auth.TokenError as exc:
                raise GatewayError(ErrorCode.UNAUTHORIZED, str(exc)) from None
        elif s.require_auth:
            raise GatewayError(ErrorCode.UNAUTHORIZED, "a token is required")
        device_id = msg.device_id
        tokens, grant = self.device_tokens, None  # grant: a new device token is due, issued last
        if tokens is not None:
            grant = await tokens.check(device_id, msg.device_token, msg.rotate_token)
        elif msg.rotate_token:
            raise GatewayError(ErrorCode.BAD_REQUEST, "this gateway issues no device tokens")
        if self.device_sockets.get(device_id, 0) >= s.max_connections_per_device:
            self.metrics.rate_limited.labels("connections_per_device").inc()
            session.close(CloseCode.RATE_LIMITED, "too many connections for this device")
            return
        if await self.limited("connect_device", device_id, s.connect_rate_per_device, 10):
            session.close(CloseCode.RATE_LIMITED, "this device connects too often")
            return
        if self.webhooks is not None:
            # The backend's word, after our own checks (a refused one never reaches it): it may
            # refuse (`unauthorized`), set the user id; no answer in time is `unavailable`.
            verdict = await self.webhooks.connect({
                "event": "connect", "device_id": device_id, "user_id": user_id, "room_id": None, "role": None,
                "socket_id": session.socket_id, "node": s.node_id, "ip": session.ip, "metadata": msg.metadata})
            if verdict.user_id is not None:
                user_id = verdict.user_id
            if session.closing:
                return
        caller = Caller(session.socket_id, device_id, user_id)
        # Reduce what we keep about the connection before it leaves this process.
        try:
            info = self.privacy.apply(ConnectionInfo(session.ip, session.user_agent, msg.fingerprint, msg.metadata),
                                      s.max_metadata_entries, s.max_metadata_bytes)
        except MetadataTooLarge as exc:
            raise GatewayError(ErrorCode.BAD_REQUEST, str(exc)) from None
        # Take the device's slot before awaiting the store, so two hellos racing on this
        # replica cannot both pass the per-device limit.
        self.device_sockets[device_id] = self.device_sockets.get(device_id, 0) + 1
        issued = None
        try:
            if tokens is not None and grant is not None:
                issued = await tokens.issue(device_id, grant)
            result = await self.store.connect(caller, info, now_ms())
        except BaseException:
            self._release_device(device_id)
            if tokens is not None and issued is not None:
                await tokens.revoke(device_id, issued)
            raise
        refused = result.open_sockets > s.max_connections_per_device
        if refused:
            # The cluster-wide count (other replicas included) is over the limit.
            self.metrics.rate_limited.labels("connections_per_device").inc()
            session.close(CloseCode.RATE_LIMITED, "too many connections for this device")
        if session.closing:
            self._release_device(device_id)
            if tokens is not None and issued is not None:
                await tokens.revoke(device_id, issued)  # it was never delivered
            # A refused socket was never a connection: history drops its row, and it is not
            # counted as one of the device's connections (reconnect_count).
            await self.store.disconnect(caller, "disconnected", "refused" if refused else "close", now_ms())
            return
        session.caller = caller
        session.device_id = device_id
        self.presence.touch(session.socket_id, now_ms())
        self.reply(session, "welcome", {
            "type": "welcome",
            "re": msg.id,
            "socket_id": session.socket_id,
            "device_id": device_id,
            "user_id": user_id,
            "reconnect_count": result.reconnect_count,
            "heartbeat_interval_ms": s.heartbeat_interval_ms,
            "heartbeat_timeout_ms": s.heartbeat_timeout_ms,
            "node": s.node_id,
            "rooms": [r.wire() for r in result.rooms],
            **({"device_token": issued.token} if issued is not None else {}),
        })

    async def _ping(self, session: Session, msg: p.Ping) -> None:
        self.reply(session, "pong", {"type": "pong", "re": msg.id, "t": now_ms()})

    # ------------------------------------------------------------ rooms

    def _check_room_budget(self, session: Session, room_id: str) -> None:
        if room_id not in session.rooms and len(session.rooms) >= self.settings.max_rooms_per_connection:
            raise GatewayError(ErrorCode.FORBIDDEN,
                               f"this socket is already in {len(session.rooms)} rooms (the limit)")

    async def _create_room(self, session: Session, msg: p.CreateRoom) -> None:
        caller = session.caller
        assert caller is not None
        if msg.room_id is not None:
            self._check_room_budget(session, msg.room_id)
        elif len(session.rooms) >= self.settings.max_rooms_per_connection:
            raise GatewayError(ErrorCode.FORBIDDEN, "this socket is in too many rooms")
        s = self.settings
        wait = await self.limited("room_create", caller.user_id or caller.device_id, s.room_create_rate, 10)
        if wait:
            raise GatewayError(ErrorCode.RATE_LIMITED, "creating rooms too fast", retry_after_ms=wait)
        await self._check_device_rooms(caller.device_id)
        if self.webhooks is not None:
            await self.webhooks.join({
                "event": "create_room", "device_id": caller.device_id, "user_id": caller.user_id,
                "room_id": msg.room_id, "role": "host", "socket_id": caller.socket_id, "node": s.node_id,
                "game_type": msg.game_type, "max_players": msg.max_players, "has_password": msg.password is not None})
        # Rooms that still exist, per client address and per user (anonymous: per device).
        owners: tuple[RoomOwner, ...] = (RoomOwner(self._bucket("rooms_user", caller.user_id or "device:" + caller.device_id),
                            s.max_rooms_per_user, "user" if caller.user_id else "device"),)
        if session.ip is not None:
            owners += (RoomOwner(self._bucket("rooms_address", session.ip), s.max_rooms_per_address, "address"),)
        pw_hash = None
        if msg.password is not None:
            pw_hash = await passwords.hash_async(msg.password)
        attempts = 1 if msg.room_id is not None else 8
        for attempt in range(attempts):
            room_id = msg.room_id or new_join_code()
            new = NewRoom(room_id, msg.game_type, msg.max_players or self.settings.default_max_players,
                          msg.game_data or {}, pw_hash, msg.spectators_can_send, generated=msg.room_id is None,
                          owners=owners)
            # Join the hub first so the host receives its own participant_joined (seq 1).
            await self.hub.begin_join(room_id, session)
            try:
                result = await self.store.create_room(caller, new, now_ms())
            except GatewayError as exc:
                await self.hub.abort_join(room_id, session)
                if exc.code is ErrorCode.CONFLICT and attempt + 1 < attempts:
                    continue  # a generated join code collided: draw another
                raise
            except BaseException:
                await self.hub.abort_join(room_id, session)
                raise
            session.rooms[room_id] = result.role
            self.reply(session, "room_created", {"type": "room_created", "re": msg.id, "room": result.room,
                                                 "epoch": result.epoch})
            await self.hub.finish_join(room_id, session, result.seq, result.epoch)
            return

    async def _join(self, session: Session, msg: p.Join) -> None:
        caller = session.caller
        assert caller is not None
        room_id = msg.room_id
        self._check_room_budget(session, room_id)
        s = self.settings
        wait = await self.limited("join", caller.device_id, s.join_rate, 20)
        if wait:
            raise GatewayError(ErrorCode.RATE_LIMITED, "joining too fast", retry_after_ms=wait)
        if room_id not in session.rooms:
            await self._check_device_rooms(caller.device_id, room_id)
        stored = await self.store.password_hash(room_id)
        if stored is not None:
            if msg.password is None:
                raise GatewayError(ErrorCode.FORBIDDEN, "this room needs a password")
            await self._check_password(caller.device_id, room_id, msg.password, stored)
        role = msg.role
        if self.webhooks is not None:
            # Every join asks, resumes included (the backend may have revoked access meanwhile).
            verdict = await self.webhooks.join({
                "event": "join", "device_id": caller.device_id, "user_id": caller.user_id, "room_id": room_id,
                "role": msg.role, "socket_id": caller.socket_id, "node": s.node_id, "since": msg.since})
            role = verdict.role or role
        await self.hub.begin_join(room_id, session)
        try:
            result = await self.store.join(caller, room_id, role, msg.since, msg.epoch, now_ms())
        except BaseException:
            if room_id not in session.rooms:
                await self.hub.abort_join(room_id, session)
            raise
        since = msg.since
        older: tuple[int, int] | None = None  # (after, upto): read from Postgres first
        if (since is not None and not result.recovered and self.history is not None and since < result.seq
                and (msg.epoch is None or msg.epoch == result.epoch)):
            # The store no longer keeps every event after `since`: history may have the older ones.
            upto = min(result.first_kept, result.seq + 1) - 1
            if await self._history_has(room_id, since, upto):
                older, result.recovered = (since, upto), True
                if not result.replay:  # (since > 0: the store gave no replay) the kept part follows
                    result.replay_rest_after = upto if upto < result.seq else None
        session.rooms[room_id] = result.role
        self.reply(session, "joined", {
            "type": "joined",
            "re": msg.id,
            "room": result.room,
            "participants": result.participants,
            "seq": result.seq,
            "epoch": result.epoch,
            "role": result.role,
            "recovered": result.recovered,
        })
        try:
            await self._send_replay(session, room_id, result, older)
        except Exception as exc:  # the store or history failed mid-replay: never leave a gap
            log.warning("replay of room %s to %s failed: %s", room_id, caller.socket_id, exc)
            session.close(CloseCode.SERVICE_RESTART, "replay failed; rejoin with since")
        await self.hub.finish_join(room_id, session, result.seq, result.epoch)

    async def _send_replay(self, session: Session, room_id: str, result: JoinResult,
                           older: tuple[int, int] | None) -> None:
        """Postgres' part (`older`), then the store's: `replay`, then the rest in chunks."""
        last = 0
        if older is not None:
            last = await self._replay(session, room_id, older[0], older[1], from_history=True)
        for frame in result.replay:
            if session.closing:
                return
            seq = p.event_seq_of(frame)
            if seq <= last:
                continue
            last = seq
            if not await session.send_paced(frame):
                return
        self.metrics.out_event.inc(len(result.replay))
        if result.replay_rest_after is not None and not session.closing:
            await self._replay(session, room_id, max(last, result.replay_rest_after), result.seq,
                               strict=result.recovered)

    async def _history_has(self, room_id: str, after: int, upto: int) -> bool:
        """Whether Postgres holds every event after < seq <= upto."""
        assert self.history is not None
        if upto <= after:
            return True
        try:
            return await self.history.count(room_id, after, upto) == upto - after
        except Exception as exc:
            log.warning("history of room %s unavailable for a replay: %s", room_id, exc)
            return False

    async def _replay(self, session: Session, room_id: str, after: int, upto: int, *,
                      from_history: bool = False, strict: bool = False) -> int:
        """Write the events after < seq <= upto to a joining socket, REPLAY_CHUNK at a time,
        each read only once the socket has taken the one before (send_paced): a reader at full
        speed gets all of it, one that does not read costs one chunk. Returns the last seq
        written. With `strict` (recovered), events trimmed from the store meanwhile are read
        from history, or the socket is closed (1012: rejoin) rather than skip them."""
        last = after
        for _ in range(upto - after + 1):  # bounded: every pass writes at least one event or stops
            if last >= upto or session.closing:
                break
            if from_history:
                assert self.history is not None
                chunk = await self.history.events(room_id, last, min(upto, last + REPLAY_CHUNK))
            else:
                chunk = await self.store.read_since(room_id, last, upto, REPLAY_CHUNK)
            if not chunk or chunk[0][0] != last + 1:
                if strict or from_history:
                    if not from_history and self.history is not None:
                        first = chunk[0][0] if chunk else upto + 1
                        if await self._history_has(room_id, last, first - 1):
                            last = await self._replay(session, room_id, last, first - 1, from_history=True)
                            continue
                    log.info("replay of room %s after seq %d is no longer kept; closing %s with 1012",
                             room_id, last, session.socket_id)
                    session.close(CloseCode.SERVICE_RESTART, "replay no longer available; rejoin with since")
                    break
                if not chunk:
                    break  # not recovered: what is kept is all we have
            for seq, frame in chunk:
                if seq <= last:
                    continue
                last = seq
                if not await session.send_paced(frame):
                    return last
            self.metrics.out_event.inc(len(chunk))
        return last

    async def _check_device_rooms(self, device_id: str, joining: str | None = None) -> None:
        limit = self.settings.max_rooms_per_device
        # A room the device is already in (rejoined from a new socket) takes no new place.
        if await self.store.device_room_count(device_id, joining) >= limit:
            raise GatewayError(ErrorCode.FORBIDDEN, f"this device is already in {limit} rooms (the limit)")

    async def _check_password(self, device_id: str, room_id: str, password: str, stored: str) -> None:
        """Brute force is limited per device and per room, cluster-wide: while either
        budget of failures is spent, attempts get `rate_limited` without being checked.

        Each attempt takes its token from both budgets *before* the (slow) check and gets
        it back if the password is right, so guesses sent all at once, over many sockets
        and replicas, are still no more than the budget allows."""
        s = self.settings
        budgets = (("password_device", device_id, s.password_fail_rate, 5),
                   ("password_room", room_id, s.room_password_fail_rate, 20))
        taken: list[tuple[str, float, int]] = []
        try:
            for what, key, rate, burst in budgets:
                bucket = self._bucket(what, key)
                wait = await self.limiter.take(bucket, rate, burst, now_ms())
                if wait:
                    self.metrics.rate_limited.labels(what).inc()
                    raise GatewayError(ErrorCode.RATE_LIMITED, "too many wrong passwords", retry_after_ms=wait)
                taken.append((bucket, rate, burst))
            right = await passwords.verify_async(password, stored)
        except GatewayError:
            for bucket, rate, burst in taken:  # not checked: the attempt costs nothing
                await self.limiter.take(bucket, rate, burst, now_ms(), cost=-1)
            raise
        if right:
            for bucket, rate, burst in taken:
                await self.limiter.take(bucket, rate, burst, now_ms(), cost=-1)
            return
        raise GatewayError(ErrorCode.FORBIDDEN, "wrong password")

    async def _leave(self, session: Session, msg: p.Leave) -> None:
        caller = session.caller
        assert caller is not None
        await self.store.leave(caller, msg.room_id, now_ms())
        if session.rooms.pop(msg.room_id, None) is not None:
            await self.hub.remove(msg.room_id, session)
        self.reply(session, "left", {"type": "left", "re": msg.id, "room_id": msg.room_id})

    def _local_member(self, session: Session, room_id: str) -> Caller:
        caller = session.caller
        assert caller is not None
        if room_id not in session.rooms:
            raise GatewayError(ErrorCode.NOT_MEMBER, f"join room {room_id!r} first")
        return caller

    async def _event(self, session: Session, msg: p.Event) -> None:
        caller = self._local_member(session, msg.room_id)
        tail = p.event_tail(msg.event_type, msg.action, msg.payload, caller.sender(), now_ms())
        seq = await self.store.publish(caller, msg.room_id, tail, now_ms(), msg.idempotency_key)
        self.reply(session, "ack", {"type": "ack", "re": msg.id, "seq": seq})

    async def _update_room(self, session: Session, msg: p.UpdateRoom) -> None:
        caller = self._local_member(session, msg.room_id)
        seq = await self.store.update_room(caller, msg.room_id, msg.status, msg.patch, now_ms())
        self.reply(session, "ack", {"type": "ack", "re": msg.id, "seq": seq})

    async def _close_room(self, session: Session, msg: p.CloseRoom) -> None:
        caller = self._local_member(session, msg.room_id)
        seq = await self.store.close_room(caller, msg.room_id, now_ms())
        self.reply(session, "ack", {"type": "ack", "re": msg.id, "seq": seq})

    async def _list_rooms(self, session: Session, msg: p.ListRooms) -> None:
        caller = session.caller
        assert caller is not None
        s = self.settings
        wait = await self.limited("list_rooms", caller.device_id, s.list_rooms_rate, s.list_rooms_burst)
        if wait:
            raise GatewayError(ErrorCode.RATE_LIMITED, "listing rooms too often", retry_after_ms=wait)
        page = await self.store.list_rooms(msg.game_type, msg.status, msg.limit, msg.cursor)
        after = page.next_after
        self.reply(session, "rooms", {"type": "rooms", "re": msg.id, "rooms": page.rooms,
                                      "next_cursor": None if after is None else p.list_cursor(*after)})

    def _room_closed(self, room_id: str, sessions: list[Session]) -> None:
        for session in sessions:
            session.rooms.pop(room_id, None)
        self.track(asyncio.get_running_loop().create_task(self.bus.unsubscribe(room_id)))

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
                if self.backend_ok:  # an outage is logged once, by the backend
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


_TYPE_NAMES: dict[type, str] = {
    p.Hello: "hello", p.Ping: "ping", p.CreateRoom: "create_room", p.Join: "join", p.Leave: "leave",
    p.Event: "event", p.UpdateRoom: "update_room", p.CloseRoom: "close_room", p.ListRooms: "list_rooms",
}
