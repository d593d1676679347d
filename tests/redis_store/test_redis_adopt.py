"""Shadow mode, GetSenderState's counts, PlanCampaign and WatchSenderState on the
Redis store, through gRPC on a request clock: each against an embedded-store
sidecar given the same traffic, and across two sidecars sharing one Redis."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import replace
from typing import Any

import pytest
import redis.asyncio
import uvloop

from tiergate import cli
from tiergate import config as cfg
from tiergate.engine.constants import ADMIT, F_MARKETING, F_TEMPLATE
from tiergate.policy.events import Quality, SenderStatus, SenderUpdate
from tiergate.server import Sidecar, shared_watch
from tiergate.store import redis_counting, redis_reads
from tiergate.store.location import parse_store
from tiergate.v1 import admission_pb2 as pb

from .redis_harness import serving

pytestmark = pytest.mark.redis

T0 = 1_760_000_000_000
HOUR = 3_600_000
DAY = 24 * HOUR
SENDER = "100000000000001"
LIMIT = 250  # TIER_250


def _config(url: str = "", **fields: Any) -> cfg.ServeConfig:
    sender = SenderUpdate(
        sender_id=SENDER,
        portfolio_id=fields.pop("portfolio", "portfolio-adopt"),
        display_phone_number="+15550100001",
        verified=True,
        tier="TIER_250",
        quality=Quality.GREEN,
        status=SenderStatus.CONNECTED,
        throughput_mps=fields.pop("mps", None),
    )
    base = cfg.ServeConfig(
        listen=cfg.Endpoint("127.0.0.1", 0),
        clock="request",
        senders=(sender,),
        shutdown_grace=2.0,
    )
    if url:
        base = replace(base, store=parse_store(url))
    return replace(base, **fields)


def _send(rcpt: str, at: int, category: Any = pb.UTILITY) -> pb.AdmitRequest:
    return pb.AdmitRequest(
        sender_id=SENDER,
        recipient=rcpt,
        kind=pb.TEMPLATE,
        category=category,
        template_id="t1",
        at_unix_ms=at,
    )


def _numbers(n: int, first: int = 0) -> list[str]:
    return [f"4477009{i:05d}" for i in range(first, first + n)]


def _answer(r: Any) -> tuple[int, ...]:
    return (
        r.decision,
        r.reason,
        r.retry_at_unix_ms,
        r.used,
        r.counted,
        r.shadow_decision,
        r.shadow_reason,
        r.shadow_retry_at_unix_ms,
    )


@pytest.fixture(autouse=True)
def patient(monkeypatch: pytest.MonkeyPatch) -> None:
    """Calls to Redis bounded by 10 s (a busy shared machine: answers, not time)."""
    monkeypatch.setattr(redis_counting, "DEFAULT_TIMEOUT", 10.0)


def test_shadow_mode_over_redis_answers_as_the_embedded_store(redis_url: str) -> None:
    """``--shadow`` over Redis: past the limit every send is ADMIT with the would-be
    refusal in the shadow fields, counted like an admit; two sidecars sending
    alternately answer exactly what one embedded sidecar answers, and a profile
    shadowing throughput alone still refuses at the limit."""
    traffic = [_send(f"1555{i:07d}", T0 + 20 * i) for i in range(LIMIT + 10)]
    # past the number's throughput burst, to recipients counted already
    traffic += [_send(f"1555{i:07d}", T0 + 6_000) for i in range(120)]

    async def main() -> None:
        shadow = _config(shadow=True)
        async with serving(shadow) as alone:
            want = [_answer(await alone.Admit(r)) for r in traffic]
        async with (
            serving(_config(redis_url, shadow=True)) as a,
            serving(_config(redis_url, shadow=True)) as b,
        ):
            got = [_answer(await (a, b)[i % 2].Admit(r)) for i, r in enumerate(traffic)]
            state = await b.GetSenderState(pb.GetSenderStateRequest(sender_id=SENDER))
        assert got == want
        assert all(d == pb.DECISION_ADMIT for d, *_ in got)
        over = [g for g in got if g[5]]
        assert {(g[5], g[6]) for g in over} == {
            (pb.DECISION_RETRY_LATER, pb.MESSAGING_LIMIT),
            (pb.DECISION_RETRY_LATER, pb.THROUGHPUT),
        }
        assert got[LIMIT + 9][3] == LIMIT + 10  # counted like any admit
        assert state.used_24h == LIMIT + 10

    uvloop.run(main())


def test_a_batch_and_keys_under_shadow_over_redis(redis_url: str) -> None:
    """AdmitBatch over Redis in shadow mode answers as the embedded store's; a key
    repeated after a shadow admit answers that admit and counts nothing again."""
    reqs = [_send(f"1666{i:07d}", T0 + 30 * i) for i in range(LIMIT + 5)]
    keyed = _send("16669999999", T0 + 30 * (LIMIT + 6))
    keyed.idempotency_key = "k-1"

    async def main() -> None:
        async with serving(_config(shadow=True)) as alone:
            want = await alone.AdmitBatch(pb.AdmitBatchRequest(requests=[*reqs, keyed]))
        async with (
            serving(_config(redis_url, shadow=True)) as a,
            serving(_config(redis_url, shadow=True)) as b,
        ):
            got = await a.AdmitBatch(pb.AdmitBatchRequest(requests=[*reqs, keyed]))
            again = await b.Admit(keyed)
        assert [_answer(r) for r in got.responses] == [_answer(r) for r in want.responses]
        first = got.responses[-1]
        assert first.shadow_reason == pb.MESSAGING_LIMIT
        assert _answer(again) == _answer(first)

    uvloop.run(main())


_REPORTED = (
    "used_24h",
    "remaining",
    "next_slot_free_at_unix_ms",
    "unique_7d",
    "counted_last_hour",
    "limit_reached_at_unix_ms",
    "at_unix_ms",
)


def _report(s: pb.SenderState) -> dict[str, Any]:
    out: dict[str, Any] = {f: getattr(s, f) for f in _REPORTED}
    out["slots_freeing_per_hour"] = list(s.slots_freeing_per_hour)
    out["upgrade"] = s.upgrade.SerializeToString()
    return out


def test_sender_state_counts_come_from_redis(redis_url: str) -> None:
    """The same traffic to one embedded sidecar and, alternately, to two sidecars on
    one Redis: GetSenderState at either Redis sidecar reports the embedded one's
    counts and forecast, at several times over the next day."""

    async def main() -> None:
        async with (
            serving(_config()) as alone,
            serving(_config(redis_url)) as a,
            serving(_config(redis_url)) as b,
        ):
            rng = random.Random(7)
            pool = _numbers(400)
            at = T0 - 30 * HOUR
            for i in range(500):
                at += rng.randrange(60_000, 300_000)
                req = _send(rng.choice(pool), at)
                want = await alone.Admit(req)
                got = await (a, b)[i % 2].Admit(req)
                assert _answer(got) == _answer(want)
            for dt in (0, 1, 59_999, HOUR, 7 * HOUR + 123, DAY):
                ask = pb.GetSenderStateRequest(sender_id=SENDER, at_unix_ms=at + dt)
                want_state = _report(await alone.GetSenderState(ask))
                assert want_state["used_24h"] > 0
                for stub in (a, b):
                    got_state = await stub.GetSenderState(ask)
                    assert _report(got_state) == want_state, dt
                    assert got_state.store.startswith("redis://")

    uvloop.run(main())


async def _plan(stub: Any, recipients: list[str], start: int, category: Any) -> list[int]:
    res = await stub.PlanCampaign(
        pb.PlanCampaignRequest(
            sender_id=SENDER,
            template_id="t1",
            category=category,
            recipients=recipients,
            start_at_unix_ms=start,
        )
    )
    assert len(res.earliest_at_unix_ms) == len(recipients)
    return list(res.earliest_at_unix_ms)


async def _replay(stub: Any, recipients: list[str], times: list[int], start: int, cat: Any) -> None:
    """AdmitBatch at the planned times: each recipient is admitted exactly then and
    refused a millisecond earlier (where it waited); a 'never' one is refused."""
    requests: list[tuple[str, pb.AdmitRequest]] = []
    prev = start
    for rcpt, t in zip(recipients, times, strict=True):
        if t == 0:
            requests.append(("never", _send(rcpt, prev, cat)))
            continue
        assert t >= prev
        if t > prev:
            requests.append(("early", _send(rcpt, t - 1, cat)))
        requests.append(("admit", _send(rcpt, t, cat)))
        prev = t
    for i in range(0, len(requests), 500):
        part = requests[i : i + 500]
        got = await stub.AdmitBatch(pb.AdmitBatchRequest(requests=[r for _, r in part]))
        for (what, req), res in zip(part, got.responses, strict=True):
            assert (res.decision == pb.DECISION_ADMIT) == (what == "admit"), (what, req, res)


@pytest.mark.parametrize("seed", [1, 2])
def test_plans_over_redis_are_the_embedded_plans_and_admission_follows(
    redis_url: str, seed: int
) -> None:
    """Earlier sends over the last day (some to the list's recipients, from the other
    sidecar), opt-outs and a slow number: the plan one Redis sidecar makes equals
    the embedded store's for the same traffic, consumes nothing in Redis, and
    AdmitBatch at the plan's times on the other sidecar admits each recipient
    exactly then."""
    rng = random.Random(seed)
    pool = _numbers(320)
    mps = rng.choice([2, 5, 30])

    async def main() -> None:
        async with (
            serving(_config(mps=mps)) as alone,
            serving(_config(redis_url, mps=mps)) as a,
            serving(_config(redis_url, mps=mps)) as b,
        ):
            at = T0 - DAY
            for rcpt in rng.sample(pool, 150):
                at += rng.randrange(60_000, 300_000)
                req = _send(rcpt, at, pb.MARKETING)
                assert (await alone.Admit(req)).decision == pb.DECISION_ADMIT
                assert (await b.Admit(req)).decision == pb.DECISION_ADMIT
            for rcpt in rng.sample(pool, 10):
                out = pb.OptOut(recipient=rcpt, sender_id=SENDER, opted_out=True, at_unix_ms=T0)
                for stub in (alone, b):
                    await stub.RecordFeedback(pb.RecordFeedbackRequest(opt_out=out))
            recipients = [rng.choice(pool) for _ in range(150)] + _numbers(150, 1000)
            rng.shuffle(recipients)
            want = await _plan(alone, recipients, T0, pb.MARKETING)
            before = await b.GetSenderState(pb.GetSenderStateRequest(sender_id=SENDER))
            got = await _plan(a, recipients, T0, pb.MARKETING)
            after = await b.GetSenderState(pb.GetSenderStateRequest(sender_id=SENDER))
            assert got == want
            assert 0 in got and max(got) > T0 + HOUR  # opt-outs; slots freed later
            assert _report(after) == _report(before)  # nothing consumed in Redis
            await _replay(b, recipients, got, T0, pb.MARKETING)

    uvloop.run(main())


def test_a_plan_over_redis_reads_pair_rates_throughput_and_windows(redis_url: str) -> None:
    """A pair-rate burst spent a moment before the plan (its TAT and start still
    owed), sends that left the throughput bucket ahead, and a window opened by an
    inbound message, all made at the other sidecar: the plan waits for them as
    the embedded store's does, and AdmitBatch admits each recipient exactly at
    its time."""

    async def main() -> None:
        async with (
            serving(_config(mps=60)) as alone,
            serving(_config(redis_url, mps=60)) as a,
            serving(_config(redis_url, mps=60)) as b,
        ):
            spent, others = _numbers(1)[0], _numbers(20, 100)
            sends = [_send(spent, T0 - 2_000)] * 45 + [_send(r, T0 - 5) for r in others]
            for req in sends:
                assert _answer(await b.Admit(req)) == _answer(await alone.Admit(req))
            inbound = pb.InboundMessage(
                sender_id=SENDER, recipient=_numbers(1, 900)[0], at_unix_ms=T0 - 10
            )
            for stub in (alone, b):
                await stub.RecordFeedback(pb.RecordFeedbackRequest(inbound_message=inbound))
            recipients = [*_numbers(1, 900), *others[:5], *_numbers(30, 700), spent]
            want = await _plan(alone, recipients, T0, pb.UTILITY)
            got = await _plan(a, recipients, T0, pb.UTILITY)
            assert got == want
            assert got[-1] > T0 + 60_000  # the spent pair burst is paid back first
            await _replay(b, recipients, got, T0, pb.UTILITY)

    uvloop.run(main())


async def _plan_in_calls(stub: Any, recipients: list[str], per_call: int) -> list[int]:
    """A plan sent ``per_call`` recipients a call, each carrying the plan on."""
    times: list[int] = []
    token = ""
    for i in range(0, len(recipients), per_call):
        res = await stub.PlanCampaign(
            pb.PlanCampaignRequest(
                sender_id=SENDER,
                template_id="t1",
                category=pb.UTILITY,
                recipients=recipients[i : i + per_call],
                start_at_unix_ms=T0,
                more_follow=i + per_call < len(recipients),
                continuation=token,
            )
        )
        times += res.earliest_at_unix_ms
        token = res.continuation
    return times


async def _sent_over_a_day(*stubs: Any) -> list[str]:
    """200 recipients sent over the last day, 5 minutes apart, at each of ``stubs``
    (the same answers)."""
    earlier = _numbers(200)
    for i, rcpt in enumerate(earlier):
        req = _send(rcpt, T0 - DAY + 300_000 * i)
        answers = {_answer(await stub.Admit(req)) for stub in stubs}
        assert len(answers) == 1, answers
    return earlier


def test_a_list_planned_across_calls_over_redis_is_the_same_plan(redis_url: str) -> None:
    """A list sent in four calls (``more_follow``, ``continuation``) over Redis is
    planned as the whole list in one call is, by the embedded store too, and is
    admitted as planned."""

    async def main() -> None:
        async with (
            serving(_config(mps=20)) as alone,
            serving(_config(redis_url, mps=20)) as a,
            serving(_config(redis_url, mps=20)) as b,
        ):
            earlier = await _sent_over_a_day(alone, b)
            recipients = earlier[::4] + _numbers(120, 600) + earlier[1::7]
            want = await _plan(alone, recipients, T0, pb.UTILITY)
            assert await _plan_in_calls(alone, recipients, 50) == want
            assert await _plan(a, recipients, T0, pb.UTILITY) == want
            got = await _plan_in_calls(a, recipients, 50)
            assert got == want
            assert max(got) > T0 + HOUR  # past the limit: slots freed later
            # no pair entries and no opt-outs: entries reads only the shard hashes
            # that exist, and counts the places of the others' recipients
            client = redis.asyncio.Redis.from_url(redis_url)
            assert await client.delete("tg3:{pf:portfolio-adopt}:p") == 1
            await client.aclose()
            assert await _plan(a, recipients, T0, pb.UTILITY) == want
            await _replay(b, recipients, got, T0, pb.UTILITY)

    uvloop.run(main())


async def _function_calls(client: Any) -> dict[str, int]:
    """Calls of the library since the last CONFIG RESETSTAT, by command."""
    stats = await client.info("commandstats")
    scripts = ("cmdstat_fcall", "cmdstat_eval")
    return {k[8:]: int(v["calls"]) for k, v in stats.items() if k.startswith(scripts)}


def test_a_plan_reads_redis_in_one_read_only_call(redis_url: str) -> None:
    """A plan of 1 000 recipients (spread over most of the scope's shard hashes, some
    counted, some opted out) reads Redis with one call of the library, FCALL_RO of
    a function registered no-writes (``counts`` too), and writes nothing; carried on
    across two calls, one read a call; 2 000 are read in two calls of at most 1 000
    (``redis_reads.READ_PART``). Its times are the embedded store's."""

    async def main() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        async with (
            serving(_config(mps=50)) as alone,
            serving(_config(redis_url, mps=50)) as a,
            serving(_config(redis_url, mps=50)) as b,
        ):
            earlier = await _sent_over_a_day(alone, b)
            out = pb.OptOut(recipient=earlier[7], sender_id=SENDER, opted_out=True, at_unix_ms=T0)
            for stub in (alone, b):
                await stub.RecordFeedback(pb.RecordFeedbackRequest(opt_out=out))
            assert redis_reads.READ_PART == 1_000
            recipients = earlier[::2] + _numbers(900, 5_000)
            want = await _plan(alone, recipients, T0, pb.UTILITY)
            await client.config_resetstat()
            assert await _plan(a, recipients, T0, pb.UTILITY) == want
            assert await _function_calls(client) == {"fcall_ro": 1}
            await client.config_resetstat()
            assert await _plan_in_calls(a, recipients, 500) == want
            assert await _function_calls(client) == {"fcall_ro": 2}
            recipients += _numbers(1_000, 9_000)
            want = await _plan(alone, recipients, T0, pb.UTILITY)
            await client.config_resetstat()
            assert await _plan(a, recipients, T0, pb.UTILITY) == want
            assert await _function_calls(client) == {"fcall_ro": 2}
            libraries = await client.function_list()
            functions = {
                f[1].decode().rsplit("_", 1)[-1]: {x.decode() for x in f[5]}
                for lib in libraries
                for f in lib[5]
            }
            assert functions["entries"] == functions["counts"] == {"no-writes"}
            assert functions["decide"] == set()
        await client.aclose()

    uvloop.run(main())


