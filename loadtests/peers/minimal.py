"""A minimal room gateway: websockets + uvloop + Redis pub/sub, what one would write in an
afternoon instead of roomcast. A peer for `python -m loadtests.peers`, not part of roomcast.

Protocol (JSON text frames):
  → {"type":"hello","device_id":"…"}              ← {"type":"welcome"}
  → {"type":"join","room":"…"}                    ← {"type":"joined","room":"…"}
  → {"type":"publish","room":"…","data":{…}}      (no reply)
  ← {"type":"event","room":"…","data":{…}}        to every socket of the room, the sender included
  ← {"type":"error","message":"…"}
A publish goes to Redis (PUBLISH on channel "room:<room>"); every process subscribes to the
channels of its rooms and writes the message, framed once, to every local socket of the room.
No history, no sequence numbers, no auth, no limits. GET /readyz answers 200.
Binds GATEWAY_HOST:GATEWAY_PORT; Redis at REDIS_URL.

MINIMAL_REDIS=lean: the same gateway with redis-py replaced by two raw RESP connections of its
own (commands and subscriptions, parsed by hiredis' Reader): the floor of a Python gateway on
this design, what is left when no client library stands between the sockets and Redis
(docs/benchmarks.md, "Session 7"). The default is redis-py, what one would write.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
from http import HTTPStatus
from typing import Any
from urllib.parse import urlparse

import hiredis
import orjson
import redis.asyncio as aioredis
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

ROOMS: dict[str, set[ServerConnection]] = {}


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked server text frame (RFC 6455 5.2)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + payload


def ready(conn: ServerConnection, request: Request) -> Response | None:
    if request.path == "/readyz":
        return conn.respond(HTTPStatus.OK, "ok\n")
    return None


def fan_out_message(channel: bytes, data: bytes) -> None:
    members = ROOMS.get(channel[5:].decode())
    if members:
        frame = text_frame(data)
        for ws in members:
            ws.transport.write(frame)


class LeanRedis(asyncio.Protocol):
    """MINIMAL_REDIS=lean: one raw connection; `subscriber`: every reply is a pub/sub message."""

    def __init__(self, subscriber: bool) -> None:
        self.reader = hiredis.Reader()
        self.subscriber = subscriber
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            if self.subscriber:
                if reply[0] == b"message":
                    fan_out_message(reply[1], reply[2])
            elif self.waiting:
                self.waiting.popleft().set_result(reply)

    def send(self, *args: str | bytes) -> None:
        self.transport.write(hiredis.pack_command(args))  # type: ignore[arg-type]  # its stub wants a 1-tuple

    def call(self, *args: str | bytes) -> asyncio.Future[Any]:
        self.send(*args)
        fut = asyncio.get_running_loop().create_future()
        self.waiting.append(fut)
        return fut


class LeanClient:
    """What the handler needs of redis-py (publish, subscribe, unsubscribe), on LeanRedis."""

    async def start(self, url: str) -> None:
        u, loop = urlparse(url), asyncio.get_running_loop()
        host, port = u.hostname or "127.0.0.1", u.port or 6379
        _, self.cmd = await loop.create_connection(lambda: LeanRedis(False), host, port)
        _, self.sub = await loop.create_connection(lambda: LeanRedis(True), host, port)

    async def publish(self, channel: str, data: bytes) -> None:
        await self.cmd.call("PUBLISH", channel, data)

    async def subscribe(self, channel: str) -> None:
        self.sub.send("SUBSCRIBE", channel)

    async def unsubscribe(self, channel: str) -> None:
        self.sub.send("UNSUBSCRIBE", channel)

    async def aclose(self) -> None:
        self.cmd.transport.close()
        self.sub.transport.close()


async def main() -> None:
    host = os.environ.get("GATEWAY_HOST", "127.0.0.1")
    port = int(os.environ["GATEWAY_PORT"])
    redis: Any
    if os.environ.get("MINIMAL_REDIS") == "lean":
        redis = pubsub = LeanClient()
        await redis.start(os.environ["REDIS_URL"])
    else:
        redis = aioredis.from_url(os.environ["REDIS_URL"])
        pubsub = redis.pubsub()
        await pubsub.subscribe("minimal:control")  # listen() needs a subscription to start with

    async def fan_out() -> None:
        if isinstance(pubsub, LeanClient):
            return  # its subscriber connection fans out from its read callback
        async for msg in pubsub.listen():
            if msg["type"] == "message":
                fan_out_message(msg["channel"], msg["data"])

    async def handler(ws: ServerConnection) -> None:
        joined: list[str] = []
        try:
            async for raw in ws:
                try:
                    m = orjson.loads(raw)
                    kind = m["type"]
                    if kind == "publish":
                        room = str(m["room"])
                        await redis.publish("room:" + room,
                                            orjson.dumps({"type": "event", "room": room, "data": m["data"]}))
                    elif kind == "join":
                        room = str(m["room"])
                        members = ROOMS.get(room)
                        if members is None:
                            members = ROOMS[room] = set()
                            await pubsub.subscribe("room:" + room)
                        members.add(ws)
                        joined.append(room)
                        await ws.send(orjson.dumps({"type": "joined", "room": room}).decode())
                    elif kind == "hello":
                        await ws.send('{"type":"welcome"}')
                    else:
                        raise ValueError(f"unknown type {kind!r}")
                except (ValueError, KeyError, TypeError) as exc:
                    await ws.send(orjson.dumps({"type": "error", "message": str(exc)}).decode())
        finally:
            for room in joined:
                members = ROOMS.get(room)
                if members is not None:
                    members.discard(ws)
                    if not members:
                        del ROOMS[room]
                        await pubsub.unsubscribe("room:" + room)

    reader = asyncio.create_task(fan_out())
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, lambda: None if stop.done() else stop.set_result(None))
    async with serve(handler, host, port, compression=None, process_request=ready, max_size=1 << 20):
        await stop
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await reader
    await redis.aclose()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
