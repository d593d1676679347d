"""admit_columns gives exactly what admit_many gives, on both engines.

Two fresh services see the same feedback and the same random admits, one
through ``admit_many`` and one through ``admit_columns``: every answer, the
journal and the whole snapshot (ticket counter, decision counts, scope clocks,
idempotency memory, engine tables) must be identical.
"""

from __future__ import annotations

import random
from array import array
from typing import Any

import pytest

from tiergate.engine import Engine, PyEngine, records
from tiergate.engine import columns as py_kernels
from tiergate.engine.constants import NOT_DELIVERED_TO_REGION
from tiergate.policy import columnar
from tiergate.policy import events as ev
from tiergate.policy import journal as journal_mod
from tiergate.policy.columnar import AdmitColumns, ColumnsResult, admit_columns
from tiergate.policy.profile import load_profile
from tiergate.policy.requests import AdmitRequest, InvalidArgument, KeyConflict
from tiergate.policy.service import AdmissionService
from tiergate.policy.state import PolicyState

from .helpers import T0, TICKET_KEY, H, S, add_sender, rcpt

SENDERS = ["s-ok", "s-lim", "s-ban", "s-res", "s-red", "s-other-pf"]
TEMPLATES = ["promo", "receipt", "paused", "gone", "missing", "otp"]


def _world(engine_cls: Any, profile: str = "meta-2025") -> AdmissionService:
    prof = load_profile(profile)
    engine = engine_cls(prof.bucket_ms, prof.window_ms, prof.long_bucket_ms, prof.lookback_ms)
    svc = AdmissionService(prof, clock="request", engine=engine, ticket_key=TICKET_KEY)
    at = T0 - 2 * H
    add_sender(svc, "s-ok", at, portfolio_id="pf1", tier="TIER_1K", waba_id="w")
    add_sender(svc, "s-lim", at, portfolio_id="pf2", tier="TIER_250", waba_id="w")
    add_sender(svc, "s-ban", at, portfolio_id="pf3", status=ev.SenderStatus.BANNED)
    add_sender(
        svc,
        "s-res",
        at,
        portfolio_id="pf4",
        status=ev.SenderStatus.RESTRICTED,
        restricted_until_unix_ms=T0 + 3 * 24 * H,
    )
    add_sender(svc, "s-red", at, portfolio_id="pf5", quality=ev.Quality.RED)
    add_sender(svc, "s-other-pf", at, portfolio_id="pf1", waba_id="w")
    for name, status, extra in (
        ("promo", ev.TemplateStatus.APPROVED, {}),
        ("receipt", ev.TemplateStatus.APPROVED, {}),
        ("otp", ev.TemplateStatus.APPROVED, {}),
        ("paused", ev.TemplateStatus.PAUSED, {"paused_until_unix_ms": T0 + 2 * H}),
        ("gone", ev.TemplateStatus.DISABLED, {}),
    ):
        res = svc.apply(
            ev.TemplateUpdate(name, status, template_name=name, at_unix_ms=at, **extra), at
        )
        assert res.applied, res.detail
    for i in range(0, 40, 3):
        svc.apply(ev.InboundMessage("s-ok", rcpt(i), at_unix_ms=at + i), at + i)
    svc.apply(ev.OptOut(rcpt(5), portfolio_id="pf1", at_unix_ms=at), at)
    return svc


