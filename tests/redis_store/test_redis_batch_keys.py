"""A batch's idempotency keys on Redis answer as one sidecar would.

Two sidecars on one Redis, and one embedded service that takes the same traffic in
the same order: a batch item that steps 1–3 refuse now (its template paused since)
under a key the other sidecar bound answers that key's first admit, or refuses the
batch whole for another request under the key, as the embedded store does; a
batch decided in parts, or spanning two limit scopes, refused for a key bound
elsewhere consumes nothing in Redis (no recipient counted, no key bound).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from policy.helpers import T0, S, add_sender, rcpt, req, service

from tiergate.engine.constants import ADMIT, RETRY_LATER, TEMPLATE_PAUSED
from tiergate.policy import events as ev
from tiergate.policy.answers import UNAVAILABLE_DETAIL, AdmitResult
from tiergate.policy.columnar import AdmitColumns, admit_columns
from tiergate.policy.requests import AdmitRequest, KeyConflict, check_one, well_formed
from tiergate.policy.service import AdmissionService
from tiergate.store.shared import SharedAdmission

from .redis_harness import RedisProcess
from .test_redis_columns import _columns, _shared

pytestmark = pytest.mark.redis

#: The senders' tier (TIER_250): the messaging limit of each portfolio.
LIMIT = 250
#: Sidecar A, sidecar B.
Sidecars = tuple[SharedAdmission, SharedAdmission]


def _trio() -> tuple[list[AdmissionService], list[str]]:
    """An embedded service and two to share through Redis, with the same senders: two
    of one portfolio, one of another, named afresh (their limit scopes new in Redis)."""
    tag = uuid.uuid4().hex[:12]
    senders = [f"s{i}-{tag}" for i in range(3)]
    svcs = [service() for _ in range(3)]
    for svc in svcs:
        for i, sid in enumerate(senders):
            pf = f"pf-{tag}-{'b' if i == 2 else 'a'}"
            add_sender(svc, sid, portfolio_id=pf, tier="TIER_250")
    return svcs, senders


def _run(
    url: str, body: Callable[[AdmissionService, Sidecars, list[str]], Awaitable[None]]
) -> None:
    """``body(embedded, (a, b), senders)``: an embedded service and two sidecars on
    Redis (A and B, the same senders), closed afterwards."""
    (embedded, a_svc, b_svc), senders = _trio()

    async def main() -> None:
        a, b = await _shared(url, a_svc), await _shared(url, b_svc)
        try:
            await body(embedded, (a, b), senders)
        finally:
            await a.counting.aclose()
            await b.counting.aclose()

    asyncio.run(main())


def _template(
    svcs: list[AdmissionService], template: str, status: ev.TemplateStatus, at: int
) -> None:
    """``template``'s status told to every service (as the shared policy log tells
    every sidecar)."""
    for svc in svcs:
        svc.apply(ev.TemplateUpdate(template, status), at)


def _answers(got: list[AdmitResult]) -> list[tuple[Any, ...]]:
    """Answers without the tickets' text: two sidecars number their tickets apart."""
    return [dataclasses.replace(r, ticket=str(bool(r.ticket))) for r in got]


async def _used(shared: SharedAdmission, sender: str, at: int) -> int:
    """The messaging-limit count in Redis of ``sender``'s scope at ``at``."""
    spec = shared.scope(shared.service.state.senders[sender].scope)
    return (await shared.counting.usage(spec, at, LIMIT)).used_24h


async def _held(shared: SharedAdmission, sender: str, keys: list[str]) -> list[bool]:
    """Whether Redis holds a first admit under each of ``sender``'s ``keys``."""
    spec = shared.scope(shared.service.state.senders[sender].scope)
    (got,) = await shared.counting.read_keys([(spec, [f"{sender}:{k}" for k in keys])])
    assert isinstance(got, list)
    return [h is not None for h in got]


async def _both(
    embedded: AdmissionService, shared: SharedAdmission, reqs: list[AdmitRequest], at: int
) -> list[AdmitResult] | KeyConflict:
    """The same batch to the embedded service and to ``shared``: the same answers (but
    the tickets' text), or the same refusal; returns the shared one's."""
    try:
        want = embedded.admit_many(reqs, at)
    except KeyConflict as e:
        with pytest.raises(KeyConflict, match=re.escape(str(e))) as got:
            await shared.admit_many(reqs, at)
        return got.value
    answers = await shared.admit_many(reqs, at)
    assert _answers(answers) == _answers(want)
    return answers


