"""Shared test harness: time unit, free ports, gateway processes and a protocol client.

Every wait in the tests derives from UNIT (scaled by ROOMCAST_TEST_TIME_SCALE on slow
machines) and waits for a condition, never a bare sleep used as synchronisation.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

# The throwaway servers live in loadtests/ (the benchmark uses them and must not import tests/);
# re-exported here under their old names.
from loadtests.services import PostgresServer as PostgresServer
from loadtests.services import RedisClusterServer as RedisClusterServer
from loadtests.services import RedisServer as RedisServer
from loadtests.services import _as_postgres as _as_postgres
from loadtests.services import _pg_bin as _pg_bin
from loadtests.services import stop_process as stop_process

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


async def ahttp_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    """`http_get` off the event loop, for async tests that keep sockets open meanwhile."""
    return await asyncio.to_thread(http_get, url, timeout)


def unique(prefix: str = "id") -> str:
    """A fresh id that is a valid device_id and room_id (so tests sharing a gateway never collide)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format -> {'name{label="v",...}': value} (labels as written)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        out[key] = float(value)
    return out


async def wait_for(
    predicate: Callable[[], Awaitable[bool]] | Callable[[], bool],
    timeout: float = 5 * UNIT,
    interval: float = 0.02 * UNIT,
    what: str = "condition",
) -> None:
    """Poll `predicate` (sync or async) until it is true; TimeoutError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached within {timeout:.1f}s")
        await asyncio.sleep(interval)


def wait_http_ready(proc: subprocess.Popen[bytes], url: str, what: str, log: Callable[[], str],
                    timeout: float) -> None:
    """Poll `url` until it answers 200; fail early (with the log) if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log()}")
        with contextlib.suppress(OSError):
            if http_get(url, timeout=0.5)[0] == 200:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready:\n{log()}")


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
        log = open(self.log_path, "ab")  # owned by the child process from here on
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
        assert self.proc is not None
        wait_http_ready(self.proc, self.http + "/readyz", f"gateway on {self.port}", self.log, timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 10 * UNIT) -> int | None:
        """SIGTERM, wait; SIGKILL if it hangs. Returns the exit code."""
        return stop_process(self.proc, timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def metrics(self, url: str | None = None) -> dict[str, float]:
        """Scrape /metrics (of the main port unless `url` is given) into a flat dict."""
        status, body = http_get(url or self.http + "/metrics")
        assert status == 200, (status, body)
        return parse_metrics(body)


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

    def start_pinging(self, interval: float = 0.4) -> asyncio.Task[None]:
        """Send a ping every `interval` seconds (for short heartbeat timeouts) until closed.
        Pongs are dropped so they do not pile up in the inbox."""

        async def run() -> None:
            with contextlib.suppress(ConnectionClosed, asyncio.CancelledError):
                while True:
                    await self.ws.send('{"type":"ping"}')
                    await asyncio.sleep(interval)

        task = asyncio.get_running_loop().create_task(run())
        self._pinger = task
        return task

    def _keep(self, msg: dict[str, Any]) -> bool:
        return not (msg.get("type") == "pong" and "re" not in msg)

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
            if self._keep(msg):
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

    async def drain(self, timeout: float = 0.2 * UNIT) -> list[dict[str, Any]]:
        """Everything queued or arriving within `timeout` of quiet; empties the inbox."""
        out, self.inbox = self.inbox, []
        while True:
            try:
                raw = await asyncio.wait_for(self.ws.recv(), timeout)
            except TimeoutError:
                return out
            out.append(orjson.loads(raw))

    @contextlib.asynccontextmanager
    async def keepalive(self, interval: float) -> AsyncIterator[None]:
        """Send `ping` every `interval` seconds in the background (the protocol heartbeat)."""

        async def beat() -> None:
            with contextlib.suppress(ConnectionClosed):
                while True:
                    await self.send({"type": "ping"})
                    await asyncio.sleep(interval)

        task = asyncio.get_running_loop().create_task(beat())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

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


# ---------------------------------------------------------------- cluster pieces


def make_tls_files(directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> dict[str, Path]:
    """A throwaway CA and a server certificate signed by it (SANs for `hosts`), made with the
    openssl command line; returns the paths as ca, cert and key."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (directory / n for n in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt"))
    ext = directory / "san.ext"
    sans = ",".join(f"IP:{h}" if h[0].isdigit() else f"DNS:{h}" for h in hosts)
    ext.write_text(f"subjectAltName={sans}\nbasicConstraints=CA:FALSE\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
        "-days", "2", "-subj", "/CN=roomcast test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(cert), "-days", "2", "-extfile", str(ext))
    return {"ca": ca, "cert": cert, "key": key}


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def redis_of_kind(kind: str) -> Iterator[RedisServer | RedisClusterServer]:
    """A fresh single Redis ("redis") or Redis Cluster of 3 primaries + 3 replicas ("redis-cluster")."""
    server: RedisServer | RedisClusterServer = RedisServer() if kind == "redis" else RedisClusterServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


REDIS_KINDS = ("redis", "redis-cluster")


@dataclass
class CoordinatorProcess:
    port: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> CoordinatorProcess:
        OUTPUT.mkdir(exist_ok=True)
        self.log_path = OUTPUT / f"coordinator-{self.port}.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "coordinator"], env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=ROOT)
        if wait:
            wait_http_ready(self.proc, self.http + "/healthz", "coordinator", self.log, 15 * UNIT)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def metric(self, name: str) -> float | None:
        _, body = http_get(self.http + "/metrics")
        for line in body.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def stop(self) -> None:
        stop_process(self.proc, 10)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Cluster:
    redis: RedisServer | RedisClusterServer
    gateways: list[GatewayProcess]
    coordinators: list[CoordinatorProcess]
    env: dict[str, str]

    def add_coordinator(self, node_id: str) -> CoordinatorProcess:
        env = dict(self.env, NODE_ID=node_id, COORDINATOR_PORT=str(free_port()))
        coord = CoordinatorProcess(int(env["COORDINATOR_PORT"]), env).start()
        self.coordinators.append(coord)
        return coord


@contextlib.contextmanager
def cluster(n_gateways: int = 3, n_coordinators: int = 1, extra_env: Mapping[str, str] | None = None,
            redis: RedisServer | RedisClusterServer | None = None) -> Iterator[Cluster]:
    """Redis (a single one, or the Redis Cluster given) + coordinators + gateways, all on
    127.0.0.1; everything stopped afterwards."""
    own_redis = redis is None
    server = redis or RedisServer().start()
    env = gateway_env(extra_env)
    env["REDIS_URL"] = server.url
    c = Cluster(server, [], [], env)
    try:
        for i in range(n_coordinators):
            c.add_coordinator(f"coord-{i}")
        for i in range(n_gateways):
            port = free_port()
            genv = dict(env, GATEWAY_PORT=str(port), NODE_ID=f"gw-{i}")
            c.gateways.append(GatewayProcess(port, genv).start(wait=False))
        for g in c.gateways:
            g.wait_ready()
        yield c
    finally:
        for g in c.gateways:
            g.stop()
        for co in c.coordinators:
            co.stop()
        if own_redis:
            server.stop()


class StallProxy:
    """A loopback TCP proxy (in its own thread) that can silently stall the connections it
    carries: bytes stop flowing both ways but nothing is closed, like a half-open link."""

    def __init__(self, target_port: int) -> None:
        import threading

        self.target_port = target_port
        self.port = free_port()
        self._stalled: set[int] = set()
        self._conns: list[int] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(5)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self._server = server
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = len(self._conns)
        self._conns.append(conn)
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while True:
                    data = await src.read(65536)
                    if not data:
                        break
                    while conn in self._stalled:  # noqa: ASYNC110 - polling a flag set from another thread
                        await asyncio.sleep(0.05)  # hold the bytes: a silent link
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(Exception):
                dst.close()

        await asyncio.gather(pump(reader, up_w), pump(up_r, writer))

    def stall_existing(self) -> None:
        """Stall every connection made so far; new ones flow normally."""
        self._stalled.update(self._conns)

    def close(self) -> None:
        def shutdown() -> None:
            self._server.close()
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            self._loop.call_later(0.1, self._loop.stop)

        self._loop.call_soon_threadsafe(shutdown)
        self._thread.join(5)
