"""gateway.server.slim_connection, the one place roomcast reaches into websockets' connection.

An in-process gateway (real sockets) so the test can look at the server side of the socket.
These tests fail if a websockets upgrade changes the internals the adapter relies on (then the
adapter leaves them alone: it costs memory, not correctness) or if a slimmed socket misbehaves:
it must still read bursts of frames in order and wait for the client's reading when it writes
more than the transport's limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection

from gateway.server import Gateway, _Frames, running
from gateway.session import Session
from roomcast import SUBPROTOCOL
from roomcast.settings import Settings
from tests.harness import UNIT, Client, free_port, unique


@pytest.fixture
async def gw() -> AsyncIterator[Gateway]:
    env = {"GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(free_port()), "LOG_LEVEL": "WARNING",
           "RATE_MESSAGES_PER_SEC": "1000", "RATE_MESSAGES_BURST": "1000"}
    async with running(Settings.load(env)) as gateway:
        yield gateway


def server_side(gw: Gateway) -> tuple[ServerConnection, Session]:
    assert gw.server is not None
    (conn,) = gw.server.connections
    (session,) = [s for s in gw.node.sessions.values() if s.ws is conn]
    return conn, session


async def test_handshake_headers_are_dropped_after_the_session_read_them(gw: Gateway) -> None:
    url = f"ws://127.0.0.1:{gw.port}/ws"
    async with Client.open(url, subprotocols=[SUBPROTOCOL], origin="https://game.example",  # type: ignore[list-item]
                           user_agent_header="adapter-test/1.0") as c:
        await c.hello(unique("dev-adapter"))
        conn, session = server_side(gw)
        # The session kept what roomcast uses of the request ...
        assert session.user_agent == "adapter-test/1.0"
        assert session.origin == "https://game.example"
        assert c.ws.subprotocol == SUBPROTOCOL
        # ... and websockets' copies are gone (the objects stay: `request is None` means "handshaking").
        assert conn.request is not None and conn.response is not None
        assert list(conn.request.headers.raw_items()) == []
        assert list(conn.response.headers.raw_items()) == []
        # The two per-connection deques were swapped for their lean equivalents.
        assert type(conn.drain_waiters) is list
        assert type(conn.recv_messages.frames.queue) is _Frames
        pong = await c.request({"type": "ping"})
        assert pong["type"] == "pong"


async def test_a_burst_of_frames_is_read_in_order(gw: Gateway) -> None:
    url = f"ws://127.0.0.1:{gw.port}/ws"
    async with Client.open(url, subprotocols=[SUBPROTOCOL]) as c:  # type: ignore[list-item]
        await c.hello(unique("dev-burst"))
        ids = [c.next_id() for _ in range(40)]
        # Framed by the client protocol and written at once: the server reads them in one go.
        for i in ids:
            c.ws.protocol.send_text(orjson.dumps({"type": "ping", "id": i}))
        c.ws.transport.write(b"".join(c.ws.protocol.data_to_send()))
        replies = [await c.expect(type="pong", re=i) for i in ids]
        assert [r["re"] for r in replies] == ids


async def test_a_write_above_the_limit_waits_for_the_reader(gw: Gateway) -> None:
    url = f"ws://127.0.0.1:{gw.port}/ws"
    async with connect(url, subprotocols=[SUBPROTOCOL], compression=None, ping_interval=None,  # type: ignore[list-item]
                       max_size=2**24, max_queue=2) as ws:
        c = Client(ws)
        await c.hello(unique("dev-drain"))
        conn, _ = server_side(gw)
        assert type(conn.drain_waiters) is list
        chunk = "x" * 256 * 1024
        n = 24  # 6 MiB: far more than the client buffers while it does not read
        sender = asyncio.get_running_loop().create_task(_send_all(conn, chunk, n))
        await asyncio.sleep(0.3 * UNIT)
        assert not sender.done()  # blocked in drain(): the client is not reading
        assert len(conn.drain_waiters) == 1
        got = [await asyncio.wait_for(ws.recv(), 5 * UNIT) for _ in range(n)]
        await asyncio.wait_for(sender, 5 * UNIT)
        assert got == [chunk] * n
        assert conn.drain_waiters == []


async def _send_all(conn: ServerConnection, chunk: str, n: int) -> None:
    for _ in range(n):
        await conn.send(chunk)


def test_frames_queue_behaves_like_the_deque_it_replaces() -> None:
    q = _Frames([1, 2])
    assert len(q) == 2 and q
    q.append(3)
    q.extendleft(reversed([-1, 0]))  # websockets' put_back
    assert [q.popleft() for _ in range(len(q))] == [-1, 0, 1, 2, 3]
    assert len(q) == 0 and not q and q._d is None  # no deque kept while empty
    with pytest.raises(IndexError):
        q.popleft()
