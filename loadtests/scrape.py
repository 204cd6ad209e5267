"""Prometheus `/metrics` of a gateway or coordinator, over plain HTTP/1.1 on 127.0.0.1: scraping,
parsing the text format into {"name{labels}": value}, and the increase of a counter or of a
histogram's quantile between two scrapes. Used by the cluster and flusher phases."""

from __future__ import annotations

import asyncio
import math

from .procs import HOST


async def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
    try:
        writer.write(b"GET %s HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n" % path.encode())
        raw = await asyncio.wait_for(reader.read(-1), timeout)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def parse_metrics(text: bytes) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.decode().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


async def scrape(port: int) -> dict[str, float]:
    status, body = await http_get(port, "/metrics")
    if status != 200:
        raise RuntimeError(f"/metrics on {port} answered {status}")
    return parse_metrics(body)


def hist_quantile(before: dict[str, float], after: dict[str, float], name: str, q: float) -> float:
    """Quantile of a Prometheus histogram's increase between two scrapes, interpolated
    linearly inside the bucket (like histogram_quantile); +Inf bucket → its lower bound."""
    buckets = []
    for key, value in after.items():
        if key.startswith(name + "_bucket{"):
            le = key.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((math.inf if le == "+Inf" else float(le), value - before.get(key, 0.0)))
    buckets.sort()
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    rank = q * buckets[-1][1]
    lo, prev = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lo
            return lo + (le - lo) * ((rank - prev) / (count - prev) if count > prev else 1.0)
        lo, prev = le, count
    return lo


def delta(before: dict[str, float], after: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


ROWS_KEY = 'roomcast_flush_rows_total{table="game_events"}'
