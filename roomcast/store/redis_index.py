"""The Redis store's `list_rooms` indexes: public rooms in one sorted set per status and one
per (status, game type), scored by created_at. They are indexes only, written right after
a room's atomic step: a reader re-checks every room it takes from one and skips (or drops)
stale entries, so a crash between the two leaves at worst an entry nobody is shown.

In a Redis Cluster each index is spread over the buckets (keys.spread, by room id) and
list_rooms merges the buckets' pages (it already merges the statuses' pages), so no index
key takes every room creation and status change of the cluster."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from roomcast.protocol import ROOM_STATUSES
from roomcast.redis import keys
from roomcast.redis.batch import Batcher, cmd
from roomcast.store.base import NewRoom, RoomPage
from roomcast.store.redis_codec import _room_wire, _s

log = logging.getLogger("roomcast.store")


def _index(status: str, game_type: str | None, bucket: int | None) -> str:
    return keys.rooms_by_status(status, bucket) if game_type is None else keys.rooms_by_status_game(
        status, game_type, bucket)


class RoomIndex:
    def __init__(self, batcher: Batcher) -> None:
        self.b = batcher
        self._indexes_built = False  # checked once per process (see _build)

    def created(self, room: NewRoom, now_ms: int) -> asyncio.Future[Any]:
        """A new room into the room index and (public rooms) the `waiting` indexes."""
        b, bucket = self.b, self.b.bucket(room.room_id)
        index = b.call(cmd("zadd", keys.spread(keys.ROOM_INDEX, bucket), {room.room_id: now_ms}))
        if room.password_hash is None:  # list_rooms lists public rooms only
            b.call(cmd("zadd", keys.rooms_by_status_game("waiting", room.game_type, bucket), {room.room_id: now_ms}))
            index = b.call(cmd("zadd", keys.rooms_by_status("waiting", bucket), {room.room_id: now_ms}))
        return index

    async def reindex(self, room_id: str) -> None:
        """Put a room in the list_rooms index of its current status (and game type), and
        out of the others. Indexes only: list_rooms checks every room it reads from one."""
        status, game_type, created, pw = await self.b.call(
            cmd("hmget", keys.room(room_id), "status", "game_type", "created_at", "password_hash"))
        writes = []
        current = None if status is None or pw else _s(status)
        bucket = self.b.bucket(room_id)
        for st in ROOM_STATUSES:
            if st == current:
                continue
            writes.append(self.b.call(cmd("zrem", keys.rooms_by_status(st, bucket), room_id)))
            if game_type is not None:
                writes.append(self.b.call(cmd("zrem", keys.rooms_by_status_game(st, _s(game_type), bucket), room_id)))
        if current is not None and game_type is not None and created is not None:
            score = {room_id: int(created)}
            writes.append(self.b.call(cmd("zadd", keys.rooms_by_status(current, bucket), score)))
            writes.append(self.b.call(cmd("zadd", keys.rooms_by_status_game(current, _s(game_type), bucket), score)))
        await asyncio.gather(*writes)

    async def _build(self) -> None:
        """Once per cluster: index rooms created before the status indexes existed (an upgrade)."""
        self._indexes_built = True
        if not await self.b.call(cmd("set", keys.ROOM_INDEXES_BUILT, "1", nx=True)):
            return
        total, batch = 0, 200
        for bucket in self.b.buckets():
            start = 0
            for _ in range(1_000_000):  # bounded by the room index's size
                ids = [_s(r) for r in await self.b.call(cmd("zrange", keys.spread(keys.ROOM_INDEX, bucket), start,
                                                            start + batch - 1))]
                if not ids:
                    break
                await asyncio.gather(*(self.reindex(room_id) for room_id in ids))
                start += batch
            total += start
        log.info("list_rooms indexes built for %d rooms", total)

    async def _index_page(self, key: str, limit: int,
                          after: tuple[int, str] | None) -> list[tuple[int, str]]:
        """Up to `limit` entries of one index after `after`, newest first (score, then id)."""
        out: list[tuple[int, str]] = []
        offset = 0
        top: int | str = "+inf" if after is None else after[0]
        for _ in range(1000):  # bounded: only rooms created in the same ms as `after` are skipped
            want = limit - len(out) + 16
            rows = await self.b.call(cmd("zrevrangebyscore", key, top, "-inf", start=offset, num=want,
                                         withscores=True))
            for member, score in rows:
                entry = (int(score), _s(member))
                if after is not None and entry >= after:
                    continue  # at or before the cursor (same created_at, not a smaller id)
                out.append(entry)
                if len(out) >= limit:
                    return out
            if len(rows) < want:
                return out
            offset += len(rows)
        return out

    async def list_rooms(
        self, game_type: str | None, status: str | None, limit: int, after: tuple[int, str] | None = None
    ) -> RoomPage:
        if not self._indexes_built:
            await self._build()
        statuses = [status] if status is not None else [st for st in ROOM_STATUSES if st != "closed"]
        index_keys = [_index(st, game_type, b) for st in statuses for b in self.b.buckets()]
        out: list[dict[str, Any]] = []
        cursor = after
        for _ in range(100):  # bounded: each pass reads one page of the indexes
            need = limit - len(out)
            # One more than needed: whether another page follows.
            pages = await asyncio.gather(*(self._index_page(k, need + 1, cursor) for k in index_keys))
            entries = sorted((e for page in pages for e in page), reverse=True)[: need + 1]
            if not entries:
                return RoomPage(out, None)
            futs = [(e, self.b.call(cmd("hgetall", keys.room(e[1])))) for e in entries]
            for entry, fut in futs:
                if len(out) >= limit:
                    return RoomPage(out, cursor)
                cursor = entry
                h = {_s(k): _s(v) for k, v in (await fut).items()}
                if not h:
                    for st in statuses:  # an expired room (in its bucket's indexes)
                        self.b.call(cmd("zrem", _index(st, game_type, self.b.bucket(entry[1])), entry[1]))
                    continue
                if h.get("password_hash") or (status is None and h["status"] == "closed") or (
                        status is not None and h["status"] != status) or (
                        game_type is not None and h["game_type"] != game_type):
                    continue  # a stale index entry (a change in flight): it is re-indexed after the change
                out.append(_room_wire(h))
            if len(entries) <= need:
                return RoomPage(out, None)  # the indexes hold no more
        return RoomPage(out, cursor)
