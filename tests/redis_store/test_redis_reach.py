"""Meta's volume scaling path on the shared store: a scope in the profile's path
tier keeps in Redis the recipients counted for it (``tg3:{pf:S}:v``, written by
``decide``), so every sidecar reports the portfolio's progress, the one an
embedded-store sidecar reports for the same traffic; the key is pruned to the
path's window and bounded, a scope off the path has none, admits kept by an
``open`` sidecar count once reconciled, and on the three-master Cluster the key
lives in its scope's slot."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import pytest
import uvloop

from tiergate.store.redis_layout import ScopeSpec
from tiergate.v1 import admission_pb2 as pb

from .test_redis_adopt import _report
from .test_redis_policy import SENDER, T0, Serving, _config, _request, serving
from .test_redis_serve import CutProxy, _failed
from .test_redis_tiers import _sender as tier_sender

pytestmark = pytest.mark.redis

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
#: The path of the tests' profile: 10 unique users in 1 day (the reach keeps 40).
USERS, CAP = 10, 40


def _profile(tmp_path: Path) -> str:
    path = tmp_path / "reach.toml"
    path.write_text(
        'extends = "meta-2025"\nname = "reach"\n[upgrade.scaling_path]\n'
        f'from_tier = "TIER_250"\nunique_users = {USERS}\ndays = 1\n'
        'low_template_qualities = ["RED"]\n',
        encoding="utf-8",
    )
    return str(path)


def _sender(sid: str = SENDER, portfolio: str = "portfolio-reach", tier: str = "TIER_250") -> Any:
    """A number of a business not verified: on the volume path in the path tier."""
    return tier_sender(tier, sid, portfolio, verified=False)


def _reach_key(s: Serving, sid: str = SENDER) -> str:
    assert s.sidecar.service is not None
    return f"{ScopeSpec(s.sidecar.service.state.senders[sid].scope.key).tag}:v"


def _client(s: Serving) -> Any:
    assert s.sidecar.shared is not None
    return s.sidecar.shared.counting.client


async def _progress(s: Serving, at: int, sid: str = SENDER) -> tuple[str, float, bool]:
    up = (await s.state(at, sid)).upgrade
    return up.path, up.progress, up.eligible


@pytest.mark.usefixtures("patient")
def test_two_sidecars_report_the_portfolios_progress(redis_url: str, tmp_path: Path) -> None:
    """The same traffic to an embedded sidecar and, in turn, to two sidecars on one
    Redis, over four days (30 new recipients a day, some sent again, a release):
    both report the embedded one's progress on the volume path (each of them alone
    saw only half); the reach is pruned to the window and holds at most 4 × the
    path's users, expiring a window after its last write."""
    profile = _profile(tmp_path)
    embedded = _config("embedded", profile=profile, senders=(_sender(),))
    shared = _config(redis_url, profile=profile, senders=(_sender(),))

    async def main() -> None:
        async with serving(embedded) as alone, serving(shared) as a, serving(shared) as b:
            key = _reach_key(a)
            sent = 0
            for day in range(4):
                at = T0 + day * (DAY_MS + HOUR_MS)
                for i in range((6, 30, 30, 50)[day]):
                    req = _request(day * 30 + i, at + i * 1_000)
                    want, got = await alone.stub.Admit(req), await (a, b)[sent % 2].stub.Admit(req)
                    assert got.decision == want.decision == pb.DECISION_ADMIT
                    sent += 1
                    if day == 0 and i == 5:  # (6 so far: both short of the path's 10)
                        await _agree(alone, a, b, at + 5_001, (6 / USERS, False))
                        # the last one's send failed: its slot, and its reach, given back
                        told = _failed(i, got.ticket, at + 5_002)
                        await b.stub.RecordFeedback(pb.RecordFeedbackRequest(send_result=told))
                        mine = _failed(i, want.ticket, at + 5_002)
                        await alone.stub.RecordFeedback(pb.RecordFeedbackRequest(send_result=mine))
                        await _agree(alone, a, b, at + 5_003, (5 / USERS, False))
                        assert await _client(a).zcard(key) == 5
                # a repeat within 24 h takes no slot, counts nothing new
                repeat = _request(day * 30, at + 60_000)
                await alone.stub.Admit(repeat)
                await b.stub.Admit(repeat)
                await _agree(alone, a, b, at + HOUR_MS, (1.0 if day else 0.5, bool(day)))
                assert await _client(a).zcard(key) <= CAP
                assert 0 < await _client(a).pttl(key) <= DAY_MS
            # the last day's newest 40: the days before pruned, then the oldest past the bound
            assert await _client(a).zcard(key) == CAP
            # a window after the last day, nobody is left within it
            await _agree(alone, a, b, T0 + 3 * (DAY_MS + HOUR_MS) + DAY_MS + HOUR_MS, (0.0, False))

    uvloop.run(main())


