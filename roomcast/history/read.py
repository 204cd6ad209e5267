"""Reading history back from Postgres: old event ranges for `join` with an old `since`."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson

from roomcast.errors import ErrorCode, GatewayError
from roomcast.history.base import StoredRoom
from roomcast.protocol import event_frame, event_tail

SQL_RANGE = """
SELECT sequence_number, event_type, action, payload::text AS payload, socket_id, device_id, user_id,
       (extract(epoch FROM "timestamp") * 1000)::bigint AS ms
  FROM game_events
 WHERE room_id = $1 AND sequence_number > $2 AND sequence_number <= $3
 ORDER BY sequence_number
"""


SQL_COUNT = """
SELECT count(*) FROM game_events WHERE room_id = $1 AND sequence_number > $2 AND sequence_number <= $3
"""


def frame_of(room_id: str, row: Any) -> bytes:
    """Rebuild an event frame from its game_events row (payload key order may differ)."""
    sender: dict[str, Any] | None = None
    if row["socket_id"] is not None and row["socket_id"].startswith("service:"):  # history.SERVICE_PREFIX
        sender = {"service": row["socket_id"][len("service:"):], "socket_id": None, "device_id": None,
                  "user_id": None}
    elif row["socket_id"] is not None:
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

    async def count(self, room_id: str, after: int, upto: int) -> int:
        """How many events after < seq <= upto are stored (all of them: upto - after)."""
        async with self.pool.acquire() as conn:
            return int(await conn.fetchval(SQL_COUNT, room_id, after, upto))


SQL_ROOM = """
SELECT r.room_id, r.game_type, r.status::text AS status, r.max_players, r.game_data::text AS game_data,
       (extract(epoch FROM r.created_at) * 1000)::bigint AS created_ms, r.created_by,
       r.closed_at IS NOT NULL AS closed,
       (SELECT a.password_hash FROM roomcast_room_access a WHERE a.room_id = r.room_id) AS password_hash,
       GREATEST(COALESCE((SELECT last_seq FROM roomcast_flush_state f WHERE f.room_id = r.room_id), 0),
                COALESCE((SELECT max(sequence_number) FROM game_events e WHERE e.room_id = r.room_id), 0)) AS last_seq
  FROM game_rooms r WHERE r.room_id = $1
"""
SQL_MEMBERS = """
SELECT DISTINCT ON (device_id) device_id, user_id, role, status::text AS status,
       (extract(epoch FROM joined_at) * 1000)::bigint AS joined_ms
  FROM room_participants WHERE room_id = $1 ORDER BY device_id, joined_at DESC
"""


async def stored_room(pool: asyncpg.Pool, room_id: str) -> StoredRoom | None:
    """What history knows of a room (None: nothing); `unavailable` if Postgres cannot be asked."""
    try:
        async with pool.acquire() as conn:
            row = await conn.fetchrow(SQL_ROOM, room_id)
            if row is None:
                return None
            members = await conn.fetch(SQL_MEMBERS, room_id)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise GatewayError(ErrorCode.UNAVAILABLE, "room history unavailable; retry") from exc
    host = next((m["device_id"] for m in members if m["role"] == "host"), "")
    return StoredRoom(
        room_id=row["room_id"], game_type=row["game_type"], status=row["status"], max_players=row["max_players"],
        game_data=row["game_data"], created_ms=int(row["created_ms"]), created_by=str(row["created_by"] or ""),
        last_seq=int(row["last_seq"]), host_device=host,
        members=[(m["device_id"], None if m["user_id"] is None else str(m["user_id"]), m["role"], int(m["joined_ms"]))
                 for m in members if m["status"] != "left"],
        closed=bool(row["closed"]) or row["status"] == "closed", password_hash=row["password_hash"],
    )
