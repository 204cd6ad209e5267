"""Cluster behaviour with a real Redis, a coordinator and several gateway processes; each
test that takes `three` runs on a single Redis and on a Redis Cluster (3 primaries + 3
replicas: the gateways are given one node's URL and find the rest)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from typing import Any

import pytest

from tests.harness import (
    REDIS_KINDS,
    UNIT,
    Client,
    Cluster,
    GatewayProcess,
    RedisClusterServer,
    StallProxy,
    ahttp_get,
    cluster,
    free_port,
    redis_of_kind,
    unique,
)

pytestmark = pytest.mark.system


async def _member(url: str, device: str, room_id: str, **join: Any) -> Client:
    cm = Client.open(url)
    client = await cm.__aenter__()
    client._cm = cm  # type: ignore[attr-defined]
    await client.hello(device)
    client.start_pinging()
    reply = await client.request({"type": "join", "room_id": room_id, **join})
    assert reply["type"] == "joined", reply
    client.joined = reply  # type: ignore[attr-defined]
    return client


async def _close(*clients: Client) -> None:
    for c in clients:
        with contextlib.suppress(Exception):
            await c._cm.__aexit__(None, None, None)  # type: ignore[attr-defined]


def _seqs(events: list[dict[str, Any]]) -> list[int]:
    return [e["seq"] for e in events]


async def _drain_events(client: Client, room_id: str, until_seq: int, timeout: float = 10 * UNIT) -> list[dict[str, Any]]:
    """Collect the room's events until one with seq >= until_seq arrives."""
    out: list[dict[str, Any]] = []
    while not out or out[-1]["seq"] < until_seq:
        out.append(await client.expect(timeout, type="event", room_id=room_id))
    return out


@pytest.fixture(scope="module", params=REDIS_KINDS)
def three(request: pytest.FixtureRequest) -> Any:
    with redis_of_kind(request.param) as redis, cluster(3, 1, {
            "WEBSOCKET_HEARTBEAT_TIMEOUT": "2000", "RATE_MESSAGES_PER_SEC": "1000", "RATE_MESSAGES_BURST": "1000"},
            redis=redis) as c:
        yield c


def _kind(c: Cluster) -> str:
    return "redis-cluster" if isinstance(c.redis, RedisClusterServer) else "redis"


async def test_concurrent_events_from_all_replicas_arrive_in_one_order(three: Cluster) -> None:
    room_id = unique("order")
    host_cm = Client.open(three.gateways[0].url)
    host = await host_cm.__aenter__()
    await host.hello(unique("host"))
    created = await host.request({"type": "create_room", "room_id": room_id, "game_type": "race", "max_players": 20})
    assert created["type"] == "room_created"
    members = [await _member(g.url, unique(f"dev{i}"), room_id) for i, g in enumerate(three.gateways * 2)]
    everyone = [host, *members]
    per_client = 15
    head = max(m.joined["seq"] for m in members)  # type: ignore[attr-defined]
    # Wait until everyone has seen every join, so all collect from the same point.
    join_head = head + 1
    for c in everyone:
        await _drain_events(c, room_id, join_head)

    async def burst(c: Client) -> None:
        for i in range(per_client):
            await c.send({"type": "event", "room_id": room_id, "event_type": "move", "payload": {"i": i}})

    await asyncio.gather(*(burst(c) for c in everyone))
    final = join_head + per_client * len(everyone)
    streams = [await _drain_events(c, room_id, final) for c in everyone]
    orders = [[(e["seq"], e["from"]["device_id"], e["payload"]["i"]) for e in s] for s in streams]
    assert all(o == orders[0] for o in orders), "replicas disagree on the order"
    assert _seqs(streams[0]) == list(range(join_head + 1, final + 1))  # gap-free, no duplicate
    await _close(*everyone)
    await host_cm.__aexit__(None, None, None)


