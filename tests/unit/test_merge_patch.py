"""roomcast.merge_patch: JSON Merge Patch, RFC 7386."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from roomcast.merge_patch import apply

# RFC 7386 Appendix A: (original, patch, result), verbatim.
RFC_7386_APPENDIX_A: list[tuple[Any, Any, Any]] = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]

# Cases beyond the appendix: the example of RFC 7386 section 3, and edge cases.
MORE_CASES: list[tuple[Any, Any, Any]] = [
    (
        {"title": "Goodbye!", "author": {"givenName": "John", "familyName": "Doe"},
         "tags": ["example", "sample"], "content": "This will be unchanged"},
        {"title": "Hello!", "phoneNumber": "+01-123-456-7890", "author": {"familyName": None}, "tags": ["example"]},
        {"title": "Hello!", "author": {"givenName": "John"}, "tags": ["example"],
         "content": "This will be unchanged", "phoneNumber": "+01-123-456-7890"},
    ),
    ({"a": 1}, {}, {"a": 1}),
    (None, {"a": 1}, {"a": 1}),
    ("text", {"a": None}, {}),
    ({"a": 1}, {"b": None}, {"a": 1}),
    ({"a": {"b": {"c": 1, "d": 2}}}, {"a": {"b": {"c": None}}}, {"a": {"b": {"d": 2}}}),
    ({"a": 1}, {"a": {"b": None}}, {"a": {}}),
    ({"a": False, "b": 0}, {"a": True, "b": ""}, {"a": True, "b": ""}),
]


@pytest.mark.parametrize(("original", "patch", "result"), RFC_7386_APPENDIX_A + MORE_CASES)
def test_merge_patch(original: Any, patch: Any, result: Any) -> None:
    assert apply(original, patch) == result


@pytest.mark.parametrize(("original", "patch", "result"), RFC_7386_APPENDIX_A + MORE_CASES)
def test_inputs_are_not_modified(original: Any, patch: Any, result: Any) -> None:
    original_before, patch_before = copy.deepcopy(original), copy.deepcopy(patch)
    apply(original, patch)
    assert original == original_before
    assert patch == patch_before


@pytest.mark.parametrize(("original", "patch", "result"), RFC_7386_APPENDIX_A + MORE_CASES)
def test_patch_is_idempotent(original: Any, patch: Any, result: Any) -> None:
    assert apply(apply(original, patch), patch) == result


def test_patched_branches_are_copies() -> None:
    """A branch the patch touched is a new object: changing it does not reach back into the target."""
    target = {"a": {"b": 1}, "keep": {"x": 1}}
    out = apply(target, {"a": {"c": 2}})
    assert out == {"a": {"b": 1, "c": 2}, "keep": {"x": 1}}
    out["a"]["b"] = 99
    assert target == {"a": {"b": 1}, "keep": {"x": 1}}
    assert out is not target
