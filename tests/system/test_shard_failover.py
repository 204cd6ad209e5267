"""Issue 13's failover acceptance test, end to end through the gateways.

A real Redis Cluster (3 primaries + 3 replicas, cluster-node-timeout 2000 ms), a coordinator
and two gateway processes in cluster mode; rooms on every shard, each with a publishing member
(~12 events/s) and a listening member on each gateway, all over real WebSockets (protocol v1).
Then one primary is SIGKILLed. What users rely on, and what this test checks:

- rooms on the other shards keep working throughout: every publish there is acked within 1 s;
- rooms on the failed shard work again (acks) within 20 s of the kill, with no process restarted;
- nothing acked more than 1 s before the kill is lost (what the members received, and a resume
  read of the room's stream: `join` with `since`);
- the members on both gateways see the same gap-free, duplicate-free order after the repair;
- `/readyz` stays honest: 200 on both gateways throughout (they can serve the rooms of the live
  shards; a 503 on every replica would take every room down behind the load balancer), with the
  failed shard reported down in its body while it is down and up again after;
- the per-shard metrics moved: the failover and the resubscribed rooms are counted for that
  shard only, and the RoomcastRedisShardDown alert's expression (deploy/prometheus/rules.yml)
  holds for that shard while it is down.

The bounds (1 s, 20 s) are the issue's and are asserted as they are; waits that are not asserted
bounds scale with the harness' time unit. The victim is the primary that owns `ws:nodes`, the
key of every gateway's registration heartbeat: the case where a gateway could wrongly think all
of Redis is gone. The measured ack latencies are written to test-output/shard-failover-*.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from roomcast.redis import keys
from tests.harness import (
    OUTPUT,
    UNIT,
    Client,
    Cluster,
    RedisClusterServer,
    ahttp_get,
    cluster,
    parse_metrics,
    redis_of_kind,
    unique,
)

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]

ACK_BOUND = 1.0  # the bound for acks on the live shards, seconds (not scaled)
RECOVERY_BOUND = 20.0  # the bound for the failed shard's rooms to work again (not scaled)
LOSS_WINDOW = 1.0  # acked more than this long before the kill must survive (not scaled)
ROOMS_PER_SHARD = 2
PUBLISH_INTERVAL = 0.08  # ~12 events/s per room


@dataclass
class Publish:
    n: int
    sent: float
    replied: float | None = None
    reply: dict[str, Any] | None = None

    @property
    def acked(self) -> bool:
        return self.reply is not None and self.reply.get("type") == "ack"

    @property
    def latency(self) -> float:
        return (self.replied if self.replied is not None else float("inf")) - self.sent


@dataclass
class Member:
    """One socket in one room: every event it receives in order, and its requests' replies
    matched by id (one reader task owns the socket)."""

    client: Client
    room_id: str
    gateway: int
    events: list[dict[str, Any]] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)  # when each of `events` arrived
    pending: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    joined: dict[str, Any] = field(default_factory=dict)
    reader: asyncio.Task[None] | None = None
    pinger: asyncio.Task[None] | None = None
    cm: Any = None

    def start(self) -> None:
        self.reader = asyncio.get_running_loop().create_task(self._read())
        self.pinger = self.client.start_pinging(1.0)

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed, asyncio.CancelledError):
            async for raw in self.client.ws:
                msg = orjson.loads(raw)
                fut = self.pending.pop(msg.get("re"), None) if "re" in msg else None
                if fut is not None:
                    if not fut.done():
                        fut.set_result(msg)
                elif msg.get("type") == "event" and msg.get("room_id") == self.room_id:
                    self.events.append(msg)
                    self.arrived.append(time.monotonic())

    async def request(self, msg: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        """The reply, or None if none came within `timeout`."""
        rid = self.client.next_id()
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        await self.client.send({**msg, "id": rid})
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            self.pending.pop(rid, None)
            return None

    def seqs(self) -> list[int]:
        return [e["seq"] for e in self.events]

    async def close(self) -> None:
        for task in (self.pinger, self.reader):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        with contextlib.suppress(Exception):
            await self.cm.__aexit__(None, None, None)


async def _open_member(url: str, room_id: str, gateway: int, *, create: bool) -> Member:
    cm = Client.open(url)
    client = await cm.__aenter__()
    await client.hello(unique("dev"))
    if create:
        reply = await client.request({"type": "create_room", "room_id": room_id, "game_type": "failover",
                                      "max_players": 10})
        assert reply["type"] == "room_created", reply
        joined: dict[str, Any] = {"seq": reply.get("seq", 0)}
    else:
        joined = await client.request({"type": "join", "room_id": room_id})
        assert joined["type"] == "joined", joined
    m = Member(client, room_id, gateway, joined=joined, cm=cm)
    m.start()
    return m


def _slot_ranges(redis: RedisClusterServer) -> dict[int, str]:
    """Primary port -> the slot range it serves, as the gateways label its shard ("lo-hi")."""
    out: dict[int, str] = {}
    for n in redis.primary_nodes():
        for line in n.cli("CLUSTER", "NODES").splitlines():
            f = line.split()
            if "myself" in f[2]:
                ranges = [r for r in f[8:] if not r.startswith("[")]
                lo, _, hi = ranges[0].partition("-")
                out[n.port] = f"{lo}-{hi or lo}"
    return out


def _rooms_by_primary(redis: RedisClusterServer, per_shard: int) -> dict[int, list[str]]:
    primaries = [n.port for n in redis.primary_nodes()]
    by_port: dict[int, list[str]] = {p: [] for p in primaries}
    for _ in range(500):
        if all(len(v) >= per_shard for v in by_port.values()):
            break
        room_id = unique("fo")
        port = redis.node_of(keys.room(room_id)).port
        if len(by_port[port]) < per_shard:
            by_port[port].append(room_id)
    assert all(len(v) == per_shard for v in by_port.values()), by_port
    return by_port


@dataclass
class Watch:
    """/readyz and /metrics of every gateway, polled throughout the failover."""

    readyz: list[tuple[float, int, int, str]] = field(default_factory=list)  # (t, gateway, status, body)
    scrapes: list[tuple[float, int, dict[str, float]]] = field(default_factory=list)


async def _watch(c: Cluster, watch: Watch, stop: asyncio.Event) -> None:
    last_scrape = 0.0
    for _ in range(10_000):
        if stop.is_set():
            return
        for i, g in enumerate(c.gateways):
            with contextlib.suppress(OSError):
                status, body = await ahttp_get(g.http + "/readyz", timeout=2.0)
                watch.readyz.append((time.monotonic(), i, status, body))
        if time.monotonic() - last_scrape >= 0.5:
            last_scrape = time.monotonic()
            for i, g in enumerate(c.gateways):
                with contextlib.suppress(OSError):
                    status, body = await ahttp_get(g.http + "/metrics", timeout=2.0)
                    if status == 200:
                        watch.scrapes.append((time.monotonic(), i, parse_metrics(body)))
        await asyncio.sleep(0.2)


async def _publisher(m: Member, log: list[Publish], stop: asyncio.Event) -> None:
    for n in range(5000):
        if stop.is_set():
            return
        p = Publish(n, time.monotonic())
        log.append(p)
        p.reply = await m.request({"type": "event", "room_id": m.room_id, "event_type": "tick", "payload": {"n": n}},
                                  timeout=RECOVERY_BOUND + 5 * UNIT)
        p.replied = time.monotonic() if p.reply is not None else None
        await asyncio.sleep(max(0.0, PUBLISH_INTERVAL - (time.monotonic() - p.sent)))


async def _final_event(m: Member) -> int:
    """One last event, retried while its shard still says `unavailable`: its seq."""
    for _ in range(100):
        reply = await m.request({"type": "event", "room_id": m.room_id, "event_type": "end"}, timeout=5 * UNIT)
        if reply is not None and reply["type"] == "ack":
            return int(reply["seq"])
        assert reply is None or reply.get("code") == "unavailable", reply
        await asyncio.sleep(0.2)
    raise AssertionError(f"no ack for the final event of {m.room_id}")


def _metric(scrape: dict[str, float], name: str, shard: str) -> float:
    return scrape.get(f'{name}{{shard="{shard}"}}', 0.0)


async def test_sigkill_of_a_primary_under_load_through_two_gateways() -> None:
    env = {"RATE_MESSAGES_PER_SEC": "1000", "RATE_MESSAGES_BURST": "1000"}
    with redis_of_kind("redis-cluster") as redis:
        assert isinstance(redis, RedisClusterServer) and redis.node_timeout_ms == 2000
        assert len(redis.primary_nodes()) == 3 and len(redis.nodes) == 6
        with cluster(2, 1, env, redis=redis) as c:
            await _run(redis, c)


async def _run(redis: RedisClusterServer, c: Cluster) -> None:
    ranges = _slot_ranges(redis)
    victim = redis.node_of(keys.NODES)
    label = ranges[victim.port]
    by_port = _rooms_by_primary(redis, ROOMS_PER_SHARD)
    victim_rooms = set(by_port[victim.port])
    rooms = [r for ids in by_port.values() for r in ids]
    pids = [g.proc.pid for g in c.gateways if g.proc] + [co.proc.pid for co in c.coordinators if co.proc]
    urls = [g.url for g in c.gateways]
    publishers: dict[str, Member] = {}
    listeners: dict[str, list[Member]] = {}
    logs: dict[str, list[Publish]] = {r: [] for r in rooms}
    stop, stop_watch = asyncio.Event(), asyncio.Event()
    watch = Watch()
    tasks: list[asyncio.Task[None]] = []
    try:
        for i, room_id in enumerate(rooms):
            publishers[room_id] = await _open_member(urls[i % 2], room_id, i % 2, create=True)
            listeners[room_id] = [await _open_member(urls[g], room_id, g, create=False) for g in (0, 1)]
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(_publisher(publishers[r], logs[r], stop)) for r in rooms]
        watcher = loop.create_task(_watch(c, watch, stop_watch))

        def ticks(m: Member) -> int:
            return sum(1 for e in m.events if e["event_type"] == "tick")

        deadline = time.monotonic() + 15 * UNIT
        while not all(ticks(m) >= 10 for ms in listeners.values() for m in ms):
            assert time.monotonic() < deadline, "no steady traffic on every room before the kill"
            assert not any(t.done() for t in tasks), [t.exception() for t in tasks if t.done()]
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)  # > LOSS_WINDOW of acked traffic before the kill
        assert all((s, g) == (200, g) for _, g, s, _ in watch.readyz), "a gateway was not ready before the kill"

        conns_before = _connections_received(redis, victim.port)
        victim.kill()
        killed = time.monotonic()

        # The failed shard's rooms work again: an ack for each, after the kill.
        def recovered_at(room_id: str) -> float | None:
            return next((p.replied for p in logs[room_id] if p.sent > killed and p.acked), None)

        wait_until = killed + max(RECOVERY_BOUND, RECOVERY_BOUND * UNIT) + 5
        while not all(recovered_at(r) is not None for r in victim_rooms) and time.monotonic() < wait_until:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        back = {r: recovered_at(r) for r in victim_rooms}
        assert all(t is not None for t in back.values()), f"the failed shard's rooms never acked again: {back}"
        recovered = max(t for t in back.values() if t is not None)
        # Traffic continues a while on every shard after the recovery, then stops.
        await asyncio.sleep(3.0)
        stop.set()
        await asyncio.gather(*tasks)
        # The metrics and /readyz once everything has settled (the probes run every second).
        settle = time.monotonic() + 10 * UNIT
        while time.monotonic() < settle:
            latest = {g: (s, b) for _, g, s, b in watch.readyz[-4:]}
            if all(s == 200 and f"shard {label} up" in b for s, b in latest.values()) and len(latest) == 2:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.6)  # one more scrape of each gateway
        stop_watch.set()
        await watcher

        # Every member gets the room's last event; then all is compared.
        finals = {r: await _final_event(publishers[r]) for r in rooms}
        for room_id in rooms:
            for m in (publishers[room_id], *listeners[room_id]):
                end = time.monotonic() + 15 * UNIT
                while not m.events or m.events[-1]["seq"] < finals[room_id]:
                    assert time.monotonic() < end, f"{room_id}: a member on gateway {m.gateway} missed the end: " \
                                                   f"{m.seqs()[-5:]} < {finals[room_id]}"
                    await asyncio.sleep(0.05)
        # Live events (or the repair) reach the failed shard's members again: the first event
        # after the kill, on each listener.
        delivered = {f"{r}@gw{m.gateway}": round(next(t for t in m.arrived if t > killed) - killed, 2)
                     for r in victim_rooms for m in listeners[r]}
        final_scrapes = [parse_metrics((await ahttp_get(g.http + "/metrics"))[1]) for g in c.gateways]
        report = _report(logs, victim_rooms, killed, recovered, back, label, watch)
        report["failed_shard"]["delivered_again_after_s"] = delivered
        # Connections the live primaries accepted during the failover and the rest of the run
        # (redis-py reconnects to every node after each slot-map refresh): for the report only.
        report["live_primaries_connections_received"] = {
            str(p): n - conns_before.get(p, 0) for p, n in _connections_received(redis, victim.port).items()}
        OUTPUT.mkdir(exist_ok=True)
        (OUTPUT / f"shard-failover-{int(time.time())}.json").write_bytes(
            orjson.dumps(report, option=orjson.OPT_INDENT_2))

        # 1. No process restarted.
        assert [g.proc.pid for g in c.gateways if g.proc] + [co.proc.pid for co in c.coordinators if co.proc] == pids
        assert all(g.alive() for g in c.gateways)
        assert all(co.proc is not None and co.proc.poll() is None for co in c.coordinators)

        # 2. Rooms on the other shards kept working throughout: every publish acked within 1 s.
        slow = report["live_shards"]["not_acked_within_bound"]
        assert not slow, f"live-shard publishes not acked within {ACK_BOUND}s: {slow[:10]} " \
                         f"({len(slow)} of {report['live_shards']['publishes']}; max {report['live_shards']['max']})"

        # 3. The failed shard's rooms worked again within 20 s of the kill.
        assert recovered - killed <= RECOVERY_BOUND, f"recovered {recovered - killed:.1f}s after the kill"
        assert max(delivered.values()) <= RECOVERY_BOUND, f"events reached the members again only after {delivered}"

        # 4. Members on both gateways: the same gap-free, duplicate-free order, on every room.
        for room_id in rooms:
            a, b = listeners[room_id]
            start = max(a.joined["seq"], b.joined["seq"])
            sa = [(e["seq"], e["event_type"], e.get("payload")) for e in a.events if e["seq"] > start]
            sb = [(e["seq"], e["event_type"], e.get("payload")) for e in b.events if e["seq"] > start]
            assert [s for s, _, _ in sa] == list(range(start + 1, finals[room_id] + 1)), \
                f"{room_id} ({'failed' if room_id in victim_rooms else 'live'} shard): gap or duplicate on gateway 0"
            assert sa == sb, f"{room_id}: the two gateways disagree on the order"
            pub = [(e["seq"], e["event_type"], e.get("payload")) for e in publishers[room_id].events if e["seq"] > start]
            assert pub == sa, f"{room_id}: the publisher's own view differs"

        # 5. Nothing acked more than a second before the kill is lost: in what the members got
        # and in a resume read of the room's stream (join with since).
        for room_id in rooms:
            acked = {p.reply["seq"]: p.n for p in logs[room_id] if p.acked and p.replied is not None
                     and p.replied < killed - LOSS_WINDOW and p.reply is not None}
            got = {e["seq"]: e["payload"]["n"] for e in listeners[room_id][0].events if e["event_type"] == "tick"}
            missing = {s: n for s, n in acked.items() if got.get(s) != n}
            assert not missing, f"{room_id}: acked before the kill, not received: {sorted(missing)[:10]}"
            since = min(acked) - 1
            async with Client.open(urls[1]) as reader:
                await reader.hello(unique("resume"))
                joined = await reader.request({"type": "join", "room_id": room_id, "role": "spectator",
                                               "since": since, "epoch": listeners[room_id][0].joined["epoch"]})
                assert joined["type"] == "joined" and joined["recovered"] is True, joined
                replay = await reader.events(room_id, finals[room_id] - since, 10 * UNIT)
            stream = {e["seq"]: e["payload"]["n"] for e in replay if e["event_type"] == "tick"}
            assert [e["seq"] for e in replay] == list(range(since + 1, finals[room_id] + 1)), room_id
            lost = {s: n for s, n in acked.items() if stream.get(s) != n}
            assert not lost, f"{room_id}: acked before the kill, not in the room's stream: {sorted(lost)[:10]}"
            assert [(e["seq"], e["event_type"], e.get("payload")) for e in replay] == [
                (e["seq"], e["event_type"], e.get("payload")) for e in listeners[room_id][0].events
                if since < e["seq"] <= finals[room_id]], f"{room_id}: the stream and the live events differ"

        # 6. /readyz stayed honest: ready on both gateways throughout, the failed shard reported
        # down while it was down and up again after.
        not_ready = [(round(t - killed, 2), g, s, b) for t, g, s, b in watch.readyz if s != 200]
        assert not not_ready, f"/readyz said not ready while the live shards served: {not_ready[:5]}"
        for g in (0, 1):
            bodies = [(t, b) for t, gg, _, b in watch.readyz if gg == g]
            assert any(killed < t < recovered and f"shard {label} down" in b for t, b in bodies), \
                f"gateway {g}'s /readyz never reported shard {label} down"
            assert f"shard {label} up" in bodies[-1][1], bodies[-1][1]
            assert all(f"shard {r} up" in bodies[-1][1] for r in ranges.values()), bodies[-1][1]

        # 7. The per-shard metrics: one failover seen and the rooms resubscribed, for that shard
        # only; its subscription down on both gateways at once (the RoomcastRedisShardDown
        # expression, `max by (shard) (roomcast_pubsub_shard_connected) == 0`), up again after.
        for g, last in enumerate(final_scrapes):
            assert _metric(last, "roomcast_pubsub_shard_failovers_total", label) == 1, (g, label)
            assert _metric(last, "roomcast_pubsub_shard_resubscribes_total", label) >= ROOMS_PER_SHARD, (g, label)
            assert _metric(last, "roomcast_pubsub_shard_connected", label) == 1
            assert _metric(last, "roomcast_redis_shard_up", label) == 1
            for other in ranges.values():
                if other != label:
                    assert _metric(last, "roomcast_pubsub_shard_failovers_total", other) == 0, (g, other)
        down_at = _alert_expression_true(watch, label, killed, recovered)
        assert down_at, f"max by (shard) (roomcast_pubsub_shard_connected{{shard={label!r}}}) never was 0"
        assert any(_metric(s, "roomcast_redis_shard_up", label) == 0 for t, _, s in watch.scrapes
                   if killed < t < recovered), "roomcast_redis_shard_up never showed the shard down"
    finally:
        stop.set()
        stop_watch.set()
        for t in tasks:
            t.cancel()
        for m in [*publishers.values(), *(m for ms in listeners.values() for m in ms)]:
            await m.close()


def _connections_received(redis: RedisClusterServer, victim: int) -> dict[int, int]:
    out = {}
    for n in redis.primary_nodes():
        if n.port != victim:
            for line in n.cli("INFO", "stats").splitlines():
                if line.startswith("total_connections_received:"):
                    out[n.port] = int(line.split(":")[1])
    return out


def _alert_expression_true(watch: Watch, label: str, killed: float, recovered: float) -> list[float]:
    """The times at which `max by (shard) (roomcast_pubsub_shard_connected) == 0` held for the
    shard, taking each gateway's latest scrape (as Prometheus would at that instant)."""
    latest: dict[int, dict[str, float]] = {}
    out = []
    for t, g, scrape in watch.scrapes:
        latest[g] = scrape
        if len(latest) == 2 and killed < t < recovered + 2 and \
                max(_metric(s, "roomcast_pubsub_shard_connected", label) for s in latest.values()) == 0:
            out.append(t - killed)
    return out


