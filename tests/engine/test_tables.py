"""Recipient tables: growth, reclamation, exact keys, snapshots, bad input.

Runs on the selected engine (``tiergate.engine.Engine``); sizes shrink for the
pure-Python twin so the run stays short.
"""

from __future__ import annotations

import struct
from array import array

import pytest

from engine.old_formats import as_format_5
from tiergate.engine import IMPLEMENTATION, NEVER, DecisionBatch, Engine, PyEngine
from tiergate.engine import constants as c
from tiergate.engine.reference import SNAPSHOT_VERSION

DAY = 86_400_000
WEEK = 7 * DAY
BIG = 1_100_000 if IMPLEMENTATION == "compiled" else 50_000


def _engine() -> Engine:
    e = Engine()
    e.add_scope(2, DAY)
    e.add_number(0, 1, 10**9, 1, 10**6)
    return e


def _batch(now: int, first_key: int, n: int, flags: int = c.F_TEMPLATE) -> DecisionBatch:
    """n requests at ``now`` to consecutive recipient keys, built column-wise."""
    b = DecisionBatch()
    b.now = array("q", [now]) * n
    b.scope = array("i", [0]) * n
    b.number = array("i", [0]) * n
    b.recipient = array("Q", range(first_key, first_key + n))
    b.flags = array("I", [flags]) * n
    b.limit = array("q", [c.UNLIMITED]) * n
    b.ticket = array("Q", range(1, n + 1))
    return b


