"""HistorySource over Redis: room streams (found through the `ws:flush:dirty` set) and the
`ws:lifecycle` stream (read through a consumer group, acknowledged after commit).

In history mode the gateways do not trim room streams or expire closed rooms: the
flusher trims only what Postgres already holds (keeping the last `keep` events for
fast replay) and expires a closed room's keys once its last event is persisted, so a
Postgres outage loses nothing.

In a Redis Cluster the lifecycle stream, the dirty set and the cursors are spread over
buckets (keys.spread: the stream by device, the others by room), each on the primary of its
slot: `take` reads every bucket (one consumer group per stream, created on first use),
`commit` acknowledges each record in the stream it came from.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.exceptions import ResponseError

from roomcast.history.base import Batch, DeadLetter, LifecycleRecord, RoomChunk, WriteResult
from roomcast.redis import keys
from roomcast.redis import scripts as redis_scripts
from roomcast.redis.batch import Batcher, cmd

log = logging.getLogger("roomcast.history")


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class RedisHistorySource:
    def __init__(self, batcher: Batcher, consumer: str, *, keep: int = 1000, room_ttl_ms: int = 3_600_000,
                 rooms_per_take: int = 200, events_per_room: int = 1000, claim_idle_ms: int = 10_000) -> None:
        self.b = batcher
        self.consumer = consumer
        self.keep = keep
        self.room_ttl_ms = room_ttl_ms
        self.rooms_per_take = rooms_per_take
        self.events_per_room = events_per_room
        self.claim_idle_ms = claim_idle_ms
        self.s_trim = batcher.register(redis_scripts.TRIM_PERSISTED)
        self._ready = False

    def _streams(self) -> list[str]:
        return [keys.spread(keys.LIFECYCLE, bucket) for bucket in self.b.buckets()]

    def _at(self, name: str, room_id: str) -> str:
        return keys.spread(name, self.b.bucket(room_id))

    async def _setup(self) -> None:
        futs = [self.b.call(cmd("xgroup_create", stream, keys.FLUSH_GROUP, id="0", mkstream=True))
                for stream in self._streams()]
        for fut in futs:
            try:
                await fut
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._ready = True

    async def take(self, max_rows: int) -> Batch:
        try:
            return await self._take(max_rows)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # Redis restarted without persistence: the consumer group is gone. Recreate it
            # (what was pending in it is gone with it) and carry on.
            log.warning("the lifecycle consumer group was lost (Redis restarted?): recreating it")
            self._ready = False
            return await self._take(max_rows)

    async def _take(self, max_rows: int) -> Batch:
        if not self._ready:
            await self._setup()
        b = self.b
        batch = Batch()
        streams = self._streams()
        per_stream = max(1, -(-max_rows // len(streams)))
        # Entries another (dead) flusher took but never acknowledged become ours.
        claims = [b.call(cmd("xautoclaim", stream, keys.FLUSH_GROUP, self.consumer, self.claim_idle_ms,
                             start_id="0-0", count=per_stream, justid=True)) for stream in streams]
        for claim in claims:
            await claim
        for start in ("0", ">"):  # first our own unacknowledged entries, then new ones
            replies = [(stream, b.call(cmd("xreadgroup", keys.FLUSH_GROUP, self.consumer, {stream: start},
                                           count=per_stream))) for stream in streams]
            for stream, reply in replies:
                for _stream, entries in await reply or []:
                    for eid, fields in entries:
                        if fields:
                            batch.lifecycle.append(LifecycleRecord(_s(eid), {_s(k): _s(v) for k, v in fields.items()},
                                                                   stream))
            if batch.lifecycle:
                break
        buckets = b.buckets()
        per_bucket = max(1, -(-self.rooms_per_take // len(buckets)))
        popped = [b.call(cmd("spop", keys.spread(keys.FLUSH_DIRTY, bucket), per_bucket)) for bucket in buckets]
        rooms = [_s(r) for p in popped for r in await p or []]
        if not rooms:
            return batch
        cursor_f = [b.call(cmd("hget", self._at(keys.FLUSH_CURSOR, room_id), room_id)) for room_id in rooms]
        cursors = [await c for c in cursor_f]
        futs = []
        for room_id, cur in zip(rooms, cursors, strict=True):
            after = int(cur) if cur else 0
            futs.append((room_id,
                         b.call(cmd("xrange", keys.stream(room_id), f"{after + 1}-0", "+", count=self.events_per_room)),
                         b.call(cmd("hgetall", keys.room(room_id)))))
        for room_id, events_f, snap_f in futs:
            entries = await events_f
            snap = {_s(k): _s(v) for k, v in (await snap_f).items()}
            # An entry without a frame is written as an empty one: a dead letter, not a crash
            # of take() after the room was already popped from the dirty set.
            events = [(int(_s(eid).split("-")[0]), bytes(f.get(b"f", b""))) for eid, f in entries]
            batch.rooms.append(RoomChunk(room_id, events, snap or None))
        return batch

    async def commit(self, batch: Batch, result: WriteResult) -> None:
        b = self.b
        by_stream: dict[str, list[str]] = {}
        for r in batch.lifecycle:
            by_stream.setdefault(r.stream or keys.LIFECYCLE, []).append(r.id)
        for stream, ids in by_stream.items():
            b.call(cmd("xack", stream, keys.FLUSH_GROUP, *ids))
            b.call(cmd("xdel", stream, *ids))
        for chunk in batch.rooms:
            persisted = result.persisted_seq.get(chunk.room_id)
            if persisted is None:
                continue
            b.call(cmd("hset", self._at(keys.FLUSH_CURSOR, chunk.room_id), chunk.room_id, persisted))
            head = int(chunk.snapshot["seq"]) if chunk.snapshot else persisted
            # Drop only what Postgres holds, and keep the newest `keep` for fast replay.
            min_id = min(persisted + 1, max(1, head - self.keep + 1))
            # (a script: it also tells emit's byte trim what Postgres holds, see TRIM_PERSISTED)
            b.eval(self.s_trim, [keys.room(chunk.room_id), keys.stream(chunk.room_id)], [min_id, persisted])
            if len(chunk.events) >= self.events_per_room:
                b.call(cmd("sadd", self._at(keys.FLUSH_DIRTY, chunk.room_id), chunk.room_id))  # more to read
            elif chunk.snapshot and chunk.snapshot.get("status") == "closed" and persisted >= head:
                for key in (keys.room(chunk.room_id), keys.members(chunk.room_id),
                            keys.participants(chunk.room_id), keys.stream(chunk.room_id)):
                    b.call(cmd("pexpire", key, self.room_ttl_ms))
                b.call(cmd("hdel", self._at(keys.FLUSH_CURSOR, chunk.room_id), chunk.room_id))
        await b.call(cmd("ping"))

    async def give_back(self, batch: Batch) -> None:
        futs = [self.b.call(cmd("sadd", self._at(keys.FLUSH_DIRTY, c.room_id), c.room_id)) for c in batch.rooms]
        for fut in futs:
            await fut
        # Lifecycle entries stay pending in the group; the next take reads them again.

    async def dead_letter(self, letters: list[DeadLetter]) -> None:
        for d in letters:
            self.b.call(cmd("xadd", keys.DEADLETTER, {"source": d.source, "ref": d.ref, "data": d.data,
                                                      "error": d.error[:1000]}, maxlen=100_000, approximate=True))
        await self.b.call(cmd("ping"))

    async def backlog(self) -> int:
        lag = 0
        groups = [self.b.call(cmd("xinfo_groups", stream)) for stream in self._streams()]
        for fut in groups:
            try:
                info = await fut
            except ResponseError:  # no stream yet (or Redis restarted): nothing waiting there
                info = []
            for group in info or []:
                g = {(_s(k) if isinstance(k, bytes) else k): v for k, v in group.items()}
                if g.get("name") in (keys.FLUSH_GROUP, keys.FLUSH_GROUP.encode()):
                    lag += int(g.get("lag") or 0) + int(g.get("pending") or 0)
        dirty = [self.b.call(cmd("scard", keys.spread(keys.FLUSH_DIRTY, bucket))) for bucket in self.b.buckets()]
        return lag + sum([int(await d) for d in dirty])


def dead_letters(raw: list[Any]) -> list[dict[str, str]]:
    """Decode XRANGE output of the dead-letter stream (for tools and tests)."""
    return [{_s(k): _s(v) for k, v in fields.items()} | {"id": _s(eid)} for eid, fields in raw]


__all__ = ["RedisHistorySource", "dead_letters"]
