"""`gateway` command: parse flags and environment, then serve until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from prometheus_client import start_http_server

from roomcast import __version__
from roomcast.settings import Settings, SettingsError, add_arguments, environment_help

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
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.host, registry=node.metrics.registry)
    mode = "cluster mode via Redis" if settings.redis_url else "embedded mode: in-memory state"
    log.info("gateway %s listening on ws://%s:%d/ws (%s)", settings.node_id, settings.host, gateway.port, mode)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: readiness off, closing %d sockets with 1001", len(node.sessions))
    await gateway.stop()
    log.info("stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = Settings.load(os.environ, overrides)
    except SettingsError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level,
        format=f"%(asctime)s %(levelname)s {settings.node_id} %(name)s: %(message)s",
    )
    if settings.log_level != "DEBUG":
        # websockets logs every connection at INFO; that is per-socket noise here.
        logging.getLogger("websockets").setLevel(logging.WARNING)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep running without it
        return asyncio.run(serve(settings))
    return uvloop.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
