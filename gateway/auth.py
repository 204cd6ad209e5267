"""hello.token: JSON Web Tokens (RFC 7519) signed with HS256, RS256 or ES256, checked by PyJWT
under our policy.

Keys: HS256 uses AUTH_JWT_SECRET; RS256 (RSA, 2048 bits or more) and ES256 (P-256) use public
keys read once at start from AUTH_JWT_PUBLIC_KEY_FILE (PEM) or AUTH_JWT_JWKS_FILE (a JSON Web
Key Set), and/or fetched from AUTH_JWT_JWKS_URL (cached, re-fetched for an unknown `kid`, at
most once per AUTH_JWT_JWKS_MIN_INTERVAL, in a worker thread). Key loading and checking are ours
(`load_pem`, `load_jwks`), so a URL's keys obey the same rules as a file's.

In front of PyJWT (whose decoder is lenient): each segment must be canonical base64url, the
header's `alg` one of AUTH_JWT_ALGORITHMS, `crit` absent. Algorithm confusion is ruled out by
construction: PyJWT is given one algorithm and one key of that algorithm's own kind. HS256
only ever uses the shared secret (never public-key bytes), RS256 only RSA keys, ES256 only
P-256 keys. `none` is never accepted, and header parameters that name keys (`jwk`, `jku`,
`x5u`, `x5c`) are ignored: keys come from the operator's files and URL only. PyJWT checks the
signature, `aud` and `iss`; `exp`/`nbf` (against the caller's clock) and `sub` (a UUID) after
it are ours.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import logging
import re
import time
import uuid
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
import orjson

if TYPE_CHECKING:
    from roomcast.settings import Settings

SUPPORTED_ALGORITHMS = ("HS256", "RS256", "ES256")
MIN_RSA_BITS = 2048

log = logging.getLogger(__name__)
# PyJWT warns on every check with an HS256 secret under 32 bytes; from_settings logs it once.
warnings.filterwarnings("ignore", category=jwt.warnings.InsecureKeyLengthWarning)


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


def load_jwks(data: bytes, skipped: list[str] | None = None) -> list[PublicKey]:
    """The signing keys of a JSON Web Key Set: RSA (`n`, `e`) and EC P-256 (`x`, `y`).

    Keys of other types (`oct` included: a shared secret must never come from a key set),
    curves, or with `use` other than `sig` are skipped; a malformed or too weak RSA or EC key
    (or a `kid` used twice) is an error, unless `skipped` is given: then such a key is left out
    and why is appended to it (a fetched set: one bad key must not cost the good ones).
    """
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ValueError("not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError('not a JSON Web Key Set: expected {"keys": [...]}')
    out: list[PublicKey] = []
    kids: set[str] = set()
    for i, jwk in enumerate(doc["keys"]):
        try:
            key = _jwk_key(i, jwk, kids)
        except ValueError as exc:
            if skipped is None:
                raise
            skipped.append(str(exc))
            continue
        if key is not None:
            out.append(key)
    if not out:
        raise ValueError("no usable RS256 or ES256 signing key in the set")
    return out


def _jwk_key(i: int, jwk: Any, kids: set[str]) -> PublicKey | None:
    """Key `i` of a set, None if it is of a kind that cannot sign tokens here."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    where = f"key {i}"
    if not isinstance(jwk, dict):
        raise ValueError(f"{where}: not an object")
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise ValueError(f"{where}: `kid` must be a string")
    if kid is not None:
        where = f"key {kid!r}"
    if jwk.get("use", "sig") != "sig":
        return None
    ops = jwk.get("key_ops")
    if isinstance(ops, list) and "verify" not in ops:
        return None
    kty, alg = jwk.get("kty"), jwk.get("alg")
    key: Any
    if kty == "RSA":
        if alg not in (None, "RS256"):
            return None
        try:
            key = rsa.RSAPublicNumbers(_jwk_int(jwk, "e", where), _jwk_int(jwk, "n", where)).public_key()
        except ValueError as exc:
            raise ValueError(str(exc) if str(exc).startswith(where) else f"{where}: {exc}") from None
    elif kty == "EC":
        if jwk.get("crv") != "P-256" or alg not in (None, "ES256"):
            return None
        x, y = _jwk_int(jwk, "x", where), _jwk_int(jwk, "y", where)
        try:
            key = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
        except ValueError:
            raise ValueError(f"{where}: the point is not on P-256") from None
    else:
        return None
    if kid is not None and kid in kids:
        raise ValueError(f"{where}: `kid` is used twice")
    checked = PublicKey(_check_key(key, where), key, kid)
    if kid is not None:
        kids.add(kid)
    return checked


