"""Cluster and history-flusher phases of the benchmark (`python -m loadtests.bench --only cluster,flusher`).

cluster   An ephemeral redis-server and --gateways gateway processes in cluster mode (REDIS_URL),
          optionally a coordinator (--coordinator). --rooms rooms of --room-members sockets each,
          spread evenly over the gateways (25 + 25 for 50 members and 2 gateways). One member of
          each room, its host, publishes; the rooms alternate their publisher's gateway. Together
          they send ~--cluster-event-bytes payloads at --cluster-rate events/s. Every event goes
          publisher → its gateway → Lua script (EVALSHA: seq, XADD, PUBLISH) → every gateway's
          pub/sub subscription → local fan-out, so with 2 gateways half of the deliveries cross
          replicas. Reported: deliveries/s (every member gap-free), latency p50/p99 (publisher's
          timestamp to receive; local and cross-replica members separately), CPU of all gateways
          per delivery, redis-server CPU per event published, RSS.

flusher   redis + a throwaway Postgres (initdb once per invocation, a fresh database per run) +
          the coordinator (history flusher) + --flush-gateways gateways in history mode
          (REDIS_URL and DATABASE_URL). Publishers only (one per room, --flush-rooms rooms), so
          the CPU goes to the write path.
          steady: --flush-rates events/s for --flush-duration s. Flusher rows/s from the
                  coordinator's roomcast_flush_rows_total{table="game_events"}; lag from the
                  publisher's send time to the row being visible, by polling
                  roomcast_flush_state (updated in the same transaction as the rows) every
                  --poll-ms; and the coordinator's roomcast_flush_lag_seconds histogram.
          drain:  the coordinator is stopped, --burst-events are published as fast as acks
                  allow, the coordinator is started again and the drain is timed.

Every server binds 127.0.0.1 on a free port and is stopped by pid when its run ends.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import itertools
import math
import os
import signal
import subprocess
import sys
import time
from array import array
from typing import Any

import asyncpg

from . import procstat
from .common import BENCH_ID0, Publisher, finish_profiler, median_of, percentile, start_profiler
from .procs import HOST, OUTPUT, GatewayProc, split, workers
from .services import PostgresServer, RedisServer
from .workers import members_main
from .wsclient import client_frame, open_conn

# ---------------------------------------------------------------- processes


def env_pairs(pairs: list[str] | None) -> dict[str, str]:
    """--gateway-env/--coord-env KEY=VALUE options as a dict."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"expected KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def coordinator_proc(tag: str, redis_url: str, database_url: str | None,
                     extra: dict[str, str] | None = None) -> GatewayProc:
    """`python -m coordinator` with the gateway process helper (env, SIGTERM by pid, /readyz)."""
    env = {"REDIS_URL": redis_url, "NODE_ID": f"bench-coord-{tag}"[:60]}
    if database_url:
        env["DATABASE_URL"] = database_url
    env.update(extra or {})
    proc = GatewayProc(env, tag, "{python} -m coordinator")
    proc.env["COORDINATOR_PORT"] = str(proc.port)
    proc.log_path = OUTPUT / f"bench-coordinator-{tag}.log"
    return proc


def gateway_procs(n: int, tag: str, redis_url: str, database_url: str | None,
                  gateway_cmd: str | None, extra: dict[str, str] | None = None) -> list[GatewayProc]:
    out = []
    for i in range(n):
        env = {"REDIS_URL": redis_url, "NODE_ID": f"bench-gw{i}"}
        if database_url:
            env["DATABASE_URL"] = database_url
        env.update(extra or {})
        out.append(GatewayProc(env, f"{tag}-gw{i}", gateway_cmd))
    return out


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


class CpuMeter:
    """utime+stime deltas of several processes (tree=True: a forking server, e.g. postgres).
    `sys` holds the stime part (processes without tree=True only)."""

    def __init__(self, procs: dict[str, tuple[int, bool]]) -> None:
        self.procs = procs
        self.t0 = 0.0
        self.start: dict[str, tuple[float, float]] = {}
        self.sys: dict[str, float] = {}

    def _read(self) -> dict[str, tuple[float, float]]:
        out = {}
        for name, (pid, tree) in self.procs.items():
            out[name] = (procstat.tree_cpu_seconds(pid), 0.0) if tree else procstat.cpu_times(pid)
        return out

    def begin(self) -> None:
        self.t0 = time.monotonic()
        self.start = self._read()

    def end(self) -> tuple[dict[str, float], float]:
        now = self._read()
        self.sys = {k: now[k][1] - self.start[k][1] for k, (_, tree) in self.procs.items() if not tree}
        return {k: sum(now[k]) - sum(self.start[k]) for k in now}, time.monotonic() - self.t0


