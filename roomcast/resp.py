"""A minimal RESP2 encoder and incremental parser for the pub/sub connection. Pure.

redis-py parses every pub/sub message through several layers; on the fan-out path we
only need `message` pushes (array of 3 bulk strings), so a small parser over a
bytearray does it with one slice per field.
"""

from __future__ import annotations

from typing import Any


def encode_command(*args: str | bytes | int) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int):
            data = b"%d" % arg
        else:
            data = arg
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class RespError(Exception):
    pass


class Parser:
    """Feed bytes, take complete values. Bulk strings are bytes, errors are RespError."""

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
        """All complete values now in the buffer."""
        out = []
        while True:
            start = self.pos
            try:
                value, end = self._read(start)
            except IndexError:
                break
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
        if kind == 0x24:  # $ bulk
            n = int(buf[i + 1 : nl])
            if n < 0:
                return None, nl + 2
            end = nl + 2 + n
            if end + 2 > len(buf):
                return None, -1
            return bytes(buf[nl + 2 : end]), end + 2
        if kind == 0x2A:  # * array
            n = int(buf[i + 1 : nl])
            pos = nl + 2
            items = []
            for _ in range(max(n, 0)):
                item, pos = self._read(pos)
                if pos < 0:
                    return None, -1
                items.append(item)
            return items, pos
        if kind == 0x3A:  # : integer
            return int(buf[i + 1 : nl]), nl + 2
        if kind == 0x2B:  # + simple string
            return bytes(buf[i + 1 : nl]), nl + 2
        if kind == 0x2D:  # - error
            return RespError(buf[i + 1 : nl].decode(errors="replace")), nl + 2
        raise RespError(f"unexpected RESP type byte {kind!r}")
