"""The processes a benchmark run owns: the gateway under test and the client processes.

Both are started here and stopped here, by pid: the gateway with SIGTERM (SIGKILL after a
grace period), the client processes by asking them to exit (terminate() after 5 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any

from . import procstat
from .workers import Control

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "test-output"
HOST = "127.0.0.1"
_SPAWN = multiprocessing.get_context("spawn")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


class GatewayProc:
    """`python -m gateway` on 127.0.0.1:<free port>, embedded mode, generous limits."""

    def __init__(self, extra_env: dict[str, str], tag: str, command: str | None = None) -> None:
        self.port = free_port()
        self.argv = shlex.split(command.replace("{python}", shlex.quote(sys.executable))) if command else \
            [sys.executable, "-m", "gateway"]
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("GATEWAY_", "WEBSOCKET_", "REDIS_", "DATABASE_"))}
        env.update({
            "GATEWAY_HOST": HOST,
            "GATEWAY_PORT": str(self.port),
            "PYTHONUNBUFFERED": "1",
            "LOG_LEVEL": "WARNING",
            "MAX_CONNECTIONS": "0",
            "MAX_CONNECTIONS_PER_DEVICE": "10000",
            "MAX_ROOMS_PER_CONNECTION": "10000",
            "RATE_MESSAGES_PER_SEC": "1000000",
            "RATE_MESSAGES_BURST": "1000000",
            # Cluster-wide admission limits (ignored by builds without them): every bench
            # socket comes from 127.0.0.1 and connects, creates and joins in a burst.
            "CONNECT_RATE_PER_ADDRESS": "1000000",
            "CONNECT_RATE_PER_DEVICE": "1000000",
            "ROOM_CREATE_RATE": "1000000",
            "JOIN_RATE": "1000000",
            "MAX_ROOMS_PER_DEVICE": "100000",
            "MAX_PARTICIPANTS_PER_ROOM": "1000000",
            "WEBSOCKET_HEARTBEAT_TIMEOUT": "600000",
            "HELLO_TIMEOUT": "60000",
        })
        env.update(extra_env)
        self.env = env
        self.log_path = OUTPUT / f"bench-gateway-{tag}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        OUTPUT.mkdir(exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, cwd=ROOT,
                                         stdout=log, stderr=subprocess.STDOUT)

    async def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}; see {self.log_path}")
            with contextlib.suppress(OSError):
                reader, writer = await asyncio.open_connection(HOST, self.port)
                writer.write(b"GET /readyz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                status = await asyncio.wait_for(reader.readline(), 2)
                writer.close()
                if b" 200 " in status:
                    return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"gateway not ready after {timeout}s; see {self.log_path}")

    async def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, wait (running the loop, so our own aborted sockets really close), then SIGKILL."""
        if self.proc is None or self.proc.poll() is not None:
            return
        await asyncio.sleep(0.01)
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.proc.wait, grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        with contextlib.suppress(OSError):
            if self.log_path.stat().st_size == 0:
                self.log_path.unlink()  # keep only logs that say something

    async def settle(self, quiet: float = 0.03, step: float = 0.25, timeout: float = 15.0) -> float:
        """Wait until the gateway's CPU use stays under `quiet` (fraction of a core) twice."""
        calm = 0
        started = time.monotonic()
        last = procstat.cpu_seconds(self.pid)
        while time.monotonic() - started < timeout and calm < 2:
            await asyncio.sleep(step)
            now = procstat.cpu_seconds(self.pid)
            calm = calm + 1 if now - last <= quiet * step else 0
            last = now
        return time.monotonic() - started


class Worker:
    def __init__(self, target: Callable[..., None], spec: dict[str, Any]) -> None:
        parent, child = _SPAWN.Pipe()
        self.proc: SpawnProcess = _SPAWN.Process(target=target, args=(child, spec), daemon=True)
        self.proc.start()
        child.close()
        self.ctl = Control(parent)

    def send(self, kind: str, payload: Any = None) -> None:
        with contextlib.suppress(OSError):
            self.ctl.send(kind, payload)

    def finish(self) -> None:
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)


@contextlib.contextmanager
def workers(target: Callable[..., None], specs: list[dict[str, Any]]) -> Iterator[list[Worker]]:
    started: list[Worker] = []
    try:
        for spec in specs:
            started.append(Worker(target, spec))
        yield started
    finally:
        for w in started:
            w.send("exit")
            w.send("stop")
        for w in started:
            w.finish()


def split(items: list[Any], parts: int) -> list[list[Any]]:
    parts = max(1, min(parts, len(items)))
    return [items[i::parts] for i in range(parts)]


# ---------------------------------------------------------------- cluster and flusher phases


def env_pairs(pairs: list[str] | None) -> dict[str, str]:
    """--gateway-env/--coord-env KEY=VALUE options as a dict."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"expected KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def coordinator_proc(tag: str, redis_url: str, database_url: str | None,
                     extra: dict[str, str] | None = None) -> GatewayProc:
    """`python -m coordinator` with the gateway process helper (env, SIGTERM by pid, /readyz)."""
    env = {"REDIS_URL": redis_url, "NODE_ID": f"bench-coord-{tag}"[:60]}
    if database_url:
        env["DATABASE_URL"] = database_url
    env.update(extra or {})
    proc = GatewayProc(env, tag, "{python} -m coordinator")
    proc.env["COORDINATOR_PORT"] = str(proc.port)
    proc.log_path = OUTPUT / f"bench-coordinator-{tag}.log"
    return proc


def gateway_procs(n: int, tag: str, redis_url: str, database_url: str | None,
                  gateway_cmd: str | None, extra: dict[str, str] | None = None) -> list[GatewayProc]:
    out = []
    for i in range(n):
        env = {"REDIS_URL": redis_url, "NODE_ID": f"bench-gw{i}"}
        if database_url:
            env["DATABASE_URL"] = database_url
        env.update(extra or {})
        out.append(GatewayProc(env, f"{tag}-gw{i}", gateway_cmd))
    return out
