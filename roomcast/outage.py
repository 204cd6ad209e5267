"""Logging a backend outage: one line when it starts, a summary now and then while it
lasts, one line when it ends; never a line (or a traceback) per failed attempt."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

SUMMARY_EVERY_S = 30.0


def describe(error: object) -> str:
    """A short reason: a GatewayError's message, an exception's text, or its type."""
    message = getattr(error, "message", None)
    if isinstance(message, str) and message:
        return message
    text = str(error)
    return text or type(error).__name__


class OutageLog:
    def __init__(self, log: logging.Logger, what: str, summary_every_s: float = SUMMARY_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log = log
        self.what = what
        self.summary_every_s = summary_every_s
        self.clock = clock
        self.down_since: float | None = None
        self.failures = 0
        self.last_error = ""
        self._next_summary = 0.0

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def failed(self, error: object, consequence: str = "") -> None:
        """One failed attempt. Logs only the first of an outage, then a periodic summary."""
        now = self.clock()
        self.failures += 1
        self.last_error = describe(error)
        if self.down_since is None:
            self.down_since = now
            self.failures = 1
            self._next_summary = now + self.summary_every_s
            self.log.warning("%s unavailable (%s)%s", self.what, self.last_error,
                             f": {consequence}" if consequence else "")
        elif now >= self._next_summary:
            self._next_summary = now + self.summary_every_s
            self.log.warning("%s still unavailable after %.0fs (%d failed attempts; last: %s)", self.what,
                             now - self.down_since, self.failures, self.last_error)

    def recovered(self, detail: str = "") -> float | None:
        """The backend answers again: log how long it was gone (once); None if it was not."""
        if self.down_since is None:
            return None
        lasted = self.clock() - self.down_since
        self.down_since = None
        self.log.info("%s is back after %.1fs%s", self.what, lasted, f": {detail}" if detail else "")
        return lasted
