"""gateway.passwords: room passwords stored as salted scrypt hashes."""

from __future__ import annotations

import base64

import pytest

from gateway.passwords import hash_password, verify_password

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def stored() -> str:
    return hash_password(PASSWORD)


def test_hash_then_verify(stored: str) -> None:
    assert verify_password(PASSWORD, stored) is True


@pytest.mark.parametrize("attempt", ["", "correct horse battery stapl", PASSWORD + " ", PASSWORD.upper(), "x"])
def test_wrong_password_is_false(stored: str, attempt: str) -> None:
    assert verify_password(attempt, stored) is False


def test_hash_contains_no_plaintext(stored: str) -> None:
    for form in (PASSWORD, PASSWORD.encode().hex(), base64.b64encode(PASSWORD.encode()).decode()):
        assert form not in stored
    assert "horse" not in stored


def test_hashes_are_salted(stored: str) -> None:
    again = hash_password(PASSWORD)
    assert again != stored
    assert verify_password(PASSWORD, again) is True


def test_unicode_password() -> None:
    pw = "pässwörd ✓ 🎲"
    h = hash_password(pw)
    assert verify_password(pw, h) is True
    assert verify_password("passwort", h) is False


def malformed(stored: str) -> list[str]:
    scheme, n, r, p, salt, digest = stored.split("$")
    return [
        "",
        "plain",
        PASSWORD,
        "scrypt$",
        "$".join([scheme, n, r, p, salt]),  # a field missing
        stored + "$extra",
        "$".join(["bcrypt", n, r, p, salt, digest]),
        "$".join([scheme, "abc", r, p, salt, digest]),
        "$".join([scheme, "1", r, p, salt, digest]),  # n must be a power of 2 above 1
        "$".join([scheme, "1000", r, p, salt, digest]),
        "$".join([scheme, "-16384", r, p, salt, digest]),
        "$".join([scheme, str(2**40), r, p, salt, digest]),  # would need far too much memory
        "$".join([scheme, n, "0", p, salt, digest]),
        "$".join([scheme, n, "9" * 30, p, salt, digest]),
        "$".join([scheme, n, r, "9" * 30, salt, digest]),
        "$".join([scheme, n, r, p, "!!!", digest]),
        "$".join([scheme, n, r, p, salt, "!!!"]),
        "$".join([scheme, n, r, p, salt, ""]),  # empty digest
        "$".join([scheme, n, r, p, salt, "ünï"]),
        "$".join([scheme, n, r, p, salt, base64.b64encode(b"\x00" * 32).decode()]),  # wrong digest
    ]


def test_malformed_stored_hash_is_false(stored: str) -> None:
    for bad in malformed(stored):
        assert verify_password(PASSWORD, bad) is False, bad


async def test_async_helpers_run_on_the_bounded_scrypt_pool() -> None:
    import asyncio
    import threading

    from gateway import passwords

    seen: set[str] = set()
    real = passwords.verify_password

    def spy(password: str, stored: str) -> bool:
        seen.add(threading.current_thread().name)
        return real(password, stored)

    stored = await passwords.hash_async("open sesame")
    passwords.verify_password = spy  # type: ignore[assignment]
    try:
        results = await asyncio.gather(*(passwords.verify_async(pw, stored) for pw in ["open sesame", "nope"] * 4))
    finally:
        passwords.verify_password = real  # type: ignore[assignment]
    assert results == [True, False] * 4
    assert seen and all(name.startswith("scrypt") for name in seen)
    assert len(seen) <= passwords.WORKERS
