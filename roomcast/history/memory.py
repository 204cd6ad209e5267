"""HistorySource for the embedded gateway: the memory store's outbox.

Events and lifecycle records wait in the store's outbox (in this process) until the
flusher has committed them; a batch that cannot be written goes back to the front.
"""

from __future__ import annotations

import logging

from roomcast.history.base import Batch, DeadLetter, LifecycleRecord, RoomChunk, WriteResult
from roomcast.store.memory import MemoryStore

log = logging.getLogger("roomcast.history")


class MemoryHistorySource:
    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.dead: list[DeadLetter] = []

    async def take(self, max_rows: int) -> Batch:
        s = self.store
        batch = Batch()
        n = min(max_rows, len(s.outbox_lifecycle))
        for fields in s.outbox_lifecycle[:n]:
            s.lifecycle_seq += 1
            batch.lifecycle.append(LifecycleRecord(str(s.lifecycle_seq), fields))
        del s.outbox_lifecycle[:n]
        budget = max_rows - n
        for room_id in list(s.outbox_events):
            if budget <= 0:
                break
            events = s.outbox_events[room_id]
            take, rest = events[:budget], events[budget:]
            if rest:
                s.outbox_events[room_id] = rest
            else:
                del s.outbox_events[room_id]
            budget -= len(take)
            batch.rooms.append(RoomChunk(room_id, take, s.snapshot(room_id)))
        return batch

    async def commit(self, batch: Batch, result: WriteResult) -> None:
        return None

    async def give_back(self, batch: Batch) -> None:
        s = self.store
        s.outbox_lifecycle[:0] = [r.fields for r in batch.lifecycle]
        for chunk in reversed(batch.rooms):
            s.outbox_events[chunk.room_id] = chunk.events + s.outbox_events.get(chunk.room_id, [])

    async def dead_letter(self, letters: list[DeadLetter]) -> None:
        self.dead.extend(letters)
        del self.dead[:-10_000]  # keep the newest; each was logged when it happened

    async def backlog(self) -> int:
        s = self.store
        return len(s.outbox_lifecycle) + sum(len(v) for v in s.outbox_events.values())
