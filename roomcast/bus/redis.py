"""Bus over Redis sharded pub/sub, with lean subscriber connections of its own.

Room events are published with `SPUBLISH` to `ws:room:{room_id}:events` inside the room's atomic
step (roomcast/redis/scripts.py); the channel carries the room's hash tag, so it lives in the
room's slot. A Redis Cluster delivers a shard channel's messages only on the shard that owns its
slot, so this bus keeps one subscriber connection per primary (`_Shard`), opened when the
replica first subscribes a room on that shard, and learns which primary owns which slot from
`CLUSTER SLOTS` (roomcast/bus/redis_shards.py). A single (non-cluster) Redis is one shard owning
every slot: the same code, one connection, opened at start (Redis 7 has sharded pub/sub there too).

Each connection carries SSUBSCRIBE/SUNSUBSCRIBE and the `smessage` pushes; hiredis' C `Reader`
parses them (4-9x faster than pure Python, `python -m loadtests.resp_ab`, docs/benchmarks.md)
and each frame goes to the sink undecoded. The sink calls of one read are bracketed by
`batch_begin`/`batch_end` (`set_batch`), so the gateway can write a room's events of one read
to each socket at once.

Health, per shard: every `probe_interval` the replica publishes to its own probe channel of that
shard (hash-tagged into a slot the shard owns) through the command connection; if the probe does
not come back within `probe_timeout`, the subscription is considered silently broken and rebuilt.
After any reconnect every room of the shard is resubscribed and `on_resubscribed` is told, so the
hub can fill the gap from the room streams. Slot moves and failovers (a forced `sunsubscribe`, a
`MOVED` reply, a lost connection) refresh the slot map; rooms whose slot changed owner are
resubscribed on the new owner and reported to `on_resubscribed` the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import cast
from urllib.parse import unquote, urlparse

import hiredis

from roomcast.bus.base import EventSink
from roomcast.bus.redis_shards import Addr, ShardMap, discover, slot_of
from roomcast.errors import ErrorCode, GatewayError
from roomcast.protocol import event_seq_of
from roomcast.redis import keys
from roomcast.redis.client import tls_context
from roomcast.redis.resp import RespError, encode_command

_CONTROL_ROOM = keys.CONTROL_ROOM
log = logging.getLogger("roomcast.bus")

_MESSAGES = (b"smessage", b"message")
_UNAVAILABLE = "redis pub/sub unavailable; retry"


def _drop(room_id: str, seq: int, frame: bytes) -> None:
    return None


def _nothing() -> None:
    return None


class _Protocol(asyncio.Protocol):
    def __init__(self, shard: _Shard) -> None:
        self.shard = shard
        self.reader = hiredis.Reader(protocolError=RespError, replyError=RespError)
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, so no isinstance check.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        bus = self.shard.bus
        # Every message of this read reaches the sink between one begin and one end call, so
        # the gateway writes a room's events of the read to each socket in one write.
        bus.batch_begin()
        try:
            self._messages(reader, bus.sink)
        finally:
            bus.batch_end()

    def _messages(self, reader: hiredis.Reader, sink: EventSink) -> None:
        while True:
            try:
                value = reader.gets()
            except RespError as exc:
                log.error("bad data on pub/sub connection: %s", exc)
                if self.transport is not None:
                    self.transport.close()
                return
            if value is False:
                return
            if type(value) is list and len(value) == 3 and value[0] in _MESSAGES:
                room_id = keys.room_of_channel(value[1])
                if room_id is not None:
                    frame = value[2]
                    if room_id != _CONTROL_ROOM:
                        sink(room_id, event_seq_of(frame), frame)
                    elif self.shard.bus.on_control is not None:
                        self.shard.bus.on_control(frame)
                elif value[1] == self.shard.probe_channel:
                    self.shard.probe_seen = time.monotonic()
            else:
                self.shard.control(value)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


class _Shard:
    """The subscription on one primary: its rooms, its connection, its probe."""

    def __init__(self, bus: RedisBus, label: str, addr: Addr, probe_channel: bytes) -> None:
        self.bus = bus
        self.label = label  # the slot range it served first, e.g. "0-5460": stable across failovers
        self.addr = addr
        self.probe_channel = probe_channel
        self.rooms: set[str] = set()
        self.connected = asyncio.Event()
        self.proto: _Protocol | None = None
        self.probe_seen = 0.0
        self.sessions = 0  # sessions that got as far as being subscribed
        self.reconnects = 0
        self.resubscribes = 0  # rooms resubscribed after a reconnect or moved here from another shard
        self.failovers = 0  # times another node took over this shard's slots
        self.last_error: object = "connection lost"
        self.task: asyncio.Task[None] | None = None
        self._auth: asyncio.Future[None] | None = None
        self._unsub_pending: dict[bytes, int] = {}
        self._wake = asyncio.Event()  # set when `addr` changed: reconnect now, not after the backoff

    def send(self, *args: str | bytes) -> None:
        proto = self.proto
        if proto is None or proto.transport is None or not self.connected.is_set():
            raise GatewayError(ErrorCode.UNAVAILABLE, _UNAVAILABLE)
        proto.transport.write(encode_command(*args))

    def unsubscribe(self, channel: bytes) -> None:
        if self.connected.is_set():
            self._unsub_pending[channel] = self._unsub_pending.get(channel, 0) + 1
            with contextlib.suppress(GatewayError):
                self.send(b"SUNSUBSCRIBE", channel)

    def reconnect(self) -> None:
        """Drop the connection (the address changed); the loop reconnects to `self.addr`."""
        if self.proto is not None and self.proto.transport is not None:
            self.proto.transport.close()

    def control(self, value: object) -> None:
        auth = self._auth
        if auth is not None and not auth.done():
            # The first reply on a fresh connection answers AUTH.
            if isinstance(value, RespError):
                auth.set_exception(GatewayError(ErrorCode.UNAVAILABLE, f"pub/sub AUTH failed: {value}"))
            else:
                auth.set_result(None)
            return
        if type(value) is list and len(value) >= 2 and isinstance(value[1], bytes):
            kind, channel = value[0], value[1]
            if kind in (b"ssubscribe", b"subscribe"):
                self.bus.confirmed(channel)
            elif kind == b"sunsubscribe":
                pending = self._unsub_pending.get(channel, 0)
                if pending > 1:
                    self._unsub_pending[channel] = pending - 1
                elif pending == 1:
                    del self._unsub_pending[channel]
                else:
                    # Not asked for: Redis dropped it because its slot moved to another shard.
                    self.bus.lost(self, channel)
        elif isinstance(value, RespError):
            text = str(value)
            if text.startswith(("MOVED", "ASK")):
                self.bus.moved(self, text)
            elif "unknown command" in text.lower():
                self.last_error = "this Redis has no sharded pub/sub (SSUBSCRIBE): Redis 7.0 or newer is needed"
                log.error("pub/sub: %s", self.last_error)
                self.reconnect()
            else:
                log.error("pub/sub error reply: %s", value)

    async def run(self) -> None:
        """Keep this shard's subscription alive until cancelled; reconnect with backoff."""
        delay = 0.1
        bus = self.bus
        while True:
            self.last_error = "connection lost"
            try:
                await self._session()
                delay = 0.1
            except (OSError, TimeoutError, GatewayError, RespError) as exc:
                # The gateway logs the outage once (on_state); each attempt only at debug.
                self.last_error = exc
                log.debug("pub/sub connection to %s:%d failed: %s", *self.addr, exc)
            finally:
                was = self.connected.is_set()
                self.connected.clear()
                if self.proto is not None and self.proto.transport is not None:
                    self.proto.transport.close()
                self.proto = None
                self._unsub_pending.clear()
                bus.session_ended(self, was)
            self.reconnects += 1
            if not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                delay = min(delay * 2, 2.0)
            else:
                delay = 0.1  # a new address (a failover): its first attempt is not a retry
            self._wake.clear()

    async def _session(self) -> None:
        bus = self.bus
        loop = asyncio.get_running_loop()
        host, port = self.addr
        _, proto = await asyncio.wait_for(
            loop.create_connection(lambda: _Protocol(self), host, port, ssl=bus.ssl,
                                   server_hostname=host if bus.ssl is not None else None),
            bus.subscribe_timeout)
        self.proto = proto
        assert proto.transport is not None
        if bus.password is not None:
            # The reply is checked: a refused AUTH would otherwise leave a connection on which
            # every SSUBSCRIBE fails (NOAUTH) while the replica believes it is subscribed.
            self._auth = loop.create_future()
            auth = [b"AUTH", *([bus.username.encode()] if bus.username else []), bus.password.encode()]
            proto.transport.write(encode_command(*auth))
            try:
                await asyncio.wait_for(asyncio.shield(self._auth), bus.subscribe_timeout)
            finally:
                self._auth = None
        self.connected.set()
        # Resubscribe every room of this shard (and the probe channel), then wait for confirmations.
        probe_channel = self.probe_channel
        if not probe_channel:
            raise GatewayError(ErrorCode.UNAVAILABLE, "pub/sub: waiting for the slot map")
        probe = bus.expect(probe_channel)
        self.send(b"SSUBSCRIBE", probe_channel)
        rooms = sorted(self.rooms)
        futs = []
        for room_id in rooms:
            channel = keys.channel(room_id).encode()
            futs.append(bus.expect(channel))
            self.send(b"SSUBSCRIBE", channel)
        await asyncio.wait_for(asyncio.gather(probe, *futs), bus.subscribe_timeout + len(rooms) * 0.001)
        first = self.sessions == 0
        self.sessions += 1
        # A first session owes a repair only to rooms moved here from another shard.
        repair = rooms if not first else sorted(bus.repair_due & set(rooms))
        bus.repair_due.difference_update(rooms)
        if not first:
            log.debug("pub/sub reconnected to %s:%d; resubscribed %d rooms", host, port, len(rooms))
        self.resubscribes += len(repair)
        bus.session_started(self, repair)
        self.probe_seen = time.monotonic()
        unanswered_since: float | None = None  # send time of the oldest probe not seen back
        while not proto.lost.done():
            now = time.monotonic()
            if unanswered_since is not None and self.probe_seen >= unanswered_since:
                unanswered_since = None
            if unanswered_since is not None and now - unanswered_since > bus.probe_timeout:
                # Reported once by the gateway (on_state) as the reason of the outage.
                self.last_error = f"probe not seen for {now - unanswered_since:.1f}s"
                log.debug("pub/sub probe not seen for %.1fs: rebuilding the subscription", now - unanswered_since)
                return
            if self.probe_channel and probe_channel != self.probe_channel:
                # The probe's slot moved to another shard: probe in a slot of ours from now on.
                probe_channel = self.probe_channel
                self.send(b"SSUBSCRIBE", probe_channel)
                unanswered_since = None
            if unanswered_since is None:
                unanswered_since = now
            try:
                await bus.publish(probe_channel.decode(), b"probe")
            except GatewayError:
                pass  # the command side is down; the missing probe will tell
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(proto.lost), bus.probe_interval)


