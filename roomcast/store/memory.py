"""In-memory RoomStore: the embedded default (one gateway, no Redis).

Every method runs to completion without awaiting, so on one event loop each is atomic,
which is the same contract the Redis scripts give a cluster.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from typing import Any

import orjson

from roomcast import merge_patch
from roomcast.bus.memory import MemoryBus
from roomcast.errors import ErrorCode
from roomcast.limits.memory import MemoryLimiter
from roomcast.protocol import event_frame, event_tail
from roomcast.room import (
    ACTIVE,
    DISCONNECTED,
    HOST,
    LEFT,
    SPECTATOR,
    Participant,
    Room,
    counts_toward_capacity,
    new_epoch,
    participant_tail,
)
from roomcast.store.base import (
    REPLAY_CHUNK,
    Budget,
    Caller,
    ConnectionInfo,
    ConnectResult,
    DeviceRoom,
    JoinResult,
    NewRoom,
    RoomPage,
    Service,
    fail,
)
from roomcast.store.memory_admit import MemoryAdmission
from roomcast.store.memory_idem import IdempotencyKeys
from roomcast.store.memory_index import MemoryRoomIndex
from roomcast.store.memory_records import DeviceRecord, SocketRecord

# What one kept event costs beyond its frame: the bytes object, its tuple and deque slot.
EVENT_OVERHEAD = 128


def _now_ms() -> int:
    return int(time.time() * 1000)


class MemoryStore(MemoryAdmission):
    def __init__(
        self,
        bus: MemoryBus,
        *,
        history: int = 1000,
        room_ttl_ms: int = 3_600_000,
        connection_ttl_ms: int = 300_000,
        participant_prune_ms: int = 300_000,
        max_game_data_bytes: int = 32_768,
        history_mode: bool = False,
        max_participants: int = 1000,
        history_bytes: int = 131_072,
        history_bytes_total: int = 134_217_728,
        max_rooms: int = 10_000,
        idempotency_window_ms: int = 600_000,
        idempotency_max_keys: int = 1000,
    ) -> None:
        self.bus = bus
        self.limits = MemoryLimiter()  # the budgets connect and admit_join take (memory_admit)
        self.idem = IdempotencyKeys(idempotency_window_ms, idempotency_max_keys)  # see _emit_once
        self.max_participants = max_participants
        # History mode (embedded gateway with DATABASE_URL): every event and lifecycle
        # record also waits in an outbox until the in-process flusher has written it.
        self.history_mode = history_mode
        self.outbox_events: dict[str, list[tuple[int, bytes]]] = {}
        self.outbox_lifecycle: list[dict[str, str]] = []
        self.lifecycle_seq = 0
        self.history_len = history
        self.room_ttl_ms = room_ttl_ms
        self.connection_ttl_ms = connection_ttl_ms
        self.participant_prune_ms = participant_prune_ms
        self.max_game_data_bytes = max_game_data_bytes
        self.rooms: dict[str, Room] = {}
        self.history: dict[str, deque[tuple[int, bytes]]] = {}
        self.devices: dict[str, DeviceRecord] = {}
        self.sockets: dict[str, SocketRecord] = {}
        self.disconnected_since: dict[tuple[str, str], int] = {}  # (room, device) -> ms
        # list_rooms indexes of public rooms (roomcast.store.memory_index)
        self.index = MemoryRoomIndex()
        self.device_tokens: dict[str, tuple[str, int]] = {}  # device -> (token hash, expires at ms)
        # Kept history is bounded per room (count and bytes) and in total: `kept_order` has
        # every kept event in the order it was kept, so the oldest of all can go first.
        self.history_bytes = history_bytes
        self.history_bytes_total = history_bytes_total
        self.kept_bytes: dict[str, int] = {}
        self.kept_total = 0
        self.kept_count = 0
        self.kept_order: deque[tuple[str, int]] = deque()  # (room_id, seq); stale entries are skipped
        self.max_rooms = max_rooms
        self.owned: dict[str, set[str]] = {}  # RoomOwner.key -> rooms it created

    # ------------------------------------------------------------ events

    def _emit(self, room: Room, tail: bytes, now_ms: int) -> int:
        room.seq += 1
        room.updated_at = now_ms
        frame = event_frame(room.room_id, room.seq, tail)
        self._keep(room.room_id, room.seq, frame)
        if self.history_mode:
            self.outbox_events.setdefault(room.room_id, []).append((room.seq, frame))
        self.bus.publish(room.room_id, room.seq, frame)
        return room.seq

    def _emit_once(self, room: Room, tail: bytes, now_ms: int, key: str | None) -> int:
        """`_emit`, unless `key` was used in this room within the window: then its first seq.
        The same rules as emit_once in redis_scripts (expiry by time, at most
        `idempotency_max_keys` per room, the oldest going first)."""
        if key is None:
            return self._emit(room, tail, now_ms)
        seen = self.idem.seen(room.room_id, key, now_ms)
        if seen is not None:
            return seen
        seq = self._emit(room, tail, now_ms)
        self.idem.note(room.room_id, key, seq, now_ms)
        return seq

    def _keep(self, room_id: str, seq: int, frame: bytes) -> None:
        """Keep an event for replay, then drop the oldest beyond the room's and the total bounds."""
        kept = self.history[room_id]
        kept.append((seq, frame))
        cost = len(frame) + EVENT_OVERHEAD
        self.kept_bytes[room_id] = self.kept_bytes.get(room_id, 0) + cost
        self.kept_total += cost
        self.kept_count += 1
        self.kept_order.append((room_id, seq))
        while len(kept) > 1 and (len(kept) > self.history_len or self.kept_bytes[room_id] > self.history_bytes):
            self._drop_oldest(room_id, kept)
        while self.kept_total > self.history_bytes_total and self.kept_order:
            rid, s = self.kept_order.popleft()
            other = self.history.get(rid)
            if other and other[0][0] == s:
                self._drop_oldest(rid, other)
        if len(self.kept_order) > 2 * self.kept_count + 1024:  # mostly stale: rebuild, amortized O(1)
            self.kept_order = deque((rid, s) for rid, s in self.kept_order
                                    if (k := self.history.get(rid)) and k[0][0] <= s)

    def _drop_oldest(self, room_id: str, kept: deque[tuple[int, bytes]]) -> None:
        _, frame = kept.popleft()
        cost = len(frame) + EVENT_OVERHEAD
        self.kept_bytes[room_id] -= cost
        self.kept_total -= cost
        self.kept_count -= 1

    def _forget(self, room_id: str) -> None:
        """A room's state is deleted: its kept history no longer counts."""
        kept = self.history.pop(room_id, None)
        self.idem.forget(room_id)
        self.kept_total -= self.kept_bytes.pop(room_id, 0)
        self.kept_count -= len(kept) if kept is not None else 0

    def _participant_event(
        self, room: Room, kind: str, p: Participant, reason: str | None,
        sender: dict[str, Any] | None, now_ms: int,
    ) -> int:
        return self._emit(room, participant_tail(kind, p.device_id, p.role, reason, sender, now_ms), now_ms)

    def _room(self, room_id: str) -> Room:
        room = self.rooms.get(room_id)
        if room is None:
            raise fail(ErrorCode.NOT_FOUND, f"no room {room_id!r}")
        return room

    def _open_room(self, room_id: str) -> Room:
        room = self._room(room_id)
        if room.status == "closed":
            raise fail(ErrorCode.ROOM_CLOSED, f"room {room_id!r} is closed")
        return room

    def _member(self, room: Room, caller: Caller) -> Participant:
        """The caller's participant, if this very socket joined the room (and is still in it)."""
        p = room.participants.get(caller.device_id)
        if p is None or p.status == LEFT or caller.socket_id not in p.sockets:
            raise fail(ErrorCode.NOT_MEMBER, f"not a member of room {room.room_id!r}")
        return p

    def _check_game_data(self, game_data: dict[str, Any]) -> None:
        if len(orjson.dumps(game_data)) > self.max_game_data_bytes:
            raise fail(ErrorCode.BAD_REQUEST, f"game_data would exceed {self.max_game_data_bytes} bytes")

    def _lifecycle(self, fields: dict[str, str]) -> None:
        if self.history_mode:
            self.outbox_lifecycle.append(fields)

    def snapshot(self, room_id: str) -> dict[str, str] | None:
        """The room's fields in the shape of its Redis hash (for the history writer)."""
        room = self.rooms.get(room_id)
        if room is None:
            return None
        return {
            "room_id": room.room_id, "game_type": room.game_type, "status": room.status,
            "max_players": str(room.max_players), "players": str(room.current_players()),
            "game_data": orjson.dumps(room.game_data).decode(), "created_at": str(room.created_at),
            "created_by": room.created_by, "creator_user": room.creator_user or "",
            "updated_at": str(room.updated_at), "closed_at": "" if room.closed_at is None else str(room.closed_at),
            "seq": str(room.seq), "password_hash": room.password_hash or "",
            "status_at_close": room.status_at_close or "",
        }

    # ------------------------------------------------------------ connections

    async def connect(self, caller: Caller, info: ConnectionInfo, now_ms: int,
                      budget: Budget | None = None) -> ConnectResult:
        if budget is not None and (wait := await self.limits.take(budget.key, budget.rate, budget.burst, now_ms)):
            return ConnectResult(0, [], 0, wait)  # nothing recorded
        dev = self.devices.get(caller.device_id)
        if dev is None:
            dev = self.devices[caller.device_id] = DeviceRecord()
        earlier = dev.connections
        dev.connections += 1
        dev.sockets.add(caller.socket_id)
        dev.info = info
        self.sockets[caller.socket_id] = SocketRecord(caller.device_id, caller.user_id, now_ms)
        self._lifecycle({"kind": "connect", "socket_id": caller.socket_id, "device_id": caller.device_id,
                         "user_id": caller.user_id or "", "ts": str(now_ms), "ip": info.ip or "",
                         "user_agent": info.user_agent or "", "fingerprint": info.fingerprint or "",
                         "metadata": orjson.dumps(info.metadata or {}).decode(), "reconnect_count": str(earlier)})
        rooms = []
        for room_id in sorted(dev.rooms):
            room = self.rooms.get(room_id)
            if room is None or room.status == "closed":
                continue
            p = room.participants.get(caller.device_id)
            if p is not None and p.status != LEFT:
                rooms.append(DeviceRoom(room_id, p.role, room.seq))
        return ConnectResult(earlier, rooms, len(dev.sockets))

    async def restore(self, caller: Caller, now_ms: int) -> None:
        return None  # in-process state cannot be lost while the process lives

    async def disconnect(self, caller: Caller, status: str, reason: str, now_ms: int) -> None:
        sock = self.sockets.get(caller.socket_id)
        if sock is None or sock.status != ACTIVE:
            return
        sock.status = status
        sock.ended_at = now_ms
        self._lifecycle({"kind": "disconnect", "status": status, "socket_id": caller.socket_id,
                         "device_id": caller.device_id, "ts": str(now_ms), "reason": reason})
        dev = self.devices.get(caller.device_id)
        if dev is None:
            return
        dev.sockets.discard(caller.socket_id)
        dev.last_disconnect_ms = now_ms
        if reason == "refused":  # refused before its welcome: not one of the device's connections
            dev.connections -= 1
        for room_id in sorted(dev.rooms):
            room = self.rooms.get(room_id)
            if room is None or room.status == "closed":
                continue
            p = room.participants.get(caller.device_id)
            if p is None or p.status == LEFT or caller.socket_id not in p.sockets:
                continue
            p.sockets.discard(caller.socket_id)
            if p.sockets or p.status != ACTIVE:
                continue  # another of its joined sockets keeps the participant active
            p.status = DISCONNECTED
            self.disconnected_since[(room_id, caller.device_id)] = now_ms
            self._participant_event(room, "participant_disconnected", p, reason, None, now_ms)

    # ------------------------------------------------------------ rooms

    async def create_room(self, caller: Caller, room: NewRoom, now_ms: int) -> JoinResult:
        self._check_game_data(room.game_data)
        room_id = room.room_id
        if room_id in self.rooms:
            raise fail(ErrorCode.CONFLICT, f"room {room_id!r} already exists")
        if len(self.rooms) >= self.max_rooms:
            raise fail(ErrorCode.UNAVAILABLE, f"this gateway holds {self.max_rooms} rooms (MAX_ROOMS); retry later")
        for owner in room.owners:
            mine = self.owned.get(owner.key)
            if mine is not None:
                mine.intersection_update(self.rooms)
                if len(mine) >= owner.limit:
                    raise fail(ErrorCode.FORBIDDEN, f"this {owner.what} already has {len(mine)} rooms (the limit); "
                                                    "close some, or wait for closed ones to expire")
        for owner in room.owners:
            self.owned.setdefault(owner.key, set()).add(room_id)
        r = Room(
            room_id=room_id,
            game_type=room.game_type,
            status="waiting",
            max_players=room.max_players,
            game_data=room.game_data,
            created_at=now_ms,
            created_by=caller.device_id,
            password_hash=room.password_hash,
            epoch=new_epoch(),
            updated_at=now_ms,
            spectators_can_send=room.spectators_can_send,
            creator_user=caller.user_id,
        )
        self.rooms[room_id] = r
        self.history[room_id] = deque()
        self._index(r)
        return self._admit(r, caller, HOST, None, None, now_ms)

    async def password_hash(self, room_id: str) -> str | None:
        room = self.rooms.get(room_id)
        return None if room is None else room.password_hash

    async def join(
        self, caller: Caller, room_id: str, role: str, since: int | None, epoch: str | None, now_ms: int
    ) -> JoinResult:
        room = self._open_room(room_id)
        return self._admit(room, caller, role, since, epoch, now_ms)

    def _admit(
        self, room: Room, caller: Caller, role: str, since: int | None, epoch: str | None, now_ms: int
    ) -> JoinResult:
        p = room.participants.get(caller.device_id)
        sender = caller.sender()
        head = room.seq
        # Read the replay before this join's own event is appended: that append could push
        # the oldest event the client needs out of the bounded history.
        recovered = False
        replay: list[bytes] = []
        rest_after: int | None = None
        kept = self.history[room.room_id]
        first_kept = kept[0][0] if kept else head + 1
        if since is not None and since <= head and (epoch is None or epoch == room.epoch):
            recovered = since == head or first_kept <= since + 1
            if since < head and (recovered or since == 0):
                # The first events only (the join's own event may trim the oldest one);
                # the gateway reads the rest with read_since.
                first = self._read(room.room_id, since, head, REPLAY_CHUNK)
                replay = [f for _, f in first]
                if first and first[-1][0] < head:
                    rest_after = first[-1][0]
        if p is not None and p.status != LEFT:
            p.status = ACTIVE
            p.socket_id = caller.socket_id
            p.user_id = caller.user_id
            self.disconnected_since.pop((room.room_id, caller.device_id), None)
            # Back after a drop, or a new socket (it may replace one not yet known to be lost).
            if caller.socket_id not in p.sockets:
                p.sockets.add(caller.socket_id)
                self._participant_event(room, "participant_reconnected", p, None, sender, now_ms)
        else:
            if room.occupants() >= self.max_participants:
                raise fail(ErrorCode.ROOM_FULL, f"room {room.room_id!r} is full ({self.max_participants} participants)")
            if counts_toward_capacity(role) and room.current_players() >= room.max_players:
                raise fail(ErrorCode.ROOM_FULL, f"room {room.room_id!r} is full ({room.max_players} players)")
            p = Participant(caller.device_id, caller.user_id, caller.socket_id, role, ACTIVE, now_ms,
                            {caller.socket_id})
            # Re-insert so a returning device is ordered by its latest join.
            room.participants.pop(caller.device_id, None)
            room.participants[caller.device_id] = p
            self.devices.setdefault(caller.device_id, DeviceRecord()).rooms.add(room.room_id)
            self._participant_event(room, "participant_joined", p, None, sender, now_ms)
        result = JoinResult(
            room=room.wire() | {"seq": head},
            participants=room.participants_wire(),
            seq=head,
            epoch=room.epoch,
            role=p.role,
            recovered=recovered,
            replay=replay,
            replay_rest_after=rest_after,
            first_kept=first_kept,
        )
        return result

    async def read_since(
        self, room_id: str, after: int, upto: int | None = None, limit: int | None = None
    ) -> list[tuple[int, bytes]]:
        return self._read(room_id, after, upto, limit)

    def _read(self, room_id: str, after: int, upto: int | None, limit: int | None) -> list[tuple[int, bytes]]:
        kept = self.history.get(room_id)
        if not kept:
            return []
        # Seqs in the history are consecutive: start at the first one after `after`.
        start = max(0, after + 1 - kept[0][0])
        out: list[tuple[int, bytes]] = []
        for seq, f in itertools.islice(kept, start, None):
            if upto is not None and seq > upto:
                break
            out.append((seq, f))
            if limit is not None and len(out) >= limit:
                break
        return out

    async def leave(self, caller: Caller, room_id: str, now_ms: int) -> None:
        room = self._room(room_id)
        p = self._member(room, caller)
        p.sockets.discard(caller.socket_id)
        if p.sockets:
            return  # the device's other joined sockets keep it in the room
        self._remove(room, p, "leave", caller.sender(), now_ms, forget=True)

    def _remove(self, room: Room, p: Participant, reason: str, sender: dict[str, Any] | None, now_ms: int,
                forget: bool = False) -> None:
        """The participant leaves; `forget` also drops it from the room's members (a room
        that stays open must not keep everyone who ever passed through)."""
        p.status = LEFT
        p.sockets.clear()
        if forget:
            del room.participants[p.device_id]
        self.disconnected_since.pop((room.room_id, p.device_id), None)
        dev = self.devices.get(p.device_id)
        if dev is not None:
            dev.rooms.discard(room.room_id)
        if room.status != "closed":
            self._participant_event(room, "participant_left", p, reason, sender, now_ms)
            if p.role == HOST:
                heir = room.successor()
                if heir is not None:
                    heir.role = HOST
                    self._participant_event(room, "host_changed", heir, "host_left", None, now_ms)

    async def publish(self, caller: Caller, room_id: str, tail: bytes, now_ms: int,
                      idempotency_key: str | None = None) -> int:
        room = self._open_room(room_id)
        if self._member(room, caller).role == SPECTATOR and not room.spectators_can_send:
            raise fail(ErrorCode.FORBIDDEN, "spectators may not send events in this room")
        return self._emit_once(room, tail, now_ms, idempotency_key)

    async def device_room_count(self, device_id: str, other_than: str | None = None) -> int:
        dev = self.devices.get(device_id)
        return 0 if dev is None else len(dev.rooms - {other_than})

    async def device_known(self, device_id: str) -> bool:
        return device_id in self.devices

    def _token(self, device_id: str) -> tuple[str, int] | None:
        entry = self.device_tokens.get(device_id)
        if entry is not None and entry[1] <= _now_ms():
            del self.device_tokens[device_id]
            return None
        return entry

    async def device_token_hash(self, device_id: str) -> str | None:
        entry = self._token(device_id)
        return None if entry is None else entry[0]

    async def set_device_token_hash(self, device_id: str, new: str | None, old: str | None, ttl_ms: int) -> bool:
        entry = self._token(device_id)
        if (entry is None) != (old is None) or (entry is not None and entry[0] != old):
            return False
        if new is None:
            self.device_tokens.pop(device_id, None)
        else:
            self.device_tokens[device_id] = (new, _now_ms() + ttl_ms)
        return True

    async def touch_device_token(self, device_id: str, ttl_ms: int) -> None:
        entry = self._token(device_id)
        if entry is not None:
            self.device_tokens[device_id] = (entry[0], _now_ms() + ttl_ms)

    async def update_room(
        self, caller: Caller, room_id: str, status: str | None, patch: dict[str, Any] | None, now_ms: int
    ) -> int:
        room = self._open_room(room_id)
        self._host(room, caller)
        if patch is not None:
            new_data = merge_patch.apply(room.game_data, patch)
            self._check_game_data(new_data)
            room.game_data = new_data
        if status is not None:
            self._set_status(room, status)
        payload: dict[str, Any] = {}
        if status is not None:
            payload["status"] = status
        if patch is not None:
            payload["patch"] = patch
        return self._emit(room, event_tail("state_change", None, payload, caller.sender(), now_ms), now_ms)

    def _host(self, room: Room, caller: Caller) -> None:
        p = self._member(room, caller)
        if p.role != HOST:
            raise fail(ErrorCode.FORBIDDEN, "only the host may do this")

    async def close_room(self, caller: Caller, room_id: str, now_ms: int) -> int:
        room = self._open_room(room_id)
        self._host(room, caller)
        seq = self._emit(room, event_tail("room_closed", None, None, caller.sender(), now_ms), now_ms)
        self.idem.forget(room_id)  # no event follows: no key to remember
        room.status_at_close = room.status
        self._set_status(room, "closed")
        room.closed_at = now_ms
        for p in room.participants.values():
            if p.status != LEFT:
                self._remove(room, p, "room_closed", None, now_ms)
        return seq

    async def close_abandoned(self, idle_before_ms: int, now_ms: int) -> list[str]:
        """Close rooms with no event since `idle_before_ms` and no connected member
        (`room_closed`, reason `abandoned`)."""
        closed = []
        for room in list(self.rooms.values()):
            if room.status == "closed" or room.updated_at >= idle_before_ms:
                continue
            if any(p.status == ACTIVE for p in room.participants.values()):
                continue  # members online: a quiet lobby, not an abandoned room
            self._emit(room, event_tail("room_closed", None, {"reason": "abandoned"}, None, now_ms), now_ms)
            self.idem.forget(room.room_id)
            room.status_at_close = room.status
            self._set_status(room, "closed")
            room.closed_at = now_ms
            for p in room.participants.values():
                if p.status != LEFT:
                    self._remove(room, p, "room_closed", None, now_ms)
            closed.append(room.room_id)
        return closed

    # ------------------------------------------------------------ the server API

    async def create_service_room(self, service: Service, room: NewRoom, now_ms: int) -> JoinResult:
        self._check_game_data(room.game_data)
        if room.room_id in self.rooms:
            raise fail(ErrorCode.CONFLICT, f"room {room.room_id!r} already exists")
        if len(self.rooms) >= self.max_rooms:
            raise fail(ErrorCode.UNAVAILABLE, f"this gateway holds {self.max_rooms} rooms (MAX_ROOMS); retry later")
        r = Room(room_id=room.room_id, game_type=room.game_type, status="waiting", max_players=room.max_players,
                 game_data=room.game_data, created_at=now_ms, created_by=service.created_by,
                 password_hash=room.password_hash, epoch=new_epoch(), updated_at=now_ms,
                 spectators_can_send=room.spectators_can_send)
        self.rooms[r.room_id] = r
        self.history[r.room_id] = deque()
        self._index(r)
        return JoinResult(room=r.wire(), participants=[], seq=0, epoch=r.epoch, role="", recovered=False,
                          first_kept=1)

    async def room_info(self, room_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        room = self._room(room_id)
        return room.wire(), room.participants_wire()

    async def service_publish(self, service: Service, room_id: str, tail: bytes, now_ms: int,
                              idempotency_key: str | None = None) -> int:
        return self._emit_once(self._open_room(room_id), tail, now_ms, idempotency_key)

    async def service_update(
        self, service: Service, room_id: str, status: str | None, patch: dict[str, Any] | None, now_ms: int
    ) -> int:
        room = self._open_room(room_id)
        if patch is not None:
            new_data = merge_patch.apply(room.game_data, patch)
            self._check_game_data(new_data)
            room.game_data = new_data
        if status is not None:
            self._set_status(room, status)
        payload: dict[str, Any] = {}
        if status is not None:
            payload["status"] = status
        if patch is not None:
            payload["patch"] = patch
        return self._emit(room, event_tail("state_change", None, payload, service.sender(), now_ms), now_ms)

    async def service_close(self, service: Service, room_id: str, now_ms: int) -> int:
        room = self._open_room(room_id)
        seq = self._emit(room, event_tail("room_closed", None, None, service.sender(), now_ms), now_ms)
        room.status_at_close = room.status
        self._set_status(room, "closed")
        room.closed_at = now_ms
        for p in room.participants.values():
            if p.status != LEFT:
                self._remove(room, p, "room_closed", None, now_ms)
        return seq

    async def kick(self, service: Service, room_id: str, device_id: str, now_ms: int) -> int:
        room = self._open_room(room_id)
        p = room.participants.get(device_id)
        if p is None or p.status == LEFT:
            raise fail(ErrorCode.NOT_MEMBER, f"device {device_id!r} is not a participant of room {room_id!r}")
        seq = room.seq + 1  # participant_left is the next event (host_changed may follow)
        self._remove(room, p, "kicked", service.sender(), now_ms, forget=True)
        return seq

    # ------------------------------------------------------------ room index (list_rooms)

    def _index(self, room: Room) -> None:
        self.index.add(room)

    def _unindex(self, room: Room) -> None:
        self.index.remove(room)

    def _set_status(self, room: Room, status: str) -> None:
        if status != room.status:
            self.index.remove(room)
            room.status = status
            self.index.add(room)

    async def list_rooms(
        self, game_type: str | None, status: str | None, limit: int, after: tuple[int, str] | None = None
    ) -> RoomPage:
        return self.index.page(self.rooms, game_type, status, limit, after)

    # ------------------------------------------------------------ upkeep

    async def sweep(self, now_ms: int) -> None:
        for (room_id, device_id), since in list(self.disconnected_since.items()):
            if now_ms - since < self.participant_prune_ms:
                continue
            room = self.rooms.get(room_id)
            p = None if room is None else room.participants.get(device_id)
            if room is None or p is None or p.status != DISCONNECTED:
                self.disconnected_since.pop((room_id, device_id), None)
                continue
            self._remove(room, p, "pruned", None, now_ms, forget=room.status != "closed")
        for room_id, room in list(self.rooms.items()):
            if room.closed_at is not None and now_ms - room.closed_at >= self.room_ttl_ms:
                self._unindex(room)
                del self.rooms[room_id]
                self._forget(room_id)
        for sid, sock in list(self.sockets.items()):
            if sock.ended_at is not None and now_ms - sock.ended_at >= self.connection_ttl_ms:
                del self.sockets[sid]
        self.idem.sweep(now_ms)
        for key, mine in list(self.owned.items()):
            mine.intersection_update(self.rooms)
            if not mine:
                del self.owned[key]
        for device_id, (_, expires) in list(self.device_tokens.items()):
            if expires <= now_ms:
                del self.device_tokens[device_id]
        for device_id, dev in list(self.devices.items()):
            if not dev.sockets and not dev.rooms and now_ms - dev.last_disconnect_ms >= self.connection_ttl_ms:
                del self.devices[device_id]
