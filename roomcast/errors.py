"""One vocabulary of error codes and close codes, mirroring protocol.md.

Error codes answer a single message and never close the socket by themselves.
Close codes end the socket; `CloseCode.reconnect_advice` says what a client should do.
"""

from __future__ import annotations

import enum

from orjson import Fragment


class ErrorCode(enum.StrEnum):
    BAD_REQUEST = "bad_request"
    UNKNOWN_TYPE = "unknown_type"
    HELLO_REQUIRED = "hello_required"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    ROOM_FULL = "room_full"
    ROOM_CLOSED = "room_closed"
    NOT_MEMBER = "not_member"
    FORBIDDEN = "forbidden"
    UNAUTHORIZED = "unauthorized"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


class CloseCode(enum.IntEnum):
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
    def reconnect_advice(self) -> str:
        """'now', 'backoff' or 'never' — how a well-behaved client reacts."""
        if self in (CloseCode.SERVICE_RESTART, CloseCode.TOO_SLOW, CloseCode.GOING_AWAY):
            return "now"
        if self in (CloseCode.POLICY, CloseCode.TOO_BIG):
            return "never"
        return "backoff"


class GatewayError(Exception):
    """An error answered to one client message with `{"type":"error", "code": ...}`."""

    def __init__(self, code: ErrorCode, message: str, *, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_ms = retry_after_ms


class ProtocolError(GatewayError):
    """A message that could not be parsed or validated. `re` is its id when readable."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        re: str | int | Fragment | None = None,
        has_re: bool = False,
    ) -> None:
        super().__init__(code, message)
        self.re = re
        self.has_re = has_re
