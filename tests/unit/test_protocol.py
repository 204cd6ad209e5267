"""roomcast.protocol: every client message type, every limit of protocol.md, the `id`/`re`
rules, and the server-side frame builders and readers."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from roomcast import protocol
from roomcast.errors import ErrorCode, ProtocolError
from roomcast.protocol import CloseRoom, CreateRoom, Event, Hello, Join, Leave, ListRooms, Message, Ping, UpdateRoom

REQ_ID = "req-1"

# The smallest valid form of each message type.
MINIMAL: dict[str, dict[str, Any]] = {
    "hello": {"type": "hello", "device_id": "device-0001"},
    "ping": {"type": "ping"},
    "create_room": {"type": "create_room", "game_type": "trivia"},
    "join": {"type": "join", "room_id": "room-1"},
    "leave": {"type": "leave", "room_id": "room-1"},
    "event": {"type": "event", "room_id": "room-1", "event_type": "answer"},
    "update_room": {"type": "update_room", "room_id": "room-1", "status": "in_progress"},
    "close_room": {"type": "close_room", "room_id": "room-1"},
    "list_rooms": {"type": "list_rooms"},
}


def parse_obj(obj: Any) -> Message:
    return protocol.parse(orjson.dumps(obj))


def refusal(data: bytes | str) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        protocol.parse(data)
    assert isinstance(info.value.code, ErrorCode)
    return info.value


def refusal_of(obj: Any) -> ProtocolError:
    return refusal(orjson.dumps(obj))


def with_fields(kind: str, **fields: Any) -> dict[str, Any]:
    """MINIMAL[kind] with an id and `fields` set (a value of `...` removes the field)."""
    obj = dict(MINIMAL[kind], id=REQ_ID)
    for name, value in fields.items():
        if value is ...:
            obj.pop(name, None)
        else:
            obj[name] = value
    return obj


def assert_bad_request_with_re(obj: dict[str, Any]) -> ProtocolError:
    err = refusal_of(obj)
    assert err.code is ErrorCode.BAD_REQUEST
    assert err.has_re is True
    assert err.re == obj["id"]
    return err


# ---------------------------------------------------------------- valid forms and defaults


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (MINIMAL["hello"], Hello(None, "device-0001", None, None, None)),
        (MINIMAL["ping"], Ping(None)),
        (MINIMAL["create_room"], CreateRoom(None, None, "trivia", None, None, None)),
        (MINIMAL["join"], Join(None, "room-1", "player", None, None, None)),
        (MINIMAL["leave"], Leave(None, "room-1")),
        (MINIMAL["event"], Event(None, "room-1", "answer", None, None)),
        (MINIMAL["update_room"], UpdateRoom(None, "room-1", "in_progress", None)),
        (MINIMAL["close_room"], CloseRoom(None, "room-1")),
        (MINIMAL["list_rooms"], ListRooms(None, None, None, 50)),
    ],
    ids=list(MINIMAL),
)
def test_minimal_message_parses_with_defaults(obj: dict[str, Any], expected: Message) -> None:
    assert parse_obj(obj) == expected


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (
            {"type": "hello", "id": 1, "device_id": "dev.ice:01-_x", "token": "tok",
             "fingerprint": "fp", "metadata": {"lang": "en", "n": [1, {"x": None}]}},
            Hello(1, "dev.ice:01-_x", "tok", "fp", {"lang": "en", "n": [1, {"x": None}]}),
        ),
        ({"type": "ping", "id": "p"}, Ping("p")),
        (
            {"type": "create_room", "id": "c", "room_id": "Room_1-x", "game_type": "quiz",
             "max_players": 8, "game_data": {"round": 1}, "password": "secret"},
            CreateRoom("c", "Room_1-x", "quiz", 8, {"round": 1}, "secret"),
        ),
        (
            {"type": "join", "id": 2, "room_id": "r", "role": "spectator", "password": "pw",
             "since": 17, "epoch": "e1"},
            Join(2, "r", "spectator", "pw", 17, "e1"),
        ),
        ({"type": "leave", "id": 3, "room_id": "r"}, Leave(3, "r")),
        (
            {"type": "event", "id": 4, "room_id": "r", "event_type": "move", "action": "left",
             "payload": {"x": 1}},
            Event(4, "r", "move", "left", {"x": 1}),
        ),
        (
            {"type": "update_room", "id": 5, "room_id": "r", "status": "completed",
             "patch": {"score": None}},
            UpdateRoom(5, "r", "completed", {"score": None}),
        ),
        ({"type": "update_room", "room_id": "r", "patch": {}}, UpdateRoom(None, "r", None, {})),
        ({"type": "close_room", "id": 6, "room_id": "r"}, CloseRoom(6, "r")),
        (
            {"type": "list_rooms", "id": 7, "game_type": "quiz", "status": "closed", "limit": 3},
            ListRooms(7, "quiz", "closed", 3),
        ),
    ],
    ids=lambda v: v["type"] if isinstance(v, dict) else "",
)
def test_full_message_parses(obj: dict[str, Any], expected: Message) -> None:
    assert parse_obj(obj) == expected


def test_text_input_parses_like_bytes() -> None:
    text = orjson.dumps(MINIMAL["event"]).decode()
    assert protocol.parse(text) == protocol.parse(text.encode())


def test_null_optional_fields_mean_absent() -> None:
    msg = parse_obj({"type": "join", "room_id": "r", "role": None, "since": None, "epoch": None,
                     "password": None})
    assert msg == Join(None, "r", "player", None, None, None)


def test_unknown_fields_are_ignored() -> None:
    assert parse_obj({"type": "ping", "extra": {"x": [1, 2]}}) == Ping(None)


# ---------------------------------------------------------------- limits of protocol.md

ROOM_ID_TYPES = ("join", "leave", "event", "update_room", "close_room")

GOOD_ROOM_IDS = ["a", "A" * 64, "abc_-XYZ09", "-", "_"]
BAD_ROOM_IDS = ["", "a" * 65, "a b", "a/b", "room.1", "röom", "abc\n", "a:b", 5, True, [], {}]

# (message type, field, value) that must parse, with the field read back unchanged.
ACCEPTED: list[tuple[str, str, Any]] = [
    *[(kind, "room_id", v) for kind in ROOM_ID_TYPES for v in GOOD_ROOM_IDS],
    *[("create_room", "room_id", v) for v in GOOD_ROOM_IDS],
    ("hello", "device_id", "a" * 8),
    ("hello", "device_id", "d" * 128),
    ("hello", "device_id", "dev.ice:01-_X"),
    ("hello", "token", "t"),
    ("hello", "token", "t" * 8192),
    ("hello", "fingerprint", ""),
    ("hello", "fingerprint", "f" * 255),
    ("hello", "metadata", {}),
    ("hello", "metadata", {"a": {"b": [1, "x", None]}}),
    ("create_room", "game_type", "g"),
    ("create_room", "game_type", "g" * 100),
    ("create_room", "game_type", "ünïcode ✓"),
    ("create_room", "max_players", 1),
    ("create_room", "max_players", 10000),
    ("create_room", "game_data", {}),
    ("create_room", "game_data", {"board": [[0, 1], [1, 0]]}),
    ("create_room", "password", "p"),
    ("create_room", "password", "p" * 128),
    ("join", "role", "player"),
    ("join", "role", "spectator"),
    ("join", "since", 0),
    ("join", "since", 12345),
    ("join", "since", 2**31 - 1),
    ("join", "epoch", "e"),
    ("join", "epoch", "e" * 64),
    ("join", "password", "p" * 128),
    ("event", "event_type", "e"),
    ("event", "event_type", "e" * 100),
    ("event", "event_type", 'quote"and\\backslash'),
    ("event", "action", ""),
    ("event", "action", "a" * 255),
    ("event", "payload", {}),
    ("event", "payload", {"nested": {"deep": [1, 2.5, True, None, "s"]}}),
    *[("update_room", "status", s) for s in ("active", "waiting", "in_progress", "completed")],
    ("update_room", "patch", {"a": None}),
    ("list_rooms", "game_type", "g" * 100),
    *[("list_rooms", "status", s) for s in ("active", "waiting", "in_progress", "completed", "closed")],
    ("list_rooms", "limit", 1),
    ("list_rooms", "limit", 500),
]

# (message type, field, value) refused with bad_request; `...` means "field missing".
REFUSED: list[tuple[str, str, Any]] = [
    *[(kind, "room_id", v) for kind in ROOM_ID_TYPES for v in [*BAD_ROOM_IDS, ...]],
    *[("create_room", "room_id", v) for v in BAD_ROOM_IDS],
    *[("hello", "device_id", v) for v in
      ["a" * 7, "d" * 129, "", "device id!", "device/01", "dévice-001", "device\t01", 12345678, ...]],
    ("hello", "token", ""),
    ("hello", "token", "t" * 8193),
    ("hello", "token", 5),
    ("hello", "fingerprint", "f" * 256),
    ("hello", "fingerprint", ["f"]),
    *[("hello", "metadata", v) for v in [[], "x", 1, True, [{"a": 1}]]],
    *[("create_room", "game_type", v) for v in ["", "g" * 101, 5, ["g"], {}, ...]],
    *[("create_room", "max_players", v) for v in [0, -1, 10001, True, False, 1.5, 2.0, "5", [5]]],
    *[("create_room", "game_data", v) for v in [[], "x", 0, False, [{"a": 1}]]],
    *[("create_room", "password", v) for v in ["", "p" * 129, 1234]],
    *[("join", "role", v) for v in ["host", "PLAYER", "", "admin", 1, True, ["player"]]],
    *[("join", "since", v) for v in [-1, 1.5, 1.0, "1", True, False, 2**31, [0]]],
    *[("join", "epoch", v) for v in ["", "e" * 65, 5]],
    *[("join", "password", v) for v in ["", "p" * 129]],
    *[("event", "event_type", v) for v in ["", "e" * 101, 1, None, ...]],
    *[("event", "action", v) for v in ["a" * 256, 1, {}, ["a"]]],
    *[("event", "payload", v) for v in [[], "x", 1, True, [{"a": 1}]]],
    *[("update_room", "status", v) for v in ["open", "ACTIVE", "", 1, True]],
    *[("update_room", "patch", v) for v in [[], "x", 1, True]],
    *[("list_rooms", "limit", v) for v in [0, -5, 501, True, 2.5, "10"]],
    *[("list_rooms", "status", v) for v in ["open", "", 3]],
    *[("list_rooms", "game_type", v) for v in ["", "g" * 101, 7]],
]


@pytest.mark.parametrize(("kind", "field", "value"), ACCEPTED, ids=repr)
def test_value_within_limits_is_accepted(kind: str, field: str, value: Any) -> None:
    msg = parse_obj(with_fields(kind, **{field: value}))
    assert getattr(msg, field) == value
    assert msg.id == REQ_ID


@pytest.mark.parametrize(("kind", "field", "value"), REFUSED, ids=repr)
def test_value_over_limits_is_bad_request_with_re(kind: str, field: str, value: Any) -> None:
    err = assert_bad_request_with_re(with_fields(kind, **{field: value}))
    assert f"`{field}`" in err.message


def test_list_rooms_limit_defaults_to_50() -> None:
    msg = parse_obj({"type": "list_rooms", "status": "active"})
    assert isinstance(msg, ListRooms)
    assert msg.limit == 50


@pytest.mark.parametrize("event_type", sorted(protocol.RESERVED_EVENT_TYPES))
def test_reserved_event_type_is_refused(event_type: str) -> None:
    assert protocol.RESERVED_EVENT_TYPES == {
        "participant_joined", "participant_left", "participant_disconnected",
        "participant_reconnected", "state_change", "room_closed", "host_changed",
    }
    assert_bad_request_with_re(with_fields("event", event_type=event_type))


def test_event_idempotency_key() -> None:
    msg = parse_obj(with_fields("event", idempotency_key="a-Z_09" * 10 + "abcd"))
    assert isinstance(msg, Event) and msg.idempotency_key == "a-Z_09" * 10 + "abcd"
    msg = parse_obj(with_fields("event"))
    assert isinstance(msg, Event) and msg.idempotency_key is None


@pytest.mark.parametrize("key", ["", "x" * 65, "a b", "a.b", "ключ", 12, True, {}])
def test_bad_idempotency_key_is_refused(key: Any) -> None:
    err = assert_bad_request_with_re(with_fields("event", idempotency_key=key))
    assert "idempotency_key" in err.message


def test_update_room_cannot_close() -> None:
    err = assert_bad_request_with_re(with_fields("update_room", status="closed"))
    assert "close_room" in err.message


@pytest.mark.parametrize("extra", [{}, {"status": None}, {"patch": None}, {"status": None, "patch": None}])
def test_update_room_needs_status_or_patch(extra: dict[str, Any]) -> None:
    assert_bad_request_with_re({"type": "update_room", "id": REQ_ID, "room_id": "r", **extra})


# ---------------------------------------------------------------- U+0000

NUL_CASES: list[dict[str, Any]] = [
    with_fields("event", payload={"k": "a\x00b"}),
    with_fields("event", payload={"a\x00": 1}),
    with_fields("event", payload={"a": [{"b": ["ok", {"c": "\x00"}]}]}),
    with_fields("event", payload={"outer": {"in\x00ner": None}}),
    with_fields("event", action="a\x00"),
    with_fields("event", event_type="ev\x00"),
    with_fields("create_room", game_type="g\x00"),
    with_fields("create_room", game_data={"x": ["\x00"]}),
    with_fields("create_room", password="pw\x00"),
    with_fields("join", epoch="e\x00"),
    with_fields("update_room", patch={"\x00": None}),
    with_fields("hello", metadata={"m": "\x00"}),
    with_fields("hello", token="t\x00k"),
    with_fields("hello", fingerprint="\x00"),
    with_fields("list_rooms", game_type="\x00"),
    with_fields("ping", unrelated_field={"deep": ["\x00"]}),
    with_fields("ping", **{"key\x00": 1}),
]


@pytest.mark.parametrize("obj", NUL_CASES, ids=lambda o: o["type"])
@pytest.mark.parametrize("as_text", [False, True], ids=["bytes", "str"])
def test_nul_anywhere_is_refused(obj: dict[str, Any], as_text: bool) -> None:
    data = orjson.dumps(obj)
    assert b"\\u0000" in data  # orjson escapes it; the raw byte never reaches the wire
    err = refusal(data.decode() if as_text else data)
    assert err.code is ErrorCode.BAD_REQUEST
    assert (err.has_re, err.re) == (True, REQ_ID)


def test_deeply_nested_nul_is_refused() -> None:
    payload: Any = "\x00"
    for _ in range(100):
        payload = {"k": [payload]}
    assert_bad_request_with_re(with_fields("event", payload=payload))


def test_escaped_backslash_u0000_text_is_not_a_nul() -> None:
    # The six characters `\u0000` (an escaped backslash, then u0000) are a fine string.
    msg = parse_obj(with_fields("event", payload={"text": "\\u0000"}))
    assert isinstance(msg, Event)
    assert msg.payload == {"text": "\\u0000"}


def test_raw_nul_byte_is_malformed_json() -> None:
    err = refusal(b'{"type":"ping","id":"x","s":"a\x00b"}')
    assert err.code is ErrorCode.BAD_REQUEST
    assert err.has_re is False


# ---------------------------------------------------------------- malformed frames, type


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"   ",
        b"{",
        b"not json",
        b"\xff\xfe\x00",
        b'{"type":"ping"',
        b'{"type":"ping"} trailing',
        b'{"type":"ping",}',
        b"\xef\xbb\xbf{\"type\":\"ping\"}",
        b"{'type': 'ping'}",
        b'{"type":"ping","id":NaN}',
        b"[" * 5000 + b"]" * 5000,
        "{",
    ],
)
def test_malformed_json_is_bad_request_without_re(data: bytes | str) -> None:
    err = refusal(data)
    assert err.code is ErrorCode.BAD_REQUEST
    assert err.has_re is False
    assert err.re is None


@pytest.mark.parametrize("value", [[], [{"type": "ping"}], 1, "ping", None, True, 1.5])
def test_non_object_is_bad_request_without_re(value: Any) -> None:
    err = refusal_of(value)
    assert err.code is ErrorCode.BAD_REQUEST
    assert err.has_re is False


@pytest.mark.parametrize("obj", [{}, {"room_id": "r"}, {"type": None}, {"type": 5}, {"type": ["ping"]}, {"type": {}}])
def test_missing_or_non_string_type_is_bad_request(obj: dict[str, Any]) -> None:
    err = refusal_of(obj)
    assert err.code is ErrorCode.BAD_REQUEST
    assert err.has_re is False


def test_missing_type_with_readable_id_carries_re() -> None:
    # protocol.md: `re` is absent only when the id could not be read.
    err = refusal_of({"id": 9})
    assert (err.code, err.has_re, err.re) == (ErrorCode.BAD_REQUEST, True, 9)


@pytest.mark.parametrize("kind", ["nope", "Hello", "PING", "", "hello ", "event\x00", "x" * 1000])
@pytest.mark.parametrize("msg_id", ["abc", 42])
def test_unknown_type_carries_re(kind: str, msg_id: str | int) -> None:
    err = refusal_of({"type": kind, "id": msg_id})
    assert err.code is ErrorCode.UNKNOWN_TYPE
    assert (err.has_re, err.re) == (True, msg_id)
    assert len(err.message) < 200  # a huge type name is not echoed whole


def test_unknown_type_without_id_has_no_re() -> None:
    err = refusal_of({"type": "nope"})
    assert err.code is ErrorCode.UNKNOWN_TYPE
    assert err.has_re is False


# ---------------------------------------------------------------- id -> re

VALID_IDS: list[str | int] = ["", "a", "x" * 64, "ünï", 0, 7, -3, 2**63 - 1, -(2**63), 2**64 - 1]
INVALID_IDS: list[Any] = [True, False, "x" * 65, 1.5, 1.0, None, {}, {"a": 1}, [], [1], "a\x00b"]


@pytest.mark.parametrize("kind", list(MINIMAL))
@pytest.mark.parametrize("msg_id", VALID_IDS, ids=repr)
def test_valid_id_is_carried(kind: str, msg_id: str | int) -> None:
    msg = parse_obj(dict(MINIMAL[kind], id=msg_id))
    assert msg.id == msg_id
    assert type(msg.id) is type(msg_id)


@pytest.mark.parametrize("msg_id", VALID_IDS, ids=repr)
def test_valid_id_is_carried_as_re_on_refusal(msg_id: str | int) -> None:
    err = refusal_of({"type": "join", "id": msg_id})  # room_id missing
    assert err.code is ErrorCode.BAD_REQUEST
    assert err.has_re is True
    assert err.re == msg_id


@pytest.mark.parametrize("kind", [*MINIMAL, "nope"])
@pytest.mark.parametrize("msg_id", INVALID_IDS, ids=repr)
def test_invalid_id_is_bad_request_without_re(kind: str, msg_id: Any) -> None:
    err = refusal_of(dict(MINIMAL.get(kind, {"type": kind}), id=msg_id))
    assert err.code is ErrorCode.BAD_REQUEST
    assert err.has_re is False
    assert err.re is None


@pytest.mark.parametrize("raw_id", [b"1e3", b"-0.0", b"1.5", b"1" * 70, b"-" + b"9" * 64, b"1" * 5000])
def test_id_that_is_a_float_or_too_long_is_unreadable(raw_id: bytes) -> None:
    err = refusal(b'{"type":"ping","id":' + raw_id + b"}")
    assert (err.code, err.has_re) == (ErrorCode.BAD_REQUEST, False)


@pytest.mark.parametrize("raw_id", [b"18446744073709551615", b"18446744073709551616", b"-9223372036854775809",
                                    b"1" * 64, b"-" + b"9" * 63])
def test_integer_id_beyond_64_bits_is_echoed_digit_for_digit(raw_id: bytes) -> None:
    # orjson reads such integers as floats; the id is re-read exactly and encoded verbatim.
    msg = protocol.parse(b'{"type":"ping","id":' + raw_id + b"}")
    assert protocol.encode({"type": "pong", "re": msg.id}) == b'{"type":"pong","re":' + raw_id + b"}"
    assert protocol.peek_id(b'{"id":' + raw_id + b"}")[1] is True
    err = refusal(b'{"type":"nonsense","id":' + raw_id + b"}")
    assert err.has_re and protocol.error_message("unknown_type", "x", re=err.re, has_re=True).startswith(
        b'{"type":"error","re":' + raw_id + b",")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"id":"a","type":"ping"}', ("a", True)),
        (b'{"id":12}', (12, True)),
        ('{"id":"text"}', ("text", True)),
        (b'{"type":"ping"}', (None, False)),
        (b'{"id":true}', (None, False)),
        (b'{"id":null}', (None, False)),
        (b'{"id":1.5}', (None, False)),
        (b'{"id":"' + b"x" * 65 + b'"}', (None, False)),
        (b'{"id":"a"', (None, False)),
        (b'[{"id":"a"}]', (None, False)),
        (b"", (None, False)),
    ],
)
def test_peek_id(data: bytes | str, expected: tuple[Any, bool]) -> None:
    assert protocol.peek_id(data) == expected


# ---------------------------------------------------------------- server messages


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, {"type": "error", "code": "bad_request", "message": "m"}),
        ({"re": "r1", "has_re": True}, {"type": "error", "re": "r1", "code": "bad_request", "message": "m"}),
        ({"re": 0, "has_re": True}, {"type": "error", "re": 0, "code": "bad_request", "message": "m"}),
        ({"re": "ignored", "has_re": False}, {"type": "error", "code": "bad_request", "message": "m"}),
        ({"retry_after_ms": 250}, {"type": "error", "code": "bad_request", "message": "m", "retry_after_ms": 250}),
    ],
)
def test_error_message(kwargs: dict[str, Any], expected: dict[str, Any]) -> None:
    assert orjson.loads(protocol.error_message("bad_request", "m", **kwargs)) == expected


def test_encode_is_json() -> None:
    msg = {"type": "pong", "t": 123}
    assert orjson.loads(protocol.encode(msg)) == msg


SENDER = {"socket_id": "s1", "device_id": "device-0001", "user_id": None}
TRICKY_EVENT_TYPES = [
    "answer",
    'a"b',
    "back\\slash",
    "trailing\\",
    '\\"',
    "tab\there\nnewline",
    "ünïcode ✓ 🎲",
    '","action":"x',
    "event_type",
    "\u2028",
]
TRICKY_PAYLOADS: list[dict[str, Any] | None] = [
    None,
    {},
    {"event_type": "evil", "seq": 999},
    {"text": '"event_type":"evil","seq":5,'},
    {"nested": {"event_type": ["x"], '"seq":': 1}},
]


@pytest.mark.parametrize("event_type", TRICKY_EVENT_TYPES, ids=repr)
@pytest.mark.parametrize("payload", TRICKY_PAYLOADS, ids=repr)
def test_event_frame_round_trip(event_type: str, payload: dict[str, Any] | None) -> None:
    tail = protocol.event_tail(event_type, "act", payload, SENDER, 1_700_000_000_123)
    frame = protocol.event_frame("room_1-A", 42, tail)
    assert frame.startswith(b'{"type":"event","room_id":"room_1-A","seq":42,"event_type":"')
    assert orjson.loads(frame) == {
        "type": "event",
        "room_id": "room_1-A",
        "seq": 42,
        "event_type": event_type,
        "action": "act",
        "payload": payload,
        "from": SENDER,
        "ts": 1_700_000_000_123,
    }
    assert protocol.event_type_of(frame) == event_type
    assert protocol.event_seq_of(frame) == 42


@pytest.mark.parametrize("seq", [1, 9, 10, 2**31 - 1, 2**53])
def test_event_seq_of(seq: int) -> None:
    frame = protocol.event_frame("r", seq, protocol.event_tail("e", None, {"seq": 7}, None, 0))
    assert protocol.event_seq_of(frame) == seq
    parsed = orjson.loads(frame)
    assert parsed["seq"] == seq
    assert parsed["action"] is None and parsed["from"] is None


def test_event_frames_of_parsed_event_round_trip() -> None:
    """What the gateway does: parse a client event, build its frame, read it back."""
    msg = parse_obj({"type": "event", "room_id": "r", "event_type": 'say "hi"', "action": "a",
                     "payload": {"event_type": "fake"}})
    assert isinstance(msg, Event)
    frame = protocol.event_frame(msg.room_id, 3, protocol.event_tail(msg.event_type, msg.action, msg.payload, None, 5))
    assert protocol.event_type_of(frame) == 'say "hi"'
    assert orjson.loads(frame)["payload"] == {"event_type": "fake"}


@pytest.mark.parametrize("field", ["payload", "game_data", "patch", "metadata"])
def test_objects_nested_deeper_than_the_limit_are_refused(field: str) -> None:
    deep: dict[str, Any] = {}
    inner = deep
    for _ in range(protocol.DEFAULT_MAX_DEPTH - 1):
        inner["x"] = {}
        inner = inner["x"]
    base = {"payload": ("event", {"room_id": "r1", "event_type": "e"}),
            "game_data": ("create_room", {"game_type": "g"}),
            "patch": ("update_room", {"room_id": "r1"}),
            "metadata": ("hello", {"device_id": "device-123"})}[field]
    ok = {"type": base[0], "id": 1, **base[1], field: deep}
    protocol.parse(orjson.dumps(ok))  # exactly at the limit: accepted
    inner["x"] = [1]  # one level more
    with pytest.raises(ProtocolError) as err:
        protocol.parse(orjson.dumps(ok))
    assert err.value.code is ErrorCode.BAD_REQUEST and "nested" in err.value.message
    assert protocol.parse(orjson.dumps(ok), max_depth=64) is not None


def test_spectators_can_send_is_a_boolean_room_option() -> None:
    msg = parse_obj({"type": "create_room", "game_type": "g", "spectators_can_send": True})
    assert isinstance(msg, CreateRoom) and msg.spectators_can_send is True
    assert parse_obj({"type": "create_room", "game_type": "g"}).spectators_can_send is False  # type: ignore[union-attr]
    assert_bad_request_with_re({"type": "create_room", "id": 1, "game_type": "g", "spectators_can_send": "yes"})
