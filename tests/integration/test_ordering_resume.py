"""One room, one order: concurrent senders, a dropped socket, and resume with `since`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import connect

from tests.harness import UNIT, Client, GatewayProcess, gateway, unique

Msg = dict[str, Any]


class Recorder:
    """Every message of one client in arrival order (its queued messages first).

    Tests that check order read only through a recorder, never with `Client.expect`,
    which takes matching messages out of order.
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self.log: list[Msg] = []

    async def until(self, done: Callable[[Recorder], bool], timeout: float = 10 * UNIT) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not done(self):
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"condition not met; last messages: {self.log[-5:]}")
            self.log.append(await self.client.recv(timeout=left))

    async def until_seq(self, room_id: str, seq: int, ids: list[str] | tuple[str, ...] = ()) -> None:
        """Until the room's event `seq` has arrived, and the acks of `ids`."""
        await self.until(lambda r: r.head(room_id) >= seq and set(ids) <= set(r.acks()))

    def events(self, room_id: str, after: int = 0) -> list[Msg]:
        return [m for m in self.log
                if m.get("type") == "event" and m.get("room_id") == room_id and m["seq"] > after]

    def head(self, room_id: str) -> int:
        return max((e["seq"] for e in self.events(room_id)), default=0)

    def acks(self) -> dict[str, int]:
        return {m["re"]: m["seq"] for m in self.log if m.get("type") == "ack"}


def assert_gap_free(seqs: list[int], first: int, last: int) -> None:
    assert seqs == list(range(first, last + 1)), f"expected {first}..{last} in order, got {seqs}"


def key(ev: Msg) -> tuple[Any, ...]:
    return ev["seq"], ev["event_type"], ev["action"], ev["payload"], ev["from"], ev["ts"]


async def send_events(c: Client, room_id: str, tag: str, n: int) -> list[str]:
    """Fire n events without waiting for acks; return their ids."""
    ids = []
    for i in range(n):
        mid = f"{tag}-{i}"
        ids.append(mid)
        await c.send({"type": "event", "id": mid, "room_id": room_id, "event_type": "move",
                      "action": tag, "payload": {"sender": tag, "i": i}})
        await asyncio.sleep(0)  # let the other senders interleave
    return ids


async def test_concurrent_events_drop_and_resume() -> None:
    """THE key scenario: identical gap-free order on every socket, then exact resume."""
    room_id = unique("room")
    dev = {name: unique(f"dev-{name}") for name in "abc"}
    n = 40
    with gateway() as gw:
        await scenario(gw, room_id, dev, n)


