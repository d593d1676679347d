"""The decide round trips (``store/redis_rounds.py``): unary Admits made together
share one round trip, one function call per limit scope, and answer as the
embedded store answers them one by one; calls made while a round trip is in
flight wait for it and share the next; calls waiting behind a round trip that
finds Redis gone get its error without a wait of their own."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from policy.helpers import T0, rcpt, req
from redis import exceptions as rexc

from tiergate.engine.constants import ADMIT, F_TEMPLATE
from tiergate.policy import events as ev
from tiergate.policy.answers import AdmitResult
from tiergate.policy.requests import check_one, well_formed
from tiergate.store.base import StoreUnavailableError
from tiergate.store.location import parse_store
from tiergate.store.redis_counting import NumberSpec, RedisCounting, Row, ScopeSpec, connect
from tiergate.store.redis_rounds import Command, Link

from .test_redis_columns import SLACK, _services, _shared

pytestmark = pytest.mark.redis

NUMBER = NumberSpec("n", 1, 1000, 1, 1000)


class Counted:
    """The decide link of ``store``, counting its round trips and the commands each
    carried; ``hold`` (set) keeps the next round trip from going until it is cleared,
    ``fail`` makes it raise as a reset connection would."""

    def __init__(self, store: RedisCounting) -> None:
        assert store.link is not None  # (a standalone Redis: the decide link in use)
        self.inner = store.link.execute
        self.trips: list[list[Command]] = []
        self.hold: asyncio.Event | None = None
        self.fail = False
        store.link.execute = self.execute  # type: ignore[method-assign]

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        self.trips.append(list(commands))
        if self.hold is not None:
            await self.hold.wait()
        if self.fail:
            raise rexc.ConnectionError("reset by the test")
        return await self.inner(commands)


def _untagged(a: AdmitResult) -> AdmitResult:
    """``a`` with its ticket's id and MAC left out (what it names stays)."""
    return dataclasses.replace(a, ticket=".".join(a.ticket.split(".")[1:-1]))


def _row(i: int, at: int = 0) -> Row:
    return Row(NUMBER, 10**11 + i, F_TEMPLATE, 3, T0 + at)


item = st.tuples(
    st.integers(0, 2),  # sender (0, 1: one portfolio; 2: another)
    st.integers(0, 5),  # recipient
    st.sampled_from([ev.Category.MARKETING, ev.Category.UTILITY]),
    st.integers(0, 9),  # 0: a dry run
)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(passes=st.lists(st.lists(item, min_size=1, max_size=10), min_size=1, max_size=4))
def test_admits_made_together_share_one_round_trip_and_answer_as_one_by_one(
    redis_url: str, passes: list[list[tuple[int, int, int, int]]]
) -> None:
    """Unary Admits of three senders in two portfolios made in one loop pass: one
    round trip, one function call per limit scope, and each answer the embedded
    store's for the same requests decided one by one in the order they were made."""
    embedded, svc, senders = _services()

    async def main() -> None:
        shared = await _shared(redis_url, svc)
        counted = Counted(shared.counting)
        at = T0
        try:
            for items in passes:
                reqs = []
                for s, r, cat, dry in items:
                    at += 7
                    reqs.append(req(senders[s], rcpt(r), at, category=cat, dry=dry == 0))
                want = [embedded.admit(q, q.at_unix_ms) for q in reqs]
                before = len(counted.trips)
                got = await asyncio.gather(
                    *(
                        shared.admit_checked(well_formed(q) or check_one(q, ""), q.at_unix_ms)
                        for q in reqs
                    )
                )
                # (a ticket's id numbers the answers as they are finished: those of
                # one round trip by scope, not in the order the calls were made)
                assert [_untagged(a) for a in got] == [_untagged(a) for a in want]
                assert len(counted.trips) == before + 1
                senders_of = svc.state.senders
                scopes = {senders_of[senders[s]].scope.key for s, _, _, _ in items}
                assert len(counted.trips[-1]) == len(scopes)
        finally:
            await shared.aclose()

    uvloop.run(main())


def test_calls_made_during_a_round_trip_share_the_next(redis_url: str) -> None:
    """Calls of two scopes made in later loop passes while a round trip is in flight
    wait for it and go together in the next: two round trips in all, the second one
    function call per scope with its callers' rows in the order they were made."""
    scopes = [ScopeSpec(f"pf-{uuid.uuid4().hex}") for _ in range(2)]

    async def main() -> None:
        store = await connect(parse_store(redis_url), timeout=SLACK)
        counted = Counted(store)
        counted.hold = asyncio.Event()
        try:
            first = store.decide(scopes[0], [_row(0)])
            while not counted.trips:  # (the first round trip under way)
                await asyncio.sleep(0)
            later = []
            for i in range(1, 6):  # each in a loop pass of its own
                later.append(store.decide(scopes[i % 2], [_row(i, i)]))
                await asyncio.sleep(0)
            assert len(counted.trips) == 1
            counted.hold.set()
            answers = [await first] + [await f for f in later]
            assert len(counted.trips) == 2 and len(counted.trips[1]) == 2
            assert store.round_trips == 2
            # limit 3 in each scope: scope 0 took rows 0, 2, 4; scope 1 rows 1, 3, 5
            used = [a[0].used for a in answers]
            assert used == [1, 1, 2, 2, 3, 3]
            assert all(a[0].decision == ADMIT for a in answers)
        finally:
            await store.aclose()

    uvloop.run(main())


