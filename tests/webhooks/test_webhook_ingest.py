"""Webhooks applied through the admission service: every payload's effect on state.

Senders are set up first with SenderUpdate events whose ids and display numbers
match the payloads; effects are read back through ``sender_state`` or an Admit.
"""

from __future__ import annotations

import gc
import json
import weakref
from array import array
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from webhook_helpers import all_bodies, dumps, paths, real, replaced, synthetic

from tiergate.engine import constants as c
from tiergate.engine.constants import recipient_key
from tiergate.policy.aliases import learn
from tiergate.policy.answers import AdmitResult
from tiergate.policy.events import (
    Category,
    Kind,
    Quality,
    SenderStatus,
    SenderUpdate,
    TemplateStatus,
    TemplateUpdate,
)
from tiergate.policy.profile import load_profile
from tiergate.policy.requests import AdmitRequest
from tiergate.policy.service import AdmissionService
from tiergate.webhooks.ingest import (
    SignatureError,
    WebhookError,
    WebhookIngestor,
    bind,
    ingest,
    ingestor_for,
)
from tiergate.webhooks.parse import parse
from tiergate.webhooks.signature import sign

HOUR = 3_600_000
DAY = 24 * HOUR
WABA = "102290129340398"
# The phone number of the pywa message payloads, and of Meta's documentation examples.
PYWA = "1122334455667"  # display 972123456789
DOCS = "106540352242922"  # display 15550783881
CAPA = "524126980791430"  # a sender of the WABA in the capability example
USER = "972987654321"  # the user of the pywa payloads
DOCS_USER = "16505551234"  # the user of the synthetic payloads
T = 1_764_000_000_000  # the synthetic payloads' time

SENDERS = [
    SenderUpdate(
        sender_id=PYWA, portfolio_id="P1", waba_id=WABA, display_phone_number="972123456789"
    ),
    SenderUpdate(
        sender_id=DOCS, portfolio_id="P1", waba_id=WABA, display_phone_number="15550783881"
    ),
    SenderUpdate(
        sender_id=CAPA,
        portfolio_id="P2",
        waba_id="524126980791429",
        display_phone_number="15550000001",
    ),
]


def _service(
    profile: str | Path = "meta-2025", at: int = 0, us_marketing: bool = False
) -> AdmissionService:
    """The senders of the payloads under ``profile``. ``us_marketing``: without the
    profile's undeliverable pairs, so that marketing reaches DOCS_USER, a US number
    (+1 650) to which meta-2025 sends no marketing template."""
    prof = load_profile(profile)
    if us_marketing:
        prof = replace(prof, undeliverable=(), undeliverable_keys=frozenset())
        prof = replace(prof, undeliverable_table=array("Q"), undeliverable_lengths=b"")
    service = AdmissionService(prof)
    for update in SENDERS:
        assert service.apply(update, at).applied
    return service


def _ingest(service: AdmissionService, body: bytes, now_ms: int) -> tuple[int, int]:
    result = ingest(service, body, None, "", now_ms)
    assert result.ignored == len(result.ignored_events)
    return result.applied, result.ignored


def _free_form(service: AdmissionService, sender: str, user: str, now: int) -> AdmitResult:
    req = AdmitRequest(sender, user, kind=int(Kind.FREE_FORM), category=int(Category.SERVICE))
    return service.admit(req, now)


def _template(
    service: AdmissionService, sender: str, user: str, now: int, template: str = "promo"
) -> AdmitResult:
    req = AdmitRequest(
        sender,
        user,
        kind=int(Kind.TEMPLATE),
        category=int(Category.MARKETING),
        template_id=template,
    )
    return service.admit(req, now)


