"""roomcast_client against real embedded gateways: requests, resume after a dropped socket,
sends whose reply was lost, close codes, the offline queue, rate limits, and reset when the
gateway cannot replay.

Links are broken for real: the gateway closes a silent socket (4002), the client's TCP
connection is aborted, or a loopback proxy between client and gateway cuts the link or
stalls one direction of it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from roomcast_client import CLIENT_GAVE_UP, Room, RoomcastClient, RoomcastError
from tests.harness import UNIT, Client, GatewayProcess, ahttp_get, gateway, parse_metrics, unique, wait_for

HEARTBEAT_TIMEOUT_MS = 800
FAST = (0.05 * UNIT, 0.3 * UNIT)  # backoff (base, cap) for the tests
ALLOWED_ORIGIN = "https://game.example"
PER_DEVICE = 2
Msg = dict[str, Any]


@pytest.fixture(scope="module")
def gw() -> Iterator[GatewayProcess]:
    """The gateway most tests share: a short heartbeat timeout (clients ping every ~333 ms),
    an origin allow-list (clients that send no Origin are not checked), two sockets per device
    (a resumed socket may overlap its predecessor until the gateway notices it died), and
    device tokens required, so every reconnect must present the token of the first welcome."""
    with gateway({"WEBSOCKET_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT_MS), "ALLOWED_ORIGINS": ALLOWED_ORIGIN,
                  "MAX_CONNECTIONS_PER_DEVICE": str(PER_DEVICE), "DEVICE_TOKEN_SECRET": "client-tests",
                  "REQUIRE_DEVICE_TOKEN": "true"}) as g:
        yield g


@contextlib.asynccontextmanager
async def clients(*made: RoomcastClient) -> AsyncIterator[None]:
    try:
        for c in made:
            await c.connect(timeout=10 * UNIT)
        yield
    finally:
        for c in made:
            await c.close()


def record(room: Room) -> list[int]:
    seqs: list[int] = []
    room.on("event", lambda ev: seqs.append(ev["seq"]))
    return seqs


def assert_once_in_order(seqs: list[int], head: int) -> None:
    assert seqs, "no events"
    assert seqs == list(range(seqs[0], head + 1)), f"gap or duplicate: {seqs}"


async def metric(g: GatewayProcess, key: str) -> float:
    status, body = await ahttp_get(g.http + "/metrics")
    assert status == 200
    return parse_metrics(body).get(key, 0.0)


class _Link:
    def __init__(self, client_side: asyncio.StreamWriter, gateway_side: asyncio.StreamWriter) -> None:
        self.writers = (client_side, gateway_side)
        self.up = asyncio.Event()  # client -> gateway flows
        self.down = asyncio.Event()  # gateway -> client flows
        self.up.set()
        self.down.set()
        self.dead = False


class LinkProxy:
    """A loopback TCP proxy between a client and a gateway, in the test's event loop.

    `cut()` resets every connection (no close frame: the network failed) and resets new ones
    until `restore()`. `stall(up=…, down=…)` silently holds the bytes of the current
    connections in one or both directions (a half-open link); new connections flow."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.cut_off = False
        self.links: set[_Link] = set()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def __aenter__(self) -> LinkProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()

    def cut(self) -> None:
        self.cut_off = True
        for link in list(self.links):
            self._kill(link)

    def restore(self) -> None:
        self.cut_off = False

    def stall(self, up: bool = True, down: bool = True) -> None:
        for link in self.links:
            if up:
                link.up.clear()
            if down:
                link.down.clear()

    @staticmethod
    def _kill(link: _Link) -> None:
        link.dead = True
        for w in link.writers:
            w.transport.abort()
        link.up.set()  # wake held pumps: they see the link is dead and drop what they hold
        link.down.set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_off:
            writer.transport.abort()
            return
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        link = _Link(writer, up_w)
        self.links.add(link)
        try:
            await asyncio.gather(self._pump(reader, up_w, link, link.up), self._pump(up_r, writer, link, link.down))
        finally:
            self.links.discard(link)

    @classmethod
    async def _pump(cls, src: asyncio.StreamReader, dst: asyncio.StreamWriter, link: _Link,
                    flowing: asyncio.Event) -> None:
        try:
            while data := await src.read(65536):
                await flowing.wait()
                if link.dead:
                    return
                dst.write(data)
                await dst.drain()
        except (OSError, RuntimeError):
            pass
        cls._kill(link)  # one side ended: end the other too


