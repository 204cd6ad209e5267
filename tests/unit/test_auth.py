"""gateway.auth: JSON Web Tokens for hello.token (RFC 7519): HS256, RS256, ES256, key files."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from gateway.auth import (
    KeyFileError,
    PublicKey,
    TokenError,
    Verifier,
    load_jwks,
    load_pem,
    public_jwk,
    sign,
    sign_hs256,
    verify_hs256,
)
from roomcast.settings import Settings

# Short test secrets on purpose; PyJWT warns about them (the gateway logs it once at start).
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")

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


# ================================================================ RS256 / ES256 (public keys)

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC_OTHER = ec.generate_private_key(ec.SECP256R1())


def pem(private_key: Any) -> bytes:
    return bytes(private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo))


def jwks(*entries: tuple[Any, str | None]) -> bytes:
    return orjson.dumps({"keys": [public_jwk(k.public_key(), kid) for k, kid in entries]})


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": USER, "aud": AUDIENCE, "exp": NOW + 600, **extra}


def pem_verifier(*keys: Any, algorithms: tuple[str, ...] = ("RS256", "ES256"), secret: str | None = None) -> Verifier:
    loaded = [k for key in keys for k in load_pem(pem(key))]
    return Verifier(algorithms, secret, loaded, AUDIENCE)


def jwks_verifier(data: bytes, algorithms: tuple[str, ...] = ("RS256", "ES256")) -> Verifier:
    return Verifier(algorithms, None, load_jwks(data), AUDIENCE)


def raw_token(header: dict[str, Any], body: dict[str, Any], sig: bytes) -> str:
    return f"{b64(orjson.dumps(header))}.{b64(orjson.dumps(body))}.{b64(sig)}"


# ---------------------------------------------------------------- accepted


@pytest.mark.parametrize(("alg", "key"), [("RS256", RSA_KEY), ("ES256", EC_KEY)])
def test_pem_key_verifies_its_algorithm(alg: str, key: Any) -> None:
    v = pem_verifier(key)
    assert v.verify(sign(claims(), alg, key), NOW) == USER
    # A kid in the token is fine for a PEM key (it has none to compare).
    assert v.verify(sign(claims(), alg, key, kid="anything"), NOW) == USER


def test_jwks_selects_the_key_by_kid() -> None:
    v = jwks_verifier(jwks((RSA_KEY, "rsa-1"), (RSA_OTHER, "rsa-2"), (EC_KEY, "ec-1")))
    assert v.verify(sign(claims(), "RS256", RSA_KEY, kid="rsa-1"), NOW) == USER
    assert v.verify(sign(claims(), "RS256", RSA_OTHER, kid="rsa-2"), NOW) == USER
    assert v.verify(sign(claims(), "ES256", EC_KEY, kid="ec-1"), NOW) == USER


def test_jwks_with_one_key_of_the_algorithm_needs_no_kid() -> None:
    v = jwks_verifier(jwks((RSA_KEY, "rsa-1"), (EC_KEY, "ec-1")))
    assert v.verify(sign(claims(), "RS256", RSA_KEY), NOW) == USER
    assert v.verify(sign(claims(), "ES256", EC_KEY), NOW) == USER


def test_hs256_and_rs256_side_by_side() -> None:
    v = pem_verifier(RSA_KEY, algorithms=("HS256", "RS256"), secret=SECRET)
    assert v.verify(sign(claims(), "RS256", RSA_KEY), NOW) == USER
    assert v.verify(sign_hs256(claims(), SECRET), NOW) == USER


def test_es256_signature_is_raw_r_and_s() -> None:
    tok = sign(claims(), "ES256", EC_KEY)
    assert len(base64.urlsafe_b64decode(tok.split(".")[2] + "==")) == 64


# ---------------------------------------------------------------- refused


def rs_tampered() -> str:
    head, _, sig = sign(claims(), "RS256", RSA_KEY).split(".")
    return f"{head}.{b64(orjson.dumps(claims(sub='00000000-0000-4000-8000-000000000000')))}.{sig}"


def es_der_signature() -> str:
    """ES256 with a DER-encoded signature (what a naive signer emits) instead of r||s."""
    head = b64(orjson.dumps({"alg": "ES256"}))
    body = b64(orjson.dumps(claims()))
    der = EC_KEY.sign(f"{head}.{body}".encode(), ec.ECDSA(hashes.SHA256()))
    return f"{head}.{body}.{b64(der)}"


def hs256_with_public_key_as_secret() -> str:
    """The classic algorithm confusion: HMAC keyed with the verifier's public key bytes."""
    head = b64(orjson.dumps({"alg": "HS256", "typ": "JWT"}))
    body = b64(orjson.dumps(claims()))
    sig = hmac.new(pem(RSA_KEY), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def rs_signature_under_es_header() -> str:
    head = b64(orjson.dumps({"alg": "ES256"}))
    body = b64(orjson.dumps(claims()))
    sig = RSA_KEY.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{head}.{body}.{b64(sig)}"


def embedded_jwk() -> str:
    """The attacker's own key in the header (`jwk`): must never be trusted."""
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    head = {"alg": "RS256", "jwk": public_jwk(attacker.public_key()), "jku": "https://evil.example/jwks"}
    head_b64, body_b64 = b64(orjson.dumps(head)), b64(orjson.dumps(claims()))
    sig = attacker.sign(f"{head_b64}.{body_b64}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{head_b64}.{body_b64}.{b64(sig)}"


PK_REFUSED: list[tuple[str, Any]] = [
    ("RS256 wrong key", lambda: sign(claims(), "RS256", RSA_OTHER)),
    ("ES256 wrong key", lambda: sign(claims(), "ES256", EC_OTHER)),
    ("RS256 forged claims", rs_tampered),
    ("RS256 signature cut", lambda: sign(claims(), "RS256", RSA_KEY)[:-8]),
    ("RS256 expired", lambda: sign(claims(exp=NOW - 3600), "RS256", RSA_KEY)),
    ("ES256 expired", lambda: sign(claims(exp=NOW - 3600), "ES256", EC_KEY)),
    ("RS256 not yet valid", lambda: sign(claims(nbf=NOW + 3600), "RS256", RSA_KEY)),
    ("RS256 wrong audience", lambda: sign(claims(aud="other-app"), "RS256", RSA_KEY)),
    ("ES256 no audience", lambda: sign({"sub": USER, "exp": NOW + 60}, "ES256", EC_KEY)),
    ("RS256 sub not UUID", lambda: sign(claims(sub="admin"), "RS256", RSA_KEY)),
    ("alg none", lambda: raw_token({"alg": "none"}, claims(), b"")),
    ("alg None", lambda: raw_token({"alg": "None"}, claims(), b"")),
    ("alg NONE", lambda: raw_token({"alg": "NONE"}, claims(), b"")),
    ("alg missing", lambda: raw_token({"typ": "JWT"}, claims(), b"x")),
    ("alg not a string", lambda: raw_token({"alg": ["RS256"]}, claims(), b"x")),
    ("alg confusion: HS256 keyed with the public key", hs256_with_public_key_as_secret),
    ("alg confusion: RSA signature under ES256", rs_signature_under_es_header),
    ("alg RS512", lambda: raw_token({"alg": "RS512"}, claims(), b"x" * 256)),
    ("alg PS256", lambda: raw_token({"alg": "PS256"}, claims(), b"x" * 256)),
    ("ES256 DER signature", es_der_signature),
    ("ES256 zero signature", lambda: raw_token({"alg": "ES256"}, claims(), bytes(64))),
    ("embedded jwk/jku header", embedded_jwk),
    ("crit header", lambda: sign_crit()),
]


def sign_crit() -> str:
    head = b64(orjson.dumps({"alg": "RS256", "crit": ["exp"]}))
    body = b64(orjson.dumps(claims()))
    sig = RSA_KEY.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{head}.{body}.{b64(sig)}"


@pytest.mark.parametrize("make", [m for _, m in PK_REFUSED], ids=[n for n, _ in PK_REFUSED])
def test_public_key_token_refused(make: Any) -> None:
    tok = make()
    with pytest.raises(TokenError):
        pem_verifier(RSA_KEY, EC_KEY).verify(tok, NOW)
    with pytest.raises(TokenError):
        jwks_verifier(jwks((RSA_KEY, None), (EC_KEY, None))).verify(tok, NOW)


def test_alg_confusion_refused_even_with_hs256_allowed() -> None:
    # HS256 allowed with its own secret: the public key is still never an HMAC key.
    v = pem_verifier(RSA_KEY, algorithms=("HS256", "RS256"), secret=SECRET)
    with pytest.raises(TokenError, match="bad token signature"):
        v.verify(hs256_with_public_key_as_secret(), NOW)


def test_hs256_refused_when_only_public_keys_are_configured() -> None:
    with pytest.raises(TokenError, match="algorithm"):
        pem_verifier(RSA_KEY).verify(sign_hs256(claims(), SECRET), NOW)


def test_algorithm_not_allowed_although_a_key_exists() -> None:
    v = pem_verifier(RSA_KEY, EC_KEY, algorithms=("RS256",))
    with pytest.raises(TokenError, match="algorithm"):
        v.verify(sign(claims(), "ES256", EC_KEY), NOW)


def test_unknown_kid_is_refused() -> None:
    v = jwks_verifier(jwks((RSA_KEY, "rsa-1"), (EC_KEY, "ec-1")))
    with pytest.raises(TokenError, match="unknown token key id"):
        v.verify(sign(claims(), "RS256", RSA_KEY, kid="rsa-9"), NOW)
    # A kid of a key of the other algorithm is no match either.
    with pytest.raises(TokenError, match="unknown token key id"):
        v.verify(sign(claims(), "RS256", RSA_KEY, kid="ec-1"), NOW)


def test_kid_of_another_key_does_not_verify() -> None:
    v = jwks_verifier(jwks((RSA_KEY, "rsa-1"), (RSA_OTHER, "rsa-2")))
    with pytest.raises(TokenError, match="bad token signature"):
        v.verify(sign(claims(), "RS256", RSA_KEY, kid="rsa-2"), NOW)


def test_no_kid_with_several_keys_is_refused() -> None:
    v = jwks_verifier(jwks((RSA_KEY, "rsa-1"), (RSA_OTHER, "rsa-2")))
    with pytest.raises(TokenError, match="kid"):
        v.verify(sign(claims(), "RS256", RSA_KEY), NOW)


def test_kid_must_be_a_string() -> None:
    v = jwks_verifier(jwks((RSA_KEY, "1")))
    head = b64(orjson.dumps({"alg": "RS256", "kid": 1}))
    body = b64(orjson.dumps(claims()))
    sig = RSA_KEY.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    with pytest.raises(TokenError):
        v.verify(f"{head}.{body}.{b64(sig)}", NOW)


def test_verifier_refuses_unknown_algorithms() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        Verifier(("none",))


# ---------------------------------------------------------------- key files


def test_pem_accepts_a_certificate() -> None:
    import datetime

    from cryptography import x509
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer")])
    when = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(EC_KEY.public_key())
            .serial_number(1).not_valid_before(when).not_valid_after(when + datetime.timedelta(days=3650))
            .sign(EC_KEY, hashes.SHA256()))
    keys = load_pem(cert.public_bytes(serialization.Encoding.PEM))
    assert [k.alg for k in keys] == ["ES256"]
    assert Verifier(("ES256",), None, keys).verify(sign({"sub": USER}, "ES256", EC_KEY), NOW) == USER


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (lambda: RSA_KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), "private key"),
        (lambda: b"hello", "not a PEM"),
        (lambda: pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)), "at least 2048"),
        (lambda: pem(ec.generate_private_key(ec.SECP384R1())), "P-256"),
    ],
    ids=["private", "garbage", "rsa-1024", "p-384"],
)
def test_unusable_pem_is_refused(data: Any, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        load_pem(data())


def test_jwks_skips_what_cannot_sign_tokens_here() -> None:
    rsa_jwk = public_jwk(RSA_KEY.public_key(), "rsa")
    keys = load_jwks(orjson.dumps({"keys": [
        {"kty": "oct", "kid": "hmac", "k": b64(b"shared-secret")},  # never a key from a key set
        {**public_jwk(RSA_OTHER.public_key(), "enc"), "use": "enc"},
        {**public_jwk(RSA_OTHER.public_key(), "ps"), "alg": "PS256"},
        {**public_jwk(EC_OTHER.public_key(), "ops"), "key_ops": ["encrypt"]},
        {"kty": "EC", "crv": "P-384", "kid": "p384", "x": "AA", "y": "AA"},
        {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "AA"},
        rsa_jwk,
    ]}))
    assert [(k.kid, k.alg) for k in keys] == [("rsa", "RS256")]


@pytest.mark.parametrize(
    ("doc", "why"),
    [
        (b"not json", "not JSON"),
        (b"[]", "Key Set"),
        (b'{"keys": {}}', "Key Set"),
        (b'{"keys": []}', "no usable"),
        (b'{"keys": [{"kty": "oct", "k": "AA"}]}', "no usable"),
        (b'{"keys": [1]}', "not an object"),
        (b'{"keys": [{"kty": "RSA", "kid": "r", "e": "AQAB"}]}', "`n`"),
        (b'{"keys": [{"kty": "RSA", "kid": "r", "n": "!!", "e": "AQAB"}]}', "`n`"),
        (b'{"keys": [{"kty": "EC", "crv": "P-256", "kid": "e", "x": "AQ", "y": "AQ"}]}', "not on P-256"),
        (b'{"keys": [{"kty": "RSA", "kid": 5, "n": "AQ", "e": "AQAB"}]}', "`kid`"),
    ],
)
def test_bad_jwks_is_refused(doc: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        load_jwks(doc)


def test_jwks_small_rsa_key_and_duplicate_kid_are_refused() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ValueError, match="at least 2048"):
        load_jwks(jwks((small, "small")))
    with pytest.raises(ValueError, match="twice"):
        load_jwks(jwks((RSA_KEY, "same"), (RSA_OTHER, "same")))


def write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_from_settings_loads_files_once_and_derives_algorithms(tmp_path: Path) -> None:
    env = {"AUTH_JWT_JWKS_FILE": write(tmp_path, "jwks.json", jwks((RSA_KEY, "r1"))),
           "AUTH_JWT_AUDIENCE": AUDIENCE}
    v = Verifier.from_settings(Settings.load(env))
    assert v is not None
    assert v.algorithms == {"RS256"}  # only what the keys can verify: no ES256, no HS256
    assert v.verify(sign(claims(), "RS256", RSA_KEY, kid="r1"), NOW) == USER
    (tmp_path / "jwks.json").write_bytes(jwks((RSA_OTHER, "r1")))  # changing the file later changes nothing
    assert v.verify(sign(claims(), "RS256", RSA_KEY, kid="r1"), NOW) == USER

    both = Verifier.from_settings(Settings.load({
        "AUTH_JWT_SECRET": SECRET, "AUTH_JWT_PUBLIC_KEY_FILE": write(tmp_path, "ec.pem", pem(EC_KEY))}))
    assert both is not None and both.algorithms == {"HS256", "ES256"}
    only_secret = Verifier.from_settings(Settings.load({"AUTH_JWT_SECRET": SECRET}))
    assert only_secret is not None and only_secret.algorithms == {"HS256"} and only_secret.keys == ()
    assert Verifier.from_settings(Settings.load({})) is None


def test_from_settings_explicit_algorithms_restrict(tmp_path: Path) -> None:
    env = {"AUTH_JWT_SECRET": SECRET, "AUTH_JWT_ALGORITHMS": "RS256",
           "AUTH_JWT_JWKS_FILE": write(tmp_path, "jwks.json", jwks((RSA_KEY, "r"), (EC_KEY, "e")))}
    v = Verifier.from_settings(Settings.load(env))
    assert v is not None and v.algorithms == {"RS256"} and v.secret is None
    assert [k.alg for k in v.keys] == ["RS256"]
    with pytest.raises(TokenError):
        v.verify(sign_hs256(claims(), SECRET), NOW)
    with pytest.raises(TokenError):
        v.verify(sign(claims(), "ES256", EC_KEY, kid="e"), NOW)


def test_from_settings_refuses_unusable_files(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(KeyFileError) as info:
        Verifier.from_settings(Settings.load({"AUTH_JWT_PUBLIC_KEY_FILE": missing}))
    assert info.value.var == "AUTH_JWT_PUBLIC_KEY_FILE" and missing in str(info.value)
    with pytest.raises(KeyFileError) as info:
        Verifier.from_settings(Settings.load({"AUTH_JWT_JWKS_FILE": write(tmp_path, "bad.json", b"{}")}))
    assert info.value.var == "AUTH_JWT_JWKS_FILE"
    # ES256 asked for, but the file holds only an RSA key.
    with pytest.raises(KeyFileError) as info:
        Verifier.from_settings(Settings.load({"AUTH_JWT_ALGORITHMS": "ES256",
                                              "AUTH_JWT_PUBLIC_KEY_FILE": write(tmp_path, "r.pem", pem(RSA_KEY))}))
    assert info.value.var == "AUTH_JWT_ALGORITHMS"


def test_gateway_refuses_to_start_with_a_bad_key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    monkeypatch.setenv("AUTH_JWT_JWKS_FILE", write(tmp_path, "jwks.json", json.dumps({"keys": []}).encode()))
    assert main([]) == 2
    assert "AUTH_JWT_JWKS_FILE" in capsys.readouterr().err


def test_public_key_dataclass_is_frozen() -> None:
    key = PublicKey("RS256", RSA_KEY.public_key())
    with pytest.raises(AttributeError):
        key.alg = "HS256"  # type: ignore[misc]


# ---------------------------------------------------------------- canonical base64url only


def _parts() -> list[str]:
    return sign_hs256({"sub": USER}, SECRET).split(".")


def _junk_inside(part: str, junk: str) -> str:
    return part[:10] + junk + part[10:]


def _last_char_with_unused_bits(part: str) -> str:
    """The same bytes, but the last character's unused low bits set (non-canonical)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    unused = {2: 4, 3: 2}[len(part) % 4]  # 2 chars -> 4 unused bits, 3 chars -> 2
    i = alphabet.index(part[-1])
    assert i % (1 << unused) == 0, "the canonical encoding has them zero"
    return part[:-1] + alphabet[i + 1]


NON_CANONICAL = [
    # Four junk characters keep the length valid: a lenient decoder skips them.
    ("junk '!!!!' inside the signature", lambda p: [p[0], p[1], _junk_inside(p[2], "!!!!")]),
    ("junk '$@%~' inside the signature", lambda p: [p[0], p[1], _junk_inside(p[2], "$@%~")]),
    ("junk '!' inside the signature", lambda p: [p[0], p[1], _junk_inside(p[2], "!")]),
    ("spaces inside the signature", lambda p: [p[0], p[1], _junk_inside(p[2], "    ")]),
    ("standard alphabet '+' in the signature", lambda p: [p[0], p[1], p[2].replace("-", "+").replace("_", "/")
                                                          if ("-" in p[2] or "_" in p[2]) else p[2][:-1] + "+"]),
    ("padding on the signature", lambda p: [p[0], p[1], p[2] + "="]),
    ("padding inside the payload", lambda p: [p[0], _junk_inside(p[1], "="), p[2]]),
    ("junk inside the header", lambda p: [_junk_inside(p[0], "****"), p[1], p[2]]),
    ("junk inside the payload", lambda p: [p[0], _junk_inside(p[1], "\n\n\n\n"), p[2]]),
    ("unused bits set in the signature's last character", lambda p: [p[0], p[1], _last_char_with_unused_bits(p[2])]),
]


@pytest.mark.parametrize("mangle", [m for _, m in NON_CANONICAL], ids=[n for n, _ in NON_CANONICAL])
def test_non_canonical_base64url_is_refused(mangle: Any) -> None:
    parts = _parts()
    assert len(parts[2]) % 4 in (2, 3)  # 32-byte HMAC: 43 characters, 2 unused bits
    assert verify(".".join(parts)) == USER
    with pytest.raises(TokenError):
        verify(".".join(mangle(parts)))


def test_canonical_tokens_of_every_length_still_verify() -> None:
    # Payload lengths covering each base64 remainder (0, 2 and 3 characters left over).
    for extra in range(12):
        claims = {"sub": USER, "pad": "x" * extra}
        assert verify(sign_hs256(claims, SECRET)) == USER


# ---------------------------------------------------------------- AUTH_JWT_ISSUER, AUTH_JWT_JWKS_URL

ISSUER = "https://project.supabase.co/auth/v1"


@pytest.mark.parametrize(
    ("iss", "ok"),
    [(ISSUER, True), ("https://other.supabase.co/auth/v1", False), (ISSUER + "/", False),
     (ISSUER[:-1], False), (None, False), (["https://project.supabase.co/auth/v1"], False), (5, False)],
)
def test_issuer_must_match_exactly_when_set(iss: Any, ok: bool) -> None:
    body = {"sub": USER} if iss is None else {"sub": USER, "iss": iss}
    for alg, key, v in (("HS256", None, Verifier(("HS256",), SECRET, issuer=ISSUER)),
                        ("RS256", RSA_KEY, Verifier(("RS256",), None, load_pem(pem(RSA_KEY)), issuer=ISSUER))):
        tok = sign_hs256(body, SECRET) if key is None else sign(body, alg, key)
        if ok:
            assert v.verify(tok, NOW) == USER
        else:
            with pytest.raises(TokenError, match="issuer"):
                v.verify(tok, NOW)
    # No issuer configured: `iss` is not looked at.
    assert verify(sign_hs256(body, SECRET)) == USER


def test_from_settings_with_a_jwks_url_fetches_nothing_at_start() -> None:
    url = "https://project.supabase.co/auth/v1/.well-known/jwks.json"
    v = Verifier.from_settings(Settings.load({"AUTH_JWT_JWKS_URL": url, "AUTH_JWT_ISSUER": ISSUER}))
    assert v is not None and v.remote is not None
    assert v.algorithms == {"RS256", "ES256"} and v.issuer == ISSUER
    assert v.remote.url == url and v.remote.fetches == 0 and v.remote.keys == ()
    # RS256 allowed with only a URL: no key file is needed at start.
    only_rs = Verifier.from_settings(Settings.load({"AUTH_JWT_JWKS_URL": url, "AUTH_JWT_ALGORITHMS": "RS256",
                                                    "AUTH_JWT_SECRET": SECRET}))
    assert only_rs is not None and only_rs.algorithms == {"RS256"} and only_rs.secret is None
    with_secret = Verifier.from_settings(Settings.load({"AUTH_JWT_JWKS_URL": url, "AUTH_JWT_SECRET": SECRET}))
    assert with_secret is not None and with_secret.algorithms == {"HS256", "RS256", "ES256"}
    # Until keys are fetched, an RS256 token has no key; the sync check never fetches.
    with pytest.raises(TokenError, match="key"):
        with_secret.verify(sign(claims(), "RS256", RSA_KEY, kid="k"), NOW)
    assert with_secret.verify(sign_hs256({"sub": USER}, SECRET), NOW) == USER


def test_a_fetched_set_leaves_out_bad_keys_instead_of_failing() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    doc = jwks((small, "small"), (RSA_KEY, "good"), (RSA_OTHER, "good"), (EC_KEY, "ec"))
    with pytest.raises(ValueError, match="at least 2048"):
        load_jwks(doc)  # a file: an error at start
    skipped: list[str] = []
    keys = load_jwks(doc, skipped)  # a URL: the usable keys
    assert [(k.kid, k.alg) for k in keys] == [("good", "RS256"), ("ec", "ES256")]
    assert len(skipped) == 2 and "at least 2048" in skipped[0] and "twice" in skipped[1]
    with pytest.raises(ValueError, match="no usable"):
        load_jwks(jwks((small, "small")), [])
