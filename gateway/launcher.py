"""`roomcast-cluster`: a local cluster for trying roomcast — Redis, a coordinator and N
gateways on consecutive ports, all on 127.0.0.1, all stopped on Ctrl-C.

    roomcast-cluster --gateways 3 --port 8765
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path


def _wait_port(port: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="roomcast-cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gateways", type=int, default=3, help="number of gateway replicas (default 3)")
    parser.add_argument("--port", type=int, default=8765, help="first gateway port (default 8765)")
    parser.add_argument("--redis-port", type=int, default=6390, help="port for the cluster's own redis-server")
    parser.add_argument("--coordinator-port", type=int, default=8780)
    args = parser.parse_args(argv)
    if args.gateways < 1:
        parser.error("--gateways must be at least 1")
    redis_bin = shutil.which("redis-server")
    if redis_bin is None:
        print("roomcast-cluster: redis-server not found (Debian: apt-get install redis-server)", file=sys.stderr)
        return 2
    logdir = Path(tempfile.mkdtemp(prefix="roomcast-cluster-"))
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def spawn(name: str, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(logdir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        procs.append((name, proc))
        return proc

    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        spawn("redis", [redis_bin, "--port", str(args.redis_port), "--bind", "127.0.0.1", "--save", "",
                        "--appendonly", "no"])
        if not _wait_port(args.redis_port):
            print(f"roomcast-cluster: redis-server did not start on {args.redis_port} (port taken?)", file=sys.stderr)
            return 1
        base = dict(os.environ, REDIS_URL=f"redis://127.0.0.1:{args.redis_port}/0", GATEWAY_HOST="127.0.0.1")
        spawn("coordinator", [sys.executable, "-m", "coordinator"],
              dict(base, NODE_ID="coordinator-0", COORDINATOR_PORT=str(args.coordinator_port)))
        for i in range(args.gateways):
            port = args.port + i
            spawn(f"gateway-{i}", [sys.executable, "-m", "gateway"],
                  dict(base, NODE_ID=f"gateway-{i}", GATEWAY_PORT=str(port)))
        for i in range(args.gateways):
            if not _wait_port(args.port + i):
                print(f"roomcast-cluster: gateway-{i} did not start; see {logdir}", file=sys.stderr)
                return 1
        print(f"redis        redis://127.0.0.1:{args.redis_port}")
        print(f"coordinator  http://127.0.0.1:{args.coordinator_port}/metrics")
        for i in range(args.gateways):
            print(f"gateway-{i}    ws://127.0.0.1:{args.port + i}/ws   http://127.0.0.1:{args.port + i}/metrics")
        print(f"logs in {logdir}; Ctrl-C stops everything", flush=True)
        while not stopping:
            for name, proc in procs:
                if proc.poll() is not None:
                    print(f"roomcast-cluster: {name} exited with {proc.returncode}; stopping", file=sys.stderr)
                    return 1
            time.sleep(0.2)
        return 0
    finally:
        for _, proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
        for _, proc in reversed(procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        print("roomcast-cluster: stopped", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
