"""The cost of one room event in Redis and in the publishing process, without sockets or gateways.

`python -m loadtests.emit_bench [--events N] [--rooms R] [--rate E] [--per-tick K] [--repeat 3]`

A fresh redis-server; one RedisStore on a Batcher (as a gateway has); R rooms, each with a host
that publishes ~100-byte events through `RedisStore.publish` (the publish script: seq, XADD with
the trims, SPUBLISH), K per loop tick, E events/s in total (0: as fast as it goes); two
subscribers SSUBSCRIBE'd to every room's channel, as two gateways' buses are (each event is
written to both), each a `redis-cli` process of its own (until session 5 they were connections
of this process, whose reads then counted as the publisher's CPU). Reports, per event: Redis CPU (`INFO cpu`, utime+stime of redis-server),
this process's CPU (the Batcher and redis-py: what the publishing gateway spends per event beyond
its sockets), and Redis' `INFO commandstats` (calls and usec per event). Medians of --repeat.
Bounded by N events (and --max-seconds) per run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import time
from typing import Any

import orjson

from roomcast.protocol import event_tail
from roomcast.redis import keys
from roomcast.redis.batch import Batcher
from roomcast.redis.client import make_client
from roomcast.store.base import Caller, ConnectionInfo, NewRoom
from roomcast.store.redis import RedisStore

from . import procstat
from .peers.backends import commandstats
from .services import RedisServer, stop_process


async def one_run(args: argparse.Namespace, tag: str) -> dict[str, Any]:
    redis = RedisServer().start()
    subs: list[subprocess.Popen[bytes]] = []
    batcher = Batcher(make_client(redis.url))
    try:
        store = RedisStore(batcher)
        if args.redis_py:
            batcher.lean = None  # the A side: every batch through redis-py
        if args.evalsha:
            batcher.functions = False  # the A side: scripts by EVALSHA
        await batcher.load_scripts()
        now = int(time.time() * 1000)
        hosts = []
        for r in range(args.rooms):
            caller = Caller(f"s-{tag}-{r}", f"d-{tag}-{r}", None)
            await store.connect(caller, ConnectionInfo(None, None, None, None), now)
            room = f"eb-{tag}-{r}"
            await store.create_room(caller, NewRoom(room, "bench", 60, {}, None), now)
            hosts.append((caller, room))
        # Two subscribers, as two gateways' buses (each event is written to both), in processes
        # of their own (redis-cli): their reads count neither as Redis' CPU nor as the publisher's.
        channels = [keys.channel(room) for _, room in hosts]
        for _ in range(2):
            subs.append(subprocess.Popen(["redis-cli", "-p", str(redis.port), "SSUBSCRIBE", *channels],  # noqa: ASYNC220 (set-up, before the window)
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        await asyncio.sleep(0.2)
        payload = {"x": "y" * max(0, args.payload_bytes - 8)}
        pid = redis.proc.pid  # type: ignore[union-attr]
        redis.cli("CONFIG", "RESETSTAT")
        load0 = procstat.loadavg()
        r0, me0 = sum(procstat.cpu_times(pid)), sum(os.times()[:2])
        t0 = time.monotonic()
        sent, pending = 0, []
        while sent < args.events and time.monotonic() - t0 < args.max_seconds:
            for _ in range(min(args.per_tick, args.events - sent)):
                caller, room = hosts[sent % len(hosts)]
                tail = event_tail("move", "a", payload, caller.sender(), now)
                pending.append(asyncio.ensure_future(store.publish(caller, room, tail, now)))
                sent += 1
            if len(pending) >= 256:
                await asyncio.gather(*pending)
                pending.clear()
            if args.rate:
                await asyncio.sleep(max(0.0, t0 + sent / args.rate - time.monotonic()))
            else:
                await asyncio.sleep(0)
        await asyncio.gather(*pending)
        wall = time.monotonic() - t0
        r1, me1 = sum(procstat.cpu_times(pid)), sum(os.times()[:2])
        stats = commandstats(redis.cli("INFO", "commandstats"))
        return {
            "events": sent, "wall_s": wall, "loadavg_before": load0,
            "redis_cpu_us_per_event": (r1 - r0) * 1e6 / sent,
            "publisher_cpu_us_per_event": (me1 - me0) * 1e6 / sent,
            "batches": batcher.batches,
            "commandstats": {k: {"calls_per_event": round(v["calls"] / sent, 3), "usec_per_call": v["usec_per_call"],
                                 "usec_per_event": round(v["usec"] / sent, 2)}
                             for k, v in sorted(stats.items(), key=lambda kv: -kv[1]["usec"])},
        }
    finally:
        for sub in subs:
            stop_process(sub, 5)
        await batcher.aclose()
        redis.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtests.emit_bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=5000)
    ap.add_argument("--rooms", type=int, default=10)
    ap.add_argument("--payload-bytes", type=int, default=100)
    ap.add_argument("--rate", type=float, default=1000.0, help="events/s in total (0: unpaced)")
    ap.add_argument("--per-tick", type=int, default=1, help="publishes queued per loop tick")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--redis-py", action="store_true", help="send every batch through redis-py, not the lean connection (A/B)")
    ap.add_argument("--evalsha", action="store_true", help="run the scripts by EVALSHA, not as Functions (A/B)")
    ap.add_argument("--max-seconds", type=float, default=60.0)
    ap.add_argument("--out", help="JSON result file")
    args = ap.parse_args(argv)
    import uvloop

    runs = [uvloop.run(one_run(args, f"{time.time_ns() % 10**8}-{i}")) for i in range(args.repeat)]
    for r in runs:
        top = ", ".join(f"{k} {v['calls_per_event']:g}x{v['usec_per_call']:g}" for k, v in list(r["commandstats"].items())[:9])
        print(f"redis {r['redis_cpu_us_per_event']:.1f} us/event, publisher {r['publisher_cpu_us_per_event']:.1f} "
              f"us/event, {r['events'] / r['batches']:.2f} calls/batch, load {r['loadavg_before']}: {top}")
    med = {k: statistics.median(r[k] for r in runs) for k in ("redis_cpu_us_per_event", "publisher_cpu_us_per_event")}
    print(f"median of {len(runs)}: redis {med['redis_cpu_us_per_event']:.1f} us/event, "
          f"publisher {med['publisher_cpu_us_per_event']:.1f} us/event")
    if args.out:
        with open(args.out, "wb") as f:
            f.write(orjson.dumps({"config": vars(args), "runs": runs, "medians": med}, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