async def test_capacity_race_across_replicas_admits_exactly_the_free_places(three: Cluster) -> None:
    room_id = unique("cap")
    places = 4
    async with Client.open(three.gateways[0].url) as host:
        await host.hello(unique("host"))
        await host.request({"type": "create_room", "room_id": room_id, "game_type": "race", "max_players": places + 1})
        racers = []
        for i in range(12):
            cm = Client.open(three.gateways[i % 3].url)
            c = await cm.__aenter__()
            c._cm = cm  # type: ignore[attr-defined]
            await c.hello(unique(f"racer{i}"))
            racers.append(c)
        replies = await asyncio.gather(*(c.request({"type": "join", "room_id": room_id}) for c in racers))
        kinds = sorted(r["type"] if r["type"] == "joined" else r["code"] for r in replies)
        assert kinds.count("joined") == places
        assert kinds.count("room_full") == 12 - places
        # Spectators still get in; the room snapshot agrees with the race's outcome.
        async with Client.open(three.gateways[2].url) as spec:
            await spec.hello(unique("spec"))
            joined = await spec.request({"type": "join", "room_id": room_id, "role": "spectator"})
            assert joined["type"] == "joined"
            assert joined["room"]["current_players"] == places + 1
        await _close(*racers)


async def test_killed_replica_clients_resume_elsewhere_exactly_once(three: Cluster) -> None:
    # A private cluster: this test kills one of its replicas.
    with redis_of_kind(_kind(three)) as redis, cluster(3, 1, {"WEBSOCKET_HEARTBEAT_TIMEOUT": "2000"},
                                                        redis=redis) as c:
        room_id = unique("kill")
        gw0, gw1, gw2 = c.gateways
        async with Client.open(gw0.url) as host:
            await host.hello(unique("host"))
            host.start_pinging()
            await host.request({"type": "create_room", "room_id": room_id, "game_type": "g", "max_players": 10})
            stayer = await _member(gw1.url, unique("stayer"), room_id)
            mover_dev = unique("mover")
            mover = await _member(gw2.url, mover_dev, room_id)
            ghost_dev = unique("ghost")
            ghost = await _member(gw2.url, ghost_dev, room_id)  # never comes back
            seen: list[dict[str, Any]] = []
            stop = asyncio.Event()

            async def publisher() -> int:
                n = 0
                while not stop.is_set() and n < 400:
                    ack = await host.request({"type": "event", "room_id": room_id, "event_type": "tick",
                                              "payload": {"n": n}})
                    assert ack["type"] == "ack", ack
                    n += 1
                    await asyncio.sleep(0.01)
                return n

            pub = asyncio.create_task(publisher())
            # The mover reads some events, then its replica dies under it.
            while len([e for e in seen if e["event_type"] == "tick"]) < 20:
                seen.append(await mover.expect(type="event", room_id=room_id))
            killed_at = time.monotonic()
            gw2.signal(signal.SIGKILL)
            gw2.proc.wait()  # type: ignore[union-attr]
            # Whatever the mover had already received before the kill still counts.
            with contextlib.suppress(Exception):
                while True:
                    seen.append(await mover.expect(0.2 * UNIT, type="event", room_id=room_id))
            await _close(mover)
            last = seen[-1]["seq"]
            epoch = mover.joined["epoch"]  # type: ignore[attr-defined]
            async with Client.open(gw0.url) as back:
                welcome = await back.hello(mover_dev)
                back.start_pinging()
                assert welcome["reconnect_count"] >= 1
                assert {"room_id": room_id, "role": "player"}.items() <= next(
                    r for r in welcome["rooms"] if r["room_id"] == room_id).items()
                rejoined = await back.request({"type": "join", "room_id": room_id, "since": last, "epoch": epoch})
                assert rejoined["recovered"] is True and rejoined["role"] == "player"
                await asyncio.sleep(0.3 * UNIT)
                stop.set()
                total = await pub
                # Collect up to the host's last tick.
                final_seq = (await host.expect(type="event", room_id=room_id, event_type="tick",
                                               payload={"n": total - 1}))["seq"]
                after = await _drain_events(back, room_id, final_seq)
                all_seqs = _seqs(seen) + _seqs(after)
                assert all_seqs == list(range(all_seqs[0], final_seq + 1)), "gap or duplicate across the failover"
                # Everyone else learnt about the ghost (timed out by the coordinator) and the mover.
                timeout_evt = await stayer.expect(2000 / 1000 * UNIT + 4 * UNIT, type="event", room_id=room_id,
                                                  event_type="participant_disconnected",
                                                  payload={"device_id": ghost_dev, "role": "player",
                                                           "reason": "timeout"})
                assert timeout_evt["ts"] / 1000 - time.time() < 1
                assert time.monotonic() - killed_at <= 2.0 + 2.0 + 1.0 * UNIT
                moved = await stayer.expect(type="event", room_id=room_id, event_type="participant_reconnected",
                                            payload={"device_id": mover_dev, "role": "player"})
                assert moved["seq"] > last
                # Without Postgres no lifecycle stream is written (nothing would read it);
                # with DATABASE_URL the flusher records the socket as `timeout` in Postgres.
                assert c.redis.cli("EXISTS", "ws:lifecycle") == "0"
            await _close(stayer, ghost)


