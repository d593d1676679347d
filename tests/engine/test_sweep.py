"""The reclaim at a table's nominal fill is a sweep, one step per insert, in both engines.

When an insert finds a table at its nominal fill (70 %), a sweep of its
expired entries begins: that insert and the next ones each drop the expired
entries of one part of the keys' hashes (a sixteenth of the nominal capacity's
steps in all), and the capacity doubles after the last step unless the table
is then below half its fill. These tests drive both engines through many
sweeps of small tables, with decisions, releases, opt-outs, marketing records,
reclaims, snapshots, copies and restores landing mid-sweep and mid-growth, and
compare every answer and state; format 5 snapshots (no sweep) still read.
"""

from __future__ import annotations

import random
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.old_formats import as_format_5
from engine.walks import Sent, walk_step
from tiergate.engine import IMPLEMENTATION, DecisionBatch, PyEngine
from tiergate.engine import constants as c
from tiergate.engine.reference.snapshot import _TABLE
from tiergate.engine.reference.tables import Sweep, mix, sweep_steps

if IMPLEMENTATION != "compiled":
    pytest.skip(
        "differential tests need the compiled engine (TIERGATE_NO_EXTENSIONS=1 or build missing)",
        allow_module_level=True,
    )

from tiergate._native.engine import Engine as CEngine

HOUR = 3_600_000
DAY = 24 * HOUR
T0 = 1_780_000_000_000
OUTPUTS = ("decision", "reason", "retry_at", "counted", "used", "prev_counted", "slot")
#: An engine whose scope entries expire two hours after their last count
#: (a one-hour window of 10-minute buckets; 7-day rings of one hour).
SHORT = (600_000, HOUR, HOUR, HOUR)
#: What a random walk does at each step (decisions most often).
OPS = ["decide"] * 4 + ["release", "opt", "snap", "copy", "restore", "reclaim", "window"]


def _pair(pair_interval: int = 60_000) -> list[Any]:
    engines: list[Any] = [CEngine(*SHORT), PyEngine(*SHORT)]
    for e in engines:
        e.add_scope(2, HOUR)
        e.add_number(0, 1, 1 << 20, pair_interval, 3)
    return engines


def _copy(e: Any) -> Any:
    return e.copy(CEngine.copy_room(e.copy_sizes()))


def _same(engines: list[Any], keys: list[int]) -> bytes:
    assert engines[0].entries() == engines[1].entries()
    assert engines[0].sweeps() == engines[1].sweeps()
    for key in keys:
        assert engines[0].lookup(0, 0, key) == engines[1].lookup(0, 0, key), key
    data: bytes = engines[0].snapshot()
    assert data == engines[1].snapshot()
    return data


def test_the_reference_sweeps_each_part_of_the_hashes_once() -> None:
    # Step b visits exactly the keys whose hash lies in the b-th part, those
    # present when the sweep began and those inserted since into parts not
    # swept yet.
    keys = list(range(1, 2_001))
    sweep = Sweep(keys, 8, 0)
    visited: list[int] = []
    for b in range(8):
        part = sweep.keys.get(b, [])
        assert all((mix(k) * 8) >> 64 == b for k in part)
        visited += part
        if b == 3:
            sweep.add(5_000)  # part 4 or later: swept; earlier: not
        sweep.step({})
    assert sorted(visited) == keys
    assert sweep_steps(16) == 1 and sweep_steps(4096) == 256
    assert sweep_steps(4096, number=True) == 1 and sweep_steps(1 << 16, number=True) == 4096


def test_a_sweep_spreads_over_inserts_and_drops_what_expired() -> None:
    # 3 000 recipients counted, then two hours later new ones: the fill that
    # comes next begins a sweep whose steps each drop a few expired entries;
    # marketing records go with their recipients. Snapshots, copies and
    # restores taken mid-sweep go on like the original. (Number entries held
    # ten days: a number table this small sweeps in one step.)
    engines = _pair(pair_interval=10 * DAY)
    rnd = random.Random(7)
    old = [1_000_000 + 3 * i for i in range(3_000)]
    for i, key in enumerate(old):
        flags = c.F_TEMPLATE | c.F_MARKETING if i % 3 == 0 else c.F_TEMPLATE
        d = [e.decide(T0 + i, 0, 0, key, flags, c.UNLIMITED) for e in engines]
        assert d[0] == d[1]
    now = T0 + 3 * HOUR
    drops: list[int] = []
    mid = 0
    for i in range(6_000):
        key = 5_000_000 + 7 * i
        before = engines[0].entries()
        d = [e.decide(now + i, 0, 0, key, c.F_TEMPLATE, c.UNLIMITED) for e in engines]
        assert d[0] == d[1], i
        dropped = before + 2 - engines[0].entries()  # a scope and a number entry added
        if dropped:
            drops.append(dropped)
        if engines[0].sweeps() and i % 97 == 0:
            mid += 1
            data = _same(engines, rnd.sample(old, 20))
            copy = _copy(engines[0])
            restored = [CEngine.restore(data), PyEngine.restore(data)]
            for j in range(300):
                args = (now + i + j, 0, 0, 9_000_000 + j, c.F_TEMPLATE, c.UNLIMITED)
                answers = {tuple(e.decide(*args)) for e in [copy, *restored]}
                assert len(answers) == 1
            assert copy.snapshot() == restored[0].snapshot() == restored[1].snapshot()
    assert mid >= 5
    assert sum(drops) >= 3_000  # every old scope entry went
    assert max(drops) < 200  # a step at a time, never the table at once
    _same(engines, old)


