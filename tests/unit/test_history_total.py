"""Embedded gateway: kept history is bounded over all rooms (HISTORY_MAX_BYTES_TOTAL), the
oldest events of any room going first, and the count stays right as rooms come and go."""

from __future__ import annotations

from roomcast import protocol
from roomcast.bus.memory import MemoryBus
from roomcast.store.base import Caller, ConnectionInfo, NewRoom
from roomcast.store.memory import EVENT_OVERHEAD, MemoryStore

T0 = 1_700_000_000_000
HOST = Caller("sock-host", "dev-host-0001", None)


async def test_total_bound_drops_the_oldest_events_of_any_room() -> None:
    total = 300_000
    store = MemoryStore(MemoryBus(), history_bytes=131_072, history_bytes_total=total, room_ttl_ms=1000)
    await store.connect(HOST, ConnectionInfo(), T0)
    rooms = [f"room-{i}" for i in range(6)]
    for room_id in rooms:
        await store.create_room(HOST, NewRoom(room_id, "t", 4, {}, None), T0)
        for _ in range(3):  # 3 x 40 KB: each room alone is within its 128 KiB
            await store.publish(HOST, room_id, protocol.event_tail("b", None, {"b": "x" * 40_000}, HOST.sender(), T0),
                                T0)
    kept = {r: await store.read_since(r, 0) for r in rooms}
    size = sum(len(f) + EVENT_OVERHEAD for events in kept.values() for _, f in events)
    assert size == store.kept_total <= total
    assert kept[rooms[-1]] and not kept[rooms[0]]  # the newest room keeps its events, the oldest lost them
    # A closed room forgotten after its TTL no longer counts.
    await store.close_room(HOST, rooms[-1], T0)
    await store.sweep(T0 + 1000)
    assert rooms[-1] not in store.rooms
    left = [e for r in rooms[:-1] for e in await store.read_since(r, 0)]
    assert store.kept_total == sum(len(f) + EVENT_OVERHEAD for _, f in left)
    assert store.kept_count == len(left)
