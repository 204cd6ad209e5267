"""Periodic history jobs shared by the coordinator and the embedded gateway."""

from __future__ import annotations

import logging

import asyncpg

from roomcast.history.base import ts

log = logging.getLogger("roomcast.jobs")

SQL_HEARTBEATS = """
UPDATE websocket_connections AS c SET last_heartbeat = v.hb
  FROM unnest($1::varchar[], $2::timestamp[]) AS v(socket_id, hb)
 WHERE c.socket_id = v.socket_id AND c.status = 'active'
   AND (c.last_heartbeat IS NULL OR c.last_heartbeat < v.hb)
"""
# "Archive old connections (> 30 days)": one statement moves a bounded chunk of rows to
# websocket_connections_archive (same columns) and deletes them from the live table, so
# no row is ever in neither; a row already archived (a repeated run) is not duplicated.
ARCHIVE_COLUMNS = ("id, socket_id, device_id, user_id, connected_at, disconnected_at, last_heartbeat, "
                   "reconnect_count, ip_address, user_agent, metadata, status")
SQL_ARCHIVE = f"""
WITH moved AS (
    DELETE FROM websocket_connections
     WHERE id IN (SELECT id FROM websocket_connections
                   WHERE connected_at < (now() AT TIME ZONE 'utc') - make_interval(days => $1)
                     AND status <> 'active'
                   LIMIT $2)
    RETURNING {ARCHIVE_COLUMNS}
), archived AS (
    INSERT INTO websocket_connections_archive ({ARCHIVE_COLUMNS})
    SELECT {ARCHIVE_COLUMNS} FROM moved
    ON CONFLICT (socket_id) DO NOTHING
)
SELECT count(*) FROM moved
"""
ARCHIVE_CHUNK = 5000
ARCHIVE_MAX_CHUNKS = 100  # per run; the next run carries on


async def update_heartbeats(pool: asyncpg.Pool, beats: dict[str, int]) -> int:
    """One statement for all sockets' latest heartbeat (not one per ping)."""
    if not beats:
        return 0
    sockets = list(beats)
    async with pool.acquire() as conn:
        status = await conn.execute(SQL_HEARTBEATS, sockets, [ts(beats[s]) for s in sockets])
    return int(status.split()[-1])


async def archive_old_connections(pool: asyncpg.Pool, days: int, chunk: int = ARCHIVE_CHUNK) -> int:
    """Move connection rows older than `days` (not active) to the archive; return how many
    left the live table."""
    moved = 0
    for _ in range(ARCHIVE_MAX_CHUNKS):
        async with pool.acquire() as conn:
            n = int(await conn.fetchval(SQL_ARCHIVE, days, chunk))
        moved += n
        if n < chunk:
            break
    if moved:
        log.info("retention: archived %d connection rows older than %d days", moved, days)
    return moved


# ---------------------------------------------------------------- personal-data retention

SQL_STRIP_CONNECTIONS = """
UPDATE websocket_connections SET ip_address = NULL, user_agent = NULL, metadata = NULL
 WHERE connected_at < (now() AT TIME ZONE 'utc') - make_interval(days => $1)
   AND (ip_address IS NOT NULL OR user_agent IS NOT NULL OR metadata IS NOT NULL)
"""
SQL_STRIP_ARCHIVE = SQL_STRIP_CONNECTIONS.replace("UPDATE websocket_connections ",
                                                  "UPDATE websocket_connections_archive ")
SQL_STRIP_DEVICES = """
UPDATE device_sessions SET browser_fingerprint = NULL, metadata = NULL
 WHERE last_seen < (now() AT TIME ZONE 'utc') - make_interval(days => $1)
   AND (browser_fingerprint IS NOT NULL OR metadata IS NOT NULL)
"""


async def strip_old_personal_data(pool: asyncpg.Pool, days: int) -> int:
    """Retention: personal fields of rows older than `days` are erased (the rows stay for
    analytics). Returns how many rows were changed."""
    async with pool.acquire() as conn:
        a = int((await conn.execute(SQL_STRIP_CONNECTIONS, days)).split()[-1])
        a += int((await conn.execute(SQL_STRIP_ARCHIVE, days)).split()[-1])
        b = int((await conn.execute(SQL_STRIP_DEVICES, days)).split()[-1])
    if a or b:
        log.info("retention: erased personal fields of %d connections and %d devices older than %d days", a, b, days)
    return a + b
