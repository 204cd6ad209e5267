"""`gateway` command: parse flags and environment, then serve until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Sequence

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from roomcast import __version__
from roomcast.http_mini import serve_http
from roomcast.settings import Settings, SettingsError, add_arguments, environment_help

from .api import load_keys
from .auth import KeyFileError, Verifier
from .backend import open_node
from .node import Node
from .server import Gateway

log = logging.getLogger("roomcast")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="roomcast WebSocket gateway for multiplayer game rooms (protocol v1 at /ws).",
        epilog=environment_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"roomcast {__version__}")
    add_arguments(parser)
    return parser


async def serve(settings: Settings) -> int:
    async with open_node(settings) as node:
        return await _serve(settings, node)


async def _serve(settings: Settings, node: Node) -> int:
    gateway = Gateway(settings, node)
    await gateway.start()
    metrics_http = None
    if settings.metrics_port:
        # Served on the event loop, like /metrics on the main port, so the scrape hooks that
        # set gauges (roomcast_rooms{status}) run here too and never race the loop's state.
        def metrics_route() -> tuple[int, str, bytes]:
            node.metrics.refresh()
            return 200, CONTENT_TYPE_LATEST, generate_latest(node.metrics.registry)

        metrics_http = await serve_http(settings.host, settings.metrics_port, {"/metrics": metrics_route})
    mode = "cluster mode via Redis" if settings.redis_url else "embedded mode: in-memory state"
    log.info("gateway %s listening on ws://%s:%d/ws (%s)", settings.node_id, settings.host, gateway.port, mode)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: readiness off, closing %d sockets (%s)", len(node.sessions),
             f"1012 over {settings.drain_window_ms} ms" if settings.drain_window_ms else "1001")
    await gateway.stop()
    if metrics_http is not None:
        metrics_http.close()
    log.info("stopped")
    return 0


def tune_gc() -> None:
    """Objects that live as long as the process (modules, settings, the loop) are frozen out
    of the cyclic collector, and young collections run less often: a gateway holds many
    long-lived objects per socket, and scanning them on every few hundred allocations
    showed up as a fifth of connect CPU. Reference counting still frees almost everything."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = Settings.load(os.environ, overrides)
    except SettingsError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    try:
        Verifier.from_settings(settings)  # unreadable or unusable key files stop start-up here
    except KeyFileError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    try:
        load_keys(settings)  # SERVER_API_KEYS_FILE: unreadable or bad, start-up stops (never showing a secret)
    except (OSError, ValueError) as exc:
        print(f"gateway: SERVER_API_KEYS_FILE: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level,
        format=f"%(asctime)s %(levelname)s {settings.node_id} %(name)s: %(message)s",
    )
    if settings.log_level != "DEBUG":
        # websockets logs every connection at INFO; that is per-socket noise here.
        logging.getLogger("websockets").setLevel(logging.WARNING)
    tune_gc()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep running without it
        return asyncio.run(serve(settings))
    return uvloop.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