class RedisBus:
    """`url` names one Redis, or any node of a Redis Cluster (the others are discovered).

    `publish(channel, data)` must send `SPUBLISH` through the command connection (routed by
    slot in a cluster): the probes go that way, like the room events."""

    def __init__(
        self,
        url: str,
        node_id: str,
        publish: Callable[[str, bytes], Awaitable[object]],
        *,
        probe_interval: float = 1.0,
        probe_timeout: float = 3.0,
        subscribe_timeout: float = 3.0,
    ) -> None:
        u = urlparse(url)
        self.seed: Addr = (u.hostname or "127.0.0.1", u.port or 6379)
        self.username = unquote(u.username) if u.username else None
        self.password = unquote(u.password) if u.password else None
        self.ssl = tls_context(url)
        self.node_id = node_id
        self.publish = publish
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self.subscribe_timeout = subscribe_timeout
        self.sink: EventSink = _drop
        # Called around each read of a subscriber connection (the hub's write coalescing).
        self.batch_begin: Callable[[], None] = _nothing
        self.batch_end: Callable[[], None] = _nothing
        self.map: ShardMap | None = None
        self.shards: dict[str, _Shard] = {}  # by label
        self.room_shard: dict[str, _Shard] = {}  # every wanted room -> the shard it is subscribed on
        self.repair_due: set[str] = set()  # rooms moved to another shard, repaired once subscribed there
        self._confirm: dict[bytes, list[asyncio.Future[None]]] = {}
        self._refresh = asyncio.Event()
        self.connected = asyncio.Event()
        self.topology_refreshes = 0
        self.on_resubscribed: Callable[[list[str]], None] | None = None
        self.on_state: Callable[[bool], None] | None = None
        # Cluster mode: a shard's subscription went down (False) or came back (True); by label.
        self.on_shard_state: Callable[[str, bool], None] | None = None
        # The server API's control messages (keys.CONTROL), each as it arrives; the gateway
        # subscribes keys.CONTROL_ROOM like a room once the bus is up.
        self.on_control: Callable[[bytes], None] | None = None
        self.last_error: object = "connection lost"  # why the last session ended, for on_state(False)
        self._discovery_failures = 0
        self._closing = False
        self._homeless: set[str] = set()  # rooms Redis unsubscribed (slot moved), to place on the new owner

    @property
    def wanted(self) -> set[str]:
        return set(self.room_shard)

    @property
    def reconnects(self) -> int:
        return sum(s.reconnects for s in self.shards.values()) + self._discovery_failures

    @property
    def cluster(self) -> bool:
        return self.map is not None and self.map.cluster

    def set_sink(self, sink: EventSink) -> None:
        self.sink = sink

    def set_batch(self, begin: Callable[[], None], end: Callable[[], None]) -> None:
        """`begin` and `end` are called around each read of a subscriber connection: the sink
        calls in between are the messages of that read."""
        self.batch_begin, self.batch_end = begin, end

    def shard_stats(self) -> list[tuple[str, bool, int, int]]:
        """(label, connected, rooms resubscribed, failovers seen) of every shard opened so far."""
        return [(s.label, s.connected.is_set(), s.resubscribes, s.failovers) for s in self.shards.values()]

    # ------------------------------------------------------------ subscriptions

    def expect(self, channel: bytes) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._confirm.setdefault(channel, []).append(fut)
        return fut

    def confirmed(self, channel: bytes) -> None:
        for fut in self._confirm.pop(channel, []):
            if not fut.done():
                fut.set_result(None)
        room_id = keys.room_of_channel(channel)
        if room_id is not None and room_id in self.repair_due:
            shard = self.room_shard.get(room_id)
            if shard is not None and shard.sessions:
                self.repair_due.discard(room_id)
                shard.resubscribes += 1
                if self.on_resubscribed is not None:
                    self.on_resubscribed([room_id])

    async def subscribe(self, room_id: str) -> None:
        """Returns once Redis confirmed the subscription (later publishes will arrive)."""
        channel = keys.channel(room_id).encode()
        shard = self._shard_for(channel)
        if shard is None or (not shard.connected.is_set() and (shard.sessions or not self.cluster)):
            raise GatewayError(ErrorCode.UNAVAILABLE, _UNAVAILABLE)
        previous = self.room_shard.get(room_id)
        if previous is not None and previous is not shard:
            previous.rooms.discard(room_id)
        self.room_shard[room_id] = shard
        shard.rooms.add(room_id)
        fut = self.expect(channel)
        try:
            if shard.connected.is_set():
                shard.send(b"SSUBSCRIBE", channel)
            # else: a shard opening for its first room subscribes all its rooms once connected
            await asyncio.wait_for(fut, self.subscribe_timeout)
        except (TimeoutError, GatewayError):
            if self.room_shard.get(room_id) is shard:
                del self.room_shard[room_id]
            shard.rooms.discard(room_id)
            with contextlib.suppress(ValueError):
                self._confirm.get(channel, []).remove(fut)
            raise GatewayError(ErrorCode.UNAVAILABLE, _UNAVAILABLE) from None

    async def unsubscribe(self, room_id: str) -> None:
        shard = self.room_shard.pop(room_id, None)
        self.repair_due.discard(room_id)
        if shard is not None:
            shard.rooms.discard(room_id)
            shard.unsubscribe(keys.channel(room_id).encode())

    def _shard_for(self, channel: bytes) -> _Shard | None:
        m = self.map
        if m is None:
            return None
        addr = m.owner(slot_of(channel)) if m.cluster else m.ranges[0][2]
        if addr is None:
            return None
        return self._shard_at(addr)

    def _shard_at(self, addr: Addr) -> _Shard:
        """The shard subscribed on primary `addr`, opened now if this is its first room."""
        for shard in self.shards.values():
            if shard.addr == addr:
                return shard
        assert self.map is not None
        ranges = self.map.primaries().get(addr, [(0, 0)])
        label = f"{ranges[0][0]}-{ranges[0][1]}"
        while label in self.shards:  # a former owner of these slots still winds down
            label += "'"
        shard = _Shard(self, label, addr, self._probe_channel(addr))
        self.shards[label] = shard
        shard.task = asyncio.get_running_loop().create_task(shard.run())
        return shard

    def _probe_channel(self, addr: Addr) -> bytes:
        assert self.map is not None
        if not self.map.cluster:
            return keys.node_probe(self.node_id).encode()
        return f"ws:probe:{{{self.map.tag_in(addr, 'p')}}}:{self.node_id}".encode()

    # ------------------------------------------------------------ shard events

    def session_started(self, shard: _Shard, repair: list[str]) -> None:
        if not self.cluster:
            self.connected.set()
            if self.on_state is not None:
                self.on_state(True)
        else:
            if shard.sessions > 1:
                log.info("pub/sub shard %s back on %s:%d", shard.label, *shard.addr)
            if self.on_shard_state is not None:
                self.on_shard_state(shard.label, True)
        if repair and self.on_resubscribed is not None:
            self.on_resubscribed(repair)

    def session_ended(self, shard: _Shard, was_up: bool) -> None:
        self.last_error = shard.last_error
        channels = {keys.channel(r).encode() for r in shard.rooms} | {shard.probe_channel}
        for channel in channels:
            for fut in self._confirm.pop(channel, []):
                if not fut.done():
                    fut.set_exception(GatewayError(ErrorCode.UNAVAILABLE, "redis pub/sub lost"))
        if not self.cluster:
            self.connected.clear()
            if self.on_state is not None:
                self.on_state(False)
            return
        if was_up and not self._closing:
            log.warning("pub/sub shard %s on %s:%d lost (%s); rooms on it wait for it or its replica",
                        shard.label, *shard.addr, shard.last_error)
            if self.on_shard_state is not None:
                self.on_shard_state(shard.label, False)
        self._refresh.set()  # it may have failed over: ask the cluster who owns its slots now

    def lost(self, shard: _Shard, channel: bytes) -> None:
        """Redis unsubscribed `channel` by itself: its slot moved. Find the owner, resubscribe."""
        log.debug("pub/sub: %s:%d unsubscribed %r by itself (its slot moved)", *shard.addr, channel)
        room_id = keys.room_of_channel(channel)
        if room_id is not None and self.room_shard.get(room_id) is shard:
            shard.rooms.discard(room_id)
            del self.room_shard[room_id]
            self._homeless.add(room_id)
        elif channel == shard.probe_channel:
            shard.probe_channel = b""  # chosen again from the new slot map
        self._refresh.set()

    def moved(self, shard: _Shard, text: str) -> None:
        """A MOVED/ASK reply to an SSUBSCRIBE: that room's slot belongs elsewhere."""
        log.debug("pub/sub: %s:%d answered %s", *shard.addr, text)
        parts = text.split()
        slot = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1
        for room_id in [r for r in shard.rooms if slot_of(keys.channel(r).encode()) == slot]:
            shard.rooms.discard(room_id)
            self.room_shard.pop(room_id, None)
            self._homeless.add(room_id)
        self._refresh.set()

    # ------------------------------------------------------------ slot map

    def _apply(self, m: ShardMap) -> None:
        """Adopt a new slot map: follow failovers, move rooms whose slot changed owner."""
        self.map = m
        if not m.cluster:
            self._shard_at(m.ranges[0][2])
            return
        primaries = m.primaries()
        taken = {s.addr for s in self.shards.values() if s.addr in primaries}
        for shard in list(self.shards.values()):
            if shard.addr in primaries:
                continue
            # Its node serves no slots any more: the node now owning its first slot took over.
            first = int(shard.label.rstrip("'").split("-")[0])
            heir = m.owner(first)
            if heir is not None and heir not in taken:
                log.warning("pub/sub shard %s failed over from %s:%d to %s:%d", shard.label, *shard.addr, *heir)
                shard.addr = heir
                shard.failovers += 1
                taken.add(heir)
                shard._wake.set()  # the new primary at once, not after the dead one's backoff
                shard.reconnect()
        for shard in self.shards.values():
            if shard.probe_channel == b"" or (shard.addr in primaries and m.owner(slot_of(shard.probe_channel))
                                              != shard.addr):
                shard.probe_channel = self._probe_channel(shard.addr) if shard.addr in primaries else b""
        moved: list[str] = []
        for room_id, shard in list(self.room_shard.items()):
            if m.owner(slot_of(keys.channel(room_id).encode())) != shard.addr:
                shard.rooms.discard(room_id)
                shard.unsubscribe(keys.channel(room_id).encode())
                del self.room_shard[room_id]
                moved.append(room_id)
        for room_id in [*moved, *sorted(self._homeless)]:
            self._homeless.discard(room_id)
            channel = keys.channel(room_id).encode()
            addr = m.owner(slot_of(channel))
            if addr is None:
                continue  # the slot is not served: a later refresh places it
            target = self._shard_at(addr)
            self.room_shard[room_id] = target
            target.rooms.add(room_id)
            self.repair_due.add(room_id)
            if target.connected.is_set():
                with contextlib.suppress(GatewayError):
                    target.send(b"SSUBSCRIBE", channel)
        for label, shard in list(self.shards.items()):
            if shard.addr not in primaries and not shard.rooms:
                # A shard no primary stands for any more (slots merged into another): close it.
                del self.shards[label]
                if shard.task is not None:
                    shard.task.cancel()

    async def run(self) -> None:
        """Learn the slot map, keep it current and the shards' subscriptions alive, until cancelled."""
        delay = 0.1
        try:
            while True:
                seeds = [self.seed, *[a for a in (self.map.nodes if self.map else []) if a != self.seed]]
                if self.map is not None and self.map.cluster:
                    # Ask the shards we are connected to first: a dead node costs a timeout.
                    up = [s.addr for s in self.shards.values() if s.connected.is_set()]
                    seeds = [*up, *[a for a in seeds if a not in up]]
                try:
                    m = await discover(seeds, ssl_ctx=self.ssl, username=self.username, password=self.password,
                                       timeout=self.subscribe_timeout)
                except (OSError, TimeoutError, RespError, GatewayError) as exc:
                    self.last_error = exc
                    log.debug("pub/sub: no Redis node answered CLUSTER SLOTS: %s", exc)
                    if self.map is None:
                        self._discovery_failures += 1
                        if self.on_state is not None:
                            self.on_state(False)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                first = self.map is None
                self.topology_refreshes += 1
                self._apply(m)
                if first and m.cluster:
                    self.connected.set()
                    if self.on_state is not None:
                        self.on_state(True)
                if not m.cluster:
                    await asyncio.Event().wait()  # one Redis: its slots never move
                self._refresh.clear()
                if self._homeless or any(not s.connected.is_set() for s in self.shards.values()):
                    # Something is not placed or not up yet: look again soon (bounded backoff; at
                    # most 0.5 s apart, so a promoted replica is found soon after it takes over).
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._refresh.wait(), delay)
                    delay = min(delay * 2, 0.5)
                else:
                    delay = 0.1
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._refresh.wait(), 30.0)
                    await asyncio.sleep(0.05)  # let a burst of reasons for a refresh share one
        finally:
            self._closing = True
            for shard in self.shards.values():
                if shard.task is not None:
                    shard.task.cancel()
            for shard in self.shards.values():
                if shard.task is not None:
                    with contextlib.suppress(asyncio.CancelledError):
                        await shard.task
