"""The I/O shell: a websockets server on one port for /ws, /healthz, /readyz and /metrics,
and the server API (/api/v1/..., gateway/api.py) on the same port and on API_PORT."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from roomcast import SUBPROTOCOL
from roomcast.bus.redis import RedisBus
from roomcast.errors import CloseCode, GatewayError
from roomcast.settings import Settings
from roomcast.store.redis import RedisStore

from .api import Api, ApiConnection
from .backend import open_node
from .node import Node
from .session import Session

log = logging.getLogger("roomcast.server")


def _select_subprotocol(connection: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    return Subprotocol(SUBPROTOCOL) if SUBPROTOCOL in offered else None


STATIC_ROOT = Path(__file__).resolve().parent / "static"
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".json": "application/json", ".svg": "image/svg+xml", ".png": "image/png", ".ts": "text/plain; charset=utf-8"}


def load_static(root: Path = STATIC_ROOT) -> dict[str, tuple[str, bytes]]:
    """Every file under gateway/static, read once at start: URL path -> (type, body).
    Only these exact paths are served, so no request can reach another file."""
    files: dict[str, tuple[str, bytes]] = {}
    if not root.is_dir():
        return files
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix in _TYPES:
            url = "/" + path.relative_to(root).as_posix()
            files[url] = (_TYPES[path.suffix], path.read_bytes())
            if path.name == "index.html":
                files[url[: -len("index.html")]] = files[url]
                files[url[: -len("/index.html")]] = files[url]
    return files


def _text(status: int, body: str) -> Response:
    return Response(status, "OK" if status == 200 else "Error",
                    Headers([("Content-Type", "text/plain; charset=utf-8")]), body.encode())


_API_LINE = (b"GET /api/", b"POST /api/", b"PATCH /api/", b"DELETE /api/", b"PUT /api/", b"HEAD /api/",
             b"OPTIONS /api/")
_SNIFF_MAX = 16


class _SniffingConnection(ServerConnection):
    """websockets reads no request bodies: a connection whose request line targets /api/
    is handed to the server API's own HTTP reader before websockets sees a byte."""

    api: Api | None = None
    _sniff: bytes | None = b""
    _api_conn: ApiConnection | None = None

    def data_received(self, data: bytes) -> None:
        if self._sniff is None:
            super().data_received(data)
            return
        if self._api_conn is not None:
            self._api_conn.data_received(data)
            return
        head = self._sniff + data
        if len(head) < _SNIFF_MAX and any(len(head) < len(line) and line.startswith(head) for line in _API_LINE):
            self._sniff = head  # could still be an API request: wait for more
            return
        if self.api is not None and head.startswith(_API_LINE):
            self._api_conn = self.api.connection()
            self._api_conn.connection_made(self.transport)
            self._api_conn.data_received(head)
            return
        self._sniff = None
        super().data_received(head)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._api_conn is not None:
            self._api_conn.connection_lost(exc)
        super().connection_lost(exc)


class _Frames:
    """The deque interface websockets' `SimpleQueue` uses (append, popleft, extendleft, len),
    holding no deque while empty: an empty `collections.deque` is 760 B, and an idle socket's
    incoming-frame queue is empty. Backed by a deque while frames wait, so a burst of many
    small frames in one read stays O(1) per frame."""

    __slots__ = ("_d",)

    def __init__(self, items: Iterable[Any] = ()) -> None:
        self._d: collections.deque[Any] | None = collections.deque(items) or None

    def __len__(self) -> int:
        return 0 if self._d is None else len(self._d)

    def append(self, item: Any) -> None:
        if self._d is None:
            self._d = collections.deque()
        self._d.append(item)

    def extendleft(self, items: Iterable[Any]) -> None:
        if self._d is None:
            self._d = collections.deque()
        self._d.extendleft(items)

    def popleft(self) -> Any:
        d = self._d
        if d is None:
            raise IndexError("pop from an empty queue")
        item = d.popleft()
        if not d:
            self._d = None
        return item


def slim_connection(ws: ServerConnection) -> bool:
    """The one place roomcast reaches into websockets' ServerConnection (17.x), once the handshake
    is done and the Session has read the headers it needs: per idle socket ~4.5 KiB less RSS
    (13.7 -> 9.2 KiB at 5,000 sockets, docs/benchmarks.md "Idle memory per socket (issue 14)").

    - The handshake's request and response headers are emptied in place. websockets keeps both
      objects for the connection's life (`ws.request is None` means "no request yet", and the
      sans-I/O parser's generator holds the Request as a local), and reads neither after the
      handshake; roomcast reads the request's headers only in `Session.__init__`.
    - Two per-connection deques that are empty while a socket is idle (760 B each) become lean
      equivalents: `drain_waiters` (append / remove / iterate) a list, and the Assembler's frame
      queue (`recv_messages.frames.queue`) a `_Frames`.

    Each step applies only where the attribute is what websockets 17 has (a deque), so a
    websockets upgrade that changes these internals costs memory, never correctness;
    tests/integration/test_ws_adapter.py fails if one no longer applies. True if all applied."""
    applied = 0
    for message in (ws.request, ws.response):
        if message is not None and isinstance(message.headers, Headers):
            message.headers.clear()
            applied += 1
    if type(ws.drain_waiters) is collections.deque:
        ws.drain_waiters = list(ws.drain_waiters)  # type: ignore[assignment]
        applied += 1
    frames = getattr(getattr(ws, "recv_messages", None), "frames", None)
    if type(getattr(frames, "queue", None)) is collections.deque:
        frames.queue = _Frames(frames.queue)  # type: ignore[union-attr]
        applied += 1
    return applied == 4


