"""The server API: an HTTP JSON API for game backends under /api/v1/ (docs/server-api.md).

A backend acts as a *service* (its API key's name), never as a participant: it holds no
seat, and a room it creates has no host, so no player ever inherits one. Its events carry
`"from": {"service": <key name>, "socket_id": null, "device_id": null, "user_id": null}`.

HTTP: websockets' server reads no request bodies (it refuses a request with one), so the
API has its own small HTTP/1.1 reader (`RequestReader`, sans-I/O) and asyncio protocol
(`ApiConnection`). It serves API_PORT by itself, and on the gateway port
`gateway.server` hands a connection whose request line targets /api/ to it before
websockets sees a byte. API_PORT keeps HTTP/1.1 connections alive; the gateway port answers
one request per connection (`Connection: close`).

Cluster-wide effects on sockets (kick, disconnect) go to every replica as a control
message (`Control`): over Redis pub/sub (keys.CONTROL) with the replies counted in a
short-lived hash, or straight to this node in the embedded mode.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, unquote

import orjson

from roomcast import protocol as p
from roomcast.errors import ErrorCode, GatewayError
from roomcast.redis import keys
from roomcast.redis.batch import Batcher, cmd
from roomcast.room import new_join_code
from roomcast.settings import Settings, parse_api_keys
from roomcast.store.base import NewRoom, Service

from . import passwords
from .node import Node, now_ms

log = logging.getLogger("roomcast.api")

PREFIX: Final = "/api/v1"
MAX_HEAD: Final = 16_384  # request line and headers
MAX_CLOSE_REASON: Final = 123  # bytes: the WebSocket close frame's limit
MAX_HISTORY_LIMIT: Final = 1000
DEFAULT_HISTORY_LIMIT: Final = 100
REQUEST_TIMEOUT: Final = 9.0  # s, a whole request (the gateway port aborts a handshake at 10 s)
CONTROL_TIMEOUT: Final = 2.0  # s, waiting for every replica to apply a kick or disconnect

STATUS_OF: Final = {
    ErrorCode.BAD_REQUEST: 400, ErrorCode.UNKNOWN_TYPE: 400, ErrorCode.HELLO_REQUIRED: 400,
    ErrorCode.UNAUTHORIZED: 401, ErrorCode.FORBIDDEN: 403, ErrorCode.NOT_FOUND: 404,
    ErrorCode.NOT_MEMBER: 404, ErrorCode.CONFLICT: 409, ErrorCode.ROOM_FULL: 409,
    ErrorCode.ROOM_CLOSED: 409, ErrorCode.RATE_LIMITED: 429, ErrorCode.INTERNAL: 500,
    ErrorCode.UNAVAILABLE: 503,
}
REASONS: Final = {200: "OK", 201: "Created", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
                  404: "Not Found", 405: "Method Not Allowed", 409: "Conflict", 413: "Content Too Large",
                  429: "Too Many Requests", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
                  501: "Not Implemented", 503: "Service Unavailable"}


class HttpError(Exception):
    def __init__(self, status: int, code: ErrorCode, message: str, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after_ms = retry_after_ms


def _error_of(exc: GatewayError) -> HttpError:
    return HttpError(STATUS_OF.get(exc.code, 500), exc.code, exc.message, exc.retry_after_ms)


# ---------------------------------------------------------------- keys


def load_keys(settings: Settings) -> dict[str, str]:
    """SERVER_API_KEYS plus SERVER_API_KEYS_FILE (`name=secret` per line or comma-separated,
    `#` comments). Errors name the key, never a secret."""
    entries = list(settings.server_api_keys)
    if settings.server_api_keys_file:
        text = Path(settings.server_api_keys_file).read_text()
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            entries += [e for e in (x.strip() for x in line.split(",")) if e]
    return parse_api_keys(entries)


class ApiKeys:
    def __init__(self, keys_by_name: dict[str, str]) -> None:
        self._keys = [(name, secret.encode()) for name, secret in keys_by_name.items()]

    def __bool__(self) -> bool:
        return bool(self._keys)

    def identify(self, authorization: str | None) -> str | None:
        """The name of the key this `Authorization: Bearer <secret>` holds, or None. Every key
        is compared, each in constant time, so the time taken tells nothing about the secret."""
        if authorization is None:
            return None
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        given = token.strip().encode()
        found = None
        for name, secret in self._keys:
            if hmac.compare_digest(given, secret) and found is None:
                found = name
        return found


# ---------------------------------------------------------------- HTTP/1.1 (sans-I/O)


@dataclass(slots=True)
class HttpRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    keep_alive: bool = False  # HTTP/1.1 without `Connection: close`


class RequestReader:
    """Bytes in, one request out. Refuses what it does not support, at the edge: heads over
    MAX_HEAD (431), bodies over `max_body` (413, before reading them), chunked bodies (501)."""

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        self.buf = bytearray()
        self.head: tuple[str, str, dict[str, str]] | None = None
        self.length = 0
        self.version = ""

    def feed(self, data: bytes) -> HttpRequest | None:
        self.buf += data
        if self.head is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    raise HttpError(431, ErrorCode.BAD_REQUEST, "request head too large")
                return None
            if end > MAX_HEAD:
                raise HttpError(431, ErrorCode.BAD_REQUEST, "request head too large")
            self.head = self._parse_head(bytes(self.buf[:end]))
            del self.buf[: end + 4]
        if len(self.buf) < self.length:
            return None
        method, target, headers = self.head
        path, _, qs = target.partition("?")
        keep = self.version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
        return HttpRequest(method, path, parse_qs(qs, keep_blank_values=True), headers,
                           bytes(self.buf[: self.length]), keep)

    def rest(self) -> bytes:
        """What came after the request returned by `feed` (the next one's start, pipelined)."""
        return bytes(self.buf[self.length:])

    def _parse_head(self, head: bytes) -> tuple[str, str, dict[str, str]]:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
            raise HttpError(400, ErrorCode.BAD_REQUEST, "malformed request line")
        self.version = parts[2]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise HttpError(400, ErrorCode.BAD_REQUEST, "malformed header line")
            low = name.lower()
            if low in headers and low in ("content-length", "authorization", "host"):
                raise HttpError(400, ErrorCode.BAD_REQUEST, f"duplicate {name} header")
            headers[low] = value.strip() if low not in headers else headers[low] + ", " + value.strip()
        if "transfer-encoding" in headers:
            raise HttpError(501, ErrorCode.BAD_REQUEST, "chunked request bodies are not supported; send Content-Length")
        raw = headers.get("content-length", "0")
        if not raw.isdigit() or len(raw) > 12:
            raise HttpError(400, ErrorCode.BAD_REQUEST, "bad Content-Length")
        self.length = int(raw)
        if self.length > self.max_body:
            raise HttpError(413, ErrorCode.BAD_REQUEST, f"request body over {self.max_body} bytes (MAX_FRAME_BYTES)")
        return parts[0], parts[1], headers


def http_response(status: int, body: bytes, extra: list[tuple[str, str]] | None = None,
                  keep_alive: bool = False) -> bytes:
    head = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}", "Content-Type: application/json",
            f"Content-Length: {len(body)}", "Cache-Control: no-store",
            "Connection: keep-alive" if keep_alive else "Connection: close"]
    head += [f"{k}: {v}" for k, v in extra or ()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class ApiConnection(asyncio.Protocol):
    """One HTTP connection. With `keep_alive` (API_PORT) it answers HTTP/1.1 requests one
    after another (pipelined ones in order) until the client closes, asks to close, or is idle
    for REQUEST_TIMEOUT; otherwise (the gateway port, whose handshake timer would cut a long
    connection) one request, then it closes. A request must be complete within REQUEST_TIMEOUT."""

    def __init__(self, api: Api, keep_alive: bool = False) -> None:
        self.api = api
        self.keep_alive = keep_alive
        self.reader = RequestReader(api.settings.max_frame_bytes)
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a request is being served: later bytes wait in `pending`
        self.pending = bytearray()
        self.timer: asyncio.TimerHandle | None = None
        self.peer: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport
        addr = transport.get_extra_info("peername")
        self.peer = addr[0] if isinstance(addr, tuple) and addr else None
        self._arm()

    def _arm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(REQUEST_TIMEOUT, self._timeout)

    def _timeout(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.busy:
            self.pending += data
            if len(self.pending) > MAX_HEAD + self.reader.max_body and self.transport is not None:
                self.transport.abort()  # pipelining beyond one request's worth: not a client we serve
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        try:
            req = self.reader.feed(data)
        except HttpError as exc:
            self.busy = True
            self._write(*self.api.error_response(exc, "invalid"), keep=False)
            return
        if req is not None:
            self.busy = True
            task = asyncio.get_running_loop().create_task(self._serve(req, self.reader.rest()))
            self.api.node.track(task)

    async def _serve(self, req: HttpRequest, rest: bytes) -> None:
        status, body, extra = await self.api.dispatch(req)
        keep = self.keep_alive and req.keep_alive
        self._write(status, body, extra, keep)
        if keep and self.transport is not None:
            self._arm()
            self.reader = RequestReader(self.api.settings.max_frame_bytes)
            self.busy = False
            more, self.pending = rest + bytes(self.pending), bytearray()
            if more:
                self._feed(more)

    def _write(self, status: int, body: bytes, extra: list[tuple[str, str]] | None = None,
               keep: bool = False) -> None:
        if self.timer is not None:
            self.timer.cancel()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(http_response(status, body, extra, keep))
            if not keep:
                transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None


# ---------------------------------------------------------------- cluster control


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
        receivers = int(await b.call(cmd("publish", keys.CONTROL, orjson.dumps(msg))))
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


# ---------------------------------------------------------------- the API


Handler = Callable[["Call"], Awaitable[tuple[int, Any]]]


@dataclass(slots=True)
class Call:
    service: Service
    params: dict[str, str]
    query: dict[str, list[str]]
    body: dict[str, Any]


class Api:
    def __init__(self, settings: Settings, node: Node, batcher: Batcher | None = None) -> None:
        self.settings = settings
        self.node = node
        self.keys = ApiKeys(load_keys(settings))
        self.control = Control(node, batcher)
        self.requests = node.metrics.api_requests
        self.latency = node.metrics.api_latency
        # (method, path pattern) -> handler; a pattern segment {x} matches one path segment.
        self.routes: list[tuple[str, list[str], str, Handler]] = []
        for method, pattern, handler in (
            ("POST", "/rooms", self.create_room),
            ("GET", "/rooms", self.list_rooms),
            ("GET", "/rooms/{room_id}", self.read_room),
            ("PATCH", "/rooms/{room_id}", self.update_room),
            ("POST", "/rooms/{room_id}/events", self.publish),
            ("GET", "/rooms/{room_id}/events", self.read_events),
            ("POST", "/rooms/{room_id}/close", self.close_room),
            ("DELETE", "/rooms/{room_id}/participants/{device_id}", self.kick),
            ("POST", "/devices/{device_id}/disconnect", self.disconnect),
        ):
            self.routes.append((method, pattern.strip("/").split("/"), f"{method} {PREFIX}{pattern}", handler))

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def connection(self) -> ApiConnection:
        return ApiConnection(self)

    async def serve(self, host: str, port: int) -> asyncio.Server:
        """Listen on API_PORT (keep-alive connections)."""
        return await asyncio.get_running_loop().create_server(lambda: ApiConnection(self, keep_alive=True), host, port)

    # ------------------------------------------------------------ dispatch

    def error_response(self, exc: HttpError, route: str) -> tuple[int, bytes, list[tuple[str, str]]]:
        self.requests.labels(route, str(exc.status)).inc()
        extra = []
        body: dict[str, Any] = {"code": exc.code.value, "message": exc.message}
        if exc.retry_after_ms is not None:
            body["retry_after_ms"] = exc.retry_after_ms
            extra.append(("Retry-After", str(max(1, -(-exc.retry_after_ms // 1000)))))
        if exc.status == 401:
            extra.append(("WWW-Authenticate", 'Bearer realm="roomcast"'))
        return exc.status, orjson.dumps(body), extra

    def _match(self, method: str, path: str) -> tuple[str, Handler, dict[str, str]]:
        if not path.startswith(PREFIX + "/"):
            raise HttpError(404, ErrorCode.NOT_FOUND, f"no such endpoint; see {PREFIX}/openapi.json")
        segs = [unquote(s) for s in path[len(PREFIX) + 1:].split("/")]
        allowed = []
        for m, pattern, route, handler in self.routes:
            if len(pattern) != len(segs):
                continue
            params: dict[str, str] = {}
            for want, got in zip(pattern, segs, strict=True):
                if want.startswith("{"):
                    params[want[1:-1]] = got
                elif want != got:
                    break
            else:
                if m == method:
                    return route, handler, params
                allowed.append(m)
        if allowed:
            raise HttpError(405, ErrorCode.BAD_REQUEST, f"use {' or '.join(allowed)} here")
        raise HttpError(404, ErrorCode.NOT_FOUND, f"no such endpoint; see {PREFIX}/openapi.json")

    async def dispatch(self, req: HttpRequest) -> tuple[int, bytes, list[tuple[str, str]]]:
        started = time.perf_counter()
        route = "other"
        try:
            if not self.enabled:
                raise HttpError(404, ErrorCode.NOT_FOUND, "the server API is off (no SERVER_API_KEYS)")
            if req.method == "GET" and req.path == PREFIX + "/openapi.json":
                route = "GET /api/v1/openapi.json"
                self.requests.labels(route, "200").inc()
                return 200, OPENAPI_JSON, []
            route, handler, params = self._match(req.method, req.path)
            name = self.keys.identify(req.headers.get("authorization"))
            if name is None:
                raise HttpError(401, ErrorCode.UNAUTHORIZED, "missing or wrong API key (Authorization: Bearer <secret>)")
            wait = await self.node.limited("api", name, self.settings.api_rate, max(1, int(self.settings.api_rate * 2)))
            if wait:
                raise HttpError(429, ErrorCode.RATE_LIMITED, "too many API requests for this key", wait)
            if not self.node.backend_ok:
                raise HttpError(503, ErrorCode.UNAVAILABLE, "backend unavailable; retry shortly")
            body = self._body(req)
            status, result = await handler(Call(Service(name), params, req.query, body))
            out = result if isinstance(result, bytes) else orjson.dumps(result)
            self.requests.labels(route, str(status)).inc()
            return status, out, []
        except HttpError as exc:
            return self.error_response(exc, route)
        except GatewayError as exc:
            return self.error_response(_error_of(exc), route)
        except Exception:
            log.exception("server API: internal error on %s", route)
            return self.error_response(HttpError(500, ErrorCode.INTERNAL, "internal error"), route)
        finally:
            self.latency.labels(route).observe(time.perf_counter() - started)

    def _body(self, req: HttpRequest) -> dict[str, Any]:
        if not req.body.strip():
            return {}
        try:
            obj = orjson.loads(req.body)
        except orjson.JSONDecodeError:
            raise HttpError(400, ErrorCode.BAD_REQUEST, "malformed JSON body") from None
        if not isinstance(obj, dict):
            raise HttpError(400, ErrorCode.BAD_REQUEST, "the body must be a JSON object")
        if (b"\\u0000" in req.body or b"\x00" in req.body) and p._has_nul(obj):
            raise HttpError(400, ErrorCode.BAD_REQUEST, "strings must not contain U+0000")
        return obj

    def _fields(self, body: dict[str, Any]) -> p._Fields:
        return p._Fields(body, None, self.settings.max_payload_depth)

    @staticmethod
    def _room_id(call: Call) -> str:
        room_id = call.params["room_id"]
        if p.ROOM_ID_RE.fullmatch(room_id) is None:
            raise HttpError(400, ErrorCode.BAD_REQUEST, "room_id must be 1-64 characters of [A-Za-z0-9_-]")
        return room_id

    @staticmethod
    def _device_id(call: Call) -> str:
        device_id = call.params["device_id"]
        if p.DEVICE_ID_RE.fullmatch(device_id) is None:
            raise HttpError(400, ErrorCode.BAD_REQUEST, "device_id must be 8-128 characters of [A-Za-z0-9._:-]")
        return device_id

    @staticmethod
    def _query_int(call: Call, name: str, lo: int, hi: int, default: int) -> int:
        values = call.query.get(name)
        if not values or values[-1] == "":
            return default
        raw = values[-1]
        if not raw.isdigit() or not lo <= int(raw) <= hi:
            raise HttpError(400, ErrorCode.BAD_REQUEST, f"`{name}` must be an integer between {lo} and {hi}")
        return int(raw)

    # ------------------------------------------------------------ endpoints

    async def create_room(self, call: Call) -> tuple[int, Any]:
        f = self._fields(call.body)
        room_id = f.pattern("room_id", p.ROOM_ID_RE, "1-64 characters of [A-Za-z0-9_-]", required=False)
        game_type = f.req_string("game_type", max_len=p.MAX_GAME_TYPE)
        max_players = f.integer("max_players", 1, p.MAX_PLAYERS_LIMIT) or self.settings.default_max_players
        game_data = f.json_object("game_data") or {}
        password = f.string("password", required=False, max_len=p.MAX_PASSWORD, min_len=1)
        spectators = f.boolean("spectators_can_send")
        pw_hash = None if password is None else await passwords.hash_async(password)
        attempts = 1 if room_id is not None else 8
        for attempt in range(attempts):  # a generated join code may collide: draw another
            new = NewRoom(room_id or new_join_code(), game_type, max_players, game_data, pw_hash, spectators,
                          generated=room_id is None)
            try:
                result = await self.node.store.create_service_room(call.service, new, now_ms())
            except GatewayError as exc:
                if exc.code is ErrorCode.CONFLICT and attempt + 1 < attempts:
                    continue
                raise
            return 201, {"room": result.room, "epoch": result.epoch}
        raise AssertionError("unreachable")

    async def list_rooms(self, call: Call) -> tuple[int, Any]:
        q = {k: v[-1] for k, v in call.query.items() if v}
        f = self._fields({k: v for k, v in q.items() if k in ("game_type", "status", "cursor") and v != ""})
        game_type = f.string("game_type", required=False, max_len=p.MAX_GAME_TYPE, min_len=1)
        status = f.choice("status", p.ROOM_STATUSES)
        raw = f.pattern("cursor", p.LIST_CURSOR_RE, "a `next_cursor` from an earlier reply", required=False)
        cursor = None
        if raw is not None:
            created, rid = raw.split(".", 1)
            cursor = (int(created), rid)
        limit = self._query_int(call, "limit", 1, p.MAX_LIST_LIMIT, p.DEFAULT_LIST_LIMIT)
        page = await self.node.store.list_rooms(game_type, status, limit, cursor)
        after = page.next_after
        return 200, {"rooms": page.rooms, "next_cursor": None if after is None else p.list_cursor(*after)}

    async def read_room(self, call: Call) -> tuple[int, Any]:
        room, participants = await self.node.store.room_info(self._room_id(call))
        return 200, {"room": room, "participants": participants}

    async def publish(self, call: Call) -> tuple[int, Any]:
        room_id = self._room_id(call)
        f = self._fields(call.body)
        event_type = f.req_string("event_type", max_len=p.MAX_EVENT_TYPE)
        if event_type in p.RESERVED_EVENT_TYPES:
            raise HttpError(400, ErrorCode.BAD_REQUEST, f"`event_type` {event_type!r} is reserved for the server")
        action = f.string("action", required=False, max_len=p.MAX_ACTION)
        payload = f.json_object("payload")
        now = now_ms()
        tail = p.event_tail(event_type, action, payload, call.service.sender(), now)
        seq = await self.node.store.service_publish(call.service, room_id, tail, now)
        return 200, {"seq": seq}

    async def update_room(self, call: Call) -> tuple[int, Any]:
        room_id = self._room_id(call)
        f = self._fields(call.body)
        if call.body.get("status") == "closed":
            raise HttpError(400, ErrorCode.BAD_REQUEST, f"use POST {PREFIX}/rooms/{{room_id}}/close to close a room")
        status = f.choice("status", p.SETTABLE_STATUSES)
        patch = f.json_object("patch")
        if status is None and patch is None:
            raise HttpError(400, ErrorCode.BAD_REQUEST, "give `status` or `patch`")
        return 200, {"seq": await self.node.store.service_update(call.service, room_id, status, patch, now_ms())}

    async def close_room(self, call: Call) -> tuple[int, Any]:
        return 200, {"seq": await self.node.store.service_close(call.service, self._room_id(call), now_ms())}

    async def kick(self, call: Call) -> tuple[int, Any]:
        room_id, device_id = self._room_id(call), self._device_id(call)
        seq = await self.node.store.kick(call.service, room_id, device_id, now_ms())
        try:
            await self.control.kick(room_id, device_id)
        except GatewayError as exc:
            # The kick is done (the store refuses the device's sockets there); only the local
            # delivery to them on some replica may go on until they leave or reconnect.
            log.warning("kick of %s from %s: replicas not told (%s)", device_id, room_id, exc.message)
        return 200, {"seq": seq}

    async def disconnect(self, call: Call) -> tuple[int, Any]:
        device_id = self._device_id(call)
        f = self._fields(call.body)
        code = f.integer("code", 4000, 4999) or 4000
        reason = f.string("reason", required=False, max_len=MAX_CLOSE_REASON) or "disconnected by the server"
        if len(reason.encode()) > MAX_CLOSE_REASON:
            raise HttpError(400, ErrorCode.BAD_REQUEST, f"`reason` must be at most {MAX_CLOSE_REASON} bytes (UTF-8)")
        return 200, {"closed": await self.control.disconnect(device_id, code, reason)}

    async def read_events(self, call: Call) -> tuple[int, Any]:
        room_id = self._room_id(call)
        since = self._query_int(call, "since", 0, p.MAX_SEQ, 0)
        limit = self._query_int(call, "limit", 1, MAX_HISTORY_LIMIT, DEFAULT_HISTORY_LIMIT)
        store = self.node.store
        room, _ = await store.room_info(room_id)
        head = int(room["seq"])
        events = await store.read_since(room_id, since, head, limit)
        first = events[0][0] if events else head + 1
        history = self.node.history
        if first > since + 1 and since < head and history is not None:
            # Older than the room stream keeps: Postgres has them (history mode).
            try:
                older = await history.events(room_id, since, min(first - 1, since + limit))
            except Exception as exc:  # Postgres unreachable: say so rather than return a gap
                log.warning("server API: history of room %s unavailable: %s", room_id, exc)
                raise HttpError(503, ErrorCode.UNAVAILABLE, "room history unavailable; retry") from None
            events = (older + events)[:limit]
        frames = b",".join(frame for _, frame in events)
        return 200, b'{"events":[%s],"head":%d}' % (frames, head)


# ---------------------------------------------------------------- OpenAPI 3.1


def _openapi() -> dict[str, Any]:
    err = {"$ref": "#/components/responses/Error"}
    seq = {"description": "The event's seq", "content": {"application/json": {"schema": {
        "type": "object", "required": ["seq"], "properties": {"seq": {"type": "integer", "minimum": 1}}}}}}
    room_id = {"name": "room_id", "in": "path", "required": True,
               "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}}
    device_id = {"name": "device_id", "in": "path", "required": True,
                 "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{8,128}$"}}
    errors = {"400": err, "401": err, "404": err, "409": err, "429": err, "503": err}

    def body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
        return {"required": required, "content": {"application/json": {"schema": schema}}}

    def ok(ref: str, code: str = "200", description: str = "OK") -> dict[str, Any]:
        return {code: {"description": description, "content": {"application/json": {"schema": {"$ref": ref}}}}}

    obj = {"type": "object"}
    return {
        "openapi": "3.1.0",
        "info": {"title": "roomcast server API", "version": "1",
                 "description": "For game backends: rooms, events, kicks, disconnects, history. "
                                "See docs/server-api.md."},
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}],
        "paths": {
            "/rooms": {
                "post": {"operationId": "createRoom", "summary": "Create a room owned by the service",
                         "requestBody": body({"$ref": "#/components/schemas/NewRoom"}),
                         "responses": ok("#/components/schemas/Created", "201", "Created") | errors},
                "get": {"operationId": "listRooms", "summary": "List public rooms, newest first",
                        "parameters": [
                            {"name": "game_type", "in": "query", "schema": {"type": "string", "maxLength": 100}},
                            {"name": "status", "in": "query", "schema": {"$ref": "#/components/schemas/Status"}},
                            {"name": "limit", "in": "query",
                             "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}},
                            {"name": "cursor", "in": "query", "schema": {"type": "string"}}],
                        "responses": ok("#/components/schemas/RoomList") | errors},
            },
            "/rooms/{room_id}": {
                "parameters": [room_id],
                "get": {"operationId": "getRoom", "summary": "A room and its participants",
                        "responses": ok("#/components/schemas/RoomInfo") | errors},
                "patch": {"operationId": "updateRoom", "summary": "Set status and/or merge-patch game_data "
                                                                  "(a state_change event)",
                          "requestBody": body({"type": "object", "properties": {
                              "status": {"enum": ["active", "waiting", "in_progress", "completed"]},
                              "patch": obj}}),
                          "responses": {"200": seq} | errors},
            },
            "/rooms/{room_id}/events": {
                "parameters": [room_id],
                "post": {"operationId": "publish", "summary": "Publish an event to every member",
                         "requestBody": body({"type": "object", "required": ["event_type"], "properties": {
                             "event_type": {"type": "string", "minLength": 1, "maxLength": 100,
                                            "description": "not one of the reserved types"},
                             "action": {"type": ["string", "null"], "maxLength": 255},
                             "payload": {"type": ["object", "null"]}}}),
                         "responses": {"200": seq} | errors},
                "get": {"operationId": "readEvents", "summary": "Events after `since` (stream, then Postgres)",
                        "parameters": [
                            {"name": "since", "in": "query", "schema": {"type": "integer", "minimum": 0, "default": 0}},
                            {"name": "limit", "in": "query",
                             "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}}],
                        "responses": ok("#/components/schemas/Events") | errors},
            },
            "/rooms/{room_id}/close": {
                "parameters": [room_id],
                "post": {"operationId": "closeRoom", "summary": "Close the room (room_closed, members leave)",
                         "responses": {"200": seq} | errors},
            },
            "/rooms/{room_id}/participants/{device_id}": {
                "parameters": [room_id, device_id],
                "delete": {"operationId": "kick", "summary": "Kick a participant (participant_left, reason kicked)",
                           "responses": {"200": seq} | errors},
            },
            "/devices/{device_id}/disconnect": {
                "parameters": [device_id],
                "post": {"operationId": "disconnectDevice", "summary": "Close every socket of a device, cluster-wide",
                         "requestBody": body({"type": "object", "properties": {
                             "code": {"type": "integer", "minimum": 4000, "maximum": 4999, "default": 4000},
                             "reason": {"type": "string", "maxLength": 123}}}, required=False),
                         "responses": ok("#/components/schemas/Closed") | errors},
            },
            "/openapi.json": {
                "get": {"operationId": "openapi", "summary": "This document", "security": [],
                        "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}}},
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "A secret from SERVER_API_KEYS"}},
            "responses": {"Error": {"description": "An error", "content": {"application/json": {"schema": {
                "$ref": "#/components/schemas/Error"}}}}},
            "schemas": {
                "Error": {"type": "object", "required": ["code", "message"], "properties": {
                    "code": {"enum": [c.value for c in ErrorCode]}, "message": {"type": "string"},
                    "retry_after_ms": {"type": "integer"}}},
                "Status": {"enum": list(p.ROOM_STATUSES)},
                "NewRoom": {"type": "object", "required": ["game_type"], "properties": {
                    "room_id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                    "game_type": {"type": "string", "minLength": 1, "maxLength": 100},
                    "max_players": {"type": "integer", "minimum": 1, "maximum": 10000},
                    "game_data": obj,
                    "password": {"type": "string", "minLength": 1, "maxLength": 128},
                    "spectators_can_send": {"type": "boolean", "default": False}}},
                "Room": {"type": "object", "required": ["room_id", "game_type", "status", "max_players",
                                                        "current_players", "game_data", "created_at",
                                                        "created_by", "seq"],
                         "properties": {"room_id": {"type": "string"}, "game_type": {"type": "string"},
                                        "status": {"$ref": "#/components/schemas/Status"},
                                        "max_players": {"type": "integer"}, "current_players": {"type": "integer"},
                                        "game_data": obj, "created_at": {"type": "integer"},
                                        "created_by": {"type": "string"}, "seq": {"type": "integer"}}},
                "Participant": {"type": "object", "required": ["device_id", "role", "status", "joined_at"],
                                "properties": {"device_id": {"type": "string"},
                                               "user_id": {"type": ["string", "null"]},
                                               "role": {"enum": ["host", "player", "spectator"]},
                                               "status": {"enum": ["active", "disconnected"]},
                                               "joined_at": {"type": "integer"}}},
                "Created": {"type": "object", "required": ["room", "epoch"], "properties": {
                    "room": {"$ref": "#/components/schemas/Room"}, "epoch": {"type": "string"}}},
                "RoomList": {"type": "object", "required": ["rooms"], "properties": {
                    "rooms": {"type": "array", "items": {"$ref": "#/components/schemas/Room"}},
                    "next_cursor": {"type": ["string", "null"]}}},
                "RoomInfo": {"type": "object", "required": ["room", "participants"], "properties": {
                    "room": {"$ref": "#/components/schemas/Room"},
                    "participants": {"type": "array", "items": {"$ref": "#/components/schemas/Participant"}}}},
                "Events": {"type": "object", "required": ["events", "head"], "properties": {
                    "events": {"type": "array", "items": {"type": "object",
                                                          "description": "wire `event` messages (docs/protocol.md)"}},
                    "head": {"type": "integer"}}},
                "Closed": {"type": "object", "required": ["closed"], "properties": {
                    "closed": {"type": "integer", "minimum": 0}}},
            },
        },
    }


OPENAPI: Final = _openapi()
OPENAPI_JSON: Final = orjson.dumps(OPENAPI)