def postmaster_pid(pg: PostgresServer) -> int:
    assert pg.datadir is not None
    return int((pg.datadir / "postmaster.pid").read_text().split()[0])


# ---------------------------------------------------------------- publishers


class TimedPublisher(Publisher):
    """A Publisher that remembers each event's send time and its seq (from the ack), and can
    publish a fixed quota with a window of events in flight."""

    def setup(self, room_id: str, event_bytes: int) -> None:
        super().setup(room_id, event_bytes)
        self.sent_at = array("q")
        self.seq_sent: dict[int, int] = {}  # seq -> send time (monotonic ns)
        self.max_seq = 0
        self.quota = 0

    def publish(self) -> None:
        self.sent += 1
        t = time.monotonic_ns()
        self.sent_at.append(t)
        self.write(client_frame(
            b'{"type":"event","id":%d,"room_id":"%s","event_type":"bench","payload":{"t":%d,"pad":"%s"}}'
            % (BENCH_ID0 + self.sent, self.room_id, t, self.pad)))

    def on_reply(self, message: dict[str, Any]) -> None:
        re = message.get("re")
        bench = isinstance(re, int) and re >= BENCH_ID0
        if bench and message.get("type") == "ack":
            seq = int(message["seq"])
            self.seq_sent[seq] = self.sent_at[re - BENCH_ID0 - 1]
            self.max_seq = max(self.max_seq, seq)
        pumping, self.pumping = self.pumping, False  # the quota pump below replaces the timed one
        super().on_reply(message)
        self.pumping = pumping
        if pumping and bench and self.sent < self.quota:
            self.publish()

    async def run_quota(self, quota: int, window: int, timeout: float) -> None:
        self.quota = quota
        self.pumping = True
        for _ in range(min(window, quota - self.sent)):
            self.publish()
        deadline = time.monotonic() + timeout
        while (self.acked + self.refused < quota and time.monotonic() < deadline  # noqa: ASYNC110
               and not self.closed.done()):
            await asyncio.sleep(0.01)
        self.pumping = False


async def publish_paced(pubs: list[Publisher], rate: float, duration: float) -> dict[str, Any]:
    """Publish rate*duration events in total on one fixed schedule, round-robin over the
    publishers (late ones go at once). Sleeps are at least 1 ms (uvloop's timer resolution):
    shorter ones return at once and would spin this process on the CPU it shares."""
    total = max(len(pubs), round(rate * duration))
    n = len(pubs)
    start = time.monotonic()
    sent = 0
    max_behind = 0
    while sent < total and not any(p.closed.done() for p in pubs):
        due = min(total, int((time.monotonic() - start) * rate) + 1)
        max_behind = max(max_behind, due - sent)
        while sent < due:
            pubs[sent % n].publish()
            sent += 1
        await asyncio.sleep(max(0.001, start + sent / rate - time.monotonic()))
    return {"max_behind": max_behind, "publish_s": time.monotonic() - start}


async def open_publishers(cls: type[Publisher], rooms: list[str], ports: list[int], tag: str, event_bytes: int,
                          max_players: int) -> list[Any]:
    pubs = []
    for r, room_id in enumerate(rooms):
        pub = await open_conn(HOST, ports[r % len(ports)], cls)
        pubs.append(pub)
        pub.setup(room_id, event_bytes)
        await pub.hello(f"bench-pub-{tag}-{r:03d}")
        created = await pub.request({"type": "create_room", "room_id": room_id, "game_type": "bench",
                                     "max_players": max_players})
        pub.last_seq = created["room"]["seq"]
    return pubs