async def test_standby_coordinator_takes_over(three: Cluster) -> None:
    with redis_of_kind(_kind(three)) as redis, cluster(1, 2, {
            "COORDINATOR_LEASE_TTL": "1500", "WEBSOCKET_HEARTBEAT_TIMEOUT": "1500"}, redis=redis) as c:
        deadline = time.monotonic() + 10 * UNIT
        leaders: list[int] = []
        while time.monotonic() < deadline:
            leaders = [i for i, co in enumerate(c.coordinators) if co.metric("roomcast_coordinator_leader") == 1]
            if leaders:
                break
            await asyncio.sleep(0.1)
        assert len(leaders) == 1
        active, standby = c.coordinators[leaders[0]], c.coordinators[1 - leaders[0]]
        assert standby.metric("roomcast_coordinator_leader") == 0
        active.kill()
        killed = time.monotonic()
        while standby.metric("roomcast_coordinator_leader") != 1:
            assert time.monotonic() - killed < 5 * UNIT, "standby did not take over"
            await asyncio.sleep(0.1)
        # The new leader does the reaper's work: a socket that goes silent is timed out.
        async with Client.open(c.gateways[0].url) as watcher, Client.open(c.gateways[0].url) as silent:
            room_id = unique("lease")
            await watcher.hello(unique("w"))
            watcher.start_pinging()
            await watcher.request({"type": "create_room", "room_id": room_id, "game_type": "g"})
            await silent.hello(unique("s"))
            await silent.request({"type": "join", "room_id": room_id})
            evt = await watcher.expect(6 * UNIT, type="event", event_type="participant_disconnected")
            assert evt["payload"]["reason"] == "timeout"
        assert standby.metric("roomcast_cluster_replicas") == 1


async def test_pubsub_connection_killed_is_rebuilt_without_losing_events(three: Cluster) -> None:
    room_id = unique("pubsub")
    gw0, gw1 = three.gateways[0], three.gateways[1]
    async with Client.open(gw0.url) as host, Client.open(gw1.url) as far:
        await host.hello(unique("h"))
        await host.request({"type": "create_room", "room_id": room_id, "game_type": "g"})
        await far.hello(unique("f"))
        far.start_pinging()
        joined = await far.request({"type": "join", "room_id": room_id})
        # On a Redis Cluster the sharded bus counts a shard's subscriber coming back per shard.
        rebuilt = "roomcast_pubsub_shard_resubscribes_total" if _kind(three) == "redis-cluster" else \
            "roomcast_pubsub_reconnects_total"
        before = _metric(await ahttp_get(gw1.http + "/metrics"), rebuilt)
        if isinstance(three.redis, RedisClusterServer):
            three.redis.cli_all("CLIENT", "KILL", "TYPE", "pubsub")
        else:
            three.redis.cli("CLIENT", "KILL", "TYPE", "pubsub")
        for n in range(30):
            ack = await host.request({"type": "event", "room_id": room_id, "event_type": "tick", "payload": {"n": n}})
            assert ack["type"] in ("ack", "error")
            await asyncio.sleep(0.02)
        acked_last = (await host.request({"type": "event", "room_id": room_id, "event_type": "tick",
                                          "payload": {"n": 99}}))["seq"]
        got = await _drain_events(far, room_id, acked_last, 10 * UNIT)
        seqs = _seqs(got)
        assert seqs == list(range(joined["seq"] + 1, acked_last + 1))
        after = _metric(await ahttp_get(gw1.http + "/metrics"), rebuilt)
        assert after > before


