"""The server API's edge, without processes: the HTTP/1.1 reader, key checks, key files."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.api import ApiKeys, HttpError, RequestReader, load_keys
from roomcast.settings import Settings

REQ = b"POST /api/v1/rooms?x=1&y=2 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello"


def test_a_request_fed_in_any_split_reads_the_same() -> None:
    for size in (1, 2, 3, 7, len(REQ)):
        reader = RequestReader(max_body=100)
        got = None
        for i in range(0, len(REQ), size):
            assert got is None, "a request before its last byte"
            got = reader.feed(REQ[i:i + size])
        assert got is not None
        assert (got.method, got.path, got.query, got.body) == ("POST", "/api/v1/rooms", {"x": ["1"], "y": ["2"]},
                                                                b"hello")
        assert got.headers["host"] == "h" and got.headers["x-a"] == "1"


@pytest.mark.parametrize(("raw", "status"), [
    (b"GET / HTTP/1.1\r\nContent-Length: 101\r\n\r\n", 413),
    (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
    (b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", 400),
    (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
    (b"GET /\r\n\r\n", 400),
    (b"GET / HTTP/2\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n folded: header\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n", 431),
])
def test_what_the_reader_refuses(raw: bytes, status: int) -> None:
    with pytest.raises(HttpError) as info:
        RequestReader(max_body=100).feed(raw)
    assert info.value.status == status


def test_a_head_without_its_end_is_refused_once_too_large() -> None:
    reader = RequestReader(max_body=100)
    assert reader.feed(b"GET / HTTP/1.1\r\nX: " + b"a" * 10_000) is None
    with pytest.raises(HttpError) as info:
        reader.feed(b"a" * 10_000)
    assert info.value.status == 431


def test_keys_identify_their_name_only_with_the_exact_secret() -> None:
    keys = ApiKeys({"quiz": "0123456789abcdef", "ops": "fedcba9876543210"})
    assert keys.identify("Bearer 0123456789abcdef") == "quiz"
    assert keys.identify("bearer  fedcba9876543210 ") == "ops"
    for bad in (None, "", "Bearer", "Bearer 0123456789abcde", "Bearer 0123456789abcdefX", "Basic 0123456789abcdef",
                "0123456789abcdef", "Bearer fedcba9876543210 0123456789abcdef"):
        assert keys.identify(bad) is None, bad
    assert not ApiKeys({})


def test_keys_file_adds_to_the_variable(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# backends\nquiz=0123456789abcdef\n\nops=fedcba9876543210, match=aaaaaaaaaaaaaaaa  # comment\n")
    settings = Settings.load({"SERVER_API_KEYS": "env=bbbbbbbbbbbbbbbb", "SERVER_API_KEYS_FILE": str(path)})
    assert load_keys(settings) == {"env": "bbbbbbbbbbbbbbbb", "quiz": "0123456789abcdef",
                                   "ops": "fedcba9876543210", "match": "aaaaaaaaaaaaaaaa"}
    path.write_text("quiz=short\n")
    with pytest.raises(ValueError) as info:
        load_keys(settings)
    assert "short" not in str(info.value)
