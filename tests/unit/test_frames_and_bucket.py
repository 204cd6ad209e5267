"""gateway.frames.text_frame checked against websockets' own parser, and the per-socket
TokenBucket rate limiter (explicit clock values, no sleeping)."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from gateway.frames import text_frame
from roomcast.limits.base import TokenBucket


def parse_frame(raw: bytes) -> Frame:
    """Parse one server-to-client frame as a client would (unmasked)."""
    reader = StreamReader()
    reader.feed_data(raw)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False, max_size=None)
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
    else:
        raise AssertionError("the parser wanted more bytes than the frame holds")
    assert not reader.buffer, "bytes left over after the frame"
    return frame


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_text_frame_parses_back(length: int) -> None:
    payload = (b'{"k":"' + b"x" * length)[:length]
    raw = text_frame(payload)
    frame = parse_frame(raw)
    assert frame.opcode is Opcode.TEXT
    assert frame.fin is True
    assert (frame.rsv1, frame.rsv2, frame.rsv3) == (False, False, False)
    assert frame.data == payload
    assert raw[1] & 0x80 == 0  # server frames are never masked
    # The shortest length encoding (RFC 6455 section 5.2): 2, 4 or 10 header bytes.
    assert len(raw) - length == (2 if length < 126 else 4 if length < 65536 else 10)


def test_text_frame_carries_utf8() -> None:
    payload = '{"t":"ünïcode ✓ 🎲"}'.encode()
    assert bytes(parse_frame(text_frame(payload)).data).decode() == '{"t":"ünïcode ✓ 🎲"}'


# ---------------------------------------------------------------- TokenBucket


def test_burst_allowed_then_refused() -> None:
    bucket = TokenBucket(rate=10.0, burst=5, now=100.0)
    assert [bucket.take(100.0) for _ in range(5)] == [0] * 5
    wait = bucket.take(100.0)
    assert wait >= 1
    assert wait == 100  # one token at 10 per second
    assert bucket.take(100.0) == 100  # a refused take spends nothing


def test_refills_at_the_rate() -> None:
    # Rate and times are binary fractions, so the arithmetic below is exact.
    bucket = TokenBucket(rate=8.0, burst=4, now=0.0)
    for _ in range(4):
        assert bucket.take(0.0) == 0
    assert bucket.take(0.0625) == 63  # half a token back: 62.5 ms to the next, rounded up
    assert bucket.take(0.125) == 0  # one token back
    assert bucket.take(0.125) == 125
    assert [bucket.take(0.375) for _ in range(3)] == [0, 0, 125]  # 2 tokens in 0.25 s


def test_refill_is_capped_at_burst() -> None:
    bucket = TokenBucket(rate=10.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0, 0, 0]
    assert [bucket.take(3600.0) for _ in range(4)] == [0, 0, 0, 100]


# Rates whose refill time is a binary fraction or not a whole number of ms: float noise on
# an exact decimal wait (0.01 s at 100/s) could otherwise refuse a take by 1 ms more.
@pytest.mark.parametrize(("rate", "burst"), [(1.0, 1), (3.0, 2), (7.0, 10), (8.0, 200), (1_000_000.0, 1)])
def test_waiting_retry_after_is_enough(rate: float, burst: int) -> None:
    bucket = TokenBucket(rate=rate, burst=burst, now=0.0)
    now = 0.0
    for _ in range(burst):
        assert bucket.take(now) == 0
    for _ in range(20):
        wait = bucket.take(now)
        assert wait >= 1  # even at a million per second: never 0 ms, which would read as "allowed"
        now += wait / 1000
        assert bucket.take(now) == 0


def test_sustained_rate_is_allowed() -> None:
    """protocol.md: 50 messages per second with bursts of 100 are never refused at the defaults."""
    bucket = TokenBucket(rate=100.0, burst=200, now=0.0)
    now = 0.0
    for _ in range(100):
        assert bucket.take(now) == 0
    for _ in range(1000):
        now += 1 / 50
        assert bucket.take(now) == 0