def _random_requests(
    rng: random.Random,
    t: int,
    n: int,
    keys: str,
    bound: dict[str, dict[str, Any]],
    conflict: bool = False,
) -> list[AdmitRequest]:
    """``keys``: "" none, "pool" from a small pool (repeats inside a batch likely),
    "unique" distinct inside the batch (repeats across batches). A key is used for
    the request it was first drawn for (``bound`` remembers them across batches);
    with ``conflict``, one keyed item is another request under its key."""
    unique = iter(rng.sample(range(400), n))
    out = []
    for _ in range(n):
        key = ""
        if keys == "pool" and rng.random() < 0.5:
            key = f"k{rng.randrange(30)}"
        elif keys == "unique" and rng.random() < 0.7:
            key = f"u{next(unique)}"
        free = rng.random() < 0.25
        cat = rng.choice([0, 1, 2, 3, 4]) if free else rng.choice([1, 1, 2, 3, 4])
        fields: dict[str, Any] = {
            "sender_id": rng.choice([*SENDERS, "s-unknown"]),
            "recipient": ("+" if rng.random() < 0.1 else "") + _recipient(rng.randrange(60)),
            "kind": 2 if free else 1,
            "category": cat,
            "template_id": "" if free else rng.choice(TEMPLATES),
        }
        if key:
            fields = bound.setdefault(key, fields)
        t += rng.choice([0, 0, 7, 150, 2 * S])
        out.append(
            AdmitRequest(**fields, idempotency_key=key, at_unix_ms=t if rng.random() < 0.9 else 0)
        )
    keyed = [r for r in out if r.idempotency_key]
    if conflict and keyed:
        first = rng.choice(keyed)
        change = rng.choice(
            [{"recipient": rcpt(99)}, {"category": 3 if first.category != 3 else 2}]
        )
        other = AdmitRequest(**{**_fields(first), **change})
        out.insert(rng.randrange(out.index(first) + 1, len(out) + 1), other)
    return out


def _recipient(i: int) -> str:
    """Recipient ``i``: German numbers, then Canadian ones (45..49) and US ones (50..),
    to which meta-2025 sends no marketing template."""
    if i >= 50:
        return f"1202555{i:04d}"
    if i >= 45:
        return f"1613555{i:04d}"
    return rcpt(i)


def _as_tuple(res: Any) -> tuple[Any, ...]:
    return (
        res.decision,
        res.reason,
        res.retry_at_unix_ms,
        res.ticket,
        res.counted,
        res.limit,
        res.used,
        res.meta_error_code,
    )


def _run_pair(engine_cls: Any, seed: int, rounds: int = 30) -> int:
    rng = random.Random(seed)
    a, b = _world(engine_cls), _world(engine_cls)
    a.drain_journal()
    b.drain_journal()
    t = T0
    seen = 0
    conflicts = 0
    regions = 0
    bound: dict[str, dict[str, Any]] = {}
    for rnd in range(rounds):
        n = rng.choice([1, 5, 40, 120])
        keys = ("", "unique", "", "pool")[rnd % 4]
        reqs = _random_requests(rng, t, n, keys, bound, conflict=rnd % 5 == 3)
        t = max((r.at_unix_ms for r in reqs), default=t) + rng.choice([S, 60 * S, 6 * H])
        dry = rng.random() < 0.15
        if dry:
            reqs = [AdmitRequest(**{**_fields(r), "dry_run": True}) for r in reqs]
        now = t - rng.choice([0, 5 * S])
        assert a.drain_journal() == b.drain_journal()
        try:
            expected = a.admit_many(reqs, now)
        except KeyConflict as e:
            # Refused before anything is decided, the key named as each way names it.
            with pytest.raises(KeyConflict) as got_error:
                admit_columns(b, AdmitColumns.from_requests(reqs, dry_run=dry), now)
            assert e.field == f"requests[{e.item}].idempotency_key"
            assert got_error.value.field == f"idempotency_keys[{e.item}]"
            assert (got_error.value.item, got_error.value.what) == (e.item, e.what)
            assert a.drain_journal() == b.drain_journal() == []
            assert a.snapshot() == b.snapshot()
            conflicts += 1
            continue
        got = admit_columns(b, AdmitColumns.from_requests(reqs, dry_run=dry), now)
        assert len(got) == len(expected)
        for i, res in enumerate(expected):
            assert got.item(i) == _as_tuple(res), (seed, rnd, i, reqs[i])
        seen += sum(1 for res in expected if res.ticket)
        regions += sum(1 for res in expected if res.reason == NOT_DELIVERED_TO_REGION)
        assert a.drain_journal() == b.drain_journal()
        if rnd % 7 == 6:
            # Release an admitted item through a columnar ticket, and a 131049 back-off.
            tickets = [tk for tk in got.tickets if tk]
            if tickets:
                tk = rng.choice(tickets)
                fail = ev.SendResult(ev.SendStatus.FAILED, ticket=tk, at_unix_ms=t)
                assert a.apply(fail, t) == b.apply(fail, t)
                e = ev.SendResult(ev.SendStatus.FAILED, ticket=tickets[0], meta_error_code=131049)
                assert a.apply(e, t).detail == b.apply(e, t).detail
        assert a.snapshot() == b.snapshot()
    assert conflicts > 0
    assert regions > 0
    return seen


