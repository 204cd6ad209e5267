"""The Python client is a distribution of its own: `pip install clients/python` into a clean
virtualenv gives a working `roomcast_client.RoomcastClient` (checked against a real embedded
gateway) and installs nothing of the server's (redis, asyncpg, uvloop, roomcast)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import ROOT, UNIT, GatewayProcess, gateway

pytestmark = pytest.mark.system

SERVER_ONLY = {"redis", "hiredis", "asyncpg", "uvloop", "roomcast", "prometheus-client", "cryptography"}

# Runs inside the clean virtualenv, with -I: neither the checkout nor PYTHONPATH is on sys.path.
SCRIPT = """
import asyncio, json, sys

from roomcast_client import RoomcastClient


async def main(url: str) -> None:
    async with RoomcastClient([url]) as host, RoomcastClient([url]) as player:
        room = await host.create_room(game_type="venv-check", game_data={"round": 1})
        seat = await player.join(room.id)
        events = seat.events()
        seq = await room.send("answer", {"choice": "B"})
        async for event in events:
            if event["seq"] == seq:
                break
        server = sorted({m.split(".")[0] for m in sys.modules} & {"roomcast", "gateway", "coordinator"})
        print(json.dumps({"seq": seq, "event": event, "room_id": room.id, "server_modules": server,
                          "client_file": sys.modules["roomcast_client"].__file__}))


asyncio.run(asyncio.wait_for(main(sys.argv[1]), 30))
"""


def _run(cmd: list[str], cwd: Path, timeout: float) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd} exited with {out.returncode}:\n{out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with only `pip install <copy of clients/python>` in it. The copy keeps
    the build's files (build/, *.egg-info) out of the checkout."""
    base = tmp_path_factory.mktemp("client-venv")
    source = base / "src"
    shutil.copytree(ROOT / "clients" / "python", source,
                    ignore=shutil.ignore_patterns("*.egg-info", "build", "dist", "__pycache__"))
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], base, 120 * UNIT)
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(source)], base, 300 * UNIT)
    return venv


def test_the_client_installs_without_the_server(client_venv: Path) -> None:
    listed = json.loads(_run([str(client_venv / "bin" / "python"), "-m", "pip", "list", "--format=json"],
                             client_venv, 60 * UNIT))
    names = {p["name"].lower().replace("_", "-") for p in listed}
    assert {"roomcast-client", "websockets", "orjson"} <= names
    assert names & SERVER_ONLY == set()


def test_the_installed_client_talks_to_a_real_gateway(client_venv: Path, tmp_path: Path) -> None:
    script = tmp_path / "check_client.py"
    script.write_text(SCRIPT, encoding="utf-8")
    gw: GatewayProcess
    with gateway() as gw:
        out = _run([str(client_venv / "bin" / "python"), "-I", str(script), gw.url], tmp_path, 60 * UNIT)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["server_modules"] == []
    assert Path(result["client_file"]).is_relative_to(client_venv), result["client_file"]
    event = result["event"]
    assert (event["room_id"], event["seq"], event["event_type"], event["payload"]) == \
        (result["room_id"], result["seq"], "answer", {"choice": "B"})