def test_a_plan_made_during_another_sidecar_s_batch_is_the_plan_before_or_after_it(
    redis_url: str,
) -> None:
    """25 times, a plan at A (the limit binding) and, a moment later (0 to 5 ms, as
    random picks), an AdmitBatch at B of one of the plan's recipients and one
    other: the plan is the one made just before the batch or the one made just
    after it (its read sees the batch whole or not at all), and the two differ."""
    rng = random.Random(3)

    async def batch_after(stub: Any, delay: float, batch: pb.AdmitBatchRequest) -> Any:
        await asyncio.sleep(delay)
        return await stub.AdmitBatch(batch)

    async def main() -> None:
        async with (
            serving(_config(redis_url, mps=50)) as a,
            serving(_config(redis_url, mps=50)) as b,
        ):
            earlier = await _sent_over_a_day(b)
            recipients = earlier[::2] + _numbers(1_000, 3_000)
            before = await _plan(a, recipients, T0, pb.UTILITY)
            for k in range(25):
                batch = pb.AdmitBatchRequest(
                    requests=[
                        _send(r, T0 - 100_000 + 1_000 * k + 25 * j)
                        for j, r in enumerate([recipients[-1 - k], *_numbers(1, 8_000 + k)])
                    ]
                )
                during, admitted = await asyncio.gather(
                    _plan(a, recipients, T0, pb.UTILITY),
                    batch_after(b, rng.uniform(0, 0.005), batch),
                )
                assert all(r.decision == pb.DECISION_ADMIT for r in admitted.responses)
                after = await _plan(a, recipients, T0, pb.UTILITY)
                assert after != before
                assert during in (before, after), k
                before = after

    uvloop.run(main())


