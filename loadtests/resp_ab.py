"""A/B of the pub/sub reply parser: roomcast's own RESP parser (roomcast/redis/resp.py, before it
was replaced) against hiredis' `Reader`, on the stream a subscriber really receives.

`python -m loadtests.resp_ab [--messages N] [--frame-bytes B] [--chunk C] [--repeat R]`

The input is N `message` pushes (channel `ws:room:{<id>}:events`, a ~B-byte event frame),
concatenated and cut into C-byte reads, as `data_received` gets them; each parser turns the
whole stream into (channel, frame) values. Prints ns per message for both (median of R) and
the ratio. Pure CPU, no sockets; bounded by N x R.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import hiredis

from roomcast.redis.resp import encode_command


class OwnParser:
    """The hand-written incremental RESP2 parser roomcast used before hiredis (kept here only
    as the A side of this benchmark)."""

    __slots__ = ("buf", "pos")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.pos = 0

    def feed(self, data: bytes) -> None:
        if self.pos and self.pos == len(self.buf):
            self.buf.clear()
            self.pos = 0
        elif self.pos > 65536:
            del self.buf[: self.pos]
            self.pos = 0
        self.buf += data

    def values(self) -> list[Any]:
        out = []
        while True:
            value, end = self._read(self.pos)
            if end < 0:
                break
            self.pos = end
            out.append(value)
        return out

    def _read(self, i: int) -> tuple[Any, int]:
        buf = self.buf
        nl = buf.find(b"\r\n", i)
        if nl < 0:
            return None, -1
        kind = buf[i]
        if kind == 0x24:
            n = int(buf[i + 1 : nl])
            end = nl + 2 + n
            if end + 2 > len(buf):
                return None, -1
            return bytes(buf[nl + 2 : end]), end + 2
        if kind == 0x2A:
            n = int(buf[i + 1 : nl])
            pos = nl + 2
            items = []
            for _ in range(n):
                item, pos = self._read(pos)
                if pos < 0:
                    return None, -1
                items.append(item)
            return items, pos
        return bytes(buf[i + 1 : nl]), nl + 2


def stream(messages: int, frame_bytes: int) -> bytes:
    frame = b'{"type":"event","room_id":"r1","seq":1,"event_type":"move","payload":{"p":"' + b"x" * max(
        frame_bytes - 80, 1) + b'"}}'
    out = []
    for i in range(messages):
        push = encode_command(b"message", f"ws:room:{{room-{i % 10}}}:events".encode(), frame)
        out.append(push)
    return b"".join(out)


def run_own(chunks: list[bytes]) -> int:
    p = OwnParser()
    n = 0
    for c in chunks:
        p.feed(c)
        n += len(p.values())
    return n


def run_hiredis(chunks: list[bytes]) -> int:
    r = hiredis.Reader()
    n = 0
    for c in chunks:
        r.feed(c)
        while (v := r.gets()) is not False:
            n += 1
            del v
    return n


def measure(fn: Callable[[list[bytes]], int], chunks: list[bytes], messages: int, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        got = fn(chunks)
        times.append(time.perf_counter_ns() - t0)
        assert got == messages, (got, messages)
    return statistics.median(times) / messages


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--frame-bytes", type=int, default=200)
    ap.add_argument("--chunk", type=int, default=65_536)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    data = stream(a.messages, a.frame_bytes)
    chunks = [data[i : i + a.chunk] for i in range(0, len(data), a.chunk)]
    own = measure(run_own, chunks, a.messages, a.repeat)
    hi = measure(run_hiredis, chunks, a.messages, a.repeat)
    print(f"{a.messages} pushes of ~{a.frame_bytes} B in {a.chunk}-byte reads, median of {a.repeat}:")
    print(f"  roomcast parser  {own:8.0f} ns/message")
    print(f"  hiredis Reader   {hi:8.0f} ns/message")
    print(f"  ratio own/hiredis {own / hi:.2f}x")


if __name__ == "__main__":
    main()