async def _agree(alone: Serving, a: Serving, b: Serving, at: int, want: tuple[float, bool]) -> None:
    """A and B report the embedded sidecar's state at ``at``, and ``want`` (progress,
    eligible) on the volume path."""
    expected = _report(await alone.state(at))
    assert (await _progress(alone, at))[1:] == want
    for s in (a, b):
        assert await _progress(s, at) == ("MESSAGING_VOLUME", *want)
        assert _report(await s.state(at)) == expected


@pytest.mark.usefixtures("patient")
def test_a_scope_off_the_path_keeps_no_reach(redis_url: str, tmp_path: Path) -> None:
    """A portfolio above the path tier decides without a reach key; moved down into
    the path tier it counts from then on, writes nothing while above it again, and
    back in the path tier counts only from its return (the engine's reach is
    emptied when the scope leaves the path)."""
    profile = _profile(tmp_path)
    config = _config(redis_url, profile=profile, senders=(_sender(tier="TIER_2K"),))

    async def main() -> None:
        async with serving(config) as a, serving(config) as b:
            key = _reach_key(a)
            await _admits(a, 0, 20, T0)
            assert await _client(a).exists(key) == 0
            assert (await a.state(T0 + 1_000)).upgrade.path == "AUTOMATIC_SCALING"
            await _tier(a, b, "TIER_250", T0 + 2_000)
            await _admits(b, 100, 3, T0 + 3_000)
            assert await _client(a).zcard(key) == 3
            await _tier(b, a, "TIER_2K", T0 + 5_000)
            await _admits(a, 200, 2, T0 + 6_000)
            assert await _client(a).zcard(key) == 3  # nothing written off the path
            await _tier(a, b, "TIER_250", T0 + 8_000)
            await _admits(b, 300, 4, T0 + 9_000)
            assert await _client(a).zcard(key) == 7
            for s in (a, b):
                assert await _progress(s, T0 + 10_000) == ("MESSAGING_VOLUME", 4 / USERS, False)

    uvloop.run(main())


async def _admits(s: Serving, first: int, n: int, at: int) -> None:
    """``n`` new recipients from ``first`` on in one AdmitBatch at ``s``, all admitted."""
    reqs = [_request(first + i, at + i) for i in range(n)]
    got: Any = await s.stub.AdmitBatch(pb.AdmitBatchRequest(requests=reqs))
    assert all(r.decision == pb.DECISION_ADMIT for r in got.responses)


async def _tier(told: Serving, other: Serving, tier: str, at: int) -> None:
    """``tier`` told to ``told``; ``other`` reads the log."""
    update = pb.SenderUpdate(sender_id=SENDER, tier=tier, at_unix_ms=at)
    assert (await told.feedback(sender_update=update)).applied
    assert other.sidecar.policy is not None
    await other.sidecar.policy.catch_up()


def test_admits_kept_while_redis_was_gone_count_once_reconciled(
    redis_url: str, tmp_path: Path
) -> None:
    """A (``open``) cut off from Redis admits 8 recipients on its own; reconciled,
    they are in the reach once, and B (which never saw them) reports them."""
    target = int(redis_url.rsplit(":", 1)[1])
    profile = _profile(tmp_path)

    async def main() -> None:
        proxy = CutProxy(target)
        await proxy.start()
        url = f"redis://127.0.0.1:{proxy.port}"
        via = _config(url, profile=profile, senders=(_sender(),), store_failure="open")
        direct = _config(redis_url, profile=profile, senders=(_sender(),))
        try:
            async with serving(via) as a, serving(direct) as b:
                await b.stub.Admit(_request(99, T0))
                proxy.sever()
                batch = pb.AdmitBatchRequest(requests=[_request(i, T0 + i) for i in range(8)])
                got: Any = await a.stub.AdmitBatch(batch, timeout=5)
                assert all(r.decision == pb.DECISION_ADMIT for r in got.responses)
                proxy.cut = False
                assert a.sidecar.service is not None
                st = a.sidecar.service.state
                deadline = time.monotonic() + 10
                while st.unreconciled:  # A sends them on its own within a second
                    assert time.monotonic() < deadline, "never reconciled"
                    await asyncio.sleep(0.05)
                assert await _client(b).zcard(_reach_key(b)) == 9
                assert await _progress(b, T0 + 1_000) == ("MESSAGING_VOLUME", 9 / USERS, False)
        finally:
            await proxy.stop()

    uvloop.run(main())


