"""Throwaway servers the benchmark and the tests start: `redis-server` (optionally TLS-only and
with a password) and a Postgres cluster (initdb), each on a free 127.0.0.1 port and stopped by
pid. tests/harness.py re-exports these classes under the same names."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "test-output"
# Waits scale like the tests' UNIT (tests/harness.py) on a slow machine.
TIME_SCALE = float(os.environ.get("ROOMCAST_TEST_TIME_SCALE", "1.0"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stop_process(proc: subprocess.Popen[Any] | None, timeout: float) -> int | None:
    """SIGTERM, wait up to `timeout`; SIGKILL if it hangs. Returns the exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@dataclass
class RedisServer:
    """An ephemeral `redis-server` on a free 127.0.0.1 port (no persistence). It can be
    stopped and started again on the same port, for outage tests. With `tls` (the files of
    `make_tls_files`) it speaks only TLS on that port; with `password` it requires AUTH."""

    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    tls: dict[str, Path] | None = None
    password: str | None = None
    extra: tuple[str, ...] = ()  # more redis-server arguments (a cluster node's)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls is None:
            return f"redis://{auth}127.0.0.1:{self.port}/0"
        return (f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls['ca']}"
                "&ssl_cert_reqs=required&ssl_check_hostname=true")

    def start(self) -> RedisServer:
        if not self.port:
            self.port = free_port()
        OUTPUT.mkdir(exist_ok=True)
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--protected-mode", "no", "--logfile", str(OUTPUT / f"redis-{self.port}.log")]
        if self.tls is not None:
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls["cert"]),
                     "--tls-key-file", str(self.tls["key"]), "--tls-ca-cert-file", str(self.tls["ca"]),
                     "--tls-auth-clients", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        args += list(self.extra)
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10 * TIME_SCALE
        while time.monotonic() < deadline:
            with contextlib.suppress(subprocess.TimeoutExpired):
                if self.cli("PING") in ("PONG", "NOAUTH Authentication required."):
                    return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise TimeoutError(f"redis-server on {self.port} did not start")

    def stop(self) -> None:
        stop_process(self.proc, 5)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL (a crash, for failover tests)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def cli(self, *args: str) -> str:
        cmd = ["redis-cli", "-p", str(self.port)]
        if self.tls is not None:
            cmd += ["--tls", "--cacert", str(self.tls["ca"])]
        if self.password:
            cmd += ["--no-auth-warning", "-a", self.password]
        out = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=10)
        return out.stdout.strip()


def free_cluster_port(taken: set[int]) -> int:
    """A free 127.0.0.1 port below 55536 whose cluster bus port (port + 10000) is free too."""
    import random

    for _ in range(1000):
        port = random.randrange(20000, 55000)
        if port in taken or port + 10000 in taken:
            continue
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


