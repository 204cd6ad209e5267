"""Kick and disconnect on every replica: a control message over Redis pub/sub (keys.CONTROL)
with the replies counted in a short-lived hash, or straight to this node in the embedded mode."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any, Final

import orjson

from roomcast.redis import keys
from roomcast.redis.batch import Batcher, cmd

from .node import Node

log = logging.getLogger("roomcast.api")

CONTROL_TIMEOUT: Final = 2.0  # s, waiting for every replica to apply a kick or disconnect

class Control:
    """Kick and disconnect on every replica. `batcher` is None in the embedded mode."""

    def __init__(self, node: Node, batcher: Batcher | None) -> None:
        self.node = node
        self.batcher = batcher

    async def disconnect(self, device_id: str, code: int, reason: str) -> int:
        if self.batcher is None:
            return self.close_local(device_id, code, reason)
        return await self._broadcast({"op": "disconnect", "device_id": device_id, "code": code, "reason": reason})

    async def kick(self, room_id: str, device_id: str) -> int:
        if self.batcher is None:
            return await self.leave_local(room_id, device_id)
        return await self._broadcast({"op": "kick", "device_id": device_id, "room_id": room_id})

    def _device_sessions(self, device_id: str) -> list[Any]:
        return [s for s in self.node.sessions.values() if s.device_id == device_id and not s.closing]

    def close_local(self, device_id: str, code: int, reason: str) -> int:
        sessions = self._device_sessions(device_id)
        for session in sessions:
            session.close(code, reason)
        return len(sessions)

    async def leave_local(self, room_id: str, device_id: str) -> int:
        """The device's sockets here leave the room (they got its participant_left first)."""
        n = 0
        for session in self._device_sessions(device_id):
            if session.rooms.pop(room_id, None) is not None:
                await self.node.hub.remove(room_id, session)
                n += 1
        return n

    async def _broadcast(self, msg: dict[str, Any]) -> int:
        assert self.batcher is not None
        b = self.batcher
        msg["id"] = uuid.uuid4().hex
        reply = keys.control_reply(msg["id"])
        receivers = int(await b.call(cmd("spublish", keys.CONTROL, orjson.dumps(msg))))
        deadline = time.monotonic() + CONTROL_TIMEOUT
        delay = 0.002
        done, total = 0, 0
        while True:  # bounded by CONTROL_TIMEOUT
            raw = await b.call(cmd("hmget", reply, "replied", "n"))
            done, total = int(raw[0] or 0), int(raw[1] or 0)
            if done >= receivers or time.monotonic() >= deadline:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        if done < receivers:
            log.warning("%s: %d of %d replicas answered in time", msg["op"], done, receivers)
        return total

    def on_message(self, data: bytes) -> None:
        """A control message from the bus (every replica gets each one, this one too)."""
        try:
            msg = orjson.loads(data)
            op, req_id, device_id = msg["op"], str(msg["id"]), str(msg["device_id"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("ignoring a malformed control message")
            return
        task = asyncio.get_running_loop().create_task(self._apply(op, req_id, device_id, msg))
        self.node.track(task)

    async def _apply(self, op: str, req_id: str, device_id: str, msg: dict[str, Any]) -> None:
        n = 0
        try:
            if op == "disconnect":
                n = self.close_local(device_id, int(msg["code"]), str(msg.get("reason", "")))
            elif op == "kick":
                n = await self.leave_local(str(msg["room_id"]), device_id)
            else:  # a newer replica's operation: answered (nothing done), so nobody waits for us
                log.warning("unknown control operation %r", op)
        finally:  # answer even after a failure, so the request does not wait out its timeout
            assert self.batcher is not None
            b, reply = self.batcher, keys.control_reply(req_id)
            b.call(cmd("hincrby", reply, "n", n))
            b.call(cmd("hincrby", reply, "replied", 1))
            await b.call(cmd("pexpire", reply, 30_000))


