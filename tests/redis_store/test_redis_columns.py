"""AdmitBatch, AdmitColumns and AdmitStream over Redis, through the columnar path.

The same batches and columns decided by an embedded service and by a shared one
(``store/shared.py``: the columnar path's steps decided in Redis) give the same
answers, tickets included; each step is one round trip; two sidecars sending
columns and streams to one Redis never admit past the portfolio's limit; with
Redis gone, ``--store-failure`` decides what every row gets, within a second.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from policy.helpers import T0, H, S, add_sender, rcpt, req, service

from tiergate.engine.constants import ADMIT, RETRY_LATER, UNKNOWN_SENDER
from tiergate.policy import events as ev
from tiergate.policy.answers import UNAVAILABLE_DETAIL
from tiergate.policy.columnar import AdmitColumns, ColumnsResult, admit_columns
from tiergate.policy.requests import AdmitRequest, KeyConflict
from tiergate.policy.service import AdmissionService
from tiergate.server import batch_wire
from tiergate.store.base import StoreUnavailableError
from tiergate.store.location import parse_store
from tiergate.store.redis_counting import connect
from tiergate.store.shared import SharedAdmission
from tiergate.v1 import admission_pb2 as pb

from .redis_harness import RedisProcess
from .test_redis_serve import _config, _request, serving

pytestmark = pytest.mark.redis

#: A bound for calls in tests that check answers, not time (a busy shared machine).
SLACK = 10.0


def _services() -> tuple[AdmissionService, AdmissionService, list[str]]:
    """An embedded service and one to share through Redis, with the same senders: two
    of one portfolio, one of another, named afresh (their limit scopes new in Redis)."""
    tag = uuid.uuid4().hex[:12]
    senders = [f"s{i}-{tag}" for i in range(3)]
    a, b = service(), service()
    for svc in (a, b):
        for i, sid in enumerate(senders):
            pf = f"pf-{tag}-{'b' if i == 2 else 'a'}"
            add_sender(svc, sid, portfolio_id=pf, tier="TIER_250")
    return a, b, senders


async def _shared(url: str, svc: AdmissionService, failure: str = "closed") -> SharedAdmission:
    counting = await connect(parse_store(url), timeout=SLACK)
    return SharedAdmission(svc, counting, "open" if failure == "open" else "closed")


def _columns(out: ColumnsResult) -> tuple[Any, ...]:
    return (
        bytes(out.decisions),
        bytes(out.reasons),
        bytes(out.counted),
        out.retry_at_unix_ms.tolist(),
        out.limit.tolist(),
        out.used.tolist(),
        out.meta_error_code.tolist(),
        out.tickets,
        sorted(out.back_offs),
    )


item = st.tuples(
    st.integers(0, 2),  # sender
    st.integers(0, 6),  # recipient
    st.sampled_from([ev.Category.MARKETING, ev.Category.UTILITY, ev.Category.AUTHENTICATION]),
    st.sampled_from(["", "", "", "k1", "k2"]),  # idempotency key
    st.one_of(st.integers(0, 50), st.integers(0, 8_000)),  # ms after the item before
    st.integers(0, 9),  # 0: a dry run
)
batches = st.lists(
    st.tuples(st.booleans(), st.lists(item, min_size=1, max_size=12)), min_size=1, max_size=6
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(walk=batches)
def test_batches_and_columns_answer_as_on_the_embedded_store(
    redis_url: str, walk: list[tuple[bool, list[tuple[int, int, int, str, int, int]]]]
) -> None:
    """Batches (AdmitBatch's ``admit_many``) and columns (AdmitColumns), with keys
    repeated, dry runs mixed in and two portfolios: the shared store answers as the
    embedded one, answer for answer, tickets and counts included; each step of the
    columnar path is one round trip (none for a batch of repeats of keys given
    before: their first admits are this sidecar's)."""
    embedded, svc, senders = _services()

    async def main() -> None:
        shared = await _shared(redis_url, svc)
        at = T0
        given: set[tuple[int, str]] = set()  # (sender, key) of the items before
        try:
            for columns, items in walk:
                reqs: list[AdmitRequest] = []
                for s, r, cat, key, dt, dry in items:
                    at += dt
                    reqs.append(req(senders[s], rcpt(r), at, category=cat, key=key, dry=dry == 0))
                before = shared.counting.round_trips
                cols = AdmitColumns.from_requests(reqs)
                try:
                    want = (
                        _columns(admit_columns(embedded, cols, at))
                        if columns
                        else embedded.admit_many(reqs, at)
                    )
                except KeyConflict as e:  # a key reused for another request: refused
                    with pytest.raises(KeyConflict, match=re.escape(str(e))):
                        await (
                            shared.admit_columns(cols, at)
                            if columns
                            else shared.admit_many(reqs, at)
                        )
                    # (at most the read of the keys this sidecar holds no answer for)
                    assert shared.counting.round_trips <= before + 1
                    continue
                if columns:
                    assert _columns(await shared.admit_columns(cols, at)) == want
                else:
                    assert await shared.admit_many(reqs, at) == want
                trips = shared.counting.round_trips - before
                repeats = all(key and (s, key) in given for s, _, _, key, _, _ in items)
                assert (0 if repeats else 1) <= trips <= len(reqs) + 1
                given.update((s, key) for s, _, _, key, _, _ in items if key)
        finally:
            await shared.counting.aclose()

    asyncio.run(main())


def test_one_round_trip_per_batch_and_per_part(redis_url: str) -> None:
    """A batch of two portfolios' items is one round trip (one function call per
    scope); a key repeated inside it parts it (the repeat sees the first's answer):
    one round trip per part, after one that reads the keys the sidecar holds no
    answer for. Concurrent batches of one loop pass share one."""
    embedded, svc, senders = _services()

    async def main() -> None:
        shared = await _shared(redis_url, svc)
        trips = shared.counting
        try:
            reqs = [
                req(senders[i % 3], rcpt(i), T0 + i, category=ev.Category.UTILITY)
                for i in range(60)
            ]
            got = await shared.admit_many(reqs, T0)
            assert trips.round_trips == 1
            assert got == embedded.admit_many(reqs, T0)
            assert all(r.decision == ADMIT for r in got)
            keyed = [req(senders[0], rcpt(100 + i), T0 + S + i, key=f"k{i}") for i in range(2)]
            keyed += [keyed[0], req(senders[0], rcpt(103), T0 + S + 3)]
            got = await shared.admit_many(keyed, T0 + S)
            # the keys read, then parts [0, 1] and [2, 3]: the repeat, answered here
            assert trips.round_trips == 4
            assert got[2].ticket == got[0].ticket and got[3].used == got[1].used + 1
            # two batches in flight at once: their rows share one pipeline
            waves = [
                [req(senders[w], rcpt(200 + 10 * w + i), T0 + 2 * S + i) for i in range(5)]
                for w in range(3)
            ]
            results = await asyncio.gather(*(shared.admit_many(w, T0 + 2 * S) for w in waves))
            assert trips.round_trips == 5
            assert all(r.decision == ADMIT for rs in results for r in rs)
        finally:
            await trips.aclose()

    asyncio.run(main())


def test_a_key_admitted_in_a_batch_at_one_sidecar_answers_at_another(redis_url: str) -> None:
    """Items admitted under keys in a batch at sidecar A, sent again under those keys
    in columns at B (which never saw them): B answers A's decisions, consumes
    nothing, and counts the next new recipient after A's."""
    a_svc, b_svc, senders = _services()

    async def main() -> None:
        a, b = await _shared(redis_url, a_svc), await _shared(redis_url, b_svc)
        try:
            keyed = [req(senders[0], rcpt(i), T0 + i, key=f"order-{i}") for i in range(4)]
            first = await a.admit_many(keyed, T0)
            assert [r.used for r in first] == [1, 2, 3, 4] and all(r.counted for r in first)
            again = [req(senders[0], rcpt(i), T0 + S + i, key=f"order-{i}") for i in range(4)]
            again.append(req(senders[0], rcpt(9), T0 + S + 5))
            out = await b.admit_columns(AdmitColumns.from_requests(again), T0 + S)
            # decided anew, the pair rate (one a 6 s) would hold the four repeats
            assert bytes(out.decisions) == bytes([ADMIT]) * 5
            assert out.used.tolist() == [1, 2, 3, 4, 5] and bytes(out.counted) == b"\x01" * 5
        finally:
            await a.counting.aclose()
            await b.counting.aclose()

    asyncio.run(main())


def test_a_key_bound_at_another_sidecar_refuses_a_batch_whole(redis_url: str) -> None:
    """A batch or columns at B reusing a key A bound to another request: refused with
    the embedded store's INVALID_ARGUMENT naming the item, nothing of the batch
    decided; a batch decided in parts names the item in the whole batch."""
    a_svc, b_svc, senders = _services()
    sid = senders[0]

    async def main() -> None:
        a, b = await _shared(redis_url, a_svc), await _shared(redis_url, b_svc)
        try:
            (first,) = await a.admit_many([req(sid, rcpt(0), T0, key="order-1")], T0)
            assert first.decision == ADMIT and first.used == 1
            reused = req(sid, rcpt(0), T0 + S, key="order-1", template="other")
            batch = [req(sid, rcpt(1), T0 + S), reused, req(sid, rcpt(2), T0 + S)]
            with pytest.raises(KeyConflict) as e:
                await b.admit_many(batch, T0 + S)
            assert str(e.value).startswith(
                "requests[1].idempotency_key: was first used for a request with another template"
            )
            with pytest.raises(KeyConflict) as e:
                await b.admit_columns(AdmitColumns.from_requests(batch), T0 + S)
            assert e.value.field == "idempotency_keys[1]"
            # parts (a key repeated inside): the refused item named in the whole batch
            parts = [
                req(sid, rcpt(3), T0 + 2 * S, key="order-2"),
                req(sid, rcpt(3), T0 + 2 * S, key="order-2"),
                req(sid, rcpt(0), T0 + 2 * S, key="order-1", category=ev.Category.UTILITY),
            ]
            with pytest.raises(KeyConflict) as e:
                await b.admit_many(parts, T0 + 2 * S)
            assert str(e.value).startswith("requests[2].idempotency_key: was first used")
            assert "another category" in str(e.value)
            # nothing of the refused batches was consumed, the parts' first part
            # neither (every key read before anything is decided): the next new
            # recipient counts after A's first only
            (after,) = await b.admit_many([req(sid, rcpt(4), T0 + 3 * S)], T0 + 3 * S)
            assert after.decision == ADMIT and after.used == 2
            # a key bound at A after B read it (B's read answers nothing here): the
            # decide call refuses it, in a round trip it shares with another batch of
            # the scope, which is decided all the same (in the next)
            (bound,) = await a.admit_many([req(sid, rcpt(6), T0 + 4 * S, key="order-3")], T0)
            assert bound.decision == ADMIT and bound.used == 3
            reused = req(sid, rcpt(6), T0 + 4 * S, key="order-3", template="other")

            async def unread(keys: Any) -> list[Any]:
                return [[None] * len(names) for _, names in keys]

            b.counting.read_keys = unread  # type: ignore[method-assign]
            trips = b.counting.round_trips
            refused, other = await asyncio.gather(
                b.admit_many([reused], T0 + 4 * S),
                b.admit_many([req(sid, rcpt(5), T0 + 4 * S)], T0 + 4 * S),
                return_exceptions=True,
            )
            assert isinstance(refused, KeyConflict)
            assert isinstance(other, list) and other[0].decision == ADMIT and other[0].used == 4
            assert b.counting.round_trips == trips + 2
        finally:
            await a.counting.aclose()
            await b.counting.aclose()

    asyncio.run(main())


@pytest.mark.parametrize("failure", ["closed", "open"])
def test_only_the_rows_of_a_scope_redis_did_not_answer_follow_store_failure(
    redis_url: str, failure: str
) -> None:
    """A Cluster node lost fails the calls of the scopes it served only: their rows get
    what ``--store-failure`` says, the other scopes' rows are decided (and counted)
    in Redis."""
    _, svc, senders = _services()

    async def main() -> None:
        shared = await _shared(redis_url, svc, failure)
        decide = shared.counting.decide
        lost_scope = shared.scope(svc.state.senders[senders[2]].scope).name

        def lost(scope: Any, rows: Any) -> Any:
            if scope.name != lost_scope:
                return decide(scope, rows)
            fut = asyncio.get_running_loop().create_future()
            fut.set_exception(StoreUnavailableError("store unavailable: node lost"))
            return fut

        shared.counting.decide = lost  # type: ignore[method-assign]
        try:
            reqs = [
                req(senders[i % 3], rcpt(i), T0 + i, category=ev.Category.UTILITY) for i in range(9)
            ]
            got = await shared.admit_many(reqs, T0)
            for i, r in enumerate(got):
                if i % 3 == 2 and failure == "closed":
                    assert (r.decision, r.detail) == (RETRY_LATER, UNAVAILABLE_DETAIL)
                else:
                    assert r.decision == ADMIT and r.ticket, (i, r)
            assert shared.unavailable_answers == 3 and not shared.available
            # Redis counted the rows it decided, and none of the others
            scopes = [svc.state.senders[senders[i % 3]].scope for i in range(9)]
            for sc in {sc.key: sc for sc in scopes}.values():
                used = (await shared.counting.usage(shared.scope(sc), T0 + S, 250)).used_24h
                asked = sum(other is sc for other in scopes)
                assert used == (0 if shared.scope(sc).name == lost_scope else asked)
        finally:
            await shared.counting.aclose()

    asyncio.run(main())


def test_batches_on_a_cluster_answer_as_on_the_embedded_store(redis_cluster: str) -> None:
    """On a three-master Cluster, where the two portfolios' keys hash to their own
    slots: batches and columns answer as on the embedded store, one pipeline each."""
    embedded, svc, senders = _services()
    cats = (ev.Category.UTILITY, ev.Category.MARKETING)

    async def main() -> None:
        shared = await _shared(redis_cluster, svc)
        try:
            for k in range(4):
                at = T0 + k * 10 * S
                reqs = [
                    req(senders[i % 3], rcpt(i % 9), at + i * 40, category=cats[i % 2])
                    for i in range(36)
                ]
                before = shared.counting.round_trips
                if k % 2:
                    cols = AdmitColumns.from_requests(reqs)
                    want = _columns(admit_columns(embedded, cols, at))
                    assert _columns(await shared.admit_columns(cols, at)) == want
                else:
                    assert await shared.admit_many(reqs, at) == embedded.admit_many(reqs, at)
                assert shared.counting.round_trips == before + 1
        finally:
            await shared.counting.aclose()

    asyncio.run(main())


@pytest.mark.parametrize("failure", ["closed", "open"])
def test_a_batch_while_redis_is_gone(spare_redis: RedisProcess, failure: str) -> None:
    """Redis killed: every row that reaches steps 4–9 is RETRY_LATER "store
    unavailable" a second on (closed), or decided by the local engine and kept for
    Redis (open); rows refused before (an unknown sender) keep their answers; Redis
    back, the kept admits are counted there first, and decisions go on there."""
    _, svc, senders = _services()

    async def main() -> None:
        shared = await _shared(spare_redis.url, svc, failure)
        try:
            reqs = [
                req(senders[0], rcpt(i), T0 + i, category=ev.Category.UTILITY) for i in range(4)
            ]
            reqs.append(req("nobody", rcpt(9), T0 + 5))
            spare_redis.stop(kill=True)
            got = await shared.admit_many(reqs, T0)
            assert got[-1].reason == UNKNOWN_SENDER
            if failure == "closed":
                for i, r in enumerate(got[:4]):
                    assert (r.decision, r.detail) == (RETRY_LATER, UNAVAILABLE_DETAIL)
                    assert r.retry_at_unix_ms == T0 + i + 1_000 and not r.ticket
            else:  # decided here, and kept for Redis
                assert all(r.decision == ADMIT and r.ticket for r in got[:4])
                assert len(svc.state.unreconciled) == 4
            assert not shared.available and shared.unavailable_answers == 4
            spare_redis.start()
            again = await shared.admit_many(reqs[:4], T0 + H)
            assert all(r.decision == ADMIT for r in again) and shared.available
            if failure == "open":  # counted in Redis before the batch: no slot again
                assert shared.reconciled == 4 and not svc.state.unreconciled
                assert [r.counted for r in again] == [False] * 4
        finally:
            await shared.aclose()

    asyncio.run(main())


async def _stream(stub: Any, reqs: list[pb.AdmitRequest]) -> list[Any]:
    async def gen() -> AsyncIterator[pb.AdmitRequest]:
        for r in reqs:
            yield r

    return [r async for r in stub.AdmitStream(gen())]


def _wire_columns(reqs: list[pb.AdmitRequest]) -> pb.AdmitColumnsRequest:
    return pb.AdmitColumnsRequest(**dataclasses.asdict(AdmitColumns.from_requests(reqs)))


@pytest.mark.usefixtures("patient")
def test_two_sidecars_sending_columns_and_streams_share_the_limit(redis_url: str) -> None:
    """Sidecar A takes AdmitColumns, B AdmitStream, A and B AdmitBatch, in turn, 40
    recipients a call: together they admit the portfolio's limit and no more."""

    async def main() -> None:
        async with serving(_config(redis_url)) as a, serving(_config(redis_url)) as b:
            admitted: list[str] = []
            limits: set[int] = set()
            for k in range(8):
                reqs = [_request(k * 40 + j, T0 + k * 1_000 + j * 10) for j in range(40)]
                answers: list[tuple[int, int, int]]
                if k % 3 == 0:
                    cols: Any = await a.AdmitColumns(_wire_columns(reqs))
                    answers = list(zip(cols.decisions, cols.reasons, cols.limit, strict=True))
                elif k % 3 == 1:
                    got = await _stream(b, reqs)
                    answers = [(r.decision, r.reason, r.limit) for r in got]
                else:
                    reply: Any = await (a, b)[k % 2].AdmitBatch(pb.AdmitBatchRequest(requests=reqs))
                    answers = [(r.decision, r.reason, r.limit) for r in reply.responses]
                assert len(answers) == 40
                for r, (decision, reason, limit) in zip(reqs, answers, strict=True):
                    limits.add(limit)
                    if decision == pb.DECISION_ADMIT:
                        admitted.append(r.recipient)
                    else:
                        assert reason == pb.MESSAGING_LIMIT
            (limit,) = limits
            assert 0 < limit < 320
            assert len(admitted) == len(set(admitted)) == limit

    uvloop.run(main())


@pytest.mark.parametrize("failure", ["closed", "open"])
def test_columns_and_streams_while_redis_is_gone(spare_redis: RedisProcess, failure: str) -> None:
    """Redis killed under a sidecar: AdmitBatch, AdmitColumns and AdmitStream each
    answer within a second, RETRY_LATER "store unavailable" (closed) or admitted by
    the sidecar's own engine (open); back, they decide in Redis again."""

    async def main() -> None:
        async with serving(_config(spare_redis.url, failure)) as stub:
            spare_redis.stop(kill=True)
            want = pb.DECISION_RETRY_LATER if failure == "closed" else pb.DECISION_ADMIT
            for k in range(3):
                reqs = [_request(k * 10 + j, T0 + k * 1_000 + j) for j in range(5)]
                started = time.monotonic()
                if k == 0:
                    reply: Any = await stub.AdmitBatch(
                        pb.AdmitBatchRequest(requests=reqs), timeout=5
                    )
                    got = [(r.decision, r.detail) for r in reply.responses]
                elif k == 1:
                    cols: Any = await stub.AdmitColumns(_wire_columns(reqs), timeout=5)
                    detail = UNAVAILABLE_DETAIL if failure == "closed" else "admitted"
                    got = [(d, detail) for d in cols.decisions]
                    if failure == "closed":
                        assert all(r == 0 for r in cols.reasons)
                        assert all(T0 + 1_000 < t <= T0 + 3_000 for t in cols.retry_at_unix_ms)
                else:
                    got = [(r.decision, r.detail) for r in await _stream(stub, reqs)]
                assert time.monotonic() - started < 1.0
                detail = UNAVAILABLE_DETAIL if failure == "closed" else "admitted"
                assert got == [(want, detail)] * 5
            spare_redis.start()
            reqs = [_request(100 + j, T0 + 5_000 + j) for j in range(5)]
            cols = await stub.AdmitColumns(_wire_columns(reqs))
            assert list(cols.decisions) == [pb.DECISION_ADMIT] * 5
            got_stream = await _stream(stub, [_request(200, T0 + 6_000)])
            assert got_stream[0].decision == pb.DECISION_ADMIT

    uvloop.run(main())


@pytest.mark.usefixtures("patient")
def test_the_rpcs_answer_as_an_embedded_sidecar(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same AdmitBatch, AdmitColumns and AdmitStream calls (recipients repeated,
    keys repeated, marketing, utility and free-form outside a window) to an embedded
    sidecar and to one on Redis: the same answers, but the tickets' signatures."""
    embedded = dataclasses.replace(_config(redis_url), store=parse_store("embedded"))

    def requests(k: int) -> list[pb.AdmitRequest]:
        reqs = []
        for j in range(30):
            r = _request(j % 12, T0 + k * 3_000 + j * 50)
            r.category = (pb.UTILITY, pb.MARKETING)[j % 2]
            r.recipient = f"+4477009{j % 12:05d}"  # Meta delivers marketing to the UK
            if j % 6 == 0:  # the same request again (and again) under its key
                r.idempotency_key = f"key-{k}-{j % 12}"
            if j in (5, 11, 23) and k % 3:  # free-form, no window open: refused
                r.kind, r.category, r.template_id = pb.FREE_FORM, pb.CATEGORY_UNSPECIFIED, ""
            reqs.append(r)
        return reqs

    async def answers(stub: Any, k: int, reqs: list[pb.AdmitRequest]) -> list[tuple[Any, ...]]:
        if k % 3 == 1:
            c: Any = await stub.AdmitColumns(_wire_columns(reqs))
            rows = zip(
                c.decisions,
                c.reasons,
                c.retry_at_unix_ms,
                c.counted,
                c.used,
                c.tickets,
                strict=True,
            )
            return [(*row[:5], bool(row[5])) for row in rows]
        if k % 3 == 0:
            got: Any = (await stub.AdmitBatch(pb.AdmitBatchRequest(requests=reqs))).responses
        else:
            got = await _stream(stub, reqs)
        return [
            (r.decision, r.reason, r.retry_at_unix_ms, r.counted, r.used, bool(r.ticket), r.detail)
            for r in got
        ]

    columnar: list[int] = []  # the shared store's columnar entry: AdmitColumns, wire batches
    entry = SharedAdmission.admit_columns

    async def counted(self: SharedAdmission, req: Any, now_ms: int) -> ColumnsResult:
        columnar.append(len(req.recipients))
        return await entry(self, req, now_ms)

    monkeypatch.setattr(SharedAdmission, "admit_columns", counted)

    async def main() -> None:
        async with serving(embedded) as alone, serving(_config(redis_url)) as shared:
            seen: set[tuple[int, int]] = set()
            for k in range(6):
                reqs = requests(k)
                want = await answers(alone, k, reqs)
                assert await answers(shared, k, reqs) == want
                seen.update((a[0], a[1]) for a in want)
            admit, held = (pb.DECISION_ADMIT, pb.OK), (pb.DECISION_RETRY_LATER, pb.PAIR_RATE)
            assert {admit, held, (pb.DECISION_REJECT, pb.OUTSIDE_WINDOW)} <= seen, seen
            # AdmitColumns, and AdmitBatch where the compiled wire codec reads it, as
            # columns (the codec leaves a batch with free-form items to protobuf)
            assert columnar == [30] * (4 if batch_wire.COMPILED else 2)

    uvloop.run(main())
