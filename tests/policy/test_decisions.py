"""Decision order, all-or-nothing, windows, limits, dry runs, idempotency, validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from tiergate.engine import constants as c
from tiergate.policy import events as ev
from tiergate.policy.requests import AdmitRequest, InvalidArgument, KeyConflict
from tiergate.policy.service import AdmissionService

from .helpers import (
    T0,
    TICKET_KEY,
    D,
    H,
    S,
    add_sender,
    admit,
    custom,
    rcpt,
    req,
    send_unique,
    service,
)

U = "491700000001"


def engine_state(svc: AdmissionService) -> bytes:
    return svc.engine.snapshot()


def inbound(svc: AdmissionService, to: str, at: int, entry=ev.EntryPoint.ORGANIC, sid="s1"):  # type: ignore[no-untyped-def]
    res = svc.apply(ev.InboundMessage(sid, to, at_unix_ms=at, entry_point=entry), at)
    assert res.applied, res.detail


def settle(svc: AdmissionService, sid: str, at: int) -> None:
    """Advance the engine's clocks to ``at`` without consuming (a rejected dry run)."""
    svc.admit(req(sid, "1", at, free_form=True, dry=True), at)


def assert_nothing_consumed(svc: AdmissionService, request: AdmitRequest, reason: int) -> None:
    at = request.at_unix_ms
    settle(svc, request.sender_id, at)
    before = engine_state(svc)
    res = svc.admit(request, at)
    assert res.reason == reason, res
    assert res.decision != c.ADMIT and res.ticket == ""
    assert engine_state(svc) == before


# -- windows ------------------------------------------------------------------


def test_free_form_inside_24h_window_then_outside() -> None:
    svc = service()
    add_sender(svc)
    inbound(svc, U, T0)
    assert admit(svc, "s1", U, T0 + D - 1, free_form=True).decision == c.ADMIT
    late = admit(svc, "s1", U, T0 + D, free_form=True)
    assert (late.decision, late.reason, late.meta_error_code) == (
        c.REJECT,
        c.OUTSIDE_WINDOW,
        131047,
    )


@pytest.mark.parametrize("entry", [ev.EntryPoint.CTWA_AD, ev.EntryPoint.PAGE_CTA])
def test_free_entry_point_72h_per_profile(entry: ev.EntryPoint) -> None:
    # meta-2024 (seed 000): free-form allowed for 72 h after an ad / Page CTA entry.
    svc = service("meta-2024")
    add_sender(svc)
    inbound(svc, U, T0, entry)
    assert admit(svc, "s1", U, T0 + 71 * H, free_form=True).decision == c.ADMIT
    assert admit(svc, "s1", U, T0 + 72 * H, free_form=True).reason == c.OUTSIDE_WINDOW
    # meta-2025: the 72 h window is a pricing window; free-form only for 24 h ...
    svc = service("meta-2025")
    add_sender(svc)
    inbound(svc, U, T0, entry)
    assert not admit(svc, "s1", U, T0 + 23 * H).counted
    assert admit(svc, "s1", U, T0 + 25 * H, free_form=True).reason == c.OUTSIDE_WINDOW
    # ... and templates after the 24 h window count, within the 72 h too.
    res = admit(svc, "s1", U, T0 + 25 * H)
    assert res.decision == c.ADMIT and res.counted


def test_templates_inside_window_do_not_count() -> None:
    svc = service()
    add_sender(svc)
    inbound(svc, U, T0)
    res = admit(svc, "s1", U, T0 + H)
    assert res.decision == c.ADMIT and not res.counted and res.used == 0
    assert svc.sender_state("s1", T0 + H).used_24h == 0
    outside = admit(svc, "s1", U, T0 + 2 * D)
    assert outside.counted and outside.used == 1


def test_window_uses_the_users_message_time() -> None:
    svc = AdmissionService(service().profile, clock="server", ticket_key=TICKET_KEY)
    add_sender(svc)
    # Delivered an hour late: the window still closes 24 h after the user wrote.
    svc.apply(ev.InboundMessage("s1", U, at_unix_ms=T0), T0 + H)
    assert svc.admit(req("s1", U, 0, free_form=True), T0 + D - 1).decision == c.ADMIT
    assert svc.admit(req("s1", U, 0, free_form=True), T0 + D).reason == c.OUTSIDE_WINDOW


# -- messaging limit ----------------------------------------------------------


