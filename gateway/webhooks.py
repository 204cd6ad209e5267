"""Backend webhooks: the game's backend decides who may connect and who may join.

`BACKEND_CONNECT_URL` is called on every `hello` (after the token and device checks), and
`BACKEND_JOIN_URL` on every `join` and `create_room` (after the gateway's own checks, before
the room is touched). The gateway POSTs a JSON object and expects, with status 200,

    {"allow": true|false, "reason"?: string, "role"?: "player"|"spectator", "user_id"?: UUID}

- `allow: false` refuses: `unauthorized` (hello) or `forbidden` (join, create_room), with
  `reason` as the error message.
- `user_id` (connect only): the socket's user id from now on, in `welcome.user_id`, `from` and
  the participant records, in place of the token's `sub` (or of none).
- `role` (join only): the role the device joins with, in place of the one it asked for (a
  device that is already a participant keeps its role, as with any join).
- Fail closed: no answer within BACKEND_TIMEOUT_MS, a status other than 200, a body that is not
  such an object, or a backend that cannot be reached gets `unavailable` (retry later).

`Authorization: Bearer <BACKEND_WEBHOOK_SECRET>` is sent when the secret is set. docs/security.md
documents the payloads.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from roomcast.errors import ErrorCode, GatewayError
from roomcast.protocol import JOIN_ROLES

from .http_pool import HttpError, HttpPool
from .metrics import Metrics

log = logging.getLogger("roomcast.webhooks")
MAX_REASON = 200


@dataclass(frozen=True, slots=True)
class Verdict:
    """An allowing answer: what it changes (None: nothing)."""

    role: str | None = None
    user_id: str | None = None


class BadAnswer(Exception):
    pass


def read_answer(status: int, body: bytes, hook: str) -> tuple[bool, str | None, Verdict]:
    """(allow, reason, verdict) of a webhook reply; BadAnswer if it is not a valid one."""
    if status != 200:
        raise BadAnswer(f"status {status}")
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadAnswer("the body is not JSON") from None
    if not isinstance(answer, dict) or not isinstance(answer.get("allow"), bool):
        raise BadAnswer('the body is not an object with a boolean "allow"')
    reason = answer.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise BadAnswer('"reason" is not a string')
    if reason is not None:
        reason = reason.replace("\x00", "")[:MAX_REASON] or None
    role = answer.get("role")
    if role is not None and (hook != "join" or role not in JOIN_ROLES):
        if hook == "join":
            raise BadAnswer(f'"role" must be one of {", ".join(JOIN_ROLES)}')
        role = None  # meaningless on connect: ignored
    user_id = answer.get("user_id")
    if user_id is not None:
        if hook != "connect":
            user_id = None  # a socket has one user id, set at hello: ignored on join
        else:
            try:
                user_id = str(uuid.UUID(str(user_id)))
            except ValueError:
                raise BadAnswer('"user_id" is not a UUID') from None
    return answer["allow"], reason, Verdict(role, user_id)


class Webhooks:
    def __init__(self, connect_url: str | None, join_url: str | None, secret: str | None, timeout_ms: int,
                 metrics: Metrics, node_id: str, pool: HttpPool | None = None) -> None:
        self.connect_url = connect_url
        self.join_url = join_url
        self.timeout_s = timeout_ms / 1000
        self.metrics = metrics
        self.node_id = node_id
        self.pool = pool or HttpPool()
        self.headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        for url in (connect_url, join_url):
            if url is not None:
                self.pool.target(url)  # a bad URL fails at start, not on the first hello

    async def connect(self, fields: dict[str, Any]) -> Verdict:
        """Ask BACKEND_CONNECT_URL (if set) whether this hello may go on."""
        if self.connect_url is None:
            return Verdict()
        return await self._call("connect", self.connect_url, fields, ErrorCode.UNAUTHORIZED)

    async def join(self, fields: dict[str, Any]) -> Verdict:
        """Ask BACKEND_JOIN_URL (if set) whether this join or create_room may go on."""
        if self.join_url is None:
            return Verdict()
        return await self._call("join", self.join_url, fields, ErrorCode.FORBIDDEN)

    async def _call(self, hook: str, url: str, fields: dict[str, Any], refusal: ErrorCode) -> Verdict:
        started = time.perf_counter()
        outcome = "error"
        try:
            try:
                status, body = await self.pool.post_json(url, orjson.dumps(fields), self.headers, self.timeout_s)
            except TimeoutError:
                outcome = "timeout"
                log.warning("%s webhook: no answer within %.0f ms; refusing (fail closed)", hook, self.timeout_s * 1000)
                raise GatewayError(ErrorCode.UNAVAILABLE, "the game backend did not answer in time; retry") from None
            except HttpError as exc:
                log.warning("%s webhook failed: %s; refusing (fail closed)", hook, exc)
                raise GatewayError(ErrorCode.UNAVAILABLE, "the game backend cannot be reached; retry") from None
            try:
                allow, reason, verdict = read_answer(status, body, hook)
            except BadAnswer as exc:
                outcome = "bad_answer"
                log.warning("%s webhook answered wrongly (%s); refusing (fail closed)", hook, exc)
                raise GatewayError(ErrorCode.UNAVAILABLE, "the game backend gave no valid answer; retry") from None
            if not allow:
                outcome = "deny"
                raise GatewayError(refusal, reason or "refused by the game backend")
            outcome = "allow"
            return verdict
        finally:
            self.metrics.webhook_calls.labels(hook, outcome).inc()
            self.metrics.webhook_seconds.labels(hook).observe(time.perf_counter() - started)

    async def close(self) -> None:
        await self.pool.close()
