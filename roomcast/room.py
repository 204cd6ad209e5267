"""Room and participant records, and the server-made event tails they produce. Pure."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from roomcast.protocol import event_tail

HOST, PLAYER, SPECTATOR = "host", "player", "spectator"
ACTIVE, DISCONNECTED, LEFT = "active", "disconnected", "left"
JOIN_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I
JOIN_CODE_LENGTH = 6


def new_join_code() -> str:
    return "".join(secrets.choice(JOIN_CODE_ALPHABET) for _ in range(JOIN_CODE_LENGTH))


def new_epoch() -> str:
    return secrets.token_hex(4)


def counts_toward_capacity(role: str) -> bool:
    return role != SPECTATOR


@dataclass(slots=True)
class Participant:
    device_id: str
    user_id: str | None
    socket_id: str
    role: str
    status: str
    joined_at: int
    # The device's sockets that joined the room and are still in it: the participant is
    # `active` while there is one, and only these sockets act in the room.
    sockets: set[str] = field(default_factory=set)

    def wire(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "user_id": self.user_id,
            "role": self.role,
            "status": self.status,
            "joined_at": self.joined_at,
        }


@dataclass(slots=True)
class Room:
    room_id: str
    game_type: str
    status: str
    max_players: int
    game_data: dict[str, Any]
    created_at: int
    created_by: str
    password_hash: str | None
    epoch: str
    seq: int = 0
    updated_at: int = 0
    closed_at: int | None = None
    status_at_close: str | None = None  # the status it had when it closed
    spectators_can_send: bool = False
    creator_user: str | None = None  # the creator's user_id (kept after the creator leaves)
    participants: dict[str, Participant] = field(default_factory=dict)

    def current_players(self) -> int:
        return sum(
            1
            for p in self.participants.values()
            if p.status != LEFT and counts_toward_capacity(p.role)
        )

    def occupants(self) -> int:
        return sum(1 for p in self.participants.values() if p.status != LEFT)

    def successor(self) -> Participant | None:
        """Who takes over as host: the longest-present player, active ones first."""
        players = [p for p in self.participants.values() if p.status != LEFT and p.role == PLAYER]
        return min(players, key=lambda p: (p.status != ACTIVE, p.joined_at), default=None)

    def wire(self) -> dict[str, Any]:
        return {
            "room_id": self.room_id,
            "game_type": self.game_type,
            "status": self.status,
            "max_players": self.max_players,
            "current_players": self.current_players(),
            "game_data": self.game_data,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "seq": self.seq,
        }

    def participants_wire(self) -> list[dict[str, Any]]:
        return [p.wire() for p in self.participants.values() if p.status != LEFT]


def participant_tail(
    event_type: str, device_id: str, role: str, reason: str | None, sender: dict[str, Any] | None, ts: int
) -> bytes:
    payload: dict[str, Any] = {"device_id": device_id, "role": role}
    if reason is not None:
        payload["reason"] = reason
    return event_tail(event_type, None, payload, sender, ts)
