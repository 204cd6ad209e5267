"""What the benchmark reads from /proc: a process's CPU time and RSS, the machine's load, and a
meter of the CPU several processes spend over a window (CpuMeter)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) in seconds of the whole process (all threads), from /proc/<pid>/stat."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces; the fields after its ')' are fixed.
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK  # fields 14 and 15 of proc(5)


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process, in seconds."""
    user, system = cpu_times(pid)
    return user + system


def _stat_fields(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2 :].split()  # fields from 3 (state) on


def children(pid: int) -> list[int]:
    """Live processes whose parent is `pid` (a scan of /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(_stat_fields(int(entry))[1]) == pid:
                    out.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
    return out


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a server that forks workers (postgres): the parent's utime+stime, the
    cutime+cstime of children it has already reaped, and the utime+stime of its live
    children. Deltas of this are exact as long as no child exits unreaped in between."""
    f = _stat_fields(pid)
    total = sum(int(x) for x in f[11:15])  # utime stime cutime cstime
    for child in children(pid):
        try:
            c = _stat_fields(child)
        except OSError:
            continue
        total += int(c[11]) + int(c[12])
    return total / CLK_TCK


def syscalls(pid: int) -> tuple[int, int]:
    """(read-like, write-like) system calls the process has made so far (/proc/<pid>/io syscr,
    syscw): socket writes per delivery show how far a server coalesces its writes."""
    counts = dict(line.split(": ", 1) for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(counts["syscr"]), int(counts["syscw"])


def status_kib(pid: int, key: str = "VmRSS") -> int:
    """A `kB` line of /proc/<pid>/status (VmRSS, VmHWM, RssAnon…) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs, from the first line of /proc/stat."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)  # idle + iowait
    total = sum(parts[:8])  # guest time is already counted in user
    return total - idle, total


def busy_cores(before: tuple[int, int], after: tuple[int, int], ncpu: int) -> float:
    """How many CPUs were busy on average between two `machine_jiffies()` readings."""
    total = after[1] - before[1]
    return ncpu * (after[0] - before[0]) / total if total > 0 else 0.0


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _git(root: Path, *args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip()


def machine_info(root: Path) -> dict[str, Any]:
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    dirty = _git(root, "status", "--porcelain", "--", "gateway", "roomcast")
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "mem_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "websockets": _version("websockets"),
        "uvloop": _version("uvloop"),
        "orjson": _version("orjson"),
        "git_rev": _git(root, "rev-parse", "--short", "HEAD"),
        "gateway_tree_dirty": dirty.splitlines() if dirty else [],
        "fd_limit": _fd_limit(),
    }


def _fd_limit() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class CpuMeter:
    """utime+stime deltas of several processes (tree=True: a forking server, e.g. postgres).
    `sys` holds the stime part (processes without tree=True only)."""

    def __init__(self, procs: dict[str, tuple[int, bool]]) -> None:
        self.procs = procs
        self.t0 = 0.0
        self.start: dict[str, tuple[float, float]] = {}
        self.sys: dict[str, float] = {}

    def _read(self) -> dict[str, tuple[float, float]]:
        out = {}
        for name, (pid, tree) in self.procs.items():
            out[name] = (tree_cpu_seconds(pid), 0.0) if tree else cpu_times(pid)
        return out

    def begin(self) -> None:
        self.t0 = time.monotonic()
        self.start = self._read()

    def end(self) -> tuple[dict[str, float], float]:
        now = self._read()
        self.sys = {k: now[k][1] - self.start[k][1] for k, (_, tree) in self.procs.items() if not tree}
        return {k: sum(now[k]) - sum(self.start[k]) for k in now}, time.monotonic() - self.t0