@pytest.mark.parametrize("engine_cls", [Engine, PyEngine], ids=["default", "python"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_columns_answer_as_admit_many(
    engine_cls: Any, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_parts = columnar._decide_in_parts
    taken: list[int] = []

    def counting(st: PolicyState, r: Any, now_ms: int, objs: Any) -> ColumnsResult:
        taken.append(r.n)
        return in_parts(st, r, now_ms, objs)

    monkeypatch.setattr(columnar, "_decide_in_parts", counting)
    assert _run_pair(engine_cls, seed) > 0
    # Most batches take one engine call (repeated keys and due changes are decided in parts).
    assert len(taken) < 15


def _fields(r: AdmitRequest) -> dict[str, Any]:
    return {
        "sender_id": r.sender_id,
        "recipient": r.recipient,
        "kind": r.kind,
        "category": r.category,
        "template_id": r.template_id,
        "idempotency_key": r.idempotency_key,
        "at_unix_ms": r.at_unix_ms,
        "dry_run": r.dry_run,
    }


def test_columnar_ticket_releases_through_feedback() -> None:
    svc = _world(Engine)
    cols = AdmitColumns(
        ["s-lim"],
        [0, 0],
        [rcpt(1), rcpt(2)],
        b"\x01\x01",
        b"\x02\x02",
        ["receipt"],
        [1, 1],
        at_unix_ms=[T0, T0 + 1],
    )
    got = admit_columns(svc, cols, T0)
    assert bytes(got.decisions) == b"\x01\x01" and bytes(got.counted) == b"\x01\x01"
    assert list(got.used) == [1, 2]
    res = svc.apply(
        ev.SendResult(ev.SendStatus.FAILED, ticket=got.tickets[1], at_unix_ms=T0 + 2), T0 + 2
    )
    assert res.applied, res.detail
    assert svc.sender_state("s-lim", T0 + 3).used_24h == 1


def test_idempotency_and_dry_run() -> None:
    svc = _world(Engine)
    one = AdmitColumns(
        ["s-ok"],
        [0],
        [rcpt(50)],
        b"\x01",
        b"\x02",
        ["receipt"],
        [1],
        idempotency_keys=["order-1"],
        at_unix_ms=[T0],
    )
    first = admit_columns(svc, one, T0)
    again = admit_columns(svc, one, T0 + 1)
    assert first.item(0) == again.item(0) and first.tickets[0]
    # A key first admitted through admit_many answers the same through columns.
    prior = svc.admit_many([AdmitRequest("s-ok", rcpt(51), 1, 2, "receipt", "order-2", T0)], T0)
    two = AdmitColumns(
        ["s-ok"],
        [0],
        [rcpt(51)],
        b"\x01",
        b"\x02",
        ["receipt"],
        [1],
        idempotency_keys=["order-2"],
        at_unix_ms=[T0 + 5],
    )
    assert admit_columns(svc, two, T0 + 5).item(0) == _as_tuple(prior[0])
    used = svc.sender_state("s-ok", T0 + 6).used_24h
    dry = AdmitColumns(
        ["s-ok"],
        [0],
        [rcpt(52)],
        b"\x01",
        b"\x02",
        ["receipt"],
        [1],
        at_unix_ms=[T0 + 6],
        dry_run=True,
    )
    got = admit_columns(svc, dry, T0 + 6)
    assert got.decisions[0] == 1 and got.counted[0] == 1 and got.tickets[0] == ""
    assert svc.sender_state("s-ok", T0 + 7).used_24h == used


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"sender_index": [0, 1]}, "sender_index[1]"),
        ({"sender_index": [0]}, "sender_index"),
        ({"recipients": ["4917000000001", "12ab"]}, "recipients[1]"),
        ({"recipients": ["4917000000001", ""]}, "recipients[1]"),
        ({"kinds": b"\x01\x03"}, "kinds[1]"),
        ({"kinds": b"\x01"}, "kinds"),
        ({"categories": b"\x02\x09"}, "categories[1]"),
        ({"categories": b"\x02\x00"}, "categories[1]"),
        ({"template_index": [1, 2]}, "template_index[1]"),
        ({"template_index": [1, 0]}, "template_index[1]"),
        ({"templates": [""]}, "templates[0]"),
        ({"senders": [""]}, "senders[0]"),
        ({"senders": ["x" * 200]}, "senders[0]"),
        ({"idempotency_keys": ["a"]}, "idempotency_keys"),
        ({"idempotency_keys": ["a", "k" * 300]}, "idempotency_keys[1]"),
        ({"at_unix_ms": [T0, -1]}, "at_unix_ms[1]"),
        ({"at_unix_ms": [T0]}, "at_unix_ms"),
    ],
)
def test_bad_columns_name_column_and_item(change: dict[str, Any], field: str) -> None:
    svc = _world(Engine)
    fields: dict[str, Any] = {
        "senders": ["s-ok"],
        "sender_index": [0, 0],
        "recipients": [rcpt(1), rcpt(2)],
        "kinds": b"\x01\x01",
        "categories": b"\x02\x02",
        "templates": ["receipt"],
        "template_index": [1, 1],
        **change,
    }
    before = svc.snapshot()
    with pytest.raises(InvalidArgument) as info:
        admit_columns(svc, AdmitColumns(**fields), T0)
    assert info.value.field == field
    assert str(info.value).startswith(field + ":")
    assert svc.snapshot() == before


