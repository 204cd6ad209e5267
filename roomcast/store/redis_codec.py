"""Reading the Redis store's replies: script results (`_check`: an {'err', code} reply becomes
a GatewayError) and hashes back into the protocol's objects (room, participant)."""

from __future__ import annotations

from typing import Any

import orjson

from roomcast.errors import ErrorCode, GatewayError

_ERRORS = {c.value: c for c in ErrorCode}


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(flat: list[Any]) -> dict[str, str]:
    it = iter(map(_s, flat))
    return dict(zip(it, it, strict=True))


def _participants(flat: list[Any], left: str) -> list[dict[str, Any]]:
    """A members hash (HGETALL: device, value, ...) as the protocol's participants, those
    whose status is not `left`; each value is split once."""
    out = []
    it = iter(map(_s, flat))
    for device_id, value in zip(it, it, strict=True):
        role, status, _sock, user, joined = value.split("|")
        if status != left:
            out.append({"device_id": device_id, "user_id": user or None, "role": role, "status": status,
                        "joined_at": int(joined)})
    return out


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


def _check(reply: Any) -> list[Any]:
    """Turn a script's {'err', code} reply into a GatewayError."""
    if not isinstance(reply, list) or not reply:
        raise GatewayError(ErrorCode.INTERNAL, "unexpected reply from redis")
    if _s(reply[0]) == "err":
        code = _s(reply[1])
        if code == "retry":
            raise _Retry()
        if code == "forbidden_spectator":
            raise GatewayError(ErrorCode.FORBIDDEN, _MESSAGES[code])
        raise GatewayError(_ERRORS.get(code, ErrorCode.INTERNAL), _MESSAGES.get(code, code))
    return reply


class _Retry(Exception):
    pass


_MESSAGES = {
    "forbidden_spectator": "spectators may not send events in this room",
    "not_found": "no such room",
    "room_closed": "the room is closed",
    "room_full": "the room is full",
    "conflict": "a room with this id already exists",
    "not_member": "not a member of this room",
    "forbidden": "only the host may do this",
}
