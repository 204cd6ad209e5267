"""Outages against real processes (issue 10): Redis restarted empty, a gateway frozen
with SIGSTOP, and what the logs say meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.harness import UNIT, Client, Cluster, ahttp_get, cluster, gateway, unique, wait_for

pytestmark = pytest.mark.system


@contextlib.asynccontextmanager
async def opened(url: str) -> AsyncIterator[Client]:
    async with Client.open(url) as c:
        yield c


async def wait_ready(c: Cluster, timeout: float = 20 * UNIT) -> None:
    for g in c.gateways:
        async def ready(url: str = g.http + "/readyz") -> bool:
            return (await ahttp_get(url))[0] == 200
        await wait_for(ready, timeout, 0.05 * UNIT, f"{g.http} ready again")


async def hello_close_code(url: str, device: str) -> int | None:
    """Open a socket and send hello for `device`: the close code, or None if it stays open."""
    async with Client.open(url) as c:
        await c.send({"type": "hello", "id": 1, "device_id": device})
        try:
            return await c.closed(3 * UNIT)
        except TimeoutError:
            return None


def restart_redis_empty(c: Cluster) -> None:
    c.redis.stop()
    c.redis.start()  # same port, no persistence: every key is gone


async def test_device_socket_cap_holds_after_redis_restarts_empty() -> None:
    """A device's open sockets are counted again when Redis comes back empty, so the
    cluster-wide cap (MAX_CONNECTIONS_PER_DEVICE) still refuses the next one with 4008."""
    with cluster(2, 0, {"MAX_CONNECTIONS_PER_DEVICE": "3"}) as c:
        gw0, gw1 = c.gateways
        device = unique("capped")
        async with contextlib.AsyncExitStack() as stack:
            old = [await stack.enter_async_context(opened(gw0.url)) for _ in range(3)]
            sockets = []
            for client in old:
                sockets.append((await client.hello(device))["socket_id"])
                client.start_pinging(0.3)
            # At the cap: a fourth socket, on the other replica, is refused.
            assert await hello_close_code(gw1.url, device) == 4008
            restart_redis_empty(c)
            await wait_ready(c)

            def back() -> bool:  # every old socket is registered in Redis again
                return all(c.redis.cli("ZSCORE", "ws:presence", s) != "" for s in sockets)

            await wait_for(back, 20 * UNIT, 0.05 * UNIT, "sockets re-registered")
            for gw in (gw1, gw0):
                assert await hello_close_code(gw.url, device) == 4008, f"a 4th socket got in on {gw.http}"
            # The count is exact, not inflated: with one old socket gone, one new one fits
            # (once the gateway has recorded the close).
            await old[0].ws.close()

            async def fits() -> bool:
                return await hello_close_code(gw1.url, device) is None

            await wait_for(fits, 10 * UNIT, 0.1 * UNIT, "a new socket once one old one closed")


async def test_gateway_frozen_past_the_heartbeat_timeout_keeps_clients_that_kept_pinging() -> None:
    """SIGSTOP longer than the heartbeat timeout: on SIGCONT the pings that waited in the
    socket buffers are read before anyone is judged silent; a really silent client still
    gets 4002."""
    timeout_ms = int(1000 * UNIT)
    with gateway({"WEBSOCKET_HEARTBEAT_TIMEOUT": str(timeout_ms), "WEBSOCKET_HEARTBEAT_INTERVAL": str(timeout_ms // 5),
                  "HELLO_TIMEOUT": str(timeout_ms)}) as g:
        async with contextlib.AsyncExitStack() as stack:
            pingers = [await stack.enter_async_context(opened(g.url)) for _ in range(5)]
            for client in pingers:
                await client.hello(unique("pinger"))
                client.start_pinging(timeout_ms / 5000)
            silent = await stack.enter_async_context(opened(g.url))
            await silent.hello(unique("silent"))
            assert g.proc is not None
            g.signal(signal.SIGSTOP)
            try:
                await asyncio.sleep(2.5 * timeout_ms / 1000)  # the frozen process cannot read
            finally:
                g.signal(signal.SIGCONT)
            resumed = time.monotonic()
            # The really silent one is closed for its silence...
            assert await silent.closed(3 * timeout_ms / 1000) == 4002
            # ...while every client that kept pinging is still served, well past the timeout.
            while time.monotonic() - resumed < 2 * timeout_ms / 1000:
                for client in pingers:
                    reply = await client.request({"type": "ping"})
                    assert reply["type"] == "pong", reply
                await asyncio.sleep(0.1 * UNIT)
            for client in pingers:
                assert client.ws.close_code is None, f"closed with {client.ws.close_code}"


def _lines(text: str) -> list[str]:
    """Log records (a record starts with a date; traceback lines belong to the record before)."""
    return [line for line in text.splitlines() if line[:2] == "20"]


async def test_redis_outage_is_logged_once_down_and_once_back() -> None:
    """Coordinator and gateway: one line when Redis goes, at most a periodic summary while it
    stays away, no tracebacks, one line when it is back."""
    with cluster(1, 1) as c:
        gw, coord = c.gateways[0], c.coordinators[0]
        async with Client.open(gw.url) as client, contextlib.AsyncExitStack() as leaving:
            await client.hello(unique("dev-log"))
            client.start_pinging(0.3)
            leavers = [await leaving.enter_async_context(opened(gw.url)) for _ in range(5)]
            for leaver in leavers:
                await leaver.hello(unique("dev-leaves"))
            logs = {"gateway": gw.log, "coordinator": coord.log}
            at_stop = {name: len(log()) for name, log in logs.items()}
            c.redis.stop()
            stopped = time.monotonic()
            await asyncio.sleep(0.5 * UNIT)
            await leaving.aclose()  # sockets that end during the outage: not a line each
            while time.monotonic() - stopped < 4 * UNIT:  # traffic meanwhile: refused, not logged
                reply = await client.request({"type": "list_rooms"})
                assert reply["type"] == "error" and reply["code"] == "unavailable", reply
                with contextlib.suppress(ConnectionClosed, InvalidStatus):  # new sockets: refused (503)
                    async with Client.open(gw.url) as newcomer:
                        await newcomer.send({"type": "hello", "id": 1, "device_id": unique("dev-new")})
                        await newcomer.recv(2 * UNIT)
                await asyncio.sleep(0.1 * UNIT)
            at_start = {name: len(log()) for name, log in logs.items()}
            c.redis.start()
            await wait_ready(c)

            async def coordinator_back() -> bool:
                return (await ahttp_get(coord.http + "/readyz"))[0] == 200

            await wait_for(coordinator_back, 15 * UNIT, 0.05 * UNIT, "coordinator ready again")
            await asyncio.sleep(2 * UNIT)  # time for any follow-up lines to show
            for name, log in logs.items():
                text = log()
                during, after = text[at_stop[name]:at_start[name]], text[at_start[name]:]
                assert "Traceback" not in during + after, f"{name}:\n{during}{after}"
                down = [line for line in _lines(during) if "still unavailable" not in line]
                assert len(down) == 1 and "unavailable" in down[0], f"{name} while Redis was down:\n{during}"
                back = [line for line in _lines(after) if "roomcast.lease" not in line]  # who leads is news
                assert len(back) == 1 and "is back after" in back[0], f"{name} once Redis was back:\n{after}"


async def test_event_while_a_lost_room_is_being_recovered_gets_unavailable_not_not_found() -> None:
    """Redis restarted empty: until the gateway notices that the room is gone (and closes the
    socket with 1012), an `event` for it gets `unavailable` (retry), never `not_found`, which
    the docs do not list for `event`."""
    with cluster(1, 0) as c:
        gw = c.gateways[0]
        room_id = unique("lost")
        async with Client.open(gw.url) as host:
            await host.hello(unique("host"))
            host.start_pinging(0.3)
            assert (await host.request({"type": "create_room", "room_id": room_id, "game_type": "g"}))["type"] == \
                "room_created"
            restart_redis_empty(c)
            codes: list[str] = []
            deadline = time.monotonic() + 20 * UNIT
            with contextlib.suppress(ConnectionClosed):
                while time.monotonic() < deadline:
                    reply = await host.request({"type": "event", "room_id": room_id, "event_type": "x"})
                    codes.append(reply.get("code", reply["type"]))
                    await asyncio.sleep(0.01 * UNIT)
            assert host.ws.close_code == 1012, codes[-5:]
            assert codes and set(codes) <= {"unavailable"}, sorted(set(codes))


async def test_gateway_frozen_past_the_timeout_puts_its_sockets_back_in_the_cluster() -> None:
    """In cluster mode the reaper marks the sockets of a frozen gateway `timeout` (their
    presence went stale). When the gateway resumes and its clients are still there, they
    are registered again: the room sees them come back, and they are not pruned later."""
    timeout_ms = int(1000 * UNIT)
    env = {"WEBSOCKET_HEARTBEAT_TIMEOUT": str(timeout_ms), "WEBSOCKET_HEARTBEAT_INTERVAL": str(timeout_ms // 5),
           "REAPER_INTERVAL": "100"}
    with cluster(2, 1, env) as c:
        frozen, other = c.gateways
        room_id = unique("frozen")
        player_device = unique("player")
        async with Client.open(other.url) as host, Client.open(frozen.url) as player:
            await host.hello(unique("host"))
            host.start_pinging(timeout_ms / 5000)
            await host.request({"type": "create_room", "room_id": room_id, "game_type": "g"})
            await player.hello(player_device)
            player.start_pinging(timeout_ms / 5000)
            assert (await player.request({"type": "join", "room_id": room_id}))["type"] == "joined"
            await host.expect(type="event", event_type="participant_joined")
            frozen.signal(signal.SIGSTOP)
            try:
                gone = await host.expect(10 * UNIT, type="event", event_type="participant_disconnected")
            finally:
                frozen.signal(signal.SIGCONT)
            assert gone["payload"]["device_id"] == player_device and gone["payload"]["reason"] == "timeout"
            back = await host.expect(10 * UNIT, type="event", event_type="participant_reconnected")
            assert back["payload"]["device_id"] == player_device
            ack = await player.request({"type": "event", "room_id": room_id, "event_type": "still-here"})
            assert ack["type"] == "ack", ack
            assert player.ws.close_code is None


async def test_sockets_opened_while_a_frozen_redis_is_not_yet_noticed_log_no_tracebacks() -> None:
    """Redis frozen (SIGSTOP: connections stay open, nothing answers): until the gateway
    notices, new sockets still get in; their admission check cannot reach Redis. That is
    one outage line in the log, not a traceback per socket, and the socket is not dropped."""
    with cluster(1, 0) as c:
        gw = c.gateways[0]
        assert c.redis.proc is not None
        start = len(gw.log())
        c.redis.proc.send_signal(signal.SIGSTOP)
        try:
            async with contextlib.AsyncExitStack() as stack:
                newcomers = [await stack.enter_async_context(opened(gw.url)) for _ in range(3)]
                for n in newcomers:
                    await n.send({"type": "hello", "id": 1, "device_id": unique("dev-frozen")})
                for n in newcomers:
                    reply = await n.expect(10 * UNIT, re=1)
                    assert reply["type"] == "error" and reply["code"] == "unavailable", reply
        finally:
            c.redis.proc.send_signal(signal.SIGCONT)
        await wait_ready(c)
        text = gw.log()[start:]
        assert "Traceback" not in text and "connection handler failed" not in text, text
