"""The server API: an HTTP JSON API for game backends under /api/v1/ (docs/server-api.md).

A backend acts as a *service* (its API key's name), never as a participant: it holds no
seat, and a room it creates has no host, so no player ever inherits one. Its events carry
`"from": {"service": <key name>, "socket_id": null, "device_id": null, "user_id": null}`.

HTTP: websockets' server reads no request bodies (it refuses a request with one), so the
API has its own small HTTP/1.1 reader and asyncio protocol (gateway/api_http.py). It serves API_PORT by itself, and on the gateway port
`gateway.server` hands a connection whose request line targets /api/ to it before
websockets sees a byte. API_PORT keeps HTTP/1.1 connections alive; the gateway port answers
one request per connection (`Connection: close`).

Cluster-wide effects on sockets (kick, disconnect) go to every replica as a control
message (`Control`, gateway/api_control.py): over Redis pub/sub (keys.CONTROL) with the replies counted in a
short-lived hash, or straight to this node in the embedded mode.
"""


from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote

import orjson

from roomcast import protocol as p
from roomcast.errors import ErrorCode, GatewayError
from roomcast.redis.batch import Batcher
from roomcast.room import new_join_code
from roomcast.settings import Settings
from roomcast.store.base import NewRoom, Service

from . import passwords
from .api_control import Control
from .api_http import (
    MAX_HEAD,
    REASONS,
    REQUEST_TIMEOUT,
    STATUS_OF,
    ApiConnection,
    ApiKeys,
    HttpError,
    HttpRequest,
    RequestReader,
    _error_of,
    http_response,
    load_keys,
)
from .api_openapi import OPENAPI, OPENAPI_JSON
from .node import Node, now_ms

__all__ = ["MAX_HEAD", "OPENAPI", "REASONS", "REQUEST_TIMEOUT", "STATUS_OF", "Api", "ApiConnection", "ApiKeys",
           "HttpError", "HttpRequest", "RequestReader", "http_response", "load_keys"]

log = logging.getLogger("roomcast.api")

PREFIX: Final = "/api/v1"
MAX_CLOSE_REASON: Final = 123  # bytes: the WebSocket close frame's limit
MAX_HISTORY_LIMIT: Final = 1000
DEFAULT_HISTORY_LIMIT: Final = 100

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

    def track(self, task: asyncio.Task[Any]) -> None:
        self.node.track(task)

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
        key = f.pattern("idempotency_key", p.IDEMPOTENCY_KEY_RE, "1-64 characters of [A-Za-z0-9_-]", required=False)
        now = now_ms()
        tail = p.event_tail(event_type, action, payload, call.service.sender(), now)
        # The key is decided in the step that gives the seq (as a client's event): exactly once.
        seq = await self.node.store.service_publish(call.service, room_id, tail, now, key)
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