def test_limit_reached_exact_retry_counted_pass_replies_pass() -> None:
    svc = service("meta-2024")
    add_sender(svc, tier="TIER_250")
    send_unique(svc, "s1", T0, 250, spacing=1_000)  # 250 sends over ~4 minutes
    full = admit(svc, "s1", rcpt(500), T0 + H)
    assert (full.decision, full.reason, full.meta_error_code) == (
        c.RETRY_LATER,
        c.MESSAGING_LIMIT,
        131048,
    )
    # The oldest recipients sit in the minute bucket [T0, T0+60 s): free at its end + 24 h.
    assert full.retry_at_unix_ms == T0 + 60 * S + D
    assert admit(svc, "s1", rcpt(500), full.retry_at_unix_ms - 1).reason == c.MESSAGING_LIMIT
    ok = admit(svc, "s1", rcpt(500), full.retry_at_unix_ms)
    assert ok.decision == c.ADMIT and ok.counted
    # Already counted recipients still pass (and cost nothing).
    again = admit(svc, "s1", rcpt(100), T0 + 2 * H)
    assert again.decision == c.ADMIT and not again.counted
    # Replies in an open window pass, free-form and template.
    inbound(svc, U, T0 + 2 * H)
    assert admit(svc, "s1", U, T0 + 2 * H + 10, free_form=True).decision == c.ADMIT
    assert admit(svc, "s1", U, T0 + 2 * H + 7 * S).decision == c.ADMIT


def test_restricted_sender_can_reply_not_initiate() -> None:
    svc = service()
    add_sender(svc, waba_id="W")
    until = T0 + 5 * D
    res = svc.apply(
        ev.AccountUpdate(
            "W",
            "ACCOUNT_RESTRICTION",
            restriction_types=("RESTRICTED_BIZ_INITIATED_MESSAGING",),
            expires_at_unix_ms=until,
        ),
        T0,
    )
    assert res.applied, res.detail
    assert svc.sender_state("s1", T0).status == ev.SenderStatus.RESTRICTED
    out = admit(svc, "s1", rcpt(1), T0 + H)
    assert (out.decision, out.reason, out.retry_at_unix_ms) == (
        c.RETRY_LATER,
        c.SENDER_RESTRICTED,
        until,
    )
    inbound(svc, U, T0 + H)
    assert admit(svc, "s1", U, T0 + H + 1, free_form=True).decision == c.ADMIT
    # The restriction ends on its own at its expiry.
    assert admit(svc, "s1", rcpt(1), until).decision == c.ADMIT
    assert svc.sender_state("s1", until).status == ev.SenderStatus.CONNECTED


def test_banned_and_disabled_block_everything() -> None:
    svc = service()
    add_sender(svc, waba_id="W")
    inbound(svc, U, T0)
    assert svc.apply(ev.AccountUpdate("W", "DISABLED_UPDATE", ban_state="DISABLE"), T0).applied
    res = admit(svc, "s1", U, T0 + 1, free_form=True)
    assert (res.decision, res.reason, res.meta_error_code) == (c.REJECT, c.SENDER_BLOCKED, 368)
    assert svc.apply(ev.AccountUpdate("W", "DISABLED_UPDATE", ban_state="REINSTATE"), T0).applied
    assert admit(svc, "s1", U, T0 + 2, free_form=True).decision == c.ADMIT
    svc.apply(ev.SenderUpdate("s1", status=ev.SenderStatus.BANNED), T0 + 3)
    assert admit(svc, "s1", U, T0 + 4, free_form=True).reason == c.SENDER_BLOCKED


# -- decision order: one test per reason, each consuming nothing ---------------


def test_order_unknown_sender() -> None:
    svc = service()
    res = admit(svc, "nobody", U, T0)
    assert (res.decision, res.reason) == (c.REJECT, c.UNKNOWN_SENDER)
    assert svc.unknown_sender_decisions == 1


def test_order_sender_blocked_before_template() -> None:
    svc = service()
    add_sender(svc)
    svc.apply(ev.TemplateUpdate("promo", ev.TemplateStatus.PAUSED), T0)
    svc.apply(ev.SenderUpdate("s1", status=ev.SenderStatus.DISABLED), T0)
    assert_nothing_consumed(svc, req("s1", U, T0 + 1), c.SENDER_BLOCKED)


