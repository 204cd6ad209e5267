"""The history-flusher phase of the benchmark (`python -m loadtests.bench --only flusher`).

redis + a throwaway Postgres (initdb once per invocation, a fresh database per run) + the
coordinator (history flusher) + --flush-gateways gateways in history mode (REDIS_URL and
DATABASE_URL): HistoryCluster below. Publishers only (one per room, --flush-rooms rooms), so
the CPU goes to the write path.

steady  --flush-rates events/s for --flush-duration s. Flusher rows/s from the coordinator's
        roomcast_flush_rows_total{table="game_events"}; lag from the publisher's send time to
        the row being visible, by polling roomcast_flush_state (updated in the same
        transaction as the rows) every --poll-ms (visibility.py); and the coordinator's
        roomcast_flush_lag_seconds histogram.
drain   the coordinator is stopped, --burst-events are published as fast as acks allow, the
        coordinator is started again and the drain is timed.

Every server binds 127.0.0.1 on a free port and is stopped by pid when its run ends; each
run's database is dropped, the Postgres cluster removed at the end of the phase.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import os
import signal
import subprocess
import sys
import time
from typing import Any

import asyncpg

from . import procstat
from .common import finish_profiler, percentile, record_medians, start_profiler, summary_line
from .procs import GatewayProc, coordinator_proc, env_pairs, gateway_procs
from .publishers import TimedPublisher, open_publishers, publish_paced
from .scrape import ROWS_KEY, delta, hist_quantile, scrape
from .services import PostgresServer, RedisServer
from .visibility import Visibility, peak_rate, poll_until


def postmaster_pid(pg: PostgresServer) -> int:
    assert pg.datadir is not None
    return int((pg.datadir / "postmaster.pid").read_text().split()[0])



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

    def meter(self) -> procstat.CpuMeter:
        assert self.redis is not None and self.redis.proc is not None and self.coord is not None
        return procstat.CpuMeter({"coordinator": (self.coord.pid, False), "postgres": (postmaster_pid(self.pg), True),
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



@contextlib.asynccontextmanager
async def postgres() -> Any:
    pg = await asyncio.to_thread(lambda: PostgresServer().init())
    try:
        yield pg
    finally:
        await asyncio.to_thread(pg.destroy)


# ---------------------------------------------------------------- driver hooks (called by bench)


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
                print("[bench]   " + summary_line(r, STEADY_HEADLINES[:6]) + f" ({r['run_s']:.1f} s)",
                      file=sys.stderr, flush=True)
            record_medians(report, phase, runs, STEADY_HEADLINES,
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
                print("[bench]   " + summary_line(r, DRAIN_HEADLINES[:6]) + f" ({r['run_s']:.1f} s)",
                      file=sys.stderr, flush=True)
            record_medians(report, "flush-drain", runs, DRAIN_HEADLINES,
                    f"flusher drain: {args.burst_events} events over {args.flush_rooms} rooms published "
                    "with the coordinator stopped, then drained")
        if args.profile and args.profile_mode == "flusher":
            print(f"[bench] profiling the coordinator in a separate drain run → {args.profile}", file=sys.stderr)
            r = await flusher_drain_run(args, pg, f"{stamp}-fldprof", profile=args.profile)
            report["profile_run"] = r | {"profile": args.profile, "mode": "flusher"}
            print("[bench]   " + summary_line(r, DRAIN_HEADLINES[:6]), file=sys.stderr)



def add_arguments(ap: argparse.ArgumentParser) -> None:
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
        args.flush_rates, args.flush_duration = [200.0], 2.0
        args.flush_rooms, args.burst_events = min(args.flush_rooms, 4), min(args.burst_events, 2000)
