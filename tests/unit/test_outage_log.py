"""roomcast.outage: one line per state change of a backend, a periodic summary in between."""

from __future__ import annotations

import logging

import pytest

from roomcast.errors import ErrorCode, GatewayError
from roomcast.outage import OutageLog


def test_one_line_down_a_summary_now_and_then_one_line_back(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    outage = OutageLog(logging.getLogger("test.outage"), "redis", summary_every_s=30, clock=lambda: now[0])
    caplog.set_level(logging.DEBUG, "test.outage")
    assert outage.recovered() is None  # not down: nothing to say
    for _ in range(65):  # a failed attempt every second for 65 s
        outage.failed(GatewayError(ErrorCode.UNAVAILABLE, "redis unavailable; retry"), "requests get `unavailable`")
        now[0] += 1.0
    assert outage.recovered() == pytest.approx(65.0)
    outage.recovered()  # said once only
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert lines == [
        ("WARNING", "redis unavailable (redis unavailable; retry): requests get `unavailable`"),
        ("WARNING", "redis still unavailable after 30s (31 failed attempts; last: redis unavailable; retry)"),
        ("WARNING", "redis still unavailable after 60s (61 failed attempts; last: redis unavailable; retry)"),
        ("INFO", "redis is back after 65.0s"),
    ]
    assert not any(r.exc_info for r in caplog.records)
    # A new outage starts its own count.
    caplog.clear()
    outage.failed(ConnectionRefusedError(111, "Connection refused"))
    assert [r.getMessage() for r in caplog.records] == ["redis unavailable ([Errno 111] Connection refused)"]
