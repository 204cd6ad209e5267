"""Hostile input for protocol.parse (conventions 13): whatever arrives, parse returns a
Message or raises ProtocolError with a protocol error code, never anything else; and what
it accepts is within every limit, so nothing accepted can fail later when persisted."""

from __future__ import annotations

import re
from typing import Any, get_args

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roomcast import protocol
from roomcast.errors import ErrorCode, ProtocolError

MESSAGE_CLASSES = get_args(protocol.Message)
PARSE_ERRORS = {ErrorCode.BAD_REQUEST, ErrorCode.UNKNOWN_TYPE}
# About 5000 examples in all, in a few seconds: recursive JSON is the slow part to generate.


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])



# Valid messages with every field set, to be mutated one field at a time.
FULL: list[dict[str, Any]] = [
    {"type": "hello", "id": 1, "device_id": "device-0001", "token": "t", "fingerprint": "f", "metadata": {"a": 1}},
    {"type": "ping", "id": "p"},
    {"type": "create_room", "id": 2, "room_id": "r1", "game_type": "quiz", "max_players": 4,
     "game_data": {"b": [1]}, "password": "pw"},
    {"type": "join", "id": 3, "room_id": "r1", "role": "spectator", "password": "pw", "since": 5, "epoch": "e"},
    {"type": "leave", "id": 4, "room_id": "r1"},
    {"type": "event", "id": 5, "room_id": "r1", "event_type": "move", "action": "a", "payload": {"x": 1}},
    {"type": "update_room", "id": 6, "room_id": "r1", "status": "active", "patch": {"k": None}},
    {"type": "close_room", "id": 7, "room_id": "r1"},
    {"type": "list_rooms", "id": 8, "game_type": "quiz", "status": "closed", "limit": 10},
]
FIELD_NAMES = sorted({key for msg in FULL for key in msg})

# JSON values orjson can encode: integers within 64 bits, finite floats.
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["", "\x00", "player", "spectator", "closed", "r1", "device-0001", "x" * 65, "x" * 129])
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=8,
)
# Message-shaped objects: a known type and any subset of the known fields, with shallow values.
shallow_values = json_scalars | st.dictionaries(st.text(max_size=6), json_scalars, max_size=3) | st.lists(
    json_scalars, max_size=3
)
message_like = st.builds(
    lambda kind, fields: {"type": kind, **fields},
    st.sampled_from([*protocol.MESSAGE_TYPES, "nope", ""]),
    st.dictionaries(st.sampled_from([n for n in FIELD_NAMES if n != "type"]), shallow_values, max_size=6),
)


def has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(has_nul(k) or has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_nul(v) for v in value)
    return False


def check_accepted(msg: Any, obj: Any) -> None:
    """What parse accepted is within the limits of protocol.md."""
    assert isinstance(msg, MESSAGE_CLASSES)
    assert isinstance(obj, dict) and not has_nul(obj)
    assert msg.id == obj.get("id")
    assert msg.id is None or (isinstance(msg.id, (str, int)) and not isinstance(msg.id, bool))
    assert msg.id is None or len(str(msg.id)) <= 64
    fields = {name: getattr(msg, name) for name in msg.__slots__}
    if fields.get("room_id") is not None:
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", fields["room_id"])
    if "device_id" in fields:
        assert re.fullmatch(r"[A-Za-z0-9._:-]{8,128}", fields["device_id"])
    if "game_type" in fields and fields["game_type"] is not None:
        assert 1 <= len(fields["game_type"]) <= 100
    if "event_type" in fields:
        assert 1 <= len(fields["event_type"]) <= 100
        assert fields["event_type"] not in protocol.RESERVED_EVENT_TYPES
    if fields.get("action") is not None:
        assert len(fields["action"]) <= 255
    if "role" in fields:
        assert fields["role"] in ("player", "spectator")
    if fields.get("max_players") is not None:
        assert type(fields["max_players"]) is int and 1 <= fields["max_players"] <= 10000
    if fields.get("since") is not None:
        assert type(fields["since"]) is int and 0 <= fields["since"] <= 2**31 - 1
    for name in ("payload", "game_data", "metadata", "patch"):
        if fields.get(name) is not None:
            assert isinstance(fields[name], dict)
    if isinstance(msg, protocol.UpdateRoom):
        assert msg.status != "closed"
        assert msg.status is not None or msg.patch is not None
    if isinstance(msg, protocol.ListRooms):
        assert type(msg.limit) is int and 1 <= msg.limit <= 500


def parse_checked(data: bytes | str) -> None:
    try:
        msg = protocol.parse(data)
    except ProtocolError as err:
        assert err.code in PARSE_ERRORS
        assert isinstance(err.message, str) and err.message
        # `re` is carried exactly when the frame's id can be read (protocol.md, Errors).
        assert (err.re, err.has_re) == protocol.peek_id(data)
        return
    check_accepted(msg, orjson.loads(data))


@fuzz(1500)
@given(st.binary(max_size=200))
def test_arbitrary_bytes(data: bytes) -> None:
    parse_checked(data)


@fuzz(800)
@given(st.text(max_size=200))
def test_arbitrary_text(data: str) -> None:
    parse_checked(data)


@fuzz(800)
@given(json_values)
def test_arbitrary_json_values(value: Any) -> None:
    parse_checked(orjson.dumps(value))


@fuzz(1000)
@given(message_like)
def test_message_shaped_objects(obj: dict[str, Any]) -> None:
    parse_checked(orjson.dumps(obj))


@fuzz(1000)
@given(st.sampled_from(FULL), st.sampled_from(FIELD_NAMES), json_values)
def test_valid_message_with_one_field_mutated(base: dict[str, Any], field: str, value: Any) -> None:
    obj = dict(base, **{field: value})
    parse_checked(orjson.dumps(obj))
    parse_checked(orjson.dumps(obj).decode())


def test_full_messages_are_valid() -> None:
    """The mutation corpus starts from messages that parse."""
    for obj in FULL:
        check_accepted(protocol.parse(orjson.dumps(obj)), obj)