def _metric(resp: tuple[int, str], name: str) -> float:
    """The sum of all series of a metric (per shard, on a Redis Cluster)."""
    found = [float(line.rsplit(" ", 1)[1]) for line in resp[1].splitlines()
             if line.startswith(name + " ") or line.startswith(name + "{")]
    if not found:
        raise AssertionError(f"metric {name} missing")
    return sum(found)


async def test_redis_outage_is_survived_without_restarts() -> None:
    with cluster(2, 1, {"PUBSUB_PROBE_INTERVAL": "300", "PUBSUB_PROBE_TIMEOUT": "1000"}) as c:
        gw0, gw1 = c.gateways
        room_id = unique("outage")
        async with Client.open(gw0.url) as old:
            await old.hello(unique("old"))
            await old.request({"type": "create_room", "room_id": room_id, "game_type": "g"})
            c.redis.stop()
            stopped = time.monotonic()
            # While Redis is down: not ready, and requests get `unavailable`.
            while (await ahttp_get(gw0.http + "/readyz"))[0] != 503:
                assert time.monotonic() - stopped < 5 * UNIT
                await asyncio.sleep(0.1)
            reply = await old.request({"type": "event", "room_id": room_id, "event_type": "x"})
            assert reply["type"] == "error" and reply["code"] == "unavailable"
            await asyncio.sleep(max(0.0, 10 - (time.monotonic() - stopped)))
            c.redis.start()  # same port, empty: the old room's state is gone
            for g in (gw0, gw1):
                deadline = time.monotonic() + 15 * UNIT
                while (await ahttp_get(g.http + "/readyz"))[0] != 200:
                    assert time.monotonic() < deadline, "gateway did not recover"
                    await asyncio.sleep(0.1)
            # The socket whose room vanished is told to reconnect and reload (1012).
            assert await old.closed(10 * UNIT) == 1012
        # New work across both replicas, with no restart of any process.
        room2 = unique("after")
        async with Client.open(gw0.url) as a, Client.open(gw1.url) as b:
            await a.hello(unique("a"))
            assert (await a.request({"type": "create_room", "room_id": room2, "game_type": "g"}))["type"] == "room_created"
            await b.hello(unique("b"))
            assert (await b.request({"type": "join", "room_id": room2}))["type"] == "joined"
            ack = await a.request({"type": "event", "room_id": room2, "event_type": "hello", "payload": {}})
            got = await b.expect(type="event", room_id=room2, event_type="hello")
            assert got["seq"] == ack["seq"]
        assert all(g.proc is not None and g.proc.poll() is None for g in c.gateways)


@pytest.fixture(scope="module")
def three_on_one_redis() -> Any:
    """Like `three`, on a single Redis only. REDIS_PUBSUB_URL through a proxy to one node is a
    single-Redis setup: on a Redis Cluster the sharded bus learns every primary from CLUSTER
    SLOTS and connects to each itself, so a proxy in front of one node would carry none of its
    subscriptions. (The per-shard probe and failover on a cluster: tests/system/test_sharded_pubsub.py.)"""
    with redis_of_kind("redis") as redis, cluster(3, 1, {
            "WEBSOCKET_HEARTBEAT_TIMEOUT": "2000", "RATE_MESSAGES_PER_SEC": "1000", "RATE_MESSAGES_BURST": "1000"},
            redis=redis) as c:
        yield c


async def test_silently_stalled_subscription_is_noticed_and_rebuilt(three_on_one_redis: Cluster) -> None:
    three = three_on_one_redis
    proxy = StallProxy(three.redis.port)
    env = dict(three.env, GATEWAY_PORT=str(free_port()), NODE_ID="gw-stall", REDIS_PUBSUB_URL=proxy.url,
               PUBSUB_PROBE_INTERVAL="200", PUBSUB_PROBE_TIMEOUT="800")
    far_gw = GatewayProcess(int(env["GATEWAY_PORT"]), env).start()
    try:
        room_id = unique("stall")
        async with Client.open(three.gateways[0].url) as host, Client.open(far_gw.url) as far:
            await host.hello(unique("h"))
            await host.request({"type": "create_room", "room_id": room_id, "game_type": "g"})
            await far.hello(unique("f"))
            far.start_pinging()
            joined = await far.request({"type": "join", "room_id": room_id})
            before = _metric(await ahttp_get(far_gw.http + "/metrics"), "roomcast_pubsub_reconnects_total")
            proxy.stall_existing()  # the subscription goes silent; nothing is closed
            last = joined["seq"]
            for n in range(40):
                ack = await host.request({"type": "event", "room_id": room_id, "event_type": "tick",
                                          "payload": {"n": n}})
                last = ack["seq"]
                await asyncio.sleep(0.05)
            got = await _drain_events(far, room_id, last, 10 * UNIT)
            assert _seqs(got) == list(range(joined["seq"] + 1, last + 1))
            after = _metric(await ahttp_get(far_gw.http + "/metrics"), "roomcast_pubsub_reconnects_total")
            assert after > before
            assert "probe not seen" in far_gw.log()
    finally:
        far_gw.stop()
        proxy.close()


