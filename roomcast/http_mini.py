"""A tiny HTTP/1.1 responder for the coordinator's /healthz, /readyz and /metrics.

GET and HEAD (the same status and headers, no body), one request per connection, bounded
request size. Enough for probes and Prometheus scrapes without pulling a web framework into
the coordinator.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

Route = Callable[[], tuple[int, str, bytes]]  # -> (status, content type, body)
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


async def serve_http(host: str, port: int, routes: dict[str, Route]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            line = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            if len(line) != 3 or line[0] not in ("GET", "HEAD"):
                status, ctype, body = 405, "text/plain", b"GET only\n"
            else:
                route = routes.get(line[1].split("?", 1)[0])
                status, ctype, body = route() if route else (404, "text/plain", b"not found\n")
            writer.write(
                f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + (b"" if line and line[0] == "HEAD" else body)  # HEAD: the headers of GET, no body
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host, port, limit=8192)
