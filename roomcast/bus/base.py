"""The bus's contract: room events from the replica that made them to every replica with
a local member of the room. `roomcast.bus.memory` serves the embedded single node,
`roomcast.bus.redis` a cluster (Redis sharded pub/sub, on one Redis or a Redis Cluster)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

# (room_id, seq, frame): frame is the complete JSON text of the event message.
EventSink = Callable[[str, int, bytes], None]


class Bus(Protocol):
    """Delivers room events to the gateways that hold members of the room.

    A gateway subscribes to a room while it holds a local member (invariant 3);
    `subscribe` returns once events published afterwards are sure to arrive. Each
    subscribed room's events reach the sink once each, in seq order.
    """

    async def subscribe(self, room_id: str) -> None: ...

    async def unsubscribe(self, room_id: str) -> None: ...

    def set_sink(self, sink: EventSink) -> None: ...