async def test_join_on_a_lagging_replica_does_not_make_existing_members_skip_events(
        three_on_one_redis: Cluster) -> None:
    """A joiner's head comes from the command connection and may be ahead of this replica's
    pub/sub stream; members already there must still get every event in between."""
    three = three_on_one_redis
    proxy = StallProxy(three.redis.port)
    env = dict(three.env, GATEWAY_PORT=str(free_port()), NODE_ID="gw-lag", REDIS_PUBSUB_URL=proxy.url,
               PUBSUB_PROBE_INTERVAL="200", PUBSUB_PROBE_TIMEOUT="1500")
    lagging = GatewayProcess(int(env["GATEWAY_PORT"]), env).start()
    try:
        room_id = unique("lag")
        async with Client.open(three.gateways[0].url) as host, Client.open(lagging.url) as early, \
                Client.open(lagging.url) as late:
            await host.hello(unique("h"))
            host.start_pinging()
            await host.request({"type": "create_room", "room_id": room_id, "game_type": "g"})
            await early.hello(unique("early"))
            early.start_pinging()
            joined = await early.request({"type": "join", "room_id": room_id})
            proxy.stall_existing()  # this replica's subscription falls behind
            last = joined["seq"]
            for n in range(5):
                last = (await host.request({"type": "event", "room_id": room_id, "event_type": "tick",
                                            "payload": {"n": n}}))["seq"]
            await late.hello(unique("late"))
            late.start_pinging()
            late_joined = await late.request({"type": "join", "room_id": room_id})
            assert late_joined["seq"] >= last  # its head is ahead of what pub/sub delivered here
            final = (await host.request({"type": "event", "room_id": room_id, "event_type": "tick",
                                         "payload": {"n": 99}}))["seq"]
            got = await _drain_events(early, room_id, final, 15 * UNIT)
            assert _seqs(got) == list(range(joined["seq"] + 1, final + 1)), "the existing member skipped events"
            got_late = await _drain_events(late, room_id, final, 15 * UNIT)
            assert _seqs(got_late) == list(range(late_joined["seq"] + 1, final + 1))
    finally:
        lagging.stop()
        proxy.close()


# Global keys a single Redis keeps as one key each; in a Redis Cluster they are spread over
# buckets (roomcast/redis/keys.py, docs/redis-layout.md) and must not exist as one key.
_GLOBAL = ("ws:presence", "ws:rooms", "ws:rooms:alive", "ws:rooms:status:waiting", "ws:rooms:status:in_progress",
           "ws:rooms:status:waiting:game:spread", "ws:disconnected")


