"""A small pooled HTTP/1.1 client on asyncio streams, for the backend webhooks.

Why not a library: the gateway needs one thing, a JSON POST with a deadline to one or two
fixed URLs, from an asyncio (uvloop) loop. aiohttp or httpx would bring a dependency tree
(and, for httpx, anyio) into the image for that; asyncio streams already work on uvloop.
What this client does:

- keeps idle keep-alive connections per origin (scheme, host, port), at most `max_idle` each,
  and reuses the most recent one first; a connection the server closed while idle is noticed
  (EOF before any byte of the reply) and the request is sent once more on a new connection;
- limits requests in flight (`max_in_flight`, waiting for a slot counts toward the deadline),
  so a slow backend cannot make a replica open thousands of connections to it;
- reads `Content-Length` and `chunked` replies up to `max_body` bytes, HTTP/1.0 and
  `Connection: close` replies too (those connections are not reused);
- `https://` with the default TLS context (certificates checked).

Anything else (redirects, 1xx other than 100, compression) is not supported: a reply it cannot
read raises HttpError, which callers treat like a failed call.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_HEAD = 16 * 1024


class HttpError(Exception):
    """The request failed: connection refused or lost, or a reply that cannot be read."""


@dataclass(frozen=True, slots=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str  # with the query

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)

    @classmethod
    def parse(cls, url: str) -> Target:
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        return cls(u.scheme, u.hostname, u.port or (443 if u.scheme == "https" else 80), path)


class _Conn:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def usable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()


class HttpPool:
    def __init__(self, *, max_idle: int = 16, max_in_flight: int = 64, max_body: int = 64 * 1024) -> None:
        self.max_idle = max_idle
        self.max_body = max_body
        self._idle: dict[tuple[str, str, int], list[_Conn]] = {}
        self._slots = asyncio.Semaphore(max_in_flight)
        self._ssl: ssl.SSLContext | None = None
        self._targets: dict[str, Target] = {}
        self.connections_opened = 0  # for tests and debugging: how often the pool had to connect

    def target(self, url: str) -> Target:
        t = self._targets.get(url)
        if t is None:
            t = self._targets[url] = Target.parse(url)
        return t

    async def post_json(self, url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> tuple[int, bytes]:
        """POST `body` (JSON) and return (status, body); TimeoutError after `timeout_s` in all."""
        t = self.target(url)
        request = _request(t, body, headers)
        async with asyncio.timeout(timeout_s), self._slots:
            for _ in range(2):  # a stale idle connection gets one more try on a new one
                conn, reused = self._take(t), True
                if conn is None:
                    conn, reused = await self._connect(t), False
                try:
                    status, reply, keep = await self._exchange(conn, request)
                except _Stale:
                    conn.close()
                    if reused:
                        continue
                    raise HttpError("connection closed before the reply") from None
                except BaseException:
                    conn.close()  # timeout, cancellation or a broken reply: never reuse it
                    raise
                if keep:
                    self._give_back(t, conn)
                else:
                    conn.close()
                return status, reply
        raise HttpError("connection closed before the reply")

    def _take(self, t: Target) -> _Conn | None:
        idle = self._idle.get(t.origin)
        while idle:
            conn = idle.pop()
            if conn.usable():
                return conn
            conn.close()
        return None

    def _give_back(self, t: Target, conn: _Conn) -> None:
        idle = self._idle.setdefault(t.origin, [])
        if len(idle) >= self.max_idle:
            conn.close()
            return
        idle.append(conn)

    async def _connect(self, t: Target) -> _Conn:
        ctx = None
        if t.scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            ctx = self._ssl
        try:
            reader, writer = await asyncio.open_connection(t.host, t.port, ssl=ctx, limit=MAX_HEAD)
        except OSError as exc:
            raise HttpError(f"cannot connect to {t.host}:{t.port}: {exc}") from None
        self.connections_opened += 1
        return _Conn(reader, writer)

    async def _exchange(self, conn: _Conn, request: bytes) -> tuple[int, bytes, bool]:
        try:
            conn.writer.write(request)
            await conn.writer.drain()
            try:
                head = await conn.reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                if not exc.partial:
                    raise _Stale() from None
                raise HttpError("reply cut short") from None
            status, version, fields = _parse_head(head)
            while status == 100:  # "100 Continue" before the real reply
                head = await conn.reader.readuntil(b"\r\n\r\n")
                status, version, fields = _parse_head(head)
            body = await self._body(conn.reader, fields)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError) as exc:
            if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
                raise _Stale() from None
            raise HttpError(f"reply cannot be read: {exc!r}") from None
        keep = version == "HTTP/1.1" and fields.get("connection", "").lower() != "close"
        return status, body, keep

    async def _body(self, reader: asyncio.StreamReader, fields: dict[str, str]) -> bytes:
        if fields.get("transfer-encoding", "").lower() == "chunked":
            out = bytearray()
            for _ in range(self.max_body + 1):  # bounded: each chunk has at least one byte
                size_line = await reader.readuntil(b"\r\n")
                try:
                    size = int(size_line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise HttpError("bad chunk size") from None
                if size == 0:
                    for _ in range(64):  # trailer lines, then an empty one
                        if await reader.readuntil(b"\r\n") == b"\r\n":
                            return bytes(out)
                    raise HttpError("too many trailer lines")
                if len(out) + size > self.max_body:
                    raise HttpError(f"reply larger than {self.max_body} bytes")
                out += await reader.readexactly(size)
                await reader.readexactly(2)
            raise HttpError("too many chunks")
        length = fields.get("content-length")
        if length is None:
            raise HttpError("reply has no Content-Length")  # read-until-close is not supported
        try:
            n = int(length)
        except ValueError:
            raise HttpError("bad Content-Length") from None
        if not 0 <= n <= self.max_body:
            raise HttpError(f"reply larger than {self.max_body} bytes")
        return await reader.readexactly(n)

    async def close(self) -> None:
        conns = [c for idle in self._idle.values() for c in idle]
        self._idle.clear()
        for conn in conns:
            conn.close()
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.writer.wait_closed()


class _Stale(Exception):
    """The connection was closed by the server before any byte of the reply."""


def _request(t: Target, body: bytes, headers: dict[str, str]) -> bytes:
    host = t.host if t.port == (443 if t.scheme == "https" else 80) else f"{t.host}:{t.port}"
    lines = [f"POST {t.path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json",
             f"Content-Length: {len(body)}", "Connection: keep-alive"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _parse_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HttpError(f"not an HTTP/1.x reply: {lines[0][:80]!r}")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise HttpError("bad header line")
        fields[name.strip().lower()] = value.strip()
    return int(parts[1]), parts[0], fields
