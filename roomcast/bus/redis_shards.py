"""Which Redis node owns which hash slot, for the sharded pub/sub subscriber (bus/redis.py).

A Redis Cluster delivers an `SPUBLISH` only to the clients that `SSUBSCRIBE`d on a node of the
shard owning the channel's slot. The subscriber therefore keeps one connection per primary and
must know the slot map: it asks any reachable node with `CLUSTER SLOTS` (on a short-lived
connection of its own, with the same TLS and AUTH as the subscription) and asks again whenever
a slot moved (`MOVED`, a forced `sunsubscribe`) or a shard's connection was lost.

A Redis that is not a cluster answers `CLUSTER SLOTS` with an error: then one "shard" (the URL's
node) owns every slot, and the same code subscribes there (Redis 7 has sharded pub/sub on a
single node too).
"""

from __future__ import annotations

import asyncio
import bisect
import ssl
from dataclasses import dataclass, field

import hiredis
from redis.crc import key_slot

from roomcast.errors import ErrorCode, GatewayError
from roomcast.redis.resp import RespError, encode_command

SLOTS = 16384
_RETRY = ("LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "NOAUTH")  # error replies that pass
Addr = tuple[str, int]


def slot_of(channel: bytes) -> int:
    """The hash slot of a key or shard channel (CRC16 of its hash tag, as Redis computes it)."""
    slot: int = key_slot(channel)
    return slot


@dataclass
class ShardMap:
    """Slot ranges -> owning primary. `cluster` is False for a single (non-cluster) Redis."""

    cluster: bool
    ranges: list[tuple[int, int, Addr]]  # (first, last, primary), sorted by first
    nodes: list[Addr] = field(default_factory=list)  # every node seen (primaries and replicas)
    _starts: list[int] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.ranges.sort()
        self._starts = [r[0] for r in self.ranges]

    def owner(self, slot: int) -> Addr | None:
        i = bisect.bisect_right(self._starts, slot) - 1
        if i >= 0:
            first, last, addr = self.ranges[i]
            if first <= slot <= last:
                return addr
        return None

    def primaries(self) -> dict[Addr, list[tuple[int, int]]]:
        out: dict[Addr, list[tuple[int, int]]] = {}
        for first, last, addr in self.ranges:
            out.setdefault(addr, []).append((first, last))
        return out

    def tag_in(self, addr: Addr, prefix: str) -> str:
        """A hash tag `prefix<n>` whose slot `addr` owns (for a probe channel on that shard)."""
        if not self.cluster:
            return prefix
        for n in range(2000):  # a shard of the usual size has one within a few tries
            tag = f"{prefix}{n}"
            if self.owner(slot_of(tag.encode())) == addr:
                return tag
        ranges = self.primaries().get(addr)
        if not ranges:
            raise LookupError(f"{addr} serves no slot")
        return f"{prefix}{_tag_numbers(prefix)[ranges[0][0]]}"


_TAG_NUMBERS: dict[str, list[int]] = {}


def _tag_numbers(prefix: str) -> list[int]:
    """For every slot, an n such that `prefix<n>` hashes to it (built once, ~150k CRC16s)."""
    table = _TAG_NUMBERS.get(prefix)
    if table is None:
        found: dict[int, int] = {}
        n = 0
        while len(found) < SLOTS:  # ends: CRC16 mod 16384 reaches every slot (~150k tries for "p")
            found.setdefault(slot_of(f"{prefix}{n}".encode()), n)
            n += 1
        table = _TAG_NUMBERS[prefix] = [found[slot] for slot in range(SLOTS)]
    return table


def single(addr: Addr) -> ShardMap:
    return ShardMap(False, [(0, SLOTS - 1, addr)], [addr])


def parse_slots(reply: object, seed: Addr) -> ShardMap:
    """A ShardMap from a `CLUSTER SLOTS` reply (an empty host means the node we asked)."""
    if not isinstance(reply, list):
        raise RespError(f"unexpected CLUSTER SLOTS reply: {reply!r}")
    ranges: list[tuple[int, int, Addr]] = []
    nodes: list[Addr] = []
    for entry in reply:
        first, last, *holders = entry
        addrs: list[Addr] = []
        for h in holders:
            host = h[0].decode() if isinstance(h[0], bytes) else str(h[0])
            addrs.append((host or seed[0], int(h[1])))
        if not addrs:
            continue
        ranges.append((int(first), int(last), addrs[0]))
        nodes.extend(a for a in addrs if a not in nodes)
    return ShardMap(True, ranges, nodes)


async def command(addr: Addr, args: list[bytes], *, ssl_ctx: ssl.SSLContext | None, username: str | None,
                  password: str | None, timeout: float) -> object:
    """One command on a fresh connection (AUTH first if a password is set); its reply.
    A refused AUTH raises GatewayError (not retried on another node), an error reply RespError."""
    async def run() -> object:
        reader, writer = await asyncio.open_connection(
            addr[0], addr[1], ssl=ssl_ctx, server_hostname=addr[0] if ssl_ctx is not None else None)
        try:
            parser = hiredis.Reader(protocolError=RespError, replyError=RespError)
            out = b""
            n = 1
            if password is not None:
                out += encode_command(b"AUTH", *([username.encode()] if username else []), password.encode())
                n = 2
            writer.write(out + encode_command(*args))
            replies: list[object] = []
            while len(replies) < n:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("connection closed")
                parser.feed(data)
                while len(replies) < n:
                    value = parser.gets()
                    if value is False:
                        break
                    replies.append(value)
            if password is not None and isinstance(replies[0], RespError):
                raise GatewayError(ErrorCode.UNAVAILABLE, f"pub/sub AUTH failed: {replies[0]}")
            if isinstance(replies[-1], RespError):  # hiredis hands error replies back as values
                raise replies[-1]
            return replies[-1]
        finally:
            writer.close()

    return await asyncio.wait_for(run(), timeout)


async def discover(seeds: list[Addr], *, ssl_ctx: ssl.SSLContext | None, username: str | None,
                   password: str | None, timeout: float) -> ShardMap:
    """The slot map, from the first seed that answers; a single-node map if it is no cluster."""
    last: Exception = ConnectionError("no Redis node to ask")
    for addr in seeds:
        try:
            reply = await command(addr, [b"CLUSTER", b"SLOTS"], ssl_ctx=ssl_ctx, username=username,
                                  password=password, timeout=timeout)
        except RespError as exc:
            if str(exc).startswith(_RETRY):
                last = exc
                continue
            # "ERR This instance has cluster support disabled" (or a Redis that hides CLUSTER):
            # not a cluster, one node.
            return single(addr)
        except (OSError, TimeoutError) as exc:
            last = exc
            continue
        shard_map = parse_slots(reply, addr)
        if shard_map.ranges:
            return shard_map
        last = RespError("CLUSTER SLOTS: no slot is served yet")
    raise last
