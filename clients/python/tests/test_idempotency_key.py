"""Every send carries a fresh idempotency key of the protocol's form (docs/protocol.md)."""

from __future__ import annotations

import re

from roomcast_client.room import new_idempotency_key

KEY_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")  # the gateway's rule for `event.idempotency_key`


def test_keys_have_the_protocol_form_and_do_not_repeat() -> None:
    keys = [new_idempotency_key() for _ in range(1000)]
    assert all(KEY_RE.fullmatch(k) and len(k) == 22 for k in keys)
    assert len(set(keys)) == len(keys)