def test_a_plan_s_read_through_scripts_is_the_functions_read(redis_url: str) -> None:
    """Where Functions are refused, a plan reads the same in one EVALSHA_RO: counts,
    the number's own ring in warm-up, scope, marketing, warm-up and pair entries and
    opt-outs (40 listed, 30 sent to, one opted out)."""

    async def main() -> None:
        store = await redis_counting.connect(parse_store(redis_url), timeout=10.0)
        scope = redis_counting.ScopeSpec(f"scripts-{random.randrange(1 << 30)}")
        num = redis_counting.NumberSpec("n1", tput_interval_us=1_000, pair_burst=3, warm_cap=50)
        listed = [14155550000 + i for i in range(40)]
        flags = F_TEMPLATE | F_MARKETING
        rows = [redis_counting.Row(num, r, flags, 100, T0 + 10 * i) for i, r in enumerate(listed)]
        reads = []
        try:
            decided = await store.decide(scope, rows[:30])
            assert [d.decision for d in decided] == [ADMIT] * 30
            await store.set_opt_out(scope, listed[35], True)
            for functions in (True, False):
                store.functions = functions
                assert await store.load() == ("functions" if functions else "scripts")
                counts, got = await redis_reads.plan_reads(store, scope, T0 + 500, num, listed)
                assert counts.warm is not None
                reads.append(
                    (counts.now, counts.used_24h, counts.buckets(), counts.warm.total, got)
                )
        finally:
            await store.aclose()
        assert reads[0] == reads[1]
        _, used, _, warm, entries = reads[0]
        assert used == warm == len(entries.last) == len(entries.warm) == 30
        assert len(entries.marketing) == len(entries.number) == 30
        assert entries.opted_out == [listed[35]]

    uvloop.run(main())


