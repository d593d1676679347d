"""Policy state shared through Redis (``store/shared_policy.py``): senders, tiers,
quality, status, templates and restrictions changed by feedback or a webhook at
one sidecar are what every sidecar decides by; events from several sidecars are
applied in one order everywhere; a sidecar started later (or after the log was
trimmed) gets the state; an idempotency key's binding holds across sidecars."""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import grpc
import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from tiergate import config as cfg
from tiergate.policy.events import Quality, SenderStatus, SenderUpdate
from tiergate.server import Sidecar
from tiergate.store import redis_counting, shared_policy
from tiergate.store.location import parse_store
from tiergate.v1 import admission_pb2 as pb
from tiergate.v1 import admission_pb2_grpc as pb_grpc

from .redis_harness import RedisProcess

pytestmark = pytest.mark.redis

T0 = 1_760_000_000_000
SENDER = "100000000000001"
DISPLAY = "+15550100001"
OTHER = "100000000000002"


def _config(url: str, **extra: Any) -> cfg.ServeConfig:
    sender = SenderUpdate(
        sender_id=SENDER,
        portfolio_id="portfolio-policy",
        waba_id="waba-1",
        display_phone_number=DISPLAY,
        verified=True,
        tier="TIER_250",
        quality=Quality.GREEN,
        status=SenderStatus.CONNECTED,
    )
    config = cfg.ServeConfig(
        listen=cfg.Endpoint("127.0.0.1", 0),
        clock="request",
        senders=(sender,),
        shutdown_grace=2.0,
        store=parse_store(url),
    )
    return replace(config, **extra)


class Serving:
    """A started sidecar and a stub to it."""

    def __init__(self, sidecar: Sidecar, stub: pb_grpc.AdmissionControlStub) -> None:
        self.sidecar = sidecar
        self.stub = stub

    def policy_state(self) -> dict[str, Any]:
        """What the shared log keeps alike at every sidecar: senders (but their own
        decision counts), limit scopes (but the latest time each decided at),
        templates, aliases, message links."""
        assert self.sidecar.service is not None
        st = self.sidecar.service.state
        senders = [{k: v for k, v in s.to_dict().items() if k != "counts"} for s in st.by_index]
        scopes = [{k: v for k, v in sc.to_dict().items() if k != "last_now"} for sc in st.scopes]
        return {
            "senders": senders,
            "scopes": scopes,
            "templates": sorted((t.to_dict() for t in st.templates.values()), key=str),
            "aliases": sorted(st.aliases.items()),
            "links": sorted(st.links.items()),
        }

    async def state(self, at: int, sender: str = SENDER) -> Any:
        req = pb.GetSenderStateRequest(sender_id=sender, at_unix_ms=at)
        return await self.stub.GetSenderState(req)

    async def feedback(self, timeout: float | None = None, **kw: Any) -> Any:
        return await self.stub.RecordFeedback(pb.RecordFeedbackRequest(**kw), timeout=timeout)


@contextlib.asynccontextmanager
async def serving(config: cfg.ServeConfig) -> AsyncIterator[Serving]:
    sidecar = Sidecar(config)
    await sidecar.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}")
    try:
        yield Serving(sidecar, pb_grpc.AdmissionControlStub(channel))
    finally:
        await channel.close(None)
        await sidecar.stop(0.5)


def _request(i: int, at: int, **kw: Any) -> pb.AdmitRequest:
    fields: dict[str, Any] = {
        "sender_id": SENDER,
        "recipient": f"+1415555{i:04d}",
        "kind": pb.TEMPLATE,
        "category": pb.UTILITY,
        "template_id": "t1",
        "at_unix_ms": at,
    }
    fields.update(kw)
    return pb.AdmitRequest(**fields)


@pytest.fixture
def patient(monkeypatch: pytest.MonkeyPatch) -> None:
    """Calls to Redis bounded by 10 s: these tests check answers, not time."""
    monkeypatch.setattr(redis_counting, "DEFAULT_TIMEOUT", 10.0)


def _update(tier: str = "", quality: int = 0, status: int = 0, at: int = T0) -> Any:
    u = pb.SenderUpdate(sender_id=SENDER, at_unix_ms=at)
    if tier:
        u.tier = tier
    if quality:
        u.quality = quality  # type: ignore[assignment]
    if status:
        u.status = status  # type: ignore[assignment]
    return u


