"""The protocol client of the Locust scenario (loadtests/locustfile.py): the roomcast v1
messages it sends, one WebSocket with its reader greenlet (request/reply matched by `re`), the
failures as exceptions, and the state of one room as one user sees it (the seq it has reached).

What a user does with them, and how results become Locust statistics, is in the locustfile.
The reader greenlet reports to the socket's owner (ConnectionOwner: the RoomcastUser) the
frames that answer no request and the loss of the socket.

Needs only gevent and websocket-client (the `load` extra), never roomcast. It sits next to the
locustfile and is imported by plain name (`import locust_protocol`), because Locust loads a
locustfile by path with the file's own directory on sys.path, and the Kubernetes ConfigMap
(loadtests/kustomization.yaml) ships it next to the locustfile.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import gevent
import websocket  # the websocket-client package: blocking sockets, cooperative under gevent
from gevent.event import AsyncResult

log = logging.getLogger("roomcast.locust")

GAME_TYPE = "loadtest"


# ------------------------------------------------------------------ messages (docs/protocol.md)


def hello(device_id: str, device_token: str | None) -> dict[str, Any]:
    msg: dict[str, Any] = {"type": "hello", "device_id": device_id, "metadata": {"client": "locust"}}
    if device_token:
        msg["device_token"] = device_token  # gateways with REQUIRE_DEVICE_TOKEN want it back
    return msg


def create_room(room_id: str, max_players: int) -> dict[str, Any]:
    return {"type": "create_room", "room_id": room_id, "game_type": GAME_TYPE,
            "max_players": max_players, "game_data": {"round": 0}}


def join(room_id: str, since: int | None = None, epoch: str | None = None) -> dict[str, Any]:
    """A first join, or a resume (`since`, and the room's `epoch` when known)."""
    msg: dict[str, Any] = {"type": "join", "room_id": room_id}
    if since is not None:
        msg["since"] = since
        if epoch is not None:
            msg["epoch"] = epoch
    return msg


def event(room_id: str, event_type: str, action: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {"type": "event", "room_id": room_id, "event_type": event_type, "action": action, "payload": payload}


def update_room(room_id: str, status: str, patch: dict[str, Any]) -> dict[str, Any]:
    return {"type": "update_room", "room_id": room_id, "status": status, "patch": patch}


def leave(room_id: str) -> dict[str, Any]:
    return {"type": "leave", "room_id": room_id}


def list_rooms(limit: int = 10) -> dict[str, Any]:
    return {"type": "list_rooms", "game_type": GAME_TYPE, "limit": limit}


def ping() -> dict[str, Any]:
    return {"type": "ping"}


# ------------------------------------------------------------------ failures


class ServerError(Exception):
    """An `error` reply; the message is its code, so Locust groups failures by code."""


class ReplyTimeout(Exception):
    pass


class ConnectionClosed(ConnectionError):
    """The socket ended while a request waited (the loss itself is reported once, elsewhere)."""


class UnexpectedClose(Exception):
    pass


class SeqError(Exception):
    pass


# ------------------------------------------------------------------ one socket


class ConnectionOwner(Protocol):
    """What a Connection's reader greenlet calls on its user."""

    def fail(self, rtype: str, name: str, exc: BaseException) -> None: ...

    def on_unsolicited(self, conn: Connection, msg: dict[str, Any], size: int) -> None: ...

    def on_connection_lost(self, conn: Connection, code: int | None, error: BaseException | None) -> None: ...


class Connection:
    """One WebSocket. A reader greenlet dispatches replies by `re` (running the request's hook
    first, in order with the events around it) and hands everything else to the user."""

    def __init__(self, user: ConnectionOwner, url: str, timeout: float, headers: list[str]) -> None:
        self.user = user
        self.url = url
        self.pending: dict[int, tuple[AsyncResult, Callable[[dict[str, Any]], None] | None]] = {}
        self.ids = itertools.count(1)
        self.closing = False  # set before we end the socket ourselves: no failure then
        self.dead = False
        self.welcome: dict[str, Any] | None = None
        self.ws = websocket.create_connection(url, timeout=timeout, enable_multithread=True, header=headers,
                                              skip_utf8_validation=True, subprotocols=["roomcast.v1"])
        self.ws.settimeout(None)  # the reader blocks until data; requests are bounded by gevent.Timeout
        self.reader = gevent.spawn(self._read)

    def _read(self) -> None:
        code: int | None = None
        error: BaseException | None = None
        try:
            while True:
                opcode, data = self.ws.recv_data()
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    self._dispatch(data)
                elif opcode == websocket.ABNF.OPCODE_CLOSE:
                    code = int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005
                    break
        except Exception as exc:  # the socket failed: WebSocketException, OSError…
            error = exc
        finally:
            self.dead = True
            for result, _hook in list(self.pending.values()):
                result.set_exception(ConnectionClosed(f"socket ended (close code {code})"))
            self.pending.clear()
            if not self.closing:
                self.user.on_connection_lost(self, code, error)

    def _dispatch(self, data: bytes) -> None:
        try:
            msg = json.loads(data)
            entry = self.pending.get(msg.get("re")) if "re" in msg else None
            if entry is not None:
                result, hook = entry
                if hook is not None:
                    hook(msg)
                result.set((msg, len(data)))
            else:
                self.user.on_unsolicited(self, msg, len(data))
        except Exception:  # a bug in this file must not look like a gateway failure
            log.exception("roomcast: client error while handling %r", data[:200])
            self.user.fail("WS", "client", Exception("locustfile error (see log)"))

    def call(self, msg: dict[str, Any], timeout: float,
             hook: Callable[[dict[str, Any]], None] | None = None) -> tuple[dict[str, Any], float, int]:
        """Send with a fresh id; return (reply, milliseconds, reply bytes). Raises ReplyTimeout or
        ConnectionClosed. `hook(reply)` runs in the reader before any later frame is handled."""
        rid = next(self.ids)
        msg["id"] = rid
        result: AsyncResult = AsyncResult()
        self.pending[rid] = (result, hook)
        start = time.perf_counter()
        try:
            with gevent.Timeout(timeout, ReplyTimeout(f"no reply to {msg['type']} within {timeout:g}s")):
                if self.dead:
                    raise ConnectionClosed("socket already ended")
                try:
                    self.ws.send(json.dumps(msg, separators=(",", ":")))
                except (websocket.WebSocketException, OSError) as exc:
                    raise ConnectionClosed(f"send failed: {exc}") from exc
                reply, size = result.get()
        finally:
            self.pending.pop(rid, None)
        return reply, (time.perf_counter() - start) * 1000.0, size

    def drop(self) -> None:
        """End the socket without a close frame (a lost network, as the gateway sees it)."""
        self.closing = True
        self.ws.abort()
        self.ws.shutdown()
        self.reader.join(1)

    def close(self) -> None:
        """A clean close: our close frame (1000), the reader sees the gateway's, then the socket goes.
        (Not ws.close(): it would read the socket from a second greenlet.)"""
        self.closing = True
        if not self.dead:
            try:
                self.ws.send_close()
            except (websocket.WebSocketException, OSError):
                pass
            self.reader.join(1)
        self.reader.kill(block=False)
        self.ws.shutdown()


# ------------------------------------------------------------------ one room, as one user sees it


class RoomState:
    __slots__ = ("early", "epoch", "last_join", "last_seq", "max_acked", "ready", "replay_until", "role", "room_id", "started")

    def __init__(self, room_id: str) -> None:
        self.room_id = room_id
        self.role = "player"
        self.epoch: str | None = None  # room_created carries none: the creator learns it on a rejoin
        self.last_seq = 0  # the last seq this user processed (gap-free so far)
        self.ready = False  # false while a join/rejoin reply is outstanding: events wait in `early`
        self.early: list[tuple[dict[str, Any], int]] = []
        self.replay_until = 0  # events up to this seq came from a replay: no delivery latency
        self.max_acked = 0
        self.started = time.monotonic()
        self.last_join = ""  # for the log of a gap

