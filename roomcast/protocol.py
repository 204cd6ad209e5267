"""Wire protocol v1, sans-I/O: bytes in, typed messages out; typed replies in, bytes out.

This module must stay pure: no asyncio, sockets, redis or asyncpg (a unit test checks).
Every limit of protocol.md that concerns one message is enforced here, so nothing the
gateway accepts can fail later when it is persisted (design invariant 8): field sizes
match the history schema, JSON objects are objects, and no string carries U+0000, which
Postgres `text` and `jsonb` cannot store.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import orjson

from roomcast.errors import ErrorCode, ProtocolError

ROOM_STATUSES: Final = ("active", "waiting", "in_progress", "completed", "closed")
SETTABLE_STATUSES: Final = ("active", "waiting", "in_progress", "completed")
JOIN_ROLES: Final = ("player", "spectator")
RESERVED_EVENT_TYPES: Final = frozenset(
    {
        "participant_joined",
        "participant_left",
        "participant_disconnected",
        "participant_reconnected",
        "state_change",
        "room_closed",
        "host_changed",  # extension: the host left and another participant became host
    }
)

ROOM_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
IDEMPOTENCY_KEY_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")  # event.idempotency_key
LIST_CURSOR_RE: Final = re.compile(r"[0-9]{1,16}\.[A-Za-z0-9_-]{1,64}")  # list_cursor()
DEVICE_ID_RE: Final = re.compile(r"[A-Za-z0-9._:-]{8,128}")
MAX_ID_CHARS: Final = 64
MAX_GAME_TYPE: Final = 100
MAX_EVENT_TYPE: Final = 100
MAX_ACTION: Final = 255
MAX_PASSWORD: Final = 128
MAX_TOKEN: Final = 8192
MAX_FINGERPRINT: Final = 255
MAX_EPOCH: Final = 64
MAX_PLAYERS_LIMIT: Final = 10000
MAX_SEQ: Final = 2**31 - 1  # game_events.sequence_number is INTEGER
DEFAULT_LIST_LIMIT: Final = 50
MAX_LIST_LIMIT: Final = 500
DEFAULT_MAX_DEPTH: Final = 16

# An integer id beyond 64 bits (orjson cannot encode it) is kept as its exact JSON text.
_Id = str | int | orjson.Fragment | None
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what orjson encodes as an integer


# ---------------------------------------------------------------- typed client messages


@dataclass(slots=True)
class Hello:
    TYPE: ClassVar[str] = "hello"
    id: _Id
    device_id: str
    token: str | None
    fingerprint: str | None
    metadata: dict[str, Any] | None
    device_token: str | None = None  # extension: proves the device id (welcome.device_token)
    rotate_token: bool = False  # extension: with a valid device_token, get a new one in welcome


@dataclass(slots=True)
class Ping:
    TYPE: ClassVar[str] = "ping"
    id: _Id


@dataclass(slots=True)
class CreateRoom:
    TYPE: ClassVar[str] = "create_room"
    id: _Id
    room_id: str | None
    game_type: str
    max_players: int | None
    game_data: dict[str, Any] | None
    password: str | None
    spectators_can_send: bool = False  # extension: may spectators send game events?


@dataclass(slots=True)
class Join:
    TYPE: ClassVar[str] = "join"
    id: _Id
    room_id: str
    role: str
    password: str | None
    since: int | None
    epoch: str | None


@dataclass(slots=True)
class Leave:
    TYPE: ClassVar[str] = "leave"
    id: _Id
    room_id: str


@dataclass(slots=True)
class Event:
    TYPE: ClassVar[str] = "event"
    id: _Id
    room_id: str
    event_type: str
    action: str | None
    payload: dict[str, Any] | None
    # extension: the same key in the same room within IDEMPOTENCY_WINDOW is applied once
    idempotency_key: str | None = None


@dataclass(slots=True)
class UpdateRoom:
    TYPE: ClassVar[str] = "update_room"
    id: _Id
    room_id: str
    status: str | None
    patch: dict[str, Any] | None


@dataclass(slots=True)
class CloseRoom:
    TYPE: ClassVar[str] = "close_room"
    id: _Id
    room_id: str


@dataclass(slots=True)
class ListRooms:
    TYPE: ClassVar[str] = "list_rooms"
    id: _Id
    game_type: str | None
    status: str | None
    limit: int
    cursor: tuple[int, str] | None = None  # (created_at, room_id) of the last room of the page before


Message = Hello | Ping | CreateRoom | Join | Leave | Event | UpdateRoom | CloseRoom | ListRooms


# ---------------------------------------------------------------- field readers


class _Fields:
    """Reads and validates one message's fields; raises ProtocolError carrying `re`."""

    __slots__ = ("max_depth", "obj", "re")

    def __init__(self, obj: dict[str, Any], re_: _Id, max_depth: int = DEFAULT_MAX_DEPTH) -> None:
        self.obj = obj
        self.re = re_
        self.max_depth = max_depth

    def fail(self, message: str, code: ErrorCode = ErrorCode.BAD_REQUEST) -> ProtocolError:
        # A readable id is a str or int, never None: no id means no `re` in the reply.
        return ProtocolError(code, message, re=self.re, has_re=self.re is not None)

    def string(
        self, name: str, *, required: bool, max_len: int, min_len: int = 0
    ) -> str | None:
        value = self.obj.get(name)
        if value is None:
            if required:
                raise self.fail(f"`{name}` is required")
            return None
        if not isinstance(value, str):
            raise self.fail(f"`{name}` must be a string")
        if not min_len <= len(value) <= max_len:
            raise self.fail(f"`{name}` must be {min_len}-{max_len} characters")
        if "\x00" in value:
            raise self.fail(f"`{name}` must not contain U+0000")
        return value

    def req_string(self, name: str, *, max_len: int, min_len: int = 1) -> str:
        value = self.string(name, required=True, max_len=max_len, min_len=min_len)
        assert value is not None
        return value

    def pattern(self, name: str, regex: re.Pattern[str], what: str, *, required: bool) -> str | None:
        value = self.obj.get(name)
        if value is None:
            if required:
                raise self.fail(f"`{name}` is required")
            return None
        if not isinstance(value, str) or regex.fullmatch(value) is None:
            raise self.fail(f"`{name}` must be {what}")
        return value

    def room_id(self) -> str:
        value = self.pattern("room_id", ROOM_ID_RE, "1-64 characters of [A-Za-z0-9_-]", required=True)
        assert value is not None
        return value

    def integer(self, name: str, lo: int, hi: int) -> int | None:
        value = self.obj.get(name)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(f"`{name}` must be an integer")
        if not lo <= value <= hi:
            raise self.fail(f"`{name}` must be between {lo} and {hi}")
        return value

    def choice(self, name: str, choices: tuple[str, ...]) -> str | None:
        value = self.obj.get(name)
        if value is None:
            return None
        if not isinstance(value, str) or value not in choices:
            raise self.fail(f"`{name}` must be one of {', '.join(choices)}")
        return value

    def json_object(self, name: str) -> dict[str, Any] | None:
        value = self.obj.get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.fail(f"`{name}` must be a JSON object")
        if value and _too_deep(value, self.max_depth):
            raise self.fail(f"`{name}` is nested deeper than {self.max_depth} levels")
        return value

    def boolean(self, name: str) -> bool:
        value = self.obj.get(name, False)
        if not isinstance(value, bool):
            raise self.fail(f"`{name}` must be true or false")
        return value


