"""Periodic history jobs shared by the coordinator and the embedded gateway."""

from __future__ import annotations

import logging

import asyncpg

from .history import ts

log = logging.getLogger("roomcast.jobs")

SQL_HEARTBEATS = """
UPDATE websocket_connections AS c SET last_heartbeat = v.hb
  FROM unnest($1::varchar[], $2::timestamp[]) AS v(socket_id, hb)
 WHERE c.socket_id = v.socket_id AND c.status = 'active'
   AND (c.last_heartbeat IS NULL OR c.last_heartbeat < v.hb)
"""
SQL_RETENTION = """
DELETE FROM websocket_connections
 WHERE connected_at < (now() AT TIME ZONE 'utc') - make_interval(days => $1) AND status <> 'active'
"""


async def update_heartbeats(pool: asyncpg.Pool, beats: dict[str, int]) -> int:
    """One statement for all sockets' latest heartbeat (not one per ping)."""
    if not beats:
        return 0
    sockets = list(beats)
    async with pool.acquire() as conn:
        status = await conn.execute(SQL_HEARTBEATS, sockets, [ts(beats[s]) for s in sockets])
    return int(status.split()[-1])


async def delete_old_connections(pool: asyncpg.Pool, days: int) -> int:
    async with pool.acquire() as conn:
        status = await conn.execute(SQL_RETENTION, days)
    n = int(status.split()[-1])
    if n:
        log.info("retention: deleted %d connection rows older than %d days", n, days)
    return n