# --- messages ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "messages__message-text__pywa",
        "messages__message-reply__pywa",
        "messages__callback_button-button__pywa",
    ],
)
def test_inbound_message_opens_a_24h_window(name: str) -> None:
    body = real(name)
    sent_at = json.loads(body)["entry"][0]["changes"][0]["value"]["messages"][0]["timestamp"]
    at = int(sent_at) * 1000
    service = _service(at=at)
    assert _free_form(service, PYWA, USER, at + 1000).reason == c.OUTSIDE_WINDOW
    assert _ingest(service, body, at + 2000) == (1, 0)
    assert service.sender_state(PYWA, at + 3000).open_windows == 1
    assert _free_form(service, PYWA, USER, at + 4000).decision == c.ADMIT
    # The window runs 24 h from the user's message, not from the webhook's arrival.
    assert _free_form(service, PYWA, USER, at + DAY - 1000).decision == c.ADMIT
    late = _free_form(service, PYWA, USER, at + DAY + 1000)
    assert (late.decision, late.reason) == (c.REJECT, c.OUTSIDE_WINDOW)


@pytest.mark.parametrize(
    ("body", "sender", "user", "free_entry_point"),
    [
        (real("messages__message-referral__pywa"), PYWA, USER, True),
        (synthetic("messages__referral-ad"), DOCS, DOCS_USER, True),
        (synthetic("messages__referral-post"), DOCS, DOCS_USER, True),
        (synthetic("multi__two-entries"), DOCS, DOCS_USER, False),
    ],
)
def test_ad_and_post_referrals_open_a_72h_window(
    body: bytes, sender: str, user: str, free_entry_point: bool, tmp_path: Path
) -> None:
    at = int(json.loads(body)["entry"][0]["changes"][0]["value"]["messages"][0]["timestamp"])
    at *= 1000
    service = _service(at=at)
    _ingest(service, body, at + 1000)
    assert service.sender_state(sender, at + 2 * DAY).open_windows == int(free_entry_point)
    assert service.sender_state(sender, at + 3 * DAY + 1000).open_windows == 0
    # meta-2025 keeps free-form to 24 h; a profile that allows it for 72 h admits it.
    assert _free_form(service, sender, user, at + 2 * DAY).reason == c.OUTSIDE_WINDOW
    profile = tmp_path / "fep.toml"
    profile.write_text(
        'extends = "meta-2025"\n[windows]\nfree_entry_point_allows_free_form = true\n'
    )
    lenient = _service(profile, at)
    _ingest(lenient, body, at + 1000)
    expected = c.ADMIT if free_entry_point else c.REJECT
    assert _free_form(lenient, sender, user, at + 2 * DAY).decision == expected


def test_failed_status_131047_closes_the_window() -> None:
    service = _service(at=T)
    _ingest(service, synthetic("messages__referral-ad"), T + 1000)
    assert _free_form(service, DOCS, DOCS_USER, T + 2000).decision == c.ADMIT
    assert _ingest(service, synthetic("messages__status-failed-131047"), T + 3000) == (1, 0)
    assert service.sender_state(DOCS, T + 4000).open_windows == 0
    assert _free_form(service, DOCS, DOCS_USER, T + 5000).reason == c.OUTSIDE_WINDOW


def test_failed_status_131050_opts_the_recipient_out_of_marketing() -> None:
    service = _service(at=T, us_marketing=True)
    assert _ingest(service, synthetic("messages__status-failed-131050"), T) == (1, 0)
    refused = _template(service, DOCS, DOCS_USER, T + 1000)
    assert (refused.decision, refused.reason) == (c.REJECT, c.RECIPIENT_OPTED_OUT)
    # The opt-out belongs to the portfolio: its other number may not market either.
    assert _template(service, PYWA, DOCS_USER, T + 1000).reason == c.RECIPIENT_OPTED_OUT


def test_failed_status_130429_slows_the_sender() -> None:
    service = _service(at=T)
    assert _template(service, DOCS, "15550001111", T).decision == c.ADMIT
    assert _ingest(service, synthetic("messages__status-failed-130429"), T + 100) == (1, 0)
    slowed = _template(service, DOCS, "15550002222", T + 200)
    assert (slowed.decision, slowed.reason) == (c.RETRY_LATER, c.THROUGHPUT)
    assert slowed.retry_at_unix_ms > T + 200