# ---------------------------------------------------------------- keys over HTTP(S)


class KeysUnavailable(Exception):
    """The token may be good but its key cannot be had now (AUTH_JWT_JWKS_URL fails): the
    client should retry (`unavailable`), not treat the token as refused."""


class RemoteJwks:
    """The key set at AUTH_JWT_JWKS_URL, fetched in a worker thread (never blocking the event
    loop), parsed with `load_jwks` (so the same key policy as the file), cached for `ttl_s`.

    A fetch is attempted at most once per `min_interval_s` whatever arrives (tokens with random
    `kid`s cannot make us hammer the endpoint); concurrent hellos share one fetch. When a fetch
    fails the previous keys stay in use; `error` holds why the last attempt failed, or None.
    """

    MAX_BYTES = 1 << 20

    def __init__(self, url: str, ttl_s: float, min_interval_s: float, timeout_s: float) -> None:
        self.url = url
        self.ttl_s = ttl_s
        self.min_interval_s = min_interval_s
        self.timeout_s = timeout_s
        self.keys: tuple[PublicKey, ...] = ()
        self.error: str | None = None
        self.fetches = 0  # attempts, for tests and logs
        self._fetched_at: float | None = None  # monotonic time of the last good fetch
        self._attempted_at: float | None = None
        self._inflight: asyncio.Future[None] | None = None

    def wants_fetch(self, unknown_kid: bool) -> bool:
        """Whether a hello should wait for a fetch: one is under way, or one is due (never
        fetched, cache expired, or an unknown kid) and the rate limit allows it."""
        if self._inflight is not None:
            return True
        now = time.monotonic()
        if self._attempted_at is not None and now - self._attempted_at < self.min_interval_s:
            return False
        return unknown_kid or self._fetched_at is None or now - self._fetched_at >= self.ttl_s

    @property
    def failing(self) -> bool:
        """No answer to rely on: the last fetch failed, or the one under way did not end in time."""
        return self.error is not None or self._inflight is not None

    def start(self) -> asyncio.Future[None]:
        """Start a fetch (in the running loop) unless one is under way."""
        if self._inflight is None:
            self._attempted_at = time.monotonic()
            self.fetches += 1
            self._inflight = asyncio.ensure_future(self._fetch())
        return self._inflight

    async def refresh(self) -> None:
        """Fetch the set (or join the fetch under way); waits at most `timeout_s`."""
        inflight = self.start()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(inflight), self.timeout_s)

    async def _fetch(self) -> None:
        try:
            keys = await asyncio.to_thread(self._download)
        except Exception as exc:  # any failure keeps the previous keys
            self.error = str(exc) or type(exc).__name__
            log.warning("AUTH_JWT_JWKS_URL %s: fetch failed (%s); %d cached keys stay in use",
                        self.url, self.error, len(self.keys))
        else:
            self.keys, self.error, self._fetched_at = keys, None, time.monotonic()
        finally:
            self._inflight = None

    def _download(self) -> tuple[PublicKey, ...]:
        import urllib.error
        import urllib.request

        req = urllib.request.Request(self.url, headers={"Accept": "application/json", "User-Agent": "roomcast"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                data = resp.read(self.MAX_BYTES + 1)
        except urllib.error.HTTPError as exc:
            raise ValueError(f"HTTP {exc.code}") from None
        except (OSError, urllib.error.URLError) as exc:
            raise ValueError(str(getattr(exc, "reason", exc))) from None
        if len(data) > self.MAX_BYTES:
            raise ValueError(f"larger than {self.MAX_BYTES} bytes")
        skipped: list[str] = []
        keys = tuple(load_jwks(data, skipped))
        if skipped:
            log.warning("AUTH_JWT_JWKS_URL %s: keys left out: %s", self.url, "; ".join(skipped))
        return keys


# ---------------------------------------------------------------- verification


class _NoKey(Exception):
    """No configured or cached key matches the token (internal)."""


# PyJWT checks the signature (with the one key we chose for the one algorithm the header
# names), `aud` and `iss`; the clock (`exp`, `nbf`) is ours so callers can pass `now_s`.
_PYJWT_OPTIONS: Any = {"verify_exp": False, "verify_nbf": False, "verify_iat": False}


class Verifier:
    """Checks hello tokens: the algorithm is allowed, the signature is good with a key of
    that algorithm, `exp`/`nbf` hold (with leeway), `aud` contains ours if one is set, `iss`
    is ours if one is set, and `sub` is a UUID, which is returned as the user id.

    The token is checked to be canonical base64url and its header is read here; the
    signature and `aud`/`iss` are checked by PyJWT, given only the key our policy chose."""

    def __init__(
        self,
        algorithms: Iterable[str],
        secret: str | None = None,
        keys: Iterable[PublicKey] = (),
        audience: str | None = None,
        leeway_s: float = 30.0,
        issuer: str | None = None,
        remote: RemoteJwks | None = None,
    ) -> None:
        self.algorithms = frozenset(algorithms)
        unknown = self.algorithms - set(SUPPORTED_ALGORITHMS)
        if unknown:
            raise ValueError(f"unsupported algorithms: {', '.join(sorted(unknown))}")
        self.secret = secret.encode() if secret is not None else None
        self.keys = tuple(keys)
        self.audience = audience
        self.issuer = issuer
        self.leeway_s = leeway_s
        self.remote = remote
        self._jwt = jwt.PyJWT()

    @classmethod
    def from_settings(cls, settings: Settings) -> Verifier | None:
        """The verifier the settings describe (key files are read here, once), or None when
        no token can be accepted. Raises KeyFileError for an unreadable or unusable file.
        Keys at AUTH_JWT_JWKS_URL are fetched later, when a token needs them."""
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
        url = settings.jwt_jwks_url
        remote = None if url is None else RemoteJwks(url, settings.jwt_jwks_cache_ms / 1000,
                                                      settings.jwt_jwks_min_interval_ms / 1000,
                                                      settings.jwt_jwks_timeout_ms / 1000)
        if settings.jwt_algorithms:
            algorithms = set(settings.jwt_algorithms)
            for alg in sorted(algorithms - {"HS256"}):
                if remote is None and not any(k.alg == alg for k in keys):
                    raise KeyFileError("AUTH_JWT_ALGORITHMS", ",".join(settings.jwt_algorithms),
                                       f"{alg} is allowed but no configured public key is a {alg} key")
        else:
            # The default: what the configured secret and keys can verify (any key kind a URL
            # may serve: RS256 and ES256).
            algorithms = {k.alg for k in keys} | ({"HS256"} if settings.jwt_secret else set())
            if remote is not None:
                algorithms |= {"RS256", "ES256"}
        if not algorithms:
            return None
        if "HS256" in algorithms and settings.jwt_secret and len(settings.jwt_secret.encode()) < 32:
            log.warning("AUTH_JWT_SECRET is shorter than 32 bytes (RFC 7518 section 3.2): use a longer one")
        return cls(algorithms, settings.jwt_secret if "HS256" in algorithms else None,
                   [k for k in keys if k.alg in algorithms], settings.jwt_audience,
                   issuer=settings.jwt_issuer, remote=remote)

    def _candidates(self, alg: str, kid: Any) -> list[PublicKey]:
        keys = [k for k in self.keys if k.alg == alg]
        if self.remote is not None:
            keys += [k for k in self.remote.keys if k.alg == alg]
        if kid is None:
            if len(keys) > 1 and all(k.kid is not None for k in keys):
                raise TokenError("token has no kid and several keys could sign it")
            return keys[:1] if len(keys) == 1 else [k for k in keys if k.kid is None]
        if not isinstance(kid, str):
            raise TokenError("token kid must be a string")
        return [k for k in keys if k.kid is None or k.kid == kid]

    async def check(self, token: str, now_s: float) -> str:
        """`verify`, fetching AUTH_JWT_JWKS_URL first when the token needs keys from it that
        are missing or stale (rate-limited). TokenError: refused; KeysUnavailable: retry."""
        remote = self.remote
        if remote is None:
            return self.verify(token, now_s)
        try:
            return self._verify(token, now_s, fetch_allowed=True)
        except _NoKey:
            await remote.refresh()
        return self.verify(token, now_s)

    def verify(self, token: str, now_s: float) -> str:
        """The token's `sub` (a UUID, normalized) if it is acceptable; TokenError otherwise
        (KeysUnavailable when its key would come from a failing AUTH_JWT_JWKS_URL). Uses the
        keys at hand; never fetches."""
        try:
            return self._verify(token, now_s, fetch_allowed=False)
        except _NoKey:  # unreachable without fetch_allowed; defensive
            raise TokenError("unknown token key id") from None

    def _verify(self, token: str, now_s: float, fetch_allowed: bool) -> str:
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenError("token is not a JWT")
        # PyJWT's decoder is lenient (padding, ...): only canonical base64url gets that far.
        try:
            header = orjson.loads(_b64decode(parts[0]))
            claims: Any = orjson.loads(_b64decode(parts[1]))
        except orjson.JSONDecodeError:
            raise TokenError("token is not a JWT") from None
        _b64decode(parts[2])
        if not isinstance(header, dict) or not isinstance(header.get("alg"), str):
            raise TokenError("token header has no algorithm")
        alg = header["alg"]
        if alg not in self.algorithms:
            raise TokenError(f"token algorithm must be one of {', '.join(sorted(self.algorithms))}")
        if "crit" in header:
            raise TokenError("token has critical header parameters this gateway does not understand")
        if not isinstance(claims, dict):
            raise TokenError("token claims must be an object")
        if alg == "HS256":
            if self.secret is None:  # unreachable when built from settings; defensive
                raise TokenError("this gateway has no HS256 secret")
            payload = self._decode(token, alg, self.secret)
        else:
            kid = header.get("kid")
            keys = self._candidates(alg, kid)
            remote = self.remote
            if remote is not None and fetch_allowed and remote.wants_fetch(unknown_kid=not keys):
                if not keys:
                    raise _NoKey  # check() waits for the fetch, then tries again
                remote.start()  # the cache expired: fetch in the background, use the keys at hand
            if not keys:
                if remote is not None and remote.failing:
                    raise KeysUnavailable(f"the token's key cannot be fetched now ({remote.error}); retry")
                raise TokenError("unknown token key id" if kid is not None else f"no {alg} key configured")
            payload = None
            for k in keys:
                try:
                    payload = self._decode(token, alg, k.key)
                    break
                except jwt.InvalidSignatureError:
                    continue
            if payload is None:
                raise TokenError("bad token signature")
        return self._subject(payload, now_s)

    def _decode(self, token: str, alg: str, key: Any) -> Any:
        """PyJWT: the signature with `key` for `alg` only, then `aud` and `iss`."""
        options: Any = {**_PYJWT_OPTIONS, "verify_aud": self.audience is not None}
        try:
            return self._jwt.decode(token, key, algorithms=[alg], audience=self.audience,
                                    issuer=self.issuer, options=options)
        except jwt.InvalidSignatureError:
            if alg == "HS256":
                raise TokenError("bad token signature") from None
            raise
        except (jwt.InvalidAudienceError, jwt.MissingRequiredClaimError) as exc:
            claim = getattr(exc, "claim", "aud")
            raise TokenError("wrong token issuer" if claim == "iss" else "wrong token audience") from None
        except jwt.InvalidIssuerError:
            raise TokenError("wrong token issuer") from None
        except jwt.PyJWTError as exc:
            raise TokenError(f"invalid token ({exc})") from None

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