@pytest.mark.usefixtures("patient")
def test_a_tier_raised_at_one_sidecar_is_the_limit_at_the_other(redis_url: str) -> None:
    async def main() -> None:
        async with serving(_config(redis_url)) as a, serving(_config(redis_url)) as b:
            before: Any = await b.stub.Admit(_request(1, T0))
            assert before.limit == 250
            told: Any = await a.feedback(sender_update=_update("TIER_10K", at=T0 + 10))
            assert told.applied
            # A's answer came after the event was in the log; B reads it as appended
            # (its follower), and before any GetSenderState
            assert (await b.state(T0 + 20)).limit == 10_000
            after: Any = await b.stub.Admit(_request(2, T0 + 30))
            assert after.limit == 10_000
            assert a.policy_state() == b.policy_state()
            read = b.sidecar.metrics.collected
            assert read["tiergate_store_policy_entries_total"][2]() == 3.0  # 2 seeds, 1 update
            assert read["tiergate_store_policy_snapshots_loaded_total"][2]() == 1.0

    uvloop.run(main())


@pytest.mark.usefixtures("patient")
def test_the_follower_applies_without_any_call(redis_url: str) -> None:
    """B is told nothing: its follower applies A's event on its own."""

    async def main() -> None:
        async with serving(_config(redis_url)) as a, serving(_config(redis_url)) as b:
            await a.feedback(sender_update=_update("TIER_2K", at=T0))
            deadline = time.monotonic() + 10
            sb = b.sidecar.service
            assert sb is not None
            while sb.state.senders[SENDER].scope.tier != "TIER_2K":
                assert time.monotonic() < deadline, "B never applied A's event"
                await asyncio.sleep(0.01)
            assert (await b.stub.Admit(_request(1, T0 + 10))).limit == 2_000

    uvloop.run(main())


