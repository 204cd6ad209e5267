"""The Python client (clients/python) keeps its own copy of the protocol facts it needs, so
that it depends on nothing of the server: they must stay equal to the server's."""

from __future__ import annotations

import copy
import importlib.metadata
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import roomcast
from roomcast import merge_patch, protocol
from roomcast.errors import CloseCode
from roomcast_client import protocol as client_protocol
from tests.unit.test_merge_patch import MORE_CASES, RFC_7386_APPENDIX_A

SAME_VALUE = ["MAX_GAME_TYPE", "MAX_EVENT_TYPE", "MAX_ACTION", "SETTABLE_STATUSES", "JOIN_ROLES",
              "RESERVED_EVENT_TYPES"]


def test_versions_and_subprotocol_match_the_server() -> None:
    assert client_protocol.SUBPROTOCOL == roomcast.SUBPROTOCOL
    assert client_protocol.PROTOCOL_VERSION == roomcast.PROTOCOL_VERSION
    import roomcast_client

    assert roomcast_client.__version__ == importlib.metadata.version("roomcast-client")


@pytest.mark.parametrize("name", SAME_VALUE)
def test_limits_and_names_match_the_server(name: str) -> None:
    assert getattr(client_protocol, name) == getattr(protocol, name)
    assert type(getattr(client_protocol, name)) is type(getattr(protocol, name))


@pytest.mark.parametrize("name", ["ROOM_ID_RE", "DEVICE_ID_RE"])
def test_patterns_match_the_server(name: str) -> None:
    mine, theirs = getattr(client_protocol, name), getattr(protocol, name)
    assert (mine.pattern, mine.flags) == (theirs.pattern, theirs.flags)


def test_close_codes_and_their_advice_match_the_server() -> None:
    assert {c.name: c.value for c in client_protocol.CloseCode} == {c.name: c.value for c in CloseCode}
    for code in CloseCode:
        assert client_protocol.CloseCode(code.value).reconnect_advice == code.reconnect_advice


@pytest.mark.parametrize(("original", "patch", "result"), RFC_7386_APPENDIX_A + MORE_CASES)
def test_merge_patch_matches_the_server_on_the_rfc_cases(original: Any, patch: Any, result: Any) -> None:
    before = copy.deepcopy((original, patch))
    assert client_protocol.merge_patch(original, patch) == merge_patch.apply(original, patch) == result
    assert (original, patch) == before


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("abc"), inner, max_size=3),
    max_leaves=12,
)


@given(_json, _json)
def test_merge_patch_matches_the_server_on_any_json(original: Any, patch: Any) -> None:
    assert client_protocol.merge_patch(original, patch) == merge_patch.apply(original, patch)