# ---------------------------------------------------------------- phase: cluster fan-out


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
            meter = CpuMeter({f"gw{i}": (g.pid, False) for i, g in enumerate(gws)} | {"redis": (redis.proc.pid, False)}
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


# ---------------------------------------------------------------- phase: history flusher


class Visibility:
    """Polls roomcast_flush_state (written in the same transaction as the game_events rows)
    and records when each room's persisted seq advanced."""

    def __init__(self, conn: asyncpg.Connection, rooms: list[str], interval: float) -> None:
        self.conn = conn
        self.rooms = rooms
        self.interval = interval
        self.last: dict[str, int] = dict.fromkeys(rooms, 0)
        self.seen: dict[str, tuple[list[int], list[int]]] = {r: ([], []) for r in rooms}  # (seqs, times)
        self.task: asyncio.Task[None] | None = None
        self.polls = 0

    async def poll(self) -> int:
        t = time.monotonic_ns()
        rows = await self.conn.fetch("SELECT room_id, last_seq FROM roomcast_flush_state "
                                     "WHERE room_id = ANY($1::varchar[])", self.rooms)
        self.polls += 1
        advanced = 0
        for row in rows:
            room, seq = row["room_id"], row["last_seq"]
            if seq > self.last[room]:
                advanced += seq - self.last[room]
                self.last[room] = seq
                seqs, times = self.seen[room]
                seqs.append(seq)
                times.append(t)
        return advanced

    async def _run(self) -> None:
        while True:
            await self.poll()
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def wait_for(self, heads: dict[str, int], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.last[r] >= h for r, h in heads.items()):
                return True
            await asyncio.sleep(self.interval)
        return False

    def visible_at(self, room: str, seq: int) -> int | None:
        seqs, times = self.seen[room]
        i = bisect.bisect_left(seqs, seq)
        return times[i] if i < len(seqs) else None

    def rows_timeline(self, t_from: int) -> list[tuple[int, int]]:
        """(time, rows that became visible then), for the advances after t_from."""
        out: dict[int, int] = {}
        for _room, (seqs, times) in self.seen.items():
            prev = None
            for seq, t in zip(seqs, times, strict=True):
                if prev is not None and t >= t_from:
                    out[t] = out.get(t, 0) + seq - prev
                prev = seq
        return sorted(out.items())


def peak_rate(timeline: list[tuple[int, int]], window_s: float = 1.0) -> float:
    """Most rows that became visible within any `window_s` window (sliding), per second."""
    best = total = j = 0
    for t, n in timeline:
        total += n
        while timeline[j][0] <= t - window_s * 1e9:
            total -= timeline[j][1]
            j += 1
        best = max(best, total)
    return best / window_s


class HistoryCluster:
    """Per run: a fresh database on the shared Postgres, redis, gateways, a coordinator."""

    def __init__(self, args: argparse.Namespace, pg: PostgresServer, tag: str) -> None:
        self.args = args
        self.pg = pg
        self.tag = tag
        self.db = "bench_" + "".join(c if c.isalnum() else "_" for c in tag)
        self.redis: RedisServer | None = None
        self.gws: list[GatewayProc] = []
        self.coord: GatewayProc | None = None
        self.conn: asyncpg.Connection | None = None
        self.dsn = ""

    async def start(self) -> None:
        self.dsn = await asyncio.to_thread(self.pg.create_database, self.db)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "DATABASE_"))}
        env["DATABASE_URL"] = self.dsn
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "coordinator", "migrate", env=env,
                                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        if proc.returncode:
            raise RuntimeError(f"coordinator migrate failed: {out.decode(errors='replace')[-500:]}")
        self.redis = RedisServer().start()
        self.gws = gateway_procs(self.args.flush_gateways, self.tag, self.redis.url, self.dsn, self.args.gateway_cmd,
                                 env_pairs(self.args.gateway_env))
        for g in self.gws:
            g.start()
        await self.start_coordinator()
        for g in self.gws:
            await g.wait_ready(30)
        self.conn = await asyncpg.connect(self.dsn)

    async def start_coordinator(self) -> float:
        assert self.redis is not None
        self.coord = coordinator_proc(f"{self.tag}-{int(time.monotonic() * 1000) % 100000}", self.redis.url, self.dsn,
                                      env_pairs(self.args.coord_env))
        self.coord.env["WEBSOCKET_HEARTBEAT_TIMEOUT"] = "600000"
        started = time.monotonic()
        self.coord.start()
        await self.coord.wait_ready(30)
        return time.monotonic() - started

    async def stop_coordinator(self) -> None:
        if self.coord is not None:
            await self.coord.stop(10)

    async def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await self.conn.close()
        for g in self.gws:
            await g.stop()
        await self.stop_coordinator()
        if self.redis is not None:
            self.redis.stop()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.pg.psql, "postgres", f'DROP DATABASE IF EXISTS "{self.db}"')

    def meter(self) -> CpuMeter:
        assert self.redis is not None and self.redis.proc is not None and self.coord is not None
        return CpuMeter({"coordinator": (self.coord.pid, False), "postgres": (postmaster_pid(self.pg), True),
                         "redis": (self.redis.proc.pid, False)}
                        | {f"gw{i}": (g.pid, False) for i, g in enumerate(self.gws)})

    async def check_rows(self, rooms: list[str]) -> dict[str, Any]:
        """Every event of every room is in game_events exactly once (count = max seq)."""
        assert self.conn is not None
        rows = await self.conn.fetch(
            "SELECT room_id, count(*) AS n, max(sequence_number) AS hi, "
            "count(*) FILTER (WHERE event_type = 'bench') AS bench "
            "FROM game_events WHERE room_id = ANY($1::varchar[]) GROUP BY room_id", rooms)
        by_room = {r["room_id"]: r for r in rows}
        return {
            "db_rows": sum(r["n"] for r in rows),  # the rooms' creation events included
            "bench_rows": sum(r["bench"] for r in rows),
            "rooms_gap_free": sum(1 for r in rooms if r in by_room and by_room[r]["n"] == by_room[r]["hi"]),
        }


