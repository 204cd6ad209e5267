"""The room store's contract: `RoomStore` and the values it takes and returns.

`roomcast.store.memory` is the embedded default; `roomcast.store.redis` implements the
same contract for a cluster (the bus and presence contracts sit in `roomcast.bus` and
`roomcast.presence`). Each method is one atomic step on shared state, so an
implementation can map it to one Redis script.

Ordering contract: every room event gets the room's next `seq` and is appended to the
room's history and handed to the bus in the same atomic step as the state change that
caused it, so replay (`join` with `since`) and live delivery agree (design invariant 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from roomcast.errors import ErrorCode, GatewayError


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is acting: one socket of one device (and its user, if authenticated)."""

    socket_id: str
    device_id: str
    user_id: str | None

    def sender(self) -> dict[str, Any]:
        return {"socket_id": self.socket_id, "device_id": self.device_id, "user_id": self.user_id}


@dataclass(frozen=True, slots=True)
class Service:
    """A game backend acting through the server API (a key's name): not a participant."""

    name: str

    def sender(self) -> dict[str, Any]:
        return {"service": self.name, "socket_id": None, "device_id": None, "user_id": None}

    @property
    def created_by(self) -> str:
        """The room object's `created_by` of a room the service created."""
        return f"service:{self.name}"


@dataclass(frozen=True, slots=True)
class DeviceRoom:
    room_id: str
    role: str
    seq: int

    def wire(self) -> dict[str, Any]:
        return {"room_id": self.room_id, "role": self.role, "seq": self.seq}


@dataclass(frozen=True, slots=True)
class Budget:
    """A rate-limit bucket (roomcast.limits) that a store step takes one token from in the
    same atomic step as its own work: `key` names it (a device's bucket: keys.device_limit,
    in the device's slot), `rate` tokens per second, at most `burst`."""

    key: str
    rate: float
    burst: int


@dataclass(frozen=True, slots=True)
class ConnectResult:
    reconnect_count: int
    rooms: list[DeviceRoom]
    open_sockets: int = 1  # the device's open sockets across the cluster, this one included
    wait_ms: int = 0  # > 0: connect's budget was short, nothing was recorded; retry after this


@dataclass(frozen=True, slots=True)
class JoinCheck:
    """What a join needs to know before it goes ahead (RoomStore.admit_join)."""

    wait_ms: int  # > 0: the join budget is short (then nothing else was looked at)
    rooms: int  # the device's rooms other than the one joined (-1: not counted)
    password_hash: str | None  # the room's, None if it has none (or does not exist)


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """What a socket told us at hello, for the connection record."""

    ip: str | None = None
    user_agent: str | None = None
    fingerprint: str | None = None
    metadata: dict[str, Any] | None = None


@dataclass(slots=True)
class JoinResult:
    room: dict[str, Any]  # the protocol's `room` object
    participants: list[dict[str, Any]]
    seq: int  # the room's head when the join took effect
    epoch: str
    role: str  # the role the device holds now (a rejoin keeps its old role)
    recovered: bool  # every event after `since` is still kept (by the store; history may add older ones)
    # The replay, when there is one (`recovered`, or `since: 0`: the whole kept history even
    # when older events are gone): its first events (at most REPLAY_CHUNK, read in the join's
    # atomic step, so the join's own event cannot trim them away), and if it goes on,
    # `replay_rest_after`: the gateway reads the rest, replay_rest_after < seq <= `seq`, with
    # read_since in bounded chunks.
    replay: list[bytes] = field(default_factory=list)
    replay_rest_after: int | None = None
    first_kept: int = 0  # the oldest seq the store still keeps (`seq` + 1 if none)


# Events a join reads in its atomic step; the rest of a replay is read in chunks this size.
REPLAY_CHUNK = 32


@dataclass(slots=True)
class RoomPage:
    rooms: list[dict[str, Any]]  # protocol room objects
    next_after: tuple[int, str] | None = None  # (created_at, room_id) the next page starts after


