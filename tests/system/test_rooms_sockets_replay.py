"""Issue 10 #5-#8 end to end, in both deployments: embedded (one gateway process, memory
store) and cluster (real Redis, a coordinator and two gateway processes).

#5 a device's place follows every socket it joined with, not only its latest; #6 long
replays are streamed in bounded chunks paced by the socket (a full-speed reader gets all of
it, a non-reader costs a bounded amount of gateway memory); #7 `since: 0` replays the kept
history of a room longer than it; #8 list_rooms pages and is rate limited.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.harness import UNIT, Client, GatewayProcess, cluster, gateway, unique

pytestmark = pytest.mark.system

HISTORY = 500  # ROOM_HISTORY_MAXLEN
BIG = 20_000  # bytes of payload per event in the big replay
BIG_EVENTS = 400  # 400 x 20 kB = 8 MB kept, under HISTORY
ENV = {
    "ROOM_HISTORY_MAXLEN": str(HISTORY),
    "ROOM_HISTORY_MAX_BYTES": str(16 << 20),  # the 8 MB room is kept whole (the default keeps 128 KiB)
    "RATE_MESSAGES_PER_SEC": "100000",
    "RATE_MESSAGES_BURST": "100000",
    "JOIN_RATE": "1000",
    "CONNECT_RATE_PER_DEVICE": "1000",
    "CONNECT_RATE_PER_ADDRESS": "1000",
    "MAX_CONNECTIONS_PER_DEVICE": "8",
    "PARTICIPANT_PRUNE_AFTER": "1000",
    "REAPER_INTERVAL": "100",
    "WEBSOCKET_HEARTBEAT_TIMEOUT": str(int(20_000 * UNIT)),
    "LIST_ROOMS_RATE": "5",
    "LIST_ROOMS_BURST": "10",
    "ROOM_CREATE_RATE": "1000",
    "MAX_ROOMS_PER_DEVICE": "1000",
    "MAX_ROOMS_PER_CONNECTION": "1000",
}


@dataclass
class Deployment:
    mode: str
    gateways: list[GatewayProcess]
    redis_pid: int | None = None

    def url(self, i: int) -> str:
        """Gateway i (the same one in embedded mode: the device's sockets share its store)."""
        return self.gateways[i % len(self.gateways)].url


@pytest.fixture(scope="module", params=["embedded", "cluster"])
def deployment(request: pytest.FixtureRequest) -> Iterator[Deployment]:
    if request.param == "embedded":
        with gateway(ENV) as g:
            yield Deployment("embedded", [g])
    else:
        with cluster(2, 1, ENV) as c:
            assert c.redis.proc is not None
            yield Deployment("cluster", c.gateways, c.redis.proc.pid)


@contextlib.asynccontextmanager
async def opened(url: str, device: str) -> AsyncIterator[Client]:
    async with Client.open(url) as c:
        await c.hello(device)
        yield c


async def create(c: Client, room_id: str, **extra: Any) -> dict[str, Any]:
    reply = await c.request({"type": "create_room", "room_id": room_id, "game_type": "issue10",
                             "max_players": 50, **extra})
    assert reply["type"] == "room_created", reply
    return reply


async def join(c: Client, room_id: str, **extra: Any) -> dict[str, Any]:
    reply = await c.request({"type": "join", "room_id": room_id, **extra})
    assert reply["type"] == "joined", reply
    return reply


async def publish_bulk(c: Client, room_id: str, n: int, size: int) -> int:
    """Publish n events of about `size` payload bytes from c, reading everything c is sent
    (its own events come back to it); returns the last acked seq."""
    blob = "x" * size
    last = 0
    window = 20
    sent = 0
    while sent < n:
        ids = []
        for _ in range(min(window, n - sent)):
            i = c.next_id()
            ids.append(i)
            await c.send({"type": "event", "id": i, "room_id": room_id, "event_type": "blob",
                          "payload": {"b": blob}})
        sent += len(ids)
        pending = set(ids)
        deadline = time.monotonic() + 20 * UNIT
        while pending:
            msg = orjson.loads(await asyncio.wait_for(c.ws.recv(), deadline - time.monotonic()))
            if msg.get("re") in pending:
                assert msg["type"] == "ack", msg
                pending.discard(msg["re"])
                last = max(last, msg["seq"])
    c.inbox.clear()
    return last


async def read_events(c: Client, room_id: str, until: int, timeout: float) -> list[int]:
    """Seqs of the room's events c receives until one with seq >= until (raises on close)."""
    seqs: list[int] = []
    deadline = time.monotonic() + timeout
    while not seqs or seqs[-1] < until:
        msg = orjson.loads(await asyncio.wait_for(c.ws.recv(), deadline - time.monotonic()))
        if msg.get("type") == "event" and msg.get("room_id") == room_id:
            seqs.append(msg["seq"])
    return seqs


# ---------------------------------------------------------------- #5 every joined socket counts


async def test_participant_stays_while_an_earlier_joined_socket_is_open(deployment: Deployment) -> None:
    room_id = unique("two-tabs")
    device = unique("dev")
    async with opened(deployment.url(0), unique("host")) as host:
        await create(host, room_id)
        async with opened(deployment.url(0), device) as tab1:
            await join(tab1, room_id)
            # A single-socket device whose socket closes just after tab2's: once it is
            # pruned, the two-tab device would have been too (the wait has an observable end).
            async with opened(deployment.url(1), unique("witness")) as witness:
                await join(witness, room_id)
                async with opened(deployment.url(1), device) as tab2:
                    await join(tab2, room_id)
            # tab2 (the later socket) is closed; tab1 is still open and joined.
            await host.expect(20 * UNIT, type="event", event_type="participant_left")  # the witness, pruned
            seen = await host.drain(0.3 * UNIT)
            gone = [m for m in seen if m.get("type") == "event" and m["payload"].get("device_id") == device
                    and m["event_type"] in ("participant_disconnected", "participant_left")]
            assert gone == []
            reply = await tab1.request({"type": "event", "room_id": room_id, "event_type": "still-here"})
            assert reply["type"] == "ack", reply
            listed = await host.request({"type": "join", "room_id": room_id})  # the host's view of the room
            [me] = [p for p in listed["participants"] if p["device_id"] == device]
            assert me["status"] == "active"
        # tab1 was the last joined socket: now the device is disconnected.
        event = await host.expect(10 * UNIT, type="event", event_type="participant_disconnected")
        assert event["payload"]["device_id"] == device


async def test_a_socket_that_never_joined_cannot_leave_for_its_device(deployment: Deployment) -> None:
    room_id = unique("leave-other")
    device = unique("dev")
    async with opened(deployment.url(0), unique("host")) as host:
        await create(host, room_id)
        async with opened(deployment.url(0), device) as joined, opened(deployment.url(1), device) as other:
            await join(joined, room_id)
            reply = await other.request({"type": "leave", "room_id": room_id})
            assert (reply["type"], reply.get("code")) == ("error", "not_member"), reply
            reply = await joined.request({"type": "event", "room_id": room_id, "event_type": "still-in"})
            assert reply["type"] == "ack", reply


# ---------------------------------------------------------------- #6 / #7 replays


async def test_full_speed_reader_gets_a_multi_megabyte_replay(deployment: Deployment) -> None:
    room_id = unique("big")
    async with opened(deployment.url(0), unique("host")) as host:
        await create(host, room_id)
        head = await publish_bulk(host, room_id, BIG_EVENTS, BIG)
        async with opened(deployment.url(1), unique("reader")) as reader:
            i = reader.next_id()
            await reader.send({"type": "join", "id": i, "room_id": room_id, "since": 0})
            joined = orjson.loads(await asyncio.wait_for(reader.ws.recv(), 10 * UNIT))
            assert (joined["type"], joined["recovered"], joined["seq"]) == ("joined", True, head), joined
            # Host keeps publishing meanwhile: live events follow the replay, no gap, no duplicate.
            live = asyncio.get_running_loop().create_task(publish_bulk(host, room_id, 20, 100))
            try:
                seqs = await read_events(reader, room_id, head + 21, 60 * UNIT)
            except ConnectionClosed as exc:
                pytest.fail(f"reader closed during the replay: {exc.rcvd}")
            last = await live
            assert seqs[: head] == list(range(1, head + 1))
            more = await read_events(reader, room_id, last, 10 * UNIT) if seqs[-1] < last else []
            everything = seqs + more
            assert everything == list(range(1, everything[-1] + 1))
            assert everything[-1] >= last


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@contextlib.asynccontextmanager
async def non_reader(url: str) -> AsyncIterator[ClientConnection]:
    """A socket that reads only its first replies, then nothing (small receive buffer)."""
    host, port = url.removeprefix("ws://").split("/")[0].split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    sock.connect((host, int(port)))
    async with connect(url, sock=sock, compression=None, ping_interval=None, max_size=2**24,
                       max_queue=1, close_timeout=1) as ws:
        yield ws


async def test_sockets_that_never_read_cost_a_bounded_amount(deployment: Deployment) -> None:
    """20 sockets that never read join a room with 8 MB kept, all at once: the gateway (and
    Redis) hold a bounded part of each replay at a time, not all 160 MB."""
    room_id = unique("stuck")
    gw = deployment.gateways[-1]
    assert gw.proc is not None
    pids = {"gateway": gw.proc.pid}
    if deployment.redis_pid is not None:
        pids["redis"] = deployment.redis_pid
    async with opened(deployment.url(0), unique("host")) as host:
        await create(host, room_id)
        await publish_bulk(host, room_id, BIG_EVENTS, BIG)
        n = 20
        async with contextlib.AsyncExitStack() as stack:
            sockets = []
            for k in range(n):
                ws = await stack.enter_async_context(non_reader(gw.url))
                await ws.send(orjson.dumps({"type": "hello", "id": 1, "device_id": unique(f"stuck{k}")}).decode())
                welcome = orjson.loads(await asyncio.wait_for(ws.recv(), 10 * UNIT))
                assert welcome["type"] == "welcome", welcome
                sockets.append(ws)
            before = {name: _rss_kib(pid) for name, pid in pids.items()}
            peak = dict(before)
            for ws in sockets:
                await ws.send(orjson.dumps({"type": "join", "id": 2, "room_id": room_id, "since": 0}).decode())
            deadline = time.monotonic() + 3 * UNIT
            while time.monotonic() < deadline:  # sample while the replays are stuck
                for name, pid in pids.items():
                    peak[name] = max(peak[name], _rss_kib(pid))
                await asyncio.sleep(0.01)
            # Before the fix (cluster) the gateway grew by about 190 MiB and Redis by 180 MiB.
            grown = {name: (peak[name] - before[name]) / 1024 for name in pids}
            assert all(mib < 64 for mib in grown.values()), f"RSS growth (MiB) for {n} stuck replays: {grown}"
            # The gateway still serves others.
            reply = await host.request({"type": "ping"})
            assert reply["type"] == "pong"


async def test_since_zero_replays_the_kept_history_of_a_longer_room(deployment: Deployment) -> None:
    room_id = unique("long")
    async with opened(deployment.url(0), unique("host")) as host:
        await create(host, room_id)
        head = await publish_bulk(host, room_id, HISTORY + 200, 10)
        async with opened(deployment.url(1), unique("late")) as late:
            joined = await join(late, room_id, since=0)
            assert (joined["recovered"], joined["seq"]) == (False, head), joined
            seqs = await read_events(late, room_id, head, 10 * UNIT)
            assert seqs == list(range(seqs[0], head + 1)), seqs[:5]
            assert seqs[0] > 1
            assert len(seqs) >= HISTORY


# ---------------------------------------------------------------- #8 list_rooms


async def test_list_rooms_pages_with_a_cursor(deployment: Deployment) -> None:
    game = unique("paged")
    async with contextlib.AsyncExitStack() as stack:
        # Room creation is limited per device (burst 10): three hosts share the work.
        hosts = [await stack.enter_async_context(opened(deployment.url(0), unique("host"))) for _ in range(3)]
        created = []
        for i in range(17):
            room_id = unique(f"p{i}")
            reply = await create(hosts[i % 3], room_id, game_type=game)
            created.append((reply["room"]["created_at"], room_id))
        await create(hosts[0], unique("secret"), game_type=game, password="hunter22")
        async with opened(deployment.url(1), unique("browser")) as browser:
            seen: list[str] = []
            cursor = None
            for _ in range(10):
                ask: dict[str, Any] = {"type": "list_rooms", "game_type": game, "limit": 5}
                if cursor is not None:
                    ask["cursor"] = cursor
                reply = await browser.request(ask)
                assert reply["type"] == "rooms", reply
                seen += [r["room_id"] for r in reply["rooms"]]
                cursor = reply["next_cursor"]
                if cursor is None:
                    break
            # Newest first (rooms of the same ms by id), each once, no password room.
            assert seen == [r for _, r in sorted(created, reverse=True)]
            bad = await browser.request({"type": "list_rooms", "cursor": "not a cursor"})
            assert (bad["type"], bad["code"]) == ("error", "bad_request")


async def test_list_rooms_is_rate_limited_per_device(deployment: Deployment) -> None:
    device = unique("lister")
    async with opened(deployment.url(0), device) as a, opened(deployment.url(1), device) as b:
        replies = []
        for i in range(12):  # the burst is 10, shared by the device's sockets (and replicas)
            replies.append(await (a if i % 2 else b).request({"type": "list_rooms", "limit": 1}))
        limited = [r for r in replies if r["type"] == "error"]
        assert limited, "12 list_rooms at once were all served (burst 10)"
        assert all(r["code"] == "rate_limited" and r["retry_after_ms"] > 0 for r in limited), limited
        assert sum(r["type"] == "rooms" for r in replies) >= 10
