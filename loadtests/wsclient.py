"""A lean WebSocket client for load generation: one asyncio Protocol per socket.

Just enough RFC 6455 to speak protocol v1 to the gateway: the opening handshake (section 4.1),
masked client frames (5.3), unmasked single-frame server messages, close and ping. No
per-frame objects, no extra task per socket, and the fan-out receivers read an event's
`seq` and send timestamp with `bytes.find` instead of a JSON parse, so a receiver costs a
few microseconds per delivery and is not what the benchmark ends up measuring.

The gateway writes every message as one final frame (gateway/frames.py) and negotiates no
extension; a fragmented or masked server frame is counted in `protocol_errors`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import time
from array import array
from typing import Any

import orjson

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_EVENT_PREFIX = b'{"type":"event"'
_SEQ = b'"seq":'
_BENCH_T = b'"payload":{"t":'
_BENCH_END = b'"event_type":"bench_end"'


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One final, masked client frame (client frames must be masked: RFC 6455 5.3)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0xFE)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0xFF)) + n.to_bytes(8, "big")
    key = os.urandom(4)
    if not n:
        return head + key
    # XOR the whole payload with the repeated key in one big-int operation.
    stream = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "little") ^ int.from_bytes(stream, "little")).to_bytes(n, "little")
    return head + key + masked


class HandshakeError(ConnectionError):
    pass


class Conn(asyncio.Protocol):
    """One client socket. `request()` for replies; subclasses override `on_event`."""

    def __init__(self, host: str, port: int, path: str = "/ws") -> None:
        loop = asyncio.get_running_loop()
        self.host, self.port, self.path = host, port, path
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.close_code: int | None = None
        self.protocol_errors = 0
        self.replies: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self.next_id = 0
        self.now = 0  # time.monotonic_ns() when the current read arrived
        self._key = base64.b64encode(os.urandom(16))
        self._head: bytes | None = b""  # None once the handshake is done
        self._buf = b""

    # ------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport subclass
        transport.write(
            b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
            % (self.path.encode(), self.host.encode(), self.port, self._key)
        )

    def data_received(self, data: bytes) -> None:
        if self._head is not None:
            head = self._head + data
            end = head.find(b"\r\n\r\n")
            if end < 0:
                self._head = head
                return
            self._head = None
            if not self._check_handshake(head[:end]):
                return
            data = head[end + 4 :]
            if not data:
                return
        self.now = time.monotonic_ns()
        buf = self._buf + data if self._buf else data
        n = len(buf)
        pos = 0
        while n - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            if length < 126:
                start = pos + 2
            elif length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                start = pos + 4
            else:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                start = pos + 10
            end = start + length
            if end > n:
                break
            payload = buf[start:end]
            pos = end
            opcode = b0 & 0x0F
            if not b0 & 0x80 or b1 & 0x80:
                self.protocol_errors += 1  # fragmented or masked: the gateway never sends these
            if opcode == 0x1:
                self.on_text(payload)
            elif opcode == 0x8:
                self._on_close(payload)
            elif opcode == 0x9:
                self.write(client_frame(payload, 0xA))
        self._buf = buf[pos:] if pos < n else b""

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during handshake"))
        for fut in self.replies.values():
            if not fut.done():
                fut.set_exception(ConnectionError(f"socket closed (code {self.close_code})"))
        self.replies.clear()
        if not self.closed.done():
            self.closed.set_result(None)

    # ------------------------------------------------------------ protocol

    def _check_handshake(self, head: bytes) -> bool:
        accept = base64.b64encode(hashlib.sha1(self._key + _GUID).digest())
        if not head.startswith(b"HTTP/1.1 101") or accept not in head:
            self.opened.set_exception(HandshakeError(head.split(b"\r\n", 1)[0].decode(errors="replace")))
            assert self.transport is not None
            self.transport.abort()
            return False
        self.opened.set_result(None)
        return True

    def _on_close(self, payload: bytes) -> None:
        self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(payload[:2], 0x8))  # echo the code (RFC 6455 5.5.1)
            self.transport.close()

    def write(self, frame: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    def send(self, message: dict[str, Any]) -> None:
        self.write(client_frame(orjson.dumps(message)))

    def on_text(self, payload: bytes) -> None:
        """One text message. Protocol v1: events to `on_event` (raw), the rest parsed to `on_reply`;
        the peers' adapters (loadtests/peers/adapters.py) replace this with their protocol's."""
        if payload.startswith(_EVENT_PREFIX):
            self.on_event(payload)
        else:
            self.on_reply(orjson.loads(payload))

    def on_event(self, payload: bytes) -> None:
        """A room event (raw JSON bytes). Idle sockets ignore them."""

    def on_reply(self, message: dict[str, Any]) -> None:
        fut = self.replies.pop(message.get("re"), None)
        if fut is not None and not fut.done():
            fut.set_result(message)

    async def request(self, message: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        """Send with a fresh id; return the direct reply; raise on an `error` reply."""
        self.next_id += 1
        rid = self.next_id
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.replies[rid] = fut
        self.send({**message, "id": rid})
        try:
            reply = await asyncio.wait_for(fut, timeout)
        finally:
            self.replies.pop(rid, None)
        if reply.get("type") == "error":
            raise RuntimeError(f"{message.get('type')} refused: {reply.get('code')}: {reply.get('message')}")
        return reply

    async def hello(self, device_id: str, timeout: float = 10.0) -> dict[str, Any]:
        return await self.request({"type": "hello", "device_id": device_id}, timeout)

    async def join(self, room_id: str, timeout: float = 10.0) -> dict[str, Any]:
        return await self.request({"type": "join", "room_id": room_id}, timeout)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class Member(Conn):
    """A fan-out receiver: checks that seqs are gap-free and records each bench latency.

    Bench events carry `"payload":{"t":<sender's time.monotonic_ns()>,…}`; CLOCK_MONOTONIC is
    system-wide on Linux, so sender and receiver processes on one machine share it.
    """

    def __init__(self, host: str, port: int, latencies: array[int] | None = None) -> None:
        super().__init__(host, port)
        self.last_seq = 0
        self.gaps = 0  # seqs skipped
        self.disorder = 0  # seqs repeated or going backwards
        self.first_gap = 0  # the first seq found missing, for diagnosis
        self.bench_gaps = 0  # seqs missing after the first bench event
        self.bench = 0  # bench events received
        self.first_bench = 0
        self.last_bench = 0
        self.end_seq = 0  # seq of bench_end, once seen
        self.end_at = 0
        self.latencies = latencies if latencies is not None else array("q")
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_event(self, payload: bytes) -> None:
        i = payload.find(_SEQ, 20) + 6
        j = payload.find(b",", i)
        seq = int(payload[i:j])
        last = self.last_seq
        if last and seq != last + 1:
            if seq <= last:
                self.disorder += 1
                return
            self.gaps += seq - last - 1
            if not self.first_gap:
                self.first_gap = last + 1
            if self.first_bench:
                self.bench_gaps += seq - last - 1
        self.last_seq = seq
        k = payload.find(_BENCH_T, j)
        if k >= 0:
            k += 15
            self.latencies.append(self.now - int(payload[k : payload.find(b",", k)]))
            self.bench += 1
            if not self.first_bench:
                self.first_bench = seq
            self.last_bench = seq
        elif payload.find(_BENCH_END, j) >= 0:
            self.end_seq = seq
            self.end_at = self.now
            if not self.done.done():
                self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.done.done():
            self.done.set_result(None)

    def stats(self) -> dict[str, int]:
        return {
            "bench": self.bench, "gaps": self.gaps, "first_gap": self.first_gap,
            "bench_gaps": self.bench_gaps, "disorder": self.disorder,
            "first_bench": self.first_bench, "last_bench": self.last_bench, "end_seq": self.end_seq,
            "end_at": self.end_at, "close_code": self.close_code or 0, "protocol_errors": self.protocol_errors,
        }


async def open_conn(host: str, port: int, cls: type[Conn] = Conn, timeout: float = 10.0, **kwargs: Any) -> Any:
    """Connect and finish the WebSocket handshake; returns the protocol instance."""
    loop = asyncio.get_running_loop()
    _, proto = await asyncio.wait_for(
        loop.create_connection(lambda: cls(host, port, **kwargs), host, port), timeout)
    await asyncio.wait_for(proto.opened, timeout)
    return proto
