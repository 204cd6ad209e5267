"""GDPR tools the coordinator runs: export everything stored about a device, or erase it
("forget-device"). (The retention job that strips personal fields from old rows is a
cleanup job: roomcast.history.jobs.)

Erasure deletes the device's own rows (connections, device session, participations),
anonymises what other people's history still needs (room events keep their place and
seq, but not the device), and removes every Redis record of it, including stream entries
that mention it. Afterwards the device id, its keyed hashes and its UUID appear nowhere.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson

from roomcast.history.base import device_uuid
from roomcast.privacy import Privacy
from roomcast.redis import keys
from roomcast.redis.batch import Batcher, cmd

log = logging.getLogger("roomcast.erasure")
FORGOTTEN = "forgotten"


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


@dataclass
class EraseReport:
    postgres: dict[str, int] = field(default_factory=dict)
    redis_keys: int = 0
    redis_entries: int = 0

    def wire(self) -> dict[str, Any]:
        return {"postgres": self.postgres, "redis_keys_deleted": self.redis_keys,
                "redis_entries_rewritten_or_deleted": self.redis_entries}


async def _device_rooms(pool: asyncpg.Pool | None, b: Batcher | None, device_id: str) -> set[str]:
    rooms: set[str] = set()
    if b is not None:
        rooms |= {_s(r) for r in await b.call(cmd("smembers", keys.device_rooms(device_id)))}
    if pool is not None:
        async with pool.acquire() as conn:
            rows = await conn.fetch("SELECT DISTINCT room_id FROM room_participants WHERE device_id = $1 "
                                    "UNION SELECT DISTINCT room_id FROM game_events WHERE device_id = $1", device_id)
        rooms |= {r["room_id"] for r in rows}
    return rooms


async def forget_device(device_id: str, *, pool: asyncpg.Pool | None, batcher: Batcher | None) -> EraseReport:
    report = EraseReport()
    rooms = await _device_rooms(pool, batcher, device_id)
    sockets: set[str] = set()
    if pool is not None:
        async with pool.acquire() as conn:
            sockets |= {r["socket_id"] for r in await conn.fetch(
                "SELECT socket_id FROM websocket_connections WHERE device_id = $1 UNION "
                "SELECT socket_id FROM websocket_connections_archive WHERE device_id = $1", device_id)}
    if batcher is not None:
        current = await batcher.call(cmd("hget", keys.connection(device_id), "socket_id"))
        if current:
            sockets.add(_s(current))
        await _forget_in_redis(batcher, device_id, rooms, sockets, report)
    if pool is not None:
        await _forget_in_postgres(pool, device_id, report)
    log.info("forgot device %s: %s", device_id, report.wire())
    return report


async def _forget_in_redis(b: Batcher, device_id: str, rooms: set[str], sockets: set[str],
                           report: EraseReport) -> None:
    needle = device_id.encode()
    doomed = [keys.connection(device_id), keys.device_rooms(device_id), keys.device_token(device_id),
              keys.device_limit(device_id, "connect"), keys.device_limit(device_id, "join"),
              *(keys.socket(s) for s in sockets)]
    # One DEL per key: the socket keys are in other slots than the device's (a cluster).
    deleted = [b.call(cmd("delete", key)) for key in doomed]
    report.redis_keys += sum([int(await d) for d in deleted])
    for sock in sockets:
        b.call(cmd("zrem", keys.spread(keys.PRESENCE, b.bucket(sock)), sock))
    for room_id in rooms:
        b.call(cmd("zrem", keys.spread(keys.DISCONNECTED, b.bucket(room_id)), f"{room_id}|{device_id}"))
        member = await b.call(cmd("hget", keys.members(room_id), device_id))
        if member is not None:
            role, status = _s(member).split("|")[:2]
            b.call(cmd("hdel", keys.members(room_id), device_id))
            if status != "left":
                b.call(cmd("hincrby", keys.room(room_id), "occupants", -1))
                if role != "spectator":
                    b.call(cmd("hincrby", keys.room(room_id), "players", -1))
        for sock in sockets:
            b.call(cmd("srem", keys.participants(room_id), sock))
        fields = await b.call(cmd("hgetall", keys.room(room_id)))
        for name, value in (fields or {}).items():
            if needle in value:
                b.call(cmd("hset", keys.room(room_id), name, value.replace(needle, FORGOTTEN.encode())))
                report.redis_entries += 1
        report.redis_entries += await _scrub_stream(b, keys.stream(room_id), needle)
    for stream in (*(keys.spread(keys.LIFECYCLE, bucket) for bucket in b.buckets()), keys.DEADLETTER):
        report.redis_entries += await _scrub_stream(b, stream, needle)
    await b.call(cmd("ping"))


async def _scrub_stream(b: Batcher, stream: str, needle: bytes) -> int:
    """Delete the entries of a stream that mention the device (streams cannot be edited)."""
    removed, start = 0, "-"
    while True:
        entries = await b.call(cmd("xrange", stream, start, "+", count=1000))
        if not entries:
            return removed
        doomed = [eid for eid, fields in entries if any(needle in v or needle in k for k, v in fields.items())]
        if doomed:
            removed += int(await b.call(cmd("xdel", stream, *doomed)))
        if len(entries) < 1000:
            return removed
        last = _s(entries[-1][0])
        ms, seq = last.split("-")
        start = f"{ms}-{int(seq) + 1}"


async def _forget_in_postgres(pool: asyncpg.Pool, device_id: str, report: EraseReport) -> None:
    dev_uuid = device_uuid(device_id)
    async with pool.acquire() as conn, conn.transaction():
        async def run(name: str, sql: str, *args: Any) -> None:
            status = await conn.execute(sql, *args)
            report.postgres[name] = report.postgres.get(name, 0) + int(status.split()[-1])

        await run("websocket_connections", "DELETE FROM websocket_connections WHERE device_id = $1", device_id)
        await run("websocket_connections_archive", "DELETE FROM websocket_connections_archive WHERE device_id = $1",
                  device_id)
        await run("device_sessions", "DELETE FROM device_sessions WHERE device_id = $1", device_id)
        await run("roomcast_device_tokens", "DELETE FROM roomcast_device_tokens WHERE device_id = $1", device_id)
        await run("room_participants", "DELETE FROM room_participants WHERE device_id = $1", device_id)
        # Other people's history keeps its events and their order, but not this device.
        await run("game_events", """UPDATE game_events SET device_id = NULL, socket_id = NULL, user_id = NULL
                                     WHERE device_id = $1""", device_id)
        await run("game_events", """UPDATE game_events SET payload = replace(payload::text, $1, $2)::jsonb
                                     WHERE payload::text LIKE '%' || $1 || '%'""", device_id, FORGOTTEN)
        await run("game_rooms", """UPDATE game_rooms SET game_data = replace(game_data::text, $1, $2)::jsonb
                                    WHERE game_data::text LIKE '%' || $1 || '%'""", device_id, FORGOTTEN)
        await run("game_rooms", "UPDATE game_rooms SET created_by = NULL WHERE created_by = $1", dev_uuid)


async def export_device(device_id: str, *, pool: asyncpg.Pool | None, batcher: Batcher | None,
                        privacy: Privacy | None = None) -> dict[str, Any]:
    """Everything stored about a device, as JSON-ready data (user agents decrypted when a
    key is configured)."""
    out: dict[str, Any] = {"device_id": device_id}
    if pool is not None:
        async with pool.acquire() as conn:
            async def rows(sql: str) -> list[dict[str, Any]]:
                return [dict(r) for r in await conn.fetch(sql, device_id)]

            out["device_session"] = await rows("SELECT * FROM device_sessions WHERE device_id = $1")
            connections = await rows("SELECT * FROM websocket_connections_archive WHERE device_id = $1 "
                                     "UNION ALL SELECT * FROM websocket_connections WHERE device_id = $1 "
                                     "ORDER BY connected_at")
            for c in connections:
                if privacy is not None and c.get("user_agent"):
                    c["user_agent_decrypted"] = privacy.decrypt(c["user_agent"])
            out["connections"] = connections
            out["participations"] = await rows("SELECT * FROM room_participants WHERE device_id = $1 "
                                               "ORDER BY joined_at")
            out["events_sent"] = await rows("SELECT * FROM game_events WHERE device_id = $1 "
                                            "ORDER BY room_id, sequence_number")
    if batcher is not None:
        conn_hash = await batcher.call(cmd("hgetall", keys.connection(device_id)))
        out["live"] = {
            "connection": {_s(k): _s(v) for k, v in (conn_hash or {}).items()},
            "rooms": sorted(_s(r) for r in await batcher.call(cmd("smembers", keys.device_rooms(device_id)))),
        }
    return orjson.loads(orjson.dumps(out, default=str))  # type: ignore[no-any-return]
