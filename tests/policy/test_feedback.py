"""Feedback: releases, templates, protective rules, account and quality events."""

from __future__ import annotations

from pathlib import Path

from tiergate.engine import constants as c
from tiergate.policy import events as ev

from .helpers import T0, D, H, S, add_sender, admit, custom, rcpt, send_unique, service

U = "491700000001"
FAILED = ev.SendStatus.FAILED


def test_release_frees_exactly_one_slot_once() -> None:
    svc = service()
    add_sender(svc, tier="TIER_50")
    results = send_unique(svc, "s1", T0, 50)
    assert admit(svc, "s1", rcpt(100), T0 + S).reason == c.MESSAGING_LIMIT
    res = svc.apply(ev.SendResult(FAILED, ticket=results[7].ticket, meta_error_code=131026), T0 + S)
    assert res.applied and "released" in res.detail
    assert svc.sender_state("s1", T0 + S).used_24h == 49
    # Releasing twice changes nothing.
    twice = svc.apply(ev.SendResult(FAILED, ticket=results[7].ticket, meta_error_code=131026), T0)
    assert not twice.applied
    assert svc.sender_state("s1", T0 + S).used_24h == 49
    assert admit(svc, "s1", rcpt(100), T0 + 2 * S).decision == c.ADMIT
    assert admit(svc, "s1", rcpt(101), T0 + 3 * S).reason == c.MESSAGING_LIMIT


def test_release_unknown_or_malformed_ticket_changes_nothing() -> None:
    svc = service()
    add_sender(svc)
    send_unique(svc, "s1", T0, 3)
    for ticket in ("nonsense", "1.0.5.0", "ff.99.1.1", "0.0.0.0"):
        res = svc.apply(ev.SendResult(FAILED, ticket=ticket, meta_error_code=131026), T0 + S)
        assert not res.applied, ticket
    assert svc.sender_state("s1", T0 + S).used_24h == 3


def test_a_ticket_names_its_slot_and_an_older_one_releases_nothing() -> None:
    """Tickets carry the slot stamp the engine answered (a fifth part) and a MAC (a
    sixth). Tickets from before MACs (five parts) or stamps (four) are not accepted:
    their FAILED releases nothing, so their slot stays counted (the safe side)."""
    svc = service()
    add_sender(svc)
    first, second = send_unique(svc, "s1", T0, 2)
    parts = first.ticket.split(".")
    assert len(parts) == 6 and int(parts[4], 16) != 0 and len(parts[5]) == 16
    for old in (".".join(parts[:4]), ".".join(parts[:5])):
        res = svc.apply(ev.SendResult(FAILED, ticket=old, meta_error_code=131026), T0 + S)
        assert not res.applied and "unknown or invalid ticket" in res.detail
    assert svc.sender_state("s1", T0 + S).used_24h == 2
    res = svc.apply(ev.SendResult(FAILED, ticket=second.ticket, meta_error_code=131026), T0 + S)
    assert res.applied and "released" in res.detail
    assert svc.sender_state("s1", T0 + S).used_24h == 1
    repeat = admit(svc, "s1", rcpt(0), T0 + 2 * S)  # already counted: no slot of its own
    assert repeat.counted is False and repeat.ticket.split(".")[4] == "0"


def test_release_not_when_a_later_admit_relied_on_the_slot() -> None:
    svc = service()
    add_sender(svc)
    first = admit(svc, "s1", U, T0)
    admit(svc, "s1", U, T0 + H)  # already counted: relies on the first's slot
    res = svc.apply(ev.SendResult(FAILED, ticket=first.ticket, meta_error_code=131026), T0 + H)
    assert not res.applied
    assert svc.sender_state("s1", T0 + H).used_24h == 1


def test_release_by_idempotency_key_and_keep_slot_codes(tmp_path: Path) -> None:
    svc = service()
    add_sender(svc)
    admit(svc, "s1", U, T0, key="order-1")
    res = svc.apply(
        ev.SendResult(FAILED, sender_id="s1", recipient=U, idempotency_key="order-1"), T0 + S
    )
    assert res.applied and svc.sender_state("s1", T0 + S).used_24h == 0
    keep = service(custom(tmp_path, "meta-2024", "[feedback]\nkeep_slot_codes = [131000]\n"))
    add_sender(keep)
    ok = admit(keep, "s1", U, T0)
    res = keep.apply(ev.SendResult(FAILED, ticket=ok.ticket, meta_error_code=131000), T0 + S)
    assert not res.applied and keep.sender_state("s1", T0 + S).used_24h == 1