def _read_id(obj: dict[str, Any], data: bytes | str | None = None) -> tuple[_Id, bool]:
    """Return (id, readable). An id that is present but invalid is unreadable."""
    if "id" not in obj:
        return None, False
    value = obj["id"]
    if isinstance(value, bool):
        return None, False
    if isinstance(value, str):
        if len(value) <= MAX_ID_CHARS and "\x00" not in value:
            return value, True
        return None, False
    if isinstance(value, float) and data is not None:
        # orjson reads an integer beyond 64 bits as a float: read the exact value (rare path).
        value = _exact_id(data)
    if isinstance(value, int) and not isinstance(value, bool) and len(str(value)) <= MAX_ID_CHARS:
        if _INT_MIN <= value <= _INT_MAX:
            return value, True
        return orjson.Fragment(str(value).encode()), True  # echoed digit for digit
    return None, False


def _exact_id(data: bytes | str) -> object:
    """The `id` of a frame orjson already accepted, parsed by the stdlib (exact integers)."""
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):  # e.g. an integer of more than 4300 digits
        return None
    return obj.get("id") if isinstance(obj, dict) else None


def _too_deep(value: Any, limit: int) -> bool:
    """True if objects/arrays nest deeper than `limit` (the value itself is level 1)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item if isinstance(v, (dict, list)))
    return False


def _has_nul(value: Any) -> bool:
    """True if any string (key or value) inside a parsed JSON value contains U+0000."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            for key, sub in item.items():
                if "\x00" in key:
                    return True
                stack.append(sub)
        elif isinstance(item, list):
            stack.extend(item)
    return False


