"""hello.token: JSON Web Tokens (RFC 7519) signed with HS256, RS256 or ES256.

HS256 is checked against AUTH_JWT_SECRET with the standard library; RS256 (RSASSA-PKCS1-v1_5
with SHA-256) and ES256 (ECDSA on P-256 with SHA-256, RFC 7518 section 3.4) against public
keys read once at start from AUTH_JWT_PUBLIC_KEY_FILE (PEM) or AUTH_JWT_JWKS_FILE (a JSON Web
Key Set), with `cryptography`.

Algorithm confusion is ruled out by construction: the token's `alg` must be one of
AUTH_JWT_ALGORITHMS, and each algorithm has its own kind of key. HS256 only ever uses the
shared secret (never public-key bytes), RS256 only RSA keys, ES256 only P-256 keys. `none`
is never accepted, and header parameters that name keys (`jwk`, `jku`, `x5u`, `x5c`) are
ignored: keys come from the operator's files only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from roomcast.settings import Settings

SUPPORTED_ALGORITHMS = ("HS256", "RS256", "ES256")
MIN_RSA_BITS = 2048


class TokenError(ValueError):
    """A token is refused; `str()` is a short reason, safe to send to the client."""


class KeyFileError(ValueError):
    """A key file cannot be used; raised at start, `var` names the setting."""

    def __init__(self, var: str, path: str, why: str) -> None:
        super().__init__(f"invalid {var}={path!r}: {why}")
        self.var = var


_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def _b64decode(part: str) -> bytes:
    """Canonical base64url only (RFC 7515 section 2): the URL-safe alphabet, no padding, and
    the last character's unused bits zero; anything a lenient decoder would skip is refused."""
    if len(part) % 4 == 1 or _B64URL.fullmatch(part) is None:
        raise TokenError("token is not base64url")
    try:
        raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (ValueError, TypeError):
        raise TokenError("token is not base64url") from None
    if _b64encode(raw) != part:  # unused bits set in the last character
        raise TokenError("token is not canonical base64url")
    return raw


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# ---------------------------------------------------------------- keys


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A verification key: `alg` is the one algorithm it may verify (RS256 or ES256)."""

    alg: str
    key: Any  # RSAPublicKey or EllipticCurvePublicKey
    kid: str | None = None  # None: a PEM key, which matches any (or no) `kid`


def _check_key(key: Any, where: str) -> str:
    """The algorithm a loaded public key verifies; ValueError if it is of no use."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"{where}: RSA key of {key.key_size} bits (at least {MIN_RSA_BITS} needed)")
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError(f"{where}: EC key on {key.curve.name} (ES256 needs P-256)")
        return "ES256"
    raise ValueError(f"{where}: not an RSA or EC public key")


