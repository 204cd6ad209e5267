"""The cluster fan-out phase of the benchmark (`python -m loadtests.bench --only cluster`).

An ephemeral redis-server and --gateways gateway processes in cluster mode (REDIS_URL),
optionally a coordinator (--coordinator). --rooms rooms of --room-members sockets each, spread
evenly over the gateways (25 + 25 for 50 members and 2 gateways). One member of each room, its
host, publishes; the rooms alternate their publisher's gateway. Together they send
~--cluster-event-bytes payloads at --cluster-rate events/s. Every event goes publisher → its
gateway → Lua script (EVALSHA: seq, XADD, SPUBLISH) → every gateway's pub/sub subscription →
local fan-out, so with 2 gateways half of the deliveries cross replicas. Reported: deliveries/s
(every member gap-free), latency p50/p99 (publisher's timestamp to receive; local and
cross-replica members separately), CPU of all gateways per delivery, redis-server CPU per event
published, RSS.

The members run in client processes (workers.members_main); the publishers in this process
(publishers.py). The history-flusher phase is in flusher.py; both use procs.py (gateway and
coordinator processes), scrape.py (/metrics) and procstat.CpuMeter.

Every server binds 127.0.0.1 on a free port and is stopped by pid when its run ends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import sys
import time
from array import array
from typing import Any

from . import procstat
from .common import Publisher, finish_profiler, percentile, record_medians, start_profiler, summary_line
from .procs import HOST, coordinator_proc, env_pairs, gateway_procs, split, workers
from .publishers import TimedPublisher, open_publishers, publish_paced
from .scrape import delta, scrape
from .services import RedisServer
from .workers import members_main


async def cluster_run(args: argparse.Namespace, rate: float, tag: str, profile: str | None = None) -> dict[str, Any]:
    redis = RedisServer().start()
    gws = gateway_procs(args.gateways, tag, redis.url, None, args.gateway_cmd, env_pairs(args.gateway_env))
    coord = coordinator_proc(tag, redis.url, None, env_pairs(args.coord_env)) if args.coordinator else None
    pubs: list[Publisher] = []
    try:
        for p in [*gws, *([coord] if coord else [])]:
            p.start()
        for p in [*gws, *([coord] if coord else [])]:
            await p.wait_ready(30)
        ports = [g.port for g in gws]
        rooms = [f"bench-{tag}-r{r:03d}" for r in range(args.rooms)]
        pubs = await open_publishers(TimedPublisher, rooms, ports, tag, args.cluster_event_bytes,
                                     args.room_members + 1)
        # Member i of room r (i = 0 is the publisher) is on gateway (r + i) % G: an even split.
        joins = []
        for r, room_id in enumerate(rooms):
            home = r % len(gws)
            for i in range(1, args.room_members):
                g = (home + i) % len(gws)
                joins.append((f"bench-{tag}-r{r:03d}-m{i:03d}", room_id, ports[g], "local" if g == home else "cross"))
        specs = [{"host": HOST, "joins": chunk, "concurrency": 16, "setup_timeout": 90.0,
                  "run_timeout": args.cluster_duration + args.drain_timeout + 30}
                 for chunk in split(joins, args.procs)]
        with workers(members_main, specs) as procs:
            ready = await asyncio.gather(*(w.ctl.expect("ready", 120) for w in procs))
            if sum(r["sockets"] for r in ready) != len(joins):
                raise RuntimeError(f"only {sum(r['sockets'] for r in ready)} of {len(joins)} members joined")
            for g in gws:
                await g.settle()
            meter = procstat.CpuMeter({f"gw{i}": (g.pid, False) for i, g in enumerate(gws)} | {"redis": (redis.proc.pid, False)}
                             | ({"coordinator": (coord.pid, False)} if coord else {}))  # type: ignore[union-attr]
            jiffies0 = procstat.machine_jiffies()
            load0 = procstat.loadavg()
            metrics0 = [await scrape(g.port) for g in gws]
            meter.begin()
            own0 = time.process_time()
            t0 = time.monotonic_ns()
            spy = start_profiler(gws[0].pid, profile, args.cluster_duration) if profile else None
            pacing = await publish_paced(pubs, rate, args.cluster_duration)
            t_pub_end = time.monotonic_ns()
            await asyncio.gather(*(p.wait_acks(args.drain_timeout) for p in pubs))
            for p in pubs:
                p.send({"type": "event", "room_id": p.room_id.decode(), "event_type": "bench_end",
                        "payload": {"n": p.sent}})
            results = []
            for w in procs:
                try:
                    results.append(await w.ctl.expect("result", args.drain_timeout + 5))
                except TimeoutError:
                    w.send("stop")
                    results.append(await w.ctl.expect("result", 30))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(asyncio.shield(p.done) for p in pubs)), 5)
            cpu, _ = meter.end()
            cpu["publishers"] = time.process_time() - own0  # this process: the publishers
            jiffies1 = procstat.machine_jiffies()
            metrics1 = [await scrape(g.port) for g in gws]
            rss = [procstat.status_kib(g.pid) for g in gws]
            redis_rss = procstat.status_kib(redis.proc.pid)  # type: ignore[union-attr]
            for w in procs:
                w.send("exit")
            if spy is not None:
                finish_profiler(spy, args.cluster_duration)
        gw_sys = sum(v for k, v in meter.sys.items() if k.startswith("gw"))
        return cluster_report(args, rate, pubs, results, pacing, t0, t_pub_end, cpu, gw_sys,
                              procstat.busy_cores(jiffies0, jiffies1, os.cpu_count() or 1), rss, redis_rss, load0,
                              metrics0, metrics1)
    finally:
        for p in pubs:
            p.abort()
        for g in gws:
            await g.stop()
        if coord is not None:
            await coord.stop()
        redis.stop()


def cluster_report(args: argparse.Namespace, rate: float, pubs: list[Publisher], results: list[dict[str, Any]],
                   pacing: dict[str, Any], t0: int, t_pub_end: int, cpu: dict[str, float], gw_sys: float,
                   machine_busy: float,
                   rss: list[int], redis_rss: int, load0: list[float], metrics0: list[dict[str, float]],
                   metrics1: list[dict[str, float]]) -> dict[str, Any]:
    sockets = [s for r in results for s in r["sockets"]]
    sent_by_room = {p.room_id.decode(): p.sent for p in pubs}
    sent = sum(sent_by_room.values())
    received = sum(s["bench"] for s in sockets)
    cross = sum(s["bench"] for s in sockets if s["group"] == "cross")
    echo = sum(p.bench for p in pubs)
    deliveries = received + echo
    # Gap-free from the first bench event on. Seqs missed earlier (room events of the setup,
    # i.e. other members' joins) are counted apart in `gaps_before_bench`: see the docs.
    complete = [s for s in sockets if s["bench"] == sent_by_room[s["room_id"]] and not s["bench_gaps"]
                and not s["disorder"] and s["end_seq"] and not s["close_code"]]
    ends = [s["end_at"] for s in sockets if s["end_at"]] + [p.end_at for p in pubs if p.end_at]
    members = len(sockets) + len(pubs)
    t_last = max(ends) if len(ends) == members else time.monotonic_ns()
    wall = (t_last - t0) / 1e9
    groups: dict[str, list[float]] = {"local": [], "cross": []}
    for r in results:
        for group, raw in r["latencies"].items():
            a = array("q")
            a.frombytes(raw)
            groups[group].extend(x / 1e6 for x in a)
    for p in pubs:
        groups["local"].extend(x / 1e6 for x in p.latencies)  # the publisher's own echo
    for v in groups.values():
        v.sort()
    lat = sorted(groups["local"] + groups["cross"])
    # A time series from the publishers' own echoes (in seq order = send order): p99 per second.
    by_second: dict[int, list[float]] = {}
    for p in pubs:
        sent_at = getattr(p, "sent_at", None)
        if sent_at is not None:
            for t, ns in zip(sent_at, p.latencies, strict=False):
                by_second.setdefault(int((t - t0) // 1_000_000_000), []).append(ns / 1e6)
    echo_p99 = [round(percentile(sorted(v), 99), 2) for _, v in sorted(by_second.items())]
    gw_cpu = sum(v for k, v in cpu.items() if k.startswith("gw"))
    publish_s = (t_pub_end - t0) / 1e9
    client_cpu = sum(r["cpu_s"] for r in results)
    out: dict[str, Any] = {
        "gateways": args.gateways,
        "rooms": len(pubs),
        "room_members": args.room_members,
        "target_rate": rate,
        "events_sent": sent,
        "events_refused": sum(p.refused for p in pubs),
        "publish_rate": sent / publish_s if publish_s else 0.0,
        "publish_max_behind": pacing["max_behind"],
        "deliveries": deliveries,
        "deliveries_expected": sent * args.room_members,
        "cross_replica_deliveries": cross,
        "missing": sum(sent_by_room[s["room_id"]] - s["bench"] for s in sockets),
        "gaps": sum(s["gaps"] for s in sockets),
        "disorder": sum(s["disorder"] for s in sockets),
        "sockets_complete": len(complete),
        "sockets": len(sockets),
        "closed_by_server": sorted({s["close_code"] for s in sockets if s["close_code"]}),
        "wall_s": wall,
        "drain_s": (t_last - t_pub_end) / 1e9,
        "deliveries_per_s": deliveries / wall if wall else 0.0,
        "cross_replica_deliveries_per_s": cross / wall if wall else 0.0,
        "gateway_cpu_s": {k: v for k, v in cpu.items() if k.startswith("gw")},
        "server_cpu_s": gw_cpu,
        "server_cpu_util": gw_cpu / wall if wall else 0.0,
        "server_cpu_us_per_delivery": gw_cpu * 1e6 / deliveries if deliveries else math.nan,
        "server_cpu_us_per_event": gw_cpu * 1e6 / sent if sent else math.nan,
        "server_sys_share": gw_sys / gw_cpu if gw_cpu else math.nan,
        "redis_cpu_s": cpu["redis"],
        "redis_cpu_util": cpu["redis"] / wall if wall else 0.0,
        "redis_cpu_us_per_event": cpu["redis"] * 1e6 / sent if sent else math.nan,
        "coordinator_cpu_s": cpu.get("coordinator"),
        "publisher_cpu_us_per_event": cpu["publishers"] * 1e6 / sent if sent else math.nan,
        "client_cpu_us_per_delivery": client_cpu * 1e6 / received if received else math.nan,
        "machine_busy_cores": machine_busy,
        "loadavg_before": load0,
        "lat_p50_ms": percentile(lat, 50),
        "lat_p90_ms": percentile(lat, 90),
        "lat_p99_ms": percentile(lat, 99),
        "lat_p999_ms": percentile(lat, 99.9),
        "lat_max_ms": lat[-1] if lat else math.nan,
        "lat_local_p50_ms": percentile(groups["local"], 50),
        "lat_local_p99_ms": percentile(groups["local"], 99),
        "lat_cross_p50_ms": percentile(groups["cross"], 50),
        "lat_cross_p99_ms": percentile(groups["cross"], 99),
        "latency_samples": len(lat),
        "echo_p99_ms_by_second": echo_p99,
        "gateway_rss_kib": rss,
        "gateway_rss_max_kib": max(rss),
        "redis_rss_kib": redis_rss,
        # The hub's own timing of one local fan-out (bus message in → last local write), per gateway.
        "fanout_us_per_event": [delta(m0, m1, "roomcast_fanout_latency_seconds_sum") * 1e6 /
                                max(1.0, delta(m0, m1, "roomcast_fanout_latency_seconds_count"))
                                for m0, m1 in zip(metrics0, metrics1, strict=True)],
    }
    out["problem_sockets"] = [s for s in sockets if s not in complete or s["gaps"]][:20]
    out["gaps_before_bench"] = out["gaps"] - sum(s["bench_gaps"] for s in sockets)
    out["sockets_with_setup_gaps"] = sum(1 for s in sockets if s["gaps"] > s["bench_gaps"])
    out["ok"] = (out["missing"] == 0 and out["gaps"] == out["gaps_before_bench"] and out["disorder"] == 0 and
                 len(complete) == len(sockets) and out["events_refused"] == 0 and echo == sent)
    lagging = out["publish_rate"] < 0.95 * rate or out["drain_s"] > 0.5
    out["kept_up"] = out["ok"] and not lagging
    return out



# ---------------------------------------------------------------- driver hooks (called by bench)


CLUSTER_HEADLINES: list[tuple[str, str, str]] = [
    ("deliveries_per_s", "deliveries/s (all members)", ",.0f"),
    ("cross_replica_deliveries_per_s", "of which cross-replica /s", ",.0f"),
    ("server_cpu_us_per_delivery", "gateways CPU µs/delivery", ".2f"),
    ("server_cpu_us_per_event", "gateways CPU µs/event", ".0f"),
    ("server_sys_share", "gateways CPU share in kernel", ".2f"),
    ("redis_cpu_us_per_event", "redis CPU µs/event", ".1f"),
    ("lat_p50_ms", "latency p50 ms", ".2f"), ("lat_p99_ms", "latency p99 ms", ".2f"),
    ("lat_cross_p50_ms", "cross-replica p50 ms", ".2f"), ("lat_cross_p99_ms", "cross-replica p99 ms", ".2f"),
    ("lat_local_p99_ms", "same-replica p99 ms", ".2f"),
    ("server_cpu_util", "gateways CPU (cores, sum)", ".2f"), ("redis_cpu_util", "redis CPU (cores)", ".2f"),
    ("client_cpu_us_per_delivery", "client CPU µs/delivery", ".2f"),
    ("publisher_cpu_us_per_event", "publisher process CPU µs/event", ".0f"),
    ("publish_rate", "events/s published", ",.0f"), ("drain_s", "drain after last publish s", ".3f"),
    ("gateway_rss_max_kib", "gateway RSS KiB (larger)", ",.0f"), ("redis_rss_kib", "redis RSS KiB", ",.0f"),
    ("machine_busy_cores", "machine busy cores", ".2f"),
    ("gaps_before_bench", "seqs missed in the setup (joins)", ",.0f"),
]


async def run_cluster(args: argparse.Namespace, report: dict[str, Any]) -> None:
    stamp = report["stamp"]
    runs: list[dict[str, Any]] = report["runs"].setdefault("cluster", [])
    for i in range(args.repeat):
        print(f"[bench] cluster @ {args.cluster_rate:g}/s run {i + 1}/{args.repeat} …", file=sys.stderr, flush=True)
        began = time.monotonic()
        r = await cluster_run(args, args.cluster_rate, f"{stamp}-clu{i}")
        r["run_s"] = time.monotonic() - began
        runs.append(r)
        print("[bench]   " + summary_line(r, CLUSTER_HEADLINES[:7]) + f" ({r['run_s']:.1f} s)", file=sys.stderr, flush=True)
    if runs:
        record_medians(report, "cluster", runs, CLUSTER_HEADLINES,
                f"cluster: {args.gateways} gateways + redis, {args.rooms} rooms x {args.room_members} members, "
                f"{args.cluster_event_bytes} B events @ {args.cluster_rate:g}/s")
    if args.profile and args.profile_mode == "cluster":
        print(f"[bench] profiling gateway 0 in a separate cluster run → {args.profile}", file=sys.stderr)
        r = await cluster_run(args, args.cluster_rate, f"{stamp}-cluprof", profile=args.profile)
        report["profile_run"] = r | {"profile": args.profile, "mode": "cluster"}
        print("[bench]   " + summary_line(r, CLUSTER_HEADLINES[:7]), file=sys.stderr)



def add_arguments(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("cluster phase (--only cluster)")
    g.add_argument("--gateways", type=int, default=2, help="gateway processes (REDIS_URL)")
    g.add_argument("--rooms", type=int, default=10)
    g.add_argument("--room-members", type=int, default=50, help="sockets per room, the publisher included")
    g.add_argument("--cluster-rate", type=float, default=1000.0, help="events/s over all rooms")
    g.add_argument("--cluster-duration", type=float, default=10.0)
    g.add_argument("--cluster-event-bytes", type=int, default=100)
    g.add_argument("--coordinator", action="store_true", help="also run a coordinator (lease, reaper)")
    g.add_argument("--gateway-env", action="append", metavar="KEY=VALUE",
                   help="extra environment for the gateways of the cluster and flusher phases (repeatable)")
    g.add_argument("--coord-env", action="append", metavar="KEY=VALUE",
                   help="extra environment for the coordinator (repeatable), e.g. HISTORY_FLUSH_INTERVAL=50")


def finish_arguments(args: argparse.Namespace) -> None:
    if args.quick:
        args.rooms, args.room_members = min(args.rooms, 4), min(args.room_members, 10)
        args.cluster_rate, args.cluster_duration = min(args.cluster_rate, 200.0), 1.5