def test_tables_grow_past_a_million_entries_without_losing_one() -> None:
    e = _engine()
    base = c.recipient_key("15550000000")
    e.decide_batch(b := _batch(1_000, base, BIG))
    assert set(b.decision) == {c.ADMIT} and sum(b.counted) == BIG
    assert e.entries() == 2 * BIG  # one scope entry and one number entry each
    assert e.usage(0, 1_000, c.UNLIMITED)[0] == BIG
    for key in (base, base + BIG // 2, base + BIG - 1):
        assert e.lookup(0, 0, key)[0] == 1_000
    assert e.lookup(0, 0, base + BIG)[0] == NEVER
    # every one is still tracked: repeats use no new slot
    e.decide_batch(b := _batch(2_000, base, BIG))
    assert sum(b.counted) == 0 and e.usage(0, 2_000, c.UNLIMITED)[0] == BIG


def test_reclaim_drops_expired_entries_and_keeps_answers() -> None:
    kept, swept = _engine(), _engine()
    keys = [c.recipient_key(str(4_915_100_000_000 + i)) for i in range(300)]
    for e in (kept, swept):
        for i, k in enumerate(keys):
            e.decide(i, 0, 0, k, c.F_TEMPLATE | (c.F_MARKETING if i % 2 else 0), 1_000)
        e.set_opt_out(0, keys[0], True)
        e.decide(3 * DAY, 0, 0, keys[1], c.F_TEMPLATE, 1_000)  # stays live
    before = swept.entries()
    # number entries hold only pair-rate TATs here, all passed: every one goes;
    # no scope entry is older than the horizon yet
    removed = swept.reclaim(WEEK)
    assert swept.entries() == len(keys) == before - removed
    later = 8 * DAY + 1
    removed = swept.reclaim(later)
    # every scope entry but the live and opted-out ones
    assert removed == len(keys) - 2
    assert swept.entries() == 2
    assert swept.lookup(0, 0, keys[0])[1] is True
    assert swept.lookup(0, 0, keys[1])[0] == 3 * DAY
    for i, k in enumerate(keys):
        flags = c.F_TEMPLATE | c.F_MARKETING
        a = kept.decide(later + i, 0, 0, k, flags, 1_000)
        b = swept.decide(later + i, 0, 0, k, flags, 1_000)
        assert a[:5] == b[:5]
    assert kept.usage(0, later + 400, 1_000) == swept.usage(0, later + 400, 1_000)


def test_number_entries_go_once_they_can_change_no_decision() -> None:
    """A number entry is reclaimed once its window, entry-point window and pair-rate
    TAT are all at or before the scope's clock; until then it stays, and dropping
    the passed ones changes no answer."""
    kept, swept = Engine(), Engine()
    keys = [c.recipient_key(str(4_915_200_000_000 + i)) for i in range(40)]
    for e in (kept, swept):
        e.add_scope()
        e.add_number(0, 1, 10**9, 6_000, 2)  # pair rate: 2 at once, then one per 6 s
        for i, k in enumerate(keys):
            # windows close 10 min after the send at minute i would happen
            if i % 4 == 0:
                e.open_window(0, k, 601_000 + 60_000 * i, NEVER)
            elif i % 4 == 1:
                e.open_window(0, k, NEVER, 601_000 + 60_000 * i)
            else:
                e.decide(1_000 + 60_000 * i, 0, 0, k, c.F_TEMPLATE, c.UNLIMITED)
    removed = swept.reclaim(0)  # (clamped to the scope's clock)
    now = swept.scope_now(0)
    assert 0 < removed < len(keys) and swept.entries() == kept.entries() - removed
    for k in keys:
        held, left = kept.lookup(0, 0, k)[2:], swept.lookup(0, 0, k)[2:]
        if left == (NEVER, NEVER, NEVER):
            assert all(t <= now for t in held)  # only passed entries went
        else:
            assert left == held
    for i, k in enumerate(keys):
        for flags in (c.F_FEP_FREE_FORM, 0, c.F_TEMPLATE):
            t = now + i
            assert kept.decide(t, 0, 0, k, flags, c.UNLIMITED) == swept.decide(
                t, 0, 0, k, flags, c.UNLIMITED
            )


def test_growth_reclaims_expired_entries_first() -> None:
    e = _engine()
    n = 5_000
    for week in range(6):
        now = week * (WEEK + DAY)
        e.decide_batch(_batch(now, 1_000_000 + week * n, n))
    # older weeks were reclaimed when the tables filled up; live ones never were
    assert e.entries() <= 2 * 2 * n
    assert e.usage(0, 5 * (WEEK + DAY), c.UNLIMITED)[0] == n


@pytest.mark.parametrize(
    "digits", ["1", "7", "15551234567", "999999999999999", "000000000000001", "+447700900123"]
)
def test_keys_of_1_to_15_digits_are_exact(digits: str) -> None:
    key = c.recipient_key(digits)
    assert c.recipient_digits(key) == digits.lstrip("+")
    e = _engine()
    assert e.decide(0, 0, 0, key, c.F_TEMPLATE, 10)[3] == 1
    assert e.lookup(0, 0, key)[0] == 0


def test_leading_zero_keys_are_distinct_recipients() -> None:
    keys = [c.recipient_key(d) for d in ("1", "01", "001", "0001", "10", "100")]
    assert len(set(keys)) == len(keys)
    e = _engine()
    for k in keys:
        assert e.decide(0, 0, 0, k, c.F_TEMPLATE, 10)[3] == 1
    assert e.usage(0, 0, 10)[0] == len(keys)


@pytest.mark.parametrize("bad", ["", "1234567890123456", "12a4", "+", "١٢٣"])
def test_bad_recipients_are_refused_by_name(bad: str) -> None:
    with pytest.raises(ValueError, match="recipient"):
        c.recipient_key(bad)


def _busy_engine(cls: type[PyEngine] | type[Engine] = Engine) -> PyEngine | Engine:
    e = cls(1_000, 60_000, 10_000, 300_000)
    e.add_scope(2, 5_000)
    e.add_scope()
    e.add_number(0, 1_000, 3, 10, 2)
    e.add_number(1)
    for i in range(400):
        k = 1 + (i * 37) % 90
        e.decide(i * 250, i % 2, i % 2, k, c.F_TEMPLATE | (i % 3 == 0) * c.F_MARKETING, 40)
        if i % 7 == 0:
            e.open_window(i % 2, k + 1, i * 250 + 30_000, i * 250 + 90_000)
        if i % 11 == 0:
            e.set_opt_out(0, k, True)
    e.slow_throughput(0, 100_000, 2_000)
    return e


def test_snapshot_round_trip_gives_identical_state_and_answers() -> None:
    e = _busy_engine()
    data = e.snapshot()
    r = Engine.restore(data)
    assert r.snapshot() == data
    assert r.entries() == e.entries()
    for i in range(200):
        args = (100_000 + i * 97, i % 2, i % 2, 1 + i % 95, c.F_TEMPLATE, 40)
        assert r.decide(*args) == e.decide(*args)
    assert r.snapshot() == e.snapshot()


def test_snapshot_of_either_engine_restores_in_the_reference() -> None:
    data = _busy_engine().snapshot()
    assert data == _busy_engine(PyEngine).snapshot()
    assert PyEngine.restore(data).snapshot() == data


def test_a_copy_holds_the_same_state_and_shares_nothing_with_the_original() -> None:
    e = _busy_engine()
    data = e.snapshot()
    copy = e.copy()
    assert copy.snapshot() == data and copy.entries() == e.entries()
    for i in range(200):  # the original goes on deciding; the copy stays as taken
        e.decide(200_000 + i * 97, i % 2, i % 2, 1 + i % 95, c.F_TEMPLATE | c.F_MARKETING, 40)
    e.set_opt_out(1, 3, True)
    e.reclaim(30 * DAY)
    assert copy.snapshot() == data
    restored = Engine.restore(data)
    for i in range(200):  # and decides as the state it holds says
        args = (100_000 + i * 97, i % 2, i % 2, 1 + i % 95, c.F_TEMPLATE, 40)
        assert copy.decide(*args) == restored.decide(*args)


def test_a_copy_of_big_tables_with_growth_spares() -> None:
    e = _engine()
    e.decide_batch(_batch(5_000, 10**12, BIG // 3, c.F_TEMPLATE | c.F_MARKETING))
    held = _table_bytes_held()
    copy = e.copy()
    data = copy.snapshot()
    assert data == e.snapshot()
    del copy
    assert _table_bytes_held() == held  # a copy gives back all it took
    copy = e.copy()
    e.decide_batch(_batch(6_000, 2 * 10**12, BIG // 3))  # grows the original only
    assert copy.entries() == 2 * (BIG // 3) and copy.snapshot() == data


def _table_bytes_held() -> int:
    if IMPLEMENTATION != "compiled":
        return 0
    from tiergate._native.engine import table_bytes_held

    return table_bytes_held()


def test_big_snapshot_round_trip() -> None:
    e = _engine()
    e.decide_batch(_batch(5_000, 10**12, BIG // 4))
    data = e.snapshot()
    r = Engine.restore(data)
    assert r.entries() == e.entries()
    assert r.snapshot() == data


def test_newer_snapshot_format_is_refused_clearly() -> None:
    data = bytearray(_busy_engine().snapshot())
    struct.pack_into("<I", data, 8, SNAPSHOT_VERSION + 1)
    with pytest.raises(ValueError, match="newer than this tiergate supports"):
        Engine.restore(bytes(data))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: b"XXXXXXXX" + d[8:], "bad magic"),
        (lambda d: d[:-5], "truncated"),
        (lambda d: d + b"\0", "trailing bytes"),
        (lambda d: d[:20], "truncated"),
        (lambda d: b"", "truncated"),
    ],
)
def test_damaged_snapshots_are_refused(mutate: object, message: str) -> None:
    data = _busy_engine().snapshot()
    with pytest.raises(ValueError, match=message):
        Engine.restore(mutate(data))  # type: ignore[operator]


def _one_slot_snapshot(cls: type[PyEngine] | type[Engine]) -> tuple[bytearray, int, tuple]:
    """A snapshot of one recipient's fresh slot, the offset of its scope entry, and
    the decision that created it."""
    e = cls(1_000, 60_000, 10_000, 300_000)
    e.add_scope()
    e.add_number(0)
    d = e.decide(5_000, 0, 0, 42, c.F_TEMPLATE, 10)
    data = bytearray(e.snapshot())
    # header, scope record, rings of 62, 32 and 32 buckets, table header
    at = 56 + 24 + (24 + 8 * 62) + 2 * (24 + 8 * 32) + 32
    assert struct.unpack_from("<QqQ", data, at) == (42, 5_000, (1 << 11) | 1)
    return data, at, d


def _as_format_3(data: bytearray) -> bytearray:
    """A snapshot of one number with no warm-up cap in format 3: tables without
    the sweep format 6 added, and without the number's warm-up part (its last
    8 bytes, -1) format 4 added. A scope entry lies 16 bytes earlier."""
    assert struct.unpack_from("<q", data, len(data) - 8)[0] == -1
    out = bytearray(as_format_5(bytes(data))[:-8])
    struct.pack_into("<I", out, 8, 3)
    return out


def _as_format_2(data: bytearray) -> bytearray:
    """A one-recipient snapshot from :func:`_one_slot_snapshot` in format 2: its
    number entry (the last 40 bytes of format 3) without the burst start format
    3 added."""
    out = _as_format_3(data)[:-8]
    struct.pack_into("<I", out, 8, 2)
    return out


@pytest.mark.parametrize("writer", [Engine, PyEngine])
def test_format_2_snapshots_hold_a_pair_that_owes_until_paid_back(
    writer: type[PyEngine] | type[Engine],
) -> None:
    """Format 2 kept no burst start: a pair that still owes restores as paying
    back (held until its TAT), then bursts again; both engines agree."""
    e = writer(1_000, 60_000, 10_000, 300_000)
    e.add_scope()
    e.add_number(0, tput_burst=100, pair_interval_ms=6_000, pair_burst=45)
    e.decide(5_000, 0, 0, 42, c.F_TEMPLATE, 10)
    e.decide(5_000, 0, 0, 42, c.F_TEMPLATE, 10)  # a burst of two: owes until 17 000
    data = bytearray(e.snapshot())
    assert struct.unpack_from("<qqq", data, len(data) - 24) == (17_000, 5_000, -1)
    old = bytes(_as_format_2(data))
    snaps = []
    for cls in (Engine, PyEngine):
        r = cls.restore(old)
        assert r.lookup(0, 0, 42)[4] == 17_000
        assert tuple(r.decide(5_001, 0, 0, 42, c.F_TEMPLATE, 10)[:3]) == (
            c.RETRY_LATER,
            c.PAIR_RATE,
            17_000,
        )
        assert r.decide(17_000, 0, 0, 42, c.F_TEMPLATE, 10)[0] == c.ADMIT
        assert r.decide(17_000, 0, 0, 42, c.F_TEMPLATE, 10)[0] == c.ADMIT
        snaps.append(r.snapshot())
    assert snaps[0] == snaps[1]
    assert Engine.restore(bytes(data)).decide(5_001, 0, 0, 42, c.F_TEMPLATE, 10)[0] == c.ADMIT


@pytest.mark.parametrize("writer", [Engine, PyEngine])
def test_format_1_snapshots_keep_their_counts_and_release_nothing(
    writer: type[PyEngine] | type[Engine],
) -> None:
    """Format 1 held the creating ticket id where format 2 holds the slot state:
    its counts and times restore, and since its four-part tickets name no slot
    stamp, nothing restored from it is releasable (the slot stays counted)."""
    data, at, d = _one_slot_snapshot(writer)
    data = _as_format_2(data)
    struct.pack_into("<I", data, 8, 1)
    struct.pack_into("<Q", data, at - 16 + 16, 77)  # a format-1 ticket id
    snaps = []
    for cls in (Engine, PyEngine):
        r = cls.restore(bytes(data))
        assert r.lookup(0, 0, 42)[0] == 5_000
        assert r.usage(0, 5_000, 10)[0] == 1
        assert r.release(0, 42, d[6], d[5]) is False
        assert r.release(0, 42, 77, d[5]) is False
        assert r.decide(6_000, 0, 0, 42, c.F_TEMPLATE, 10)[3] == 0  # still counted
        later = r.decide(6_000 + 60_000, 0, 0, 42, c.F_TEMPLATE, 10)  # past the window
        assert later[3] == 1 and later[6] & 2047 == 1
        assert r.release(0, 42, later[6], later[5]) is True
        snaps.append(r.snapshot())
    assert snaps[0] == snaps[1]


@pytest.mark.parametrize("cls", [Engine, PyEngine])
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (16, 1 << 12, "slot state out of range"),
        (8, (1 << 50) + 1, "time out of range"),
        (8, -(1 << 63), "time out of range"),
    ],
)
def test_snapshot_scope_entries_out_of_range_are_refused(
    cls: type[PyEngine] | type[Engine], field: int, value: int, message: str
) -> None:
    data, at, _ = _one_slot_snapshot(cls)
    struct.pack_into("<q" if value < 0 else "<Q", data, at + field, value)
    for reader in (Engine, PyEngine):
        with pytest.raises(ValueError, match=message):
            reader.restore(bytes(data))


def test_bad_indices_and_keys_are_refused() -> None:
    e = _engine()
    with pytest.raises(IndexError, match="scope"):
        e.decide(0, 5, 0, 1, c.F_TEMPLATE, 1)
    with pytest.raises(IndexError, match="scope"):
        e.decide(0, -1, 0, 1, c.F_TEMPLATE, 1)
    with pytest.raises(IndexError, match="number"):
        e.decide(0, 0, 3, 1, c.F_TEMPLATE, 1)
    with pytest.raises(ValueError, match="recipient"):
        e.decide(0, 0, 0, 0, c.F_TEMPLATE, 1)
    with pytest.raises(ValueError, match="now"):
        e.decide(1 << 60, 0, 0, 1, c.F_TEMPLATE, 1)
    with pytest.raises(ValueError, match="freq_cap"):
        e.add_scope(5, 0)
    with pytest.raises(ValueError, match="burst"):
        e.add_number(0, 1, 0, 1, 1)


def test_a_bad_batch_item_decides_nothing() -> None:
    e = _engine()
    b = _batch(0, 100, 10)
    b.number[7] = 9
    with pytest.raises(IndexError, match="batch item 7"):
        e.decide_batch(b)
    assert e.entries() == 0 and e.usage(0, 0, 10)[0] == 0
    b = _batch(0, 100, 10)
    b.recipient[3] = 0
    with pytest.raises(ValueError, match="batch item 3"):
        e.decide_batch(b)
    b = _batch(0, 100, 10)
    b.limit.pop()
    with pytest.raises(ValueError, match="limit"):
        e.decide_batch(b)
    assert e.entries() == 0


def test_release_ignores_a_prev_counted_after_the_slot() -> None:
    e = _engine()
    d = e.decide(1_000, 0, 0, 42, c.F_TEMPLATE, 10)
    assert e.release(0, 42, d[6], 5_000) is False
    assert e.usage(0, 1_000, 10)[0] == 1
    assert e.release(0, 42, d[6], d[5]) is True
    assert e.usage(0, 1_000, 10)[0] == 0


@pytest.mark.parametrize(
    "bsuid", ["US.13491208655302741918", "US.ENT.11815799212886844830", "BR.a", "GB." + "Z9" * 64]
)
def test_a_bsuid_key_is_a_recipient_no_phone_number_shares(bsuid: str) -> None:
    key = c.recipient_key(bsuid)
    assert c.is_bsuid(bsuid) and c.is_bsuid_key(key)
    assert 0 < key < 1 << c.KEY_LENGTH_SHIFT  # length bits 0: below every E.164 key
    assert min(c.recipient_key("0"), c.recipient_key("1")) > key
    assert c.recipient_key(bsuid) == key == c.bsuid_key(bsuid)
    e = _engine()
    assert e.decide(0, 0, 0, key, c.F_TEMPLATE, 10)[3] == 1
    assert e.decide(1, 0, 0, key, c.F_TEMPLATE, 10)[3] == 0  # the same recipient: not new


def test_bsuid_keys_differ_from_each_other() -> None:
    ids = [f"US.{n}" for n in range(5_000)] + [f"US.ENT.{n}" for n in range(5_000)]
    assert len({c.recipient_key(i) for i in ids}) == len(ids)


@pytest.mark.parametrize("bad", ["us.1", "US.", "US.ENT.", "US.1-2", "US." + "1" * 129, "U1.2"])
def test_a_malformed_bsuid_is_refused(bad: str) -> None:
    assert not c.is_bsuid(bad)
    with pytest.raises(ValueError, match="recipient"):
        c.recipient_key(bad)