def test_calls_behind_a_round_trip_that_finds_redis_gone_get_its_error(redis_url: str) -> None:
    """A round trip that finds the store unavailable fails its own callers and those
    that waited behind it, unsent (one bounded wait for all of them); the next call
    connects again and is decided."""
    scope = ScopeSpec(f"pf-{uuid.uuid4().hex}")

    async def main() -> None:
        store = await connect(parse_store(redis_url), timeout=SLACK)
        counted = Counted(store)
        counted.hold, counted.fail = asyncio.Event(), True
        try:
            first = store.decide(scope, [_row(0)])
            while not counted.trips:
                await asyncio.sleep(0)
            behind = [store.decide(scope, [_row(i)]) for i in range(1, 4)]
            await asyncio.sleep(0)
            counted.hold.set()
            for fut in (first, *behind):
                with pytest.raises(StoreUnavailableError):
                    await fut
            assert len(counted.trips) == 1
            counted.hold, counted.fail = None, False
            again = await store.decide(scope, [_row(9)])
            assert again[0].decision == ADMIT and again[0].used == 1  # (nothing counted before)
            assert len(counted.trips) == 2
        finally:
            await store.aclose()

    uvloop.run(main())


@pytest.mark.parametrize("direct", [True, False])
def test_a_link_redis_closed_while_idle_connects_again_before_it_is_used(
    redis_server: Any, redis_url: str, direct: bool
) -> None:
    """Redis closing the decide link's connection while it is idle (its ``timeout``,
    a proxy, ``CLIENT KILL``) costs no call an answer: the next round trip connects
    again before it writes."""
    scope = ScopeSpec(f"pf-{uuid.uuid4().hex}")

    async def main() -> None:
        store = await connect(parse_store(redis_url), timeout=SLACK)
        try:
            assert store.link is not None
            store.link.direct = direct  # (off: through redis-py's public calls)
            assert (await store.decide(scope, [_row(0)]))[0].used == 1
            for _ in range(3):
                redis_server.cli("CLIENT", "KILL", "TYPE", "normal")
                await asyncio.sleep(0.2)  # (the close reaches this process)
                got = await store.decide(scope, [_row(1)])
                assert got[0].decision == ADMIT and got[0].used == 2
        finally:
            await store.aclose()

    uvloop.run(main())


@pytest.mark.parametrize("direct", [True, False])
def test_a_links_round_trips_through_redis_pys_public_calls_answer_as_its_own(
    redis_url: str, direct: bool
) -> None:
    """With a redis-py whose connection has no stream and parser of its own to read
    (``Link.direct`` off), round trips go through its public calls and answer the
    same: decisions, and an error reply standing in for its call's answer (a
    connection closed while idle: the test above)."""
    scope = ScopeSpec(f"pf-{uuid.uuid4().hex}")

    async def main() -> None:
        store = await connect(parse_store(redis_url), timeout=SLACK)
        try:
            assert store.link is not None
            assert store.link.direct  # (the locked redis-py's connection)
            store.link.direct = direct
            for used in (1, 2):
                got = await store.decide(scope, [_row(used)])
                assert got[0].decision == ADMIT and got[0].used == used
            replies = await store.link.execute([("PING",), ("NO-SUCH-COMMAND",), ("PING",)])
            assert [r in (b"PONG", "PONG") for r in replies] == [True, False, True]
            assert isinstance(replies[1], rexc.ResponseError)
        finally:
            await store.aclose()

    uvloop.run(main())


def test_a_link_without_redis_pys_stream_and_parser_uses_its_public_calls() -> None:
    """A connection class without the attributes the direct path reads makes a
    link of public calls, not one that fails every round trip."""

    class Bare:
        def __init__(self, **kwargs: Any) -> None:
            self.kwargs = kwargs

    class Pool:
        def __init__(self) -> None:
            self.connection_kwargs = {"host": "127.0.0.1", "socket_timeout": 1.0}
            self.connection_class = Bare

    link = Link(Pool())
    assert not link.direct
    assert link._conn.kwargs["socket_timeout"] is None  # (the caller bounds a round trip)
