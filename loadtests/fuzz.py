"""Live protocol fuzz: generated frames against a real gateway process.

    python -m loadtests.fuzz [--frames 100000] [--seed N] [--workers 8] [--batch 50]
                             [--time-limit 900] [--max-growth-mb 48] [--json FILE]

Starts `python -m gateway` (embedded mode, 127.0.0.1, a free port) and sends it --frames
generated frames over --workers welcomed sockets, in batches each followed by a sentinel
`ping`, plus frames that must end a socket, each on a socket of its own:

- random text, random JSON values, near-valid messages with fields dropped, retyped or
  added, deep nesting (in payloads and bare), huge numbers, lone surrogates and U+0000 in
  strings, binary frames (random bytes, invalid UTF-8, valid JSON as bytes);
- on their own sockets: frames over MAX_FRAME_BYTES (close 1009) and text frames that are
  not UTF-8 (the WebSocket layer closes with 1007).

It checks, and exits non-zero on any violation:
- every frame gets exactly one direct reply, in order, with the frame's `id` as `re` when
  it can be read; a reply is a known type, an error has a known code and never `internal`;
- every frame that cannot be a valid message gets an `error`;
- each socket-ending frame gets its documented close code;
- the gateway is alive and answers /healthz at the end, its log has no traceback, ERROR,
  CRITICAL or "internal error" line;
- its memory stays bounded: VmRSS (sampled from /proc/<pid>/status) grows by at most
  --max-growth-mb from the end of the warm-up (the first tenth of the frames) to the end,
  and by at most half that over the second half of the run.

The generator is deterministic for a given --seed. tests/integration/test_fuzz_live.py
runs the same fuzz at a few thousand frames; docs/security.md has a full-size result.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from roomcast.protocol import MESSAGE_TYPES

from . import procstat
from .procs import GatewayProc

REPLY_TYPES = {"welcome", "pong", "room_created", "joined", "left", "ack", "rooms", "error"}
ERROR_CODES = {"bad_request", "unknown_type", "hello_required", "not_found", "conflict", "room_full",
               "room_closed", "not_member", "forbidden", "unauthorized", "rate_limited", "unavailable"}
FIELDS = ["type", "id", "room_id", "device_id", "token", "fingerprint", "metadata", "game_type", "max_players",
          "game_data", "password", "role", "since", "epoch", "event_type", "action", "payload", "status", "patch",
          "limit", "spectators_can_send", "device_token"]
MAX_FRAME = 65_536
MAX_DEPTH = 16
# What the gateway under fuzz runs with: generous message rates (so replies are about the
# frame, not the budget), but room creation and history kept bounded, so the state the
# fuzz legitimately creates cannot pass for a leak.
GATEWAY_ENV = {
    "LOG_LEVEL": "INFO",
    "MAX_FRAME_BYTES": str(MAX_FRAME),
    "MAX_PAYLOAD_DEPTH": str(MAX_DEPTH),
    "ROOM_CREATE_RATE": "5",
    "MAX_ROOMS_PER_DEVICE": "20",
    "MAX_ROOMS_PER_CONNECTION": "20",
    "ROOM_HISTORY_MAXLEN": "50",
    "MAX_PARTICIPANTS_PER_ROOM": "1000",
    "PRIVACY_HASH_KEY": "fuzz",
}
LOG_BAD = ("Traceback", " ERROR ", " CRITICAL ", "internal error", "Unhandled", "Task exception was never retrieved")


@dataclass
class Frame:
    data: str | bytes
    kind: str
    must_error: bool  # cannot be a valid message: the reply must be an `error`


@dataclass
class Report:
    frames: int = 0
    special_sockets: int = 0
    replies: int = 0
    errors_by_code: dict[str, int] = field(default_factory=dict)
    frames_by_kind: dict[str, int] = field(default_factory=dict)
    closes: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    rss_start_kib: int = 0
    rss_warm_kib: int = 0
    rss_mid_kib: int = 0
    rss_end_kib: int = 0
    rss_peak_kib: int = 0
    gateway_alive: bool = True
    log_lines_flagged: list[str] = field(default_factory=list)
    seed: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations and self.gateway_alive and not self.log_lines_flagged

    def violation(self, text: str) -> None:
        if len(self.violations) < 50:
            self.violations.append(text[:600])

    def summary(self) -> str:
        mib = 1024
        rate = self.frames / self.duration_s if self.duration_s else 0.0
        lines = [
            f"fuzz: {self.frames} frames ({self.special_sockets} on their own sockets) in {self.duration_s:.1f} s "
            f"({rate:.0f}/s), seed {self.seed}",
            f"  replies {self.replies}; errors by code {dict(sorted(self.errors_by_code.items()))}",
            f"  frames by kind {dict(sorted(self.frames_by_kind.items()))}",
            f"  closes {dict(sorted(self.closes.items()))}",
            f"  RSS start {self.rss_start_kib / mib:.1f} MiB, after warm-up {self.rss_warm_kib / mib:.1f}, "
            f"mid {self.rss_mid_kib / mib:.1f}, end {self.rss_end_kib / mib:.1f}, peak {self.rss_peak_kib / mib:.1f} "
            f"(growth after warm-up {(self.rss_end_kib - self.rss_warm_kib) / mib:+.1f} MiB)",
            f"  gateway alive: {self.gateway_alive}; flagged log lines: {len(self.log_lines_flagged)}; "
            f"violations: {len(self.violations)}",
        ]
        lines += [f"  VIOLATION {v}" for v in self.violations[:20]]
        lines += [f"  LOG {line}" for line in self.log_lines_flagged[:20]]
        lines.append("fuzz: OK" if self.ok else "fuzz: FAILED")
        return "\n".join(lines)


# ---------------------------------------------------------------- the generator


class FrameGen:
    """Deterministic frames for one socket: `own` is its room, `shared` one all sockets use."""

    KINDS = (("mutated", 40), ("valid", 8), ("text", 10), ("json", 12), ("deep", 6), ("deep_raw", 2),
             ("huge", 8), ("binary", 8), ("escapes", 6))

    def __init__(self, rng: random.Random, own: str, shared: str, kinds: tuple[str, ...] | None = None) -> None:
        self.rng = rng
        self.own = own
        self.shared = shared
        self.kinds = [(k, w) for k, w in self.KINDS if kinds is None or k in kinds]
        self._names = [k for k, _ in self.kinds]
        self._weights = [w for _, w in self.kinds]

    # -- values

    def scalar(self) -> Any:
        r = self.rng
        pick = r.randrange(12)
        if pick == 0:
            return None
        if pick == 1:
            return r.random() < 0.5
        if pick == 2:
            return r.randint(-1000, 1000)
        if pick == 3:
            return r.choice([2**31, 2**31 - 1, 2**53 + 1, 2**63, -(2**63) - 1, 2**64, 10**30, -(10**40)])
        if pick == 4:
            return r.uniform(-1e300, 1e300)
        if pick == 5:
            return r.choice(["", "x" * 64, "x" * 65, "r" * 101, "e" * 256, "player", "spectator", "host", "closed",
                             "active", "in_progress", "waiting", "completed", "🎲" * 30, "\u202ertl", "a\tb\nc"])
        if pick == 6:
            return self.text(20)
        if pick == 7:
            return self.own if r.random() < 0.5 else self.shared
        return "".join(r.choice("abcdefghijklmnopqrstuvwxyz0123456789_-") for _ in range(r.randint(0, 12)))

    def value(self, depth: int = 0) -> Any:
        r = self.rng
        if depth >= 4 or r.random() < 0.5:
            return self.scalar()
        if r.random() < 0.5:
            return [self.value(depth + 1) for _ in range(r.randint(0, 4))]
        return {self.key(): self.value(depth + 1) for _ in range(r.randint(0, 4))}

    def key(self) -> str:
        return self.rng.choice(FIELDS) if self.rng.random() < 0.4 else self.text(8)

    def text(self, n: int) -> str:
        r = self.rng
        out = []
        for _ in range(r.randint(0, n)):
            c = r.randrange(4)
            if c == 0:
                out.append(chr(r.randint(0x20, 0x7E)))
            elif c == 1:
                out.append(chr(r.randint(0, 0x1F)))
            elif c == 2:
                out.append(chr(r.choice([r.randint(0x80, 0xD7FF), r.randint(0xE000, 0xFFFF)])))
            else:
                out.append(chr(r.randint(0x10000, 0x10FFFF)))
        return "".join(out)

    # -- messages

    def templates(self) -> list[dict[str, Any]]:
        own, shared = self.own, self.shared
        return [
            {"type": "ping"},
            {"type": "hello", "device_id": "device-fuzz-again"},
            {"type": "create_room", "game_type": "fuzz", "max_players": 4, "game_data": {"a": 1}},
            {"type": "create_room", "room_id": shared, "game_type": "fuzz", "password": "pw"},
            {"type": "join", "room_id": shared, "role": "spectator", "since": 0, "epoch": "00000000"},
            {"type": "join", "room_id": own, "since": 0},
            {"type": "join", "room_id": shared, "password": "pw"},
            {"type": "leave", "room_id": shared},
            {"type": "event", "room_id": own, "event_type": "move", "action": "a", "payload": {"x": [1, 2]}},
            {"type": "event", "room_id": shared, "event_type": "chat", "payload": {"t": "hi"}},
            {"type": "update_room", "room_id": own, "status": "in_progress", "patch": {"k": None, "n": 1}},
            {"type": "close_room", "room_id": shared},
            {"type": "list_rooms", "game_type": "fuzz", "status": "waiting", "limit": 5},
        ]

    def mutated(self) -> dict[str, Any]:
        r = self.rng
        # Templates with a password (scrypt: ~50 ms of CPU each) are a small share.
        msg = dict(r.choices(self.templates(), [8, 3, 4, 1, 6, 6, 1, 4, 8, 8, 6, 3, 6])[0])
        for _ in range(r.randint(0, 3)):
            op = r.randrange(6)
            if op == 0 and msg:
                msg.pop(r.choice(sorted(msg)))
            elif op == 1 and msg:
                msg[r.choice(sorted(msg))] = self.value()
            elif op == 2:
                msg[self.key()] = self.value()
            elif op == 3:
                msg["type"] = r.choice([*MESSAGE_TYPES, "", "PING", "event ", "welcome", "error", self.text(6)])
            elif op == 4:
                msg["id"] = r.choice([r.randint(0, 10**6), self.text(10), "i" * 64, "i" * 65, None, True, 1.5,
                                      10**64 - 1, 10**64, [], {}])
            else:
                msg["type"] = r.choice(list(MESSAGE_TYPES))
        if r.random() < 0.7:
            msg.setdefault("id", r.randint(0, 10**9))
        return msg

    def frame(self) -> Frame:
        r = self.rng
        kind = r.choices(self._names, self._weights)[0]
        if kind == "mutated":
            return self._text(json.dumps(self.mutated()), kind)
        if kind == "valid":
            msg = dict(r.choice(self.templates()[:1] + self.templates()[8:10] + self.templates()[12:]))
            msg["id"] = f"v{r.randrange(10**6)}"
            return self._text(json.dumps(msg), kind)
        if kind == "text":
            choice = r.randrange(5)
            if choice == 0:
                return self._text(self.text(200), kind)
            if choice == 1:
                whole = json.dumps(self.mutated())
                return self._text(whole[: r.randrange(max(1, len(whole)))], kind)  # truncated
            if choice == 2:
                return self._text(json.dumps(self.mutated()) + r.choice(["x", "}", "]", " 1", ",", "\x00"]), kind)
            if choice == 3:
                return self._text(r.choice(["", " ", "null", "[]", "{}", "true", "0", '"ping"', "{", "}", "{{}}",
                                            '{"type"}', '{"type":}', "{'type':'ping'}", '{"type":"ping",}']), kind)
            return self._text("".join(r.choice('{}[]":,0123456789.eE+-tfnul \\"abc') for _ in range(r.randint(1, 80))),
                              kind)
        if kind == "json":
            return self._text(json.dumps(self.value()), kind)
        if kind == "deep":
            depth = r.randint(MAX_DEPTH + 1, 300)
            nest: Any = {}
            for _ in range(depth - 1):
                nest = {"a": nest} if r.random() < 0.5 else [nest]
            field_name, base = r.choice([
                ("payload", {"type": "event", "room_id": self.own, "event_type": "deep"}),
                ("game_data", {"type": "create_room", "game_type": "deep"}),
                ("patch", {"type": "update_room", "room_id": self.own}),
                ("metadata", {"type": "hello", "device_id": "device-deep-0001"}),
            ])
            if not isinstance(nest, dict):
                nest = {"a": nest}
            msg = {**base, field_name: nest, "id": r.randrange(10**6)}
            return Frame(json.dumps(msg), kind, True)
        if kind == "deep_raw":
            n = r.randint(1000, 30_000)
            opener, closer = r.choice([("[", "]"), ('{"a":', "}")])
            body = opener * n + "1" + closer * n
            if len(body.encode()) > MAX_FRAME:
                n = (MAX_FRAME - 10) // (len(opener) + len(closer))
                body = opener * n + "1" + closer * n
            return Frame(body, kind, True)
        if kind == "huge":
            big = r.choice([str(10 ** r.randint(12, 400)), "-" + str(10 ** r.randint(12, 400)), "1e999", "-1e999",
                            "1" + "0" * r.randint(400, 5000), "1.7976931348623157e309", "1E400", "-0.0e-99999"])
            field_name, base = r.choice([
                ("since", {"type": "join", "room_id": self.own}),
                ("max_players", {"type": "create_room", "game_type": "huge"}),
                ("limit", {"type": "list_rooms"}),
            ])
            head = json.dumps({**base, "id": r.randrange(10**6)})[:-1]
            return Frame(f'{head}, "{field_name}": {big}}}', kind, True)
        if kind == "binary":
            choice = r.randrange(4)
            if choice == 0:
                data = bytes(r.randrange(256) for _ in range(r.randint(0, 200)))
            elif choice == 1:
                data = json.dumps(self.mutated()).encode()
            elif choice == 2:
                data = r.choice([b"\xff\xfe", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80", b"{\"type\":\"\xff\"}"])
            else:
                data = b'{"type":"ping","id":1}'
            return Frame(data, kind, True)
        # escapes: lone surrogates and U+0000 inside JSON strings
        bad = r.choice(["\\ud800", "\\udfff", "\\udc00\\ud800", "\\u0000", "a\\u0000b", "\\ud83d"])
        field_name = r.choice(["event_type", "action", "room_id", "game_type", "device_id", "id"])
        base = {"type": r.choice(list(MESSAGE_TYPES)), "room_id": self.own, "event_type": "e",
                "game_type": "g", "device_id": "device-esc-0001"}
        base[field_name] = "@@"
        return Frame(json.dumps(base).replace('"@@"', f'"{bad}"'), kind, True)

    @staticmethod
    def _text(data: str, kind: str) -> Frame:
        return Frame(data, kind, not plausible(data))


def plausible(data: str) -> bool:
    """Could this text be a valid message? (If not, its reply must be an error.)"""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return isinstance(obj, dict) and obj.get("type") in MESSAGE_TYPES


def readable_id(data: str | bytes) -> tuple[bool, Any]:
    """What `re` the reply must carry: (True, id) when the frame's id can be read."""
    if isinstance(data, bytes):
        return False, None
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return False, None
    if not isinstance(obj, dict) or "id" not in obj:
        return False, None
    value = obj["id"]
    if isinstance(value, float):  # orjson reads an integer beyond 64 bits as a float
        value = parse_exact(data).get("id")
    if isinstance(value, str) and len(value) <= 64 and "\x00" not in value:
        return True, value
    if isinstance(value, int) and not isinstance(value, bool) and len(str(value)) <= 64:
        return True, value
    return False, None