def _report(logs: dict[str, list[Publish]], victim_rooms: set[str], killed: float, recovered: float,
            back: dict[str, float | None], label: str, watch: Watch) -> dict[str, Any]:
    live = [p for r, ps in logs.items() if r not in victim_rooms for p in ps]
    during = [p for p in live if killed - 1.0 <= p.sent <= recovered + 1.0]
    lat = sorted(p.latency for p in live if p.replied is not None)
    slow = [(round(p.sent - killed, 2), round(p.latency, 3), (p.reply or {}).get("code")) for p in live
            if not p.acked or p.latency > ACK_BOUND]
    failed = [p for r, ps in logs.items() if r in victim_rooms for p in ps]
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    return {
        "loadavg": load,
        "shard": label,
        "recovered_after_s": {r: round(t - killed, 2) if t else None for r, t in back.items()},
        "live_shards": {
            "publishes": len(live), "in_failover_window": len(during),
            "p50": lat[len(lat) // 2] if lat else None, "p99": lat[int(len(lat) * 0.99)] if lat else None,
            "max": lat[-1] if lat else None, "not_acked_within_bound": slow,
            "max_in_failover_window": max((p.latency for p in during), default=None),
            "max_outside": max((p.latency for p in live if p not in during), default=None),
            "slowest": sorted(((round(p.latency, 3), round(p.sent - killed, 2)) for p in live), reverse=True)[:5],
        },
        "failed_shard": {
            "publishes": len(failed), "acked": sum(p.acked for p in failed),
            "errors": sorted({(p.reply or {}).get("code", "no reply") for p in failed if not p.acked}),
            "unavailable_after_recovery": sum(1 for p in failed if not p.acked and p.sent > recovered),
        },
        "readyz_not_200": sum(1 for _, _, s, _ in watch.readyz if s != 200),
    }


async def test_first_command_after_a_failover_is_not_failed_by_a_stale_slot_map() -> None:
    """The batcher's slot map may still name the dead primary after its replica took over
    (it was refreshed while the failover was under way, and no command failed since). The
    first command for those slots is refused by the dead node, so it cannot have run: the
    batcher refreshes the map and sends it once more, to the new primary, instead of failing
    it with `unavailable`."""
    from roomcast.errors import ErrorCode, GatewayError
    from roomcast.redis.batch import Batcher, cmd
    from roomcast.redis.client import make_client

    with redis_of_kind("redis-cluster") as redis:
        assert isinstance(redis, RedisClusterServer)
        batcher = Batcher(make_client(redis.url))
        try:
            assert await batcher.detect()
            victim = next(n for n in redis.primary_nodes() if n.port != redis.port)
            dead_key = next(f"k{{{n}}}" for n in range(1000) if redis.node_of(f"k{{{n}}}").port == victim.port)
            live_key = next(f"k{{{n}}}" for n in range(1000) if redis.node_of(f"k{{{n}}}").port != victim.port)
            assert await batcher.call(cmd("set", dead_key, "kept"))
            # On every replica of the victim, so whichever is promoted has it.
            info = dict(line.split(":", 1) for line in victim.cli("INFO", "replication").splitlines() if ":" in line)
            replicas = int(info["connected_slaves"])
            assert replicas >= 1
            assert victim.cli("WAIT", str(replicas), "2000") == str(replicas)
            # The promise is for writes acked more than a second before the kill.
            await asyncio.sleep(1.1)
            victim.kill()
            killed = time.monotonic()
            with pytest.raises(GatewayError) as exc:
                await batcher.call(cmd("get", dead_key))
            assert exc.value.code is ErrorCode.UNAVAILABLE
            await asyncio.sleep(0.3)  # a refresh is due: the next batch makes one
            assert await batcher.call(cmd("incr", live_key)) == 1  # refreshed: the map still names the dead node
            polls = 0
            while True:  # the replica takes over (no batcher command meanwhile)
                assert time.monotonic() - killed < RECOVERY_BOUND * UNIT, "no failover"
                with contextlib.suppress(LookupError):
                    if redis.node_of(dead_key).port != victim.port:
                        break
                polls += 1
                await asyncio.sleep(0.1)
            assert polls, "the failover was over before the map was refreshed"
            await asyncio.sleep(0.3)
            retried = batcher.retried
            assert await batcher.call(cmd("get", dead_key)) == b"kept"  # the first try, not `unavailable`
            assert batcher.retried == retried + 1
        finally:
            await batcher.aclose()