async def scenario(gw: GatewayProcess, room_id: str, dev: dict[str, str], n: int) -> None:
    async with Client.open(gw.url) as a, Client.open(gw.url) as b:
        c = Client(await connect(gw.url, compression=None, ping_interval=None))
        try:
            for name, cl in zip("abc", (a, b, c), strict=True):
                await cl.hello(dev[name])
            await a.request({"type": "create_room", "room_id": room_id, "game_type": "race",
                             "spectators_can_send": True})
            assert (await b.request({"type": "join", "room_id": room_id}))["seq"] == 1
            joined_c = await c.request({"type": "join", "room_id": room_id, "role": "spectator"})
            assert joined_c["seq"] == 2 and joined_c["role"] == "spectator"
            epoch = joined_c["epoch"]
            head = 3  # host joined, b joined, c joined
            ra, rb, rc = Recorder(a), Recorder(b), Recorder(c)

            # ---- phase 1: three senders at once
            sent = await asyncio.gather(*(send_events(cl, room_id, name, n)
                                          for name, cl in zip("abc", (a, b, c), strict=True)))
            last = head + 3 * n
            for name, rec, ids in zip("abc", (ra, rb, rc), sent, strict=True):
                await rec.until_seq(room_id, last, ids)
                evs = rec.events(room_id)
                first = {"a": 1, "b": 2, "c": 3}[name]  # each socket's first event: seq after its joined.seq
                assert_gap_free([e["seq"] for e in evs], first, last)
                # Every ack names the seq at which that very event was delivered.
                by_seq = {e["seq"]: e for e in evs}
                assert len(rec.acks()) == n
                for mid, seq in rec.acks().items():
                    assert by_seq[seq]["payload"] == {"sender": name, "i": int(mid.rsplit("-", 1)[1])}
                    assert by_seq[seq]["from"]["device_id"] == dev[name]
            # Identical events (not just seqs) in identical order on every socket.
            tail = [key(e) for e in ra.events(room_id, head)]
            assert [key(e) for e in rb.events(room_id, head)] == tail
            assert [key(e) for e in rc.events(room_id, head)] == tail
            # Each sender's events keep the order it sent them in.
            for name in "abc":
                mine = [e for e in ra.events(room_id, head) if e["action"] == name]
                assert [e["payload"]["i"] for e in mine] == list(range(n))
                assert {e["from"]["device_id"] for e in mine} == {dev[name]}

            # ---- phase 2: c drops mid-stream while a and b keep sending
            burst = asyncio.gather(send_events(a, room_id, "a2", n), send_events(b, room_id, "b2", n))
            await rc.until_seq(room_id, last + 5)
        finally:
            # The link drops (no close handshake, no `leave`): the rest of its stream is lost.
            c.ws.transport.abort()
            await c.ws.wait_closed()
        c_seen = [e["seq"] for e in rc.events(room_id, last)]
        c_last = c_seen[-1]
        assert_gap_free(c_seen, last + 1, c_last)
        sent2 = await burst

        # The others see it disconnect (not time out), once, at the same seq.
        disconnect_at = last + 2 * n + 1
        for rec, ids in ((ra, sent2[0]), (rb, sent2[1])):
            await rec.until_seq(room_id, disconnect_at, ids)
            gone = [e for e in rec.events(room_id, last) if e["event_type"] == "participant_disconnected"]
            assert len(gone) == 1, gone
            assert gone[0]["payload"]["device_id"] == dev["c"]
            assert gone[0]["payload"]["role"] == "spectator"
            assert gone[0]["payload"].get("reason") != "timeout"
            assert gone[0]["from"] is None
            assert gone[0]["seq"] > c_last

        # ---- phase 3: more events while c is away
        sent3 = await asyncio.gather(send_events(a, room_id, "a3", 10), send_events(b, room_id, "b3", 10))
        away_head = disconnect_at + 20
        for rec, ids in ((ra, sent3[0]), (rb, sent3[1])):
            await rec.until_seq(room_id, away_head, ids)
            assert_gap_free([e["seq"] for e in rec.events(room_id, last)], last + 1, away_head)
        assert [key(e) for e in ra.events(room_id, last)] == [key(e) for e in rb.events(room_id, last)]
        history = {e["seq"]: e for e in ra.events(room_id)}

        # ---- phase 4: c comes back on a new socket and resumes while a and b keep sending
        async with Client.open(gw.url) as c2:
            welcome = await c2.hello(dev["c"])
            assert welcome["reconnect_count"] == 1
            assert welcome["rooms"] == [{"room_id": room_id, "role": "spectator", "seq": away_head}]
            live = asyncio.gather(send_events(a, room_id, "a4", 15), send_events(b, room_id, "b4", 15))
            rejoin = await c2.request({"type": "join", "room_id": room_id, "since": c_last, "epoch": epoch,
                                       "role": "player"})
            sent4 = await live
            assert rejoin["type"] == "joined"
            assert rejoin["recovered"] is True
            assert rejoin["epoch"] == epoch
            assert rejoin["role"] == "spectator"  # keeps its role whatever it asks for
            join_head = rejoin["seq"]
            assert away_head <= join_head
            final = away_head + 1 + 30  # + participant_reconnected + the live events
            rc2 = Recorder(c2)
            await rc2.until_seq(room_id, final)
            evs = rc2.events(room_id)
            # Exactly the missed events, then the live ones: no gap, no duplicate.
            assert_gap_free([e["seq"] for e in evs], c_last + 1, final)
            for e in evs:
                if e["seq"] <= away_head:
                    assert key(e) == key(history[e["seq"]])
            reconnected = [e for e in evs if e["event_type"] == "participant_reconnected"]
            assert len(reconnected) == 1 and reconnected[0]["seq"] > join_head
            assert reconnected[0]["payload"]["device_id"] == dev["c"]
            assert reconnected[0]["payload"]["role"] == "spectator"
            assert reconnected[0]["from"]["device_id"] == dev["c"]

            for rec, ids in ((ra, sent4[0]), (rb, sent4[1])):
                await rec.until_seq(room_id, final, ids)
                evs = rec.events(room_id, away_head)
                assert_gap_free([e["seq"] for e in evs], away_head + 1, final)
                assert [key(e) for e in evs] == [key(e) for e in rc2.events(room_id, away_head)]
                rec_ev = [e for e in evs if e["event_type"] == "participant_reconnected"]
                assert [e["payload"] for e in rec_ev] == [{"device_id": dev["c"], "role": "spectator"}]
            # The participant list shows it active again, with its old role, once.
            async with Client.open(gw.url) as d:
                await d.hello(unique("dev-d"))
                snap = await d.request({"type": "join", "room_id": room_id, "role": "spectator"})
                mine = [p for p in snap["participants"] if p["device_id"] == dev["c"]]
                assert [(p["role"], p["status"]) for p in mine] == [("spectator", "active")]