def parse_exact(data: str | bytes) -> dict[str, Any]:
    """The JSON object with its integers exact (the stdlib parser); {} if it cannot say."""
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return {}
    return obj if isinstance(obj, dict) else {}


# ---------------------------------------------------------------- the run


async def _connect(url: str) -> ClientConnection:
    return await connect(url, compression=None, ping_interval=None, max_size=None, open_timeout=10,
                         close_timeout=2)


async def _welcomed(url: str, device: str, own: str | None, **room: Any) -> ClientConnection:
    ws = await _connect(url)
    await ws.send(orjson.dumps({"type": "hello", "id": "h", "device_id": device}).decode())
    pending = {"h"}
    if own is not None:
        await ws.send(orjson.dumps({"type": "create_room", "id": "c", "room_id": own, "game_type": "fuzz", **room})
                      .decode())
        pending.add("c")
    while pending:
        msg = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        pending.discard(msg.get("re"))
    return ws


async def _replies_until(ws: ClientConnection, sentinel: str, timeout: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        raw = await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic()))
        msg = orjson.loads(raw)
        if isinstance(msg.get("re"), float):  # an integer id beyond 64 bits, echoed exactly
            msg = parse_exact(raw)
        if msg.get("type") == "event":
            continue  # room traffic; no order is promised against direct replies
        if msg.get("re") == sentinel:
            return out
        out.append(msg)


