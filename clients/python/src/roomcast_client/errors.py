"""The client's error type."""

from __future__ import annotations

from typing import Any


class RoomcastError(Exception):
    """`code` is the gateway's error code (protocol.md section 7: not_found, room_full,
    forbidden, rate_limited…) or one of the client's own: timeout, closed, disconnected,
    queue_full, too_large, bad_request (refused before sending), policy_violation (a close
    code that says never reconnect; `close_code` tells which), bad_frame, overflow."""

    def __init__(self, code: str, message: str, retry_after_ms: int | None = None, *,
                 close_code: int | None = None, reply: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retry_after_ms = retry_after_ms
        self.close_code = close_code
        self.reply = reply


def bad(message: str) -> RoomcastError:
    return RoomcastError("bad_request", message)
