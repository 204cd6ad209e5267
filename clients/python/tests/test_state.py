"""The Python client's pure core (roomcast_client.state): backoff bounds, the close-code
plan, and the room replica's dedupe / gap / reset rules. No sockets."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from roomcast_client import RoomcastClient
from roomcast_client.protocol import CloseCode
from roomcast_client.state import (
    CLIENT_GAVE_UP,
    RoomReplica,
    backoff_delay,
    close_policy,
    event_key,
    request_key,
    valid_device_id,
)

BASE, CAP = 0.1, 5.0


# ---------------------------------------------------------------- backoff


@pytest.mark.parametrize("attempt", range(12))
def test_backoff_stays_within_full_jitter_bounds(attempt: int) -> None:
    ceiling = min(CAP, BASE * 2**attempt)
    for rand in (0.0, 0.25, 0.5, 0.999999):
        delay = backoff_delay("backoff", attempt, BASE, CAP, rand)
        assert 0.0 <= delay <= ceiling
    assert backoff_delay("backoff", attempt, BASE, CAP, 0.0) == 0.0  # full jitter reaches down to 0
    assert backoff_delay("backoff", attempt, BASE, CAP, 0.999999) == pytest.approx(ceiling, rel=1e-5)


def test_backoff_grows_then_is_capped() -> None:
    tops = [backoff_delay("backoff", n, BASE, CAP, 0.999999) for n in range(10)]
    assert tops == sorted(tops)
    assert tops[0] < 0.11 and tops[-1] == pytest.approx(CAP, rel=1e-5)
    assert backoff_delay("backoff", 10_000, BASE, CAP, 0.999999) <= CAP  # no overflow for huge attempts


@pytest.mark.parametrize("attempt", range(8))
def test_busy_waits_at_least_half_of_a_ceiling_eight_times_higher(attempt: int) -> None:
    ceiling = min(CAP, BASE * 8 * 2**attempt)
    for rand in (0.0, 0.5, 0.999999):
        delay = backoff_delay("busy", attempt, BASE, CAP, rand)
        assert ceiling / 2 <= delay <= ceiling
        assert delay >= backoff_delay("backoff", attempt, BASE, CAP, rand)
    assert backoff_delay("busy", 0, BASE, CAP, 0.0) == pytest.approx(4 * BASE)  # the first wait is >= 4 base


def test_now_is_a_little_jitter_then_backoff() -> None:
    rng = random.Random(7)
    for _ in range(100):
        assert 0.0 <= backoff_delay("now", 0, BASE, CAP, rng.random()) < min(0.1, BASE)
    assert backoff_delay("now", 0, 0.02, CAP, 0.999999) < 0.02  # never above base either
    for attempt in (1, 3, 50):  # "now" that keeps failing backs off like anything else
        assert backoff_delay("now", attempt, BASE, CAP, 0.7) == backoff_delay("backoff", attempt, BASE, CAP, 0.7)


def test_never_and_bad_draws_are_refused() -> None:
    with pytest.raises(ValueError):
        backoff_delay("never", 0, BASE, CAP, 0.5)
    with pytest.raises(ValueError):
        backoff_delay("backoff", 0, BASE, CAP, 1.0)


@pytest.mark.parametrize(("code", "policy"), [
    (1001, "now"), (1012, "now"), (4009, "now"),
    (1008, "never"), (1009, "never"),
    (1013, "busy"), (4008, "busy"),
    (1000, "backoff"), (1011, "backoff"), (4001, "backoff"), (4002, "backoff"),
    (1006, "backoff"), (CLIENT_GAVE_UP, "backoff"), (4999, "backoff"),
])
def test_close_policy_follows_close_code_advice(code: int, policy: str) -> None:
    assert close_policy(code) == policy


def test_close_policy_agrees_with_the_error_vocabulary() -> None:
    for code in CloseCode:
        expected = {"now": "now", "never": "never", "backoff": "backoff"}[code.reconnect_advice]
        if code in (CloseCode.TRY_AGAIN_LATER, CloseCode.RATE_LIMITED):
            expected = "busy"
        assert close_policy(code) == expected


# ---------------------------------------------------------------- matching requests to events


def test_a_request_and_the_event_it_made_have_the_same_key() -> None:
    send = {"type": "event", "room_id": "r1", "event_type": "answer", "payload": {"b": [1, 2.5], "a": "x"}}
    made = ev(7, "answer", {"a": "x", "b": [1, 2.5]})  # key order differs, action null on the wire
    assert request_key(send) == event_key(made) is not None
    assert request_key({**send, "action": "submit"}) != event_key(made)
    update = {"type": "update_room", "room_id": "r1", "status": "in_progress", "patch": {"round": 2}}
    assert request_key(update) == event_key(ev(8, "state_change", {"patch": {"round": 2}, "status": "in_progress"}))
    assert request_key({"type": "close_room", "room_id": "r1"}) == event_key(ev(9, "room_closed"))
    assert event_key(ev(10, "participant_joined", {"device_id": "d", "role": "player"})) is None
    assert request_key({"type": "join", "room_id": "r1"}) is None


# ---------------------------------------------------------------- replica

ME = "dev-me-00001"


def ev(seq: int, event_type: str = "tick", payload: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"type": "event", "room_id": "r1", "seq": seq, "event_type": event_type, "action": None,
            "payload": payload, "from": None, "ts": 1000 + seq, **extra}


def joined(seq: int, *, recovered: bool, epoch: str = "e1", role: str = "player",
           game_data: dict[str, Any] | None = None) -> dict[str, Any]:
    room = {"room_id": "r1", "game_type": "g", "status": "waiting", "max_players": 4, "current_players": 2,
            "game_data": game_data or {}, "created_at": 1, "created_by": "dev-host-0001", "seq": seq}
    participants = [
        {"device_id": "dev-host-0001", "user_id": None, "role": "host", "status": "active", "joined_at": 1},
        {"device_id": ME, "user_id": None, "role": role, "status": "active", "joined_at": 2},
    ]
    return {"type": "joined", "room": room, "participants": participants, "seq": seq, "epoch": epoch,
            "role": role, "recovered": recovered}


def test_only_the_next_seq_applies() -> None:
    r = RoomReplica.from_joined(joined(3, recovered=False), ME, "player")
    assert not r.apply_event(ev(3)) and not r.apply_event(ev(5))
    assert r.seq == 3
    assert r.apply_event(ev(4)) and r.seq == 4 and r.state["seq"] == 4
    assert not r.apply_event(ev(4))


def test_state_change_patches_game_data_and_status() -> None:
    r = RoomReplica.from_joined(joined(1, recovered=False, game_data={"round": 1, "scores": {"a": 1}}), ME, "player")
    r.apply_event(ev(2, "state_change", {"status": "in_progress", "patch": {"round": 2, "scores": {"b": 5}}}))
    r.apply_event(ev(3, "state_change", {"patch": {"scores": {"a": None}}}))
    assert r.state["status"] == "in_progress"
    assert r.state["game_data"] == {"round": 2, "scores": {"b": 5}}


def test_participant_events_keep_the_list_and_count() -> None:
    r = RoomReplica.from_joined(joined(1, recovered=False), ME, "player")
    r.apply_event(ev(2, "participant_joined", {"device_id": "dev-spec-0001", "role": "spectator"},
                     **{"from": {"socket_id": "s", "device_id": "dev-spec-0001", "user_id": None}}))
    r.apply_event(ev(3, "participant_disconnected", {"device_id": ME, "role": "player", "reason": "close"}))
    roles = {p["device_id"]: (p["role"], p["status"]) for p in r.participants}
    assert roles == {"dev-host-0001": ("host", "active"), ME: ("player", "disconnected"),
                     "dev-spec-0001": ("spectator", "active")}
    assert r.state["current_players"] == 2
    r.apply_event(ev(4, "participant_reconnected", {"device_id": ME, "role": "player"}))
    r.apply_event(ev(5, "participant_left", {"device_id": "dev-host-0001", "role": "host", "reason": "leave"}))
    assert {p["device_id"]: p["status"] for p in r.participants} == {ME: "active", "dev-spec-0001": "active"}
    assert r.state["current_players"] == 1
    r.apply_event(ev(6, "host_changed", {"device_id": ME, "role": "host", "reason": "host_left"}))
    assert r.role == "host" and next(p for p in r.participants if p["device_id"] == ME)["role"] == "host"
    r.apply_event(ev(7, "room_closed", {"reason": "abandoned"}))
    assert r.state["status"] == "closed" and r.participants == [] and r.state["current_players"] == 0


def test_resume_message_keeps_the_role_but_never_asks_for_host() -> None:
    r = RoomReplica.from_joined(joined(5, recovered=False), ME, "player")
    assert r.join_message(5, None) == {"type": "join", "room_id": "r1", "since": 5, "epoch": "e1", "role": "player"}
    assert r.join_message(7, "pw")["password"] == "pw"
    r.role = "host"
    assert "role" not in r.join_message(5, None)


def test_reset_takes_the_snapshot() -> None:
    r = RoomReplica.from_joined(joined(5, recovered=False, game_data={"x": 1}), ME, "player")
    r.reset(joined(40, recovered=False, epoch="e2", role="spectator", game_data={"x": 7}))
    assert (r.seq, r.epoch, r.role, r.state["game_data"], r.state["seq"]) == (40, "e2", "spectator", {"x": 7}, 40)
    assert r.apply_event(ev(41))


def test_created_room_is_hosted_and_has_no_epoch_yet() -> None:
    room = {"room_id": "r1", "game_type": "g", "status": "waiting", "max_players": 2, "current_players": 1,
            "game_data": {}, "created_at": 1, "created_by": ME, "seq": 0}
    r = RoomReplica.from_created(room, ME, None)
    assert (r.role, r.seq, r.epoch) == ("host", 0, None)
    r.apply_event(ev(1, "participant_joined", {"device_id": ME, "role": "host"}))
    assert len(r.participants) == 1 and r.state["current_players"] == 1
    assert r.join_message(1, None) == {"type": "join", "room_id": "r1", "since": 1}


# ---------------------------------------------------------------- device id


def test_device_id_is_generated_valid_and_persisted(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "device"
    first = RoomcastClient(["ws://127.0.0.1:1/ws"], device_file=path).device_id
    assert valid_device_id(first)
    assert path.read_text().strip() == first
    assert RoomcastClient(["ws://127.0.0.1:1/ws"], device_file=path).device_id == first
    assert RoomcastClient(["ws://127.0.0.1:1/ws"]).device_id != first
    path.write_text(first + "\ntok-123\n")  # the gateway's device token is kept on the second line
    again = RoomcastClient(["ws://127.0.0.1:1/ws"], device_file=path)
    assert (again.device_id, again.device_token) == (first, "tok-123")
    path.write_text("bad id!\n")
    replaced = RoomcastClient(["ws://127.0.0.1:1/ws"], device_file=path).device_id
    assert valid_device_id(replaced) and path.read_text().strip() == replaced


def test_constructor_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError):
        RoomcastClient([])
    with pytest.raises(ValueError):
        RoomcastClient(["http://example.com/"])
    with pytest.raises(ValueError):
        RoomcastClient(["ws://127.0.0.1:1/ws"], device_id="short")
    with pytest.raises(ValueError):
        RoomcastClient(["ws://127.0.0.1:1/ws"], backoff=(1.0, 0.5))
