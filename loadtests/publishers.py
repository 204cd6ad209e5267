"""The publishers of the cluster and flusher phases, in the harness process: a Publisher that
records each event's send time and seq (for latency and flush lag), a paced schedule shared by
all publishers, and opening one publisher per room (hello + create_room)."""

from __future__ import annotations

import asyncio
import time
from array import array
from typing import Any

from .common import BENCH_ID0, Publisher
from .procs import HOST
from .wsclient import client_frame, open_conn


class TimedPublisher(Publisher):
    """A Publisher that remembers each event's send time and its seq (from the ack), and can
    publish a fixed quota with a window of events in flight."""

    def setup(self, room_id: str, event_bytes: int) -> None:
        super().setup(room_id, event_bytes)
        self.sent_at = array("q")
        self.seq_sent: dict[int, int] = {}  # seq -> send time (monotonic ns)
        self.max_seq = 0
        self.quota = 0

    def publish(self) -> None:
        self.sent += 1
        t = time.monotonic_ns()
        self.sent_at.append(t)
        self.write(client_frame(
            b'{"type":"event","id":%d,"room_id":"%s","event_type":"bench","payload":{"t":%d,"pad":"%s"}}'
            % (BENCH_ID0 + self.sent, self.room_id, t, self.pad)))

    def on_reply(self, message: dict[str, Any]) -> None:
        re = message.get("re")
        bench = isinstance(re, int) and re >= BENCH_ID0
        if bench and message.get("type") == "ack":
            seq = int(message["seq"])
            self.seq_sent[seq] = self.sent_at[re - BENCH_ID0 - 1]
            self.max_seq = max(self.max_seq, seq)
        pumping, self.pumping = self.pumping, False  # the quota pump below replaces the timed one
        super().on_reply(message)
        self.pumping = pumping
        if pumping and bench and self.sent < self.quota:
            self.publish()

    async def run_quota(self, quota: int, window: int, timeout: float) -> None:
        self.quota = quota
        self.pumping = True
        for _ in range(min(window, quota - self.sent)):
            self.publish()
        deadline = time.monotonic() + timeout
        while (self.acked + self.refused < quota and time.monotonic() < deadline  # noqa: ASYNC110
               and not self.closed.done()):
            await asyncio.sleep(0.01)
        self.pumping = False


async def publish_paced(pubs: list[Publisher], rate: float, duration: float) -> dict[str, Any]:
    """Publish rate*duration events in total on one fixed schedule, round-robin over the
    publishers (late ones go at once). Sleeps are at least 1 ms (uvloop's timer resolution):
    shorter ones return at once and would spin this process on the CPU it shares."""
    total = max(len(pubs), round(rate * duration))
    n = len(pubs)
    start = time.monotonic()
    sent = 0
    max_behind = 0
    while sent < total and not any(p.closed.done() for p in pubs):
        due = min(total, int((time.monotonic() - start) * rate) + 1)
        max_behind = max(max_behind, due - sent)
        while sent < due:
            pubs[sent % n].publish()
            sent += 1
        await asyncio.sleep(max(0.001, start + sent / rate - time.monotonic()))
    return {"max_behind": max_behind, "publish_s": time.monotonic() - start}


async def open_publishers(cls: type[Publisher], rooms: list[str], ports: list[int], tag: str, event_bytes: int,
                          max_players: int) -> list[Any]:
    pubs = []
    for r, room_id in enumerate(rooms):
        pub = await open_conn(HOST, ports[r % len(ports)], cls)
        pubs.append(pub)
        pub.setup(room_id, event_bytes)
        await pub.hello(f"bench-pub-{tag}-{r:03d}")
        created = await pub.request({"type": "create_room", "room_id": room_id, "game_type": "bench",
                                     "max_players": max_players})
        pub.last_seq = created["room"]["seq"]
    return pubs