def test_a_repeat_refused_by_steps_1_to_3_now_answers_the_first_admit(redis_url: str) -> None:
    """A's batch admits under keys; the template is paused since; B (which never saw
    the keys) gets a batch repeating them, with a new item of the paused template:
    the repeats answer A's admits (ADMIT, their counts; the embedded store's answers
    but the tickets' text), the new item TEMPLATE_PAUSED; nothing consumed again."""

    async def body(embedded: AdmissionService, ab: Sidecars, senders: list[str]) -> None:
        a, b = ab
        sid = senders[0]
        first = [req(sid, rcpt(i), T0 + i, key=f"order-{i}") for i in range(3)]
        got = await _both(embedded, a, first, T0)
        assert isinstance(got, list) and [r.used for r in got] == [1, 2, 3]
        _template([embedded, a.service, b.service], "promo", ev.TemplateStatus.PAUSED, T0 + S)
        again = [req(sid, rcpt(i), T0 + 2 * S + i, key=f"order-{i}") for i in range(3)]
        again.insert(1, req(sid, rcpt(9), T0 + 2 * S, key="order-9"))
        got = await _both(embedded, b, again, T0 + 2 * S)
        assert isinstance(got, list)
        assert got[1].reason == TEMPLATE_PAUSED
        assert [got[k].decision for k in (0, 2, 3)] == [ADMIT] * 3
        assert [(r.used, r.counted) for r in (got[0], got[2], got[3])] == [
            (1, True),
            (2, True),
            (3, True),
        ]
        assert all(r.ticket for r in (got[0], got[2], got[3]))
        # the same as columns at A's peer: nothing consumed, nothing bound for the refusal
        cols = AdmitColumns.from_requests(again)
        want = _columns(admit_columns(embedded, cols, T0 + 3 * S))
        out = _columns(await b.admit_columns(cols, T0 + 3 * S))
        assert out[:7] == want[:7] and [bool(t) for t in out[7]] == [bool(t) for t in want[7]]
        assert await _used(b, sid, T0 + 3 * S) == 3
        assert await _held(b, sid, ["order-0", "order-9"]) == [True, False]

    _run(redis_url, body)


def test_a_lone_repeat_refused_by_steps_1_to_3_now_answers_the_first_admit(
    redis_url: str,
) -> None:
    """The same for a unary Admit at B: a repeat of A's key, the template paused since,
    answers A's admit (then from B's own key memory); another request under the key
    is refused with the embedded store's words."""

    async def body(embedded: AdmissionService, ab: Sidecars, senders: list[str]) -> None:
        a, b = ab
        sid = senders[0]
        await _both(
            embedded, a, [req(sid, rcpt(i), T0 + i, key=f"order-{i}") for i in range(2)], T0
        )
        _template([embedded, a.service, b.service], "promo", ev.TemplateStatus.PAUSED, T0 + S)
        for at in (T0 + 2 * S, T0 + 3 * S):  # the second from B's own memory
            again = req(sid, rcpt(1), at, key="order-1")
            want = embedded.admit(again, at)
            got = await b.admit_checked(well_formed(again) or check_one(again, ""), at)
            assert dataclasses.replace(got, ticket="") == dataclasses.replace(want, ticket="")
            assert (got.decision, got.used, got.counted) == (ADMIT, 2, True) and got.ticket
        other = req(sid, rcpt(7), T0 + 4 * S, key="order-0")
        with pytest.raises(KeyConflict) as e:
            embedded.admit(other, T0 + 4 * S)
        with pytest.raises(KeyConflict, match=re.escape(str(e.value))):
            await b.admit_checked(well_formed(other) or check_one(other, ""), T0 + 4 * S)
        assert await _used(b, sid, T0 + 5 * S) == 2

    _run(redis_url, body)