async def flusher_steady_run(args: argparse.Namespace, pg: PostgresServer, rate: float, tag: str) -> dict[str, Any]:
    hc = HistoryCluster(args, pg, tag)
    pubs: list[TimedPublisher] = []
    vis: Visibility | None = None
    try:
        await hc.start()
        assert hc.conn is not None and hc.coord is not None
        rooms = [f"bench-{tag}-r{r:03d}" for r in range(args.flush_rooms)]
        pubs = await open_publishers(TimedPublisher, rooms, [g.port for g in hc.gws], tag,
                                     args.flush_event_bytes, 16)
        vis = Visibility(hc.conn, rooms, args.poll_ms / 1000)
        vis.start()
        # The creates are flushed first, so the window starts from an empty backlog.
        if not await vis.wait_for({p.room_id.decode(): p.last_seq for p in pubs}, 30):
            raise RuntimeError("the flusher did not persist the room creations within 30 s")
        meter = hc.meter()
        m0 = await scrape(hc.coord.port)
        jiffies0 = procstat.machine_jiffies()
        load0 = procstat.loadavg()
        meter.begin()
        t0 = time.monotonic_ns()
        samples: list[tuple[float, float]] = []

        async def sample() -> None:
            assert hc.coord is not None
            while True:
                samples.append((time.monotonic(), (await scrape(hc.coord.port)).get(ROWS_KEY, 0.0)))
                await asyncio.sleep(0.5)

        sampler = asyncio.get_running_loop().create_task(sample())
        pacing = await publish_paced(pubs, rate, args.flush_duration)
        t_pub_end = time.monotonic_ns()
        await asyncio.gather(*(p.wait_acks(args.drain_timeout) for p in pubs))
        heads = {p.room_id.decode(): p.max_seq for p in pubs}
        caught_up = await vis.wait_for(heads, args.drain_timeout + 30)
        t_done = time.monotonic_ns()
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        cpu, _ = meter.end()
        jiffies1 = procstat.machine_jiffies()
        m1 = await scrape(hc.coord.port)
        await vis.stop()
        check = await hc.check_rows(rooms)
        lags = []
        unseen = 0
        for p in pubs:
            room = p.room_id.decode()
            for seq, t_sent in p.seq_sent.items():
                t_vis = vis.visible_at(room, seq)
                if t_vis is None:
                    unseen += 1
                else:
                    lags.append((t_vis - t_sent) / 1e6)
        lags.sort()
        sent = sum(p.sent for p in pubs)
        acked = sum(p.acked for p in pubs)
        rows = delta(m0, m1, ROWS_KEY)
        wall = (t_done - t0) / 1e9
        publish_s = (t_pub_end - t0) / 1e9
        batches = delta(m0, m1, "roomcast_flush_batch_size_count")
        gw_cpu = sum(v for k, v in cpu.items() if k.startswith("gw"))
        rates = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in itertools.pairwise(samples) if b[0] > a[0]]
        out: dict[str, Any] = {
            "target_rate": rate,
            "rooms": len(rooms),
            "gateways": len(hc.gws),
            "events_sent": sent,
            "events_acked": acked,
            "events_refused": sum(p.refused for p in pubs),
            "publish_rate": sent / publish_s if publish_s else 0.0,
            "publish_max_behind": pacing["max_behind"],
            "rows": rows,
            "wall_s": wall,
            "caught_up": caught_up,
            "drain_after_publish_s": (t_done - t_pub_end) / 1e9,
            "rows_per_s": rows / wall if wall else 0.0,
            "rows_per_s_samples_max": max(rates) if rates else math.nan,
            "batches": batches,
            "batches_per_s": batches / wall if wall else 0.0,
            "batch_mean_units": delta(m0, m1, "roomcast_flush_batch_size_sum") / batches if batches else math.nan,
            "lag_p50_ms": percentile(lags, 50),
            "lag_p90_ms": percentile(lags, 90),
            "lag_p99_ms": percentile(lags, 99),
            "lag_max_ms": lags[-1] if lags else math.nan,
            "lag_samples": len(lags),
            "lag_unseen": unseen,
            "poll_ms": args.poll_ms,
            "polls": vis.polls,
            "hist_lag_p50_s": hist_quantile(m0, m1, "roomcast_flush_lag_seconds", 0.5),
            "hist_lag_p99_s": hist_quantile(m0, m1, "roomcast_flush_lag_seconds", 0.99),
            "hist_lag_samples": delta(m0, m1, "roomcast_flush_lag_seconds_count"),
            "cpu_s": cpu,
            "coordinator_cpu_util": cpu["coordinator"] / wall if wall else 0.0,
            "postgres_cpu_util": cpu["postgres"] / wall if wall else 0.0,
            "coordinator_cpu_us_per_row": cpu["coordinator"] * 1e6 / rows if rows else math.nan,
            "postgres_cpu_us_per_row": cpu["postgres"] * 1e6 / rows if rows else math.nan,
            "redis_cpu_us_per_event": cpu["redis"] * 1e6 / sent if sent else math.nan,
            "gateway_cpu_us_per_event": gw_cpu * 1e6 / sent if sent else math.nan,
            "machine_busy_cores": procstat.busy_cores(jiffies0, jiffies1, os.cpu_count() or 1),
            "loadavg_before": load0,
            **check,
        }
        out["ok"] = (caught_up and out["events_refused"] == 0 and acked == sent and unseen == 0
                     and check["bench_rows"] == sent and check["rooms_gap_free"] == len(rooms))
        out["kept_up"] = out["ok"] and out["publish_rate"] >= 0.95 * rate and out["drain_after_publish_s"] < 2.0
        return out
    finally:
        if vis is not None:
            await vis.stop()
        for p in pubs:
            p.abort()
        await hc.close()