def test_order_template_paused_before_limit() -> None:
    svc = service()
    add_sender(svc, tier="TIER_50")
    send_unique(svc, "s1", T0, 50)
    svc.apply(ev.TemplateUpdate("promo", ev.TemplateStatus.PAUSED), T0 + S)
    res = admit(svc, "s1", rcpt(900), T0 + 2 * S)
    assert (res.decision, res.reason, res.meta_error_code) == (
        c.RETRY_LATER,
        c.TEMPLATE_PAUSED,
        132015,
    )
    assert res.retry_at_unix_ms == T0 + S + 3 * H
    assert_nothing_consumed(svc, req("s1", rcpt(900), T0 + 3 * S), c.TEMPLATE_PAUSED)


def test_order_outside_window_before_opt_out() -> None:
    svc = service()
    add_sender(svc)
    svc.apply(ev.OptOut(U, sender_id="s1"), T0)
    assert_nothing_consumed(svc, req("s1", U, T0 + 1, free_form=True), c.OUTSIDE_WINDOW)


def test_order_opted_out_before_limit() -> None:
    svc = service()
    add_sender(svc, tier="TIER_50")
    send_unique(svc, "s1", T0, 50)
    assert svc.apply(ev.OptOut(U, sender_id="s1"), T0 + S).applied
    res = admit(svc, "s1", U, T0 + 2 * S)
    assert (res.reason, res.meta_error_code) == (c.RECIPIENT_OPTED_OUT, 131050)
    assert_nothing_consumed(svc, req("s1", U, T0 + 3 * S), c.RECIPIENT_OPTED_OUT)
    # Utility templates still reach an opted-out recipient (when a slot is free).
    assert admit(svc, "s1", rcpt(3), T0 + 4 * S, category=ev.Category.UTILITY).decision == c.ADMIT


def test_order_limit_before_throughput() -> None:
    svc = service()
    add_sender(svc, tier="TIER_50", throughput_mps=1)
    send_unique(svc, "s1", T0, 50, spacing=1_000)
    admit(svc, "s1", rcpt(1), T0 + 60 * S)  # already counted: uses the throughput bucket
    assert_nothing_consumed(svc, req("s1", rcpt(777), T0 + 60 * S), c.MESSAGING_LIMIT)


def test_order_frequency_cap_before_throughput(tmp_path: Path) -> None:
    svc = service(
        custom(
            tmp_path, "meta-2024", "[protection]\nfrequency_cap = 2\nfrequency_window_hours = 24\n"
        )
    )
    add_sender(svc, throughput_mps=1)
    first = admit(svc, "s1", U, T0)
    admit(svc, "s1", U, T0 + 7 * S)
    capped = admit(svc, "s1", U, T0 + 14 * S)
    assert (capped.decision, capped.reason) == (c.RETRY_LATER, c.MARKETING_FREQUENCY)
    assert capped.retry_at_unix_ms == T0 + D and capped.meta_error_code == 131049
    assert first.decision == c.ADMIT
    assert_nothing_consumed(svc, req("s1", U, T0 + 14 * S), c.MARKETING_FREQUENCY)
    # Utility messages are not marketing: not capped.
    assert admit(svc, "s1", U, T0 + 21 * S, category=ev.Category.UTILITY).decision == c.ADMIT


def test_order_quality_block_when_enabled(tmp_path: Path) -> None:
    svc = service(custom(tmp_path, "meta-2025", "[protection]\nblock_marketing_on_red = true\n"))
    add_sender(svc)
    svc.apply(ev.SenderUpdate("s1", quality=ev.Quality.RED), T0)
    res = admit(svc, "s1", U, T0 + 1)
    assert (res.decision, res.reason, res.meta_error_code) == (
        c.REJECT,
        c.QUALITY_PROTECTION,
        131048,
    )
    assert_nothing_consumed(svc, req("s1", U, T0 + 2), c.QUALITY_PROTECTION)
    assert admit(svc, "s1", U, T0 + 3, category=ev.Category.UTILITY).decision == c.ADMIT
    # Without the switch Red quality does not block marketing.
    plain = service("meta-2025")
    add_sender(plain)
    plain.apply(ev.SenderUpdate("s1", quality=ev.Quality.RED), T0)
    assert admit(plain, "s1", U, T0 + 1).decision == c.ADMIT


