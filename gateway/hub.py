"""Hub: this replica's index of local room members, and the local fan-out.

Each room event arrives once from the bus as complete JSON bytes; the hub wraps it in a
WebSocket frame once and writes the same bytes to every local member (conventions 6, 7).
A socket that is joining is `pending`: events that arrive while its join is in flight
are buffered and handed over after its replay, so it sees each seq exactly once.

Writes are coalesced per bus read: the events a room gets in one read of the pub/sub
connection (RedisBus calls `begin_batch`/`end_batch` around each read) are queued on the room
and written at the end of the read as one buffer per member, so a socket costs one `write(2)`
per read instead of one per event. Under light load a read holds one event, as before; as load
rises, events bunch up in each read and the system calls per delivery fall (docs/benchmarks.md
"Fan-out per delivery (issue 14)"). Outside a batch (the embedded bus, gap repairs) each event
is written at once. Nothing awaits inside a batch, so no join, leave or reply can come between
an event and its write.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from roomcast.bus.base import Bus
from roomcast.errors import CloseCode, ErrorCode, GatewayError

from .frames import text_frame
from .metrics import Metrics
from .session import REPLAY_HIGH_WATER, Session

log = logging.getLogger("roomcast.hub")

_EVENT_TYPE = b'"event_type":"'
_ROOM_CLOSED = b'room_closed"'
_TS = b'"ts":'


GapSource = Callable[[str, int, int | None], Awaitable[list[tuple[int, bytes]]]]

# A gap repair whose read fails (the room's shard failing over, Redis restarting) tries again
# after these pauses, then every last one, for up to REPAIR_GIVE_UP_S: a failover takes a few
# seconds (docs/scaling.md), the bound for a failed shard's rooms to work again is 20 s.
REPAIR_RETRY_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
REPAIR_GIVE_UP_S = 20.0
# Live events held meanwhile, at most: beyond that the room's members are closed (1012) and
# resume from the stream themselves, instead of the gateway holding an unbounded backlog.
REPAIR_MAX_HELD = 10_000
REPAIR_LOST = "missed events no longer readable; reconnect and resume with since"


class Pending:
    """Live events for a socket whose join (and replay) is in flight, held in order. Bounded:
    beyond the socket's send-buffer bound the socket is closed with 4009 (too slow)."""

    __slots__ = ("frames", "size")

    def __init__(self) -> None:
        self.frames: list[tuple[int, bytes]] = []
        self.size = 0

    def add(self, session: Session, seq: int, frame: bytes) -> None:
        if session.closing:
            return
        self.frames.append((seq, frame))
        self.size += len(frame)
        if self.size > session.buffer_limit:
            self.frames.clear()
            session.slow()

    def take(self) -> list[tuple[int, bytes]]:
        frames, self.frames, self.size = self.frames, [], 0
        return frames


class LocalRoom:
    __slots__ = ("epoch", "held", "last_seq", "members", "pending", "queued", "ready")

    def __init__(self) -> None:
        # member -> the seq its join took effect at: it gets only events after that. The
        # room's own `last_seq` moves only with deliveries: a joiner's head (read from the
        # command connection) may be ahead of pub/sub, and existing members still need
        # the events in between.
        self.members: dict[Session, int] = {}
        self.pending: dict[Session, Pending] = {}
        self.last_seq = 0
        self.ready = asyncio.Event()  # set once the bus subscription is confirmed
        self.held: list[tuple[int, bytes]] | None = None  # events waiting for a gap repair
        self.epoch: str | None = None  # the room's epoch when our members joined
        # Events fanned out in this pub/sub read (begin_batch..end_batch), not yet written: (seq, frame, arrived at).
        self.queued: list[tuple[int, bytes, float]] | None = None


