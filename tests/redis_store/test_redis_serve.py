"""``tiergate serve --store redis://…`` end to end: two sidecars on one Redis share one
messaging limit; a sidecar whose Redis is gone answers RETRY_LATER ("store
unavailable") within a second under ``--store-failure closed``, admits under
``open``, and decides in Redis again once it is back."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import uvloop

from tiergate import config as cfg
from tiergate.policy.answers import UNAVAILABLE_DETAIL
from tiergate.policy.events import Quality, SenderStatus, SenderUpdate
from tiergate.store import redis_counting
from tiergate.store.location import parse_store
from tiergate.v1 import admission_pb2 as pb

from .redis_harness import RedisProcess, serving

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


def _request(i: int, at: int) -> pb.AdmitRequest:
    return pb.AdmitRequest(
        sender_id=SENDER,
        recipient=f"+1415555{i:04d}",
        kind=pb.TEMPLATE,
        category=pb.UTILITY,
        template_id="t1",
        at_unix_ms=at,
    )


def _failed(i: int, ticket: bytes, at: int) -> pb.SendResult:
    """A FAILED send (131026) of ``_request(i, ...)``'s admit ``ticket``."""
    return pb.SendResult(
        ticket=ticket,
        sender_id=SENDER,
        recipient=f"+1415555{i:04d}",
        status=pb.FAILED,
        meta_error_code=131026,
        at_unix_ms=at,
    )


@pytest.mark.usefixtures("patient")
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


@pytest.mark.usefixtures("patient")
def test_batches_on_two_sidecars_share_the_limit_and_keys_repeat(redis_url: str) -> None:
    """AdmitBatch over Redis: batches from two sidecars admit the portfolio's limit and
    no more; a key repeated inside a batch gets the first answer (nothing counted
    twice)."""

    async def main() -> None:
        async with serving(_config(redis_url)) as a, serving(_config(redis_url)) as b:
            admitted, limit, at = 0, 0, T0
            for k in range(6):
                reqs = [_request(k * 50 + j, at + j * 20) for j in range(50)]
                at += 1_000
                reply: Any = await (a, b)[k % 2].AdmitBatch(pb.AdmitBatchRequest(requests=reqs))
                assert len(reply.responses) == 50
                for r in reply.responses:
                    limit = r.limit
                    if r.decision == pb.DECISION_ADMIT:
                        admitted += 1
                    else:
                        assert r.reason == pb.MESSAGING_LIMIT
            assert 0 < limit < 300 and admitted == limit

            keyed = [_request(900, at), _request(900, at + 20), _request(901, at + 40)]
            keyed[0].idempotency_key = keyed[1].idempotency_key = "k-900"
            keyed[0].recipient = keyed[1].recipient = "+14155550010"  # admitted above
            reply = await b.AdmitBatch(pb.AdmitBatchRequest(requests=keyed))
            first, again, third = reply.responses
            assert first.decision == pb.DECISION_ADMIT and not first.counted
            assert again.ticket == first.ticket
            assert third.reason == pb.MESSAGING_LIMIT

    uvloop.run(main())


@pytest.mark.parametrize("failure", ["closed", "open"])
def test_redis_gone_answers_by_store_failure_then_recovers(
    spare_redis: RedisProcess, failure: str
) -> None:
    async def main() -> None:
        async with serving(_config(spare_redis.url, failure)) as stub:
            first: Any = await stub.Admit(_request(1, T0))
            assert first.decision == pb.DECISION_ADMIT
            state: Any = await stub.GetSenderState(pb.GetSenderStateRequest(sender_id=SENDER))
            assert state.store == spare_redis.url and not state.store_unavailable
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
            state = await stub.GetSenderState(pb.GetSenderStateRequest(sender_id=SENDER))
            assert state.store_unavailable
            spare_redis.start()
            again: Any = await stub.Admit(_request(3, T0 + 2_000))
            assert again.decision == pb.DECISION_ADMIT
            state = await stub.GetSenderState(pb.GetSenderStateRequest(sender_id=SENDER))
            assert not state.store_unavailable

    uvloop.run(main())


def _free_form(i: int, at: int) -> pb.AdmitRequest:
    return pb.AdmitRequest(
        sender_id=SENDER, recipient=f"+1415555{i:04d}", kind=pb.FREE_FORM, at_unix_ms=at
    )


