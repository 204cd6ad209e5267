"""Privacy at the edge: what a connection tells us is reduced before it is stored.

Applied by the gateway to each hello's ConnectionInfo, so neither Redis nor Postgres
ever holds the raw values (requirements, "Data Privacy"):
- fingerprint and device info (hello.metadata values) become keyed hashes (HMAC-SHA256);
- the user agent is encrypted with AES-256-GCM (key id kept for rotation), or dropped;
- the address is truncated (/24 IPv4, /48 IPv6), hashed, kept or dropped per IP_STORAGE.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import os
from typing import Any

import orjson

from roomcast.store.base import ConnectionInfo

log = logging.getLogger("roomcast.privacy")
HASH_PREFIX = "h1:"
ENC_PREFIX = "v1:"


class Privacy:
    def __init__(self, hash_key: str | None, encryption_keys: tuple[str, ...] = (), ip_storage: str = "truncate",
                 user_agent_storage: str = "encrypt", persistent: bool = True) -> None:
        # `persistent`: whether what is hashed or encrypted here is kept beyond this process
        # (Postgres). Without it (the embedded default) the missing keys change nothing an
        # operator could notice, so there is nothing to warn about.
        if hash_key is None and persistent:
            log.warning("PRIVACY_HASH_KEY is not set: keyed hashes use a random key of this process only")
        self._hash_key = hash_key.encode() if hash_key else os.urandom(32)
        self._keys: list[tuple[str, Any]] = []
        if encryption_keys:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            for entry in encryption_keys:
                kid, _, key = entry.partition(":")
                self._keys.append((kid, AESGCM(base64.b64decode(key))))
        self.ip_storage = ip_storage
        self._addresses: dict[str, str | None] = {}  # address() of recent addresses
        self.user_agent_storage = user_agent_storage
        if user_agent_storage == "encrypt" and not self._keys and persistent:
            log.warning("USER_AGENT_STORAGE=encrypt without PRIVACY_ENCRYPTION_KEYS: user agents are not stored")

    def hash(self, value: str) -> str:
        return HASH_PREFIX + hmac.new(self._hash_key, value.encode(), hashlib.sha256).hexdigest()[:48]

    def address(self, ip: str | None) -> str | None:
        if ip is None or self.ip_storage == "none":
            return None
        if self.ip_storage == "full":
            return ip
        # Every hello asks, and clients share few addresses: the last few thousand answers are kept.
        if ip in self._addresses:
            return self._addresses[ip]
        if len(self._addresses) >= 4096:
            self._addresses.clear()
        stored = self._addresses[ip] = self._address(ip)
        return stored

    def _address(self, ip: str) -> str | None:
        if self.ip_storage == "hash":
            return self.hash(ip)[:45]
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return None
        prefix = 24 if addr.version == 4 else 48
        return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False).network_address)

    def encrypt(self, text: str) -> str:
        kid, aead = self._keys[0]
        nonce = os.urandom(12)
        sealed = aead.encrypt(nonce, text.encode(), kid.encode())
        return f"{ENC_PREFIX}{kid}:{base64.b64encode(nonce).decode()}:{base64.b64encode(sealed).decode()}"

    def decrypt(self, blob: str) -> str | None:
        """The clear text of an encrypted value (for a device's data export), if a key fits."""
        if not blob.startswith(ENC_PREFIX):
            return None
        kid, nonce, sealed = blob[len(ENC_PREFIX):].split(":", 2)
        for key_id, aead in self._keys:
            if key_id == kid:
                plain: bytes = aead.decrypt(base64.b64decode(nonce), base64.b64decode(sealed), kid.encode())
                return plain.decode()
        return None

    def user_agent(self, ua: str | None) -> str | None:
        if ua is None or self.user_agent_storage == "drop":
            return None
        if self.user_agent_storage == "clear":
            return ua
        return self.encrypt(ua) if self._keys else None

    def device_info(self, metadata: dict[str, Any] | None, max_entries: int | None = None,
                    max_bytes: int | None = None) -> dict[str, Any] | None:
        """Keep the keys (so analytics can group), replace every value by its keyed hash.

        Each scalar grows to a 51-character hash, so what is stored is bounded here: more
        than `max_entries` entries (every key, value and array element counts one; checked
        before any hashing, so a refused hello costs no HMAC) or a stored size over
        `max_bytes` raise MetadataTooLarge."""
        if metadata is None:
            return None
        if max_entries is not None:
            entries = metadata_entries(metadata, max_entries)
            if entries > max_entries:
                raise MetadataTooLarge(f"metadata has more than {max_entries} entries (keys, values, array elements)")

        def walk(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: walk(v) for k, v in value.items()}
            if isinstance(value, list):
                return [walk(v) for v in value]
            if value is None or isinstance(value, bool):
                return value
            return self.hash(str(value))

        result: dict[str, Any] = walk(metadata)
        if max_bytes is not None:
            size = len(orjson.dumps(result))
            if size > max_bytes:
                raise MetadataTooLarge(f"metadata would take {size} bytes once hashed (the limit is {max_bytes})")
        return result

    def apply(self, info: ConnectionInfo, max_entries: int | None = None,
              max_bytes: int | None = None) -> ConnectionInfo:
        # The metadata first: a refused one costs no address, hash or encryption work.
        metadata = self.device_info(info.metadata, max_entries, max_bytes)
        return ConnectionInfo(
            ip=self.address(info.ip),
            user_agent=self.user_agent(info.user_agent),
            fingerprint=None if info.fingerprint is None else self.hash(info.fingerprint),
            metadata=metadata,
        )


class MetadataTooLarge(ValueError):
    """hello.metadata is over MAX_METADATA_ENTRIES or MAX_METADATA_BYTES (a `bad_request`)."""


def metadata_entries(value: Any, stop_after: int) -> int:
    """Keys, values and array elements in `value` (its root not counted), counting stops
    once past `stop_after` (an iterative walk: the cost is bounded by the limit)."""
    count = 0
    stack = [value]
    while stack and count <= stop_after:
        item = stack.pop()
        if isinstance(item, dict):
            count += 2 * len(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            count += len(item)
            stack.extend(item)
    return count


def client_address(peer: str | None, forwarded_for: str | None, trusted: tuple[str, ...]) -> str | None:
    """The client's address: the peer's, or, when the peer is a trusted proxy, the rightmost
    X-Forwarded-For entry that is not itself a trusted proxy."""
    if peer is None or not trusted or not forwarded_for:
        return peer
    nets = [ipaddress.ip_network(t, strict=False) for t in trusted]

    def is_trusted(addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in net for net in nets)

    if not is_trusted(peer):
        return peer
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        if not is_trusted(hop):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # garbage in the header: fall back to what we can see
    return peer
