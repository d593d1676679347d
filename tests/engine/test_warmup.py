"""A number in warm-up under a shared limit scope: its own count and cap.

Scope 0 is a portfolio of two numbers: number 0 (busy, no cap of its own) and
number 1 (in warm-up, ``set_warmup``). Each test runs over both engines (the
``twin`` fixture); the differential tests compare them on random walks.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from conftest import Twin

from engine.old_formats import as_format_5
from tiergate.engine import NEVER
from tiergate.engine import constants as c
from tiergate.engine.reference import SNAPSHOT_VERSION

MIN = 60_000
DAY = 86_400_000
T0 = 1_780_000_020_000  # 20 s into a minute
T = c.F_TEMPLATE
BUSY, NEW = 0, 1


def _portfolio(twin: Twin, cap: int) -> Any:
    e = twin.Engine()
    e.add_scope()
    e.add_number(0, 1, 10**6, 1, 10**6)
    e.add_number(0, 1, 10**6, 1, 10**6)
    e.set_warmup(NEW, cap)
    return e


def _key(i: int) -> int:
    return c.recipient_key(str(4_915_100_000_000 + i))


def _send(e: Any, now: int, number: int, i: int, limit: int) -> tuple[int, ...]:
    return tuple(e.decide(now, 0, number, _key(i), T, limit))


def test_a_new_number_sends_up_to_its_cap_while_the_portfolio_has_room(twin: Twin) -> None:
    e = _portfolio(twin, 3)
    for i in range(5):  # the busy number's traffic does not count against the cap
        assert _send(e, T0, BUSY, i, 10)[0] == c.ADMIT
    for i in range(3):
        d = _send(e, T0 + MIN + i, NEW, 100 + i, 10)
        assert d[:2] == (c.ADMIT, c.OK) and d[3] == 1
    assert e.warmup_usage(NEW, T0 + MIN).used_24h == 3
    # the fourth new recipient waits for the first of its own to leave the window
    d = _send(e, T0 + MIN + 10, NEW, 103, 10)
    first_free = (T0 + MIN) // MIN * MIN + MIN + DAY
    assert d[:3] == (c.RETRY_LATER, c.MESSAGING_LIMIT, first_free)
    assert d[4] == 8  # the portfolio's count, unchanged
    # a recipient it counted itself costs nothing; one the busy number counted does
    assert _send(e, T0 + MIN + 11, NEW, 101, 10)[0] == c.ADMIT
    assert _send(e, T0 + MIN + 12, NEW, 2, 10)[:2] == (c.RETRY_LATER, c.MESSAGING_LIMIT)
    # the busy number is not capped
    assert _send(e, T0 + MIN + 13, BUSY, 200, 10)[0] == c.ADMIT
    # its slots free after 24 h (minute buckets, never early)
    assert _send(e, first_free - 1, NEW, 103, 100)[0] == c.RETRY_LATER
    assert _send(e, first_free, NEW, 103, 100)[0] == c.ADMIT


def test_the_portfolio_limit_binds_below_the_cap(twin: Twin) -> None:
    e = _portfolio(twin, 100)
    for i in range(9):
        assert _send(e, T0 + i * MIN, BUSY, i, 10)[0] == c.ADMIT
    assert _send(e, T0 + 20 * MIN, NEW, 100, 10)[0] == c.ADMIT
    d = _send(e, T0 + 20 * MIN, NEW, 101, 10)
    portfolio_free = T0 // MIN * MIN + MIN + DAY  # the busy number's first recipient
    assert d[:3] == (c.RETRY_LATER, c.MESSAGING_LIMIT, portfolio_free)
    assert e.warmup_usage(NEW, T0 + 20 * MIN).used_24h == 1


def test_when_both_bind_the_retry_waits_for_both(twin: Twin) -> None:
    e = _portfolio(twin, 2)
    assert _send(e, T0, BUSY, 0, 4)[0] == c.ADMIT
    assert _send(e, T0 + 5 * MIN, NEW, 100, 4)[0] == c.ADMIT
    assert _send(e, T0 + 6 * MIN, BUSY, 1, 4)[0] == c.ADMIT
    assert _send(e, T0 + 9 * MIN, NEW, 101, 4)[0] == c.ADMIT
    # the portfolio is at 4 of 4 (a slot frees a day after T0), the number at 2
    # of 2 (a day after T0 + 5 min): a slot of each is needed, the later one
    d = _send(e, T0 + 10 * MIN, NEW, 102, 4)
    assert d[:3] == (c.RETRY_LATER, c.MESSAGING_LIMIT, (T0 + 5 * MIN) // MIN * MIN + MIN + DAY)
    assert _send(e, T0 + 10 * MIN, NEW, 102, 5)[2] == (T0 + 5 * MIN) // MIN * MIN + MIN + DAY
    assert _send(e, T0 + 10 * MIN, NEW, 0, 4)[2] == (T0 + 5 * MIN) // MIN * MIN + MIN + DAY
    # a cap of 0 can never pass
    e.set_warmup(NEW, 0)
    assert _send(e, T0 + 10 * MIN, NEW, 103, 10**6)[:3] == (c.REJECT, c.MESSAGING_LIMIT, 0)


def test_a_failed_send_gives_back_the_numbers_count_too(twin: Twin) -> None:
    e = _portfolio(twin, 1)
    d = _send(e, T0, NEW, 100, 10)
    assert _send(e, T0 + 1, NEW, 101, 10)[0] == c.RETRY_LATER
    assert e.release(0, _key(100), d[6], d[5]) is True  # number unknown: its count stays
    assert _send(e, T0 + 2, NEW, 101, 10)[0] == c.RETRY_LATER
    d = _send(e, T0 + 3, NEW, 100, 10)  # counted again, a new slot
    assert e.release(0, _key(100), d[6], d[5], NEW) is True
    assert e.warmup_usage(NEW, T0 + 4).used_24h == 0
    assert _send(e, T0 + 4, NEW, 101, 10)[0] == c.ADMIT


def test_dry_runs_and_replies_take_nothing_and_forced_sends_count(twin: Twin) -> None:
    e = _portfolio(twin, 1)
    assert _send(e, T0, NEW, 100, 10)[0] == c.ADMIT
    assert e.decide(T0, 0, NEW, _key(101), T | c.F_DRY_RUN, 10).decision == c.RETRY_LATER
    e.open_window(NEW, _key(102), T0 + DAY, NEVER)
    assert tuple(e.decide(T0, 0, NEW, _key(102), T, 10))[:2] == (c.ADMIT, c.OK)  # in a window
    assert e.decide(T0, 0, NEW, _key(103), T | c.F_FORCE, 10).decision == c.ADMIT  # replay
    assert e.warmup_usage(NEW, T0).used_24h == 2


def test_leaving_warm_up_drops_the_count(twin: Twin) -> None:
    e = _portfolio(twin, 1)
    assert _send(e, T0, NEW, 100, 10)[0] == c.ADMIT
    e.set_warmup(NEW, 5)  # the next step of the schedule: the count stays
    assert e.warmup_usage(NEW, T0).used_24h == 1
    e.set_warmup(NEW, c.UNLIMITED)
    assert tuple(e.warmup_usage(NEW, T0)) == (0, 0, 0, 0)
    assert _send(e, T0, NEW, 101, 10)[0] == c.ADMIT
    e.set_warmup(NEW, 1)  # a cap again starts from an empty count
    assert _send(e, T0, NEW, 102, 10)[0] == c.ADMIT
    assert _send(e, T0, NEW, 103, 10)[0] == c.RETRY_LATER
    with pytest.raises(ValueError, match="cap"):
        e.set_warmup(NEW, -1)
    with pytest.raises(IndexError):
        e.set_warmup(7, 1)


def test_snapshots_carry_the_count_and_both_engines_read_them(twin: Twin) -> None:
    e = _portfolio(twin, 3)
    for i in range(3):
        assert _send(e, T0 + i * MIN, NEW, 100 + i, 10)[0] == c.ADMIT
    data = e.snapshot()
    assert struct.unpack_from("<I", data, 8)[0] == SNAPSHOT_VERSION == 6
    for restored in (twin.Engine.restore(data), e.copy()):
        assert restored.snapshot() == data
        assert _send(restored, T0 + 4 * MIN, NEW, 103, 10)[:2] == (
            c.RETRY_LATER,
            c.MESSAGING_LIMIT,
        )
        assert _send(restored, T0 + 4 * MIN, NEW, 101, 10)[0] == c.ADMIT
    # a day on, reclaim drops what left the window, and the snapshot skips it
    e.reclaim(T0 + MIN + DAY + MIN)
    assert e.warmup_usage(NEW, T0 + MIN + DAY + MIN).used_24h == 1
    assert twin.Engine.restore(e.snapshot()).snapshot() == e.snapshot()


def test_format_3_snapshots_restore_with_no_warm_up(twin: Twin) -> None:
    e = twin.Engine()
    e.add_scope()
    e.add_number(0)
    assert _send(e, T0, 0, 1, 10)[0] == c.ADMIT
    data = e.snapshot()
    assert struct.unpack_from("<q", data, len(data) - 8)[0] == -1  # the number has no cap
    old = bytearray(as_format_5(data)[:-8])
    struct.pack_into("<I", old, 8, 3)
    r = twin.Engine.restore(bytes(old))
    assert r.snapshot() == bytes(data)
    assert tuple(r.warmup_usage(0, T0)) == (0, 0, 0, 0)


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (0, -2, "warm-up cap out of range"),
        (8 + 24 + 8 * 1442 + 8 + 8, 1 << 51, "warm-up entry"),
        (8 + 24 + 8 * 1442, 5, "truncated"),
        (8 + 16, 9, "ring total does not match"),
    ],
)
def test_damaged_warm_up_parts_are_refused(
    twin: Twin, offset: int, value: int, message: str
) -> None:
    e = _portfolio(twin, 3)
    assert _send(e, T0, NEW, 100, 10)[0] == c.ADMIT
    data = bytearray(e.snapshot())
    at = len(data) - (8 + 24 + 8 * 1442 + 8 + 16)  # the last number's warm-up part
    assert struct.unpack_from("<q", data, at)[0] == 3
    struct.pack_into("<q", data, at + offset, value)
    with pytest.raises(ValueError, match=message):
        twin.Engine.restore(bytes(data))
