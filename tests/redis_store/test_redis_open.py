"""``--store-failure open`` reconciled, and Redis killed under load with AOF.

Admits a sidecar decided on its own while Redis was gone are counted in Redis
once it answers again (before the sidecar's next decisions): another sidecar
then refuses past the limit accordingly; a reconciliation whose reply was lost
counts nothing twice; with a data directory the kept admits outlive a restart
of the sidecar. A Redis with ``appendfsync always`` killed (SIGKILL) and
restarted under concurrent Admits still counts every admit a sidecar answered.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import uvloop

from tiergate.engine.constants import F_DRY_RUN, F_FORCE, F_TEMPLATE, recipient_key
from tiergate.store.location import parse_store
from tiergate.store.redis_counting import NumberSpec, Row, ScopeSpec, connect
from tiergate.v1 import admission_pb2 as pb

from .redis_harness import RedisProcess
from .test_redis_serve import SENDER, T0, CutProxy, _config, _request, serving

pytestmark = pytest.mark.redis

SCOPE = ScopeSpec("portfolio-redis")


def _marketing(recipient: str, at: int) -> pb.AdmitRequest:
    return pb.AdmitRequest(
        sender_id=SENDER,
        recipient=recipient,
        kind=pb.TEMPLATE,
        category=pb.MARKETING,
        template_id="t1",
        at_unix_ms=at,
    )


async def _used(url: str, now: int) -> int:
    counting = await connect(parse_store(url), timeout=10.0)
    try:
        return (await counting.usage(SCOPE, now, 1)).used_24h
    finally:
        await counting.aclose()


def test_open_admits_are_counted_in_redis_when_it_returns(spare_redis: RedisProcess) -> None:
    """Redis killed: sidecar A (open) admits 200 recipients on its own. Redis back
    (empty: no persistence): A counts them there within about a second, unasked,
    so sidecar B admits only the limit's remaining new recipients, and A's
    recipients again without a new slot."""

    async def main() -> None:
        url = spare_redis.url
        async with serving(_config(url, "open")) as a, serving(_config(url)) as b:
            spare_redis.stop(kill=True)
            n = 200
            for i in range(n):
                res: Any = await a.Admit(_request(i, T0 + i * 100), timeout=5)
                assert res.decision == pb.DECISION_ADMIT
            spare_redis.start()
            # A tries Redis every second on its own: B's Redis counts them unasked
            deadline = time.monotonic() + 10
            while await _used(url, T0 + n * 100) < n:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            at = T0 + n * 100
            first: Any = await a.Admit(_request(n, at))
            assert first.decision == pb.DECISION_ADMIT and first.used == n + 1
            limit, admitted = first.limit, 0
            assert n + 1 < limit < n + 100
            for i in range(n + 1, n + 100):
                at += 100
                res = await b.Admit(_request(i, at))
                if res.decision != pb.DECISION_ADMIT:
                    assert res.reason == pb.MESSAGING_LIMIT
                    break
                admitted += 1
            assert n + 1 + admitted == limit
            again: Any = await b.Admit(_request(7, at + 100))  # one of A's open admits
            assert again.decision == pb.DECISION_ADMIT and not again.counted

    uvloop.run(main())


def test_a_reconciliation_whose_reply_is_lost_counts_once(redis_url: str, tmp_path: Path) -> None:
    """The link to Redis cut, A (open) admits a marketing send to R and five utility
    sends; mended, A's reconciliation runs in Redis but its reply is lost (A keeps
    the admits and answers on its own); sent again, Redis counts nothing twice:
    with a frequency cap of 2, B admits one more marketing send to R, not two."""
    profile = tmp_path / "freq.toml"
    profile.write_text(
        'extends = "meta-2025"\nname = "freq"\n'
        "[protection]\nfrequency_cap = 2\nfrequency_window_hours = 24\n"
    )
    target = int(redis_url.rsplit(":", 1)[1])
    r = "+447700900001"

    async def main() -> None:
        proxy = CutProxy(target)
        await proxy.start()
        via = replace(_config(f"redis://127.0.0.1:{proxy.port}", "open"), profile=str(profile))
        direct = replace(_config(redis_url), profile=str(profile))
        try:
            async with serving(via) as a, serving(direct) as b:
                await lose_a_reply(proxy, a, b)
        finally:
            await proxy.stop()
        assert await _used(redis_url, T0 + 40_000) == 8

    async def lose_a_reply(proxy: CutProxy, a: Any, b: Any) -> None:
        proxy.sever()
        assert (await a.Admit(_marketing(r, T0), timeout=5)).decision == pb.DECISION_ADMIT
        for i in range(5):
            res: Any = await a.Admit(_request(i, T0 + 100 + i * 100), timeout=5)
            assert res.decision == pb.DECISION_ADMIT
        proxy.cut, proxy.lose = False, b"reconcile"
        started = time.monotonic()
        lost: Any = await a.Admit(_request(10, T0 + 10_000), timeout=5)
        assert lost.decision == pb.DECISION_ADMIT  # decided by A alone: the reply was lost
        assert proxy.losing and time.monotonic() - started < 1.0
        proxy.sever()
        proxy.cut, proxy.lose, proxy.losing = False, None, False
        res = await a.Admit(_request(11, T0 + 20_000))
        assert res.decision == pb.DECISION_ADMIT and res.used == 8  # R, 0..4, 10, 11
        once: Any = await b.Admit(_marketing(r, T0 + 30_000))
        assert once.decision == pb.DECISION_ADMIT
        twice: Any = await b.Admit(_marketing(r, T0 + 40_000))
        assert twice.reason == pb.MARKETING_FREQUENCY

    uvloop.run(main())


def test_kept_admits_outlive_a_restart_with_a_data_dir(
    spare_redis: RedisProcess, tmp_path: Path
) -> None:
    """With a --data-dir, the admits kept for Redis are journalled: a sidecar stopped
    while Redis is gone and started again once it is back still counts them there."""
    config = replace(_config(spare_redis.url, "open"), data_dir=tmp_path)

    async def main() -> None:
        async with serving(config) as a:
            spare_redis.stop(kill=True)
            for i in range(20):
                res: Any = await a.Admit(_request(i, T0 + i * 100), timeout=5)
                assert res.decision == pb.DECISION_ADMIT
        spare_redis.start()
        async with serving(config) as a:
            res = await a.Admit(_request(100, T0 + 5_000))
            assert res.decision == pb.DECISION_ADMIT and res.used == 21
        assert await _used(spare_redis.url, T0 + 5_000) == 21

    uvloop.run(main())


def test_redis_killed_under_load_with_aof_loses_no_acknowledged_admit(
    workdir: Path,
) -> None:
    """Eight concurrent streams of Admits to new recipients; Redis (AOF, fsync always)
    is killed with SIGKILL mid-load and restarted from its AOF. Every recipient a
    sidecar answered ADMIT is still counted in Redis (a new send to it needs no
    slot), and the count holds no fewer recipients."""
    server = RedisProcess(workdir, "--appendonly", "yes", "--appendfsync", "always").start()
    admitted: set[str] = set()
    unavailable = 0
    counter = iter(range(1_000_000))

    async def stream(stub: Any, deadline: float) -> None:
        nonlocal unavailable
        while time.monotonic() < deadline:
            k = next(counter)
            if k >= 240:  # below the portfolio's limit: a refusal is the store's
                return
            recipient = f"+1415555{k:04d}"
            req = _request(k, T0 + k * 20)
            res: Any = await stub.Admit(req, timeout=5)
            if res.decision == pb.DECISION_ADMIT:
                admitted.add(recipient)
                await asyncio.sleep(0.005)
            else:  # (backing off as a client told to retry does: recipients stay for after)
                unavailable += 1
                await asyncio.sleep(0.05)

    async def chaos() -> None:
        while len(admitted) < 40:
            await asyncio.sleep(0.01)
        server.stop(kill=True)
        await asyncio.sleep(0.3)
        server.start()

    async def main() -> None:
        async with serving(_config(server.url)) as stub:
            deadline = time.monotonic() + 8
            await asyncio.gather(chaos(), *(stream(stub, deadline) for _ in range(8)))
        assert len(admitted) > 40 and unavailable > 0
        counting = await connect(parse_store(server.url), timeout=10.0)
        try:
            used = (await counting.usage(SCOPE, T0 + 10_000, 1)).used_24h
            assert used >= len(admitted)
            number = NumberSpec(SENDER)
            flags = F_TEMPLATE | F_FORCE | F_DRY_RUN
            rows = [Row(number, recipient_key(r), flags, 1_000, T0 + 10_000) for r in admitted]
            decided = await counting.decide(SCOPE, rows)
            assert [d.counted for d in decided] == [0] * len(rows)  # each still counted
        finally:
            await counting.aclose()
            server.stop()

    uvloop.run(main())
