"""Per-operation costs for the capacity model of docs/scaling.md: `python -m loadtests.capacity`.

Starts its own redis-server (or a Redis Cluster with `--redis cluster`, loadtests/peers/backends.py)
and two real gateways (cluster mode), then runs three bounded phases and measures each from the
outside, before and after:

  rooms     --rooms host sockets (half on each gateway) each create a room (create_room).
  connect   --conns sockets connect, hello and join one of the rooms (half on each gateway).
  idle      --idle-seconds with the sockets held and nothing sent: the fixed CPU per second.
  events    each room's host publishes ~--payload-bytes events, --events in all at --rate/s,
            every member receiving each (kept in the room's stream: below ROOM_HISTORY_MAXLEN).

Per phase: Redis `used_memory` (per room, per joined connection, per kept event), Redis CPU
(`INFO cpu`, summed over the primaries) per operation, `INFO commandstats` (calls and µs per
call of the commands that phase ran), gateway RSS per socket, gateway CPU (both processes,
/proc utime+stime) per connect and per delivery (deliveries: `roomcast_messages_out_total
{type="event"}` of both gateways). Prints a summary and writes the JSON (test-output/).
Every process is stopped by pid; every wait is bounded (--max-seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from . import procstat
from .peers.adapters import ADAPTERS, BenchSocket
from .peers.backends import KINDS, PeersRedis
from .peers.clients import conns_main
from .peers.run import publish_paced
from .procs import HOST, OUTPUT, ROOT, GatewayProc, split, workers
from .scrape import scrape
from .wsclient import open_conn


def redis_info(redis: PeersRedis, section: str) -> list[dict[str, str]]:
    """`INFO <section>` of every primary, parsed."""
    return [dict(line.split(":", 1) for line in node.cli("INFO", section).splitlines() if ":" in line)
            for node in redis.primary_nodes()]


def commandstats(redis: PeersRedis) -> dict[str, tuple[int, float]]:
    """(calls, usec) per command, summed over the primaries."""
    return {name: (int(v["calls"]), v["usec"]) for name, v in redis.commandstats().items()}


class Probe:
    """Snapshots of Redis and the gateways, and the differences between two of them."""

    def __init__(self, redis: PeersRedis, gateways: list[GatewayProc]) -> None:
        self.redis, self.gateways = redis, gateways

    async def snap(self) -> dict[str, Any]:
        mem = sum(int(i["used_memory"]) for i in redis_info(self.redis, "memory"))
        metrics = [await scrape(g.port) for g in self.gateways]
        return {
            "t": time.monotonic(),
            "redis_used_memory": mem,
            "redis_keys": sum(int(i.get("db0", "keys=0").split(",")[0].split("=")[1])
                              for i in redis_info(self.redis, "keyspace")),
            "redis_cpu_s": sum(v for k, v in self.redis.cpu().items() if not k.startswith("replica")),
            "commandstats": commandstats(self.redis),
            "gateway_cpu_s": sum(procstat.cpu_seconds(g.pid) for g in self.gateways),
            "gateway_rss_kib": sum(procstat.status_kib(g.pid) for g in self.gateways),
            "deliveries": sum(m.get('roomcast_messages_out_total{type="event"}', 0.0) for m in metrics),
        }

    @staticmethod
    def diff(a: dict[str, Any], b: dict[str, Any], n: int) -> dict[str, Any]:
        cmds = {}
        for name, (calls, usec) in b["commandstats"].items():
            c0, u0 = a["commandstats"].get(name, (0, 0.0))
            if calls - c0 > 0:
                cmds[name] = {"calls": calls - c0, "per_op": (calls - c0) / n, "usec_per_call": (usec - u0) / (calls - c0)}
        return {
            "n": n, "seconds": b["t"] - a["t"],
            "redis_bytes_per_op": (b["redis_used_memory"] - a["redis_used_memory"]) / n,
            "redis_keys_per_op": (b["redis_keys"] - a["redis_keys"]) / n,
            "redis_cpu_us_per_op": (b["redis_cpu_s"] - a["redis_cpu_s"]) * 1e6 / n,
            "gateway_cpu_us_per_op": (b["gateway_cpu_s"] - a["gateway_cpu_s"]) * 1e6 / n,
            "gateway_rss_kib_per_op": (b["gateway_rss_kib"] - a["gateway_rss_kib"]) / n,
            "deliveries": b["deliveries"] - a["deliveries"],
            "commands": dict(sorted(cmds.items(), key=lambda kv: -kv[1]["calls"])),
        }


async def settle(gateways: list[GatewayProc]) -> None:
    for g in gateways:
        await g.settle(timeout=10)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    cls = ADAPTERS["roomcast"]
    redis = PeersRedis(args.redis, args.shards, args.cluster_replicas).start()
    gateways = [GatewayProc({"REDIS_URL": redis.url, "NODE_ID": f"capacity-{i}"}, f"capacity-{i}") for i in range(2)]
    hosts: list[BenchSocket] = []
    out: dict[str, Any] = {"redis": redis.label()}
    try:
        for g in gateways:
            g.start()
        for g in gateways:
            await g.wait_ready(30)
        probe = Probe(redis, gateways)
        await asyncio.sleep(1.0)
        await settle(gateways)
        s0 = await probe.snap()
        out["baseline"] = {k: s0[k] for k in ("redis_used_memory", "redis_keys", "gateway_rss_kib")}
        # Phase 1: rooms, each made by its host (a socket of its own).
        rooms = [f"cap-r{r:04d}" for r in range(args.rooms)]
        per_room = max(2, args.conns // max(1, args.rooms) + 2)
        for r, room in enumerate(rooms):
            host: BenchSocket = await open_conn(HOST, gateways[r % 2].port, cls)
            hosts.append(host)
            host.setup_publisher(room, args.payload_bytes)
            await host.hello(f"cap-host-{r:04d}")
            await host.host_room(room, per_room)
        await settle(gateways)
        s1 = await probe.snap()
        out["rooms"] = Probe.diff(s0, s1, args.rooms)
        # Phase 2: joined connections, half on each gateway, in client processes.
        pairs = [(f"cap-d{i:06d}", rooms[i % len(rooms)]) for i in range(args.conns)]
        specs = [{"target": "roomcast", "host": HOST, "port": gateways[k % 2].port, "pairs": chunk,
                  "concurrency": 16, "setup_timeout": 60.0, "run_timeout": args.max_seconds / 3,
                  "hold_timeout": args.max_seconds}
                 for k, chunk in enumerate(split(pairs, 2 * args.procs))]
        with workers(conns_main, specs) as procs:
            await asyncio.gather(*(w.ctl.expect("loaded", 60) for w in procs))
            for w in procs:
                w.send("go")
            done = await asyncio.gather(*(w.ctl.expect("joined", args.max_seconds / 3 + 30) for w in procs))
            joined = sum(d["ok"] for d in done)
            await settle(gateways)
            s2 = await probe.snap()
            out["connect"] = Probe.diff(s1, s2, max(1, joined)) | {
                "joined": joined, "errors": [e for d in done for e in d["errors"]][:5]}
            # Idle: what the held sockets cost per second with nothing happening (heartbeat
            # flushes, pub/sub probes, Redis' own cron): the fixed part of the CPU figures.
            await asyncio.sleep(args.idle_seconds)
            s2i = await probe.snap()
            idle_s = s2i["t"] - s2["t"]
            out["idle"] = {"seconds": idle_s, "redis_cpu_cores": (s2i["redis_cpu_s"] - s2["redis_cpu_s"]) / idle_s,
                           "gateway_cpu_cores": (s2i["gateway_cpu_s"] - s2["gateway_cpu_s"]) / idle_s,
                           "commands_per_s": sum(c for c, _ in s2i["commandstats"].values()) / idle_s
                           - sum(c for c, _ in s2["commandstats"].values()) / idle_s}
            s2 = s2i
            # Phase 3: events, kept in the rooms' streams, delivered to every member.
            publish_s = await publish_paced(hosts, args.rate, args.events / args.rate)
            sent = sum(h.sent for h in hosts)
            members = joined + len(hosts)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # bounded: until the deliveries are in
                if (await probe.snap())["deliveries"] - s2["deliveries"] >= sent * members / len(rooms):
                    break
                await asyncio.sleep(0.2)
            await settle(gateways)
            s3 = await probe.snap()
            ev = Probe.diff(s2, s3, max(1, sent))
            ev["gateway_cpu_us_per_delivery"] = (s3["gateway_cpu_s"] - s2["gateway_cpu_s"]) * 1e6 / max(1, ev["deliveries"])
            ev["deliveries_expected"] = sent * members / len(rooms)
            ev["publish_rate"] = sent / publish_s if publish_s else 0.0
            ev["acked"] = sum(h.acked for h in hosts)
            out["events"] = ev
            for w in procs:
                w.send("stop")
        out["totals"] = {k: s3[k] for k in ("redis_used_memory", "redis_keys", "gateway_rss_kib")}
        return out
    finally:
        for h in hosts:
            h.abort()
        for g in gateways:
            await g.stop()
        redis.stop()


def summary(report: dict[str, Any]) -> str:
    r = report["result"]
    m = report["machine"]
    lines = [f"capacity — {m['cpus']} x {m['cpu_model']}, {r['redis']}, load average {report['loadavg_start']} → "
             f"{report['loadavg_after']}, {report['date']}, git {m['git_rev']}",
             f"command: {report['command']}", "",
             "| per | Redis bytes | Redis keys | Redis CPU µs | gateway CPU µs | gateway RSS KiB |",
             "|---|---|---|---|---|---|"]
    for phase, per in (("rooms", "room (with its host)"), ("connect", "joined connection"), ("events", "kept event")):
        p = r[phase]
        lines.append(f"| {per} | {p['redis_bytes_per_op']:,.0f} | {p['redis_keys_per_op']:.2f} | "
                     f"{p['redis_cpu_us_per_op']:.1f} | {p['gateway_cpu_us_per_op']:.0f} | {p['gateway_rss_kib_per_op']:.2f} |")
    ev = r["events"]
    lines.append(f"\nevents: {ev['n']:,} sent ({ev['acked']:,} acked) at {ev['publish_rate']:,.0f}/s, "
                 f"{ev['deliveries']:,.0f} deliveries of {ev['deliveries_expected']:,.0f} expected, "
                 f"gateway CPU {ev['gateway_cpu_us_per_delivery']:.2f} µs per delivery (both gateways)")
    lines.append(f"connect: {r['connect']['joined']:,} joined, errors {r['connect']['errors']}")
    i = r["idle"]
    lines.append(f"idle ({i['seconds']:.1f} s, sockets held): Redis {i['redis_cpu_cores'] * 1000:.1f} ms CPU/s, "
                 f"gateways {i['gateway_cpu_cores'] * 1000:.1f} ms CPU/s, {i['commands_per_s']:.0f} Redis commands/s")
    for phase in ("rooms", "connect", "events"):
        cmds = r[phase]["commands"]
        top = ", ".join(f"{name} {c['per_op']:.2f} x {c['usec_per_call']:.1f} µs" for name, c in list(cmds.items())[:6])
        lines.append(f"commandstats per {phase[:-1] if phase != 'connect' else 'connect'}: {top}")
    t = r["totals"]
    lines.append(f"totals: Redis used_memory {t['redis_used_memory'] / 2**20:.1f} MiB, {t['redis_keys']:,} keys; "
                 f"gateways RSS {t['gateway_rss_kib'] / 1024:.1f} MiB (baseline {r['baseline']['gateway_rss_kib'] / 1024:.1f})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtests.capacity", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rooms", type=int, default=100)
    ap.add_argument("--conns", type=int, default=4000, help="joined sockets (besides the rooms' hosts)")
    ap.add_argument("--events", type=int, default=10000, help="events in all (keep events/rooms < 500: kept)")
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--payload-bytes", type=int, default=100)
    ap.add_argument("--procs", type=int, default=1, help="client processes per gateway")
    ap.add_argument("--redis", default="single", choices=KINDS)
    ap.add_argument("--shards", type=int, default=3)
    ap.add_argument("--cluster-replicas", type=int, default=1)
    ap.add_argument("--idle-seconds", type=float, default=5.0, help="the idle measurement after the connects")
    ap.add_argument("--max-seconds", type=float, default=600.0)
    ap.add_argument("--out", help="JSON result file (default test-output/capacity-<time>.json)")
    args = ap.parse_args(argv)
    import uvloop

    report: dict[str, Any] = {
        "command": " ".join(["python", "-m", "loadtests.capacity", *(argv or sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": procstat.machine_info(ROOT),
        "loadavg_start": procstat.loadavg(), "config": vars(args),
    }

    async def bounded() -> dict[str, Any]:
        return await asyncio.wait_for(measure(args), args.max_seconds)

    report["result"] = uvloop.run(bounded())
    report["loadavg_after"] = procstat.loadavg()
    OUTPUT.mkdir(exist_ok=True)
    out = Path(args.out) if args.out else OUTPUT / f"capacity-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(summary(report))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
