"""Small helpers for metrics shared by the gateway and the coordinator."""

from __future__ import annotations

import collections
from typing import Any


def set_bounded(gauge: Any, counts: collections.Counter[str], seen: set[str], top: int = 20) -> set[str]:
    """Set a one-label gauge from `counts`, keeping the label set bounded: the `top` most
    common values, the rest summed as "other". Label values that disappeared are removed.
    Returns the label values now set (pass it back as `seen` next time)."""
    ranked = counts.most_common()
    values = {label: float(n) for label, n in ranked[:top]}
    if len(ranked) > top:
        values["other"] = float(sum(n for _, n in ranked[top:]))
    for label in seen - set(values):
        gauge.remove(label)
    for label, n in values.items():
        gauge.labels(label).set(n)
    return set(values)


class RedirectsCollector:
    """`roomcast_redis_redirects_total{kind, node}`, read at scrape time from the Batcher's
    redirect counts (roomcast/redis/client_redirects.py): MOVED/ASK replies by the node that sent them.
    Register it on a registry: `registry.register(RedirectsCollector(batcher.redirects.counts))`."""

    NAME = "roomcast_redis_redirects"
    LABELS = ("kind", "node")
    HELP = ("MOVED and ASK replies from Redis Cluster nodes (slot map stale, or a slot migrating), "
            "by kind (moved, ask) and the node (host:port) that sent them.")

    def __init__(self, counts: dict[tuple[str, str], int]) -> None:
        self.counts = counts

    def describe(self) -> list[Any]:
        return []  # unchecked: the label values are only known at scrape time

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily(self.NAME, self.HELP, labels=list(self.LABELS))
        for (kind, node), n in sorted(self.counts.items()):
            family.add_metric([kind, node], float(n))
        yield family
