"""Device tokens: proof that a device id belongs to whoever first used it.

A token is a random secret (`secrets.token_urlsafe(32)`, 256 bits) handed out once, in the
`welcome` of the first hello of a device id nobody knows, and again only on rotation
(`hello.rotate_token` with the valid token). It is not derived from the device id: knowing
the id (every room member sees it) gives nothing. Only a keyed hash of it is stored:
in the store (Redis key `ws:connections:{device}:token`, or the embedded gateway's memory)
for DEVICE_TOKEN_TTL after its last use, and, with history, durably in Postgres
(`roomcast_device_tokens`).

A device id is *known*, and a hello for it must carry its token (REQUIRE_DEVICE_TOKEN),
while it has a token hash anywhere, a connection record or rooms, or history says it
exists (a `device_sessions` row). So a device whose connection record expired does not
become up for grabs: its token hash outlives it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from roomcast.errors import ErrorCode, GatewayError

log = logging.getLogger("roomcast.device_tokens")


class TokenHistory(Protocol):
    """Durable device-token state (Postgres), when history is configured."""

    async def lookup(self, device_id: str) -> tuple[str | None, bool]:
        """(stored token hash or None, whether history knows the device at all)."""
        ...

    async def save(self, device_id: str, new: str | None, old: str | None) -> bool:
        """Store `new` (None: delete) if the stored hash is `old` (None: no row); False otherwise."""
        ...


class TokenStore(Protocol):
    async def device_token_hash(self, device_id: str) -> str | None: ...

    async def set_device_token_hash(self, device_id: str, new: str | None, old: str | None, ttl_ms: int) -> bool: ...

    async def touch_device_token(self, device_id: str, ttl_ms: int) -> None: ...

    async def device_known(self, device_id: str) -> bool: ...


def _unauthorized(message: str) -> GatewayError:
    return GatewayError(ErrorCode.UNAUTHORIZED, message)


@dataclass(slots=True)
class DeviceTokens:
    """The hello-time check. `check` returns the token to put in `welcome` (a new one:
    first issue or rotation), None when none is to be sent, or raises `unauthorized`."""

    store: TokenStore
    secret: str
    required: bool
    ttl_ms: int
    history: TokenHistory | None = None
    new_token: Callable[[], str] = lambda: secrets.token_urlsafe(32)

    def hash(self, token: str) -> str:
        return hmac.new(self.secret.encode(), b"roomcast-device-token:" + token.encode(), hashlib.sha256).hexdigest()

    def legacy(self, device_id: str) -> str:
        """The token of versions before random tokens (an HMAC of the id); accepted only to
        upgrade a known device that has no stored token yet, which then gets a random one."""
        mac = hmac.new(self.secret.encode(), b"roomcast-device:" + device_id.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac[:24]).decode()

    async def _stored(self, device_id: str) -> tuple[str | None, bool]:
        """(token hash, known): the store first; history when the store has no hash."""
        stored = await self.store.device_token_hash(device_id)
        if stored is not None:
            return stored, True
        if self.history is not None:
            try:
                stored, seen = await self.history.lookup(device_id)
            except Exception as exc:  # cannot tell whether the id is taken: refuse, retryably
                raise GatewayError(ErrorCode.UNAVAILABLE, "device history unavailable; retry") from exc
            if stored is not None:
                # Back in the store (it expired there, or Redis lost it) for the next hellos.
                await self.store.set_device_token_hash(device_id, stored, None, self.ttl_ms)
                return stored, True
            if seen:
                return None, True
        return None, await self.store.device_known(device_id)

    async def check(self, device_id: str, presented: str | None, rotate: bool) -> Grant | None:
        """Decide, changing nothing yet but the TTL of a token used: a Grant when a new token
        is to be issued (by `issue`, once every other check of the hello has passed, so no
        token is stored that nobody received), None when none is, or `unauthorized`."""
        stored, known = await self._stored(device_id)
        if presented is not None and stored is not None:
            if hmac.compare_digest(self.hash(presented), stored):
                if rotate:
                    return Grant(stored, "device_token was just rotated by another hello")
                await self.store.touch_device_token(device_id, self.ttl_ms)
                return None
            if self.required:
                raise _unauthorized("device_token does not match this device id")
        elif presented is not None and known and hmac.compare_digest(presented, self.legacy(device_id)):
            return Grant(None, "this device id is known: present its device_token")  # the HMAC dies
        if rotate:
            raise _unauthorized("rotate_token needs the device's valid device_token")
        if stored is not None or known:
            if self.required:
                raise _unauthorized("this device id is known: present its device_token")
            return None
        return Grant(None, "this device id is known: present its device_token")

    async def issue(self, device_id: str, grant: Grant) -> Issued | None:
        """Store a new token's hash in place of `grant.old` (store, then Postgres) and return
        it; None (or `unauthorized` when tokens are required) if another hello won."""
        token = self.new_token()
        issued = Issued(token, self.hash(token), grant.old)
        if not await self.store.set_device_token_hash(device_id, issued.digest, grant.old, self.ttl_ms):
            self._lost(grant)
            return None
        if self.history is not None:
            saved: bool | Exception
            try:
                saved = await self.history.save(device_id, issued.digest, grant.old)
            except Exception as exc:
                saved = exc
            if saved is not True:
                # Not durable (or Postgres holds another token): undo in the store, if it
                # is still ours, so that no hash is kept whose token nobody was given.
                await self.store.set_device_token_hash(device_id, grant.old, issued.digest, self.ttl_ms)
                if isinstance(saved, Exception):
                    raise GatewayError(ErrorCode.UNAVAILABLE, "device history unavailable; retry") from saved
                self._lost(grant)
                return None
        return issued

    def _lost(self, grant: Grant) -> None:
        if self.required or grant.old is not None:
            raise _unauthorized(grant.lost)

    async def revoke(self, device_id: str, issued: Issued) -> None:
        """The hello that was issued a token failed before its welcome: put back what was."""
        try:
            if self.history is not None:
                await self.history.save(device_id, issued.old, issued.digest)
            await self.store.set_device_token_hash(device_id, issued.old, issued.digest, self.ttl_ms)
        except Exception:
            log.warning("could not take back an undelivered device token of %s", device_id, exc_info=True)


@dataclass(frozen=True, slots=True)
class Grant:
    """A new token may be issued in place of the hash `old` (None: there is none)."""

    old: str | None
    lost: str  # the refusal if another hello gets there first


@dataclass(frozen=True, slots=True)
class Issued:
    token: str
    digest: str
    old: str | None


class PostgresTokenHistory:
    """TokenHistory over the history database (roomcast_device_tokens, device_sessions)."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def lookup(self, device_id: str) -> tuple[str | None, bool]:
        row = await self.pool.fetchrow(
            "SELECT (SELECT token_hash FROM roomcast_device_tokens WHERE device_id = $1) AS token_hash, "
            "EXISTS (SELECT 1 FROM device_sessions WHERE device_id = $1) AS seen", device_id)
        return row["token_hash"], bool(row["seen"])

    async def save(self, device_id: str, new: str | None, old: str | None) -> bool:
        if new is None:
            status = await self.pool.execute(
                "DELETE FROM roomcast_device_tokens WHERE device_id = $1 AND token_hash = $2", device_id, old)
        elif old is None:
            status = await self.pool.execute(
                "INSERT INTO roomcast_device_tokens (device_id, token_hash) VALUES ($1, $2) "
                "ON CONFLICT (device_id) DO NOTHING", device_id, new)
        else:
            status = await self.pool.execute(
                "UPDATE roomcast_device_tokens SET token_hash = $2, issued_at = (now() AT TIME ZONE 'utc') "
                "WHERE device_id = $1 AND token_hash = $3", device_id, new, old)
        return bool(status.rsplit(" ", 1)[-1] != "0")