def test_statuses_without_an_effect() -> None:
    service = _service(at=T)
    # The payloads' contact names the user by phone and by BSUID: that alias is
    # known beforehand (test_a_status_naming_both_ids_teaches_the_alias), so
    # only the statuses' own effect is compared.
    learn(service.state, PYWA_USER, PYWA_BSUID)
    for name in ("messages__message_status-sent__pywa", "messages__message_status-delivered__pywa"):
        before = service.snapshot()
        assert _ingest(service, real(name), T) == (1, 0)
        assert service.snapshot() == before
    # 130472 (experiment number) names no ticket tiergate could release: declined.
    result = ingest(service, real("messages__message_status-failed__pywa"), None, "", T)
    assert (result.applied, result.ignored) == (0, 1)
    field, reason = result.ignored_events[0]
    assert field == "messages" and reason.startswith("entry[0].changes[0].value.statuses[0]: ")


# --- account, capability, quality ---------------------------------------------------


def test_account_restriction_blocks_business_initiated_sends_until_it_expires() -> None:
    service = _service(at=T)
    _ingest(service, synthetic("messages__referral-ad"), T)
    assert _ingest(service, synthetic("account_update__restriction-one-day"), T + HOUR) == (1, 0)
    state = service.sender_state(DOCS, T + HOUR)
    assert state.status == SenderStatus.RESTRICTED
    assert state.restricted_until_unix_ms == T + DAY
    refused = _template(service, DOCS, "15550003333", T + 2 * HOUR)
    assert refused.reason == c.SENDER_RESTRICTED
    # A restriction with a known end is waited out, not refused for good.
    assert (refused.decision, refused.retry_at_unix_ms) == (c.RETRY_LATER, T + DAY)
    assert _template(service, PYWA, "15550003333", T + 2 * HOUR).reason == c.SENDER_RESTRICTED
    # Replies inside an open window are still allowed.
    assert _free_form(service, DOCS, DOCS_USER, T + 2 * HOUR).decision == c.ADMIT
    assert _template(service, DOCS, "15550003333", T + DAY + HOUR).decision == c.ADMIT


def test_real_account_restriction_payload() -> None:
    at = 1641330498000  # the payload's expiration equals its event time
    service = _service(at=at - HOUR)
    assert _ingest(
        service, real("account_update__account_update-account_restriction__pywa"), at - HOUR
    ) == (1, 0)
    assert service.sender_state(PYWA, at - HOUR).status == SenderStatus.RESTRICTED
    assert _template(service, PYWA, "15550003333", at - HOUR).reason == c.SENDER_RESTRICTED
    assert _template(service, PYWA, "15550003333", at + 1000).decision == c.ADMIT


def test_account_disabled_and_reinstated() -> None:
    service = _service(at=T)
    doc = json.loads(real("account_update__account_update-account_disabled__pywa"))
    state_path = ("entry", 0, "changes", 0, "value", "ban_info", "waba_ban_state")
    assert _ingest(service, dumps(replaced(doc, state_path, "DISABLE")), T) == (1, 0)
    assert service.sender_state(PYWA, T).status == SenderStatus.DISABLED
    assert _template(service, PYWA, USER, T).reason == c.SENDER_BLOCKED
    assert _free_form(service, DOCS, USER, T).reason == c.SENDER_BLOCKED
    # The real payload reinstates the WABA.
    assert _ingest(service, real("account_update__account_update-account_disabled__pywa"), T) == (
        1,
        0,
    )
    assert service.sender_state(PYWA, T).status == SenderStatus.CONNECTED
    assert _template(service, PYWA, USER, T + 1000).decision == c.ADMIT


def test_account_violation_is_recorded_without_changing_status() -> None:
    service = _service(at=T)
    assert _ingest(service, real("account_update__account_update-account_violation__pywa"), T) == (
        1,
        0,
    )
    assert service.sender_state(PYWA, T).status == SenderStatus.CONNECTED