@dataclass
class RedisClusterServer:
    """A throwaway Redis Cluster: `primaries` primaries with `replicas` replicas each, every
    node a `redis-server --cluster-enabled yes` on a free 127.0.0.1 port below 55536 (the bus
    is on port + 10000), its dir (nodes.conf) in a temporary folder, joined with
    `redis-cli --cluster create`, stopped by pid. `url` names one node, as a user's would."""

    primaries: int = 3
    replicas: int = 1
    node_timeout_ms: int = 2000
    nodes: list[RedisServer] = field(default_factory=list)
    base: Path | None = None
    entry: int = 0  # the node `url` names
    tls: dict[str, Path] | None = None  # TLS only (clients, the cluster bus, replication)
    password: str | None = None
    extra: tuple[str, ...] = ()  # more redis-server arguments for every node

    @property
    def url(self) -> str:
        return self.nodes[self.entry].url

    @property
    def port(self) -> int:
        """The port of the node `url` names."""
        return self.nodes[self.entry].port

    def cli(self, *args: str) -> str:
        """A key command, sent to a running node and redirected (`redis-cli -c`) to its owner."""
        node = next(n for n in self.nodes if n.proc is not None)
        return node.cli("-c", *args)

    def cli_all(self, *args: str) -> list[str]:
        """A server command on every running node."""
        return [n.cli(*args) for n in self.nodes if n.proc is not None]

    def keys(self) -> dict[int, list[str]]:
        """Every key of every running primary, by the primary's port."""
        return {n.port: n.cli("--scan").split() for n in self.primary_nodes()}

    def start(self) -> RedisClusterServer:
        import tempfile

        self.base = Path(tempfile.mkdtemp(prefix="roomcast-rcluster-"))
        taken: set[int] = set()
        try:
            for _ in range(self.primaries * (1 + self.replicas)):
                port = free_cluster_port(taken)
                taken |= {port, port + 10000}
                folder = self.base / str(port)
                folder.mkdir()
                secure: tuple[str, ...] = ("--tls-cluster", "yes", "--tls-replication", "yes") if self.tls else ()
                if self.password:
                    secure += ("--masterauth", self.password)
                node = RedisServer(port=port, tls=self.tls, password=self.password, extra=(*secure,
                    "--cluster-enabled", "yes", "--cluster-config-file", str(folder / "nodes.conf"),
                    "--cluster-node-timeout", str(self.node_timeout_ms), "--dir", str(folder),
                    "--cluster-require-full-coverage", "no", "--cluster-allow-reads-when-down", "no",
                    # Replicas in sync at once (no 5 s diskless delay), and always eligible to take over.
                    "--repl-diskless-sync-delay", "0", "--cluster-replica-validity-factor", "0", *self.extra))
                self.nodes.append(node.start())
            auth = ["--tls", "--cacert", str(self.tls["ca"])] if self.tls else []
            if self.password:
                auth += ["--no-auth-warning", "-a", self.password]
            out = subprocess.run(["redis-cli", *auth, "--cluster", "create",
                                  *[f"127.0.0.1:{n.port}" for n in self.nodes],
                                  "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                                 capture_output=True, text=True, timeout=60)
            if out.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {out.stdout}{out.stderr}")
            self.wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every running node says cluster_state:ok and knows every node, and every
        primary's replicas are in sync (so a failover can promote one)."""
        deadline = time.monotonic() + timeout * TIME_SCALE
        while time.monotonic() < deadline:
            running = [n for n in self.nodes if n.proc is not None]
            if all("cluster_state:ok" in n.cli("CLUSTER", "INFO") for n in running) and all(
                    n.cli("CLUSTER", "NODES").count("connected") >= len(running) for n in running) and all(
                    n.cli("INFO", "replication").count("state=online") >= self.replicas
                    for n in self.primary_nodes()):
                return
            time.sleep(0.1)
        raise TimeoutError("the Redis Cluster did not become ok")

    def primary_nodes(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.proc is not None and "role:master" in n.cli("INFO", "replication")]

    def node_of(self, key: str) -> RedisServer:
        """The running primary that owns `key`'s slot."""
        running = next(n for n in self.nodes if n.proc is not None)
        slot = int(running.cli("CLUSTER", "KEYSLOT", key))
        for n in self.primary_nodes():
            for line in n.cli("CLUSTER", "NODES").splitlines():
                f = line.split()
                if "myself" in f[2]:
                    for r in f[8:]:
                        lo, _, hi = r.partition("-")
                        if r[0] != "[" and int(lo) <= slot <= int(hi or lo):
                            return n
        raise LookupError(f"no running primary owns slot {slot}")

    def flushall(self) -> None:
        for n in self.primary_nodes():
            n.cli("FLUSHALL")

    def stop(self) -> None:
        import shutil

        for n in self.nodes:
            n.stop()
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)

# ---------------------------------------------------------------- redis cluster (sharded pub/sub tests)


@dataclass
class PubSubRedisCluster:
    """The sharded pub/sub tests' view of a `RedisClusterServer` (3 primaries + 3 replicas,
    `cluster-node-timeout` `node_timeout_ms`, replicas always eligible to take over, sharded
    pub/sub allowed while a shard is down): its nodes addressed by port. One fixture, two views."""

    primaries: int = 3
    node_timeout_ms: int = 2000
    server: RedisClusterServer | None = None

    def start(self) -> PubSubRedisCluster:
        self.server = RedisClusterServer(primaries=self.primaries, replicas=1, node_timeout_ms=self.node_timeout_ms,
                                         extra=("--cluster-allow-pubsubshard-when-down", "yes")).start()
        return self

    @property
    def ports(self) -> list[int] | None:
        return [n.port for n in self.server.nodes] if self.server else None

    @property
    def url(self) -> str:
        """A URL naming one node (the first); clients discover the others."""
        assert self.server is not None
        return self.server.url

    def _node(self, port: int) -> RedisServer:
        assert self.server is not None
        return next(n for n in self.server.nodes if n.port == port)

    def wait_healthy(self, timeout: float) -> None:
        """Until every live node reports cluster_state:ok, and each primary has a synced replica."""
        assert self.server is not None
        self.server.wait_ok(timeout / TIME_SCALE)

    def live_ports(self) -> list[int]:
        return [n.port for n in self.server.nodes if n.proc is not None] if self.server else []

    def primary_ports(self) -> list[int]:
        return [n.port for n in self.server.primary_nodes()] if self.server else []

    def owner_port(self, key: str) -> int:
        """The port of the primary that owns `key`'s slot."""
        assert self.server is not None
        return self.server.node_of(key).port

    def kill(self, port: int) -> None:
        """SIGKILL one node (a crash: no failover handshake)."""
        self._node(port).kill()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def cli(self, port: int, *args: str) -> str:
        """A command on one node ("" if it does not answer)."""
        try:
            return self._node(port).cli(*args)
        except subprocess.TimeoutExpired:
            return ""


# ---------------------------------------------------------------- postgres


def _pg_bin(name: str) -> str:
    import glob
    import shutil

    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    if found:
        return found[-1]
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} not found: install Debian's postgresql package")
    return path


