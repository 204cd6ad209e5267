"""RESP2 command encoding for the pub/sub connection and the lean command connection (batch_lean.py), and its error type. Pure.

Replies are parsed by hiredis' `Reader` (roomcast/bus/redis.py): measured 4-9x faster than
the pure-Python parser this module used to hold (`python -m loadtests.resp_ab`).
"""

from __future__ import annotations


def encode_command(*args: str | bytes | int | float) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int):
            data = b"%d" % arg
        elif isinstance(arg, float):
            data = repr(arg).encode()  # as redis-py encodes a float
        else:
            data = arg
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class RespError(Exception):
    """An error reply from Redis, or bytes that are not RESP."""