def test_order_throughput_before_pair_rate() -> None:
    svc = service()
    add_sender(svc, throughput_mps=1)
    assert admit(svc, "s1", U, T0).decision == c.ADMIT
    res = admit(svc, "s1", U, T0 + 1)
    assert (res.reason, res.retry_at_unix_ms, res.meta_error_code) == (c.THROUGHPUT, T0 + S, 130429)
    assert_nothing_consumed(svc, req("s1", U, T0 + 2), c.THROUGHPUT)


def test_order_pair_rate(tmp_path: Path) -> None:
    svc = service(custom(tmp_path, "meta-2024", "[pair_rate]\nburst = 1\n"))
    add_sender(svc)
    assert admit(svc, "s1", U, T0).decision == c.ADMIT
    res = admit(svc, "s1", U, T0 + S)
    assert (res.reason, res.retry_at_unix_ms, res.meta_error_code) == (
        c.PAIR_RATE,
        T0 + 6 * S,
        131056,
    )
    assert_nothing_consumed(svc, req("s1", U, T0 + 2 * S), c.PAIR_RATE)
    assert admit(svc, "s1", U, T0 + 6 * S).decision == c.ADMIT


def test_pair_rate_burst_45() -> None:
    svc = service()
    add_sender(svc)
    results = [admit(svc, "s1", U, T0 + i * 13) for i in range(46)]
    assert [r.decision for r in results[:45]] == [c.ADMIT] * 45
    assert results[45].reason == c.PAIR_RATE


# -- throughput levels ----------------------------------------------------------


def burst(svc: AdmissionService, sid: str, at: int, n: int) -> int:
    reqs = [req(sid, rcpt(i), at, free_form=False) for i in range(n)]
    return sum(1 for r in svc.admit_many(reqs, at) if r.decision == c.ADMIT)


def test_throughput_levels(tmp_path: Path) -> None:
    svc = service(custom(tmp_path, "meta-2024", '[throughput.overrides]\n"s15" = 15\n'))
    add_sender(svc, "s80", tier="TIER_UNLIMITED", display_phone_number="15550080")
    add_sender(svc, "s20", tier="TIER_UNLIMITED", coexistence=True)
    add_sender(svc, "s15", tier="TIER_UNLIMITED")
    assert burst(svc, "s80", T0, 200) == 80
    assert burst(svc, "s20", T0, 200) == 20
    assert burst(svc, "s15", T0, 200) == 15
    assert svc.sender_state("s15", T0).throughput_mps == 15
    res = svc.apply(
        ev.QualityUpdate("15550080", "THROUGHPUT_UPGRADE", current_limit="TIER_UNLIMITED"), T0
    )
    assert res.applied
    assert svc.sender_state("s80", T0).throughput_mps == 1_000
    assert burst(svc, "s80", T0 + 10 * S, 1_500) == 1_000


def test_throughput_backoff_after_130429() -> None:
    svc = service()
    add_sender(svc)
    ok = admit(svc, "s1", U, T0)
    res = svc.apply(
        ev.SendResult(ev.SendStatus.FAILED, ticket=ok.ticket, meta_error_code=130429), T0
    )
    assert res.applied
    later = admit(svc, "s1", rcpt(2), T0 + S)
    assert later.reason == c.THROUGHPUT and later.retry_at_unix_ms == T0 + 60 * S


# -- all-or-nothing, dry run, idempotency -----------------------------------------


def test_batch_decides_in_order_and_rejects_consume_nothing() -> None:
    svc = service()
    add_sender(svc, tier="TIER_50")
    reqs = [req("s1", rcpt(i), T0 + i * 20) for i in range(60)]
    reqs.insert(10, req("ghost", U, T0))
    reqs.insert(20, req("s1", U, T0 + 400, free_form=True))
    results = svc.admit_many(reqs, T0)
    assert len(results) == 62
    assert results[10].reason == c.UNKNOWN_SENDER
    assert results[20].reason == c.OUTSIDE_WINDOW
    admits = [r for r in results if r.decision == c.ADMIT]
    assert len(admits) == 50 and admits[-1].used == 50
    assert [r.reason for r in results[-10:]] == [c.MESSAGING_LIMIT] * 10
    assert svc.sender_state("s1", T0 + 2 * S).used_24h == 50


def test_dry_run_consumes_nothing() -> None:
    svc = service()
    add_sender(svc)
    settle(svc, "s1", T0)
    before = engine_state(svc)
    res = admit(svc, "s1", U, T0, dry=True)
    assert res.decision == c.ADMIT and res.counted and res.ticket == "" and res.used == 1
    assert engine_state(svc) == before
    assert svc.drain_journal()[-1:] != [] and all(r[0] != 0x41 for r in svc.drain_journal())


