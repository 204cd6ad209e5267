"""RoomStore on Redis: the cluster's shared state, one Lua script per room operation.

Key layout: roomcast/redis/keys.py. Cross-slot indexes (a device's rooms, the room index, the
prune queue) are updated right after the room's atomic step, in the same batch; they
are indexes only, so a crash between the two leaves at worst a stale index entry that
readers skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from roomcast import merge_patch
from roomcast.errors import ErrorCode, GatewayError
from roomcast.history.base import StoredRoom, device_uuid
from roomcast.protocol import event_tail
from roomcast.redis import keys
from roomcast.redis import scripts as lua
from roomcast.redis.batch import Batcher, cmd, raw
from roomcast.room import LEFT, new_epoch
from roomcast.store.base import (
    REPLAY_CHUNK,
    Budget,
    Caller,
    JoinCheck,
    JoinResult,
    NewRoom,
    RoomPage,
    Service,
    fail,
)
from roomcast.store.redis_codec import _check, _member, _pairs, _participants, _Retry, _room_wire, _s
from roomcast.store.redis_connections import RedisConnections
from roomcast.store.redis_index import RoomIndex

LIFECYCLE = keys.LIFECYCLE
log = logging.getLogger("roomcast.store")
# A room owner's index (keys.owned) outlives its last room creation by this much; rooms it
# lists that no longer exist are dropped from it when the owner reaches its limit.
OWNED_TTL_MS = 7 * 86_400_000


def _change(status: str | None, patch: dict[str, Any] | None) -> dict[str, Any]:
    """A state_change's payload: {status?, patch?}."""
    payload: dict[str, Any] = {}
    if status is not None:
        payload["status"] = status
    if patch is not None:
        payload["patch"] = patch
    return payload