def _as_postgres(cmd: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the `postgres` user then."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@dataclass
class PostgresServer:
    """A throwaway Postgres cluster (initdb) on a free 127.0.0.1 port, trust auth.
    `stop()`/`start()` keep the data, for outage tests; `destroy()` removes it."""

    port: int = 0
    datadir: Path | None = None

    def dsn(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def init(self) -> PostgresServer:
        import tempfile

        self.port = self.port or free_port()
        base = Path(tempfile.mkdtemp(prefix="roomcast-pg-"))
        self.datadir = base / "data"
        if os.geteuid() == 0:
            import shutil

            shutil.chown(base, "postgres", "postgres")
        subprocess.run(_as_postgres([_pg_bin("initdb"), "-D", str(self.datadir), "-A", "trust", "-U", "postgres",
                                     "--no-sync", "-E", "UTF8", "--locale", "C"]),
                       check=True, capture_output=True, timeout=120)
        return self.start()

    def start(self) -> PostgresServer:
        assert self.datadir is not None
        opts = f"-p {self.port} -k {self.datadir} -c listen_addresses=127.0.0.1 -c fsync=off " \
               "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
        subprocess.run(_as_postgres([_pg_bin("pg_ctl"), "-D", str(self.datadir), "-o", opts, "-w", "-t", "60",
                                     "-l", str(self.datadir / "server.log"), "start"]),
                       check=True, capture_output=True, timeout=90)
        return self

    def stop(self) -> None:
        if self.datadir is not None and (self.datadir / "postmaster.pid").exists():
            subprocess.run(_as_postgres([_pg_bin("pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "stop"]),
                           capture_output=True, timeout=60)

    def destroy(self) -> None:
        import shutil

        self.stop()
        if self.datadir is not None:
            shutil.rmtree(self.datadir.parent, ignore_errors=True)

    def create_database(self, name: str) -> str:
        subprocess.run(["psql", self.dsn(), "-q", "-c", f'CREATE DATABASE "{name}"'], check=True,
                       capture_output=True, timeout=30)
        return self.dsn(name)

    def psql(self, db: str, sql: str) -> str:
        out = subprocess.run(["psql", self.dsn(db), "-At", "-c", sql], check=True, capture_output=True,
                             text=True, timeout=30)
        return out.stdout.strip()
