"""hello.token: HS256 JSON Web Tokens (RFC 7519) checked with the standard library."""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from typing import Any

import orjson


class TokenError(ValueError):
    pass


def _b64decode(part: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (ValueError, TypeError):
        raise TokenError("token is not base64url") from None


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def verify_hs256(token: str, secret: str, audience: str | None, now_s: float, leeway_s: float = 30.0) -> str:
    """Check signature, `exp`, `nbf` and `aud`; return `sub` (a UUID, the user_id).

    Raises TokenError with a short reason on any failure.
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("token is not a JWT")
    try:
        header = orjson.loads(_b64decode(parts[0]))
        claims: Any = orjson.loads(_b64decode(parts[1]))
    except orjson.JSONDecodeError:
        raise TokenError("token is not a JWT") from None
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise TokenError("token algorithm must be HS256")
    expected = hmac.new(secret.encode(), f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, _b64decode(parts[2])):
        raise TokenError("bad token signature")
    if not isinstance(claims, dict):
        raise TokenError("token claims must be an object")
    exp = claims.get("exp")
    if exp is not None and (not isinstance(exp, (int, float)) or now_s > exp + leeway_s):
        raise TokenError("token expired")
    nbf = claims.get("nbf")
    if nbf is not None and (not isinstance(nbf, (int, float)) or now_s + leeway_s < nbf):
        raise TokenError("token not yet valid")
    if audience is not None:
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if audience not in auds:
            raise TokenError("wrong token audience")
    sub = claims.get("sub")
    if not isinstance(sub, str):
        raise TokenError("token has no subject")
    try:
        return str(uuid.UUID(sub))
    except ValueError:
        raise TokenError("token subject must be a UUID") from None


def sign_hs256(claims: dict[str, Any], secret: str) -> str:
    """Make an HS256 token (for tests, tools and the demo)."""
    head = _b64encode(orjson.dumps({"alg": "HS256", "typ": "JWT"}))
    body = _b64encode(orjson.dumps(claims))
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64encode(sig)}"