def test_business_capability_update_sets_the_portfolio_limit() -> None:
    service = _service(at=T)
    assert service.sender_state(CAPA, T).tier == "TIER_250"
    assert _ingest(service, real("business_capability_update__example-0__meta-docs"), T) == (1, 0)
    state = service.sender_state(CAPA, T)
    assert (state.tier, state.limit) == ("TIER_2K", 2000)
    assert service.sender_state(PYWA, T).tier == "TIER_250"  # another portfolio


def test_phone_number_quality_updates() -> None:
    service = _service(at=T)
    assert service.sender_state(DOCS, T).throughput_mps == 80
    assert _ingest(
        service, real("phone_number_quality_update__throughput_upgrade-0__meta-docs"), T
    ) == (1, 0)
    assert service.sender_state(DOCS, T).throughput_mps == 1000
    assert service.sender_state(PYWA, T).throughput_mps == 80

    assert _ingest(service, synthetic("phone_number_quality_update__upgrade"), T) == (1, 0)
    state = service.sender_state(DOCS, T)
    assert (state.tier, state.limit) == ("TIER_10K", 10000)
    assert service.sender_state(PYWA, T).limit == 10000  # the portfolio shares it
    assert _ingest(service, synthetic("phone_number_quality_update__flagged"), T) == (1, 0)
    state = service.sender_state(DOCS, T)
    assert (state.quality, state.status, state.tier) == (
        Quality.RED,
        SenderStatus.FLAGGED,
        "TIER_2K",
    )
    assert _ingest(service, synthetic("phone_number_quality_update__downgrade"), T) == (1, 0)
    assert service.sender_state(DOCS, T).tier == "TIER_250"


# --- templates -------------------------------------------------------------------


def test_template_pauses_retry_at_unpause_time() -> None:
    service = _service(at=T, us_marketing=True)
    template = "order_confirmation"
    assert _template(service, DOCS, DOCS_USER, T, template).decision == c.ADMIT
    _ingest(service, synthetic("message_template_status_update__paused-first"), T + 1000)
    paused = _template(service, DOCS, "15550004444", T + 2000, template)
    assert (paused.decision, paused.reason) == (c.RETRY_LATER, c.TEMPLATE_PAUSED)
    assert paused.retry_at_unix_ms == T + 3 * HOUR
    (report,) = service.sender_state(DOCS, T + 2000).paused_templates
    assert (report.template_name, report.paused_until_unix_ms) == (template, T + 3 * HOUR)
    # Templates are matched by id too.
    by_id = _template(service, DOCS, "15550004444", T + 2000, "1689556908129832")
    assert by_id.reason == c.TEMPLATE_PAUSED

    _ingest(service, synthetic("message_template_status_update__reinstated"), T + HOUR)
    assert _template(service, DOCS, "15550004444", T + HOUR, template).decision == c.ADMIT

    _ingest(service, synthetic("message_template_status_update__paused-second"), T + 2 * HOUR)
    second = _template(service, DOCS, "15550005555", T + 2 * HOUR, template)
    assert second.retry_at_unix_ms == T + 6 * HOUR  # Meta's time + the second pause

    _ingest(service, synthetic("message_template_status_update__disabled"), T + 3 * HOUR)
    disabled = _template(service, DOCS, "15550005555", T + 7 * HOUR, template)
    assert (disabled.decision, disabled.reason) == (c.REJECT, c.TEMPLATE_DISABLED)