@pytest.mark.usefixtures("patient")
def test_feedback_to_one_sidecar_applies_for_the_other(redis_url: str) -> None:
    """A window opened by an inbound message and an opt-out, told to sidecar A, and a
    FAILED send of A's ticket told to B, are what the other decides by."""

    async def main() -> None:
        async with serving(_config(redis_url)) as a, serving(_config(redis_url)) as b:
            refused: Any = await b.Admit(_free_form(1, T0))
            assert refused.reason == pb.OUTSIDE_WINDOW
            inbound = pb.InboundMessage(sender_id=SENDER, recipient="+14155550001", at_unix_ms=T0)
            applied: Any = await a.RecordFeedback(pb.RecordFeedbackRequest(inbound_message=inbound))
            assert applied.applied
            admitted: Any = await b.Admit(_free_form(1, T0 + 100))
            assert admitted.decision == pb.DECISION_ADMIT

            marketing = _request(2, T0 + 200)
            marketing.category = pb.MARKETING
            marketing.recipient = "+447700900002"  # Meta delivers no marketing to US numbers
            opt = pb.OptOut(
                recipient="+447700900002", sender_id=SENDER, opted_out=True, at_unix_ms=T0
            )
            await a.RecordFeedback(pb.RecordFeedbackRequest(opt_out=opt))
            opted: Any = await b.Admit(marketing)
            assert opted.reason == pb.RECIPIENT_OPTED_OUT

            # fill the limit from both sidecars, then give one slot back through A
            tickets, at = [], T0 + 1_000
            for i in range(10, 400):
                res: Any = await (a, b)[i % 2].Admit(_request(i, at))
                at += 100
                if res.decision != pb.DECISION_ADMIT:
                    break
                if i % 2 == 0:
                    tickets.append((i, res.ticket))
            assert res.reason == pb.MESSAGING_LIMIT
            assert (await b.Admit(_request(999, at))).reason == pb.MESSAGING_LIMIT
            i, ticket = tickets[-1]
            failed = _failed(i, ticket, at)
            # A issued the ticket; B verifies it (one ticket key per Redis) and releases
            told: Any = await b.RecordFeedback(pb.RecordFeedbackRequest(send_result=failed))
            assert "invalid ticket" not in told.detail  # B verifies it; Redis frees the slot
            again: Any = await a.Admit(_request(999, at + 100))
            assert again.decision == pb.DECISION_ADMIT

    uvloop.run(main())


def test_metrics_say_the_shared_store_s_health() -> None:
    from types import SimpleNamespace

    from tiergate.server.gauges import register_shared_metrics
    from tiergate.server.metrics import Metrics

    m = Metrics()
    shared: Any = SimpleNamespace(
        available=False,
        unavailable_answers=3,
        counting=SimpleNamespace(round_trips=7),
        service=SimpleNamespace(state=SimpleNamespace(unreconciled=[(), ()])),
        reconciled=5,
        reconcile_dropped=1,
    )
    register_shared_metrics(m, shared)
    read = {name: entry[2]() for name, entry in m.collected.items()}
    assert read["tiergate_store_shared_available"] == 0.0
    assert read["tiergate_store_unavailable_answers_total"] == 3.0
    assert read["tiergate_store_round_trips_total"] == 7.0
    assert read["tiergate_store_unreconciled"] == 2.0
    assert read["tiergate_store_reconciled_total"] == 5.0
    assert read["tiergate_store_unreconciled_dropped_total"] == 1.0
    shared.available = True
    assert m.collected["tiergate_store_shared_available"][2]() == 1.0