@pytest.mark.parametrize("dry", [False, True])
def test_key_repeated_inside_a_batch_sees_its_first_outcome(dry: bool) -> None:
    a, b = _world(Engine), _world(Engine)
    reqs = [
        AdmitRequest("s-ok", rcpt(i % 3), 1, 2, "receipt", f"o-{i % 3}", T0 + i, dry)
        for i in range(6)
    ]
    expected = a.admit_many(reqs, T0)
    got = admit_columns(b, AdmitColumns.from_requests(reqs, dry_run=dry), T0)
    assert [got.item(i) for i in range(6)] == [_as_tuple(r) for r in expected]
    assert a.drain_journal() == b.drain_journal()
    assert a.snapshot() == b.snapshot()


@pytest.mark.parametrize("keys", [True, False])
def test_a_sender_listed_twice_is_one_sender(keys: bool) -> None:
    a, b = _world(Engine), _world(Engine)
    reqs = [
        AdmitRequest("s-lim", rcpt(i % 3), 1, 2, "receipt", f"d-{i % 3}" if keys else "", T0 + i)
        for i in range(8)
    ]
    expected = a.admit_many(reqs, T0)
    cols = AdmitColumns.from_requests(reqs)
    cols.senders = ["s-lim", "s-lim"]
    cols.sender_index = [i % 2 for i in range(8)]
    got = admit_columns(b, cols, T0)
    assert [got.item(i) for i in range(8)] == [_as_tuple(r) for r in expected]
    assert a.drain_journal() == b.drain_journal()
    assert a.snapshot() == b.snapshot()


