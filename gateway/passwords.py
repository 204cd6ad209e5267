"""Room passwords: stored only as a salted scrypt hash, compared in constant time.

Each hash or check costs ~50 ms of CPU and 16 MiB (N=2**14, r=8). They run on a small pool
of their own (`hash_async`, `verify_async`), not the event loop's default executor: a flood of
password joins then costs at most WORKERS threads' worth of CPU and memory, and cannot starve
other users of the default executor (such as DNS lookups when reconnecting to Redis).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
from concurrent.futures import ThreadPoolExecutor

_N, _R, _P = 2**14, 8, 1
WORKERS = 2
_POOL = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="scrypt")


async def hash_async(password: str) -> str:
    return await asyncio.get_running_loop().run_in_executor(_POOL, hash_password, password)


async def verify_async(password: str, stored: str) -> bool:
    return await asyncio.get_running_loop().run_in_executor(_POOL, verify_password, password, stored)


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt_b64, digest_b64 = stored.split("$")
        if scheme != "scrypt":
            return False
        salt = base64.b64decode(salt_b64)
        expected = base64.b64decode(digest_b64)
        digest = hashlib.scrypt(password.encode(), salt=salt, n=int(n), r=int(r), p=int(p), dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest, expected)