def test_idempotency_returns_first_decision_and_consumes_once() -> None:
    svc = service()
    add_sender(svc)
    first = admit(svc, "s1", U, T0, key="k1")
    settle(svc, "s1", T0 + S)
    before = engine_state(svc)
    again = admit(svc, "s1", U, T0 + S, key="k1")
    assert again == first and again.ticket == first.ticket
    assert engine_state(svc) == before
    # Per sender: another sender's "k1" is its own.
    add_sender(svc, "s2")
    assert admit(svc, "s2", U, T0 + 2 * S, key="k1").ticket != first.ticket
    # Within one batch the duplicate gets the first's decision.
    results = svc.admit_many(
        [req("s1", rcpt(5), T0 + 3 * S, key="k2"), req("s1", rcpt(5), T0 + 3 * S, key="k2")],
        T0 + 3 * S,
    )
    assert results[0] == results[1]  # the first answer, again
    # Keys are retained per profile (24 h) and then forgotten: free for any request.
    later = admit(svc, "s1", rcpt(7), T0 + D + 10 * S, key="k1")
    assert later.ticket != first.ticket and later.decision == c.ADMIT


@pytest.mark.parametrize(
    ("what", "change"),
    [
        ("recipient", {"to": rcpt(9)}),
        ("kind", {"free_form": True}),
        ("category", {"category": ev.Category.UTILITY}),
        ("template", {"template": "autumn"}),
    ],
)
def test_a_key_answers_only_the_request_it_was_first_used_for(
    what: str, change: dict[str, object]
) -> None:
    svc = service()
    add_sender(svc)
    first = admit(svc, "s1", U, T0, key="k1")
    svc.drain_journal()
    snap = svc.snapshot()
    fields: dict[str, object] = {"to": U, "key": "k1", **change}
    to = str(fields.pop("to"))
    other = req("s1", to, T0 + S, **fields)  # type: ignore[arg-type]
    with pytest.raises(KeyConflict) as alone:
        svc.admit(other, T0 + S)
    assert (alone.value.field, alone.value.what) == ("idempotency_key", what)
    assert str(alone.value).startswith(
        f"idempotency_key: was first used for a request with another {what};"
    )
    batch = [req("s1", rcpt(20 + i), T0 + S, key=f"n{i}") for i in range(3)] + [other]
    with pytest.raises(KeyConflict) as many:
        svc.admit_many(batch, T0 + S)
    assert many.value.field == "requests[3].idempotency_key"
    with pytest.raises(KeyConflict) as one:
        svc.admit_many([other], T0 + S)
    assert one.value.field == "requests[0].idempotency_key"
    # Nothing decided, nothing journaled, nothing counted.
    assert svc.drain_journal() == [] and svc.snapshot() == snap
    assert admit(svc, "s1", U, T0 + 2 * S, key="k1") == first
    # Two items of one batch under one key: the later one must be the same request.
    twice = [req("s1", U, T0 + 3 * S, key="k9"), other]
    twice[1] = req("s1", to, T0 + 3 * S, **{**fields, "key": "k9"})  # type: ignore[arg-type]
    with pytest.raises(KeyConflict) as inside:
        svc.admit_many(twice, T0 + 3 * S)
    assert (inside.value.field, inside.value.what) == ("requests[1].idempotency_key", what)
    assert svc.drain_journal() == [] and svc.snapshot() == snap


def test_a_free_form_message_without_category_is_the_same_request_as_service() -> None:
    svc = service()
    add_sender(svc)
    svc.apply(ev.InboundMessage("s1", U, T0 - S), T0 - S)
    first = admit(svc, "s1", U, T0, free_form=True, category=ev.Category.SERVICE, key="k")
    again = admit(svc, "s1", U, T0 + S, free_form=True, category=0, key="k")
    assert again == first and first.decision == c.ADMIT


def test_a_blocked_senders_repeat_is_rejected_and_the_key_kept() -> None:
    svc = service()
    add_sender(svc)
    first = admit(svc, "s1", U, T0, key="k1")
    svc.apply(ev.SenderUpdate("s1", status=ev.SenderStatus.BANNED), T0 + S)
    for res in (
        admit(svc, "s1", U, T0 + 2 * S, key="k1"),
        svc.admit_many([req("s1", U, T0 + 2 * S, key="k1")] * 2, T0 + 2 * S)[1],
    ):
        assert (res.decision, res.reason, res.ticket) == (c.REJECT, c.SENDER_BLOCKED, "")
    svc.apply(ev.SenderUpdate("s1", status=ev.SenderStatus.CONNECTED), T0 + 3 * S)
    assert admit(svc, "s1", U, T0 + 4 * S, key="k1") == first
    assert svc.sender_state("s1", T0 + 5 * S).used_24h == 1


