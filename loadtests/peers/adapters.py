"""One load-client socket per target, over the same lean WebSocket client (loadtests/wsclient.py).

Every target gets the same workload and the same accounting; only the protocol differs:
  roomcast   protocol v1 (hello, create_room / join with replies, events acked by the gateway)
  minimal    loadtests/peers/minimal.py's JSON (hello → welcome, join → joined, publish: no reply)
  socketio   Socket.IO v4 over engine.io v4, WebSocket transport only:
             /socket.io/?EIO=4&transport=websocket; the server opens with `0{…}`, pings with
             `2` (we answer `3`); `40{auth}` connects the namespace "/" (our hello, answered by
             `40{"sid":…}`); `42["event",…]` events, `42<id>[…]` with an ack `43<id>[…]`.

A bench message carries `{"t":<sender's time.monotonic_ns()>,"n":<1, 2, … per room>,"pad":"…"}`
in every protocol (roomcast and minimal inside their envelope, Socket.IO as an event argument).
A receiver finds it with `bytes.find`, records the latency, and checks that `n` has no gap and
never goes back.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from collections import deque
from typing import Any

import orjson

from ..common import BENCH_ID0
from ..wsclient import Conn, client_frame

_MARK = b'{"t":'
_N = b'"n":'
_EVENT = b'{"type":"event"'


class BenchSocket(Conn):
    """Counts bench messages. Subclasses implement the protocol (hello, host_room, join, publish)."""

    PATH = "/ws"

    def __init__(self, host: str, port: int, latencies: array[int] | None = None) -> None:
        super().__init__(host, port, self.PATH)
        self.latencies = latencies if latencies is not None else array("q")
        self.room = ""
        self.count = 0  # bench messages received
        self.last_n = 0
        self.gaps = 0  # n skipped
        self.disorder = 0  # n repeated or going back
        self.last_at = 0  # time.monotonic_ns() of the last bench message
        self.sent = 0  # bench messages published by this socket
        self.refused = 0
        self.acked = 0
        self.pad = b""
        self.times: array[int] | None = None  # receive times too (the publishers: latency over time)

    def bench(self, payload: bytes, start: int) -> None:
        k = payload.find(_MARK, start)
        if k < 0:
            return
        k += 5
        j = payload.find(b",", k)
        self.latencies.append(self.now - int(payload[k:j]))
        if self.times is not None:
            self.times.append(self.now)
        i = payload.find(_N, j) + 4
        n = int(payload[i : payload.find(b",", i)])
        last = self.last_n
        if n != last + 1:
            if n <= last:
                self.disorder += 1
            else:
                self.gaps += n - last - 1
        if n > last:
            self.last_n = n
        self.count += 1
        self.last_at = self.now

    def setup_publisher(self, room: str, payload_bytes: int) -> None:
        self.room = room
        # {"t":<19 digits>,"n":<up to 7>,"pad":"…"} is about `payload_bytes` long as JSON.
        self.pad = b"x" * max(0, payload_bytes - 44)
        self.times = array("q")

    def publish(self) -> None:
        raise NotImplementedError

    async def host_room(self, room: str, max_players: int) -> None:
        """Make the room and be its first member (roomcast: create_room; the peers: join)."""
        await self.join(room)

    async def hello(self, device_id: str, timeout: float = 10.0) -> dict[str, Any]:
        raise NotImplementedError

    async def join(self, room_id: str, timeout: float = 10.0) -> dict[str, Any]:
        raise NotImplementedError

    def stats(self) -> dict[str, int]:
        return {"count": self.count, "gaps": self.gaps, "disorder": self.disorder, "last_at": self.last_at,
                "closed": int(self.closed.done()), "protocol_errors": self.protocol_errors}


class RoomcastSocket(BenchSocket):
    PATH = "/ws"

    def on_text(self, payload: bytes) -> None:
        if payload.startswith(_EVENT):
            self.bench(payload, 20)
            return
        message = orjson.loads(payload)
        re = message.get("re")
        if isinstance(re, int) and re >= BENCH_ID0:
            if message.get("type") == "ack":
                self.acked += 1
            else:
                self.refused += 1
            return
        self.on_reply(message)

    async def host_room(self, room: str, max_players: int) -> None:
        await self.request({"type": "create_room", "room_id": room, "game_type": "bench", "max_players": max_players})

    def publish(self) -> None:
        self.sent += 1
        self.write(client_frame(
            b'{"type":"event","id":%d,"room_id":"%s","event_type":"bench","payload":{"t":%d,"n":%d,"pad":"%s"}}'
            % (BENCH_ID0 + self.sent, self.room.encode(), time.monotonic_ns(), self.sent, self.pad)))

    async def hello(self, device_id: str, timeout: float = 10.0) -> dict[str, Any]:
        return await self.request({"type": "hello", "device_id": device_id}, timeout)

    async def join(self, room_id: str, timeout: float = 10.0) -> dict[str, Any]:
        return await self.request({"type": "join", "room_id": room_id}, timeout)


class MinimalSocket(BenchSocket):
    PATH = "/"

    def __init__(self, host: str, port: int, latencies: array[int] | None = None) -> None:
        super().__init__(host, port, latencies)
        self.waiting: deque[asyncio.Future[dict[str, Any]]] = deque()

    def on_text(self, payload: bytes) -> None:
        if payload.startswith(_EVENT):
            self.bench(payload, 15)
            return
        message = orjson.loads(payload)
        if self.waiting:
            fut = self.waiting.popleft()
            if not fut.done():
                if message.get("type") == "error":
                    fut.set_exception(RuntimeError(f"minimal peer: {message.get('message')}"))
                else:
                    fut.set_result(message)

    async def _ask(self, message: bytes, timeout: float) -> dict[str, Any]:
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting.append(fut)
        self.write(client_frame(message))
        return await asyncio.wait_for(fut, timeout)

    async def hello(self, device_id: str, timeout: float = 10.0) -> dict[str, Any]:
        return await self._ask(orjson.dumps({"type": "hello", "device_id": device_id}), timeout)

    async def join(self, room_id: str, timeout: float = 10.0) -> dict[str, Any]:
        return await self._ask(orjson.dumps({"type": "join", "room": room_id}), timeout)

    def publish(self) -> None:
        self.sent += 1
        self.write(client_frame(b'{"type":"publish","room":"%s","data":{"t":%d,"n":%d,"pad":"%s"}}'
                                % (self.room.encode(), time.monotonic_ns(), self.sent, self.pad)))

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        for fut in self.waiting:
            if not fut.done():
                fut.set_exception(ConnectionError("socket closed"))
        self.waiting.clear()


class SocketIOSocket(BenchSocket):
    PATH = "/socket.io/?EIO=4&transport=websocket"

    def __init__(self, host: str, port: int, latencies: array[int] | None = None) -> None:
        super().__init__(host, port, latencies)
        loop = asyncio.get_running_loop()
        self.eio_open: asyncio.Future[None] = loop.create_future()
        self.sio_connected: asyncio.Future[None] = loop.create_future()
        self.acks: dict[int, asyncio.Future[None]] = {}
        self.ack_id = 0

    def on_text(self, payload: bytes) -> None:
        if payload.startswith(b"42"):
            self.bench(payload, 2)
        elif payload == b"2":
            self.write(client_frame(b"3"))  # engine.io ping → pong
        elif payload.startswith(b"43"):
            ack = int(payload[2 : payload.index(b"[")])
            fut = self.acks.pop(ack, None)
            if fut is not None and not fut.done():
                fut.set_result(None)
        elif payload.startswith(b"40"):
            if not self.sio_connected.done():
                self.sio_connected.set_result(None)
        elif payload.startswith(b"44"):
            if not self.sio_connected.done():
                self.sio_connected.set_exception(RuntimeError(f"socket.io connect_error: {payload[2:]!r}"))
        elif payload.startswith(b"0"):
            if not self.eio_open.done():
                self.eio_open.set_result(None)
        else:
            self.protocol_errors += 1

    async def hello(self, device_id: str, timeout: float = 10.0) -> dict[str, Any]:
        await asyncio.wait_for(asyncio.shield(self.eio_open), timeout)
        self.write(client_frame(b"40" + orjson.dumps({"device_id": device_id})))
        await asyncio.wait_for(asyncio.shield(self.sio_connected), timeout)
        return {}

    async def join(self, room_id: str, timeout: float = 10.0) -> dict[str, Any]:
        self.ack_id += 1
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.acks[self.ack_id] = fut
        self.write(client_frame(b"42%d" % self.ack_id + orjson.dumps(["join", room_id])))
        await asyncio.wait_for(fut, timeout)
        return {}

    def publish(self) -> None:
        self.sent += 1
        self.write(client_frame(b'42["publish","%s",{"t":%d,"n":%d,"pad":"%s"}]'
                                % (self.room.encode(), time.monotonic_ns(), self.sent, self.pad)))

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        for fut in [self.eio_open, self.sio_connected, *self.acks.values()]:
            if not fut.done():
                fut.set_exception(ConnectionError("socket closed"))
        self.acks.clear()


ADAPTERS: dict[str, type[BenchSocket]] = {
    "roomcast": RoomcastSocket,
    "minimal": MinimalSocket,
    "socketio": SocketIOSocket,
}