async def flusher_drain_run(args: argparse.Namespace, pg: PostgresServer, tag: str,
                            profile: str | None = None) -> dict[str, Any]:
    hc = HistoryCluster(args, pg, tag)
    pubs: list[TimedPublisher] = []
    vis: Visibility | None = None
    spy: subprocess.Popen[bytes] | None = None
    try:
        await hc.start()
        assert hc.conn is not None
        rooms = [f"bench-{tag}-r{r:03d}" for r in range(args.flush_rooms)]
        pubs = await open_publishers(TimedPublisher, rooms, [g.port for g in hc.gws], tag,
                                     args.flush_event_bytes, 16)
        vis = Visibility(hc.conn, rooms, args.poll_ms / 1000)
        if not await poll_until(vis, {p.room_id.decode(): p.last_seq for p in pubs}, 30):
            raise RuntimeError("the flusher did not persist the room creations within 30 s")
        await hc.stop_coordinator()
        # The backlog: every publisher sends its share with a window in flight.
        quota = [args.burst_events // len(pubs) + (1 if i < args.burst_events % len(pubs) else 0)
                 for i in range(len(pubs))]
        t_b0 = time.monotonic()
        await asyncio.gather(*(p.run_quota(q, 16, 120) for p, q in zip(pubs, quota, strict=True)))
        burst_s = time.monotonic() - t_b0
        sent = sum(p.sent for p in pubs)
        acked = sum(p.acked for p in pubs)
        heads = {p.room_id.decode(): p.max_seq for p in pubs}
        await vis.poll()
        backlog0 = sum(heads[r] - vis.last[r] for r in rooms)
        await asyncio.sleep(0.5)  # let the gateways go quiet
        jiffies0 = procstat.machine_jiffies()
        load0 = procstat.loadavg()
        t_start = time.monotonic_ns()
        startup_s = await hc.start_coordinator()
        assert hc.coord is not None
        # CPU per row is metered from readiness (imports and start-up excluded) over the rows
        # still unflushed then; the coordinator's whole CPU is reported separately.
        await vis.poll()
        rows_metered = sum(heads[r] - vis.last[r] for r in rooms)
        meter = hc.meter()
        meter.begin()
        t_ready = time.monotonic_ns()
        if profile:
            spy = start_profiler(hc.coord.pid, profile, 120)
        vis.start()
        caught_up = await vis.wait_for(heads, args.drain_timeout + 120)
        t_done = time.monotonic_ns()
        cpu, metered_s = meter.end()
        coord_total_cpu = procstat.cpu_seconds(hc.coord.pid)
        jiffies1 = procstat.machine_jiffies()
        m1 = await scrape(hc.coord.port)
        await vis.stop()
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            finish_profiler(spy, 30)
            spy = None
        check = await hc.check_rows(rooms)
        timeline = vis.rows_timeline(t_start)
        t_first = timeline[0][0] if timeline else t_done
        t_last = timeline[-1][0] if timeline else t_done
        rows = backlog0
        batches = m1.get("roomcast_flush_batch_size_count", 0.0)
        out: dict[str, Any] = {
            "rooms": len(rooms),
            "gateways": len(hc.gws),
            "burst_events": sent,
            "burst_acked": acked,
            "burst_publish_s": burst_s,
            "burst_publish_rate": sent / burst_s if burst_s else 0.0,
            "backlog_rows": backlog0,
            "caught_up": caught_up,
            "coordinator_ready_s": startup_s,
            "first_row_after_start_s": (t_first - t_start) / 1e9,
            "drain_from_start_s": (t_last - t_start) / 1e9,
            "drain_from_ready_s": (t_last - t_ready) / 1e9,
            "drain_first_to_last_s": (t_last - t_first) / 1e9,
            # Rows still unflushed when the coordinator answered /readyz, over the time from
            # then to the last row: the flusher's drain rate without the process start-up.
            "drain_rows_per_s": rows_metered / ((t_last - t_ready) / 1e9) if t_last > t_ready else math.nan,
            "drain_rows_per_s_incl_start": rows / ((t_last - t_start) / 1e9) if t_last > t_start else math.nan,
            "peak_rows_per_s_1s": peak_rate(timeline, 1.0),
            "rows_metric": m1.get(ROWS_KEY, 0.0),
            "batches": batches,
            "batch_mean_units": m1.get("roomcast_flush_batch_size_sum", 0.0) / batches if batches else math.nan,
            "cpu_s": cpu,
            "coordinator_cpu_s_total": coord_total_cpu,
            "rows_metered": rows_metered,
            "coordinator_cpu_us_per_row": cpu["coordinator"] * 1e6 / rows_metered if rows_metered else math.nan,
            "postgres_cpu_us_per_row": cpu["postgres"] * 1e6 / rows_metered if rows_metered else math.nan,
            "redis_cpu_us_per_row": cpu["redis"] * 1e6 / rows_metered if rows_metered else math.nan,
            "coordinator_cpu_util": cpu["coordinator"] / metered_s if metered_s else math.nan,
            "postgres_cpu_util": cpu["postgres"] / metered_s if metered_s else math.nan,
            "machine_busy_cores": procstat.busy_cores(jiffies0, jiffies1, os.cpu_count() or 1),
            "loadavg_before": load0,
            **check,
        }
        out["ok"] = (caught_up and acked == sent and check["bench_rows"] == sent
                     and check["rooms_gap_free"] == len(rooms))
        return out
    finally:
        if spy is not None:
            spy.kill()
            spy.wait(5)
        if vis is not None:
            await vis.stop()
        for p in pubs:
            p.abort()
        await hc.close()