def test_template_approved_rejected_and_quality() -> None:
    service = _service(at=T)
    approved = real("message_template_status_update__template_status_update-approved__pywa")
    assert _ingest(service, approved, T) == (1, 0)
    assert _template(service, PYWA, USER, T, "order_confirmation").decision == c.ADMIT
    rejected = real("message_template_status_update__template_status_update-rejected__pywa")
    assert _ingest(service, rejected, T) == (1, 0)
    refused = _template(service, PYWA, USER, T, "abandoned_cart")
    assert (refused.decision, refused.reason) == (c.REJECT, c.TEMPLATE_DISABLED)

    quality = real("message_template_quality_update__template_quality_update-yellow__pywa")
    assert _ingest(service, quality, T) == (0, 1)  # a template tiergate does not know yet
    known = TemplateUpdate("806312974732579", TemplateStatus.APPROVED, "welcome_template")
    assert service.apply(known, T).applied
    assert _ingest(service, quality, T + 1) == (1, 0)
    assert _template(service, PYWA, USER, T + 1000, "welcome_template").decision == c.ADMIT


# --- preferences and ignored fields ---------------------------------------------


def test_no_marketing_template_goes_to_the_payloads_us_user() -> None:
    refused = _template(_service(at=T), DOCS, DOCS_USER, T)
    assert (refused.decision, refused.reason) == (c.REJECT, c.NOT_DELIVERED_TO_REGION)
    assert refused.meta_error_code == 131049


def test_marketing_stop_and_resume() -> None:
    service = _service(at=T, us_marketing=True)
    assert _ingest(service, synthetic("user_preferences__stop"), T) == (1, 0)
    assert _template(service, DOCS, DOCS_USER, T).reason == c.RECIPIENT_OPTED_OUT
    assert _ingest(service, synthetic("user_preferences__resume"), T + 1000) == (1, 0)
    assert _template(service, DOCS, DOCS_USER, T + 2000).decision == c.ADMIT


@pytest.mark.parametrize(
    "body",
    [
        real("smb_message_echoes__outgoing_message-text__pywa"),
        real("user_preferences__user_marketing_preferences-signup__pywa"),
        synthetic("messages__system"),
        synthetic("messages__unsupported"),
    ],
)
def test_ignored_payloads_change_nothing(body: bytes) -> None:
    service = _service(at=T)
    before = service.snapshot()
    result = ingest(service, body, None, "", T)
    assert (result.applied, result.ignored) == (0, 1)
    assert result.ignored_events[0][1]
    assert service.snapshot() == before


def test_many_entries_and_changes_in_one_body() -> None:
    service = _service(at=T)
    result = ingest(service, synthetic("multi__two-entries"), None, "", T + 1000)
    assert (result.applied, result.ignored) == (3, 1)
    assert result.ignored_events == [
        ("security", "entry[1].changes[1]: webhook field 'security' carries nothing tiergate uses")
    ]
    assert service.sender_state(DOCS, T + 2000).open_windows == 1
    assert service.sender_state(DOCS, T + 2000).throughput_mps == 1000


# --- idempotency ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        real("messages__message-text__pywa"),
        synthetic("messages__status-failed-131050"),
        synthetic("message_template_status_update__paused-first"),
        synthetic("phone_number_quality_update__upgrade"),
        synthetic("account_update__restriction-one-day"),
        synthetic("user_preferences__stop"),
        synthetic("multi__two-entries"),
    ],
)
def test_redelivered_body_changes_nothing_twice(body: bytes) -> None:
    service = _service(at=T)
    first = ingest(service, body, None, "", T + 1000)
    assert first.applied >= 1
    after_first = service.snapshot()
    again = ingest(service, body, None, "", T + 1000)
    assert again.applied == 0
    assert again.ignored == first.applied + first.ignored
    assert service.snapshot() == after_first
    assert ingestor_for(service).stats.duplicates == first.applied


def test_policy_layer_still_deduplicates_messages_after_the_memory_is_lost() -> None:
    service = _service(at=T)
    body = real("messages__message-text__pywa")
    assert WebhookIngestor(service).ingest(body, None, "", T).applied == 1
    after = service.snapshot()
    fresh = WebhookIngestor(service)  # e.g. a restart: the ingestion memory is empty
    assert fresh.ingest(body, None, "", T).applied == 0
    assert service.snapshot() == after


