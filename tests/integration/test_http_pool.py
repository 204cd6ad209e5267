"""gateway.http_pool against real loopback HTTP servers (asyncio streams): keep-alive reuse,
a connection the server closed while idle, chunked and Connection: close replies, the size
bound and the deadline."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from gateway.http_pool import HttpError, HttpPool
from tests.harness import UNIT

Reply = Callable[[int], bytes]  # request number -> the raw reply to write


@contextlib.asynccontextmanager
async def server(reply: Reply, *, close_after: bool = False,
                 before: Callable[[], Awaitable[None]] | None = None) -> AsyncIterator[tuple[str, list[int]]]:
    """An HTTP server on 127.0.0.1 answering each request with `reply(n)`; yields its URL and
    the list of connections it accepted (one entry per connection: its request count)."""
    conns: list[int] = []
    count = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        conns.append(0)
        me = len(conns) - 1
        try:
            for _ in range(100):
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                await reader.readexactly(length)
                count += 1
                conns[me] += 1
                if before is not None:
                    await before()
                writer.write(reply(count))
                await writer.drain()
                if close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}/hook?x=1", conns
    finally:
        srv.close()


def ok(body: bytes, extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


async def test_sequential_calls_reuse_one_connection() -> None:
    pool = HttpPool()
    async with server(lambda n: ok(b'{"n":%d}' % n)) as (url, conns):
        for n in range(1, 4):
            assert await pool.post_json(url, b"{}", {}, 5 * UNIT) == (200, b'{"n":%d}' % n)
    assert conns == [3] and pool.connections_opened == 1
    await pool.close()


async def test_a_connection_closed_while_idle_is_replaced_and_the_call_goes_through() -> None:
    pool = HttpPool()
    # The server closes every connection after its reply without saying so (an idle timeout).
    async with server(lambda n: ok(b"%d" % n), close_after=True) as (url, conns):
        assert await pool.post_json(url, b"{}", {}, 5 * UNIT) == (200, b"1")
        await asyncio.sleep(0.05 * UNIT)  # let the close arrive (it may or may not be seen: both are handled)
        assert await pool.post_json(url, b"{}", {}, 5 * UNIT) == (200, b"2")
    assert conns == [1, 1]
    await pool.close()


async def test_chunked_and_connection_close_replies() -> None:
    pool = HttpPool()
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\n{\"all\r\n9;ext=1\r\now\":true}\r\n0\r\nX-Trailer: 1\r\n\r\n")
    async with server(lambda n: chunked) as (url, conns):
        assert await pool.post_json(url, b"{}", {}, 5 * UNIT) == (200, b'{"allow":true}')
        assert await pool.post_json(url, b"{}", {}, 5 * UNIT) == (200, b'{"allow":true}')
    assert conns == [2]
    async with server(lambda n: ok(b"x", "Connection: close\r\n"), close_after=True) as (url, conns):
        await pool.post_json(url, b"{}", {}, 5 * UNIT)
        await pool.post_json(url, b"{}", {}, 5 * UNIT)
    assert conns == [1, 1]
    await pool.close()


async def test_headers_are_sent() -> None:
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head + await reader.readexactly(7))
        writer.write(ok(b"{}"))
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    pool = HttpPool()
    try:
        await pool.post_json(f"http://127.0.0.1:{port}/p?q=2", b'{"a":1}', {"Authorization": "Bearer s"}, 5 * UNIT)
    finally:
        srv.close()
        await pool.close()
    lines = seen[0].split(b"\r\n")
    assert lines[0] == b"POST /p?q=2 HTTP/1.1"
    assert b"Authorization: Bearer s" in lines and f"Host: 127.0.0.1:{port}".encode() in lines
    assert b"Content-Type: application/json" in lines and seen[0].endswith(b'{"a":1}')


async def test_too_large_a_reply_and_garbage_are_errors() -> None:
    pool = HttpPool(max_body=10)
    async with server(lambda n: ok(b"x" * 11)) as (url, _):
        with pytest.raises(HttpError):
            await pool.post_json(url, b"{}", {}, 5 * UNIT)
    async with server(lambda n: b"SSH-2.0-nope\r\n\r\n") as (url, _):
        with pytest.raises(HttpError):
            await pool.post_json(url, b"{}", {}, 5 * UNIT)
    await pool.close()


async def test_the_deadline_covers_the_whole_call_and_the_connection_is_not_reused() -> None:
    release = asyncio.Event()

    async def stall() -> None:
        if not release.is_set():
            await asyncio.wait_for(release.wait(), 10 * UNIT)

    pool = HttpPool()
    async with server(lambda n: ok(b"%d" % n), before=stall) as (url, conns):
        with pytest.raises(TimeoutError):
            await pool.post_json(url, b"{}", {}, 0.2 * UNIT)
        release.set()
        # A fresh connection: the timed-out one may still get its late reply, never read as this one's.
        assert await pool.post_json(url, b"{}", {}, 5 * UNIT) == (200, b"2")
    assert pool.connections_opened == 2 and len(conns) == 2
    await pool.close()


async def test_nothing_listening_is_an_error() -> None:
    async with server(lambda n: ok(b"")) as (url, _):
        pass
    pool = HttpPool()
    with pytest.raises(HttpError):
        await pool.post_json(url, b"{}", {}, 5 * UNIT)
    await pool.close()
