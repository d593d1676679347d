"""Several sidecars on one Redis: never past a limit, whatever the interleaving; and
what a sidecar sees while Redis is gone (an error within the call's bound, never a
hang) and once it is back (decisions go on, the library loaded again)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import time
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tiergate.engine.constants import (
    ADMIT,
    F_TEMPLATE,
    MESSAGING_LIMIT,
    PAIR_RATE,
    RETRY_LATER,
    THROUGHPUT,
)
from tiergate.store.base import StoreUnavailableError
from tiergate.store.location import parse_store
from tiergate.store.redis_counting import NumberSpec, Row, ScopeSpec, connect

from .redis_harness import RedisProcess

pytestmark = pytest.mark.redis

T0 = 1_700_000_000_000
#: A bound for calls in tests that check answers, not time (a busy shared machine).
SLACK = 10.0
#: Numbers with bursts so large that only the messaging limit refuses (a scope's
#: clock clamps a sidecar's earlier times to the latest seen: many sends at one ms).
FAST = (NumberSpec("a", 1, 1000, 1, 1000), NumberSpec("b", 1, 1000, 1, 1000))


def _recipient(i: int) -> int:
    return 14155550000 + i


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    limit=st.integers(1, 6),
    calls=st.lists(
        st.tuples(st.integers(0, 1), st.lists(st.integers(0, 11), min_size=1, max_size=5)),
        min_size=1,
        max_size=12,
    ),
    together=st.integers(1, 4),
)
def test_two_sidecars_interleaved_never_pass_the_limit(
    redis_url: str, limit: int, calls: list[tuple[int, list[int]]], together: int
) -> None:
    """Two clients (two sidecars' connections) send batches in an order hypothesis
    picks, ``together`` calls in flight at once: the distinct recipients admitted
    never exceed the limit, and reach it when enough were asked for."""
    scope = ScopeSpec(f"pf-{uuid.uuid4().hex}")

    async def main() -> None:
        sidecars = [await connect(parse_store(redis_url), timeout=SLACK) for _ in range(2)]
        admitted: set[int] = set()
        asked: set[int] = set()
        clock = iter(range(T0, T0 + 10_000))
        try:
            for at in range(0, len(calls), together):
                waves = []
                for who, rcpts in calls[at : at + together]:
                    rows = [
                        Row(FAST[who], _recipient(r), F_TEMPLATE, limit, next(clock)) for r in rcpts
                    ]
                    asked.update(r.recipient for r in rows)
                    waves.append((rows, sidecars[who].decide(scope, rows)))
                for rows, fut in waves:
                    for r, d in zip(rows, await fut, strict=True):
                        if d.decision == ADMIT:
                            admitted.add(r.recipient)
                        else:
                            assert d.reason == MESSAGING_LIMIT
                            assert r.recipient not in admitted
            assert len(admitted) == min(limit, len(asked))
            usage = await sidecars[0].usage(scope, T0 + 10_000, limit)
            assert usage.used_24h == len(admitted)
        finally:
            for s in sidecars:
                await s.aclose()

    asyncio.run(main())


def test_throughput_holds_across_sidecars(redis_url: str) -> None:
    """A number's throughput bucket is one for every sidecar: with a burst of 3 at one
    instant, three admits in all, whichever sidecar asks."""
    scope = ScopeSpec(f"pf-{uuid.uuid4().hex}")
    number = NumberSpec("slow", tput_interval_us=1_000_000, tput_burst=3)

    async def main() -> None:
        sidecars = [await connect(parse_store(redis_url), timeout=SLACK) for _ in range(2)]
        rows = [
            [Row(number, _recipient(i * 2 + w), F_TEMPLATE, 100, T0)]
            for i in range(4)
            for w in range(2)
        ]
        futs = [sidecars[i % 2].decide(scope, r) for i, r in enumerate(rows)]
        got = [d for f in futs for d in await f]
        assert sum(d.decision == ADMIT for d in got) == 3
        assert {d.reason for d in got if d.decision != ADMIT} == {THROUGHPUT}
        for s in sidecars:
            await s.aclose()

    asyncio.run(main())


def _sidecar_process(
    url: str, scope: str, limit: int, seed: int, out: multiprocessing.Queue
) -> None:
    async def main() -> list[int]:
        store = await connect(parse_store(url), timeout=SLACK)
        order = list(range(40))
        order = order[seed:] + order[:seed]
        admitted = []
        for i in range(0, len(order), 3):
            rows = [
                Row(FAST[seed % 2], _recipient(r), F_TEMPLATE, limit, T0 + i * 10 + j)
                for j, r in enumerate(order[i : i + 3])
            ]
            futs = [store.decide(ScopeSpec(scope), [row]) for row in rows]  # one round trip
            for row, fut in zip(rows, futs, strict=True):
                if (await fut)[0].decision == ADMIT:
                    admitted.append(row.recipient)
        await store.aclose()
        return admitted

    out.put(asyncio.run(main()))


def test_two_sidecar_processes_never_pass_the_limit(redis_url: str) -> None:
    """Two processes, each its own client and event loop, race over 40 recipients
    from different starting points: the union admitted is exactly the limit."""
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue = ctx.Queue()
    scope, limit = f"pf-{uuid.uuid4().hex}", 17
    procs = [
        ctx.Process(target=_sidecar_process, args=(redis_url, scope, limit, s, out))
        for s in (0, 13)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    union = set(results[0]) | set(results[1])
    assert len(union) == limit
    assert sum(map(len, results)) >= limit  # a recipient admitted by both counts once


def test_a_stopped_redis_refuses_within_the_bound_and_recovers(spare_redis: RedisProcess) -> None:
    """Redis killed: each call fails with StoreUnavailableError within about the
    timeout, never hangs. Restarted (empty, the library gone): decisions go on."""
    scope, n = ScopeSpec("pf-restart"), FAST[0]

    async def main() -> None:
        store = await connect(parse_store(spare_redis.url), timeout=0.5)
        first = await store.decide(scope, [Row(n, _recipient(1), F_TEMPLATE, 5, T0)])
        assert first[0].decision == ADMIT
        spare_redis.stop(kill=True)
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError, match="store unavailable"):
                await store.decide(scope, [Row(n, _recipient(2), F_TEMPLATE, 5, T0)])
            assert time.monotonic() - started < 1.0
        spare_redis.start()
        store.timeout = SLACK  # answers from here on, not time
        again = await store.decide(scope, [Row(n, _recipient(2), F_TEMPLATE, 5, T0 + 1)])
        assert again[0].decision == ADMIT
        await store.aclose()

    asyncio.run(main())


def test_a_hung_redis_refuses_within_the_bound(spare_redis: RedisProcess) -> None:
    """Redis stopped (SIGSTOP: connections open, nothing answered): the call fails
    within the bound; resumed, the next call is answered."""
    scope, n = ScopeSpec("pf-hung"), FAST[0]

    async def main() -> None:
        store = await connect(parse_store(spare_redis.url), timeout=0.3)
        assert spare_redis.proc is not None
        pid = spare_redis.proc.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError):
                await store.decide(scope, [Row(n, _recipient(1), F_TEMPLATE, 5, T0)])
            assert time.monotonic() - started < 1.0
        finally:
            os.kill(pid, signal.SIGCONT)
        store.timeout = SLACK
        got = await store.decide(scope, [Row(n, _recipient(1), F_TEMPLATE, 5, T0)])
        assert got[0].decision == ADMIT
        await store.aclose()

    asyncio.run(main())


def test_on_the_server_clock_redis_time_decides(redis_url: str) -> None:
    """Without the request clock every row is decided at Redis's TIME (one clock for
    all sidecars): a row's own time is not read, and the scope's clock is Redis's."""
    scope = ScopeSpec(f"pf-{uuid.uuid4().hex}")
    number = NumberSpec("n", 1_000_000, 1, 1, 1)  # one send per second

    async def main() -> None:
        store = await connect(parse_store(redis_url), server_clock=True, timeout=SLACK)
        first = await store.decide(scope, [Row(number, _recipient(1), F_TEMPLATE, 9, 0)])
        assert first[0].decision == ADMIT
        wall = int(time.time() * 1000)
        assert abs(store.server_now - wall) < 5_000
        # a sidecar claiming a far later time frees nothing: Redis's time decides
        late = await store.decide(scope, [Row(number, _recipient(2), F_TEMPLATE, 9, wall + 10**7)])
        assert late[0].decision != ADMIT and late[0].reason == THROUGHPUT
        assert abs(late[0].retry_at - (store.server_now + 1_000)) <= 1_000
        usage = await store.usage(scope, 0, 9)
        assert usage.used_24h == 1
        await store.aclose()

    asyncio.run(main())


