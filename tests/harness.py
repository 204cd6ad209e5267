"""Shared test harness: time unit, free ports, gateway processes and a protocol client.

Every wait in the tests derives from UNIT (scaled by ROOMCAST_TEST_TIME_SCALE on slow
machines) and waits for a condition, never a bare sleep used as synchronisation.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

ROOT = Path(__file__).resolve().parent.parent
UNIT = float(os.environ.get("ROOMCAST_TEST_TIME_SCALE", "1.0"))  # seconds
OUTPUT = ROOT / "test-output"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@dataclass
class GatewayProcess:
    """A `python -m gateway` child process bound to 127.0.0.1 on its own port."""

    port: int
    env: dict[str, str]
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> GatewayProcess:
        OUTPUT.mkdir(exist_ok=True)
        self.log_path = OUTPUT / f"gateway-{self.port}.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", *self.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 15 * UNIT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError):
                status, _ = http_get(self.http + "/readyz", timeout=0.5)
                if status == 200:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"gateway on {self.port} not ready:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 10 * UNIT) -> int | None:
        """SIGTERM, wait; SIGKILL if it hangs. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def gateway_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "WEBSOCKET_", "REDIS_URL", "DATABASE_URL"))}
    env["GATEWAY_HOST"] = "127.0.0.1"
    env["PYTHONUNBUFFERED"] = "1"
    env["LOG_LEVEL"] = "INFO"
    if extra:
        env.update(extra)
    return env


@contextlib.contextmanager
def gateway(extra_env: Mapping[str, str] | None = None, args: list[str] | None = None) -> Iterator[GatewayProcess]:
    port = free_port()
    env = gateway_env(extra_env)
    env["GATEWAY_PORT"] = str(port)
    gw = GatewayProcess(port, env, list(args or []))
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


class Client:
    """A thin protocol client for tests: send dicts, await typed messages."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.inbox: list[dict[str, Any]] = []
        self._next_id = 0
        self.welcome: dict[str, Any] | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, url: str, **kwargs: Any) -> AsyncIterator[Client]:
        async with connect(url, compression=None, ping_interval=None, max_size=2**24, **kwargs) as ws:
            yield cls(ws)

    def next_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def send(self, msg: dict[str, Any] | str | bytes) -> None:
        if isinstance(msg, dict):
            msg = orjson.dumps(msg).decode()
        await self.ws.send(msg)

    async def recv(self, timeout: float = 5 * UNIT) -> dict[str, Any]:
        if self.inbox:
            return self.inbox.pop(0)
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        return orjson.loads(raw)  # type: ignore[no-any-return]

    async def expect(self, timeout: float = 5 * UNIT, **match: Any) -> dict[str, Any]:
        """Next message matching all given fields; others stay queued in order."""
        for i, msg in enumerate(self.inbox):
            if all(msg.get(k) == v for k, v in match.items()):
                return self.inbox.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no message matching {match}; queued: {self.inbox[-5:]}")
            raw = await asyncio.wait_for(self.ws.recv(), left)
            msg = orjson.loads(raw)
            if all(msg.get(k) == v for k, v in match.items()):
                return msg  # type: ignore[no-any-return]
            self.inbox.append(msg)

    async def request(self, msg: dict[str, Any], timeout: float = 5 * UNIT) -> dict[str, Any]:
        """Send with a fresh id and return the direct reply (re == id)."""
        msg = dict(msg)
        msg["id"] = self.next_id()
        await self.send(msg)
        return await self.expect(timeout, re=msg["id"])

    async def hello(self, device_id: str, **extra: Any) -> dict[str, Any]:
        reply = await self.request({"type": "hello", "device_id": device_id, **extra})
        assert reply["type"] == "welcome", reply
        self.welcome = reply
        return reply

    async def events(self, room_id: str, n: int, timeout: float = 5 * UNIT) -> list[dict[str, Any]]:
        out = []
        for _ in range(n):
            out.append(await self.expect(timeout, type="event", room_id=room_id))
        return out

    async def closed(self, timeout: float = 5 * UNIT) -> int | None:
        """Read until the server closes; return the close code."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("socket still open")
                raw = await asyncio.wait_for(self.ws.recv(), left)
                self.inbox.append(orjson.loads(raw))
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd is not None else None
