"""The compiled engine and the pure-Python reference agree at the edges: rings of
any geometry, extreme times and parameters, recipient keys and slot stamps out of
range, long batches, table growth, reclaim and prefetching (the random walks and
the state machine are test_differential.py's)."""

from __future__ import annotations

import random
from array import array
from typing import Any

import pytest

from tiergate.engine import IMPLEMENTATION, NEVER, DecisionBatch, PyEngine
from tiergate.engine import constants as c

if IMPLEMENTATION != "compiled":
    pytest.skip(
        "differential tests need the compiled engine (TIERGATE_NO_EXTENSIONS=1 or build missing)",
        allow_module_level=True,
    )

from tiergate._native.engine import Engine as CEngine

DAY = 86_400_000
OUTPUTS = ("decision", "reason", "retry_at", "counted", "used", "prev_counted", "slot")


@pytest.mark.parametrize(
    ("bucket", "window"),
    [(1, 50), (7, 1_000), (60_000, DAY), (1 << 33, 1 << 35), (3, 3_001)],
)
def test_rings_of_any_bucket_width_agree(bucket: int, window: int) -> None:
    """Rings of 1 ms to 2**33 ms buckets: counted sends, releases and refusals at
    times spread around, behind and far beyond the window give the same answers,
    usage and state in both engines."""
    rnd = random.Random(bucket)
    engines: list[Any] = [
        CEngine(bucket, window, bucket, window),
        PyEngine(bucket, window, bucket, window),
    ]
    for e in engines:
        e.add_scope()
        e.add_number(0, 1, 1 << 20, 1, 1 << 20)
    now, sent = -(1 << 49), []
    for _ in range(3_000):
        now += rnd.choice([0, 1, bucket - 1, bucket, window // 3, window, 5 * window])
        key = 1 + rnd.randrange(300)
        if rnd.random() < 0.1 and sent:
            args = sent.pop(rnd.randrange(len(sent)))
            assert engines[0].release(*args) == engines[1].release(*args)
            continue
        limit = rnd.choice([3, 50, c.UNLIMITED])
        d = [e.decide(now, 0, 0, key, c.F_TEMPLATE, limit) for e in engines]
        assert d[0] == d[1]
        if d[0][0] == c.ADMIT and d[0][3]:
            sent.append((0, key, d[0][6], d[0][5]))
        assert engines[0].usage(0, now, limit) == engines[1].usage(0, now, limit)
    assert engines[0].snapshot() == engines[1].snapshot()


@pytest.mark.parametrize(("bucket", "window"), [(60_000, DAY), (7, 100), (1_000, 3_000)])
def test_rings_stepped_a_bucket_at_a_time_agree(bucket: int, window: int) -> None:
    """Time moving on by about one bucket per call, for several windows: the ring
    drops the bucket that leaves the window on each step (the compiled engine
    steps without dividing there), and usage, retry times and state agree."""
    rnd = random.Random(window)
    engines: list[Any] = [
        CEngine(bucket, window, bucket, 7 * window),
        PyEngine(bucket, window, bucket, 7 * window),
    ]
    for e in engines:
        e.add_scope()
        e.add_number(0, 1, 1 << 20, 1, 1 << 20)
    now, limit = 3 * window + rnd.randrange(bucket), 1 + window // bucket // 3
    steps = [1, bucket // 2, bucket - 1, bucket, bucket, bucket + 1, 2 * bucket]
    for step in range(4 * (window // bucket + 2) * 8):
        now += rnd.choice(steps) if step % 97 else 3 * window
        key = 1 + rnd.randrange(4 * limit)
        answers = [e.decide(now, 0, 0, key, c.F_TEMPLATE, limit) for e in engines]
        assert answers[0] == answers[1], step
        assert engines[0].usage(0, now, limit) == engines[1].usage(0, now, limit), step
        if step % 500 == 499:
            data = engines[0].snapshot()
            assert data == engines[1].snapshot()
            engines = [CEngine.restore(data), PyEngine.restore(data)]
    assert engines[0].snapshot() == engines[1].snapshot()


def test_extreme_times_and_params_agree_without_overflow() -> None:
    edge = 1 << 50
    engines: list[Any] = [CEngine(), PyEngine()]
    for e in engines:
        e.add_scope(4, edge)
        e.add_number(0, 1 << 40, 1 << 12, 1 << 40, 1 << 12)  # tolerances of 2**52
        e.add_number(0, 1, 1, 1, 1)
    calls: list[tuple[str, tuple[Any, ...]]] = [
        ("decide", (-edge, 0, 0, 9, c.F_TEMPLATE | c.F_MARKETING, c.UNLIMITED)),
        ("slow_throughput", (0, edge, edge)),
        ("slow_throughput", (1, edge, edge)),
        ("take_throughput", (0, edge)),
        ("take_throughput", (1, -edge)),
        ("decide", (edge, 0, 0, 9, c.F_TEMPLATE | c.F_MARKETING, c.UNLIMITED)),
        ("decide", (edge, 0, 1, 8, c.F_TEMPLATE, 1)),
        ("decide", (edge, 0, 1, 7, c.F_TEMPLATE | c.F_FORCE, 1)),
        ("open_window", (1, 7, edge, edge)),
        ("hold_pair", (1, 7, edge)),
        ("hold_pair", (0, 9, -edge)),
        ("hold_pair", (0, 10, edge)),
        ("decide", (edge, 0, 1, 7, c.F_TEMPLATE, 1)),
        ("decide", (edge, 0, 0, 10, c.F_TEMPLATE, c.UNLIMITED)),
        ("usage", (0, edge, 1)),
        ("usage", (0, edge, c.UNLIMITED)),
        ("reclaim", (edge,)),
        ("release", (0, 7, 4, -edge)),
        ("lookup", (0, 1, 7)),
        ("entries", ()),
    ]
    for i in range(300):
        calls.append(("decide", (edge, 0, 0, 100 + i, c.F_TEMPLATE | c.F_FORCE, 1)))
    for name, args in calls:
        answers = [getattr(e, name)(*args) for e in engines]
        assert answers[0] == answers[1], (name, args)
    assert engines[0].snapshot() == engines[1].snapshot()


def test_snapshots_sort_any_recipient_keys_alike() -> None:
    import random

    rnd = random.Random(7)
    keys = {rnd.getrandbits(rnd.choice([8, 30, 50, 53, 54])) or 1 for _ in range(5_000)}
    engines: list[Any] = [CEngine(), PyEngine()]
    for e in engines:
        e.add_scope()
        e.add_number(0)
        for k in keys:
            e.set_opt_out(0, k, True)
            e.open_window(0, k, 10, NEVER)
    data = engines[0].snapshot()
    assert data == engines[1].snapshot()
    assert CEngine.restore(data).snapshot() == data
    assert engines[0].entries() == 2 * len(keys)


@pytest.mark.parametrize("key", [0, 1 << 54, 1 << 62, (1 << 64) - 1])
def test_both_refuse_keys_outside_the_recipient_range(key: int) -> None:
    for cls in (CEngine, PyEngine):
        e = cls()
        e.add_scope()
        e.add_number(0)
        before = e.snapshot()
        for name, args in (
            ("decide", (0, 0, 0, key, c.F_TEMPLATE, 10)),
            ("set_opt_out", (0, key, True)),
            ("open_window", (0, key, 10, NEVER)),
        ):
            with pytest.raises((ValueError, OverflowError), match="recipient"):
                getattr(e, name)(*args)
        b = DecisionBatch()
        b.now, b.scope, b.number = array("q", [0]), array("i", [0]), array("i", [0])
        b.recipient, b.flags = array("Q", [key]), array("I", [c.F_TEMPLATE])
        b.limit, b.ticket = array("q", [10]), array("Q", [1])
        with pytest.raises(ValueError, match="batch item 0: recipient key"):
            e.decide_batch(b)
        assert e.snapshot() == before


@pytest.mark.parametrize(
    "bogus",
    [
        # "stamp": the stamp the admit answered; +/- n: that stamp moved by n
        (0, 5, 2, NEVER),  # a stamp never given
        (0, 0, "stamp", NEVER),
        (0, 5, 0, NEVER),
        (0, 1 << 64, "stamp", NEVER),
        (0, 5, 1 << 64, NEVER),
        (0, 5, -3, NEVER),
        (0, -5, "stamp", NEVER),
        (0, 5, "stamp", 1 << 70),
        (0, 5, "stamp", -(1 << 70)),
        (0, 5, "stamp", 10_000),  # later than the slot
        (0, 5, ("stamp", 1), NEVER),  # the next generation
        (0, 5, ("stamp", -1), NEVER),  # generation 0: before any slot
        (0, 5, ("stamp", 1 << 11), NEVER),  # one millisecond later
        (0, 5, ("stamp", -(1 << 11)), NEVER),  # one millisecond earlier
        (0, 5, (1 << 64) - 1, NEVER),  # a time past 2**50
    ],
)
def test_both_release_nothing_for_a_slot_they_never_gave(bogus: tuple[Any, ...]) -> None:
    for cls in (CEngine, PyEngine):
        e = cls()
        e.add_scope()
        e.add_number(0)
        stamp = e.decide(1_000, 0, 0, 5, c.F_TEMPLATE, 10)[6]
        assert stamp == ((1_000 + (1 << 50)) << 11) | 1
        args = [
            stamp if a == "stamp" else stamp + a[1] if isinstance(a, tuple) else a for a in bogus
        ]
        before = e.snapshot()
        assert e.release(*args) is False
        assert e.snapshot() == before
        assert e.release(0, 5, stamp, NEVER) is True


def test_a_slot_created_again_in_the_same_millisecond_is_not_the_released_one() -> None:
    """Created, released and created again within one millisecond: the two slots
    share a time, and the first one's stamp (a duplicate FAILED) must not release
    the second."""
    for cls in (CEngine, PyEngine):
        e = cls()
        e.add_scope()
        e.add_number(0, 1, 1 << 20, 1, 1 << 20)
        first = e.decide(1_000, 0, 0, 5, c.F_TEMPLATE, 10)
        assert e.release(0, 5, first[6], first[5]) is True
        again = e.decide(1_000, 0, 0, 5, c.F_TEMPLATE, 10)
        assert again[3] == 1 and again[6] != first[6]
        assert e.release(0, 5, first[6], first[5]) is False
        assert e.usage(0, 1_000, 10)[0] == 1
        assert e.release(0, 5, again[6], again[5]) is True
        assert e.usage(0, 1_000, 10)[0] == 0


def test_slot_generations_wrap_without_zero() -> None:
    """Every slot creation of one recipient moves its generation on, 2 047 of them
    and round again (never 0), in both engines alike."""
    engines: list[Any] = [CEngine(), PyEngine()]
    for e in engines:
        e.add_scope()
        e.add_number(0, 1, 1 << 20, 1, 1 << 20)
    gens = []
    for _ in range(2_050):
        d = [e.decide(7, 0, 0, 5, c.F_TEMPLATE, 10) for e in engines]
        assert d[0] == d[1]
        gens.append(d[0][6] & 2047)
        assert all(e.release(0, 5, d[0][6], d[0][5]) for e in engines)
    assert gens[:3] == [1, 2, 3] and gens[2046:2049] == [2047, 1, 2]
    assert engines[0].snapshot() == engines[1].snapshot()


def test_long_batches_agree_across_load_chunks_and_table_growth() -> None:
    # decide_batch fetches table lines some items ahead of the one it decides
    # (the compiled engine, BATCH_AHEAD = 16); batches shorter and longer than
    # that, tables that grow mid-batch (making fetched addresses stale),
    # repeats close together and several scopes and numbers must all give the
    # reference's answers item by item.
    rnd = random.Random(7)
    engines = [CEngine(), PyEngine()]
    for e in engines:
        for _ in range(2):
            e.add_scope(2, DAY)
        e.add_number(0, 1, 1 << 20, 1, 1 << 10)
        e.add_number(1, 1, 1 << 20, 5_000, 2)
        e.add_number(0, 1, 1 << 20, 1, 1 << 10)
    keys = [c.recipient_key(str(15_551_000_000 + rnd.randrange(700))) for _ in range(2_500)]
    kinds = [c.F_TEMPLATE, c.F_TEMPLATE | c.F_MARKETING, 0, c.F_TEMPLATE | c.F_DRY_RUN]
    now = 1_780_000_000_000
    for size in (1, 15, 16, 17, 63, 64, 65, 200, 1_000, 1_157):
        items = [
            (
                now + 10 * i,
                rnd.randrange(2),
                rnd.randrange(3),
                rnd.choice(keys),
                rnd.choice(kinds),
                rnd.choice([3, 400, c.UNLIMITED]),
            )
            for i in range(size)
        ]
        now += 10 * size + rnd.randrange(DAY)
        outs = []
        for e in engines:
            b = DecisionBatch()
            for i, (t, scope, number, key, flags, limit) in enumerate(items):
                b.add(t, scope, number, key, flags, limit, size * 10_000 + i + 1)
            e.decide_batch(b)
            outs.append([list(getattr(b, col)) for col in OUTPUTS])
        assert outs[0] == outs[1], size
    assert engines[0].snapshot() == engines[1].snapshot()


_M64 = (1 << 64) - 1
_MIX_ADD, _MIX_M1, _MIX_M2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _mix(k: int) -> int:
    """The compiled engine's slot hash (splitmix64's finalizer)."""
    k = (k + _MIX_ADD) & _M64
    k = ((k ^ (k >> 30)) * _MIX_M1) & _M64
    k = ((k ^ (k >> 27)) * _MIX_M2) & _M64
    return k ^ (k >> 31)


def _unmix(h: int) -> int:
    """The key whose ``_mix`` is ``h``."""

    def unshift(x: int, s: int) -> int:
        y = x
        for _ in range(64 // s + 1):
            y = x ^ (y >> s)
        return y

    k = (unshift(h, 31) * pow(_MIX_M2, -1, 1 << 64)) & _M64
    k = (unshift(k, 27) * pow(_MIX_M1, -1, 1 << 64)) & _M64
    return (unshift(k, 30) - _MIX_ADD) & _M64


def test_keys_sharing_one_home_slot_agree() -> None:
    # Keys whose hashes sit in the top or bottom 1/1024 of the range have
    # their homes in the last or first 1/1024 of the slots of any table: one
    # Robin Hood run of hundreds of entries that wraps around the end, with
    # distances past what an entry stores (255) and homes that differ.
    # Inserts, lookups, growth and in-place reclaim over it, among ordinary
    # keys, answer as the reference does.
    rnd = random.Random(3)
    crowd: list[int] = []
    while len(crowd) < 320:
        h = rnd.randrange(1 << 54)
        if len(crowd) % 2:
            h = _M64 - h
        key = _unmix(h)
        if 0 < key < 1 << 54:  # the keys an engine takes
            assert _mix(key) == h
            crowd.append(key)
    others = [c.recipient_key(str(4_915_000_000 + i)) for i in range(3_500)]
    engines = [CEngine(), PyEngine()]
    for e in engines:
        e.add_scope(2, DAY)
        e.add_number(0, 1, 1 << 20, 2_000, 2)
    now = 1_780_000_000_000
    for i in range(14_000):
        now += rnd.choice([1, 1, 2, 300, 2_500])
        key = rnd.choice(crowd) if rnd.random() < 0.4 else rnd.choice(others)
        flags = rnd.choice([c.F_TEMPLATE, c.F_TEMPLATE, c.F_TEMPLATE | c.F_MARKETING, 0])
        if i % 11 == 0:
            for e in engines:
                e.open_window(0, key, now + 4_000, NEVER)
            continue
        answers = [e.decide(now, 0, 0, key, flags, c.UNLIMITED) for e in engines]
        assert answers[0] == answers[1], i
        if i % 1_000 == 0:
            assert engines[0].entries() == engines[1].entries(), i
    for e in engines:
        e.reclaim(now + 10_000)
    assert [engines[0].lookup(0, 0, k) for k in crowd] == [
        engines[1].lookup(0, 0, k) for k in crowd
    ]
    assert engines[0].snapshot() == engines[1].snapshot()


def test_a_reclaim_into_fewer_slots_with_a_run_wrapping_the_end_agrees() -> None:
    # A reclaim drops most of a big scope table, and its survivors go to far
    # fewer slots: ordinary keys land near the start, then keys whose homes
    # are the very last slot wrap around the end onto them and push them on.
    # Every survivor is still found, as in the reference.
    rnd = random.Random(5)
    crowd: list[int] = []
    while len(crowd) < 300:
        key = _unmix(_M64 - rnd.randrange(1 << 52))
        if 0 < key < 1 << 54:
            crowd.append(key)
    others = [c.recipient_key(str(4_916_000_000 + i)) for i in range(8_000)]
    kept = others[::97]
    engines = [CEngine(), PyEngine()]
    for e in engines:
        e.add_scope()
        e.add_number(0, 1, 1 << 20, 1, 1 << 20)
    now = 1_780_000_000_000
    for key in others + crowd:
        now += 1
        answers = [e.decide(now, 0, 0, key, c.F_TEMPLATE, c.UNLIMITED) for e in engines]
        assert answers[0] == answers[1]
    now += 8 * DAY
    for key in kept + crowd:
        now += 1
        answers = [e.decide(now, 0, 0, key, c.F_TEMPLATE, c.UNLIMITED) for e in engines]
        assert answers[0] == answers[1]
    dropped = [e.reclaim(now) for e in engines]
    assert dropped[0] == dropped[1] > len(others) - len(kept)  # and expired number entries
    assert engines[0].entries() == engines[1].entries()
    for key in others + crowd:
        assert engines[0].lookup(0, 0, key) == engines[1].lookup(0, 0, key)
    assert all(engines[0].lookup(0, 0, key)[0] != NEVER for key in kept + crowd)
    assert engines[0].snapshot() == engines[1].snapshot()


def test_tables_grow_into_slots_prepared_ahead_and_give_all_memory_back() -> None:
    # From three quarters full, a table whose next slots get their own mapping
    # holds them ahead and touches them a few pages per insert; its growth
    # then takes them. A reclaim that rebuilds into another size drops them.
    # Answers stay the reference's through both, and once the engine is gone
    # every byte its tables held is given back.
    from tiergate._native.engine import table_bytes_held

    held = table_bytes_held()
    engines: list[Any] = [CEngine(), PyEngine()]
    for e in engines:
        e.add_scope()
        e.add_number(0, 1, 1 << 20, 3_600_000, 1)  # number entries live an hour
    now = 1_780_000_000_000
    spares = []

    def admit(first: int, count: int) -> None:
        nonlocal now
        for lo in range(first, first + count, 5_000):
            batches = [DecisionBatch() for _ in engines]
            for i in range(lo, lo + 5_000):
                now += 1
                for b in batches:
                    b.add(now, 0, 0, 4_917_000_000 + i, c.F_TEMPLATE, c.UNLIMITED, i + 1)
            for e, b in zip(engines, batches, strict=True):
                e.decide_batch(b)
            for name in OUTPUTS:
                assert getattr(batches[0], name) == getattr(batches[1], name), (lo, name)
            spares.append(engines[0].spare_bytes()[0])

    admit(0, 95_000)  # both tables past three quarters of 121 075 slots
    spare, touched = engines[0].spare_bytes()
    assert spare >= 193_722 * (16 + 32)  # the next sizes of both tables
    # touched in step: 95 000 is about 69 % of the way from three quarters
    # full to four fifths
    assert 0.6 * spare < touched < 0.8 * spare
    now += 8 * DAY
    dropped = [e.reclaim(now) for e in engines]
    assert dropped[0] == dropped[1] == 2 * 95_000
    assert engines[0].spare_bytes() == (0, 0)
    admit(95_000, 250_000)  # grows through 121 075 and 193 720 slots on spares
    assert 0 in spares[-40:] and max(spares[-40:]) > 0
    assert engines[0].entries() == engines[1].entries()
    for key in range(4_917_000_000, 4_917_000_000 + 345_000, 997):
        assert engines[0].lookup(0, 0, key) == engines[1].lookup(0, 0, key)
    assert engines[0].snapshot() == engines[1].snapshot()
    engines.clear()  # frees both engines
    assert table_bytes_held() == held
    # an engine freed while its tables hold spares gives those back too
    alone = CEngine()
    alone.add_scope()
    alone.add_number(0, 1, 1 << 20, 3_600_000, 1)
    batch = DecisionBatch()
    for i in range(95_000):
        batch.add(now + i, 0, 0, 4_918_000_000 + i, c.F_TEMPLATE, c.UNLIMITED, i + 1)
    alone.decide_batch(batch)
    assert alone.spare_bytes()[0] > 0
    del alone
    assert table_bytes_held() == held


def test_batches_over_tables_too_big_to_stay_cached_agree() -> None:
    # Past SMALL_SLOTS the compiled engine prefetches table lines ahead of the
    # item it decides; growth and in-place reclaim of big tables happen
    # between the prefetch and the decision. Answers stay the reference's.
    rnd = random.Random(5)
    engines = [CEngine(), PyEngine()]
    for e in engines:
        e.add_scope(2, DAY)
        e.add_number(0, 1, 1 << 20, 2_000, 3)
    first = c.recipient_key("4930000000000")
    now = 1_780_000_000_000
    for k in range(36):
        size = rnd.choice([999, 1_000, 1_017])
        items = [
            (
                now + 3 * i,
                first + (rnd.randrange(24_000 + 1_500 * k) if rnd.random() < 0.9 else 10**7 + i),
                rnd.choice([c.F_TEMPLATE, c.F_TEMPLATE, c.F_TEMPLATE | c.F_MARKETING, 0]),
            )
            for i in range(size)
        ]
        now += 3 * size + rnd.choice([1, 60_000, DAY // 3])
        outs = []
        for e in engines:
            b = DecisionBatch()
            for i, (t, key, flags) in enumerate(items):
                b.add(t, 0, 0, key, flags, c.UNLIMITED, k * 10_000 + i + 1)
            e.decide_batch(b)
            outs.append([list(getattr(b, col)) for col in OUTPUTS])
        assert outs[0] == outs[1], k
    assert engines[0].batch_prefetch()  # the batches above ran with prefetching on
    assert engines[0].entries() == engines[1].entries()
    assert engines[0].snapshot() == engines[1].snapshot()


def test_batch_prefetch_follows_all_of_an_engines_tables() -> None:
    # Many senders' tables, each small enough for the caches on its own, do not
    # fit together: decide_batch must prefetch for them as for one big table.
    # Another engine in the same process does not count.
    alone = CEngine()
    alone.add_scope()
    alone.add_number(0, 1, 1 << 20, 1, 1 << 20)
    many = CEngine()
    first = c.recipient_key("5500000000000")
    now = 1_780_000_000_000
    b = DecisionBatch()
    for s in range(20):
        many.add_scope()
        many.add_number(s, 1, 1 << 20, 1, 1 << 20)
    for i in range(20 * 4_000):
        b.add(now, i % 20, i % 20, first + i, c.F_TEMPLATE, c.UNLIMITED, i + 1)
    assert not many.batch_prefetch()
    many.decide_batch(b)
    assert many.batch_prefetch()
    b = DecisionBatch()
    for i in range(1_000):
        b.add(now, 0, 0, first + i, c.F_TEMPLATE, c.UNLIMITED, i + 1)
    alone.decide_batch(b)
    assert not alone.batch_prefetch()
    assert list(b.decision) == [c.ADMIT] * 1_000


def test_scope_at_its_limit_answers_alike_while_the_ring_changes() -> None:
    """A scope held at its messaging limit for days: each refusal's retry time comes
    from the oldest counted bucket, while sends, releases (which move a count back to
    an older bucket), window advances and a snapshot round trip change the ring."""
    rnd = random.Random(41)
    engines: list[Any] = [CEngine(), PyEngine()]
    for e in engines:
        e.add_scope()
        e.add_number(0, 1, 1, 1, 1)
    now, limit = 5 * DAY, 40
    sent: list[tuple[int, int, int, int]] = []
    for step in range(3_000):
        now += rnd.choice([1, 500, 20_000, 60_000, 7 * 60_000, 3_600_000])
        key = c.recipient_key(str(1_000 + rnd.randrange(400)))
        op = rnd.random()
        if op < 0.7:
            answers = [e.decide(now, 0, 0, key, c.F_TEMPLATE, limit) for e in engines]
            assert answers[0] == answers[1], step
            if answers[0][0] == c.ADMIT and answers[0][3]:
                sent.append((0, key, answers[0][6], answers[0][5]))
        elif op < 0.85 and sent:
            args = sent.pop(rnd.randrange(len(sent)))
            assert engines[0].release(*args) == engines[1].release(*args)
        elif op < 0.98:
            probe = rnd.choice([1, limit // 2, limit, limit + 3])
            assert engines[0].usage(0, now, probe) == engines[1].usage(0, now, probe), step
        else:
            data = engines[0].snapshot()
            assert data == engines[1].snapshot()
            engines = [CEngine.restore(data), PyEngine.restore(data)]
    assert engines[0].snapshot() == engines[1].snapshot()


def test_a_release_into_the_oldest_live_bucket_moves_the_retry_time() -> None:
    """A recipient counted again just as its last count leaves the window, then
    released: its count goes back to the oldest live minute, before every bucket a
    refusal's scan has seen, and the next refusal's retry time follows it."""
    answers = []
    for engine in (CEngine(), PyEngine()):
        engine.add_scope()
        engine.add_number(0, 1, 1, 1, 1)
        r, x, y = (c.recipient_key(d) for d in ("1555001", "1555002", "1555003"))
        t = 10 * DAY + 5_000
        engine.decide(t, 0, 0, r, c.F_TEMPLATE, 2)
        again = engine.decide(t + DAY + 1, 0, 0, r, c.F_TEMPLATE, 2)
        engine.decide(t + DAY + 1_000, 0, 0, x, c.F_TEMPLATE, 2)
        full = engine.usage(0, t + DAY + 1_000, 2)
        assert engine.release(0, r, again[6], again[5])
        refused = engine.decide(t + DAY + 2_000, 0, 0, y, c.F_TEMPLATE, 2)
        answers.append((again, full, refused, engine.usage(0, t + DAY + 2_000, 2)))
    assert answers[0] == answers[1]
    refused = answers[0][2]
    assert refused[:3] == (
        c.RETRY_LATER,
        c.MESSAGING_LIMIT,
        (10 * DAY // 60_000 + 1) * 60_000 + DAY,
    )
