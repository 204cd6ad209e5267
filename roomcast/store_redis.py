"""RoomStore on Redis: the cluster's shared state, one Lua script per room operation.

Key layout: roomcast/keys.py. Cross-slot indexes (a device's rooms, the room index, the
prune queue) are updated right after the room's atomic step, in the same batch; they
are indexes only, so a crash between the two leaves at worst a stale index entry that
readers skip.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import orjson

from . import keys, merge_patch
from . import redis_scripts as lua
from .errors import ErrorCode, GatewayError
from .history import device_uuid
from .history_read import StoredRoom
from .protocol import event_tail
from .redis_batch import Batcher, cmd
from .room import ACTIVE, LEFT, new_epoch
from .store import Caller, ConnectionInfo, ConnectResult, DeviceRoom, JoinResult, NewRoom, fail

LIFECYCLE = keys.LIFECYCLE
log = logging.getLogger("roomcast.store")
_ERRORS = {c.value: c for c in ErrorCode}


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(flat: list[Any]) -> dict[str, str]:
    return {_s(flat[i]): _s(flat[i + 1]) for i in range(0, len(flat), 2)}


def _room_wire(h: dict[str, str], head: int | None = None) -> dict[str, Any]:
    return {
        "room_id": h["room_id"],
        "game_type": h["game_type"],
        "status": h["status"],
        "max_players": int(h["max_players"]),
        "current_players": int(h.get("players", "0")),
        "game_data": orjson.loads(h.get("game_data") or "{}"),
        "created_at": int(h["created_at"]),
        "created_by": h["created_by"],
        "seq": int(h["seq"]) if head is None else head,
    }


def _member(device_id: str, value: str) -> dict[str, Any]:
    role, status, _sock, user, joined = value.split("|")
    return {"device_id": device_id, "user_id": user or None, "role": role, "status": status,
            "joined_at": int(joined)}


def _check(reply: Any) -> list[Any]:
    """Turn a script's {'err', code} reply into a GatewayError."""
    if not isinstance(reply, list) or not reply:
        raise GatewayError(ErrorCode.INTERNAL, "unexpected reply from redis")
    if _s(reply[0]) == "err":
        code = _s(reply[1])
        if code == "retry":
            raise _Retry()
        if code == "forbidden_spectator":
            raise GatewayError(ErrorCode.FORBIDDEN, _MESSAGES[code])
        raise GatewayError(_ERRORS.get(code, ErrorCode.INTERNAL), _MESSAGES.get(code, code))
    return reply


class _Retry(Exception):
    pass


_MESSAGES = {
    "forbidden_spectator": "spectators may not send events in this room",
    "not_found": "no such room",
    "room_closed": "the room is closed",
    "room_full": "the room is full",
    "conflict": "a room with this id already exists",
    "not_member": "not a member of this room",
    "forbidden": "only the host may do this",
}


