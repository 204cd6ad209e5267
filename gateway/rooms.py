"""Room commands of a welcomed socket: create_room, join (with its paced replay), leave,
event, update_room, close_room, list_rooms."""

from __future__ import annotations

import asyncio
import logging

from roomcast import protocol as p
from roomcast.errors import CloseCode, ErrorCode, GatewayError
from roomcast.redis import keys
from roomcast.room import new_join_code
from roomcast.store.base import REPLAY_CHUNK, Budget, Caller, JoinResult, NewRoom, RoomOwner

from . import passwords
from .node_base import NodeBase, now_ms
from .session import Session

log = logging.getLogger("roomcast.node")


class RoomCommands(NodeBase):
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
            # Written by finish_join, with the host's own participant_joined if it is held by then.
            reply = self.reply_frame("room_created", {"type": "room_created", "re": msg.id, "room": result.room,
                                                      "epoch": result.epoch})
            await self.hub.finish_join(room_id, session, result.seq, result.epoch, reply)
            return

    async def _join(self, session: Session, msg: p.Join) -> None:
        caller = session.caller
        assert caller is not None
        room_id = msg.room_id
        self._check_room_budget(session, room_id)
        s = self.settings
        # One round trip: the device's join budget and room count (one step on its slot) and
        # the room's password hash; checked in that order.
        rejoin = room_id in session.rooms
        check = await self.store.admit_join(caller.device_id, room_id, Budget(
            keys.device_limit(caller.device_id, "join"), s.join_rate, 20), not rejoin, now_ms())
        if check.wait_ms:
            self.metrics.rate_limited.labels("join").inc()
            raise GatewayError(ErrorCode.RATE_LIMITED, "joining too fast", retry_after_ms=check.wait_ms)
        if not rejoin and check.rooms >= s.max_rooms_per_device:
            raise GatewayError(ErrorCode.FORBIDDEN, f"this device is already in {s.max_rooms_per_device} rooms (the limit)")
        stored = check.password_hash
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
        reply = self.reply_frame("joined", {
            "type": "joined",
            "re": msg.id,
            "room": result.room,
            "participants": result.participants,
            "seq": result.seq,
            "epoch": result.epoch,
            "role": result.role,
            "recovered": result.recovered,
        })
        if older is None and not result.replay and result.replay_rest_after is None:
            # Nothing to replay (a fresh join): finish_join writes `joined` together with the
            # events held meanwhile (usually the joiner's own participant_joined), one write(2).
            await self.hub.finish_join(room_id, session, result.seq, result.epoch, reply)
            return
        session.write_frame(reply)
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

