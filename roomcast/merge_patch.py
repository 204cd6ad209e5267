"""JSON Merge Patch, RFC 7386, section 2 (the MergePatch pseudocode)."""

from __future__ import annotations

from typing import Any


def apply(target: Any, patch: Any) -> Any:
    """Return `target` with `patch` applied; neither argument is modified.

    If the patch is an object, each member is merged into the target (a target that is
    not an object becomes `{}` first); a `null` member removes that key. Any other patch
    value replaces the target whole.
    """
    if not isinstance(patch, dict):
        return patch
    result: dict[str, Any] = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply(result.get(key), value)
    return result
