"""The pair rate as Meta states it, over both engines (the ``twin`` fixture).

Meta's rate-limits page: one message every 6 seconds from a business number
to one user; a burst of up to 45 messages is allowed but borrows from later
quota, and afterwards the business waits what the burst would have taken at
the normal rate ("a burst of 20 needs about 2 minutes"). The engine models a
burst as the sends within one interval (6 s) of the first send made while the
pair owed nothing; after it, nothing goes to that user until the burst is paid
back at one per interval.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tiergate.engine import constants as c

INTERVAL = 6_000  # ms, meta-2025 [pair_rate] interval_seconds = 6
BURST = 45  # meta-2025 [pair_rate] burst
T0 = 1_000_000


def _engine(twin: Any) -> Any:
    e = twin.Engine()
    e.add_scope()
    e.add_number(0, 1, 10**6, INTERVAL, BURST)  # throughput never binds here
    return e


def _send(e: Any, now: int, recipient: int = 42) -> tuple[int, int, int]:
    d = e.decide(now, 0, 0, recipient, c.F_TEMPLATE, 10**9)
    return (d[0], d[1], d[2])


def test_metas_example_a_burst_of_20_needs_two_minutes(twin: Any) -> None:
    e = _engine(twin)
    for i in range(20):  # twenty sends spread over five seconds
        assert _send(e, T0 + i * 250) == (c.ADMIT, c.OK, 0)
    paid_back = T0 + 20 * INTERVAL  # 120 s: "about 2 minutes"
    assert _send(e, T0 + INTERVAL) == (c.RETRY_LATER, c.PAIR_RATE, paid_back)
    assert _send(e, paid_back - 1) == (c.RETRY_LATER, c.PAIR_RATE, paid_back)
    assert _send(e, paid_back) == (c.ADMIT, c.OK, 0)


def test_a_burst_holds_at_most_45(twin: Any) -> None:
    e = _engine(twin)
    for _ in range(BURST):
        assert _send(e, T0)[0] == c.ADMIT
    assert _send(e, T0 + 1) == (c.RETRY_LATER, c.PAIR_RATE, T0 + BURST * INTERVAL)


def test_no_standing_credit_after_a_burst(twin: Any) -> None:
    """After a full burst the pair does not go on at one per 6 s: it repays first."""
    e = _engine(twin)
    for _ in range(BURST):
        _send(e, T0)
    for k in range(1, BURST):
        assert _send(e, T0 + k * INTERVAL)[1] == c.PAIR_RATE
    assert _send(e, T0 + BURST * INTERVAL)[0] == c.ADMIT


def test_one_per_interval_never_waits(twin: Any) -> None:
    e = _engine(twin)
    for k in range(100):
        assert _send(e, T0 + k * INTERVAL)[0] == c.ADMIT


def test_the_burst_window_is_one_interval_from_its_first_send(twin: Any) -> None:
    e = _engine(twin)
    assert _send(e, T0)[0] == c.ADMIT
    assert _send(e, T0 + INTERVAL - 1)[0] == c.ADMIT  # still the burst: owes until T0 + 12 s
    assert _send(e, T0 + INTERVAL) == (c.RETRY_LATER, c.PAIR_RATE, T0 + 2 * INTERVAL)
    assert _send(e, T0 + 2 * INTERVAL)[0] == c.ADMIT  # paid back: a new burst


def test_pairs_are_apart(twin: Any) -> None:
    e = _engine(twin)
    for _ in range(BURST):
        _send(e, T0, 42)
    assert _send(e, T0 + 1, 43)[0] == c.ADMIT


@pytest.mark.parametrize("burst", [1, 3, 45])
@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(gaps=st.lists(st.integers(0, 3 * INTERVAL), min_size=1, max_size=80))
def test_the_engine_follows_the_burst_then_repay_rule(
    twin: Any, burst: int, gaps: list[int]
) -> None:
    """Against a plain statement of the rule: a send is admitted when the pair owes
    nothing (a burst begins), or within one interval of the burst's first send
    while the burst has fewer than ``burst`` sends; it owes one interval a send."""
    e = twin.Engine()
    e.add_scope()
    e.add_number(0, 1, 10**6, INTERVAL, burst)
    now, owes_until, start, sent = T0, 0, 0, 0
    for gap in gaps:
        now += gap
        if owes_until <= now:
            start, sent = now, 0
        allowed = owes_until <= now or (now - start < INTERVAL and sent < burst)
        got = _send(e, now)
        if allowed:
            assert got == (c.ADMIT, c.OK, 0)
            owes_until = max(owes_until, now) + INTERVAL
            sent += 1
        else:
            assert got == (c.RETRY_LATER, c.PAIR_RATE, owes_until)