def test_calls_of_one_loop_pass_share_one_round_trip(redis_url: str) -> None:
    """Five decide calls over two scopes made in one pass: one pipeline, each caller
    its own rows' answers in order; the next pass is a second round trip."""
    scopes = [ScopeSpec(f"pf-{uuid.uuid4().hex}") for _ in range(2)]

    async def main() -> None:
        store = await connect(parse_store(redis_url), timeout=SLACK)
        futs = [
            store.decide(
                scopes[i % 2],
                [Row(FAST[0], _recipient(i * 10 + j), F_TEMPLATE, 3, T0 + j) for j in range(i + 1)],
            )
            for i in range(5)
        ]
        got = [await f for f in futs]
        assert store.round_trips == 1
        assert [len(g) for g in got] == [1, 2, 3, 4, 5]
        # scope 0 had calls 0, 2, 4 (1 + 3 + 5 rows, limit 3): used counts run on
        used0 = [d.used for i in (0, 2, 4) for d in got[i]]
        assert used0 == [1, 2, 3, 3, 3, 3, 3, 3, 3]
        assert sum(d.decision == ADMIT for i in (0, 2, 4) for d in got[i]) == 3
        await store.decide(scopes[0], [Row(FAST[0], _recipient(1), F_TEMPLATE, 3, T0)])
        assert store.round_trips == 2
        await store.aclose()

    asyncio.run(main())


