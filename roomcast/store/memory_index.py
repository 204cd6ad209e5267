"""The memory store's `list_rooms` indexes: public rooms in sorted (created_at, room_id) lists,
one per status and one per (status, game type), merged newest first for a page."""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterator, Mapping

from roomcast.protocol import ROOM_STATUSES
from roomcast.room import Room
from roomcast.store.base import RoomPage


class MemoryRoomIndex:
    def __init__(self) -> None:
        self._by_status: dict[str, list[tuple[int, str]]] = {}
        self._by_status_game: dict[tuple[str, str], list[tuple[int, str]]] = {}

    @staticmethod
    def _keys(room: Room) -> tuple[str, tuple[str, str]]:
        return room.status, (room.status, room.game_type)

    def add(self, room: Room) -> None:
        """Put a public room in the indexes of its status (and game type)."""
        if room.password_hash is not None:
            return
        entry = (room.created_at, room.room_id)
        by_status, by_game = self._keys(room)
        bisect.insort(self._by_status.setdefault(by_status, []), entry)
        bisect.insort(self._by_status_game.setdefault(by_game, []), entry)

    def remove(self, room: Room) -> None:
        if room.password_hash is not None:
            return
        entry = (room.created_at, room.room_id)
        by_status, by_game = self._keys(room)
        if _drop_entry(self._by_status.get(by_status), entry):
            del self._by_status[by_status]
        if _drop_entry(self._by_status_game.get(by_game), entry):
            del self._by_status_game[by_game]

    def page(self, rooms: Mapping[str, Room], game_type: str | None, status: str | None, limit: int,
             after: tuple[int, str] | None) -> RoomPage:
        statuses = [status] if status is not None else [s for s in ROOM_STATUSES if s != "closed"]
        lists = [self._by_status.get(s, []) if game_type is None else self._by_status_game.get((s, game_type), [])
                 for s in statuses]

        def newest_first(entries: list[tuple[int, str]]) -> Iterator[tuple[int, str]]:
            end = len(entries) if after is None else bisect.bisect_left(entries, after)
            for i in range(end - 1, -1, -1):
                yield entries[i]

        out: list[dict[str, object]] = []
        last = None
        for entry in heapq.merge(*(newest_first(e) for e in lists), reverse=True):
            if len(out) >= limit:
                return RoomPage(out, last)
            out.append(rooms[entry[1]].wire())
            last = entry
        return RoomPage(out, None)


def _drop_entry(entries: list[tuple[int, str]] | None, entry: tuple[int, str]) -> bool:
    """Remove `entry` from a sorted index list; True if the list is now empty."""
    if entries is None:
        return False
    i = bisect.bisect_left(entries, entry)
    if i < len(entries) and entries[i] == entry:
        del entries[i]
    return not entries
