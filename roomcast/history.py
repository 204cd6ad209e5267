"""History: turn room events and connection lifecycle records into Postgres rows, in batches.

The flusher (coordinator in a cluster, in-process in embedded mode) takes a `Batch` from
a `HistorySource`, writes it with `PostgresWriter.write` in one transaction, and only then
acknowledges it to the source (design invariant 5). Writes are idempotent:
`roomcast_flush_state` records how far each room is persisted, so a redelivered event is
skipped; connections are keyed by socket_id. A unit (one lifecycle record or one room
event) that cannot be written even on its own is returned as a dead letter, and the rest
of the batch still commits.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncpg
import orjson

log = logging.getLogger("roomcast.history")

# created_by is a UUID column; an anonymous creator is recorded as a stable UUID of its device.
DEVICE_NAMESPACE = uuid.UUID("6f1f9b1e-5d0a-4c53-9a43-726f6f6d6361")
PARTICIPANT_KINDS = frozenset({"participant_joined", "participant_left", "participant_disconnected",
                               "participant_reconnected", "host_changed", "room_closed"})


def device_uuid(device_id: str) -> uuid.UUID:
    return uuid.uuid5(DEVICE_NAMESPACE, "device:" + device_id)


def ts(ms: int | str) -> datetime:
    return datetime.fromtimestamp(int(ms) / 1000, UTC).replace(tzinfo=None)


def _uuid(value: Any) -> uuid.UUID | None:
    return uuid.UUID(str(value)) if value else None


@dataclass
class RoomChunk:
    room_id: str
    events: list[tuple[int, bytes]]  # (seq, frame), in seq order
    snapshot: dict[str, str] | None  # the room's current fields (the Redis room hash shape)


@dataclass
class LifecycleRecord:
    id: str
    fields: dict[str, str]


@dataclass
class Batch:
    rooms: list[RoomChunk] = field(default_factory=list)
    lifecycle: list[LifecycleRecord] = field(default_factory=list)

    def __len__(self) -> int:
        return sum(len(c.events) for c in self.rooms) + len(self.lifecycle)


@dataclass
class DeadLetter:
    source: str  # "lifecycle" or "room:<id>"
    ref: str  # stream id or seq
    data: str
    error: str


@dataclass
class WriteResult:
    rows: Counter[str] = field(default_factory=Counter)
    dead: list[DeadLetter] = field(default_factory=list)
    persisted_seq: dict[str, int] = field(default_factory=dict)  # room -> last seq now in Postgres


class HistorySource(Protocol):
    """Where unflushed history waits (Redis streams, or memory in embedded mode)."""

    async def take(self, max_rows: int) -> Batch: ...

    async def commit(self, batch: Batch, result: WriteResult) -> None:
        """Acknowledge a written batch (only after the Postgres commit)."""
        ...

    async def give_back(self, batch: Batch) -> None:
        """A batch could not be written (Postgres down): keep it for the next try."""
        ...

    async def dead_letter(self, letters: list[DeadLetter]) -> None: ...

    async def backlog(self) -> int: ...


# ---------------------------------------------------------------- rows (pure)


def refused(rec: LifecycleRecord) -> bool:
    """A socket closed by a limit before its welcome (e.g. 4008): never a connection."""
    return rec.fields.get("kind") == "disconnect" and rec.fields.get("reason") == "refused"


def connection_args(rec: LifecycleRecord) -> tuple[Any, ...]:
    f = rec.fields
    kind = "refused" if refused(rec) else f["kind"]
    meta = f.get("metadata")
    reconnects = f.get("reconnect_count")
    return (
        kind, f["socket_id"], f["device_id"], _uuid(f.get("user_id")), ts(f["ts"]),
        f.get("status") or ("active" if kind == "connect" else "disconnected"),
        f.get("ip") or None, f.get("user_agent") or None, f.get("fingerprint") or None,
        meta if meta not in (None, "") else None,
        int(reconnects) if reconnects not in (None, "") else None,
    )


def room_status(snapshot: dict[str, str]) -> str:
    """The room's status for game_rooms: a game that completed stays `completed` after its
    room closes (closed_at says it closed), so the completion rate counts it."""
    status = snapshot["status"]
    if status == "closed" and snapshot.get("status_at_close") == "completed":
        return "completed"
    return status


def room_args(snapshot: dict[str, str]) -> tuple[Any, ...]:
    creator = snapshot.get("creator_user") or None
    created_by = _uuid(creator) if creator else device_uuid(snapshot["created_by"])
    closed = snapshot.get("closed_at")
    return (
        snapshot["room_id"], ts(snapshot["created_at"]), ts(snapshot.get("updated_at") or snapshot["created_at"]),
        ts(closed) if closed else None, created_by, snapshot["game_type"], snapshot.get("game_data") or "{}",
        room_status(snapshot), int(snapshot["max_players"]), int(snapshot.get("players") or 0),
        # The password's hash ('' = none), kept so a room Redis lost is rebuilt with it.
        snapshot.get("password_hash") or "",
    )


SERVICE_PREFIX = "service:"


def event_rows(room_id: str, seq: int, frame: bytes) -> tuple[tuple[Any, ...], tuple[Any, ...] | None]:
    """(game_events row, participant change or None) for one event frame."""
    e = orjson.loads(frame)
    if not isinstance(e, dict):
        raise TypeError("event frame is not a JSON object")
    sender = e.get("from") or {}
    payload = e.get("payload")
    # A malformed frame must become a dead letter (TypeError), not an AttributeError below.
    if not isinstance(sender, dict) or not (payload is None or isinstance(payload, dict)):
        raise TypeError("event `from` and `payload` must be JSON objects or null")
    kind = e["event_type"]
    device = sender.get("device_id") or (payload or {}).get("device_id")
    socket = sender.get("socket_id")
    if isinstance(sender.get("service"), str):
        # An event of the server API: its service in socket_id as `service:<name>` (socket ids
        # never contain ':'), so the frame read back (history_read.frame_of) is the one sent.
        socket = SERVICE_PREFIX + sender["service"]
    event = (
        room_id, kind, socket, device, _uuid(sender.get("user_id")), ts(e["ts"]),
        e.get("action"), None if payload is None else orjson.dumps(payload).decode(), seq,
    )
    change = None
    if kind in PARTICIPANT_KINDS:
        p = payload or {}
        change = (kind, room_id, p.get("device_id"), socket, _uuid(sender.get("user_id")),
                  p.get("role"), ts(e["ts"]))
    return event, change


# ---------------------------------------------------------------- writer

SQL_CONNECTION = "SELECT roomcast_apply_connection($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11::int)"
SQL_PARTICIPANT = "SELECT roomcast_apply_participant($1, $2, $3, $4, $5, $6, $7)"
SQL_ROOM = """
WITH room AS (
INSERT INTO game_rooms (room_id, created_at, updated_at, closed_at, created_by, game_type, game_data,
                        status, max_players, current_players)
VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8::room_status, $9, $10)
ON CONFLICT (room_id) DO UPDATE SET
    updated_at = GREATEST(game_rooms.updated_at, EXCLUDED.updated_at),
    closed_at = COALESCE(EXCLUDED.closed_at, game_rooms.closed_at),
    game_data = EXCLUDED.game_data, status = EXCLUDED.status,
    max_players = EXCLUDED.max_players, current_players = EXCLUDED.current_players