def test_deduplication_memory_is_bounded_and_expires() -> None:
    service = _service(at=T)
    ingestor = WebhookIngestor(service, dedupe_ttl_ms=HOUR, dedupe_max_changes=2)
    bodies = [
        synthetic("user_preferences__stop"),
        synthetic("user_preferences__resume"),
        synthetic("phone_number_quality_update__upgrade"),
    ]
    for body in bodies:
        assert ingestor.ingest(body, None, "", T).applied == 1
    assert ingestor.remembered == 2
    assert ingestor.ingest(bodies[2], None, "", T).applied == 0  # still remembered
    assert ingestor.ingest(bodies[2], None, "", T + HOUR + 1).applied == 1  # expired
    assert ingestor.remembered == 1


def test_events_that_apply_nothing_make_the_memory_forget_nothing() -> None:
    service = _service(at=T)
    ingestor = WebhookIngestor(service)
    stop = synthetic("user_preferences__stop")
    assert ingestor.ingest(stop, None, "", T).applied == 1
    # A week and a day later by its time: a change for a number tiergate does not know.
    path = ("entry", 0, "changes", 0, "value", "metadata", "phone_number_id")
    elsewhere = dumps(replaced(json.loads(stop), path, "999"))
    assert ingestor.ingest(elsewhere, None, "", T + 8 * DAY).applied == 0
    assert ingestor.ingest(stop, None, "", T + 1).applied == 0  # still a redelivery
    assert ingestor.stats.duplicates == 1


def test_a_shared_ingestor_lives_as_long_as_its_service() -> None:
    service = _service(at=T)
    assert ingestor_for(service) is ingestor_for(service)
    assert ingestor_for(service).ingest(synthetic("user_preferences__stop"), None, "", T).applied
    alive = weakref.ref(service)
    del service
    gc.collect()
    assert alive() is None


def test_a_flood_of_statuses_does_not_push_out_change_keys() -> None:
    service = _service(at=T)
    ingestor = WebhookIngestor(service, dedupe_max_keys=10)
    paused = synthetic("message_template_status_update__paused-first")
    assert ingestor.ingest(paused, None, "", T).applied == 1
    doc = json.loads(real("messages__message_status-delivered__pywa"))
    for k in range(50):
        status = replaced(doc, ("entry", 0, "changes", 0, "value", "statuses", 0, "id"), f"w.{k}")
        assert ingestor.ingest(dumps(status), None, "", T + k).applied == 1
    assert ingestor.remembered == 11
    before = service.snapshot()
    assert ingestor.ingest(paused, None, "", T + HOUR).applied == 0
    assert service.snapshot() == before


# --- signatures ----------------------------------------------------------------------

SECRET = "the-app-secret"


def test_signed_body_is_applied() -> None:
    service = _service(at=T)
    body = synthetic("user_preferences__stop")
    assert ingest(service, body, sign(body, SECRET), SECRET, T).applied == 1
    assert (
        bind(SECRET)(
            service,
            synthetic("user_preferences__resume"),
            sign(synthetic("user_preferences__resume"), SECRET),
            T,
        ).applied
        == 1
    )


@pytest.mark.parametrize(
    "case", ["missing", "invalid", "wrong secret", "altered body", "malformed header"]
)
def test_bad_signature_applies_nothing(case: str) -> None:
    service = _service(at=T)
    body = synthetic("user_preferences__stop")
    signature: str | None = sign(body, SECRET)
    if case == "missing":
        signature = None
    elif case == "invalid":
        signature = "sha256=" + "ab" * 32
    elif case == "wrong secret":
        signature = sign(body, "not-the-secret")
    elif case == "altered body":
        body = body.replace(b'"stop"', b'"stoP"')
    else:
        signature = "sha1=abc"
    before = service.snapshot()
    with pytest.raises(SignatureError):
        ingest(service, body, signature, SECRET, T)
    assert service.snapshot() == before
    assert ingestor_for(service).stats.bad_signature == 1


