"""Reading the Redis store's hashes back into the protocol's objects (room, participant)."""

from __future__ import annotations

from typing import Any

import orjson


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(flat: list[Any]) -> dict[str, str]:
    return {_s(flat[i]): _s(flat[i + 1]) for i in range(0, len(flat), 2)}


def _room_wire(h: dict[str, str], head: int | None = None) -> dict[str, Any]:
    return {
        "room_id": h["room_id"],
        "game_type": h["game_type"],
        "status": h["status"],
        "max_players": int(h["max_players"]),
        "current_players": int(h.get("players", "0")),
        "game_data": orjson.loads(h.get("game_data") or "{}"),
        "created_at": int(h["created_at"]),
        "created_by": h["created_by"],
        "seq": int(h["seq"]) if head is None else head,
    }


def _member(device_id: str, value: str) -> dict[str, Any]:
    role, status, _sock, user, joined = value.split("|")
    return {"device_id": device_id, "user_id": user or None, "role": role, "status": status,
            "joined_at": int(joined)}