def test_a_refused_item_under_a_key_bound_elsewhere_refuses_the_batch(redis_url: str) -> None:
    """A binds a key; the template is paused since; B gets a batch whose item under the
    key names another recipient (steps 1–3 would refuse it: paused): the batch is
    refused whole with the embedded store's words, nothing of it consumed."""

    async def body(embedded: AdmissionService, ab: Sidecars, senders: list[str]) -> None:
        a, b = ab
        sid = senders[0]
        await _both(embedded, a, [req(sid, rcpt(5), T0, key="order-5")], T0)
        _template([embedded, a.service, b.service], "promo", ev.TemplateStatus.PAUSED, T0 + S)
        batch = [
            req(sid, rcpt(6), T0 + 2 * S, category=ev.Category.UTILITY, template="other"),
            req(sid, rcpt(7), T0 + 2 * S, key="order-5"),
        ]
        refused = await _both(embedded, b, batch, T0 + 2 * S)
        assert isinstance(refused, KeyConflict)
        assert str(refused).startswith("requests[1].idempotency_key: was first used")
        assert "another recipient" in str(refused)
        assert await _used(b, sid, T0 + 3 * S) == 1

    _run(redis_url, body)


def _refused_whole(url: str) -> None:
    async def body(embedded: AdmissionService, ab: Sidecars, senders: list[str]) -> None:
        a, b = ab
        s0, s2 = senders[0], senders[2]  # two portfolios: two limit scopes
        bound = [req(s0, rcpt(0), T0, key="order-1"), req(s2, rcpt(1), T0 + 1, key="order-x")]
        await _both(embedded, a, bound, T0)
        # in parts (a key repeated inside), refused in its second part
        parts = [
            req(s0, rcpt(3), T0 + S, key="order-2"),
            req(s0, rcpt(3), T0 + S, key="order-2"),
            req(s0, rcpt(0), T0 + S, key="order-1", category=ev.Category.UTILITY),
        ]
        refused = await _both(embedded, b, parts, T0 + S)
        assert isinstance(refused, KeyConflict) and "another category" in str(refused)
        assert str(refused).startswith("requests[2].idempotency_key")
        # two scopes in one round trip, refused in the second's
        scopes = [
            req(s0, rcpt(4), T0 + 2 * S, key="order-4"),
            req(s2, rcpt(2), T0 + 2 * S, key="order-x"),
        ]
        refused = await _both(embedded, b, scopes, T0 + 2 * S)
        assert isinstance(refused, KeyConflict) and "another recipient" in str(refused)
        # nothing of either consumed: each scope counts A's admit only, no key bound
        assert await _used(b, s0, T0 + 3 * S) == 1 and await _used(b, s2, T0 + 3 * S) == 1
        assert await _held(b, s0, ["order-1", "order-2", "order-4"]) == [True, False, False]
        # and the next batch at either sidecar answers as the embedded store
        after = [req(s0, rcpt(3), T0 + 4 * S, key="order-2"), req(s2, rcpt(2), T0 + 4 * S)]
        got = await _both(embedded, a, after, T0 + 4 * S)
        assert isinstance(got, list) and [r.used for r in got] == [2, 2]

    _run(url, body)


def test_a_batch_refused_for_a_key_bound_elsewhere_consumes_nothing(redis_url: str) -> None:
    """B's batch decided in parts, and one spanning two portfolios, each refused for a
    key A bound to another request: the embedded store's refusal, and Redis shows
    nothing of either consumed (the scopes' counts, the keys of its earlier items)."""
    _refused_whole(redis_url)


def test_a_batch_refused_for_a_key_bound_elsewhere_consumes_nothing_on_a_cluster(
    redis_cluster: str,
) -> None:
    """The same on a three-master Cluster (the two portfolios' keys on their slots)."""
    _refused_whole(redis_cluster)


item = st.tuples(
    st.integers(0, 2),  # sender
    st.integers(0, 5),  # recipient
    st.sampled_from([ev.Category.MARKETING, ev.Category.UTILITY]),
    st.sampled_from(["", "", "k1", "k2", "k3"]),  # idempotency key
    st.sampled_from(["promo", "other"]),  # template
    st.integers(0, 9),  # 0: a dry run
)
calls = st.lists(
    st.tuples(
        st.integers(0, 3),  # 0: sidecar A, 1: B, 2: A as columns, 3: B as columns
        st.sampled_from([None, ev.TemplateStatus.PAUSED, ev.TemplateStatus.UNPAUSED]),
        st.lists(item, min_size=1, max_size=8),
    ),
    min_size=1,
    max_size=8,
)