# ---------------------------------------------------------------- requests and room state


async def test_rooms_requests_errors_and_state(gw: GatewayProcess, tmp_path: Path) -> None:
    device_file = tmp_path / "device"
    host = RoomcastClient([gw.url], device_file=device_file)
    guest = RoomcastClient(gw.url)
    states: list[str] = []
    host.on("state", states.append)
    async with clients(host, guest):
        assert host.welcome is not None
        assert device_file.read_text().split() == [host.device_id, host.welcome["device_token"]]
        assert states == ["connecting", "open"]
        room_id = unique("cli")
        room = await host.create_room(game_type="quiz", room_id=room_id, max_players=3,
                                      game_data={"round": 1, "scores": {}}, password="hunter22")
        assert (room.id, room.role, room.state["status"]) == (room_id, "host", "waiting")
        assert room.epoch  # room_created has none: the client asked for it
        with pytest.raises(RoomcastError) as exc:
            await guest.join(room_id, password="wrong")
        assert exc.value.code == "forbidden"
        with pytest.raises(RoomcastError) as exc:
            await guest.join(unique("nope"))
        assert exc.value.code == "not_found"
        with pytest.raises(RoomcastError) as exc:
            await guest.join("bad room!")
        assert exc.value.code == "bad_request"  # refused before sending
        groom = await guest.join(room_id, role="spectator", password="hunter22")
        assert groom.role == "spectator" and groom.epoch == room.epoch
        assert await guest.join(room_id) is groom
        stream = groom.events()
        seq = await room.update(status="in_progress", patch={"round": 2, "scores": {"a": 3}})
        assert (await room.send("question", {"n": 1}, action="ask")) == seq + 1
        with pytest.raises(RoomcastError) as exc:
            await groom.update(status="completed")
        assert exc.value.code == "forbidden"
        with pytest.raises(RoomcastError) as exc:
            await room.send("participant_left")
        assert exc.value.code == "bad_request"
        await wait_for(lambda: groom.seq == room.seq == seq + 1)
        for r in (room, groom):
            assert r.state["status"] == "in_progress"
            assert r.state["game_data"] == {"round": 2, "scores": {"a": 3}}
            assert {p["device_id"]: p["role"] for p in r.participants} == {
                host.device_id: "host", guest.device_id: "spectator"}
        listed = await guest.list_rooms(game_type="quiz")
        assert room_id not in [r["room_id"] for r in listed]  # password rooms are not listed
        open_room = await guest.create_room(game_type=unique("gt"))
        assert [r["room_id"] for r in await host.list_rooms(game_type=open_room.state["game_type"])] == [open_room.id]
        closed: list[Msg] = []
        groom.on("closed", closed.append)
        close_seq = await room.close()
        got = [ev async for ev in stream]  # ends when the room closes
        assert [e["seq"] for e in got] == list(range(got[0]["seq"], close_seq + 1))
        assert got[-1]["event_type"] == "room_closed" and [c["seq"] for c in closed] == [close_seq]
        assert room_id not in guest.rooms and groom.ended and groom.ended_reason == "room_closed"
        with pytest.raises(RoomcastError) as exc:
            await groom.send("late")
        assert exc.value.code == "room_closed"
        open_room.on("closed", closed.append)
        await open_room.leave()
        assert open_room.ended_reason == "left" and open_room.id not in guest.rooms
        assert len(closed) == 1  # leaving emits nothing
    assert host.state == guest.state == "closed"


async def test_oversized_frames_are_refused_locally_and_1009_is_final(gw: GatewayProcess) -> None:
    careful = RoomcastClient([gw.url], backoff=FAST)
    careless = RoomcastClient([gw.url], backoff=FAST, max_frame_bytes=0)
    errors: list[RoomcastError] = []
    closes: list[Msg] = []
    careless.on("error", errors.append)
    careless.on("close", closes.append)
    async with clients(careful, careless):
        room = await careful.create_room(game_type="big")
        with pytest.raises(RoomcastError) as exc:
            await room.send("blob", {"x": "x" * 70_000})
        assert exc.value.code == "too_large" and careful.state == "open"
        assert await room.send("small", {"x": 1}) > 0
        other = await careless.join(room.id)
        with pytest.raises(RoomcastError) as exc:
            await other.send("blob", {"x": "x" * 70_000})
        assert (exc.value.code, exc.value.close_code) == ("policy_violation", 1009)
        assert careless.state == "closed" and errors[-1].close_code == 1009
        assert closes == [{"code": 1009, "reason": closes[0]["reason"], "will_reconnect": False}]


