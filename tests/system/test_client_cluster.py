"""roomcast_client against a 2-replica cluster: when the replica a client is on goes away
(SIGKILL, SIGTERM, SIGTERM with a drain window), the client fails over to the other URL,
resumes its room there and delivers every event exactly once, keeping its role."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import pytest

from roomcast_client import Room, RoomcastClient
from tests.harness import UNIT, cluster, wait_for

pytestmark = pytest.mark.system

HEARTBEAT_TIMEOUT_MS = 1500
FAST = (0.05 * UNIT, 0.5 * UNIT)
Msg = dict[str, Any]

# how the replica goes -> (extra settings, close code its clients see)
CASES = {
    "sigkill": ({}, 1006),  # no close frame: the process is gone
    "sigterm": ({}, 1001),  # reconnect now
    "drain": ({"DRAIN_WINDOW": "600"}, 1012),  # reconnect now, the closes spread over the window
}


class Member:
    """One client of the room on the replica that goes, with everything it observed."""

    def __init__(self, urls: list[str]) -> None:
        self.client = RoomcastClient(urls, backoff=FAST)
        self.closes: list[Msg] = []
        self.welcomes: list[Msg] = []
        self.waits: list[Msg] = []
        self.seqs: list[int] = []
        self.room: Room | None = None
        self.client.on("close", self.closes.append)
        self.client.on("welcome", self.welcomes.append)
        self.client.on("reconnecting", self.waits.append)

    async def join(self, room_id: str, role: str) -> None:
        await self.client.connect(timeout=10 * UNIT)
        self.room = await self.client.join(room_id, role=role)
        self.room.on("event", lambda ev: self.seqs.append(ev["seq"]))

    def resumed_on(self, node: str) -> bool:
        return (self.client.state == "open" and len(self.welcomes) >= 2
                and self.welcomes[-1]["node"] == node)


@pytest.mark.parametrize("how", list(CASES))
async def test_replica_loss_fails_over_and_resumes_exactly_once(how: str) -> None:
    extra, code = CASES[how]
    env = {"WEBSOCKET_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT_MS), **extra}
    with cluster(2, 1, env) as c:
        leaving, staying = c.gateways
        host = RoomcastClient([staying.url], backoff=FAST)
        player = Member([leaving.url, staying.url])
        spectator = Member([leaving.url, staying.url])
        try:
            await host.connect(timeout=10 * UNIT)
            room = await host.create_room(game_type="trivia", max_players=4)
            await player.join(room.id, "player")
            await spectator.join(room.id, "spectator")
            assert player.welcomes[0]["node"] == spectator.welcomes[0]["node"] == "gw-0"
            acked: list[int] = []
            stop = asyncio.Event()

            async def publish() -> None:
                n = 0
                while not stop.is_set():
                    acked.append(await room.send("tick", {"n": n}))
                    n += 1
                    await asyncio.sleep(0.01)

            publisher = asyncio.create_task(publish())
            await wait_for(lambda: len(player.seqs) >= 10 and len(spectator.seqs) >= 10, what="events flowing")
            if how == "sigkill":
                leaving.kill()
            else:
                leaving.signal(signal.SIGTERM)
            await wait_for(lambda: player.resumed_on("gw-1") and spectator.resumed_on("gw-1"),
                           timeout=10 * UNIT, what="both resumed on the other replica")
            at_resume = len(acked)
            await wait_for(lambda: len(acked) >= at_resume + 20, what="events after the resume")
            if how == "sigkill":
                # The coordinator reaps the dead replica's two sockets only after the heartbeat
                # timeout; that must not undo the resume (checked below).
                coordinator = c.coordinators[0]

                async def reaped() -> bool:
                    n = await asyncio.to_thread(coordinator.metric, "roomcast_reaper_timeouts_total")
                    return (n or 0) >= 2

                await wait_for(reaped, timeout=HEARTBEAT_TIMEOUT_MS / 1000 + 10 * UNIT, interval=0.1,
                               what="the coordinator reaped the dead sockets")
            stop.set()
            await publisher
            for m in (player, spectator):
                assert m.room is not None
                await wait_for(lambda m=m: m.room.seq == room.seq, what="caught up")  # type: ignore[misc]
                assert m.closes[0] == {"code": code, "reason": m.closes[0]["reason"], "will_reconnect": True}
                # The first retry after a working socket: "now" is only a little jitter, and
                # the dead replica's refusal is not waited for: the next URL is the other one.
                assert m.waits[0]["attempt"] == 0 and m.waits[0]["delay"] < FAST[0]
                assert [w["node"] for w in m.welcomes] == ["gw-0", "gw-1"]
                assert m.seqs == list(range(m.seqs[0], room.seq + 1)), f"gap or duplicate: {m.seqs}"
                assert set(acked) <= set(m.seqs)
            # Roles are kept: in the resumed welcome, on each client, and in the room's view.
            assert player.room is not None and spectator.room is not None
            assert (player.room.role, spectator.room.role) == ("player", "spectator")
            for m, role in ((player, "player"), (spectator, "spectator")):
                assert [r["role"] for r in m.welcomes[-1]["rooms"] if r["room_id"] == room.id] == [role]
            observer = RoomcastClient([staying.url])
            await observer.connect(timeout=10 * UNIT)
            try:
                seen = await observer.join(room.id, role="spectator")
                roles = {p["device_id"]: (p["role"], p["status"]) for p in seen.participants}
            finally:
                await observer.close()
            assert roles[player.client.device_id] == ("player", "active")
            assert roles[spectator.client.device_id] == ("spectator", "active")
            for view in (room, player.room, spectator.room):
                mine = {p["device_id"]: (p["role"], p["status"]) for p in view.participants}
                assert mine[player.client.device_id] == ("player", "active"), (view, mine)
                assert mine[spectator.client.device_id] == ("spectator", "active"), (view, mine)
        finally:
            for cl in (host, player.client, spectator.client):
                await cl.close()