def test_delivered_and_duplicate_failed_results() -> None:
    svc = service()
    add_sender(svc)
    ok = admit(svc, "s1", U, T0)
    assert svc.apply(ev.SendResult(ev.SendStatus.DELIVERED, ticket=ok.ticket), T0).applied
    assert svc.drain_journal()[-1][:2] == b"A\x03"  # nothing journaled for a delivery
    fail = ev.SendResult(FAILED, ticket=ok.ticket, meta_error_code=131026, message_id="wamid.1")
    assert svc.apply(fail, T0 + S).applied
    assert not svc.apply(fail, T0 + 2 * S).applied


def test_131047_closes_window_131050_opts_out() -> None:
    svc = service()
    add_sender(svc)
    svc.apply(ev.InboundMessage("s1", U, at_unix_ms=T0), T0)
    ok = admit(svc, "s1", U, T0 + S, free_form=True)
    res = svc.apply(ev.SendResult(FAILED, ticket=ok.ticket, meta_error_code=131047), T0 + 2 * S)
    assert res.applied and "window closed" in res.detail
    assert admit(svc, "s1", U, T0 + 10 * S, free_form=True).reason == c.OUTSIDE_WINDOW
    ok = admit(svc, "s1", rcpt(2), T0 + 20 * S)
    svc.apply(ev.SendResult(FAILED, ticket=ok.ticket, meta_error_code=131050), T0 + 21 * S)
    assert admit(svc, "s1", rcpt(2), T0 + 30 * S).reason == c.RECIPIENT_OPTED_OUT
    # Opting in again lifts it.
    svc.apply(ev.OptOut(rcpt(2), sender_id="s1", opted_out=False), T0 + 40 * S)
    assert admit(svc, "s1", rcpt(2), T0 + 50 * S).decision == c.ADMIT


def test_131049_holds_marketing_to_that_recipient() -> None:
    svc = service()
    add_sender(svc)
    ok = admit(svc, "s1", U, T0)
    svc.apply(ev.SendResult(FAILED, ticket=ok.ticket, meta_error_code=131049), T0 + S)
    held = admit(svc, "s1", U, T0 + H)
    assert (held.decision, held.reason, held.retry_at_unix_ms, held.meta_error_code) == (
        c.RETRY_LATER,
        c.MARKETING_FREQUENCY,
        T0 + S + D,
        131049,
    )
    assert admit(svc, "s1", U, T0 + H + 7 * S, category=ev.Category.UTILITY).decision == c.ADMIT
    assert admit(svc, "s1", U, T0 + S + D).decision == c.ADMIT


def test_opt_out_by_portfolio_reaches_every_number() -> None:
    svc = service("meta-2024")
    add_sender(svc, "a", portfolio_id="P", display_phone_number="15550001")
    add_sender(svc, "b", portfolio_id="P", display_phone_number="15550002")
    assert svc.apply(ev.OptOut(U, portfolio_id="P"), T0).applied
    assert admit(svc, "a", U, T0 + 1).reason == c.RECIPIENT_OPTED_OUT
    assert admit(svc, "b", U, T0 + 1).reason == c.RECIPIENT_OPTED_OUT
    assert not svc.apply(ev.OptOut(U, portfolio_id="nope"), T0).applied