async def test_resume_at_head_recovers_with_nothing_to_replay(gw: GatewayProcess) -> None:
    room_id = unique("room")
    async with Client.open(gw.url) as host:
        await host.hello(unique("dev-h"))
        await host.request({"type": "create_room", "room_id": room_id, "game_type": "t"})
        dev = unique("dev-p")
        async with Client.open(gw.url) as p:
            await p.hello(dev)
            joined = await p.request({"type": "join", "room_id": room_id})
            seen = (await p.expect(type="event", room_id=room_id))["seq"]
        await host.expect(type="event", room_id=room_id, event_type="participant_disconnected")
        async with Client.open(gw.url) as p:
            await p.hello(dev)
            # Its own participant_disconnected happened after `seen`: it is replayed.
            again = await p.request({"type": "join", "room_id": room_id, "since": seen, "epoch": joined["epoch"]})
            assert again["recovered"] is True and again["seq"] == seen + 1
            evs = await p.events(room_id, 2)
            assert [(e["seq"], e["event_type"]) for e in evs] == [
                (seen + 1, "participant_disconnected"), (seen + 2, "participant_reconnected")]
        # Dropped again right away: resuming at the head recovers with nothing to replay.
        gone = await host.expect(type="event", room_id=room_id, event_type="participant_disconnected")
        assert gone["seq"] == seen + 3
        async with Client.open(gw.url) as p:
            await p.hello(dev)
            at_head = await p.request({"type": "join", "room_id": room_id, "since": seen + 3,
                                       "epoch": joined["epoch"]})
            assert at_head["recovered"] is True and at_head["seq"] == seen + 3
            ev = await p.expect(type="event", room_id=room_id)
            assert (ev["seq"], ev["event_type"]) == (seen + 4, "participant_reconnected")
            ack = await host.request({"type": "event", "room_id": room_id, "event_type": "next"})
            ev = await p.expect(type="event", room_id=room_id)
            assert ev["seq"] == ack["seq"] == seen + 5


async def test_join_without_since_is_not_recovered(gw: GatewayProcess) -> None:
    async with Client.open(gw.url) as host:
        await host.hello(unique("dev-h"))
        room_id = (await host.request({"type": "create_room", "game_type": "t"}))["room"]["room_id"]
        async with Client.open(gw.url) as p:
            await p.hello(unique("dev-p"))
            joined = await p.request({"type": "join", "room_id": room_id})
            assert joined["recovered"] is False
            # No replay of the room's earlier events: the first event it sees is its own join.
            ev = await p.expect(type="event", room_id=room_id)
            assert ev["seq"] == joined["seq"] + 1 and ev["event_type"] == "participant_joined"


async def test_wrong_epoch_is_not_recovered(gw: GatewayProcess) -> None:
    room_id = unique("room")
    dev = unique("dev-p")
    async with Client.open(gw.url) as host:
        await host.hello(unique("dev-h"))
        await host.request({"type": "create_room", "room_id": room_id, "game_type": "t"})
        async with Client.open(gw.url) as p:
            await p.hello(dev)
            joined = await p.request({"type": "join", "room_id": room_id})
            seen = (await p.expect(type="event", room_id=room_id))["seq"]
        await host.expect(type="event", room_id=room_id, event_type="participant_disconnected")
        for i in range(3):
            await host.request({"type": "event", "room_id": room_id, "event_type": "missed", "payload": {"i": i}})
        async with Client.open(gw.url) as p:
            await p.hello(dev)
            wrong = "0" if joined["epoch"] != "0" else "1"
            again = await p.request({"type": "join", "room_id": room_id, "since": seen, "epoch": wrong})
            assert again["type"] == "joined"
            assert again["recovered"] is False
            assert again["epoch"] == joined["epoch"]
            # Nothing is replayed: the first event it gets is after the join's head.
            ev = await p.expect(type="event", room_id=room_id)
            assert ev["seq"] == again["seq"] + 1 and ev["event_type"] == "participant_reconnected"
            assert again["room"]["seq"] == again["seq"]


