"""History's contract: what the flusher takes from a source and how events become rows. Pure.

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

import orjson

from roomcast.protocol import RESERVED_EVENT_TYPES

log = logging.getLogger("roomcast.history")

# created_by is a UUID column; an anonymous creator is recorded as a stable UUID of its device.
DEVICE_NAMESPACE = uuid.UUID("6f1f9b1e-5d0a-4c53-9a43-726f6f6d6361")
# The server-made events that change who is in a room (every reserved type but state_change).
PARTICIPANT_KINDS = RESERVED_EVENT_TYPES - {"state_change"}


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
    stream: str = ""  # the Redis stream it was read from (its bucket in a Redis Cluster)


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


@dataclass
class StoredRoom:
    """What Postgres knows of a room, enough to rebuild it in Redis."""

    room_id: str
    game_type: str
    status: str  # `completed` stays after the room closes: `closed` says whether it did
    max_players: int
    game_data: str
    created_ms: int
    created_by: str
    last_seq: int
    host_device: str
    members: list[tuple[str, str | None, str, int]]  # (device, user, role, joined_ms), not left
    closed: bool = False
    # The room's password hash ('' = no password); None if history does not know it (a room
    # last flushed before migration 0004): such a room may have had one and is not restored.
    password_hash: str | None = None