class Hub:
    def __init__(self, bus: Bus, metrics: Metrics, log_events: bool = False) -> None:
        self.bus = bus
        self.metrics = metrics
        self.rooms: dict[str, LocalRoom] = {}
        self.log_events = log_events
        self.on_room_closed: Callable[[str, list[Session]], None] | None = None
        # Reads missed events from the room's history (cluster mode); None = no gaps possible.
        self.gap_source: GapSource | None = None
        self.gap_repairs = 0
        metrics.before_scrape.append(self._count_members)
        self._repairs: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        self._dirty: list[LocalRoom] = []  # rooms with queued events, in arrival order
        self._batching = False
        bus.set_sink(self.deliver)
        set_batch = getattr(bus, "set_batch", None)
        if set_batch is not None:
            set_batch(self.begin_batch, self.end_batch)

    # ------------------------------------------------------------ membership

    async def begin_join(self, room_id: str, session: Session) -> None:
        """Mark `session` as joining: subscribe if needed and buffer its events."""
        local = self.rooms.get(room_id)
        if local is None:
            local = self.rooms[room_id] = LocalRoom()
            self.metrics.local_rooms.set(len(self.rooms))
            local.pending[session] = Pending()
            try:
                await self.bus.subscribe(room_id)
            except BaseException:
                local.pending.pop(session, None)
                if self.rooms.get(room_id) is local and not local.members and not local.pending:
                    del self.rooms[room_id]
                    self.metrics.local_rooms.set(len(self.rooms))
                raise
            finally:
                local.ready.set()
            return
        if session not in local.members:
            local.pending[session] = Pending()
        # Others joining meanwhile wait for the same subscription to be confirmed.
        await local.ready.wait()
        if self.rooms.get(room_id) is not local:
            local.pending.pop(session, None)
            raise GatewayError(ErrorCode.UNAVAILABLE, "room subscription failed; retry")

    async def finish_join(self, room_id: str, session: Session, head: int, epoch: str | None = None,
                          reply: bytes | None = None) -> None:
        """The join took effect at `head` and its replay (events up to `head`) is written:
        hand over the events held meanwhile (those after head, paced by the socket's
        buffer), then make it a member. Its first live event follows the last held one.

        `reply`: the join's reply (a WebSocket frame) when the caller has written nothing yet
        (no replay): it is written first, in the same buffer as the first held events, so a
        join that holds its own `participant_joined` costs one write(2), not two. Held events
        are written in buffers of up to REPLAY_HIGH_WATER bytes, each paced."""
        local = self.rooms.get(room_id)
        if local is None:
            if reply is not None:
                session.write_frame(reply)
            return
        if epoch is not None:
            local.epoch = epoch
        buffered = local.pending.get(session)
        start = head
        if buffered is not None:
            for _ in range(1_000_000):  # bounded: each pass drains what arrived meanwhile
                frames = buffered.take()
                if not frames:
                    break
                parts = [] if reply is None else [reply]
                size = 0 if reply is None else len(reply)
                reply = None
                sent = 0
                for seq, frame in frames:
                    if seq > start:
                        start = seq
                        sent += 1
                        ws_frame = text_frame(frame)
                        parts.append(ws_frame)
                        size += len(ws_frame)
                        if size >= REPLAY_HIGH_WATER:
                            written = await session.write_paced(b"".join(parts))
                            parts, size = [], 0
                            if not written:
                                break
                if parts and not session.closing:
                    await session.write_paced(b"".join(parts))  # one part: join returns it, no copy
                self.metrics.out_event.inc(sent)
                if session.closing:
                    break
        if reply is not None:  # nothing was held (no await since the caller's last write)
            session.write_frame(reply)
        # No await from here on: nothing can arrive between the last held event and membership.
        if self.rooms.get(room_id) is not local or local.pending.get(session) is not buffered:
            return  # the room closed meanwhile (its room_closed was held and sent), or we left
        local.pending.pop(session, None)
        if session.closing:
            await self._maybe_forget(room_id, local)
            return
        local.members[session] = start

    async def abort_join(self, room_id: str, session: Session) -> None:
        local = self.rooms.get(room_id)
        if local is None:
            return
        local.pending.pop(session, None)
        await self._maybe_forget(room_id, local)

    async def remove(self, room_id: str, session: Session) -> None:
        local = self.rooms.get(room_id)
        if local is None:
            return
        local.members.pop(session, None)
        local.pending.pop(session, None)
        await self._maybe_forget(room_id, local)

    async def _maybe_forget(self, room_id: str, local: LocalRoom) -> None:
        if local.members or local.pending:
            return
        if self.rooms.get(room_id) is local:
            del self.rooms[room_id]
            self.metrics.local_rooms.set(len(self.rooms))
            await self.bus.unsubscribe(room_id)

    def _count_members(self) -> None:
        self.metrics.participants.set(sum(len(local.members) for local in self.rooms.values()))

    # ------------------------------------------------------------ fan-out

    def deliver(self, room_id: str, seq: int, frame: bytes) -> None:
        """Bus sink: one room event, complete JSON. Runs on the event loop, never awaits."""
        local = self.rooms.get(room_id)
        if local is None:
            return
        if local.held is not None:
            local.held.append((seq, frame))  # a gap repair is running: keep the order
            return
        last = local.last_seq
        if seq <= last:
            return  # already delivered (a resubscribe or repair may repeat a message)
        if self.gap_source is not None:
            base = self._repair_after(local)
            if base and seq > base + 1:
                local.held = [(seq, frame)]
                self._repair(room_id, local, base)
                return
        self._fanout(room_id, local, seq, frame)

    @staticmethod
    def _repair_after(local: LocalRoom) -> int:
        """The seq after which this replica's members need the room's events: the last one
        delivered; before any delivery (last_seq 0), the earliest join among the members, so a
        subscription that fell behind before the first delivery still gets its gap repaired
        (0: no member yet, nothing to repair)."""
        return local.last_seq or min(local.members.values(), default=0)

    def begin_batch(self) -> None:
        """Events from here to `end_batch` are written per room and member at once."""
        self._batching = True

    def end_batch(self) -> None:
        """Write every room's queued events: one buffer per member."""
        self._batching = False
        dirty, self._dirty = self._dirty, []
        for local in dirty:
            self._write(local)

    def _fanout(self, room_id: str, local: LocalRoom, seq: int, frame: bytes) -> None:
        """Write one event to the room's members (queued for `end_batch` inside a batch),
        buffer it for the joining ones. `seq` is above every seq queued before it."""
        started = time.perf_counter()
        i = frame.rfind(_TS)
        if i > 0:  # the tail ends with "ts":<ms>}
            self.metrics.pubsub_lag.observe(max(0.0, time.time() - int(frame[i + 5 : -1]) / 1000))
        local.last_seq = seq
        queued = local.queued
        if queued is None:
            local.queued = [(seq, text_frame(frame), started)]
            if self._batching:
                self._dirty.append(local)
            else:
                self._write(local)
        else:
            queued.append((seq, text_frame(frame), started))
        for pending_session, buffer in local.pending.items():
            buffer.add(pending_session, seq, frame)
        if self.log_events:
            log.info("event %s", frame.decode(errors="replace"))
        j = frame.find(_EVENT_TYPE)
        if j >= 0 and frame.startswith(_ROOM_CLOSED, j + len(_EVENT_TYPE)):
            self._write(local)
            self._closed(room_id, local)

    def _write(self, local: LocalRoom) -> None:
        queued = local.queued
        if queued is None:
            return
        local.queued = None
        members = local.members
        written = 0  # deliveries made: not to a member that joined after the event, nor a closing one
        if len(queued) == 1:
            seq, ws_frame, _ = queued[0]
            for session, start in members.items():
                if seq > start and session.write_frame(ws_frame):
                    written += 1
        else:
            first, last = queued[0][0], queued[-1][0]
            joined = b"".join([f for _, f, _ in queued])
            n = len(queued)
            for session, start in members.items():
                if first > start:
                    if session.write_frame(joined):
                        written += n
                elif last > start:  # joined in between: only what follows its join
                    later = [f for s, f, _ in queued if s > start]
                    if session.write_frame(b"".join(later)):
                        written += len(later)
        self.metrics.out_event.inc(written)
        done = time.perf_counter()
        observe = self.metrics.fanout_latency.observe
        for _, _, started in queued:
            observe(done - started)

    def repair(self, room_ids: list[str]) -> None:
        """After a resubscribe: fetch whatever each room missed while we were away."""
        for room_id in room_ids:
            local = self.rooms.get(room_id)
            if local is None or local.held is not None:
                continue
            after = self._repair_after(local)
            if after:
                local.held = []
                self._repair(room_id, local, after)

    def _repair(self, room_id: str, local: LocalRoom, after: int) -> None:
        task = asyncio.get_running_loop().create_task(self._run_repair(room_id, local, after))
        self._repairs.add(task)
        task.add_done_callback(self._repairs.discard)

    async def _run_repair(self, room_id: str, local: LocalRoom, after: int) -> None:
        """Read the events after `after` from the room's stream and fan them out with the ones
        held meanwhile, in seq order. A failed read is tried again (REPAIR_RETRY_S) while live
        events stay held. If the gap cannot be filled (the stream no longer holds its start,
        the reads kept failing, or too many events were held), the room's local sockets are
        closed with 1012: they reconnect and resume with `since`, rather than skip events."""
        assert self.gap_source is not None
        self.gap_repairs += 1
        loop = asyncio.get_running_loop()
        give_up = loop.time() + REPAIR_GIVE_UP_S
        missed: list[tuple[int, bytes]] | None = None  # None: the read failed for good
        attempt = 0
        while True:
            try:
                missed = await self.gap_source(room_id, after, None)
                break
            except Exception as exc:
                if self.rooms.get(room_id) is not local:
                    return  # the room's last local member left meanwhile
                if loop.time() >= give_up or len(local.held or ()) > REPAIR_MAX_HELD:
                    log.warning("could not repair a gap in room %s after seq %d: %s", room_id, after, exc)
                    break
                self.metrics.gap_repairs.labels("retry").inc()
                (log.info if attempt == 0 else log.debug)(
                    "gap repair of room %s after seq %d failed (%s); retrying", room_id, after, exc)
                await asyncio.sleep(REPAIR_RETRY_S[min(attempt, len(REPAIR_RETRY_S) - 1)])
                attempt += 1
        if self.rooms.get(room_id) is not local:
            return
        held, local.held = local.held or [], None
        newest = max((seq for seq, _ in held), default=after)
        expected = after + 1
        for seq, frame in sorted((missed or []) + held, key=lambda item: item[0]):
            if seq < expected:
                continue  # both read and held (or delivered before)
            if seq > expected:  # the stream no longer holds these (trimmed), or the read failed
                self.metrics.gap_repairs.labels("closed").inc()
                self._lost(room_id, local, newest)
                return
            self._fanout(room_id, local, seq, frame)
            expected = seq + 1
            if self.rooms.get(room_id) is not local:
                return  # its room_closed was among them
        if missed is None and not held:  # no read and no live event since: whether any was missed is unknown
            self.metrics.gap_repairs.labels("closed").inc()
            self._lost(room_id, local, newest)
            return
        self.metrics.gap_repairs.labels("repaired").inc()

    def _lost(self, room_id: str, local: LocalRoom, last_seq: int) -> None:
        """The room's local sockets missed events this replica cannot read back: close them
        with 1012; each reconnects and resumes with `since` (a replay, or `recovered: false`
        if the history is gone). Later live events go to whoever joins again."""
        log.warning("room %s: events after seq %d could not be repaired; closing its %d local sockets (1012)",
                    room_id, local.last_seq, len(local.members) + len(local.pending))
        for session in [*local.members, *local.pending]:
            session.close(CloseCode.SERVICE_RESTART, REPAIR_LOST)
        local.last_seq = max(local.last_seq, last_seq)

    def _closed(self, room_id: str, local: LocalRoom) -> None:
        sessions = list(local.members) + list(local.pending)
        local.members.clear()
        local.pending.clear()
        if self.rooms.get(room_id) is local:
            del self.rooms[room_id]
            self.metrics.local_rooms.set(len(self.rooms))
        if self.on_room_closed is not None:
            self.on_room_closed(room_id, sessions)