@pytest.mark.usefixtures("patient")
def test_two_sidecars_on_a_cluster_report_one_progress(redis_cluster: str, tmp_path: Path) -> None:
    """On the three-master Cluster: batches split between two sidecars, both report
    the portfolio's progress; past its bound the reach is pruned to the window; the
    key is in its scope's slot; a portfolio above the path tier writes none."""
    sid = f"1{time.time_ns() % 10**14:014d}"
    off = str(int(sid) + 1)
    senders = (_sender(sid, f"pf-{sid}"), _sender(off, f"pf-{off}", "TIER_2K"))
    config = _config(redis_cluster, profile=_profile(tmp_path), senders=senders)

    async def main() -> None:
        async with serving(config) as a, serving(config) as b:
            client, key = _client(a), _reach_key(a, sid)

            async def batch(s: Serving, first: int, n: int, at: int, who: str = sid) -> None:
                reqs = [_request(first + j, at + j, sender_id=who) for j in range(n)]
                got: Any = await s.stub.AdmitBatch(pb.AdmitBatchRequest(requests=reqs))
                assert all(r.decision == pb.DECISION_ADMIT for r in got.responses)

            for k in range(3):  # 30 recipients, in turn
                await batch((a, b)[k % 2], 10 * k, 10, T0 + 100 * k)
            for s in (a, b):
                assert await _progress(s, T0 + 1_000, sid) == ("MESSAGING_VOLUME", 1.0, True)
            assert await client.zcard(key) == 30
            day = T0 + DAY_MS + HOUR_MS  # 12 more: 42, past 40, the first day's dropped
            await batch(b, 100, 6, day)
            await batch(a, 200, 6, day + 100)
            assert await client.zcard(key) == 12
            later = day + DAY_MS - 1_000
            for s in (a, b):
                assert await _progress(s, later, sid) == ("MESSAGING_VOLUME", 1.0, True)
                assert await _progress(s, later + DAY_MS, sid) == ("MESSAGING_VOLUME", 0.0, False)
            meta = key[: -len(":v")] + ":m"
            assert await client.cluster_keyslot(key) == await client.cluster_keyslot(meta)
            await batch(a, 0, 5, T0, off)
            assert await client.exists(_reach_key(a, off)) == 0

    uvloop.run(main())


@pytest.mark.usefixtures("patient")
def test_random_traffic_reports_the_embedded_stores_progress(
    redis_url: str, tmp_path: Path
) -> None:
    """Random traffic over about three weeks (batches of one or two from a pool of 80 recipients,
    about the path's 10 users a day; repeats inside and past 24 h; FAILED sends
    released) to an embedded sidecar and, in turn, to two sidecars on one Redis: the
    same answers, and after every step the same report and path progress."""
    profile = _profile(tmp_path)
    embedded = _config("embedded", profile=profile, senders=(_sender(),))
    shared = _config(redis_url, profile=profile, senders=(_sender(),))

    async def main() -> None:
        async with serving(embedded) as alone, serving(shared) as a, serving(shared) as b:
            rng = random.Random(2025)
            at, admitted = T0, []
            for step in range(150):
                at += rng.randrange(HOUR_MS, 6 * HOUR_MS)
                s = (a, b)[step % 2]
                if admitted and rng.random() < 0.15:  # a recent admit's send failed
                    i, mine, theirs = admitted.pop(rng.randrange(len(admitted)))
                    for to, ticket in ((alone, mine), (s, theirs)):
                        told = pb.RecordFeedbackRequest(send_result=_failed(i, ticket, at))
                        await to.stub.RecordFeedback(told)
                else:
                    picks = [rng.randrange(80) for _ in range(rng.randint(1, 2))]
                    reqs = [_request(i, at + k * 1_000) for k, i in enumerate(picks)]
                    batch = pb.AdmitBatchRequest(requests=reqs)
                    want = list((await alone.stub.AdmitBatch(batch)).responses)
                    got = list((await s.stub.AdmitBatch(batch)).responses)
                    assert [r.decision for r in got] == [r.decision for r in want], step
                    admitted += [
                        (i, w.ticket, g.ticket)
                        for i, w, g in zip(picks, want, got, strict=True)
                        if w.counted
                    ][-3:]
                    admitted = admitted[-10:]
                ask = at + 10_000
                expected = _report(await alone.state(ask))
                for other in (a, b):
                    assert other.sidecar.policy is not None
                    await other.sidecar.policy.catch_up()
                    assert _report(await other.state(ask)) == expected, step
            assert await _client(a).zcard(_reach_key(a)) <= CAP

    uvloop.run(main())