class RedisStore(RedisConnections):
    def __init__(
        self,
        batcher: Batcher,
        *,
        history: int = 1000,
        room_ttl_ms: int = 3_600_000,
        connection_ttl_ms: int = 300_000,
        max_game_data_bytes: int = 32_768,
        lifecycle_maxlen: int = 1_000_000,
        history_mode: bool = False,
        max_participants: int = 1000,
        history_bytes: int = 131_072,
        max_rooms: int = 10_000,
        closed_room_ttl_ms: int | None = None,
        idempotency_window_ms: int = 600_000,
        idempotency_max_keys: int = 1000,
    ) -> None:
        self.b = batcher
        # Idempotency keys of a room (emit_once in redis_scripts): how long, and how many.
        self.idempotency_window_ms = idempotency_window_ms
        self.idempotency_max_keys = idempotency_max_keys
        self.max_participants = max_participants
        # In history mode (Postgres configured) streams are not trimmed and closed rooms
        # not expired here: the flusher does both once the rows are in Postgres.
        self.history_mode = history_mode
        # emit's trim bound, "<events>:<bytes>"; history mode "0:<bytes>": by bytes, and only
        # events the flusher has put in Postgres (it trims by count itself).
        self.history = f"0:{history_bytes}" if history_mode else f"{history}:{history_bytes}"
        self.room_ttl_ms = 0 if history_mode else room_ttl_ms
        self.max_rooms = max_rooms
        # How long a closed room still counts against MAX_ROOMS (its state is kept that long;
        # in history mode the flusher expires it once persisted, WEBSOCKET_ROOM_TTL later).
        self.closed_room_ttl_ms = room_ttl_ms if closed_room_ttl_ms is None else closed_room_ttl_ms
        self.connection_ttl_ms = connection_ttl_ms
        self.max_game_data_bytes = max_game_data_bytes
        self.lifecycle_maxlen = lifecycle_maxlen
        self.s_create = batcher.register(lua.CREATE)
        self.s_join = batcher.register(lua.JOIN)
        self.s_leave = batcher.register(lua.LEAVE)
        self.s_publish = batcher.register(lua.PUBLISH)
        self.s_update = batcher.register(lua.UPDATE)
        self.s_close = batcher.register(lua.CLOSE)
        self.s_disconnect = batcher.register(lua.DISCONNECT)
        self.s_connect = batcher.register(lua.CONNECT)
        self.s_admit_join = batcher.register(lua.ADMIT_JOIN)
        self.s_close_idle = batcher.register(lua.CLOSE_IDLE)
        self.s_restore = batcher.register(lua.RESTORE)
        self.index = RoomIndex(batcher)  # list_rooms
        self.s_device_token = batcher.register(lua.DEVICE_TOKEN_SET)
        self.s_svc_create = batcher.register(lua.SVC_CREATE)
        self.s_room_read = batcher.register(lua.ROOM_READ)
        self.s_svc_publish = batcher.register(lua.SVC_PUBLISH)
        self.s_svc_update = batcher.register(lua.SVC_UPDATE)
        self.s_svc_close = batcher.register(lua.SVC_CLOSE)
        self.s_kick = batcher.register(lua.KICK)
        # Looks a room up in Postgres (history mode): restore on join, conflict on create.
        self.stored_room: Callable[[str], Awaitable[StoredRoom | None]] | None = None

    @staticmethod
    def room_keys(room_id: str) -> list[str]:
        return [keys.room(room_id), keys.members(room_id), keys.participants(room_id), keys.stream(room_id),
                keys.idempotency(room_id), keys.idempotency_at(room_id)]

    def _at(self, name: str, entity: str) -> str:
        """The bucket of global key `name` that holds `entity` (the key itself on one Redis)."""
        return keys.spread(name, self.b.bucket(entity))

    def _dirty(self, room_id: str) -> None:
        """Tell the flusher this room has new events (same pipeline as the event)."""
        if self.history_mode:
            self.b.call(raw("SADD", self._at(keys.FLUSH_DIRTY, room_id), room_id))

    def _lifecycle(self, fields: dict[str, Any]) -> None:
        # Only the history flusher reads the lifecycle stream: without Postgres nothing
        # would ever consume (or trim) it, so nothing is written.
        if not self.history_mode:
            return
        # A device's records in one stream (their order kept), spread by device in a cluster.
        pairs = [x for kv in fields.items() for x in kv]
        self.b.call(raw("XADD", self._at(LIFECYCLE, str(fields["device_id"])), "MAXLEN", "~", self.lifecycle_maxlen,
                        "*", *pairs))

    # ------------------------------------------------------------ rooms

    def _check_game_data(self, data: bytes) -> None:
        if len(data) > self.max_game_data_bytes:
            raise fail(ErrorCode.BAD_REQUEST, f"game_data would exceed {self.max_game_data_bytes} bytes")

    def _join_result(self, reply: list[Any]) -> JoinResult:
        head = int(reply[1])
        room = _pairs(reply[5])
        state = int(reply[4])  # -1 no replay, 0 not every event after `since` is kept, 1 all are
        rest = int(reply[9]) if len(reply) > 9 else -1
        return JoinResult(
            room=_room_wire(room, head),
            participants=_participants(reply[6], LEFT),
            seq=head,
            epoch=_s(reply[2]),
            role=_s(reply[3]),
            recovered=state == 1,
            replay=[bytes(f) for f in reply[7]],
            replay_rest_after=None if rest < 0 else rest,
            first_kept=int(reply[8]) if len(reply) > 8 else head + 1,
        )

    async def create_room(self, caller: Caller, room: NewRoom, now_ms: int) -> JoinResult:
        if self.stored_room is not None:
            # History has this id? Reusing it would reuse its sequence numbers. Postgres is
            # not on the hot path: if it cannot be asked, a server-drawn join code goes ahead
            # (a collision with an old room is unlikely, and logged), while a client-chosen
            # id gets a retryable `unavailable` rather than risk losing its history.
            try:
                stored = await self._lookup(room.room_id)
            except GatewayError:
                if not room.generated:
                    raise
                log.warning("history unreachable: creating room %s without checking it was never used", room.room_id)
                stored = None
            if stored is not None:
                raise fail(ErrorCode.CONFLICT, f"room {room.room_id!r} already exists (in history)")
        data = orjson.dumps(room.game_data)
        self._check_game_data(data)
        reserved = await self._reserve(room, now_ms)
        try:
            reply = await self._create(caller, room, data, now_ms)
        except BaseException:
            if reserved:
                await self.b.call(cmd("zrem", self._at(keys.ROOMS_ALIVE, room.room_id), room.room_id))
            raise
        b = self.b
        for owner in room.owners:
            b.call(cmd("zadd", keys.owned(owner.key), {room.room_id: now_ms}))
            b.call(cmd("pexpire", keys.owned(owner.key), OWNED_TTL_MS))
        b.call(lambda p: p.sadd(keys.device_rooms(caller.device_id), room.room_id))
        await self.index.created(room, now_ms)
        return self._join_result(reply)

    async def _reserve(self, room: NewRoom, now_ms: int) -> bool:
        """Check the owners' room counts and take a place among MAX_ROOMS (True if this
        call added the room id to ws:rooms:alive). Rooms that no longer exist do not count."""
        b = self.b
        for owner in room.owners:
            mine = [_s(r) for r in await b.call(cmd("zrange", keys.owned(owner.key), 0, -1))]
            if len(mine) < owner.limit:
                continue
            exists = [b.call(cmd("exists", keys.room(r))) for r in mine]
            gone = [r for r, f in zip(mine, exists, strict=True) if not int(await f)]
            if gone:
                b.call(cmd("zrem", keys.owned(owner.key), *gone))
            if len(mine) - len(gone) >= owner.limit:
                raise fail(ErrorCode.FORBIDDEN, f"this {owner.what} already has {len(mine) - len(gone)} rooms "
                                                "(the limit); close some, or wait for closed ones to expire")
        # In a cluster the count is the sum over the buckets (one pipeline, split per node).
        swept = b.across(keys.ROOMS_ALIVE, "zremrangebyscore", "-inf", f"({now_ms}")
        added = b.call(cmd("zadd", self._at(keys.ROOMS_ALIVE, room.room_id), {room.room_id: "+inf"}, nx=True))
        counts = b.across(keys.ROOMS_ALIVE, "zcard")
        await swept
        added_now, total = int(await added), sum(int(c) for c in await counts)
        if added_now and total > self.max_rooms:
            await b.call(cmd("zrem", self._at(keys.ROOMS_ALIVE, room.room_id), room.room_id))
            raise fail(ErrorCode.UNAVAILABLE, f"the cluster holds {self.max_rooms} rooms (MAX_ROOMS); retry later")
        return bool(added_now)

    def _closed(self, room_id: str, now_ms: int) -> None:
        """A room closed: it counts against MAX_ROOMS until its state expires."""
        self.b.call(cmd("zadd", self._at(keys.ROOMS_ALIVE, room_id), {room_id: now_ms + self.closed_room_ttl_ms},
                         xx=True))

    async def _create(self, caller: Caller, room: NewRoom, data: bytes, now_ms: int) -> list[Any]:
        sender = orjson.dumps(caller.sender())
        fut = self.b.eval(self.s_create, self.room_keys(room.room_id), [
            room.room_id, room.game_type, room.max_players, data, now_ms, caller.device_id,
            caller.socket_id, caller.user_id or "", sender, room.password_hash or "", new_epoch(), self.history,
            "1" if room.spectators_can_send else "0"])
        # Index writes go in the same batch; the room index is only read by list_rooms.
        self._dirty(room.room_id)
        return _check(await fut)

    async def _lookup(self, room_id: str) -> StoredRoom | None:
        assert self.stored_room is not None
        return await self.stored_room(room_id)  # raises `unavailable` when history cannot be asked

    async def _restore(self, room_id: str, now_ms: int) -> bool:
        """Rebuild a room Redis lost from Postgres history (history mode). True if there
        is now a room to join; it keeps its seq, under a new epoch."""
        if self.stored_room is None:
            return False
        stored = await self._lookup(room_id)
        if stored is None:
            return False
        if stored.closed:
            raise fail(ErrorCode.ROOM_CLOSED, f"room {room_id!r} is closed")
        if stored.password_hash is None:
            # History does not say whether the room had a password: rebuilding it without
            # one would open a private room (and its history) to anyone.
            log.warning("room %s not restored from history: its password hash is not known", room_id)
            raise fail(ErrorCode.ROOM_CLOSED, f"room {room_id!r} was lost and cannot be restored; create a new room")
        members: list[Any] = []
        players = 0
        for device, user, role, joined in stored.members:
            members += [device, f"{role}|disconnected||{user or ''}|{joined}"]
            if role != "spectator":
                players += 1
        anonymous = not stored.host_device or stored.created_by == str(device_uuid(stored.host_device))
        creator_user = "" if anonymous else stored.created_by
        reply = _check(await self.b.eval(self.s_restore, self.room_keys(room_id), [
            room_id, stored.game_type, stored.status, stored.max_players, stored.game_data, stored.created_ms,
            stored.host_device, creator_user, stored.last_seq, new_epoch(), now_ms, players, stored.password_hash,
            *members]))
        if int(reply[1]):
            log.warning("room %s restored from history at seq %d (%s)", room_id, stored.last_seq, stored.status)
            await self.b.call(cmd("zadd", self._at(keys.ROOM_INDEX, room_id), {room_id: stored.created_ms}, nx=True))
            self.b.call(cmd("zadd", self._at(keys.ROOMS_ALIVE, room_id), {room_id: "+inf"}, nx=True))
            await self._reindex(room_id)
            for device, *_ in stored.members:
                self.b.call(cmd("sadd", keys.device_rooms(device), room_id))
                self.b.call(cmd("zadd", self._at(keys.DISCONNECTED, room_id), {f"{room_id}|{device}": now_ms}, nx=True))
        return True

    async def password_hash(self, room_id: str) -> str | None:
        status, value = await self.b.call(cmd("hmget", keys.room(room_id), "status", "password_hash"))
        if status is None and self.stored_room is not None and await self._restore(room_id, int(time.time() * 1000)):
            # A room Redis lost comes back from history with its password hash before the
            # join that found it missing is checked against it.
            value = await self.b.call(cmd("hget", keys.room(room_id), "password_hash"))
        return _s(value) if value else None

    async def admit_join(self, device_id: str, room_id: str, budget: Budget, count_rooms: bool,
                         now_ms: int) -> JoinCheck:
        # One batch: the device's step (budget, room count) and the room's password hash.
        device = self.b.eval(self.s_admit_join, [keys.device_rooms(device_id), budget.key],
                             [room_id, budget.rate, budget.burst, now_ms, "1" if count_rooms else "0"])
        room = self.b.call(raw("HMGET", keys.room(room_id), "status", "password_hash"))
        wait, rooms = (int(x) for x in await device)
        status, value = await room
        if wait:
            return JoinCheck(wait, -1, None)
        if status is None and self.stored_room is not None:
            return JoinCheck(0, rooms, await self.password_hash(room_id))  # lost by Redis: from history
        return JoinCheck(0, rooms, _s(value) if value else None)

    async def join(
        self, caller: Caller, room_id: str, role: str, since: int | None, epoch: str | None, now_ms: int
    ) -> JoinResult:
        try:
            return await self._join(caller, room_id, role, since, epoch, now_ms)
        except GatewayError as exc:
            if exc.code is not ErrorCode.NOT_FOUND or not await self._restore(room_id, now_ms):
                raise
        return await self._join(caller, room_id, role, since, epoch, now_ms)

    async def _join(
        self, caller: Caller, room_id: str, role: str, since: int | None, epoch: str | None, now_ms: int
    ) -> JoinResult:
        sender = orjson.dumps(caller.sender())
        b = self.b
        fut = b.eval(self.s_join, self.room_keys(room_id), [
            room_id, caller.device_id, caller.socket_id, caller.user_id or "", role,
            -1 if since is None else since, epoch or "", now_ms, sender, self.history, self.max_participants,
            REPLAY_CHUNK])
        # In the same batch as the join (not one round trip later): the room in the device's
        # rooms. Awaited: once `joined` is sent, every replica counts this room for the device
        # (MAX_ROOMS_PER_DEVICE) and lists it in welcome.rooms. A join that fails takes it back
        # if it added it; meanwhile a concurrent admit of the same device may count it (a
        # refusal at the limit, never one room too many), and welcome.rooms lists only rooms
        # the device is a participant of (_read_rooms).
        device_rooms = keys.device_rooms(caller.device_id)
        added = b.call(raw("SADD", device_rooms, room_id))
        self._dirty(room_id)
        try:
            reply = _check(await fut)
        except Exception:  # refused (an error reply, _Retry) or Redis failed: not a participant
            # An undo that fails too (Redis lost mid-join) leaves a room the device is not in:
            # welcome.rooms skips it; it counts for MAX_ROOMS_PER_DEVICE (a refusal too early,
            # never a room too many), where before a lost SADD let the device join one room too many.
            with contextlib.suppress(Exception):
                if int(await added):
                    await b.call(raw("SREM", device_rooms, room_id))
            raise
        await added
        if len(reply) <= 10 or int(reply[10]):
            # A participant already (disconnected, maybe): out of the prune queue. A fresh
            # join has no entry there (a stale one is harmless: prune checks the status).
            await b.call(raw("ZREM", self._at(keys.DISCONNECTED, room_id), f"{room_id}|{caller.device_id}"))
        return self._join_result(reply)

    async def leave(self, caller: Caller, room_id: str, now_ms: int) -> None:
        await self._leave(room_id, caller.device_id, "leave", orjson.dumps(caller.sender()), now_ms, False,
                          caller.socket_id)

    async def _leave(self, room_id: str, device_id: str, reason: str, sender: bytes, now_ms: int,
                     only_if_disconnected: bool, socket_id: str = "") -> bool:
        fut = self.b.eval(self.s_leave, self.room_keys(room_id), [
            room_id, device_id, now_ms, sender, reason, self.history, "1" if only_if_disconnected else "0",
            socket_id])
        self._dirty(room_id)
        reply = _check(await fut)
        b = self.b
        if int(reply[1]):
            b.call(lambda p: p.srem(keys.device_rooms(device_id), room_id))
        await b.call(lambda p: p.zrem(self._at(keys.DISCONNECTED, room_id), f"{room_id}|{device_id}"))
        return bool(int(reply[1]))

    async def prune(self, room_id: str, device_id: str, now_ms: int) -> bool:
        """Remove a participant that is still disconnected (`participant_left`, reason `pruned`)."""
        try:
            return await self._leave(room_id, device_id, "pruned", b"null", now_ms, True)
        except GatewayError as exc:
            if exc.code in (ErrorCode.NOT_FOUND, ErrorCode.NOT_MEMBER):
                await self.b.call(lambda p: p.zrem(self._at(keys.DISCONNECTED, room_id), f"{room_id}|{device_id}"))
                return False
            raise

    async def publish(self, caller: Caller, room_id: str, tail: bytes, now_ms: int,
                      idempotency_key: str | None = None) -> int:
        # The key is checked in the same script that gives the seq (emit_once): no extra round trip.
        fut = self.b.eval(self.s_publish, self.room_keys(room_id), [
            room_id, caller.device_id, tail, now_ms, self.history, caller.socket_id, idempotency_key or "",
            self.idempotency_window_ms, self.idempotency_max_keys])
        self._dirty(room_id)
        return int(_check(await fut)[1])

    async def update_room(
        self, caller: Caller, room_id: str, status: str | None, patch: dict[str, Any] | None, now_ms: int
    ) -> int:
        tail = event_tail("state_change", None, _change(status, patch), caller.sender(), now_ms)
        return await self._update(room_id, status, patch, lambda data, ver: self.b.eval(
            self.s_update, self.room_keys(room_id), [
                room_id, caller.device_id, tail, now_ms, self.history, status or "", data, ver,
                self.max_game_data_bytes, caller.socket_id]))

    async def _update(self, room_id: str, status: str | None, patch: dict[str, Any] | None,
                      step: Callable[[bytes, bytes], Awaitable[Any]]) -> int:
        """An update's atomic `step(game_data, expected gd_ver)` (UPDATE or SVC_UPDATE), after
        merging the patch into the room's current game_data; again if another update won the
        race in between. Returns the state_change's seq."""
        for _ in range(16):
            data, ver = b"", b""
            if patch is not None:
                gd, ver_raw = await self.b.call(cmd("hmget", keys.room(room_id), "game_data", "gd_ver"))
                if gd is None:
                    raise fail(ErrorCode.NOT_FOUND, "no such room")
                data = orjson.dumps(merge_patch.apply(orjson.loads(gd), patch))
                ver = ver_raw
            try:
                fut = step(data, ver)
                self._dirty(room_id)
                reply = _check(await fut)
                if status is not None and len(reply) > 2 and _s(reply[2]) != status:
                    await self._reindex(room_id)
            except _Retry:
                continue  # another update won the race: re-read and re-apply
            except GatewayError as exc:
                if exc.code is ErrorCode.BAD_REQUEST:
                    self._check_game_data(data)  # the script found it too large: say by how much
                raise
            return int(reply[1])
        raise fail(ErrorCode.UNAVAILABLE, "room is being updated concurrently; retry")

    async def close_room(self, caller: Caller, room_id: str, now_ms: int) -> int:
        tail = event_tail("room_closed", None, None, caller.sender(), now_ms)
        fut = self.b.eval(self.s_close, self.room_keys(room_id), [
            room_id, caller.device_id, tail, now_ms, self.history, self.room_ttl_ms, caller.socket_id])
        self._dirty(room_id)
        reply = _check(await fut)
        self._closed(room_id, now_ms)
        index_writes = []
        for dev in reply[2]:
            d = _s(dev)
            index_writes.append(self.b.call(cmd("srem", keys.device_rooms(d), room_id)))
            index_writes.append(self.b.call(cmd("zrem", self._at(keys.DISCONNECTED, room_id), f"{room_id}|{d}")))
        # The room keeps its place in the room index (created_at): list_rooms is newest-created first.
        await asyncio.gather(*index_writes, self._reindex(room_id))
        return int(reply[1])

    async def close_abandoned(self, idle_before_ms: int, now_ms: int, limit: int = 1000) -> list[str]:
        """Close rooms with no event since `idle_before_ms` and no connected member
        (`room_closed`, reason `abandoned`). Returns the rooms closed. In a cluster the
        oldest `limit` of every bucket of the room index are looked at."""
        closed = []
        ids = [_s(r) for page in await self.b.across(keys.ROOM_INDEX, "zrange", 0, limit - 1) for r in page]
        tail = event_tail("room_closed", None, {"reason": "abandoned"}, None, now_ms)
        for room_id in ids:
            status, updated = await self.b.call(cmd("hmget", keys.room(room_id), "status", "updated_at"))
            if status is None:
                self.b.call(cmd("zrem", self._at(keys.ROOM_INDEX, room_id), room_id))
                continue
            if _s(status) == "closed" or int(updated or 0) >= idle_before_ms:
                continue
            fut = self.b.eval(self.s_close_idle, self.room_keys(room_id), [
                room_id, now_ms, self.history, self.room_ttl_ms, idle_before_ms, tail])
            self._dirty(room_id)
            reply = _check(await fut)
            if int(reply[1]):
                self._closed(room_id, now_ms)
                for dev in reply[2]:
                    self.b.call(cmd("srem", keys.device_rooms(_s(dev)), room_id))
                    self.b.call(cmd("zrem", self._at(keys.DISCONNECTED, room_id), f"{room_id}|{_s(dev)}"))
                await self._reindex(room_id)
                closed.append(room_id)
        return closed

    # ------------------------------------------------------------ the server API

    async def create_service_room(self, service: Service, room: NewRoom, now_ms: int) -> JoinResult:
        if self.stored_room is not None and await self._lookup(room.room_id) is not None:
            raise fail(ErrorCode.CONFLICT, f"room {room.room_id!r} already exists (in history)")
        data = orjson.dumps(room.game_data)
        self._check_game_data(data)
        reserved = await self._reserve(room, now_ms)
        try:
            fut = self.b.eval(self.s_svc_create, self.room_keys(room.room_id), [
                room.room_id, room.game_type, room.max_players, data, now_ms, service.created_by,
                room.password_hash or "", new_epoch(), "1" if room.spectators_can_send else "0"])
            self._dirty(room.room_id)
            reply = _check(await fut)
        except BaseException:
            if reserved:
                await self.b.call(cmd("zrem", self._at(keys.ROOMS_ALIVE, room.room_id), room.room_id))
            raise
        await self.index.created(room, now_ms)
        return self._join_result(reply)

    async def room_info(self, room_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        reply = _check(await self.b.eval(self.s_room_read, self.room_keys(room_id), []))
        members = _pairs(reply[2])
        return _room_wire(_pairs(reply[1])), [
            _member(d, v) for d, v in members.items() if v.split("|")[1] != LEFT]

    async def service_publish(self, service: Service, room_id: str, tail: bytes, now_ms: int,
                              idempotency_key: str | None = None) -> int:
        fut = self.b.eval(self.s_svc_publish, self.room_keys(room_id), [
            room_id, tail, now_ms, self.history, idempotency_key or "", self.idempotency_window_ms,
            self.idempotency_max_keys])
        self._dirty(room_id)
        return int(_check(await fut)[1])

    async def service_update(
        self, service: Service, room_id: str, status: str | None, patch: dict[str, Any] | None, now_ms: int
    ) -> int:
        tail = event_tail("state_change", None, _change(status, patch), service.sender(), now_ms)
        return await self._update(room_id, status, patch, lambda data, ver: self.b.eval(
            self.s_svc_update, self.room_keys(room_id), [
                room_id, tail, now_ms, self.history, status or "", data, ver, self.max_game_data_bytes]))

    async def service_close(self, service: Service, room_id: str, now_ms: int) -> int:
        tail = event_tail("room_closed", None, None, service.sender(), now_ms)
        fut = self.b.eval(self.s_svc_close, self.room_keys(room_id), [
            room_id, tail, now_ms, self.history, self.room_ttl_ms])
        self._dirty(room_id)
        reply = _check(await fut)
        self._closed(room_id, now_ms)
        writes = []
        for dev in reply[2]:
            d = _s(dev)
            writes.append(self.b.call(cmd("srem", keys.device_rooms(d), room_id)))
            writes.append(self.b.call(cmd("zrem", self._at(keys.DISCONNECTED, room_id), f"{room_id}|{d}")))
        await asyncio.gather(*writes, self._reindex(room_id))
        return int(reply[1])

    async def kick(self, service: Service, room_id: str, device_id: str, now_ms: int) -> int:
        fut = self.b.eval(self.s_kick, self.room_keys(room_id), [
            room_id, device_id, now_ms, orjson.dumps(service.sender()), self.history])
        self._dirty(room_id)
        try:
            reply = _check(await fut)
        except GatewayError as exc:
            if exc.code is ErrorCode.NOT_MEMBER:
                raise fail(ErrorCode.NOT_MEMBER, f"device {device_id!r} is not a participant of room {room_id!r}") from None
            raise
        b = self.b
        b.call(cmd("srem", keys.device_rooms(device_id), room_id))
        await b.call(cmd("zrem", self._at(keys.DISCONNECTED, room_id), f"{room_id}|{device_id}"))
        return int(reply[1])

    # ------------------------------------------------------------ room index (list_rooms)

    async def _reindex(self, room_id: str) -> None:
        await self.index.reindex(room_id)

    async def list_rooms(
        self, game_type: str | None, status: str | None, limit: int, after: tuple[int, str] | None = None
    ) -> RoomPage:
        return await self.index.list_rooms(game_type, status, limit, after)

    async def read_since(
        self, room_id: str, after: int, upto: int | None = None, limit: int | None = None
    ) -> list[tuple[int, bytes]]:
        """Frames of the room's stream with seq > after (and <= upto), at most `limit`: gap
        repair and (in chunks) join replays."""
        end = "+" if upto is None else f"{upto}-0"
        entries = await self.b.call(lambda p: p.xrange(keys.stream(room_id), f"{after + 1}-0", end, count=limit))
        return [(int(_s(eid).split("-")[0]), bytes(fields[b"f"])) for eid, fields in entries]

    async def sweep(self, now_ms: int) -> None:
        """Cluster upkeep (pruning, timeouts) runs in the coordinator; nothing per replica."""
        return None