def test_malformed_body_is_counted_and_applies_nothing() -> None:
    service = _service(at=T)
    before = service.snapshot()
    with pytest.raises(WebhookError, match="entry"):
        ingest(service, b'{"object": "whatsapp_business_account", "entry": "x"}', None, "", T)
    assert service.snapshot() == before
    assert ingestor_for(service).stats.as_dict()["malformed"] == 1


def test_a_bad_part_is_left_out_and_the_rest_applies() -> None:
    service = _service(at=T)
    doc = json.loads(synthetic("multi__two-entries"))
    broken = replaced(doc, ("entry", 1, "changes", 0, "value", "event"), 7)
    result = ingest(service, dumps(broken), None, "", T)
    # The first entry's message and status apply; the quality change with a
    # numeric event is left out, naming the path; the security change is unused.
    assert result.applied == 2
    reasons = [reason for _, reason in result.ignored_events]
    bad = [r for r in reasons if "entry[1].changes[0].value.event" in r]
    assert bad and "unknown or incomplete shape" in bad[0] and "must be a string" in bad[0]
    assert service.sender_state(DOCS, T).throughput_mps == 80  # the broken change did nothing
    assert ingestor_for(service).stats.as_dict()["malformed"] == 0


def test_a_bad_status_does_not_cost_the_good_ones() -> None:
    doc = json.loads(synthetic("multi__two-entries"))
    statuses = ("entry", 0, "changes", 1, "value", "statuses")
    good = doc["entry"][0]["changes"][1]["value"]["statuses"][0]
    two = replaced(doc, statuses, [{"id": "wamid.X", "status": "failed"}, good])
    parsed = parse(dumps(two))
    assert [p.path for p in parsed.ignored if "incomplete" in p.reason] == [
        "entry[0].changes[1].value.statuses[0]"
    ]
    assert "statuses[0].timestamp: is missing" in parsed.ignored[0].reason
    assert [p.path for p in parsed.events] == [
        "entry[0].changes[0].value.messages[0]",
        "entry[0].changes[1].value.statuses[1]",
        "entry[1].changes[0].value",
    ]


# --- fuzzing through the service -------------------------------------------------------

_BODIES = all_bodies()
_WRONG = st.sampled_from([None, False, 0, -7, 2.5, "", "x", [], [0], {}, {"k": "v"}])


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_fuzz_mutated_payloads_never_crash_and_rejections_change_nothing(
    data: st.DataObject,
) -> None:
    service = _service(at=T)
    doc = json.loads(data.draw(st.sampled_from(_BODIES)))
    if data.draw(st.booleans()):
        path = data.draw(st.sampled_from(list(paths(doc))))
        body = dumps(replaced(doc, path, data.draw(_WRONG)))
    else:
        raw = dumps(doc)
        body = raw[: data.draw(st.integers(0, len(raw) - 1))]
    before = service.snapshot()
    try:
        result = ingest(service, body, None, "", T)
    except WebhookError:
        assert service.snapshot() == before
    else:
        assert result.ignored == len(result.ignored_events)
        assert all(reason for _, reason in result.ignored_events)


PYWA_USER = "972987654321"  # the contact of pywa's payloads: its phone number
PYWA_BSUID = "US.13491208655302741918"  # and its business-scoped user ID


def test_a_status_naming_both_ids_teaches_the_alias() -> None:
    service = _service(at=T)
    assert service.state.aliases == {}
    assert _ingest(service, real("messages__message_status-sent__pywa"), T) == (1, 0)
    assert service.state.aliases == {recipient_key(PYWA_BSUID): recipient_key(PYWA_USER)}
    # Snapshotted, and restored (a snapshot without the map restores with none).
    again = AdmissionService.from_snapshot(load_profile("meta-2025"), service.snapshot())
    assert again.state.aliases == service.state.aliases
    # Journaled with its event: a replay of the records learns it too.
    records = service.drain_journal()
    copy = _service(at=T)
    copy.drain_journal()
    for record in records:
        copy.replay(record)
    assert copy.state.aliases == service.state.aliases
