"""What Redis spends per call: a round trip's wakeup against the work of the call itself.

    python -m loadtests.fcall_floor [--calls 20000] [--batch 1,10,50] [--repeat 3]

A fresh redis-server. One raw connection sends each kind of call `--calls` times, `--batch`
calls per write (and then reads their replies), and Redis' own CPU (`INFO cpu`,
used_cpu_user + used_cpu_sys) is divided by the calls:

- `ping`: PING, the bare cost of a command in its own round trip;
- `fcall_noop`: a Redis Function that returns at once, with a publish's 6 keys and 9 arguments;
- `fcall_8`: a function that makes 8 `redis.call`s (HGET), as many as a publish makes;
- `publish`: roomcast's own publish function (roomcast.redis.scripts.PUBLISH, loaded as the
  gateway loads it) on a real room with a member, trimmed to 1000 events: seq, XADD, the trims,
  HSET, SPUBLISH to two subscriber connections (as two gateways' buses), and its reply.

Reading the output: the difference between the batch sizes is what one wakeup of Redis (epoll,
read, write: system calls) costs; the difference between the kinds is the work of the call. Bounded
by --calls per cell and --max-seconds in all. docs/benchmarks.md, "Session 5".
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import time

import hiredis

from roomcast.redis import keys
from roomcast.redis.batch import Script
from roomcast.redis.resp import encode_command
from roomcast.redis.scripts import PUBLISH

from .services import RedisServer

ROOM = "floor"
KEYS = [keys.room(ROOM), keys.members(ROOM), keys.participants(ROOM), keys.stream(ROOM),
        keys.idempotency(ROOM), keys.idempotency_at(ROOM)]
TAIL = '"event_type":"move","action":null,"payload":{"pad":"' + "x" * 60 + '"},"from":{"device_id":"d1"},"ts":1}'
MICRO = """#!lua name=rc_floor
redis.register_function('rc_floor_noop', function(keys, args) return {'ok', 1, 0} end)
redis.register_function('rc_floor_8', function(keys, args)
  for i = 1, 8 do redis.call('HGET', keys[1], 'seq') end
  return {'ok', 1, 0}
end)
"""


class Raw:
    """A blocking RESP connection: write a buffer, read n replies (hiredis)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.reader = hiredis.Reader()

    def call(self, data: bytes, n: int) -> list[object]:
        self.sock.sendall(data)
        out: list[object] = []
        while len(out) < n:
            reply = self.reader.gets()
            if reply is False:
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    raise ConnectionError("redis closed the connection")
                self.reader.feed(chunk)
                continue
            out.append(reply)
        return out

    def one(self, *args: str | int) -> object:
        reply = self.call(encode_command(*args), 1)[0]
        if isinstance(reply, hiredis.ReplyError):
            raise RuntimeError(f"{args[0]}: {reply}")
        return reply


def redis_cpu(conn: Raw) -> float:
    info = conn.one("INFO", "cpu")
    assert isinstance(info, bytes)
    fields = dict(line.split(":", 1) for line in info.decode().splitlines() if ":" in line)
    return float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"])


def setup(conn: Raw) -> dict[str, bytes]:
    """Load the functions, make the room and its member; the encoded call of each kind."""
    publish = Script(PUBLISH)
    conn.one("FUNCTION", "LOAD", "REPLACE", publish.library)
    conn.one("FUNCTION", "LOAD", "REPLACE", MICRO)
    conn.one("HSET", KEYS[0], "status", "active", "seq", 0, "spectator_events", "0")
    conn.one("HSET", KEYS[1], "d1", "player|active|s1|u1|1")
    args: list[str | int] = [ROOM, "d1", TAIL, 1, "1000:131072", "s1", "", "0", "1"]
    return {
        "ping": encode_command("PING"),
        "fcall_noop": encode_command("FCALL", "rc_floor_noop", len(KEYS), *KEYS, *args),
        "fcall_8": encode_command("FCALL", "rc_floor_8", len(KEYS), *KEYS, *args),
        "publish": encode_command(*publish.fcall_prefix, len(KEYS), *KEYS, *args),
    }


def measure(conn: Raw, data: bytes, calls: int, batch: int, deadline: float) -> float:
    """Redis CPU µs per call, `batch` calls per write."""
    sent = 0
    before = redis_cpu(conn)
    while sent < calls and time.monotonic() < deadline:
        replies = conn.call(data * batch, batch)
        bad = [r for r in replies if isinstance(r, hiredis.ReplyError)]
        if bad:
            raise RuntimeError(f"call failed: {bad[0]}")
        sent += batch
    return (redis_cpu(conn) - before) * 1e6 / max(1, sent)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtests.fcall_floor", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=20000, help="calls per cell")
    ap.add_argument("--batch", default="1,10,50", help="calls per write, comma-separated")
    ap.add_argument("--repeat", type=int, default=3, help="runs per cell; the table shows medians")
    ap.add_argument("--max-seconds", type=float, default=300.0, help="hard bound on the whole run")
    args = ap.parse_args(argv)
    batches = [int(b) for b in args.batch.split(",") if b.strip()]
    deadline = time.monotonic() + args.max_seconds
    redis = RedisServer().start()
    try:
        conn = Raw(redis.port)
        subscribers = [Raw(redis.port) for _ in range(2)]
        for sub in subscribers:  # as two gateways' buses: every event is written to both
            sub.sock.sendall(encode_command("SSUBSCRIBE", keys.channel(ROOM)))
        calls = setup(conn)
        results: dict[tuple[str, int], list[float]] = {}
        for run in range(args.repeat):
            for kind, data in calls.items():
                for batch in batches:
                    results.setdefault((kind, batch), []).append(measure(conn, data, args.calls, batch, deadline))
                    for sub in subscribers:  # keep their socket buffers from filling
                        sub.sock.setblocking(False)
                        try:
                            while sub.sock.recv(1 << 20):
                                pass
                        except BlockingIOError:
                            pass
                        sub.sock.setblocking(True)
            print(f"[fcall_floor] run {run + 1}/{args.repeat} done", file=sys.stderr, flush=True)
        print(f"Redis CPU µs per call (medians of {args.repeat}; {args.calls} calls per cell)")
        print("| call | " + " | ".join(f"{b} per write" for b in batches) + " |")
        print("|---|" + "---|" * len(batches))
        for kind in calls:
            cells = [f"{statistics.median(results[(kind, b)]):.1f}" for b in batches]
            print(f"| {kind} | " + " | ".join(cells) + " |")
    finally:
        redis.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
