"""Close codes over real sockets: 4001, 4002, 4008, 1013, 1008, 4009 and 1001 on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus

from tests.harness import UNIT, Client, GatewayProcess, ahttp_get, gateway, parse_metrics, unique, wait_for

HELLO_TIMEOUT_MS = int(400 * UNIT)
HEARTBEAT_TIMEOUT_MS = int(800 * UNIT)


@pytest.fixture(scope="module")
def timeouts_gw() -> Iterator[GatewayProcess]:
    with gateway({"HELLO_TIMEOUT": str(HELLO_TIMEOUT_MS),
                  "WEBSOCKET_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT_MS)}) as g:
        yield g


async def metric(gw: GatewayProcess, key: str, url: str | None = None) -> float:
    status, body = await ahttp_get(url or gw.http + "/metrics")
    assert status == 200
    return parse_metrics(body).get(key, 0.0)


async def connections_are(gw: GatewayProcess, n: int) -> None:
    async def check() -> bool:
        return await metric(gw, "roomcast_connections") == n

    await wait_for(check, what=f"roomcast_connections == {n}")


# ---------------------------------------------------------------- 4001 hello timeout


async def test_no_hello_closes_4001(timeouts_gw: GatewayProcess) -> None:
    async with Client.open(timeouts_gw.url) as silent, Client.open(timeouts_gw.url) as greeted:
        await greeted.hello(unique("dev-greeted"))
        assert await silent.closed(timeout=HELLO_TIMEOUT_MS / 1000 + 5 * UNIT) == 4001
        # The welcomed socket of the same age is not affected.
        assert (await greeted.request({"type": "ping"}))["type"] == "pong"


async def test_invalid_hello_and_other_messages_do_not_stop_the_hello_timer(timeouts_gw: GatewayProcess) -> None:
    async with Client.open(timeouts_gw.url) as c:
        assert (await c.request({"type": "hello", "device_id": "bad"}))["code"] == "bad_request"
        assert (await c.request({"type": "ping"}))["code"] == "hello_required"
        assert await c.closed(timeout=HELLO_TIMEOUT_MS / 1000 + 5 * UNIT) == 4001


# ---------------------------------------------------------------- 4002 heartbeat timeout


async def test_silent_socket_closes_4002_and_room_sees_timeout(timeouts_gw: GatewayProcess) -> None:
    g = timeouts_gw
    beat = HEARTBEAT_TIMEOUT_MS / 4000
    async with Client.open(g.url) as silent, Client.open(g.url) as watcher:
        welcome = await silent.hello(unique("dev-silent"))
        assert welcome["heartbeat_timeout_ms"] == HEARTBEAT_TIMEOUT_MS
        assert 0 < welcome["heartbeat_interval_ms"] < HEARTBEAT_TIMEOUT_MS
        await watcher.hello(unique("dev-watcher"))
        async with watcher.keepalive(beat):
            room_id = (await watcher.request({"type": "create_room", "game_type": "t"}))["room"]["room_id"]
            assert (await silent.request({"type": "join", "room_id": room_id}))["type"] == "joined"
            before = await metric(g, "roomcast_heartbeat_timeouts_total")
            # From here on `silent` says nothing.
            assert await silent.closed(timeout=HEARTBEAT_TIMEOUT_MS / 1000 + 5 * UNIT) == 4002
            ev = await watcher.expect(type="event", room_id=room_id, event_type="participant_disconnected")
            assert ev["payload"] == {"device_id": welcome["device_id"], "role": "player", "reason": "timeout"}
            assert await metric(g, "roomcast_heartbeat_timeouts_total") >= before + 1
            # The watcher, which kept pinging, is still fine.
            assert (await watcher.request({"type": "ping"}))["type"] == "pong"


async def test_pings_keep_the_socket_alive(timeouts_gw: GatewayProcess) -> None:
    g = timeouts_gw
    async with Client.open(g.url) as kept, Client.open(g.url) as busy, Client.open(g.url) as silent:
        await kept.hello(unique("dev-kept"))
        await busy.hello(unique("dev-busy"))
        await silent.hello(unique("dev-silent"))
        async with kept.keepalive(HEARTBEAT_TIMEOUT_MS / 4000):
            # Any protocol message is a heartbeat, not just ping.
            async def chatter() -> None:
                while True:
                    await busy.send({"type": "list_rooms", "limit": 1})
                    await asyncio.sleep(HEARTBEAT_TIMEOUT_MS / 4000)

            task = asyncio.get_running_loop().create_task(chatter())
            try:
                # Well past the timeout: the silent socket goes, the talking ones stay.
                assert await silent.closed(timeout=HEARTBEAT_TIMEOUT_MS / 1000 + 5 * UNIT) == 4002
                await asyncio.sleep(HEARTBEAT_TIMEOUT_MS / 1000)  # the others live through another timeout
                assert (await kept.request({"type": "ping"}))["type"] == "pong"
                assert (await busy.request({"type": "ping"}))["type"] == "pong"
            finally:
                task.cancel()


async def test_websocket_level_pings_are_not_heartbeats(timeouts_gw: GatewayProcess) -> None:
    async with Client.open(timeouts_gw.url) as c:
        await c.hello(unique("dev-wsping"))

        async def ws_pings() -> None:
            while True:
                await c.ws.ping()
                await asyncio.sleep(HEARTBEAT_TIMEOUT_MS / 4000)

        task = asyncio.get_running_loop().create_task(ws_pings())
        try:
            assert await c.closed(timeout=HEARTBEAT_TIMEOUT_MS / 1000 + 5 * UNIT) == 4002
        finally:
            task.cancel()


# ---------------------------------------------------------------- 4008 too many sockets per device


async def test_too_many_sockets_for_one_device_closes_4008() -> None:
    with gateway({"MAX_CONNECTIONS_PER_DEVICE": "1"}) as g:
        device = unique("dev-one")
        async with Client.open(g.url) as first, Client.open(g.url) as second:
            await first.hello(device)
            await second.send({"type": "hello", "device_id": device, "id": 1})
            assert await second.closed() == 4008
            assert not [m for m in second.inbox if m.get("type") == "welcome"]
            # The first socket and other devices are unaffected.
            assert (await first.request({"type": "ping"}))["type"] == "pong"
            async with Client.open(g.url) as other:
                await other.hello(unique("dev-other"))
            assert await metric(g, 'roomcast_connections_closed_total{code="4008"}') == 1
        # Once the first socket is gone, the device may connect again.
        await connections_are(g, 0)
        async with Client.open(g.url) as again:
            assert (await again.hello(device))["reconnect_count"] == 1


# ---------------------------------------------------------------- 1013 replica full


async def test_too_many_sockets_on_the_replica_closes_1013() -> None:
    with gateway({"MAX_CONNECTIONS": "2"}) as g:
        async with Client.open(g.url) as a, Client.open(g.url) as b:
            await a.hello(unique("dev-a"))  # one welcomed, one not: both count
            async with Client.open(g.url) as c:
                assert await c.closed() == 1013
            assert (await a.request({"type": "ping"}))["type"] == "pong"
            await b.hello(unique("dev-b"))
        await connections_are(g, 0)
        async with Client.open(g.url) as a, Client.open(g.url) as b:
            await a.hello(unique("dev-a"))
            await b.hello(unique("dev-b"))


# ---------------------------------------------------------------- 1008 origin policy


async def test_origin_allow_list_closes_1008() -> None:
    allowed = "https://play.example.com"
    with gateway({"ALLOWED_ORIGINS": f"{allowed}, https://other.example.com"}) as g:
        async with Client.open(g.url, origin="https://evil.example.net") as c:
            assert await c.closed() == 1008
        async with Client.open(g.url, origin="http://play.example.com") as c:  # scheme matters
            assert await c.closed() == 1008
        for origin in (allowed, "https://other.example.com"):
            async with Client.open(g.url, origin=origin) as c:
                assert (await c.hello(unique("dev-origin")))["type"] == "welcome"
        # No Origin header (a non-browser client): allowed.
        async with Client.open(g.url) as c:
            assert "Origin" not in c.ws.request.headers  # type: ignore[union-attr]
            assert (await c.hello(unique("dev-noorigin")))["type"] == "welcome"


# ---------------------------------------------------------------- 4009 slow consumer


def small_buffer_socket(port: int) -> socket.socket:
    """A connected TCP socket with a tiny receive buffer, so the kernel holds little for us."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    return sock


