"""Rolling-update drain: one replica of two is drained under load."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from tests.harness import UNIT, Client, ahttp_get, cluster, unique

pytestmark = pytest.mark.system

DRAIN_MS = 3000


async def test_drained_replica_clients_resume_on_the_other_without_loss() -> None:
    with cluster(2, 1, {"DRAIN_WINDOW": str(DRAIN_MS), "RATE_MESSAGES_PER_SEC": "500",
                        "RATE_MESSAGES_BURST": "500"}) as c:
        leaving, staying = c.gateways
        room_id = unique("drain")
        async with Client.open(staying.url) as host:
            await host.hello(unique("host"))
            created = await host.request({"type": "create_room", "room_id": room_id, "game_type": "g",
                                          "max_players": 50})
            assert created["type"] == "room_created"
            n_clients = 8
            clients: list[dict[str, Any]] = []
            for i in range(n_clients):
                device = unique(f"p{i}")
                cm = Client.open(leaving.url)
                client = await cm.__aenter__()
                await client.hello(device)
                joined = await client.request({"type": "join", "room_id": room_id})
                clients.append({"device": device, "client": client, "cm": cm, "epoch": joined["epoch"],
                                "seqs": [], "closed_at": None, "code": None})
            stop = asyncio.Event()
            published: list[int] = []

            async def publish() -> None:
                n = 0
                started = time.monotonic()
                while not stop.is_set() and time.monotonic() - started < 60 * UNIT:
                    ack = await host.request({"type": "event", "room_id": room_id, "event_type": "tick",
                                              "payload": {"n": n}})
                    assert ack["type"] == "ack", ack
                    published.append(ack["seq"])
                    n += 1
                    await asyncio.sleep(0.005)

            async def follow(state: dict[str, Any]) -> None:
                client: Client = state["client"]
                try:
                    while True:
                        msg = await client.recv(30 * UNIT)
                        if msg.get("type") == "event" and msg.get("room_id") == room_id:
                            state["seqs"].append(msg["seq"])
                except ConnectionClosed as exc:
                    state["closed_at"] = time.monotonic()
                    state["code"] = exc.rcvd.code if exc.rcvd is not None else None
                # Reconnect to the other replica and resume from the last seq seen.
                async with Client.open(staying.url) as again:
                    await again.hello(state["device"])
                    last = state["seqs"][-1]
                    rejoined = await again.request({"type": "join", "room_id": room_id, "since": last,
                                                    "epoch": state["epoch"]})
                    assert rejoined["recovered"] is True, rejoined
                    while not stop.is_set() or not published or state["seqs"][-1] < published[-1]:
                        try:
                            msg = await again.recv(0.5 * UNIT)
                        except TimeoutError:
                            continue  # re-check: the publisher may have stopped
                        if msg.get("type") == "event" and msg.get("room_id") == room_id:
                            state["seqs"].append(msg["seq"])

            pub = asyncio.create_task(publish())
            followers = [asyncio.create_task(follow(s)) for s in clients]
            await asyncio.sleep(0.5 * UNIT)  # under load
            signalled = time.monotonic()
            leaving.signal(signal.SIGTERM)
            unready_at = None
            while unready_at is None:
                status, _ = await ahttp_get(leaving.http + "/readyz")
                if status == 503:
                    unready_at = time.monotonic()
                assert time.monotonic() - signalled < 2 * UNIT, "readiness did not turn false"
            # Wait for every client to have been closed and to resume elsewhere.
            deadline = time.monotonic() + DRAIN_MS / 1000 + 10 * UNIT
            while any(s["closed_at"] is None for s in clients):
                assert time.monotonic() < deadline, "not every client was closed by the drain"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5 * UNIT)
            stop.set()
            await pub
            await asyncio.wait_for(asyncio.gather(*followers), 20 * UNIT)
            for s in clients:
                with contextlib.suppress(Exception):
                    await s["cm"].__aexit__(None, None, None)
        closes = sorted(s["closed_at"] for s in clients)
        assert all(s["code"] == 1012 for s in clients), [s["code"] for s in clients]
        # Readiness turned false before the first socket was closed, and the closes were
        # spread over the window rather than all at once.
        assert unready_at is not None and closes[0] >= unready_at - 0.1
        assert closes[-1] - closes[0] >= 0.5 * DRAIN_MS / 1000
        # Every client saw every event from its first seq to the last one, exactly once.
        for s in clients:
            seqs = s["seqs"]
            assert seqs == list(range(seqs[0], seqs[-1] + 1)), f"gap or duplicate for {s['device']}"
            assert seqs[-1] >= published[-1]
        assert leaving.proc is not None
        assert leaving.proc.wait(10 * UNIT) == 0