def test_template_pauses_3h_6h_then_disabled() -> None:
    svc = service()
    add_sender(svc)
    upd = svc.apply(ev.TemplateUpdate("t1", ev.TemplateStatus.APPROVED, template_name="promo"), T0)
    assert upd.applied
    svc.apply(ev.TemplateUpdate("t1", ev.TemplateStatus.PAUSED), T0)
    first = admit(svc, "s1", U, T0 + H, template="promo")  # matched by name
    assert (first.reason, first.retry_at_unix_ms) == (c.TEMPLATE_PAUSED, T0 + 3 * H)
    # A redelivered PAUSED while paused is the same pause.
    svc.apply(ev.TemplateUpdate("t1", ev.TemplateStatus.PAUSED), T0 + H)
    assert admit(svc, "s1", U, T0 + 3 * H, template="t1").decision == c.ADMIT
    svc.apply(ev.TemplateUpdate("t1", ev.TemplateStatus.PAUSED), T0 + D)
    second = admit(svc, "s1", rcpt(2), T0 + D + H, template="t1")
    assert (second.reason, second.retry_at_unix_ms) == (c.TEMPLATE_PAUSED, T0 + D + 6 * H)
    state = svc.sender_state("s1", T0 + D + H)
    assert [(p.template_id, p.paused_until_unix_ms) for p in state.paused_templates] == [
        ("t1", T0 + D + 6 * H)
    ]
    # Meta may unpause earlier.
    svc.apply(ev.TemplateUpdate("t1", ev.TemplateStatus.UNPAUSED), T0 + D + 2 * H)
    assert admit(svc, "s1", rcpt(2), T0 + D + 2 * H, template="t1").decision == c.ADMIT
    res = svc.apply(ev.TemplateUpdate("t1", ev.TemplateStatus.PAUSED), T0 + 2 * D)
    assert "disabled" in res.detail
    third = admit(svc, "s1", rcpt(3), T0 + 5 * D, template="t1")
    assert (third.decision, third.reason, third.meta_error_code) == (
        c.REJECT,
        c.TEMPLATE_DISABLED,
        132016,
    )
    assert not svc.apply(ev.TemplateUpdate("t1", ev.TemplateStatus.UNPAUSED), T0 + 5 * D).applied
    assert svc.sender_state("s1", T0 + 5 * D).paused_templates[0].disabled


def test_paused_template_sends_do_not_count() -> None:
    svc = service()
    add_sender(svc)
    svc.apply(ev.TemplateUpdate("promo", ev.TemplateStatus.PAUSED), T0)
    admit(svc, "s1", U, T0 + 1)
    assert svc.sender_state("s1", T0 + 1).used_24h == 0


def test_template_quality_unknown_template_and_explicit_pause_end() -> None:
    svc = service()
    add_sender(svc)
    assert not svc.apply(ev.TemplateQualityUpdate("zzz", "RED"), T0).applied
    svc.apply(ev.TemplateUpdate("t9", ev.TemplateStatus.APPROVED), T0)
    assert svc.apply(ev.TemplateQualityUpdate("t9", "YELLOW"), T0).applied
    svc.apply(
        ev.TemplateUpdate("t9", ev.TemplateStatus.PAUSED, paused_until_unix_ms=T0 + 5 * H), T0
    )
    assert admit(svc, "s1", U, T0 + H, template="t9").retry_at_unix_ms == T0 + 5 * H


def test_warmup_caps_below_the_tier(tmp_path: Path) -> None:
    svc = service(custom(tmp_path, "meta-2024", "[warmup]\nenabled = true\n"))
    add_sender(svc, tier="TIER_10K", registered_at_unix_ms=T0)
    assert len([r for r in send_unique(svc, "s1", T0 + H, 120) if r.decision == c.ADMIT]) == 100
    assert svc.sender_state("s1", T0 + H).effective_limit == 100
    assert svc.sender_state("s1", T0 + 7 * D).effective_limit == 500
    assert svc.sender_state("s1", T0 + 14 * D).effective_limit == 750
    st = svc.sender_state("s1", T0 + 21 * D)
    assert (st.effective_limit, st.limit) == (10_000, 10_000)


def test_headroom_and_reservations(tmp_path: Path) -> None:
    body = (
        "[protection]\nheadroom_pct = 90\n"
        "reserve_utility_pct = 10\nreserve_authentication_pct = 10\n"
    )
    svc = service(custom(tmp_path, "meta-2024", body))
    add_sender(svc, tier="TIER_1K")
    # 90 % of 1 000 = 900; marketing may use 80 % of that, utility 90 %, authentication all.
    res = send_unique(svc, "s1", T0, 900)
    assert sum(r.decision == c.ADMIT for r in res) == 720 and res[0].limit == 720
    util = admit(svc, "s1", rcpt(5_000), T0 + H, category=ev.Category.UTILITY)
    assert util.decision == c.ADMIT and util.limit == 810
    auth = admit(svc, "s1", rcpt(5_001), T0 + H + 20, category=ev.Category.AUTHENTICATION)
    assert auth.limit == 900
    assert svc.sender_state("s1", T0 + H).effective_limit == 720


