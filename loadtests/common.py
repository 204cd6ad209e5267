"""What the benchmark phases share (bench.py, cluster.py, flusher.py, peers/): the publisher of
bench events, the statistics helpers, the profiler start/stop and the recording of a phase's
medians. Imports no phase module, so none of them
forms an import cycle through it."""

from __future__ import annotations

import asyncio
import contextlib
import math
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .wsclient import Member, client_frame

BENCH_ID0 = 1_000_000_000  # request ids of bench events; replies below it go to `request()`


# ---------------------------------------------------------------- the publisher


class Publisher(Member):
    """The room's host: publishes bench events and, being a member, receives them too."""

    def setup(self, room_id: str, event_bytes: int) -> None:
        self.room_id = room_id.encode()
        # The payload {"t":<19 digits>,"pad":"…"} is about `event_bytes` long as JSON.
        self.pad = b"x" * max(0, event_bytes - 36)
        self.sent = self.acked = self.refused = 0
        self.last_refusal: dict[str, Any] | None = None
        self.pumping = False
        self.deadline = 0.0
        self.all_acked: asyncio.Future[None] | None = None

    def publish(self) -> None:
        self.sent += 1
        self.write(client_frame(
            b'{"type":"event","id":%d,"room_id":"%s","event_type":"bench","payload":{"t":%d,"pad":"%s"}}'
            % (BENCH_ID0 + self.sent, self.room_id, time.monotonic_ns(), self.pad)))

    def on_reply(self, message: dict[str, Any]) -> None:
        re = message.get("re")
        if not isinstance(re, int) or re < BENCH_ID0:
            super().on_reply(message)
            return
        if message.get("type") == "ack":
            self.acked += 1
        else:
            self.refused += 1
            self.last_refusal = message
        if self.pumping:
            if time.monotonic() < self.deadline:
                self.publish()
            else:
                self.pumping = False
        if self.all_acked is not None and self.acked + self.refused >= self.sent and not self.all_acked.done():
            self.all_acked.set_result(None)

    async def run_rate(self, rate: float, duration: float) -> dict[str, Any]:
        """Publish rate*duration events on a fixed schedule (late ones go at once)."""
        total = max(1, round(rate * duration))
        start = time.monotonic()
        max_behind = 0
        while self.sent < total and not self.closed.done():
            due = min(total, int((time.monotonic() - start) * rate) + 1)
            max_behind = max(max_behind, due - self.sent)
            while self.sent < due:
                self.publish()
            # At least 1 ms: uvloop rounds shorter timers to 0, and the loop would spin.
            await asyncio.sleep(max(0.001, start + self.sent / rate - time.monotonic()))
        return {"max_behind": max_behind, "publish_s": time.monotonic() - start}

    async def run_window(self, window: int, duration: float) -> dict[str, Any]:
        """Keep `window` events in flight (one more per ack) for `duration` seconds."""
        start = time.monotonic()
        self.deadline = start + duration
        self.pumping = True
        for _ in range(window):
            self.publish()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.closed), duration)
        self.pumping = False
        return {"window": window, "publish_s": time.monotonic() - start}

    async def wait_acks(self, timeout: float) -> None:
        self.all_acked = asyncio.get_running_loop().create_future()
        if self.acked + self.refused >= self.sent:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.all_acked, timeout)


# ---------------------------------------------------------------- statistics


def percentile(sorted_values: list[int] | list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return math.nan
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return float(sorted_values[k])


def median_of(runs: list[dict[str, Any]], key: str) -> Any:
    values = [r[key] for r in runs if isinstance(r.get(key), int | float) and not isinstance(r.get(key), bool)]
    values = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(values) if values else None


def start_profiler(pid: int, path: str, duration: float) -> subprocess.Popen[bytes] | None:
    """py-spy (Python stacks, wall-clock samples of the busy thread) or, for a `.data` path,
    perf (CPU-clock samples with kernel stacks) on the gateway for about `duration` seconds."""
    seconds = max(1, int(duration) - 1)
    if path.endswith(".data"):
        perf = shutil.which("perf")
        if perf is None:
            print("perf not found; profiling skipped", file=sys.stderr)
            return None
        return subprocess.Popen([perf, "record", "-F", "999", "-g", "-p", str(pid), "-o", path, "--",
                                 "sleep", str(seconds)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("py-spy not found (pip install py-spy); profiling skipped", file=sys.stderr)
        return None
    fmt = {".txt": "raw", ".folded": "raw", ".json": "speedscope"}.get(Path(path).suffix, "flamegraph")
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "250",
                             "--format", fmt, "--output", path], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish_profiler(spy: subprocess.Popen[bytes], duration: float) -> None:
    try:
        _, err = spy.communicate(timeout=duration + 30)
    except subprocess.TimeoutExpired:
        spy.kill()
        _, err = spy.communicate()
    if spy.returncode:
        print(f"py-spy failed ({spy.returncode}): {err.decode(errors='replace')[-500:]}", file=sys.stderr)


# ---------------------------------------------------------------- reporting of the cluster and flusher phases


def record_medians(report: dict[str, Any], phase: str, runs: list[dict[str, Any]],
                   headlines: list[tuple[str, str, str]], title: str) -> None:
    """The medians of a phase's runs (its headline keys) into the report, with its title."""
    med: dict[str, Any] = {k: median_of(runs, k) for k, _, _ in headlines}
    med["all_ok"] = all(r["ok"] for r in runs)
    if any("gaps_before_bench" in r for r in runs):  # a correctness failure outside the window
        med["setup_gaps"] = sum(r.get("gaps_before_bench", 0) for r in runs)
    if all("kept_up" in r for r in runs):
        med["all_kept_up"] = all(r["kept_up"] for r in runs)
    report["medians"][phase] = med
    report.setdefault("titles", {})[phase] = title
    report.setdefault("headlines", {})[phase] = headlines


def summary_line(r: dict[str, Any], keys: list[tuple[str, str, str]]) -> str:
    """One run as "label value, …, ok=…" for the progress output."""
    parts = []
    for key, label, fmt in keys:
        v = r.get(key)
        parts.append(f"{label} {'n/a' if v is None else format(v, fmt)}")
    return ", ".join(parts) + f", ok={r['ok']}" + (f" kept_up={r['kept_up']}" if "kept_up" in r else "")