class CutProxy:
    """A TCP proxy to Redis whose link can be cut (every connection dropped, new ones
    held open and never answered) and mended, in the test's event loop; with
    ``lose`` set, the replies from the first request that holds those bytes on
    are lost (Redis ran the call; its answer never arrives) until ``losing`` is
    cleared."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.cut = False
        self.lose: bytes | None = None
        self.losing = False
        self.links: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, up: bool) -> None:
        try:
            while not self.cut and (data := await r.read(65536)):
                if up and self.lose is not None and self.lose in data:
                    self.losing = True
                if not up and self.losing:
                    continue
                w.write(data)
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            w.close()

    async def _link(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.links.add(w)
        if self.cut:  # accepted, never answered: a network that drops packets
            await r.read()
            return
        ur, uw = await asyncio.open_connection("127.0.0.1", self.target)
        self.links.add(uw)
        await asyncio.gather(self._pipe(r, uw, True), self._pipe(ur, w, False))

    def sever(self) -> None:
        self.cut = True
        for w in self.links:
            w.close()
        self.links.clear()

    async def stop(self) -> None:
        self.sever()
        if self.server is not None:
            self.server.close()


def test_a_cut_link_answers_within_a_second_and_counts_nothing_twice(redis_url: str) -> None:
    """The link to Redis cut under a stream of Admits: each answered RETRY_LATER
    ("store unavailable") within a second, none hangs; mended, decisions go on, and
    Redis counts each admitted recipient once."""
    target = int(redis_url.rsplit(":", 1)[1])

    async def main() -> None:
        proxy = CutProxy(target)
        await proxy.start()
        config = _config(f"redis://127.0.0.1:{proxy.port}")
        admitted: set[str] = set()
        async with serving(config) as stub:
            for i in range(10):
                res: Any = await stub.Admit(_request(i, T0 + i * 100))
                assert res.decision == pb.DECISION_ADMIT
                admitted.add(f"+1415555{i:04d}")
            proxy.sever()
            for i in range(10, 14):
                started = time.monotonic()
                res = await stub.Admit(_request(i, T0 + i * 100), timeout=5)
                assert time.monotonic() - started < 1.0
                assert res.decision == pb.DECISION_RETRY_LATER
                assert res.detail == UNAVAILABLE_DETAIL
            proxy.cut = False
            for i in range(10, 20):  # the refused ones again, then new ones
                res = await stub.Admit(_request(i, T0 + 2_000 + i * 100))
                assert res.decision == pb.DECISION_ADMIT
                admitted.add(f"+1415555{i:04d}")
            state: Any = await stub.GetSenderState(pb.GetSenderStateRequest(sender_id=SENDER))
            assert not state.store_unavailable
        await proxy.stop()
        counting = await redis_counting.connect(parse_store(redis_url), timeout=10.0)
        usage = await counting.usage(redis_counting.ScopeSpec("portfolio-redis"), T0 + 10_000, 1)
        assert usage.used_24h == len(admitted) == 20
        await counting.aclose()

    uvloop.run(main())


@pytest.mark.usefixtures("patient")
def test_an_idempotency_key_holds_across_sidecars(redis_url: str) -> None:
    """A request admitted under a key at sidecar A, retried at B: B answers A's
    decision (the same slot, counted once) and consumes nothing again."""

    async def main() -> None:
        async with serving(_config(redis_url)) as a, serving(_config(redis_url)) as b:
            keyed = _request(7, T0)
            keyed.idempotency_key = "order-7"
            first: Any = await a.Admit(keyed)
            assert first.decision == pb.DECISION_ADMIT and first.counted
            keyed.at_unix_ms = T0 + 50  # the retry, moments later, at the other sidecar
            again: Any = await b.Admit(keyed)
            assert again.decision == pb.DECISION_ADMIT
            assert (again.counted, again.used) == (first.counted, first.used)
            other: Any = await b.Admit(_request(8, T0 + 100))
            assert other.used == first.used + 1  # the retry took no slot
            dry = _request(9, T0 + 200)
            dry.idempotency_key, dry.dry_run = "order-9", True
            assert (await a.Admit(dry)).decision == pb.DECISION_ADMIT
            dry.dry_run = False
            real: Any = await b.Admit(dry)  # a dry run remembers nothing: decided now
            assert real.counted and real.used == other.used + 1

    uvloop.run(main())


@pytest.mark.usefixtures("patient")
def test_a_data_dir_with_the_shared_store_restarts(redis_url: str, tmp_path: Any) -> None:
    """With a --data-dir too: the sidecar restarts from its journal, and Redis's
    counts and ticket key carry on across the restart."""
    from dataclasses import replace

    config = replace(_config(redis_url), data_dir=tmp_path)

    async def main() -> None:
        async with serving(config) as stub:
            first: Any = await stub.Admit(_request(1, T0))
            assert first.decision == pb.DECISION_ADMIT and first.used == 1
        async with serving(config) as stub:
            again: Any = await stub.Admit(_request(2, T0 + 100))
            assert again.decision == pb.DECISION_ADMIT and again.used == 2
            failed = pb.SendResult(
                ticket=first.ticket,
                sender_id=SENDER,
                recipient="+14155550001",
                status=pb.FAILED,
                meta_error_code=131026,
                at_unix_ms=T0 + 200,
            )
            told: Any = await stub.RecordFeedback(pb.RecordFeedbackRequest(send_result=failed))
            assert "invalid ticket" not in told.detail  # the ticket key outlived the restart
            third: Any = await stub.Admit(_request(3, T0 + 300))
            assert third.used == 2  # the first one's slot was given back in Redis

    uvloop.run(main())


def test_shadow_mode_and_portfolio_warm_up_start_on_the_shared_store(
    redis_url: str, tmp_path: Any
) -> None:
    """Shadow mode and warm-up under portfolio scope start on the shared store (both
    decided in Redis: test_redis_adopt.py, test_redis_warmup.py)."""
    from dataclasses import replace

    warm = tmp_path / "warm.toml"
    warm.write_text('extends = "meta-2025"\nname = "warm"\n[warmup]\nenabled = true\n')

    async def main() -> None:
        for config in (
            replace(_config(redis_url), profile=str(warm)),
            replace(_config(redis_url), shadow=True),
        ):
            async with serving(config) as stub:
                res: Any = await stub.Admit(_request(1, T0))
                assert res.decision == pb.DECISION_ADMIT

    uvloop.run(main())
