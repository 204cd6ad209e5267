"""The flusher loop: take a batch from a HistorySource, write it to Postgres, then ack.

Batches are cut by size (`batch_rows`) and by time (`interval`); while Postgres is down
the batch is given back and retried with backoff, so the backlog waits in Redis (or in
memory, embedded) and drains afterwards. Same code in the coordinator and in an
embedded gateway.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from roomcast.errors import GatewayError
from roomcast.history.base import Batch, HistorySource
from roomcast.history.postgres import TRANSIENT, PostgresWriter

log = logging.getLogger("roomcast.flusher")


class FlusherMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.rows = Counter("roomcast_flush_rows", "Rows written to Postgres by the flusher, by table.", ["table"],
                            registry=r)
        self.batch_size = Histogram("roomcast_flush_batch_size", "Units (events + lifecycle records) per batch.",
                                    buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000), registry=r)
        self.lag = Histogram("roomcast_flush_lag_seconds", "Time from an event to its commit in Postgres.",
                             buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300), registry=r)
        self.backlog = Gauge("roomcast_flush_backlog", "Lifecycle records and rooms waiting to be flushed.",
                             registry=r)
        self.dead_letters = Counter("roomcast_flush_dead_letters", "History units parked in the dead-letter stream.",
                                    registry=r)
        self.failures = Counter("roomcast_flush_failures", "Batches that could not be written (retried).",
                                registry=r)
        self.db_up = Gauge("roomcast_postgres_up", "1 while the flusher can reach Postgres.", registry=r)


class Flusher:
    def __init__(self, source: HistorySource, writer: PostgresWriter, metrics: FlusherMetrics, *,
                 batch_rows: int = 1000, interval: float = 0.2, now: Callable[[], float] = time.time) -> None:
        self.source = source
        self.writer = writer
        self.metrics = metrics
        self.batch_rows = batch_rows
        self.interval = interval
        self.now = now

    async def run_once(self) -> int:
        """Flush one batch; return how many units it held. If the write fails (nothing was
        committed) the batch is given back before the error is raised."""
        batch = await self.source.take(self.batch_rows)
        if not len(batch) and not batch.rooms:
            return 0
        try:
            result = await self.writer.write(batch)
        except Exception:
            # Any failure, not only a lost connection: a batch taken and not given back is
            # lost (the memory outbox) or forgotten (rooms popped from ws:flush:dirty).
            await self.source.give_back(batch)
            raise
        await self.source.commit(batch, result)
        if result.dead:
            for d in result.dead:
                log.error("dead letter from %s (%s): %s", d.source, d.ref, d.error)
            await self.source.dead_letter(result.dead)
            self.metrics.dead_letters.inc(len(result.dead))
        for table, n in result.rows.items():
            self.metrics.rows.labels(table).inc(n)
        self.metrics.batch_size.observe(len(batch))
        self._observe_lag(batch)
        return len(batch)

    def _observe_lag(self, batch: Batch) -> None:
        now = self.now()
        for rec in batch.lifecycle:
            with _quiet():
                self.metrics.lag.observe(max(0.0, now - int(rec.fields["ts"]) / 1000))
        for chunk in batch.rooms:
            if chunk.events:
                # One sample per chunk: the oldest event of the room in this batch.
                with _quiet():
                    first = chunk.events[0][1]
                    i = first.rfind(b'"ts":')
                    ms = int(first[i + 5 : first.index(b"}", i)])
                    self.metrics.lag.observe(max(0.0, now - ms / 1000))

    async def run(self, active: Callable[[], bool] = lambda: True) -> None:
        """Flush while `active()` (e.g. holding the lease); back off while Postgres is down."""
        delay = self.interval
        last_probe = 0.0
        while True:
            if not active():
                await asyncio.sleep(self.interval)
                continue
            probing = False
            try:
                n = await self.run_once()
                if not n and time.monotonic() - last_probe >= max(1.0, self.interval):
                    # Nothing to write: still find out whether Postgres answers, so that
                    # roomcast_postgres_up shows an outage on an idle cluster too.
                    probing, last_probe = True, time.monotonic()
                    await self.writer.ping()
                if n or probing:  # only what reached Postgres says it is up
                    self.metrics.db_up.set(1)
                    delay = self.interval
                if n < self.batch_rows:
                    await asyncio.sleep(self.interval)  # let the next batch fill up
                with _quiet():
                    self.metrics.backlog.set(await self.source.backlog())
            except TRANSIENT as exc:
                self.metrics.db_up.set(0)
                if not probing:  # a failed probe wrote no batch
                    self.metrics.failures.inc()
                with _quiet():  # the backlog grows during an outage: keep the gauge live
                    self.metrics.backlog.set(await self.source.backlog())
                log.warning("postgres unavailable (%s); retrying in %.1fs, nothing is lost", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except asyncpg.PostgresError as exc:
                self.metrics.failures.inc()
                log.error("flush failed: %s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except GatewayError:
                raise  # Redis trouble: the caller pauses the flusher
            except Exception:
                # Never die silently (conventions 11): an unexpected error is logged, counted
                # and retried like any failed batch, so an alert on failures sees it.
                self.metrics.failures.inc()
                log.exception("flush failed unexpectedly; retrying in %.1fs", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], (ValueError, KeyError, IndexError))  # type: ignore[arg-type]
