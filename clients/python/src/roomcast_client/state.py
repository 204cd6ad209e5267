"""The Python client's pure core: reconnect policy, request matching keys and the per-room
replica. No I/O (a unit test checks that importing it pulls in no event loop or socket).

`roomcast_client.client` and `roomcast_client.room` are the asyncio shell around it: they
own the socket and the timers and ask this module what to do. The names and numbers are those of the browser client
(clients/js/src/roomcast.js: `closePolicy`, `backoffDelay`, `eventKey`), so both clients
behave alike; times here are in seconds where the browser client uses milliseconds.

The replica follows protocol.md section 6, "Resuming after a reconnect, step by step": it
keeps the room's `epoch` and its state as of the last delivered `seq`; `recovered: false`
means "throw away your copy and take the snapshot from `joined`" (a reset).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson

from .protocol import DEVICE_ID_RE, JOIN_ROLES, RESERVED_EVENT_TYPES, CloseCode, merge_patch

Policy = Literal["now", "busy", "never", "backoff"]

NOW_JITTER: Final = 0.1  # seconds: "now" is uniform in [0, min(NOW_JITTER, base))
CLIENT_GAVE_UP: Final = 4000  # the close code a client reports when it drops a socket itself
ABNORMAL_CLOSURE: Final = 1006  # no close frame: the link dropped (RFC 6455 section 7.1.5)


# ---------------------------------------------------------------- reconnect policy


def close_policy(code: int) -> Policy:
    """What to do after the socket closed with `code` (protocol.md section 9).

    "now" (reconnect at once: 1001, 1012, 4009), "busy" (back off from a longer first delay:
    1013 replica full, 4008 too many sockets for this device), "never" (1008 origin refused,
    1009 frame too big: nothing changes by retrying), "backoff" (anything else: 1000, 1006,
    1011, 4000, 4001, 4002, unknown codes). Derived from `CloseCode.reconnect_advice`.
    """
    try:
        close = CloseCode(code)
    except ValueError:
        return "backoff"
    if close in (CloseCode.TRY_AGAIN_LATER, CloseCode.RATE_LIMITED):
        return "busy"
    advice = close.reconnect_advice
    if advice == "now":
        return "now"
    if advice == "never":
        return "never"
    return "backoff"


def backoff_delay(policy: Policy, attempt: int, base: float, cap: float, rand: float) -> float:
    """Seconds to wait before reconnect `attempt` (0 = the first retry after a working
    connection). `rand` is a uniform draw from [0, 1).

    backoff: full jitter, uniform in [0, min(cap, base·2^attempt)) (AWS Architecture Blog,
             "Exponential Backoff And Jitter");
    busy:    ceiling = min(cap, base·8·2^attempt), uniform in [ceiling/2, ceiling), so even
             the first wait is at least 4·base: coming back at once only hits the same limit;
    now:     attempt 0: uniform in [0, min(0.1 s, base)), a little jitter so that the sockets
             of a replica that goes away do not all land on the next one in the same instant;
             later attempts as backoff.
    """
    if policy == "never":
        raise ValueError("no reconnect after a 'never' close")
    if not 0.0 <= rand < 1.0:
        raise ValueError("rand must be in [0, 1)")
    step = min(max(0, attempt), 30)
    if policy == "now" and attempt <= 0:
        return rand * min(NOW_JITTER, base)
    if policy == "busy":
        ceiling = min(cap, base * 8 * 2.0**step)
        return ceiling / 2 + rand * ceiling / 2
    return rand * min(cap, base * 2.0**step)


def valid_device_id(value: str) -> bool:
    return DEVICE_ID_RE.fullmatch(value) is not None


# ---------------------------------------------------------------- matching sends to events


def _canonical(value: Any) -> bytes:
    """JSON with sorted keys, to compare payloads whatever their key order."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def request_key(msg: dict[str, Any]) -> tuple[str, ...] | None:
    """The content key of a room request whose effect is one event (`event`, `update_room`,
    `close_room`), as `event_key` computes it from that event; None for other requests."""
    kind = msg.get("type")
    if kind == "event":
        return ("e", str(msg["event_type"]), _canonical(msg.get("action")).decode(),
                _canonical(msg.get("payload")).decode())
    if kind == "update_room":
        change = {k: msg[k] for k in ("status", "patch") if k in msg}
        return ("s", _canonical(change).decode())
    if kind == "close_room":
        return ("c",)
    return None


def event_key(event: dict[str, Any]) -> tuple[str, ...] | None:
    """The content key of an event, to find the request that made it: a request whose reply
    was lost with its socket and whose event is in the replay (same socket id, same key) is
    resolved without being sent again. Sends that are not found go again with their
    idempotency key (the gateway applies a key once); update and close have no key, so for
    them this match is what prevents a second application."""
    kind = event.get("event_type")
    if kind == "state_change":
        return ("s", _canonical(event.get("payload")).decode())
    if kind == "room_closed":
        return ("c",)
    if not isinstance(kind, str) or kind in RESERVED_EVENT_TYPES:
        return None
    return ("e", kind, _canonical(event.get("action")).decode(), _canonical(event.get("payload")).decode())


