"""`coordinator` command: hold the lease and run the reaper (more jobs arrive with history)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from roomcast import __version__, keys
from roomcast.errors import GatewayError
from roomcast.http_mini import serve_http
from roomcast.redis_batch import Batcher
from roomcast.redis_client import make_client
from roomcast.settings import SPECS, Settings, SettingsError, add_arguments, environment_help
from roomcast.store_redis import RedisStore

from .lease import Lease
from .reaper import Reaper

log = logging.getLogger("roomcast.coordinator")
_COORDINATOR_SPECS = tuple(s for s in SPECS if s.env in {
    "REDIS_URL", "NODE_ID", "GATEWAY_HOST", "COORDINATOR_PORT", "COORDINATOR_LEASE_TTL", "REAPER_INTERVAL",
    "WEBSOCKET_HEARTBEAT_TIMEOUT", "PARTICIPANT_PRUNE_AFTER", "NODE_TTL", "ROOM_HISTORY_MAXLEN",
    "WEBSOCKET_ROOM_TTL", "WEBSOCKET_CONNECTION_TTL", "LOG_LEVEL"})


class CoordinatorMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.leader = Gauge("roomcast_coordinator_leader", "1 while this coordinator holds the lease.", registry=r)
        self.replicas = Gauge("roomcast_cluster_replicas", "Gateway replicas registered and alive.", registry=r)
        self.timeouts = Counter("roomcast_reaper_timeouts", "Sockets marked timeout by the reaper.", registry=r)
        self.pruned = Counter("roomcast_reaper_pruned", "Disconnected participants pruned.", registry=r)
        self.runs = Counter("roomcast_reaper_runs", "Reaper passes completed.", registry=r)
        self.redis_up = Gauge("roomcast_backend_up", "1 while Redis is reachable.", registry=r)


async def run(settings: Settings) -> int:
    assert settings.redis_url is not None
    metrics = CoordinatorMetrics()
    client = make_client(settings.redis_url)
    batcher = Batcher(client)
    store = RedisStore(batcher, history=settings.room_history, room_ttl_ms=settings.room_ttl_ms,
                       connection_ttl_ms=settings.connection_ttl_ms)
    reaper = Reaper(batcher, store, heartbeat_timeout_ms=settings.heartbeat_timeout_ms,
                    prune_after_ms=settings.participant_prune_ms, node_ttl_ms=settings.node_ttl_ms)
    lease = Lease(batcher, keys.REAPER_LEASE, settings.node_id, settings.lease_ttl_ms)
    state = {"redis": False}

    def metrics_route() -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, generate_latest(metrics.registry)

    http = await serve_http(settings.host, settings.coordinator_port, {
        "/healthz": lambda: (200, "text/plain", b"ok\n"),
        "/readyz": lambda: (200, "text/plain", b"ready\n") if state["redis"] else (503, "text/plain", b"redis down\n"),
        "/metrics": metrics_route,
    })
    log.info("coordinator %s on http://%s:%d (lease %s, ttl %d ms)", settings.node_id, settings.host,
             settings.coordinator_port, keys.REAPER_LEASE, settings.lease_ttl_ms)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # Check often enough that a timeout is noticed within a fraction of itself, and
    # that a standby takes over soon after the active one's lease lapses.
    interval = min(settings.reaper_interval_ms, settings.heartbeat_timeout_ms / 5, settings.lease_ttl_ms / 3) / 1000
    while not stop.is_set():
        try:
            await batcher.load_scripts() if not state["redis"] else None
            leader = await lease.tick()
            metrics.leader.set(1 if leader else 0)
            if leader:
                result = await reaper.run_once(int(time.time() * 1000))
                metrics.timeouts.inc(result.timed_out)
                metrics.pruned.inc(result.pruned)
                metrics.replicas.set(result.replicas)
                metrics.runs.inc()
            state["redis"] = True
        except (GatewayError, OSError, TimeoutError) as exc:
            if state["redis"]:
                log.warning("redis unavailable: %s", getattr(exc, "message", exc))
            state["redis"] = False
            lease.held = False
            metrics.leader.set(0)
        except Exception:
            log.exception("reaper pass failed")
            state["redis"] = False
        metrics.redis_up.set(1 if state["redis"] else 0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
    log.info("stopping")
    with contextlib.suppress(Exception):
        await lease.release()
    http.close()
    await client.aclose()
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coordinator",
        description="roomcast coordinator: leader-elected reaper for a gateway cluster (needs REDIS_URL).",
        epilog=environment_help(_COORDINATOR_SPECS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"roomcast {__version__}")
    parser.add_argument("command", nargs="?", default="run", choices=["run"], help="what to do (default: run)")
    add_arguments(parser, _COORDINATOR_SPECS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None and k != "command"}
    try:
        settings = Settings.load(os.environ, overrides)
    except SettingsError as exc:
        print(f"coordinator: {exc}", file=sys.stderr)
        return 2
    if settings.redis_url is None:
        print("coordinator: invalid REDIS_URL='': the coordinator needs Redis (set REDIS_URL)", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level,
                        format=f"%(asctime)s %(levelname)s {settings.node_id} %(name)s: %(message)s")
    import uvloop

    return uvloop.run(run(settings))


if __name__ == "__main__":
    sys.exit(main())
