"""Undecodable RecordFeedback, IngestWebhook, GetSenderState and PlanCampaign:
INVALID_ARGUMENT naming ``request``, counted per RPC, and no traceback logged for
any of them."""

from __future__ import annotations

import logging

import grpc
import pytest
from server_harness import run_async, serving

from tiergate.server import SERVICE_NAME

# No protobuf message at all; a length-delimited field cut short.
GARBAGE = (b"\xff\xff", b"\x0a\x05ab")


@pytest.mark.parametrize(
    "rpc", ["RecordFeedback", "IngestWebhook", "GetSenderState", "PlanCampaign"]
)
def test_undecodable_request_is_invalid_argument_counted_and_not_logged(
    rpc: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    @run_async
    async def main() -> None:
        async with serving() as h:
            call = h.channel.unary_unary(f"/{SERVICE_NAME}/{rpc}")
            for data in GARBAGE * 5:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call(data, timeout=20)
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert (info.value.details() or "").startswith("request: not a")
            assert h.sidecar.metrics.invalid_requests[rpc] == 10
            assert h.sidecar.metrics.internal_errors == {}
            assert f'tiergate_invalid_requests_total{{rpc="{rpc}"}} 10' in (
                h.sidecar.metrics.render()
            )

    main()
    noisy = [
        r
        for r in caplog.records
        if r.exc_info is not None or "Traceback" in r.getMessage() or r.levelno >= logging.ERROR
    ]
    assert noisy == []
