"""AUTH_JWT_JWKS_URL and AUTH_JWT_ISSUER end to end: a gateway process takes RS256 tokens whose
keys it fetches over HTTP from a key set served by this test (http.server on 127.0.0.1 in a
thread, keys made here with `cryptography`), refuses other issuers, picks up a rotated key,
does not let unknown `kid`s hammer the endpoint, and answers `unavailable` (retry) while the
endpoint is down."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.auth import public_jwk, sign
from tests.harness import UNIT, Client, GatewayProcess, free_port, gateway, unique, wait_for

pytestmark = pytest.mark.system

ISSUER = "https://project-ref.supabase.co/auth/v1"
AUDIENCE = "authenticated"
MIN_INTERVAL_MS = int(400 * UNIT)


class JwksServer:
    """Serves {"keys": [...]} at /jwks.json; `down` makes it answer 503; counts requests."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.down = False
        self.requests = 0
        self.lock = threading.Lock()
        self.release = threading.Event()  # answers wait for it while `hold` is on
        self.hold = False
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with outer.lock:
                    outer.requests += 1
                    down, body, hold = outer.down, orjson.dumps({"keys": outer.keys}), outer.hold
                if hold:
                    outer.release.wait(30 * UNIT)
                if down or self.path != "/jwks.json":
                    self.send_response(503 if down else 404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def add(self, private_key: Any, kid: str) -> None:
        with self.lock:
            self.keys.append(public_jwk(private_key.public_key(), kid))

    def count(self) -> int:
        with self.lock:
            return self.requests


@contextlib.contextmanager
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.httpd.shutdown()
        server.httpd.server_close()
        server.thread.join(5 * UNIT)


def env(url: str, **extra: str) -> dict[str, str]:
    return {"AUTH_JWT_JWKS_URL": url, "AUTH_JWT_ISSUER": ISSUER, "AUTH_JWT_AUDIENCE": AUDIENCE,
            "AUTH_JWT_JWKS_MIN_INTERVAL": str(MIN_INTERVAL_MS), **extra}


def token(key: Any, kid: str | None, user: str, **claims: Any) -> str:
    body = {"sub": user, "aud": AUDIENCE, "iss": ISSUER, "exp": int(time.time()) + 600, "role": "authenticated"}
    body.update(claims)
    return sign({k: v for k, v in body.items() if v is not None}, "RS256", key, kid=kid)


async def hello(g: GatewayProcess, tok: str) -> dict[str, Any]:
    """The reply to one hello with `tok` on a fresh socket (welcome or error)."""
    async with Client.open(g.url) as c:
        return await c.request({"type": "hello", "device_id": unique("dev-jwks"), "token": tok})


def code(reply: dict[str, Any]) -> str | None:
    return reply.get("code") if reply.get("type") == "error" else None


def no_traceback(g: GatewayProcess) -> None:
    assert "Traceback" not in g.log(), g.log()[-3000:]


async def test_rs256_keys_from_a_jwks_url_issuer_rotation_and_unknown_kids() -> None:
    key1 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    user = str(uuid.uuid4())
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with jwks_server() as server:
        # Keys our policy refuses sit next to the good one: they are left out, the set is used.
        server.add(weak, "weak")
        server.keys.append({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"})
        server.add(key1, "k1")
        with gateway(env(server.url)) as g:
            assert server.count() == 0  # nothing fetched before a token needs it
            welcome = await hello(g, token(key1, "k1", user))
            assert welcome["type"] == "welcome" and welcome["user_id"] == user, welcome
            assert server.count() == 1
            for refused in (token(weak, "weak", user), token(weak, None, user)):
                reply = await hello(g, refused)
                assert code(reply) == "unauthorized", reply
            assert "left out" in g.log() and "1024 bits" in g.log()
            before = server.count()
            # Cached: more tokens, no more fetches.
            assert (await hello(g, token(key1, "k1", user)))["user_id"] == user
            assert server.count() == before

            # AUTH_JWT_ISSUER: another issuer, or none, is refused although the signature is good.
            for bad in (token(key1, "k1", user, iss="https://evil.example/auth/v1"),
                        token(key1, "k1", user, iss=None),
                        token(key1, "k1", user, iss=ISSUER + "/")):
                reply = await hello(g, bad)
                assert code(reply) == "unauthorized" and "issuer" in reply["message"], reply

            # Rotation: the provider adds k2 while the gateway runs; a k2 token is accepted once
            # the unknown kid lets the gateway fetch again (at most once per min interval).
            server.add(key2, "k2")
            started, before = time.monotonic(), server.count()
            async with Client.open(g.url) as c:
                device = unique("dev-rot")
                reply: dict[str, Any] = {}

                async def accepted() -> bool:
                    nonlocal reply
                    reply = await c.request({"type": "hello", "device_id": device, "token": token(key2, "k2", user)})
                    assert reply["type"] == "welcome" or code(reply) == "unauthorized", reply
                    return reply["type"] == "welcome"

                await wait_for(accepted, timeout=5 * UNIT + 3 * MIN_INTERVAL_MS / 1000, interval=0.05 * UNIT,
                               what="the rotated key accepted")
            assert reply["user_id"] == user
            fetched = server.count() - before
            assert 1 <= fetched <= 2 + (time.monotonic() - started) / (MIN_INTERVAL_MS / 1000), fetched
            # The old key still works (it is still in the set).
            assert (await hello(g, token(key1, "k1", user)))["user_id"] == user

            # A flood of tokens with random kids: each refused, the endpoint barely touched.
            attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            started, before = time.monotonic(), server.count()
            async with Client.open(g.url) as c:
                device = unique("dev-flood")
                for _ in range(40):
                    reply = await c.request({"type": "hello", "device_id": device,
                                             "token": token(attacker, uuid.uuid4().hex, user)})
                    assert code(reply) == "unauthorized", reply
            elapsed = time.monotonic() - started
            assert server.count() - before <= 1 + elapsed / (MIN_INTERVAL_MS / 1000), (server.count() - before, elapsed)
            # A key of the right kind but signed by someone else under a known kid: bad signature.
            reply = await hello(g, token(attacker, "k1", user))
            assert code(reply) == "unauthorized", reply
            no_traceback(g)


async def test_jwks_endpoint_down_gives_unavailable_and_recovers() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    user = str(uuid.uuid4())

    def es(kid: str = "ec-1") -> str:
        body = {"sub": user, "aud": AUDIENCE, "iss": ISSUER, "exp": int(time.time()) + 600}
        return sign(body, "ES256", key, kid=kid)

    # Nothing listens at the URL: the token's key cannot be had, so retry later.
    closed = f"http://127.0.0.1:{free_port()}/jwks.json"
    with gateway(env(closed)) as g:
        reply = await hello(g, es())
        assert code(reply) == "unavailable", reply
        no_traceback(g)

    with jwks_server() as server:
        server.add(key, "ec-1")
        server.down = True  # 503
        with gateway(env(server.url, AUTH_JWT_JWKS_CACHE_TTL="1000")) as g:
            async with Client.open(g.url) as c:
                device = unique("dev-down")
                reply = await c.request({"type": "hello", "device_id": device, "token": es()})
                assert code(reply) == "unavailable", reply
                assert server.count() == 1
                # While it stays down and within the min interval: no new fetch, still unavailable.
                reply = await c.request({"type": "hello", "device_id": device, "token": es()})
                assert code(reply) == "unavailable", reply
                # Back up: the client's retry succeeds (once the min interval has passed).
                server.down = False
                reply = {}

                async def accepted() -> bool:
                    nonlocal reply
                    reply = await c.request({"type": "hello", "device_id": device, "token": es()})
                    assert reply["type"] == "welcome" or code(reply) == "unavailable", reply
                    return reply["type"] == "welcome"

                await wait_for(accepted, timeout=5 * UNIT + 3 * MIN_INTERVAL_MS / 1000, interval=0.05 * UNIT,
                               what="a token accepted after the endpoint came back")
                assert reply["user_id"] == user

            # Down again after keys were fetched: once the 1 s cache lifetime is over the gateway
            # tries again, fails, and keeps using the keys it has.
            server.down = True
            before = server.count()

            async def refetched_and_still_accepted() -> bool:
                reply = await hello(g, es())
                assert reply["type"] == "welcome" and reply["user_id"] == user, reply
                return server.count() > before

            await wait_for(refetched_and_still_accepted, timeout=5 * UNIT + 2, interval=0.1 * UNIT,
                           what="a failed re-fetch after the cache lifetime")
            assert (await hello(g, es()))["user_id"] == user
            # An unknown kid while the endpoint fails: cannot be told from a new key, so retry.
            reply = await hello(g, es("ec-new"))
            assert code(reply) == "unavailable", reply
            no_traceback(g)


async def test_a_slow_jwks_fetch_blocks_neither_the_gateway_nor_makes_two_requests() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    user = str(uuid.uuid4())
    with jwks_server() as server:
        server.add(key, "k")
        server.hold = True  # the endpoint answers only when the test says so
        with gateway(env(server.url, AUTH_JWT_JWKS_TIMEOUT="60000")) as g:
            async with Client.open(g.url) as a, Client.open(g.url) as b, Client.open(g.url) as anon:
                await a.send({"type": "hello", "id": "a", "device_id": unique("dev-a"), "token": token(key, "k", user)})
                await wait_for(lambda: server.count() == 1, what="the fetch reached the endpoint")
                await b.send({"type": "hello", "id": "b", "device_id": unique("dev-b"), "token": token(key, "k", user)})
                # While the fetch hangs, the event loop serves other sockets.
                welcome = await anon.hello(unique("dev-anon"))
                assert welcome["user_id"] is None
                assert not server.release.is_set()
                server.release.set()
                for c, rid in ((a, "a"), (b, "b")):
                    reply = await c.expect(re=rid)
                    assert reply["type"] == "welcome" and reply["user_id"] == user, reply
            assert server.count() == 1  # both hellos waited on the one fetch
            no_traceback(g)
