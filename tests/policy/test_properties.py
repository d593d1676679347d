"""Random histories: the limit is never exceeded and the journal replays them exactly."""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tiergate.engine import constants as c
from tiergate.policy import events as ev
from tiergate.policy.requests import KeyConflict

from .helpers import T0, TICKET_KEY, H, S, add_sender, rcpt, req, service

op = st.one_of(
    st.tuples(
        st.just("admit"),
        st.integers(0, 40),  # recipient
        st.booleans(),  # free-form
        st.sampled_from([1, 2, 3]),  # category
        st.integers(0, 3),  # idempotency key (0: none)
        st.booleans(),  # dry run
    ),
    st.tuples(st.just("inbound"), st.integers(0, 40), st.sampled_from([1, 2])),
    st.tuples(st.just("fail"), st.integers(0, 60), st.sampled_from([131026, 131047, 131049])),
    st.tuples(st.just("wait"), st.integers(1, 30 * 60)),  # seconds
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, min_size=1, max_size=120))
def test_random_history(ops: list[tuple[object, ...]]) -> None:
    svc = service("meta-2024")
    add_sender(svc, tier="TIER_50")
    add_sender(svc, "s2", tier="TIER_250")
    now = T0
    tickets: list[str] = []
    for o in ops:
        kind = o[0]
        if kind == "wait":
            now += int(o[1]) * S  # type: ignore[call-overload]
        elif kind == "inbound":
            svc.apply(ev.InboundMessage("s1", rcpt(int(o[1])), now, ev.EntryPoint(o[2])), now)  # type: ignore[call-overload]
        elif kind == "fail":
            if tickets:
                ticket = tickets[int(o[1]) % len(tickets)]  # type: ignore[call-overload]
                svc.apply(
                    ev.SendResult(ev.SendStatus.FAILED, ticket=ticket, meta_error_code=int(o[2])),
                    now,
                )  # type: ignore[call-overload]
        else:
            _, who, free, cat, key, dry = o
            try:
                r = svc.admit(
                    req(
                        "s1",
                        rcpt(int(who)),  # type: ignore[call-overload]
                        now,
                        free_form=bool(free),
                        category=int(cat),  # type: ignore[call-overload]
                        key=f"k{key}" if key else "",
                        dry=bool(dry),
                    ),
                    now,
                )
            except KeyConflict:  # the key answers another request: nothing happens
                now += 7 * S
                continue
            assert r.used <= 50 or r.decision != c.ADMIT
            if r.decision == c.ADMIT and r.ticket:
                tickets.append(r.ticket)
            now += 7 * S
        assert svc.sender_state("s1", now).used_24h <= 50
    copy = service("meta-2024")
    for record in svc.drain_journal():
        copy.replay(record)
    at = now + H
    for sid in ("s1", "s2"):
        a = dataclasses.asdict(svc.sender_state(sid, at))
        b = dataclasses.asdict(copy.sender_state(sid, at))
        a.pop("decision_counts"), b.pop("decision_counts")
        assert a == b
    probe = [req("s1", rcpt(i), at + i) for i in range(45)]
    assert svc.admit_many(probe, at) == copy.admit_many(probe, at)


request = st.tuples(
    st.sampled_from(["s1", "s2", "ghost"]),
    st.integers(0, 12),  # recipient
    st.booleans(),  # free-form
    st.sampled_from([1, 2, 3, 4]),  # category
    st.booleans(),  # idempotency key (tied to the request's content)
    st.booleans(),  # dry run
)


def _key(r: object) -> tuple[object, ...]:
    return tuple(
        getattr(r, f)
        for f in (
            "decision",
            "reason",
            "retry_at_unix_ms",
            "counted",
            "limit",
            "used",
            "meta_error_code",
        )
    )


@settings(max_examples=40, deadline=None)
@given(st.lists(request, min_size=1, max_size=60))
def test_one_batch_decides_like_one_by_one(items: list[tuple[object, ...]]) -> None:
    """admit_many decides in order, each item seeing the ones before it."""
    from tiergate.policy.service import AdmissionService

    def fresh() -> AdmissionService:
        svc = AdmissionService(service("meta-2024").profile, clock="server", ticket_key=TICKET_KEY)
        add_sender(svc, tier="TIER_50", throughput_mps=20)
        add_sender(svc, "s2", tier="TIER_250")
        for i in range(0, 12, 3):
            svc.apply(ev.InboundMessage("s1", rcpt(i), at_unix_ms=T0), T0)
        return svc

    reqs = [
        req(
            str(sid),
            rcpt(int(who)),  # type: ignore[call-overload]
            0,
            free_form=bool(free),
            category=int(cat),  # type: ignore[call-overload]
            key=f"{who}-{free}-{cat}-{dry}" if keyed else "",
            dry=bool(dry),
        )
        for sid, who, free, cat, keyed, dry in items
    ]
    at = T0 + S
    together = fresh().admit_many(reqs, at)
    alone = fresh()
    one_by_one = [alone.admit(r, at) for r in reqs]
    assert [_key(r) for r in together] == [_key(r) for r in one_by_one]
