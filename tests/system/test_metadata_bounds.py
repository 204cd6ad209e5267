"""hello.metadata is bounded as stored, and the lifecycle stream is written only when read.

Each metadata value becomes a 51-character keyed hash when stored (privacy), so a hello
of many tiny values was amplified ~30x, in every replica's memory and in the Redis
lifecycle stream, which nothing reads when Postgres is off. Against real gateway
processes, embedded and on a real Redis.
"""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest

from tests.harness import Client, GatewayProcess, RedisServer, gateway, redis_server, unique

pytestmark = pytest.mark.system

ENTRIES, BYTES = 64, 4096  # the defaults of MAX_METADATA_ENTRIES and MAX_METADATA_BYTES


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as r:
        yield r


@pytest.fixture(scope="module", params=["embedded", "redis"])
def gw(request: pytest.FixtureRequest) -> Iterator[GatewayProcess]:
    env = {"PRIVACY_HASH_KEY": "metadata-test-key"}
    if request.param == "redis":
        env["REDIS_URL"] = request.getfixturevalue("redis").url
    with gateway(env) as g:
        yield g
    assert "Traceback" not in g.log(), g.log()[-3000:]


async def hello_reply(gw: GatewayProcess, metadata: object) -> dict[str, object]:
    async with Client.open(gw.url) as c:
        return await c.request({"type": "hello", "device_id": unique("meta-dev"), "metadata": metadata})


async def test_metadata_of_many_small_values_is_refused(gw: GatewayProcess) -> None:
    # 2,000 one-digit values: 8 KB on the wire, ~110 KB once every value is a keyed hash.
    amplified = {"fonts": list(range(10)) * 200}
    assert len(orjson.dumps(amplified)) < 8_100
    reply = await hello_reply(gw, amplified)
    assert reply["type"] == "error" and reply["code"] == "bad_request", reply
    assert "entries" in str(reply["message"])
    # Few entries but long keys: the stored size counts too.
    wide = {f"k{i}-{'x' * 150}": i for i in range(30)}
    reply = await hello_reply(gw, wide)
    assert reply["type"] == "error" and reply["code"] == "bad_request" and "bytes" in str(reply["message"]), reply
    # Within the limits: accepted (a 30-entry object of nested values, one long string).
    ok = {"os": "linux", "screen": {"w": 1920, "h": 1080}, "langs": ["en", "fr"], "agent": "y" * 20_000,
          **{f"f{i}": i for i in range(20)}}
    reply = await hello_reply(gw, ok)
    assert reply["type"] == "welcome", reply
    # The limit is exact: ENTRIES entries pass, one more does not.
    at_limit = {"a": list(range(ENTRIES - 2))}
    assert (await hello_reply(gw, at_limit))["type"] == "welcome"
    assert (await hello_reply(gw, {"a": list(range(ENTRIES - 1))}))["code"] == "bad_request"


async def test_no_lifecycle_stream_without_history(redis: RedisServer) -> None:
    with gateway({"REDIS_URL": redis.url}) as g:
        for _ in range(5):
            assert (await hello_reply(g, {"os": "linux", "n": 1}))["type"] == "welcome"
    # Nothing consumes ws:lifecycle without Postgres: it must not exist (it grew forever).
    assert redis.cli("EXISTS", "ws:lifecycle") == "0"