def test_free_form_without_category_is_service_and_empty_batch() -> None:
    a, b = _world(Engine), _world(Engine)
    reqs = [AdmitRequest("s-ok", rcpt(0), 2, 0, "", "", T0), AdmitRequest("s-ok", rcpt(1), 2, 0)]
    expected = a.admit_many(reqs, T0)
    got = admit_columns(b, AdmitColumns.from_requests(reqs), T0)
    assert [got.item(i) for i in range(2)] == [_as_tuple(r) for r in expected]
    assert len(admit_columns(b, AdmitColumns([], [], [], b"", b""), T0)) == 0


def test_time_driven_changes_in_a_batch_match() -> None:
    """A batch reaching the time a restriction ends decides as admit_many does."""
    a, b = _world(Engine), _world(Engine)
    end = T0 + 3 * 24 * H
    reqs = [
        AdmitRequest("s-res", rcpt(i), 1, 2, "receipt", "", end - 2 * S + i * S) for i in range(4)
    ]
    expected = a.admit_many(reqs, end - 2 * S)
    got = admit_columns(b, AdmitColumns.from_requests(reqs), end - 2 * S)
    assert [got.item(i) for i in range(4)] == [_as_tuple(r) for r in expected]
    assert a.snapshot() == b.snapshot()


def test_journal_record_layout_matches_the_service() -> None:
    """One declaration (engine.records); the compiled kernels' C constants equal it."""
    record = journal_mod.admit_record(1, 2, 3, 4, 5, 6, "", 1, 1, "t")
    assert records.ADMIT.unpack(record) == (
        records.TAG_ADMIT,
        records.ADMIT_VERSION,
        1,
        2,
        3,
        4,
        5,
        6,
        0,
    )
    assert records.ADMIT.size == 2 + records.ROW.size
    assert journal_mod.JOURNAL_VERSION == records.JOURNAL_VERSION
    assert records.ADMIT_VERSION == records.BATCH_VERSION == records.BINDING_VERSION == 3
    compiled = pytest.importorskip("tiergate._native.columns")
    assert compiled.LAYOUT == py_kernels.LAYOUT


def test_empty_result_columns() -> None:
    empty = ColumnsResult.empty(3)
    assert empty.item(2) == (0, 0, 0, "", False, 0, 0, 0)
    assert array("q", empty.used).tolist() == [0, 0, 0]


@pytest.mark.parametrize("engine_cls", [Engine, PyEngine], ids=["default", "python"])
def test_a_columnar_batch_is_one_journal_record(engine_cls: Any) -> None:
    a = _world(engine_cls)
    setup = a.drain_journal()
    reqs = [
        AdmitRequest("s-ok", rcpt(100 + i), 1, 2, "receipt", f"c{i}" if i % 4 else "", T0 + i * S)
        for i in range(300)
    ]
    got = admit_columns(a, AdmitColumns.from_requests(reqs), T0)
    assert sum(1 for tk in got.tickets if tk) == 300
    (record,) = a.drain_journal()
    assert record[:2] == b"B\x03"
    keyed = [r for r in reqs if r.idempotency_key]
    # Each key is followed by what it is bound to: kind, category, template.
    tails = sum(len(r.idempotency_key) + 4 + len("receipt") for r in keyed)
    assert len(record) == 6 + 300 * 42 + tails
    prof = load_profile("meta-2025")
    engine = engine_cls(prof.bucket_ms, prof.window_ms, prof.long_bucket_ms, prof.lookback_ms)
    copy = AdmissionService(prof, clock="request", engine=engine, ticket_key=TICKET_KEY)
    for rec in [*setup, record]:
        copy.replay(rec)
    at = T0 + H
    assert copy.sender_state("s-ok", at).used_24h == a.sender_state("s-ok", at).used_24h
    assert copy.admit_many(reqs[1:8], at) == a.admit_many(reqs[1:8], at)