async def poll_until(vis: Visibility, heads: dict[str, int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await vis.poll()
        if all(vis.last[r] >= h for r, h in heads.items()):
            return True
        await asyncio.sleep(vis.interval)
    return False


@contextlib.asynccontextmanager
async def postgres() -> Any:
    pg = await asyncio.to_thread(lambda: PostgresServer().init())
    try:
        yield pg
    finally:
        await asyncio.to_thread(pg.destroy)


# ---------------------------------------------------------------- driver hooks (called by bench.run_all)


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
STEADY_HEADLINES: list[tuple[str, str, str]] = [
    ("publish_rate", "events/s published", ",.0f"),
    ("rows_per_s", "game_events rows/s (window)", ",.0f"),
    ("lag_p50_ms", "lag p50 ms (send→visible)", ".0f"), ("lag_p99_ms", "lag p99 ms", ".0f"),
    ("lag_max_ms", "lag max ms", ".0f"),
    ("hist_lag_p50_s", "histogram lag p50 s", ".3f"), ("hist_lag_p99_s", "histogram lag p99 s", ".3f"),
    ("batches_per_s", "batches/s", ".1f"), ("batch_mean_units", "units per batch", ".0f"),
    ("coordinator_cpu_us_per_row", "coordinator CPU µs/row", ".0f"),
    ("postgres_cpu_us_per_row", "postgres CPU µs/row", ".0f"),
    ("coordinator_cpu_util", "coordinator CPU (cores)", ".2f"), ("postgres_cpu_util", "postgres CPU (cores)", ".2f"),
    ("gateway_cpu_us_per_event", "gateways CPU µs/event", ".0f"), ("redis_cpu_us_per_event", "redis CPU µs/event", ".0f"),
    ("drain_after_publish_s", "caught up after last publish s", ".2f"),
    ("machine_busy_cores", "machine busy cores", ".2f"),
]
DRAIN_HEADLINES: list[tuple[str, str, str]] = [
    ("backlog_rows", "backlog rows", ",.0f"), ("burst_publish_rate", "burst published events/s", ",.0f"),
    ("drain_rows_per_s", "drain rows/s (ready → last row)", ",.0f"),
    ("drain_rows_per_s_incl_start", "drain rows/s incl. process start", ",.0f"),
    ("peak_rows_per_s_1s", "peak rows/s (1 s window)", ",.0f"),
    ("coordinator_ready_s", "coordinator spawn → ready s", ".2f"),
    ("drain_from_ready_s", "ready → last row s", ".2f"),
    ("drain_from_start_s", "spawn → last row s", ".2f"),
    ("batch_mean_units", "units per batch", ".0f"),
    ("coordinator_cpu_us_per_row", "coordinator CPU µs/row", ".1f"),
    ("postgres_cpu_us_per_row", "postgres CPU µs/row", ".1f"),
    ("coordinator_cpu_util", "coordinator CPU (cores)", ".2f"), ("postgres_cpu_util", "postgres CPU (cores)", ".2f"),
    ("machine_busy_cores", "machine busy cores", ".2f"),
]


def _record(report: dict[str, Any], phase: str, runs: list[dict[str, Any]], headlines: list[tuple[str, str, str]],
            title: str) -> None:
    med: dict[str, Any] = {k: median_of(runs, k) for k, _, _ in headlines}
    med["all_ok"] = all(r["ok"] for r in runs)
    if any("gaps_before_bench" in r for r in runs):  # a correctness failure outside the window
        med["setup_gaps"] = sum(r.get("gaps_before_bench", 0) for r in runs)
    if all("kept_up" in r for r in runs):
        med["all_kept_up"] = all(r["kept_up"] for r in runs)
    report["medians"][phase] = med
    report.setdefault("titles", {})[phase] = title
    report.setdefault("headlines", {})[phase] = headlines


def _line(r: dict[str, Any], keys: list[tuple[str, str, str]]) -> str:
    parts = []
    for key, label, fmt in keys:
        v = r.get(key)
        parts.append(f"{label} {'n/a' if v is None else format(v, fmt)}")
    return ", ".join(parts) + f", ok={r['ok']}" + (f" kept_up={r['kept_up']}" if "kept_up" in r else "")


async def run_cluster(args: argparse.Namespace, report: dict[str, Any]) -> None:
    stamp = report["stamp"]
    runs: list[dict[str, Any]] = report["runs"].setdefault("cluster", [])
    for i in range(args.repeat):
        print(f"[bench] cluster @ {args.cluster_rate:g}/s run {i + 1}/{args.repeat} …", file=sys.stderr, flush=True)
        began = time.monotonic()
        r = await cluster_run(args, args.cluster_rate, f"{stamp}-clu{i}")
        r["run_s"] = time.monotonic() - began
        runs.append(r)
        print("[bench]   " + _line(r, CLUSTER_HEADLINES[:7]) + f" ({r['run_s']:.1f} s)", file=sys.stderr, flush=True)
    if runs:
        _record(report, "cluster", runs, CLUSTER_HEADLINES,
                f"cluster: {args.gateways} gateways + redis, {args.rooms} rooms x {args.room_members} members, "
                f"{args.cluster_event_bytes} B events @ {args.cluster_rate:g}/s")
    if args.profile and args.profile_mode == "cluster":
        print(f"[bench] profiling gateway 0 in a separate cluster run → {args.profile}", file=sys.stderr)
        r = await cluster_run(args, args.cluster_rate, f"{stamp}-cluprof", profile=args.profile)
        report["profile_run"] = r | {"profile": args.profile, "mode": "cluster"}
        print("[bench]   " + _line(r, CLUSTER_HEADLINES[:7]), file=sys.stderr)


async def run_flusher(args: argparse.Namespace, report: dict[str, Any]) -> None:
    stamp = report["stamp"]
    async with postgres() as pg:
        for rate in args.flush_rates:
            phase = f"flush@{rate:g}"
            runs: list[dict[str, Any]] = report["runs"].setdefault(phase, [])
            for i in range(args.repeat):
                print(f"[bench] flusher steady @ {rate:g}/s run {i + 1}/{args.repeat} …", file=sys.stderr, flush=True)
                began = time.monotonic()
                r = await flusher_steady_run(args, pg, rate, f"{stamp}-fl{int(rate)}-{i}")
                r["run_s"] = time.monotonic() - began
                runs.append(r)
                print("[bench]   " + _line(r, STEADY_HEADLINES[:6]) + f" ({r['run_s']:.1f} s)",
                      file=sys.stderr, flush=True)
            _record(report, phase, runs, STEADY_HEADLINES,
                    f"flusher steady: {args.flush_rooms} rooms, {args.flush_gateways} gateway(s), "
                    f"{rate:g} events/s for {args.flush_duration:g} s")
        if args.burst_events > 0:
            runs = report["runs"].setdefault("flush-drain", [])
            for i in range(args.repeat):
                print(f"[bench] flusher drain of {args.burst_events} events run {i + 1}/{args.repeat} …",
                      file=sys.stderr, flush=True)
                began = time.monotonic()
                r = await flusher_drain_run(args, pg, f"{stamp}-fld{i}")
                r["run_s"] = time.monotonic() - began
                runs.append(r)
                print("[bench]   " + _line(r, DRAIN_HEADLINES[:6]) + f" ({r['run_s']:.1f} s)",
                      file=sys.stderr, flush=True)
            _record(report, "flush-drain", runs, DRAIN_HEADLINES,
                    f"flusher drain: {args.burst_events} events over {args.flush_rooms} rooms published "
                    "with the coordinator stopped, then drained")
        if args.profile and args.profile_mode == "flusher":
            print(f"[bench] profiling the coordinator in a separate drain run → {args.profile}", file=sys.stderr)
            r = await flusher_drain_run(args, pg, f"{stamp}-fldprof", profile=args.profile)
            report["profile_run"] = r | {"profile": args.profile, "mode": "flusher"}
            print("[bench]   " + _line(r, DRAIN_HEADLINES[:6]), file=sys.stderr)


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
    f = ap.add_argument_group("flusher phase (--only flusher)")
    f.add_argument("--flush-rates", default="500,1000", help="comma-separated events/s of the steady runs")
    f.add_argument("--flush-duration", type=float, default=20.0)
    f.add_argument("--flush-rooms", type=int, default=10)
    f.add_argument("--flush-gateways", type=int, default=2)
    f.add_argument("--flush-event-bytes", type=int, default=100)
    f.add_argument("--burst-events", type=int, default=20000, help="events published while the coordinator is "
                   "stopped, then drained (0 = no drain runs)")
    f.add_argument("--poll-ms", type=float, default=20.0, help="how often the lag poller reads roomcast_flush_state")


def finish_arguments(args: argparse.Namespace) -> None:
    args.flush_rates = [float(x) for x in str(args.flush_rates).split(",") if x.strip()]
    if args.quick:
        args.rooms, args.room_members = min(args.rooms, 4), min(args.room_members, 10)
        args.cluster_rate, args.cluster_duration = min(args.cluster_rate, 200.0), 1.5
        args.flush_rates, args.flush_duration = [200.0], 2.0
        args.flush_rooms, args.burst_events = min(args.flush_rooms, 4), min(args.burst_events, 2000)