# ---------------------------------------------------------------- message parsers


def _hello(f: _Fields) -> Hello:
    device_id = f.pattern("device_id", DEVICE_ID_RE, "8-128 characters of [A-Za-z0-9._:-]", required=True)
    assert device_id is not None
    return Hello(
        f.re,
        device_id,
        f.string("token", required=False, max_len=MAX_TOKEN, min_len=1),
        f.string("fingerprint", required=False, max_len=MAX_FINGERPRINT),
        f.json_object("metadata"),
        f.string("device_token", required=False, max_len=128, min_len=1),
        f.boolean("rotate_token"),
    )


def _ping(f: _Fields) -> Ping:
    return Ping(f.re)


def _create_room(f: _Fields) -> CreateRoom:
    room_id = f.pattern("room_id", ROOM_ID_RE, "1-64 characters of [A-Za-z0-9_-]", required=False)
    return CreateRoom(
        f.re,
        room_id,
        f.req_string("game_type", max_len=MAX_GAME_TYPE),
        f.integer("max_players", 1, MAX_PLAYERS_LIMIT),
        f.json_object("game_data"),
        f.string("password", required=False, max_len=MAX_PASSWORD, min_len=1),
        f.boolean("spectators_can_send"),
    )


def _join(f: _Fields) -> Join:
    return Join(
        f.re,
        f.room_id(),
        f.choice("role", JOIN_ROLES) or "player",
        f.string("password", required=False, max_len=MAX_PASSWORD, min_len=1),
        f.integer("since", 0, MAX_SEQ),
        f.string("epoch", required=False, max_len=MAX_EPOCH, min_len=1),
    )


def _leave(f: _Fields) -> Leave:
    return Leave(f.re, f.room_id())


def _event(f: _Fields) -> Event:
    room_id = f.room_id()
    event_type = f.req_string("event_type", max_len=MAX_EVENT_TYPE)
    if event_type in RESERVED_EVENT_TYPES:
        raise f.fail(f"`event_type` {event_type!r} is reserved for the server")
    return Event(
        f.re,
        room_id,
        event_type,
        f.string("action", required=False, max_len=MAX_ACTION),
        f.json_object("payload"),
        f.pattern("idempotency_key", IDEMPOTENCY_KEY_RE, "1-64 characters of [A-Za-z0-9_-]", required=False),
    )


def _update_room(f: _Fields) -> UpdateRoom:
    room_id = f.room_id()
    if f.obj.get("status") == "closed":
        raise f.fail("use close_room to close a room")
    status = f.choice("status", SETTABLE_STATUSES)
    patch = f.json_object("patch")
    if status is None and patch is None:
        raise f.fail("update_room needs `status` or `patch`")
    return UpdateRoom(f.re, room_id, status, patch)


def _close_room(f: _Fields) -> CloseRoom:
    return CloseRoom(f.re, f.room_id())


def list_cursor(created_at: int, room_id: str) -> str:
    """The `next_cursor` after a room (opaque to clients): its place in newest-first order."""
    return f"{created_at}.{room_id}"


def _list_rooms(f: _Fields) -> ListRooms:
    limit = f.integer("limit", 1, MAX_LIST_LIMIT)
    raw = f.pattern("cursor", LIST_CURSOR_RE, "a `next_cursor` from an earlier `rooms` reply", required=False)
    cursor = None
    if raw is not None:
        created, room_id = raw.split(".", 1)
        cursor = (int(created), room_id)
    return ListRooms(
        f.re,
        f.string("game_type", required=False, max_len=MAX_GAME_TYPE, min_len=1),
        f.choice("status", ROOM_STATUSES),
        DEFAULT_LIST_LIMIT if limit is None else limit,
        cursor,
    )