# ---------------------------------------------------------------- resume


@pytest.mark.parametrize("how", ["heartbeat_timeout", "socket_aborted"])
async def test_resume_after_a_dropped_socket_delivers_every_event_once(gw: GatewayProcess, how: str) -> None:
    host = RoomcastClient([gw.url], backoff=FAST)
    player = RoomcastClient([gw.url], backoff=FAST)
    closes: list[Msg] = []
    player.on("close", closes.append)
    async with clients(host, player):
        room = await host.create_room(game_type="quiz", max_players=4)
        proom = await player.join(room.id)
        seqs = record(proom)
        acked: list[int] = []
        stop = asyncio.Event()

        async def publish() -> None:
            n = 0
            while not stop.is_set():
                acked.append(await room.send("tick", {"n": n}))
                n += 1
                await asyncio.sleep(0.01)

        publisher = asyncio.create_task(publish())
        await wait_for(lambda: len(seqs) >= 5, what="events before the drop")
        if how == "heartbeat_timeout":
            player.pause_heartbeat()  # the gateway closes it with 4002
            expected = 4002
        else:
            player.abort_connection()
            expected = 1006
        await wait_for(lambda: bool(closes), timeout=HEARTBEAT_TIMEOUT_MS / 1000 + 5 * UNIT, what="close")
        await wait_for(lambda: player.state == "open", what="reconnected")
        at_resume = len(acked)
        await wait_for(lambda: len(acked) >= at_resume + 10, what="events after the resume")
        stop.set()
        await publisher
        await wait_for(lambda: proom.seq == room.seq, what="caught up")
        assert closes[0] == {"code": expected, "reason": closes[0]["reason"], "will_reconnect": True}
        assert_once_in_order(seqs, room.seq)
        assert set(acked) <= set(seqs)
        assert proom.role == "player" and player.rooms[room.id] is proom
        me = next(p for p in room.participants if p["device_id"] == player.device_id)
        assert (me["role"], me["status"]) == ("player", "active")


async def test_stalled_link_times_out_requests_and_is_given_up(gw: GatewayProcess) -> None:
    """A half-open link: nothing arrives, nothing errors. Requests time out, and the heartbeat
    notices the silence, gives the socket up (4000) and resumes on a new one."""
    host = RoomcastClient([gw.url], backoff=FAST)
    async with LinkProxy(gw.port) as proxy:
        player = RoomcastClient([proxy.url], backoff=FAST, request_timeout=0.3 * UNIT)
        closes: list[Msg] = []
        player.on("close", closes.append)
        async with clients(host, player):
            room = await host.create_room(game_type="quiz")
            proom = await player.join(room.id)
            seqs = record(proom)
            await room.send("before")
            await wait_for(lambda: proom.seq == room.seq)
            proxy.stall()
            with pytest.raises(RoomcastError) as exc:
                await player.list_rooms()
            assert exc.value.code == "timeout"
            for n in range(5):
                await room.send("during", {"n": n})
            await wait_for(lambda: bool(closes), timeout=HEARTBEAT_TIMEOUT_MS / 1000 + 5 * UNIT, what="given up")
            assert closes[0]["code"] == CLIENT_GAVE_UP
            await wait_for(lambda: player.state == "open" and proom.seq == room.seq, what="resumed")
            assert_once_in_order(seqs, room.seq)


