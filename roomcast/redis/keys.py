"""The Redis key layout (requirements: "Redis Data Structures"), shared by gateway and coordinator.

The requirements name keys like `ws:room:{room_id}`; we keep the braces literally, which
makes `{room_id}` a Redis Cluster hash tag: every key of one room lands in one slot, so a
room's Lua scripts never span slots (design invariant 2). Device keys are tagged by device.

Global keys written on the hot path (presence, the prune queue, the room indexes, the
MAX_ROOMS count, the flusher's dirty set, cursors and lifecycle stream) are one key on a
single Redis; in a Redis Cluster each is spread over buckets (`spread`: the entity's
bucket is its own hash tag `{ws:b<n>}`, Batcher.bucket), so no key or slot takes writes in
proportion to the whole cluster's traffic, and readers enumerate the buckets. The layout
and why: docs/redis-layout.md.
"""

from __future__ import annotations

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

PREFIX = "ws"
# A Redis Cluster spreads each global key over this many buckets (keys.spread).
SPREAD = 16


def _bucket_tag(bucket: int) -> str:
    """The hash tag of a bucket: `ws:b<bucket>` with the first suffix whose slot is in the
    bucket's sixteenth of the slot space, so the buckets split evenly over evenly split shards."""
    width = REDIS_CLUSTER_HASH_SLOTS // SPREAD
    for n in range(100_000):
        tag = f"ws:b{bucket}" if n == 0 else f"ws:b{bucket}.{n}"
        if key_slot(tag.encode()) // width == bucket:
            return tag
    raise AssertionError("no tag found")  # pragma: no cover - a few dozen tries suffice


BUCKET_TAGS = tuple(_bucket_tag(b) for b in range(SPREAD))
PRESENCE = "ws:presence"  # zset: socket_id -> last heartbeat (ms)
ROOM_INDEX = "ws:rooms"  # zset: room_id -> created_at (ms), every room (cleanup jobs)
ROOM_INDEXES_BUILT = "ws:rooms:indexed"  # string: list_rooms' status indexes hold every room of ROOM_INDEX
DISCONNECTED = "ws:disconnected"  # zset: "room_id|device_id" -> disconnected at (ms), for pruning
NODES = "ws:nodes"  # zset: node_id -> last registration (ms)
REAPER_LEASE = "ws:lease:coordinator"
LIFECYCLE = "ws:lifecycle"  # stream: connection lifecycle records, consumed by the flusher
FLUSH_DIRTY = "ws:flush:dirty"  # set: rooms with events not yet persisted
FLUSH_CURSOR = "ws:flush:cursor"  # hash: room_id -> last seq persisted to Postgres
DEADLETTER = "ws:deadletter"  # stream: history units that could not be written
FLUSH_GROUP = "flusher"
ROOMS_ALIVE = "ws:rooms:alive"  # zset: room_id -> when its state expires (ms; +inf while open), for MAX_ROOMS


def spread(name: str, bucket: int | None) -> str:
    """One bucket of a global key: the key itself on a single Redis (bucket None), in a
    cluster `<name>:{<the bucket's tag>}` (every key of one bucket in one slot)."""
    return name if bucket is None else f"{name}:{{{BUCKET_TAGS[bucket]}}}"


def owned(owner_key: str) -> str:
    """Zset: room ids created by one owner (RoomOwner.key: an address or user hash) -> created at."""
    return f"ws:owned:{owner_key}"


def rooms_by_status(status: str, bucket: int | None = None) -> str:
    """Zset: public rooms (no password) in this status, room_id -> created_at (list_rooms)."""
    return spread(f"ws:rooms:status:{status}", bucket)


def rooms_by_status_game(status: str, game_type: str, bucket: int | None = None) -> str:
    """Zset: public rooms in this status and of this game type, room_id -> created_at."""
    return spread(f"ws:rooms:status:{status}:game:{game_type}", bucket)


def room(room_id: str) -> str:
    """Hash: the room's fields, `seq`, `epoch`, `players`, `game_data` (JSON)."""
    return f"ws:room:{{{room_id}}}"


def participants(room_id: str) -> str:
    """Set: socket ids of the room's active participants (as the requirements define)."""
    return f"ws:room:{{{room_id}}}:participants"


def members(room_id: str) -> str:
    """Hash: device_id -> "role|status|socket_id|user_id|joined_at"."""
    return f"ws:room:{{{room_id}}}:members"


def stream(room_id: str) -> str:
    """Stream: the room's events, entry id `<seq>-0`, field `f` = the event frame."""
    return f"ws:room:{{{room_id}}}:stream"


def idempotency(room_id: str) -> str:
    """Hash: idempotency key -> the seq its event got (IDEMPOTENCY_WINDOW; see redis_scripts)."""
    return f"ws:room:{{{room_id}}}:idem"


def idempotency_at(room_id: str) -> str:
    """Zset: idempotency key -> when it was first used (ms), to expire and cap the keys."""
    return f"ws:room:{{{room_id}}}:idem:at"


def channel(room_id: str) -> str:
    """Pub/sub channel of the room's live events."""
    return f"ws:room:{{{room_id}}}:events"


CHANNEL_PREFIX = b"ws:room:{"
CHANNEL_SUFFIX = b"}:events"


def room_of_channel(name: bytes) -> str | None:
    if name.startswith(CHANNEL_PREFIX) and name.endswith(CHANNEL_SUFFIX):
        return name[len(CHANNEL_PREFIX) : -len(CHANNEL_SUFFIX)].decode()
    return None


def connection(device_id: str) -> str:
    """Hash: socket_id, connected_at, last_heartbeat, user_id, connections, sockets."""
    return f"ws:connections:{{{device_id}}}"


def device_rooms(device_id: str) -> str:
    """Set: rooms where the device is a participant (active or disconnected)."""
    return f"ws:connections:{{{device_id}}}:rooms"


def device_token(device_id: str) -> str:
    """String with a TTL (DEVICE_TOKEN_TTL): the hash of the device's token (never the token)."""
    return f"ws:connections:{{{device_id}}}:token"


def device_limit(device_id: str, what: str) -> str:
    """Hash with a TTL {tokens, at}: one of the device's rate-limit buckets (`connect`,
    `join`), in the device's slot so that the hello's and the join's device steps take it
    in the same atomic step as their own work (roomcast/limits/redis.py)."""
    return f"ws:connections:{{{device_id}}}:rl:{what}"


def socket(socket_id: str) -> str:
    """String: the socket's device_id."""
    return f"ws:socket:{socket_id}"


def node(node_id: str) -> str:
    """String with a TTL: this replica is alive."""
    return f"ws:node:{node_id}"


def node_probe(node_id: str) -> str:
    """Pub/sub channel a replica publishes to itself to prove its subscription works."""
    return f"ws:node:{node_id}:probe"


# Pub/sub channel every replica subscribes to: the server API's cluster-wide control
# messages (kick a device's sockets out of a room, close a device's sockets).
# The server API's control messages (kick, disconnect) to every replica: a sharded channel
# shaped like a room's, of a room id no client can have (room ids are [A-Za-z0-9_-]), so the
# bus subscribes it on the shard that owns its slot like any room.
CONTROL_ROOM = "~control"
CONTROL = channel(CONTROL_ROOM)


def control_reply(request_id: str) -> str:
    """Hash (short TTL): how many replicas applied a control message (`replied`) and the
    sockets they acted on (`n`)."""
    return f"ws:control:reply:{request_id}"