def test_sweeps_inside_growths_and_reclaims_inside_sweeps_agree() -> None:
    # New recipients one at a time, the clock jumping three hours every 3 000:
    # growths and sweeps overlap, and snapshots and copies taken then hold
    # both; then batches of repeated and new recipients, with explicit
    # reclaims landing in sweeps.
    engines = _pair(pair_interval=HOUR)
    rnd = random.Random(11)
    now = T0
    both = reclaims = 0
    for i in range(30_000):
        now += 1 if i % 3_000 else 3 * HOUR
        args = (now, 0, 0, 10_000_000 + 3 * i, c.F_TEMPLATE | c.F_MARKETING * (i % 2), 5_000)
        assert engines[0].decide(*args) == engines[1].decide(*args), i
        if engines[0].sweeps() and engines[0].growth_bytes():
            both += 1
            data = _same(engines, [10_000_000 + 3 * rnd.randrange(i + 1) for _ in range(10)])
            assert _copy(engines[0]).snapshot() == data
    assert both > 0
    keys = [2_000_000 + 5 * i for i in range(20_000)]
    for step in range(80):
        batches = [DecisionBatch() for _ in engines]
        for j in range(rnd.choice([100, 400, 700])):
            now += rnd.choice([1, 1, 1_000, 60_000])
            key = rnd.choice(keys[: 1_000 + 240 * step])
            flags = rnd.choice([c.F_TEMPLATE, c.F_TEMPLATE | c.F_MARKETING])
            for b in batches:
                b.add(now, 0, 0, key, flags, 5_000, j + 1)
        for e, b in zip(engines, batches, strict=True):
            e.decide_batch(b)
        for name in OUTPUTS:
            assert getattr(batches[0], name) == getattr(batches[1], name), (step, name)
        if step % 7 == 3:
            now += rnd.choice([HOUR, 3 * HOUR])
        if step % 5 == 2 and engines[0].sweeps():
            reclaims += 1
            assert engines[0].reclaim(now) == engines[1].reclaim(now)
    assert reclaims > 0
    _same(engines, keys[::97])


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 1_499),  # recipient index
            st.sampled_from([c.F_TEMPLATE, c.F_TEMPLATE, c.F_TEMPLATE | c.F_MARKETING, 0]),
            st.sampled_from([1, 1, 1, 1_000, 600_000, HOUR, 3 * HOUR]),  # clock step
            st.sampled_from(OPS),
        ),
        min_size=50,
        max_size=1_500,
    )
)
def test_random_walks_through_sweeps_agree(ops: list[tuple[int, int, int, str]]) -> None:
    engines = _pair()
    now = T0
    sent: Sent = []
    for idx, flags, step, op in ops:
        now += step
        key = 3_000_000 + 11 * idx
        if op == "copy" and idx % 4 == 0:
            engines[0] = _copy(engines[0])  # the compiled engine goes on from its copy
        elif op == "restore" and idx % 4 == 0:
            data = engines[1].snapshot()
            engines[:] = [CEngine.restore(data), PyEngine.restore(data)]
        elif op == "window":
            for e in engines:
                e.open_window(0, key, now + (idx % 3 - 1) * HOUR, now)
        else:
            walk_step(engines, op, idx, key, flags, now, sent, 700)
    _same(engines, [3_000_000 + 11 * i for i in range(0, 1_500, 23)])


def test_format_5_snapshots_still_read_and_both_engines_agree() -> None:
    engines = _pair()
    for e in engines:
        e.set_warmup(0, 50)
    for i in range(200):
        d = [e.decide(T0 + i, 0, 0, 1_000 + i, c.F_TEMPLATE, c.UNLIMITED) for e in engines]
        assert d[0] == d[1]
    data = _same(engines, [])
    assert struct.unpack_from("<I", data, 8)[0] == 6
    old = as_format_5(data)
    assert len(old) == len(data) - 16 * 2  # one scope table, one number table
    for cls in (PyEngine, CEngine):
        assert cls.restore(old).snapshot() == data


@pytest.mark.parametrize("cls", [PyEngine, CEngine])
def test_a_snapshot_with_a_sweep_past_its_steps_is_refused(cls: type[Any]) -> None:
    e = cls(*SHORT)
    e.add_scope()
    data = bytearray(e.snapshot())
    at = len(data) - _TABLE.size  # the scope's empty table: capacity 16, one step
    assert _TABLE.unpack_from(data, at) == (16, 0, 0, 0)
    struct.pack_into("<Q", data, at + 16, 1)
    with pytest.raises(ValueError, match="table capacity"):
        cls.restore(bytes(data))