@dataclass(frozen=True, slots=True)
class RoomOwner:
    """Who a new room counts against (MAX_ROOMS_PER_ADDRESS, MAX_ROOMS_PER_USER): `key` names
    the owner (a hash, never a raw address), `what` says which limit for the message."""

    key: str
    limit: int
    what: str


@dataclass(frozen=True, slots=True)
class NewRoom:
    room_id: str
    game_type: str
    max_players: int
    game_data: dict[str, Any]
    password_hash: str | None
    spectators_can_send: bool = False
    generated: bool = False  # the server drew this id (a join code), the client did not choose it
    owners: tuple[RoomOwner, ...] = ()  # each may hold at most `limit` rooms that still exist


def fail(code: ErrorCode, message: str) -> GatewayError:
    return GatewayError(code, message)


class RoomStore(Protocol):
    """Rooms, participants and connection records: the shared state of the cluster.

    Every method is atomic with respect to every other call on any replica. Methods
    raise GatewayError with a protocol error code (`not_found`, `room_closed`,
    `room_full`, `conflict`, `forbidden`, `not_member`, `bad_request`) for a refused
    request, and `unavailable` when the backend cannot be reached; a refused request
    changes nothing. Events a method makes are handed to the bus before it returns.
    """

    async def connect(self, caller: Caller, info: ConnectionInfo, now_ms: int,
                      budget: Budget | None = None) -> ConnectResult:
        """Record a new socket of a device; return its earlier-connection count and rooms.
        With `budget`, first take one token from it, in the same step: when it is short,
        nothing is recorded and the result's `wait_ms` says for how long."""
        ...

    async def disconnect(self, caller: Caller, status: str, reason: str, now_ms: int) -> None:
        """End a socket (`status` is `disconnected` or `timeout`). Participants whose current
        socket it was become `disconnected`, each with a `participant_disconnected` event.
        Idempotent: ending an ended socket does nothing."""
        ...

    async def restore(self, caller: Caller, now_ms: int) -> None:
        """Re-register a socket that is still open after the backend lost track of it
        (an outage); counts no new connection. The caller then rejoins its rooms."""
        ...

    async def create_room(self, caller: Caller, room: NewRoom, now_ms: int) -> JoinResult:
        """Create a room with the caller as `host`; `conflict` if the id exists, `forbidden`
        if an owner already has its limit of rooms that still exist, `unavailable` when
        MAX_ROOMS rooms exist."""
        ...

    async def device_room_count(self, device_id: str, other_than: str | None = None) -> int:
        """How many rooms the device is a participant of (active or disconnected), not
        counting `other_than` (a room being rejoined must not count against the cap)."""
        ...

    async def device_known(self, device_id: str) -> bool:
        """Whether the device has a connection record or rooms (for device-token checks)."""
        ...

    async def device_token_hash(self, device_id: str) -> str | None:
        """The hash of the device's token (DEVICE_TOKEN_TTL after its last use), if any."""
        ...

    async def set_device_token_hash(self, device_id: str, new: str | None, old: str | None, ttl_ms: int) -> bool:
        """Store `new` as the device's token hash (None: remove it) if the current one is
        `old` (None: there is none); False, changing nothing, otherwise. Atomic across
        the cluster."""
        ...

    async def touch_device_token(self, device_id: str, ttl_ms: int) -> None:
        """The token was used: keep its hash `ttl_ms` longer."""
        ...

    async def password_hash(self, room_id: str) -> str | None:
        """The stored password hash of a room, or None if it has none (or does not exist)."""
        ...

    async def admit_join(self, device_id: str, room_id: str, budget: Budget, count_rooms: bool,
                         now_ms: int) -> JoinCheck:
        """Before a join, in one go: take one token from the device's join `budget` (when
        short, nothing else is looked at), count the device's rooms other than `room_id`
        (if `count_rooms`; MAX_ROOMS_PER_DEVICE) and read the room's password hash."""
        ...

    async def join(
        self, caller: Caller, room_id: str, role: str, since: int | None, epoch: str | None, now_ms: int
    ) -> JoinResult:
        """Join (or rejoin) a room. Capacity counts players and the host, not spectators;
        a device that is already a participant keeps its role and place. Makes
        `participant_joined` (first join) or `participant_reconnected` (was disconnected).
        With `since`, `recovered` says whether every event after it is still kept; the
        replay is `replay` then, if `replay_rest_after` is set, read_since (JoinResult)."""
        ...

    async def leave(self, caller: Caller, room_id: str, now_ms: int) -> None:
        """Take the calling socket out of the room; the participant leaves (`participant_left`)
        with its last joined socket. `not_member` if this socket has not joined the room."""
        ...

    async def publish(self, caller: Caller, room_id: str, tail: bytes, now_ms: int,
                      idempotency_key: str | None = None) -> int:
        """Append a client event (tail from `protocol.event_tail`) and return its seq.

        With `idempotency_key`: if the same key was used in this room within
        IDEMPOTENCY_WINDOW (by anyone, on any replica), return that event's seq and append
        nothing. The check is part of the same atomic step that gives the seq (design
        invariant 11); a refused publish (not a member, closed room) notes no key. A room
        remembers at most IDEMPOTENCY_KEYS_PER_ROOM keys (the newest); its keys are forgotten
        when it closes."""
        ...

    async def update_room(
        self, caller: Caller, room_id: str, status: str | None, patch: dict[str, Any] | None, now_ms: int
    ) -> int:
        """Host only: set status and/or merge-patch game_data; makes `state_change`."""
        ...

    async def close_room(self, caller: Caller, room_id: str, now_ms: int) -> int:
        """Host only: close the room with `room_closed` (its last event); members leave."""
        ...

    async def read_since(
        self, room_id: str, after: int, upto: int | None = None, limit: int | None = None
    ) -> list[tuple[int, bytes]]:
        """(seq, frame) of the room's kept events with after < seq <= upto, in order; at most
        `limit` of them (the first ones)."""
        ...

    async def list_rooms(
        self, game_type: str | None, status: str | None, limit: int, after: tuple[int, str] | None = None
    ) -> RoomPage:
        """Public rooms (no password), newest first (created_at, then room_id, descending);
        closed rooms only if asked for. Read from indexes by status and game type: the cost
        is the page, not the number of rooms. `after` continues after that (created_at,
        room_id); the page's `next_after` is where the next page starts (None: no more)."""
        ...

    # ---- the server API: a service acts on rooms without being a participant.

    async def create_service_room(self, service: Service, room: NewRoom, now_ms: int) -> JoinResult:
        """Create a room owned by the service: no participant, no host (no player ever
        becomes host there), no event; `conflict` if the id exists, `unavailable` when
        MAX_ROOMS rooms exist. The result's `participants` is empty and `seq` 0."""
        ...

    async def room_info(self, room_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The room object and its participants (not the ones that left), read in one
        atomic step; `not_found`."""
        ...

    async def service_publish(self, service: Service, room_id: str, tail: bytes, now_ms: int,
                              idempotency_key: str | None = None) -> int:
        """Append an event from the service (tail from `protocol.event_tail` with the
        service's sender); `not_found`, `room_closed`. With `idempotency_key`, as `publish`:
        a key already used in the room within the window returns its seq, and no event."""
        ...

    async def service_update(
        self, service: Service, room_id: str, status: str | None, patch: dict[str, Any] | None, now_ms: int
    ) -> int:
        """update_room as the service (any room, no host needed): `state_change` from it."""
        ...

    async def service_close(self, service: Service, room_id: str, now_ms: int) -> int:
        """close_room as the service: `room_closed` from it, every member leaves."""
        ...

    async def kick(self, service: Service, room_id: str, device_id: str, now_ms: int) -> int:
        """Remove a participant with all its sockets: `participant_left` with reason
        `kicked` from the service (then `host_changed` if it was a player room's host);
        returns the seq of `participant_left`. `not_member` if the device is not a
        participant, `not_found`, `room_closed`."""
        ...

    async def sweep(self, now_ms: int) -> None:
        """Periodic upkeep: prune long-disconnected participants, expire closed rooms and
        old connection records."""
        ...
