"""Sharded pub/sub on a real Redis Cluster (3 primaries + 3 replicas, loadtests/services.py).

Room events are made by the real Lua `emit` (roomcast/redis/scripts.py: HINCRBY seq, XADD,
SPUBLISH), run on the room's primary through redis-py's cluster client (routed by the room's
slot), and received by `RedisBus`, which must find the owning primaries by itself from the URL
of one node. The failover test SIGKILLs a primary: its replica is promoted, the bus follows it
and reports the rooms that may have missed events, which are then repaired from their streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest
from redis.asyncio.cluster import ClusterNode, RedisCluster

from loadtests.services import PubSubRedisCluster
from roomcast import protocol
from roomcast.bus.redis import RedisBus
from roomcast.bus.redis_shards import slot_of
from roomcast.redis import keys, scripts
from roomcast.redis.batch import Batcher, Script, cmd
from roomcast.redis.client import make_client
from tests.harness import UNIT, Client, ahttp_get, cluster, parse_metrics, unique, wait_for

pytestmark = [pytest.mark.system, pytest.mark.timeout(180)]


@pytest.fixture
def rcluster() -> Iterator[PubSubRedisCluster]:
    c = PubSubRedisCluster().start()
    try:
        yield c
    finally:
        c.stop()


@dataclass
class Rooms:
    """Rooms set up directly in Redis (state + one member) so the real PUBLISH script runs."""

    rc: RedisCluster
    acked: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # room -> (seq, acked at)
    # With a batcher (the gateways' own client), emits and stream reads go through it: a test
    # that kills a primary then depends on our failover handling, not on the recovery of
    # redis-py's own cluster client (which did not find the promoted replica within 20 s once).
    batcher: Batcher | None = None
    script: Script | None = None

    async def create(self, room_id: str) -> None:
        await self.rc.hset(keys.room(room_id), mapping={"status": "waiting", "seq": 0})  # type: ignore[misc]
        await self.rc.hset(keys.members(room_id), "dev", "player|active|sock||0")  # type: ignore[misc]
        self.acked[room_id] = []

    async def emit(self, room_id: str, n: int) -> int:
        now = int(time.time() * 1000)
        tail = protocol.event_tail("move", None, {"n": n}, {"device_id": "dev"}, now)
        room_keys = [keys.room(room_id), keys.members(room_id), keys.participants(room_id), keys.stream(room_id)]
        if self.batcher is not None and self.script is not None:
            reply = await self.batcher.eval(self.script, room_keys, [room_id, "dev", tail, now, "0", "sock"])
        else:
            reply = await self.rc.eval(scripts.PUBLISH, 4, *room_keys, room_id, "dev", tail, now,  # type: ignore[misc]
                                       "0", "sock")
        assert reply[0] == b"ok", reply
        seq = int(reply[1])
        self.acked[room_id].append((seq, time.monotonic()))
        return seq

    async def stream(self, room_id: str, after: int) -> list[tuple[int, bytes]]:
        if self.batcher is not None:
            entries = await self.batcher.call(cmd("xrange", keys.stream(room_id), f"{after + 1}-0", "+"))
        else:
            entries = await self.rc.xrange(keys.stream(room_id), f"{after + 1}-0", "+")
        return [(int(eid.split(b"-")[0]), fields[b"f"]) for eid, fields in entries]


@contextlib.asynccontextmanager
async def cluster_client(c: PubSubRedisCluster) -> AsyncIterator[RedisCluster]:
    assert c.ports
    # The live nodes only: after the failover test the fixture's cluster has a dead node.
    rc = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in c.live_ports()], socket_timeout=1.0,
                      socket_connect_timeout=0.5)
    await rc.initialize()
    try:
        yield rc
    finally:
        await rc.aclose()


@contextlib.asynccontextmanager
async def running_bus(c: PubSubRedisCluster, rc: RedisCluster, node_id: str) -> AsyncIterator[RedisBus]:
    async def publish(channel: str, data: bytes) -> object:
        return await rc.spublish(channel, data)

    bus = RedisBus(c.url, node_id, publish, probe_interval=0.3, probe_timeout=1.5)
    task = asyncio.get_running_loop().create_task(bus.run())
    try:
        await asyncio.wait_for(bus.connected.wait(), 10 * UNIT)
        yield bus
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def rooms_by_primary(c: PubSubRedisCluster, per_shard: int) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {p: [] for p in c.primary_ports()}
    for _ in range(2000):
        if all(len(v) >= per_shard for v in out.values()):
            return out
        room_id = unique("shard")
        port = c.owner_port(keys.channel(room_id))
        if len(out[port]) < per_shard:
            out[port].append(room_id)
    raise AssertionError("rooms for every shard not found")


def shard_subscribers(c: PubSubRedisCluster, port: int) -> int:
    return sum(1 for line in c.cli(port, "CLIENT", "LIST").splitlines() if " ssub=" in line
               and " ssub=0 " not in line)


def commandstat(c: PubSubRedisCluster, port: int, command: str) -> int:
    return commandstat_of(c.cli(port, "INFO", "commandstats"), command)


async def test_rooms_on_every_shard_arrive_once_in_order_over_spublish(rcluster: PubSubRedisCluster) -> None:
    c = rcluster
    by_port = rooms_by_primary(c, 2)
    async with cluster_client(c) as rc, running_bus(c, rc, unique("gw")) as bus:
        got: dict[str, list[int]] = {}
        bus.set_sink(lambda room_id, seq, frame: got.setdefault(room_id, []).append(seq))
        rooms = Rooms(rc)
        assert bus.cluster
        for room_ids in by_port.values():
            for room_id in room_ids:
                await rooms.create(room_id)
        # Connections are opened per shard, when the replica first holds a room there.
        assert bus.shards == {}
        assert all(shard_subscribers(c, p) == 0 for p in c.live_ports())
        first_port, *_ = by_port
        await bus.subscribe(by_port[first_port][0])
        assert [shard_subscribers(c, p) for p in c.primary_ports()].count(1) == 1
        assert shard_subscribers(c, first_port) == 1
        for room_ids in by_port.values():
            for room_id in room_ids:
                await bus.subscribe(room_id)
        # One subscriber connection per primary, none on the replicas.
        for p in c.live_ports():
            assert shard_subscribers(c, p) == (1 if p in by_port else 0), p
        assert len(bus.shards) == 3
        # Each shard's probe (SPUBLISH to a channel in one of its slots) comes back on its connection.
        subscribed_at = time.monotonic()
        await wait_for(lambda: all(s.probe_seen > subscribed_at for s in bus.shards.values()), 3 * UNIT,
                       what="a probe seen back on every shard")
        assert len({s.probe_channel for s in bus.shards.values()}) == 3
        spublish_before = {p: commandstat(c, p, "spublish") for p in by_port}
        n = 30
        for i in range(n):
            await asyncio.gather(*(rooms.emit(r, i) for ids in by_port.values() for r in ids))

        def complete() -> bool:
            return all(got.get(r) == list(range(1, n + 1)) for ids in by_port.values() for r in ids)

        await wait_for(complete, 5 * UNIT, what="every event of every room")
        await asyncio.sleep(0.2 * UNIT)  # nothing more (no duplicates) arrives later
        assert complete(), got
        for p in by_port:
            # The room traffic went over sharded pub/sub on each shard; classic PUBLISH was not used.
            assert commandstat(c, p, "spublish") - spublish_before[p] >= 2 * n, p
            assert commandstat(c, p, "publish") == 0, p
            assert int(c.cli(p, "DBSIZE")) > 0  # every primary holds room keys
        assert all(connected for _, connected, _, _ in bus.shard_stats())
        assert all(s.reconnects == 0 for s in bus.shards.values())  # no probe went missing
        # Unsubscribed rooms stop arriving.
        gone = by_port[first_port][0]
        await bus.unsubscribe(gone)
        await rooms.emit(gone, 99)
        await rooms.emit(by_port[first_port][1], 99)
        await wait_for(lambda: len(got[by_port[first_port][1]]) == n + 1, what="the other room's event")
        assert len(got[gone]) == n


async def test_failover_of_a_primary_is_followed_and_the_gap_reported(rcluster: PubSubRedisCluster) -> None:
    c = rcluster
    assert c.ports
    victim = c.ports[0]  # the node the bus's URL names, too: discovery must use the others
    by_port = rooms_by_primary(c, 2)
    async with cluster_client(c) as rc, running_bus(c, rc, unique("gw")) as bus, contextlib.AsyncExitStack() as stack:
        live: dict[str, list[int]] = {}
        arrived_at: dict[str, list[float]] = {}
        reported: list[str] = []

        def sink(room_id: str, seq: int, frame: bytes) -> None:
            live.setdefault(room_id, []).append(seq)
            arrived_at.setdefault(room_id, []).append(time.monotonic())

        bus.set_sink(sink)
        bus.on_resubscribed = reported.extend
        batcher = Batcher(make_client(c.url))
        stack.push_async_callback(batcher.aclose)
        script = batcher.register(scripts.PUBLISH)
        await batcher.load_scripts()
        rooms = Rooms(rc, batcher=batcher, script=script)
        all_rooms = [r for ids in by_port.values() for r in ids]
        for room_id in all_rooms:
            await rooms.create(room_id)
            await bus.subscribe(room_id)
        stop = asyncio.Event()
        failures = 0

        async def publisher(room_id: str) -> None:
            nonlocal failures
            i = 0
            while not stop.is_set():
                try:
                    await rooms.emit(room_id, i)
                except Exception:
                    failures += 1  # its shard is failing over
                i += 1
                await asyncio.sleep(0.05)

        tasks = [asyncio.get_running_loop().create_task(publisher(r)) for r in all_rooms]
        try:
            await wait_for(lambda: all(len(live.get(r, [])) >= 5 for r in all_rooms), what="traffic on every room")
            shard = next(s for s in bus.shards.values() if s.addr == ("127.0.0.1", victim))
            killed_at = time.monotonic()
            c.kill(victim)
            # Resubscribed on the promoted replica, and the rooms of the failed shard reported for
            # repair (after their subscriptions were confirmed there).
            await wait_for(lambda: shard.failovers == 1 and set(by_port[victim]) <= set(reported), 20 * UNIT,
                           interval=0.1, what="the shard resubscribed on the promoted replica")
            recovered_at = time.monotonic()
            assert shard.connected.is_set()
            assert shard.addr != ("127.0.0.1", victim)
            assert shard.addr[1] in c.primary_ports()
            # The rooms on the other shards kept flowing meanwhile.
            others = [r for p, ids in by_port.items() if p != victim for r in ids]
            for room_id in others:
                assert any(killed_at < t < recovered_at for t in arrived_at[room_id]), room_id
            counts = {r: len(rooms.acked[r]) for r in by_port[victim]}
            # Publishing there again depends on the test's own redis-py cluster client finding the
            # promoted replica too: the bound (20 s), not a tighter one of ours.
            await wait_for(lambda: all(len(rooms.acked[r]) > counts[r] + 3 for r in counts), 20 * UNIT,
                           what="events on the failed-over shard again")
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        for room_id in others:
            # Every event of the room's stream, once each, in order (the test's cluster client may
            # lose a reply, not an event, while it refreshes its own slot map: acked is a subset).
            head = (await rooms.stream(room_id, 0))[-1][0]
            assert live[room_id] == list(range(1, head + 1)), room_id
            assert {s for s, _ in rooms.acked[room_id]} <= set(live[room_id])
        for room_id in by_port[victim]:
            # Live events plus the repair from the room's stream: every event the stream holds,
            # once each; nothing acked a second before the kill is missing.
            seen = sorted(set(live[room_id]))
            head = seen[-1]
            repaired = {s for s, _ in await rooms.stream(room_id, 0)}
            assert set(range(1, head + 1)) <= set(seen) | repaired, room_id
            early = [s for s, t in rooms.acked[room_id] if t < killed_at - 1.0]
            assert set(early) <= repaired | set(seen)
            after = [s for s, t in zip(live[room_id], arrived_at[room_id], strict=True) if t > recovered_at]
            assert after == sorted(after) and len(after) == len(set(after)), room_id
        stats = {label: (up, resub, fo) for label, up, resub, fo in bus.shard_stats()}
        assert stats[shard.label][0] and stats[shard.label][2] == 1
        assert stats[shard.label][1] >= len(by_port[victim])
        assert sum(fo for _, _, fo in stats.values()) == 1


def node_id(c: PubSubRedisCluster, port: int) -> str:
    return c.cli(port, "CLUSTER", "MYID")


def move_slot(c: PubSubRedisCluster, slot: int, src: int, dst: int) -> None:
    """Migrate one slot with its keys from primary `src` to primary `dst` (as redis-cli --cluster reshard)."""
    src_id, dst_id = node_id(c, src), node_id(c, dst)
    assert c.cli(dst, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", src_id) == "OK"
    assert c.cli(src, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", dst_id) == "OK"
    for _ in range(100):
        names = c.cli(src, "CLUSTER", "GETKEYSINSLOT", str(slot), "100").split()
        if not names:
            break
        out = c.cli(src, "MIGRATE", "127.0.0.1", str(dst), "", "0", "5000", "KEYS", *names)
        assert out == "OK", out
    for port in c.primary_ports():
        assert c.cli(port, "CLUSTER", "SETSLOT", str(slot), "NODE", dst_id) == "OK"


async def test_slot_moved_to_another_shard_is_resubscribed_there_and_repaired(rcluster: PubSubRedisCluster) -> None:
    c = rcluster
    by_port = rooms_by_primary(c, 2)
    src, dst, *_ = by_port
    moving = by_port[src][0]
    for _ in range(1000):  # a room of the same shard in another slot, which stays
        staying = unique("stay")
        slot = slot_of(keys.channel(staying).encode())
        if c.owner_port(keys.channel(staying)) == src and slot != slot_of(keys.channel(moving).encode()):
            break
    by_port[src] = [moving, staying]
    async with cluster_client(c) as rc, running_bus(c, rc, unique("gw")) as bus:
        live: dict[str, list[int]] = {}
        reported: list[str] = []
        bus.set_sink(lambda room_id, seq, frame: live.setdefault(room_id, []).append(seq))
        bus.on_resubscribed = reported.extend
        rooms = Rooms(rc)
        for room_ids in by_port.values():
            for room_id in room_ids:
                await rooms.create(room_id)
                await bus.subscribe(room_id)
        await rooms.emit(moving, 1)
        await wait_for(lambda: live.get(moving) == [1], what="the first event")
        move_slot(c, slot_of(keys.channel(moving).encode()), src, dst)
        # Redis unsubscribes the channel on the old owner (a `sunsubscribe` push); the bus finds
        # the new owner, subscribes there and reports the room so its gap can be repaired.
        await wait_for(lambda: moving in reported, 10 * UNIT, what="the moved room reported for repair")
        assert bus.room_shard[moving].addr == ("127.0.0.1", dst)
        assert bus.room_shard[staying].addr == ("127.0.0.1", src)
        for n in range(2, 5):
            await rooms.emit(moving, n)
            await rooms.emit(staying, n)
        await wait_for(lambda: live.get(moving) == [1, 2, 3, 4], what="events of the moved room from its new shard")
        await wait_for(lambda: live.get(staying) == [1, 2, 3], what="events of the room that stayed")
        assert staying not in reported
        dst_label = bus.room_shard[moving].label
        assert dict((label, resub) for label, _, resub, _ in bus.shard_stats())[dst_label] >= 1
        # A slot that moves while the replica holds no room in it leaves the bus's map stale:
        # the SSUBSCRIBE goes to the old owner, which answers MOVED; the bus follows it.
        taken = {slot_of(keys.channel(r).encode()) for r in (moving, staying)}
        for _ in range(1000):
            fresh = unique("fresh")
            slot = slot_of(keys.channel(fresh).encode())
            if slot not in taken and c.owner_port(keys.channel(fresh)) == src:
                break
        await rooms.create(fresh)
        move_slot(c, slot, src, dst)
        refreshes = bus.topology_refreshes
        await bus.subscribe(fresh)
        assert bus.room_shard[fresh].addr == ("127.0.0.1", dst)
        assert bus.topology_refreshes > refreshes
        await rooms.emit(fresh, 1)
        await wait_for(lambda: live.get(fresh) == [1], what="the event of a room subscribed after MOVED")


async def test_single_redis_carries_room_events_on_sharded_pubsub() -> None:
    # One Redis (no cluster) is one shard owning every slot: the gateways use SPUBLISH/SSUBSCRIBE
    # there too, and export that one shard's metrics.
    with cluster(2, 1) as c:
        room_id = unique("single")
        before = commandstat_of(c.redis.cli("INFO", "commandstats"), "spublish")
        async with Client.open(c.gateways[0].url) as host, Client.open(c.gateways[1].url) as member:
            await host.hello(unique("host"))
            assert (await host.request({"type": "create_room", "room_id": room_id, "game_type": "g"}))[
                "type"] == "room_created"
            await member.hello(unique("member"))
            assert (await member.request({"type": "join", "room_id": room_id}))["type"] == "joined"
            for n in range(20):
                assert (await host.request({"type": "event", "room_id": room_id, "event_type": "move",
                                            "payload": {"n": n}}))["type"] == "ack"
            seqs = []
            while len(seqs) < 21:  # the join, then the 20 events, on the other replica
                seqs.append((await member.expect(type="event", room_id=room_id))["seq"])
            assert seqs == list(range(seqs[0], seqs[0] + 21))
        stats = c.redis.cli("INFO", "commandstats")
        assert commandstat_of(stats, "spublish") - before >= 21
        assert commandstat_of(stats, "publish") == 0
        for g in c.gateways:
            metrics = parse_metrics((await ahttp_get(g.http + "/metrics"))[1])
            assert metrics['roomcast_pubsub_shard_connected{shard="0-16383"}'] == 1
            assert metrics['roomcast_pubsub_shard_failovers_total{shard="0-16383"}'] == 0


def commandstat_of(info: str, command: str) -> int:
    for line in info.splitlines():
        if line.startswith(f"cmdstat_{command}:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0