async def test_rooms_on_every_shard_with_members_on_two_replicas_and_no_hot_key(three: Cluster) -> None:
    """Rooms whose keys live on every primary, members on two replicas: both see the same
    gap-free order. On a Redis Cluster every primary holds room keys and a share of the
    global ones (presence, room indexes, the MAX_ROOMS count, the prune queue), none of which
    exists as one key; on one Redis they are the single keys they always were."""
    redis = three.redis
    room_ids: list[str] = []
    if isinstance(redis, RedisClusterServer):
        primaries = {n.port for n in redis.primary_nodes()}
        by_node: dict[int, list[str]] = {p: [] for p in primaries}
        for _ in range(200):  # room ids until each primary owns three
            rid = unique("spread")
            owner = redis.node_of(f"ws:room:{{{rid}}}").port
            if len(by_node[owner]) < 3:
                by_node[owner].append(rid)
            if all(len(v) == 3 for v in by_node.values()):
                break
        room_ids = [r for v in by_node.values() for r in v]
        assert len(room_ids) == 3 * len(primaries)
    else:
        room_ids = [unique("spread") for _ in range(9)]
    gw0, gw1 = three.gateways[0], three.gateways[1]
    hosts: list[Client] = []
    far: list[Client] = []
    try:
        for rid in room_ids:
            cm = Client.open(gw0.url)
            host = await cm.__aenter__()
            host._cm = cm  # type: ignore[attr-defined]
            hosts.append(host)
            await host.hello(unique("h"))
            host.start_pinging()
            created = await host.request({"type": "create_room", "room_id": rid, "game_type": "spread"})
            assert created["type"] == "room_created", created
            far.append(await _member(gw1.url, unique("f"), rid))
        disconnected = await _member(gw1.url, unique("gone"), room_ids[0])
        await _close(disconnected)  # leaves an entry in the prune queue
        heads: list[int] = []
        for n in range(5):
            acks = await asyncio.gather(*(c.request({"type": "event", "room_id": rid, "event_type": "tick",
                                                     "payload": {"n": n}})
                                          for c, rid in [*zip(hosts, room_ids, strict=True),
                                                         *zip(far, room_ids, strict=True)]))
            assert all(a["type"] == "ack" for a in acks), acks
        for host, member, rid in zip(hosts, far, room_ids, strict=True):
            heads.append((await host.request({"type": "event", "room_id": rid, "event_type": "end"}))["seq"])
            start = member.joined["seq"]  # type: ignore[attr-defined]
            at_host = [e for e in await _drain_events(host, rid, heads[-1]) if e["seq"] > start]
            at_far = await _drain_events(member, rid, heads[-1])
            assert _seqs(at_far) == list(range(start + 1, heads[-1] + 1)), f"gap in {rid}"
            assert [(e["seq"], e["event_type"]) for e in at_host] == [(e["seq"], e["event_type"]) for e in at_far]
        await asyncio.sleep(1.5 * UNIT)  # a presence flush from both replicas
        if isinstance(redis, RedisClusterServer):
            held = redis.keys()
            for port, names in held.items():
                assert any(k.startswith("ws:room:{spread-") for k in names), f"primary {port} holds no room"
            every = {k for names in held.values() for k in names}
            assert not every & set(_GLOBAL), f"a global key is one key in the cluster: {every & set(_GLOBAL)}"
            for name in ("ws:presence", "ws:rooms", "ws:rooms:alive", "ws:rooms:status:waiting"):
                where = {port for port, names in held.items() if any(k.startswith(name + ":{ws:b") for k in names)}
                assert len(where) >= 2, f"{name} is not spread over the primaries: {where}"
            assert any(k.startswith("ws:disconnected:{ws:b") for k in every)
        else:
            for name in ("ws:presence", "ws:rooms", "ws:rooms:alive", "ws:rooms:status:waiting", "ws:disconnected"):
                assert redis.cli("EXISTS", name) == "1", name
            assert redis.cli("--scan", "--pattern", "ws:*{ws:b*") == ""
    finally:
        await _close(*hosts, *far)


async def test_coordinator_survives_a_failover_of_its_lease_node() -> None:
    """SIGKILL of the primary that holds the coordinator's lease: its replica takes over,
    the coordinator (not restarted) leads again and reaps across every shard, and rooms
    created afterwards work, wherever their slot is."""
    env = {"COORDINATOR_LEASE_TTL": "1500", "WEBSOCKET_HEARTBEAT_TIMEOUT": "1500"}
    with redis_of_kind("redis-cluster") as redis:
        assert isinstance(redis, RedisClusterServer)
        # REDIS_URL names another node: the classic pub/sub of this branch subscribes on that
        # one node only (the sharded bus, issue 13 part B, subscribes on every primary).
        lease_node = redis.node_of("ws:lease:coordinator")
        redis.entry = next(i for i, n in enumerate(redis.nodes) if n is not lease_node)
        with cluster(1, 1, env, redis=redis) as c:
            await _lease_failover(redis, c)