async def _next(stream: Any, timeout: float = 10.0) -> pb.SenderState:
    state: pb.SenderState = await asyncio.wait_for(stream.read(), timeout)
    return state


def test_a_watch_sees_another_sidecar_s_admits_within_its_poll(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A watcher on sidecar A, admits made on B only: crossing 80 % and then 90 % are
    told within A's poll of Redis, with Redis's counts in the state."""
    monkeypatch.setattr(shared_watch, "POLL_S", 0.2)

    async def main() -> None:
        async with serving(_config(redis_url)) as a, serving(_config(redis_url)) as b:
            stream = a.WatchSenderState(pb.WatchSenderStateRequest(sender_id=SENDER))
            first = await _next(stream)
            assert list(first.changes) == ["STATE"] and first.used_24h == 0
            for i in range(200):  # 80 % of 250
                await b.Admit(_send(f"1777{i:07d}", T0 + 20 * i))
            seen = await _next(stream)
            assert list(seen.changes) == ["USAGE_80"] and seen.used_24h >= 200
            for i in range(200, 225):  # 90 %
                await b.Admit(_send(f"1777{i:07d}", T0 + 20 * i))
            seen = await _next(stream)
            assert list(seen.changes) == ["USAGE_90"] and seen.used_24h >= 225
            stream.cancel()

    uvloop.run(main())


def test_a_watch_sees_another_sidecar_s_admits_at_its_next_decision(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no poll due (an hour's), B's admits past 80 % are not told until A decides
    anything: A's next admit reads Redis and the state counts B's admits too."""
    monkeypatch.setattr(shared_watch, "POLL_S", 3600.0)

    async def main() -> None:
        async with serving(_config(redis_url)) as a, serving(_config(redis_url)) as b:
            stream = a.WatchSenderState(pb.WatchSenderStateRequest(sender_id=SENDER))
            assert list((await _next(stream)).changes) == ["STATE"]
            for i in range(210):
                await b.Admit(_send(f"1888{i:07d}", T0 + 20 * i))
            reading = asyncio.ensure_future(stream.read())
            done, _ = await asyncio.wait({reading}, timeout=0.5)
            assert not done  # nothing told yet
            await a.Admit(_send("18889999999", T0 + 20 * 211))
            seen = await asyncio.wait_for(reading, 10.0)
            assert list(seen.changes) == ["USAGE_80"] and seen.used_24h == 211
            stream.cancel()

    uvloop.run(main())


def test_a_restriction_s_end_is_told_within_a_poll_with_no_traffic(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the server clock, a watcher of a sender restricted for a second hears the
    restriction end within a poll of its end, with nothing sent meanwhile (the
    poll applies what time changed, as the next decision would)."""
    monkeypatch.setattr(shared_watch, "POLL_S", 0.2)

    async def main() -> None:
        async with serving(_config(redis_url, clock="server")) as a:
            now = time.time_ns() // 1_000_000
            until = now + 1000
            update = pb.SenderUpdate(
                sender_id=SENDER,
                at_unix_ms=now,
                status=pb.RESTRICTED,
                restricted_until_unix_ms=until,
            )
            await a.RecordFeedback(pb.RecordFeedbackRequest(sender_update=update))
            stream = a.WatchSenderState(pb.WatchSenderStateRequest(sender_id=SENDER))
            first = await _next(stream)
            assert (first.status, first.restricted_until_unix_ms) == (pb.RESTRICTED, until)
            seen = await _next(stream)
            told = time.time_ns() // 1_000_000
            assert {"STATUS", "RESTRICTION"} <= set(seen.changes)
            assert (seen.status, seen.restricted_until_unix_ms) == (pb.CONNECTED, 0)
            assert until <= seen.at_unix_ms <= told
            stream.cancel()

    uvloop.run(main())


def test_counts_and_plans_on_a_cluster(redis_cluster: str) -> None:
    """On a three-master Cluster (every key of a scope in one slot): the report's
    counts and a plan are the embedded store's for the same traffic, and the plan
    is admitted as made."""

    async def main() -> None:
        scope = f"portfolio-{random.randrange(1 << 30)}"  # fresh on a shared Cluster
        async with (
            serving(_config(portfolio=scope)) as alone,
            serving(_config(redis_cluster, portfolio=scope)) as a,
        ):
            sent = _numbers(40)
            for i, rcpt in enumerate(sent):
                req = _send(rcpt, T0 - HOUR + 60_000 * i)
                assert _answer(await a.Admit(req)) == _answer(await alone.Admit(req))
            ask = pb.GetSenderStateRequest(sender_id=SENDER, at_unix_ms=T0)
            want_state = _report(await alone.GetSenderState(ask))
            assert _report(await a.GetSenderState(ask)) == want_state
            recipients = sent[::3] + _numbers(30, 500)
            want = await _plan(alone, recipients, T0, pb.UTILITY)
            got = await _plan(a, recipients, T0, pb.UTILITY)
            assert got == want
            await _replay(a, recipients, got, T0, pb.UTILITY)

    uvloop.run(main())


def test_tiergate_state_at_one_sidecar_shows_the_other_s_admits(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``tiergate state`` asks sidecar A; the admits were all made at B: the table's
    used, forecast and store rows are Redis's."""

    async def main() -> None:
        a = Sidecar(_config(redis_url))
        await a.start()
        try:
            async with serving(_config(redis_url)) as b:
                for i in range(30):
                    await b.Admit(_send(f"1999{i:07d}", T0 - HOUR + 60_000 * i))
            args = ["state", SENDER, "--target", f"127.0.0.1:{a.port}", "--at-unix-ms", str(T0)]
            assert await asyncio.to_thread(cli.main, args) == 0
        finally:
            await a.stop(0.5)

    uvloop.run(main())
    table = capsys.readouterr().out
    rows = {line[:17].strip(): line[18:].strip() for line in table.splitlines()}  # cli.format_state
    assert rows["used (24 h)"] == rows["counted, last h"] == "30"
    # sent 31 to 60 minutes ago: every slot frees 23 to 24 hours from now
    assert rows["freeing, next 24h"].split() == ["0"] * 23 + ["30"]
    assert rows["store"].startswith("redis://127.0.0.1:")


def test_a_plan_after_dry_runs_only(redis_url: str) -> None:
    """Dry runs leave the number's throughput TAT in Redis as Lua wrote it (no send
    yet: its floor, in exponent form); a plan reads it and matches the embedded
    store's."""

    async def main() -> None:
        async with serving(_config()) as alone, serving(_config(redis_url)) as a:
            dry = _send(_numbers(1)[0], T0 - 1_000)
            dry.dry_run = True
            for stub in (alone, a):
                assert (await stub.Admit(dry)).decision == pb.DECISION_ADMIT
            recipients = _numbers(40)
            want = await _plan(alone, recipients, T0, pb.UTILITY)
            assert await _plan(a, recipients, T0, pb.UTILITY) == want

    uvloop.run(main())
