"""The embedded store's budgets: the rate-limit buckets its `connect` and `admit_join` take
(roomcast.store.base.Budget), in process like every other bucket of the embedded node."""

from __future__ import annotations

from roomcast.limits.memory import MemoryLimiter
from roomcast.store.base import Budget, JoinCheck


class MemoryAdmission:
    """Mixed into MemoryStore, which sets `limits` and has the two lookups below."""

    limits: MemoryLimiter

    async def device_room_count(self, device_id: str, other_than: str | None = None) -> int:
        raise NotImplementedError

    async def password_hash(self, room_id: str) -> str | None:
        raise NotImplementedError

    async def admit_join(self, device_id: str, room_id: str, budget: Budget, count_rooms: bool,
                         now_ms: int) -> JoinCheck:
        if wait := await self.limits.take(budget.key, budget.rate, budget.burst, now_ms):
            return JoinCheck(wait, -1, None)
        rooms = await self.device_room_count(device_id, room_id) if count_rooms else -1
        return JoinCheck(0, rooms, await self.password_hash(room_id))
