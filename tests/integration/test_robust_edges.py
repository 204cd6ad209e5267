"""Edges found by the audit against real processes (issue 10): binary frames and the
message rate, integer ids beyond 64 bits."""

from __future__ import annotations

import pytest

from tests.harness import Client, GatewayProcess, gateway, unique


async def test_binary_frames_count_toward_the_message_rate() -> None:
    with gateway({"RATE_MESSAGES_PER_SEC": "5", "RATE_MESSAGES_BURST": "5"}) as g:
        async with Client.open(g.url) as c:
            await c.hello(unique("dev-binrate"))  # message 1 of the burst of 5
            for _ in range(20):
                await c.send(b"\x00\x01\x02")
            codes = [(await c.expect(type="error"))["code"] for _ in range(20)]
            # Four fit in the burst (bad_request), the rest are refused like text frames.
            assert codes == ["bad_request"] * 4 + ["rate_limited"] * 16, codes
            # ...and they used up the text frames' budget too.
            reply = await c.request({"type": "ping"})
            assert reply["type"] == "error" and reply["code"] == "rate_limited", reply


@pytest.mark.parametrize("raw_id", [
    "18446744073709551616",  # 2**64: beyond orjson's integers
    "-9223372036854775809",  # below -2**63
    "1" * 64,  # the longest integer the docs allow
    "-" + "9" * 63,
    "12345678901234567890123456789012345678901234567890",
])
async def test_integer_id_up_to_64_digits_is_echoed_exactly(gw: GatewayProcess, raw_id: str) -> None:
    async with Client.open(gw.url) as c:
        await c.hello(unique("dev-bigid"))
        await c.send('{"type":"ping","id":' + raw_id + "}")
        raw = await c.ws.recv()
        assert isinstance(raw, str)
        assert raw.startswith('{"type":"pong","re":' + raw_id + ","), raw
        # An error reply echoes it too.
        await c.send('{"type":"nonsense","id":' + raw_id + "}")
        raw = await c.ws.recv()
        assert f'"re":{raw_id},' in raw and '"unknown_type"' in raw, raw


@pytest.mark.parametrize("raw_id", ["1" * 65, "1.5", "1e3", "-" + "9" * 64])
async def test_unreadable_numeric_id_is_bad_request_without_re(gw: GatewayProcess, raw_id: str) -> None:
    async with Client.open(gw.url) as c:
        await c.hello(unique("dev-badid"))
        await c.send('{"type":"ping","id":' + raw_id + "}")
        reply = await c.expect(type="error")
        assert reply["code"] == "bad_request" and "re" not in reply, reply
