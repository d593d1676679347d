"""The tier machine's upgrade by usage on the shared store (``store/shared_policy.py``):
admits split between two sidecars reach a scope's upgrade threshold in Redis's
7-day counts; the crossing is dated to the admit that reached it and recorded
once, for every sidecar, through the shared log: both raise the tier at the same
due time (an ``apply`` profile) or report the same prediction (``predict``), and
a sidecar started later from the policy snapshot holds the same; admits made
while Redis was out of reach count once they are reconciled."""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

import pytest
import uvloop

from tiergate.engine import NEVER
from tiergate.policy.events import Quality, SenderStatus, SenderUpdate
from tiergate.store import shared_policy
from tiergate.v1 import admission_pb2 as pb

from .test_redis_adopt import _answer, _report
from .test_redis_policy import SENDER, T0, Serving, _config, _request, serving
from .test_redis_serve import CutProxy

pytestmark = pytest.mark.redis

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
#: Request times this far apart: within every profile's throughput.
STEP_MS = 50


def _sender(
    tier: str, sid: str = SENDER, portfolio: str = "portfolio-tiers", verified: bool = True
) -> SenderUpdate:
    return SenderUpdate(
        sender_id=sid,
        portfolio_id=portfolio,
        waba_id="waba-1",
        verified=verified,
        tier=tier,
        quality=Quality.GREEN,
        status=SenderStatus.CONNECTED,
    )


async def _crossings(s: Serving) -> list[dict[str, Any]]:
    """The crossing entries of the shared log."""
    assert s.sidecar.shared is not None
    client = s.sidecar.shared.counting.client
    entries = await client.xrange(shared_policy.STREAM_KEY, "-", "+")
    records = [json.loads(fields[b"e"]) for _, fields in entries]
    return [r for r in records if r["k"] == "crossing"]


def _scope(s: Serving, sid: str = SENDER) -> Any:
    assert s.sidecar.service is not None
    return s.sidecar.service.state.senders[sid].scope


async def _admit_alternately(
    a: Serving, b: Serving, first: int, n: int, at: int, sid: str = SENDER
) -> list[Any]:
    """``n`` new recipients from ``first`` on, one request each, ``STEP_MS`` apart
    from ``at``, sent to A and B in turn."""
    out = []
    for k in range(n):
        req = _request(first + k, at + k * STEP_MS, sender_id=sid)
        out.append(await (a, b)[k % 2].stub.Admit(req))
    return out


@pytest.mark.usefixtures("patient")
def test_two_sidecars_raise_the_tier_at_the_same_due_time(redis_url: str) -> None:
    """meta-2024 (``apply``, 24 h after the threshold): 125 unique recipients (half
    of TIER_250) admitted through A and B in turn; the 125th dates the crossing, both
    hold it, and both raise the limit to 1 000 exactly 24 h later."""
    config = _config(redis_url, profile="meta-2024", senders=(_sender("TIER_250"),))

    async def main() -> None:
        async with serving(config) as a, serving(config) as b:
            got = await _admit_alternately(a, b, 0, 125, T0)
            assert all(r.decision == pb.DECISION_ADMIT for r in got)
            crossed = T0 + 124 * STEP_MS  # the 125th recipient's admit
            due = crossed + DAY_MS
            for s in (a, b):
                state: Any = await s.state(crossed + 1_000)
                assert state.upgrade.eligible
                assert state.upgrade.predicted_at_unix_ms == due
                assert state.upgrade.next_tier == "TIER_1K"
                assert (_scope(s).crossed_at, _scope(s).due_at) == (crossed, due)
            assert a.policy_state() == b.policy_state()
            assert [c["now"] for c in await _crossings(a)] == [crossed]

            # the limit of 250 filled shortly before the due time: refused at both
            fill = await _admit_alternately(a, b, 1_000, 125, due - 600_000)
            assert all(r.decision == pb.DECISION_ADMIT and r.limit == 250 for r in fill)
            for k, s in enumerate((a, b)):
                late: Any = await s.stub.Admit(_request(2_000 + k, due - 1))
                assert late.reason == pb.MESSAGING_LIMIT, late
            # at the due time both admit past it, under the next tier's limit
            for k, s in enumerate((a, b)):
                raised: Any = await s.stub.Admit(_request(3_000 + k, due + k))
                assert raised.decision == pb.DECISION_ADMIT, raised
                assert raised.limit == 1_000
                assert (await s.state(due + 10)).tier == "TIER_1K"
            assert a.policy_state() == b.policy_state()

    uvloop.run(main())


