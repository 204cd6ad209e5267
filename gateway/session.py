"""Session: one client socket on this replica — its identity, rooms and outgoing buffer."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any, Protocol

from websockets.asyncio.server import ServerConnection
from websockets.protocol import State

from roomcast.limits.base import TokenBucket
from roomcast.privacy import client_address
from roomcast.settings import Settings
from roomcast.store.base import Caller

from .frames import text_frame
from .metrics import Metrics


class Owner(Protocol):
    """What a Session needs of the node that owns it (the Node): its settings, its metrics,
    and a place to keep the tasks it starts (a close) until they end."""

    settings: Settings
    metrics: Metrics

    def track(self, task: asyncio.Task[Any]) -> None: ...

_OPEN = State.OPEN
# Replays are written up to this many buffered bytes, then wait for the transport's flow
# control (websockets: pause above its write limit, resume below a quarter of it).
REPLAY_HIGH_WATER = 64 * 1024


def new_socket_id() -> str:
    return secrets.token_urlsafe(12)


class Session:
    """A socket's state. Writes never block: frames go straight to the transport, and a
    socket whose transport buffer passes the bound is closed with 4009 (too slow)."""

    __slots__ = (
        "bucket",
        "buffer_limit",
        "caller",
        "close_status",
        "closing",
        "device_id",
        "ip",
        "last_seen",
        "node",
        "opened",
        "origin",
        "protocol",
        "rooms",
        "socket_id",
        "transport",
        "user_agent",
        "ws",
    )

    def __init__(self, ws: ServerConnection, node: Owner, now: float) -> None:
        self.ws = ws
        self.node = node
        self.transport: asyncio.WriteTransport = ws.transport
        self.protocol = ws.protocol
        self.socket_id = new_socket_id()
        self.caller: Caller | None = None
        self.device_id: str | None = None
        self.rooms: dict[str, str] = {}  # room_id -> role, rooms this socket is in
        self.opened = now
        self.last_seen = now
        s = node.settings
        self.bucket = TokenBucket(s.rate_messages, s.rate_burst, now)
        self.closing = False
        self.close_status = "disconnected"
        self.buffer_limit = s.max_send_buffer_bytes
        headers = ws.request.headers if ws.request is not None else None
        self.user_agent: str | None = headers.get("User-Agent") if headers is not None else None
        self.origin: str | None = headers.get("Origin") if headers is not None else None
        addr: Any = ws.remote_address
        peer = addr[0] if isinstance(addr, tuple) and addr else None
        forwarded = headers.get("X-Forwarded-For") if headers is not None else None
        self.ip: str | None = client_address(peer, forwarded, s.trusted_proxies)

    @property
    def welcomed(self) -> bool:
        return self.caller is not None

    def write_frame(self, frame: bytes) -> bool:
        """Write one pre-built WebSocket frame; False if the socket is not writable."""
        if self.closing or self.protocol.state is not _OPEN:
            return False
        transport = self.transport
        transport.write(frame)
        if transport.get_write_buffer_size() > self.buffer_limit:
            self.slow()
        return True

    def slow(self) -> None:
        """Close with 4009: the client does not read what it is sent fast enough."""
        if not self.closing:
            self.node.metrics.slow_closes.inc()
        self.close(4009, "too slow: outgoing buffer overflowed")

    async def send_paced(self, payload: bytes) -> bool:
        """Write one JSON message, then, if the transport buffer is above its high-water mark,
        wait until the client has read it down to the low one (replays: a client reading at
        full speed is never too slow, one that does not read holds no more than that).
        False once the socket is closing."""
        return await self.write_paced(text_frame(payload))

    async def write_paced(self, frames: bytes) -> bool:
        """send_paced for pre-built WebSocket frames (one or several, written as one buffer)."""
        if not self.write_frame(frames):
            return False
        if self.transport.get_write_buffer_size() > REPLAY_HIGH_WATER:
            try:
                await self.ws.drain()
            except Exception:  # the connection was lost meanwhile
                return False
            self.last_seen = time.monotonic()  # it reads: it is alive
        return not self.closing

    def send(self, payload: bytes) -> bool:
        """Write one JSON message as its own frame."""
        return self.write_frame(text_frame(payload))

    def close(self, code: int, reason: str, status: str = "disconnected") -> None:
        """Start closing with `code`; later writes are dropped. Idempotent."""
        if self.closing:
            return
        self.closing = True
        self.close_status = status
        task = asyncio.get_running_loop().create_task(self.ws.close(code, reason))
        self.node.track(task)