def _check_reply(report: Report, frame: Frame, reply: dict[str, Any]) -> None:
    report.replies += 1
    kind = reply.get("type")
    shown = repr(frame.data[:200])
    if kind not in REPLY_TYPES:
        report.violation(f"unknown reply type {kind!r} to {frame.kind} {shown}: {reply}")
        return
    if kind == "error":
        code = reply.get("code")
        report.errors_by_code[str(code)] = report.errors_by_code.get(str(code), 0) + 1
        if code not in ERROR_CODES:
            report.violation(f"error code {code!r} to {frame.kind} {shown}: {reply}")
        if not isinstance(reply.get("message"), str) or not reply["message"]:
            report.violation(f"error without message to {frame.kind} {shown}: {reply}")
    elif frame.must_error:
        report.violation(f"bad frame ({frame.kind}) got {kind!r}, not an error: {shown} -> {reply}")
    has, value = readable_id(frame.data)
    if has and (reply.get("re") != value or type(reply.get("re")) is not type(value)):
        report.violation(f"reply re {reply.get('re')!r} for id {value!r}: {shown}")
    if not has and "re" in reply:
        report.violation(f"reply has re {reply['re']!r} but the frame's id is unreadable: {shown}")


async def _special(url: str, rng: random.Random, report: Report) -> None:
    """A frame that must end its socket: oversize (1009) or a non-UTF-8 text frame (1007)."""
    ws = await _connect(url)
    try:
        if rng.random() < 0.5:  # before or after hello: both must close the same way
            await ws.send(orjson.dumps({"type": "hello", "id": "h", "device_id": f"device-sp-{rng.randrange(10**9)}"})
                          .decode())
            await asyncio.wait_for(ws.recv(), 10)
        if rng.random() < 0.5:
            size = rng.randint(MAX_FRAME + 1, MAX_FRAME * 4)
            data: str | bytes = ('{"type":"event","pad":"' + "x" * size + '"}') if rng.random() < 0.5 else \
                bytes(rng.randrange(256) for _ in range(16)) * (size // 16 + 1)
            kind, want = "oversize", 1009
            await ws.send(data)
        else:
            raw = rng.choice([b'{"type":"ping","id":"\xff"}', b"\xc0\x80", b"\xed\xa0\x80",
                              bytes(rng.randrange(128, 256) for _ in range(rng.randint(1, 64)))])
            kind, want = "bad_utf8_text", 1007
            await ws.send(raw, text=True)
        code = None
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
        except TimeoutError:
            code = None
        report.frames += 1
        report.special_sockets += 1
        report.frames_by_kind[kind] = report.frames_by_kind.get(kind, 0) + 1
        report.closes[str(code)] = report.closes.get(str(code), 0) + 1
        if code != want:
            report.violation(f"{kind} frame: close {code}, expected {want}")
    finally:
        with contextlib.suppress(Exception):
            await ws.close()


async def _worker(url: str, index: int, seed: int, quota: int, batch: int, special_every: int,
                  report: Report, deadline: float, shared: str, kinds: tuple[str, ...] | None) -> None:
    rng = random.Random(f"{seed}-{index}")
    own = f"fuzz-{seed % 10**6}-{index}"
    gen = FrameGen(rng, own, shared, kinds)
    ws = await _welcomed(url, f"device-fuzz-{seed % 10**6}-{index}", own)
    sent = 0
    n_batch = 0
    try:
        while sent < quota and time.monotonic() < deadline and len(report.violations) < 50:
            frames = [gen.frame() for _ in range(min(batch, quota - sent))]
            n_batch += 1
            sentinel = f"sentinel-{index}-{n_batch}"
            for f in frames:
                await ws.send(f.data)
            await ws.send(orjson.dumps({"type": "ping", "id": sentinel}).decode())
            try:
                replies = await _replies_until(ws, sentinel, 30)
            except (TimeoutError, ConnectionClosed) as exc:
                report.violation(f"worker {index}: no sentinel reply ({type(exc).__name__}: {exc}); "
                                 f"batch kinds {[f.kind for f in frames]}")
                return
            sent += len(frames)
            report.frames += len(frames)
            for f in frames:
                report.frames_by_kind[f.kind] = report.frames_by_kind.get(f.kind, 0) + 1
            if len(replies) != len(frames):
                report.violation(f"worker {index}: {len(frames)} frames got {len(replies)} replies: "
                                 f"{[f.kind for f in frames]} -> {[r.get('type') for r in replies]}")
                continue
            for f, r in zip(frames, replies, strict=True):
                _check_reply(report, f, r)
            if special_every and n_batch % max(1, special_every // batch) == 0:
                await _special(url, rng, report)
    finally:
        with contextlib.suppress(Exception):
            await ws.close()


async def _warm_passwords(url: str, shared: str, n: int) -> None:
    """Right-password joins, all at once: the scrypt thread pool's allocator arenas exist
    before memory is measured (they are its largest, fixed, cost: ~16 MiB per thread)."""
    ws = await _welcomed(url, f"device-fuzz-warm-{random.randrange(10**9)}", shared, password="pw")
    socks = [ws]
    try:
        for i in range(n - 1):
            other = await _welcomed(url, f"device-fuzz-warm-{i}-{random.randrange(10**9)}", None)
            socks.append(other)
        for s in socks:
            await s.send(orjson.dumps({"type": "join", "id": "w", "room_id": shared, "password": "pw"}).decode())
        for s in socks:
            while orjson.loads(await asyncio.wait_for(s.recv(), 30)).get("re") != "w":
                pass
    finally:
        for s in socks:
            with contextlib.suppress(Exception):
                await s.close()


async def _sample_rss(pid: int, report: Report, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(OSError, ValueError):
            report.rss_peak_kib = max(report.rss_peak_kib, procstat.status_kib(pid))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)


async def fuzz_gateway(url: str, pid: int, frames: int, seed: int, workers: int = 8, batch: int = 50,
                       special_every: int = 1000, time_limit: float = 900.0,
                       kinds: tuple[str, ...] | None = None) -> Report:
    """Fuzz a running gateway (`pid` for its RSS). Three phases: warm-up (a tenth of the
    frames), first half, second half; RSS is read after each."""
    report = Report(seed=seed)
    report.rss_start_kib = procstat.status_kib(pid)
    stop = asyncio.Event()
    sampler = asyncio.get_running_loop().create_task(_sample_rss(pid, report, stop))
    started = time.monotonic()
    deadline = started + time_limit
    shared = f"fuzz-shared-{seed % 10**6}"
    warm = max(workers, frames // 10)
    phases = [warm, (frames - warm) // 2, frames - warm - (frames - warm) // 2]
    try:
        await _warm_passwords(url, shared, 2 * workers)
        for phase, total in enumerate(phases):
            per = [total // workers + (1 if i < total % workers else 0) for i in range(workers)]
            await asyncio.gather(*(
                _worker(url, i + phase * workers, seed, per[i], batch, special_every, report, deadline, shared, kinds)
                for i in range(workers) if per[i]))
            rss = procstat.status_kib(pid)
            if phase == 0:
                report.rss_warm_kib = rss
            elif phase == 1:
                report.rss_mid_kib = rss
            else:
                report.rss_end_kib = rss
            if time.monotonic() >= deadline:
                report.violation(f"time limit of {time_limit:.0f} s reached after {report.frames} frames")
                break
    finally:
        stop.set()
        await sampler
    report.duration_s = time.monotonic() - started
    return report


def check_memory(report: Report, max_growth_mb: float) -> None:
    growth = (report.rss_end_kib - report.rss_warm_kib) / 1024
    second_half = (report.rss_end_kib - report.rss_mid_kib) / 1024
    if report.rss_end_kib and growth > max_growth_mb:
        report.violation(f"RSS grew {growth:.1f} MiB after warm-up (limit {max_growth_mb} MiB)")
    if report.rss_end_kib and second_half > max_growth_mb / 2:
        report.violation(f"RSS grew {second_half:.1f} MiB over the second half (limit {max_growth_mb / 2} MiB)")


def scan_log(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [line for line in path.read_text(errors="replace").splitlines() if any(b in line for b in LOG_BAD)]


async def run(frames: int = 100_000, seed: int | None = None, workers: int = 8, batch: int = 50,
              special_every: int = 1000, time_limit: float = 900.0, max_growth_mb: float = 48.0,
              extra_env: dict[str, str] | None = None, kinds: tuple[str, ...] | None = None) -> Report:
    """Start a gateway, fuzz it, stop it, and judge the run (see the module docstring)."""
    seed = random.randrange(2**32) if seed is None else seed
    gw = GatewayProc({**GATEWAY_ENV, **(extra_env or {})}, f"fuzz-{seed}")
    gw.log_path.unlink(missing_ok=True)
    gw.start()
    try:
        await gw.wait_ready()
        report = await fuzz_gateway(f"ws://127.0.0.1:{gw.port}/ws", gw.pid, frames, seed, workers, batch,
                                    special_every, time_limit, kinds)
        check_memory(report, max_growth_mb)
        assert gw.proc is not None
        report.gateway_alive = gw.proc.poll() is None and await _healthy(gw.port)
        if not report.gateway_alive:
            report.violation(f"gateway not alive at the end (exit code {gw.proc.poll()})")
    finally:
        log_path = gw.log_path
        await gw.stop()
    report.log_lines_flagged = scan_log(log_path)[:50]
    return report


async def _healthy(port: int) -> bool:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n")
        status = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        return b" 200 " in status
    except (OSError, TimeoutError):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--special-every", type=int, default=1000,
                        help="per worker, one socket-ending frame (own socket) every this many frames")
    parser.add_argument("--time-limit", type=float, default=900.0, help="seconds; stopping early is a failure")
    parser.add_argument("--max-growth-mb", type=float, default=48.0)
    parser.add_argument("--kinds", default=None,
                        help=f"comma-separated frame kinds to send (default all: {','.join(k for k, _ in FrameGen.KINDS)})")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    report = asyncio.run(run(args.frames, args.seed, args.workers, args.batch, args.special_every,
                             args.time_limit, args.max_growth_mb,
                             kinds=tuple(args.kinds.split(",")) if args.kinds else None))
    print(report.summary())
    if args.json:
        args.json.write_text(json.dumps({**asdict(report), "ok": report.ok}, indent=2))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
