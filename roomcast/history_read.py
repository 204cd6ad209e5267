"""Reading history back from Postgres: old event ranges for `join` with an old `since`."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson

from .protocol import event_frame, event_tail

SQL_RANGE = """
SELECT sequence_number, event_type, action, payload::text AS payload, socket_id, device_id, user_id,
       (extract(epoch FROM "timestamp") * 1000)::bigint AS ms
  FROM game_events
 WHERE room_id = $1 AND sequence_number > $2 AND sequence_number <= $3
 ORDER BY sequence_number
"""


def frame_of(room_id: str, row: Any) -> bytes:
    """Rebuild an event frame from its game_events row (payload key order may differ)."""
    sender = None
    if row["socket_id"] is not None:
        user = row["user_id"]
        sender = {"socket_id": row["socket_id"], "device_id": row["device_id"],
                  "user_id": None if user is None else str(user)}
    payload = None if row["payload"] is None else orjson.loads(row["payload"])
    tail = event_tail(row["event_type"], row["action"], payload, sender, int(row["ms"]))
    return event_frame(room_id, int(row["sequence_number"]), tail)


class HistoryReader:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def events(self, room_id: str, after: int, upto: int) -> list[tuple[int, bytes]]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(SQL_RANGE, room_id, after, upto)
        return [(int(r["sequence_number"]), frame_of(room_id, r)) for r in rows]
