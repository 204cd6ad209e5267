"""REDIS_BATCH_WINDOW: an idle batcher lets calls of the next few ms join its first batch, on a
real single Redis and a real Redis Cluster; every call still gets its own reply, in order."""

from __future__ import annotations

import asyncio

import pytest

from gateway.backend import RedisLink
from gateway.metrics import Metrics
from roomcast.settings import Settings, SettingsError
from roomcast.store.redis import RedisStore
from tests.harness import REDIS_KINDS, redis_of_kind
from tests.integration.test_redis_functions import make_room, publish, store_on


async def until_idle(store: RedisStore) -> None:
    """create_room's fire-and-forget index updates may still be in flight on a node's lane:
    while one is, a call waits for that lane instead of the window."""
    for _ in range(500):
        if store.b.idle:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the batcher did not become idle in 5 s")


async def publish_over_ticks(store: object, room: str, n: int) -> list[int]:
    """n publishes, each made a few loop ticks after the one before (never in the same tick)."""
    calls = []
    for i in range(n):
        calls.append(asyncio.ensure_future(publish(store, room, i)))  # type: ignore[arg-type]
        for _ in range(3):
            await asyncio.sleep(0)
    return list(await asyncio.gather(*calls))


@pytest.mark.parametrize("kind", REDIS_KINDS)
async def test_calls_within_the_window_share_one_batch(kind: str) -> None:
    with redis_of_kind(kind) as server:
        async with store_on(server) as store:
            await make_room(store, "win-room")
            # A window far longer than the few loop ticks between the calls: one batch.
            store.b.window = 0.5
            await until_idle(store)
            before = store.b.batches
            seqs = await publish_over_ticks(store, "win-room", 6)
            assert store.b.batches - before == 1
            first = seqs[0]
            assert seqs == list(range(first, first + 6))  # each call its own reply, in call order
            # No window: the first call leaves in its own tick's batch, without the later ones.
            store.b.window = 0.0
            before = store.b.batches
            seqs = await publish_over_ticks(store, "win-room", 4)
            assert store.b.batches - before > 1
            assert seqs == list(range(first + 6, first + 10))


async def test_the_setting_reaches_the_gateways_batcher() -> None:
    settings = Settings.load({"REDIS_URL": "redis://127.0.0.1:1/0", "REDIS_BATCH_WINDOW": "3"})
    assert settings.redis_batch_window_ms == 3
    link = RedisLink(settings, Metrics())
    try:
        assert link.batcher.window == 0.003
    finally:
        await link.batcher.aclose()
    assert Settings.load({}).redis_batch_window_ms == 0  # off unless asked for
    with pytest.raises(SettingsError, match="REDIS_BATCH_WINDOW"):
        Settings.load({"REDIS_BATCH_WINDOW": "51"})