def _walk(url: str, walk: list[Any]) -> None:
    """``walk``'s calls, each to A or B (as batches or columns), the template's status
    told to every service before it: the answers (but the tickets' text) and
    refusals of one embedded service taking them all in order."""

    async def body(embedded: AdmissionService, ab: Sidecars, senders: list[str]) -> None:
        at = T0
        for side, status, items in walk:
            at += 7 * S
            svcs = [embedded, ab[0].service, ab[1].service]
            if status is not None:
                _template(svcs, "promo", status, at)
            reqs = [
                req(senders[s], rcpt(r), at, category=cat, key=key, template=tpl, dry=dry == 0)
                for s, r, cat, key, tpl, dry in items
            ]
            shared = ab[side % 2]
            if side < 2:
                await _both(embedded, shared, reqs, at)
                continue
            cols = AdmitColumns.from_requests(reqs)
            try:
                want = _columns(admit_columns(embedded, cols, at))
            except KeyConflict as e:
                with pytest.raises(KeyConflict, match=re.escape(str(e))):
                    await shared.admit_columns(cols, at)
                continue
            got = _columns(await shared.admit_columns(cols, at))
            assert got[:7] == want[:7] and got[8] == want[8]
            assert [bool(t) for t in got[7]] == [bool(t) for t in want[7]]

    _run(url, body)


#: The walks' settings (a Redis fixture per test, not per example: fresh senders each).
WALK = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@settings(WALK, max_examples=20)
@given(walk=calls)
def test_two_sidecars_answer_keyed_batches_as_one(redis_url: str, walk: list[Any]) -> None:
    """Batches and columns with keys repeated, sent to A or B as hypothesis picks, the
    template paused and unpaused between them: the answers (but the tickets' text)
    and refusals of one embedded service taking them all in order."""
    _walk(redis_url, walk)


@settings(WALK, max_examples=5)
@given(walk=calls)
def test_two_sidecars_answer_keyed_batches_as_one_on_a_cluster(
    redis_cluster: str, walk: list[Any]
) -> None:
    """The same on a three-master Cluster (the two portfolios' keys on their slots)."""
    _walk(redis_cluster, walk)


@pytest.mark.parametrize("failure", ["closed", "open"])
def test_a_keyed_batch_while_redis_does_not_answer(spare_redis: RedisProcess, failure: str) -> None:
    """Redis stopped (SIGSTOP: nothing answered): a batch with keys waits for Redis
    once (its keys' read), not again for its decide calls, and answers as
    ``--store-failure`` says within a second; Redis back, the keys are read again."""
    (_, svc, _), senders = _trio()
    sid = senders[0]

    async def main() -> None:
        shared = await _shared(spare_redis.url, svc, failure)
        shared.counting.timeout = 0.5
        assert spare_redis.proc is not None
        pid = spare_redis.proc.pid
        try:
            reqs = [req(sid, rcpt(i), T0 + i, key=f"order-{i}") for i in range(3)]
            reqs.append(req(sid, rcpt(0), T0 + 3, key="order-0"))  # a repeat: in parts
            os.kill(pid, signal.SIGSTOP)
            try:
                trips, started = shared.counting.round_trips, time.monotonic()
                got = await shared.admit_many(reqs, T0)
                assert time.monotonic() - started < 1.0
                assert shared.counting.round_trips == trips + 1 and not shared.available
            finally:
                os.kill(pid, signal.SIGCONT)
            if failure == "closed":
                assert {(r.decision, r.detail) for r in got} == {(RETRY_LATER, UNAVAILABLE_DETAIL)}
            else:
                assert [r.decision for r in got[:3]] == [ADMIT] * 3
            trips = shared.counting.round_trips
            again = await shared.admit_many([req(sid, rcpt(5), T0 + S, key="order-5")], T0 + S)
            assert again[0].decision == ADMIT and shared.available
            assert shared.counting.round_trips >= trips + 2  # the read, then the decide
        finally:
            await shared.aclose()

    asyncio.run(main())
