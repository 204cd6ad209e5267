"""The handshake and admission: a socket's per-address rate as it opens, and `hello`
(token, device token, per-device limits, the connection record, the welcome); `ping`."""

from __future__ import annotations

import logging
import time

from roomcast import protocol as p
from roomcast.errors import CloseCode, ErrorCode, GatewayError
from roomcast.privacy import MetadataTooLarge
from roomcast.redis import keys
from roomcast.store.base import Budget, Caller, ConnectionInfo

from . import auth
from .node_base import NodeBase, now_ms
from .session import Session

log = logging.getLogger("roomcast.node")


class Handshake(NodeBase):
    async def admit_address(self, session: Session) -> bool:
        """Per-address connection rate, checked as a socket opens (close 4008 beyond)."""
        if session.ip is None:
            return True
        s = self.settings
        rate = s.connect_rate_per_address
        return not await self.limited("connect_address", session.ip, rate, max(1, int(rate * 5)))

    def _release_device(self, device_id: str) -> None:
        left = self.device_sockets.get(device_id, 1) - 1
        if left > 0:
            self.device_sockets[device_id] = left
        else:
            self.device_sockets.pop(device_id, None)

    async def _hello(self, session: Session, msg: p.Hello) -> None:
        s = self.settings
        if session.caller is not None:
            raise GatewayError(ErrorCode.BAD_REQUEST, "hello was already accepted on this socket")
        user_id = None
        if msg.token is not None:
            if self.verifier is None:
                raise GatewayError(ErrorCode.UNAUTHORIZED, "this gateway accepts no tokens")
            try:
                user_id = await self.verifier.check(msg.token, time.time())
            except auth.TokenError as exc:
                raise GatewayError(ErrorCode.UNAUTHORIZED, str(exc)) from None
            except auth.KeysUnavailable as exc:
                raise GatewayError(ErrorCode.UNAVAILABLE, str(exc)) from None
        elif s.require_auth:
            raise GatewayError(ErrorCode.UNAUTHORIZED, "a token is required")
        device_id = msg.device_id
        tokens, grant = self.device_tokens, None  # grant: a new device token is due, issued last
        if tokens is not None:
            grant = await tokens.check(device_id, msg.device_token, msg.rotate_token)
        elif msg.rotate_token:
            raise GatewayError(ErrorCode.BAD_REQUEST, "this gateway issues no device tokens")
        if self.device_sockets.get(device_id, 0) >= s.max_connections_per_device:
            self.metrics.rate_limited.labels("connections_per_device").inc()
            session.close(CloseCode.RATE_LIMITED, "too many connections for this device")
            return
        budget = Budget(keys.device_limit(device_id, "connect"), s.connect_rate_per_device, 10)
        # The device's connect budget is taken in the store's connect step itself (one atomic
        # step: the budget, then the record), unless something must come between the two: the
        # backend's webhook (never asked for a refused hello) or a new device token.
        folded = self.webhooks is None and grant is None
        if not folded and await self._take(budget, "connect_device"):
            session.close(CloseCode.RATE_LIMITED, "this device connects too often")
            return
        if self.webhooks is not None:
            # The backend's word, after our own checks (a refused one never reaches it): it may
            # refuse (`unauthorized`), set the user id; no answer in time is `unavailable`.
            verdict = await self.webhooks.connect({
                "event": "connect", "device_id": device_id, "user_id": user_id, "room_id": None, "role": None,
                "socket_id": session.socket_id, "node": s.node_id, "ip": session.ip, "metadata": msg.metadata})
            if verdict.user_id is not None:
                user_id = verdict.user_id
            if session.closing:
                return
        caller = Caller(session.socket_id, device_id, user_id)
        # Reduce what we keep about the connection before it leaves this process.
        try:
            info = self.privacy.apply(ConnectionInfo(session.ip, session.user_agent, msg.fingerprint, msg.metadata),
                                      s.max_metadata_entries, s.max_metadata_bytes)
        except MetadataTooLarge as exc:
            raise GatewayError(ErrorCode.BAD_REQUEST, str(exc)) from None
        # Take the device's slot before awaiting the store, so two hellos racing on this
        # replica cannot both pass the per-device limit.
        self.device_sockets[device_id] = self.device_sockets.get(device_id, 0) + 1
        issued = None
        try:
            if tokens is not None and grant is not None:
                issued = await tokens.issue(device_id, grant)
            result = await self.store.connect(caller, info, now_ms(), budget if folded else None)
        except BaseException:
            self._release_device(device_id)
            if tokens is not None and issued is not None:
                await tokens.revoke(device_id, issued)
            raise
        if result.wait_ms:  # (folded: no token was issued) the budget was short, nothing recorded
            self._release_device(device_id)
            self.metrics.rate_limited.labels("connect_device").inc()
            session.close(CloseCode.RATE_LIMITED, "this device connects too often")
            return
        refused = result.open_sockets > s.max_connections_per_device
        if refused:
            # The cluster-wide count (other replicas included) is over the limit.
            self.metrics.rate_limited.labels("connections_per_device").inc()
            session.close(CloseCode.RATE_LIMITED, "too many connections for this device")
        if session.closing:
            self._release_device(device_id)
            if tokens is not None and issued is not None:
                await tokens.revoke(device_id, issued)  # it was never delivered
            # A refused socket was never a connection: history drops its row, and it is not
            # counted as one of the device's connections (reconnect_count).
            await self.store.disconnect(caller, "disconnected", "refused" if refused else "close", now_ms())
            return
        session.caller = caller
        session.device_id = device_id
        self.presence.touch(session.socket_id, now_ms())
        self.presence.recorded(device_id)  # connect wrote its last_heartbeat: none due before the next flush
        self.reply(session, "welcome", {
            "type": "welcome",
            "re": msg.id,
            "socket_id": session.socket_id,
            "device_id": device_id,
            "user_id": user_id,
            "reconnect_count": result.reconnect_count,
            "heartbeat_interval_ms": s.heartbeat_interval_ms,
            "heartbeat_timeout_ms": s.heartbeat_timeout_ms,
            "node": s.node_id,
            "rooms": [r.wire() for r in result.rooms],
            **({"device_token": issued.token} if issued is not None else {}),
        })

    async def _take(self, budget: Budget, what: str) -> int:
        """Take one token from a device's budget on its own (0, or the ms to wait: counted)."""
        wait = await self.limiter.take(budget.key, budget.rate, budget.burst, now_ms())
        if wait:
            self.metrics.rate_limited.labels(what).inc()
        return wait

    async def _ping(self, session: Session, msg: p.Ping) -> None:
        self.reply(session, "pong", {"type": "pong", "re": msg.id, "t": now_ms()})

