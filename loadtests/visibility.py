"""The flusher phase's lag poller: when the rows the coordinator flushes become visible in Postgres.

It polls roomcast_flush_state, which the flusher updates in the same transaction as the
game_events rows, and keeps, per room, the times at which the persisted seq advanced: the lag
of an event is then (first poll that saw its seq) - (its send time).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time

import asyncpg


class Visibility:
    """Polls roomcast_flush_state (written in the same transaction as the game_events rows)
    and records when each room's persisted seq advanced."""

    def __init__(self, conn: asyncpg.Connection, rooms: list[str], interval: float) -> None:
        self.conn = conn
        self.rooms = rooms
        self.interval = interval
        self.last: dict[str, int] = dict.fromkeys(rooms, 0)
        self.seen: dict[str, tuple[list[int], list[int]]] = {r: ([], []) for r in rooms}  # (seqs, times)
        self.task: asyncio.Task[None] | None = None
        self.polls = 0

    async def poll(self) -> int:
        t = time.monotonic_ns()
        rows = await self.conn.fetch("SELECT room_id, last_seq FROM roomcast_flush_state "
                                     "WHERE room_id = ANY($1::varchar[])", self.rooms)
        self.polls += 1
        advanced = 0
        for row in rows:
            room, seq = row["room_id"], row["last_seq"]
            if seq > self.last[room]:
                advanced += seq - self.last[room]
                self.last[room] = seq
                seqs, times = self.seen[room]
                seqs.append(seq)
                times.append(t)
        return advanced

    async def _run(self) -> None:
        while True:
            await self.poll()
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def wait_for(self, heads: dict[str, int], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.last[r] >= h for r, h in heads.items()):
                return True
            await asyncio.sleep(self.interval)
        return False

    def visible_at(self, room: str, seq: int) -> int | None:
        seqs, times = self.seen[room]
        i = bisect.bisect_left(seqs, seq)
        return times[i] if i < len(seqs) else None

    def rows_timeline(self, t_from: int) -> list[tuple[int, int]]:
        """(time, rows that became visible then), for the advances after t_from."""
        out: dict[int, int] = {}
        for _room, (seqs, times) in self.seen.items():
            prev = None
            for seq, t in zip(seqs, times, strict=True):
                if prev is not None and t >= t_from:
                    out[t] = out.get(t, 0) + seq - prev
                prev = seq
        return sorted(out.items())


def peak_rate(timeline: list[tuple[int, int]], window_s: float = 1.0) -> float:
    """Most rows that became visible within any `window_s` window (sliding), per second."""
    best = total = j = 0
    for t, n in timeline:
        total += n
        while timeline[j][0] <= t - window_s * 1e9:
            total -= timeline[j][1]
            j += 1
        best = max(best, total)
    return best / window_s



async def poll_until(vis: Visibility, heads: dict[str, int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await vis.poll()
        if all(vis.last[r] >= h for r, h in heads.items()):
            return True
        await asyncio.sleep(vis.interval)
    return False

