"""A lone admit takes its own path (``AdmissionService.admit`` and ``admit_many`` of one
request): it must decide exactly as the batch path decides a batch of one.

Each history runs on three services from the same start: one through ``admit``, one
through ``admit_many([request])`` and one through the batch path itself
(``columnar.admit_requests``). Answers, errors, decision counts, idempotency, journal records and
the final snapshot must be identical, byte for byte where they are bytes.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tiergate.engine import constants as c
from tiergate.policy import events as ev
from tiergate.policy.answers import AdmitResult
from tiergate.policy.columnar import admit_requests
from tiergate.policy.profile import Profile, load_profile
from tiergate.policy.requests import AdmitRequest, InvalidArgument, KeyConflict
from tiergate.policy.service import AdmissionService

from .helpers import T0, TICKET_KEY, H, S, add_sender, rcpt, req

SENDERS = ("s1", "s2", "s3", "ghost")  # ghost is never created
TEMPLATES = ("promo", "paused_t", "dead_t", "unknown_t")
_PROFILE_BODY = """
[protection]
frequency_cap = 3
frequency_window_hours = 24
block_marketing_on_red = true

[pair_rate]
interval_seconds = 6
burst = 2
"""


def _profile(tmp: Path, base: str, body: str) -> Profile:
    path = tmp / f"{base}-custom.toml"
    path.write_text(f'extends = "{base}"\nname = "custom"\n{body}', encoding="utf-8")
    return load_profile(path)


@pytest.fixture(scope="module")
def profiles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Profile]:
    tmp = tmp_path_factory.mktemp("profiles")
    return {
        "meta-2024": load_profile("meta-2024"),
        "protective": _profile(tmp, "meta-2024", _PROFILE_BODY),
        "strict-templates": _profile(
            tmp, "meta-2025", '[templates]\nunknown = "reject"\n' + _PROFILE_BODY
        ),
    }


def world(profile: Profile) -> AdmissionService:
    svc = AdmissionService(profile, clock="request", ticket_key=TICKET_KEY)
    add_sender(svc, "s1", tier="TIER_50", throughput_mps=20, waba_id="W1")
    add_sender(svc, "s2", tier="TIER_250", throughput_mps=2, waba_id="W2")
    add_sender(svc, "s3", tier="TIER_UNLIMITED", waba_id="W1")
    for name, status in (
        ("promo", ev.TemplateStatus.APPROVED),
        ("paused_t", ev.TemplateStatus.PAUSED),
        ("dead_t", ev.TemplateStatus.DISABLED),
    ):
        assert svc.apply(ev.TemplateUpdate(name, status, template_name=name), T0 - H).applied
    svc.drain_journal()
    return svc


RECIPIENTS = 80  # s1's limit is 50: enough to reach it
INVALID = [
    {"sender_id": ""},
    {"recipient": "+49-170"},
    {"recipient": "1" * 16},
    {"kind": 7},
    {"category": 9},
    {"template_id": ""},
    {"at_unix_ms": -1},
    {"idempotency_key": "k" * 300},
]
STEPS_MS = [0, 100, 1_000, 3_000]  # between admits: throughput and pair rate bite

admit_op = st.tuples(
    st.just("admit"),
    st.sampled_from(SENDERS),
    st.integers(0, RECIPIENTS - 1),  # recipient
    st.sampled_from([(1, 1), (1, 2), (1, 3), (2, 4), (2, 0)]),  # kind, category
    st.sampled_from(TEMPLATES),
    st.integers(0, 3),  # idempotency key (0: none)
    st.booleans(),  # dry run
    st.integers(-2, 2),  # request time offset in seconds (backwards too)
    st.sampled_from(STEPS_MS),  # time to the next operation
)
op = st.one_of(
    admit_op,
    admit_op,
    admit_op,
    st.tuples(st.just("wait"), st.sampled_from([1, 7, 60, 3_600, 7 * 3_600])),  # seconds
    st.tuples(st.just("inbound"), st.sampled_from(SENDERS[:3]), st.integers(0, RECIPIENTS - 1)),
    st.tuples(st.just("opt_out"), st.sampled_from(SENDERS[:3]), st.integers(0, RECIPIENTS - 1)),
    st.tuples(st.just("fail"), st.integers(0, 99), st.sampled_from([131026, 131049, 130429])),
    st.tuples(st.just("quality"), st.sampled_from(SENDERS[:3]), st.sampled_from([1, 3])),
    st.tuples(st.just("restrict"), st.sampled_from(["W1", "W2"]), st.booleans()),
    st.tuples(st.just("status"), st.sampled_from(SENDERS[:3]), st.sampled_from([1, 4, 5])),
    st.tuples(st.just("template"), st.sampled_from(TEMPLATES[:3]), st.sampled_from([1, 2, 3])),
    st.tuples(st.just("invalid"), st.sampled_from(INVALID)),
)


def random_ops(seed: int, n: int) -> list[tuple[object, ...]]:
    """A long history drawn like ``op`` (admits weighted up), reproducible by seed."""
    rnd = random.Random(seed)
    ops: list[tuple[object, ...]] = []
    keyed: list[tuple[object, ...]] = []
    for _ in range(n):
        x = rnd.random()
        if x < 0.08 and keyed:
            # The same request again under its key (a gateway's retry), later.
            again = rnd.choice(keyed)
            ops.append((*again[:7], rnd.randint(-2, 2), rnd.choice(STEPS_MS)))
        elif x < 0.8:
            ops.append(
                (
                    "admit",
                    rnd.choice(SENDERS[:1] * 5 + SENDERS[1:3] * 2 + SENDERS[3:]),
                    rnd.choice([0, rnd.randrange(RECIPIENTS), rnd.randrange(RECIPIENTS)]),
                    rnd.choice([(1, 1), (1, 1), (1, 2), (1, 3), (2, 4), (2, 0)]),
                    rnd.choice(TEMPLATES[:1] * 6 + TEMPLATES),
                    rnd.choice([0, 0, 0, 1, 2, 3]),
                    rnd.random() < 0.1,
                    rnd.randint(-2, 2),
                    rnd.choice(STEPS_MS),
                )
            )
            if ops[-1][5]:
                keyed.append(ops[-1])
        elif x < 0.84:
            ops.append(("wait", rnd.choice([1, 1, 7, 7, 60, 60, 3_600, 7 * 3_600])))
        elif x < 0.90:
            ops.append(("inbound", rnd.choice(SENDERS[:3]), rnd.randrange(RECIPIENTS)))
        elif x < 0.91:
            ops.append(("opt_out", rnd.choice(SENDERS[:3]), rnd.choice([0, rnd.randrange(9)])))
        elif x < 0.94:
            ops.append(("fail", rnd.randrange(100), rnd.choice([131026, 131049, 130429])))
        elif x < 0.95:
            ops.append(("quality", rnd.choice(SENDERS[:3]), rnd.choice([1, 3])))
        elif x < 0.96:
            ops.append(("restrict", rnd.choice(["W1", "W2"]), rnd.random() < 0.4))
        elif x < 0.97:
            ops.append(("status", rnd.choice(SENDERS[:3]), rnd.choice([1, 1, 1, 4, 5])))
        elif x < 0.98:
            ops.append(("template", rnd.choice(TEMPLATES[:3]), rnd.choice([1, 2, 3])))
        elif x < 0.985:
            # A marketing campaign from s1 to fresh recipients: up to its limit.
            fresh = (1, 1)
            ops.extend(
                ("admit", "s1", 100 + rnd.randrange(100), fresh, "promo", 0, False, 0, 100)
                for _ in range(30)
            )
        else:
            ops.append(("invalid", rnd.choice(INVALID)))
    return ops


Decide = Callable[[AdmissionService, AdmitRequest, int], AdmitResult]


def _via_admit(svc: AdmissionService, r: AdmitRequest, now: int) -> AdmitResult:
    return svc.admit(r, now)


def _via_admit_many(svc: AdmissionService, r: AdmitRequest, now: int) -> AdmitResult:
    (result,) = svc.admit_many([r], now)
    return result


def _via_batch_path(svc: AdmissionService, r: AdmitRequest, now: int) -> AdmitResult:
    (result,) = admit_requests(svc.state, [r], now)  # the batch path, as for a batch of one
    return result


def _run(svc: AdmissionService, decide: Decide, ops: list[tuple[object, ...]]) -> list[object]:
    """Apply ``ops``; the answers (results, or (field, message) of an error) in order."""
    out: list[object] = []
    tickets: list[str] = []
    now = T0
    for o in ops:
        kind = o[0]
        if kind == "wait":
            now += int(o[1]) * S  # type: ignore[call-overload]
        elif kind == "inbound":
            svc.apply(ev.InboundMessage(str(o[1]), rcpt(int(o[2])), now), now)  # type: ignore[call-overload]
        elif kind == "opt_out":
            svc.apply(ev.OptOut(rcpt(int(o[2])), sender_id=str(o[1])), now)  # type: ignore[call-overload]
        elif kind == "fail":
            if tickets:
                ticket = tickets[int(o[1]) % len(tickets)]  # type: ignore[call-overload]
                svc.apply(
                    ev.SendResult(ev.SendStatus.FAILED, ticket=ticket, meta_error_code=int(o[2])),  # type: ignore[call-overload]
                    now,
                )
        elif kind == "quality":
            svc.apply(ev.SenderUpdate(str(o[1]), quality=ev.Quality(o[2])), now)
        elif kind == "restrict":
            if o[2]:
                update = ev.AccountUpdate(
                    str(o[1]),
                    "ACCOUNT_RESTRICTION",
                    restriction_types=("RESTRICTED_BIZ_INITIATED_MESSAGING",),
                    expires_at_unix_ms=now + 2 * H,
                )
            else:
                update = ev.AccountUpdate(str(o[1]), "ACCOUNT_RESTRICTION", restriction_types=())
            svc.apply(update, now)
        elif kind == "status":
            svc.apply(ev.SenderUpdate(str(o[1]), status=ev.SenderStatus(o[2])), now)
        elif kind == "template":
            svc.apply(ev.TemplateUpdate(str(o[1]), ev.TemplateStatus(o[2])), now)
        elif kind == "invalid":
            fields = {
                "sender_id": "s1",
                "recipient": rcpt(1),
                "kind": 1,
                "category": 1,
                "template_id": "promo",
                "at_unix_ms": now,
                **o[1],  # type: ignore[dict-item]
            }
            with pytest.raises(InvalidArgument) as err:
                decide(svc, AdmitRequest(**fields), now)  # type: ignore[arg-type]
            pre = "requests[0]."
            out.append((err.value.field.removeprefix(pre), str(err.value).removeprefix(pre)))
        else:
            _, sid, who, (k, cat), tpl, key, dry, offset, step = o  # type: ignore[misc]
            at = now + int(offset) * S  # type: ignore[call-overload]
            try:
                r = decide(
                    svc,
                    AdmitRequest(
                        sender_id=str(sid),
                        recipient=rcpt(int(who)),  # type: ignore[call-overload]
                        kind=int(k),  # type: ignore[call-overload]
                        category=int(cat),  # type: ignore[call-overload]
                        template_id=str(tpl) if k == 1 else "",
                        idempotency_key=f"k{key}" if key else "",
                        at_unix_ms=max(at, 0),
                        dry_run=bool(dry),
                    ),
                    now,
                )
            except KeyConflict as e:  # a key used before for another request
                pre = "requests[0]."
                out.append(("conflict", e.field.removeprefix(pre), str(e).removeprefix(pre)))
                now += int(step)  # type: ignore[call-overload]
                continue
            out.append(dataclasses.replace(r))
            if r.decision == c.ADMIT and r.ticket:
                tickets.append(r.ticket)
            now += int(step)  # type: ignore[call-overload]
    return out


def _final(svc: AdmissionService, now: int) -> tuple[object, ...]:
    states = []
    for sid in SENDERS[:3]:
        states.append(dataclasses.asdict(svc.sender_state(sid, now)))
    return (
        svc.drain_journal(),
        svc.snapshot(),
        states,
        svc.unknown_sender_decisions,
    )


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    st.sampled_from(["meta-2024", "protective", "strict-templates"]),
    st.lists(op, min_size=1, max_size=150),
)
def test_lone_admit_decides_like_a_batch_of_one(
    profiles: dict[str, Profile], name: str, ops: list[tuple[object, ...]]
) -> None:
    _same_on_every_path(profiles[name], ops)


def _same_on_every_path(profile: Profile, ops: list[tuple[object, ...]]) -> list[object]:
    services = [world(profile) for _ in range(3)]
    answers = [
        _run(svc, decide, ops)
        for svc, decide in zip(
            services, (_via_batch_path, _via_admit, _via_admit_many), strict=True
        )
    ]
    assert answers[1] == answers[0]
    assert answers[2] == answers[0]
    end = T0 + 30 * 24 * H
    finals = [_final(svc, end) for svc in services]
    assert finals[1] == finals[0]
    assert finals[2] == finals[0]
    return answers[1]


def test_long_histories_reach_every_answer(profiles: dict[str, Profile]) -> None:
    """Seeded long histories: the same on every path, and between them every
    decision reason and a rejected request occur (so the comparison covers them)."""
    seen: set[object] = set()
    for seed in range(6):
        for name in profiles:
            answers = _same_on_every_path(profiles[name], random_ops(seed, 800))
            tickets: set[str] = set()
            for answer in answers:
                if isinstance(answer, AdmitResult):
                    seen.add(answer.reason)
                    if answer.ticket and answer.ticket in tickets:
                        seen.add("repeat")  # a key's repeat answered with its first ticket
                    tickets.add(answer.ticket)
                else:
                    seen.add(answer[0] if answer[0] == "conflict" else "invalid")
    expected = {"invalid", "conflict", "repeat", c.OK, c.UNKNOWN_SENDER}
    expected |= {c.SENDER_BLOCKED, c.SENDER_RESTRICTED}
    expected |= {c.TEMPLATE_PAUSED, c.TEMPLATE_DISABLED, c.OUTSIDE_WINDOW}
    expected |= {c.RECIPIENT_OPTED_OUT, c.MESSAGING_LIMIT, c.MARKETING_FREQUENCY}
    expected |= {c.QUALITY_PROTECTION, c.THROUGHPUT, c.PAIR_RATE}
    assert expected <= seen, expected - seen


def test_error_fields_keep_their_prefix_per_entry_point() -> None:
    svc = world(load_profile("meta-2024"))
    bad = req("s1", "+49-170", T0)
    with pytest.raises(InvalidArgument) as alone:
        svc.admit(bad, T0)
    with pytest.raises(InvalidArgument) as many:
        svc.admit_many([bad], T0)
    with pytest.raises(InvalidArgument) as batch:
        admit_requests(svc.state, [bad], T0)
    assert alone.value.field == "recipient"
    assert many.value.field == batch.value.field == "requests[0].recipient"
    assert str(many.value) == str(batch.value) == "requests[0]." + str(alone.value)


@pytest.mark.parametrize("key", ["", "order-17", "ключ"])
def test_lone_admit_journals_the_batch_paths_record(key: str) -> None:
    """Same request, same state: the same 'A' record, byte for byte (key included)."""
    one, batch = world(load_profile("meta-2024")), world(load_profile("meta-2024"))
    r = req("s1", rcpt(5), T0, key=key)
    assert one.admit(r, T0) == admit_requests(batch.state, [r], T0)[0]
    records = one.drain_journal()
    assert records == batch.drain_journal()
    assert len(records) == 1 and records[0][:2] == b"A\x03"
    if key:  # the key, then what it is bound to: kind, category, template
        assert records[0].endswith(key.encode() + b"\x01\x01\x05\x00promo")
    # A repeat answers from the key and journals nothing, on both paths.
    if key:
        assert one.admit(r, T0 + S) == admit_requests(batch.state, [r], T0 + S)[0]
        assert one.drain_journal() == batch.drain_journal() == []


def test_lone_admit_dates_the_tier_crossing_like_the_batch_path() -> None:
    """meta-2024 TIER_50: the 25th unique recipient crosses the upgrade threshold."""
    one, batch = world(load_profile("meta-2024")), world(load_profile("meta-2024"))
    for i in range(30):
        at = T0 + i * 10 * S
        r = req("s1", rcpt(100 + i), at)
        assert one.admit(r, at) == admit_requests(batch.state, [r], at)[0]
    assert one.drain_journal() == batch.drain_journal()
    report = one.sender_state("s1", T0 + H)
    assert report.upgrade.eligible
    assert dataclasses.asdict(report) == dataclasses.asdict(batch.sender_state("s1", T0 + H))
    assert one.snapshot() == batch.snapshot()
