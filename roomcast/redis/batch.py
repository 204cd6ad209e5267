"""Batch Redis commands: calls made in the same loop tick go out as one pipeline.

Calls are executed in the order they were made, one pipeline in flight at a time, so a
socket's requests keep their order while many sockets share each round trip
(conventions 8). A connection failure fails every call of the batch with `unavailable`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from roomcast.errors import ErrorCode, GatewayError

log = logging.getLogger("roomcast.redis")

Op = Callable[[Pipeline], Any]
UNAVAILABLE = "redis unavailable; retry"


def cmd(name: str, *args: Any, **kwargs: Any) -> Op:
    """An op that adds one named redis-py command to the pipeline."""
    return lambda pipe: getattr(pipe, name)(*args, **kwargs)


class Script:
    """A Lua script run by EVALSHA; loaded at start and again if Redis forgot it."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


class Batcher:
    def __init__(self, client: Redis, max_batch: int = 512) -> None:
        self.client = client
        self.max_batch = max_batch
        self._queue: list[tuple[Op, asyncio.Future[Any]]] = []
        self._running = False
        self.batches = 0
        self.commands = 0
        self.on_batch: Callable[[int, float], None] | None = None
        self.scripts: list[Script] = []

    def register(self, source: str) -> Script:
        script = Script(source)
        self.scripts.append(script)
        return script

    async def load_scripts(self) -> None:
        for script in self.scripts:
            await self.client.script_load(script.source)

    def call(self, op: Op) -> asyncio.Future[Any]:
        """Queue one command (added to the pipeline by `op`); the future gets its result."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((op, fut))
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain())
        return fut

    def eval(self, script: Script, keys: list[str], args: list[Any]) -> asyncio.Future[Any]:
        """Queue one script run; the future gets its reply."""
        return self.call(lambda pipe: pipe.evalsha(script.sha, len(keys), *keys, *args))

    async def _drain(self) -> None:
        try:
            await asyncio.sleep(0)  # let this tick's callers join the batch
            while self._queue:
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
                await self._run(batch)
        finally:
            self._running = False

    async def _execute(self, batch: list[tuple[Op, asyncio.Future[Any]]]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for op, _ in batch:
            op(pipe)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        return results

    async def _run(self, batch: list[tuple[Op, asyncio.Future[Any]]]) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            results = await self._execute(batch)
            missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            if missing:
                # Redis restarted and forgot our scripts: load them and rerun those calls.
                await self.load_scripts()
                again = await self._execute([batch[i] for i in missing])
                for i, r in zip(missing, again, strict=True):
                    results[i] = r
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            # Not a warning: the owner of the connection (gateway, coordinator) logs the outage once.
            log.debug("redis batch of %d failed: %s", len(batch), exc)
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(GatewayError(ErrorCode.UNAVAILABLE, UNAVAILABLE))
                    fut.exception()  # fire-and-forget calls (index updates) need not be awaited
            return
        except RedisError as exc:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
                    fut.exception()
            return
        self.batches += 1
        self.commands += len(batch)
        if self.on_batch is not None:
            self.on_batch(len(batch), loop.time() - started)
        for (_, fut), result in zip(batch, results, strict=True):
            if fut.done():
                continue
            if isinstance(result, Exception):
                fut.set_exception(result)
                if not isinstance(result, ResponseError):
                    fut.exception()
            else:
                fut.set_result(result)