# -- validation ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"sender_id": ""}, "sender_id"),
        ({"sender_id": "x" * 200}, "sender_id"),
        ({"recipient": ""}, "recipient"),
        ({"recipient": "+49-170"}, "recipient"),
        ({"recipient": "1" * 16}, "recipient"),
        ({"kind": 0}, "kind"),
        ({"kind": 7}, "kind"),
        ({"category": 0}, "category"),
        ({"category": 9}, "category"),
        ({"template_id": ""}, "template_id"),
        ({"at_unix_ms": -1}, "at_unix_ms"),
        ({"idempotency_key": "k" * 300}, "idempotency_key"),
    ],
)
def test_invalid_requests_name_the_field(fields: dict[str, object], field: str) -> None:
    svc = service()
    add_sender(svc)
    base = {
        "sender_id": "s1",
        "recipient": U,
        "kind": 1,
        "category": 1,
        "template_id": "promo",
        "at_unix_ms": T0,
    }
    base.update(fields)
    with pytest.raises(InvalidArgument) as err:
        svc.admit(AdmitRequest(**base), T0)  # type: ignore[arg-type]
    assert err.value.field == field and field in str(err.value)
    with pytest.raises(InvalidArgument) as err:
        svc.admit_many([req("s1", U, T0), AdmitRequest(**base)], T0)  # type: ignore[arg-type]
    assert err.value.field == f"requests[1].{field}"
    assert svc.sender_state("s1", T0).used_24h == 0  # nothing decided at all


def test_free_form_without_category_is_service() -> None:
    svc = service()
    add_sender(svc)
    inbound(svc, U, T0)
    res = svc.admit(AdmitRequest("s1", U, kind=2, category=0, at_unix_ms=T0 + 1), T0 + 1)
    assert res.decision == c.ADMIT


def test_unknown_template_policy(tmp_path: Path) -> None:
    svc = service()
    add_sender(svc)
    assert admit(svc, "s1", U, T0, template="never-heard-of").decision == c.ADMIT
    strict = service(custom(tmp_path, "meta-2024", '[templates]\nunknown = "reject"\n'))
    add_sender(strict)
    res = admit(strict, "s1", U, T0, template="never-heard-of")
    assert (res.decision, res.reason, res.meta_error_code) == (
        c.REJECT,
        c.TEMPLATE_DISABLED,
        132001,
    )


def test_protobuf_request_passes_directly() -> None:
    from tiergate.v1 import admission_pb2 as pb

    svc = service()
    add_sender(svc)
    msg = pb.AdmitRequest(
        sender_id="s1", recipient=U, kind=1, category=1, template_id="promo", at_unix_ms=T0
    )
    assert svc.admit(msg, T0).decision == c.ADMIT


# -- clocks -------------------------------------------------------------------


def test_request_clock_never_goes_backwards_per_scope() -> None:
    svc = service()
    add_sender(svc)
    add_sender(svc, "s2")
    inbound(svc, U, T0)
    inbound(svc, U, T0, sid="s2")
    assert admit(svc, "s1", U, T0 + D, free_form=True).reason == c.OUTSIDE_WINDOW
    # An earlier time for the same scope is clamped to the latest seen ...
    assert admit(svc, "s1", U, T0 + H, free_form=True).reason == c.OUTSIDE_WINDOW
    # ... another scope keeps its own time.
    assert admit(svc, "s2", U, T0 + H, free_form=True).decision == c.ADMIT


def test_server_clock_ignores_request_times() -> None:
    svc = AdmissionService(service().profile, clock="server", ticket_key=TICKET_KEY)
    add_sender(svc)
    svc.apply(ev.InboundMessage("s1", U, at_unix_ms=T0), T0)
    res = svc.admit(req("s1", U, T0 + 5 * D, free_form=True), T0 + H)
    assert res.decision == c.ADMIT
    with pytest.raises(ValueError, match="clock"):
        AdmissionService(service().profile, clock="wall")  # type: ignore[arg-type]