RETURNING room_id
)
INSERT INTO roomcast_room_access (room_id, password_hash) SELECT room_id, $11 FROM room
ON CONFLICT (room_id) DO NOTHING
"""
SQL_EVENTS = """
INSERT INTO game_events (room_id, event_type, socket_id, device_id, user_id, "timestamp", action, payload,
                         sequence_number)
SELECT * FROM unnest($1::varchar[], $2::varchar[], $3::varchar[], $4::varchar[], $5::uuid[], $6::timestamp[],
                     $7::varchar[], $8::jsonb[], $9::int[])
ON CONFLICT (room_id, sequence_number) DO NOTHING
"""
SQL_FLUSH_STATE = """
INSERT INTO roomcast_flush_state (room_id, last_seq) VALUES ($1, $2)
ON CONFLICT (room_id) DO UPDATE SET last_seq = GREATEST(roomcast_flush_state.last_seq, EXCLUDED.last_seq)
"""

# Errors that mean "Postgres is unreachable right now": retry later, lose nothing.
TRANSIENT = (OSError, asyncpg.exceptions.ConnectionDoesNotExistError, asyncpg.exceptions.InterfaceError,
             asyncpg.exceptions.CannotConnectNowError, asyncpg.exceptions.AdminShutdownError,
             asyncpg.exceptions.TooManyConnectionsError, asyncpg.exceptions.ConnectionFailureError, TimeoutError)


class PostgresWriter:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def ping(self) -> None:
        """Raise (a TRANSIENT error) unless Postgres answers: the flusher's check while idle."""
        async with self.pool.acquire() as conn:
            await conn.execute("SELECT 1")

    async def write(self, batch: Batch) -> WriteResult:
        """Write a batch in one transaction; on a data error, retry unit by unit and
        return the units that fail alone as dead letters. Connection errors propagate
        (the caller keeps the batch and retries later)."""
        async with self.pool.acquire() as conn:
            try:
                async with conn.transaction():
                    return await self._write(conn, batch, careful=False)
            except TRANSIENT:
                raise
            except (asyncpg.PostgresError, ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
                log.warning("batch of %d failed (%s); retrying unit by unit", len(batch), exc)
            async with conn.transaction():
                return await self._write(conn, batch, careful=True)

    async def _unit(self, conn: asyncpg.Connection, careful: bool, result: WriteResult, source: str, ref: str,
                    data: str, sql: str, args: tuple[Any, ...]) -> bool:
        if not careful:
            await conn.execute(sql, *args)
            return True
        try:
            async with conn.transaction():  # a savepoint: one bad unit does not abort the rest
                await conn.execute(sql, *args)
            return True
        except TRANSIENT:
            raise
        except (asyncpg.PostgresError, ValueError, TypeError) as exc:
            result.dead.append(DeadLetter(source, ref, data, f"{type(exc).__name__}: {exc}"))
            return False

    async def _write(self, conn: asyncpg.Connection, batch: Batch, careful: bool) -> WriteResult:
        result = WriteResult()
        # A socket refused before its welcome leaves no row: its connect and its refusal
        # are both dropped when they meet in one batch (else `refused` undoes the row).
        gone = {r.fields.get("socket_id") for r in batch.lifecycle if refused(r)}
        connects = [r for r in batch.lifecycle if r.fields.get("kind") == "connect"
                    and r.fields.get("socket_id") not in gone]
        met = {r.fields.get("socket_id") for r in batch.lifecycle if r.fields.get("kind") == "connect"} & gone
        others = [r for r in batch.lifecycle if r.fields.get("kind") != "connect"
                  and not (refused(r) and r.fields.get("socket_id") in met)]
        # Connects first so a disconnect in the same batch finds its row.
        for rec in connects + others:
            data = orjson.dumps(rec.fields).decode()
            try:
                args = connection_args(rec)
            except (KeyError, ValueError, TypeError) as exc:
                if not careful:
                    raise
                result.dead.append(DeadLetter("lifecycle", rec.id, data, f"{type(exc).__name__}: {exc}"))
                continue
            if careful:
                if await self._unit(conn, True, result, "lifecycle", rec.id, data, SQL_CONNECTION, args):
                    result.rows["websocket_connections"] += 1
            else:
                await conn.execute(SQL_CONNECTION, *args)
                result.rows["websocket_connections"] += 1
        if not batch.rooms:
            return result
        done = {r["room_id"]: r["last_seq"] for r in await conn.fetch(
            "SELECT room_id, last_seq FROM roomcast_flush_state WHERE room_id = ANY($1::varchar[]) FOR UPDATE",
            [c.room_id for c in batch.rooms])}
        for chunk in batch.rooms:
            if chunk.snapshot is not None:
                try:
                    args = room_args(chunk.snapshot)
                except (KeyError, ValueError, TypeError) as exc:
                    if not careful:
                        raise
                    result.dead.append(DeadLetter(f"room:{chunk.room_id}", "snapshot",
                                                  orjson.dumps(chunk.snapshot).decode(), str(exc)))
                else:
                    if await self._unit(conn, careful, result, f"room:{chunk.room_id}", "snapshot",
                                        orjson.dumps(chunk.snapshot).decode(), SQL_ROOM, args):
                        result.rows["game_rooms"] += 1
            last = done.get(chunk.room_id, 0)
            fresh = [(seq, frame) for seq, frame in chunk.events if seq > last]
            if fresh:
                await self._room_events(conn, careful, result, chunk.room_id, fresh)
                last = max(last, fresh[-1][0])
            if chunk.events:
                last = max(last, chunk.events[-1][0])
                await conn.execute(SQL_FLUSH_STATE, chunk.room_id, last)
            result.persisted_seq[chunk.room_id] = last
        return result

    async def _room_events(self, conn: asyncpg.Connection, careful: bool, result: WriteResult, room_id: str,
                           events: list[tuple[int, bytes]]) -> None:
        source = f"room:{room_id}"
        if not careful:
            rows, changes = [], []
            for seq, frame in events:
                row, change = event_rows(room_id, seq, frame)
                rows.append(row)
                if change is not None:
                    changes.append(change)
            await conn.execute(SQL_EVENTS, *[list(col) for col in zip(*rows, strict=True)])
            result.rows["game_events"] += len(rows)
            if changes:
                await conn.executemany(SQL_PARTICIPANT, changes)
                result.rows["room_participants"] += len(changes)
            return
        for seq, frame in events:
            data = frame.decode(errors="replace")
            try:
                row, change = event_rows(room_id, seq, frame)
            except (KeyError, ValueError, TypeError, orjson.JSONDecodeError) as exc:
                result.dead.append(DeadLetter(source, str(seq), data, f"{type(exc).__name__}: {exc}"))
                continue
            if await self._unit(conn, True, result, source, str(seq), data, SQL_EVENTS,
                                tuple([v] for v in row)):
                result.rows["game_events"] += 1
                if change is not None and await self._unit(conn, True, result, source, str(seq), data,
                                                           SQL_PARTICIPANT, change):
                    result.rows["room_participants"] += 1
