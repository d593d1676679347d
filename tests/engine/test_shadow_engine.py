"""Shadow flags in both engines: a refusal by a shadowed rule consumes as an admit and
answers the refusal; the rules not shadowed still refuse, and a dry run consumes nothing."""

from __future__ import annotations

from conftest import Twin

from tiergate.engine import constants as c

DAY = 86_400_000
T = 1_000 * DAY
A, B, C = (c.recipient_key(n) for n in ("15550000001", "15550000002", "15550000003"))
LIMIT_ONLY = c.shadow_flags([c.MESSAGING_LIMIT])


def engine(twin: Twin) -> object:
    e = twin.Engine()
    e.add_scope()
    e.add_number(0, 1_000_000, 1)  # one send a second
    return e


def test_a_shadowed_limit_consumes_and_answers_the_refusal(twin: Twin) -> None:
    e = engine(twin)
    assert e.decide(T, 0, 0, A, c.F_TEMPLATE, 1)[:2] == (c.ADMIT, c.OK)
    plain = e.decide(T + 2_000, 0, 0, B, c.F_TEMPLATE | c.F_DRY_RUN, 1)
    assert plain[:2] == (c.RETRY_LATER, c.MESSAGING_LIMIT)
    d = e.decide(T + 2_000, 0, 0, B, c.F_TEMPLATE | LIMIT_ONLY, 1)
    assert d[:3] == plain[:3]  # the would-be answer
    assert (d.counted, d.used) == (1, 2) and d.slot != 0  # consumed: used past the limit
    assert e.usage(0, T + 2_000, 1)[0] == 2


def test_rules_not_shadowed_still_refuse_and_nothing_is_consumed(twin: Twin) -> None:
    e = engine(twin)
    e.decide(T, 0, 0, A, c.F_TEMPLATE, 1)
    # the limit is shadowed, throughput is not: the send 1 ms later is refused for it
    d = e.decide(T + 1, 0, 0, B, c.F_TEMPLATE | LIMIT_ONLY, 1)
    assert (d[:2], d.counted, d.slot) == ((c.RETRY_LATER, c.THROUGHPUT), 0, 0)
    assert e.usage(0, T + 1, 1)[0] == 1
    # with every reason shadowed it goes, answering the first refusal (the limit)
    d = e.decide(T + 1, 0, 0, B, c.F_TEMPLATE | c.shadow_flags(c.SHADOWABLE), 1)
    assert d[:2] == (c.RETRY_LATER, c.MESSAGING_LIMIT) and d.counted == 1


def test_a_shadowed_dry_run_consumes_nothing(twin: Twin) -> None:
    e = engine(twin)
    e.decide(T, 0, 0, A, c.F_TEMPLATE, 1)
    d = e.decide(T + 2_000, 0, 0, C, c.F_TEMPLATE | LIMIT_ONLY | c.F_DRY_RUN, 1)
    assert d[:2] == (c.RETRY_LATER, c.MESSAGING_LIMIT) and d.slot == 0
    assert e.usage(0, T + 2_000, 1)[0] == 1


def test_outlook_reads_the_ring_without_moving_it(twin: Twin) -> None:
    e = engine(twin)
    for i, r in enumerate((A, B, C)):
        e.decide(T + 1_000 * i, 0, 0, r, c.F_TEMPLATE, 10)
    recent, leaving = e.outlook(0, T + 2_000, 3_600_000, 24)
    assert recent == 3 and leaving == [0] * 24  # they leave 24 h after their minute
    recent, leaving = e.outlook(0, T + 23 * 3_600_000 + 1_800_000, 3_600_000, 24)
    assert recent == 0 and leaving[0] == 3 and sum(leaving) == 3
    assert e.usage(0, T + 2_000, 10)[0] == 3