async def test_slow_consumer_closes_4009_without_stalling_the_room() -> None:
    # History large enough to resume after the flood (16 KB events; the default keeps 128 KiB).
    env = {"MAX_SEND_BUFFER": "4096", "RATE_MESSAGES_PER_SEC": "100000", "RATE_MESSAGES_BURST": "100000",
           "ROOM_HISTORY_MAX_BYTES": str(64 * 1024 * 1024)}
    payload = {"blob": "z" * 16_000}
    with gateway(env) as g:
        async with Client.open(g.url) as flooder, Client.open(g.url) as reader, \
                Client.open(g.url, sock=small_buffer_socket(g.port), max_queue=1) as slow:
            await flooder.hello(unique("dev-flood"))
            await reader.hello(unique("dev-read"))
            slow_dev = unique("dev-slow")
            await slow.hello(slow_dev)
            room_id = (await flooder.request({"type": "create_room", "game_type": "t"}))["room"]["room_id"]
            await reader.request({"type": "join", "room_id": room_id})
            joined = await slow.request({"type": "join", "room_id": room_id})
            slow.ws.transport.pause_reading()  # the slow client stops reading from here on

            async def read_all() -> list[dict[str, Any]]:
                got = []
                while True:
                    ev = await reader.expect(timeout=10 * UNIT, type="event", room_id=room_id)
                    got.append(ev)
                    if ev["event_type"] == "done":
                        return got

            reading = asyncio.get_running_loop().create_task(read_all())
            closed_key = "roomcast_slow_consumer_closes_total"
            sent, after_close = 0, 0
            while after_close < 50:
                ack = await flooder.request({"type": "event", "room_id": room_id, "event_type": "flood",
                                             "payload": payload})
                assert ack["type"] == "ack", ack
                sent += 1
                if after_close or (sent % 10 == 0 and await metric(g, closed_key) >= 1):
                    after_close += 1
                assert sent < 2000, "the slow socket was never closed (32 MB later)"
            last = await flooder.request({"type": "event", "room_id": room_id, "event_type": "done"})
            got = await reading
            # The reader got every event, in order, with no gap: the fan-out never waited for `slow`.
            seqs = [e["seq"] for e in got]
            assert seqs == list(range(seqs[0], last["seq"] + 1))
            assert sum(1 for e in got if e["event_type"] == "flood") == sent

            # The slow client, reading again, finds 4009 after what had been buffered for it.
            slow.ws.transport.resume_reading()
            assert await slow.closed(timeout=10 * UNIT) == 4009
            seen = [m["seq"] for m in slow.inbox if m.get("type") == "event" and m.get("room_id") == room_id]
            assert seen, "the slow client got none of the events buffered before its close"
            assert seen == list(range(joined["seq"] + 1, seen[-1] + 1))  # a gap-free prefix ...
            assert seen[-1] < last["seq"]  # ... that stops where it was cut off
            assert await metric(g, 'roomcast_connections_closed_total{code="4009"}') == 1

            # The room sees it disconnect; it reconnects and resumes where it stopped.
            gone = await reader.expect(type="event", room_id=room_id, event_type="participant_disconnected")
            assert gone["payload"]["device_id"] == slow_dev
            async with Client.open(g.url) as back:
                await back.hello(slow_dev)
                since = seen[-1]
                rejoin = await back.request({"type": "join", "room_id": room_id, "since": since,
                                             "epoch": joined["epoch"]})
                assert rejoin["recovered"] is True
                replay = await back.events(room_id, rejoin["seq"] - since, timeout=10 * UNIT)
                assert [e["seq"] for e in replay] == list(range(since + 1, rejoin["seq"] + 1))