def _batch(first: int, n: int, at: int) -> pb.AdmitBatchRequest:
    return pb.AdmitBatchRequest(requests=[_request(first + k, at + k * STEP_MS) for k in range(n)])


@pytest.mark.usefixtures("patient")
def test_two_sidecars_predict_the_same_upgrade_and_a_restart_sees_it(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """meta-2025 (``predict``, portfolio scope): 1 000 unique recipients (half of
    TIER_2K) in batches through A and B in turn; both report the crossing's time
    plus 6 h, keep the limit (Meta raises it), and a third sidecar started from the
    policy snapshot reports the same."""
    monkeypatch.setattr(shared_policy, "SNAPSHOT_EVERY", 2)
    config = _config(redis_url, profile="meta-2025", senders=(_sender("TIER_2K"),))

    async def main() -> None:
        async with serving(config) as a, serving(config) as b:
            for k in range(10):  # 100 a batch: the 1 000th is the last batch's last
                got: Any = await (a, b)[k % 2].stub.AdmitBatch(
                    _batch(100 * k, 100, T0 + 100 * k * STEP_MS)
                )
                assert all(r.decision == pb.DECISION_ADMIT for r in got.responses)
            crossed = T0 + 999 * STEP_MS
            predicted = crossed + 6 * HOUR_MS
            at = crossed + 1_000
            sa, sb = await a.state(at), await b.state(at)
            for state in (sa, sb):
                assert state.upgrade.eligible and state.unique_7d == 1_000
                assert state.upgrade.predicted_at_unix_ms == predicted
                assert state.limit == 2_000
            assert a.policy_state() == b.policy_state()
            assert [c["now"] for c in await _crossings(a)] == [crossed]
            # more admits and reports: nothing more recorded
            await b.stub.AdmitBatch(_batch(5_000, 10, at))
            await a.state(at + 1_000)
            assert len(await _crossings(a)) == 1
            # after the due prediction the limit stays until Meta raises it
            assert (await a.state(predicted + HOUR_MS)).limit == 2_000

            await a.feedback(sender_update=pb.SenderUpdate(sender_id=SENDER, at_unix_ms=at))
            await a.feedback(sender_update=pb.SenderUpdate(sender_id=SENDER, at_unix_ms=at))
            await asyncio.sleep(0.2)  # the snapshot is written in the background
            assert await _crossings(a) == []  # trimmed: it is in the snapshot only
            async with serving(config) as c:
                assert c.sidecar.policy is not None and c.sidecar.policy.loaded == 1
                sc = await c.state(at + 2_000)
                assert sc.upgrade.predicted_at_unix_ms == predicted
                await b.state(at + 2_000)
                assert c.policy_state() == a.policy_state() == b.policy_state()

    uvloop.run(main())


@pytest.mark.usefixtures("patient")
def test_a_second_report_of_a_crossing_changes_nothing(redis_url: str) -> None:
    """Both sidecars see the threshold met before either applied the other's entry:
    the first entry in the log is the crossing at both, the second a no-op."""
    config = _config(redis_url, profile="meta-2024", senders=(_sender("TIER_250"),))

    async def main() -> None:
        async with serving(config) as a, serving(config) as b:
            await _admit_alternately(a, b, 0, 124, T0)
            last = [
                a.stub.Admit(_request(500, T0 + 200 * STEP_MS)),
                b.stub.Admit(_request(501, T0 + 201 * STEP_MS)),
            ]
            await asyncio.gather(*last)
            sa, sb = await a.state(T0 + DAY_MS // 2), await b.state(T0 + DAY_MS // 2)
            assert sa.upgrade.predicted_at_unix_ms == sb.upgrade.predicted_at_unix_ms > 0
            assert a.policy_state() == b.policy_state()
            entries = await _crossings(a)
            assert 1 <= len(entries) <= 2
            first = entries[0]["now"]
            assert _scope(a).crossed_at == _scope(b).crossed_at == first
            assert first in (T0 + 200 * STEP_MS, T0 + 201 * STEP_MS)
            # a late report of the same tier's crossing, at another time: a no-op
            assert b.sidecar.policy is not None
            late = dict(entries[0], now=first + 5)
            result = await b.sidecar.policy._append_record(late)
            assert not result.applied
            await a.state(T0 + DAY_MS // 2)
            assert _scope(a).crossed_at == _scope(b).crossed_at == first
            assert a.policy_state() == b.policy_state()

    uvloop.run(main())


@pytest.mark.usefixtures("patient")
def test_two_sidecars_on_a_cluster_record_one_crossing(redis_cluster: str) -> None:
    sid = f"1{time.time_ns() % 10**14:014d}"
    sender = _sender("TIER_250", sid, f"pf-{sid}")
    config = _config(redis_cluster, profile="meta-2024", senders=(sender,))

    async def main() -> None:
        async with serving(config) as a, serving(config) as b:
            await _admit_alternately(a, b, 0, 125, T0, sid)
            crossed = T0 + 124 * STEP_MS
            for s in (a, b):
                state: Any = await s.state(crossed + 1_000, sid)
                assert state.upgrade.predicted_at_unix_ms == crossed + DAY_MS
            assert a.policy_state() == b.policy_state()
            late: Any = await b.stub.Admit(_request(9_000, crossed + DAY_MS, sender_id=sid))
            assert late.decision == pb.DECISION_ADMIT and late.limit == 1_000
            assert (await a.state(crossed + DAY_MS + 1, sid)).limit == 1_000

    uvloop.run(main())


def test_admits_kept_while_redis_was_gone_cross_once_reconciled(redis_url: str) -> None:
    """A (``open``) cut off from Redis admits 125 recipients on its own: no crossing
    (its own engine's counts date none). Reconnected, its admits are counted in
    Redis, and B's next admit finds the threshold met: both hold that crossing."""
    target = int(redis_url.rsplit(":", 1)[1])
    sender = (_sender("TIER_250"),)

    async def main() -> None:
        proxy = CutProxy(target)
        await proxy.start()
        url = f"redis://127.0.0.1:{proxy.port}"
        via = _config(url, profile="meta-2024", senders=sender, store_failure="open")
        direct = _config(redis_url, profile="meta-2024", senders=sender)
        try:
            async with serving(via) as a, serving(direct) as b:
                proxy.sever()
                got: Any = await a.stub.AdmitBatch(_batch(0, 125, T0), timeout=5)
                assert all(r.decision == pb.DECISION_ADMIT for r in got.responses)
                assert _scope(a).crossed_at == _scope(b).crossed_at == NEVER
                proxy.cut = False
                st = a.sidecar.service.state if a.sidecar.service is not None else None
                assert st is not None
                deadline = time.monotonic() + 10
                while st.unreconciled:  # A sends them on its own within a second
                    assert time.monotonic() < deadline, "never reconciled"
                    await asyncio.sleep(0.05)
                at = T0 + 1_000 * STEP_MS
                res: Any = await b.stub.Admit(_request(500, at))
                assert res.decision == pb.DECISION_ADMIT and res.used == 126
                for s in (a, b):
                    state: Any = await s.state(at + 1_000)
                    assert state.upgrade.predicted_at_unix_ms == at + DAY_MS
                assert a.policy_state() == b.policy_state()
        finally:
            await proxy.stop()

    uvloop.run(main())


@pytest.mark.usefixtures("patient")
def test_a_threshold_met_while_held_back_crosses_at_the_next_report(redis_url: str) -> None:
    """Red quality holds the upgrade back while 125 recipients are admitted; once
    Green again, the first report (at A) finds Redis's counts at the threshold and
    records the crossing at its time, for both."""
    config = _config(redis_url, profile="meta-2024", senders=(_sender("TIER_250"),))

    async def main() -> None:
        async with serving(config) as a, serving(config) as b:
            red = pb.SenderUpdate(sender_id=SENDER, quality=pb.RED, at_unix_ms=T0)
            assert (await a.feedback(sender_update=red)).applied
            await _admit_alternately(a, b, 0, 125, T0 + 1)
            held: Any = await b.state(T0 + 9_000)
            assert not held.upgrade.eligible and held.upgrade.predicted_at_unix_ms == 0
            green = T0 + 10_000
            update = pb.SenderUpdate(sender_id=SENDER, quality=pb.GREEN, at_unix_ms=green)
            assert (await b.feedback(sender_update=update)).applied
            reported = green + 500
            assert (await a.state(reported)).upgrade.predicted_at_unix_ms == reported + DAY_MS
            assert (await b.state(reported + 100)).upgrade.predicted_at_unix_ms == (
                reported + DAY_MS
            )
            assert a.policy_state() == b.policy_state()
            assert [c["now"] for c in await _crossings(a)] == [reported]

    uvloop.run(main())


def _tier_machine(s: Serving) -> tuple[str, int, int, int]:
    sc = _scope(s)
    return sc.tier, sc.tier_since, sc.crossed_at, sc.due_at


@pytest.mark.usefixtures("patient")
def test_crossings_over_redis_are_the_embedded_stores(redis_url: str) -> None:
    """The same traffic (unary Admits and batches, repeated recipients, refusals at
    the limit) to an embedded sidecar and, in turn, to two sidecars on one Redis
    over three days: the same answers, crossing dated to the same admit, the tier
    raised at the same time, and the same upgrade reports."""
    sender = (_sender("TIER_250"),)
    embedded = _config("embedded", profile="meta-2024", senders=sender)
    shared = _config(redis_url, profile="meta-2024", senders=sender)

    async def main() -> None:
        async with serving(embedded) as alone, serving(shared) as a, serving(shared) as b:
            rng = random.Random(24)
            at, crossed = T0, set()
            for i in range(200):
                at += rng.randrange(600_000, 1_800_000)
                reqs = [
                    _request(rng.randrange(300), at + k * 1_000) for k in range(rng.randint(1, 8))
                ]
                s = (a, b)[i % 2]
                assert s.sidecar.policy is not None
                await s.sidecar.policy.catch_up()  # (what the other one appended)
                if len(reqs) == 1:
                    want, got = [await alone.stub.Admit(reqs[0])], [await s.stub.Admit(reqs[0])]
                else:
                    batch = pb.AdmitBatchRequest(requests=reqs)
                    want = list((await alone.stub.AdmitBatch(batch)).responses)
                    got = list((await s.stub.AdmitBatch(batch)).responses)
                assert [_answer(r) for r in got] == [_answer(r) for r in want], i
                assert [r.limit for r in got] == [r.limit for r in want], i
                assert _tier_machine(s) == _tier_machine(alone), i
                crossed.add(_scope(alone).crossed_at)
            assert _scope(alone).tier == "TIER_1K" and len(crossed - {NEVER}) == 1
            for dt in (0, HOUR_MS, DAY_MS):
                ask = at + dt
                want_state = _report(await alone.state(ask))
                for s in (a, b):
                    assert _report(await s.state(ask)) == want_state, dt
            assert _tier_machine(a) == _tier_machine(b) == _tier_machine(alone)

    uvloop.run(main())
