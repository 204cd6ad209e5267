"""Benchmark harness for one embedded gateway node: `python -m loadtests.bench`.

Measures, against a fresh `python -m gateway` child process per run (127.0.0.1 only):

  fanout      one room of --members receivers (own socket and device_id each) and one
              publisher sending ~--event-bytes events at --rate for --duration seconds:
              deliveries/s counted by the receivers (every member must get every seq,
              gap-free), server CPU µs per delivery (/proc/<pid>/stat utime+stime over the
              window), end-to-end latency p50/p99 (sender timestamp in the payload), RSS.
  saturation  the same room, publishing "as fast as acks allow": --window events in flight.
  idle        --idle-conns sockets (hello + join, rooms of --idle-room-size); gateway VmRSS
              before and after, as KiB per idle joined socket.
  connect     --connect-conns connects + hello + join from several client processes: the
              rate one gateway process sustains, and its CPU per connect.

Cluster mode and the history flusher (not in the default --only; see loadtests/cluster.py and
loadtests/flusher.py):

  cluster     redis-server + --gateways gateways (REDIS_URL): --rooms rooms of --room-members,
              split evenly over the gateways, publishers on both, --cluster-rate events/s.
  flusher     redis + throwaway Postgres + coordinator + gateways in history mode: flusher
              rows/s and lag at each of --flush-rates, and the drain of --burst-events.

Each phase runs --repeat times (fresh gateway each time); the summary shows medians, and
every run is kept in the JSON file (default test-output/bench-<time>.json). `--quick`
shrinks everything to a smoke run of well under 20 s. Every load loop is bounded in count
and time; the gateway and the client processes are stopped by pid when a run ends.
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
from pathlib import Path
from typing import Any

import orjson

from . import procstat
from .common import Publisher, finish_profiler, median_of, percentile, start_profiler
from .procs import HOST, OUTPUT, ROOT, GatewayProc, split, workers
from .workers import conns_main, members_main
from .wsclient import Conn, open_conn

# ---------------------------------------------------------------- phase: fan-out


async def fanout_run(args: argparse.Namespace, rate: float, tag: str, profile: str | None = None) -> dict[str, Any]:
    members = args.members
    extra = {"MAX_SEND_BUFFER": str(args.send_buffer)} if args.send_buffer else {}
    gw = GatewayProc(extra, tag, args.gateway_cmd)
    gw.start()
    pub: Publisher | None = None
    try:
        await gw.wait_ready()
        room_id = f"bench-{tag}"
        pub = await open_conn(HOST, gw.port, Publisher)
        assert pub is not None
        pub.setup(room_id, args.event_bytes)
        await pub.hello(f"bench-pub-{tag}")
        created = await pub.request({"type": "create_room", "room_id": room_id, "game_type": "bench",
                                     "max_players": members + 1})
        pub.last_seq = created["room"]["seq"]
        devices = [f"bench-{tag}-m{i:05d}" for i in range(members)]
        specs = [{"host": HOST, "port": gw.port, "room_id": room_id, "devices": chunk, "concurrency": 16,
                  "setup_timeout": 60.0, "run_timeout": args.duration + args.drain_timeout + 30}
                 for chunk in split(devices, args.procs)]
        with workers(members_main, specs) as procs:
            ready = await asyncio.gather(*(w.ctl.expect("ready", 90) for w in procs))
            joined = sum(r["sockets"] for r in ready)
            if joined != members:
                raise RuntimeError(f"only {joined} of {members} members joined")
            await gw.settle()
            rss0 = procstat.status_kib(gw.pid)
            jiffies0 = procstat.machine_jiffies()
            load0 = procstat.loadavg()
            user0, sys0 = procstat.cpu_times(gw.pid)
            t0 = time.monotonic_ns()
            spy = start_profiler(gw.pid, profile, args.duration) if profile else None
            if rate > 0:
                pacing = await pub.run_rate(rate, args.duration)
            else:
                pacing = await pub.run_window(args.window, args.duration)
            t_pub_end = time.monotonic_ns()
            await pub.wait_acks(args.drain_timeout)
            await pub.request({"type": "event", "room_id": room_id, "event_type": "bench_end",
                               "payload": {"n": pub.sent}}, timeout=args.drain_timeout)
            results = []
            for w in procs:
                try:
                    results.append(await w.ctl.expect("result", args.drain_timeout + 5))
                except TimeoutError:
                    w.send("stop")  # report what it has: its sockets are lagging or lost
                    results.append(await w.ctl.expect("result", 30))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(pub.done), 5)
            user1, sys1 = procstat.cpu_times(gw.pid)
            jiffies1 = procstat.machine_jiffies()
            rss1 = procstat.status_kib(gw.pid)
            hwm = procstat.status_kib(gw.pid, "VmHWM")
            for w in procs:
                w.send("exit")
            if spy is not None:
                finish_profiler(spy, args.duration)
        return fanout_report(args, rate, pub, results, pacing, t0, t_pub_end, (user1 - user0, sys1 - sys0),
                             procstat.busy_cores(jiffies0, jiffies1, os.cpu_count() or 1),
                             rss0, rss1, hwm, load0)
    finally:
        if pub is not None:
            pub.abort()
        await gw.stop()


def fanout_report(args: argparse.Namespace, rate: float, pub: Publisher, results: list[dict[str, Any]],
                  pacing: dict[str, Any], t0: int, t_pub_end: int, cpu: tuple[float, float], machine_busy: float,
                  rss0: int, rss1: int, hwm: int, load0: list[float]) -> dict[str, Any]:
    sockets = [s for r in results for s in r["sockets"]]
    sent = pub.sent
    members = len(sockets)
    received = sum(s["bench"] for s in sockets)
    echo = pub.bench
    deliveries = received + echo
    ends = [s["end_at"] for s in sockets if s["end_at"]] + ([pub.end_at] if pub.end_at else [])
    complete = [s for s in sockets
                if s["bench"] == sent and not s["gaps"] and not s["disorder"] and s["end_seq"] and not s["close_code"]]
    t_last = max(ends) if len(ends) == members + 1 else time.monotonic_ns()
    wall = (t_last - t0) / 1e9
    lat = array("q")
    for r in results:
        lat.frombytes(r["latencies"])
    lat_ms = sorted(x / 1e6 for x in lat)
    client_cpu = sum(r["cpu_s"] for r in results)
    publish_s = (t_pub_end - t0) / 1e9
    cpu_s = cpu[0] + cpu[1]
    out: dict[str, Any] = {
        "mode": "rate" if rate > 0 else "window",
        "target_rate": rate,
        "window": None if rate > 0 else args.window,
        "members": members,
        "events_sent": sent,
        "events_refused": pub.refused,
        "publish_rate": sent / publish_s if publish_s else 0.0,
        "publish_max_behind": pacing.get("max_behind"),
        "deliveries": deliveries,
        "deliveries_expected": sent * (members + 1),
        "missing": sent * members - received,
        "gaps": sum(s["gaps"] for s in sockets),
        "disorder": sum(s["disorder"] for s in sockets),
        "sockets_complete": len(complete),
        "closed_by_server": sorted({s["close_code"] for s in sockets if s["close_code"]} |
                                   ({pub.close_code} if pub.close_code else set())),
        "wall_s": wall,
        "drain_s": (t_last - t_pub_end) / 1e9,
        "deliveries_per_s": deliveries / wall if wall else 0.0,
        "server_cpu_s": cpu_s,
        "server_cpu_util": cpu_s / wall if wall else 0.0,
        "server_cpu_us_per_delivery": cpu_s * 1e6 / deliveries if deliveries else math.nan,
        "server_sys_share": cpu[1] / cpu_s if cpu_s else math.nan,
        # What one fully busy gateway core would deliver at this cost per delivery.
        "server_cpu_bound_deliveries_per_s": deliveries / cpu_s if cpu_s else math.nan,
        "client_cpu_us_per_delivery": client_cpu * 1e6 / received if received else math.nan,
        "machine_busy_cores": machine_busy,
        "loadavg_before": load0,
        "lat_p50_ms": percentile(lat_ms, 50),
        "lat_p90_ms": percentile(lat_ms, 90),
        "lat_p99_ms": percentile(lat_ms, 99),
        "lat_p999_ms": percentile(lat_ms, 99.9),
        "lat_max_ms": lat_ms[-1] if lat_ms else math.nan,
        "latency_samples": len(lat_ms),
        "rss_before_kib": rss0,
        "rss_kib": rss1,
        "rss_hwm_kib": hwm,
    }
    out["ok"] = (out["missing"] == 0 and out["gaps"] == 0 and out["disorder"] == 0 and
                 len(complete) == members and pub.refused == 0 and echo == sent)
    lagging = rate > 0 and (out["publish_rate"] < 0.95 * rate or out["drain_s"] > 0.5)
    out["kept_up"] = out["ok"] and not lagging
    return out


# ---------------------------------------------------------------- phase: connects and idle sockets


async def conns_run(args: argparse.Namespace, n: int, room_size: int, tag: str,
                    profile: str | None = None) -> dict[str, Any]:
    gw = GatewayProc({}, tag, args.gateway_cmd)
    gw.start()
    host: Conn | None = None
    try:
        await gw.wait_ready()
        rooms = [f"bench-{tag}-r{i:04d}" for i in range(math.ceil(n / room_size))]
        host = await open_conn(HOST, gw.port, Conn)
        assert host is not None
        await host.hello(f"bench-host-{tag}")
        for room_id in rooms:
            await host.request({"type": "create_room", "room_id": room_id, "game_type": "bench",
                                "max_players": room_size + 1})
        pairs = [(f"bench-{tag}-c{i:06d}", rooms[i // room_size]) for i in range(n)]
        specs = [{"host": HOST, "port": gw.port, "pairs": chunk, "concurrency": args.concurrency,
                  "setup_timeout": 60.0, "run_timeout": args.connect_timeout, "hold_timeout": 120.0}
                 for chunk in split(pairs, args.procs)]
        with workers(conns_main, specs) as procs:
            await asyncio.gather(*(w.ctl.expect("loaded", 60) for w in procs))
            await gw.settle()
            rss0 = procstat.status_kib(gw.pid)
            fds0 = procstat.open_fds(gw.pid)
            user0, sys0 = procstat.cpu_times(gw.pid)
            jiffies0 = procstat.machine_jiffies()
            load0 = procstat.loadavg()
            spy = start_profiler(gw.pid, profile, args.duration) if profile else None
            for w in procs:
                w.send("go")
            done = await asyncio.gather(*(w.ctl.expect("joined", args.connect_timeout + 30) for w in procs))
            user1, sys1 = procstat.cpu_times(gw.pid)
            jiffies1 = procstat.machine_jiffies()
            if spy is not None:
                finish_profiler(spy, args.duration)
            settle_s = await gw.settle()
            rss1 = procstat.status_kib(gw.pid)
            anon1 = procstat.status_kib(gw.pid, "RssAnon")
            fds1 = procstat.open_fds(gw.pid)
            for w in procs:
                w.send("stop")
            await asyncio.gather(*(w.ctl.expect("stopped", 30) for w in procs))
        ok = sum(d["ok"] for d in done)
        wall = (max(d["t1"] for d in done) - min(d["t0"] for d in done)) / 1e9
        took = array("q")
        for d in done:
            took.frombytes(d["took"])
        took_ms = sorted(x / 1e6 for x in took)
        cpu_s = (user1 - user0) + (sys1 - sys0)
        return {
            "conns": n,
            "room_size": room_size,
            "rooms": len(rooms),
            "client_procs": len(specs),
            "concurrency": args.concurrency * len(specs),
            "ok": ok,
            "errors": sum(d["n_errors"] for d in done),
            "error_samples": [e for d in done for e in d["errors"]][:5],
            "wall_s": wall,
            "connects_per_s": ok / wall if wall else 0.0,
            "server_cpu_s": cpu_s,
            "server_cpu_util": cpu_s / wall if wall else 0.0,
            "server_cpu_us_per_connect": cpu_s * 1e6 / ok if ok else math.nan,
            "server_sys_share": (sys1 - sys0) / cpu_s if cpu_s else math.nan,
            "server_cpu_bound_connects_per_s": ok / cpu_s if cpu_s else math.nan,
            "client_cpu_s": sum(d["cpu_s"] for d in done),
            "machine_busy_cores": procstat.busy_cores(jiffies0, jiffies1, os.cpu_count() or 1),
            "loadavg_before": load0,
            "connect_p50_ms": percentile(took_ms, 50),
            "connect_p99_ms": percentile(took_ms, 99),
            "settle_s": settle_s,
            "rss_before_kib": rss0,
            "rss_kib": rss1,
            "rss_anon_kib": anon1,
            "fds_added": fds1 - fds0,
            "kib_per_socket": (rss1 - rss0) / ok if ok else math.nan,
        }
    finally:
        if host is not None:
            host.abort()
        await gw.stop()


# ---------------------------------------------------------------- driver


PHASES = ("fanout", "saturation", "idle", "connect")
EXTRA_PHASES = ("cluster", "flusher")  # only when named in --only

HEADLINES: dict[str, list[tuple[str, str, str]]] = {
    "fanout": [("deliveries_per_s", "deliveries/s", ",.0f"), ("server_cpu_us_per_delivery", "server CPU µs/delivery", ".2f"),
               ("server_cpu_bound_deliveries_per_s", "CPU-bound deliveries/s (1 core)", ",.0f"),
               ("server_sys_share", "server CPU share in kernel", ".2f"),
               ("lat_p50_ms", "latency p50 ms", ".2f"), ("lat_p99_ms", "latency p99 ms", ".2f"),
               ("server_cpu_util", "server CPU util (cores)", ".2f"),
               ("client_cpu_us_per_delivery", "client CPU µs/delivery", ".2f"), ("publish_rate", "events/s published", ",.0f"),
               ("drain_s", "drain after last publish s", ".3f"), ("rss_kib", "server RSS KiB", ",.0f"),
               ("machine_busy_cores", "machine busy cores", ".2f")],
    "idle": [("kib_per_socket", "KiB per idle joined socket", ".2f"), ("rss_before_kib", "RSS before KiB", ",.0f"),
             ("rss_kib", "RSS after KiB", ",.0f"), ("connects_per_s", "connects+hello+join/s", ",.0f"),
             ("server_cpu_us_per_connect", "server CPU µs/connect", ".0f")],
    "connect": [("connects_per_s", "connects+hello+join/s (wall)", ",.0f"),
                ("server_cpu_us_per_connect", "server CPU µs/connect", ".0f"),
                ("server_cpu_bound_connects_per_s", "CPU-bound connects/s", ",.0f"),
                ("server_cpu_util", "server CPU util (cores)", ".2f"),
                ("connect_p50_ms", "connect p50 ms", ".1f"), ("connect_p99_ms", "connect p99 ms", ".1f"),
                ("machine_busy_cores", "machine busy cores", ".2f")],
}
HEADLINES["saturation"] = HEADLINES["fanout"]


async def run_all(args: argparse.Namespace, report: dict[str, Any]) -> None:
    stamp = report["stamp"]
    for phase in args.phases:
        if phase in EXTRA_PHASES:
            from . import cluster, flusher

            await (cluster.run_cluster if phase == "cluster" else flusher.run_flusher)(args, report)
            continue
        runs: list[dict[str, Any]] = report["runs"].setdefault(phase, [])
        for i in range(args.repeat):
            tag = f"{stamp}-{phase[:3]}{i}"
            print(f"[bench] {phase} run {i + 1}/{args.repeat} …", file=sys.stderr, flush=True)
            began = time.monotonic()
            if phase == "fanout":
                r = await fanout_run(args, args.rate, tag)
            elif phase == "saturation":
                r = await fanout_run(args, 0, tag)
            elif phase == "idle":
                r = await conns_run(args, args.idle_conns, args.idle_room_size, tag)
            else:
                r = await conns_run(args, args.connect_conns, args.connect_room_size, tag)
            r["run_s"] = time.monotonic() - began
            runs.append(r)
            print(f"[bench]   {one_line(phase, r)} ({r['run_s']:.1f} s)", file=sys.stderr, flush=True)
        report["medians"][phase] = {k: median_of(runs, k) for k, _, _ in HEADLINES[phase]}
        if phase in ("fanout", "saturation"):
            report["medians"][phase]["all_ok"] = all(r["ok"] for r in runs)
            report["medians"][phase]["all_kept_up"] = all(r["kept_up"] for r in runs)
        else:
            report["medians"][phase]["errors"] = sum(r["errors"] for r in runs)
    if args.profile and args.profile_mode not in EXTRA_PHASES:
        print(f"[bench] profiling a separate {args.profile_mode} run with py-spy → {args.profile}", file=sys.stderr)
        tag = f"{stamp}-prof"
        if args.profile_mode == "connect":
            r = await conns_run(args, args.connect_conns, args.connect_room_size, tag, profile=args.profile)
        else:
            rate = 0 if args.profile_mode == "saturation" else args.rate
            r = await fanout_run(args, rate, tag, profile=args.profile)
        report["profile_run"] = r | {"profile": args.profile, "mode": args.profile_mode}
        print(f"[bench]   {one_line('connect' if args.profile_mode == 'connect' else 'fanout', r)}", file=sys.stderr)


def one_line(phase: str, r: dict[str, Any]) -> str:
    if phase in ("fanout", "saturation"):
        return (f"{r['deliveries_per_s']:,.0f} deliveries/s, {r['server_cpu_us_per_delivery']:.2f} µs CPU/delivery, "
                f"p50 {r['lat_p50_ms']:.2f} ms, p99 {r['lat_p99_ms']:.2f} ms, util {r['server_cpu_util']:.2f}, "
                f"ok={r['ok']} kept_up={r['kept_up']} missing={r['missing']}")
    return (f"{r['ok']}/{r['conns']} sockets in {r['wall_s']:.2f} s = {r['connects_per_s']:,.0f}/s, "
            f"{r['server_cpu_us_per_connect']:.0f} µs CPU/connect, {r['kib_per_socket']:.2f} KiB/socket, "
            f"errors={r['errors']}")


def summary(report: dict[str, Any]) -> str:
    m = report["machine"]
    cfg = report["config"]
    lines = [
        f"roomcast benchmark — {m['cpus']} x {m['cpu_model']}, Linux {m['kernel']}, Python {m['python']}, "
        f"websockets {m['websockets']}, uvloop {m['uvloop']}, git {m['git_rev']}"
        + (" (gateway tree modified)" if m["gateway_tree_dirty"] else ""),
        f"medians of {cfg['repeat']} run(s); members={cfg['members']} event_bytes={cfg['event_bytes']} "
        f"rate={cfg['rate']}/s duration={cfg['duration']}s window={cfg['window']} client_procs={cfg['procs']}",
    ]
    for phase in report["medians"]:
        med = report["medians"][phase]
        title = {"fanout": f"fan-out @ {cfg['rate']:g} events/s", "saturation": f"saturation (window {cfg['window']})",
                 "idle": f"idle memory ({cfg['idle_conns']} sockets)",
                 "connect": f"connect rate ({cfg['connect_conns']} sockets)"}.get(phase) \
            or report.get("titles", {}).get(phase, phase)
        lines.append(f"\n{title}")
        for key, label, fmt in HEADLINES.get(phase) or report["headlines"][phase]:
            value = med.get(key)
            lines.append(f"  {label:<32} {'n/a' if value is None else format(value, fmt)}")
        for flag in ("all_ok", "all_kept_up", "errors", "setup_gaps"):
            if flag in med:
                lines.append(f"  {flag:<32} {med[flag]}")
        if med.get("setup_gaps"):
            lines.append("  WARNING: members missed room events while the others joined (see problem_sockets in the JSON)")
        if med.get("all_ok") is False:
            lines.append("  WARNING: deliveries missing, out of order or refused in some run (see the JSON)")
        elif med.get("all_kept_up") is False and phase != "saturation":
            lines.append("  WARNING: the target rate was not met in some run (publish_rate, drain_s in the JSON)")
    targets = report["targets"]
    lines.append("\ntargets: ≤ {cpu} µs CPU/delivery, p99 ≤ {p99} ms, ≤ {kib} KiB/idle socket, "
                 "≥ {cps:,} connects+joins/s".format(**targets))
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m loadtests.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(PHASES), help=f"comma-separated phases of {PHASES}")
    ap.add_argument("--members", type=int, default=100, help="receivers in the fan-out room")
    ap.add_argument("--event-bytes", type=int, default=1024, help="payload size of each event (JSON bytes)")
    ap.add_argument("--rate", type=float, default=200.0, help="events/s; 0 = saturation (window of in-flight events)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of publishing per fan-out run")
    ap.add_argument("--window", type=int, default=16, help="events in flight in saturation mode")
    ap.add_argument("--drain-timeout", type=float, default=20.0, help="seconds to wait for receivers to catch up")
    ap.add_argument("--send-buffer", type=int, default=0, help="MAX_SEND_BUFFER for the gateway (0 = its default)")
    ap.add_argument("--procs", type=int, default=4, help="client processes")
    ap.add_argument("--idle-conns", type=int, default=5000)
    ap.add_argument("--idle-room-size", type=int, default=100)
    ap.add_argument("--connect-conns", type=int, default=2000)
    ap.add_argument("--connect-room-size", type=int, default=10)
    ap.add_argument("--concurrency", type=int, default=16, help="connects in flight per client process")
    ap.add_argument("--connect-timeout", type=float, default=120.0, help="bound on one connect phase (s)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per phase; the summary shows medians")
    ap.add_argument("--profile", metavar="PATH", help="one extra run (not in the medians) under py-spy: "
                    ".svg flame graph, .txt folded stacks, .json speedscope; or under `perf record -g` for .data")
    ap.add_argument("--profile-mode", choices=("fanout", "saturation", "connect", "cluster", "flusher"),
                    default="fanout",
                    help="what the profiled run does; py-spy samples --duration seconds of it (for connect, "
                    "make --connect-conns large enough to last that long). cluster: gateway 0 of a cluster run "
                    "(with --only cluster); flusher: the coordinator during a drain run (with --only flusher)")
    ap.add_argument("--gateway-cmd", help="start the gateway with this command instead of `{python} -m gateway` "
                    "(for A/B experiments; `{python}` is this interpreter)")
    ap.add_argument("--out", help="JSON result file (default test-output/bench-<time>.json)")
    ap.add_argument("--max-seconds", type=float, default=1800.0, help="hard bound on the whole benchmark")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run in well under 20 s "
                    "(cluster or flusher alone: under 30 s)")
    from . import cluster, flusher

    cluster.add_arguments(ap)
    flusher.add_arguments(ap)
    args = ap.parse_args(argv)
    cluster.finish_arguments(args)
    flusher.finish_arguments(args)
    if args.quick:
        args.members, args.duration, args.rate, args.procs = min(args.members, 10), 1.5, min(args.rate, 100.0), 2
        args.idle_conns, args.idle_room_size, args.connect_conns = 200, 50, 200
        args.repeat, args.max_seconds, args.drain_timeout = 1, 60.0, 5.0
    args.phases = [p.strip() for p in args.only.split(",") if p.strip()]
    bad = [p for p in args.phases if p not in PHASES + EXTRA_PHASES]
    if bad:
        ap.error(f"unknown phase(s) {bad}; choose from {PHASES + EXTRA_PHASES}")
    if args.rate == 0 and "fanout" in args.phases:  # --rate 0 means the saturation mode
        args.phases = ["saturation" if p == "fanout" else p for p in args.phases]
        args.phases = list(dict.fromkeys(args.phases))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report: dict[str, Any] = {
        "stamp": stamp,
        "command": " ".join([Path(sys.executable).name, "-m", "loadtests.bench", *(argv or sys.argv[1:])]),
        "config": {k: v for k, v in vars(args).items() if k != "phases"} | {"phases": args.phases},
        "machine": procstat.machine_info(ROOT),
        "targets": {"cpu": 10, "p99": 5, "kib": 12, "cps": 2500},
        "runs": {},
        "medians": {},
    }
    started = time.monotonic()
    import uvloop

    async def bounded() -> None:
        await asyncio.wait_for(run_all(args, report), args.max_seconds)

    failed: BaseException | None = None
    try:
        uvloop.run(bounded())
    except (Exception, KeyboardInterrupt) as exc:
        failed = exc
        report["error"] = f"{type(exc).__name__}: {exc}"
    report["elapsed_s"] = time.monotonic() - started
    report["loadavg_after"] = procstat.loadavg()
    OUTPUT.mkdir(exist_ok=True)
    out = Path(args.out) if args.out else OUTPUT / f"bench-{stamp}.json"
    out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    if report["medians"]:
        print(summary(report))
    print(f"\nresults: {out}  ({report['elapsed_s']:.1f} s)")
    if failed is not None:
        print(f"benchmark failed: {report['error']}", file=sys.stderr)
        return 1
    ok = all(m.get("all_ok", True) and not m.get("errors") and not m.get("setup_gaps")
             for m in report["medians"].values())
    return 0 if ok else 3


if __name__ == "__main__":
    sys.exit(main())
