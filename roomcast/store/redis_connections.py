"""RoomStore on Redis, its connections part (RedisStore builds on it): a socket's connection
record at hello (`connect`, one script on the device's slot), its end (`disconnect`), its
re-registration (`restore`), and the device's keys (rooms, token hash).

Key layout: roomcast/redis/keys.py. A device's keys share its hash tag (`{device_id}`), so
the hello's step on them is one script; the socket key and the presence entry, in other
slots, follow in the next batch.
"""

from __future__ import annotations

from typing import Any

import orjson

from roomcast.redis import keys
from roomcast.redis.batch import Batcher, Script, cmd, raw
from roomcast.room import ACTIVE, LEFT
from roomcast.store.base import Budget, Caller, ConnectionInfo, ConnectResult, DeviceRoom
from roomcast.store.redis_codec import _check, _s


class RedisConnections:
    """Mixed into RedisStore, which sets these and the helpers below."""

    b: Batcher
    s_connect: Script
    s_disconnect: Script
    s_device_token: Script
    connection_ttl_ms: int
    history: str

    @staticmethod
    def room_keys(room_id: str) -> list[str]:
        raise NotImplementedError

    def _at(self, name: str, entity: str) -> str:
        raise NotImplementedError

    def _dirty(self, room_id: str) -> None:
        raise NotImplementedError

    def _lifecycle(self, fields: dict[str, Any]) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------ connections

    async def connect(self, caller: Caller, info: ConnectionInfo, now_ms: int,
                      budget: Budget | None = None) -> ConnectResult:
        dev, b = caller.device_id, self.b
        # One step on the device's slot (the budget, the counts, the record, its rooms; on a
        # single Redis the socket key and the presence entry too); then, in one batch, the rooms'
        # states (and on a Redis Cluster the socket key and the presence entry, in other slots).
        bucket = [] if budget is None else [budget.key]
        socket_key, presence = keys.socket(caller.socket_id), self._at(keys.PRESENCE, caller.socket_id)
        inline = b.cluster is False  # known to be one Redis (not before its first batch)
        reply = await b.eval(self.s_connect,
                             [keys.connection(dev), keys.device_rooms(dev), *bucket,
                              *((socket_key, presence) if inline else ())],
                             [caller.socket_id, now_ms, caller.user_id or "", ACTIVE,
                              *(("", "") if budget is None else (budget.rate, budget.burst)), dev if inline else ""])
        if int(reply[0]):
            return ConnectResult(0, [], 0, int(reply[0]))  # the budget is short: nothing was recorded
        earlier, open_sockets = int(reply[1]) - 1, int(reply[2])
        added: Any = None
        if not inline:
            # Plain commands (raw): with the script calls they go out on the lean connection (batch.py).
            b.call(raw("SET", socket_key, dev))
            added = b.call(raw("ZADD", presence, now_ms, caller.socket_id))
        lookups = self._room_lookups(dev, sorted(_s(r) for r in reply[3]))
        # After the count: the row's reconnect_count is the welcome's (one meaning).
        self._lifecycle({"kind": "connect", "socket_id": caller.socket_id, "device_id": dev,
                         "user_id": caller.user_id or "", "ts": now_ms, "ip": info.ip or "",
                         "user_agent": info.user_agent or "", "fingerprint": info.fingerprint or "",
                         "metadata": orjson.dumps(info.metadata or {}), "reconnect_count": earlier})
        if added is not None:
            await added  # the socket key and presence entry are written before `welcome`
        return ConnectResult(earlier, await self._read_rooms(lookups), open_sockets)

    async def restore(self, caller: Caller, now_ms: int) -> None:
        dev, conn = caller.device_id, keys.connection(caller.device_id)
        b = self.b
        # A socket is counted in the device's `sockets` exactly while it is in the presence
        # set (connect adds both, the first disconnect removes both). Not there any more
        # (Redis restarted empty, or the reaper ended it meanwhile): count it again.
        presence = self._at(keys.PRESENCE, caller.socket_id)
        added = b.call(cmd("zadd", presence, {caller.socket_id: now_ms}, nx=True))
        b.call(cmd("zadd", presence, {caller.socket_id: now_ms}))
        b.call(cmd("hset", conn, mapping={"socket_id": caller.socket_id, "last_heartbeat": now_ms,
                                          "user_id": caller.user_id or "", "status": ACTIVE}))
        b.call(cmd("persist", conn))
        await b.call(cmd("set", keys.socket(caller.socket_id), dev))
        if int(await added):
            await b.call(cmd("hincrby", conn, "sockets", 1))

    def _room_lookups(self, device_id: str, room_ids: list[str]) -> list[tuple[str, Any, Any]]:
        """Queue the reads of the device's rooms (status, seq, its member entry): `_read_rooms`."""
        return [
            (rid, self.b.call(raw("HMGET", keys.room(rid), "status", "seq")),
             self.b.call(raw("HGET", keys.members(rid), device_id)))
            for rid in room_ids
        ]

    async def _read_rooms(self, futs: list[tuple[str, Any, Any]]) -> list[DeviceRoom]:
        """The device's rooms it is still a participant of (not left, not closed)."""
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
        removed = b.call(cmd("zrem", self._at(keys.PRESENCE, caller.socket_id), caller.socket_id))
        b.call(lambda p: p.pexpire(keys.socket(caller.socket_id), self.connection_ttl_ms))
        for rid, fut in zip(room_ids, futs, strict=True):
            reply = _check(await fut)
            if int(reply[1]):
                b.call(cmd("zadd", self._at(keys.DISCONNECTED, rid), {f"{rid}|{dev}": now_ms}))
                self._dirty(rid)
        if not int(await removed):
            # Only the first to end a socket (the gateway or the reaper) records it and counts
            # it off the device: ending it again must leave the device's other sockets alone.
            return
        self._lifecycle({"kind": "disconnect", "status": status, "socket_id": caller.socket_id,
                         "device_id": dev, "ts": now_ms, "reason": reason})
        if reason == "refused":  # refused before its welcome: not one of the device's connections
            b.call(lambda p: p.hincrby(conn, "connections", -1))
        if int(await b.call(lambda p: p.hincrby(conn, "sockets", -1))) <= 0:
            b.call(lambda p: p.hset(conn, mapping={"sockets": 0, "status": status, "disconnected_at": now_ms}))
            await b.call(lambda p: p.pexpire(conn, self.connection_ttl_ms))

    # ------------------------------------------------------------ the device's keys

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

    async def device_token_hash(self, device_id: str) -> str | None:
        value = await self.b.call(cmd("get", keys.device_token(device_id)))
        return None if value is None else _s(value)

    async def set_device_token_hash(self, device_id: str, new: str | None, old: str | None, ttl_ms: int) -> bool:
        return bool(int(await self.b.eval(self.s_device_token, [keys.device_token(device_id)],
                                          [new or "", old or "", ttl_ms])))

    async def touch_device_token(self, device_id: str, ttl_ms: int) -> None:
        await self.b.call(cmd("pexpire", keys.device_token(device_id), ttl_ms))