async def _lease_failover(redis: RedisClusterServer, c: Cluster) -> None:
    if True:  # (indented as the test's body)
        coord = c.coordinators[0]
        deadline = time.monotonic() + 10 * UNIT
        while coord.metric("roomcast_coordinator_leader") != 1:
            assert time.monotonic() < deadline, "the coordinator never led"
            await asyncio.sleep(0.1)
        victim = redis.node_of("ws:lease:coordinator")
        victim.kill()
        killed = time.monotonic()
        while True:  # the lease's slot is served by the promoted replica
            assert time.monotonic() - killed < 20 * UNIT, "no failover"
            try:
                if redis.node_of("ws:lease:coordinator").port != victim.port:
                    break
            except LookupError:
                pass
            await asyncio.sleep(0.2)
        while coord.metric("roomcast_coordinator_leader") != 1 or \
                (await ahttp_get(c.gateways[0].http + "/readyz"))[0] != 200:
            assert time.monotonic() - killed < 25 * UNIT, "the coordinator or gateway did not come back"
            await asyncio.sleep(0.2)
        assert coord.proc is not None and coord.proc.poll() is None
        # The reaper works across every shard again: a silent socket is timed out.
        async with Client.open(c.gateways[0].url) as watcher, Client.open(c.gateways[0].url) as silent:
            room_id = unique("lease-fo")
            # A request whose keys sit on the failed-over shard may get `unavailable` (retry) once
            # or twice while the gateway learns the new owner: a client retries it, so does this.
            for _ in range(40):
                welcome = await watcher.request({"type": "hello", "device_id": unique("w")})
                if welcome["type"] == "welcome":
                    break
                assert welcome["code"] == "unavailable", welcome
                await asyncio.sleep(0.25)
            assert welcome["type"] == "welcome", welcome
            watcher.start_pinging()
            for _ in range(40):  # requests on the failed shard may get `unavailable` for a moment
                reply = await watcher.request({"type": "create_room", "room_id": room_id, "game_type": "g"})
                if reply["type"] == "room_created":
                    break
                assert reply["code"] in ("unavailable", "rate_limited"), reply
                await asyncio.sleep(0.5)
            assert reply["type"] == "room_created", reply
            await silent.hello(unique("s"))
            assert (await silent.request({"type": "join", "room_id": room_id}))["type"] == "joined"
            evt = await watcher.expect(8 * UNIT, type="event", event_type="participant_disconnected")
            assert evt["payload"]["reason"] == "timeout"


def key_per_primary(redis: RedisClusterServer, prefix: str) -> dict[int, str]:
    """One key per primary of the 3 + 3 cluster (`<prefix>{n}`), by the primary's port."""
    by_node: dict[int, str] = {}
    for n in range(1000):
        by_node.setdefault(redis.node_of(f"{prefix}{{{n}}}").port, f"{prefix}{{{n}}}")
        if len(by_node) == 3:
            break
    return by_node


async def test_batcher_fails_only_a_dead_shards_commands_and_follows_its_failover() -> None:
    """One batch with commands for every shard while a primary is SIGKILLed: the others'
    commands succeed throughout, the dead shard's get `unavailable` (retryable), and once its
    replica has taken over they succeed again, with no new client."""
    from roomcast.errors import ErrorCode, GatewayError
    from roomcast.redis.batch import Batcher, cmd
    from roomcast.redis.client import make_client

    with redis_of_kind("redis-cluster") as redis:
        assert isinstance(redis, RedisClusterServer)
        batcher = Batcher(make_client(redis.url))
        try:
            assert await batcher.detect()
            by_node = key_per_primary(redis, "k")
            victim = next(n for n in redis.primary_nodes() if n.port != redis.port)
            victim.kill()
            killed = time.monotonic()
            recovered = False
            while time.monotonic() - killed < 20 * UNIT:
                futs = {port: batcher.call(cmd("incr", key)) for port, key in by_node.items()}
                for port, fut in futs.items():
                    try:
                        await fut
                        ok = True
                    except GatewayError as exc:
                        assert exc.code is ErrorCode.UNAVAILABLE
                        ok = False
                    if port != victim.port:
                        assert ok, "a live shard's command failed during the failover"
                    elif ok:
                        recovered = True
                if recovered:
                    break
                await asyncio.sleep(0.2)
            assert recovered, "the failed shard's slots never came back"
        finally:
            await batcher.aclose()


