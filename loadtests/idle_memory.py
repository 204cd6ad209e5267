"""Where an idle socket's memory goes: an in-process gateway, clients in other processes.

    python -m loadtests.idle_memory [--conns 2000] [--room-size 100] [--trace]
                                    [--max-queue N] [--write-limit N] [--redis]

Runs the real Gateway (gateway.server) on this process's uvloop, opens --conns idle
sockets (hello + join) from client processes, and reports VmRSS per socket. Embedded mode,
or with --redis cluster mode (an ephemeral redis-server holds the shared state). With --trace,
tracemalloc attributes the Python allocations still alive per socket to source lines
(tracemalloc's own bookkeeping inflates RSS, so compare RSS only between runs without it).

The knobs are experiments, applied here only: --max-queue / --write-limit override the
`serve()` arguments the gateway passes. (The handshake's headers, which an earlier
--drop-handshake knob dropped, are now dropped by the gateway itself: server.slim_connection.)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import sys
import time
import tracemalloc
from collections import defaultdict
from typing import Any

from . import procstat
from .procs import HOST, Worker, free_port, split
from .workers import conns_main
from .wsclient import Conn, open_conn


def _patch(args: argparse.Namespace) -> None:
    import gateway.server as server

    original = server.serve

    def serve(*a: Any, **kw: Any) -> Any:
        if args.max_queue is not None:
            kw["max_queue"] = None if args.max_queue == 0 else args.max_queue
        if args.write_limit is not None:
            kw["write_limit"] = args.write_limit
        return original(*a, **kw)

    server.serve = serve  # type: ignore[assignment]


async def settle(step: float = 0.25, quiet: float = 0.03, timeout: float = 15.0) -> None:
    import os

    pid = os.getpid()
    calm, last, started = 0, procstat.cpu_seconds(pid), time.monotonic()
    while calm < 2 and time.monotonic() - started < timeout:
        await asyncio.sleep(step)
        now = procstat.cpu_seconds(pid)
        calm = calm + 1 if now - last <= quiet * step else 0
        last = now


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import contextlib
    import os

    from gateway.server import running
    from roomcast.settings import Settings

    from .services import RedisServer

    _patch(args)
    env = {"GATEWAY_HOST": HOST, "GATEWAY_PORT": str(free_port()), "LOG_LEVEL": "WARNING",
           "MAX_CONNECTIONS": "0", "MAX_ROOMS_PER_CONNECTION": "10000", "WEBSOCKET_HEARTBEAT_TIMEOUT": "600000",
           # every socket comes from 127.0.0.1 in a burst (as in procs.GatewayProc)
           "MAX_CONNECTIONS_PER_DEVICE": "10000", "CONNECT_RATE_PER_ADDRESS": "1000000",
           "CONNECT_RATE_PER_DEVICE": "1000000", "ROOM_CREATE_RATE": "1000000", "JOIN_RATE": "1000000",
           "MAX_ROOMS_PER_DEVICE": "100000", "MAX_PARTICIPANTS_PER_ROOM": "1000000", "HELLO_TIMEOUT": "60000"}
    redis = RedisServer().start() if args.redis else None
    if redis is not None:
        env["REDIS_URL"] = redis.url  # cluster mode: the node's shared state is in Redis
    settings = Settings.load(env)
    stack = contextlib.AsyncExitStack()
    gw = await stack.enter_async_context(running(settings))
    pid = os.getpid()
    workers: list[Worker] = []
    try:
        rooms = [f"mem-r{i:04d}" for i in range(math.ceil(args.conns / args.room_size))]
        host: Conn = await open_conn(HOST, gw.port, Conn)
        await host.hello("mem-host-0001")
        for room_id in rooms:
            await host.request({"type": "create_room", "room_id": room_id, "game_type": "mem",
                                "max_players": args.room_size + 1})
        pairs = [(f"mem-c{i:06d}", rooms[i // args.room_size]) for i in range(args.conns)]
        specs = [{"host": HOST, "port": gw.port, "pairs": chunk, "concurrency": 16, "setup_timeout": 60.0,
                  "run_timeout": 120.0, "hold_timeout": 120.0} for chunk in split(pairs, args.procs)]
        workers = [Worker(conns_main, spec) for spec in specs]
        await asyncio.gather(*(w.ctl.expect("loaded", 60) for w in workers))
        await settle()
        gc.collect()
        if args.trace:
            tracemalloc.start(args.frames)
        before = tracemalloc.take_snapshot() if args.trace else None
        rss0 = procstat.status_kib(pid)
        for w in workers:
            w.send("go")
        done = await asyncio.gather(*(w.ctl.expect("joined", 180) for w in workers))
        ok = sum(d["ok"] for d in done)
        await settle()
        gc.collect()
        started, cpu = time.perf_counter(), time.process_time()
        gc.collect()  # a full collection with every socket alive: what a gen-2 pass costs the loop
        gc_ms = (time.perf_counter() - started) * 1000
        gc_cpu_ms = (time.process_time() - cpu) * 1000
        rss1 = procstat.status_kib(pid)
        result: dict[str, Any] = {"conns": ok, "rss_before_kib": rss0, "rss_after_kib": rss1,
                                  "kib_per_socket": (rss1 - rss0) / ok if ok else math.nan,
                                  "gc_objects": len(gc.get_objects()), "gc_full_ms": gc_ms,
                                  "gc_full_cpu_ms": gc_cpu_ms}
        if before is not None:
            after = tracemalloc.take_snapshot()
            result["traced"] = top_sites(before, after, ok, args.top)
            tracemalloc.stop()
        for w in workers:
            w.send("stop")
        await asyncio.gather(*(w.ctl.expect("stopped", 30) for w in workers))
        host.abort()
        return result
    finally:
        for w in workers:
            w.send("stop")
            w.finish()
        await stack.aclose()
        if redis is not None:
            redis.stop()


def top_sites(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, n: int, top: int) -> dict[str, Any]:
    stats = after.compare_to(before, "traceback")
    by_site: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    total = 0
    for st in stats:
        if st.size_diff <= 0:
            continue
        total += st.size_diff
        frames = [f for f in st.traceback if "tracemalloc" not in f.filename]
        key = " < ".join(f"{_short(f.filename)}:{f.lineno}" for f in reversed(frames[-3:])) or "?"
        by_site[key][0] += st.size_diff
        by_site[key][1] += st.count_diff
    rows = sorted(by_site.items(), key=lambda kv: -kv[1][0])[:top]
    by_file: dict[str, int] = defaultdict(int)
    for st in after.compare_to(before, "filename"):
        if st.size_diff > 0:
            by_file[_short(st.traceback[0].filename)] += st.size_diff
    return {
        "total_bytes_per_socket": total / n,
        "files": [{"file": k, "bytes_per_socket": v / n} for k, v in sorted(by_file.items(), key=lambda kv: -kv[1])[:top]],
        "sites": [{"site": k, "bytes_per_socket": v[0] / n, "objects_per_socket": v[1] / n} for k, v in rows],
    }


def _short(path: str) -> str:
    for marker in ("site-packages/", "lib/python3.11/", "/work/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conns", type=int, default=2000)
    ap.add_argument("--room-size", type=int, default=100)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--trace", action="store_true")
    ap.add_argument("--frames", type=int, default=3, help="traceback depth for --trace")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--max-queue", type=int, help="serve(max_queue=…); 0 means None")
    ap.add_argument("--write-limit", type=int, help="serve(write_limit=…)")
    ap.add_argument("--redis", action="store_true", help="cluster mode: an ephemeral redis-server, REDIS_URL")
    args = ap.parse_args(argv)
    import uvloop

    result = uvloop.run(asyncio.wait_for(run(args), 300))
    print(f"{result['conns']} idle sockets: RSS {result['rss_before_kib']:,} → {result['rss_after_kib']:,} KiB = "
          f"{result['kib_per_socket']:.2f} KiB/socket; {result['gc_objects']:,} gc-tracked objects, "
          f"a full gc.collect() takes {result['gc_full_ms']:.0f} ms ({result['gc_full_cpu_ms']:.0f} ms CPU)")
    traced = result.get("traced")
    if traced:
        print(f"tracemalloc: {traced['total_bytes_per_socket']:.0f} B/socket of live Python objects; by file:")
        for row in traced["files"]:
            print(f"  {row['bytes_per_socket']:7.0f} B  {row['file']}")
        print("top allocation sites (innermost --frames frames):")
        for row in traced["sites"]:
            print(f"  {row['bytes_per_socket']:7.0f} B  {row['objects_per_socket']:5.2f} obj  {row['site']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
