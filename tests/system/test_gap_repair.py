"""Gap repair when the read back fails: a replica that lost its subscriber connection misses a
room's events while it is away, and reads them back from the room's stream once resubscribed.
On a real Redis and a real Redis Cluster, with real faults made by Redis itself: the replica's
subscriber connection is killed (CLIENT KILL ADDR), and ACL rules refuse SSUBSCRIBE (so it stays
away while events are published) and XRANGE (so its read back fails).

- The read back is retried until it succeeds: the far member gets every event, in order,
  although the first reads failed (the gateway held the live events meanwhile).
- When the stream no longer holds the missed events (trimmed), the far member's socket is
  closed with 1012 ("reconnect and resume with since") instead of receiving a gap.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import (
    REDIS_KINDS,
    UNIT,
    Client,
    Cluster,
    GatewayProcess,
    RedisClusterServer,
    RedisServer,
    ahttp_get,
    cluster,
    parse_metrics,
    redis_of_kind,
    unique,
    wait_for,
)

ENV = {"WEBSOCKET_HEARTBEAT_TIMEOUT": "5000", "RATE_MESSAGES_PER_SEC": "1000", "RATE_MESSAGES_BURST": "1000",
       "ROOM_HISTORY_MAX_BYTES": "65536"}


def _nodes(redis: RedisServer | RedisClusterServer) -> list[RedisServer]:
    if isinstance(redis, RedisClusterServer):
        return [n for n in redis.nodes if n.proc is not None]
    return [redis]


def _acl(redis: RedisServer | RedisClusterServer, *rules: str) -> None:
    for node in _nodes(redis):
        assert node.cli("ACL", "SETUSER", "default", *rules) == "OK"


def _redis_ports(redis: RedisServer | RedisClusterServer) -> set[int]:
    return {n.port for n in _nodes(redis)}


def _local_ports(pid: int, remote_ports: set[int]) -> set[int]:
    """The local ports of process `pid`'s TCP connections to 127.0.0.1:<one of remote_ports>
    (its sockets' inodes in /proc/<pid>/fd, looked up in /proc/net/tcp)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            local, remote, inode = parts[1], parts[2], parts[9]
            if inode in inodes and int(remote.split(":")[1], 16) in remote_ports:
                ports.add(int(local.split(":")[1], 16))
    return ports


def _kill_subscriber(redis: RedisServer | RedisClusterServer, gw: GatewayProcess) -> int:
    """Close `gw`'s subscriber connection(s) from the Redis side; returns how many."""
    assert gw.proc is not None
    mine = _local_ports(gw.proc.pid, _redis_ports(redis))
    killed = 0
    for node in _nodes(redis):
        for line in node.cli("CLIENT", "LIST", "TYPE", "pubsub").splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            if int(fields["addr"].rsplit(":", 1)[1]) in mine:
                node.cli("CLIENT", "KILL", "ADDR", fields["addr"])
                killed += 1
    return killed


async def _metric(gw: GatewayProcess, series: str) -> float:
    return parse_metrics((await ahttp_get(gw.http + "/metrics"))[1]).get(series, 0.0)


RETRY = 'roomcast_gap_repairs_total{result="retry"}'
REPAIRED = 'roomcast_gap_repairs_total{result="repaired"}'
CLOSED = 'roomcast_gap_repairs_total{result="closed"}'


@contextlib.contextmanager
def _two(kind: str, extra: dict[str, str] | None = None) -> Iterator[Cluster]:
    with redis_of_kind(kind) as redis, cluster(2, 1, dict(ENV, **(extra or {})), redis=redis) as c:
        try:
            yield c
        finally:
            _acl(c.redis, "+ssubscribe", "+xrange")


async def _away_while_published(c: Cluster, stack: contextlib.AsyncExitStack, events: int,
                                 refuse_reads: bool) -> tuple[Client, str, int, list[int]]:
    """A host on gateway 0, a far member on gateway 1. Gateway 1's subscriber connection is
    killed and kept away (SSUBSCRIBE refused) while the host publishes `events` events; reads
    with XRANGE are refused too if `refuse_reads`. Returns (far, room, far's join seq, acked seqs)."""
    gw0, gw1 = c.gateways
    room_id = unique("gap")
    host = await stack.enter_async_context(Client.open(gw0.url))
    far = await stack.enter_async_context(Client.open(gw1.url))
    await host.hello(unique("h"))
    host.start_pinging()
    await host.request({"type": "create_room", "room_id": room_id, "game_type": "g"})
    await far.hello(unique("f"))
    far.start_pinging()
    joined = await far.request({"type": "join", "room_id": room_id})
    _acl(c.redis, "-ssubscribe", *(["-xrange"] if refuse_reads else []))
    assert _kill_subscriber(c.redis, gw1) >= 1
    acked = []
    for n in range(events):
        ack = await host.request({"type": "event", "room_id": room_id, "event_type": "tick", "payload": {"n": n}})
        assert ack["type"] == "ack", ack
        acked.append(ack["seq"])
    return far, room_id, joined["seq"], acked


async def _retried(gw: GatewayProcess, before: float) -> bool:
    return await _metric(gw, RETRY) > before


@pytest.mark.parametrize("kind", REDIS_KINDS)
async def test_a_failed_read_back_is_retried_and_every_event_arrives_in_order(kind: str) -> None:
    with _two(kind) as c:
        gw1 = c.gateways[1]
        retries, repaired = await _metric(gw1, RETRY), await _metric(gw1, REPAIRED)
        async with contextlib.AsyncExitStack() as stack:
            far, room_id, head, acked = await _away_while_published(c, stack, 20, refuse_reads=True)
            _acl(c.redis, "+ssubscribe")  # back on the room's channel; its read back still refused
            await wait_for(lambda: _retried(gw1, retries), 20 * UNIT, what="a failed read back retried")
            _acl(c.redis, "+xrange")
            got: list[dict[str, Any]] = []
            while not got or got[-1]["seq"] < acked[-1]:
                got.append(await far.expect(10 * UNIT, type="event", room_id=room_id))
            assert [e["seq"] for e in got] == list(range(head + 1, acked[-1] + 1))
            # Every tick (besides them, re-registration's participant events of the far member's replica)
            assert [e["payload"]["n"] for e in got if e["event_type"] == "tick"] == list(range(20))
            assert await _metric(gw1, REPAIRED) > repaired


async def test_events_trimmed_from_the_stream_meanwhile_close_the_socket_with_1012() -> None:
    # A history of 10 events: of the 40 published while the replica was away, 30 are gone.
    with _two("redis", {"ROOM_HISTORY_MAXLEN": "10"}) as c:
        gw1 = c.gateways[1]
        closed = await _metric(gw1, CLOSED)
        async with contextlib.AsyncExitStack() as stack:
            far, _, _, _ = await _away_while_published(c, stack, 40, refuse_reads=False)
            _acl(c.redis, "+ssubscribe")
            # Not the last 10 events after a gap: 1012, to resume with since.
            assert await far.closed(20 * UNIT) == 1012
            # None of the ticks (its own participant_joined came before the gap)
            assert not [m for m in far.inbox if m.get("type") == "event" and m["event_type"] == "tick"]
            assert await _metric(gw1, CLOSED) > closed
