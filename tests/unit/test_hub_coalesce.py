"""The hub's write coalescing (gateway/hub.py): the events of one batch (one read of a pub/sub
connection: RedisBus brackets it with begin_batch/end_batch) reach each member as one buffer, in
seq order; a member that joined between two queued events gets only the later ones; room_closed
writes what was queued first; outside a batch every event is written at once; the delivery
counter counts deliveries made. Driven through the embedded bus; the sessions are stand-ins that
record what is written to them (real sockets: tests/integration/test_fanout_batches.py)."""

from __future__ import annotations

from typing import cast

import orjson

from gateway.frames import text_frame
from gateway.hub import Hub
from gateway.metrics import Metrics
from gateway.session import Session
from roomcast.bus.memory import MemoryBus


class Recording:
    """What the hub needs of a Session: write_frame, closing, buffer_limit, slow."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False
        self.buffer_limit = 1 << 20
        self.slowed = False

    def write_frame(self, frame: bytes) -> bool:
        if self.closing:
            return False
        self.writes.append(frame)
        return True

    def slow(self) -> None:
        self.slowed = True
        self.closing = True


def event(room: str, seq: int, event_type: str = "e") -> bytes:
    return orjson.dumps({"type": "event", "room_id": room, "seq": seq, "event_type": event_type, "ts": 1})


def hub_with(room: str) -> tuple[Hub, MemoryBus, Metrics]:
    bus = MemoryBus()
    metrics = Metrics()
    return Hub(bus, metrics), bus, metrics


async def join(hub: Hub, room: str, member: Recording, head: int) -> None:
    session = cast(Session, member)
    await hub.begin_join(room, session)
    await hub.finish_join(room, session, head)


def delivered(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value("roomcast_messages_out_total", {"type": "event"})
    return float(value or 0.0)


async def test_one_batch_one_buffer_per_member_in_seq_order() -> None:
    room = "r1"
    a, b = Recording(), Recording()
    hub, bus, metrics = hub_with(room)
    await join(hub, room, a, 0)
    await join(hub, room, b, 0)
    hub.begin_batch()
    for seq in range(1, 6):
        bus.publish(room, seq, event(room, seq))
    assert a.writes == [] and b.writes == []  # queued until the end of the batch
    hub.end_batch()
    want = b"".join(text_frame(event(room, s)) for s in range(1, 6))
    assert a.writes == [want] and b.writes == [want]
    assert delivered(metrics) == 10
    bus.publish(room, 6, event(room, 6))  # outside a batch: written at once
    assert a.writes[-1] == text_frame(event(room, 6))


async def test_a_member_that_joined_between_queued_events_gets_only_the_later_ones() -> None:
    room = "r2"
    early, late = Recording(), Recording()
    hub, bus, metrics = hub_with(room)
    await join(hub, room, early, 0)
    hub.begin_batch()
    bus.publish(room, 1, event(room, 1))
    bus.publish(room, 2, event(room, 2))
    # `late` joins (its join took effect at seq 2) before the queue is written, then 3 and 4 come.
    hub.rooms[room].members[cast(Session, late)] = 2
    bus.publish(room, 3, event(room, 3))
    bus.publish(room, 4, event(room, 4))
    hub.end_batch()
    assert early.writes == [b"".join(text_frame(event(room, s)) for s in (1, 2, 3, 4))]
    assert late.writes == [b"".join(text_frame(event(room, s)) for s in (3, 4))]
    assert delivered(metrics) == 6


async def test_room_closed_writes_what_was_queued_first() -> None:
    room = "r3"
    member = Recording()
    hub, bus, _ = hub_with(room)
    await join(hub, room, member, 0)
    closed: list[tuple[str, int]] = []
    hub.on_room_closed = lambda r, sessions: closed.append((r, len(sessions)))
    hub.begin_batch()
    bus.publish(room, 1, event(room, 1))
    bus.publish(room, 2, event(room, 2, "room_closed"))
    # room_closed is written at once, after what was queued, and the members are dropped.
    assert member.writes == [text_frame(event(room, 1)) + text_frame(event(room, 2, "room_closed"))]
    assert closed == [(room, 1)] and room not in hub.rooms
    hub.end_batch()
    assert len(member.writes) == 1  # nothing is written twice at the end of the batch


async def test_a_closing_member_is_not_counted_as_a_delivery() -> None:
    room = "r4"
    ok, gone = Recording(), Recording()
    hub, bus, metrics = hub_with(room)
    await join(hub, room, ok, 0)
    await join(hub, room, gone, 0)
    gone.closing = True
    hub.begin_batch()
    bus.publish(room, 1, event(room, 1))
    bus.publish(room, 2, event(room, 2))
    hub.end_batch()
    assert gone.writes == [] and len(ok.writes) == 1
    assert delivered(metrics) == 2
