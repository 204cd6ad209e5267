"""The memory store's idempotency keys: per room, key -> (seq, first use ms), oldest first.

The same rules as `emit_once` in roomcast/redis/scripts.py: a key counts for `window_ms`
after its first use; a room remembers at most `max_keys`, the oldest going first; each new
key drops up to 8 expired ones (the rest go in `sweep`)."""

from __future__ import annotations

import itertools


class IdempotencyKeys:
    def __init__(self, window_ms: int, max_keys: int) -> None:
        self.window_ms = window_ms
        self.max_keys = max_keys
        self.rooms: dict[str, dict[str, tuple[int, int]]] = {}

    def __contains__(self, room_id: str) -> bool:
        """Whether the room has keys remembered."""
        return room_id in self.rooms

    def seen(self, room_id: str, key: str, now_ms: int) -> int | None:
        """The seq the key was first used for, if that is still within the window."""
        got = self.rooms.get(room_id, {}).get(key)
        return got[0] if got is not None and got[1] > now_ms - self.window_ms else None

    def note(self, room_id: str, key: str, seq: int, now_ms: int) -> None:
        keys = self.rooms.setdefault(room_id, {})
        cutoff = now_ms - self.window_ms
        keys.pop(key, None)  # re-inserted last: the dict stays in order of first use
        for old, (_, at) in list(itertools.islice(keys.items(), 8)):
            if at > cutoff:
                break
            del keys[old]
        while len(keys) >= self.max_keys:
            del keys[next(iter(keys))]
        keys[key] = (seq, now_ms)

    def forget(self, room_id: str) -> None:
        self.rooms.pop(room_id, None)

    def sweep(self, now_ms: int) -> None:
        for room_id, used in list(self.rooms.items()):
            if not used or next(reversed(used.values()))[1] <= now_ms - self.window_ms:
                del self.rooms[room_id]  # its newest key has expired: so have all the others
