"""Presence's contract: last heartbeats of sockets, batched per node. `roomcast.presence.memory`
for the embedded node, `roomcast.presence.redis` for the sorted set `ws:presence`."""

from __future__ import annotations

from typing import Protocol


class Presence(Protocol):
    """Last-heartbeat times of sockets (`ws:presence`); updates are batched per node."""

    def touch(self, socket_id: str, now_ms: int, device_id: str | None = None) -> None:
        """Note a heartbeat (of the device's record too, if given); written at the next flush."""
        ...

    def recorded(self, device_id: str) -> None:
        """The device's record was just written with a fresh heartbeat (its hello): until the
        next flush its heartbeats need not be written again (they would say about the same)."""
        ...

    def remove(self, socket_id: str) -> None: ...

    async def flush(self) -> None: ...

    async def expired(self, older_than_ms: int) -> list[str]:
        """Sockets whose last heartbeat is older than the given time."""
        ...
