"""The few facts of protocol v1 (docs/protocol.md) the client needs, kept here so that the
client depends on nothing of the server.

They are copies of the server's `roomcast.protocol`, `roomcast.errors.CloseCode`,
`roomcast.merge_patch` and `roomcast.SUBPROTOCOL`; a unit test of the server
(tests/unit/test_client_protocol.py) checks that they are equal, so they cannot drift apart.
Pure: no I/O, no event loop.
"""

from __future__ import annotations

import enum
import re
from typing import Any, Final, Literal

CLIENT_VERSION: Final = "0.1.0"  # this distribution's version (`roomcast_client.__version__`, the User-Agent)
PROTOCOL_VERSION: Final = 1
SUBPROTOCOL: Final = "roomcast.v1"  # the WebSocket subprotocol the client asks for

ROOM_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
DEVICE_ID_RE: Final = re.compile(r"[A-Za-z0-9._:-]{8,128}")
MAX_GAME_TYPE: Final = 100
MAX_EVENT_TYPE: Final = 100
MAX_ACTION: Final = 255
SETTABLE_STATUSES: Final = ("active", "waiting", "in_progress", "completed")
JOIN_ROLES: Final = ("player", "spectator")
RESERVED_EVENT_TYPES: Final = frozenset(
    {
        "participant_joined",
        "participant_left",
        "participant_disconnected",
        "participant_reconnected",
        "state_change",
        "room_closed",
        "host_changed",
    }
)

Advice = Literal["now", "backoff", "never"]


class CloseCode(enum.IntEnum):
    """The close codes of protocol.md section 9."""

    NORMAL = 1000
    GOING_AWAY = 1001  # server stopping: reconnect (elsewhere), resume with `since`
    POLICY = 1008  # origin or credentials refused: do not retry unchanged
    TOO_BIG = 1009  # frame over the limit: a client bug, do not resend it
    INTERNAL = 1011  # server bug: reconnect with backoff
    SERVICE_RESTART = 1012  # draining: reconnect now, resume with `since`
    TRY_AGAIN_LATER = 1013  # overloaded: reconnect with backoff
    HELLO_TIMEOUT = 4001  # no valid hello in time
    HEARTBEAT_TIMEOUT = 4002  # silent for longer than heartbeat_timeout_ms
    RATE_LIMITED = 4008  # too many connections for this device or address: back off
    TOO_SLOW = 4009  # outgoing buffer overflowed: reconnect now, resume with `since`

    @property
    def reconnect_advice(self) -> Advice:
        """'now', 'backoff' or 'never': how a well-behaved client reacts."""
        if self in (CloseCode.SERVICE_RESTART, CloseCode.TOO_SLOW, CloseCode.GOING_AWAY):
            return "now"
        if self in (CloseCode.POLICY, CloseCode.TOO_BIG):
            return "never"
        return "backoff"


def merge_patch(target: Any, patch: Any) -> Any:
    """JSON Merge Patch (RFC 7386, section 2): `target` with `patch` applied; neither
    argument is modified. An object patch merges member by member (a `null` member removes
    that key; a target that is not an object becomes `{}` first); any other patch value
    replaces the target whole."""
    if not isinstance(patch, dict):
        return patch
    result: dict[str, Any] = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result