@pytest.mark.parametrize("lost", ["reply", "request"])
async def test_a_send_whose_socket_died_is_applied_exactly_once(gw: GatewayProcess, lost: str) -> None:
    """The socket dies with a send unanswered. Either the gateway applied it and the reply was
    lost (then the resume finds its event and the send resolves with that seq), or the request
    never arrived (then it is sent again after the resume). Never twice, never lost."""
    host = RoomcastClient([gw.url], backoff=FAST)
    async with LinkProxy(gw.port) as proxy:
        player = RoomcastClient([proxy.url], backoff=FAST)
        async with clients(host, player):
            room = await host.create_room(game_type="quiz")
            proom = await player.join(room.id)
            seen: list[Msg] = []
            room.on("event", seen.append)
            await wait_for(lambda: proom.seq == room.seq)
            if lost == "reply":
                proxy.stall(up=False, down=True)  # the gateway gets it; nothing comes back
            else:
                proxy.stall(up=True, down=False)  # it never reaches the gateway
            sending = asyncio.create_task(proom.send("move", {"square": "e4"}))
            if lost == "reply":
                await wait_for(lambda: any(e["event_type"] == "move" for e in seen), what="applied")
            await room.send("meanwhile")
            seq = await asyncio.wait_for(sending, HEARTBEAT_TIMEOUT_MS / 1000 + 10 * UNIT)
            await wait_for(lambda: proom.seq == room.seq, what="caught up")
            moves = [e for e in seen if e["event_type"] == "move"]
            assert [e["seq"] for e in moves] == [seq]
            meanwhile = next(e["seq"] for e in seen if e["event_type"] == "meanwhile")
            # Found in the replay keeps its place; sent again comes after the resume.
            assert (seq < meanwhile) if lost == "reply" else (seq > meanwhile)


async def test_a_lost_ack_when_the_room_cannot_be_replayed_is_resent_with_its_key_and_applied_once() -> None:
    """The reply of a send is lost, and by the time the client is back the room has moved on so
    far that it cannot be replayed (`recovered: false`, same epoch). The old client could only
    fail such a send (`disconnected`: unknown outcome); with its idempotency key it is sent
    again, the gateway recognises the key and acks the first seq: applied once, resolved."""
    with gateway({"WEBSOCKET_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT_MS), "ROOM_HISTORY_MAXLEN": "10",
                  "MAX_CONNECTIONS_PER_DEVICE": "2"}) as g:
        host = RoomcastClient([g.url], backoff=FAST)
        async with LinkProxy(g.port) as proxy:
            player = RoomcastClient([proxy.url], backoff=FAST)
            async with clients(host, player):
                room = await host.create_room(game_type="quiz")
                proom = await player.join(room.id)
                resets: list[Msg] = []
                proom.on("reset", resets.append)
                seen: list[Msg] = []
                room.on("event", seen.append)
                await wait_for(lambda: proom.seq == room.seq)
                proxy.stall(up=False, down=True)  # the gateway gets the send; nothing comes back
                sending = asyncio.create_task(proom.send("move", {"square": "e4"}))
                await wait_for(lambda: any(e["event_type"] == "move" for e in seen), what="applied")
                for n in range(15):  # more than ROOM_HISTORY_MAXLEN: the replay is gone
                    await room.send("tick", {"n": n})
                seq = await asyncio.wait_for(sending, HEARTBEAT_TIMEOUT_MS / 1000 + 10 * UNIT)
                assert resets, "the resume was not recovered (the case under test)"
                moves = [e for e in seen if e["event_type"] == "move"]
                assert [e["seq"] for e in moves] == [seq], "applied once, resolved with its seq"
                await room.send("after")
                await wait_for(lambda: proom.seq == room.seq, what="caught up")
                assert [e["event_type"] for e in seen].count("move") == 1


async def test_offline_sends_are_queued_bounded_and_sent_in_order_after_resume(gw: GatewayProcess) -> None:
    host = RoomcastClient([gw.url], backoff=FAST)
    async with LinkProxy(gw.port) as proxy:
        player = RoomcastClient([proxy.url], backoff=FAST, max_queue=12)
        async with clients(host, player):
            room = await host.create_room(game_type="queue")
            proom = await player.join(room.id)
            moves: list[int] = []
            room.on("event", lambda ev: moves.append(ev["payload"]["n"]) if ev["event_type"] == "move" else None)
            proxy.cut()
            await wait_for(lambda: player.state != "open", what="disconnected")
            sends = [asyncio.create_task(proom.send("move", {"n": n})) for n in range(12)]
            await wait_for(lambda: player.queued == 12)
            with pytest.raises(RoomcastError) as exc:
                await proom.send("move", {"n": 12})
            assert exc.value.code == "queue_full"
            proxy.restore()
            seqs = await asyncio.wait_for(asyncio.gather(*sends), 10 * UNIT)
            assert seqs == sorted(seqs) and len(set(seqs)) == 12
            await wait_for(lambda: len(moves) == 12)
            assert moves == list(range(12))
            assert player.queued == 0 and player.state == "open"