def load_pem(data: bytes) -> list[PublicKey]:
    """One public key (or X.509 certificate) in PEM: RSA for RS256 or EC P-256 for ES256."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    if b"PRIVATE KEY" in data:
        raise ValueError("this is a private key: give the public key only")
    try:
        if b"BEGIN CERTIFICATE" in data:
            key: Any = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = load_pem_public_key(data)
    except ValueError as exc:
        raise ValueError(f"not a PEM public key or certificate ({exc})") from None
    return [PublicKey(_check_key(key, "the key"), key)]


_B64URL = re.compile(r"[A-Za-z0-9_-]+")


def _jwk_int(jwk: dict[str, Any], name: str, where: str) -> int:
    value = jwk.get(name)
    if not isinstance(value, str) or not _B64URL.fullmatch(value):
        raise ValueError(f"{where}: `{name}` must be a base64url string")
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (ValueError, binascii.Error):
        raise ValueError(f"{where}: `{name}` is not base64url") from None
    return int.from_bytes(raw, "big")


def load_jwks(data: bytes) -> list[PublicKey]:
    """The signing keys of a JSON Web Key Set: RSA (`n`, `e`) and EC P-256 (`x`, `y`).

    Keys of other types (`oct` included: a shared secret must never come from a key set),
    curves, or with `use` other than `sig` are skipped; a malformed RSA or EC key is an error.
    """
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ValueError("not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError('not a JSON Web Key Set: expected {"keys": [...]}')
    out: list[PublicKey] = []
    kids: set[str] = set()
    for i, jwk in enumerate(doc["keys"]):
        where = f"key {i}"
        if not isinstance(jwk, dict):
            raise ValueError(f"{where}: not an object")
        kid = jwk.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise ValueError(f"{where}: `kid` must be a string")
        if kid is not None:
            where = f"key {kid!r}"
        if jwk.get("use", "sig") != "sig":
            continue
        ops = jwk.get("key_ops")
        if isinstance(ops, list) and "verify" not in ops:
            continue
        kty, alg = jwk.get("kty"), jwk.get("alg")
        key: Any
        if kty == "RSA":
            if alg not in (None, "RS256"):
                continue
            try:
                key = rsa.RSAPublicNumbers(_jwk_int(jwk, "e", where), _jwk_int(jwk, "n", where)).public_key()
            except ValueError as exc:
                raise ValueError(str(exc) if str(exc).startswith(where) else f"{where}: {exc}") from None
        elif kty == "EC":
            if jwk.get("crv") != "P-256" or alg not in (None, "ES256"):
                continue
            x, y = _jwk_int(jwk, "x", where), _jwk_int(jwk, "y", where)
            try:
                key = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
            except ValueError:
                raise ValueError(f"{where}: the point is not on P-256") from None
        else:
            continue
        if kid is not None:
            if kid in kids:
                raise ValueError(f"{where}: `kid` is used twice")
            kids.add(kid)
        out.append(PublicKey(_check_key(key, where), key, kid))
    if not out:
        raise ValueError("no usable RS256 or ES256 signing key in the set")
    return out


# ---------------------------------------------------------------- verification


def _verify_rs256(key: Any, data: bytes, sig: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    try:
        key.verify(sig, data, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def _verify_es256(key: Any, data: bytes, sig: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    if len(sig) != 64:  # JWS: r || s, 32 bytes each (not DER)
        return False
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    try:
        key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


class Verifier:
    """Checks hello tokens: the algorithm is allowed, the signature is good with a key of
    that algorithm, `exp`/`nbf` hold (with leeway), `aud` contains ours if one is set, and
    `sub` is a UUID, which is returned as the user id."""

    def __init__(
        self,
        algorithms: Iterable[str],
        secret: str | None = None,
        keys: Iterable[PublicKey] = (),
        audience: str | None = None,
        leeway_s: float = 30.0,
    ) -> None:
        self.algorithms = frozenset(algorithms)
        unknown = self.algorithms - set(SUPPORTED_ALGORITHMS)
        if unknown:
            raise ValueError(f"unsupported algorithms: {', '.join(sorted(unknown))}")
        self.secret = secret.encode() if secret is not None else None
        self.keys = tuple(keys)
        self.audience = audience
        self.leeway_s = leeway_s

    @classmethod
    def from_settings(cls, settings: Settings) -> Verifier | None:
        """The verifier the settings describe (key files are read here, once), or None when
        no token can be accepted. Raises KeyFileError for an unreadable or unusable file."""
        keys: list[PublicKey] = []
        for var, path, loader in (("AUTH_JWT_PUBLIC_KEY_FILE", settings.jwt_public_key_file, load_pem),
                                  ("AUTH_JWT_JWKS_FILE", settings.jwt_jwks_file, load_jwks)):
            if path is None:
                continue
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                raise KeyFileError(var, path, exc.strerror or str(exc)) from None
            try:
                keys += loader(data)
            except ValueError as exc:
                raise KeyFileError(var, path, str(exc)) from None
        if settings.jwt_algorithms:
            algorithms = set(settings.jwt_algorithms)
            for alg in sorted(algorithms - {"HS256"}):
                if not any(k.alg == alg for k in keys):
                    raise KeyFileError("AUTH_JWT_ALGORITHMS", ",".join(settings.jwt_algorithms),
                                       f"{alg} is allowed but no configured public key is a {alg} key")
        else:
            # The default: what the configured secret and keys can verify.
            algorithms = {k.alg for k in keys} | ({"HS256"} if settings.jwt_secret else set())
        if not algorithms:
            return None
        return cls(algorithms, settings.jwt_secret if "HS256" in algorithms else None,
                   [k for k in keys if k.alg in algorithms], settings.jwt_audience)

    def _candidates(self, alg: str, kid: Any) -> list[PublicKey]:
        keys = [k for k in self.keys if k.alg == alg]
        if kid is None:
            if len(keys) > 1 and all(k.kid is not None for k in keys):
                raise TokenError("token has no kid and several keys could sign it")
            return keys[:1] if len(keys) == 1 else [k for k in keys if k.kid is None]
        if not isinstance(kid, str):
            raise TokenError("token kid must be a string")
        return [k for k in keys if k.kid is None or k.kid == kid]

    def verify(self, token: str, now_s: float) -> str:
        """The token's `sub` (a UUID, normalized) if it is acceptable; TokenError otherwise."""
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenError("token is not a JWT")
        try:
            header = orjson.loads(_b64decode(parts[0]))
            claims: Any = orjson.loads(_b64decode(parts[1]))
        except orjson.JSONDecodeError:
            raise TokenError("token is not a JWT") from None
        if not isinstance(header, dict) or not isinstance(header.get("alg"), str):
            raise TokenError("token header has no algorithm")
        alg = header["alg"]
        if alg not in self.algorithms:
            raise TokenError(f"token algorithm must be one of {', '.join(sorted(self.algorithms))}")
        if "crit" in header:
            raise TokenError("token has critical header parameters this gateway does not understand")
        signing_input = f"{parts[0]}.{parts[1]}".encode()
        sig = _b64decode(parts[2])
        if alg == "HS256":
            if self.secret is None:  # unreachable when built from settings; defensive
                raise TokenError("this gateway has no HS256 secret")
            ok = hmac.compare_digest(hmac.new(self.secret, signing_input, hashlib.sha256).digest(), sig)
        else:
            keys = self._candidates(alg, header.get("kid"))
            if not keys:
                raise TokenError("unknown token key id" if header.get("kid") is not None
                                 else f"no {alg} key configured")
            check = _verify_rs256 if alg == "RS256" else _verify_es256
            ok = any(check(k.key, signing_input, sig) for k in keys)
        if not ok:
            raise TokenError("bad token signature")
        return self._subject(claims, now_s)

    def _subject(self, claims: Any, now_s: float) -> str:
        if not isinstance(claims, dict):
            raise TokenError("token claims must be an object")
        leeway = self.leeway_s
        exp = claims.get("exp")
        if exp is not None and (not _number(exp) or now_s > exp + leeway):
            raise TokenError("token expired")
        nbf = claims.get("nbf")
        if nbf is not None and (not _number(nbf) or now_s + leeway < nbf):
            raise TokenError("token not yet valid")
        if self.audience is not None:
            aud = claims.get("aud")
            auds = aud if isinstance(aud, list) else [aud]
            if self.audience not in auds:
                raise TokenError("wrong token audience")
        sub = claims.get("sub")
        if not isinstance(sub, str):
            raise TokenError("token has no subject")
        try:
            return str(uuid.UUID(sub))
        except ValueError:
            raise TokenError("token subject must be a UUID") from None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def verify_hs256(token: str, secret: str, audience: str | None, now_s: float, leeway_s: float = 30.0) -> str:
    """Check an HS256 token (signature, `exp`, `nbf`, `aud`); return `sub` (a UUID).

    Raises TokenError with a short reason on any failure.
    """
    return Verifier(("HS256",), secret, (), audience, leeway_s).verify(token, now_s)