# Each message class carries its wire name (`TYPE`): the one place a client message type is named.
_PARSERS: Final[dict[str, Callable[[_Fields], Message]]] = {
    cls.TYPE: parser
    for cls, parser in (
        (Hello, _hello),
        (Ping, _ping),
        (CreateRoom, _create_room),
        (Join, _join),
        (Leave, _leave),
        (Event, _event),
        (UpdateRoom, _update_room),
        (CloseRoom, _close_room),
        (ListRooms, _list_rooms),
    )
}
MESSAGE_TYPES: Final = tuple(_PARSERS)


def parse(data: bytes | str, max_depth: int = DEFAULT_MAX_DEPTH) -> Message:
    """Parse one client frame into a typed message (JSON objects nested at most `max_depth`).

    Raises ProtocolError with `bad_request` or `unknown_type`; its `has_re`/`re` tell
    whether the message's `id` could be read (the error reply then carries it as `re`).
    """
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "malformed JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "a message must be a JSON object")
    re_, readable = _read_id(obj, data)
    f = _Fields(obj, re_, max_depth)
    if "id" in obj and not readable:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "`id` must be a string or integer of at most 64 characters")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise f.fail("`type` must be a string")
    parser = _PARSERS.get(kind)
    if parser is None:
        raise f.fail(f"unknown message type {kind[:64]!r}", ErrorCode.UNKNOWN_TYPE)
    # Fast path: only walk the document when the raw text could hold an escaped NUL.
    raw_has_escape = (b"\\u0000" in data) if isinstance(data, bytes) else ("\\u0000" in data or "\x00" in data)
    if raw_has_escape and _has_nul(obj):
        raise f.fail("strings must not contain U+0000")
    return parser(f)


# ---------------------------------------------------------------- server messages

_dumps = orjson.dumps


def encode(message: dict[str, Any]) -> bytes:
    """Encode one server message (already shaped as protocol.md says) to JSON bytes."""
    return _dumps(message)


def error_message(code: str, message: str, *, re: _Id = None, has_re: bool = False,
                  retry_after_ms: int | None = None) -> bytes:
    out: dict[str, Any] = {"type": "error"}
    if has_re:
        out["re"] = re
    out["code"] = code
    out["message"] = message
    if retry_after_ms is not None:
        out["retry_after_ms"] = retry_after_ms
    return _dumps(out)


def event_tail(
    event_type: str,
    action: str | None,
    payload: dict[str, Any] | None,
    sender: dict[str, Any] | None,
    ts: int,
) -> bytes:
    """The part of an event frame after `"seq":N,` — everything but room_id and seq.

    An event frame is `{"type":"event","room_id":R,"seq":N,` + tail. Splitting it this way
    lets whoever assigns `seq` (the in-memory store, or a Redis script) build the final
    frame by concatenation, so an event is encoded exactly once. The tail always starts
    with `"event_type":"…"` (see `event_type_of`).
    """
    body = _dumps(
        {"event_type": event_type, "action": action, "payload": payload, "from": sender, "ts": ts}
    )
    return body[1:]


def event_frame(room_id: str, seq: int, tail: bytes) -> bytes:
    # room_id matches [A-Za-z0-9_-]+ so it needs no JSON escaping.
    return b'{"type":"event","room_id":"%s","seq":%d,%s' % (room_id.encode(), seq, tail)


_EVENT_TYPE_KEY: Final = b'"event_type":"'


def event_type_of(frame: bytes) -> str:
    """Read the event_type of an event frame built by `event_frame` without parsing it."""
    start = frame.index(_EVENT_TYPE_KEY) + len(_EVENT_TYPE_KEY)
    raw = frame[start : frame.index(b'"', start)]
    if b"\\" not in raw:
        return raw.decode()
    # The value has JSON escapes (a quote, backslash or control character): the first
    # quote may be an escaped one. `"action"` always follows in the tail, and an unescaped
    # `","action":` cannot occur inside a JSON string, so it marks the value's real end.
    end = frame.index(b'","action":', start)
    value: str = orjson.loads(frame[start - 1 : end + 1])
    return value


def event_seq_of(frame: bytes) -> int:
    """Read the seq of an event frame built by `event_frame` without parsing it."""
    start = frame.index(b'"seq":') + 6
    return int(frame[start : frame.index(b",", start)])


def peek_id(data: bytes | str) -> tuple[_Id, bool]:
    """Best-effort (id, readable) of a frame, for errors raised before full parsing."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None, False
    if isinstance(obj, dict):
        return _read_id(obj, data)
    return None, False