async def test_rate_limited_requests_are_sent_again() -> None:
    with gateway({"RATE_MESSAGES_BURST": "4", "RATE_MESSAGES_PER_SEC": "40"}) as g:
        host = RoomcastClient([g.url], backoff=FAST)
        async with LinkProxy(g.port) as proxy:
            player = RoomcastClient([proxy.url], backoff=FAST)
            async with clients(host, player):
                room = await host.create_room(game_type="limits")
                proom = await player.join(room.id)
                moves: list[int] = []
                room.on("event", lambda ev: moves.append(ev["payload"]["n"]) if ev["event_type"] == "move" else None)
                proxy.cut()
                await wait_for(lambda: player.state != "open", what="disconnected")
                sends = [asyncio.create_task(proom.send("move", {"n": n})) for n in range(16)]
                before = await metric(g, 'roomcast_rate_limited_total{limit="messages"}')
                proxy.restore()  # hello, the resume and 16 sends against a bucket of 4
                seqs = await asyncio.wait_for(asyncio.gather(*sends), 10 * UNIT)
                assert len(set(seqs)) == 16
                await wait_for(lambda: len(moves) == 16)
                assert sorted(moves) == list(range(16))  # each once (order: see max_in_flight)
                assert await metric(g, 'roomcast_rate_limited_total{limit="messages"}') > before


async def test_reset_when_the_missed_events_are_no_longer_kept() -> None:
    with gateway({"ROOM_HISTORY_MAXLEN": "10"}) as g:
        host = RoomcastClient([g.url], backoff=FAST)
        async with LinkProxy(g.port) as proxy:
            player = RoomcastClient([proxy.url], backoff=FAST)
            async with clients(host, player):
                room = await host.create_room(game_type="reset", game_data={"round": 0})
                proom = await player.join(room.id)
                resets: list[Msg] = []
                proom.on("reset", lambda state: resets.append(dict(state)))
                stream = proom.events()
                await room.send("before")
                await wait_for(lambda: proom.seq == room.seq)
                proxy.cut()
                await wait_for(lambda: player.state != "open", what="disconnected")
                for n in range(30):  # three times what the room keeps
                    await room.send("missed", {"n": n})
                await room.update(status="in_progress", patch={"round": 1})
                proxy.restore()
                await wait_for(lambda: bool(resets), what="reset")
                assert len(resets) == 1
                assert resets[0]["game_data"] == {"round": 1} and resets[0]["status"] == "in_progress"
                reset_at = resets[0]["seq"]
                await room.send("after")
                await wait_for(lambda: proom.seq == room.seq, what="caught up")
                items: list[Msg] = []
                while not items or items[-1]["event_type"] != "after":
                    items.append(await asyncio.wait_for(stream.__anext__(), 5 * UNIT))
                stream.close()
                before = [e for e in items if e["seq"] <= reset_at]
                assert before[-1]["event_type"] == "before"  # then the drop: nothing until the reset
                assert [e["seq"] for e in before] == list(range(before[0]["seq"], before[-1]["seq"] + 1))
                assert [e["seq"] for e in items[len(before):]] == list(range(reset_at + 1, room.seq + 1))
                assert not any(e["event_type"] == "missed" for e in items)
                assert {p["device_id"]: p["role"] for p in proom.participants} == {
                    host.device_id: "host", player.device_id: "player"}


