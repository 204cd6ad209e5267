"""`coordinator` command.

    coordinator [run]        hold the lease; reaper, history flusher, cleanup jobs
    coordinator migrate      apply the Postgres schema migrations and exit
    coordinator forget-device DEVICE_ID    erase a device everywhere (GDPR)
    coordinator export-device DEVICE_ID    everything stored about a device, as JSON
    coordinator query NAME   run an analytics query on DATABASE_URL (`coordinator query -h`)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence

import asyncpg

from coordinator.erasure import export_device, forget_device
from roomcast import __version__
from roomcast.errors import GatewayError
from roomcast.history.migrate import MigrationError, migrate
from roomcast.privacy import Privacy
from roomcast.protocol import DEVICE_ID_RE
from roomcast.redis.batch import Batcher
from roomcast.redis.client import make_client
from roomcast.settings import SPECS, Settings, SettingsError, add_arguments, environment_help

from . import queries
from .service import Coordinator

log = logging.getLogger("roomcast.coordinator")
_COORDINATOR_ENV = {
    "REDIS_URL", "DATABASE_URL", "AUTO_MIGRATE", "NODE_ID", "COORDINATOR_HOST", "COORDINATOR_PORT",
    "COORDINATOR_LEASE_TTL", "REAPER_INTERVAL", "WEBSOCKET_HEARTBEAT_TIMEOUT", "PARTICIPANT_PRUNE_AFTER",
    "NODE_TTL", "ROOM_HISTORY_MAXLEN", "WEBSOCKET_ROOM_TTL", "WEBSOCKET_CONNECTION_TTL", "HISTORY_BATCH_ROWS",
    "HISTORY_FLUSH_INTERVAL", "HEARTBEAT_FLUSH_INTERVAL", "CONNECTION_RETENTION_DAYS", "ABANDONED_ROOM_AFTER",
    "CLEANUP_INTERVAL", "PERSONAL_DATA_RETENTION_DAYS", "PRIVACY_HASH_KEY", "PRIVACY_ENCRYPTION_KEYS", "LOG_LEVEL",
}
COORDINATOR_SPECS = tuple(s for s in SPECS if s.env in _COORDINATOR_ENV)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coordinator",
        description=__doc__,
        epilog=environment_help(COORDINATOR_SPECS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"roomcast {__version__}")
    add_arguments(parser, COORDINATOR_SPECS)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="hold the lease and run the reaper, flusher and cleanup jobs (default)")
    sub.add_parser("migrate", help="apply the schema migrations to DATABASE_URL and exit")
    queries.add_parser(sub)
    forget = sub.add_parser("forget-device", help="erase a device across Redis and Postgres (GDPR erasure)")
    forget.add_argument("device_id", metavar="DEVICE_ID")
    export = sub.add_parser("export-device", help="print everything stored about a device as JSON")
    export.add_argument("device_id", metavar="DEVICE_ID")
    return parser


def _fail(message: str) -> int:
    print(f"coordinator: {message}", file=sys.stderr)
    return 2


async def _run(settings: Settings) -> int:
    coordinator = Coordinator(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, coordinator.stop.set)
    return await coordinator.run()


async def _migrate(dsn: str) -> int:
    try:
        applied = await migrate(dsn)
    except MigrationError as exc:
        return _fail(str(exc))
    except OSError as exc:
        print(f"coordinator: cannot reach Postgres: {exc}", file=sys.stderr)
        return 1
    print(f"applied: {', '.join(applied)}" if applied else "schema up to date")
    return 0


async def _device_data(settings: Settings, command: str, device_id: str) -> int:
    """forget-device / export-device against whatever backends are configured."""
    if not DEVICE_ID_RE.fullmatch(device_id):
        return _fail(f"invalid DEVICE_ID={device_id!r}: must be 8-128 characters of [A-Za-z0-9._:-]")
    pool = None
    batcher = None
    try:
        if settings.database_url is not None:
            pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
        if settings.redis_url is not None:
            batcher = Batcher(make_client(settings.redis_url))
            await batcher.detect()  # a Redis Cluster: its keys are spread (roomcast/redis/keys.py)
        if command == "forget-device":
            report = await forget_device(device_id, pool=pool, batcher=batcher)
            print(json.dumps({"forgotten": device_id, **report.wire()}, indent=2))
        else:
            privacy = Privacy(settings.privacy_hash_key, settings.privacy_encryption_keys)
            data = await export_device(device_id, pool=pool, batcher=batcher, privacy=privacy)
            print(json.dumps(data, indent=2, ensure_ascii=False))
        return 0
    except (OSError, asyncpg.PostgresError, GatewayError) as exc:
        print(f"coordinator: {command} failed: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 1
    finally:
        if pool is not None:
            await pool.close()
        if batcher is not None:
            await batcher.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    command = args.command or "run"
    overrides = {k: v for k, v in vars(args).items() if v is not None and k != "command"}
    try:
        settings = Settings.load(os.environ, overrides)
    except SettingsError as exc:
        return _fail(str(exc))
    logging.basicConfig(level=settings.log_level,
                        format=f"%(asctime)s %(levelname)s {settings.node_id} %(name)s: %(message)s")
    import uvloop

    if command == "migrate":
        if settings.database_url is None:
            return _fail("invalid DATABASE_URL='': migrate needs DATABASE_URL")
        return uvloop.run(_migrate(settings.database_url))
    if command == "query":  # needs Postgres only, not Redis
        if settings.database_url is None:
            return _fail("invalid DATABASE_URL='': query needs DATABASE_URL")
        return uvloop.run(queries.run(settings.database_url, args))
    if command in ("forget-device", "export-device"):
        if settings.database_url is None and settings.redis_url is None:
            return _fail(f"{command} needs DATABASE_URL and/or REDIS_URL")
        return uvloop.run(_device_data(settings, command, args.device_id))
    if settings.redis_url is None:
        return _fail("invalid REDIS_URL='': the coordinator needs Redis (set REDIS_URL)")
    return uvloop.run(_run(settings))


if __name__ == "__main__":
    sys.exit(main())