async def test_since_beyond_head_is_not_recovered(gw: GatewayProcess) -> None:
    async with Client.open(gw.url) as host:
        await host.hello(unique("dev-h"))
        created = await host.request({"type": "create_room", "game_type": "t"})
        room_id = created["room"]["room_id"]
        async with Client.open(gw.url) as p:
            await p.hello(unique("dev-p"))
            first = await p.request({"type": "join", "room_id": room_id})
            again = await p.request({"type": "join", "room_id": room_id, "since": 1000, "epoch": first["epoch"]})
            assert again["recovered"] is False


async def test_since_older_than_history_is_not_recovered() -> None:
    with gateway({"ROOM_HISTORY_MAXLEN": "10"}) as gw:
        room_id = unique("room")
        dev = unique("dev-p")
        async with Client.open(gw.url) as host:
            await host.hello(unique("dev-h"))
            await host.request({"type": "create_room", "room_id": room_id, "game_type": "t"})
            async with Client.open(gw.url) as p:
                await p.hello(dev)
                joined = await p.request({"type": "join", "room_id": room_id})
                seen = (await p.expect(type="event", room_id=room_id))["seq"]
            await host.expect(type="event", room_id=room_id, event_type="participant_disconnected")
            for i in range(15):
                await host.request({"type": "event", "room_id": room_id, "event_type": "missed", "payload": {"i": i}})
            async with Client.open(gw.url) as p:
                await p.hello(dev)
                again = await p.request({"type": "join", "room_id": room_id, "since": seen,
                                         "epoch": joined["epoch"]})
                assert again["recovered"] is False
                assert again["epoch"] == joined["epoch"]
                ev = await p.expect(type="event", room_id=room_id)
                assert ev["seq"] == again["seq"] + 1 and ev["event_type"] == "participant_reconnected"
                # A since still inside the 10 kept events does recover, with exactly those events.
                head = ev["seq"]
                async with Client.open(gw.url) as p2:
                    await p2.hello(dev)
                    recent = await p2.request({"type": "join", "room_id": room_id, "since": head - 9,
                                               "epoch": joined["epoch"]})
                    assert recent["recovered"] is True and recent["seq"] == head
                    evs = await p2.events(room_id, 9)
                    assert [e["seq"] for e in evs] == list(range(head - 8, head + 1))
                    # One further back is gone.
                async with Client.open(gw.url) as p3:
                    await p3.hello(dev)
                    old = await p3.request({"type": "join", "room_id": room_id, "since": head - 11,
                                            "epoch": joined["epoch"]})
                    assert old["recovered"] is False


async def test_joiners_during_a_stream_see_every_event_after_their_join(gw: GatewayProcess) -> None:
    """Sockets that join while events flow get exactly the events after `joined.seq`."""
    room_id = unique("room")
    async with Client.open(gw.url) as host:
        await host.hello(unique("dev-host"))
        await host.request({"type": "create_room", "room_id": room_id, "game_type": "t", "max_players": 100})
        stop = asyncio.Event()

        async def stream() -> int:
            i = 0
            while not stop.is_set():
                await host.send({"type": "event", "room_id": room_id, "event_type": "tick", "payload": {"i": i}})
                i += 1
                await asyncio.sleep(0.002)
            return i

        streaming = asyncio.get_running_loop().create_task(stream())
        async with contextlib.AsyncExitStack() as stack:
            joiners = [await stack.enter_async_context(Client.open(gw.url)) for _ in range(8)]

            async def join(c: Client) -> Msg:
                await c.hello(unique("dev-joiner"))
                reply = await c.request({"type": "join", "room_id": room_id,
                                         "role": "spectator" if len(c.inbox) % 2 else "player"})
                assert reply["type"] == "joined", reply
                return reply

            replies = await asyncio.gather(*(join(c) for c in joiners))
            await host.request({"type": "ping"})
            stop.set()
            await streaming
            final = (await host.request({"type": "event", "room_id": room_id, "event_type": "end"}))["seq"]
            for c, reply in zip(joiners, replies, strict=True):
                rec = Recorder(c)
                await rec.until_seq(room_id, final)
                assert_gap_free([e["seq"] for e in rec.events(room_id)], reply["seq"] + 1, final)