# ---------------------------------------------------------------- 1001 on SIGTERM


async def test_sigterm_drains_with_1001_and_readyz_false() -> None:
    with gateway() as g:
        async with Client.open(g.url) as member, Client.open(g.url) as fresh, Client.open(g.url) as stalled:
            await member.hello(unique("dev-member"))
            await member.request({"type": "create_room", "game_type": "t"})
            await stalled.hello(unique("dev-stalled"))
            # `stalled` will not answer the close handshake until we let it read again,
            # which holds the drain open long enough to observe it.
            stalled.ws.transport.pause_reading()
            g.signal(signal.SIGTERM)
            assert await member.closed() == 1001
            assert await fresh.closed() == 1001  # before hello too

            async def not_ready() -> bool:
                return (await ahttp_get(g.http + "/readyz"))[0] == 503

            await wait_for(not_ready, what="/readyz 503 while draining")
            assert (await ahttp_get(g.http + "/healthz"))[0] == 200
            # No new sockets while draining.
            with pytest.raises((InvalidStatus, OSError)):
                async with Client.open(g.url):
                    pass
            stalled.ws.transport.resume_reading()
            assert await stalled.closed() == 1001
        assert g.proc is not None
        assert await asyncio.to_thread(g.proc.wait, 10 * UNIT) == 0
        assert "Traceback" not in g.log()
