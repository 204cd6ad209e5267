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
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from http import HTTPStatus
from typing import Any

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


async def main() -> None:
    host = os.environ.get("GATEWAY_HOST", "127.0.0.1")
    port = int(os.environ["GATEWAY_PORT"])
    redis: Any = aioredis.from_url(os.environ["REDIS_URL"])
    pubsub = redis.pubsub()
    await pubsub.subscribe("minimal:control")  # listen() needs a subscription to start with

    async def fan_out() -> None:
        async for msg in pubsub.listen():
            if msg["type"] != "message":
                continue
            members = ROOMS.get(msg["channel"][5:].decode())
            if not members:
                continue
            frame = text_frame(msg["data"])
            for ws in members:
                ws.transport.write(frame)

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
        asyncio.get_running_loop().add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    async with serve(handler, host, port, compression=None, process_request=ready, max_size=1 << 20):
        await stop
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await reader
    await redis.aclose()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