async def test_batcher_a_paused_primary_delays_only_its_own_commands() -> None:
    """No head-of-line blocking across shards (issue 13): one primary is paused (SIGSTOP: its
    socket accepts and never answers, like a primary that hangs or died without closing).
    Commands for the other primaries, in the same batch as the paused node's command and in
    the batches after it, are answered while that command is still pending; the paused node's
    next command waits behind its first (one pipeline in flight per node), one sent after the
    slot map changed under the slot waits for those two instead of overtaking them on the new
    owner, and all three are answered, in call order, once the node runs again (SIGCONT)."""
    import os

    from roomcast.redis.batch import Batcher, cmd
    from roomcast.redis.client import key_slot, make_client

    with redis_of_kind("redis-cluster") as redis:
        assert isinstance(redis, RedisClusterServer)
        # No failover while the node is paused (the cluster would promote its replica after
        # cluster-node-timeout): the paused node's commands are then answered by the node itself.
        redis.cli_all("CONFIG", "SET", "cluster-node-timeout", "600000")
        batcher = Batcher(make_client(redis.url))
        try:
            assert await batcher.detect()
            by_node = key_per_primary(redis, "h")
            assert len(by_node) == 3
            victim = next(n for n in redis.primary_nodes() if n.port != redis.port)
            stuck_key = by_node[victim.port]
            live_keys = [k for port, k in by_node.items() if port != victim.port]
            live_port = next(port for port in by_node if port != victim.port)
            # Open a connection to every node first, and make the paused node's socket wait as
            # long as the test runs: its command must stay pending until SIGCONT, not time out.
            for node in batcher.client.nodes_manager.nodes_cache.values():
                node.connection_kwargs["socket_timeout"] = 600.0
            assert await asyncio.gather(*(batcher.call(cmd("set", k, 0)) for k in by_node.values())) == [True] * 3
            assert victim.proc is not None
            os.kill(victim.proc.pid, signal.SIGSTOP)
            try:
                stuck = batcher.call(cmd("incr", stuck_key))
                first = [batcher.call(cmd("incr", k)) for k in live_keys]  # the same batch
                # A bound only so that a batcher that waits for the paused node fails the test
                # instead of hanging it (the live commands take milliseconds).
                done, _ = await asyncio.wait(first, timeout=30 * UNIT)
                assert len(done) == 2, "the live shards' commands waited for the paused node"
                assert [f.result() for f in first] == [1, 1]
                assert not stuck.done(), "the paused node answered: the test paused nothing"
                stuck_next = None
                for n in range(2, 6):  # later batches, each with a command for the paused node too
                    if stuck_next is None:
                        stuck_next = batcher.call(cmd("incr", stuck_key))
                    later = [batcher.call(cmd("incr", k)) for k in live_keys]
                    done, _ = await asyncio.wait(later, timeout=30 * UNIT)
                    assert len(done) == 2, "a later batch's live commands waited for the paused node"
                    assert [f.result() for f in later] == [n, n]
                    assert not stuck.done() and not stuck_next.done()
                # The map changes under the paused node's slot (as a refresh or a MOVED would
                # change it): its next command must not overtake the two unanswered ones on the
                # new owner; it waits for them, then goes there (and follows MOVED back).
                slot = key_slot(stuck_key)
                manager = batcher.client.nodes_manager
                manager.slots_cache[slot] = [manager.get_node(host="127.0.0.1", port=int(live_port))]
                moved = batcher.call(cmd("incr", stuck_key))
                later = [batcher.call(cmd("incr", k)) for k in live_keys]
                done, _ = await asyncio.wait(later, timeout=30 * UNIT)
                assert len(done) == 2
                assert not moved.done() and slot in batcher._parked, "sent before the slot's earlier commands were answered"
            finally:
                os.kill(victim.proc.pid, signal.SIGCONT)
            assert stuck_next is not None
            assert await stuck == 1
            assert await stuck_next == 2  # sent after the first one had its answer: call order kept
            assert await moved == 3
            assert await batcher.call(cmd("get", stuck_key)) == b"3"
        finally:
            await batcher.aclose()
