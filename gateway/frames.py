"""Server-to-client WebSocket frames, built once and written to many transports.

Server frames are never masked (RFC 6455 section 5.1) and we negotiate no extension,
so the bytes of a text frame are the same for every socket: one frame per room event.
"""

from __future__ import annotations


def text_frame(payload: bytes) -> bytes:
    """A single, final text frame (RFC 6455 section 5.2) carrying `payload`."""
    n = len(payload)
    if n < 126:
        return b"\x81" + bytes((n,)) + payload
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload
