"""A batch that cannot be decided in one engine call is decided in parts, as one by
one would: a key repeated inside it, time-driven changes falling due at an item's
time, items whose dry runs differ."""

from __future__ import annotations

from typing import Any

import pytest

from tiergate.engine.constants import ADMIT, RETRY_LATER, SENDER_RESTRICTED
from tiergate.policy import columnar
from tiergate.policy import events as ev
from tiergate.policy.answers import AdmitResult
from tiergate.policy.requests import AdmitRequest
from tiergate.policy.service import AdmissionService

from .helpers import T0, S, add_sender, rcpt, req, service


def _one_by_one(svc: AdmissionService, reqs: list[AdmitRequest], now: int) -> list[AdmitResult]:
    """Each request alone, at the time a batch gives it (the latest so far without one)."""
    out = []
    for r in reqs:
        out.append(svc.admit(r, now))
        now = max(now, r.at_unix_ms)
    return out


def _answer(r: AdmitResult) -> tuple[Any, ...]:
    # Ticket ids are numbered per batch row: compare that there is one.
    return (r.decision, r.reason, r.retry_at_unix_ms, bool(r.ticket), r.counted, r.limit,
            r.used, r.meta_error_code, r.detail)  # fmt: skip


def _pair() -> tuple[AdmissionService, AdmissionService]:
    a, b = service(), service()
    for svc in (a, b):
        add_sender(svc, "s1")
        add_sender(svc, "s2")
    return a, b


def _parts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    in_parts = columnar._decide_in_parts
    taken: list[int] = []

    def counting(*args: Any) -> columnar.ColumnsResult:
        taken.append(1)
        return in_parts(*args)

    monkeypatch.setattr(columnar, "_decide_in_parts", counting)
    return taken


def test_a_restriction_ending_inside_a_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = _parts(monkeypatch)
    a, b = _pair()
    end = T0 + 10 * S
    restrict = ev.SenderUpdate(
        "s1", status=ev.SenderStatus.RESTRICTED, restricted_until_unix_ms=end, at_unix_ms=T0
    )
    for svc in (a, b):
        assert svc.apply(restrict, T0).applied
    reqs = [req("s1", rcpt(i), T0 + 5 * S * i) for i in range(1, 5)]
    batch = a.admit_many(reqs, T0)
    assert taken == [1]
    alone = _one_by_one(b, reqs, T0)
    assert [_answer(r) for r in batch] == [_answer(r) for r in alone]
    # Before the end: retry when the restriction ends; after it: admitted.
    assert (batch[0].decision, batch[0].reason, batch[0].retry_at_unix_ms) == (
        RETRY_LATER,
        SENDER_RESTRICTED,
        end,
    )
    assert [r.decision for r in batch[2:]] == [ADMIT, ADMIT]
    assert a.sender_state("s1", T0 + 30 * S) == b.sender_state("s1", T0 + 30 * S)


def test_dry_runs_that_differ(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = _parts(monkeypatch)
    a, b = _pair()
    reqs = [
        req("s1", rcpt(1), T0, dry=True),
        req("s1", rcpt(2), T0 + S),
        req("s2", rcpt(3), T0 + 2 * S, dry=True),
        req("s2", rcpt(3), T0 + 3 * S),
        req("nobody", rcpt(4), T0 + 4 * S, dry=True),
    ]
    batch = a.admit_many(reqs, T0)
    assert taken == [1]
    assert [_answer(r) for r in batch] == [_answer(r) for r in _one_by_one(b, reqs, T0)]
    assert [bool(r.ticket) for r in batch] == [False, True, False, True, False]
    assert a.sender_state("s2", T0 + 5 * S) == b.sender_state("s2", T0 + 5 * S)


def test_a_key_repeated_inside_a_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = _parts(monkeypatch)
    a, b = _pair()
    reqs = [req("s1", rcpt(1), T0 + i * S, key="order-1") for i in range(3)]
    reqs.insert(1, req("s2", rcpt(2), T0, key="order-1"))  # another sender's key
    batch = a.admit_many(reqs, T0)
    assert taken == [1]
    assert [_answer(r) for r in batch] == [_answer(r) for r in _one_by_one(b, reqs, T0)]
    assert batch[0].ticket == batch[2].ticket == batch[3].ticket != batch[1].ticket
