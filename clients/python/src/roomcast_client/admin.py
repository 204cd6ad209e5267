"""The server API client for game backends (docs/server-api.md of roomcast).

    from roomcast_client.admin import AdminClient

    async with AdminClient("http://127.0.0.1:8765", "s3cret-of-16-chars") as api:
        room = await api.create_room("quiz", max_players=8)
        seq = await api.publish(room["room_id"], "question", payload={"q": "2+2?"})

asyncio only, no dependency beyond the distribution's own (orjson): a small HTTP/1.1 client
on asyncio streams, one request per connection. Every call returns the decoded JSON
answer; an error answer raises `AdminError` with the API's `code`, `message` and HTTP
status. https:// URLs use the default SSL context.

With `keep_alive=True` (for the gateway's API_PORT, which keeps HTTP/1.1 connections alive)
finished connections are reused for the next requests (at most `max_idle` kept, each for at
most 5 s idle). A request is never resent by the client: if a connection fails, the call
raises `AdminError` (status 0, `unavailable`), and a publish may or may not have been applied.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from types import TracebackType
from typing import Any, Literal, TypedDict, cast
from urllib.parse import quote, urlencode, urlsplit

import orjson

RoomStatus = Literal["active", "waiting", "in_progress", "completed", "closed"]
MAX_RESPONSE = 64 * 1024 * 1024
IDLE_REUSE = 5.0  # s: an idle keep-alive connection older than this is not reused


class AdminError(Exception):
    """An error answer of the server API (or a transport failure: status 0, `unavailable`)."""

    def __init__(self, status: int, code: str, message: str, retry_after_ms: int | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after_ms = retry_after_ms


class RoomInfo(TypedDict):
    room: dict[str, Any]
    participants: list[dict[str, Any]]


class RoomList(TypedDict):
    rooms: list[dict[str, Any]]
    next_cursor: str | None


class EventPage(TypedDict):
    events: list[dict[str, Any]]
    head: int


class AdminClient:
    """Calls the server API of one gateway (any replica: every one serves all of it)."""

    def __init__(self, base_url: str, secret: str, *, timeout: float = 10.0, keep_alive: bool = False,
                 max_idle: int = 8) -> None:
        u = urlsplit(base_url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError("base_url must be http(s)://host[:port]")
        self.host = u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if u.scheme == "https" else None
        self.prefix = u.path.rstrip("/") + "/api/v1"
        self._auth = f"Bearer {secret}"
        self.timeout = timeout
        # keep_alive (for the gateway's API_PORT, which keeps connections): idle connections,
        # reused for up to IDLE_REUSE seconds (the gateway closes them after 9 s idle).
        self.keep_alive = keep_alive
        self.max_idle = max_idle
        self._idle: list[tuple[float, asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def __aenter__(self) -> AdminClient:
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the idle keep-alive connections."""
        idle, self._idle = self._idle, []
        for _, _, writer in idle:
            await _close(writer)

    # ------------------------------------------------------------ endpoints

    async def create_room(
        self, game_type: str, *, room_id: str | None = None, max_players: int | None = None,
        game_data: dict[str, Any] | None = None, password: str | None = None, spectators_can_send: bool = False,
    ) -> dict[str, Any]:
        """A room owned by this service (no host). Returns {"room": ..., "epoch": ...}."""
        body: dict[str, Any] = {"game_type": game_type}
        for name, value in (("room_id", room_id), ("max_players", max_players), ("game_data", game_data),
                            ("password", password)):
            if value is not None:
                body[name] = value
        if spectators_can_send:
            body["spectators_can_send"] = True
        return cast(dict[str, Any], await self.request("POST", "/rooms", body))

    async def list_rooms(self, *, game_type: str | None = None, status: RoomStatus | None = None,
                         limit: int | None = None, cursor: str | None = None) -> RoomList:
        query = {k: v for k, v in (("game_type", game_type), ("status", status), ("limit", limit),
                                   ("cursor", cursor)) if v is not None}
        return cast(RoomList, await self.request("GET", "/rooms", query=query))

    async def get_room(self, room_id: str) -> RoomInfo:
        return cast(RoomInfo, await self.request("GET", f"/rooms/{quote(room_id)}"))

    async def publish(self, room_id: str, event_type: str, *, action: str | None = None,
                      payload: dict[str, Any] | None = None, idempotency_key: str | None = None) -> int:
        """Send an event to every member; returns its seq. With `idempotency_key` (1-64 of
        [A-Za-z0-9_-]) a resend of the same publish (after a lost reply) is applied once: the
        gateway answers the first seq and makes no second event, from any replica."""
        body: dict[str, Any] = {"event_type": event_type}
        if idempotency_key is not None:
            body["idempotency_key"] = idempotency_key
        if action is not None:
            body["action"] = action
        if payload is not None:
            body["payload"] = payload
        return int((await self.request("POST", f"/rooms/{quote(room_id)}/events", body))["seq"])

    async def update_room(self, room_id: str, *, status: RoomStatus | None = None,
                          patch: dict[str, Any] | None = None) -> int:
        body: dict[str, Any] = {}
        if status is not None:
            body["status"] = status
        if patch is not None:
            body["patch"] = patch
        return int((await self.request("PATCH", f"/rooms/{quote(room_id)}", body))["seq"])

    async def close_room(self, room_id: str) -> int:
        return int((await self.request("POST", f"/rooms/{quote(room_id)}/close", {}))["seq"])

    async def kick(self, room_id: str, device_id: str) -> int:
        return int((await self.request("DELETE", f"/rooms/{quote(room_id)}/participants/{quote(device_id)}"))["seq"])

    async def disconnect(self, device_id: str, *, code: int = 4000, reason: str | None = None) -> int:
        """Close every socket of the device on every replica; returns how many were closed."""
        body: dict[str, Any] = {"code": code}
        if reason is not None:
            body["reason"] = reason
        return int((await self.request("POST", f"/devices/{quote(device_id)}/disconnect", body))["closed"])

    async def events(self, room_id: str, *, since: int = 0, limit: int | None = None) -> EventPage:
        query: dict[str, Any] = {"since": since}
        if limit is not None:
            query["limit"] = limit
        return cast(EventPage, await self.request("GET", f"/rooms/{quote(room_id)}/events", query=query))

    async def openapi(self) -> dict[str, Any]:
        return cast(dict[str, Any], await self.request("GET", "/openapi.json"))

    # ------------------------------------------------------------ HTTP/1.1

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None,
                      query: dict[str, Any] | None = None) -> Any:
        """One call; returns the decoded JSON body of a 2xx answer, raises AdminError otherwise."""
        try:
            status, _headers, data = await asyncio.wait_for(self._exchange(method, path, body, query), self.timeout)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            raise AdminError(0, "unavailable", f"{method} {path}: {exc!r}") from exc
        try:
            value = orjson.loads(data) if data else None
        except orjson.JSONDecodeError:
            raise AdminError(status, "internal", f"not JSON: {data[:200]!r}") from None
        if 200 <= status < 300:
            return value
        if isinstance(value, dict):
            retry = value.get("retry_after_ms")
            raise AdminError(status, str(value.get("code", "internal")), str(value.get("message", "")),
                             retry if isinstance(retry, int) else None)
        raise AdminError(status, "internal", f"HTTP {status}")

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        now = time.monotonic()
        while self._idle:
            since, reader, writer = self._idle.pop()
            if now - since < IDLE_REUSE and not reader.at_eof() and not writer.is_closing():
                return reader, writer
            await _close(writer)
        return await asyncio.open_connection(self.host, self.port, ssl=self.ssl, limit=65_536)

    async def _exchange(self, method: str, path: str, body: dict[str, Any] | None,
                        query: dict[str, Any] | None) -> tuple[int, dict[str, str], bytes]:
        target = self.prefix + path + ("?" + urlencode(query) if query else "")
        payload = b"" if body is None else orjson.dumps(body)
        head = [f"{method} {target} HTTP/1.1", f"Host: {self.host}:{self.port}", "Accept: application/json",
                f"Authorization: {self._auth}", f"Content-Length: {len(payload)}"]
        if not self.keep_alive:
            head.append("Connection: close")
        if body is not None:
            head.append("Content-Type: application/json")
        reader, writer = await self._connection()
        keep = False
        try:
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)
            await writer.drain()
            status_line = (await reader.readuntil(b"\r\n")).decode("latin-1").split(" ", 2)
            if len(status_line) < 2 or not status_line[1].isdigit():
                raise ValueError("malformed status line")
            status = int(status_line[1])
            headers: dict[str, str] = {}
            for _ in range(200):  # bounded header count
                line = (await reader.readuntil(b"\r\n")).decode("latin-1").rstrip("\r\n")
                if not line:
                    break
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if "content-length" in headers:
                length = int(headers["content-length"])
                if length > MAX_RESPONSE:
                    raise ValueError("response too large")
                data = await reader.readexactly(length)
                keep = self.keep_alive and headers.get("connection", "").lower() == "keep-alive"
            else:
                data = await reader.read(MAX_RESPONSE)
            return status, headers, data
        finally:
            if keep and len(self._idle) < self.max_idle:
                self._idle.append((time.monotonic(), reader, writer))
            else:
                await _close(writer)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