class RedisStore:
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
    ) -> None:
        self.b = batcher
        self.max_participants = max_participants
        # In history mode (Postgres configured) streams are not trimmed and closed rooms
        # not expired here: the flusher does both once the rows are in Postgres.
        self.history_mode = history_mode
        self.history = 0 if history_mode else history
        self.room_ttl_ms = 0 if history_mode else room_ttl_ms
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
        self.s_close_idle = batcher.register(lua.CLOSE_IDLE)
        self.s_restore = batcher.register(lua.RESTORE)
        # Looks a room up in Postgres (history mode): restore on join, conflict on create.
        self.stored_room: Callable[[str], Awaitable[StoredRoom | None]] | None = None

    @staticmethod
    def room_keys(room_id: str) -> list[str]:
        return [keys.room(room_id), keys.members(room_id), keys.participants(room_id), keys.stream(room_id)]

    def _dirty(self, room_id: str) -> None:
        """Tell the flusher this room has new events (same pipeline as the event)."""
        if self.history_mode:
            self.b.call(cmd("sadd", keys.FLUSH_DIRTY, room_id))

    def _lifecycle(self, fields: dict[str, Any]) -> None:
        self.b.call(cmd("xadd", LIFECYCLE, fields, maxlen=self.lifecycle_maxlen, approximate=True))

    # ------------------------------------------------------------ connections

    async def connect(self, caller: Caller, info: ConnectionInfo, now_ms: int) -> ConnectResult:
        dev, conn = caller.device_id, keys.connection(caller.device_id)
        b = self.b
        count = b.call(lambda p: p.hincrby(conn, "connections", 1))
        open_sockets = b.call(lambda p: p.hincrby(conn, "sockets", 1))
        b.call(lambda p: p.hset(conn, mapping={
            "socket_id": caller.socket_id, "connected_at": now_ms, "last_heartbeat": now_ms,
            "user_id": caller.user_id or "", "status": ACTIVE}))
        b.call(lambda p: p.persist(conn))
        b.call(lambda p: p.set(keys.socket(caller.socket_id), dev))
        b.call(lambda p: p.zadd(keys.PRESENCE, {caller.socket_id: now_ms}))
        rooms_f = b.call(lambda p: p.smembers(keys.device_rooms(dev)))
        self._lifecycle({"kind": "connect", "socket_id": caller.socket_id, "device_id": dev,
                         "user_id": caller.user_id or "", "ts": now_ms, "ip": info.ip or "",
                         "user_agent": info.user_agent or "", "fingerprint": info.fingerprint or "",
                         "metadata": orjson.dumps(info.metadata or {})})
        earlier = int(await count) - 1
        room_ids = sorted(_s(r) for r in await rooms_f)
        return ConnectResult(earlier, await self._device_rooms(dev, room_ids), int(await open_sockets))

    async def restore(self, caller: Caller, now_ms: int) -> None:
        dev, conn = caller.device_id, keys.connection(caller.device_id)
        b = self.b
        # A socket is counted in the device's `sockets` exactly while it is in the presence
        # set (connect adds both, the first disconnect removes both). Not there any more
        # (Redis restarted empty, or the reaper ended it meanwhile): count it again.
        added = b.call(cmd("zadd", keys.PRESENCE, {caller.socket_id: now_ms}, nx=True))
        b.call(cmd("zadd", keys.PRESENCE, {caller.socket_id: now_ms}))
        b.call(cmd("hset", conn, mapping={"socket_id": caller.socket_id, "last_heartbeat": now_ms,
                                          "user_id": caller.user_id or "", "status": ACTIVE}))
        b.call(cmd("persist", conn))
        await b.call(cmd("set", keys.socket(caller.socket_id), dev))
        if int(await added):
            await b.call(cmd("hincrby", conn, "sockets", 1))

    async def _device_rooms(self, device_id: str, room_ids: list[str]) -> list[DeviceRoom]:
        futs = [
            (rid, self.b.call(cmd("hmget", keys.room(rid), "status", "seq")),
             self.b.call(cmd("hget", keys.members(rid), device_id)))
            for rid in room_ids
        ]
        out = []
        for rid, room_f, member_f in futs:
            status, seq = await room_f
            member = await member_f
            if status is None or _s(status) == "closed" or member is None:
                continue
            role, pstatus = _s(member).split("|")[:2]
            if pstatus != LEFT:
                out.append(DeviceRoom(rid, role, int(seq)))
        return out

    async def disconnect(self, caller: Caller, status: str, reason: str, now_ms: int) -> None:
        dev, conn = caller.device_id, keys.connection(caller.device_id)
        room_ids = [_s(r) for r in await self.b.call(lambda p: p.smembers(keys.device_rooms(dev)))]
        futs = [self.b.eval(self.s_disconnect, self.room_keys(rid),
                            [rid, dev, caller.socket_id, now_ms, reason, self.history]) for rid in room_ids]
        b = self.b
        removed = b.call(lambda p: p.zrem(keys.PRESENCE, caller.socket_id))
        b.call(lambda p: p.pexpire(keys.socket(caller.socket_id), self.connection_ttl_ms))
        for rid, fut in zip(room_ids, futs, strict=True):
            reply = _check(await fut)
            if int(reply[1]):
                b.call(cmd("zadd", keys.DISCONNECTED, {f"{rid}|{dev}": now_ms}))
                self._dirty(rid)
        if not int(await removed):
            # Only the first to end a socket (the gateway or the reaper) records it and counts
            # it off the device: ending it again must leave the device's other sockets alone.
            return
        self._lifecycle({"kind": "disconnect", "status": status, "socket_id": caller.socket_id,
                         "device_id": dev, "ts": now_ms, "reason": reason})
        if int(await b.call(lambda p: p.hincrby(conn, "sockets", -1))) <= 0:
            b.call(lambda p: p.hset(conn, mapping={"sockets": 0, "status": status, "disconnected_at": now_ms}))
            await b.call(lambda p: p.pexpire(conn, self.connection_ttl_ms))

    # ------------------------------------------------------------ rooms

    def _check_game_data(self, data: bytes) -> None:
        if len(data) > self.max_game_data_bytes:
            raise fail(ErrorCode.BAD_REQUEST, f"game_data would exceed {self.max_game_data_bytes} bytes")

    def _join_result(self, reply: list[Any]) -> JoinResult:
        head = int(reply[1])
        room = _pairs(reply[5])
        members = _pairs(reply[6])
        return JoinResult(
            room=_room_wire(room, head),
            participants=[_member(d, v) for d, v in members.items() if v.split("|")[1] != LEFT],
            seq=head,
            epoch=_s(reply[2]),
            role=_s(reply[3]),
            recovered=bool(int(reply[4])),
            replay=[bytes(f) for f in reply[7]],
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
        sender = orjson.dumps(caller.sender())
        fut = self.b.eval(self.s_create, self.room_keys(room.room_id), [
            room.room_id, room.game_type, room.max_players, data, now_ms, caller.device_id,
            caller.socket_id, caller.user_id or "", sender, room.password_hash or "", new_epoch(), self.history,
            "1" if room.spectators_can_send else "0"])
        # Index writes go in the same batch; the room index is only read by list_rooms.
        self._dirty(room.room_id)
        reply = _check(await fut)
        b = self.b
        b.call(lambda p: p.sadd(keys.device_rooms(caller.device_id), room.room_id))
        await b.call(lambda p: p.zadd(keys.ROOM_INDEX, {room.room_id: now_ms}))
        return self._join_result(reply)

    async def _lookup(self, room_id: str) -> StoredRoom | None:
        assert self.stored_room is not None
        try:
            return await self.stored_room(room_id)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise fail(ErrorCode.UNAVAILABLE, "room history unavailable; retry") from exc

    async def _restore(self, room_id: str, now_ms: int) -> bool:
        """Rebuild a room Redis lost from Postgres history (history mode). True if there
        is now a room to join; it keeps its seq, under a new epoch."""
        if self.stored_room is None:
            return False
        stored = await self._lookup(room_id)
        if stored is None:
            return False
        if stored.status == "closed":
            raise fail(ErrorCode.ROOM_CLOSED, f"room {room_id!r} is closed")
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
            stored.host_device, creator_user, stored.last_seq, new_epoch(), now_ms, players, *members]))
        if int(reply[1]):
            log.warning("room %s restored from history at seq %d (%s)", room_id, stored.last_seq, stored.status)
            await self.b.call(cmd("zadd", keys.ROOM_INDEX, {room_id: stored.created_ms}, nx=True))
            for device, *_ in stored.members:
                self.b.call(cmd("sadd", keys.device_rooms(device), room_id))
                self.b.call(cmd("zadd", keys.DISCONNECTED, {f"{room_id}|{device}": now_ms}, nx=True))
        return True

    async def device_room_count(self, device_id: str, other_than: str | None = None) -> int:
        count = self.b.call(cmd("scard", keys.device_rooms(device_id)))
        if other_than is None:
            return int(await count)
        member = self.b.call(cmd("sismember", keys.device_rooms(device_id), other_than))
        return int(await count) - int(await member)

    async def device_known(self, device_id: str) -> bool:
        conn = self.b.call(cmd("exists", keys.connection(device_id)))
        rooms = self.b.call(cmd("scard", keys.device_rooms(device_id)))
        return bool(int(await conn)) or bool(int(await rooms))

    async def password_hash(self, room_id: str) -> str | None:
        value = await self.b.call(lambda p: p.hget(keys.room(room_id), "password_hash"))
        return _s(value) if value else None

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
        fut = self.b.eval(self.s_join, self.room_keys(room_id), [
            room_id, caller.device_id, caller.socket_id, caller.user_id or "", role,
            -1 if since is None else since, epoch or "", now_ms, sender, self.history, self.max_participants])
        self._dirty(room_id)
        reply = _check(await fut)
        b = self.b
        b.call(lambda p: p.sadd(keys.device_rooms(caller.device_id), room_id))
        # Awaited (same batch as the SADD): once `joined` is sent, every replica counts this
        # room for the device (MAX_ROOMS_PER_DEVICE) and lists it in welcome.rooms.
        await b.call(lambda p: p.zrem(keys.DISCONNECTED, f"{room_id}|{caller.device_id}"))
        return self._join_result(reply)

    async def leave(self, caller: Caller, room_id: str, now_ms: int) -> None:
        await self._leave(room_id, caller.device_id, "leave", orjson.dumps(caller.sender()), now_ms, False)

    async def _leave(self, room_id: str, device_id: str, reason: str, sender: bytes, now_ms: int,
                     only_if_disconnected: bool) -> bool:
        fut = self.b.eval(self.s_leave, self.room_keys(room_id), [
            room_id, device_id, now_ms, sender, reason, self.history, "1" if only_if_disconnected else "0"])
        self._dirty(room_id)
        reply = _check(await fut)
        b = self.b
        if int(reply[1]):
            b.call(lambda p: p.srem(keys.device_rooms(device_id), room_id))
        await b.call(lambda p: p.zrem(keys.DISCONNECTED, f"{room_id}|{device_id}"))
        return bool(int(reply[1]))

    async def prune(self, room_id: str, device_id: str, now_ms: int) -> bool:
        """Remove a participant that is still disconnected (`participant_left`, reason `pruned`)."""
        try:
            return await self._leave(room_id, device_id, "pruned", b"null", now_ms, True)
        except GatewayError as exc:
            if exc.code in (ErrorCode.NOT_FOUND, ErrorCode.NOT_MEMBER):
                await self.b.call(lambda p: p.zrem(keys.DISCONNECTED, f"{room_id}|{device_id}"))
                return False
            raise

    async def publish(self, caller: Caller, room_id: str, tail: bytes, now_ms: int) -> int:
        fut = self.b.eval(self.s_publish, self.room_keys(room_id), [room_id, caller.device_id, tail, now_ms,
                                                                    self.history])
        self._dirty(room_id)
        return int(_check(await fut)[1])

    async def update_room(
        self, caller: Caller, room_id: str, status: str | None, patch: dict[str, Any] | None, now_ms: int
    ) -> int:
        payload: dict[str, Any] = {}
        if status is not None:
            payload["status"] = status
        if patch is not None:
            payload["patch"] = patch
        tail = event_tail("state_change", None, payload, caller.sender(), now_ms)
        for _ in range(16):
            data, ver = b"", b""
            if patch is not None:
                gd, ver_raw = await self.b.call(lambda p: p.hmget(keys.room(room_id), "game_data", "gd_ver"))
                if gd is None:
                    raise fail(ErrorCode.NOT_FOUND, "no such room")
                data = orjson.dumps(merge_patch.apply(orjson.loads(gd), patch))
                ver = ver_raw
            try:
                fut = self.b.eval(self.s_update, self.room_keys(room_id), [
                    room_id, caller.device_id, tail, now_ms, self.history, status or "", data, ver,
                    self.max_game_data_bytes])
                self._dirty(room_id)
                reply = _check(await fut)
            except _Retry:
                continue  # another host update won the race: re-read and re-apply
            except GatewayError as exc:
                if exc.code is ErrorCode.BAD_REQUEST:
                    self._check_game_data(data)  # the script found it too large: say by how much
                raise
            return int(reply[1])
        raise fail(ErrorCode.UNAVAILABLE, "room is being updated concurrently; retry")

    async def close_room(self, caller: Caller, room_id: str, now_ms: int) -> int:
        tail = event_tail("room_closed", None, None, caller.sender(), now_ms)
        fut = self.b.eval(self.s_close, self.room_keys(room_id), [
            room_id, caller.device_id, tail, now_ms, self.history, self.room_ttl_ms])
        self._dirty(room_id)
        reply = _check(await fut)
        index_writes = []
        for dev in reply[2]:
            d = _s(dev)
            index_writes.append(self.b.call(cmd("srem", keys.device_rooms(d), room_id)))
            index_writes.append(self.b.call(cmd("zrem", keys.DISCONNECTED, f"{room_id}|{d}")))
        # The room keeps its place in the room index (created_at): list_rooms is newest-created first.
        await asyncio.gather(*index_writes)
        return int(reply[1])

    async def close_abandoned(self, idle_before_ms: int, now_ms: int, limit: int = 1000) -> list[str]:
        """Close rooms with no event since `idle_before_ms` (`room_closed`, reason
        `abandoned`). Returns the rooms closed."""
        closed = []
        ids = [_s(r) for r in await self.b.call(cmd("zrange", keys.ROOM_INDEX, 0, limit - 1))]
        tail = event_tail("room_closed", None, {"reason": "abandoned"}, None, now_ms)
        for room_id in ids:
            status, updated = await self.b.call(cmd("hmget", keys.room(room_id), "status", "updated_at"))
            if status is None:
                self.b.call(cmd("zrem", keys.ROOM_INDEX, room_id))
                continue
            if _s(status) == "closed" or int(updated or 0) >= idle_before_ms:
                continue
            fut = self.b.eval(self.s_close_idle, self.room_keys(room_id), [
                room_id, now_ms, self.history, self.room_ttl_ms, idle_before_ms, tail])
            self._dirty(room_id)
            reply = _check(await fut)
            if int(reply[1]):
                for dev in reply[2]:
                    self.b.call(cmd("srem", keys.device_rooms(_s(dev)), room_id))
                    self.b.call(cmd("zrem", keys.DISCONNECTED, f"{room_id}|{_s(dev)}"))
                closed.append(room_id)
        return closed

    async def list_rooms(self, game_type: str | None, status: str | None, limit: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        start, page = 0, max(50, limit * 2)
        while len(out) < limit:
            ids = [_s(r) for r in await self.b.call(
                cmd("zrevrange", keys.ROOM_INDEX, start, start + page - 1))]
            if not ids:
                break
            start += page
            futs = [(rid, self.b.call(cmd("hgetall", keys.room(rid)))) for rid in ids]
            for rid, fut in futs:
                h = {_s(k): _s(v) for k, v in (await fut).items()}
                if not h:
                    self.b.call(cmd("zrem", keys.ROOM_INDEX, rid))  # expired room
                    continue
                if h.get("password_hash"):
                    continue
                if (status is None and h["status"] == "closed") or (status is not None and h["status"] != status):
                    continue
                if game_type is not None and h["game_type"] != game_type:
                    continue
                out.append(_room_wire(h))
                if len(out) >= limit:
                    break
        return out

    async def read_since(self, room_id: str, after: int, upto: int | None = None) -> list[tuple[int, bytes]]:
        """Frames of the room's stream with seq > after (and <= upto), for gap repair."""
        end = "+" if upto is None else f"{upto}-0"
        entries = await self.b.call(lambda p: p.xrange(keys.stream(room_id), f"{after + 1}-0", end))
        return [(int(_s(eid).split("-")[0]), bytes(fields[b"f"])) for eid, fields in entries]

    async def sweep(self, now_ms: int) -> None:
        """Cluster upkeep (pruning, timeouts) runs in the coordinator; nothing per replica."""
        return None
