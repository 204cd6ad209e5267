"""The server API's HTTP/1.1 side: API keys, a small sans-I/O request reader and the asyncio
protocol that serves one connection (websockets' server reads no request bodies, so the
API has its own). `Dispatcher` is what a connection needs of the API (gateway/api.py)."""

from __future__ import annotations

import asyncio
import hmac
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import parse_qs

from roomcast.errors import ErrorCode, GatewayError
from roomcast.settings import Settings, parse_api_keys

log = logging.getLogger("roomcast.api")

MAX_HEAD: Final = 16_384  # request line and headers
REQUEST_TIMEOUT: Final = 9.0  # s, a whole request (the gateway port aborts a handshake at 10 s)

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




class Dispatcher(Protocol):
    """What an HTTP connection needs of the API that answers it."""

    settings: Settings

    def track(self, task: asyncio.Task[Any]) -> None: ...

    async def dispatch(self, req: HttpRequest) -> tuple[int, bytes, list[tuple[str, str]]]: ...

    def error_response(self, exc: HttpError, route: str) -> tuple[int, bytes, list[tuple[str, str]]]: ...


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

    def __init__(self, api: Dispatcher, keep_alive: bool = False) -> None:
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
            self.api.track(task)

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


