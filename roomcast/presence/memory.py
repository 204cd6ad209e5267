"""In-process Presence: socket id -> last heartbeat (ms)."""

from __future__ import annotations


class MemoryPresence:
    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def touch(self, socket_id: str, now_ms: int, device_id: str | None = None) -> None:
        self._last[socket_id] = now_ms

    def recorded(self, device_id: str) -> None:
        return None

    def remove(self, socket_id: str) -> None:
        self._last.pop(socket_id, None)

    async def flush(self) -> None:
        return None

    async def expired(self, older_than_ms: int) -> list[str]:
        return [sid for sid, ts in self._last.items() if ts < older_than_ms]

    def snapshot(self) -> dict[str, int]:
        return dict(self._last)

    def __len__(self) -> int:
        return len(self._last)
