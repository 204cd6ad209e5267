"""The sharded subscriber's slot map (roomcast/bus/redis_shards.py): pure parts."""

from __future__ import annotations

from roomcast.bus.redis_shards import SLOTS, ShardMap, parse_slots, single, slot_of
from roomcast.redis import keys
from roomcast.redis.resp import RespError

A, B, C = ("10.0.0.1", 7000), ("10.0.0.2", 7001), ("10.0.0.3", 7002)


def _slots_reply() -> list[object]:
    # CLUSTER SLOTS as hiredis returns it (RESP2): [first, last, [host, port, id], replicas...].
    return [
        [10923, 16383, [b"10.0.0.3", 7002, b"id-c"], [b"10.0.0.6", 7005, b"id-f"]],
        [0, 5460, [b"10.0.0.1", 7000, b"id-a"], [b"10.0.0.4", 7003, b"id-d"]],
        [5461, 10922, [b"", 7001, b"id-b"]],  # an empty host: the node that answered
    ]


def test_parse_slots_maps_every_slot_to_its_primary() -> None:
    m = parse_slots(_slots_reply(), ("10.0.0.2", 6379))
    assert m.cluster
    assert m.owner(0) == A and m.owner(5460) == A
    assert m.owner(5461) == B and m.owner(10922) == B
    assert m.owner(10923) == C and m.owner(SLOTS - 1) == C
    assert m.owner(SLOTS) is None
    assert set(m.primaries()) == {A, B, C}
    assert ("10.0.0.4", 7003) in m.nodes and ("10.0.0.6", 7005) in m.nodes


def test_uncovered_slots_have_no_owner() -> None:
    m = ShardMap(True, [(100, 200, A)])
    assert m.owner(99) is None and m.owner(100) == A and m.owner(201) is None


def test_room_channel_shares_the_room_slot() -> None:
    for room_id in ("r1", "lobby-42", "ü"):
        assert slot_of(keys.channel(room_id).encode()) == slot_of(keys.room(room_id).encode())
        assert slot_of(keys.channel(room_id).encode()) == slot_of(keys.stream(room_id).encode())


def test_probe_tag_lands_in_the_shard_even_when_it_owns_one_slot() -> None:
    m = ShardMap(True, [(0, 4999, A), (5000, 5000, B), (5001, SLOTS - 1, C)])
    for addr in (A, B, C):
        tag = m.tag_in(addr, "p")
        assert m.owner(slot_of(tag.encode())) == addr
    assert slot_of(m.tag_in(B, "p").encode()) == 5000


def test_single_redis_is_one_shard() -> None:
    m = single(A)
    assert not m.cluster and m.owner(0) == A and m.owner(SLOTS - 1) == A
    assert m.tag_in(A, "p") == "p"


def test_a_reply_that_is_no_slot_list_is_refused() -> None:
    try:
        parse_slots(b"OK", A)
    except RespError:
        return
    raise AssertionError("accepted")
