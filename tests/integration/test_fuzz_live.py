"""Hypothesis-made frames over ONE live socket: one reply each, the socket and the server survive.

Each example is a batch of frames followed by a sentinel `ping`. Direct replies come back in
the order their requests were sent (events may interleave and are set aside), so everything
before the sentinel's pong is the batch's replies: exactly one per frame, with the frame's
`id` as `re` when it could be read, and never `internal`.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from loadtests.fuzz import parse_exact, readable_id
from roomcast.protocol import MESSAGE_TYPES
from tests.harness import UNIT, gateway, unique

REPLY_TYPES = {"welcome", "pong", "room_created", "joined", "left", "ack", "rooms", "error"}
ERROR_CODES = {"bad_request", "unknown_type", "hello_required", "not_found", "conflict", "room_full",
               "room_closed", "not_member", "forbidden", "unauthorized", "rate_limited", "unavailable"}
FIELDS = ["type", "id", "room_id", "device_id", "token", "fingerprint", "metadata", "game_type", "max_players",
          "game_data", "password", "role", "since", "epoch", "event_type", "action", "payload", "status", "patch",
          "limit"]

scalars = (st.none() | st.booleans() | st.integers() | st.integers(-(2**70), 2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30)
           | st.sampled_from(["", "x" * 64, "x" * 65, "r" * 101, "a\x00b", "player", "spectator", "host",
                              "closed", "active", "in_progress"]))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
ids = st.integers(0, 10**6) | st.text(max_size=12) | scalars | st.integers(-(10**64), 10**64)


def templates(room_id: str) -> list[dict[str, Any]]:
    return [
        {"type": "ping"},
        {"type": "hello", "device_id": "device-fuzz-2"},
        {"type": "create_room", "game_type": "fuzz", "max_players": 4, "game_data": {"a": 1}},
        {"type": "create_room", "room_id": "fuzz-room", "game_type": "fuzz", "password": "pw"},
        {"type": "join", "room_id": room_id, "role": "spectator", "since": 0, "epoch": "00000000"},
        {"type": "join", "room_id": "fuzz-room", "password": "pw"},
        {"type": "leave", "room_id": room_id},
        {"type": "event", "room_id": room_id, "event_type": "move", "action": "a", "payload": {"x": [1, 2]}},
        {"type": "update_room", "room_id": room_id, "status": "in_progress", "patch": {"k": None, "n": 1}},
        {"type": "close_room", "room_id": "fuzz-room"},
        {"type": "list_rooms", "game_type": "fuzz", "status": "waiting", "limit": 5},
    ]


@st.composite
def mutated(draw: st.DrawFn, room_id: str) -> str:
    msg = dict(draw(st.sampled_from(templates(room_id))))
    for _ in range(draw(st.integers(0, 2))):
        op = draw(st.sampled_from(["drop", "set", "add", "type", "id"]))
        if op == "drop" and msg:
            msg.pop(draw(st.sampled_from(sorted(msg))))
        elif op == "set" and msg:
            msg[draw(st.sampled_from(sorted(msg)))] = draw(json_values)
        elif op == "add":
            msg[draw(st.sampled_from(FIELDS) | st.text(max_size=8))] = draw(json_values)
        elif op == "type":
            msg["type"] = draw(st.sampled_from([*MESSAGE_TYPES, "", "PING", "event "]) | st.text(max_size=8))
        elif op == "id":
            msg["id"] = draw(ids)
    if draw(st.booleans()):
        msg.setdefault("id", draw(ids))
    return json.dumps(msg)  # stdlib: also writes integers orjson would refuse


def frames(room_id: str) -> st.SearchStrategy[str]:
    valid_ish = mutated(room_id)
    return st.one_of(
        st.text(alphabet=st.characters(codec="utf-8"), max_size=200),
        json_values.map(json.dumps),
        valid_ish, valid_ish, valid_ish,  # weighted: most frames are near-valid messages
    )



def replies_until(ws: ClientConnection, sentinel: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        raw = ws.recv(timeout=10 * UNIT)
        msg = orjson.loads(raw)
        if isinstance(msg.get("re"), float):  # an integer id beyond 64 bits, echoed exactly
            msg = parse_exact(raw)
        if msg.get("type") == "event":
            continue  # room traffic the fuzzer caused; no order is promised against replies
        if msg.get("re") == sentinel:
            assert msg["type"] == "pong", msg
            return out
        out.append(msg)


def test_fuzzed_frames_over_one_live_socket() -> None:
    env = {"RATE_MESSAGES_PER_SEC": "1000000", "RATE_MESSAGES_BURST": "1000000"}
    with gateway(env) as g, connect(g.url, compression=None, max_size=2**24) as ws:
        ws.send(orjson.dumps({"type": "hello", "device_id": unique("dev-fuzz"), "id": "h"}).decode())
        welcome = orjson.loads(ws.recv(timeout=5 * UNIT))
        assert welcome["type"] == "welcome"
        room_id = unique("fuzz")
        ws.send(orjson.dumps({"type": "create_room", "room_id": room_id, "game_type": "fuzz", "id": "c"}).decode())
        assert replies_until_created(ws) == room_id
        total = {"frames": 0, "batches": 0}
        tag = uuid.uuid4().hex

        @settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(batch=st.lists(frames(room_id), min_size=1, max_size=10))
        def run(batch: list[str]) -> None:
            total["batches"] += 1
            sentinel = f"sentinel-{tag}-{total['batches']}"
            for frame in batch:
                ws.send(frame)
            ws.send(orjson.dumps({"type": "ping", "id": sentinel}).decode())
            total["frames"] += len(batch)
            replies = replies_until(ws, sentinel)
            assert len(replies) == len(batch), (batch, replies)
            for frame, reply in zip(batch, replies, strict=True):
                assert reply["type"] in REPLY_TYPES, (frame, reply)
                if reply["type"] == "error":
                    assert reply["code"] in ERROR_CODES, (frame, reply)  # never `internal`
                    assert isinstance(reply["message"], str) and reply["message"], (frame, reply)
                has, value = readable_id(frame)
                if has:
                    assert reply.get("re") == value and type(reply.get("re")) is type(value), (frame, reply)
                else:
                    assert "re" not in reply, (frame, reply)

        run()
        assert total["frames"] >= 300, total
        # Still the same open, welcomed socket.
        ws.send('{"type":"ping","id":"last"}')
        assert replies_until_pong(ws, "last")["type"] == "pong"
        assert g.alive()
    log = g.log()
    assert "Traceback" not in log, log[-3000:]
    assert "internal error" not in log


def replies_until_created(ws: ClientConnection) -> str:
    while True:
        msg = orjson.loads(ws.recv(timeout=5 * UNIT))
        if msg.get("re") == "c":
            assert msg["type"] == "room_created", msg
            return str(msg["room"]["room_id"])


def replies_until_pong(ws: ClientConnection, re: str) -> dict[str, Any]:
    while True:
        msg = orjson.loads(ws.recv(timeout=5 * UNIT))
        if msg.get("re") == re:
            return msg  # type: ignore[no-any-return]


async def test_generated_frames_get_errors_and_memory_stays_bounded() -> None:
    """loadtests/fuzz.py at a few thousand frames (the full 100 000-frame run is in
    docs/security.md): every bad frame gets an error, socket-ending frames their close
    code, no traceback in the log, and RSS flat after the warm-up."""
    from loadtests import fuzz

    report = await fuzz.run(frames=4000, seed=20_261_123, workers=4, batch=40, special_every=200,
                            time_limit=120 * UNIT, max_growth_mb=16)
    print(report.summary())
    assert report.ok, report.summary()
    assert report.frames >= 4000
    assert report.special_sockets >= 10 and set(report.closes) == {"1007", "1009"}, report.closes
    must_error = {"binary", "deep", "deep_raw", "huge", "escapes"}
    assert must_error <= set(report.frames_by_kind), report.frames_by_kind
    assert report.rss_end_kib - report.rss_warm_kib < 16 * 1024
