"""``tiergate serve --store redis://…`` end to end: two sidecars on one Redis share one
messaging limit; a sidecar whose Redis is gone answers RETRY_LATER ("store
unavailable") within a second under ``--store-failure closed``, admits under
``open``, and decides in Redis again once it is back."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import uvloop

from tiergate import config as cfg
from tiergate.policy.events import Quality, SenderStatus, SenderUpdate
from tiergate.server import Sidecar
from tiergate.store.location import parse_store
from tiergate.store.shared import UNAVAILABLE_DETAIL
from tiergate.v1 import admission_pb2 as pb
from tiergate.v1 import admission_pb2_grpc as pb_grpc

from .redis_harness import RedisProcess

pytestmark = pytest.mark.redis

T0 = 1_760_000_000_000
SENDER = "100000000000001"


def _config(url: str, failure: str = "closed") -> cfg.ServeConfig:
    sender = SenderUpdate(
        sender_id=SENDER,
        portfolio_id="portfolio-redis",
        display_phone_number="+15550100001",
        verified=True,
        tier="TIER_250",
        quality=Quality.GREEN,
        status=SenderStatus.CONNECTED,
    )
    return cfg.ServeConfig(
        listen=cfg.Endpoint("127.0.0.1", 0),
        clock="request",
        senders=(sender,),
        shutdown_grace=2.0,
        store=parse_store(url),
        store_failure="open" if failure == "open" else "closed",
    )


@contextlib.asynccontextmanager
async def serving(config: cfg.ServeConfig) -> AsyncIterator[pb_grpc.AdmissionControlStub]:
    sidecar = Sidecar(config)
    await sidecar.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}")
    try:
        yield pb_grpc.AdmissionControlStub(channel)
    finally:
        await channel.close(None)
        await sidecar.stop(0.5)


def _request(i: int, at: int) -> pb.AdmitRequest:
    return pb.AdmitRequest(
        sender_id=SENDER,
        recipient=f"+1415555{i:04d}",
        kind=pb.TEMPLATE,
        category=pb.UTILITY,
        template_id="t1",
        at_unix_ms=at,
    )


def test_two_sidecars_on_one_redis_share_the_messaging_limit(redis_url: str) -> None:
    """Alone, each of the two would admit all its 140 recipients; sharing Redis, the
    280 together are admitted up to the portfolio's one limit and no further."""

    async def main() -> None:
        async with serving(_config(redis_url)) as a, serving(_config(redis_url)) as b:
            admitted, limits = 0, set()
            for i in range(280):
                stub = (a, b)[i % 2]
                res: Any = await stub.Admit(_request(i, T0 + i * 100))
                limits.add(res.limit)
                if res.decision == pb.DECISION_ADMIT:
                    admitted += 1
                else:
                    assert res.reason == pb.MESSAGING_LIMIT
            (limit,) = limits
            assert 0 < limit < 280
            assert admitted == limit
            # concurrent calls (one loop pass, one round trip per sidecar): nothing more
            late = [(a, b)[i % 2].Admit(_request(1000 + i, T0 + 28_000 + i)) for i in range(20)]
            assert all(r.decision != pb.DECISION_ADMIT for r in await asyncio.gather(*late))

    uvloop.run(main())


def test_batch_rpcs_are_refused_over_the_shared_store(redis_url: str) -> None:
    async def main() -> None:
        async with serving(_config(redis_url)) as stub:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.AdmitBatch(pb.AdmitBatchRequest(requests=[_request(1, T0)]))
            assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    uvloop.run(main())


@pytest.mark.parametrize("failure", ["closed", "open"])
def test_redis_gone_answers_by_store_failure_then_recovers(
    spare_redis: RedisProcess, failure: str
) -> None:
    async def main() -> None:
        async with serving(_config(spare_redis.url, failure)) as stub:
            first: Any = await stub.Admit(_request(1, T0))
            assert first.decision == pb.DECISION_ADMIT
            spare_redis.stop(kill=True)
            started = time.monotonic()
            res: Any = await stub.Admit(_request(2, T0 + 1_000), timeout=5)
            assert time.monotonic() - started < 1.0
            if failure == "closed":
                assert res.decision == pb.DECISION_RETRY_LATER
                assert res.detail == UNAVAILABLE_DETAIL
                assert T0 + 1_000 < res.retry_at_unix_ms <= T0 + 3_000
            else:
                assert res.decision == pb.DECISION_ADMIT
            spare_redis.start()
            again: Any = await stub.Admit(_request(3, T0 + 2_000))
            assert again.decision == pb.DECISION_ADMIT

    uvloop.run(main())