def _paused_webhook() -> bytes:
    change = {
        "field": "message_template_status_update",
        "value": {
            "event": "PAUSED",
            "message_template_id": 1689556908129832,
            "message_template_name": "order_confirmation",
            "message_template_language": "en_US",
            "reason": "NONE",
            "other_info": {"title": "FIRST_PAUSE"},
        },
    }
    entry = {"id": "waba-1", "time": T0 // 1000, "changes": [change]}
    body = {"object": "whatsapp_business_account", "entry": [entry]}
    return json.dumps(body).encode()


@pytest.mark.usefixtures("patient")
def test_a_template_paused_by_a_webhook_at_one_sidecar_refuses_at_the_other(
    redis_url: str,
) -> None:
    async def main() -> None:
        async with serving(_config(redis_url)) as a, serving(_config(redis_url)) as b:
            send = _request(1, T0 + 100, template_id="order_confirmation")
            assert (await b.stub.Admit(send)).decision == pb.DECISION_ADMIT
            req = pb.IngestWebhookRequest(body=_paused_webhook(), at_unix_ms=T0 + 200)
            out: Any = await a.stub.IngestWebhook(req)
            assert out.applied == 1
            await b.state(T0 + 250)  # reads the log
            refused: Any = await b.stub.Admit(
                _request(2, T0 + 300, template_id="order_confirmation")
            )
            assert refused.reason == pb.TEMPLATE_PAUSED
            assert refused.retry_at_unix_ms == T0 + 3 * 3_600_000  # from Meta's time
            again: Any = await b.stub.IngestWebhook(req)  # redelivered to the other sidecar
            assert again.applied == 0, again  # the same pause, not counted twice
            assert a.policy_state() == b.policy_state()

    uvloop.run(main())


@pytest.mark.usefixtures("patient")
def test_quality_and_status_changes_apply_at_every_sidecar(redis_url: str) -> None:
    async def main() -> None:
        async with serving(_config(redis_url)) as a, serving(_config(redis_url)) as b:
            await a.feedback(sender_update=_update(quality=pb.RED, at=T0))
            state: Any = await b.state(T0 + 10)
            assert state.quality == pb.RED
            await b.feedback(sender_update=_update(status=pb.BANNED, at=T0 + 20))
            await a.state(T0 + 30)
            blocked: Any = await a.stub.Admit(_request(1, T0 + 40))
            assert blocked.reason == pb.SENDER_BLOCKED
            assert a.policy_state() == b.policy_state()

    uvloop.run(main())


@pytest.mark.usefixtures("patient")
def test_a_restriction_expires_alike_at_every_sidecar(redis_url: str) -> None:
    """Time-driven changes follow from the same events and times: a restriction told
    to A ends at the same moment at B, whatever each decided in between."""
    until = T0 + 600_000

    async def main() -> None:
        async with serving(_config(redis_url)) as a, serving(_config(redis_url)) as b:
            restrict = _update(status=pb.RESTRICTED, at=T0)
            restrict.restricted_until_unix_ms = until
            assert (await a.feedback(sender_update=restrict)).applied
            await b.state(T0 + 1)
            for i, at in enumerate((T0 + 1_000, until - 1, until + 1_000)):
                for j, s in enumerate((a, b)):
                    res: Any = await s.stub.Admit(_request(10 * i + j, at))
                    if at < until:
                        assert res.reason == pb.SENDER_RESTRICTED
                    else:
                        assert res.reason != pb.SENDER_RESTRICTED
            sa, sb = await a.state(until + 2_000), await b.state(until + 2_000)
            assert sa.status == sb.status == pb.CONNECTED
            assert a.policy_state() == b.policy_state()

    uvloop.run(main())


@pytest.mark.usefixtures("patient")
def test_a_sidecar_started_later_gets_the_state(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """C starts after A changed things (and after snapshots trimmed the log): it
    holds what A and B hold; its config's sender does not undo the shared tier."""
    monkeypatch.setattr(shared_policy, "SNAPSHOT_EVERY", 3)

    async def main() -> None:
        async with serving(_config(redis_url)) as a, serving(_config(redis_url)) as b:
            for k, tier in enumerate(("TIER_1K", "TIER_2K", "TIER_10K", "TIER_100K")):
                await (a, b)[k % 2].feedback(sender_update=_update(tier, at=T0 + k))
            other = pb.SenderUpdate(
                sender_id=OTHER, portfolio_id="portfolio-2", tier="TIER_1K", at_unix_ms=T0 + 9
            )
            await a.feedback(sender_update=other)
            for _ in range(5):  # more than SNAPSHOT_EVERY entries: the log is trimmed
                await a.feedback(sender_update=_update(quality=pb.YELLOW, at=T0 + 10))
            await asyncio.sleep(0.2)  # the snapshot is written in the background
            client = a.sidecar.shared.counting.client  # type: ignore[union-attr]
            assert a.sidecar.policy is not None
            assert a.sidecar.policy.snapshot_id > (0, 0)
            assert await client.xlen(shared_policy.STREAM_KEY) < 12  # 2 seeds, 10 events
            async with serving(_config(redis_url)) as c:
                assert (await c.state(T0 + 20)).limit == 100_000
                assert (await c.state(T0 + 20, OTHER)).limit == 1_000
                await b.state(T0 + 20)
                assert c.policy_state() == a.policy_state() == b.policy_state()
                assert c.sidecar.policy is not None and c.sidecar.policy.loaded == 1

    uvloop.run(main())


@pytest.mark.usefixtures("patient")
def test_a_key_reused_for_another_request_is_refused_at_the_other_sidecar(
    redis_url: str,
) -> None:
    """The embedded store's refusal, word for word, at a sidecar that never saw the
    key's first request."""

    async def main() -> None:
        async with serving(_config(redis_url)) as a, serving(_config(redis_url)) as b:
            first: Any = await a.stub.Admit(_request(1, T0, idempotency_key="order-1"))
            assert first.decision == pb.DECISION_ADMIT
            for change, what in (
                ({"recipient": "+14155559999"}, "recipient"),
                ({"category": pb.MARKETING}, "category"),
                ({"template_id": "t2"}, "template"),
            ):
                other = _request(1, T0 + 20, idempotency_key="order-1", **change)
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await b.stub.Admit(other)
                assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert e.value.details() == (
                    f"idempotency_key: was first used for a request with another {what}; an "
                    "idempotency key answers only the request it was first used for (use a "
                    "new key for a new message)"
                )
            batch = pb.AdmitBatchRequest(
                requests=[
                    _request(2, T0 + 30),
                    _request(1, T0 + 30, idempotency_key="order-1", template_id="t2"),
                ]
            )
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await b.stub.AdmitBatch(batch)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert e.value.details().startswith("requests[1].idempotency_key: was first used")
            columns = pb.AdmitColumnsRequest(
                senders=[SENDER],
                sender_index=[0, 0],
                recipients=["+14155550002", "+14155550001"],
                kinds=bytes([pb.TEMPLATE, pb.TEMPLATE]),
                categories=bytes([pb.UTILITY, pb.UTILITY]),
                templates=["t2"],
                template_index=[1, 1],
                idempotency_keys=["", "order-1"],
                at_unix_ms=[T0 + 35, T0 + 35],
            )
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await b.stub.AdmitColumns(columns)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert e.value.details().startswith("idempotency_keys[1]: was first used")
            same: Any = await b.stub.Admit(_request(1, T0 + 40, idempotency_key="order-1"))
            assert same.decision == pb.DECISION_ADMIT and same.used == first.used
            # the refused requests and batches took nothing (refused before anything
            # of them was decided in Redis)
            assert (await a.stub.Admit(_request(3, T0 + 50))).used == first.used + 1

    uvloop.run(main())


async def _post(port: int, body: bytes) -> int:
    """POST ``body`` to the webhook receiver on ``port``: the HTTP status."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    writer.write(head.encode() + body)
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    writer.close()
    return status


def test_feedback_while_redis_is_gone_is_unavailable(spare_redis: RedisProcess) -> None:
    """Never applied to one sidecar only: refused UNAVAILABLE (the webhook receiver:
    503, for Meta to deliver again), applied once Redis is back."""
    config = _config(
        spare_redis.url, store_failure="open", webhook_listen=cfg.Endpoint("127.0.0.1", 0)
    )

    async def main() -> None:
        async with serving(config) as a:
            spare_redis.stop(kill=True)
            assert await _post(a.sidecar.webhook_port, _paused_webhook()) == 503
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await a.feedback(sender_update=_update("TIER_1K"), timeout=5)
            assert time.monotonic() - started < 1.5
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "store unavailable" in (e.value.details() or "")
            assert (await a.state(T0)).limit == 250  # not applied here either
            spare_redis.start()
            told = await a.feedback(sender_update=_update("TIER_1K", at=T0 + 10))
            assert told.applied
            assert (await a.state(T0 + 20)).limit == 1_000
            assert await _post(a.sidecar.webhook_port, _paused_webhook()) == 200

    uvloop.run(main())


_EVENT = hs.one_of(
    hs.tuples(hs.just("tier"), hs.sampled_from(["TIER_250", "TIER_1K", "TIER_2K", "TIER_10K"])),
    hs.tuples(hs.just("quality"), hs.sampled_from([pb.GREEN, pb.YELLOW, pb.RED])),
    hs.tuples(hs.just("template"), hs.sampled_from(["PAUSED", "APPROVED", "DISABLED"])),
    hs.tuples(hs.just("inbound"), hs.integers(0, 3)),
)


def _feedback(kind: str, value: Any, at: int) -> pb.RecordFeedbackRequest:
    if kind == "tier":
        return pb.RecordFeedbackRequest(sender_update=_update(value, at=at))
    if kind == "quality":
        return pb.RecordFeedbackRequest(sender_update=_update(quality=value, at=at))
    if kind == "template":
        status = {"PAUSED": pb.TEMPLATE_STATUS_PAUSED, "APPROVED": pb.TEMPLATE_STATUS_APPROVED}
        u = pb.TemplateUpdate(
            template_id="t1", status=status.get(value, pb.TEMPLATE_STATUS_DISABLED), at_unix_ms=at
        )
        return pb.RecordFeedbackRequest(template_update=u)
    inbound = pb.InboundMessage(
        sender_id=SENDER, recipient=f"+1415555{value:04d}", at_unix_ms=at, message_id=f"m{at}"
    )
    return pb.RecordFeedbackRequest(inbound_message=inbound)


@pytest.mark.usefixtures("patient")
@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    events=hs.lists(hs.tuples(hs.booleans(), _EVENT), min_size=1, max_size=10),
    gaps=hs.lists(hs.integers(0, 2), min_size=10, max_size=10),
)
def test_events_from_both_sidecars_apply_in_one_order(
    redis_server: RedisProcess, events: list[tuple[bool, tuple[str, Any]]], gaps: list[int]
) -> None:
    """Events sent to either sidecar, some at once (their order is Redis's), give the
    same policy state and the same GetSenderState at both."""
    redis_server.cli("FLUSHALL", "SYNC")

    async def main() -> None:
        config = _config(redis_server.url)
        async with serving(config) as a, serving(config) as b:
            calls = []
            for i, (to_b, (kind, value)) in enumerate(events):
                target = b if to_b else a
                calls.append(target.stub.RecordFeedback(_feedback(kind, value, T0 + i * 1_000)))
                if gaps[i] == 0:  # these go together: their order is the log's
                    continue
                await asyncio.gather(*calls)
                calls = []
            await asyncio.gather(*calls)
            at = T0 + 20_000
            sa, sb = await a.state(at), await b.state(at)
            sa.ClearField("store")
            sb.ClearField("store")
            assert sa == sb
            assert a.policy_state() == b.policy_state()

    uvloop.run(main())


def test_two_sidecars_on_a_cluster_share_a_tier(redis_cluster: str) -> None:
    async def main() -> None:
        config = _config(redis_cluster, senders=())  # a sender of this test's own
        sid = f"1{time.time_ns() % 10**14:014d}"
        async with serving(config) as a, serving(config) as b:
            new = pb.SenderUpdate(sender_id=sid, portfolio_id=f"pf-{sid}", tier="TIER_250")
            assert (await a.feedback(sender_update=new)).applied
            raise_it = pb.SenderUpdate(sender_id=sid, tier="TIER_10K", at_unix_ms=T0)
            assert (await b.feedback(sender_update=raise_it)).applied
            assert (await a.state(T0 + 10, sid)).limit == 10_000
            res: Any = await a.stub.Admit(_request(1, T0 + 20, sender_id=sid))
            assert res.decision == pb.DECISION_ADMIT and res.limit == 10_000

    uvloop.run(main())


def _process(url: str, port_out: Any, done: Any) -> None:
    """A sidecar in a process of its own, serving until ``done`` is set."""

    async def main() -> None:
        async with serving(_config(url)) as s:
            port_out.put(s.sidecar.port)
            while not done.is_set():
                await asyncio.sleep(0.05)

    uvloop.run(main())


def test_a_tier_told_to_another_process_is_the_limit_here(redis_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    port_out, done = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=_process, args=(redis_url, port_out, done))
    proc.start()
    try:
        port = port_out.get(timeout=120)

        async def main() -> None:
            async with serving(_config(redis_url)) as here:
                channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
                there = pb_grpc.AdmissionControlStub(channel)
                req = pb.RecordFeedbackRequest(sender_update=_update("TIER_2K", at=T0))
                assert (await there.RecordFeedback(req)).applied
                assert (await here.state(T0 + 10)).limit == 2_000
                assert (await here.stub.Admit(_request(1, T0 + 20))).limit == 2_000
                await channel.close(None)

        uvloop.run(main())
    finally:
        done.set()
        proc.join(timeout=30)
    assert proc.exitcode == 0


@pytest.mark.usefixtures("patient")
def test_a_ticket_of_a_sender_made_at_another_sidecar_releases_before_it_was_read(
    redis_url: str,
) -> None:
    """B has not read the log (its follower stopped) when told of a FAILED send of a
    sender A just made: it reads the log and releases rather than refuse the ticket."""

    async def main() -> None:
        async with serving(_config(redis_url)) as a, serving(_config(redis_url)) as b:
            assert b.sidecar.policy is not None
            await b.sidecar.policy.aclose()  # B reads the log only when it must
            made = pb.SenderUpdate(
                sender_id=OTHER, portfolio_id="portfolio-2", tier="TIER_250", at_unix_ms=T0
            )
            assert (await a.feedback(sender_update=made)).applied
            sent: Any = await a.stub.Admit(_request(1, T0 + 10, sender_id=OTHER))
            assert sent.decision == pb.DECISION_ADMIT
            assert OTHER not in b.sidecar.service.state.senders  # type: ignore[union-attr]
            failed = pb.SendResult(
                ticket=sent.ticket, status=pb.FAILED, meta_error_code=131026, at_unix_ms=T0 + 20
            )
            told: Any = await b.feedback(send_result=failed)
            assert "invalid ticket" not in told.detail  # B knows the sender now
            again: Any = await a.stub.Admit(_request(2, T0 + 30, sender_id=OTHER))
            assert again.used == 1  # the first one's slot was given back in Redis

    uvloop.run(main())