def test_idle_keys_expire_and_opt_outs_stay(redis_url: str) -> None:
    """Every key a decision writes has a TTL (a shard hash twice the scope's longest
    window, renewed once that much has passed since its mark); opt-outs have none."""
    scope = ScopeSpec(f"pf-{uuid.uuid4().hex}")

    async def main() -> None:
        store = await connect(parse_store(redis_url), timeout=SLACK)
        client = store.client
        await store.set_opt_out(scope, _recipient(9), True)
        await store.decide(scope, [Row(FAST[0], _recipient(1), F_TEMPLATE, 5, T0)])
        shard = scope.scope_shard(_recipient(1))
        assert 0 < await client.pttl(shard) <= 2 * scope.ttl_ms
        assert await client.pttl(shard) > 2 * scope.ttl_ms - 60_000
        assert await client.hget(shard, "_t") is not None
        fixed = scope.fixed_keys()
        for key in (*fixed[:4], *fixed[5:7]):  # meta, rings, pair entries, their due times
            assert 0 < await client.pttl(key) <= scope.ttl_ms
        assert await client.pttl(fixed[4]) == -1  # opt-outs never expire
        await store.aclose()

    asyncio.run(main())


def test_pair_entries_are_dropped_once_the_clock_passes_them(redis_url: str) -> None:
    """A pair-rate entry lives while its TAT is ahead of the scope's clock: a decide
    call drops those the clock has passed (from the pair hash and the due set), so
    a scope holds pair entries for its recently messaged recipients only, while its
    scope entries stay for every recipient it counted."""
    scope = ScopeSpec(f"pf-{uuid.uuid4().hex}")
    number = NumberSpec("a", 1, 1000, 6_000, 1)

    async def main() -> None:
        store = await connect(parse_store(redis_url), timeout=SLACK)
        client = store.client
        pairs, due = scope.fixed_keys()[5:7]
        rows = [Row(number, _recipient(i), F_TEMPLATE, 1000, T0 + i) for i in range(50)]
        assert all(d.decision == ADMIT for d in await store.decide(scope, rows))
        assert await client.hlen(pairs) == await client.zcard(due) == 50
        # within the pair interval the entry holds: the same pair waits
        again = await store.decide(scope, [Row(number, _recipient(3), F_TEMPLATE, 1000, T0 + 60)])
        assert again[0][:3] == (RETRY_LATER, PAIR_RATE, T0 + 3 + 6_000)
        later = T0 + 6_048  # every TAT but the last recipient's (T0 + 49 + 6 000) is past
        got = await store.decide(scope, [Row(number, _recipient(99), F_TEMPLATE, 1000, later)])
        assert got[0].decision == ADMIT
        left = {f.decode() for f in await client.hkeys(pairs)}
        assert left == {f"a:{_recipient(49)}", f"a:{_recipient(99)}"}
        assert {m.decode() for m in await client.zrange(due, 0, -1)} == left
        usage = await store.usage(scope, later, 1000)
        assert usage.used_24h == 51  # the scope entries stay
        await store.aclose()

    asyncio.run(main())