def test_unknown_senders_in_events_and_conflicting_updates() -> None:
    svc = service("meta-2025")
    add_sender(svc, "a", portfolio_id="P", display_phone_number="15550001")
    for event in (
        ev.InboundMessage("ghost", U),
        ev.SendResult(FAILED, sender_id="ghost", recipient=U, meta_error_code=131047),
        ev.OptOut(U, sender_id="ghost"),
        ev.QualityUpdate("999", "FLAGGED"),
        ev.CapabilityUpdate("nowaba", "TIER_2K"),
        ev.AccountUpdate("nowaba", "ACCOUNT_VIOLATION"),
    ):
        res = svc.apply(event, T0)
        assert not res.applied and res.detail, event
    before = svc.snapshot()
    # Moving a number to another portfolio would split a shared limit: refused.
    res = svc.apply(ev.SenderUpdate("a", portfolio_id="Q"), T0)
    assert not res.applied and "portfolio" in res.detail
    # A display number already used by another sender: refused.
    res = svc.apply(ev.SenderUpdate("b", display_phone_number="+1 555 0001"), T0)
    assert not res.applied and "15550001" in res.detail
    assert svc.snapshot() == before
    assert svc.senders() == ["a"]


def test_bad_event_fields_raise_invalid_argument() -> None:
    import pytest

    from tiergate.policy.requests import InvalidArgument

    svc = service()
    add_sender(svc)
    cases = [
        (ev.InboundMessage("s1", "12ab"), "recipient"),
        (ev.SenderUpdate("s1", tier="TIER_7"), "tier"),
        (ev.SenderUpdate("s1", throughput_mps=-1), "throughput_mps"),
        (ev.OptOut("", sender_id="s1"), "recipient"),
    ]
    before = svc.snapshot()
    for event, field in cases:
        with pytest.raises(InvalidArgument) as err:
            svc.apply(event, T0)
        assert err.value.field == field
    assert svc.snapshot() == before


def test_account_restriction_without_messaging_types_is_recorded_only() -> None:
    svc = service()
    add_sender(svc, waba_id="W")
    res = svc.apply(
        ev.AccountUpdate(
            "W", "ACCOUNT_RESTRICTION", restriction_types=("RESTRICTED_ADD_PHONE_NUMBER_ACTION",)
        ),
        T0,
    )
    assert res.applied
    assert svc.sender_state("s1", T0).status == ev.SenderStatus.CONNECTED


def test_state_report_fields() -> None:
    svc = service("meta-2024")
    add_sender(svc, waba_id="W", display_phone_number="+1 555 0123", portfolio_id="P")
    send_unique(svc, "s1", T0, 10)
    svc.apply(ev.InboundMessage("s1", U, at_unix_ms=T0), T0)
    admit(svc, "s1", "1", T0 + S, free_form=True)
    st = svc.sender_state("s1", T0 + H)
    assert (st.sender_id, st.portfolio_id, st.profile, st.tier) == (
        "s1",
        "P",
        "meta-2024",
        "TIER_1K",
    )
    assert (st.limit, st.used_24h, st.remaining, st.unique_7d) == (1_000, 10, 990, 10)
    assert st.next_slot_free_at_unix_ms == T0 + H
    assert st.upgrade.progress == 10 / 500 and st.upgrade.next_tier == "TIER_10K"
    assert (st.quality, st.status, st.throughput_mps) == (
        ev.Quality.GREEN,
        ev.SenderStatus.CONNECTED,
        80,
    )
    assert st.open_windows == 1 and st.display_phone_number == "15550123"
    assert st.decision_counts == {c.OK: 10, c.OUTSIDE_WINDOW: 1}
    assert st.at_unix_ms == T0 + H
