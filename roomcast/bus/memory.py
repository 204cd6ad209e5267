"""In-process Bus: the embedded default. Publishing hands the frame straight to the sink."""

from __future__ import annotations

from roomcast.bus.base import EventSink


def _drop(room_id: str, seq: int, frame: bytes) -> None:
    return None


class MemoryBus:
    """Single-node bus. `publish` is called by the memory store inside its atomic step,
    so events reach the sink in seq order with nothing in between."""

    def __init__(self) -> None:
        self._sink: EventSink = _drop
        self.subscribed: set[str] = set()

    def set_sink(self, sink: EventSink) -> None:
        self._sink = sink

    async def subscribe(self, room_id: str) -> None:
        self.subscribed.add(room_id)

    async def unsubscribe(self, room_id: str) -> None:
        self.subscribed.discard(room_id)

    def publish(self, room_id: str, seq: int, frame: bytes) -> None:
        if room_id in self.subscribed:
            self._sink(room_id, seq, frame)