async def test_close_then_connect_resumes_and_a_restarted_client_adopts_its_rooms(
        gw: GatewayProcess, tmp_path: Path) -> None:
    device_file = tmp_path / "device"
    host = RoomcastClient([gw.url], backoff=FAST)
    first = RoomcastClient([gw.url], backoff=FAST, device_file=device_file)
    async with clients(host, first):
        room = await host.create_room(game_type="adopt")
        mine = await first.join(room.id, role="spectator")
        seqs = record(mine)
        await first.close()  # rooms are kept, not left
        assert first.state == "closed" and not mine.ended
        for n in range(3):
            await room.send("while_closed", {"n": n})
        await first.connect(timeout=10 * UNIT)
        await wait_for(lambda: mine.seq == room.seq, what="resumed after connect()")
        assert_once_in_order(seqs, room.seq)
        await first.close()
        again = RoomcastClient([gw.url], backoff=FAST, device_file=device_file)  # a restart
        adopted: list[Room] = []
        again.on("room", adopted.append)
        async with clients(again):
            assert again.device_id == first.device_id
            await wait_for(lambda: bool(adopted), what="room adopted")
            (back,) = adopted
            assert (back.id, back.role) == (room.id, "spectator") and again.rooms[room.id] is back
            later = record(back)
            seq = await room.send("after_restart")
            await wait_for(lambda: back.seq == seq)
            assert later[-1] == seq


# ---------------------------------------------------------------- close codes


async def _busy_until_a_place_frees(url: str, client: RoomcastClient, code: int, holders: list[Client]) -> None:
    """`holders` take every place; the client must back off longer on `code` until they go."""
    closes: list[Msg] = []
    waits: list[Msg] = []
    client.on("close", closes.append)
    client.on("reconnecting", waits.append)
    try:
        connecting = asyncio.create_task(client.connect(timeout=15 * UNIT))
        await wait_for(lambda: sum(c["code"] == code for c in closes) >= 2, what=f"two {code} closes")
        assert client.state == "reconnecting" and not connecting.done()
        for holder in holders:
            await holder.ws.close()
        await connecting  # a place is free: the next attempt gets in
        assert client.state == "open"
        assert all(c["code"] == code and c["will_reconnect"] for c in closes)
        base, cap = client.backoff
        for w in waits:
            # "busy": the ceiling is eight times the normal one, and at least half of it is waited.
            assert w["delay"] >= min(cap, base * 8 * 2 ** w["attempt"]) / 2
    finally:
        await client.close()


async def test_4008_too_many_sockets_for_the_device_backs_off_longer(gw: GatewayProcess) -> None:
    device = unique("dev-limit")
    async with contextlib.AsyncExitStack() as stack:
        holders = [await stack.enter_async_context(Client.open(gw.url)) for _ in range(PER_DEVICE)]
        token = (await holders[0].hello(device))["device_token"]
        await holders[1].hello(device, device_token=token)
        for holder in holders:
            await stack.enter_async_context(holder.keepalive(HEARTBEAT_TIMEOUT_MS / 4000))
        client = RoomcastClient([gw.url], device_id=device, device_token=token, backoff=FAST)
        await _busy_until_a_place_frees(gw.url, client, 4008, holders)


async def test_1013_replica_full_backs_off_longer() -> None:
    with gateway({"MAX_CONNECTIONS": "1"}) as g:
        async with Client.open(g.url) as holder:
            client = RoomcastClient([g.url], backoff=FAST)
            await _busy_until_a_place_frees(g.url, client, 1013, [holder])


async def test_refused_origin_1008_is_not_retried(gw: GatewayProcess) -> None:
    client = RoomcastClient([gw.url], backoff=FAST, origin="https://evil.example")
    errors: list[RoomcastError] = []
    events: list[str] = []
    client.on("error", errors.append)
    client.on("reconnecting", lambda _: events.append("reconnecting"))
    client.on("close", lambda c: events.append(f"close {c['code']} {c['will_reconnect']}"))
    with pytest.raises(RoomcastError) as exc:
        await client.connect(timeout=5 * UNIT)
    assert (exc.value.code, exc.value.close_code) == ("policy_violation", 1008)
    assert client.state == "closed" and [e.close_code for e in errors] == [1008]
    opened = await metric(gw, "roomcast_connections_opened_total")
    await asyncio.sleep(3 * FAST[1])  # several backoff periods: nothing may happen in them
    assert events == ["close 1008 False"]
    assert await metric(gw, "roomcast_connections_opened_total") == opened
    with pytest.raises(RoomcastError) as exc:
        await client.list_rooms()
    assert exc.value.code == "closed"
    good = RoomcastClient([gw.url], origin=ALLOWED_ORIGIN)
    async with clients(good):
        assert good.state == "open"
