"""gateway.auth: HS256 JSON Web Tokens for hello.token (RFC 7519)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import orjson
import pytest

from gateway.auth import TokenError, sign_hs256, verify_hs256

SECRET = "test-secret"
AUDIENCE = "roomcast"
NOW = 1_700_000_000.0
USER = "3f2b8c1e-9a4d-4e6f-8b7a-1c2d3e4f5a6b"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(header: Any, claims: Any, secret: str = SECRET) -> str:
    """A token with any header and claims, signed with HS256 whatever the header says."""
    head, body = b64(orjson.dumps(header)), b64(orjson.dumps(claims))
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def verify(tok: str, audience: str | None = None) -> str:
    return verify_hs256(tok, SECRET, audience, NOW)


# ---------------------------------------------------------------- accepted


@pytest.mark.parametrize(
    ("claims", "audience"),
    [
        ({"sub": USER}, None),
        ({"sub": USER, "exp": NOW + 60, "nbf": NOW - 60, "iat": NOW}, None),
        ({"sub": USER, "exp": int(NOW) - 10}, None),  # expired, but within the 30 s leeway
        ({"sub": USER, "nbf": NOW + 10}, None),  # not yet valid, but within the leeway
        ({"sub": USER, "aud": AUDIENCE}, AUDIENCE),
        ({"sub": USER, "aud": ["other", AUDIENCE]}, AUDIENCE),
        ({"sub": USER, "aud": "anything"}, None),  # no audience configured: aud is not checked
    ],
)
def test_valid_token_gives_sub(claims: dict[str, Any], audience: str | None) -> None:
    assert verify(sign_hs256(claims, SECRET), audience) == USER


@pytest.mark.parametrize(
    "sub",
    [USER.upper(), USER.replace("-", ""), "{" + USER + "}", "urn:uuid:" + USER],
)
def test_sub_is_normalized(sub: str) -> None:
    assert verify(sign_hs256({"sub": sub}, SECRET)) == USER


# ---------------------------------------------------------------- refused


def forged_signature() -> str:
    return sign_hs256({"sub": USER}, "another-secret")


def tampered_claims() -> str:
    head, _, sig = sign_hs256({"sub": USER}, SECRET).split(".")
    other = b64(orjson.dumps({"sub": "00000000-0000-4000-8000-000000000000"}))
    return f"{head}.{other}.{sig}"


def alg_none() -> str:
    head = b64(orjson.dumps({"alg": "none", "typ": "JWT"}))
    return f"{head}.{b64(orjson.dumps({'sub': USER}))}."


REFUSED: list[tuple[str, str, str | None]] = [
    ("forged signature", forged_signature(), None),
    ("tampered claims", tampered_claims(), None),
    ("alg none, no signature", alg_none(), None),
    ("alg none, valid HS256 signature", token({"alg": "none"}, {"sub": USER}), None),
    ("alg HS512 header", token({"alg": "HS512", "typ": "JWT"}, {"sub": USER}), None),
    ("alg RS256 header", token({"alg": "RS256"}, {"sub": USER}), None),
    ("no alg", token({"typ": "JWT"}, {"sub": USER}), None),
    ("header not an object", token(["HS256"], {"sub": USER}), None),
    ("claims not an object", token({"alg": "HS256"}, [USER]), None),
    ("expired beyond leeway", sign_hs256({"sub": USER, "exp": NOW - 31}, SECRET), None),
    ("exp not a number", sign_hs256({"sub": USER, "exp": "9999999999"}, SECRET), None),
    ("nbf beyond leeway", sign_hs256({"sub": USER, "nbf": NOW + 31}, SECRET), None),
    ("nbf not a number", sign_hs256({"sub": USER, "nbf": "0"}, SECRET), None),
    ("wrong audience", sign_hs256({"sub": USER, "aud": "other"}, SECRET), AUDIENCE),
    ("audience list without ours", sign_hs256({"sub": USER, "aud": ["a", "b"]}, SECRET), AUDIENCE),
    ("audience missing", sign_hs256({"sub": USER}, SECRET), AUDIENCE),
    ("sub not a UUID", sign_hs256({"sub": "user-1"}, SECRET), None),
    ("sub empty", sign_hs256({"sub": ""}, SECRET), None),
    ("sub a number", sign_hs256({"sub": 12345}, SECRET), None),
    ("sub missing", sign_hs256({"name": "x"}, SECRET), None),
    ("empty", "", None),
    ("one part", "abc", None),
    ("two parts", "abc.def", None),
    ("four parts", sign_hs256({"sub": USER}, SECRET) + ".x", None),
    ("three empty parts", "..", None),
    ("not base64", "!!!.???.***", None),
    ("not JSON", f"{b64(b'nope')}.{b64(b'nope')}.{b64(b'sig')}", None),
    ("not UTF-8", ".".join([b64(bytes([0xFF, 0xFE])), b64(bytes([0xFF])), b64(b"sig")]), None),
    ("non-ASCII text", "ä.ö.ü", None),
    ("bad padding", "e30.e30.a", None),
    ("whitespace", " " + sign_hs256({"sub": USER}, SECRET).replace(".", " . "), None),
]


@pytest.mark.parametrize(("tok", "audience"), [(t, a) for _, t, a in REFUSED], ids=[n for n, _, _ in REFUSED])
def test_bad_token_is_refused(tok: str, audience: str | None) -> None:
    with pytest.raises(TokenError):
        verify(tok, audience)


def test_leeway_bounds_are_inclusive_and_configurable() -> None:
    tok = sign_hs256({"sub": USER, "exp": NOW - 5}, SECRET)
    assert verify_hs256(tok, SECRET, None, NOW, leeway_s=5) == USER
    with pytest.raises(TokenError):
        verify_hs256(tok, SECRET, None, NOW, leeway_s=4)


def test_token_error_is_a_value_error() -> None:
    assert issubclass(TokenError, ValueError)
