"""Parsing Meta webhook bodies into feedback events (no service involved)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from webhook_helpers import all_bodies, dumps, paths, real, real_names, replaced, synthetic

from tiergate.policy.events import (
    AccountUpdate,
    CapabilityUpdate,
    EntryPoint,
    InboundMessage,
    OptOut,
    QualityUpdate,
    SendResult,
    SendStatus,
    TemplateQualityUpdate,
    TemplateStatus,
    TemplateUpdate,
)
from tiergate.webhooks.parse import ParsedWebhook, WebhookError, parse

pytestmark = pytest.mark.engine_independent

HOUR_MS = 3_600_000
PAUSES = {"FIRST_PAUSE": 3 * HOUR_MS, "SECOND_PAUSE": 6 * HOUR_MS}

# What each real payload becomes: the event types, in order, and how many parts are ignored.
EXPECTED = {
    "account_update__account_update-account_disabled__pywa": ([AccountUpdate], 0),
    "account_update__account_update-account_restriction__pywa": ([AccountUpdate], 0),
    "account_update__account_update-account_violation__pywa": ([AccountUpdate], 0),
    # "<TIMESTAMP>" placeholders as expirations: the change is left out, with its reason.
    "account_update__account_restriction-placeholder-expiration__bindambc": ([], 1),
    "message_template_status_update__flagged-disable_info__bindambc": ([], 1),
    "message_template_status_update__template_status-approved-dashboard-test__pywa": (
        [TemplateUpdate],
        0,
    ),
    # A JSON number as timestamp reads; 'from' is a placeholder, not a phone number.
    "messages__interactive-button_reply-int-timestamp__netflie": ([], 1),
    "messages__status-failed-131047__bindambc": ([SendResult], 0),
    "messages__status-read-user_initiated__netflie": ([], 1),
    "phone_number_quality_update__flagged-tier_10k__bindambc": ([QualityUpdate], 0),
    "business_capability_update__example-0__meta-docs": ([CapabilityUpdate], 0),
    "message_template_quality_update__template_quality_update-yellow__pywa": (
        [TemplateQualityUpdate],
        0,
    ),
    "message_template_status_update__template_status_update-approved__pywa": ([TemplateUpdate], 0),
    "message_template_status_update__template_status_update-rejected__pywa": ([TemplateUpdate], 0),
    "messages__callback_button-button__pywa": ([InboundMessage], 0),
    "messages__message-referral__pywa": ([InboundMessage], 0),
    "messages__message-reply__pywa": ([InboundMessage], 0),
    "messages__message-text__pywa": ([InboundMessage], 0),
    "messages__message_status-delivered__pywa": ([SendResult], 0),
    "messages__message_status-failed__pywa": ([SendResult], 0),
    "messages__message_status-sent__pywa": ([SendResult], 0),
    "phone_number_quality_update__throughput_upgrade-0__meta-docs": ([QualityUpdate], 0),
    "smb_message_echoes__outgoing_message-text__pywa": ([], 1),
    "user_preferences__user_marketing_preferences-signup__pywa": ([], 1),
}


def test_every_real_payload_is_listed() -> None:
    assert sorted(EXPECTED) == real_names()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_payload_parses_to_the_expected_events(name: str) -> None:
    types, n_ignored = EXPECTED[name]
    parsed = parse(real(name))
    assert [type(e.event) for e in parsed.events] == types
    assert len(parsed.ignored) == n_ignored
    assert all(part.reason for part in parsed.ignored)
    assert all(e.key and e.path.startswith("entry[0].changes[0]") for e in parsed.events)
    assert parse(real(name)) == parsed  # deterministic, keys included


def test_inbound_text_message() -> None:
    (item,) = parse(real("messages__message-text__pywa")).events
    assert item.field == "messages"
    assert item.path == "entry[0].changes[0].value.messages[0]"
    assert item.event == InboundMessage(
        sender_id="1122334455667",
        recipient="972987654321",
        at_unix_ms=1697043223000,
        entry_point=EntryPoint.ORGANIC,
        message_id="wamid.xyzxyz",
        user_id="US.13491208655302741918",  # the contact's business-scoped user ID
    )
    assert item.key == "message:1122334455667:wamid.xyzxyz"


def test_referral_with_a_click_id_is_an_ad_entry_point() -> None:
    (item,) = parse(real("messages__message-referral__pywa")).events
    assert isinstance(item.event, InboundMessage)
    assert item.event.entry_point is EntryPoint.CTWA_AD
    (ad,) = parse(synthetic("messages__referral-ad")).events
    assert isinstance(ad.event, InboundMessage)
    assert ad.event.entry_point is EntryPoint.CTWA_AD
    (post,) = parse(synthetic("messages__referral-post")).events
    assert isinstance(post.event, InboundMessage)
    assert post.event.entry_point is EntryPoint.PAGE_CTA


@pytest.mark.parametrize(
    ("referral", "entry_point"),
    [
        ({"source_type": "ad"}, EntryPoint.CTWA_AD),
        ({"source_type": "AD", "ctwa_clid": ""}, EntryPoint.CTWA_AD),
        ({"source_type": "post"}, EntryPoint.PAGE_CTA),
        ({"source_type": "other"}, EntryPoint.ORGANIC),
        ({}, EntryPoint.ORGANIC),
        ({"ctwa_clid": "abc"}, EntryPoint.CTWA_AD),
    ],
)
def test_entry_point_from_the_referral(referral: dict[str, str], entry_point: EntryPoint) -> None:
    doc = json.loads(real("messages__message-text__pywa"))
    body = replaced(doc, ("entry", 0, "changes", 0, "value", "messages", 0, "referral"), referral)
    (item,) = parse(dumps(body)).events
    assert isinstance(item.event, InboundMessage)
    assert item.event.entry_point is entry_point


def test_failed_status_carries_meta_message_id_and_error_code() -> None:
    (item,) = parse(real("messages__message_status-failed__pywa")).events
    assert item.event == SendResult(
        status=SendStatus.FAILED,
        sender_id="1122334455667",
        recipient="972987654321",
        meta_error_code=130472,
        at_unix_ms=1689380458000,
        message_id="wamid.xyzxyz",
        user_id="US.13491208655302741918",
    )
    assert item.key == "status:1122334455667:wamid.xyzxyz:failed"
    (sent,) = parse(real("messages__message_status-sent__pywa")).events
    assert sent.key != item.key
    assert isinstance(sent.event, SendResult) and sent.event.meta_error_code == 0


def test_quality_and_capability_updates() -> None:
    (q,) = parse(real("phone_number_quality_update__throughput_upgrade-0__meta-docs")).events
    assert q.event == QualityUpdate(
        display_phone_number="15550783881",
        event="THROUGHPUT_UPGRADE",
        current_limit="TIER_UNLIMITED",
        at_unix_ms=1748454394000,
    )
    (up,) = parse(synthetic("phone_number_quality_update__upgrade")).events
    assert isinstance(up.event, QualityUpdate)
    assert (up.event.old_limit, up.event.current_limit) == ("TIER_2K", "TIER_10K")
    assert up.event.max_daily_conversations_per_business == "TIER_10K"
    (c,) = parse(real("business_capability_update__example-0__meta-docs")).events
    assert c.event == CapabilityUpdate(
        waba_id="524126980791429",
        max_daily_conversations_per_business="TIER_2K",
        at_unix_ms=1739321024000,
    )


@pytest.mark.parametrize(
    ("value", "limit"),
    [
        ({"max_daily_conversations_per_business": -1}, "TIER_UNLIMITED"),
        ({"max_daily_conversations_per_business": 250}, "TIER_250"),
        ({"max_daily_conversations_per_business": "TIER_100K"}, "TIER_100K"),
        ({"max_daily_conversations_per_business": 12345}, "12345"),
        ({"max_daily_conversation_per_phone": 10000}, "TIER_10K"),
    ],
)
def test_capability_limit_in_meta_tier_names(value: dict[str, object], limit: str) -> None:
    doc = json.loads(real("business_capability_update__example-0__meta-docs"))
    body = replaced(doc, ("entry", 0, "changes", 0, "value"), value)
    (c,) = parse(dumps(body)).events
    assert isinstance(c.event, CapabilityUpdate)
    assert c.event.max_daily_conversations_per_business == limit


def test_capability_without_a_limit_is_ignored() -> None:
    doc = json.loads(real("business_capability_update__example-0__meta-docs"))
    body = replaced(doc, ("entry", 0, "changes", 0, "value"), {"max_phone_numbers_per_waba": 25})
    parsed = parse(dumps(body))
    assert parsed.events == ()
    assert "no messaging limit" in parsed.ignored[0].reason


def test_account_restriction_expiry_prefers_the_messaging_restriction() -> None:
    (a,) = parse(synthetic("account_update__restriction-one-day")).events
    assert isinstance(a.event, AccountUpdate)
    assert a.event.event == "ACCOUNT_RESTRICTION"
    assert a.event.restriction_types == (
        "RESTRICTED_BIZ_INITIATED_MESSAGING",
        "RESTRICTED_ADD_PHONE_NUMBER_ACTION",
    )
    assert a.event.expires_at_unix_ms == (1764000000 + 86400) * 1000
    (d,) = parse(real("account_update__account_update-account_disabled__pywa")).events
    assert isinstance(d.event, AccountUpdate) and d.event.ban_state == "REINSTATE"


def test_restriction_expiry_as_iso_time() -> None:
    doc = json.loads(synthetic("account_update__restriction-one-day"))
    path = ("entry", 0, "changes", 0, "value", "restriction_info", 0, "expiration")
    (a,) = parse(dumps(replaced(doc, path, "2026-04-19T13:59:20+0000"))).events
    assert isinstance(a.event, AccountUpdate)
    assert a.event.expires_at_unix_ms == 1776607160000
    naive = parse(dumps(replaced(doc, path, "2026-04-19T13:59:20")))
    assert naive.events == ()
    (part,) = naive.ignored
    assert part.path == "entry[0].changes[0]" and "UTC offset" in part.reason


def test_template_pauses_carry_the_unpause_time_when_durations_are_known() -> None:
    at = 1764000000000
    (first,) = parse(
        synthetic("message_template_status_update__paused-first"), pause_ms=PAUSES
    ).events
    assert first.event == TemplateUpdate(
        template_id="1689556908129832",
        status=TemplateStatus.PAUSED,
        template_name="order_confirmation",
        paused_until_unix_ms=at + 3 * HOUR_MS,
        at_unix_ms=at,
        waba_id="102290129340398",
        pause_reason="FIRST_PAUSE",
    )
    (second,) = parse(
        synthetic("message_template_status_update__paused-second"), pause_ms=PAUSES
    ).events
    assert isinstance(second.event, TemplateUpdate)
    assert second.event.paused_until_unix_ms == at + 6 * HOUR_MS
    (unknown,) = parse(synthetic("message_template_status_update__paused-second")).events
    assert isinstance(unknown.event, TemplateUpdate) and unknown.event.paused_until_unix_ms == 0
    assert unknown.event.pause_reason == "SECOND_PAUSE"  # the policy layer dates it
    for name, status in [
        ("message_template_status_update__reinstated", TemplateStatus.UNPAUSED),
        ("message_template_status_update__disabled", TemplateStatus.DISABLED),
    ]:
        (item,) = parse(synthetic(name)).events
        assert isinstance(item.event, TemplateUpdate) and item.event.status is status
    (rejected,) = parse(
        real("message_template_status_update__template_status_update-rejected__pywa")
    ).events
    assert isinstance(rejected.event, TemplateUpdate)
    assert rejected.event.status is TemplateStatus.REJECTED


def test_marketing_stop_and_resume_are_opt_outs() -> None:
    (stop,) = parse(synthetic("user_preferences__stop")).events
    assert stop.event == OptOut(
        recipient="16505551234", sender_id="106540352242922", at_unix_ms=1764000000000
    )
    (resume,) = parse(synthetic("user_preferences__resume")).events
    assert isinstance(resume.event, OptOut) and resume.event.opted_out is False
    assert stop.key != resume.key


def test_ignored_parts_say_why() -> None:
    (echo,) = parse(real("smb_message_echoes__outgoing_message-text__pywa")).ignored
    assert echo.field == "smb_message_echoes" and "echo" in echo.reason
    (signup,) = parse(real("user_preferences__user_marketing_preferences-signup__pywa")).ignored
    assert "'signup'" in signup.reason
    (system,) = parse(synthetic("messages__system")).ignored
    assert "system" in system.reason
    (unsupported,) = parse(synthetic("messages__unsupported")).ignored
    assert "unsupported" in unsupported.reason
    multi = parse(synthetic("multi__two-entries"))
    assert [type(e.event) for e in multi.events] == [InboundMessage, SendResult, QualityUpdate]
    assert [(p.field, p.path) for p in multi.ignored] == [("security", "entry[1].changes[1]")]


@pytest.mark.parametrize(
    ("path", "value", "reason"),
    [
        (("value", "statuses", 0, "status"), "deleted", "not one tiergate tracks"),
        (("value", "statuses", 0, "recipient_id"), "group-123", "not a phone number"),
        (("value", "statuses", 0, "recipient_id"), None, "no recipient_id"),
    ],
)
def test_statuses_tiergate_cannot_use_are_ignored(
    path: tuple[str | int, ...], value: object, reason: str
) -> None:
    doc = json.loads(real("messages__message_status-sent__pywa"))
    parsed = parse(dumps(replaced(doc, ("entry", 0, "changes", 0, *path), value)))
    assert parsed.events == ()
    assert reason in parsed.ignored[0].reason


def test_other_objects_are_ignored_whole() -> None:
    parsed = parse(b'{"object": "page", "entry": [{"id": 1}]}')
    assert parsed.events == () and "'page'" in parsed.ignored[0].reason


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        (b"", "body", "empty"),
        (b"not json", "body", "not JSON"),
        (b"\xff\xfe{}", "body", "not UTF-8"),
        (b"[]", "body", "must be an object, got a list"),
        (b'"x"', "body", "must be an object"),
        (b"{}", "object", "missing"),
        (b'{"object": 5}', "object", "must be a string, got a number"),
        (b'{"object": "whatsapp_business_account"}', "entry", "missing"),
        (b'{"object": "whatsapp_business_account", "entry": {}}', "entry", "must be a list"),
        (
            b'{"object": "whatsapp_business_account", "entry": [{"id": "1", "time": NaN}]}',
            "body",
            "not JSON",
        ),
    ],
)
def test_malformed_bodies_name_what_is_wrong(body: bytes, field: str, message: str) -> None:
    with pytest.raises(WebhookError, match=message) as info:
        parse(body)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


@pytest.mark.parametrize(
    ("path", "value", "field", "message"),
    [
        (("timestamp",), "16970432.5", "timestamp", "Unix seconds"),
        (("timestamp",), "99999999999999", "timestamp", "Unix seconds"),
        (("timestamp",), -5, "timestamp", "out of range"),
        (("timestamp",), [], "timestamp", "got a list"),
        (("id",), "", "id", "must not be empty"),
        (("id",), 17, "id", "must be a string"),
        (("type",), None, "type", "missing"),
        (("from",), 972987654321, "from", "must be a string"),
        (("referral",), "ad", "referral", "must be an object"),
        (("referral",), {"ctwa_clid": 5}, "referral.ctwa_clid", "must be a string"),
    ],
)
def test_wrong_types_inside_a_message_leave_out_that_message_naming_the_path(
    path: tuple[str, ...], value: object, field: str, message: str
) -> None:
    doc = json.loads(real("messages__message-text__pywa"))
    base = ("entry", 0, "changes", 0, "value", "messages", 0)
    parsed = parse(dumps(replaced(doc, (*base, *path), value)))
    assert parsed.events == ()
    (part,) = parsed.ignored
    assert part.field == "messages"
    assert part.path == "entry[0].changes[0].value.messages[0]"
    assert f"entry[0].changes[0].value.messages[0].{field}: " in part.reason
    assert message in part.reason and "unknown or incomplete shape" in part.reason


@pytest.mark.parametrize(
    ("entries", "field", "path", "message"),
    [
        ("[1]", "entry", "entry[0]", "must be an object"),
        ('[{"changes": []}]', "entry", "entry[0]", "entry[0].id: is missing"),
        ('[{"id": true, "changes": []}]', "entry", "entry[0]", "must be a string, got a boolean"),
        ('[{"id": "1", "time": "soon", "changes": []}]', "entry", "entry[0]", "Unix seconds"),
        ('[{"id": "1", "changes": {}}]', "entry", "entry[0]", "changes: must be a list"),
        ('[{"id": "1", "changes": [{}]}]', "change", "entry[0].changes[0]", "field: is missing"),
        ('[{"id": "1", "changes": [7]}]', "change", "entry[0].changes[0]", "must be an object"),
        (
            '[{"id": "1", "changes": [{"field": "messages"}]}]',
            "messages",
            "entry[0].changes[0]",
            "value: is missing",
        ),
        (
            '[{"id": "1", "changes": [{"field": "messages", "value": {"messages": []}}]}]',
            "messages",
            "entry[0].changes[0]",
            "metadata: is missing",
        ),
        (
            '[{"id": "1", "changes": [{"field": "account_update", "value": {}}]}]',
            "account_update",
            "entry[0].changes[0]",
            "event: is missing",
        ),
    ],
)
def test_parts_of_unknown_shape_are_left_out_with_a_reason(
    entries: str, field: str, path: str, message: str
) -> None:
    body = f'{{"object": "whatsapp_business_account", "entry": {entries}}}'.encode()
    parsed = parse(body)
    assert parsed.events == ()
    (part,) = parsed.ignored
    assert (part.field, part.path) == (field, path)
    assert message in part.reason and "unknown or incomplete shape" in part.reason


def test_one_bad_part_leaves_every_other_part_of_the_body() -> None:
    text = json.loads(real("messages__message-text__pywa"))
    failed = json.loads(real("messages__message_status-failed__pywa"))
    quality = json.loads(real("phone_number_quality_update__throughput_upgrade-0__meta-docs"))
    bad_change = {"field": "account_update", "value": {"event": 7}}
    body = {
        "object": "whatsapp_business_account",
        "entry": [
            text["entry"][0],
            {"id": 5, "changes": "not a list"},
            {**quality["entry"][0], "changes": [bad_change, *quality["entry"][0]["changes"]]},
            failed["entry"][0],
        ],
    }
    parsed = parse(dumps(body))
    assert [type(p.event) for p in parsed.events] == [InboundMessage, QualityUpdate, SendResult]
    assert [p.path for p in parsed.ignored] == ["entry[1]", "entry[2].changes[0]"]


def test_size_and_depth_limits() -> None:
    body = real("messages__message-text__pywa")
    with pytest.raises(WebhookError, match="more than the 100 allowed"):
        parse(body, max_bytes=100)
    parse(body, max_bytes=len(body))
    with pytest.raises(WebhookError, match="more than 64 levels"):
        parse(b"[" * 65 + b"]" * 65)
    with pytest.raises(WebhookError, match="nested"):
        parse(b"[" * 200_000 + b"]" * 200_000, max_bytes=1 << 20)
    with pytest.raises(WebhookError, match="more than the 1048576 allowed"):
        parse(b" " * ((1 << 20) + 1))
    with pytest.raises(WebhookError, match="must be bytes"):
        parse("{}")  # type: ignore[arg-type]


# --- fuzzing: nothing but WebhookError, ever ------------------------------------

_BODIES = all_bodies()
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def _parse_or_reject(body: bytes) -> ParsedWebhook | None:
    try:
        return parse(body)
    except WebhookError as exc:
        assert str(exc)
        return None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=_json)
def test_fuzz_random_json(doc: object) -> None:
    _parse_or_reject(dumps(doc))


@settings(max_examples=150, deadline=None)
@given(doc=_json, field=st.sampled_from(["messages", "account_update", "user_preferences"]))
def test_fuzz_random_change_values(doc: object, field: str) -> None:
    envelope = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": field, "value": doc}]}],
    }
    _parse_or_reject(dumps(envelope))


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_fuzz_truncated_real_payloads(data: st.DataObject) -> None:
    body = data.draw(st.sampled_from(_BODIES)).rstrip()
    cut = data.draw(st.integers(0, len(body) - 1))
    assert _parse_or_reject(body[:cut]) is None


_WRONG = [None, True, 0, -1, 1.5, "", "x", [], [1], {}, {"a": 1}]


def test_wrong_types_at_every_path_of_every_payload() -> None:
    checked = 0
    for body in _BODIES:
        doc = json.loads(body)
        for path in paths(doc):
            for value in _WRONG:
                _parse_or_reject(dumps(replaced(doc, path, value)))
                checked += 1
    assert checked > 5000
