"""The memory store's connection records: the embedded counterparts of the requirements'
`ws:connections:{device_id}` and `ws:socket:{socket_id}`."""

from __future__ import annotations

from dataclasses import dataclass, field

from roomcast.room import ACTIVE
from roomcast.store.base import ConnectionInfo


@dataclass(slots=True)
class DeviceRecord:
    """`ws:connections:{device_id}`: a device's sockets and how often it connected."""

    connections: int = 0
    sockets: set[str] = field(default_factory=set)
    rooms: set[str] = field(default_factory=set)
    last_disconnect_ms: int = 0
    info: ConnectionInfo | None = None


@dataclass(slots=True)
class SocketRecord:
    """`ws:socket:{socket_id}`: which device a socket belongs to, and its state."""

    device_id: str
    user_id: str | None
    connected_at: int
    status: str = ACTIVE
    ended_at: int | None = None