def sign_hs256(claims: dict[str, Any], secret: str, headers: dict[str, Any] | None = None) -> str:
    """Make an HS256 token (for tests, tools and the demo)."""
    head = _b64encode(orjson.dumps({"alg": "HS256", "typ": "JWT", **(headers or {})}))
    body = _b64encode(orjson.dumps(claims))
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64encode(sig)}"


def sign(claims: dict[str, Any], alg: str, private_key: Any, kid: str | None = None) -> str:
    """Make an RS256 or ES256 token with a `cryptography` private key (tests and tools)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    signing_input = f"{_b64encode(orjson.dumps(header))}.{_b64encode(orjson.dumps(claims))}"
    if alg == "RS256":
        sig = private_key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    elif alg == "ES256":
        r, s = decode_dss_signature(private_key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    else:
        raise ValueError(f"cannot sign {alg}")
    return f"{signing_input}.{_b64encode(sig)}"


def public_jwk(public_key: Any, kid: str | None = None) -> dict[str, Any]:
    """A public key as a JSON Web Key (for tests and tools that write a JWKS file)."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    def b64int(n: int, size: int | None = None) -> str:
        return _b64encode(n.to_bytes(size or max(1, (n.bit_length() + 7) // 8), "big"))

    jwk: dict[str, Any]
    if isinstance(public_key, rsa.RSAPublicKey):
        nums = public_key.public_numbers()
        jwk = {"kty": "RSA", "alg": "RS256", "use": "sig", "n": b64int(nums.n), "e": b64int(nums.e)}
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        pts = public_key.public_numbers()
        jwk = {"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "x": b64int(pts.x, 32), "y": b64int(pts.y, 32)}
    else:
        raise ValueError("not an RSA or EC public key")
    if kid is not None:
        jwk["kid"] = kid
    return jwk