# ---------------------------------------------------------------- room replica


@dataclass
class RoomReplica:
    """One room as this client has delivered it, up to and including event `seq`.

    `state` is the room object of protocol.md section 5, kept current: `status` and
    `game_data` follow `state_change` (RFC 7386 merge patch), `current_players` and
    `participants` follow the participant events, roles follow `host_changed`. `me` is this
    client's device id (its own role changes with `host_changed`).
    """

    room_id: str
    me: str
    role: str
    seq: int
    epoch: str | None
    state: dict[str, Any]
    participants: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_created(cls, room: dict[str, Any], me: str, user_id: str | None) -> RoomReplica:
        """From `room_created.room`. The host's own `participant_joined` (seq 1) follows.
        `room_created` carries no epoch; a `joined` supplies it."""
        host = {"device_id": me, "user_id": user_id, "role": "host", "status": "active",
                "joined_at": room.get("created_at")}
        seq = int(room.get("seq") or 0)
        return cls(room["room_id"], me, "host", seq, None, {**room, "seq": seq}, [host])

    @classmethod
    def from_joined(cls, joined: dict[str, Any], me: str, role: str) -> RoomReplica:
        seq = int(joined["seq"])
        return cls(joined["room"]["room_id"], me, joined.get("role") or role, seq, joined.get("epoch"),
                   {**joined["room"], "seq": seq}, [dict(p) for p in joined.get("participants") or []])

    def join_message(self, since: int, password: str | None) -> dict[str, Any]:
        """The `join` that resumes this room after `since` (protocol.md section 6, step 4)."""
        msg: dict[str, Any] = {"type": "join", "room_id": self.room_id, "since": since}
        if self.epoch is not None:
            msg["epoch"] = self.epoch
        # The old role is kept whatever is asked; `host` cannot be asked for, so it is left
        # out (a host that was pruned meanwhile comes back as a player).
        if self.role in JOIN_ROLES:
            msg["role"] = self.role
        if password is not None:
            msg["password"] = password
        return msg

    def reset(self, joined: dict[str, Any]) -> None:
        """Take the snapshot of a `joined` that could not replay (`recovered: false`)."""
        self.seq = int(joined["seq"])
        self.epoch = joined.get("epoch")
        self.role = joined.get("role") or self.role
        self.state = {**joined["room"], "seq": self.seq}
        self.participants = [dict(p) for p in joined.get("participants") or []]

    def apply_event(self, event: dict[str, Any]) -> bool:
        """Apply the next event (seq must be `seq + 1`); False (and nothing changes) otherwise."""
        seq = event.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq != self.seq + 1:
            return False
        self.seq = seq
        self.state["seq"] = seq
        kind = event.get("event_type")
        payload = event.get("payload")
        payload = payload if isinstance(payload, dict) else {}
        if kind == "state_change":
            if isinstance(payload.get("status"), str):
                self.state["status"] = payload["status"]
            if isinstance(payload.get("patch"), dict):
                self.state["game_data"] = merge_patch(self.state.get("game_data") or {}, payload["patch"])
        elif kind == "room_closed":
            self.state["status"] = "closed"
            self.state["current_players"] = 0
            self.participants = []  # every participant is removed with it (section 4)
        elif kind in ("participant_joined", "participant_reconnected", "participant_disconnected",
                      "participant_left", "host_changed"):
            self._participant(str(kind), payload, event)
        return True

    def _participant(self, kind: str, payload: dict[str, Any], event: dict[str, Any]) -> None:
        device_id = payload.get("device_id")
        if not isinstance(device_id, str):
            return
        role = payload.get("role")
        found = next((p for p in self.participants if p.get("device_id") == device_id), None)
        if kind == "participant_left":
            self.participants = [p for p in self.participants if p.get("device_id") != device_id]
        elif kind == "participant_disconnected":
            if found is not None:
                found["status"] = "disconnected"
        elif kind == "host_changed":
            if found is not None and isinstance(role, str):
                found["role"] = role  # the heir may be disconnected: its status stays
        elif kind == "participant_joined" or found is None:
            sender = event.get("from")
            user_id = sender.get("user_id") if isinstance(sender, dict) else None
            if found is not None:
                self.participants.remove(found)
            self.participants.append({"device_id": device_id, "user_id": user_id, "role": role,
                                      "status": "active", "joined_at": event.get("ts")})
        else:  # participant_reconnected of a known participant
            found["status"] = "active"
            if isinstance(role, str):
                found["role"] = role
        if device_id == self.me and isinstance(role, str) and kind != "participant_left":
            self.role = role
        self.state["current_players"] = sum(1 for p in self.participants if p.get("role") != "spectator")