def test_two_sidecars_on_a_cluster_never_pass_the_limit(redis_cluster: str) -> None:
    """Two clients of a three-master Cluster race over 40 recipients of one scope in
    batches made concurrently: the union admitted is exactly the limit in each of
    three scopes, each scope's keys in its own Cluster slot."""
    scopes = [ScopeSpec(f"pf-{uuid.uuid4().hex}") for _ in range(3)]

    async def main() -> None:
        sidecars = [await connect(parse_store(redis_cluster), timeout=SLACK) for _ in range(2)]
        admitted: list[set[int]] = [set() for _ in scopes]
        for at in range(0, 40, 4):
            waves = []
            for k, scope in enumerate(scopes):
                for w, s in enumerate(sidecars):
                    rows = [
                        Row(FAST[w], _recipient((r * 7 + w * 13) % 40), F_TEMPLATE, 17, T0 + at)
                        for r in range(at, at + 4)
                    ]
                    waves.append((k, rows, s.decide(scope, rows)))
            for k, rows, fut in waves:
                for r, d in zip(rows, await fut, strict=True):
                    if d.decision == ADMIT:
                        admitted[k].add(r.recipient)
        assert [len(a) for a in admitted] == [17, 17, 17]
        slots = {await sidecars[0].client.cluster_keyslot(s.fixed_keys()[0]) for s in scopes}
        assert len(slots) == 3
        for s in sidecars:
            await s.aclose()

    asyncio.run(main())


def test_decisions_go_on_after_a_cluster_master_fails_over(
    failover_cluster: tuple[str, list[RedisProcess]],
) -> None:
    """The master holding a scope's slot killed: calls fail (StoreUnavailableError,
    within their bound) until its replica takes over, then decisions go on there,
    with the counts replicated before the kill."""
    url, nodes = failover_cluster
    scope = ScopeSpec(f"pf-{uuid.uuid4().hex}")

    async def main() -> None:
        store = await connect(parse_store(url), timeout=1.0)
        rows = [Row(FAST[0], _recipient(i), F_TEMPLATE, 5, T0 + i) for i in range(3)]
        assert [d.used for d in await store.decide(scope, rows)] == [1, 2, 3]
        master = store.client.get_node_from_key(scope.fixed_keys()[0])
        synced = time.monotonic() + 20  # the replica's first sync may still be running
        while await store.client.execute_command("WAIT", 1, 500, target_nodes=master) < 1:
            assert time.monotonic() < synced, "the replica never caught up"
        (victim,) = [n for n in nodes if n.port == master.port]
        victim.stop(kill=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                got = await store.decide(
                    scope, [Row(FAST[0], _recipient(9), F_TEMPLATE, 5, T0 + 9)]
                )
                break
            except StoreUnavailableError:
                if time.monotonic() > deadline:
                    alive = next(n for n in nodes if n is not victim)
                    nodes_now = alive.cli("CLUSTER", "NODES")
                    raise AssertionError("no replica took over:\n" + nodes_now) from None
                await asyncio.sleep(0.2)
        assert got[0].decision == ADMIT and got[0].used == 4
        await store.aclose()

    asyncio.run(main())