class Gateway:
    """Composes the node with the websockets server; an async context manager."""

    def __init__(self, settings: Settings, node: Node) -> None:
        self.settings = settings
        self.node = node
        self.server: Server | None = None
        self._upkeep: asyncio.Task[None] | None = None
        # The browser client (/lib/roomcast.js) and the trivia demo (/demo/).
        self.static = load_static() if settings.serve_static else {}
        # The server API (SERVER_API_KEYS): on the gateway port, and on API_PORT when set.
        store = node.store
        self.api = Api(settings, node, store.b if isinstance(store, RedisStore) else None)
        if isinstance(node.bus, RedisBus):
            node.bus.on_control = self.api.control.on_message
        self.api_server: asyncio.Server | None = None

    def metrics_response(self) -> Response:
        self.node.metrics.refresh()
        body = generate_latest(self.node.metrics.registry)
        return Response(200, "OK", Headers([("Content-Type", CONTENT_TYPE_LATEST)]), body)

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.method != "HEAD":
            return self._route(request.path.split("?", 1)[0])
        # HEAD: the status and headers GET would get, with the length of its body, and no body
        # (RFC 9110 section 9.3.2). The WebSocket handshake itself is GET only.
        response = self._route(request.path.split("?", 1)[0])
        if response is None:
            return Response(405, "Method Not Allowed", Headers([("Allow", "GET"), ("Content-Length", "0")]), b"")
        headers = Headers(response.headers)
        headers["Content-Length"] = str(len(response.body))
        return dataclasses.replace(response, headers=headers, body=b"")

    def _route(self, path: str) -> Response | None:
        """The response to a GET of `path`; None for the WebSocket handshake."""
        if path == "/ws":
            if not self.node.accepting:
                return _text(503, "draining\n")
            return None
        if path == "/healthz":
            return _text(200, "ok\n")
        if path == "/readyz":
            # Redis Cluster: one line per shard. A shard down does not make the replica unready
            # (the others' rooms still work here, and every replica shares the same shards).
            shards = "".join(f"shard {label} {'up' if up else 'down'}\n"
                             for label, up in sorted(self.node.redis_shards.items()))
            if self.node.accepting:
                return _text(200, "ready\n" + shards)
            return _text(503, ("draining\n" if not self.node.ready else "backend unavailable\n") + shards)
        if path == "/metrics":
            return self.metrics_response()
        static = self.static.get(path)
        if static is not None:
            return Response(200, "OK", Headers([("Content-Type", static[0]), ("Cache-Control", "no-cache"),
                                                ("X-Content-Type-Options", "nosniff")]), static[1])
        return _text(404, "not found: use /ws, /healthz, /readyz or /metrics\n")

    async def handler(self, ws: ServerConnection) -> None:
        node = self.node
        loop_time = asyncio.get_running_loop().time
        session = Session(ws, node, loop_time())
        slim_connection(ws)
        refused = node.open_session(session)
        if refused is not None:
            node.metrics.closed(refused)
            reasons = {1008: "origin not allowed", 1013: "server full", 1001: "server going away"}
            await ws.close(refused, reasons.get(refused, "refused"))
            return
        code: int | None = None
        try:
            admitted = await node.admit_address(session)
        except GatewayError:  # the shared bucket is unreachable (Redis): admit; hello gets `unavailable`
            admitted = True
        if not admitted:
            session.closing = True
            await ws.close(CloseCode.RATE_LIMITED, "too many connections from this address")
            await node.close_session(session, int(CloseCode.RATE_LIMITED))
            return
        try:
            while True:
                # No local keeps the last message: an idle socket would hold its join for life.
                await node.handle(session, await ws.recv())
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else (exc.sent.code if exc.sent is not None else None)
            if exc.sent is not None and session.closing:
                code = exc.sent.code
        finally:
            await node.close_session(session, code)

    async def start(self) -> None:
        s = self.settings
        self.server = await serve(
            self.handler,
            s.host,
            s.port,
            process_request=self.process_request,
            select_subprotocol=_select_subprotocol,
            compression=None,
            ping_interval=None,  # the protocol's own ping/pong is the heartbeat
            max_size=s.max_frame_bytes,
            max_queue=8,
            close_timeout=5,
            server_header=None,
            create_connection=self._connection_class(),
        )
        if s.api_port and self.api.enabled:
            self.api_server = await self.api.serve(s.host, s.api_port)
        self._upkeep = asyncio.get_running_loop().create_task(self.node.run_upkeep())
        self._upkeep.add_done_callback(_crash_on_error)

    def _connection_class(self) -> type[ServerConnection]:
        if not self.api.enabled:
            return ServerConnection
        return type("GatewayConnection", (_SniffingConnection,), {"api": self.api})

    @property
    def port(self) -> int:
        assert self.server is not None
        sock = next(iter(self.server.sockets))
        port: int = sock.getsockname()[1]
        return port

    async def stop(self) -> None:
        """Readiness false, close every socket (1001, or 1012 over DRAIN_WINDOW), stop listening."""
        if self.api_server is not None:
            self.api_server.close()
        await self.node.drain(self.settings.drain_window_ms / 1000)
        if self.server is not None:
            self.server.close(close_connections=True)
            await self.server.wait_closed()
        if self._upkeep is not None:
            self._upkeep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._upkeep

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()


def _crash_on_error(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.critical("upkeep loop died; stopping", exc_info=task.exception())
        raise SystemExit(70)


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Gateway]:
    async with open_node(settings) as node, Gateway(settings, node) as gw:
        yield gw
