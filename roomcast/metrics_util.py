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
